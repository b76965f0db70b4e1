"""(embeddings, faces) -> score, traits, vibe, rank: the scoring head, numpy only.

The head is a small `.npz` file (`weights/omi-head.npz`, made by `training/train_head.py`)
trained on the OMI dataset's mean human ratings (CC BY-NC-SA 4.0, see `weights/README.md`).

Input: one vector per face as `embed.embed` returns it (`VECTOR_DIM` = 624: the 128-d dlib
ResNet embedding of the aligned chip, 112 colour and texture statistics of the same chip (see
`features.chip_stats`) and 384 band means of the ResNet's third stage, averaged over the chip
and its mirror image) plus the detected `Face`, whose five landmarks give a few scale- and
mirror-invariant proportions (eye widths, eye gap, nose drop, yaw). Features are standardized
with the training means and scales and weighted per group (the chip statistics and band means
count for less in the kernel's distance than the embedding: the weights are folded into the
stored scales), then each output is a blend of a linear ridge model and an RBF kernel ridge
model whose support vectors are the 800 training faces.

- `score`: the predicted mean 'attractive' rating (0-100 scale of the raters), clipped to 0-100.
- `traits`: the predicted mean rating of each allowed trait (`TRAITS`), clipped to 0-100
  (for `age` this is the raters' 0-100 age impression, not years).
- `rank`: the percentile of `score` in the reference population, the 800 OMI training faces
  scored out-of-fold (each by a head that never saw it): 100 x (number of reference scores
  strictly below + half the number equal) / 800. So 50 is a typical OMI face, 90 beats 9 in 10.
- `vibe`: one word from the trait profile. Each trait in `VIBE_WORDS` gets a z-score against the
  reference population (the mean and standard deviation of the out-of-fold predictions for the
  800 OMI faces); the vibe is the word of the trait with the highest z-score, ties going to the
  trait listed first:

      happy -> cheerful, outgoing -> outgoing, smart -> smart, trustworthy -> trustworthy,
      dominant -> bold, cute -> cute, well-groomed -> polished, alert -> alert,
      memorable -> striking, smug -> smug, dorky -> quirky

The bundled head outputs 'attractive' and the allowed traits. A head trained with `facescore
train` holds one output, the user's chosen rating column, reported as `score` (no traits, an
empty vibe). A head file holding any other set of outputs, or any FORBIDDEN attribute, is refused
at load time.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import resnet
from .features import CHIP_STATS_DIM
from .ratings import FORBIDDEN, OUTPUTS, SCORE_TARGET, TRAITS, VIBE_WORDS  # noqa: F401 (also read as head.*)
from .types import Face, Prediction

# The layout of embed.embed's vector, defined here because embed imports dlib and the head stays
# numpy only (resnet and features import numpy alone).
RESNET_DIM = resnet.DIM
BANDS_DIM = resnet.BANDS_DIM
VECTOR_DIM = RESNET_DIM + CHIP_STATS_DIM + BANDS_DIM
GEOMETRY_DIM = 6
# The vector layout `embed.embed` returns (= models.EMBEDDING_MODEL). A head file records the
# layout it was trained on; one trained on another layout is refused (retrain it).
EMBEDDING_MODEL = "dlib_face_recognition_resnet_model_v1+chip_stats_v1+resnet_bands_v1+flip_avg"
DEFAULT_PATH = Path(__file__).parent / "weights" / "omi-head.npz"


def face_geometry(faces: list[Face]) -> np.ndarray:
    """(n, 6) proportions from dlib's five landmarks, in units of the distance between the eye
    centres, so they ignore scale and roll; symmetric ones so a mirrored face gives the same."""
    out = np.zeros((len(faces), GEOMETRY_DIM), dtype=np.float64)
    for i, face in enumerate(faces):
        p = np.asarray(face.landmarks, dtype=np.float64)  # eye A outer, inner; eye B outer, inner; nose
        a, b = p[0:2].mean(0), p[2:4].mean(0)
        io = max(float(np.linalg.norm(a - b)), 1e-6)
        ux = (a - b) / io  # unit vector along the eyes
        uy = np.array([-ux[1], ux[0]])
        wa, wb = np.linalg.norm(p[0] - p[1]) / io, np.linalg.norm(p[2] - p[3]) / io
        nose = p[4] - (a + b) / 2
        out[i] = (
            wa + wb,
            abs(wa - wb),
            np.linalg.norm(p[1] - p[3]) / io,  # gap between the inner corners
            abs(float(nose @ uy)) / io,  # nose drop below the eye line
            abs(float(nose @ ux)) / io,  # nose off the midline: yaw
            np.linalg.norm(p[0] - p[2]) / io,  # outer corner span
        )
    return out


def features(embeddings: np.ndarray, faces: list[Face], *, geometry: bool = True, dim: int = VECTOR_DIM) -> np.ndarray:
    """The head's raw input row per face: the vector from `embed`, then (optionally) the geometry."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise ValueError(f"embeddings must be (n, {dim}) vectors from embed.embed, got {emb.shape}")
    if len(faces) != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {len(faces)} faces")
    return np.hstack([emb, face_geometry(faces)]) if geometry else emb


def percentile(sorted_ref: np.ndarray, values: np.ndarray) -> np.ndarray:
    """100 x (reference values strictly below + half of those equal) / reference size."""
    below = np.searchsorted(sorted_ref, values, side="left")
    upto = np.searchsorted(sorted_ref, values, side="right")
    return 100.0 * (below + 0.5 * (upto - below)) / len(sorted_ref)


