"""Where the weights live and how they are loaded: once per process, offline."""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import dlib

from . import head


def _weights_file(name: str) -> str:
    """A file of the face_recognition_models package, found without importing it: its
    __init__ imports pkg_resources, which costs ~0.2 s in every process and is gone from
    recent setuptools."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dlib weights package `face_recognition_models` is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", name)


# dlib weights from the face_recognition_models package (public domain / CC0 per its README and
# dlib-models): the 5-point landmark model and the ResNet face embedding. The 68-point model in
# the same package is never loaded: its training data (iBUG 300-W) forbids commercial use.
LANDMARKS_5_PATH = _weights_file("shape_predictor_5_face_landmarks.dat")
RESNET_PATH = _weights_file("dlib_face_recognition_resnet_model_v1.dat")
# The vector /embed returns and the head reads: the ResNet's 128-d identity embedding followed
# by the chip's colour and texture statistics (ml/features.py) and the ResNet's third-stage band
# means (ml/resnet.py), averaged over the chip and its mirror image. A service that replaces ours
# must produce the same vector; the name changes whenever its layout does.
EMBEDDING_MODEL = head.EMBEDDING_MODEL  # "...+flip_avg": the mean over the chip and its mirror
EMBEDDING_DIM = head.VECTOR_DIM


@functools.lru_cache(maxsize=None)
def hog_detector() -> "dlib.fhog_object_detector":
    return dlib.get_frontal_face_detector()


def landmarks_5(cache_dir: Path | None = None) -> "shape_predictor.ShapePredictor":
    """dlib's 5-point landmark model, run in numpy (`shape_predictor`: the same answers, loaded
    from its cached arrays in ~2 ms instead of dlib's ~0.12 s); `cache_dir` matters only for the
    process's first call."""
    from . import shape_predictor

    return shape_predictor.model(cache_dir)


@functools.lru_cache(maxsize=None)
def resnet() -> "dlib.face_recognition_model_v1":
    return dlib.face_recognition_model_v1(RESNET_PATH)
