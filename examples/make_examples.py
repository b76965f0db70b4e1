"""Rebuild examples/ from the OMI dataset: a few portraits and one group photo made from them.

    python examples/make_examples.py ../shared/datasets/omi/images

Deterministic: the same inputs give the same files.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PORTRAITS = ["957", "238", "483", "46", "829"]
GROUP = [("2", 380, 150, 260, 0), ("483", 220, 1000, 330, 8), ("46", 160, 640, 520, -6), ("829", 110, 1300, 240, 12), ("957", 880, 420, 110, -15)]
HERE = Path(__file__).parent


def face_crop(img: Image.Image) -> Image.Image:
    """OMI faces sit in the middle of the frame; a centred crop keeps head and shoulders."""
    w, h = img.size
    return img.crop((int(w * 0.12), int(h * 0.08), int(w * 0.88), int(h * 0.92)))


def main(src: Path) -> None:
    faces = HERE / "faces"
    faces.mkdir(exist_ok=True)
    for stim in PORTRAITS:
        Image.open(src / f"{stim}.jpg").convert("RGB").resize((512, 512), Image.LANCZOS).save(
            faces / f"omi-{stim}.jpg", quality=90)
    rng = np.random.default_rng(7)
    W, H = 1600, 1200
    yy, xx = np.mgrid[0:H, 0:W]
    bg = np.stack([90 + 60 * xx / W, 110 + 40 * yy / H, 140 - 50 * xx / W], axis=2)
    bg += rng.normal(0, 6, bg.shape)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i in range(12):  # furniture-like shapes: texture that is not a face
        x0, y0 = int(rng.integers(0, W - 200)), int(rng.integers(0, H - 200))
        draw.rectangle((x0, y0, x0 + int(rng.integers(40, 300)), y0 + int(rng.integers(20, 120))),
                       fill=tuple(int(v) for v in rng.integers(40, 220, 3)))
    for stim, top, left, size, angle in GROUP:
        face = face_crop(Image.open(src / f"{stim}.jpg").convert("RGB")).resize((size, size), Image.LANCZOS)
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).ellipse((size * 0.04, 0, size * 0.96, size), fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(size / 40))
        face, mask = face.rotate(angle, resample=Image.BICUBIC), mask.rotate(angle, resample=Image.BICUBIC)
        canvas.paste(face, (left, top), mask)
    canvas.save(HERE / "group.jpg", quality=88)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parent.parent / "shared/datasets/omi/images"))
