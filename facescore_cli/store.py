"""The face store: upsert, rank, similar, forget.

One point per scored face: its embedding (cosine) and a payload describing the face, never the
image. Point ids are uuid5(image SHA-256, face index, model version), so scoring an image again
overwrites its points instead of adding new ones. Each model version has its own shard (embedded)
or collection (server), `faces_<version>`: vectors of different models are not comparable.

`QDRANT_URL` unset: Qdrant's own engine embedded in this process (`qdrant-edge-py`, pre-1.0,
pinned, and used nowhere but here), one shard per model version in `$FACESCORE_HOME/store`. One
process at a time may open it; a second one gets `StoreLocked`, whose message names the fix.
`QDRANT_URL` set: a Qdrant server through qdrant-client (imported only then), shared by any
number of processes.

Durability of the embedded store (docs/store.md): every write reaches the shard's write-ahead
log (a memory-mapped file) before `upsert`, `put` or `forget` return, and a face's `store_rank` is
set only after that. A process that dies, even by SIGKILL, therefore loses nothing it reported
stored: the next open replays the log. `flush` (segments and log fsynced, the log cut) runs every
FLUSH_EVERY faces or FLUSH_EVERY_S seconds of writing, and the engine flushes each shard as `close`
closes it: that bounds what a power cut or a kernel crash can lose (the writes since the last
flush) and keeps the log, which every open replays, short.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, NamedTuple

from .config import Settings
from .errors import FaceScoreError
from .result import ImageResult

log = logging.getLogger(__name__)

COLLECTION_PREFIX = "faces_"
# A fixed namespace keeps ids stable across machines and releases.
NAMESPACE = uuid.UUID("6f0c8b0e-5d7a-4c55-9a8e-2f1d3b9c7e41")
TIMEOUT_S = 10
STORE_DIR = "store"  # under FACESCORE_HOME
LEGACY_DIR = "qdrant"  # where facescore kept qdrant-client's local mode before the embedded engine
MIGRATED_SUFFIX = ".migrated"
LOCK_FILE = ".lock"
# A process that finds the embedded store held waits up to LOCK_WAIT_S for it: the commands that
# hold it briefly (`health`, `similar`, `forget`, another `score`: 0.05-1 s at 100k faces, most
# of it opening the shard) would otherwise make a `score` or `batch` started beside them skip
# storing. It does not wait for a holder that has held the store LONG_HOLD_S already (a worker,
# `serve api`, a long batch: waiting would only delay the warning), nor for its own process.
LOCK_WAIT_S = 3.0
LONG_HOLD_S = 10.0
LOCK_POLL_S = 0.05
SHARD_CONFIG = "edge_config.json"  # the engine writes it when it creates a shard
# A flush is fsyncs, 0.1-0.3 s here whatever the size: every 1000 faces, 0.1-0.3 ms a face.
FLUSH_EVERY = 1000
FLUSH_EVERY_S = 10.0
# The payload fields with an index: `score` for range filters, `sha256` for forget, and
# `score_tenths` (the score x 10, an integer) because the engine counts faces per distinct value
# only on integer and keyword fields, and that histogram is how a face is ranked.
INDEXED = (("score", "Float"), ("sha256", "Keyword"), ("score_tenths", "Integer"))


class StoreUnavailable(FaceScoreError):
    """The face store could not be reached or used; scoring goes on without it."""


class StoreLocked(StoreUnavailable):
    """The embedded store is held by another process; `holder` says which, when it wrote it down."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Match:
    """A stored face, as returned by `similar`."""

    path: str
    face: int
    similarity: float  # 0-1, see `similarity`
    score: float
    vibe: str
    sha256: str
    model: str
    box: list[int]
    stored_at: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "face": self.face, "similarity": self.similarity, "score": self.score,
                "vibe": self.vibe, "sha256": self.sha256, "model": self.model, "box": self.box,
                "stored_at": self.stored_at}

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None, cosine: float, model: str) -> "Match":
        p = payload or {}
        return cls(path=str(p.get("path", "")), face=int(p.get("face", 0)), similarity=similarity(cosine),
                   score=float(p.get("score", 0.0)), vibe=str(p.get("vibe", "")), sha256=str(p.get("sha256", "")),
                   model=str(p.get("model", model)), box=list(p.get("box") or []),
                   stored_at=str(p.get("stored_at", "")))


