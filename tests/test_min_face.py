"""--min-face / FACESCORE_MIN_FACE: where the detector's search starts, on every path that scores
(in this process, the scoring pool, the ML services, the queue's workers), on real images."""
from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from facescore_cli import images, queue
from facescore_cli.cli import app
from facescore_cli.config import Settings, parse_min_face
from facescore_cli.errors import ConfigError
from facescore_cli.ml import mtcnn
from facescore_cli.ml.detect import detect
from facescore_cli.ml.types import DEFAULT_MIN_FACE, LARGEST_MIN_FACE, SMALLEST_MIN_FACE
from facescore_cli.scoring import Scorer
from queue_support import WorkerProc, add_jobs, base_env, finished_job, run_cli, settings_for
from test_services import start_pair

runner = CliRunner()
# examples/group.jpg: five faces, boxes 364, 213, 174, 174 and 77 px wide. From 150 px the
# detector no longer looks for the 77 px one; the four others are still found.
BIG_ONLY = 150


def _widths(rows: list[dict]) -> list[int]:
    return [int(r["width"]) for r in rows if r["face"] != ""]


def _score(args: list[str], env: dict[str, str] | None = None):
    return runner.invoke(app, ["score", *args, "--no-store", "--jsonl"], env=env)


def _rows(res) -> list[dict]:
    """The JSON rows, without the time each took."""
    return [{k: v for k, v in json.loads(line).items() if k != "ms"} for line in res.stdout.splitlines()]


def test_the_setting_is_a_whole_number_of_pixels_from_12():
    assert Settings.load(environ={}, dotenv=None).min_face == DEFAULT_MIN_FACE == 40
    assert Settings.load(environ={"FACESCORE_MIN_FACE": "100"}, dotenv=None).min_face == 100
    assert parse_min_face("64px") == parse_min_face(64) == 64
    assert SMALLEST_MIN_FACE == mtcnn.PNET_CELL  # the least P-Net can see
    assert parse_min_face(LARGEST_MIN_FACE) == LARGEST_MIN_FACE
    for bad, says in (("8", "under 12 px"), ("abc", "not a whole number"), ("40.5", "not a whole number"),
                      ("1" + "0" * 400, "over 100000 px")):
        with pytest.raises(ConfigError, match=says):
            Settings.load(environ={"FACESCORE_MIN_FACE": bad}, dotenv=None)
    for bad in (True, 40.0, None, [40]):
        with pytest.raises(ValueError):
            parse_min_face(bad)


def test_score_looks_for_big_faces_only_when_asked(clean_env: Path, group_photo: Path, monkeypatch):
    everything = _score([str(group_photo)])
    assert everything.exit_code == 0, everything.output
    all_rows = _rows(everything)
    assert len(all_rows) == 5 and min(_widths(all_rows)) < 100
    big = _score([str(group_photo), "--min-face", str(BIG_ONLY)])
    assert big.exit_code == 0, big.output
    big_rows = _rows(big)
    assert len(big_rows) == 4 and min(_widths(big_rows)) > 150
    # the same faces, largest first, and their scores within a point or two: the detector ran on
    # a smaller copy, so MTCNN's points (and so the aligned chips) move by a pixel or so
    for a, b in zip(all_rows, big_rows):
        assert abs(int(a["x"]) - int(b["x"])) < 25 and abs(int(a["width"]) - int(b["width"])) < 25
        assert abs(float(a["score"]) - float(b["score"])) < 3

    monkeypatch.setenv("FACESCORE_MIN_FACE", str(BIG_ONLY))
    from_env = _score([str(group_photo)])
    assert _rows(from_env) == big_rows
    option_wins = _score([str(group_photo), "--min-face", "40"])
    assert len(option_wins.stdout.splitlines()) == 5


def test_a_bad_min_face_is_one_line_and_exit_2_before_any_work(clean_env: Path, group_photo: Path, monkeypatch):
    res = _score([str(group_photo), "--min-face", "8"])
    assert res.exit_code == 2 and "--min-face" in res.output and "12" in res.output
    monkeypatch.setenv("FACESCORE_MIN_FACE", "tiny")
    res = _score([str(group_photo)])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["configuration error: FACESCORE_MIN_FACE: 'tiny' is not a whole number of pixels"]


def test_batch_processes_use_it_too(clean_env: Path, group_photo: Path, portrait: Path, tmp_path: Path):
    """Two scoring processes (the pool) score what this process scores with the same setting."""
    res = runner.invoke(app, ["batch", str(group_photo), str(portrait), "--jobs", "2", "--via", "local", "--no-store",
                              "--jsonl", "--min-face", str(BIG_ONLY)])
    assert res.exit_code == 0, res.output
    group = [r for r in _rows(res) if r["path"] == str(group_photo)]
    single = _rows(_score([str(group_photo), "--min-face", str(BIG_ONLY)]))
    assert [(r["width"], r["score"]) for r in group] == [(r["width"], r["score"]) for r in single]
    assert len(group) == 4


