"""`facescore serve api`: POST /api/score as the original system answered it, locally and through
the workers. The app runs for real (in-process through httpx, and once under uvicorn)."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import subprocess
import time

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from conftest import answer_of, dies_with_pytest, free_port, stalled_upload, wait_for_port
from facescore_cli.api import create_app
from facescore_cli.config import Settings
from facescore_cli.errors import ConfigError
from queue_support import (CLI, WorkerProc, alive, base_env, big_photo, children, paused, scoring_children,
                           settings_for, small_faces, wait_live, wait_until)


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture()
def local_client(redis_server, tmp_path):
    settings = settings_for(base_env(redis_server.url, tmp_path / "home"))
    with TestClient(create_app(settings, via="local", processes=1)) as client:
        yield client


def test_local_real_image_bad_base64_no_body_not_an_image(local_client, portrait):
    r = local_client.post("/api/score", json={"image": _b64(portrait)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    data = body["data"]
    assert {"score", "vibe", "rank", "faces", "source", "model"} <= data.keys()
    assert 0 <= data["score"] <= 100 and data["faces"][0]["score"] == data["score"]
    assert "embeddings" not in data

    r = local_client.post("/api/score", json={"image": "this is *not* base64!"})
    assert r.status_code == 400 and r.json() == {"success": False, "error": '"image" is not valid base64'}

    r = local_client.post("/api/score")
    assert r.status_code == 400 and r.json()["success"] is False and "no body" in r.json()["error"]

    r = local_client.post("/api/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]

    r = local_client.post("/api/score", json={"picture": "AAAA"})
    assert r.status_code == 400 and '"image"' in r.json()["error"]

    r = local_client.post("/api/score", json={"image": base64.b64encode(b"plain text, no pixels").decode()})
    assert r.status_code == 422 and r.json()["success"] is False and "not an image" in r.json()["error"]

    # a data URL, as a browser's FileReader produces it
    r = local_client.post("/api/score", json={"image": "data:image/jpeg;base64," + _b64(portrait)})
    assert r.status_code == 200 and r.json()["data"]["score"] == data["score"]


def test_min_face_per_request(local_client, group_photo):
    """{"min_face": PX} searches from faces PX wide, as --min-face does; a bad value is a 400 with
    one line saying why, before any scoring."""
    image = _b64(group_photo)
    default = local_client.post("/api/score", json={"image": image}).json()["data"]["faces"]
    wide = local_client.post("/api/score", json={"image": image, "min_face": 300}).json()["data"]["faces"]
    assert 1 <= len(wide) < len(default)
    assert min(f["box"][2] for f in wide) >= 150 > min(f["box"][2] for f in default)  # the narrow ones left out
    assert local_client.post("/api/score", json={"image": image, "min_face": None}).json()["data"]["faces"] == default
    for bad, why in ((5, "5 px is under 12 px"), ("wide", "'wide' is not a whole number of pixels"),
                     (True, "True is not a whole number of pixels"), (10**6, "1000000 px is over 100000 px")):
        r = local_client.post("/api/score", json={"image": image, "min_face": bad})
        assert r.status_code == 400 and r.json()["success"] is False, (bad, r.text)
        assert r.json()["error"].startswith(f'"min_face": {why}'), r.json()["error"]


def test_too_big_is_413(redis_server, portrait, tmp_path):
    settings = dataclasses.replace(settings_for(base_env(redis_server.url, tmp_path / "home")),
                                   max_image_bytes=portrait.stat().st_size - 1)
    with TestClient(create_app(settings, via="local", processes=1)) as client:
        r = client.post("/api/score", json={"image": _b64(portrait)})
        assert r.status_code == 413 and r.json()["success"] is False and "cap" in r.json()["error"]
        r = client.post("/api/score", content=b"x" * (settings.max_image_bytes * 2 + 100_000))
        assert r.status_code == 413


def test_through_the_workers_under_uvicorn(redis_server, portrait, group_photo, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    port = free_port()
    api = subprocess.Popen(CLI + ["serve", "api", "--port", str(port), "--via", "queue", "--timeout", "20"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=dies_with_pytest())
    w = None
    try:
        wait_for_port(port, 30)
        url = f"http://127.0.0.1:{port}/api/score"
        start = time.monotonic()
        r = httpx.post(url, json={"image": _b64(portrait)}, timeout=30)
        assert r.status_code == 503 and "no live worker" in r.json()["error"]  # says so, does not hang
        assert time.monotonic() - start < 5

        w = WorkerProc(env, tmp_path / "w.log")
        w.wait_started()
        wait_live(env)
        time.sleep(1.1)  # the app caches the worker list for a second
        r = httpx.post(url, json={"image": _b64(portrait)}, timeout=30)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert r.json()["success"] is True and w.events("completed")
        assert {"score", "vibe", "rank", "faces"} <= data.keys()

        # the request's min_face travels with its job (another search: another job)
        image = _b64(group_photo)
        default = httpx.post(url, json={"image": image}, timeout=30).json()["data"]["faces"]
        r = httpx.post(url, json={"image": image, "min_face": 300}, timeout=30)
        assert r.status_code == 200, r.text
        assert 1 <= len(r.json()["data"]["faces"]) < len(default)
        assert redis.Redis.from_url(redis_server.url).keys("*-mf300")

        r = httpx.post(url, json={"image": base64.b64encode(b"GIF89a but truncated").decode()}, timeout=30)
        assert r.status_code == 422 and r.json()["success"] is False
        assert w.events("failed")[0]["error"] == r.json()["error"]

        r = httpx.post(url, json={"image": "@@@"}, timeout=30)
        assert r.status_code == 400
        r = httpx.post(url, timeout=30)
        assert r.status_code == 400
    finally:
        if w:
            w.stop()
        api.terminate()
        api.wait(15)


# --- malformed JSON: the documented error shape, a 4xx, never a plain-text 500 ---------------

MALFORMED = [
    b"[" * 1000 + b"]" * 1000,  # nested 1000 deep (an uncaught RecursionError before; Python 3.13 parses it)
    b'{"image": "AAAA", "x": ' + b"[" * 64 + b"]" * 64 + b"}",  # 65 deep: over jsonbody.MAX_DEPTH on any Python
    b'{"image": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"image": 1e999999}',  # read as infinity by json.loads
    b'{"image": ' + b"9" * 100_000 + b"}",  # 10**100000: over Python's int-string limit
    b'{"image": "\xff\xfe"}',  # not UTF-8
    b'{"image": "AAAA", "image": "BBBB"}',  # duplicate keys: which one is meant?
    b'{"image": NaN}',
    b'{"image": -Infinity}',
]


@pytest.mark.parametrize("body", MALFORMED, ids=["deep", "65-deep", "deep-inside", "1e999999", "100k-digits", "utf8",
                                                 "duplicate-key", "nan", "infinity"])
def test_malformed_json_is_400_with_the_error_shape(local_client, body):
    r = local_client.post("/api/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False and "not JSON" in r.json()["error"]


def test_default_wait_outlasts_a_killed_workers_lock():
    from facescore_cli import api, worker

    assert api.DEFAULT_TIMEOUT_S > (worker.DEFAULT_LOCK_MS + worker.DEFAULT_STALLED_MS) / 1000 + 10


# --- under uvicorn: overload, abandoned requests, crashes, signals, /health -----------------


class Api:
    """`facescore serve api` in a subprocess, on a free port."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(CLI + ["serve", "api", "--port", str(self.port), *args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=dies_with_pytest())
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for_port(self.port, 60)

    def health(self) -> httpx.Response:
        return httpx.get(self.url + "/health", timeout=10)

    def wait_ready(self) -> dict:
        wait_until(lambda: self.health().status_code == 200, 120, "/health 200")
        return self.health().json()

    def __enter__(self) -> "Api":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_an_image_past_the_time_limit_is_504_local_and_queue(redis_server, portrait, tmp_path):
    """A scoring process that does not answer within FACESCORE_IMAGE_TIMEOUT (stopped here with
    SIGSTOP, as a native loop would hang it) is killed, and the request gets 504 saying so (no
    Retry-After: the same image would hang again), the same through the local pool and through a
    worker; the API scores on."""
    env = base_env(redis_server.url, tmp_path / "home", FACESCORE_IMAGE_TIMEOUT="3s")
    image = _b64(portrait)
    timed_out = {"success": False, "error": "scoring took longer than 3 s"}
    with Api(env, "--via", "local", "--jobs", "1") as api:
        [pid] = api.wait_ready()["local"]["pids"]
        os.kill(pid, signal.SIGSTOP)
        r = httpx.post(api.url + "/api/score", json={"image": image}, timeout=60)
        assert (r.status_code, r.json()) == (504, timed_out) and "retry-after" not in r.headers
        wait_until(lambda: not alive(pid), 10, "the stopped process killed")
        assert api.wait_ready()["local"]["restarts"] == 1
        r = httpx.post(api.url + "/api/score", json={"image": image}, timeout=60)
        assert r.status_code == 200 and r.json()["success"] is True

    w = WorkerProc(env, tmp_path / "w.log")
    api = Api(env, "--via", "queue", "--timeout", "60")
    try:
        w.wait_started()
        wait_live(env)
        wait_until(lambda: scoring_children(w.proc.pid), 60, "the worker's scoring process")
        [pid] = scoring_children(w.proc.pid)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(1.1)  # the app caches the worker list for a second
        r = httpx.post(api.url + "/api/score", json={"image": image}, timeout=60)
        assert (r.status_code, r.json()) == (504, timed_out) and "retry-after" not in r.headers
        assert w.events("failed")[0]["error"] == timed_out["error"]
        wait_until(lambda: not alive(pid), 10, "the stopped process killed")
    finally:
        api.stop()
        w.stop()


