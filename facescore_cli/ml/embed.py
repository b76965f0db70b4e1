"""faces -> vectors: align each face to a 150 px chip; the vector is dlib's ResNet embedding of the
chip (128-d, the face's identity), cheap appearance statistics of the same chip, and the
ResNet's third-stage activations averaged over three horizontal bands of the chip, all averaged
over the chip and its mirror image.

    vector = mean over (chip, mirrored chip) of
             [ResNet embedding (RESNET_DIM = 128) | features.chip_stats (CHIP_STATS_DIM = 112)
              | resnet band means (BANDS_DIM = 384)]

The band means come from the same ResNet pass as the embedding. They keep what the final
identity layers discard (expression, skin, make-up, age cues): adding them lifted the head's
nested cross-validated r for 'attractive' by about 0.017 on OMI (training/train_head.py).

The mirror average makes the vector, and so the score, (nearly) the same for a photo and its
horizontal flip: with the chip's vector alone a flip moved the score by more than 3 points for
8% of faces (bench/robustness.py). It costs one more ResNet pass per face (~4 ms, batched with
the first) and one more `chip_stats`.

`embed` is the one function that both local scoring and the embedding service (`POST /embed`)
call, so a remote vector equals the local one and the scoring head sees the same input either
way. Identity uses (similarity search) must take the first RESNET_DIM components only: see
`identity`.
"""
from __future__ import annotations

import dlib
import numpy as np

from ..images import DecodedImage
from . import resnet
from .features import chip_stats
from .head import BANDS_DIM, RESNET_DIM, VECTOR_DIM  # noqa: F401  (the layout, also read as embed.*)
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
    """(n, RESNET_DIM) float32 embeddings, one ResNet pass per chip (no mirror average)."""
    if not face_chips:
        return np.zeros((0, RESNET_DIM), dtype=np.float32)
    # dlib's own network, run by onnxruntime: same weights, ~20x faster than dlib-bin's CPU code
    return resnet.descriptors(face_chips)


def vectors(face_chips: list[np.ndarray]) -> np.ndarray:
    """(n, VECTOR_DIM) float32: each chip's own ResNet embedding, its `chip_stats` and the
    ResNet's band means (no mirror average; `flip_averaged` is what `embed` returns)."""
    if not face_chips:
        return np.zeros((0, VECTOR_DIM), dtype=np.float32)
    stats = np.stack([chip_stats(c) for c in face_chips]).astype(np.float32)
    # dlib's own network, run by onnxruntime: same weights, ~20x faster than dlib-bin's CPU code
    desc, bands = resnet.descriptors_and_bands(face_chips)
    return np.hstack([desc, stats, bands])


def mirrored(face_chip: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(face_chip[:, ::-1])


def mean_of(chip_vecs: np.ndarray, mirror_vecs: np.ndarray) -> np.ndarray:
    """The float32 mean of the chips' and their mirrors' `vectors`; training uses this same
    function on stored vectors, so its rows equal what `embed` returns bit for bit."""
    a = np.asarray(chip_vecs, dtype=np.float32)
    return (a + np.asarray(mirror_vecs, dtype=np.float32)) * np.float32(0.5)


def flip_averaged(face_chips: list[np.ndarray]) -> np.ndarray:
    """(n, VECTOR_DIM) float32: `mean_of` each chip's and its mirror image's `vectors`."""
    n = len(face_chips)
    if not n:
        return np.zeros((0, VECTOR_DIM), dtype=np.float32)
    both = vectors([*face_chips, *(mirrored(c) for c in face_chips)])  # one ResNet batch
    return mean_of(both[:n], both[n:])


def identity(vecs: np.ndarray) -> np.ndarray:
    """The identity part (the ResNet embedding) of vectors from `embed`."""
    return np.asarray(vecs)[..., :RESNET_DIM]


def embed(image: DecodedImage, faces: list[Face]) -> np.ndarray:
    """(n, VECTOR_DIM) float32 vectors, one per face, in the order given."""
    return flip_averaged(chips(image, faces))
