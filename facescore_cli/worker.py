"""The worker loop: take `score` jobs from the BullMQ queue, score them in a `ScoringPool`, return
`ImageResult.to_data()`.

Lifecycle, in one place: `start` (the scoring pool with the models loaded once per process, the
BullMQ worker, the heartbeat), `process` (one job: validate, score off the event loop, log one
JSON line), `stop` (on SIGINT/SIGTERM: take no new job, finish in-flight ones within the grace
period, then release the rest to BullMQ's stalled-job check). A scoring process that dies is
replaced by the pool, which retries its image once; the pool's processes die with the worker,
SIGKILL included.

Inference never runs on the event loop, so the lock renewal and the heartbeat keep their time
whatever the models do.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

from . import pipeline, queue
from .config import Settings, parse_min_face
from .health import redact
from .pool import READY_TIMEOUT_S, PoolClosed, ScoringPool

DEFAULT_LOCK_MS = 30_000
DEFAULT_STALLED_MS = 30_000
DEFAULT_GRACE_S = 30.0


# -- the worker -------------------------------------------------------------------------------

# Replace a job's data only while the job still exists (it may have been removed meanwhile).
_SET_DATA_IF_EXISTS = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'data', ARGV[1]) end"


class TransientError(Exception):
    """Worth another attempt (BullMQ retries it with exponential backoff)."""


@dataclass
class FaceWorker:
    settings: Settings
    concurrency: int = field(default_factory=pipeline.default_jobs)
    lock_ms: int = DEFAULT_LOCK_MS
    stalled_ms: int = DEFAULT_STALLED_MS
    keep_results_s: int = queue.KEEP_RESULTS_S
    grace_s: float = DEFAULT_GRACE_S
    log: IO[str] = field(default_factory=lambda: sys.stdout)
    id: str = field(default_factory=lambda: f"{queue.hostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        self.model = ""
        self.active = 0
        self.processed = 0
        self.failed = 0
        self.started = time.time()
        self._pool: ScoringPool | None = None
        self._bull: Any = None
        self._stop = asyncio.Event()
        self._redis: Any = None
        self._tidying: set[asyncio.Future] = set()  # images being dropped from finished jobs

    # lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, stop. The one entry point."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await self._forget_heartbeat()

    async def start(self) -> None:
        from bullmq import UnrecoverableError, Worker

        self._pool = ScoringPool(self.settings, self.concurrency).start()
        # Loads the models in every process before the first job is taken.
        if not await asyncio.to_thread(self._pool.wait_ready, READY_TIMEOUT_S):
            self._pool.close(0.0)
            raise RuntimeError(f"the scoring processes did not start: {self._pool.status().last_error}")
        self.model = queue.local_model_version(self.settings)
        self._redis = queue.async_client(self.settings)
        await self._beat()
        self._bull = Worker(self.settings.queue, self.process, queue.bull_opts(
            self.settings,
            # Twice as many jobs as processes: the next image is already fetched and waiting in
            # the pool while Redis round trips complete the last one, so no process sits idle.
            concurrency=self.concurrency * 2,
            lockDuration=self.lock_ms,
            stalledInterval=self.stalled_ms,
            maxStalledCount=2,
            runRetryDelay=1000,  # after a lost connection, try again soon (the default is 15 s)
            removeOnComplete={"age": self.keep_results_s},
            removeOnFail={"age": queue.KEEP_FAILED_S},
            name=self.id,
        ))
        self._bull.on("error", lambda err, *a: self._log("error", error=f"{type(err).__name__}: {err}"))
        # Only once BullMQ has recorded the outcome: a job that is still retried needs its image.
        self._bull.on("completed", lambda job, *a: self._later(self._drop_image(job)))
        self._bull.on("failed", lambda job, err, *a: self._later(self._drop_image(job))
                      if isinstance(err, UnrecoverableError) else None)
        self._bull.on("stalled", lambda jid, *a: self._log("stalled", job=jid))
        self._log("started", concurrency=self.concurrency, model=self.model, queue=self.settings.queue,
                  redis=redact(self.settings.redis_url), lock_ms=self.lock_ms, stalled_ms=self.stalled_ms)

    def stop_soon(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Take no new job; finish in-flight ones within the grace period; release the rest."""
        self._log("stopping", active=self.active, grace_s=self.grace_s)
        if self._bull is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._bull.close()), timeout=self.grace_s)
            except asyncio.TimeoutError:
                # Their locks expire and BullMQ's stalled-job check hands them to another worker.
                self._log("released", active=self.active)
                try:
                    await asyncio.wait_for(self._bull.close(force=True), timeout=5)
                except Exception:
                    pass
        if self._tidying:
            await asyncio.wait(self._tidying, timeout=5)
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close, 2.0)  # what still runs was released above
        self._log("stopped", processed=self.processed, failed=self.failed)

    # one job -----------------------------------------------------------------------------------

    async def process(self, job: Any, token: str) -> dict[str, Any]:
        from bullmq import UnrecoverableError

        start = time.perf_counter()
        self.active += 1
        info: dict[str, Any] = {"job": job.id, "attempt": job.attemptsMade + 1,
                                "filename": (job.data or {}).get("filename") if isinstance(job.data, dict) else None}
        try:
            image, filename, min_face = self._validate(job)
            assert self._pool is not None, "worker not started"
            try:
                out = await asyncio.wrap_future(self._pool.submit_encoded(image, filename, min_face))
            except PoolClosed:
                raise TransientError("the worker stopped while scoring this job") from None
            if out["kind"] in ("image", "crashed", "timeout"):  # crashed twice, or hung: a third try would too
                raise UnrecoverableError(out["error"])
            if out["kind"] == "failed":
                raise TransientError(out["error"])
            data = out["data"]
            self.processed += 1
            self._log("completed", **info, ms=_ms(start), faces=len(data["faces"]), score=data["score"],
                      vibe=data["vibe"], source=data["source"], model=data["model"])
            return data
        except Exception as exc:
            self.failed += 1
            final = isinstance(exc, UnrecoverableError) or job.attemptsMade + 1 >= int(job.opts.get("attempts") or 1)
            self._log("failed" if final else "retrying", **info, ms=_ms(start), error=str(exc))
            raise
        finally:
            self.active -= 1

    def _later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tidying.add(task)
        task.add_done_callback(self._tidying.discard)

    async def _drop_image(self, job: Any) -> None:
        """Keep the finished job (its result, for dedup and `results`) but not the image: a kept
        job would otherwise hold the photo in Redis for as long as results are kept."""
        if isinstance(job.data, dict) and "image" in job.data:
            kept = json.dumps({k: v for k, v in job.data.items() if k != "image"})
            try:  # our own connection: BullMQ's may already be closing when a stop is under way
                await self._redis.eval(_SET_DATA_IF_EXISTS, 1, f"{queue.PREFIX}:{self.settings.queue}:{job.id}", kept)
            except Exception as exc:  # the result matters more than the tidy-up
                self._log("error", job=job.id, error=f"could not drop the image: {type(exc).__name__}: {exc}")

    def _validate(self, job: Any) -> tuple[str, str, int | None]:
        """(image, filename, min_face) of a job; min_face None when the job does not say (the
        Node.js app's jobs): then this worker's FACESCORE_MIN_FACE applies."""
        from bullmq import UnrecoverableError

        if job.name != queue.JOB_NAME:
            raise UnrecoverableError(f"unknown job name {job.name!r} (this worker runs {queue.JOB_NAME!r} jobs)")
        data = job.data
        if not isinstance(data, dict) or not isinstance(data.get("image"), str) or not data["image"]:
            raise UnrecoverableError('job data must be a JSON object with "image": a base64 string')
        filename = data.get("filename")
        min_face = data.get("min_face")
        if min_face is not None:
            try:
                min_face = parse_min_face(min_face)
            except ValueError as exc:
                raise UnrecoverableError(f'job data "min_face": {exc}') from None
        return data["image"], filename if isinstance(filename, str) else "", min_face

    # liveness ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "host": queue.hostname(), "pid": os.getpid(), "queue": self.settings.queue,
                "concurrency": self.concurrency, "model": self.model, "started": self.started,
                "seen": time.time(), "active": self.active, "processed": self.processed, "failed": self.failed}

    async def _beat(self) -> None:
        await self._redis.set(queue.WORKER_KEY + self.id, json.dumps(self.status()), ex=queue.HEARTBEAT_TTL_S)

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._beat()
            except Exception as exc:  # Redis away: the key expires; it comes back with Redis
                self._log("heartbeat", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(queue.HEARTBEAT_S)

    async def _forget_heartbeat(self) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.delete(queue.WORKER_KEY + self.id)
        except Exception:
            pass
        await self._redis.aclose()

    def _log(self, event: str, **fields: Any) -> None:
        line = {"ts": round(time.time(), 3), "event": event, "worker": self.id, **fields}
        self.log.write(json.dumps(line, default=str) + "\n")
        self.log.flush()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 1)


def serve(worker: FaceWorker) -> None:
    asyncio.run(worker.run())
