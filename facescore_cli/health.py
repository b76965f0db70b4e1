"""`facescore health`: can the configured scoring path score real faces, and if not, why?

One check per component, each a small function returning a `Check` whose detail tells a person
what to do. The checks run side by side, so the report takes as long as the slowest one.
"""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .config import Settings
from .errors import ConfigError, ServiceUnavailable

OK, NOT_CONFIGURED, DISABLED = "ok", "not configured", "disabled"
UNREACHABLE, UNAUTHORIZED, TIMEOUT, ERROR, LOCKED = "unreachable", "unauthorized", "timeout", "error", "locked"
SHORT_TIMEOUT_S = 2.0
DEFAULT_PORTS = {"detection": 8001, "embedding": 8002}


@dataclass
class Check:
    component: str
    status: str
    detail: str
    latency_ms: float | None = None
    workers: int | None = None  # Redis only: live `facescore worker`s on FACESCORE_QUEUE

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        if self.latency_ms is not None:
            data["latency_ms"] = round(self.latency_ms, 1)
        if self.workers is None:
            del data["workers"]
        return data


@dataclass
class Report:
    checks: list[Check]
    scoring_path: str | None  # remote | local | None when real faces cannot be scored
    summary: str

    @property
    def ok(self) -> bool:
        return self.scoring_path is not None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "scoring_path": self.scoring_path, "summary": self.summary,
                "components": [c.to_json() for c in self.checks]}


def validate(settings: Settings) -> None:
    """URLs that cannot work are a configuration error (exit 2), not an unhealthy component."""
    for name, url, schemes in (("FACE_DETECTION_SERVICE", settings.face_detection_service, ("http", "https")),
                               ("FACE_EMBEDDING_SERVICE", settings.face_embedding_service, ("http", "https")),
                               ("QDRANT_URL", settings.qdrant_url, ("http", "https")),
                               ("REDIS_URL", settings.redis_url, ("redis", "rediss", "unix"))):
        if url is None:
            continue
        parts = urlsplit(url)
        if parts.scheme not in schemes or not (parts.netloc or parts.scheme == "unix"):
            raise ConfigError(f"{name}={url!r} is not a {' or '.join(s + '://' for s in schemes)} URL")


def run(settings: Settings) -> Report:
    validate(settings)
    with ThreadPoolExecutor(5) as pool:
        redis = pool.submit(check_redis, settings)
        detection = pool.submit(check_service, "detection", settings.face_detection_service, settings)
        embedding = pool.submit(check_service, "embedding", settings.face_embedding_service, settings)
        local = pool.submit(check_local_models, settings)
        qdrant = pool.submit(check_qdrant, settings)
        local_check, head_ok = local.result()
        checks = [redis.result(), detection.result(), embedding.result(), local_check, qdrant.result()]
    return _verdict(settings, checks, head_ok)


def _verdict(settings: Settings, checks: list[Check], head_ok: bool) -> Report:
    redis, detection, embedding, local, _ = checks
    if not settings.use_real_ml:
        return Report(checks, None, "USE_REAL_ML=false: every score would be simulated")
    if settings.via == "queue" and not redis.ok:
        return Report(checks, None, "FACESCORE_VIA=queue but Redis does not answer")
    if settings.via == "queue" and not redis.workers:
        return Report(checks, None, f"FACESCORE_VIA=queue but no worker is alive on queue {settings.queue!r}")
    remote = detection.ok and embedding.ok and head_ok
    fallback = settings.fallback_to_local and local.ok
    if remote:
        return Report(checks, "remote", "scores through the detection and embedding services"
                      + (", local models as fallback" if fallback else ""))
    if fallback:
        why = "remote services not configured" if not (settings.face_detection_service or settings.face_embedding_service) \
            else "remote services unusable"
        return Report(checks, "local", f"scores with the local models ({why})")
    if not head_ok:
        return Report(checks, None, "cannot score real faces: the scoring head does not load (see local models)")
    configured = [c for c, url in ((detection, settings.face_detection_service),
                                   (embedding, settings.face_embedding_service)) if url]
    remote_why = ("the remote services are not configured" if not configured else
                  "the " + " and ".join(c.component for c in configured if not c.ok) + " is " + " / ".join(
                      c.status for c in configured if not c.ok)
                  if any(not c.ok for c in configured) else "only one remote service is configured")
    local_why = "FALLBACK_TO_LOCAL=false" if not settings.fallback_to_local else "the local models do not load"
    return Report(checks, None, f"cannot score real faces: {remote_why}, and {local_why}")


