"""image -> faces. Every face with a confidence and dlib's 5 landmarks, largest first.

MTCNN finds the faces (small ones, rolled ones, dim and blurred ones: see
bench/README-detection.md for the measurements that chose it over dlib's HOG and CNN
detectors); dlib's 5-point shape predictor then places the landmarks that embed.py's
`dlib.get_face_chip` expects. That predictor was trained in dlib HOG boxes, so it is given the
box HOG would have drawn, predicted from MTCNN's five points.
"""
from __future__ import annotations

import math

import dlib
import numpy as np
from PIL import Image

from ..images import DecodedImage
from . import models, mtcnn
from .types import DEFAULT_MIN_FACE, Face

DETECTOR_NAME = "mtcnn+dlib5"

# O-Net probability at which a candidate counts as a face; `confidence` maps it to 0.5. Chosen
# on bench/detection_eval.py's synthetic group photos and portraits (bench/README-detection.md):
# 0.88 keeps a blurred hair-and-foliage corner of one portrait out.
THRESHOLD = 0.88
# Detection runs on a copy whose smallest wanted face is this many pixels wide (never upscaled):
# MTCNN's P-Net needs 12, and its O-Net judges better with a little more. The copy is made by
# Pillow's `reduce` (a box filter) for the whole factors and bilinear for the rest
# (reducing_gap 1): bilinear all the way took 5 ms of a portrait's ~35.
DETECT_MIN_FACE_PX = 20.0
SHRINK_REDUCING_GAP = 1.0
# MTCNN's image pyramid step and its first two stages' thresholds. The original steps by 0.709
# with P-Net >= 0.6; 0.5 and 0.7 give P-Net a quarter less area and R-Net half the candidates,
# with the same or better recall on the bench (bench/README-detection.md).
PYRAMID_FACTOR = 0.5
PNET_THRESHOLD, RNET_THRESHOLD = 0.7, 0.7
# Fitted on the even-numbered OMI faces (bench/detection_eval.py --fit): where dlib's HOG box
# lies relative to MTCNN's five points, in units of their spread, in the face's upright frame.
HOG_BOX_DX, HOG_BOX_DY, HOG_BOX_SIDE = -0.073, 0.1197, 4.0617


def load_models() -> None:
    """Load the detector's weights now rather than on the first image."""
    load_sessions()
    models.landmarks_5()


def load_sessions() -> None:
    """Only the MTCNN networks' onnxruntime sessions (`load_models` without dlib's landmarks)."""
    mtcnn._sessions()


def detect(image: DecodedImage, *, min_face: int = DEFAULT_MIN_FACE) -> list[Face]:
    """Find every face at least `min_face` pixels wide (in the original image's pixels)."""
    return detect_pixels(image.pixels, image.scale, min_face=min_face)


def detect_pixels(
    pixels: np.ndarray, scale: float = 1.0, *, min_face: int = DEFAULT_MIN_FACE, threshold: float = THRESHOLD
) -> list[Face]:
    """`detect` on a bare array; `scale` is decoded size / original size.

    In an image reduced to the working size (scale < 1: over 3200 px, images.WORK_SIDE) faces
    are searched down to DETECT_MIN_FACE_PX decoded pixels, i.e. 1/80 of the original's long
    side (40 px at 3200 px, 97 px at 7745 px), so that a huge image costs what a 3200 px photo
    does: searching such a copy down to P-Net's 12 px took ~0.6 s and ~450 MB more.
    """
    wanted = min_face * scale
    if scale < 1.0:
        wanted = max(wanted, DETECT_MIN_FACE_PX)
    boxes, points = find(pixels, wanted, threshold=threshold)
    inv = 1.0 / scale
    h, w = pixels.shape[:2]
    faces = []
    # All faces' landmarks in one call: the predictor's numpy work is per cascade, not per face
    # (a group photo's five faces took 14 ms one by one).
    all_marks = models.landmarks_5().predict_many(pixels, [hog_rect(pts) for pts in points])
    for (x1, y1, x2, y2, prob), marks in zip(boxes, all_marks):
        x1, y1 = max(x1, 0.0), max(y1, 0.0)
        x2, y2 = min(x2, w), min(y2, h)
        faces.append(
            Face(
                box=(round(x1 * inv), round(y1 * inv), max(round((x2 - x1) * inv), 1), max(round((y2 - y1) * inv), 1)),
                confidence=confidence(float(prob)),
                landmarks=tuple((float(mx) * inv, float(my) * inv) for mx, my in marks),
            )
        )
    return sorted(faces, key=lambda f: -f.area)


def find(
    pixels: np.ndarray,
    min_face_px: float,
    *,
    threshold: float = THRESHOLD,
    factor: float = PYRAMID_FACTOR,
    rnet_threshold: float = RNET_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN boxes (x1, y1, x2, y2, prob) and points (n, 5, 2) in `pixels` coordinates."""
    h, w = pixels.shape[:2]
    shrink = min(1.0, DETECT_MIN_FACE_PX / max(min_face_px, 1.0))
    small = Image.fromarray(pixels)
    if shrink < 0.999:
        size = (max(round(w * shrink), 1), max(round(h * shrink), 1))
        small = small.resize(size, Image.BILINEAR, reducing_gap=SHRINK_REDUCING_GAP)
        shrink = size[0] / w
    boxes, points = mtcnn.detect_faces(
        small,
        min_face=max(min_face_px * shrink, mtcnn.PNET_CELL),
        thresholds=(PNET_THRESHOLD, rnet_threshold, threshold),
        factor=factor,
    )
    boxes = boxes.astype(np.float64)
    boxes[:, :4] /= shrink
    return boxes, points.astype(np.float64) / shrink


def confidence(prob: float) -> float:
    """O-Net's probability mapped so that THRESHOLD reads 0.5 and certainty stays 1."""
    # A logistic in logit space, centred on THRESHOLD: keeps order, spreads the crowded top.
    p = min(max(prob, 1e-9), 1 - 1e-9)
    t = THRESHOLD
    z = math.log(p / (1 - p)) - math.log(t / (1 - t))
    return 1.0 / (1.0 + math.exp(-z))


def hog_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """(centre x, centre y, side, roll in radians) of the box dlib's HOG detector would draw
    around the face whose MTCNN points these are."""
    eyes = points[:2]
    roll = math.atan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0])
    origin = points.mean(axis=0)
    spread = float(np.sqrt(((points - origin) ** 2).sum(axis=1)).mean())
    c, s = math.cos(roll), math.sin(roll)
    cx = origin[0] + spread * (HOG_BOX_DX * c - HOG_BOX_DY * s)
    cy = origin[1] + spread * (HOG_BOX_DX * s + HOG_BOX_DY * c)
    return cx, cy, spread * HOG_BOX_SIDE, roll


def hog_rect(points: np.ndarray) -> tuple[int, int, int, int]:
    """`hog_box` as the whole-pixel (left, top, right, bottom) rectangle the landmark
    predictor takes. Not turned upright: the predictor copes with the +-25 degree rolls we need
    (bench: same median error, p95 0.074 vs 0.067 of the eye distance)."""
    cx, cy, side, _roll = hog_box(points)
    return (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))


def landmarks_for(pixels: np.ndarray, rect: "dlib.rectangle") -> list[tuple[float, float]]:
    """dlib's 5 landmarks inside a dlib-HOG-style box (upright faces)."""
    box = (rect.left(), rect.top(), rect.right(), rect.bottom())
    return [(float(x), float(y)) for x, y in models.landmarks_5().predict(pixels, box)]
