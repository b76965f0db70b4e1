"""The 5-point landmarks come from ml/shape_predictor.py (numpy) and equal dlib's own predictor."""
from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from facescore_cli import images
from facescore_cli.ml import detect, models, shape_predictor


@pytest.fixture(scope="module")
def dlib_predictor() -> "dlib.shape_predictor":
    return dlib.shape_predictor(models.LANDMARKS_5_PATH)


def faces_and_boxes(omi_dir: Path, count: int, angle: float = 0.0):
    for f in sorted((omi_dir / "images").glob("*.jpg"), key=lambda p: int(p.stem))[200:200 + count]:
        img = Image.open(f).convert("RGB")
        if angle:
            img = img.rotate(angle, Image.BICUBIC)
        px = np.asarray(img)
        _, points = detect.find(px, 40.0)
        for p in points:
            yield px, detect.hog_rect(p)


@pytest.mark.parametrize("angle", [0.0, 25.0, -25.0])
def test_numpy_landmarks_equal_dlibs(omi_dir: Path, dlib_predictor, angle: float) -> None:
    ours = models.landmarks_5()
    n = 0
    for px, (l, t, r, b) in faces_and_boxes(omi_dir, 12, angle):
        want = [(p.x, p.y) for p in dlib_predictor(px, dlib.rectangle(l, t, r, b)).parts()]
        assert ours.predict(px, (l, t, r, b)).tolist() == [list(map(float, w)) for w in want]
        n += 1
    assert n >= 12


def test_a_box_partly_outside_the_image_matches_too(portrait: Path, dlib_predictor) -> None:
    px = images.decode(portrait.read_bytes()).pixels
    h, w = px.shape[:2]
    for box in ((-120, -80, 400, 440), (w - 300, h - 250, w + 200, h + 260)):
        want = [(p.x, p.y) for p in dlib_predictor(px, dlib.rectangle(*box)).parts()]
        assert models.landmarks_5().predict(px, box).tolist() == [list(map(float, x)) for x in want]


def test_the_cache_is_written_once_and_a_damaged_one_rebuilt(tmp_path: Path, portrait: Path) -> None:
    path = shape_predictor.cached_arrays(tmp_path)
    assert path is not None and path.parent == tmp_path and path.stat().st_size > 1_000_000
    first = path.stat().st_mtime_ns
    assert shape_predictor.cached_arrays(tmp_path) == path and path.stat().st_mtime_ns == first
    px = images.decode(portrait.read_bytes()).pixels
    want = shape_predictor.load(tmp_path).predict(px, (300, 250, 700, 650))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short, as by a full disk
    again = shape_predictor.load(tmp_path)
    assert np.array_equal(again.predict(px, (300, 250, 700, 650)), want)
    assert path.stat().st_size > 1_000_000  # built again


def test_detect_places_every_faces_landmarks_as_dlib_would(dlib_predictor) -> None:
    """detect_pixels predicts all of an image's faces in one call; each face's landmarks are still
    what dlib gives for that face's box alone, in the face's own place in the list."""
    group = Path(__file__).resolve().parents[1] / "examples" / "group.jpg"
    px = np.asarray(Image.open(group).convert("RGB"))
    faces = detect.detect_pixels(px)
    boxes, points = detect.find(px, 40.0)
    assert len(faces) == len(points) >= 4
    want = set()
    for pts in points:
        l, t, r, b = detect.hog_rect(pts)
        want.add(tuple((float(p.x), float(p.y)) for p in dlib_predictor(px, dlib.rectangle(l, t, r, b)).parts()))
    assert {f.landmarks for f in faces} == want
    for f in faces:  # each face's landmarks lie in its own box, not a neighbour's
        x, y, w, h = f.box
        assert all(x - w / 2 <= mx <= x + 1.5 * w and y - h / 2 <= my <= y + 1.5 * h for mx, my in f.landmarks)
