"""The chain's remote link: calls the detection and embedding services over HTTP.

Each service has a cached health check and a circuit breaker. Whatever goes wrong for one
image (refused, timed out, 5xx, malformed JSON, a vector of the wrong size) raises
`ServiceUnavailable`, and the chain hands the image to its next link. The whole remote attempt
for one image fits in ML_SERVICE_TIMEOUT. State is per process and rebuilt after a fork.
"""
from __future__ import annotations

import base64
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from ..config import Settings
from ..errors import ServiceUnavailable
from ..images import DecodedImage
from ..ml import models
from ..ml.types import DEFAULT_MIN_FACE, Face

log = logging.getLogger(__name__)

HEALTH_TTL_S = 5.0
HEALTH_TIMEOUT_S = 2.0
FAILURE_THRESHOLD = 3
COOLDOWN_S = 30.0
_IMAGE_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                "BMP": "image/bmp", "DIB": "image/bmp", "TIFF": "image/tiff", "GIF": "image/gif"}


class Breaker:
    """Closed: calls go through. After `threshold` failures in a row it opens: calls fail at
    once for `cooldown` seconds. Then one call goes through as a probe (half-open): success
    closes it, failure opens it for another cooldown."""

    def __init__(self, name: str, threshold: int = FAILURE_THRESHOLD, cooldown: float = COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.threshold, self.cooldown, self.clock = name, threshold, cooldown, clock
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.last_error = ""

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def before(self) -> None:
        """Raise ServiceUnavailable while open; let one probe through once the cooldown is over."""
        with self.lock:
            if self.opened_at is None:
                return
            wait = self.cooldown - (self.clock() - self.opened_at)
            if wait > 0:
                last = f"; last: {self.last_error}" if self.last_error else ""
                raise ServiceUnavailable(f"{self.name} service skipped for {wait:.0f} s more "
                                         f"after {self.failures} failures in a row{last}")
            if self.probing:
                raise ServiceUnavailable(f"{self.name} service is being probed after failing")
            self.probing = True

    def success(self) -> None:
        with self.lock:
            if self.opened_at is not None:
                log.warning("%s service answers again", self.name)
            self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self, reason: str = "") -> None:
        with self.lock:
            self.failures += 1
            self.last_error = reason or self.last_error
            if self.probing or (self.opened_at is None and self.failures >= self.threshold):
                log.warning("%s service failed %d times in a row; not calling it for %.0f s",
                            self.name, self.failures, self.cooldown)
                self.opened_at = self.clock()
            self.probing = False


_clients: "weakref.WeakSet[ServiceClient]" = weakref.WeakSet()


