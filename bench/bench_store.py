"""The face store at 1k, 10k and 100k faces: the embedded engine (qdrant-edge-py, what facescore
uses), qdrant-client's local mode (what facescore used before) and a numpy floor (sorted scores
and brute-force dot products in memory: no durability, no payload, the least any store can cost).

    python bench/bench_store.py                          # 1k, 10k, 100k; qdrant-client up to 10k
    python bench/bench_store.py --sizes 1000 10000 --legacy-max 10000 --rounds 3
    python bench/bench_store.py --fill 100000 --home /tmp/big   # leave a store to try the CLI on

Each store is filled once per size, then measured in a fresh process per round (so open and RSS
are those of a new CLI run), the three stores alternated within a round; the table shows the best
round and the spread (worst / best) across rounds, and each store's ratio to the numpy floor.

open = opening the store and counting its faces; RSS = the measuring process after every step
(Python, numpy and facescore's imports included: that baseline is printed); upsert = storing
one one-face image; remember = upsert + rank, amortized over 200 new faces including the first
rank's load (the embedded store's histogram, qdrant-client's scroll of every score) and one
flush per 1000 writes; rank = percentile of a score once loaded; similar = top 10 by cosine;
forget = deleting the faces of one image by its SHA-256.

The stored faces are synthetic: 128-d vectors around a common direction (as face embeddings
are), scores ~N(50, 15) with one decimal, and facescore's payload. The cost depends on the
number of points and their payload, not on what the vectors show; synthetic data says nothing
about search quality.
"""
from __future__ import annotations

import argparse
import bisect
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facescore_cli.config import Settings  # noqa: E402
from facescore_cli.ml.types import Face  # noqa: E402
from facescore_cli.result import FaceResult, ImageResult  # noqa: E402
from facescore_cli.store import (FLUSH_EVERY, EmbeddedStore, FaceStore, collection_name, points_of,  # noqa: E402
                                 storable)

MODEL = "bench-1"
DIM = 128
CHUNK = 1000
REMEMBER = 200
REPS = {"upsert": 50, "rank": 500, "similar": 20, "forget": 20}
STORES = ("numpy", "edge", "qdrant-client")
OPS = ("open", "RSS MB", "upsert", "remember", "first rank", "rank", "similar", "forget", "flush")
FACE = Face(box=(10, 10, 100, 100), confidence=0.99, landmarks=((0.0, 0.0),) * 5)


# -- synthetic faces --------------------------------------------------------------------------

def vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = np.ones(DIM) / np.sqrt(DIM) * 2.5 + rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def one_face(rng: np.random.Generator, model: str = MODEL, i: int = 0) -> ImageResult:
    return ImageResult(path=f"synthetic/{i}.jpg", source="local", model=model, sha256=uuid.uuid4().hex * 2,
                       faces=[FaceResult(face=FACE, score=float(round(np.clip(rng.normal(50, 15), 0, 100), 1)),
                                         vibe="calm", rank=50.0, traits={"trustworthy": 50.0, "happy": 40.0})],
                       embeddings=vectors(rng, 1).tolist())


def chunks(rng: np.random.Generator, n: int, model: str = MODEL):
    """Lists of up to CHUNK one-face results, n faces in all."""
    for lo in range(0, n, CHUNK):
        yield [one_face(rng, model, lo + i) for i in range(min(CHUNK, n - lo))]


# -- the three stores, each behind open / upsert / remember / rank / similar / forget ----------

