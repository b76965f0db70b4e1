"""bytes -> upright RGB array, or ImageError.

Everything the models see goes through `decode`: EXIF orientation applied, alpha flattened on
white, CMYK/grayscale/palette/16-bit converted to 8-bit RGB, the first frame of animations.
Caps on file size and pixel count refuse decompression bombs before any pixel is decoded, and
an image over twice the working size is reduced to it as early as its format allows (JPEG while
decoding, the others band by band before RGB), so no accepted input costs much more than a
photo of the working size. docs/images.md has the measurements.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError
from .formats import IMAGE_SUFFIXES, SUPPORTED_FORMATS, is_image_path  # noqa: F401  (also read as images.*)
DEFAULT_MAX_BYTES = 40 * 1024 * 1024
DEFAULT_MAX_PIXELS = 60_000_000
# The working size: an image whose long side is over twice this reaches the models with exactly
# this long side; smaller ones are decoded whole, pixel for pixel. The detector works on at most
# half the original size anyway (ml/detect.py: faces from 40 px, searched at 20 px), so images up
# to 2 x WORK_SIDE lose nothing; beyond, faces are searched down to 20 px here (ml/detect.py),
# i.e. long side / 80 in the original: 97 px in a 7745 px image. See docs/images.md.
WORK_SIDE = 1600
# Pillow decodes WebP only whole, through three full-size buffers (~16 bytes a pixel: 950 MB at
# 60 Mpx), so WebP gets a lower cap that keeps its decode near 300 MB. Other formats decode into
# one native buffer (1-4 bytes a pixel), which 60 Mpx keeps under 300 MB.
WEBP_MAX_PIXELS = 16_000_000
# Rows converted to RGB at a time while reducing a big image: the native decode (1 byte a pixel
# for palette and grayscale, 3-4 for colour) is the only full-size buffer.
BAND_PIXELS = 2_000_000

_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# We check pixel counts ourselves (with a clear message); PIL's own guard would raise first.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB uint8 array plus the factor from decoded pixels back to original pixels."""

    pixels: np.ndarray  # (h, w, 3) uint8, C-contiguous
    scale: float  # decoded size / upright original size (1.0 unless reduced to the working size)
    width: int  # upright original width
    height: int  # upright original height
    format: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a file with the size cap applied: checked before a regular file is read, and while
    anything else is read (a pipe such as bash's `<(...)`, a FIFO, a device such as /dev/zero),
    which has no size to check first and could be endless. Opened without blocking, so a FIFO
    that nobody writes to (one named *.jpg in a folder, say) is an empty file at once, not a
    scoring process stuck until its time limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError("is a directory, not an image file")
        if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
            raise ImageError(f"file is {_mb(info.st_size)}, over the {_mb(max_bytes)} cap")
        os.set_blocking(fd, True)  # a pipe with a writer: wait for its bytes
        chunks: list[bytes] = []
        left = max_bytes + 1
        step = info.st_size + 1 if stat.S_ISREG(info.st_mode) else 1 << 20  # a regular file in one read
        while left > 0:
            chunk = os.read(fd, min(left, step))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
            step = 1 << 20  # a regular file: the next read only sees its end (or what was appended)
        if left <= 0:  # not a regular file, or one that grew while read
            raise ImageError(f"file is over the {_mb(max_bytes)} cap (read until there)")
        if not chunks and stat.S_ISFIFO(info.st_mode):
            raise ImageError("a named pipe (FIFO) with nothing written to it")
        return b"".join(chunks)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def decode(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    work_side: int | None = WORK_SIDE,
) -> DecodedImage:
    """Decode image bytes into an upright RGB array; raise ImageError with a one-line reason.

    An image whose long side is over 2 x `work_side` comes out with a long side of `work_side`
    (JPEG decoded reduced, other formats reduced in bands as they are converted); `None` keeps
    every pixel.
    """
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
    if fmt == "WEBP" and w * h > WEBP_MAX_PIXELS:
        raise ImageError(f"WebP image is {w}x{h} pixels, over the {WEBP_MAX_PIXELS:,} pixel cap for WebP "
                         "(it can only be decoded whole)")

    orientation = _exif_orientation(img)
    transposed = orientation in (5, 6, 7, 8)
    upright_w, upright_h = (h, w) if transposed else (w, h)
    target = None
    if work_side and max(w, h) > 2 * work_side:
        f = work_side / max(w, h)
        target = (max(round(w * f), 1), max(round(h * f), 1))
        if fmt in ("JPEG", "MPO"):
            # draft() picks the largest 1/2, 1/4, 1/8 reduction that stays at or above the request.
            img.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.seek(0)
            img.load()
            rgb = _to_rgb(img, target)
            if orientation in _TRANSPOSE:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
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


def _to_rgb(img: Image.Image, target: tuple[int, int] | None = None) -> Image.Image:
    """The loaded image as 8-bit RGB, alpha flattened on white, resized to `target` if given.

    Whole (no target) the result is pixel for pixel what Pillow's own conversions give. With a
    target, the image is converted a band of rows at a time and each band box-averaged by the
    integer factor that keeps it at or above the target, so the full-size RGB never exists; a
    bicubic resize takes the remainder (less than 2x).
    """
    w, h = img.size
    k = min(w // target[0], h // target[1]) if target else 1
    if k <= 1:
        rgb = _converter(img)(img)
    else:
        # Alpha is averaged premultiplied and laid on white once small: the same picture as
        # flattening first, at a third of the cost.
        alpha = img.mode in _ALPHA
        convert = (lambda part: part.convert("RGBA").convert("RGBa")) if alpha else _converter(img)
        rows = k * max(1, BAND_PIXELS // (w * k))
        rgb = Image.new("RGBa" if alpha else "RGB", (math.ceil(w / k), math.ceil(h / k)))
        for y in range(0, h, rows):
            rgb.paste(convert(img.crop((0, y, w, min(y + rows, h)))).reduce(k), (0, y // k))
        rgb = _flatten(rgb) if alpha else rgb
    if target and rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    return rgb


def _converter(img: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A function from `img`, or a crop of it, to RGB. It may change the image it is given."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        # 16-bit scans use the full range; some writers put 8-bit values in a 16-bit container.
        top = 65535.0 if (img.getextrema()[1] or 0) > 255 else 255.0

        def to_8bit(arr: np.ndarray) -> np.ndarray:
            return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)

        if mode.startswith("I;16"):
            lut = to_8bit(np.arange(65536, dtype=np.float64))  # the same formula, once per value
            return lambda part: Image.fromarray(lut[np.asarray(part)]).convert("RGB")
        return lambda part: Image.fromarray(to_8bit(np.asarray(part, dtype=np.float64))).convert("RGB")
    if mode == "P":
        # A palette pixel's colour depends on its index alone: flatten the 256 entries once and
        # give every part that flat palette, so converting it is a plain lookup.
        strip = img.crop((0, 0, 256, 1))
        strip.putdata(range(256))
        flat = _flatten(strip).tobytes()

        def lookup(part: Image.Image) -> Image.Image:
            part.info.pop("transparency", None)
            part.putpalette(flat, "RGB")
            return part.convert("RGB")

        return lookup
    if mode in _ALPHA:
        return _flatten
    if mode != "RGB":
        return lambda part: part.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return lambda part: part


def _flatten(img: Image.Image) -> Image.Image:
    """An image with alpha (or a palette that may hold some) laid on white, as RGB."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"
