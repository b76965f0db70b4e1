"""The numpy shape predictor (facescore_cli/ml/shape_predictor.py) against dlib's own.

Real OMI portraits, each face's box made as detect.py makes it for the landmarks (MTCNN's points
-> detect.hog_box -> a rounded rectangle). The landmarks must be dlib's exactly (both give whole
pixels): upright, rolled by +-25 degrees, with half the box outside the image, on a grey copy,
and several boxes in one call. A variant with its split thresholds moved by half a grey level
must fail the same check, so that it can fail. bench/bench_shape_predictor.py runs the same
comparison on more faces and times both.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

dlib = pytest.importorskip("dlib")

from facescore_cli.ml import detect, models  # noqa: E402
from facescore_cli.ml import shape_predictor as sp  # noqa: E402
from facescore_cli.ml.resnet import DatFormatError  # noqa: E402

N_IMAGES = 30


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> sp.ShapePredictor:
    return sp.load(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def theirs():
    return dlib.shape_predictor(models.LANDMARKS_5_PATH)


@pytest.fixture(scope="module")
def portraits(omi_dir) -> list[Image.Image]:
    paths = sorted((omi_dir / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:N_IMAGES]
    return [Image.open(p).convert("RGB") for p in paths]


def boxes_of(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The rectangles detect.detect_pixels hands the landmark predictor."""
    _, points = detect.find(pixels, 40.0)
    return [detect.hog_rect(pts) for pts in points]


def dlib_marks(theirs, pixels: np.ndarray, box) -> np.ndarray:
    return np.array([(p.x, p.y) for p in theirs(pixels, dlib.rectangle(*box)).parts()], dtype=np.float64)


def differing(model: sp.ShapePredictor, theirs, cases: list[tuple[np.ndarray, list]]) -> tuple[int, int]:
    """(faces compared, faces whose landmarks differ from dlib's anywhere)."""
    faces = bad = 0
    for pixels, boxes in cases:
        if not boxes:
            continue
        got = model.predict_many(pixels, boxes)
        for box, marks in zip(boxes, got):
            faces += 1
            bad += not np.array_equal(marks, dlib_marks(theirs, pixels, box))
    return faces, bad


@pytest.fixture(scope="module")
def upright(portraits) -> list[tuple[np.ndarray, list]]:
    out = []
    for img in portraits:
        px = np.asarray(img)
        out.append((px, boxes_of(px)))
    assert sum(len(b) for _, b in out) >= N_IMAGES
    return out


def test_reads_the_5_point_model(ours):
    assert ours.num_parts == 5
    assert ours.split_idx.shape == (15, 500, 15, 2)      # cascades, trees, splits of depth-4 trees
    assert ours.leaves.shape == (15, 500, 16, 5, 2)
    assert ours.anchor.shape == ours.deltas.shape[:2] == (15, 800)
    assert ((ours.initial_shape > 0) & (ours.initial_shape < 1)).all()   # inside the unit box
    # the eyes' outer corners lie left and right of the nose, which lies below them
    assert ours.initial_shape[2, 0] < ours.initial_shape[4, 0] < ours.initial_shape[0, 0]
    assert ours.initial_shape[4, 1] > ours.initial_shape[0, 1]


def test_same_landmarks_as_dlib_upright(ours, theirs, upright):
    faces, bad = differing(ours, theirs, upright)
    assert bad == 0, f"{bad} of {faces} faces differ from dlib"


@pytest.mark.parametrize("angle", [25, -25])
def test_same_landmarks_as_dlib_rolled(ours, theirs, portraits, angle):
    cases = []
    for img in portraits:
        px = np.asarray(img.rotate(angle, resample=Image.BILINEAR))
        cases.append((px, boxes_of(px)))
    faces, bad = differing(ours, theirs, cases)
    assert faces >= N_IMAGES // 2
    assert bad == 0, f"{bad} of {faces} faces differ from dlib"


def test_same_landmarks_as_dlib_with_half_the_box_outside(ours, theirs, upright):
    cases = []
    for px, boxes in upright:
        for left, top, right, bottom in boxes:
            cx, cy = (left + right) // 2, (top + bottom) // 2
            cases += [
                (px[:, cx:], [(left - cx, top, right - cx, bottom)]),
                (px[cy:], [(left, top - cy, right, bottom - cy)]),
                (px[:, :cx], [(left, top, right, bottom)]),
                (px[:cy], [(left, top, right, bottom)]),
            ]
    faces, bad = differing(ours, theirs, cases)
    assert bad == 0, f"{bad} of {faces} faces differ from dlib"


def test_same_landmarks_as_dlib_for_odd_boxes(ours, theirs, upright):
    px, _ = upright[0]
    h, w = px.shape[:2]
    odd = [(-400, -300, -100, 0), (w + 10, 20, w + 300, 310),   # wholly outside
           (-50, -60, w + 70, h + 80),                           # larger than the image
           (600, 600, 300, 300), (500, 500, 500, 500), (0, 0, 1, 1)]   # inverted, empty, tiny
    faces, bad = differing(ours, theirs, [(px, odd)])
    assert bad == 0, f"{bad} of {faces} boxes differ from dlib"


def test_same_landmarks_as_dlib_on_grey(ours, theirs, upright, portraits):
    cases = [(np.asarray(img.convert("L")), boxes) for img, (_, boxes) in zip(portraits, upright)]
    faces, bad = differing(ours, theirs, cases)
    assert bad == 0, f"{bad} of {faces} faces differ from dlib"


