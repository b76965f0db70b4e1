"""The one result type that travels from the models to the table, the CSV row, the job's
return value and the HTTP response."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ml.types import Face

COLUMNS = ["path", "face", "x", "y", "width", "height", "confidence", "score", "vibe", "rank", "source", "error"]
NO_FACE = "no face found"


def trait_column(trait: str) -> str:
    """The row column of a trait: `trait_` and the name with `_` for `-` (well-groomed ->
    trait_well_groomed), a name pandas attributes and SQL take without quoting."""
    return "trait_" + trait.replace("-", "_")


@dataclass
class FaceResult:
    face: Face
    score: float
    vibe: str
    rank: float
    traits: dict[str, float] = field(default_factory=dict)
    store_rank: float | None = None  # percentile among the faces in the store, when there is one

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "box": list(self.face.box),
            "confidence": round(float(self.face.confidence), 4),
            "score": self.score,
            "vibe": self.vibe,
            "rank": self.rank,
            "traits": dict(self.traits),
            "landmarks": self.face.to_json()["landmarks"],
        }
        if self.store_rank is not None:
            data["store_rank"] = self.store_rank
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "FaceResult":
        face = Face(
            box=tuple(int(v) for v in data["box"]),  # type: ignore[arg-type]
            confidence=float(data.get("confidence", 0.0)),
            landmarks=tuple((float(p[0]), float(p[1])) for p in data.get("landmarks") or ()),
        )
        return cls(
            face=face,
            score=float(data["score"]),
            vibe=str(data.get("vibe", "")),
            rank=float(data.get("rank", 0.0)),
            traits={k: float(v) for k, v in (data.get("traits") or {}).items()},
            store_rank=data.get("store_rank"),
        )


@dataclass
class ImageResult:
    """Everything facescore says about one input file (or one job's image)."""

    path: str
    faces: list[FaceResult] = field(default_factory=list)
    source: str | None = None  # remote | local | simulated; None when nothing could score it
    model: str | None = None
    error: str | None = None  # one line; set for failures and for "no face found"
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    elapsed_ms: float = 0.0
    # Kept for the store, never printed: one vector per face, same order as `faces`.
    embeddings: list[list[float]] | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        """A failure is an input we could not score; an image with no face is a result."""
        return self.error is not None and self.error != NO_FACE

    def rows(self) -> list[dict[str, Any]]:
        base = {"path": self.path, "source": self.source or "", "model": self.model or "",
                "sha256": self.sha256 or "", "ms": round(self.elapsed_ms, 1)}
        if not self.faces:
            empty = dict.fromkeys(COLUMNS, "")
            return [{**empty, **base, "error": self.error or NO_FACE}]
        rows = []
        for i, f in enumerate(self.faces):
            x, y, w, h = f.face.box
            row = {**base, "face": i, "x": x, "y": y, "width": w, "height": h,
                   "confidence": round(float(f.face.confidence), 4), "score": f.score, "vibe": f.vibe,
                   "rank": f.rank, "error": ""}
            if f.store_rank is not None:
                row["store_rank"] = f.store_rank
            row.update({trait_column(k): v for k, v in f.traits.items()})
            rows.append({k: row.get(k, "") for k in COLUMNS} | row)
        return rows

    def to_data(self) -> dict[str, Any]:
        """The original API's `data` object, extended (see CONTRACT.md, the queue)."""
        top = self.faces[0] if self.faces else None
        data: dict[str, Any] = {
            "score": top.score if top else None,
            "vibe": top.vibe if top else None,
            "rank": top.rank if top else None,
            "faces": [f.to_data() for f in self.faces],
            "source": self.source,
            "model": self.model,
        }
        if self.error:
            data["error"] = self.error
        if self.sha256:
            data["sha256"] = self.sha256
        if self.width is not None:
            data["width"], data["height"] = self.width, self.height
        return data

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, **self.to_data()}

    @classmethod
    def from_data(cls, path: str, data: dict[str, Any]) -> "ImageResult":
        return cls(
            path=path,
            faces=[FaceResult.from_data(f) for f in data.get("faces") or []],
            source=data.get("source"),
            model=data.get("model"),
            error=data.get("error"),
            sha256=data.get("sha256"),
            width=data.get("width"),
            height=data.get("height"),
        )
