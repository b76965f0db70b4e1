"""The producers: --via auto|queue, submit/results, dedup by content, bad inputs at submit, and
saying so quickly when nothing can serve. Real redis-server, real `facescore worker` processes."""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from conftest import dies_with_pytest, free_port
from facescore_cli import queue
from queue_support import WorkerProc, base_env, real_ml_available, run_cli, settings_for, wait_live


@pytest.fixture()
def folder(tmp_path: Path, portrait: Path, group_photo: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(portrait, d / "portrait.jpg")
    shutil.copy(portrait, d / "same-bytes.jpg")  # same content: one job, two rows
    shutil.copy(group_photo, d / "group.jpg")
    (d / "broken.jpg").write_bytes(b"not a jpeg at all")
    return d


def test_via_auto_says_which_and_picks_local_then_queue(redis_server, portrait, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    res = run_cli(["score", str(portrait), "--via", "auto", "--json", "--no-store", "-v"], env)  # said with -v only
    assert res.returncode == 0, res.stderr
    assert "via auto: scoring locally (no live worker" in res.stderr
    assert res.stderr.count("via auto") == 1
    local = json.loads(res.stdout)

    down = base_env(f"redis://127.0.0.1:{free_port()}", tmp_path / "home")
    start = time.monotonic()
    res = run_cli(["score", str(portrait), "--via", "auto", "--json", "--no-store", "-v"], down)
    assert res.returncode == 0 and "scoring locally" in res.stderr and "does not answer" in res.stderr
    assert time.monotonic() - start < 15

    w = WorkerProc(env, tmp_path / "w.log")
    try:
        w.wait_started()
        wait_live(env)
        res = run_cli(["score", str(portrait), "--via", "auto", "--json", "--no-store"], env)
        assert res.returncode == 0, res.stderr
        assert "via auto: queue" in res.stderr and res.stderr.count("via auto") == 1
        queued = json.loads(res.stdout)
        assert w.events("completed")  # the worker scored it
        assert [(r["score"], r["vibe"], r["rank"]) for r in queued] == [(r["score"], r["vibe"], r["rank"]) for r in local]
        assert queued[0]["path"] == str(portrait)
    finally:
        w.stop()


def test_via_queue_without_worker_or_redis_fails_fast(redis_server, portrait, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    start = time.monotonic()
    res = run_cli(["score", str(portrait), "--via", "queue"], env)
    assert res.returncode == 2 and "no live worker" in res.stderr
    down = base_env(f"redis://127.0.0.1:{free_port()}", tmp_path / "home")
    res = run_cli(["batch", str(portrait), "--out", str(tmp_path / "r.csv"), "--via", "queue"], down)
    assert res.returncode == 2 and "does not answer" in res.stderr
    assert time.monotonic() - start < 20


def test_submit_then_results_later_with_dedup_and_bad_inputs(redis_server, folder, tmp_path):
    cap = max(p.stat().st_size for p in folder.iterdir()) + 1
    env = base_env(redis_server.url, tmp_path / "home", FACESCORE_MAX_IMAGE_BYTES=str(cap))
    big = folder / "huge.png"
    big.write_bytes(b"\x89PNG" + b"\0" * cap)
    # No worker yet: submit returns at once with the id; results --wait says so within seconds.
    res = run_cli(["submit", str(folder), "--json", "--via", "queue"], env)  # queue with no worker yet
    assert res.returncode == 1, res.stderr  # one input could not be queued
    sub = json.loads(res.stdout)
    assert sub["inputs"] == 5 and sub["jobs"] == 3  # portrait twice -> one job; huge.png not queued
    assert [e["path"] for e in sub["errors"]] == [str(big)] and "cap" in sub["errors"][0]["error"]
    assert "no live worker" in res.stderr

    start = time.monotonic()
    res = run_cli(["results", sub["batch"], "--wait"], env)
    assert res.returncode == 1 and "no live worker" in res.stderr and "still queued" in res.stderr
    assert time.monotonic() - start < 20

    w = WorkerProc(env, tmp_path / "w.log", concurrency=2)
    try:
        w.wait_started()
        out = tmp_path / "results.csv"
        res = run_cli(["results", sub["batch"], "--wait", "--out", str(out)], env)
        assert res.returncode == 1, res.stderr  # broken.jpg and huge.png failed
        rows = list(csv.DictReader(out.open()))
        by_path = {}
        for r in rows:
            by_path.setdefault(Path(r["path"]).name, []).append(r)
        assert sorted(by_path) == ["broken.jpg", "group.jpg", "huge.png", "portrait.jpg", "same-bytes.jpg"]
        assert "not an image" in by_path["broken.jpg"][0]["error"]
        assert "cap" in by_path["huge.png"][0]["error"]
        assert by_path["portrait.jpg"][0]["score"] == by_path["same-bytes.jpg"][0]["score"] != ""
        assert len(by_path["group.jpg"]) >= (2 if real_ml_available() else 1)  # one row per face
        first = len(w.events("completed")) + len(w.events("failed"))
        assert first == 3
        if real_ml_available():  # results stored what it collected: the portrait is its own best match
            res = run_cli(["similar", str(folder / "portrait.jpg"), "--json"], env)
            assert res.returncode == 0, res.stderr
            top = json.loads(res.stdout)[0]
            assert top["similarity"] > 0.99 and Path(top["path"]).name in ("portrait.jpg", "same-bytes.jpg")

        # Collect again, as JSON: same answers, nothing scored again.
        res = run_cli(["results", sub["batch"], "--json"], env)
        again = {Path(r["path"]).name: r for r in json.loads(res.stdout)}
        assert again["portrait.jpg"]["score"] == float(by_path["portrait.jpg"][0]["score"])
        # The same images in a new batch: served from the kept results.
        res = run_cli(["batch", str(folder), "--out", str(tmp_path / "b.jsonl"), "--via", "queue", "--no-store"], env)
        assert res.returncode == 1
        assert len((tmp_path / "b.jsonl").read_text().splitlines()) == len(rows)
        completed = len(w.events("completed"))
        assert completed == 2  # portrait + group, once each; broken.jpg fails again at once
    finally:
        w.stop()


def test_results_of_an_unknown_batch(redis_server, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    res = run_cli(["results", "nope"], env)
    assert res.returncode == 2 and "no batch" in res.stderr


def test_live_workers_and_choose_via(redis_server, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    settings = settings_for(env)
    assert queue.live_workers(settings) == []
    assert queue.choose_via(settings, "auto")[0] == "local"
    with pytest.raises(queue.NoWorker):
        queue.choose_via(settings, "queue")
    down = settings_for(base_env(f"redis://:secret@127.0.0.1:{free_port()}", tmp_path / "home"))
    with pytest.raises(queue.QueueUnavailable) as info:
        queue.live_workers(down)
    assert "secret" not in str(info.value)  # the password never reaches a message
    assert queue.job_id("ab" * 32, "head v1:2") == "ab" * 32 + "-head_v1_2"


def test_password_and_tls_redis_url(portrait, tmp_path):
    """REDIS_URL=rediss://:password@host:port/0?ssl_ca_certs=... works end to end."""
    import shutil as sh
    import subprocess

    from conftest import wait_for_port

    if not sh.which("openssl"):
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([sh.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
                               "--bind", "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                               "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                               "--requirepass", "p@ss word", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=dies_with_pytest())
    w = None
    try:
        wait_for_port(port)
        url = f"rediss://:p%40ss%20word@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        env = base_env(url, tmp_path / "home")
        w = WorkerProc(env, tmp_path / "w.log")
        w.wait_started()
        res = run_cli(["score", str(portrait), "--via", "queue", "--json", "--no-store"], env)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)[0]["score"] is not None and w.events("completed")
        assert "p@ss" not in res.stderr and "p%40ss" not in res.stderr

        wrong = base_env(f"rediss://:wrong@127.0.0.1:{port}/0?ssl_ca_certs={cert}", tmp_path / "home")
        res = run_cli(["score", str(portrait), "--via", "queue"], wrong)
        assert res.returncode == 2 and "does not answer" in res.stderr
        plain = base_env(f"redis://:p%40ss%20word@127.0.0.1:{port}/0", tmp_path / "home")
        res = run_cli(["score", str(portrait), "--via", "queue"], plain)
        assert res.returncode == 2  # a TLS port refuses plain text
    finally:
        if w:
            w.stop()
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("url,shown", [
    ("redis://PASSWORD@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),  # a password in the user position
    ("redis://:PASSWORD@h:1", "redis://:***@h:1"),
    ("rediss://user:PASSWORD@h/0?password=PASSWORD&db=1", "rediss://user:***@h/0?password=***&db=1"),
    ("redis://localhost:6379", "redis://localhost:6379"),
    ("http://user@qdrant:6333", "http://user@qdrant:6333"),  # http's lone userinfo is a name
    ("redis://PASSWORD@h:notaport", "redis://***@h:notaport"),
])
def test_urls_are_printed_without_their_password(url, shown):
    from facescore_cli.health import redact

    assert redact(url) == shown


def test_health_and_worker_never_print_a_password_in_the_user_position(tmp_path, portrait):
    env = base_env(f"redis://PASSWORD@127.0.0.1:{free_port()}", tmp_path / "home")  # nothing listens
    for args in (["health", "--json"], ["health"], ["worker"], ["submit", str(portrait)]):
        res = run_cli(args, env, timeout=60)
        said = res.stdout + res.stderr
        assert "PASSWORD" not in said and "***@127.0.0.1" in said.replace("\n", ""), (args, said)


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers: a Redis behind
    a firewall that drops packets, which costs a client its whole timeout (a refused port does not)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    @property
    def connections(self) -> int:
        return len(self.held)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture()
def blackhole():
    server = Blackhole()
    yield server
    server.close()


def test_a_redis_that_never_answers_is_asked_once_per_retry_not_once_per_caller(blackhole, tmp_path):
    import asyncio

    settings = settings_for(base_env(f"redis://:secret@127.0.0.1:{blackhole.port}", tmp_path / "home"))

    async def scene() -> None:
        async with queue.QueueClient(settings, timeout=0.5, redis_retry_s=3600) as client:
            async def burst() -> list[BaseException]:
                return await asyncio.gather(*[client.workers() for _ in range(5)], return_exceptions=True)

            first = await burst()  # five callers at once share one look
            assert all(isinstance(e, queue.QueueUnavailable) for e in first), first
            assert "does not answer" in str(first[0]) and "secret" not in str(first[0])
            one_look = blackhole.connections
            assert one_look >= 1
            for _ in range(3):  # within redis_retry_s: the failure is remembered, Redis is not asked
                assert all(isinstance(e, queue.QueueUnavailable) for e in await burst())
            assert blackhole.connections == one_look
            with pytest.raises(queue.QueueUnavailable):  # a submit looks afresh, and says so
                await client.submit([])
            assert blackhole.connections > one_look

            # Once redis_retry_s is over, Redis is asked again; meanwhile every caller is told at
            # once that it is down (the look in progress is nobody's wait).
            client.redis_retry_s = 0.0
            before = blackhole.connections
            assert all(isinstance(e, queue.QueueUnavailable) for e in await burst())
            await asyncio.sleep(1.5)  # the look, which times out after 0.5 s
            assert blackhole.connections - before == one_look

    asyncio.run(scene())


def test_api_via_auto_scores_locally_and_asks_a_silent_redis_once(blackhole, portrait, tmp_path):
    """Three requests at once to an API whose Redis swallows packets: all scored locally, and the
    timeout is paid once for all (it was once per request, every request, before)."""
    import base64
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from facescore_cli.api import create_app

    settings = settings_for(base_env(f"redis://127.0.0.1:{blackhole.port}", tmp_path / "home"))
    body = {"image": base64.b64encode(portrait.read_bytes()).decode()}
    with TestClient(create_app(settings, via="auto", processes=1)) as client:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: client.post("/api/score", json=body), range(3)))
        assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
        assert len({r.json()["data"]["score"] for r in answers}) == 1
        assert blackhole.connections == 1  # one look at Redis for the three, not one each
        health = client.get("/health").json()  # health always asks, and tells why it scores locally
        assert health["can_score"] is True and "does not answer" in health["queue"]["problem"]


def test_one_client_serves_a_batch_and_single_images_with_one_job_per_image(redis_server, omi_dir, tmp_path):
    """A batch's wait and two single-image waits (the API's) in one QueueClient at once: each gets
    its results from the one events stream, and an image in both is scored once."""
    import asyncio

    from queue_support import small_faces

    env = base_env(redis_server.url, tmp_path / "home")
    settings = settings_for(env)
    photos = small_faces(omi_dir, tmp_path / "faces", 4)
    w = WorkerProc(env, tmp_path / "w.log", concurrency=2)
    try:
        w.wait_started()
        wait_live(env)

        async def scene() -> tuple[list, list]:
            async with queue.QueueClient(settings) as client:
                batch = await client.submit([(p, p.name) for p in photos[:3]], store=False)
                rows = asyncio.ensure_future(_gather(client.results(batch)))
                singles = await asyncio.gather(client.score(photos[2].read_bytes(), 60),  # also in the batch
                                               client.score(photos[3].read_bytes(), 60))
                got = await rows
                assert client.listeners == {}  # every wait let go of its jobs
                return got, list(singles)

        rows, singles = asyncio.run(scene())
        assert sorted(r.path for r in rows) == sorted(p.name for p in photos[:3])
        assert all(r.error is None for r in rows), [r.error for r in rows]
        assert [state for state, _ in singles] == ["completed", "completed"]
        in_batch = next(r for r in rows if r.path == photos[2].name)
        assert singles[0][1]["score"] == in_batch.to_data()["score"] is not None
        done = [e["job"] for e in w.events("completed")]
        assert len(done) == len(set(done)) == 4  # photos[2] once, for the batch and the single wait
    finally:
        w.stop()


async def _gather(results) -> list:
    return [r async for r in results]


def test_the_remembered_failure_ends_when_redis_comes_back(tmp_path):
    """A Redis that was down is asked again after redis_retry_s; once it answers, the workers'
    list is read again (with --via auto the API goes back to the queue by itself)."""
    import asyncio

    from conftest import RedisServer

    server = RedisServer(tmp_path)
    settings = settings_for(base_env(server.url, tmp_path / "home"))

    async def scene() -> list:
        async with queue.QueueClient(settings, redis_retry_s=0.2) as client:
            with pytest.raises(queue.QueueUnavailable):  # nothing listens yet
                await client.workers()
            await asyncio.to_thread(server.start)
            for _ in range(100):
                try:
                    return await client.workers()
                except queue.QueueUnavailable:
                    await asyncio.sleep(0.1)
            raise AssertionError("the workers' list never came back")

    try:
        assert asyncio.run(scene()) == []
    finally:
        server.stop()


def test_slots_sums_the_live_workers_concurrency() -> None:
    """queue.slots: what choose_via, health and the API report as the workers' slots (a worker
    that does not say its concurrency counts as one)."""
    assert queue.slots([]) == 0
    assert queue.slots([{"concurrency": 2}, {"concurrency": 4}, {}]) == 7


def test_the_event_stream_delivers_stops_at_once_and_says_when_redis_went_away(tmp_path):
    """queue.EventStream, what every wait listens with: completed/failed entries as any BullMQ
    writes them (the return value decoded from JSON), a close that does not sit out the blocking
    read, and `alive` False once Redis has gone (the owner then starts another and reads its jobs)."""
    import asyncio

    import redis as redis_sync

    from conftest import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    settings = settings_for(base_env(server.url, tmp_path / "home"))
    key = f"{queue.PREFIX}:q:events"

    async def scene() -> None:
        seen: list[tuple[str, dict]] = []
        first = queue.EventStream(settings, "q", "0-0", lambda e, f: seen.append((e, f)), block_ms=10_000)
        add = redis_sync.Redis.from_url(server.url, decode_responses=True)
        add.xadd(key, {"event": "completed", "jobId": "a", "returnvalue": '{"score": 61.8}', "prev": "active"})
        add.xadd(key, {"event": "failed", "jobId": "b", "failedReason": "not an image", "prev": "active"})
        add.xadd(key, {"event": "completed", "jobId": "c", "returnvalue": "not json"})
        for _ in range(200):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.05)
        assert seen == [("completed", {"jobId": "a", "returnvalue": {"score": 61.8}, "prev": "active"}),
                        ("failed", {"jobId": "b", "failedReason": "not an image", "prev": "active"}),
                        ("completed", {"jobId": "c", "returnvalue": "not json"})]
        await asyncio.sleep(0.2)  # blocked in XREAD now, for up to 10 s
        start = time.monotonic()
        await first.close()
        assert not first.alive and time.monotonic() - start < 5  # not the rest of the 10 s block

        second = queue.EventStream(settings, "q", "$", lambda e, f: seen.append((e, f)), block_ms=1000)
        await asyncio.sleep(0.2)
        assert second.alive
        await asyncio.to_thread(server.stop)
        for _ in range(200):
            if not second.alive:
                break
            await asyncio.sleep(0.05)
        assert not second.alive  # a connection error ends it
        await second.close()
        add.close()

    try:
        asyncio.run(scene())
    finally:
        server.stop()
