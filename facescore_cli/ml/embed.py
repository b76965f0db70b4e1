"""faces -> vectors: align each face to a 150 px chip and run dlib's ResNet (128-d)."""
from __future__ import annotations

import dlib
import numpy as np

from ..images import DecodedImage
from . import models
from .types import Face

CHIP_SIZE = 150
CHIP_PADDING = 0.25


def chips(image: DecodedImage, faces: list[Face]) -> list[np.ndarray]:
    """Aligned 150x150 RGB chips, the ResNet's input, one per face."""
    out = []
    for face in faces:
        pts = [dlib.point(round(x * image.scale), round(y * image.scale)) for x, y in face.landmarks]
        x, y, w, h = (round(v * image.scale) for v in face.box)
        shape = dlib.full_object_detection(dlib.rectangle(x, y, x + w - 1, y + h - 1), pts)
        out.append(dlib.get_face_chip(image.pixels, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
    return out


def embed_chips(face_chips: list[np.ndarray]) -> np.ndarray:
    """(n, 128) float32 embeddings, one ResNet pass per chip.

    No mirror-image pass: averaging the chip's and its mirror's embeddings lifted the head's
    cross-validated r for 'attractive' by under 0.001 on OMI (0.8191 vs 0.8188, 10-fold; see
    training/train_head.py --embedding flip-avg) while doubling the ResNet cost (~73 ms/face).
    The head is trained with the mirror images as extra rows instead, which recovers most of it.
    """
    if not face_chips:
        return np.zeros((0, models.EMBEDDING_DIM), dtype=np.float32)
    vecs = models.resnet().compute_face_descriptor(face_chips)
    return np.asarray(vecs, dtype=np.float32).reshape(-1, models.EMBEDDING_DIM)


def embed(image: DecodedImage, faces: list[Face]) -> np.ndarray:
    return embed_chips(chips(image, faces))
