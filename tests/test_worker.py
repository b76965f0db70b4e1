"""`facescore worker` against a real redis-server: crashes, Redis restarts, bad jobs, clean stops."""
from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import RedisServer, dies_with_pytest
from facescore_cli import queue
from queue_support import (CLI, WorkerProc, add_jobs, alive, base_env, big_photo, children, finished_job, run_cli,
                           scoring_children, settings_for, small_faces, wait_live, wait_until)


@pytest.fixture(scope="module")
def faces40(omi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("faces40")
    small_faces(omi_dir, folder, 40)
    return folder


@pytest.fixture(scope="module")
def local_scores(faces40: Path, tmp_path_factory: pytest.TempPathFactory, redis_server) -> dict[str, str]:
    """The anchor: the same 40 images scored in local mode."""
    tmp = tmp_path_factory.mktemp("local")
    env = base_env(redis_server.url, tmp / "home")
    res = run_cli(["batch", str(faces40), "--out", str(tmp / "local.csv"), "--via", "local", "--no-store"], env)
    assert res.returncode == 0, res.stderr
    return _scores(tmp / "local.csv")


def _scores(path: Path) -> dict[str, str]:
    """path -> "score,vibe,rank" of face 0; fails on a path that appears twice."""
    out: dict[str, str] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if row["face"] not in ("0", ""):
                continue
            assert row["path"] not in out, f"{row['path']} came back twice"
            out[row["path"]] = f"{row['score']},{row['vibe']},{row['rank']}" if not row["error"] else row["error"]
    return out


def _wait_completed(workers: list[WorkerProc], n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(len(w.events("completed")) for w in workers) >= n:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} jobs completed")


def test_kill9_one_of_two_workers_loses_nothing(redis_server, faces40, local_scores, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    a = WorkerProc(env, tmp_path / "a.log", lock_ms=2000, stalled_ms=1000)
    b = WorkerProc(env, tmp_path / "b.log", lock_ms=2000, stalled_ms=1000)
    batch = None
    try:
        a.wait_started(), b.wait_started()
        wait_live(env, 2)
        out = tmp_path / "queue.csv"
        batch = subprocess.Popen(CLI + ["batch", str(faces40), "--out", str(out), "--via", "queue", "--no-store"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=dies_with_pytest())
        _wait_completed([a, b], 6)
        a.kill9()  # mid-batch, holding a job (its lock expires, the stalled check hands it to b)
        killed_at = time.time()
        stdout, stderr = batch.communicate(timeout=120)
        assert batch.returncode == 0, stderr
        assert "via queue" in stderr
        got = _scores(out)
        assert got == local_scores  # every image exactly once, scored as in local mode
        assert len(got) == 40
        done_a, done_b = a.events("completed"), b.events("completed")
        assert done_a and done_b  # both took part
        jobs = [e["job"] for e in done_a + done_b]
        assert len(set(jobs)) == 40
        assert any(e["ts"] > killed_at for e in done_b)  # the kill came mid-batch
    finally:
        if batch and batch.poll() is None:
            batch.kill()
        a.stop(), b.stop()


def test_redis_restart_mid_batch_completes(faces40, local_scores, tmp_path):
    server = RedisServer(tmp_path)  # our own: the session server must not go away under other tests
    server.start()
    env = base_env(server.url, tmp_path / "home")
    w = WorkerProc(env, tmp_path / "w.log", concurrency=1, lock_ms=3000, stalled_ms=1500)
    batch = None
    try:
        w.wait_started()
        out = tmp_path / "restart.csv"
        batch = subprocess.Popen(CLI + ["batch", str(faces40), "--out", str(out), "--via", "queue", "--no-store"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=dies_with_pytest())
        _wait_completed([w], 5)
        server.stop()  # no persistence: Redis comes back empty, the producer adds what it lost
        time.sleep(1.5)
        server.start()
        stdout, stderr = batch.communicate(timeout=150)
        assert batch.returncode == 0, stderr[-3000:]
        assert _scores(out) == local_scores
        assert "Redis" in stderr  # it said what happened
    finally:
        if batch and batch.poll() is None:
            batch.kill()
        w.stop()
        server.stop()


def test_bad_jobs_fail_at_once_with_a_reason_and_good_ones_return_the_contract(redis_server, portrait, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home", FACESCORE_MAX_IMAGE_BYTES="200000")
    settings = settings_for(env)
    w = WorkerProc(env, tmp_path / "w.log", concurrency=1)
    retry = {"attempts": 3, "backoff": {"type": "exponential", "delay": 200}}
    big = base64.b64encode(b"\xff" * 300_000).decode()
    try:
        w.wait_started()
        asyncio.run(add_jobs(settings, [
            ("score", {"image": base64.b64encode(b"this is not an image").decode()}, {"jobId": "notimage", **retry}),
            ("score", {"image": "%%% not base64 %%%"}, {"jobId": "badb64", **retry}),
            ("score", {"image": big}, {"jobId": "toobig", **retry}),
            ("score", {"filename": "x.jpg"}, {"jobId": "noimage", **retry}),
            ("resize", {"image": "AAAA"}, {"jobId": "othername", **retry}),
            ("score", {"image": base64.b64encode(portrait.read_bytes()).decode(), "filename": "p.jpg"},
             {"jobId": "good"}),
        ]))
        client = queue.redis_client(settings)
        reasons = {}
        for jid in ("notimage", "badb64", "toobig", "noimage", "othername"):
            job = finished_job(client, settings, jid)
            assert not job.get("returnvalue") or job["returnvalue"] == "null"
            assert int(job.get("atm") or job.get("attemptsMade") or 0) == 1, f"{jid} was retried"
            reasons[jid] = job["failedReason"]
        assert "not an image" in reasons["notimage"]
        assert "base64" in reasons["badb64"]
        assert "cap" in reasons["toobig"]
        assert "image" in reasons["noimage"]
        assert "unknown job name" in reasons["othername"]
        good = json.loads(finished_job(client, settings, "good")["returnvalue"])
        # finished jobs keep their result, not the photo
        for jid in ("good", "notimage", "toobig"):  # dropped just after BullMQ records the outcome
            deadline = time.monotonic() + 10
            while "image" in (kept := json.loads(finished_job(client, settings, jid)["data"])) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "image" not in kept, jid
        assert json.loads(finished_job(client, settings, "good")["data"])["filename"] == "p.jpg"
        assert {"score", "vibe", "rank", "faces", "source", "model"} <= good.keys()
        assert good["faces"] and good["score"] == good["faces"][0]["score"]
        assert 0 <= good["score"] <= 100 and len(good["faces"][0]["box"]) == 4
        # one structured line per job
        logged = {e["job"]: e for e in w.events("completed") + w.events("failed")}
        assert set(logged) == {"notimage", "badb64", "toobig", "noimage", "othername", "good"}
        assert logged["good"]["score"] == good["score"] and logged["notimage"]["error"] == reasons["notimage"]
    finally:
        w.stop()


def test_sigterm_finishes_in_flight_jobs_and_leaves_the_heartbeat(redis_server, faces40, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    settings = settings_for(env)
    w = WorkerProc(env, tmp_path / "w.log", concurrency=2, grace=20)
    try:
        w.wait_started()
        workers = wait_live(env, 1)
        assert workers[0]["concurrency"] == 2 and workers[0]["model"]
        batch = asyncio.run(queue.submit([(p, p.name) for p in sorted(faces40.iterdir())[:6]], settings))
        _wait_completed([w], 1)
        w.proc.send_signal(15)
        assert w.proc.wait(30) == 0
        stopped = w.events("stopped")
        assert stopped, w.log.read_text()
        assert queue.live_workers(settings) == []  # says goodbye at once, not after the TTL
        assert len(w.events("completed")) == stopped[0]["processed"] >= 1
        assert batch.jobs == 6
        # What it held but had not started (a fetch cut short by the stop can leave a job in the
        # active list) is released to the stalled-job check: a second worker finishes the batch,
        # each job exactly once.
        w2 = WorkerProc(env, tmp_path / "w2.log", concurrency=2, lock_ms=2000, stalled_ms=1000)
        try:
            w2.wait_started()
            _wait_completed([w, w2], 6)
            done = [e["job"] for e in w.events("completed") + w2.events("completed")]
            assert len(done) == len(set(done)) == 6
        finally:
            w2.stop()
    finally:
        w.stop()


def test_kill9_of_a_scoring_process_the_worker_scores_on(redis_server, portrait, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    settings = settings_for(env)
    w = WorkerProc(env, tmp_path / "w.log", concurrency=1)
    try:
        w.wait_started()
        [pid] = scoring_children(w.proc.pid)
        os.kill(pid, signal.SIGSTOP)  # what it is handed cannot finish before the kill, however fast the machine
        bigs = [base64.b64encode(big_photo(portrait, tmp_path / f"big{i}.jpg", 5000 - 10 * i).read_bytes()).decode()
                for i in range(3)]  # about 3 s of work: the kill comes while one is being scored
        asyncio.run(add_jobs(settings, [(queue.JOB_NAME, {"image": b}, {"jobId": f"big{i}"}) for i, b in enumerate(bigs)]))
        time.sleep(0.5)
        assert not w.events("completed")
        os.kill(pid, signal.SIGKILL)
        _wait_completed([w], 3)
        done = w.events("completed")
        assert [e["attempt"] for e in done] == [1, 1, 1] and all(e["faces"] == 1 for e in done)  # retried in the pool
        [new] = scoring_children(w.proc.pid)
        assert new != pid and not alive(pid)
        asyncio.run(add_jobs(settings, [(queue.JOB_NAME, {"image": base64.b64encode(portrait.read_bytes()).decode()},
                                     {"jobId": "small"})]))
        _wait_completed([w], 4)
    finally:
        w.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signals_of_the_worker_leave_no_process(redis_server, tmp_path, sig):
    env = base_env(redis_server.url, tmp_path / "home")
    w = WorkerProc(env, tmp_path / "w.log", concurrency=2)
    try:
        w.wait_started()
        kids = children(w.proc.pid)
        assert len(scoring_children(w.proc.pid)) == 2
        os.kill(w.proc.pid, sig)
        w.proc.wait(30)
        wait_until(lambda: not any(alive(p) for p in kids), 5, f"the worker's children gone after {sig.name}")
    finally:
        w.stop()