class Edge:
    """facescore's own store, through its public API."""

    def __init__(self, home: Path) -> None:
        self.store = FaceStore.open(Settings.load(environ={"FACESCORE_HOME": str(home)}, dotenv=None))
        assert isinstance(self.store, EmbeddedStore)
        self.n = self.store.count(MODEL)

    @staticmethod
    def fill(home: Path, rng: np.random.Generator, n: int, model: str = MODEL) -> None:
        with FaceStore.open(Settings.load(environ={"FACESCORE_HOME": str(home)}, dotenv=None)) as store:
            for results in chunks(rng, n, model):
                store.put(collection_name(model), [p for r in results for p in points_of(r)])

    def upsert(self, r: ImageResult) -> None:
        self.store.upsert(r)

    def remember(self, r: ImageResult) -> None:
        self.store.remember(r)

    def rank(self, score: float) -> Any:
        return self.store.rank(MODEL, score, excluding_self=False)

    def similar(self, q: list[float]) -> Any:
        return self.store.similar(q, MODEL, 10)

    def forget(self, sha: str) -> Any:
        return self.store.forget([sha])

    def flush(self) -> None:
        self.store.flush()

    def close(self) -> None:
        self.store.close()


class Legacy:
    """qdrant-client's local mode as facescore 0.1 used it: upsert with wait, ranks from a sorted
    copy of every score loaded by the first rank, query_points, count + delete by filter."""

    def __init__(self, home: Path) -> None:
        import warnings

        from qdrant_client import QdrantClient
        warnings.simplefilter("ignore", UserWarning)  # "not recommended past 20,000 points"
        self.client = QdrantClient(path=str(home / "qdrant"))
        self.name = collection_name(MODEL)
        self.n = self.client.count(self.name, exact=True).count
        self.sorted: list[float] | None = None

    @staticmethod
    def fill(home: Path, rng: np.random.Generator, n: int) -> None:
        import warnings

        from qdrant_client import QdrantClient, models
        warnings.simplefilter("ignore", UserWarning)
        client = QdrantClient(path=str(home / "qdrant"))
        name = collection_name(MODEL)
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
        # It commits and fsyncs every point (~15 min for 50k): the fill turns fsync off on its
        # private sqlite connection; the measured runs reopen it with the default (FULL).
        client._client.collections[name].storage.storage.execute("PRAGMA synchronous=OFF")
        for results in chunks(rng, n):
            client.upsert(name, wait=True, points=[models.PointStruct(id=p.id, vector=p.vector, payload=p.payload)
                                                   for r in results for p in points_of(r)])
        client.close()

    def upsert(self, r: ImageResult) -> None:
        from qdrant_client import models

        pts = points_of(r)
        self.client.upsert(self.name, wait=True, points=[models.PointStruct(id=p.id, vector=p.vector, payload=p.payload)
                                                         for p in pts])
        if self.sorted is not None:
            for p in pts:
                bisect.insort(self.sorted, p.payload["score"])

    def remember(self, r: ImageResult) -> None:
        self.upsert(r)
        self.rank(r.faces[0].score)

    def rank(self, score: float) -> Any:
        if self.sorted is None:
            scores, offset = [], None
            while True:
                page, offset = self.client.scroll(self.name, limit=100_000, offset=offset, with_payload=["score"],
                                                  with_vectors=False)
                scores += [float((p.payload or {})["score"]) for p in page]
                if offset is None:
                    break
            self.sorted = sorted(scores)
        return bisect.bisect_left(self.sorted, score), bisect.bisect_right(self.sorted, score)

    def similar(self, q: list[float]) -> Any:
        return self.client.query_points(self.name, query=q, limit=10, with_payload=True).points

    def forget(self, sha: str) -> Any:
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key="sha256", match=models.MatchValue(value=sha))])
        if self.client.count(self.name, count_filter=flt, exact=True).count:
            self.client.delete(self.name, points_selector=models.FilterSelector(filter=flt), wait=True)
        self.sorted = None

    def flush(self) -> None:
        pass  # every write is committed

    def close(self) -> None:
        self.client.close()


