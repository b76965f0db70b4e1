"""The face store in embedded mode at 1k, 10k and 50k stored faces: ms per upsert, rank,
similar and open, with ratios against the 1k anchor run beside them.

    python bench/bench_store.py            # 1k, 10k, 50k
    python bench/bench_store.py 1000 5000  # other sizes (the first is the anchor)

The stored faces are synthetic: 128-d vectors drawn around a common direction (as real face
embeddings are: different people have cosine ~0.8-0.93), scores ~N(50, 15) with one decimal,
and the same payload shape facescore stores. The cost of the embedded store depends on the
number of points and their payload, not on what the vectors look like, so synthetic data
measures the same thing as real faces would; it says nothing about search quality.

upsert = one one-face image stored through FaceStore.upsert (a new point each time);
rank = FaceStore.rank: in embedded mode a bisect in the copy of the scores loaded by the first
rank of a run ("first rank", which pays the load); "rank by count" = the server's way, three
counts (two with a range filter on score), run against the embedded store to show why it is
not used there;
similar = FaceStore.similar, top 10; open = opening the store from disk (each CLI run pays it).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facescore_cli.config import Settings  # noqa: E402
from facescore_cli.ml.types import Face  # noqa: E402
from facescore_cli.result import FaceResult, ImageResult  # noqa: E402
from facescore_cli.store import FaceStore, collection_name  # noqa: E402

MODEL = "bench-1"
DIM = 128
REPS = {"upsert": 30, "rank": 200, "rank by count": 3, "similar": 15}


def vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    base = np.ones(DIM) / np.sqrt(DIM)
    v = base * 2.5 + rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fill(store: FaceStore, rng: np.random.Generator, n: int) -> float:
    from qdrant_client import models

    name = collection_name(MODEL)
    store._ensure(name, DIM)
    # The embedded store commits (and fsyncs) every point; filling 50k that way takes ~15 min.
    # The fill turns fsync off on qdrant-client's private sqlite connection; the timed upserts
    # below run with the default (synchronous=FULL) on a freshly opened store.
    store.client._client.collections[name].storage.storage.execute("PRAGMA synchronous=OFF")
    start = time.perf_counter()
    for lo in range(0, n, 1000):
        k = min(1000, n - lo)
        vecs, scores = vectors(rng, k), np.round(np.clip(rng.normal(50, 15, k), 0, 100), 1)
        store.client.upsert(name, wait=True, points=[
            models.PointStruct(id=str(uuid.uuid4()), vector=vecs[i].tolist(), payload={
                "path": f"synthetic/{lo + i}.jpg", "file": f"{lo + i}.jpg", "sha256": uuid.uuid4().hex * 2,
                "face": 0, "box": [10, 10, 100, 100], "confidence": 0.99, "score": float(scores[i]),
                "vibe": "calm", "traits": {"trustworthy": 50.0, "happy": 40.0}, "model": MODEL,
                "source": "local", "stored_at": "2025-01-01T00:00:00+00:00"})
            for i in range(k)])
    return time.perf_counter() - start


def one_face(rng: np.random.Generator) -> ImageResult:
    face = Face(box=(10, 10, 100, 100), confidence=0.99, landmarks=((0.0, 0.0),) * 5)
    return ImageResult(path="new.jpg", faces=[FaceResult(face=face, score=float(round(rng.uniform(0, 100), 1)),
                                                         vibe="calm", rank=50.0)],
                       source="local", model=MODEL, sha256=uuid.uuid4().hex * 2,
                       embeddings=[vectors(rng, 1)[0].tolist()])


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run(n: int) -> dict[str, float]:
    rng = np.random.default_rng(n)
    with tempfile.TemporaryDirectory() as home:
        settings = Settings.load(environ={"FACESCORE_HOME": home}, dotenv=None)
        with FaceStore.open(settings) as store:
            fill_s = fill(store, rng, n)
        t = time.perf_counter()
        store = FaceStore.open(settings)
        open_ms = (time.perf_counter() - t) * 1000
        try:
            query = vectors(rng, 1)[0].tolist()
            name = collection_name(MODEL)
            t = time.perf_counter()
            store.rank(MODEL, 50.0, excluding_self=False)
            first_rank_ms = (time.perf_counter() - t) * 1000
            out = {
                "upsert": timed(lambda: store.upsert(one_face(rng)), REPS["upsert"]),
                "rank": timed(lambda: store.rank(MODEL, float(rng.uniform(0, 100)), excluding_self=False), REPS["rank"]),
                "first rank": first_rank_ms,
                "rank by count": timed(lambda: store._counts(name, float(rng.uniform(0, 100))), REPS["rank by count"]),
                "similar": timed(lambda: store.similar(query, MODEL, 10), REPS["similar"]),
                "open": open_ms,
                "fill (s)": fill_s,
            }
        finally:
            store.close()
    return out


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1_000, 10_000, 50_000]
    results = {}
    for n in sizes:
        print(f"{n:,} faces ...", file=sys.stderr, flush=True)
        results[n] = run(n)
    anchor = results[sizes[0]]
    ops = list(anchor)
    print(f"\nembedded store (qdrant-client local mode), median ms per op; ratio vs the {sizes[0]:,}-face anchor")
    print(f"{'faces':>8} " + " ".join(f"{op:>19}" for op in ops))
    for n in sizes:
        cells = []
        for op in ops:
            v = results[n][op]
            cells.append(f"{v:9.3f} ({v / anchor[op]:5.1f}x)" if anchor[op] else f"{v:9.3f}")
        print(f"{n:>8,} " + " ".join(f"{c:>19}" for c in cells))


if __name__ == "__main__":
    main()
