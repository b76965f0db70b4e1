"""What the detection and embedding services share: their settings, the bearer token, the body
limit, one log line per request, and the thread pool the models run in (never the event loop).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from .. import __version__, heap, images, jsonbody
from ..config import Settings
from ..errors import ImageError

log = logging.getLogger("facescore.services")
T = TypeVar("T")

# JSON bodies carry the image in base64 (4/3 of its size) plus the faces.
_JSON_OVERHEAD = 1024 * 1024


@dataclass(frozen=True)
class ServiceConfig:
    token: str | None
    max_image_bytes: int
    max_image_pixels: int
    max_body_bytes: int
    threads: int
    body_timeout_s: float = 30.0  # FACESCORE_BODY_TIMEOUT
    # Test-only: every /detect and /embed answer waits this long, to exercise client timeouts.
    delay_s: float = 0.0

    @classmethod
    def from_env(cls) -> "ServiceConfig":
        settings = Settings.load()
        threads = int(os.environ.get("FACESCORE_SERVICE_THREADS") or min(4, os.cpu_count() or 1))
        return cls(
            token=settings.service_token,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_body_bytes=settings.max_image_bytes * 4 // 3 + _JSON_OVERHEAD,
            threads=max(1, threads),
            body_timeout_s=settings.body_timeout_s,
            delay_s=float(os.environ.get("FACESCORE_SERVICE_DELAY_MS") or 0) / 1000.0,
        )


# --- OpenAPI models (the handlers parse bodies themselves, to enforce the size limit while
# streaming; these document the shapes) ---------------------------------------------------

class FaceModel(BaseModel):
    box: list[int] = Field(..., min_length=4, max_length=4, description="x, y, width, height in pixels of the upright image")
    confidence: float = Field(..., ge=0, le=1)
    landmarks: list[list[float]] = Field(..., description="dlib's 5 points [x, y]: eye corners x4, nose base")


class Health(BaseModel):
    status: str
    model: str
    version: str


class ErrorModel(BaseModel):
    detail: str


FACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["box", "landmarks"],
    "properties": {
        "box": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4},
        "confidence": {"type": "number"},
        "landmarks": {"type": "array", "minItems": 5, "maxItems": 5,
                      "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}},
    },
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorModel, "description": "missing or wrong bearer token (when the service has one)"},
    408: {"model": ErrorModel, "description": "the body did not arrive within FACESCORE_BODY_TIMEOUT"},
    413: {"model": ErrorModel, "description": "body over the size limit"},
    415: {"model": ErrorModel, "description": "unsupported content type"},
    422: {"model": ErrorModel, "description": "the image cannot be decoded, or the JSON is malformed"},
}


# --- the app --------------------------------------------------------------------------------

async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own parameter checks (a query parameter out of range) answer 422 with the one-line
    `detail` string every other error has, as the published ErrorModel says, not pydantic's list."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    where = " ".join(str(part) for part in first.get("loc", ()))
    return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}".strip(": ")}, status_code=422)


class Service:
    """The state one service process holds: its config, its thread pool, its warm models."""

    def __init__(self, config: ServiceConfig, warm_up: Callable[[], None]) -> None:
        self.config = config
        self.warm_up = warm_up
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.pool is not None, "service not started"
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def delay(self) -> None:
        if self.config.delay_s > 0:
            await asyncio.sleep(self.config.delay_s)

    def build(self, title: str, description: str) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            heap.keep_freed_memory()  # before the models and the first image allocate
            self.pool = concurrent.futures.ThreadPoolExecutor(self.config.threads, thread_name_prefix="model")
            # Load the models before the port answers /health, so the first request is not slow.
            await self.run(self.warm_up)
            log.info("%s ready: %d inference threads, body limit %d bytes%s", title, self.config.threads,
                     self.config.max_body_bytes, ", token required" if self.config.token else "")
            yield
            self.pool.shutdown(wait=False, cancel_futures=True)

        app = FastAPI(title=title, version=__version__, description=description, lifespan=lifespan)
        app.add_middleware(RequestLog)
        app.add_exception_handler(RequestValidationError, _invalid_request)
        return app

    def auth(self) -> Any:
        """A dependency: 401 unless the bearer token matches (when the service has one)."""
        bearer = HTTPBearer(auto_error=False, description="FACESCORE_SERVICE_TOKEN, when the service has one")
        token = self.config.token

        def check(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            if token is None:
                return
            if creds is None:
                raise HTTPException(401, "missing bearer token (the service was started with FACESCORE_SERVICE_TOKEN)",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
                raise HTTPException(401, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

        return Depends(check)

    async def read_body(self, request: Request) -> bytes:
        """The body (`jsonbody.read_body`): 413 as soon as either Content-Length or the bytes
        received pass the limit, 408 when it has not arrived within FACESCORE_BODY_TIMEOUT."""
        try:
            return await jsonbody.read_body(request, self.config.max_body_bytes, self.config.body_timeout_s)
        except jsonbody.BodyError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    def check_image_size(self, data: bytes) -> None:
        if len(data) > self.config.max_image_bytes:
            raise HTTPException(413, f"image is {len(data)} bytes, over the {self.config.max_image_bytes} byte limit")

    async def decode(self, data: bytes) -> images.DecodedImage:
        """The same decode local scoring uses, so both see the same pixels; 422 when it fails."""
        self.check_image_size(data)
        try:
            return await self.run(lambda: images.decode(data, max_bytes=self.config.max_image_bytes,
                                                        max_pixels=self.config.max_image_pixels))
        except ImageError as exc:
            raise HTTPException(422, f"bad image: {exc}") from None


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        obj = jsonbody.loads(body)
    except jsonbody.MalformedJSON as exc:
        raise HTTPException(422, f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise HTTPException(422, "the JSON body must be an object")
    return obj


def image_from_json(obj: dict[str, Any]) -> bytes:
    raw = obj.get("image")
    if not isinstance(raw, str) or not raw:
        raise HTTPException(422, 'the JSON body needs "image": the image bytes in base64')
    if raw.startswith("data:") and "," in raw:  # a data URL, as browsers make them
        raw = raw.split(",", 1)[1]
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, '"image" is not valid base64') from None


class RequestLog:
    """One log line per request: method, path, status, milliseconds, body bytes received."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def capturing_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, capturing_send)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d %.1fms %dB", client[0], scope["method"], scope["path"], status,
                     (time.perf_counter() - start) * 1000.0, received)


def setup_logging() -> None:
    """Services log to stderr at INFO, also in the worker processes uvicorn spawns."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
