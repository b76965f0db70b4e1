"""`facescore serve api` under load, on 127.0.0.1: throughput, latency and status counts at several
concurrencies, peak memory of every process involved, and one real photo's latency while large
images and abandoned requests are in flight.

    python bench/bench_api.py [--via local,queue] [--levels 1,8,32,128] [--rounds 2] [--compare DIR]

Starts its own redis-server on a free port, the API (`serve api --via ...`) and, for the queue,
one `facescore worker` with --processes processes; all die with the bench. Every request sends a
distinct image (a 256 px OMI face with one pixel changed), so the queue's content-addressed job ids
never answer from a kept result. Bounded: at most max(16, concurrency) requests per level, 60 s
per request. `--compare DIR` runs another checkout (the "before") with this venv, alternated
with this one, round by round; each level reports the best round and the spread.

The anchor is concurrency 1 of the same run: `x c=1` is requests/s against it.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_queue import free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"


class Images:
    """Distinct small real faces: a base OMI photo with one random pixel changed, as base64."""

    def __init__(self, n_base: int = 40, side: int = 256) -> None:
        self.bases = []
        for src in sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem))[:n_base]:
            with Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((side, side))
                self.bases.append(im.copy())
        self.rng = random.Random(7)

    def next(self) -> str:
        im = self.rng.choice(self.bases).copy()
        im.putpixel((self.rng.randrange(im.width), self.rng.randrange(8)),
                    tuple(self.rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        return base64.b64encode(buf.getvalue()).decode()

    def large(self, side: int = 4000) -> str:
        """A big real photo: an OMI face upscaled (decode and detection cost grow with pixels)."""
        im = self.rng.choice(self.bases).resize((side, side * 3 // 4))
        im.putpixel((self.rng.randrange(im.width), 0), tuple(self.rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return base64.b64encode(buf.getvalue()).decode()


class Memory:
    """Peak RSS of a set of process trees, sampled from /proc every 0.2 s."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.peak: dict[str, int] = {}
        self.peak_total: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def children() -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(d))
        return kids

    @staticmethod
    def rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        kids = self.children()
        for name, root in self.roots.items():
            total, todo, i = 0, [(root, name)], 0
            while todo:
                pid, label = todo.pop()
                r = self.rss(pid)
                total += r
                self.peak[label] = max(self.peak.get(label, 0), r)
                for j, kid in enumerate(sorted(kids.get(pid, []))):
                    i += 1
                    todo.append((kid, f"{name} child {j}"))
            self.peak_total[name] = max(self.peak_total.get(name, 0), total)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(0.2)


async def one(client: httpx.AsyncClient, url: str, image: str) -> tuple[int, float]:
    start = time.perf_counter()
    try:
        r = await client.post(url, json={"image": image}, timeout=60)
        status = r.status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__  # type: ignore[assignment]
    return status, time.perf_counter() - start


async def level(url: str, imgs: Images, conc: int) -> dict:
    n = max(16, conc)
    bodies = [imgs.next() for _ in range(n)]
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits) as client:
        sem = asyncio.Semaphore(conc)

        async def go(b: str) -> tuple[int, float]:
            async with sem:
                return await one(client, url, b)

        start = time.perf_counter()
        out = await asyncio.gather(*[go(b) for b in bodies])
        wall = time.perf_counter() - start
    lat = sorted(t for _, t in out)
    ok = [t for s, t in out if s == 200]
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"conc": conc, "n": n, "wall": wall, "ok_per_s": len(ok) / wall, "p50": q[49], "p95": q[94],
            "p99": q[98], "status": dict(Counter(str(s) for s, _ in out))}


