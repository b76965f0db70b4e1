"""The original system's REST endpoint: `POST /api/score` with `{"image": "<base64>"}`.

An optional `"min_face"` in the body (pixels, 12-100000, as `--min-face`; default: the server's
FACESCORE_MIN_FACE) is the narrowest face to look for. Answers `{"success": true, "data": {...}}`
with the same `data` object as the job's return value (CONTRACT.md), or `{"success": false,
"error": "..."}` with a status that says whose fault it is: 400 no body / malformed JSON / bad
base64 / bad min_face, 408 the body took longer than FACESCORE_BODY_TIMEOUT to arrive, 413
too big, 422 not an image or no face, 503 busy, no
worker or no answer within the API's wait (with Retry-After), 504 the image itself took longer
than the scoring time limit (FACESCORE_IMAGE_TIMEOUT; its process was killed, and a retry would
hang again), 500 scoring failed or crashed twice on it. The local pool and the queue's workers
answer the same image with the same status. Scores in a local `ScoringPool` with
`via="local"`, through the queue's workers with `via="queue"`; `auto` decides per request from the
workers' heartbeats.

Under load it stays honest rather than slow: a request is admitted only while fewer than
`slots + max_waiting` are in flight (slots: the local processes, or the live workers'
concurrency), otherwise it gets 503 with Retry-After before its body is read. A body still
arriving holds no place (a client trickling its upload cannot lock the others out): it has
FACESCORE_BODY_TIMEOUT to arrive, and the bodies arriving at once may buffer together only
what the admitted ones may. A client that goes away stops costing anything: its image is taken
out of the pool's (or the queue's) waiting line.
`GET /health` answers 503 with the reasons when the API cannot score.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from . import __version__, jsonbody, pipeline, queue, web
from .config import Settings, parse_min_face
from .errors import ServiceUnavailable
from .health import redact
from .pool import CRASHED, PoolBusy, PoolClosed, ScoringPool, is_too_long
from .result import NO_FACE, ImageResult

# Longer than a worker's lock (30 s) plus BullMQ's stalled-job check (30 s) plus scoring: the job
# of a worker killed mid-image is re-run after its lock expires and still comes back in time.
DEFAULT_TIMEOUT_S = 90.0
WAITING_PER_SLOT = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def _fail(status: int, message: str, data: dict[str, Any] | None = None,
          retry_after: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": message}
    if data is not None:
        body["data"] = data
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _unless_gone(request: Request, work: "asyncio.Future[Any]") -> Any:
    """`work`'s result, or ClientGone (and `work` cancelled) as soon as the client disconnects."""
    async def gone() -> None:
        while True:
            if (await request.receive())["type"] == "http.disconnect":
                return

    watch = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientGone()
    finally:
        watch.cancel()


class Admission:
    """Counts the requests in flight (bodies read, scoring or waiting to) and the bytes of the
    bodies still arriving; says how long a refused one should wait."""

    def __init__(self) -> None:
        self.inflight = 0
        self.arriving_bytes = 0
        self.service_s = 0.5  # moving average of one image's scoring time, for Retry-After

    def retry_after(self, slots: int) -> int:
        return max(1, math.ceil(self.service_s * (self.inflight + 1) / max(1, slots)))

    def took(self, seconds: float) -> None:
        self.service_s = 0.8 * self.service_s + 0.2 * seconds