def test_body_timeout_setting():
    def load(value: str) -> float:
        return Settings.load(environ={"FACESCORE_BODY_TIMEOUT": value}, dotenv=None).body_timeout_s

    assert Settings.load(environ={}, dotenv=None).body_timeout_s == 30
    assert (load("2m"), load("500ms"), load("0")) == (120, 0.5, 0)
    with pytest.raises(ConfigError, match="FACESCORE_BODY_TIMEOUT: 'soon' is not a duration"):
        load("soon")


def test_slow_uploads_hold_no_scoring_slot_and_get_408(redis_server, portrait, tmp_path):
    """Clients that send their headers and then trickle (here: stop) their body. Two of them
    locked everyone else out with 503 for as long as they kept their connections open: a body
    was read while holding an in-flight slot, with no deadline."""
    env = base_env(redis_server.url, tmp_path / "home", FACESCORE_API_MAX_WAITING="1", FACESCORE_BODY_TIMEOUT="3s")
    with Api(env, "--via", "local", "--jobs", "1") as api:
        api.wait_ready()
        slow = [stalled_upload(api.port, b"POST /api/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                         b"Content-Length: 100000\r\n\r\n{\"image\": \"AAAA") for _ in range(4)]
        try:
            time.sleep(0.5)  # the four are in, their bodies unfinished: 1 slot + 1 waiting
            r = httpx.post(api.url + "/api/score", json={"image": _b64(portrait)}, timeout=60)
            assert r.status_code == 200 and r.json()["success"] is True, r.text
            for sock in slow:
                answer = answer_of(sock)
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
                assert answer.endswith(b'{"success":false,"error":"the body did not arrive within 3 s"}')
        finally:
            for sock in slow:
                sock.close()
        assert api.health().json()["in_flight"] == 0


@pytest.fixture()
def big_b64(portrait, tmp_path) -> str:
    """A real photo large enough to keep one scoring process busy for a while."""
    return _b64(big_photo(portrait, tmp_path / "big.jpg"))


def test_local_overload_gets_503_with_retry_after_before_the_admitted_finish(redis_server, portrait, big_b64, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    with Api(env, "--via", "local", "--jobs", "1", "--max-waiting", "1") as api:
        api.wait_ready()
        url = api.url + "/api/score"

        async def burst() -> list[tuple[int, float, dict, httpx.Headers]]:
            async with httpx.AsyncClient(timeout=120) as client:
                async def post(image: str) -> tuple[int, float, dict, httpx.Headers]:
                    r = await client.post(url, json={"image": image})
                    return r.status_code, time.monotonic(), r.json(), r.headers

                with paused(api.proc.pid):  # the admitted image cannot finish before the burst is answered
                    slow = asyncio.ensure_future(post(big_b64))
                    await asyncio.sleep(0.5)  # admitted, handed to the (stopped) scoring process
                    burst = [asyncio.ensure_future(post(_b64(portrait))) for _ in range(10)]
                    # all but the one admitted to wait are answered while nothing can be scored
                    deadline = time.monotonic() + 60
                    while sum(t.done() for t in burst) < len(burst) - 1 and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                rest = await asyncio.gather(*burst)
                return [await slow, *rest]

        out = asyncio.run(burst())
        statuses = [s for s, *_ in out]
        assert statuses[0] == 200
        refused = [o for o in out if o[0] == 503]
        assert len(refused) >= 8  # 1 scoring + 1 waiting admitted; the rest refused
        assert all(200 == s for s, *_ in out if s != 503)
        for status, done_at, body, headers in refused:
            assert body["success"] is False and "busy" in body["error"]
            assert int(headers["retry-after"]) >= 1
            assert done_at < out[0][1]  # answered while the admitted image was still being scored


def test_abandoned_requests_are_never_scored(redis_server, portrait, big_b64, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    with Api(env, "--via", "local", "--jobs", "1", "--max-waiting", "10") as api:
        api.wait_ready()
        url = api.url + "/api/score"

        async def scene() -> int:
            async with httpx.AsyncClient(timeout=120) as client:
                async def abandon() -> None:
                    try:
                        async with httpx.AsyncClient(timeout=0.5) as c:
                            await c.post(url, json={"image": _b64(portrait)})
                    except httpx.TimeoutException:
                        pass

                # three big photos ahead of the requests that will give up, the scoring process
                # stopped meanwhile so that none of them can be reached before their clients leave
                with paused(api.proc.pid):
                    slow = [asyncio.ensure_future(client.post(url, json={"image": big_b64})) for _ in range(3)]
                    await asyncio.sleep(0.5)
                    await asyncio.gather(*[abandon() for _ in range(6)])
                assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 3
                return (await client.post(url, json={"image": _b64(portrait)})).status_code

        assert asyncio.run(scene()) == 200
        local = api.health().json()["local"]
        assert local["scored"] == 4, local  # the big photos and the last one; none of the six abandoned
        assert local["waiting"] == 0 and local["running"] == 0


def test_kill9_of_a_scoring_process_health_tells_and_the_api_scores_on(redis_server, portrait, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    api = Api(env, "--via", "local", "--jobs", "1")
    try:
        [pid] = api.wait_ready()["local"]["pids"]
        os.kill(pid, signal.SIGKILL)
        seen = []
        while len(seen) < 400:  # until it is back; the replacement loads its models meanwhile
            r = api.health()
            seen.append(r.status_code)
            if r.status_code == 200 and seen.count(503):
                break
            time.sleep(0.05)
        assert 503 in seen, "never said it could not score while the process was replaced"
        assert seen[-1] == 200
        health = api.health().json()
        assert health["local"]["restarts"] == 1 and health["local"]["pids"] != [pid] and not alive(pid)
        assert "exited with -9" in health["local"]["last_error"]
        r = httpx.post(api.url + "/api/score", json={"image": _b64(portrait)}, timeout=60)
        assert r.status_code == 200 and r.json()["success"] is True
    finally:
        api.stop()


def test_health_503_and_reasons_when_it_cannot_score(redis_server, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    api = Api(env, "--via", "queue")
    try:
        r = api.health()
        assert r.status_code == 503 and r.json()["can_score"] is False
        assert "no live worker" in r.json()["problems"][0]
    finally:
        api.stop()
    env = base_env(f"redis://:s3cret@127.0.0.1:{free_port()}", tmp_path / "home")  # nothing listens there
    for via in ("queue", "auto"):
        api = Api(env, "--via", via)
        try:
            r = api.health()
            if via == "queue":
                assert r.status_code == 503 and "Redis does not answer" in r.json()["problems"][0]
            else:  # scores locally, and says Redis is away
                assert r.status_code == 200 and "Redis does not answer" in r.json()["queue"]["problem"]
            assert "s3cret" not in r.text
        finally:
            api.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signals_leave_no_scoring_process(redis_server, tmp_path, sig):
    env = base_env(redis_server.url, tmp_path / "home")
    api = Api(env, "--via", "local", "--jobs", "2")
    try:
        pids = api.wait_ready()["local"]["pids"]
        kids = children(api.proc.pid)
        assert set(pids) <= set(kids)
        os.kill(api.proc.pid, sig)
        api.proc.wait(20)
        wait_until(lambda: not any(alive(p) for p in kids), 5, f"children gone after {sig.name}")
    finally:
        api.stop()


def test_queue_job_of_a_killed_worker_comes_back_within_the_wait(redis_server, big_b64, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    a = WorkerProc(env, tmp_path / "a.log", lock_ms=2000, stalled_ms=1000)
    api = Api(env, "--via", "queue", "--timeout", "60")
    b = None
    try:
        a.wait_started()
        wait_live(env)
        time.sleep(1.1)  # the app caches the worker list for a second
        kids = children(a.proc.pid)
        # `a`'s scoring processes are stopped, so the job it takes can only come back through
        # `b` after a's lock expires, however fast this machine scores (SIGKILL still ends them).
        for pid in scoring_children(a.proc.pid):
            os.kill(pid, signal.SIGSTOP)

        async def scene() -> httpx.Response:
            async with httpx.AsyncClient(timeout=90) as client:
                req = asyncio.ensure_future(client.post(api.url + "/api/score", json={"image": big_b64}))
                await asyncio.sleep(1.0)  # `a`, the only worker, holds the job
                a.kill9()
                await asyncio.sleep(0.5)
                nonlocal b
                b = WorkerProc(env, tmp_path / "b.log", lock_ms=2000, stalled_ms=1000)
                return await req

        r = asyncio.run(scene())
        assert r.status_code == 200, r.text
        assert b.events("completed") and not a.events("completed")
        wait_until(lambda: not any(alive(p) for p in kids), 5, "the killed worker's scoring processes gone")
    finally:
        api.stop()
        a.stop()
        if b:
            b.stop()


def test_queue_jobs_of_abandoned_requests_are_removed_before_a_worker_takes_them(redis_server, omi_dir, portrait,
                                                                               tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    bigs = [_b64(big_photo(portrait, tmp_path / f"big{i}.jpg", side=5000 - 10 * i)) for i in range(3)]
    smalls = [_b64(p) for p in small_faces(omi_dir, tmp_path / "small", 6)]
    w = WorkerProc(env, tmp_path / "w.log", concurrency=1)  # takes up to 2 jobs at a time
    try:
        w.wait_started()
        wait_live(env)
        with Api(env, "--via", "queue") as api:
            api.wait_ready()
            url = api.url + "/api/score"

            async def scene() -> None:
                async with httpx.AsyncClient(timeout=120) as client:
                    async def abandon(image: str) -> None:
                        try:
                            async with httpx.AsyncClient(timeout=0.5) as c:
                                await c.post(url, json={"image": image})
                        except httpx.TimeoutException:
                            pass

                    # the worker's scoring process stopped: the big photos it takes cannot finish
                    # before the other clients give up, however fast this machine scores
                    with paused(w.proc.pid):
                        slow = [asyncio.ensure_future(client.post(url, json={"image": b})) for b in bigs]
                        await asyncio.sleep(0.5)
                        await asyncio.gather(*[abandon(s) for s in smalls])
                    assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 3

            asyncio.run(scene())
            time.sleep(2.0)  # whatever the worker had already taken finishes
            done = {e["job"] for e in w.events("completed")}
            assert len(done) <= 3 + 1, done  # the big ones, and at most one taken ahead while they ran
            settings = settings_for(env)
            left = redis.Redis.from_url(settings.redis_url).llen(f"bull:{settings.queue}:wait")
            assert left == 0
    finally:
        w.stop()


def test_queue_request_whose_only_worker_died_is_told_so_before_its_timeout(redis_server, big_b64, tmp_path):
    """The worker holding the job dies and none replaces it: once its heartbeat has expired the
    request gets 503 "no live worker" (the same detection as `results --wait`), not a timeout."""
    env = base_env(redis_server.url, tmp_path / "home")
    a = WorkerProc(env, tmp_path / "a.log")
    api = Api(env, "--via", "queue", "--timeout", "90")
    try:
        a.wait_started()
        wait_live(env)
        time.sleep(1.1)  # the app caches the worker list for a second
        for pid in scoring_children(a.proc.pid):  # it takes the job and never finishes it
            os.kill(pid, signal.SIGSTOP)

        async def scene() -> httpx.Response:
            async with httpx.AsyncClient(timeout=120) as client:
                req = asyncio.ensure_future(client.post(api.url + "/api/score", json={"image": big_b64}))
                await asyncio.sleep(1.0)
                a.kill9()
                return await req

        r = asyncio.run(scene())
        assert r.status_code == 503 and "no live worker" in r.json()["error"], r.text
        assert r.headers.get("retry-after")
    finally:
        api.stop()
        a.stop()