def check_redis(settings: Settings) -> Check:
    """PING REDIS_URL, then count the workers whose heartbeat is fresh on FACESCORE_QUEUE."""
    import redis

    from .queue import live_workers, slots

    url = redact(settings.redis_url)
    start = time.perf_counter()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        client.ping()
        workers = live_workers(settings)
    except redis.AuthenticationError:
        return Check("Redis", UNAUTHORIZED, f"{url} refused the password: fix it in REDIS_URL", _since(start))
    except redis.TimeoutError:
        return Check("Redis", TIMEOUT, f"no answer from {url} within 1 s", _since(start))
    except (redis.ConnectionError, OSError) as exc:
        return Check("Redis", UNREACHABLE, f"{_refused(exc, url)} — start Redis (`redis-server`) or set REDIS_URL "
                     "(only the queue needs it: `--via local` works without)", _since(start))
    except (redis.RedisError, ServiceUnavailable) as exc:
        return Check("Redis", ERROR, f"{url}: {exc}", _since(start))
    finally:
        client.close()
    if not workers:
        detail = f"{url} answers PING; no live worker on queue {settings.queue!r} — start one with `facescore worker`"
    else:
        detail = (f"{url} answers PING; {len(workers)} live worker(s), {slots(workers)} slot(s) "
                  f"on queue {settings.queue!r}")
    return Check("Redis", OK, detail, _since(start), workers=len(workers))


