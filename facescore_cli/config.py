"""One settings object, read once from the environment and from `.env` in the working folder."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from .errors import ConfigError
from .ml.types import DEFAULT_MIN_FACE, LARGEST_MIN_FACE, SMALLEST_MIN_FACE

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def _num(name: str, raw: str, kind: type) -> float:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}  # "ms" first: it ends in "s"


def parse_duration(text: str) -> float:
    """Seconds from `30s`, `500ms`, `2m`, `12h`, `7d` or a bare number of seconds: one way to
    write a time in every option and setting. ValueError, saying what is wrong, otherwise."""
    raw = str(text).strip().lower()
    for unit, unit_scale in _UNITS.items():
        if raw.endswith(unit):
            number, scale = raw[: -len(unit)], unit_scale
            break
    else:
        number, scale = raw, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (like 30s, 500ms, 2m, 12h, 7d)") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite duration")
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def parse_min_face(text: object) -> int:
    """The narrowest face to look for, in pixels, from a setting, an option or a job: a whole
    number from SMALLEST_MIN_FACE to LARGEST_MIN_FACE. ValueError, saying what is wrong, otherwise."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"{text!r} is not a whole number of pixels")
    try:
        value = int(str(text).strip().lower().removesuffix("px"))
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of pixels") from None
    if value < SMALLEST_MIN_FACE:
        raise ValueError(f"{value} px is under {SMALLEST_MIN_FACE} px, the narrowest face the detector can find")
    if value > LARGEST_MIN_FACE:
        raise ValueError(f"{value} px is over {LARGEST_MIN_FACE} px, wider than any image facescore accepts")
    return value


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://localhost:6379"
    face_detection_service: str | None = None
    face_embedding_service: str | None = None
    ml_service_timeout_ms: int = 5000
    use_real_ml: bool = True
    fallback_to_simulated: bool = True
    fallback_to_local: bool = True
    simulated_ml_threshold: float = 0.7
    via: str = "auto"
    queue: str = "facescore"
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    home: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "facescore")
    service_token: str | None = None
    max_image_bytes: int = 40 * 1024 * 1024
    max_image_pixels: int = 60_000_000
    head_path: Path | None = None
    # `serve api`: scoring processes for --via local (0 = one per core), and how many requests may
    # wait beyond those that are being scored before the API answers 503 (0 = 4 per process).
    api_processes: int = 0
    api_max_waiting: int = 0
    # The longest one image may take in a scoring process before the process is killed and the
    # image gets an error row (0 = no limit). 60 s: the largest accepted image (60 Mpx) takes
    # about 2 s of CPU here, so only a hang reaches it, even on a loaded machine.
    image_timeout_s: float = 60.0
    # The longest the HTTP apps (`serve api`, `serve detection`, `serve embedding`) wait for a
    # request's body to arrive (0 = no limit): a client that trickles its upload gets 408 then.
    # 30 s: a 40 MB image over ~11 Mbit/s; photos of a few MB arrive in time over a slow mobile link.
    body_timeout_s: float = 30.0
    # The narrowest face, in the image's pixels, that detection searches for: the detector's
    # pyramid starts there, so a larger value is faster (faces a little narrower may still be
    # found; far narrower ones are not looked for).
    min_face: int = DEFAULT_MIN_FACE

    @classmethod
    def load(cls, environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env")) -> "Settings":
        """Environment wins over `.env`; `.env` wins over the defaults."""
        values: dict[str, str] = {}
        if dotenv is not None and dotenv.is_file():
            values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        get = values.get
        via = get("FACESCORE_VIA", "auto").strip().lower() or "auto"
        if via not in ("auto", "local", "queue"):
            raise ConfigError(f"FACESCORE_VIA={via!r} must be auto, local or queue")
        threshold = _num("SIMULATED_ML_THRESHOLD", get("SIMULATED_ML_THRESHOLD", "0.7"), float)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"SIMULATED_ML_THRESHOLD={threshold} must be between 0 and 1")
        timeout = _num("ML_SERVICE_TIMEOUT", get("ML_SERVICE_TIMEOUT", "5000"), int)
        if timeout <= 0:
            raise ConfigError(f"ML_SERVICE_TIMEOUT={timeout} must be a positive number of milliseconds")
        home = get("FACESCORE_HOME") or str(Path.home() / ".local" / "share" / "facescore")
        head = get("FACESCORE_HEAD") or None
        api_processes = int(_num("FACESCORE_API_PROCESSES", get("FACESCORE_API_PROCESSES") or "0", int))
        api_max_waiting = int(_num("FACESCORE_API_MAX_WAITING", get("FACESCORE_API_MAX_WAITING") or "0", int))
        if api_processes < 0 or api_max_waiting < 0:
            raise ConfigError("FACESCORE_API_PROCESSES and FACESCORE_API_MAX_WAITING must be 0 or more")
        try:
            image_timeout = parse_duration(get("FACESCORE_IMAGE_TIMEOUT") or "60s")
        except ValueError as exc:
            raise ConfigError(f"FACESCORE_IMAGE_TIMEOUT: {exc}") from None
        try:
            body_timeout = parse_duration(get("FACESCORE_BODY_TIMEOUT") or "30s")
        except ValueError as exc:
            raise ConfigError(f"FACESCORE_BODY_TIMEOUT: {exc}") from None
        try:
            min_face = parse_min_face(get("FACESCORE_MIN_FACE") or DEFAULT_MIN_FACE)
        except ValueError as exc:
            raise ConfigError(f"FACESCORE_MIN_FACE: {exc}") from None
        return cls(
            redis_url=get("REDIS_URL") or "redis://localhost:6379",
            face_detection_service=(get("FACE_DETECTION_SERVICE") or None),
            face_embedding_service=(get("FACE_EMBEDDING_SERVICE") or None),
            ml_service_timeout_ms=int(timeout),
            use_real_ml=_bool("USE_REAL_ML", get("USE_REAL_ML", "true")),
            fallback_to_simulated=_bool("FALLBACK_TO_SIMULATED", get("FALLBACK_TO_SIMULATED", "true")),
            fallback_to_local=_bool("FALLBACK_TO_LOCAL", get("FALLBACK_TO_LOCAL", "true")),
            simulated_ml_threshold=threshold,
            via=via,
            queue=get("FACESCORE_QUEUE") or "facescore",
            qdrant_url=get("QDRANT_URL") or None,
            qdrant_api_key=get("QDRANT_API_KEY") or None,
            home=Path(home).expanduser(),
            service_token=get("FACESCORE_SERVICE_TOKEN") or None,
            max_image_bytes=int(_num("FACESCORE_MAX_IMAGE_BYTES", get("FACESCORE_MAX_IMAGE_BYTES", str(40 * 1024 * 1024)), int)),
            max_image_pixels=int(_num("FACESCORE_MAX_IMAGE_PIXELS", get("FACESCORE_MAX_IMAGE_PIXELS", "60000000"), int)),
            head_path=Path(head).expanduser() if head else None,
            api_processes=api_processes,
            api_max_waiting=api_max_waiting,
            image_timeout_s=image_timeout,
            body_timeout_s=body_timeout,
            min_face=min_face,
        )
