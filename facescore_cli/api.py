"""The original system's REST endpoint: `POST /api/score` with `{"image": "<base64>"}`.

Answers `{"success": true, "data": {...}}` with the same `data` object as the job's return value
(CONTRACT.md), or `{"success": false, "error": "..."}` with a status that says whose fault it is:
400 no body / not JSON / bad base64, 413 too big, 422 not an image or no face, 503 no worker or
timed out, 500 scoring failed. Scores through the queue's workers, or in a local process pool
with `via="local"`; `auto` decides per request from the workers' heartbeats.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from . import __version__, images, pipeline, queue, web
from .config import Settings
from .errors import ServiceUnavailable
from .result import NO_FACE, ImageResult
from .worker import _init_process, _score_job

DEFAULT_TIMEOUT_S = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _fail(status: int, message: str, data: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": message}
    if data is not None:
        body["data"] = data
    return JSONResponse(body, status_code=status)


class _Local:
    """Scoring in this machine's processes, the models loaded once in each."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self.pool: ProcessPoolExecutor | None = None

    async def score(self, image_b64: str) -> dict[str, Any]:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=self.processes, initializer=_init_process,
                                            initargs=(self.settings,))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, _score_job, image_b64, "", self.settings.max_image_bytes)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


class _Queue:
    """One Queue, one QueueEvents and one plain client (three connections) for the app's life;
    each request waits on a future its job's event resolves, with a read of the job every second
    in case the event was missed (Redis restarted, or the job finished before we listened)."""

    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.client: Any = None
        self.bull: Any = None
        self.events: Any = None
        self.waiters: dict[str, list[asyncio.Future[tuple[str, Any]]]] = {}
        self._workers: tuple[float, list[dict[str, Any]]] = (0.0, [])

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers, cached for a second so a burst of requests costs one SCAN."""
        seen, workers = self._workers
        if time.monotonic() - seen > 1.0:
            if self.client is None:
                self.client = queue.async_client(self.settings, timeout=2.0)
            workers = await queue.live_workers_async(self.client, self.settings.queue)
            self._workers = (time.monotonic(), workers)
        return workers

    def _events_alive(self) -> bool:
        task = getattr(self.events, "_consumer_task", None)
        return self.events is not None and task is not None and not task.done()

    async def _ensure(self) -> None:
        from bullmq import Queue, QueueEvents

        if self.bull is None:
            self.bull = Queue(self.settings.queue, queue.bull_opts(self.settings))
        if not self._events_alive():
            if self.events is not None:
                await queue.close_events(self.events)
            self.events = QueueEvents(self.settings.queue, queue.bull_opts(self.settings, blockingTimeout=2000))
            self.events.on("completed", lambda a, _id: self._resolve(a.get("jobId"), "completed", a.get("returnvalue")))
            self.events.on("failed", lambda a, _id: self._resolve(a.get("jobId"), "failed", a.get("failedReason")))
            self.events.on("error", lambda *_: None)

    def _resolve(self, jid: str | None, state: str, value: Any) -> None:
        for fut in self.waiters.get(jid or "", []):
            if not fut.done():
                fut.set_result((state, value))

    async def _read(self, jid: str) -> tuple[str, Any] | None:
        key = f"{queue.PREFIX}:{self.settings.queue}:{jid}"
        stamp, finished, returned, reason, atm, made, opts = await self.client.hmget(
            key, "timestamp", "finishedOn", "returnvalue", "failedReason", "atm", "attemptsMade", "opts")
        if stamp is None:
            return ("lost", None)
        if not finished:
            return None
        if returned not in (None, ""):
            return ("completed", json.loads(returned))
        try:
            attempts = int(json.loads(opts or "{}").get("attempts") or 1)
        except ValueError:
            attempts = 1
        # Failed before its last attempt: the worker said it was unrecoverable (a bad image).
        return ("rejected" if int(atm or made or 0) < attempts else "failed", reason or "failed")

    async def score(self, data: bytes, digest: str) -> tuple[str, Any]:
        workers = await self.workers()
        if not workers:
            raise queue.NoWorker(f"no live worker on queue {self.settings.queue!r}")
        await self._ensure()
        jid = queue.job_id(digest, queue.model_version(workers, self.settings))
        fut: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(jid, []).append(fut)
        try:
            await queue._enqueue(self.bull, self.client, [queue._job_spec(jid, data, "", False, "api")])
            deadline = time.monotonic() + self.timeout_s
            while True:
                state = await self._read(jid)
                if state is not None and state[0] == "lost":  # Redis restarted under us
                    await queue._enqueue(self.bull, self.client, [queue._job_spec(jid, data, "", False, "api")])
                elif state is not None:
                    return state
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no result within {self.timeout_s:.0f} s")
                try:
                    state = await asyncio.wait_for(asyncio.shield(fut), timeout=min(1.0, left))
                except asyncio.TimeoutError:
                    await self._ensure()
                    continue
                if state[0] == "failed":
                    state = await self._read(jid) or state  # tell a rejected image from a failure
                return state
        finally:
            self.waiters[jid].remove(fut)
            if not self.waiters[jid]:
                del self.waiters[jid]

    async def close(self) -> None:
        if self.events is not None:
            await queue.close_events(self.events)
        if self.bull is not None:
            try:
                await self.bull.close()
            except Exception:
                pass
        if self.client is not None:
            await self.client.aclose()


def create_app(settings: Settings | None = None, via: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
               processes: int = 0) -> FastAPI:
    settings = settings or Settings.load()
    via = (via or settings.via).lower()
    local = _Local(settings, processes or pipeline.default_jobs())
    remote = _Queue(settings, timeout_s)
    max_body = settings.max_image_bytes * 4 // 3 + 64 * 1024

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        await remote.close()
        local.close()

    app = FastAPI(title="facescore API", version=__version__, lifespan=lifespan,
                  description="The original system's endpoint: POST /api/score with {\"image\": \"<base64>\"}.")
    web.mount(app)  # GET /: the page that scores dropped photos through POST /api/score

    async def read_image(request: Request) -> tuple[str, bytes]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise ApiError(413, f"body is over the {max_body // (1024 * 1024)} MB limit")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise ApiError(413, f"body is over the {max_body // (1024 * 1024)} MB limit")
        if not body.strip():
            raise ApiError(400, 'no body: send JSON {"image": "<base64>"}')
        try:
            payload = json.loads(body)
        except ValueError:
            raise ApiError(400, 'body is not JSON: send {"image": "<base64>"}') from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str) or not payload["image"].strip():
            raise ApiError(400, 'missing "image": send {"image": "<base64>"}')
        text = payload["image"].strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        if len(text) // 4 * 3 > settings.max_image_bytes + 3:
            raise ApiError(413, f"image is over the {settings.max_image_bytes / (1024 * 1024):.1f} MB cap")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, '"image" is not valid base64') from None
        if not data:
            raise ApiError(400, '"image" is empty')
        if len(data) > settings.max_image_bytes:
            raise ApiError(413, f"image is over the {settings.max_image_bytes / (1024 * 1024):.1f} MB cap")
        return text, data

    async def choose() -> str:
        if via != "auto":
            return via
        try:
            return "queue" if await remote.workers() else "local"
        except (redis.RedisError, OSError):
            return "local"

    def answer(data: dict[str, Any]) -> JSONResponse:
        data = ImageResult.from_data("", data).to_data()  # the contract's fields, without embeddings
        if data.get("error") == NO_FACE or not data.get("faces"):
            return _fail(422, NO_FACE, data)
        return JSONResponse({"success": True, "data": data})

    @app.post("/api/score")
    async def score(request: Request) -> JSONResponse:
        """Score the image in `{"image": "<base64>"}` (a data URL works too)."""
        try:
            text, data = await read_image(request)
        except ApiError as exc:
            return _fail(exc.status, str(exc))
        mode = await choose()
        if mode == "local":
            out = await local.score(text)
            if out["kind"] == "image":
                return _fail(422, out["error"])
            if out["kind"] == "failed":
                return _fail(500, out["error"])
            return answer(out["data"])
        try:
            state, value = await remote.score(data, images.sha256(data))
        except (ServiceUnavailable, TimeoutError) as exc:
            return _fail(503, str(exc))
        except (redis.RedisError, OSError) as exc:
            return _fail(503, f"the queue does not answer: {exc}")
        if state == "completed":
            return answer(value if isinstance(value, dict) else {})
        if state == "rejected":
            return _fail(422, str(value))
        return _fail(500, str(value))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        try:
            workers = len(await remote.workers()) if via != "local" else None
        except (redis.RedisError, OSError):
            workers = None
        return {"status": "ok", "version": __version__, "via": via, "workers": workers}

    return app
