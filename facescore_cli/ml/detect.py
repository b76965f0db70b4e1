"""image -> faces. Every face with a confidence and dlib's 5 landmarks, largest first."""
from __future__ import annotations

import math

import dlib
import numpy as np

from ..images import DecodedImage
from . import models
from .types import Face

DETECTOR_NAME = "dlib-hog"


def detect(image: DecodedImage, *, min_face: int = 40) -> list[Face]:
    """Find every face of at least `min_face` pixels (in the original image's pixels)."""
    px = image.pixels
    # HOG's window is 80 px; upsample once when the smallest wanted face is smaller than that.
    smallest = min_face * image.scale
    upsample = 1 if smallest < 80 else 0
    rects, scores, _ = models.hog_detector().run(px, upsample, 0.0)
    faces = [_face(px, image.scale, r, s) for r, s in zip(rects, scores)]
    return sorted(faces, key=lambda f: -f.area)


def landmarks_for(pixels: np.ndarray, rect: "dlib.rectangle") -> list[tuple[float, float]]:
    shape = models.landmarks_5()(pixels, rect)
    return [(float(p.x), float(p.y)) for p in shape.parts()]


def _face(px: np.ndarray, scale: float, rect: "dlib.rectangle", score: float) -> Face:
    marks = landmarks_for(px, rect)
    inv = 1.0 / scale
    x, y = max(rect.left(), 0), max(rect.top(), 0)
    r, b = min(rect.right(), px.shape[1] - 1), min(rect.bottom(), px.shape[0] - 1)
    return Face(
        box=(round(x * inv), round(y * inv), round((r - x + 1) * inv), round((b - y + 1) * inv)),
        confidence=1.0 / (1.0 + math.exp(-2.0 * score)),
        landmarks=tuple((mx * inv, my * inv) for mx, my in marks),
    )