async def abandoned_and_large(url: str, imgs: Images, n_abandon: int = 60, n_large: int = 2) -> dict:
    """One real photo's latency alone, then while n_large big photos (4000 px) are scored and
    n_abandon requests with 1600 px photos were sent and given up after 1 s."""
    async with httpx.AsyncClient() as client:
        alone = [(await one(client, url, imgs.next()))[1] for _ in range(3)]
        async def big() -> tuple[int, float]:
            async with httpx.AsyncClient() as c:
                return await one(c, url, imgs.large())

        large = [asyncio.create_task(big()) for _ in range(n_large)]

        async def abandon() -> None:
            try:
                async with httpx.AsyncClient() as c:
                    await c.post(url, json={"image": imgs.large(1600)}, timeout=1.0)
            except httpx.HTTPError:
                pass

        await asyncio.gather(*[abandon() for _ in range(n_abandon)])
        status, busy = await one(client, url, imgs.next())
        large_out = await asyncio.gather(*large)
    return {"alone_s": min(alone), "after_abandon_s": busy, "status": status,
            "large": [(s, round(t, 2)) for s, t in large_out]}


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=log.parent)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    try:  # whatever the group still holds (the orphans the issue describes)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_mode(via: str, args: argparse.Namespace, tmp: Path, imgs: Images, repo: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESCORE_", "FACE_", "QDRANT_"))}
    env["PYTHONPATH"] = str(Path(repo or REPO).resolve())  # and cwd elsewhere: `-m` puts cwd first
    rport = free_port()
    env.update(REDIS_URL=f"redis://127.0.0.1:{rport}", FACESCORE_HOME=str(tmp / via / "home"),
               FACESCORE_QUEUE=f"bench-{uuid.uuid4().hex[:6]}", PYTHONUNBUFFERED="1")
    tmp = tmp / uuid.uuid4().hex[:6]
    (tmp / via).mkdir(parents=True)
    cli = [sys.executable, "-m", "facescore_cli"]
    redis_proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(rport), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs = {"redis": redis_proc}
    try:
        wait_port(rport)
        if via == "queue":
            procs["worker"] = start(cli + ["worker", "--concurrency", str(args.processes)], env, tmp / via / "worker.log")
            deadline = time.monotonic() + 90
            while '"started"' not in (tmp / via / "worker.log").read_text():
                if time.monotonic() > deadline or procs["worker"].poll() is not None:
                    raise RuntimeError((tmp / via / "worker.log").read_text()[-2000:])
                time.sleep(0.2)
        else:
            env["FACESCORE_API_PROCESSES"] = str(args.processes)  # read by the new code only
        port = free_port()
        procs["api"] = start(cli + ["serve", "api", "--via", via, "--port", str(port), "--log-level", "warning"],
                             env, tmp / via / "api.log")
        wait_port(port, 90)
        url = f"http://127.0.0.1:{port}/api/score"
        mem = Memory({k: p.pid for k, p in procs.items()})
        asyncio.run(level(url, imgs, args.processes))  # warm: every process has its models loaded
        rows = [asyncio.run(level(url, imgs, c)) for c in args.levels]
        probe = asyncio.run(abandoned_and_large(url, imgs))
        time.sleep(0.5)
        mem.stop.set()
        mem.thread.join()
        return {"via": via, "code": repo or "this checkout", "rows": rows, "probe": probe, "peak": mem.peak,
                "peak_total": mem.peak_total}
    finally:
        for p in reversed(list(procs.values())):
            stop(p)


def report(runs: list[dict], processes: int) -> None:
    """Best of the rounds per level (ok/s), with the spread between rounds."""
    first = runs[0]
    print(f"\n--via {first['via']} ({first['code']}), {processes} scoring processes, best of {len(runs)} "
          f"(spread: (max-min)/max of ok/s)")
    print(f"{'conc':>5} {'n':>4} {'ok/s':>6} {'spread':>6} {'x c=1':>6} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7}  status")
    anchor = max(r["rows"][0]["ok_per_s"] for r in runs) or 1e-9
    for i, row in enumerate(first["rows"]):
        rounds = [r["rows"][i] for r in runs]
        best = max(rounds, key=lambda x: x["ok_per_s"])
        rates = [x["ok_per_s"] for x in rounds]
        spread = (max(rates) - min(rates)) / max(rates) if max(rates) else 0.0
        print(f"{row['conc']:>5} {row['n']:>4} {best['ok_per_s']:>6.2f} {spread:>6.0%} {best['ok_per_s'] / anchor:>6.2f} "
              f"{best['p50']:>7.2f} {best['p95']:>7.2f} {best['p99']:>7.2f}  {best['status']}")
    for r in runs:
        p = r["probe"]
        print(f"one photo: alone {p['alone_s']:.2f} s; after 60 abandoned requests with 2 large photos in flight "
              f"{p['after_abandon_s']:.2f} s (status {p['status']}; large: {p['large']})")
    peak: dict[str, int] = {}
    totals: dict[str, int] = {}
    for r in runs:
        for k, v in r["peak"].items():
            peak[k] = max(peak.get(k, 0), v)
        for k, v in r["peak_total"].items():
            totals[k] = max(totals.get(k, 0), v)
    print("peak RSS MB: " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(peak.items()))
          + " | per tree: " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in totals.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--via", default="local,queue")
    ap.add_argument("--levels", default="1,8,32,128")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repo", default="", help="run this checkout's facescore_cli instead")
    ap.add_argument("--compare", default="", help="also run this checkout (the 'before'), alternated with ours")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    imgs = Images()
    codes = ([args.compare] if args.compare else []) + [args.repo]
    out: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        for via in args.via.split(","):
            for _ in range(args.rounds):
                for code in codes:
                    run = run_mode(via, args, Path(tmp), imgs, code)
                    out.setdefault((via, run["code"]), []).append(run)
    for runs in out.values():
        report(runs, args.processes)
    if args.json:
        Path(args.json).write_text(json.dumps([r for runs in out.values() for r in runs], indent=1))


if __name__ == "__main__":
    main()