def check_service(kind: str, url: str | None, settings: Settings) -> Check:
    """GET {url}/health with the token the chain would send."""
    import httpx

    from .services.client import describe

    name = f"{kind} service"
    env = f"FACE_{kind.upper()}_SERVICE"
    other = settings.face_embedding_service if kind == "detection" else settings.face_detection_service
    other_env = "FACE_EMBEDDING_SERVICE" if kind == "detection" else "FACE_DETECTION_SERVICE"
    if not url:
        then = "the local models score instead" if settings.fallback_to_local else "no remote scoring"
        return Check(name, NOT_CONFIGURED, f"{env} is unset: {then}")
    start_cmd = f"`facescore serve {kind}" + _port_flag(url, DEFAULT_PORTS[kind]) + "`"
    timeout = min(settings.ml_service_timeout_ms / 1000.0, SHORT_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {settings.service_token}"} if settings.service_token else {}
    start = time.perf_counter()
    try:
        response = httpx.get(url.rstrip("/") + "/health", headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return Check(name, TIMEOUT, f"no answer from {url} within {timeout * 1000:.0f} ms — is it overloaded? "
                     "see its log", _since(start))
    except httpx.HTTPError as exc:
        return Check(name, UNREACHABLE, f"{describe(exc, url)} — start it with {start_cmd}", _since(start))
    latency = _since(start)
    if response.status_code in (401, 403):
        if settings.service_token:
            detail = f"{url} refused FACESCORE_SERVICE_TOKEN: set it to the token the service was started with"
        else:
            detail = f"{url} demands a bearer token: set FACESCORE_SERVICE_TOKEN"
        return Check(name, UNAUTHORIZED, detail, latency)
    try:
        body = response.json()
        healthy = response.status_code == 200 and body.get("status") == "ok"
    except (ValueError, AttributeError):
        body, healthy = {}, False
    if not healthy:
        return Check(name, ERROR, f"{url}/health answered {response.status_code}, not {{\"status\": \"ok\"}} — "
                     "is this a facescore service? see its log", latency)
    detail = f"{url}: {body.get('model', '?')} {body.get('version', '')}".rstrip()
    if not other:
        detail += f"; but {other_env} is unset, and the remote link needs both"
    return Check(name, OK, detail, latency)


def check_local_models(settings: Settings) -> tuple[Check, bool]:
    """Load the detector, the ResNet and the scoring head (the head also scores remote vectors).

    Returns the check and whether the head loaded."""
    name = "local models"
    if not settings.use_real_ml:
        return Check(name, DISABLED, "USE_REAL_ML=false: scores are simulated"), False
    start = time.perf_counter()
    try:
        from .ml.head import load_head

        head = load_head(settings.head_path)
    except ImportError as exc:
        return Check(name, ERROR, f"the scoring head is not installed ({exc}) — reinstall facescore", _since(start)), False
    except (OSError, ValueError) as exc:
        return Check(name, ERROR, f"the scoring head does not load: {exc} — check FACESCORE_HEAD or reinstall",
                     _since(start)), False
    head_ms = _since(start)
    version = getattr(head, "version", "?")
    if not settings.fallback_to_local:
        return Check(name, DISABLED, f"FALLBACK_TO_LOCAL=false: detector and ResNet not loaded; "
                     f"head {version} loaded in {head_ms:.0f} ms", head_ms), True
    try:
        import numpy as np

        from .images import DecodedImage
        from .ml import models, resnet
        from .ml import detect as _detect

        t = time.perf_counter()
        blank = np.full((64, 64, 3), 127, dtype=np.uint8)
        _detect.detect(DecodedImage(pixels=blank, scale=1.0, width=64, height=64, format="PNG"))  # loads the detector
        models.landmarks_5()
        detector_ms = _since(t)
        t = time.perf_counter()
        resnet.session()
        resnet_ms = _since(t)
    except Exception as exc:  # a missing weight file, a broken native library...
        return Check(name, ERROR, f"the local models do not load: {type(exc).__name__}: {exc} — reinstall facescore",
                     _since(start)), True
    detector = getattr(_detect, "DETECTOR_NAME", "detector")
    detail = (f"{detector} {detector_ms:.0f} ms, {models.EMBEDDING_MODEL} {resnet_ms:.0f} ms, "
              f"head {version} {head_ms:.0f} ms")
    return Check(name, OK, detail, _since(start)), True


def check_qdrant(settings: Settings) -> Check:
    """QDRANT_URL: list the collections. Unset: open the embedded store and count its faces."""
    if settings.qdrant_url:
        return _check_qdrant_server(settings)
    from .store import FaceStore, StoreLocked, StoreUnavailable, embedded_path, legacy_path

    folder = embedded_path(settings)
    start = time.perf_counter()
    legacy = legacy_path(settings)
    note = f"; the older store in {legacy} is carried over on first use" if legacy.is_dir() else ""

    if not folder.exists():
        parent = _existing_parent(folder)
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check("Qdrant", ERROR, f"cannot create the embedded store at {folder}: {parent} is not writable — "
                         "set FACESCORE_HOME or QDRANT_URL", _since(start))
        return Check("Qdrant", OK, f"embedded store at {folder} (created on first use){note}", _since(start))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return Check("Qdrant", ERROR, f"the embedded store at {folder} is not a writable folder — fix its "
                     "permissions, or set FACESCORE_HOME or QDRANT_URL", _since(start))
    try:  # holds the lock for the time it takes to open the shards (~0.3 s at 100k faces)
        with FaceStore.open(settings, migrate=False) as store:
            faces, versions = store.count(), len(store.collections())
    except StoreLocked as exc:  # open_at tries the lock first, before reading any shard
        who = f" ({exc.holder})" if exc.holder else " (a worker?)"
        return Check("Qdrant", LOCKED, f"the embedded store at {folder} is open in another process{who}; "
                     "only one process can use it — stop that one, or run a Qdrant server and set QDRANT_URL",
                     _since(start))
    except StoreUnavailable as exc:
        return Check("Qdrant", ERROR, f"{exc} — move the folder away to start an empty store, or set QDRANT_URL",
                     _since(start))
    return Check("Qdrant", OK, f"embedded store at {folder}: {faces} face{'s' if faces != 1 else ''} of "
                 f"{versions} model version{'s' if versions != 1 else ''}{note}", _since(start))


def _check_qdrant_server(settings: Settings) -> Check:
    from qdrant_client import QdrantClient

    url = redact(settings.qdrant_url or "")
    start = time.perf_counter()
    try:
        client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key, timeout=int(SHORT_TIMEOUT_S),
                              check_compatibility=False)
        count = len(client.get_collections().collections)
        client.close()
    except Exception as exc:  # qdrant-client wraps transport errors in several types
        text = str(exc)
        if "401" in text or "403" in text or "Unauthorized" in text or "Forbidden" in text:
            return Check("Qdrant", UNAUTHORIZED, f"{url} refused the API key: set QDRANT_API_KEY", _since(start))
        if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
            return Check("Qdrant", TIMEOUT, f"no answer from {url} within {SHORT_TIMEOUT_S:.0f} s", _since(start))
        return Check("Qdrant", UNREACHABLE, f"{_refused(exc, url)} — start Qdrant, or unset QDRANT_URL to use the "
                     "embedded store", _since(start))
    return Check("Qdrant", OK, f"{url}: {count} collection{'s' if count != 1 else ''}", _since(start))


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _refused(exc: Exception, url: str) -> str:
    text = str(exc)
    if "refused" in text.lower() or isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {url}"
    return f"cannot reach {url}: {text.splitlines()[0] if text else type(exc).__name__}"


def _port_flag(url: str, default: int) -> str:
    port = urlsplit(url).port
    return f" --port {port}" if port and port != default else ""


def redact(url: str) -> str:
    """The URL without its password, fit to print: `redis://:***@host`, also for a password
    written in the user position (`redis://PASSWORD@host`, which Redis users do: a Redis
    URL's lone userinfo is a secret more often than a name) and in `?password=`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)  # unparseable: hide any userinfo
    query = re.sub(r"(?i)((?:^|&)password=)[^&]*", r"\1***", parts.query)
    if "@" not in parts.netloc:
        return urlunsplit(parts._replace(query=query))
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:***"
    elif parts.scheme.startswith("redis"):
        userinfo = "***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hostport}", query=query))


def _since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
