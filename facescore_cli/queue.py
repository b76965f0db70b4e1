"""BullMQ side: submit images, collect results, see which workers are alive.

The wire format is the contract's (CONTRACT.md, the queue): queue `FACESCORE_QUEUE`, job name
`score`, JSON data `{"image": base64, "filename", "store", "batch"}`, the return value is
`ImageResult.to_data()` (plus the face embeddings, so the producer can store them). Payloads are
JSON, never pickle, so a Node.js BullMQ producer or consumer can share the queue.

Job ids derive from the image bytes and the model version, so an image submitted twice is
scored once while its result is kept. A batch's (path, job id) list lives in Redis under the
batch id, so `facescore results BATCH_ID` can collect it again after the client died.

Known gaps of the Python `bullmq` package, designed around here: there is no
`waitUntilFinished` (we read the queue's events stream ourselves, `EventStream`, and read jobs
that finished before we listened with one pipelined read); a stream reader stops on a connection
error (we start another and reconcile by reading the jobs again).
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis

from . import aio, images
from .config import Settings
from .errors import ImageError, ServiceUnavailable
from .health import redact
from .ml.types import DEFAULT_MIN_FACE
from .result import ImageResult

PREFIX = "bull"  # BullMQ's default key prefix: a Node producer with default options finds our queue
JOB_NAME = "score"
WORKER_KEY = "facescore:workers:"
BATCH_KEY = "facescore:batch:"
HEARTBEAT_S = 3.0
HEARTBEAT_TTL_S = 10
KEEP_RESULTS_S = 7 * 24 * 3600  # how long completed jobs (and batch records) stay in Redis
KEEP_FAILED_S = 24 * 3600
ATTEMPTS = 3  # transient failures are retried with exponential backoff from BACKOFF_MS
BACKOFF_MS = 1000
NO_WORKER_GRACE_S = 5.0  # how long a wait goes on with no live worker before saying so
REDIS_GRACE_S = 60.0  # how long a wait goes on while Redis does not answer
API_REDIS_GRACE_S = 10.0  # the same for one API request: a Redis restart, not an outage
REDIS_RETRY_S = 1.0  # after Redis did not answer, how long the workers' list says so before asking again
CHUNK_BYTES = 32 * 1024 * 1024  # addBulk in chunks so a 100k batch never sits in memory whole
FIRST_CHUNK_JOBS = 4

T = TypeVar("T")
# QueueClient.wait's `requeue`: lost job ids -> (job specs to add again, (id, "failed", why) for the rest)
Requeue = Callable[[list[str]], Awaitable[tuple[list[dict[str, Any]], list[tuple[str, str, Any]]]]]


class QueueUnavailable(ServiceUnavailable):
    """Redis did not answer at REDIS_URL."""


class NoWorker(ServiceUnavailable):
    """No `facescore worker` is alive on the queue."""


# -- Redis connections and liveness -----------------------------------------------------------


def _redis_down(settings: Settings, exc: BaseException | str) -> QueueUnavailable:
    """The error for a Redis that does not answer, naming it without its password."""
    return QueueUnavailable(f"Redis at {redact(settings.redis_url)} does not answer: {exc}")


def describe(settings: Settings) -> str:
    """The queue these settings name, for messages: `queue 'facescore' at redis://:***@host`."""
    return f"queue {settings.queue!r} at {redact(settings.redis_url)}"


def redis_client(settings: Settings, timeout: float = 3.0) -> redis.Redis:
    """A plain synchronous client with short timeouts, for quick checks (never for BullMQ)."""
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                decode_responses=True)


def async_client(settings: Settings, timeout: float = 3.0, blocking_s: float = 0.0) -> aredis.Redis:
    """An asyncio client with short timeouts; `blocking_s` more for a read that blocks on purpose
    (XREAD BLOCK)."""
    return aredis.Redis.from_url(settings.redis_url, socket_connect_timeout=timeout,
                                 socket_timeout=timeout + blocking_s, decode_responses=True)


def bull_opts(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Options for a bullmq Queue or Worker: each builds its own connection from the URL."""
    return {"connection": settings.redis_url, "prefix": PREFIX, **extra}


def ping(settings: Settings, timeout: float = 2.0) -> float:
    """Round trip to Redis in milliseconds, or QueueUnavailable."""
    client = redis_client(settings, timeout)
    try:
        start = time.perf_counter()
        client.ping()
        return (time.perf_counter() - start) * 1000.0
    except redis.RedisError as exc:
        raise _redis_down(settings, exc) from None
    finally:
        client.close()


