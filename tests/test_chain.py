"""The fallback chain remote -> local -> simulated -> error, against real HTTP servers."""
from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from typer.testing import CliRunner

from conftest import EXAMPLES, free_port, wait_for_port
from test_services import Service, start_pair

from facescore_cli import images, pipeline
from facescore_cli.cli import app
from facescore_cli.config import Settings
from facescore_cli.errors import ServiceUnavailable
from facescore_cli.ml import models
from facescore_cli.ml.detect import detect
from facescore_cli.scoring import LocalBackend, Scorer, build_chain
from facescore_cli.services.client import Breaker, RemoteBackend

PORTRAIT = EXAMPLES / "faces" / "omi-46.jpg"


def _settings(**env: str) -> Settings:
    return Settings.load(environ=env, dotenv=None)


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


@pytest.fixture(scope="module")
def pair():
    det, emb = start_pair()
    yield det, emb
    det.stop()
    emb.stop()


@pytest.fixture()
def images_dir(tmp_path: Path) -> Path:
    """Ten real photos: the five example portraits twice over, in two folders."""
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        for f in sorted((EXAMPLES / "faces").glob("*.jpg")):
            shutil.copy(f, tmp_path / "in" / sub / f.name)
    return tmp_path / "in"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _batch(inputs: list[str], out: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["batch", *inputs, "--out", str(out), "--via", "local", "--no-store",
                                    "--jobs", "1", *extra])


# --- the breaker, on its own ----------------------------------------------------------------

def test_breaker_opens_after_repeated_failures_then_probes():
    now = [0.0]
    b = Breaker("detection", threshold=3, cooldown=10.0, clock=lambda: now[0])
    for _ in range(2):
        b.before()
        b.failure()
    assert b.state == "closed"
    b.before()
    b.failure()
    assert b.state == "open"
    with pytest.raises(ServiceUnavailable, match="skipped"):
        b.before()
    now[0] = 10.5
    assert b.state == "half-open"
    b.before()  # the probe goes through...
    with pytest.raises(ServiceUnavailable, match="probed"):
        b.before()  # ...alone
    b.failure()
    assert b.state == "open"  # a failed probe opens it for another cooldown
    now[0] = 21.0
    b.before()
    b.success()
    assert b.state == "closed" and b.failures == 0


# --- both services up -----------------------------------------------------------------------

def test_both_services_up_every_row_is_remote_and_matches_local(pair, clean_env, images_dir, tmp_path, monkeypatch):
    det, emb = pair
    inputs = [str(images_dir / "a"), str(EXAMPLES / "group.jpg")]
    local_out = tmp_path / "local.csv"
    result = _batch(inputs, local_out)
    assert result.exit_code == 0, result.output

    monkeypatch.setenv("FACE_DETECTION_SERVICE", det.url)
    monkeypatch.setenv("FACE_EMBEDDING_SERVICE", emb.url)
    remote_out = tmp_path / "remote.csv"
    result = _batch(inputs, remote_out)
    assert result.exit_code == 0, result.output

    remote, local = _read_csv(remote_out), _read_csv(local_out)
    assert len(remote) == len(local) == 10  # 5 portraits + 5 faces in the group photo
    assert {r["source"] for r in remote} == {"remote"}
    assert {r["source"] for r in local} == {"local"}
    key = lambda r: (r["path"], r["face"])  # noqa: E731
    for r, l in zip(sorted(remote, key=key), sorted(local, key=key)):
        assert key(r) == key(l)
        assert (r["x"], r["y"], r["width"], r["height"]) == (l["x"], l["y"], l["width"], l["height"])
        assert abs(float(r["score"]) - float(l["score"])) <= 0.1 + 1e-9, (r, l)


def test_services_killed_mid_batch_the_rest_is_local_and_nothing_is_lost(clean_env, images_dir):
    det, emb = start_pair()
    try:
        settings = _settings(FACE_DETECTION_SERVICE=det.url, FACE_EMBEDDING_SERVICE=emb.url,
                             ML_SERVICE_TIMEOUT="3000", FACESCORE_HOME=str(clean_env))
        items = pipeline.collect([str(images_dir)]).items
        assert len(items) == 10
        results = []
        # Two processes (forked), each with its own client and breaker.
        for r in pipeline.score_items(items, settings, jobs=2):
            results.append(r)
            if len(results) == 2:
                det.stop()
                emb.stop()
    finally:
        det.stop()
        emb.stop()
    assert sorted(r.path for r in results) == sorted(i.display for i in items)
    assert not [r for r in results if r.error], [r.error for r in results]
    sources = [r.source for r in results]
    assert sources[:2] == ["remote", "remote"]
    assert set(sources) == {"remote", "local"}
    assert sources[-1] == "local" and sources.count("local") >= 4


