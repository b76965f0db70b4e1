"""Simulated scoring: deterministic per image (from a hash of its bytes), never a real score.

Used when USE_REAL_ML=false, or as the last link of the fallback chain. Every result it makes
is labelled source=simulated and is never stored. SIMULATED_ML_THRESHOLD is the lowest
confidence the simulated detector reports (the original system's knob; 0.7 by default).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .ratings import TRAITS, VIBE_WORDS
from .types import Face, Prediction

MODEL = "simulated-v1"
_VIBES = tuple(VIBE_WORDS.values())


def simulate(data: bytes, width: int, height: int, threshold: float = 0.7) -> tuple[Face, Prediction]:
    """One plausible face and prediction, the same for the same bytes every time."""
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    side = int(min(width, height) * rng.uniform(0.3, 0.6))
    x = (width - side) // 2
    y = max((height - side) // 3, 0)
    marks = tuple((x + side * fx, y + side * fy) for fx, fy in
                  ((0.70, 0.38), (0.58, 0.38), (0.30, 0.38), (0.42, 0.38), (0.50, 0.62)))
    face = Face(box=(x, y, side, side), confidence=float(rng.uniform(threshold, 1.0)), landmarks=marks)
    score = float(rng.uniform(20.0, 80.0))
    traits = {t: round(float(rng.uniform(20.0, 80.0)), 1) for t in TRAITS}
    traits["age"] = round(float(rng.uniform(18.0, 60.0)), 1)
    prediction = Prediction(
        score=score,
        traits=traits,
        vibe=_VIBES[int(rng.integers(len(_VIBES)))],
        rank=(score - 20.0) / 60.0 * 100.0,  # the simulated scores are uniform on 20-80
    )
    return face, prediction
