"""The ML services against the in-process models, same images, same run.

    python bench/bench_services.py [--images 40] [--threads 0] [--workers 1] [--folder DIR]

Starts `facescore serve detection` and `facescore serve embedding` on free ports (models loaded
before the clock starts). Anchor: the same detect / embed calls in this process.
  1. /detect and /embed latency, p50 and p95, at client concurrency 1 and 4, against the
     in-process call on the same image.
  2. Throughput of the chain's remote link (RemoteBackend.analyze: /detect then /embed, original
     bytes) against the local link (LocalBackend.analyze) on the same images, one caller and
     four callers (threads) for remote.
Images: OMI portraits (1024x1024, one face each), else examples/. Prints figures only.
"""
from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"
sys.path.insert(0, str(REPO))

from facescore_cli import images as _images  # noqa: E402
from facescore_cli.config import Settings  # noqa: E402
from facescore_cli.ml.detect import detect  # noqa: E402
from facescore_cli.ml.embed import embed  # noqa: E402
from facescore_cli.ml.types import Face  # noqa: E402
from facescore_cli.scoring import LocalBackend  # noqa: E402
from facescore_cli.services.client import RemoteBackend  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, threads: int, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FACESCORE_SERVICE_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "facescore_cli", "serve", kind, "--port", str(port),
                             "--threads", str(threads), "--workers", str(workers), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{kind} service did not start")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(calls: list[Callable[[], object]], concurrency: int) -> tuple[list[float], float]:
    """Latency of each call, and the wall time of all of them at this concurrency."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(timed, calls))
    return lat, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="inference threads per service (0 = its default)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes per service")
    ap.add_argument("--folder", type=Path, default=None)
    args = ap.parse_args()

    folder = args.folder or (OMI if OMI.is_dir() else REPO / "examples" / "faces")
    files = sorted(folder.glob("*.jpg"))[: args.images]
    blobs = [f.read_bytes() for f in files]
    decoded = [_images.decode(b) for b in blobs]
    print(f"{len(files)} images from {folder}; {os.cpu_count()} cores; service threads "
          f"{args.threads or 'default'}, workers {args.workers}")

    procs = []
    try:
        det_proc, det_url = start("detection", args.threads, args.workers)
        procs.append(det_proc)
        emb_proc, emb_url = start("embedding", args.threads, args.workers)
        procs.append(emb_proc)

        # Warm the local models and compute the faces /embed gets.
        local = LocalBackend()
        local.analyze(decoded[0], blobs[0])
        faces = [[Face.from_json(f.to_json()) for f in detect(img)] for img in decoded]
        payloads = [{"image": base64.b64encode(b).decode(), "faces": [f.to_json() for f in fs]}
                    for b, fs in zip(blobs, faces)]
        client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=8))
        client.post(det_url + "/detect", content=blobs[0], headers={"Content-Type": "image/jpeg"})
        client.post(emb_url + "/embed", json=payloads[0])

        print("\n1. latency per request, ms (anchor: the same call in this process)")
        print(f"{'call':<10}{'conc':>5}{'p50':>9}{'p95':>9}{'req/s':>9}{'local p50':>11}{'ratio p50':>11}")
        local_det = [timed(lambda img=img: detect(img)) for img in decoded]
        local_emb = [timed(lambda img=img, fs=fs: embed(img, fs)) for img, fs in zip(decoded, faces)]
        for name, anchor, make in (
            ("/detect", local_det, lambda i: lambda: client.post(det_url + "/detect", content=blobs[i],
                                                                 headers={"Content-Type": "image/jpeg"})),
            ("/embed", local_emb, lambda i: lambda: client.post(emb_url + "/embed", json=payloads[i])),
        ):
            for conc in (1, 4):
                lat, wall = run([make(i) for i in range(len(blobs))], conc)
                print(f"{name:<10}{conc:>5}{pct(lat, 50):>9.1f}{pct(lat, 95):>9.1f}{len(lat) / wall:>9.2f}"
                      f"{pct(anchor, 50):>11.1f}{pct(lat, 50) / pct(anchor, 50):>10.2f}x")

        print("\n2. throughput of the chain's links on the same images (detect + embed, no head)")
        settings = Settings.load(environ={"FACE_DETECTION_SERVICE": det_url, "FACE_EMBEDDING_SERVICE": emb_url,
                                          "ML_SERVICE_TIMEOUT": "60000"}, dotenv=None)
        remote = RemoteBackend(settings)
        rows = []
        _, wall = run([lambda i=i: local.analyze(decoded[i], blobs[i]) for i in range(len(blobs))], 1)
        rows.append(("local, 1 caller", len(blobs) / wall))
        for conc in (1, 4):
            _, wall = run([lambda i=i: remote.analyze(decoded[i], blobs[i]) for i in range(len(blobs))], conc)
            rows.append((f"remote, {conc} caller{'s' if conc > 1 else ''}", len(blobs) / wall))
        base = rows[0][1]
        for name, rate in rows:
            print(f"{name:<20}{rate:>8.2f} img/s{rate / base:>8.2f}x local")
        same = all(np.allclose(local.analyze(decoded[i], blobs[i])[1], remote.analyze(decoded[i], blobs[i])[1],
                               atol=1e-6) for i in range(min(5, len(blobs))))
        print(f"remote vectors equal the local ones (first 5 images): {same}")
        print(f"\nlocal detect p50 {statistics.median(local_det) * 1000:.1f} ms, "
              f"embed p50 {statistics.median(local_emb) * 1000:.1f} ms")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