def test_a_slow_service_times_out_and_local_takes_over_within_the_timeout(clean_env, pair):
    slow = Service("detection", {"FACESCORE_SERVICE_DELAY_MS": "5000"}).start()
    try:
        settings = _settings(FACE_DETECTION_SERVICE=slow.url, FACE_EMBEDDING_SERVICE=pair[1].url,
                             ML_SERVICE_TIMEOUT="700")
        data = PORTRAIT.read_bytes()
        image = images.decode(data)
        remote = RemoteBackend(settings)
        start = time.perf_counter()
        with pytest.raises(ServiceUnavailable, match="within the timeout"):
            remote.analyze(image, data)
        elapsed = time.perf_counter() - start
        assert 0.5 <= elapsed < 0.7 + 0.5, elapsed

        scorer = Scorer(settings, chain=[RemoteBackend(settings), LocalBackend()])
        result = scorer.score_bytes(data, "portrait.jpg")
        assert result.source == "local" and result.error is None and len(result.faces) == 1
    finally:
        slow.stop()


def test_only_one_service_configured_means_no_remote_link():
    settings = _settings(FACE_DETECTION_SERVICE="http://127.0.0.1:1")
    assert [b.name for b in build_chain(settings)] == ["local"]


# --- answers that count as failures (a stub built with FastAPI, served over real HTTP) ------