class ServiceClient:
    """One service: its base URL, an httpx client, a cached health check and a breaker."""

    def __init__(self, name: str, base_url: str, token: str | None, *, health_ttl: float = HEALTH_TTL_S,
                 threshold: int = FAILURE_THRESHOLD, cooldown: float = COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.health_ttl = health_ttl
        self.clock = clock
        self.breaker = Breaker(name, threshold, cooldown, clock)
        self._healthy_at: float | None = None
        self._http: httpx.Client | None = None
        _clients.add(self)

    def _after_fork(self) -> None:
        # The parent's sockets and locks are not ours to use; what we learnt about the service is.
        self._http = None
        self.breaker.lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._http = httpx.Client(base_url=self.base_url, headers=headers, follow_redirects=False)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def request(self, method: str, path: str, deadline: float, **kwargs: Any) -> Any:
        """The JSON answer of one call, or ServiceUnavailable (recorded by the breaker)."""
        if deadline - self.clock() <= 0:  # the detection call spent it: not this service's fault
            raise ServiceUnavailable(f"ML_SERVICE_TIMEOUT spent before calling the {self.name} service")
        self.breaker.before()
        try:
            self._check_health(deadline)
            response = self.http.request(method, path, timeout=self._timeout(deadline), **kwargs)
        except ServiceUnavailable as exc:
            raise self.fail(str(exc)) from None
        except httpx.HTTPError as exc:
            raise self.fail(f"{self.name} service: {describe(exc, self.base_url)}") from None
        if response.status_code in (401, 403):
            raise self.fail(f"{self.name} service refused the token ({response.status_code}): "
                            "set FACESCORE_SERVICE_TOKEN to the token the service was started with")
        if response.status_code >= 500:
            raise self.fail(f"{self.name} service answered {response.status_code} on {path}")
        if response.status_code >= 400:
            # The service is alive but will not take this image (e.g. a smaller size limit):
            # this image goes to the next link, the breaker stays as it is.
            self.breaker.success()
            raise ServiceUnavailable(f"{self.name} service answered {response.status_code} on {path}: "
                                     f"{_detail(response)}")
        try:
            return response.json()
        except ValueError:
            raise self.fail(f"{self.name} service sent malformed JSON on {path}") from None

    def fail(self, message: str) -> ServiceUnavailable:
        """Record a failure (the breaker counts it; health is checked again) and make its error."""
        self._healthy_at = None
        self.breaker.failure(message)
        return ServiceUnavailable(message)

    def malformed(self, what: str) -> ServiceUnavailable:
        return self.fail(f"{self.name} service sent a malformed answer: {what}")

    def _check_health(self, deadline: float) -> None:
        now = self.clock()
        if self._healthy_at is not None and now - self._healthy_at < self.health_ttl:
            return
        response = self.http.get("/health", timeout=min(self._timeout(deadline), HEALTH_TIMEOUT_S))
        if response.status_code in (401, 403):
            raise ServiceUnavailable(f"{self.name} service refused the token ({response.status_code}): "
                                     "set FACESCORE_SERVICE_TOKEN to the token the service was started with")
        try:
            ok = response.status_code == 200 and response.json().get("status") == "ok"
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise ServiceUnavailable(f"{self.name} service is unhealthy: /health answered {response.status_code}")
        self._healthy_at = self.clock()

    def _timeout(self, deadline: float) -> float:
        return max(deadline - self.clock(), 0.001)


class RemoteBackend:
    """Faces from the detection service, vectors from the embedding service."""

    name = "remote"

    def __init__(self, settings: Settings, *, health_ttl: float = HEALTH_TTL_S, threshold: int = FAILURE_THRESHOLD,
                 cooldown: float = COOLDOWN_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not (settings.face_detection_service and settings.face_embedding_service):
            raise ValueError("RemoteBackend needs FACE_DETECTION_SERVICE and FACE_EMBEDDING_SERVICE")
        self.timeout_s = settings.ml_service_timeout_ms / 1000.0
        self.clock = clock
        kw = dict(health_ttl=health_ttl, threshold=threshold, cooldown=cooldown, clock=clock)
        self.detection = ServiceClient("detection", settings.face_detection_service, settings.service_token, **kw)
        self.embedding = ServiceClient("embedding", settings.face_embedding_service, settings.service_token, **kw)

    def analyze(self, image: DecodedImage, data: bytes, *, min_face: int = DEFAULT_MIN_FACE) -> tuple[list[Face], np.ndarray]:
        # The original bytes, not our pixels: the service decodes them exactly as we did.
        deadline = self.clock() + self.timeout_s
        faces = self.detect(image, data, deadline, min_face=min_face)
        if not faces:
            return [], np.zeros((0, models.EMBEDDING_DIM), dtype=np.float32)
        return faces, self.embed(data, faces, deadline)

    def detect(self, image: DecodedImage, data: bytes, deadline: float, *, min_face: int = DEFAULT_MIN_FACE) -> list[Face]:
        svc = self.detection
        ctype = _IMAGE_TYPES.get(image.format, "application/octet-stream")
        # min_face only when it is not the default: a service that predates it, or another
        # implementation of the contract, answers exactly as before.
        params = {"min_face": str(min_face)} if min_face != DEFAULT_MIN_FACE else None
        answer = svc.request("POST", "/detect", deadline, content=data, headers={"Content-Type": ctype}, params=params)
        try:
            size = (int(answer["width"]), int(answer["height"]))
            faces = [Face.from_json(f) for f in answer["faces"]]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise svc.malformed(f"/detect: {exc or type(exc).__name__}") from None
        if size != (image.width, image.height):
            raise svc.malformed(f"/detect saw a {size[0]}x{size[1]} image, not {image.width}x{image.height}")
        svc.breaker.success()
        return faces

    def embed(self, data: bytes, faces: list[Face], deadline: float) -> np.ndarray:
        svc = self.embedding
        body = {"image": base64.b64encode(data).decode("ascii"), "faces": [f.to_json() for f in faces]}
        answer = svc.request("POST", "/embed", deadline, json=body)
        dim = models.EMBEDDING_DIM
        try:
            model, rows = answer["model"], answer["embeddings"]
            vectors = np.asarray(rows, dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise svc.malformed(f"/embed: {exc or type(exc).__name__}") from None
        if model != models.EMBEDDING_MODEL:
            raise svc.malformed(f"/embed runs {model!r}, the scoring head needs {models.EMBEDDING_MODEL!r}")
        if vectors.shape != (len(faces), dim):
            raise svc.malformed(f"/embed sent {vectors.shape} vectors for {len(faces)} faces of {dim} dimensions")
        if not np.isfinite(vectors).all():
            raise svc.malformed("/embed sent a vector with NaN or infinity")
        svc.breaker.success()
        return vectors

    def close(self) -> None:
        self.detection.close()
        self.embedding.close()


def describe(exc: Exception, url: str) -> str:
    """One line a person can act on, for a failed call to `url`."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection to {url} within the timeout"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {url} within the timeout (ML_SERVICE_TIMEOUT)"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "refused" in text:
            return f"connection refused at {url}"
        if "name" in text and ("resolution" in text or "known" in text or "service" in text):
            return f"cannot resolve the host of {url}"
        return f"cannot connect to {url}: {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"{url} closed the connection mid-answer"
    return f"{type(exc).__name__} calling {url}: {exc}"


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:200]


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