def test_the_detection_service_and_the_remote_link_take_it(clean_env: Path, group_photo: Path):
    det, emb = start_pair()
    try:
        data = group_photo.read_bytes()
        image = images.decode(data)
        headers = {**det.headers, "Content-Type": "image/jpeg"}
        r = httpx.post(det.url + "/detect", params={"min_face": BIG_ONLY}, content=data, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["faces"] == [f.to_json() for f in detect(image, min_face=BIG_ONLY)]
        assert len(r.json()["faces"]) == 4
        default = httpx.post(det.url + "/detect", content=data, headers=headers, timeout=30)
        assert len(default.json()["faces"]) == 5
        for params in ({"min_face": 5}, {"min-face": 150}):
            bad = httpx.post(det.url + "/detect", params=params, content=data, headers=headers, timeout=30)
            assert bad.status_code == 422, params
            assert isinstance(bad.json()["detail"], str) and "min" in bad.json()["detail"]  # the ErrorModel's one line
        spec = httpx.get(det.url + "/openapi.json", headers=det.headers, timeout=10).json()
        params = spec["paths"]["/detect"]["post"]["parameters"]
        assert [(p["name"], p["in"], p["schema"]["minimum"], p["schema"]["maximum"]) for p in params] == [
            ("min_face", "query", SMALLEST_MIN_FACE, LARGEST_MIN_FACE)]
        huge = httpx.post(det.url + "/detect", params={"min_face": "1" + "0" * 400}, content=data, headers=headers,
                          timeout=30)
        assert huge.status_code == 422
        whole = httpx.post(det.url + "/detect", params={"min_face": LARGEST_MIN_FACE}, content=data, headers=headers,
                           timeout=30)
        assert whole.status_code == 200 and whole.json()["faces"] == []

        settings = Settings.load(environ={"FACE_DETECTION_SERVICE": det.url, "FACE_EMBEDDING_SERVICE": emb.url,
                                          "FACESCORE_SERVICE_TOKEN": det.token or "", "FALLBACK_TO_LOCAL": "false",
                                          "FALLBACK_TO_SIMULATED": "false", "FACESCORE_MIN_FACE": str(BIG_ONLY),
                                          "FACESCORE_HOME": str(clean_env)}, dotenv=None)
        remote = Scorer.from_settings(settings).score_bytes(data, "group.jpg")
        assert remote.source == "remote" and len(remote.faces) == 4, remote.error
        assert len(Scorer.from_settings(settings).score_bytes(data, "group.jpg", min_face=40).faces) == 5
    finally:
        det.stop()
        emb.stop()


def test_jobs_carry_it_and_the_worker_honours_it(redis_server, group_photo: Path, tmp_path: Path):
    """A job's min_face wins; a job without one (the Node.js app's) gets the worker's setting; a
    bad one fails the job at once. `score --via queue --min-face` sends it, as its own job."""
    env = base_env(redis_server.url, tmp_path / "home", FACESCORE_MIN_FACE=str(BIG_ONLY))
    settings = settings_for(env)
    w = WorkerProc(env, tmp_path / "w.log", concurrency=1)
    image = base64.b64encode(group_photo.read_bytes()).decode()
    try:
        w.wait_started()
        asyncio.run(add_jobs(settings, [
            (queue.JOB_NAME, {"image": image}, {"jobId": "node-style"}),
            (queue.JOB_NAME, {"image": image, "min_face": 40}, {"jobId": "asks-40"}),
            (queue.JOB_NAME, {"image": image, "min_face": "huge"}, {"jobId": "bad", "attempts": 3}),
            (queue.JOB_NAME, {"image": image, "min_face": 5}, {"jobId": "too-small", "attempts": 3}),
        ]))
        client = queue.redis_client(settings)
        assert len(json.loads(finished_job(client, settings, "node-style", 60)["returnvalue"])["faces"]) == 4
        assert len(json.loads(finished_job(client, settings, "asks-40", 60)["returnvalue"])["faces"]) == 5
        for jid, says in (("bad", "not a whole number"), ("too-small", "under 12 px")):
            job = finished_job(client, settings, jid, 60)
            assert int(job.get("atm") or 0) == 1, f"{jid} was retried"
            assert job["failedReason"].startswith('job data "min_face"') and says in job["failedReason"]

        res = run_cli(["score", str(group_photo), "--via", "queue", "--no-store", "--jsonl", "--min-face", "40"],
                      {**env, "FACESCORE_MIN_FACE": "40"})
        assert res.returncode == 0, res.stderr
        assert len(res.stdout.splitlines()) == 5
        res = run_cli(["score", str(group_photo), "--via", "queue", "--no-store", "--jsonl", "--min-face", "200"], env)
        assert res.returncode == 0, res.stderr
        assert len(res.stdout.splitlines()) == 4
        digest = images.sha256(group_photo.read_bytes())
        done = {e["job"] for e in w.events("completed")}
        assert any(j.startswith(digest) and j.endswith("-mf200") for j in done)  # another search, another job
    finally:
        w.stop()


def test_job_ids_name_a_search_that_is_not_the_default():
    assert queue.job_id("ab" * 32, "head v1") == queue.job_id("ab" * 32, "head v1", DEFAULT_MIN_FACE) == "ab" * 32 + "-head_v1"
    assert queue.job_id("ab" * 32, "head v1", 150) == "ab" * 32 + "-head_v1-mf150"
    spec = queue.job_spec("j", b"xyz", "a.jpg", True, "b1", 150)
    assert spec["data"]["min_face"] == 150 and spec["data"]["filename"] == "a.jpg"