class Head:
    """A trained scoring head; `predict` maps embeddings plus faces to predictions."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        outputs = tuple(str(t) for t in arrays["outputs"])
        single = len(outputs) == 1 and outputs[0].strip().lower() not in FORBIDDEN
        if outputs != OUTPUTS and not single:
            raise ValueError(f"head file outputs {outputs}, expected exactly {OUTPUTS} or one allowed score column")
        self.outputs = outputs
        self._traits = outputs[1:]
        self.version = str(arrays["version"])
        self._geometry = bool(arrays["geometry"])
        self._mean = arrays["x_mean"].astype(np.float64)
        self._scale = arrays["x_scale"].astype(np.float64)  # training SD / group weight
        self._dim = len(self._mean) - (GEOMETRY_DIM if self._geometry else 0)
        if self._dim != VECTOR_DIM:
            raise ValueError(f"head file takes {self._dim}-d vectors, embed.embed gives {VECTOR_DIM}: retrain it")
        layout = str(arrays["embedding"]) if "embedding" in arrays else "the pre-flip_avg layout"
        if layout != EMBEDDING_MODEL:
            raise ValueError(f"head file was trained on {layout} vectors, embed.embed gives {EMBEDDING_MODEL}: retrain it")
        self._lin_coef = arrays["lin_coef"].astype(np.float64)  # (d, T)
        self._lin_bias = arrays["lin_bias"].astype(np.float64)  # (T,)
        self._sv = arrays["krr_support"].astype(np.float64)  # (m, d), standardized
        self._sv_sq = (self._sv**2).sum(1)
        self._dual = arrays["krr_dual"].astype(np.float64)  # (m, T)
        self._gamma = arrays["krr_gamma"].astype(np.float64)  # (T,)
        self._krr_bias = arrays["krr_bias"].astype(np.float64)  # (T,)
        # (gamma, its outputs, their dual columns), made once rather than for every face
        self._gamma_groups = [(g, self._gamma == g, np.ascontiguousarray(self._dual[:, self._gamma == g]))
                              for g in sorted(set(self._gamma.tolist()))]  # np.unique's first call imports ~50 ms
        self._blend = arrays["blend"].astype(np.float64)  # (T,) weight of the kernel model
        self._ref_scores = np.sort(arrays["ref_scores"].astype(np.float64))
        self._ref_mean = arrays["ref_mean"].astype(np.float64)  # (T,)
        self._ref_sd = arrays["ref_sd"].astype(np.float64)  # (T,)
        # The vibe needs the full trait profile: a single-output head has none (vibe "").
        full = outputs == OUTPUTS
        self._vibe_words = list(VIBE_WORDS.values()) if full else []
        self._vibe_idx = np.array([OUTPUTS.index(t) for t in VIBE_WORDS] if full else [], dtype=int)

    def raw(self, embeddings: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(n, len(self.outputs)) unclipped predicted ratings, columns in `self.outputs` order."""
        x = (features(embeddings, faces, geometry=self._geometry, dim=self._dim) - self._mean) / self._scale
        # Row by row: BLAS sums a batch in a different order than a single row, and a face's
        # score must not depend on which other faces share its image.
        return np.stack([self._row(r) for r in x]) if len(x) else np.zeros((0, len(self.outputs)))

    def _row(self, x: np.ndarray) -> np.ndarray:
        # einsum, not @: these products are large enough (800 x 630) for OpenBLAS to start its
        # own threads, which spin against the other scoring processes (batch was 30% slower on
        # 2 cores); einsum's own loop stays on this thread.
        linear = np.einsum("i,ij->j", x, self._lin_coef) + self._lin_bias
        d2 = np.maximum((x**2).sum() + self._sv_sq - 2.0 * np.einsum("ij,j->i", self._sv, x), 0.0)
        kernel = np.empty_like(linear)
        # One gamma per output, few distinct ones: compute each kernel row once.
        for g, cols, dual in self._gamma_groups:
            kernel[cols] = np.einsum("i,ij->j", np.exp(-g * d2), dual) + self._krr_bias[cols]
        return (1.0 - self._blend) * linear + self._blend * kernel

    def predict(self, embeddings: np.ndarray, faces: list[Face]) -> list[Prediction]:
        raw = self.raw(embeddings, faces)
        clipped = np.clip(raw, 0.0, 100.0)
        ranks = percentile(self._ref_scores, clipped[:, 0])
        z = (raw[:, self._vibe_idx] - self._ref_mean[self._vibe_idx]) / self._ref_sd[self._vibe_idx]
        out = []
        for row, rank, zrow in zip(clipped, ranks, z):
            out.append(
                Prediction(
                    score=float(row[0]),
                    traits={t: round(float(v), 1) for t, v in zip(self._traits, row[1:])},
                    # argmax takes the first of equal values; a single-output head has no vibe
                    vibe=self._vibe_words[int(np.argmax(zrow))] if len(zrow) else "",
                    rank=float(rank),
                )
            )
        return out


def load_head(path: Path | None = None) -> Head:
    """The head in `path`, or the bundled one; loaded once per path and process."""
    # One cache key per file: lru_cache alone keys `load_head()` and `load_head(None)` apart, so a
    # warm-up call without arguments loaded the head a second time (~17 ms) at the first image.
    return _load_head(Path(path or DEFAULT_PATH).resolve())


@functools.lru_cache(maxsize=8)
def _load_head(path: Path) -> Head:
    with np.load(path, allow_pickle=False) as data:
        return Head({k: data[k] for k in data.files})
