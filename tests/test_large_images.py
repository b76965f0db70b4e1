"""Huge images cost about what a working-size photo costs: 7745 px canvases in every format.

Each canvas holds one real face, pasted at a known place. The decode runs in a fresh process
whose peak resident memory (VmHWM) is read back: before images.py reduced in bands, the same
files peaked at 608 MB (RGB PNG) to 1523 MB (16-bit PNG); see docs/images.md for the table.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facescore_cli import images
from facescore_cli.ml.detect import detect

SIDE = 7745  # 60 Mpx, just under the pixel cap: the issue's 7 KB PNG
PASTE_AT = 3000
FACE_PX = 64  # face box width in the canvas; the working size guarantees 12 / scale = 58 px

CHILD = r"""
import json, sys
from facescore_cli import images
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
data = open(sys.argv[1], "rb").read()
base = hwm()
try:
    img = images.decode(data)
    out = {"shape": list(img.pixels.shape), "scale": img.scale, "size": [img.width, img.height]}
except images.ImageError as exc:
    out = {"error": str(exc)}
print(json.dumps({**out, "base_mb": base, "peak_mb": hwm()}))
"""


def decode_in_child(path: Path) -> dict:
    """images.decode in a fresh interpreter; its peak RSS counts the imports and the file too."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def face_tile(portrait: Path) -> tuple[Image.Image, tuple[float, float]]:
    """The portrait scaled so its face box is FACE_PX wide, and that face's centre in the tile."""
    photo = Image.open(portrait).convert("RGB")
    [face] = detect(images.decode(portrait.read_bytes()))
    s = FACE_PX / face.box[2]
    tile = photo.resize((round(photo.width * s), round(photo.height * s)), Image.Resampling.LANCZOS)
    x, y, w, h = face.box
    return tile, ((x + w / 2) * s, (y + h / 2) * s)


def canvas(tile: Image.Image, mode: str) -> Image.Image:
    """A SIDE x SIDE canvas in `mode` with the face tile pasted at PASTE_AT."""
    if mode == "P":
        small = tile.quantize(200)
        img = Image.new("P", (SIDE, SIDE), 0)
        img.putpalette(small.getpalette())
        img.paste(small, (PASTE_AT, PASTE_AT))
    elif mode == "I;16":
        img = Image.new("I;16", (SIDE, SIDE), 20000)
        gray = np.asarray(tile.convert("L")).astype(np.uint16) * 257
        img.paste(Image.fromarray(gray), (PASTE_AT, PASTE_AT))
    else:
        img = Image.new(mode, (SIDE, SIDE), (90, 100, 110, 255)[: len(mode)] if len(mode) > 1 else 100)
        img.paste(tile.convert(mode), (PASTE_AT, PASTE_AT))
    return img


# (name, mode, format, save options, peak MB allowed). Before: 1351, 665, 608, 1294, 1523, 1351,
# 611 and 72 MB. The floor is the native decode: 60 MB a byte per pixel, Pillow keeps RGB in 4.
CASES = [
    ("palette.png", "P", "PNG", {}, 200),
    ("gray.png", "L", "PNG", {}, 200),
    ("rgb.png", "RGB", "PNG", {}, 400),
    ("rgba.png", "RGBA", "PNG", {}, 400),
    ("gray16.png", "I;16", "PNG", {}, 250),
    ("palette.gif", "P", "GIF", {}, 200),
    ("rgb.tif", "RGB", "TIFF", {"compression": "tiff_deflate"}, 400),
    ("rgb.jpg", "RGB", "JPEG", {"quality": 90}, 150),
]


@pytest.fixture(scope="module")
def huge_files(tmp_path_factory: pytest.TempPathFactory, face_tile) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("huge")
    tile, _ = face_tile
    out = {}
    for name, mode, fmt, kw, _limit in CASES:
        out[name] = folder / name
        canvas(tile, mode).save(out[name], fmt, **kw)
    return out


@pytest.mark.parametrize("name,limit_mb", [(c[0], c[4]) for c in CASES])
def test_huge_image_is_reduced_to_the_working_size_within_a_memory_bound(huge_files, name: str,
                                                                           limit_mb: int) -> None:
    got = decode_in_child(huge_files[name])
    assert "error" not in got, got
    assert got["shape"] == [images.WORK_SIDE, images.WORK_SIDE, 3]
    assert got["size"] == [SIDE, SIDE] and got["scale"] == pytest.approx(images.WORK_SIDE / SIDE)
    assert got["peak_mb"] < limit_mb, got


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_face_in_a_huge_canvas_is_found_where_it_was_pasted(huge_files, face_tile, name: str) -> None:
    _, (cx, cy) = face_tile
    faces = detect(images.decode(huge_files[name].read_bytes()))
    assert len(faces) == 1, faces
    x, y, w, h = faces[0].box  # in the original 7745 px canvas
    assert abs(x + w / 2 - (PASTE_AT + cx)) < 0.25 * FACE_PX and abs(y + h / 2 - (PASTE_AT + cy)) < 0.25 * FACE_PX
    assert 0.6 * FACE_PX < w < 1.6 * FACE_PX


def test_huge_webp_is_refused_before_decoding(tmp_path: Path) -> None:
    # Pillow decodes WebP only whole, through ~16 bytes a pixel: 950 MB at this size.
    path = tmp_path / "huge.webp"
    Image.new("RGB", (SIDE, SIDE), (90, 100, 110)).save(path, "WEBP", quality=50)
    got = decode_in_child(path)
    assert "over the 16,000,000 pixel cap for WebP" in got["error"]
    assert got["peak_mb"] < 200


def test_webp_at_its_cap_is_reduced_within_the_memory_bound(tmp_path: Path, face_tile) -> None:
    path = tmp_path / "big.webp"
    side = 4000  # 16 Mpx
    img = Image.new("RGB", (side, side), (90, 100, 110))
    img.paste(face_tile[0], (1500, 1500))
    img.save(path, "WEBP", quality=80)
    got = decode_in_child(path)
    assert got["shape"] == [images.WORK_SIDE, images.WORK_SIDE, 3]
    assert got["peak_mb"] < 400, got


def test_exif_orientation_of_a_huge_jpeg_is_applied_after_reducing(face_tile, tmp_path: Path) -> None:
    upright = Image.new("RGB", (4000, SIDE), (90, 100, 110))
    upright.paste(face_tile[0], (1000, PASTE_AT))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter counter-clockwise; the viewer turns it back
    path = tmp_path / "sideways.jpg"
    upright.rotate(90, expand=True).save(path, "JPEG", quality=90, exif=exif)
    out = images.decode(path.read_bytes())
    assert (out.width, out.height) == (4000, SIDE)
    assert out.pixels.shape == (images.WORK_SIDE, round(4000 * images.WORK_SIDE / SIDE), 3)
    [face] = detect(out)
    _, (cx, cy) = face_tile
    x, y, w, h = face.box
    assert abs(x + w / 2 - (1000 + cx)) < 0.25 * FACE_PX and abs(y + h / 2 - (PASTE_AT + cy)) < 0.25 * FACE_PX


def test_score_cli_scores_a_huge_png(huge_files, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESCORE_", "FACE_", "REDIS", "QDRANT"))}
    env.update(FACESCORE_HOME=str(tmp_path / "home"), FACESCORE_VIA="local")
    proc = subprocess.run([sys.executable, "-m", "facescore_cli", "score", str(huge_files["palette.png"]), "--json",
                           "--no-store"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["source"] == "local" and len(row["faces"]) == 1 and 0 <= row["score"] <= 100
