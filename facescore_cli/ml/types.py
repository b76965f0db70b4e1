"""Data that travels between the ML stages."""
from __future__ import annotations

from dataclasses import dataclass, field

# The narrowest face, in an image's pixels, that detection searches for unless told otherwise
# (the setting FACESCORE_MIN_FACE, the option --min-face).
DEFAULT_MIN_FACE = 40
# The least it can be told: MTCNN's P-Net looks at 12x12 windows (mtcnn.PNET_CELL).
SMALLEST_MIN_FACE = 12
# The most: wider than any image decode accepts (60 Mpx), so only a mistake or an attack asks
# for more (and a huge number must not reach float arithmetic).
LARGEST_MIN_FACE = 100_000


@dataclass(frozen=True)
class Face:
    """A detected face in pixels of the upright, full-size image."""

    box: tuple[int, int, int, int]  # x, y, width, height
    confidence: float  # 0-1
    landmarks: tuple[tuple[float, float], ...]  # dlib's 5 points: eye corners x4, nose base

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def to_json(self) -> dict:
        return {
            "box": list(self.box),
            "confidence": round(float(self.confidence), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }

    @classmethod
    def from_json(cls, obj: dict) -> "Face":
        box = obj["box"]
        marks = obj.get("landmarks") or []
        if len(box) != 4 or len(marks) != 5:
            raise ValueError("a face needs a 4-number box and 5 landmarks")
        return cls(
            box=tuple(int(round(float(v))) for v in box),  # type: ignore[arg-type]
            confidence=float(obj.get("confidence", 1.0)),
            landmarks=tuple((float(p[0]), float(p[1])) for p in marks),
        )


@dataclass(frozen=True)
class Prediction:
    """What the scoring head says about one face."""

    score: float  # 0-100, predicted mean 'attractive' rating
    traits: dict[str, float] = field(default_factory=dict)  # allowed traits only, 0-100
    vibe: str = ""
    rank: float = 0.0  # percentile of score in the head's reference population
