"""features.chip_stats feeds the trained head, so its numbers must not move: the faster
lab_planes and _laplacian must give, bit for bit, what the plain formulas give."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from facescore_cli.ml import features


def plain_lab(rgb: np.ndarray) -> np.ndarray:
    r, g, b = features._LINEAR[np.moveaxis(rgb, -1, 0)]
    f = []
    for row in features._RGB_TO_XYZ:
        t = row[0] * r + row[1] * g + row[2] * b
        ft = np.cbrt(t)
        low = t <= 216 / 24389
        ft[low] = (24389 / 27 * t[low] + 16) / 116
        f.append(ft)
    fx, fy, fz = f
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)])


def plain_laplacian(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[1:-1, 1:-1] = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return out


def chips(omi_dir: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    files = sorted((omi_dir / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:40]
    out = [np.asarray(Image.open(f).convert("RGB").resize((150, 150))) for f in files]
    out += [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(5)]
    out += [np.zeros((150, 150, 3), np.uint8), np.full((150, 150, 3), 4, np.uint8)]  # dark: the linear branch
    return out


def test_lab_and_laplacian_equal_the_plain_formulas_bit_for_bit(omi_dir: Path) -> None:
    for chip in chips(omi_dir):
        lab = features.lab_planes(chip)
        assert lab.tobytes() == plain_lab(chip).tobytes()
        for plane in lab:
            assert features._laplacian(plane).tobytes() == plain_laplacian(plane).tobytes()
        into = np.full((3, 150, 150), np.nan)
        assert features.lab_planes(chip, out=into) is into and into.tobytes() == lab.tobytes()


def test_a_regions_colour_stats_are_its_plain_lab_means(omi_dir: Path) -> None:
    chip = chips(omi_dir)[0]
    stats = features.chip_stats(chip)
    assert stats.shape == (features.CHIP_STATS_DIM,) and np.isfinite(stats).all()
    lab = plain_lab(chip)
    # the first region's colour means are the plain means of L, a, b over its rectangles
    rects = next(iter(features.REGIONS.values()))
    area = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in rects)
    want = sum(lab[:, y0:y1, x0:x1].sum((1, 2)) for y0, y1, x0, x1 in rects) / area
    assert np.allclose(stats[:3], want, rtol=1e-12)
