"""Annotated copies: each scored image, upright, with every face's box, score and vibe drawn.

`batch --annotate DIR` and `score --annotate DIR` pass their results through `annotated`, which
writes DIR/<the result's path> as results arrive, in the process that writes the results. That
works for every --via (a queue worker may be on another machine), at the cost of decoding each
image a second time (docs/pictures.md has the figures). Boxes are in pixels of the upright image
(CONTRACT.md), so the image is decoded at full size with its EXIF orientation applied.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path, PurePath

from PIL import Image, ImageDraw, ImageFont

from . import images, output
from .errors import FaceScoreError, ImageError
from .result import FaceResult, ImageResult

# Bright colours that black text reads on, and that stand out on skin, sky and walls alike.
PALETTE = ((255, 214, 0), (0, 200, 255), (255, 90, 170), (120, 235, 80), (255, 150, 40), (190, 140, 255))
_INK = (0, 0, 0)
_SAVE_OPTIONS = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}}


class AnnotateError(FaceScoreError):
    """An annotated copy could not be made (the folder is unusable, or it would overwrite its source)."""


def target_for(out_dir: Path, shown: str) -> Path:
    """Where the copy of the image shown as `shown` (a result's path) goes: under out_dir at the
    same relative path. A leading / is dropped and each `..` becomes `__`, so nothing lands outside
    out_dir and inputs given from different folders keep apart."""
    parts = [("__" if p == ".." else p) for p in PurePath(shown).parts
             if p not in (PurePath(shown).anchor, ".", "")]
    if not parts:
        raise AnnotateError(f"{shown!r} names no file")
    return out_dir.joinpath(*parts)


def prepare(out_dir: Path) -> Path:
    """Create out_dir (and parents); AnnotateError with one line when it cannot be written to."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AnnotateError(f"--annotate {out_dir}: exists and is not a folder") from None
    except OSError as exc:
        raise AnnotateError(f"--annotate {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise AnnotateError(f"--annotate {out_dir}: permission denied")
    return out_dir


def font_size(width: int, height: int) -> int:
    """Label text height in pixels: about 3% of the shorter side, never under 12 px."""
    return max(12, round(min(width, height) * 0.032))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled FreeType font (Pillow >= 10.1), loaded once per size: loading it costs more
    than drawing a whole label."""
    return ImageFont.load_default(size=size)


def draw(image: Image.Image, faces: list[FaceResult]) -> Image.Image:
    """Draw each face's box and a label `score vibe` (with `#i` when there are several) on a copy."""
    canvas = image.convert("RGB") if image.mode != "RGB" else image.copy()
    w, h = canvas.size
    size = font_size(w, h)
    font = _font(size)
    line = max(2, round(size / 7))
    pen = ImageDraw.Draw(canvas)
    for i, f in enumerate(faces):
        colour = PALETTE[i % len(PALETTE)]
        x, y, bw, bh = f.face.box
        x0, y0, x1, y1 = x, y, x + max(bw, 1) - 1, y + max(bh, 1) - 1
        # a dark rim under the coloured line keeps the box visible on light backgrounds too
        pen.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=_INK, width=line + 2)
        pen.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        label = (f"#{i} " if len(faces) > 1 else "") + f"{f.score:.1f} {f.vibe}".strip()
        left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
        pad = max(2, size // 5)
        lw, lh = right - left + 2 * pad, bottom - top + 2 * pad
        # above the box when it fits, else just inside its top edge; always inside the image
        ly = y0 - lh if y0 - lh >= 0 else min(max(y0, 0), max(h - lh, 0))
        lx = min(max(x0, 0), max(w - lw, 0))
        pen.rectangle((lx, ly, lx + lw - 1, ly + lh - 1), fill=colour)
        pen.text((lx + pad - left, ly + pad - top), label, font=font, fill=_INK)
    return canvas


def annotate_result(result: ImageResult, out_dir: Path, source: Path | None = None) -> Path | None:
    """Write the annotated copy of one result and return its path; None for a failure (nothing
    written). An image with no face is copied byte for byte (its EXIF orientation still applies).
    Raises AnnotateError or ImageError with a one-line reason."""
    if result.failed:
        return None
    src = source if source is not None else Path(result.path)
    target = target_for(out_dir, result.path)
    if target.resolve() == src.resolve():
        raise AnnotateError(f"{target} is the image itself; choose another --annotate folder")
    data = images.read_file(src)
    if result.sha256 and images.sha256(data) != result.sha256:
        raise AnnotateError("the file changed after it was scored; not annotated")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not result.faces:
        output.write_atomic(target, data, sync=False)
        return target
    decoded = images.decode(data, work_side=None)  # full size: the boxes are in these pixels
    fmt = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    picture = draw(Image.fromarray(decoded.pixels), result.faces)
    output.write_atomic(target, lambda fh: picture.save(fh, format=fmt, **_SAVE_OPTIONS.get(fmt, {})), sync=False)
    return target


def annotated(results: Iterable[ImageResult], out_dir: Path,
              warn: Callable[[str], None]) -> Iterator[ImageResult]:
    """Pass results through unchanged, writing each one's annotated copy on the way; a copy that
    cannot be made is one warning, never a lost result."""
    for result in results:
        try:
            annotate_result(result, out_dir)
        except (AnnotateError, ImageError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            warn(f"--annotate: {result.path}: {reason}")
        yield result