class Stub:
    """A detection + embedding service in one, misbehaving as `mode` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = {"/health": 0, "/detect": 0, "/embed": 0}
        image = images.decode(PORTRAIT.read_bytes())
        self.size = (image.width, image.height)
        self.faces = [f.to_json() for f in detect(image)]
        self.vectors = [[0.01] * models.EMBEDDING_DIM for _ in self.faces]
        api = FastAPI()

        @api.get("/health")
        async def health() -> dict:
            self.calls["/health"] += 1
            return {"status": "ok", "model": "stub", "version": "0"}

        @api.post("/detect")
        async def detect_(request: Request) -> Any:
            self.calls["/detect"] += 1
            await request.body()
            if self.mode == "detect-500":
                return JSONResponse({"detail": "boom"}, status_code=500)
            if self.mode == "detect-not-json":
                return PlainTextResponse("<html>proxy error</html>")
            if self.mode == "detect-wrong-size":
                return {"width": 10, "height": 10, "faces": self.faces}
            if self.mode == "detect-bad-face":
                return {"width": self.size[0], "height": self.size[1], "faces": [{"box": [1, 2]}]}
            return {"width": self.size[0], "height": self.size[1], "faces": self.faces}

        @api.post("/embed")
        async def embed_(request: Request) -> Any:
            self.calls["/embed"] += 1
            await request.body()
            model = models.EMBEDDING_MODEL
            if self.mode == "embed-short":
                return {"model": model, "dim": 64, "embeddings": [[0.1] * 64 for _ in self.faces]}
            if self.mode == "embed-count":
                return {"model": model, "dim": models.EMBEDDING_DIM, "embeddings": self.vectors * 2}
            if self.mode == "embed-model":
                return {"model": "facenet", "dim": models.EMBEDDING_DIM, "embeddings": self.vectors}
            if self.mode == "embed-truncated":
                return PlainTextResponse('{"model": "dlib', media_type="application/json")
            return {"model": model, "dim": models.EMBEDDING_DIM, "embeddings": self.vectors}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Stub":
        self.thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def stub():
    with Stub() as s:
        yield s


@pytest.mark.parametrize("mode,message", [
    ("detect-500", "answered 500"),
    ("detect-not-json", "malformed JSON"),
    ("detect-wrong-size", "10x10"),
    ("detect-bad-face", "malformed answer"),
    ("embed-short", r"\(1, 64\)"),
    ("embed-count", rf"\(2, {models.EMBEDDING_DIM}\)"),
    ("embed-model", "facenet"),
    ("embed-truncated", "malformed JSON"),
])
def test_a_malformed_answer_fails_the_image_over_to_local(clean_env, stub, mode, message):
    stub.mode = mode
    settings = _settings(FACE_DETECTION_SERVICE=stub.url, FACE_EMBEDDING_SERVICE=stub.url)
    data = PORTRAIT.read_bytes()
    with pytest.raises(ServiceUnavailable, match=message):
        RemoteBackend(settings).analyze(images.decode(data), data)
    result = Scorer(settings, chain=[RemoteBackend(settings), LocalBackend()]).score_bytes(data, "p.jpg")
    assert result.source == "local" and result.error is None


def test_the_breaker_stops_calls_then_probes_and_recovers(clean_env, stub):
    now = [0.0]
    settings = _settings(FACE_DETECTION_SERVICE=stub.url, FACE_EMBEDDING_SERVICE=stub.url)
    remote = RemoteBackend(settings, threshold=3, cooldown=30.0, clock=lambda: now[0])
    data = PORTRAIT.read_bytes()
    image = images.decode(data)
    stub.mode = "detect-500"
    before = stub.calls["/detect"]
    for _ in range(6):
        with pytest.raises(ServiceUnavailable):
            remote.analyze(image, data)
    assert stub.calls["/detect"] - before == 3  # then it stopped calling
    assert remote.detection.breaker.state == "open"
    now[0] = 31.0
    with pytest.raises(ServiceUnavailable, match="answered 500"):
        remote.analyze(image, data)  # one probe, which fails
    assert stub.calls["/detect"] - before == 4
    now[0] = 62.0
    stub.mode = "ok"
    faces, vectors = remote.analyze(image, data)
    assert len(faces) == 1 and vectors.shape == (1, models.EMBEDDING_DIM)
    assert remote.detection.breaker.state == "closed"


def test_a_health_check_is_cached_for_a_few_seconds(clean_env, stub):
    now = [0.0]
    stub.mode = "ok"
    settings = _settings(FACE_DETECTION_SERVICE=stub.url, FACE_EMBEDDING_SERVICE=stub.url)
    remote = RemoteBackend(settings, health_ttl=5.0, clock=lambda: now[0])
    data = PORTRAIT.read_bytes()
    image = images.decode(data)
    before = stub.calls["/health"]
    for _ in range(3):
        remote.analyze(image, data)
    assert stub.calls["/health"] - before == 2  # one per service
    now[0] = 6.0
    remote.analyze(image, data)
    assert stub.calls["/health"] - before == 4


def test_the_client_works_in_a_forked_child(clean_env, stub):
    """Batch processes are forked: a child must not share its parent's sockets."""
    stub.mode = "ok"
    settings = _settings(FACE_DETECTION_SERVICE=stub.url, FACE_EMBEDDING_SERVICE=stub.url)
    remote = RemoteBackend(settings)
    data = PORTRAIT.read_bytes()
    image = images.decode(data)
    remote.analyze(image, data)  # the parent now holds open connections
    parent_http = remote.detection.http
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            faces, _ = remote.analyze(image, data)
            os._exit(0 if len(faces) == 1 and remote.detection.http is not parent_http else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert remote.analyze(image, data)[0]  # and the parent's client still works


# --- the ends of the chain, through the CLI -------------------------------------------------

def test_local_disabled_falls_to_simulated(clean_env, monkeypatch):
    monkeypatch.setenv("FACE_DETECTION_SERVICE", _dead_url())
    monkeypatch.setenv("FACE_EMBEDDING_SERVICE", _dead_url())
    monkeypatch.setenv("FALLBACK_TO_LOCAL", "false")
    result = CliRunner().invoke(app, ["score", str(PORTRAIT), "--json", "--via", "local", "--no-store"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["source"] == "simulated" and row["score"] is not None


def test_everything_disabled_fails_each_image_with_a_clear_error(clean_env, monkeypatch, images_dir, tmp_path):
    dead = _dead_url()
    monkeypatch.setenv("FACE_DETECTION_SERVICE", dead)
    monkeypatch.setenv("FACE_EMBEDDING_SERVICE", _dead_url())
    monkeypatch.setenv("FALLBACK_TO_LOCAL", "false")
    monkeypatch.setenv("FALLBACK_TO_SIMULATED", "false")
    out = tmp_path / "out.csv"
    result = _batch([str(images_dir / "a")], out)
    assert result.exit_code == 1, result.output
    rows = _read_csv(out)
    assert len(rows) == 5
    for row in rows:
        assert row["source"] == "" and row["score"] == ""
        assert "all scoring paths failed" in row["error"], row["error"]
        # The first images name the cause; after them the breaker skips the service, and says why.
        assert f"connection refused at {dead}" in row["error"], row["error"]
    assert "skipped" in rows[-1]["error"]


def test_no_path_enabled_at_all_is_an_error_per_image(clean_env, monkeypatch):
    monkeypatch.setenv("FALLBACK_TO_LOCAL", "false")
    monkeypatch.setenv("FALLBACK_TO_SIMULATED", "false")
    result = CliRunner().invoke(app, ["score", str(PORTRAIT), str(EXAMPLES / "group.jpg"), "--json",
                                      "--via", "local", "--no-store"])
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert len(rows) == 2
    assert all("no scoring path enabled" in r["error"] for r in rows)
