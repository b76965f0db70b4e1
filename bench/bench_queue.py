"""Queue mode against local mode on the same images and cores, and one image's round trip.

    python bench/bench_queue.py [--images 100] [--round-trips 30] [--folder DIR]

Starts a private redis-server on a free port and one `facescore worker` with one process per
core. The anchor is local mode with the same number of warm processes (models loaded before the
clock starts, as the worker's are). Queue mode is submit + collect of the same images through
Redis (base64 JSON payloads, BullMQ scripts, events). Round trip: one new image through a warm
worker, submit to result, p50 and p95. Prints figures; the target is overhead <= 10%.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from facescore_cli import pipeline, queue
from facescore_cli.config import Settings
from facescore_cli.images import is_image_path
from facescore_cli.pool import ScoringPool

REPO = Path(__file__).resolve().parents[1]
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def pick_images(folder: Path, n: int) -> list[Path]:
    files = sorted((p for p in folder.rglob("*") if is_image_path(p)), key=lambda p: (len(p.name), p.name))
    if len(files) < n:
        sys.exit(f"need {n} images in {folder}, found {len(files)}")
    return files[:n]


def local_run(paths: list[Path], settings: Settings, jobs: int) -> tuple[float, list]:
    # The worker's pool, so both sides load (or fail to warm up) the models the same way.
    with ScoringPool(settings, jobs) as pool:
        pool.wait_ready()  # warm: every process has loaded its models
        start = time.perf_counter()
        results = [f.result() for f in [pool.submit_file(p, str(p)) for p in paths]]
        return time.perf_counter() - start, results


async def queue_run(paths: list[Path], settings: Settings) -> tuple[float, list]:
    start = time.perf_counter()
    batch = await queue.submit(((p, str(p)) for p in paths), settings, store=False)
    results = [r async for r in queue.collect(batch, settings)]
    return time.perf_counter() - start, results


async def round_trips(image: Path, settings: Settings, n: int, tmp: Path) -> list[float]:
    """Each round trip sends new bytes (a trailer after the JPEG end), so nothing is served from a
    kept result."""
    data = image.read_bytes()
    times = []
    for i in range(n + 2):
        one = tmp / f"rt-{i}{image.suffix}"
        one.write_bytes(data + f"facescore-bench-{uuid.uuid4().hex}".encode())
        start = time.perf_counter()
        batch = await queue.submit([(one, one.name)], settings, store=False)
        results = [r async for r in queue.collect(batch, settings)]
        elapsed = time.perf_counter() - start
        assert len(results) == 1 and not results[0].failed, results
        if i >= 2:  # the first two warm the producer's connections and scripts
            times.append(elapsed)
    return times


async def forget_results(settings: Settings) -> None:
    from bullmq import Queue

    q = Queue(settings.queue, queue.bull_opts(settings))
    try:
        await q.clean(0, 100_000, "completed")
    finally:
        await q.close()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--round-trips", type=int, default=30)
    ap.add_argument("--folder", type=Path, default=OMI if OMI.is_dir() else REPO / "examples")
    ap.add_argument("--jobs", type=int, default=0, help="processes (0 = one per core)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each mode, alternating")
    args = ap.parse_args()
    jobs = args.jobs or pipeline.default_jobs()
    paths = pick_images(args.folder, args.images)
    tmp = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    port = free_port()
    redis_proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}", "FACESCORE_QUEUE": f"bench-{uuid.uuid4().hex[:6]}",
           "FACESCORE_HOME": str(tmp / "home")}
    worker = None
    try:
        wait_port(port)
        settings = Settings.load(environ=env, dotenv=None)
        print(f"{len(paths)} images from {args.folder}, {jobs} process(es), python {sys.version.split()[0]}")

        log = (tmp / "worker.log").open("w")
        worker = subprocess.Popen([sys.executable, "-m", "facescore_cli", "worker", "--concurrency", str(jobs)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not queue.live_workers(settings):
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit(f"the worker did not start: {(tmp / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.1)

        # Alternate the two modes (the idle worker costs nothing while local runs), so load from
        # other processes on the machine falls on both; compare the best run of each.
        local_times, queue_times = [], []
        for i in range(args.repeat):
            local_s, local_results = local_run(paths, settings, jobs)
            local_times.append(local_s)
            sources = sorted({r.source or "error" for r in local_results})
            print(f"local : {local_s:6.2f} s  {len(paths) / local_s:6.2f} img/s  (source: {', '.join(sources)})")
            asyncio.run(forget_results(settings))  # or the kept results would answer at once
            queue_s, queue_results = asyncio.run(queue_run(paths, settings))
            queue_times.append(queue_s)
            assert len(queue_results) == len(paths)
            same = {r.path: [f.score for f in r.faces] for r in local_results} == \
                {r.path: [f.score for f in r.faces] for r in queue_results}
            print(f"queue : {queue_s:6.2f} s  {len(paths) / queue_s:6.2f} img/s  (same scores as local: {same})")
        best_local, best_queue = min(local_times), min(queue_times)
        print(f"queue overhead vs local (best of {args.repeat} each): {(best_queue / best_local - 1) * 100:+.1f}%  "
              f"(target <= +10%)  ratio {best_queue / best_local:.3f}")

        rt = asyncio.run(round_trips(paths[0], settings, args.round_trips, tmp))
        print(f"round trip, one image, warm worker ({len(rt)} runs): p50 {statistics.median(rt) * 1000:.0f} ms, "
              f"p95 {pct(rt, 0.95) * 1000:.0f} ms, min {min(rt) * 1000:.0f} ms")
        single = [r.elapsed_ms for r in local_results[:20]]
        print(f"  (scoring alone, local, per image: median {statistics.median(single):.0f} ms)")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
