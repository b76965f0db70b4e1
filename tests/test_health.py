"""`facescore health`: a row per component, details a person can act on, exit codes per the contract."""
from __future__ import annotations

import fcntl
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES, free_port
from test_services import TOKEN, start_pair

from facescore_cli.cli import app

COMPONENTS = ["Redis", "detection service", "embedding service", "local models", "Qdrant"]


@pytest.fixture(scope="module")
def pair():
    det, emb = start_pair(token=TOKEN)
    yield det, emb
    det.stop()
    emb.stop()


def _health(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["health", "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["component"]: c for c in report["components"]}


@pytest.fixture()
def env(clean_env, monkeypatch, redis_server):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return monkeypatch


def _services(env, det_url: str, emb_url: str, token: str | None = None) -> None:
    env.setenv("FACE_DETECTION_SERVICE", det_url)
    env.setenv("FACE_EMBEDDING_SERVICE", emb_url)
    if token:
        env.setenv("FACESCORE_SERVICE_TOKEN", token)


def test_everything_up_is_ready_through_the_services(env, pair):
    det, emb = pair
    _services(env, det.url, emb.url, TOKEN)
    code, report = _health()
    assert code == 0
    assert report["ok"] is True and report["scoring_path"] == "remote"
    rows = _rows(report)
    assert list(rows) == COMPONENTS
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert all(r["latency_ms"] is not None and r["latency_ms"] >= 0 for r in rows.values())
    assert "mtcnn" in rows["detection service"]["detail"]
    assert "resnet" in rows["embedding service"]["detail"]
    assert "head" in rows["local models"]["detail"]
    assert "embedded store" in rows["Qdrant"]["detail"]

    # and the chain sends the token: the services score
    result = CliRunner().invoke(app, ["score", str(EXAMPLES / "faces" / "omi-46.jpg"), "--json", "--via", "local",
                                      "--no-store"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["source"] == "remote"


def test_the_table_has_a_row_per_component(env, pair):
    result = CliRunner().invoke(app, ["health"], terminal_width=240)
    assert result.exit_code == 0, result.output
    for name in COMPONENTS:
        assert name in result.stdout
    assert "not configured" in result.stdout and "ready" in result.stdout


def test_wrong_token_is_reported_and_scoring_falls_back_to_local(env, pair):
    det, emb = pair
    _services(env, det.url, emb.url, "not-the-token")
    code, report = _health()
    rows = _rows(report)
    for name in ("detection service", "embedding service"):
        assert rows[name]["status"] == "unauthorized"
        assert "refused FACESCORE_SERVICE_TOKEN" in rows[name]["detail"]
    assert code == 0 and report["scoring_path"] == "local"  # FALLBACK_TO_LOCAL is on

    result = CliRunner().invoke(app, ["score", str(EXAMPLES / "faces" / "omi-46.jpg"), "--json", "--via", "local",
                                      "--no-store"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["source"] == "local"

    env.setenv("FALLBACK_TO_LOCAL", "false")
    code, report = _health()
    assert code == 1 and report["scoring_path"] is None
    assert "unauthorized" in report["summary"]


def test_no_token_sent_to_a_service_that_demands_one(env, pair):
    det, emb = pair
    _services(env, det.url, emb.url)
    code, report = _health()
    assert _rows(report)["detection service"]["status"] == "unauthorized"
    assert "demands a bearer token: set FACESCORE_SERVICE_TOKEN" in _rows(report)["detection service"]["detail"]


def test_services_down_say_how_to_start_them(env):
    det_port, emb_port = free_port(), free_port()
    det_url, emb_url = f"http://127.0.0.1:{det_port}", f"http://127.0.0.1:{emb_port}"
    _services(env, det_url, emb_url)
    code, report = _health()
    rows = _rows(report)
    assert rows["detection service"]["status"] == "unreachable"
    assert rows["detection service"]["detail"] == (
        f"connection refused at {det_url} — start it with `facescore serve detection --port {det_port}`")
    assert f"`facescore serve embedding --port {emb_port}`" in rows["embedding service"]["detail"]
    assert code == 0 and report["scoring_path"] == "local"

    env.setenv("FALLBACK_TO_LOCAL", "false")
    code, report = _health()
    assert code == 1
    assert rows["local models"]["status"] == "ok"
    assert _rows(report)["local models"]["status"] == "disabled"


def test_services_not_configured_is_not_a_failure_with_local_fallback(env):
    code, report = _health()
    rows = _rows(report)
    assert rows["detection service"]["status"] == rows["embedding service"]["status"] == "not configured"
    assert "FACE_DETECTION_SERVICE is unset" in rows["detection service"]["detail"]
    assert code == 0 and report["scoring_path"] == "local"


def test_simulated_only_cannot_score_real_faces(env):
    env.setenv("USE_REAL_ML", "false")
    code, report = _health()
    assert code == 1
    assert _rows(report)["local models"]["status"] == "disabled"
    assert "USE_REAL_ML=false" in report["summary"]


def test_redis_down_is_reported_but_only_fails_a_queue_setup(env):
    env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    code, report = _health()
    redis = _rows(report)["Redis"]
    assert redis["status"] == "unreachable"
    assert "connection refused" in redis["detail"] and "redis-server" in redis["detail"]
    assert code == 0
    env.setenv("FACESCORE_VIA", "queue")
    code, report = _health()
    assert code == 1 and "Redis" in report["summary"]


def test_redis_password_is_not_printed(env, redis_server):
    env.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{redis_server.port}")
    _, report = _health()
    assert "hunter2" not in json.dumps(report)


def test_embedded_qdrant_locked_by_another_process(env, clean_env):
    folder = clean_env / "store"  # the embedded store's lock file is store/.lock
    folder.mkdir(parents=True)
    with (folder / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, report = _health()
        fcntl.flock(fh, fcntl.LOCK_UN)
    qdrant = _rows(report)["Qdrant"]
    assert qdrant["status"] == "locked" and "QDRANT_URL" in qdrant["detail"]
    _, report = _health()
    assert _rows(report)["Qdrant"]["status"] == "ok"


def test_qdrant_server_unreachable(env):
    env.setenv("QDRANT_URL", f"http://127.0.0.1:{free_port()}")
    code, report = _health()
    qdrant = _rows(report)["Qdrant"]
    assert qdrant["status"] == "unreachable" and "unset QDRANT_URL" in qdrant["detail"]
    assert code == 0  # the store is not on the scoring path


@pytest.mark.parametrize("name,value", [("ML_SERVICE_TIMEOUT", "soon"), ("FACE_DETECTION_SERVICE", "localhost:8001"),
                                        ("USE_REAL_ML", "maybe")])
def test_configuration_errors_exit_2(clean_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["health"])
    assert result.exit_code == 2
    assert name in result.output


def test_redis_row_counts_live_workers_and_a_queue_setup_needs_one(env, redis_server, tmp_path):
    from queue_support import WorkerProc, base_env

    wenv = base_env(redis_server.url, tmp_path / "home")
    env.setenv("FACESCORE_QUEUE", wenv["FACESCORE_QUEUE"])
    env.setenv("FACESCORE_VIA", "queue")
    code, report = _health()
    redis = _rows(report)["Redis"]
    assert redis["status"] == "ok" and redis["workers"] == 0 and "facescore worker" in redis["detail"]
    assert code == 1 and "no worker" in report["summary"]
    worker = WorkerProc(wenv, tmp_path / "w.log", concurrency=1).wait_started()
    try:
        code, report = _health()
        redis = _rows(report)["Redis"]
        assert redis["workers"] == 1 and "1 live worker(s)" in redis["detail"]
        assert code == 0
    finally:
        worker.stop()
