"""The onnxruntime ResNet (facescore_cli/ml/resnet.py) against dlib's own compute_face_descriptor.

Real aligned chips: 50 OMI portraits, HOG-detected on a 1/4 size copy, 5-point landmarks and
dlib.get_face_chip(size=150, padding=0.25) on the full image, exactly like embed.chips. Both
networks embed the same chips; every component must agree to 1e-5 (seen: ~4e-7, float32
summation order) and every cosine must be >= 0.9999. Two broken variants of the fast network
(BGR chips; one affine layer's beta dropped) must fail the same check, so it can fail.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

dlib = pytest.importorskip("dlib")
ort = pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from conftest import dies_with_pytest
from facescore_cli.ml import models, resnet  # noqa: E402

N_FACES = 50
MAX_ABS = 1e-5
MIN_COS = 0.9999


def omi_chips(images_dir, n: int) -> list[np.ndarray]:
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(models.LANDMARKS_5_PATH)
    out = []
    for path in sorted(images_dir.glob("*.jpg"), key=lambda p: int(p.stem)):
        img = np.asarray(Image.open(path).convert("RGB"))
        small = np.ascontiguousarray(img[::4, ::4])
        dets = detector(small, 0)
        if not dets:
            continue
        r = dets[0]
        rect = dlib.rectangle(r.left() * 4, r.top() * 4, r.right() * 4 + 3, r.bottom() * 4 + 3)
        out.append(dlib.get_face_chip(img, predictor(img, rect), size=150, padding=0.25))
        if len(out) == n:
            break
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a-b| over all components, min cosine over rows)."""
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.abs(a - b).max()), float(cos.min())


def matches(a: np.ndarray, b: np.ndarray) -> bool:
    max_abs, min_cos = agreement(a, b)
    return max_abs <= MAX_ABS and min_cos >= MIN_COS


@pytest.fixture(scope="module")
def chips(omi_dir) -> list[np.ndarray]:
    out = omi_chips(omi_dir / "images", N_FACES)
    assert len(out) == N_FACES, f"only {len(out)} OMI faces found"
    return out


@pytest.fixture(scope="module")
def dlib_vecs(chips) -> np.ndarray:
    rec = dlib.face_recognition_model_v1(models.RESNET_PATH)
    return np.asarray(rec.compute_face_descriptor(chips), dtype=np.float32)


def test_reads_dlibs_anet_type():
    with open(models.RESNET_PATH, "rb") as f:
        net = resnet.read_dat(f.read())
    np.testing.assert_allclose(net.mean, [122.782, 117.001, 104.298], atol=1e-3)
    assert net.size == 150
    convs = [layer for layer in net.layers if layer[0] == "con"]
    assert len(convs) == 29
    # dlib pads by filter/2 at stride 1 only: the 7x7/2 stem and the four 3x3/2 convs are unpadded
    assert [(c[1].shape[2], c[3], c[4]) for c in convs if c[3] != 1] == [(7, 2, 0)] + [(3, 2, 0)] * 4
    assert all(c[4] == 1 for c in convs if c[3] == 1)
    assert [layer[0] for layer in net.layers][-2:] == ["avg_pool", "fc"]
    assert net.layers[-1][1].shape == (256, 128)


def test_matches_dlib_on_real_chips(chips, dlib_vecs):
    fast = resnet.descriptors(chips)
    assert fast.shape == (N_FACES, 128) and fast.dtype == np.float32
    max_abs, min_cos = agreement(fast, dlib_vecs)
    assert max_abs <= MAX_ABS, f"max |fast - dlib| = {max_abs:.3g}"
    assert min_cos >= MIN_COS, f"min cosine = {min_cos:.7f}"


def test_batch_of_one_equals_batch(chips):
    batch = resnet.descriptors(chips[:8])
    singles = np.concatenate([resnet.descriptors([c]) for c in chips[:8]])
    assert np.abs(batch - singles).max() <= 1e-6


def test_check_fails_on_broken_networks(chips, dlib_vecs):
    # BGR instead of RGB: a classic conversion bug the check must catch
    bgr = resnet.descriptors([np.ascontiguousarray(c[:, :, ::-1]) for c in chips])
    assert not matches(bgr, dlib_vecs), agreement(bgr, dlib_vecs)

    # one affine layer (bn folded by dlib) without its beta
    with open(models.RESNET_PATH, "rb") as f:
        net = resnet.read_dat(f.read())
    i = [k for k, layer in enumerate(net.layers) if layer[0] == "affine"][10]
    kind, gamma, beta = net.layers[i]
    net.layers[i] = (kind, gamma, np.zeros_like(beta))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(resnet.build_onnx(net), opts, providers=["CPUExecutionProvider"])
    broken = sess.run(["descriptors"], {"chips": np.stack(chips)})[0]
    assert not matches(broken, dlib_vecs), agreement(broken, dlib_vecs)


