"""Image intake: every format and mode into an upright RGB array, every bad input a clear error."""
from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

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


def test_large_jpeg_is_draft_decoded_to_the_working_size(photo: Image.Image) -> None:
    big = photo.resize((4096, 4096))
    out = images.decode(encode(big, "JPEG", quality=85))
    assert out.pixels.shape == (images.WORK_SIDE, images.WORK_SIDE, 3)
    assert out.scale == images.WORK_SIDE / 4096 and (out.width, out.height) == (4096, 4096)


def test_omi_faces_decode_exactly_as_pillow_does(omi_dir: Path) -> None:
    # The scoring head was trained on these pixels: normal sizes must not move by one bit.
    for path in sorted((omi_dir / "images").glob("*.jpg"))[::40]:
        out = images.decode(path.read_bytes())
        with Image.open(path) as img:
            assert np.array_equal(out.pixels, np.asarray(img.convert("RGB"))), path.name
        assert out.scale == 1.0


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_exactly_pillows_flattening(photo: Image.Image, fmt: str) -> None:
    pal = photo.quantize(64)
    data = encode(pal, fmt, transparency=5)
    with Image.open(io.BytesIO(data)) as img:
        rgba = img.convert("RGBA")
    want = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    got = images.decode(data).pixels
    assert np.array_equal(got, np.asarray(want))
    assert (got[np.asarray(pal) == 5] == 255).all()  # the transparent index is white


def test_16_bit_is_exactly_the_scaled_value(photo: Image.Image) -> None:
    g16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 251)
    px = images.decode(encode(Image.fromarray(g16), "PNG")).pixels
    want = np.clip(g16 / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(px[..., 0], want) and np.array_equal(px[..., 2], want)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(photo: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo.resize((300, 200)), "PNG", exif=exif)
    with Image.open(io.BytesIO(data)) as img:
        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert np.array_equal(images.decode(data).pixels, want)


def test_working_size_starts_above_twice_its_side(photo: Image.Image) -> None:
    edge = 2 * images.WORK_SIDE
    whole = images.decode(encode(photo.resize((edge, 900)), "PNG"))
    assert whole.pixels.shape == (900, edge, 3) and whole.scale == 1.0
    reduced = images.decode(encode(photo.resize((edge + 1, 900)), "PNG"))
    assert reduced.pixels.shape == (round(900 * images.WORK_SIDE / (edge + 1)), images.WORK_SIDE, 3)
    assert reduced.scale == images.WORK_SIDE / (edge + 1) and (reduced.width, reduced.height) == (edge + 1, 900)
    # the reduced picture is the same picture
    want = np.asarray(photo.resize((edge + 1, 900)).resize(reduced.pixels.shape[1::-1], Image.Resampling.BOX))
    assert np.abs(reduced.pixels.astype(int) - want.astype(int)).mean() < 3


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "1", "CMYK"])
def test_reduced_modes_keep_their_picture(photo: Image.Image, mode: str) -> None:
    big = photo.resize((4000, 3000))
    if mode == "I;16":
        src = Image.fromarray(np.asarray(big.convert("L")).astype(np.uint16) * 257)
    elif mode in ("RGBA", "LA"):
        a = np.asarray(big.convert("RGBA")).copy()
        a[:, :2000, 3] = 0  # the left half transparent: white once flattened
        src = Image.fromarray(a).convert(mode)
    else:
        src = big.convert(mode)
    out = images.decode(encode(src, "TIFF", compression="tiff_deflate") if mode == "CMYK" else encode(src, "PNG"))
    assert out.pixels.shape == (1200, images.WORK_SIDE, 3)
    plain = np.asarray(big.convert("L" if mode in ("I;16", "LA") else "RGB").convert("RGB").resize((1600, 1200)))
    left, right = out.pixels[:, :790].astype(int), out.pixels[:, 810:].astype(int)
    if mode in ("RGBA", "LA"):
        assert (left >= 254).all()
    else:
        assert np.abs(left - plain[:, :790]).mean() < (25 if mode == "1" else 6)
    assert np.abs(right - plain[:, 810:]).mean() < (25 if mode == "1" else 6)


def test_webp_has_a_lower_pixel_cap(photo: Image.Image) -> None:
    assert images.decode(encode(photo.resize((4000, 4000)), "WEBP")).pixels.shape[1] == images.WORK_SIDE
    with pytest.raises(ImageError, match="over the 16,000,000 pixel cap for WebP"):
        images.decode(encode(Image.new("RGB", (4001, 4000)), "WEBP"))


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


def _in_thread(call, timeout_s: float = 20.0):
    """call() in a daemon thread: its result or exception, or AssertionError if it blocks."""
    out: list = []

    def run() -> None:
        try:
            out.append(("ok", call()))
        except BaseException as exc:  # noqa: BLE001 (handed back to the test)
            out.append(("raised", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout_s)
    assert out, f"still blocked after {timeout_s} s"
    return out[0]


def test_pipes_and_devices_are_read_up_to_the_cap_and_never_block(tmp_path: Path, portrait: Path) -> None:
    """Not regular files: no size to check first. /dev/zero is endless (it ran the process out
    of memory), a FIFO nobody writes to blocked its reader for ever (a *.jpg FIFO in a folder held
    a scoring process until its time limit); a pipe with a writer (bash's <(...)) is read whole."""
    # In a process of its own under a memory limit: the old reader would take all there is.
    probe = ("from pathlib import Path; from facescore_cli import images\n"
             "try:\n    images.read_file(Path('/dev/zero'), max_bytes=3 * 1024 * 1024)\n"
             "except images.ImageError as exc:\n    print(exc)")
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # noqa: E731
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert proc.stdout.strip() == "file is over the 3.0 MB cap (read until there)", proc.stderr[-300:]
    kind, data = _in_thread(lambda: images.read_file(Path("/dev/null")))
    assert (kind, data) == ("ok", b"")  # decode() says "empty file"

    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    kind, exc = _in_thread(lambda: images.read_file(fifo))
    assert kind == "raised" and str(exc) == "a named pipe (FIFO) with nothing written to it"

    photo = portrait.read_bytes()
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (time.sleep(0.3), os.write(w, photo[:1000]), time.sleep(0.3),
                                              os.write(w, photo[1000:]), os.close(w)), daemon=True)
    writer.start()
    try:  # /proc/self/fd/N: the pipe's read end, as bash hands <(...) over; its bytes come late
        kind, data = _in_thread(lambda: images.read_file(Path(f"/proc/self/fd/{r}")))
    finally:
        writer.join(10)
        os.close(r)
    assert kind == "ok" and data == photo
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, photo), os.close(w)), daemon=True)
    writer.start()
    try:
        kind, exc = _in_thread(lambda: images.read_file(Path(f"/proc/self/fd/{r}"), max_bytes=len(photo) - 1))
    finally:
        writer.join(10)
        os.close(r)
    assert kind == "raised" and "over the" in str(exc)