def _parse_workers(raw: Iterable[str | None], queue: str) -> list[dict[str, Any]]:
    out = []
    for value in raw:
        try:
            info = json.loads(value) if value else None
        except ValueError:
            continue
        if isinstance(info, dict) and info.get("queue") == queue:
            out.append(info)
    return sorted(out, key=lambda w: str(w.get("id")))


def slots(workers: list[dict[str, Any]]) -> int:
    """How many images the live workers (`live_workers`) score at once: their concurrency summed."""
    return sum(int(w.get("concurrency") or 1) for w in workers)


def live_workers(settings: Settings, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The workers whose heartbeat is fresh on `settings.queue`, one dict each: id, host, pid,
    queue, concurrency, model, started, seen, active, processed, failed.

    Raises QueueUnavailable when Redis does not answer (so callers can tell "Redis down" from
    "no worker").
    """
    client = redis_client(settings, timeout)
    try:
        keys = list(client.scan_iter(match=WORKER_KEY + "*", count=200))
        return _parse_workers(client.mget(keys) if keys else [], settings.queue)
    except redis.RedisError as exc:
        raise _redis_down(settings, exc) from None
    finally:
        client.close()


async def live_workers_async(client: aredis.Redis, queue: str) -> list[dict[str, Any]]:
    keys = [k async for k in client.scan_iter(match=WORKER_KEY + "*", count=200)]
    return _parse_workers(await client.mget(keys) if keys else [], queue)


def choose_via(settings: Settings, via: str) -> tuple[str, str]:
    """("queue" | "local", one line saying why). Raises QueueUnavailable / NoWorker when
    `via` is "queue" and the queue cannot serve."""
    if via == "local":
        return "local", "via local"
    try:
        workers = live_workers(settings)
    except QueueUnavailable as exc:
        if via == "queue":
            raise
        return "local", f"via auto: scoring locally ({exc})"
    where = describe(settings)
    if not workers:
        if via == "queue":
            raise NoWorker(f"no live worker on {where}; start one with `facescore worker` or use --via local")
        return "local", f"via auto: scoring locally (no live worker on {where})"
    return "queue", f"via {via}: {where}, {len(workers)} worker(s), {slots(workers)} slot(s)"


# -- job ids ----------------------------------------------------------------------------------


def model_version(workers: list[dict[str, Any]], settings: Settings) -> str:
    """The model the workers score with (the most common among them); without a live worker the
    local head's version, which is what a worker started here would report."""
    models = Counter(str(w["model"]) for w in workers if w.get("model"))
    if models:
        return models.most_common(1)[0][0]
    return local_model_version(settings)


def local_model_version(settings: Settings) -> str:
    if not settings.use_real_ml:
        from .ml import simulated

        return simulated.MODEL
    try:
        from .ml.head import load_head

        return str(load_head(settings.head_path).version)
    except Exception:  # no head installed: the workers fall back the same way
        from .ml import simulated

        return simulated.MODEL


def job_id(digest: str, model: str, min_face: int = DEFAULT_MIN_FACE) -> str:
    """Content + model version (+ the narrowest face looked for, when not the default: another
    search is another job). BullMQ ids must not contain ':' nor be plain integers."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[:48] or "model"
    return f"{digest}-{slug}" + (f"-mf{min_face}" if min_face != DEFAULT_MIN_FACE else "")


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


# -- batches ----------------------------------------------------------------------------------


@dataclass
class Entry:
    """One input of a batch: its job, or the error that kept it off the queue."""

    path: str  # as shown in the output
    job: str | None = None
    error: str | None = None
    file: str | None = None  # absolute path, to enqueue it again if Redis lost the job
    sha256: str | None = None

    def to_json(self) -> list[Any]:
        return [self.path, self.job, self.error, self.file, self.sha256]

    @classmethod
    def from_json(cls, raw: str) -> "Entry":
        path, job, error, file, digest = (json.loads(raw) + [None] * 5)[:5]
        return cls(path=path, job=job, error=error, file=file, sha256=digest)


@dataclass
class Batch:
    id: str
    queue: str
    model: str
    entries: list[Entry] = field(default_factory=list)
    store: bool = True
    keep_s: int = KEEP_RESULTS_S
    min_face: int = DEFAULT_MIN_FACE  # what its jobs carry (the submitter's --min-face)

    @property
    def jobs(self) -> int:
        return len({e.job for e in self.entries if e.job})


async def _save_batch(client: aredis.Redis, batch: Batch) -> None:
    meta, items = BATCH_KEY + batch.id, BATCH_KEY + batch.id + ":items"
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(meta, items)
        pipe.hset(meta, mapping={"queue": batch.queue, "model": batch.model, "created": str(time.time()),
                                 "count": str(len(batch.entries)), "store": "1" if batch.store else "0",
                                 "min_face": str(batch.min_face)})
        for i in range(0, len(batch.entries), 1000):
            pipe.rpush(items, *[json.dumps(e.to_json()) for e in batch.entries[i:i + 1000]])
        pipe.expire(meta, batch.keep_s)
        if batch.entries:
            pipe.expire(items, batch.keep_s)
        await pipe.execute()


async def load_batch(settings: Settings, batch_id: str) -> Batch:
    """The batch record, or KeyError when Redis has no such batch (unknown id or expired)."""
    client = async_client(settings)
    try:
        meta = await client.hgetall(BATCH_KEY + batch_id)
        if not meta:
            raise KeyError(batch_id)
        raw = await client.lrange(BATCH_KEY + batch_id + ":items", 0, -1)
    except redis.RedisError as exc:
        raise _redis_down(settings, exc) from None
    finally:
        await client.aclose()
    return Batch(id=batch_id, queue=meta.get("queue", settings.queue), model=meta.get("model", ""),
                 entries=[Entry.from_json(r) for r in raw], store=meta.get("store", "1") == "1",
                 min_face=int(meta.get("min_face") or DEFAULT_MIN_FACE),
                 keep_s=int(await _ttl_or_default(settings, batch_id)))


async def _ttl_or_default(settings: Settings, batch_id: str) -> int:
    client = async_client(settings)
    try:
        ttl = await client.ttl(BATCH_KEY + batch_id)
    finally:
        await client.aclose()
    return ttl if ttl and ttl > 0 else KEEP_RESULTS_S


def job_spec(jid: str, data: bytes, filename: str, store: bool, batch_id: str,
             min_face: int = DEFAULT_MIN_FACE) -> dict[str, Any]:
    """A job as BullMQ's addBulk takes it. Our jobs always carry `min_face`; a job without it
    (the Node.js app's) is scored with the worker's FACESCORE_MIN_FACE."""
    return {
        "name": JOB_NAME,
        "data": {"image": base64.b64encode(data).decode("ascii"), "filename": filename, "store": store,
                 "batch": batch_id, "min_face": min_face},
        "opts": {"jobId": jid, "attempts": ATTEMPTS, "backoff": {"type": "exponential", "delay": BACKOFF_MS}},
    }


async def enqueue(queue: Any, client: aredis.Redis, specs: list[dict[str, Any]]) -> None:
    """addBulk, after removing failed jobs of the same ids so they are scored again."""
    ids = [s["opts"]["jobId"] for s in specs]
    async with client.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hmget(f"{PREFIX}:{queue.name}:{jid}", "finishedOn", "returnvalue")
        states = await pipe.execute()
    for jid, (finished, returned) in zip(ids, states):
        if finished and returned in (None, "null", ""):
            await queue.remove(jid)
    await queue.addBulk(specs)


# -- waiting -------------------------------------------------------------------------------


class EventStream:
    """The queue's BullMQ events stream (`<prefix>:<queue>:events`, which the Lua scripts of any
    BullMQ, Node's or Python's, append to), read with a blocking XREAD on a connection of its own
    from `last_id` on. Each entry goes to `on_event(event name, fields)`, `completed`'s return
    value decoded from its JSON. It stops on a connection error (`alive` turns False; the owner
    starts another and reads its jobs again), also when Redis stops answering without closing the
    connection (the socket times out a few seconds after a block).

    bullmq's QueueEvents reads the same stream, but its close() can sit out a whole block after an
    event was delivered, and stopping it at once, or telling whether it still runs, meant reaching
    into its private consumer task."""

    def __init__(self, settings: Settings, queue: str, last_id: str,
                 on_event: Callable[[str, dict[str, Any]], None], block_ms: int = 2000) -> None:
        self.key = f"{PREFIX}:{queue}:events"
        self.block_ms = block_ms
        self.on_event = on_event
        self.client = async_client(settings, timeout=3.0, blocking_s=block_ms / 1000 + 2.0)
        self.task: asyncio.Task[None] = asyncio.ensure_future(self._read(last_id))

    @property
    def alive(self) -> bool:
        return not self.task.done()

    async def _read(self, last_id: str) -> None:
        try:
            while True:
                data = await self.client.xread({self.key: last_id}, block=self.block_ms, count=500)
                for _stream, entries in data or ():
                    for entry_id, fields in entries:
                        last_id = entry_id
                        event = fields.pop("event", None)
                        if event == "completed" and isinstance(fields.get("returnvalue"), str):
                            try:
                                fields["returnvalue"] = json.loads(fields["returnvalue"])
                            except ValueError:
                                pass  # kept as text; read_jobs reads it again from the job
                        if event:
                            self.on_event(event, fields)
        except asyncio.CancelledError:
            raise
        except Exception:  # the connection failed: `alive` says so, the owner restarts
            return

    async def close(self) -> None:
        """Stop reading at once (not at the end of the current block) and drop the connection."""
        for _ in range(400):  # redis-py can swallow one cancellation while it tidies the socket
            if self.task.done():
                break
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=0.005)  # short: a request waits for this teardown
        try:
            connection = getattr(self.client, "connection", None)
            if connection is not None:
                await connection.disconnect()
            await self.client.aclose()
        except Exception:
            pass


async def read_jobs(client: aredis.Redis, queue: str, ids: list[str]) -> list[tuple[str, str, Any]]:
    """(job id, state, value) for each id, in one pipelined read per 500 ids. State: "completed"
    (value: the return value), "failed" (its last attempt failed), "rejected" (failed before its
    last attempt: the worker said no attempt can help, a bad image), "lost" (Redis has no such
    job: it restarted without persistence, or the job expired) or "open" (waiting or running)."""
    out = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        async with client.pipeline(transaction=False) as pipe:
            for jid in chunk:
                pipe.hmget(f"{PREFIX}:{queue}:{jid}", "timestamp", "finishedOn", "returnvalue", "failedReason",
                           "atm", "attemptsMade", "opts")
            rows = await pipe.execute()
        for jid, (stamp, finished, returned, reason, atm, made, opts) in zip(chunk, rows):
            if stamp is None and finished is None:
                out.append((jid, "lost", None))
            elif finished and returned not in (None, ""):
                try:
                    out.append((jid, "completed", json.loads(returned)))
                except ValueError:
                    out.append((jid, "failed", "the worker returned malformed JSON"))
            elif finished:
                try:
                    attempts = int(json.loads(opts or "{}").get("attempts") or 1)
                except (ValueError, AttributeError):
                    attempts = 1
                early = int(atm or made or 0) < attempts
                out.append((jid, "rejected" if early else "failed", reason or "failed"))
            else:
                out.append((jid, "open", None))
    return out


def _from_job(path: str, returned: Any, entry: Entry) -> ImageResult:
    if not isinstance(returned, dict):
        return ImageResult(path=path, error=f"the worker returned no result object: {str(returned)[:80]}",
                           sha256=entry.sha256)
    result = ImageResult.from_data(path, returned)
    vectors = returned.get("embeddings")
    if isinstance(vectors, list) and len(vectors) == len(result.faces):
        result.embeddings = vectors
    return result


class QueueClient:
    """The one client of the queue: submit images, wait for their results, see which workers
    are alive. `batch --via queue`, `submit`, `results` and the API all use it.

    It owns three connections for its whole life, whatever the number of waits: a plain client
    (reads, liveness), a BullMQ Queue (adding jobs) and one `EventStream` whose completed/failed
    events wake whoever waits for that job. A wait reads its open jobs in one pipelined read when
    it starts and again whenever the events stream was restarted (Redis went away, or the job
    finished before we listened), adds again the jobs Redis lost, and says so when no worker has
    been alive for a while or Redis stays away. Use it inside one event loop, and close() it.
    """

    def __init__(self, settings: Settings, queue: str | None = None, *, timeout: float = 2.0,
                 redis_retry_s: float = REDIS_RETRY_S) -> None:
        self.settings = settings
        self.queue = queue or settings.queue
        self.timeout = timeout
        self.redis_retry_s = redis_retry_s
        self.client: aredis.Redis | None = None
        self.bull: Any = None
        self.events: EventStream | None = None
        self.listeners: dict[str, list[asyncio.Queue[tuple[str, str, Any]]]] = {}
        self._generation = 0  # how many times the events stream was (re)started
        self._events_lock = asyncio.Lock()
        # The last look at the workers: (when, workers or None, the failure or None), and the look
        # in progress, which every caller shares.
        self._seen: tuple[float, list[dict[str, Any]] | None, str | None] = (-1e9, None, None)
        self._looking: asyncio.Task[list[dict[str, Any]]] | None = None

    async def __aenter__(self) -> "QueueClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    def _client(self) -> aredis.Redis:
        if self.client is None:
            self.client = async_client(self.settings, timeout=self.timeout)
        return self.client

    def _queue(self) -> Any:
        from bullmq import Queue

        if self.bull is None:
            self.bull = Queue(self.queue, bull_opts(self.settings))
        return self.bull

    def _down(self, exc: BaseException | str) -> QueueUnavailable:
        return _redis_down(self.settings, exc)

    # -- liveness ---------------------------------------------------------------------------

    async def workers(self, max_age_s: float = 1.0) -> list[dict[str, Any]]:
        """Live workers on this queue, cached for `max_age_s` so a burst of requests costs one SCAN
        (`max_age_s=0`: look now). Callers at the same time share one look.

        Raises QueueUnavailable when Redis does not answer. That failure is remembered too, for
        `redis_retry_s`; after it Redis is asked again, and callers get the failure at once until
        it answers: a Redis that swallows packets costs one timeout a second, not one per caller."""
        seen, workers, failure = self._seen
        age = time.monotonic() - seen
        fresh = max_age_s <= 0  # asked to look now: wait for the answer, whatever was seen before
        if not fresh and workers is not None and age <= max_age_s:
            return workers
        if not fresh and failure is not None and age < self.redis_retry_s:
            raise self._down(failure)
        if self._looking is None:
            self._looking = asyncio.ensure_future(self._look())
            self._looking.add_done_callback(lambda t: t.cancelled() or t.exception())
        if not fresh and failure is not None:  # Redis is being asked again; until it answers, it is down
            raise self._down(failure)
        return await asyncio.shield(self._looking)

    async def _look(self) -> list[dict[str, Any]]:
        try:
            workers = await live_workers_async(self._client(), self.queue)
            self._seen = (time.monotonic(), workers, None)
            return workers
        except (redis.RedisError, OSError) as exc:
            self._seen = (time.monotonic(), None, str(exc))
            raise self._down(exc) from None
        finally:
            self._looking = None

    async def ping(self) -> float:
        """Round trip to Redis in milliseconds, or QueueUnavailable."""
        start = time.perf_counter()
        try:
            await self._client().ping()
        except (redis.RedisError, OSError) as exc:
            raise self._down(exc) from None
        return (time.perf_counter() - start) * 1000.0

    # -- submitting -------------------------------------------------------------------------

    async def submit(self, items: Iterable[tuple[Path, str]], *, store: bool = True, keep_s: int = KEEP_RESULTS_S,
                     batch_id: str | None = None, workers: list[dict[str, Any]] | None = None) -> Batch:
        """Read each file (size cap applied), enqueue the readable ones in bulk, record the batch.

        Unreadable files and files over the cap become entries with an error, never jobs.
        Raises QueueUnavailable when Redis does not answer."""
        try:
            if workers is None:
                workers = await self.workers(max_age_s=0.0)
            client, queue = self._client(), self._queue()
            batch = Batch(id=batch_id or new_batch_id(), queue=self.queue,
                          model=model_version(workers, self.settings), store=store, keep_s=keep_s,
                          min_face=self.settings.min_face)
            specs: list[dict[str, Any]] = []
            queued: set[str] = set()
            size = 0
            first_chunk = FIRST_CHUNK_JOBS
            for path, shown in items:
                entry = Entry(path=shown, file=str(Path(path).resolve()))
                try:
                    data = await asyncio.to_thread(images.read_file, Path(path), self.settings.max_image_bytes)
                    if not data:
                        raise ImageError("empty file")
                except ImageError as exc:
                    entry.error = str(exc)
                    batch.entries.append(entry)
                    continue
                entry.sha256 = images.sha256(data)
                entry.job = job_id(entry.sha256, batch.model, batch.min_face)
                batch.entries.append(entry)
                if entry.job in queued:
                    continue
                queued.add(entry.job)
                specs.append(job_spec(entry.job, data, Path(shown).name, store, batch.id, batch.min_face))
                size += len(data)
                # The first chunks are small so the workers start at once; later ones fill up to
                # CHUNK_BYTES, so a 100k batch costs few round trips and never sits in memory whole.
                if size >= CHUNK_BYTES or len(specs) >= first_chunk:
                    await enqueue(queue, client, specs)
                    specs, size = [], 0
                    first_chunk *= 4
            if specs:
                await enqueue(queue, client, specs)
            await _save_batch(client, batch)
            return batch
        except (redis.RedisError, OSError) as exc:
            raise self._down(exc) from None

    # -- waiting ----------------------------------------------------------------------------

    def _events_alive(self) -> bool:
        return self.events is not None and self.events.alive

    def _dispatch(self, jid: str | None, state: str, value: Any) -> None:
        for inbox in self.listeners.get(jid or "", ()):
            inbox.put_nowait((jid or "", state, value))

    async def _listen(self) -> int:
        """Start the events stream unless it runs; return its generation. It starts at the last
        event now in Redis, so what finishes after a wait's read reaches the wait."""

        def on_event(event: str, fields: dict[str, Any]) -> None:
            if event == "completed":
                self._dispatch(fields.get("jobId"), "completed", fields.get("returnvalue"))
            elif event == "failed":  # read back: it tells a rejected image from a failure
                self._dispatch(fields.get("jobId"), "failed?", fields.get("failedReason"))

        async with self._events_lock:
            if not self._events_alive():
                if self.events is not None:
                    await self.events.close()
                    self.events = None
                last = await self._client().xrevrange(f"{PREFIX}:{self.queue}:events", count=1)
                events = EventStream(self.settings, self.queue, last[0][0] if last else "0-0", on_event)
                self.events = events
                self._generation += 1
            return self._generation

    async def wait(self, ids: Iterable[str], *, requeue: Requeue, wait: bool = True,
                   warn: Callable[[str], None] = lambda m: None, no_worker_grace_s: float = NO_WORKER_GRACE_S,
                   redis_grace_s: float = REDIS_GRACE_S,
                   poll_s: float | None = None) -> AsyncIterator[tuple[str, str, Any]]:
        """Yield (job id, state, value) once for each of `ids` as its job finishes. State:
        "completed" (value: the return value), "rejected" (value: why; a bad image) or "failed"
        (value: why).

        `requeue(lost ids)` gives back the job specs to add again for jobs Redis lost (restarted
        without persistence, or expired) and (id, "failed", why) for those it cannot. `wait=False`
        yields what has finished and stops. `poll_s` also reads the open jobs that often (for a
        few jobs; a batch relies on the events). Raises NoWorker when no worker has been alive
        for `no_worker_grace_s` while jobs are open, QueueUnavailable when Redis stays away
        longer than `redis_grace_s`. Closing the iterator stops listening for the rest."""
        open_ = set(ids)
        inbox: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
        for jid in open_:
            self.listeners.setdefault(jid, []).append(inbox)

        def done(jid: str) -> None:
            open_.discard(jid)
            mine = self.listeners.get(jid, [])
            if inbox in mine:
                mine.remove(inbox)
            if not mine:
                self.listeners.pop(jid, None)

        generation = -1
        need_read = True
        redis_down_since: float | None = None
        no_worker_since: float | None = None
        next_check = next_read = 0.0
        try:
            while open_:
                now = time.monotonic()
                if wait and generation >= 0 and (self._generation != generation or not self._events_alive()):
                    need_read = True  # the events stream stopped (a connection error) or was restarted
                if need_read or now >= next_check:
                    try:
                        if need_read or (poll_s is not None and now >= next_read):
                            if wait:
                                generation = await self._listen()
                            await self._read(list(open_), inbox, requeue, warn)
                            need_read = False
                            next_read = now + (poll_s or 0.0)
                        if not wait:
                            break
                        workers = await self.workers()
                        redis_down_since = None
                        if workers:
                            no_worker_since = None
                        elif no_worker_since is None:
                            no_worker_since = now
                        elif now - no_worker_since >= no_worker_grace_s and inbox.empty():
                            raise NoWorker(f"no live worker on queue {self.queue!r}")
                        next_check = now + 1.0
                    except (redis.RedisError, OSError, QueueUnavailable) as exc:
                        if redis_down_since is None:
                            redis_down_since = now
                            warn(f"Redis does not answer ({exc}); waiting for it to come back")
                        elif now - redis_down_since >= redis_grace_s:
                            raise QueueUnavailable(f"Redis at {redact(self.settings.redis_url)} has not "
                                                   f"answered for {redis_grace_s:.0f} s") from None
                        need_read = True
                        next_check = now + 0.5
                        await asyncio.sleep(0.5)
                        continue
                try:
                    jid, state, value = await asyncio.wait_for(inbox.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if jid not in open_:
                    continue
                if state == "failed?":
                    try:
                        _, state, value = (await read_jobs(self._client(), self.queue, [jid]))[0]
                    except (redis.RedisError, OSError):
                        need_read = True
                        continue
                    if state not in ("completed", "failed", "rejected"):
                        continue  # retried, or lost: the next read says
                done(jid)
                yield jid, state, value
            if not wait:
                while not inbox.empty():
                    jid, state, value = inbox.get_nowait()
                    if jid in open_ and state != "failed?":
                        done(jid)
                        yield jid, state, value
        finally:
            for jid in list(open_):
                done(jid)

    async def _read(self, ids: list[str], inbox: asyncio.Queue[tuple[str, str, Any]], requeue: Requeue,
                    warn: Callable[[str], None]) -> None:
        """Read `ids` at once: the finished ones go to `inbox`, the lost ones are added again."""
        states = await read_jobs(self._client(), self.queue, ids)
        for jid, state, value in states:
            if state in ("completed", "failed", "rejected"):
                inbox.put_nowait((jid, state, value))
        lost = [j for j, s, _ in states if s == "lost"]
        if lost:
            warn(f"Redis lost {len(lost)} job(s) (restarted without persistence?): adding them again")
            specs, gone = await requeue(lost)
            if specs:
                await self._queue().addBulk(specs)
            for item in gone:
                inbox.put_nowait(item)

    async def results(self, batch: Batch, *, wait: bool = True, warn: Callable[[str], None] = lambda m: None,
                      no_worker_grace_s: float = NO_WORKER_GRACE_S, redis_grace_s: float = REDIS_GRACE_S,
                      pending: list[Entry] | None = None) -> AsyncIterator[ImageResult]:
        """Yield one ImageResult per entry of the batch as its job finishes (each exactly once).

        `wait=False` yields what has finished and stops. The unfinished entries are appended to
        `pending` (also when NoWorker or QueueUnavailable stops the wait: they stay collectable
        with `facescore results`)."""
        open_: dict[str, list[Entry]] = {}
        for e in batch.entries:
            if e.error:
                yield ImageResult(path=e.path, error=e.error)
            elif e.job:
                open_.setdefault(e.job, []).append(e)

        async def requeue(lost: list[str]) -> tuple[list[dict[str, Any]], list[tuple[str, str, Any]]]:
            specs, gone = [], []
            for jid in lost:
                entry = open_[jid][0]
                try:
                    data = await asyncio.to_thread(images.read_file, Path(entry.file or entry.path),
                                                   self.settings.max_image_bytes)
                except ImageError as exc:
                    gone.append((jid, "failed", f"the job was lost by Redis and the file cannot be read again: {exc}"))
                    continue
                specs.append(job_spec(jid, data, Path(entry.path).name, batch.store, batch.id, batch.min_face))
            if not await self._client().exists(BATCH_KEY + batch.id):
                await _save_batch(self._client(), batch)
            return specs, gone

        try:
            if open_:
                async with aclosing(self.wait(list(open_), requeue=requeue, wait=wait, warn=warn,
                                              no_worker_grace_s=no_worker_grace_s,
                                              redis_grace_s=redis_grace_s)) as finished:
                    async for jid, state, value in finished:
                        for e in open_.pop(jid):
                            yield (_from_job(e.path, value, e) if state == "completed"
                                   else ImageResult(path=e.path, error=str(value), sha256=e.sha256))
        finally:
            if pending is not None:
                pending.extend(e for entries in open_.values() for e in entries)

    async def score(self, data: bytes, timeout_s: float, filename: str = "", store: bool = False,
                    batch_id: str = "api", min_face: int | None = None) -> tuple[str, Any]:
        """Enqueue one image (unless the same image is already queued or done) and wait for it:
        ("completed", return value) | ("rejected", reason: a bad image) | ("failed", reason).
        `min_face`: the narrowest face to look for (None: the settings' FACESCORE_MIN_FACE).
        Raises NoWorker, QueueUnavailable or TimeoutError. Cancel the awaiting task and a job
        nobody else waits for is removed if no worker has taken it."""
        workers = await self.workers()
        if not workers:
            raise NoWorker(f"no live worker on queue {self.queue!r}")
        min_face = self.settings.min_face if min_face is None else min_face
        jid = job_id(images.sha256(data), model_version(workers, self.settings), min_face)
        spec = job_spec(jid, data, filename, store, batch_id, min_face)

        async def requeue(lost: list[str]) -> tuple[list[dict[str, Any]], list[tuple[str, str, Any]]]:
            return [spec], []

        finished = self.wait([jid], requeue=requeue, poll_s=1.0, redis_grace_s=min(timeout_s, API_REDIS_GRACE_S))
        answer: tuple[str, Any] | None = None
        try:
            async with aio.timeout(timeout_s):
                try:
                    await enqueue(self._queue(), self._client(), [spec])
                except (redis.RedisError, OSError) as exc:
                    raise self._down(exc) from None
                async for _, state, value in finished:
                    answer = (state, value)
            return answer or ("failed", "the wait ended without a result")
        except TimeoutError:
            raise TimeoutError(f"no result within {timeout_s:.0f} s") from None
        finally:
            await finished.aclose()
            if answer is None and jid not in self.listeners:
                await self._forget(jid)

    async def _forget(self, jid: str) -> None:
        """Remove a job that has not started (BullMQ refuses a locked one): nobody waits for it."""
        try:
            processed = await asyncio.shield(self._client().hget(f"{PREFIX}:{self.queue}:{jid}", "processedOn"))
            if processed is None and self.bull is not None:
                await asyncio.shield(self.bull.remove(jid))
        except Exception:  # best effort: at worst the image is scored and its result kept
            pass

    async def close(self) -> None:
        if self._looking is not None:
            self._looking.cancel()
        if self.events is not None:
            await self.events.close()
            self.events = None
        if self.bull is not None:
            try:
                await self.bull.close()
            except Exception:
                pass
            self.bull = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None


async def submit(items: Iterable[tuple[Path, str]], settings: Settings, **options: Any) -> Batch:
    """QueueClient.submit with a client of its own, for a one-off submit."""
    async with QueueClient(settings) as client:
        return await client.submit(items, **options)


async def collect(batch: Batch, settings: Settings, **options: Any) -> AsyncIterator[ImageResult]:
    """QueueClient.results with a client of its own (on the batch's queue), closed at the end."""
    async with QueueClient(settings, batch.queue) as client:
        async with aclosing(client.results(batch, **options)) as results:
            async for result in results:
                yield result


# -- synchronous helpers for the CLI ----------------------------------------------------------


def iterate(agen: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async generator from synchronous code, one item at a time, in a private loop."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())  # type: ignore[attr-defined]
            except StopAsyncIteration:
                return
    finally:
        try:
            loop.run_until_complete(agen.aclose())  # type: ignore[attr-defined]
        except Exception:
            pass
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def score_items(items: list[Any], settings: Settings, *, store: bool = True,
                warn: Callable[[str], None] = lambda m: None,
                on_batch: Callable[[Batch], None] | None = None) -> Iterator[ImageResult]:
    """Submit `pipeline.Item`s as one batch and yield results as they arrive (the `--via queue`
    path of `score` and `batch`), through one QueueClient. When the workers go away, the
    unfinished images come back as error rows naming the batch id, so `facescore results` can
    still collect them."""

    async def flow() -> AsyncIterator[ImageResult]:
        async with QueueClient(settings) as client:
            batch = await client.submit(((i.path, i.display) for i in items), store=store)
            if on_batch:
                on_batch(batch)
            left: list[Entry] = []
            try:
                async with aclosing(client.results(batch, warn=warn, pending=left)) as results:
                    async for r in results:
                        yield r
            except (NoWorker, QueueUnavailable) as exc:
                for e in left:
                    yield ImageResult(path=e.path, sha256=e.sha256,
                                      error=f"{exc}; still queued: collect with `facescore results {batch.id}`")

    return iterate(flow())


def hostname() -> str:
    return socket.gethostname()