def create_app(settings: Settings | None = None, via: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
               processes: int = 0, max_waiting: int | None = None) -> FastAPI:
    """The app. `processes` (0: settings.api_processes, else one per core) score for --via local;
    `max_waiting` (None: settings.api_max_waiting, else 4 per slot) requests may wait beyond
    those being scored."""
    settings = settings or Settings.load()
    via = (via or settings.via).lower()
    processes = processes or settings.api_processes or pipeline.default_jobs()
    if max_waiting is None:
        max_waiting = settings.api_max_waiting or WAITING_PER_SLOT * processes
    pool = ScoringPool(settings, processes, max_waiting=max_waiting)
    jobs = queue.QueueClient(settings)  # the one queue client: connections for the app's whole life
    admission = Admission()
    max_body = settings.max_image_bytes * 4 // 3 + 64 * 1024
    # Bodies still arriving hold no scoring slot (a client trickling its upload would otherwise
    # lock everyone out with a couple of connections); what they may buffer together is bounded
    # instead, to what the slots' own bodies may hold, and each has settings.body_timeout_s.
    arriving_budget = max(4, processes + max_waiting) * max_body
    body_timeout_s = settings.body_timeout_s

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if via == "local":
            pool.start()  # the models load while the port opens; /health says when they are ready
        yield
        await jobs.close()
        await asyncio.to_thread(pool.close, 5.0)

    app = FastAPI(title="facescore API", version=__version__, lifespan=lifespan,
                  description="The original system's endpoint: POST /api/score with {\"image\": \"<base64>\"}.")
    web.mount(app)  # GET /: the page that scores dropped photos through POST /api/score

    async def read_image(request: Request) -> tuple[str, bytes, int | None]:
        """The request's base64 text, its bytes, and its `min_face` (None: the server's setting)."""
        received = 0

        def arriving(n: int) -> None:
            nonlocal received
            if admission.arriving_bytes + n > arriving_budget:
                raise ApiError(503, "busy: too many uploads arriving at once; try again later",
                               retry_after=admission.retry_after(processes))
            admission.arriving_bytes += n
            received += n

        try:
            body = await jsonbody.read_body(request, max_body, body_timeout_s, on_chunk=arriving)
        except jsonbody.BodyError as exc:
            raise ApiError(exc.status, str(exc)) from None
        except ClientDisconnect:
            raise ClientGone() from None
        finally:
            admission.arriving_bytes -= received
        if not body.strip():
            raise ApiError(400, 'no body: send JSON {"image": "<base64>"}')
        try:
            payload = jsonbody.loads(body)
        except jsonbody.MalformedJSON as exc:
            raise ApiError(400, f'body is not JSON ({exc}): send {{"image": "<base64>"}}') from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str) or not payload["image"].strip():
            raise ApiError(400, 'missing "image": send {"image": "<base64>"}')
        min_face = None
        if payload.get("min_face") is not None:
            try:
                min_face = parse_min_face(payload["min_face"])
            except ValueError as exc:
                raise ApiError(400, f'"min_face": {exc}') from None
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
        return text, data, min_face

    async def choose() -> tuple[str, int]:
        """("local" | "queue", its scoring slots)."""
        if via == "local":
            return "local", processes
        try:
            workers = await jobs.workers()  # a Redis that does not answer is remembered for a second
        except queue.QueueUnavailable:
            if via == "queue":
                raise
            workers = []
        if workers or via == "queue":
            return "queue", queue.slots(workers)
        return "local", processes

    def answer(data: dict[str, Any]) -> JSONResponse:
        data = ImageResult.from_data("", data).to_data()  # the contract's fields, without embeddings
        if data.get("error") == NO_FACE or not data.get("faces"):
            return _fail(422, NO_FACE, data)
        return JSONResponse({"success": True, "data": data})

    async def score_local(request: Request, text: str, min_face: int | None) -> JSONResponse:
        try:
            out = await _unless_gone(request, asyncio.wrap_future(pool.submit_encoded(text, min_face=min_face)))
        except PoolBusy as exc:
            return _fail(503, f"busy: {exc}", retry_after=admission.retry_after(processes))
        except PoolClosed as exc:
            return _fail(503, f"shutting down: {exc}", retry_after=5)
        if out["kind"] == "image":
            return _fail(422, out["error"])
        if out["kind"] == "timeout":
            return _fail(504, out["error"])
        if out["kind"] in ("failed", "crashed"):
            return _fail(500, out["error"])
        return answer(out["data"])

    async def score_queue(request: Request, data: bytes, min_face: int | None) -> JSONResponse:
        try:
            state, value = await _unless_gone(request, asyncio.ensure_future(jobs.score(data, timeout_s, min_face=min_face)))
        except queue.QueueUnavailable as exc:
            return _fail(503, str(exc), retry_after=5)
        except (ServiceUnavailable, TimeoutError) as exc:
            return _fail(503, str(exc), retry_after=admission.retry_after(1))
        if state == "completed":
            return answer(value if isinstance(value, dict) else {})
        if state == "rejected":  # the worker said no attempt can help: the image's fault, or it hung or crashed one
            if is_too_long(value):
                return _fail(504, str(value))
            return _fail(500 if value == CRASHED else 422, str(value))
        return _fail(500, str(value))

    @app.post("/api/score")
    async def score(request: Request) -> JSONResponse:
        """Score the image in `{"image": "<base64>"}` (a data URL works too); an optional
        `"min_face"` (pixels, 12-100000) is the narrowest face to look for, as `--min-face`."""
        try:
            mode, slots = await choose()
        except queue.QueueUnavailable as exc:
            return _fail(503, str(exc), retry_after=5)

        def busy() -> JSONResponse:
            return _fail(503, f"busy: {admission.inflight} request(s) in flight for {slots} scoring slot(s); "
                              f"try again later", retry_after=admission.retry_after(slots))

        if admission.inflight >= slots + max_waiting:  # refused before reading the body
            return busy()
        try:
            text, data, min_face = await read_image(request)  # in flight only once it has arrived
        except ApiError as exc:
            return _fail(exc.status, str(exc), retry_after=exc.retry_after)
        except ClientGone:
            return _fail(499, "the client closed the connection")  # nobody reads it; logs do
        if admission.inflight >= slots + max_waiting:  # filled while this body arrived
            return busy()
        admission.inflight += 1
        start = time.perf_counter()
        try:
            response = await (score_local(request, text, min_face) if mode == "local"
                              else score_queue(request, data, min_face))
            if response.status_code in (200, 422):
                admission.took((time.perf_counter() - start) * max(1, slots) / admission.inflight)
            return response
        except ClientGone:
            return _fail(499, "the client closed the connection")
        finally:
            admission.inflight -= 1

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when the API can score now, else 503 with the reasons in `problems`."""
        problems: list[str] = []
        body: dict[str, Any] = {"version": __version__, "via": via, "in_flight": admission.inflight,
                                "max_in_flight_beyond_slots": max_waiting}
        local_ok = False
        if via != "queue":
            started = pool.started
            status = pool.status()
            body["local"] = {**status.to_json(), "started": started, "pids": pool.pids()}
            local_ok = status.can_score or (via == "auto" and not started)  # auto starts it on first use
            if not local_ok:
                problems.append(f"no scoring process is ready ({status.ready}/{status.processes}"
                                + (f"; {status.restarts} restarted; last: {status.last_error}" if status.restarts
                                   or status.last_error else "; loading the models") + ")")
        queue_ok = False
        if via != "local":
            info: dict[str, Any] = {"redis": redact(settings.redis_url), "queue": settings.queue}
            try:
                info["redis_ms"] = round(await jobs.ping(), 1)
                workers = await jobs.workers(max_age_s=0.0)
                info["workers"] = len(workers)
                info["slots"] = queue.slots(workers)
                queue_ok = bool(workers)
                if not workers:
                    info["problem"] = f"no live worker on queue {settings.queue!r}"
            except queue.QueueUnavailable as exc:
                info["problem"] = f"Redis does not answer: {exc}"
            body["queue"] = info
            if via == "queue" and not queue_ok:
                problems.append(info["problem"])
            elif via == "auto" and not queue_ok and not local_ok:
                problems.append(info["problem"])
        can = (local_ok if via == "local" else queue_ok if via == "queue" else local_ok or queue_ok)
        body.update(status="ok" if can else "unavailable", can_score=can, problems=problems)
        return JSONResponse(body, status_code=200 if can else 503)

    return app
