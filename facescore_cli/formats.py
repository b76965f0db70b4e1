"""Which files are images, without importing numpy or Pillow.

The owner of a scoring pool (`batch --jobs N`) lists folders and hands paths to its processes;
it never decodes a pixel. Importing images.py for `is_image_path` cost it numpy and Pillow
(~0.2 s of CPU) at the moment its scoring processes were loading their models on the same cores.
"""
from __future__ import annotations

from pathlib import Path

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif"})


def is_image_path(path: Path) -> bool:
    """Whether a file found in a folder is scored (by its suffix; files named directly always are)."""
    return path.suffix.lower() in IMAGE_SUFFIXES