class Floor:
    """The least a store can cost: arrays in memory, nothing durable."""

    def __init__(self, home: Path) -> None:
        with np.load(home / "floor.npz") as data:
            self.mat, self.shas = data["vecs"], data["shas"]
            self.sorted = np.sort(data["scores"])
        self.extra: list[np.ndarray] = []
        self.extra_shas: list[str] = []
        self.alive = np.ones(len(self.mat), bool)
        self.n = len(self.mat)

    @staticmethod
    def fill(home: Path, rng: np.random.Generator, n: int) -> None:
        results = [r for rs in chunks(rng, n) for r in rs]
        np.savez(home / "floor.npz", vecs=np.array([r.embeddings[0] for r in results], np.float32),  # type: ignore[index]
                 scores=np.array([r.faces[0].score for r in results]), shas=np.array([r.sha256 for r in results]))

    def upsert(self, r: ImageResult) -> None:
        assert storable(r) and r.embeddings is not None
        self.extra.append(np.asarray(r.embeddings[0], np.float32))
        self.extra_shas.append(r.sha256 or "")
        self.sorted = np.insert(self.sorted, np.searchsorted(self.sorted, r.faces[0].score), r.faces[0].score)

    def remember(self, r: ImageResult) -> None:
        self.upsert(r)
        self.rank(r.faces[0].score)

    def rank(self, score: float) -> Any:
        return np.searchsorted(self.sorted, score, "left"), np.searchsorted(self.sorted, score, "right")

    def _merge(self) -> None:
        if self.extra:
            self.mat = np.vstack([self.mat, *self.extra])
            self.shas = np.concatenate([self.shas, self.extra_shas])
            self.alive = np.concatenate([self.alive, np.ones(len(self.extra), bool)])
            self.extra, self.extra_shas = [], []

    def similar(self, q: list[float]) -> Any:
        self._merge()
        sims = self.mat @ np.asarray(q, np.float32)
        sims[~self.alive] = -2
        top = np.argpartition(-sims, 10)[:10]
        return top[np.argsort(-sims[top])]

    def forget(self, sha: str) -> Any:
        self._merge()
        self.alive[self.shas == sha] = False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


KINDS: dict[str, Any] = {"numpy": Floor, "edge": Edge, "qdrant-client": Legacy}


# -- measuring, in a fresh process per store and round -----------------------------------------

