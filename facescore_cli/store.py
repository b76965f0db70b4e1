"""Qdrant: upsert, rank, similar, forget.

One point per scored face: its embedding (cosine) and a payload describing the face, never the
image. Point ids are uuid5(image SHA-256, face index, model version), so scoring an image again
overwrites its points instead of adding new ones. Each model version has its own collection
(`faces_<version>`): vectors of different models are not comparable and never share one.

`QDRANT_URL` set: a Qdrant server, shared by any number of processes. Unset: qdrant-client's
embedded mode in `$FACESCORE_HOME/qdrant`, which one process at a time may open; a second one
gets `StoreLocked`, whose message names the fix.
"""
from __future__ import annotations

import bisect
import logging
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import FaceScoreError
from .result import ImageResult

log = logging.getLogger(__name__)

COLLECTION_PREFIX = "faces_"
# A fixed namespace keeps ids stable across machines and releases.
NAMESPACE = uuid.UUID("6f0c8b0e-5d7a-4c55-9a8e-2f1d3b9c7e41")
TIMEOUT_S = 10


class StoreUnavailable(FaceScoreError):
    """The face store could not be reached or used; scoring goes on without it."""


class StoreLocked(StoreUnavailable):
    """The embedded store is held by another process."""


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


def collection_name(model: str) -> str:
    """`faces_` + the model version with anything but letters, digits, `-` and `_` replaced."""
    return COLLECTION_PREFIX + (re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_") or "unknown")


def point_id(sha256: str, face: int, model: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{sha256}/{face}/{model}"))


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


def describe(settings: Settings) -> str:
    return settings.qdrant_url or str(embedded_path(settings))


def embedded_path(settings: Settings) -> Path:
    return settings.home / "qdrant"


def _is_unavailable(exc: BaseException) -> bool:
    import httpx
    from qdrant_client.http.exceptions import ApiException

    return isinstance(exc, (ApiException, httpx.HTTPError, OSError, ConnectionError, TimeoutError))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class FaceStore:
    """A connection to the store. Use `open`; close it (or use `with`) to release the embedded lock."""

    def __init__(self, client: Any, where: str, embedded: bool) -> None:
        self.client = client
        self.where = where
        self.embedded = embedded
        self._ready: set[str] = set()
        # Embedded mode only: collection -> (point id -> score, the scores sorted). Counting with a
        # filter there is a Python loop over every point (~1 s per rank at 50k faces); the one
        # process that holds the store makes every write, so a copy of the scores stays exact.
        self._scores: dict[str, tuple[dict[str, float], list[float]]] = {}

    @classmethod
    def open(cls, settings: Settings) -> "FaceStore":
        from qdrant_client import QdrantClient

        if settings.qdrant_url:
            where = settings.qdrant_url
            try:
                client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key,
                                      timeout=TIMEOUT_S, check_compatibility=False)
                client.get_collections()  # fail here, with one message, rather than on the first write
            except Exception as exc:
                if not _is_unavailable(exc):
                    raise
                raise StoreUnavailable(f"the Qdrant server at {where} did not answer: {_one_line(exc)}") from None
            return cls(client, where, embedded=False)

        path = embedded_path(settings)
        where = str(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                # "local mode is not recommended for more than 20,000 points": the README says it
                warnings.simplefilter("ignore", UserWarning)
                client = QdrantClient(path=where)
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            raise StoreLocked(
                f"the face store in {where} is in use by another facescore process (the embedded store "
                f"allows one process at a time). Wait for it to finish, or run a Qdrant server and set "
                f"QDRANT_URL (e.g. QDRANT_URL=http://localhost:6333) so that many processes can share it"
            ) from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the face store in {where}: {_one_line(exc)}") from None
        return cls(client, where, embedded=True)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing must never hide the result of the work
            log.debug("closing the store failed", exc_info=True)

    def __enter__(self) -> "FaceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            if not self.embedded:
                return fn()
            with warnings.catch_warnings():
                # "local mode is not recommended past 20,000 points", on every write past it:
                # the README says so once, and a batch run must not repeat it per image
                warnings.simplefilter("ignore", UserWarning)
                return fn()
        except StoreUnavailable:
            raise
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            raise StoreUnavailable(f"the face store at {self.where} failed to {what}: {_one_line(exc)}") from None

    # -- collections ------------------------------------------------------------------------

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
                if not self.embedded:  # the embedded store ignores payload indexes (and warns)
                    for field, schema in (("score", models.PayloadSchemaType.FLOAT),
                                          ("sha256", models.PayloadSchemaType.KEYWORD)):
                        self.client.create_payload_index(name, field, field_schema=schema, wait=True)

        self._call("create a collection", create)
        self._ready.add(name)

    def count(self, model: str | None = None) -> int:
        names = [collection_name(model)] if model else self.collections()
        total = 0
        for name in names:
            if self._call("count", lambda: self.client.collection_exists(name)):
                total += self._call("count", lambda: self.client.count(name, exact=True).count)
        return total

    # -- writing ----------------------------------------------------------------------------

    def upsert(self, result: ImageResult) -> int:
        """Store the faces of one result (overwriting earlier copies); returns how many."""
        if not storable(result):
            return 0
        from qdrant_client import models

        assert result.embeddings is not None and result.model and result.sha256
        name = collection_name(result.model)
        self._ensure(name, len(result.embeddings[0]))
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        points = [
            models.PointStruct(
                id=point_id(result.sha256, i, result.model),
                vector=[float(v) for v in vec],
                payload={"path": result.path, "file": Path(result.path).name if result.path else "",
                         "sha256": result.sha256, "face": i, "box": [int(v) for v in f.face.box],
                         "confidence": round(float(f.face.confidence), 4), "score": float(f.score),
                         "vibe": f.vibe, "traits": dict(f.traits), "model": result.model,
                         "source": result.source, "stored_at": now},
            )
            for i, (f, vec) in enumerate(zip(result.faces, result.embeddings))
        ]
        self._call("store faces", lambda: self.client.upsert(name, points=points, wait=True))
        if name in self._scores:
            by_id, ordered = self._scores[name]
            for p in points:
                old = by_id.get(str(p.id))
                if old is not None:
                    del ordered[bisect.bisect_left(ordered, old)]
                by_id[str(p.id)] = p.payload["score"]
                bisect.insort(ordered, p.payload["score"])
        return len(points)

    def rank(self, model: str, score: float, excluding_self: bool = True) -> float | None:
        """Percentile of `score` among the faces stored for `model`.

        With `excluding_self` the face being ranked is already stored with this score and is
        left out of the population (so ranking is the same however often an image is scored).
        """
        name = collection_name(model)
        if not self._call("rank", lambda: self.client.collection_exists(name)):
            return None
        total, below, at = (self._counts_in_memory if self.embedded else self._counts)(name, score)
        if excluding_self:
            total, at = total - 1, max(0, at - 1)
        return percentile(below, at, total)

    def _counts(self, name: str, score: float) -> tuple[int, int, int]:
        """(all, below, equal) by counting with range filters on the indexed `score` payload."""
        from qdrant_client import models

        def n(rng: models.Range | None) -> int:
            flt = None if rng is None else models.Filter(must=[models.FieldCondition(key="score", range=rng)])
            return self._call("rank", lambda: self.client.count(name, count_filter=flt, exact=True).count)

        return n(None), n(models.Range(lt=score)), n(models.Range(gte=score, lte=score))

    def _counts_in_memory(self, name: str, score: float) -> tuple[int, int, int]:
        if name not in self._scores:
            by_id: dict[str, float] = {}
            offset = None
            while True:
                page, offset = self._call("rank", lambda: self.client.scroll(
                    name, limit=100_000, offset=offset, with_payload=["score"], with_vectors=False))
                by_id.update((str(p.id), float((p.payload or {}).get("score", 0.0))) for p in page)
                if offset is None:
                    break
            self._scores[name] = (by_id, sorted(by_id.values()))
        ordered = self._scores[name][1]
        lo, hi = bisect.bisect_left(ordered, score), bisect.bisect_right(ordered, score)
        return len(ordered), lo, hi - lo

    def remember(self, result: ImageResult) -> bool:
        """Store a result's faces, then set each face's `store_rank`. False when not storable."""
        if not self.upsert(result):
            return False
        assert result.model
        for f in result.faces:
            f.store_rank = self.rank(result.model, f.score)
        return True

    def forget(self, sha256s: Iterable[str]) -> dict[str, int]:
        """Delete every stored face of these images (all model versions); faces removed per hash."""
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
                    self._scores.pop(name, None)
        return removed

    def forget_all(self) -> int:
        """Drop every face collection; returns how many faces they held."""
        total = 0
        for name in self.collections():
            total += self._call("count", lambda: self.client.count(name, exact=True).count)
            self._call("delete a collection", lambda: self.client.delete_collection(name))
            self._ready.discard(name)
            self._scores.pop(name, None)
        return total

    # -- reading ----------------------------------------------------------------------------

    def similar(self, vector: list[float], model: str, limit: int = 10) -> list[Match]:
        """The stored faces (of the same model version) nearest to `vector`, most similar first."""
        name = collection_name(model)
        if not self._call("search", lambda: self.client.collection_exists(name)):
            return []
        hits = self._call("search", lambda: self.client.query_points(
            name, query=[float(v) for v in vector], limit=limit, with_payload=True).points)
        out = []
        for h in hits:
            p = h.payload or {}
            out.append(Match(path=str(p.get("path", "")), face=int(p.get("face", 0)),
                             similarity=similarity(h.score), score=float(p.get("score", 0.0)),
                             vibe=str(p.get("vibe", "")), sha256=str(p.get("sha256", "")),
                             model=str(p.get("model", model)), box=list(p.get("box") or []),
                             stored_at=str(p.get("stored_at", ""))))
        return out


def preload_client() -> None:
    """Import the Qdrant client (~1-1.5 s of imports) in a background thread, so that it loads
    while the first image is scored rather than after. Only for a process that will not fork
    (`score` scores in-process): a fork in the middle of an import could leave the child waiting
    on a lock no thread of its own holds."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=("qdrant_client",), name="qdrant-import",
                     daemon=True).start()


def remember_all(results: Iterable[ImageResult], settings: Settings, warn: Callable[[str], None],
                 enabled: bool = True) -> Iterator[ImageResult]:
    """Pass results through, storing each storable one on the way and setting `store_rank`.

    Runs in the one process that consumes results (the embedded store allows one writer). The
    store opens at the first storable result, so runs that store nothing never take its lock.
    When the store cannot be opened or fails, `warn` is called once and every result still
    passes through unchanged.
    """
    store: FaceStore | None = None
    failed = False
    try:
        for result in results:
            if enabled and not failed and storable(result):
                try:
                    if store is None:
                        store = FaceStore.open(settings)
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