def test_several_boxes_at_once(ours, theirs, upright):
    rng = np.random.default_rng(14)
    cases = []
    for px, boxes in upright:
        for left, top, right, bottom in boxes:
            side = right - left
            jittered = []
            for _ in range(4):
                dx, dy = rng.integers(-side // 4, side // 4 + 1, 2)
                grow = int(rng.integers(-side // 5, side // 5 + 1))
                jittered.append((left + dx - grow, top + dy - grow, right + dx + grow, bottom + dy + grow))
            cases.append((px, jittered))
            # one at a time gives the same as all at once
            many = ours.predict_many(px, jittered)
            assert all(np.array_equal(ours.predict(px, b), m) for b, m in zip(jittered, many))
    faces, bad = differing(ours, theirs, cases)
    assert bad == 0, f"{bad} of {faces} faces differ from dlib"


def test_the_comparison_can_fail(ours, theirs, upright):
    """Split thresholds half a grey level off (features are whole grey levels, so this flips
    exactly the splits whose difference equals the rounded threshold) must show."""
    moved = dataclasses.replace(ours, split_thresh=ours.split_thresh + np.float32(0.5))
    faces, bad = differing(moved, theirs, upright)
    assert bad >= faces // 4, f"only {bad} of {faces} faces differ"


def test_predict_is_the_process_model(upright):
    px, boxes = upright[0]
    assert np.array_equal(sp.predict(px, boxes[0]), sp.model().predict(px, boxes[0]))
    assert sp.predict(px, boxes[0]).shape == (5, 2)


def test_rejects_what_dlib_would_not_take(ours, upright):
    px, boxes = upright[0]
    with pytest.raises(ValueError, match="uint8"):
        ours.predict(px.astype(np.float32), boxes[0])
    with pytest.raises(ValueError, match="uint8"):
        ours.predict(px[..., :2], boxes[0])
    with pytest.raises(TypeError):
        ours.predict(px, (10.5, 10, 100, 100))   # dlib rectangles have integer corners


def test_numpy_adds_tree_after_tree():
    """predict_many sums each cascade's leaves with np.add.reduce over the middle axis of a
    (faces, trees, coordinates) float32 array and needs it sequential, as dlib adds them; numpy
    sums pairwise only along the innermost axis. Values of very different sizes make any other
    order show."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 501, 10)) * 10.0 ** rng.integers(-9, 1, (3, 501, 10))).astype(np.float32)
    one_by_one = x[:, 0].copy()
    for i in range(1, x.shape[1]):
        one_by_one = one_by_one + x[:, i]
    assert np.array_equal(np.add.reduce(x, axis=1), one_by_one)
    assert not np.array_equal(np.ascontiguousarray(x.transpose(0, 2, 1)).sum(axis=2), one_by_one)


# --------------------------------------------------------------------------- the .dat and the cache


def test_walkers_find_the_numbers_the_plain_loop_finds():
    with open(models.LANDMARKS_5_PATH, "rb") as f:
        data = f.read()
    starts = sp._walk_slowly(data)
    assert np.array_equal(sp._number_starts(data), starts)
    # walkers that start inside numbers and are never brought into step are refused, not trusted
    a = np.frombuffer(data, dtype=np.uint8)
    nxt = np.arange(1, a.size + 17, dtype=np.int32)
    nxt[:a.size] += a & 0x0F
    nxt[a.size:] -= 1
    inside = [s + 1 for s, e in zip(starts[1000:2000], starts[1001:2001]) if e - s > 2][:20]
    end = int(starts[3000])   # the second walker's goal: the walk is judged on the first one
    refused = [sp._walk(nxt, np.array([0, p], dtype=np.int32), end) is None for p in inside]
    assert all(refused)


def test_read_dat_refuses_damaged_files():
    with open(models.LANDMARKS_5_PATH, "rb") as f:
        data = f.read()
    for broken in (data[:-3], data + b"\x01\x07", b"\x01\x02" + data[2:], data[:1000]):
        with pytest.raises(DatFormatError):
            sp.read_dat(broken)


@pytest.fixture()
def dat_copy(tmp_path) -> Path:
    path = tmp_path / "shape_predictor_5_face_landmarks.dat"
    shutil.copyfile(models.LANDMARKS_5_PATH, path)
    return path


def same_model(a: sp.ShapePredictor, b: sp.ShapePredictor) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in sp._FIELDS)


def test_cache_is_written_once_and_read_back(tmp_path, dat_copy, ours):
    cache = tmp_path / "cache"
    path = sp.cached_arrays(cache, str(dat_copy))
    assert path is not None and path.parent == cache and path.name.endswith(f"-v{sp.BUILD_VERSION}.npy")
    assert [p.name for p in cache.iterdir()] == [path.name]          # no temporary left behind
    stamp = path.stat().st_mtime_ns
    assert sp.cached_arrays(cache, str(dat_copy)) == path
    assert path.stat().st_mtime_ns == stamp                          # not written again
    assert same_model(sp.load(cache, str(dat_copy)), ours)
    # a changed .dat (size or modification time) gets its own file
    os.utime(dat_copy, ns=(stamp, stamp + 10**9))
    assert sp.cached_arrays(cache, str(dat_copy)) != path


@pytest.mark.parametrize("damage", ["truncate", "garble_header", "empty"])
def test_damaged_cache_is_rebuilt(tmp_path, dat_copy, ours, damage):
    cache = tmp_path / "cache"
    path = sp.cached_arrays(cache, str(dat_copy))
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garble_header":
        path.write_bytes(raw[:10] + b"\xff" * 40 + raw[50:])
    else:
        path.write_bytes(b"")
    assert same_model(sp.load(cache, str(dat_copy)), ours)
    assert same_model(sp._from_cache(path), ours)                    # rebuilt in place


def test_unwritable_cache_folder_reads_the_dat(tmp_path, dat_copy, ours):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert sp.cached_arrays(not_a_folder / "cache", str(dat_copy)) is None
    assert same_model(sp.load(not_a_folder / "cache", str(dat_copy)), ours)
