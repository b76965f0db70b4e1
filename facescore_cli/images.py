"""bytes -> upright RGB array, or ImageError.

Everything the models see goes through `decode`: EXIF orientation applied, alpha flattened on
white, CMYK/grayscale/palette/16-bit converted to 8-bit RGB, the first frame of animations.
Caps on file size and pixel count refuse decompression bombs before any pixel is decoded.
"""
from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_BYTES = 40 * 1024 * 1024
DEFAULT_MAX_PIXELS = 60_000_000
# The detector finds faces down to ~40 px, so JPEGs are draft-decoded only while the long side
# stays at or above this: a 4000 px photo loses 2x, a 1024 px portrait nothing.
DRAFT_MIN_SIDE = 1600

# We check pixel counts ourselves (with a clear message); PIL's own guard would raise first.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB uint8 array plus the factor from decoded pixels back to original pixels."""

    pixels: np.ndarray  # (h, w, 3) uint8, C-contiguous
    scale: float  # decoded size / upright original size (1.0 unless draft-decoded)
    width: int  # upright original width
    height: int  # upright original height
    format: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a file with the size cap applied before reading it whole."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"file is {_mb(size)}, over the {_mb(max_bytes)} cap")
        return path.read_bytes()
    except ImageError:
        raise
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None


def decode(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_min_side: int | None = DRAFT_MIN_SIDE,
) -> DecodedImage:
    """Decode image bytes into an upright RGB array; raise ImageError with a one-line reason."""
    if not data:
        raise ImageError("empty file")
    if len(data) > max_bytes:
        raise ImageError(f"file is {_mb(len(data))}, over the {_mb(max_bytes)} cap")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = _sniff(data)
        if kind:
            raise ImageError(f"corrupt {kind} image (its header cannot be decoded)") from None
        raise ImageError("not an image (unrecognised format)") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise ImageError(f"corrupt image header: {_reason(exc)}") from None
    fmt = img.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise ImageError(f"unsupported image format {fmt}")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("image has no pixels")
    if w * h > max_pixels:
        raise ImageError(f"image is {w}x{h} pixels, over the {max_pixels:,} pixel cap (decompression bomb?)")

    orientation = _exif_orientation(img)
    transposed = orientation in (5, 6, 7, 8)
    upright_w, upright_h = (h, w) if transposed else (w, h)

    if draft_min_side and fmt in ("JPEG", "MPO") and max(w, h) > 2 * draft_min_side:
        # draft() picks the largest 1/2, 1/4, 1/8 reduction that stays at or above the request.
        f = draft_min_side / max(w, h)
        img.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
            rgb = _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"truncated or corrupt image: {_reason(exc)}") from None
    pixels = np.ascontiguousarray(rgb)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ImageError("image could not be converted to RGB")
    scale = pixels.shape[1] / upright_w
    return DecodedImage(pixels=pixels, scale=scale, width=upright_w, height=upright_h, format=fmt)


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:
        return None  # unreadable EXIF is no reason to refuse the pixels


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(img)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"