def median_ms(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(kind: str, home: Path, seed: int) -> dict[str, float]:
    import psutil

    rng = np.random.default_rng(seed)
    proc = psutil.Process()
    base_mb = proc.memory_info().rss / 2**20
    t = time.perf_counter()
    store = KINDS[kind](home)
    out = {"open": (time.perf_counter() - t) * 1000, "faces": store.n, "baseline MB": base_mb}
    try:
        fresh = [one_face(rng, i=i) for i in range(REMEMBER)]
        t = time.perf_counter()
        store.remember(fresh[0])
        out["first rank"] = (time.perf_counter() - t) * 1000
        for r in fresh[1:]:
            store.remember(r)
        elapsed = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        store.flush()
        out["flush"] = (time.perf_counter() - t) * 1000
        # amortized over this run's faces: the first rank's load, and a flush per FLUSH_EVERY faces
        out["remember"] = (elapsed + out["flush"] * REMEMBER / FLUSH_EVERY) / REMEMBER
        out["upsert"] = median_ms(lambda: store.upsert(one_face(rng)), REPS["upsert"])
        out["rank"] = median_ms(lambda: store.rank(float(round(rng.uniform(0, 100), 1))), REPS["rank"])
        query = vectors(rng, 1)[0].tolist()
        out["similar"] = median_ms(lambda: store.similar(query), REPS["similar"])
        victims = iter([r.sha256 for r in fresh])
        out["forget"] = median_ms(lambda: store.forget(next(victims)), REPS["forget"])
        out["RSS MB"] = proc.memory_info().rss / 2**20
    finally:
        store.close()
    return out


def run_size(n: int, rounds: int, legacy_max: int, workdir: Path) -> dict[str, dict[str, tuple[float, float]]]:
    kinds = [k for k in STORES if k != "qdrant-client" or n <= legacy_max]
    for kind in kinds:
        home = workdir / f"{kind}-{n}"
        home.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        KINDS[kind].fill(home, np.random.default_rng(n), n)
        print(f"  filled {kind} with {n:,} faces in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]  # alternate who goes first
        for kind in order:
            # Each round changes the store (adds and forgets faces): measure a copy of the fill.
            home = workdir / f"{kind}-{n}-round"
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(workdir / f"{kind}-{n}", home)
            proc = subprocess.run([sys.executable, __file__, "--measure", kind, str(home), str(n + r)],
                                  capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise SystemExit(f"measuring {kind} at {n:,} failed:\n{proc.stderr}")
            runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best: dict[str, dict[str, tuple[float, float]]] = {}
    for kind, rs in runs.items():
        best[kind] = {op: (min(x[op] for x in rs), max(x[op] for x in rs) / max(min(x[op] for x in rs), 1e-9))
                      for op in rs[0]}
    return best


def report(results: dict[int, dict[str, dict[str, tuple[float, float]]]], rounds: int, legacy_max: int) -> None:
    print(f"\nms per operation (RSS in MB), best of {rounds} rounds, (x N) = ratio to the numpy floor, "
          f"±S = spread worst/best across rounds")
    header = f"{'faces':>8} {'op':<11}" + "".join(f"{k:>30}" for k in STORES)
    print(header)
    print("-" * len(header))
    for n, by_kind in results.items():
        for op in OPS:
            cells = []
            anchor = by_kind["numpy"].get(op, (0.0, 1.0))[0]
            for kind in STORES:
                if kind not in by_kind:
                    cells.append(f"{'skipped (> --legacy-max)' if op == 'open' else '':>30}")
                    continue
                v, spread = by_kind[kind].get(op, (float("nan"), 1.0))
                ratio = f"(x{v / anchor:7.1f})" if anchor > 0 and kind != "numpy" else " " * 10
                cells.append(f"{v:11.3f} {ratio} ±{spread:4.2f}")
            print(f"{n:>8,} {op:<11}" + "".join(f"{c:>30}" for c in cells))
        base = by_kind["edge"]["baseline MB"][0]
        print(f"{'':>8} (RSS of a measuring process before opening any store: {base:.0f} MB)")


def fill_home(n: int, home: Path) -> None:
    """Leave an embedded store of n synthetic faces of the bundled model version in `home`."""
    from facescore_cli.ml.head import load_head

    version = load_head().version
    t = time.perf_counter()
    Edge.fill(home, np.random.default_rng(n), n, version)
    with FaceStore.open(Settings.load(environ={"FACESCORE_HOME": str(home)}, dotenv=None)) as store:
        total = store.count(version)
    print(f"{home / 'store'}: {total:,} faces of model {version} ({n:,} added in {time.perf_counter() - t:.1f} s); "
          f"try: FACESCORE_HOME={home} facescore similar examples/faces/omi-46.jpg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--legacy-max", type=int, default=10_000,
                    help="measure qdrant-client's local mode only up to this size (100k: ~25 s per open, long fill)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fill", type=int, metavar="N", help="only fill an embedded store under --home with N faces")
    ap.add_argument("--home", type=Path, help="FACESCORE_HOME for --fill")
    ap.add_argument("--measure", nargs=3, metavar=("KIND", "HOME", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        kind, home, seed = args.measure
        print(json.dumps(measure(kind, Path(home), int(seed))))
        return
    if args.fill is not None:
        if args.home is None:
            ap.error("--fill needs --home DIR")
        fill_home(args.fill, args.home)
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_store-") as tmp:
        for n in args.sizes:
            print(f"{n:,} faces ...", file=sys.stderr, flush=True)
            results[n] = run_size(n, args.rounds, args.legacy_max, Path(tmp))
            for old in Path(tmp).iterdir():
                shutil.rmtree(old)
    report(results, args.rounds, args.legacy_max)


if __name__ == "__main__":
    main()