class StoredPoint(NamedTuple):
    """One face as the store keeps it: id, embedding, payload."""

    id: str
    vector: list[float]
    payload: dict[str, Any]


def collection_name(model: str) -> str:
    """`faces_` + the model version with anything but letters, digits, `-` and `_` replaced."""
    return COLLECTION_PREFIX + (re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_") or "unknown")


def point_id(sha256: str, face: int, model: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{sha256}/{face}/{model}"))


def tenths(score: float) -> int:
    """A score as the integer the store ranks by: scores carry one decimal (CONTRACT.md)."""
    return int(round(float(score) * 10))


def similarity(cosine: float) -> float:
    """Qdrant's cosine similarity, clipped to 0..1 (1 = the same direction).

    Not (1 + cos) / 2: face embeddings of different people are far from opposite (on 120 OMI
    faces their cosine is 0.80-0.93 for 90% of pairs, median 0.87), so the halved scale would
    squeeze every answer into 0.9-1.0. The same photo gives ~1.0, a resized copy 0.97-0.99.
    """
    return round(min(1.0, max(0.0, float(cosine))), 4)


def percentile(below: int, ties: int, others: int) -> float | None:
    """Mid-rank percentile: the share of the other faces scoring lower, ties counted half."""
    if others <= 0:
        return None
    return round(100.0 * (below + 0.5 * ties) / others, 1)


def storable(result: ImageResult) -> bool:
    """Real-model results with faces, a hash, a model version and one vector per face."""
    return (result.source in ("local", "remote") and bool(result.faces) and bool(result.sha256)
            and bool(result.model) and result.embeddings is not None
            and len(result.embeddings) == len(result.faces))


def points_of(result: ImageResult, now: str | None = None) -> list[StoredPoint]:
    """The points that store a storable result, one per face."""
    assert result.embeddings is not None and result.model and result.sha256
    now = now or datetime.now(timezone.utc).isoformat(timespec="seconds")
    file = Path(result.path).name if result.path else ""
    return [
        StoredPoint(point_id(result.sha256, i, result.model), [float(v) for v in vec],
                    {"path": result.path, "file": file, "sha256": result.sha256, "face": i,
                     "box": [int(v) for v in f.face.box], "confidence": round(float(f.face.confidence), 4),
                     "score": float(f.score), "score_tenths": tenths(f.score), "vibe": f.vibe,
                     "traits": dict(f.traits), "model": result.model, "source": result.source, "stored_at": now})
        for i, (f, vec) in enumerate(zip(result.faces, result.embeddings))
    ]


def describe(settings: Settings) -> str:
    return settings.qdrant_url or str(embedded_path(settings))


def embedded_path(settings: Settings) -> Path:
    """The embedded store's folder: one shard folder per model version, and the lock file."""
    return settings.home / STORE_DIR


def lock_path(settings: Settings) -> Path:
    """The file a process holds (flock) while it has the embedded store open."""
    return embedded_path(settings) / LOCK_FILE


def legacy_path(settings: Settings) -> Path:
    """Where an older facescore kept its store (qdrant-client's local mode); carried over on first open."""
    return settings.home / LEGACY_DIR


def _locked(where: str, holder: "LockHolder | None" = None) -> StoreLocked:
    who = holder.describe() if holder else None
    return StoreLocked(
        f"the face store in {where} is in use by another facescore process{f' ({who})' if who else ''} (the "
        f"embedded store allows one process at a time). Wait for it to finish, or run a Qdrant server and set "
        f"QDRANT_URL (e.g. QDRANT_URL=http://localhost:6333) so that many processes can share it", who)


class LockHolder(NamedTuple):
    """Who holds the embedded store, as the holder wrote it into the lock file when it took it."""

    pid: int
    command: str
    since: float  # time.time() when it took the lock

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.since, timezone.utc).strftime("%H:%M:%S UTC")
        return f"pid {self.pid}, `{self.command}`, since {when}"

    @classmethod
    def read(cls, lock: IO[bytes]) -> "LockHolder | None":
        """The record in an open lock file; None when there is none or it cannot be read (a holder
        that has not written it yet, or a facescore from before the record)."""
        try:
            lock.seek(0)
            data = json.loads(lock.read(4096).decode("utf-8") or "null")
            return cls(int(data["pid"]), str(data["command"]), float(data["since"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    @classmethod
    def write(cls, lock: IO[bytes]) -> None:
        """Record this process as the holder (the lock is held: nobody else writes the file)."""
        program = os.path.basename(sys.argv[0] or "python")
        if program == "__main__.py":  # python -m facescore_cli
            program = os.path.basename(os.path.dirname(sys.argv[0])).replace("facescore_cli", "facescore")
        argv = [program] + [a for a in sys.argv[1:2] if not a.startswith("-")]
        record = {"pid": os.getpid(), "command": " ".join(argv), "since": time.time()}
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(json.dumps(record).encode() + b"\n")
            lock.flush()
        except OSError:  # the record is a courtesy to waiters; the flock is what counts
            log.debug("could not write the lock record", exc_info=True)


def _take_lock(lock: IO[bytes], where: str, wait_s: float | None = None) -> None:
    """flock `lock` exclusively, waiting up to `wait_s` (None: LOCK_WAIT_S) while its holder looks
    short-lived (see LOCK_WAIT_S); StoreLocked naming the holder when it stays held,
    StoreUnavailable when the file cannot be locked at all."""
    import fcntl

    deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreUnavailable(f"cannot lock the face store in {where}: {_one_line(exc)}") from None
        else:
            LockHolder.write(lock)
            return
        holder = LockHolder.read(lock)
        hopeless = holder is not None and (holder.pid == os.getpid() or time.time() - holder.since > LONG_HOLD_S)
        if hopeless or time.monotonic() + LOCK_POLL_S > deadline:
            raise _locked(where, holder)
        time.sleep(LOCK_POLL_S)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class FaceStore:
    """A connection to the store. Use `open`; close it (or use `with`) to release the embedded lock."""

    where: str
    embedded: bool

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True, note: Callable[[str], None] | None = None) -> "FaceStore":
        """The server store when QDRANT_URL is set, else the embedded one (opened or created).

        `migrate`: carry a store left by an older facescore (see `EmbeddedStore.migrate`) over
        first, telling `note` before and after (it takes seconds at 100k faces).
        """
        if settings.qdrant_url:
            return ServerStore.connect(settings)
        legacy = legacy_path(settings)
        return EmbeddedStore.open_at(embedded_path(settings), legacy if migrate and legacy.is_dir() else None,
                                     note=note)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "FaceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collections(self) -> list[str]:
        """The names (`faces_<version>`) of the model versions with stored faces."""
        raise NotImplementedError

    def count(self, model: str | None = None) -> int:
        """Faces stored for `model`, or for every model version."""
        raise NotImplementedError

    def put(self, collection: str, points: Sequence[StoredPoint]) -> None:
        """Write points as they are (overwriting those with the same id), in one write."""
        raise NotImplementedError

    def rank(self, model: str, score: float, excluding_self: bool = True) -> float | None:
        """Percentile of `score` among the faces stored for `model`.

        With `excluding_self` the face being ranked is already stored with this score and is
        left out of the population (so ranking is the same however often an image is scored).
        """
        counts = self.counts(model, score)
        if counts is None:
            return None
        total, below, at = counts
        if excluding_self:
            total, at = total - 1, max(0, at - 1)
        return percentile(below, at, total)

    def counts(self, model: str, score: float) -> tuple[int, int, int] | None:
        """(all, scoring below, scoring the same) among the faces of `model`; None without any."""
        raise NotImplementedError

    def similar(self, vector: list[float], model: str, limit: int = 10) -> list[Match]:
        """The stored faces (of the same model version) nearest to `vector`, most similar first."""
        raise NotImplementedError

    def forget(self, sha256s: Iterable[str]) -> dict[str, int]:
        """Delete every stored face of these images (all model versions); faces removed per hash."""
        raise NotImplementedError

    def forget_all(self) -> int:
        """Delete every stored face of every model version; returns how many there were."""
        raise NotImplementedError

    def upsert(self, result: ImageResult) -> int:
        """Store the faces of one result (overwriting earlier copies); returns how many."""
        if not storable(result):
            return 0
        assert result.model
        points = points_of(result)
        self.put(collection_name(result.model), points)
        return len(points)

    def remember(self, result: ImageResult) -> bool:
        """Store a result's faces, then set each face's `store_rank`. False when not storable."""
        if not self.upsert(result):
            return False
        assert result.model
        for f in result.faces:
            f.store_rank = self.rank(result.model, f.score)
        return True


class EmbeddedStore(FaceStore):
    """The store in this process: one qdrant-edge shard per model version under `root`."""

    embedded = True

    def __init__(self, root: Path, lock: IO[bytes]) -> None:
        self.root = root
        self.where = str(root)
        self._lock = lock
        self._shards: dict[str, Any] = {}
        # collection -> {score_tenths: faces}. Loaded by the first rank of a run (one exact facet,
        # ~30 ms at 100k faces), then kept exact by hand: the one process holding the lock makes
        # every write. A range count costs 8-15 ms a rank at 100k; this costs microseconds.
        self._histograms: dict[str, dict[int, int]] = {}
        self._dirty: set[str] = set()
        self._unflushed = 0
        self._flushed_at = time.monotonic()

    @classmethod
    def open_at(cls, root: Path, legacy: Path | None = None, wait_s: float | None = None,
                note: Callable[[str], None] | None = None) -> "EmbeddedStore":
        """Open (or create) the store in `root`, holding its lock (waiting for it as `_take_lock`
        does); carry `legacy` over first, if given (see `migrate` for `note`)."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock = (root / LOCK_FILE).open("a+b")
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the face store in {root}: {_one_line(exc)}") from None
        try:
            _take_lock(lock, str(root), wait_s)
        except BaseException:
            lock.close()
            raise
        for left in root.glob(".deleting-*"):  # from a `forget_all` killed between rename and delete
            shutil.rmtree(left, ignore_errors=True)
        store = cls(root, lock)
        if legacy is not None:
            try:
                store.migrate(legacy, note)
            except BaseException:
                store.close()
                raise
        return store

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run an engine call; its errors (plain Exceptions, OSError) become StoreUnavailable."""
        try:
            return fn()
        except Exception as exc:
            if type(exc) is not Exception and not isinstance(exc, OSError):
                raise
            if "WouldBlock" in str(exc):  # another process opened a shard without our lock
                raise _locked(self.where) from None
            raise StoreUnavailable(f"the face store at {self.where} failed to {what}: {_one_line(exc)}") from None

    def _shard(self, name: str, dim: int | None = None) -> Any:
        """The open shard `name`; created when `dim` is given, else None if there is none."""
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        import qdrant_edge as q

        path = self.root / name
        if (path / SHARD_CONFIG).exists():
            shard = self._call("open a shard", lambda: q.EdgeShard.load(str(path)))
        elif dim is None:
            return None
        else:
            config = q.EdgeConfig(vectors=q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine))
            shard = self._call("create a shard", lambda: q.EdgeShard.create(str(path), config))
        self._shards[name] = shard
        # Also on load: a process killed between creating a shard and indexing it left it bare.
        have = self._call("read a shard", lambda: set(shard.info().payload_schema))
        for field, kind in INDEXED:
            if field not in have:
                op = q.UpdateOperation.create_field_index(field, getattr(q.PayloadSchemaType, kind))
                self._call("index a shard", lambda: shard.update(op))
        return shard

    def collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.name.startswith(COLLECTION_PREFIX) and (p / SHARD_CONFIG).exists())

    def count(self, model: str | None = None) -> int:
        import qdrant_edge as q

        total = 0
        for name in [collection_name(model)] if model else self.collections():
            shard = self._shard(name)
            if shard is not None:
                total += self._call("count", lambda: shard.count(q.CountRequest(exact=True)))
        return total

    def put(self, collection: str, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        import qdrant_edge as q

        shard = self._shard(collection, len(points[0].vector))
        histogram = self._histograms.get(collection)
        if histogram is not None:  # overwritten faces leave the histogram with their old score
            old = self._call("store faces", lambda: shard.retrieve(
                [p.id for p in points], with_payload=["score_tenths"], with_vector=False))
        op = q.UpdateOperation.upsert_points([q.Point(p.id, p.vector, p.payload) for p in points])
        self._call("store faces", lambda: shard.update(op))
        if histogram is not None:
            for r in old:
                _add(histogram, (r.payload or {}).get("score_tenths"), -1)
            for p in points:
                _add(histogram, p.payload.get("score_tenths"), 1)
        self._wrote(collection, len(points))

    def _wrote(self, collection: str, n: int) -> None:
        self._dirty.add(collection)
        self._unflushed += n
        if self._unflushed >= FLUSH_EVERY or time.monotonic() - self._flushed_at >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write every shard written since the last flush to disk (fsynced) and cut its log."""
        for name in sorted(self._dirty):
            shard = self._shards.get(name)
            if shard is not None:
                self._call("flush", shard.flush)
        self._dirty.clear()
        self._unflushed = 0
        self._flushed_at = time.monotonic()

    def _histogram(self, name: str, shard: Any) -> dict[int, int]:
        if name not in self._histograms:
            import qdrant_edge as q

            size = self._call("rank", lambda: shard.info().points_count) + 1
            facet = self._call("rank", lambda: shard.facet(q.FacetRequest(key="score_tenths", limit=size, exact=True)))
            self._histograms[name] = {int(h.value): int(h.count) for h in facet.hits}
        return self._histograms[name]

    def counts(self, model: str, score: float) -> tuple[int, int, int] | None:
        name = collection_name(model)
        shard = self._shard(name)
        if shard is None:
            return None
        histogram = self._histogram(name, shard)
        t = tenths(score)
        return (sum(histogram.values()), sum(n for v, n in histogram.items() if v < t), histogram.get(t, 0))

    def similar(self, vector: list[float], model: str, limit: int = 10) -> list[Match]:
        import qdrant_edge as q

        shard = self._shard(collection_name(model))
        if shard is None:
            return []
        # exact: the shard is never optimized into an HNSW graph (which, built by the engine at
        # 100k faces, found 3 of the true top 10); a full scan takes ~13 ms at 100k.
        request = q.QueryRequest(query=q.Query.Nearest([float(v) for v in vector]), limit=limit,
                                 with_payload=True, params=q.SearchParams(exact=True))
        hits = self._call("search", lambda: shard.query(request))
        return [Match.from_payload(h.payload, h.score, model) for h in hits]

    def forget(self, sha256s: Iterable[str]) -> dict[str, int]:
        import qdrant_edge as q

        wanted = list(dict.fromkeys(sha256s))
        removed = dict.fromkeys(wanted, 0)
        for name in self.collections():
            shard = self._shard(name)
            for digest in wanted:
                flt = q.Filter(must=[q.FieldCondition("sha256", match=q.MatchValue(digest))])
                n = self._call("count", lambda: shard.count(q.CountRequest(exact=True, filter=flt)))
                if n:
                    self._call("delete faces", lambda: shard.update(q.UpdateOperation.delete_points_by_filter(flt)))
                    removed[digest] += n
                    self._histograms.pop(name, None)
                    self._wrote(name, n)
        return removed

    def forget_all(self) -> int:
        total = 0
        for name in self.collections():
            total += self.count_collection(name)
            shard = self._shards.pop(name, None)
            if shard is not None:
                self._call("close a shard", shard.close)
            self._histograms.pop(name, None)
            self._dirty.discard(name)
            # Renamed first, so that a process killed halfway leaves no half-deleted shard in use.
            trash = self.root / f".deleting-{name}-{uuid.uuid4().hex[:8]}"
            self._call("delete a shard", lambda: (self.root / name).rename(trash))
            shutil.rmtree(trash, ignore_errors=True)
        return total

    def count_collection(self, name: str) -> int:
        """Faces in one shard, by its name (`faces_<version>`); 0 when there is none."""
        import qdrant_edge as q

        shard = self._shard(name)
        return 0 if shard is None else self._call("count", lambda: shard.count(q.CountRequest(exact=True)))

    def migrate(self, legacy: Path, note: Callable[[str], None] | None = None) -> dict[str, int]:
        """Carry the store an older facescore kept in `legacy` (qdrant-client's local mode, one
        collection `faces_<version>` per model) over into this one, then rename `legacy` to
        `<name>.migrated` so that it is carried over once. Every point keeps its id, vector and
        payload (plus `score_tenths`). Each point is checked to be here before the rename; a run
        killed halfway repeats the copy next time, and rewriting the same ids adds nothing.
        `note` hears one line when the copy starts and one when it is done."""
        from qdrant_client import QdrantClient

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "not recommended past 20,000 points"
                client = QdrantClient(path=str(legacy))
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            raise StoreLocked(f"the old face store in {legacy} is in use by another (older?) facescore "
                              f"process; stop it, and the store will be carried over to {self.where} on "
                              f"the next run") from None
        moved: dict[str, int] = {}
        try:
            names = [c.name for c in client.get_collections().collections if c.name.startswith(COLLECTION_PREFIX)]
            if note is not None:
                total = sum(client.count(name).count for name in names)
                note(f"carrying {total} stored face{'s' if total != 1 else ''} over from the store of an older "
                     f"facescore in {legacy} (once; a large store takes a while)")
            for name in names:
                moved[name] = 0
                offset = None
                while True:
                    page, offset = client.scroll(name, limit=1000, offset=offset, with_payload=True, with_vectors=True)
                    points = [StoredPoint(str(p.id), [float(v) for v in p.vector],  # type: ignore[union-attr]
                                          {**(p.payload or {}), "score_tenths": tenths((p.payload or {}).get("score", 0.0))})
                              for p in page]
                    self.put(name, points)
                    if points:
                        here = self._call("check the carried-over faces", lambda: self._shard(name).retrieve(
                            [p.id for p in points], with_payload=False, with_vector=False))
                        if len(here) != len(points):
                            raise StoreUnavailable(f"carrying {legacy} over lost faces of {name}; the old "
                                                   f"store is left in place")
                    moved[name] += len(points)
                    if offset is None:
                        break
        finally:
            client.close()
        self.flush()
        target = legacy.with_name(legacy.name + MIGRATED_SUFFIX)
        if target.exists():
            target = legacy.with_name(f"{legacy.name}{MIGRATED_SUFFIX}-{int(time.time())}")
        legacy.rename(target)
        log.info("carried %s over from %s (now %s)", moved, legacy, target)
        if note is not None:
            note(f"carried {sum(moved.values())} faces over into {self.where}; {target} can be deleted")
        return moved

    def close(self) -> None:
        """Close every shard (the engine flushes a shard as it closes it) and release the lock."""
        for shard in self._shards.values():
            try:
                shard.close()
            except Exception:  # closing must never hide the result of the work; the log has every write
                log.debug("closing a shard failed", exc_info=True)
        self._shards.clear()
        self._lock.close()  # releases the flock


def _add(histogram: dict[int, int], value: Any, n: int) -> None:
    if value is None:
        return
    left = histogram.get(int(value), 0) + n
    if left > 0:
        histogram[int(value)] = left
    else:
        histogram.pop(int(value), None)


class ServerStore(FaceStore):
    """A Qdrant server through qdrant-client: any number of processes may share it."""

    embedded = False

    def __init__(self, client: Any, where: str) -> None:
        self.client = client
        self.where = where
        self._ready: set[str] = set()

    @classmethod
    def connect(cls, settings: Settings) -> "ServerStore":
        from qdrant_client import QdrantClient

        where = settings.qdrant_url or ""
        try:
            client = QdrantClient(url=where, api_key=settings.qdrant_api_key, timeout=TIMEOUT_S,
                                  check_compatibility=False)
            client.get_collections()  # fail here, with one message, rather than on the first write
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            raise StoreUnavailable(f"the Qdrant server at {where} did not answer: {_one_line(exc)}") from None
        return cls(client, where)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing must never hide the result of the work
            log.debug("closing the store failed", exc_info=True)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            raise StoreUnavailable(f"the face store at {self.where} failed to {what}: {_one_line(exc)}") from None

    def collections(self) -> list[str]:
        names = self._call("list collections", lambda: [c.name for c in self.client.get_collections().collections])
        return sorted(n for n in names if n.startswith(COLLECTION_PREFIX))

    def _ensure(self, name: str, dim: int) -> None:
        if name in self._ready:
            return
        from qdrant_client import models

        def create() -> None:
            if not self.client.collection_exists(name):
                self.client.create_collection(name, vectors_config=models.VectorParams(
                    size=dim, distance=models.Distance.COSINE))
                for field, kind in INDEXED:
                    self.client.create_payload_index(name, field, wait=True,
                                                     field_schema=getattr(models.PayloadSchemaType, kind.upper()))

        self._call("create a collection", create)
        self._ready.add(name)

    def _exists(self, name: str, what: str) -> bool:
        return bool(self._call(what, lambda: self.client.collection_exists(name)))

    def count(self, model: str | None = None) -> int:
        total = 0
        for name in [collection_name(model)] if model else self.collections():
            if self._exists(name, "count"):
                total += self._call("count", lambda: self.client.count(name, exact=True).count)
        return total

    def put(self, collection: str, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        from qdrant_client import models

        self._ensure(collection, len(points[0].vector))
        structs = [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points]
        self._call("store faces", lambda: self.client.upsert(collection, points=structs, wait=True))

    def counts(self, model: str, score: float) -> tuple[int, int, int] | None:
        """By counting with range filters on the indexed `score`: other processes write too."""
        from qdrant_client import models

        name = collection_name(model)
        if not self._exists(name, "rank"):
            return None

        def n(rng: models.Range | None) -> int:
            flt = None if rng is None else models.Filter(must=[models.FieldCondition(key="score", range=rng)])
            return self._call("rank", lambda: self.client.count(name, count_filter=flt, exact=True).count)

        return n(None), n(models.Range(lt=score)), n(models.Range(gte=score, lte=score))

    def similar(self, vector: list[float], model: str, limit: int = 10) -> list[Match]:
        name = collection_name(model)
        if not self._exists(name, "search"):
            return []
        hits = self._call("search", lambda: self.client.query_points(
            name, query=[float(v) for v in vector], limit=limit, with_payload=True).points)
        return [Match.from_payload(h.payload, h.score, model) for h in hits]

    def forget(self, sha256s: Iterable[str]) -> dict[str, int]:
        from qdrant_client import models

        wanted = list(dict.fromkeys(sha256s))
        removed = dict.fromkeys(wanted, 0)
        for name in self.collections():
            for digest in wanted:
                flt = models.Filter(must=[models.FieldCondition(key="sha256", match=models.MatchValue(value=digest))])
                n = self._call("count", lambda: self.client.count(name, count_filter=flt, exact=True).count)
                if n:
                    self._call("delete faces", lambda: self.client.delete(
                        name, points_selector=models.FilterSelector(filter=flt), wait=True))
                    removed[digest] += n
        return removed

    def forget_all(self) -> int:
        total = 0
        for name in self.collections():
            total += self._call("count", lambda: self.client.count(name, exact=True).count)
            self._call("delete a collection", lambda: self.client.delete_collection(name))
            self._ready.discard(name)
        return total


def _is_unavailable(exc: BaseException) -> bool:
    import httpx
    from qdrant_client.http.exceptions import ApiException

    return isinstance(exc, (ApiException, httpx.HTTPError, OSError, ConnectionError, TimeoutError))


def remember_all(results: Iterable[ImageResult], settings: Settings, warn: Callable[[str], None],
                 enabled: bool = True, note: Callable[[str], None] | None = None) -> Iterator[ImageResult]:
    """Pass results through, storing each storable one on the way and setting `store_rank`.

    Runs in the one process that consumes results (the embedded store allows one writer). The
    store opens at the first storable result, so runs that store nothing never take its lock.
    A result leaves with a `store_rank` only once its faces are in the store's log (see the
    module's docstring). When the store cannot be opened or fails, `warn` is called once and
    every result still passes through unchanged.
    """
    store: FaceStore | None = None
    failed = False
    try:
        for result in results:
            if enabled and not failed and storable(result):
                try:
                    if store is None:
                        store = FaceStore.open(settings, note=note)
                    store.remember(result)
                except Exception as exc:  # never lose a result to the store
                    failed = True
                    log.debug("store failed", exc_info=True)
                    for f in result.faces:
                        f.store_rank = None
                    reason = str(exc) if isinstance(exc, StoreUnavailable) else f"{type(exc).__name__}: {_one_line(exc)}"
                    warn(f"results are not being stored: {reason}. Scoring goes on; score these "
                         f"images again later to store them (re-scoring adds no duplicates).")
            yield result
    finally:
        if store is not None:
            store.close()