def test_empty_and_bad_inputs():
    assert resnet.descriptors([]).shape == (0, 128)
    with pytest.raises(ValueError):
        resnet.descriptors([np.zeros((100, 100, 3), np.uint8)])
    with pytest.raises(ValueError):
        resnet.descriptors([np.zeros((150, 150, 3), np.float32)])


def test_band_means_of_the_third_stage(chips):
    # band_means on a known map: row r holds r, so each band's mean is the mean of its rows
    h, w = 19, 19
    maps = np.broadcast_to(np.arange(h, dtype=np.float32)[None, None, :, None], (1, 2, h, w))
    bands = resnet.band_means(maps)
    rows = [np.arange(i * h // 3, (i + 1) * h // 3).mean() for i in range(3)]
    assert np.allclose(bands[0], np.repeat(rows, 2))  # band after band, the channels within a band
    # the third stage: 128 channels, non-negative (a ReLU output), a batch gives what singles give
    desc, b = resnet.descriptors_and_bands(chips[:4])
    assert desc.shape == (4, 128) and b.shape == (4, resnet.BANDS_DIM) and (b >= 0).all()
    singles = np.concatenate([resnet.descriptors_and_bands([c])[1] for c in chips[:4]])
    assert np.abs(b - singles).max() <= 1e-5
    assert np.array_equal(desc, resnet.descriptors(chips[:4]))
    # different faces, different band means
    assert np.abs(b[0] - b[1]).max() > 0.05


def test_model_cache_is_built_once_keyed_by_the_dat_and_rebuilt_when_damaged(tmp_path, chips):
    cache = tmp_path / "cache"
    path = resnet.cached_model(cache)
    assert path is not None and path.parent == cache and path.stat().st_size > 20_000_000
    assert path.read_bytes() == resnet.model_bytes()
    mtime = path.stat().st_mtime_ns
    assert resnet.cached_model(cache) == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary left behind

    # a session on the cached file gives what the in-memory build gives, bit for bit
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    from_file = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    batch = {"chips": np.stack(chips[:4])}
    assert np.array_equal(from_file.run(["descriptors"], batch)[0], resnet.descriptors(chips[:4]))

    # a damaged file (a truncated copy, say) is built again
    path.write_bytes(b"not an onnx model")
    sess = resnet.open_session(cache)
    assert np.array_equal(sess.run(["descriptors"], batch)[0], resnet.descriptors(chips[:4]))
    assert path.read_bytes() == resnet.model_bytes()

    # another .dat (here: a copy with one changed weight byte) gets its own file, and so does
    # the same file once rewritten (a reinstall)
    other = tmp_path / "other.dat"
    data = bytearray(open(resnet._dat_path(), "rb").read())
    data[-5000] ^= 1
    other.write_bytes(bytes(data))
    first = resnet.cached_model(cache, str(other))
    assert first not in (None, path) and first.read_bytes() != path.read_bytes()
    os.utime(other, ns=(other.stat().st_atime_ns, other.stat().st_mtime_ns + 10**9))
    assert resnet.cached_model(cache, str(other)) not in (None, first)


def test_model_cache_in_an_unwritable_place_builds_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert resnet.cached_model(blocker / "cache") is None
    sess = resnet.open_session(blocker / "cache")
    assert sess.run(["descriptors"], {"chips": np.zeros((1, 150, 150, 3), np.uint8)})[0].shape == (1, 128)


def optimized_folder(cache: Path) -> Path:
    [folder] = [p for p in cache.iterdir() if p.is_dir()]
    return folder


def outputs(sess, chips) -> list[np.ndarray]:
    return sess.run(["descriptors", "stage3"], {"chips": np.stack(chips)})


@pytest.mark.skipif(resnet.machine_key() is None, reason="no CPU features to key an optimized model by")
def test_optimized_model_is_cached_and_equals_the_plain_model_bit_for_bit(tmp_path, chips):
    cache = tmp_path / "cache"
    first = resnet.open_session(cache)                     # builds the plain model and the optimized one
    folder = optimized_folder(cache)
    assert folder.name.startswith(resnet.cached_model(cache).stem + "-ort-")
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "stamp", "weights.bin"]
    assert (folder / "weights.bin").stat().st_size > 20_000_000 and (folder / "model.onnx").stat().st_size < 1_000_000
    assert (folder / "stamp").read_text().startswith(resnet.machine_key() + "\n")
    assert (folder / "stamp").read_text().endswith("\nok\n")
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left behind

    # the next session comes from the optimized files alone: the plain model, garbled, is not read
    plain_file = resnet.cached_model(cache)
    plain = ort.InferenceSession(str(plain_file), resnet._session_options(), providers=["CPUExecutionProvider"])
    plain_file.write_bytes(b"garbled")
    (folder / "old").touch()
    second = resnet.open_session(cache)
    assert plain_file.read_bytes() == b"garbled" and (folder / "old").exists()  # nothing built again
    want = outputs(plain, chips)
    for got in (outputs(first, chips), outputs(second, chips)):
        assert all(np.array_equal(a, b) for a, b in zip(want, got))  # bit for bit, 50 real chips


def rebuilt(cache: Path, damage) -> bool:
    """Damage the cached optimized model, open a session: True if the folder was built again
    (a new folder, our stamp) and the session equals the plain model on the probe chips."""
    folder = optimized_folder(cache)
    (folder / "old").touch()         # an inode number can come back: a file in the old folder cannot
    damage(folder)
    sess = resnet.open_session(cache)
    folder = optimized_folder(cache)
    plain = ort.InferenceSession(str(resnet.cached_model(cache)), resnet._session_options(),
                                 providers=["CPUExecutionProvider"])
    probe = [resnet._probe()[0], resnet._probe()[1]]
    same = all(np.array_equal(a, b) for a, b in zip(outputs(plain, probe), outputs(sess, probe)))
    return (same and not (folder / "old").exists()
            and (folder / "stamp").read_text().endswith("\nok\n"))


@pytest.mark.skipif(resnet.machine_key() is None, reason="no CPU features to key an optimized model by")
def test_a_damaged_or_foreign_optimized_model_is_built_again(tmp_path):
    cache = tmp_path / "cache"
    resnet.open_session(cache)

    def foreign_cpu(folder):  # another machine's model: same name (a copied home), another CPU's stamp
        stamp = folder / "stamp"
        stamp.write_text(stamp.read_text().replace(" avx2", " avx512f avx2").replace("flags: ", "flags: avx512f "))

    def foreign_runtime(folder):
        stamp = folder / "stamp"
        stamp.write_text(stamp.read_text().replace("onnxruntime ", "onnxruntime 0.0.1-"))

    def truncated_weights(folder):  # the mapped weights shorter than written: never opened
        data = (folder / "weights.bin").read_bytes()
        (folder / "weights.bin").write_bytes(data[:len(data) // 2])

    def garbled_graph(folder):
        (folder / "model.onnx").write_bytes(b"not an onnx model")

    def no_stamp(folder):
        (folder / "stamp").unlink()

    for damage in (foreign_cpu, foreign_runtime, truncated_weights, garbled_graph, no_stamp):
        assert rebuilt(cache, damage), damage.__name__
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(resnet.machine_key() is None, reason="no CPU features to key an optimized model by")
def test_an_optimized_model_found_unequal_is_not_used_nor_built_again(tmp_path):
    cache = tmp_path / "cache"
    resnet.open_session(cache)
    folder = optimized_folder(cache)
    stamp = folder / "stamp"
    stamp.write_text(stamp.read_text().replace("\nok\n", "\nrejected\n"))
    (folder / "model.onnx").write_bytes(b"would fail if opened")
    sess = resnet.open_session(cache)
    assert stamp.read_text().endswith("\nrejected\n")
    assert (folder / "model.onnx").read_bytes() == b"would fail if opened"
    assert sess.run(["descriptors"], {"chips": resnet._probe()})[0].shape == (2, 128)


@pytest.mark.skipif(resnet.machine_key() is None, reason="no CPU features to key an optimized model by")
def test_two_processes_building_at_once_leave_one_complete_optimized_model(tmp_path):
    cache = tmp_path / "cache"
    resnet.cached_model(cache)
    code = ("import sys; from pathlib import Path; from facescore_cli.ml import resnet; "
            "print(resnet.open_session(Path(sys.argv[1])).run(['descriptors'], {'chips': resnet._probe()})[0].sum())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, text=True,
                              preexec_fn=dies_with_pytest())
             for _ in range(2)]
    sums = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and sums[0] == sums[1]
    folder = optimized_folder(cache)
    assert (folder / "stamp").read_text().endswith("\nok\n")
    assert sorted(p.name for p in cache.iterdir()) == sorted([folder.name, resnet.cached_model(cache).name])
