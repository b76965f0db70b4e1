"""Image intake: every format and mode into an upright RGB array, every bad input a clear error."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facescore_cli import images
from facescore_cli.errors import ImageError


@pytest.fixture(scope="module")
def photo(portrait: Path) -> Image.Image:
    return Image.open(portrait).convert("RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_format_decodes_to_rgb(photo: Image.Image, fmt: str) -> None:
    out = images.decode(encode(photo, fmt))
    assert out.pixels.dtype == np.uint8
    assert out.pixels.shape == (photo.height, photo.width, 3)
    assert out.scale == 1.0
    # lossy formats and GIF's palette change pixels, but the picture is the same
    assert np.abs(out.pixels.astype(int) - np.asarray(photo).astype(int)).mean() < 12


def test_gif_takes_the_first_frame(photo: Image.Image) -> None:
    first = photo
    second = Image.new("RGB", photo.size, (255, 0, 0))
    data = encode(first, "GIF", save_all=True, append_images=[second])
    px = images.decode(data).pixels
    assert px[..., 0].mean() < 200  # not the all-red second frame


@pytest.mark.parametrize("orientation,turn", [(3, 180), (6, 270), (8, 90)])
def test_exif_orientation_is_applied(photo: Image.Image, orientation: int, turn: int) -> None:
    # A camera stores the pixels sideways and says how to turn them: we must undo it.
    stored = photo.rotate(-turn, expand=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = images.decode(encode(stored, "JPEG", quality=95, exif=exif))
    assert (out.width, out.height) == photo.size
    assert np.abs(out.pixels.astype(int) - np.asarray(photo).astype(int)).mean() < 6


def test_alpha_is_flattened_on_white(photo: Image.Image) -> None:
    rgba = photo.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:50, :50, 3] = 0  # a transparent corner
    px = images.decode(encode(Image.fromarray(a), "PNG")).pixels
    assert (px[:50, :50] == 255).all()


def test_cmyk_grayscale_palette_and_16_bit(photo: Image.Image) -> None:
    cmyk = images.decode(encode(photo.convert("CMYK"), "JPEG", quality=95)).pixels
    assert np.abs(cmyk.astype(int) - np.asarray(photo).astype(int)).mean() < 12
    gray = images.decode(encode(photo.convert("L"), "PNG")).pixels
    assert gray.shape[2] == 3 and (gray[..., 0] == gray[..., 1]).all()
    pal = images.decode(encode(photo.convert("P"), "PNG")).pixels
    assert pal.shape == (photo.height, photo.width, 3)
    g16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    px16 = images.decode(encode(Image.fromarray(g16), "PNG")).pixels
    assert np.abs(px16[..., 0].astype(int) - np.asarray(photo.convert("L")).astype(int)).max() <= 1


def test_large_jpeg_is_draft_decoded_with_its_scale(photo: Image.Image) -> None:
    big = photo.resize((4096, 4096))
    out = images.decode(encode(big, "JPEG", quality=85))
    assert out.pixels.shape[1] == 2048 and out.scale == 0.5
    assert (out.width, out.height) == (4096, 4096)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt"),
    ],
)
def test_bad_bytes_raise_one_line_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as info:
        images.decode(data)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_image(photo: Image.Image) -> None:
    data = encode(photo, "PNG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        images.decode(data[: len(data) // 2])


def test_size_and_pixel_caps(photo: Image.Image) -> None:
    data = encode(photo, "JPEG")
    with pytest.raises(ImageError, match="over the .* cap"):
        images.decode(data, max_bytes=len(data) - 1)
    # a decompression bomb: a tiny file that claims a huge canvas
    bomb = encode(Image.new("L", (12000, 12000)), "PNG")
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError, match="decompression bomb"):
        images.decode(bomb)


def test_read_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        images.read_file(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="directory"):
        images.read_file(tmp_path)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    with pytest.raises(ImageError, match="over the"):
        images.read_file(big, max_bytes=1024)
