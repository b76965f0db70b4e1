"""Train and evaluate a scoring head on your own rated faces (`facescore train` / `evaluate`).

The model is the shipped head's kind (see `training/train_head.py`, whose fitting code this
module carries in a form the installed package can import, numpy only): the runtime vector
`embed.embed` returns plus the landmark geometry, standardized (chip statistics weighted by
CHIP_WEIGHT, ResNet band means by BANDS_WEIGHT), then per output a blend of a linear ridge and
an RBF kernel ridge, every hyper-parameter chosen by an inner K-fold CV on the training part only. (The runtime vector
already averages each chip with its mirror image, so mirror rows would add nothing.) The
cross-validated r is nested (the selection is redone inside
each outer fold), so it is an honest estimate for faces like the training ones.

A trained head holds one output, the chosen rating column, which the runtime reports as
`score`; it has no traits. Forbidden attributes (the OMI README's list) are refused as targets.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ml import head as H
from .ml.types import Face

SEED = 0
RIDGE_ALPHAS = np.logspace(0, 4.5, 19)
KRR_ALPHAS = np.logspace(-2.5, 1, 15)
KRR_GAMMA_MULT = np.array([0.125, 0.25, 0.5, 1.0, 2.0])  # x 1/n_features
BLENDS = np.linspace(0.0, 1.0, 11)
INNER_FOLDS = 5
# Standardized chip statistics are multiplied by this (the embedding and geometry by 1). Fixed
# a priori from a non-nested screen (0.35 / 0.5 / 0.7 / 1.0 within 0.001 r of each other), not
# tuned inside the nested CV.
CHIP_WEIGHT = 0.5
# Standardized ResNet band means are multiplied by this: fixed from the screen that chose them
# (0.7 against 0.35 for 'attractive', nested 5-fold CV, two fold seeds; see MODEL_CARD.md).
BANDS_WEIGHT = 0.7
VERSION_PREFIX = "user-ridge-krr-v3"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class UsageError(ValueError):
    """Bad input from the user (exit 2)."""


def is_forbidden(target: str) -> bool:
    return target.strip().lower() in H.FORBIDDEN


def check_target(target: str) -> None:
    if is_forbidden(target):
        raise UsageError(
            f"{target!r} is a protected or sensitive attribute (see the OMI README): "
            "facescore does not train or evaluate predictors of it"
        )


# ---------------------------------------------------------------- ratings files


@dataclass
class Ratings:
    ids: list[str]
    values: np.ndarray  # (n,) the target column
    groups: np.ndarray | None  # (n,) the group column, when asked for


def _num(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def read_ratings(path: Path, target: str, id_column: str | None = None, group_column: str | None = None) -> Ratings:
    """CSV with a header, or whitespace-separated columns (with or without a header; without
    one, the columns are: id, target[, group]) such as SCUT-FBP5500's `filename score` lists."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UsageError(f"{path}: no rows")
    if "," in lines[0]:
        rows = list(csv.reader(lines))
    else:
        rows = [ln.split() for ln in lines]
    first = rows[0]
    headerless = len(first) >= 2 and _num(first[1]) is not None
    if headerless:
        header = [id_column or "id", target] + ([group_column] if group_column else [])
        body = rows
    else:
        header, body = [h.strip() for h in first], rows[1:]
    if target not in header:
        raise UsageError(f"{path}: no column {target!r} (columns: {', '.join(header)})")
    if id_column and id_column in header:
        id_idx = header.index(id_column)
    elif id_column and not headerless:
        raise UsageError(f"{path}: no id column {id_column!r} (columns: {', '.join(header)})")
    else:
        id_idx = header.index("stimulus") if "stimulus" in header else header.index("filename") if "filename" in header else 0
    t_idx = header.index(target)
    g_idx = None
    if group_column:
        if group_column not in header:
            raise UsageError(f"{path}: no group column {group_column!r}")
        g_idx = header.index(group_column)
    ids, vals, groups = [], [], []
    for k, r in enumerate(body):
        if len(r) <= max(id_idx, t_idx, g_idx or 0):
            raise UsageError(f"{path}: row {k + 1} has {len(r)} columns")
        v = _num(r[t_idx])
        if v is None:
            raise UsageError(f"{path}: row {k + 1}: {r[t_idx]!r} is not a number")
        ids.append(r[id_idx].strip())
        vals.append(v)
        if g_idx is not None:
            g = _num(r[g_idx])
            if g is None:
                raise UsageError(f"{path}: row {k + 1}: group value {r[g_idx]!r} is not a number")
            groups.append(g)
    return Ratings(ids, np.array(vals, dtype=np.float64), np.array(groups) if g_idx is not None else None)


def image_path(images_dir: Path, ident: str) -> Path | None:
    """`ident` as a file name in images_dir, or with an image suffix added (OMI stimulus numbers)."""
    p = Path(images_dir) / ident
    if p.is_file():
        return p
    for suf in IMAGE_SUFFIXES:
        q = Path(images_dir) / f"{ident}{suf}"
        if q.is_file():
            return q
    return None


# ---------------------------------------------------------------- features


@dataclass
class Extracted:
    vector: np.ndarray  # the runtime vector, (VECTOR_DIM,)
    face: Face


_CACHE: dict[tuple[str, int, int], Extracted | None] = {}


def extract(path: Path) -> Extracted | None:
    """decode -> detect (largest face) -> embed, as the runtime does; None when no face is found.
    Kept per process, keyed by path, size and mtime (train then evaluate in one run reuses it)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    from .images import decode
    from .ml import detect, embed

    img = decode(path.read_bytes())
    faces = detect.detect(img)
    if not faces:
        _CACHE[key] = None
        return None
    f = faces[0]
    out = Extracted(embed.embed(img, [f])[0].astype(np.float64), f)
    _CACHE[key] = out
    return out


@dataclass
class Dataset:
    ids: list[str]
    x: np.ndarray  # (n, VECTOR_DIM + GEOMETRY_DIM) head input rows
    y: np.ndarray
    groups: np.ndarray | None
    missing: list[str]  # ids without an image file
    no_face: list[str]  # ids whose image had no detected face


def build(images_dir: Path, ratings: Ratings, progress: Callable[[int, int], None] | None = None) -> Dataset:
    keep, vecs, faces, missing, no_face = [], [], [], [], []
    for k, ident in enumerate(ratings.ids):
        p = image_path(images_dir, ident)
        if p is None:
            missing.append(ident)
        else:
            e = extract(p)
            if e is None:
                no_face.append(ident)
            else:
                keep.append(k)
                vecs.append(e.vector)
                faces.append(e.face)
        if progress:
            progress(k + 1, len(ratings.ids))
    if not keep:
        return Dataset([], np.zeros((0, H.VECTOR_DIM + H.GEOMETRY_DIM)), np.zeros(0), None, missing, no_face)
    idx = np.array(keep)
    x = H.features(np.stack(vecs), faces)
    groups = ratings.groups[idx] if ratings.groups is not None else None
    return Dataset([ratings.ids[i] for i in keep], x, ratings.values[idx], groups, missing, no_face)


def faces_from(box: np.ndarray, marks: np.ndarray) -> list[Face]:
    return [
        Face(box=tuple(int(v) for v in b), confidence=1.0, landmarks=tuple((float(px), float(py)) for px, py in m))
        for b, m in zip(box, marks)
    ]


# ---------------------------------------------------------------- fitting (from training/train_head.py)


Splits = Callable[[int, int, int], list[tuple[np.ndarray, np.ndarray]]]  # (n, k, seed) -> folds


def kfold(n: int, k: int, seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled K-fold splits (numpy only; sizes differ by at most one)."""
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    return [(np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i])), np.sort(folds[i])) for i in range(k)]


def column_weights(dim: int) -> np.ndarray:
    """Per-column weights of the head's input rows: 1 for the identity embedding and the
    geometry, CHIP_WEIGHT for the chip statistics, BANDS_WEIGHT for the ResNet band means."""
    w = np.ones(dim)
    w[H.RESNET_DIM:H.RESNET_DIM + H.CHIP_STATS_DIM] = CHIP_WEIGHT
    w[H.RESNET_DIM + H.CHIP_STATS_DIM:H.VECTOR_DIM] = BANDS_WEIGHT
    return w


def sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def standardize(x: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Means and scales that standardize and weight the columns, (x - mean) / scale; `weights`
    default to `column_weights` of the full layout."""
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale / (column_weights(x.shape[1]) if weights is None else weights)


class Grid:
    """Ridge and kernel ridge for every alpha (and gamma) at once, all outputs together."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.ymean = x, y.mean(0)
        yc = y - self.ymean
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        self.ridge_parts = (vt.T, s, u.T @ yc)
        self.gammas = KRR_GAMMA_MULT / x.shape[1]
        self.krr_parts = []
        d2 = sqdist(x, x)
        for g in self.gammas:
            lam, v = np.linalg.eigh(np.exp(-g * d2))
            self.krr_parts.append((v, np.maximum(lam, 0.0), v.T @ yc))

    def ridge_coef(self, alpha: float) -> np.ndarray:
        v, s, uty = self.ridge_parts
        return v @ ((s / (s**2 + alpha))[:, None] * uty)

    def krr_dual(self, gi: int, alpha: float) -> np.ndarray:
        v, lam, vty = self.krr_parts[gi]
        return v @ (vty / (lam + alpha)[:, None])

    def ridge_preds(self, xt: np.ndarray) -> np.ndarray:
        return np.stack([xt @ self.ridge_coef(a) + self.ymean for a in RIDGE_ALPHAS])

    def krr_preds(self, xt: np.ndarray) -> np.ndarray:
        d2 = sqdist(xt, self.x)
        out = []
        for gi, g in enumerate(self.gammas):
            k = np.exp(-g * d2)
            out.append(np.stack([k @ self.krr_dual(gi, a) + self.ymean for a in KRR_ALPHAS]))
        return np.stack(out)


def augmented(x, y, xm, rows):
    if xm is None:
        return x[rows], y[rows]
    return np.vstack([x[rows], xm[rows]]), np.vstack([y[rows], y[rows]])


def select(x: np.ndarray, y: np.ndarray, xm: np.ndarray | None = None, seed: int = SEED, inner: int = INNER_FOLDS,
           weights: np.ndarray | None = None, splits: Splits = kfold) -> dict:
    """Per output: ridge alpha, kernel (gamma, alpha) and blend with the lowest inner-CV MSE.

    `xm`, when given, holds extra rows of `x` (mirror images, say) that join the training part
    of each inner fold but are never scored. `weights` go to `standardize`; `splits(n, k, seed)`
    makes the folds."""
    n, t = y.shape
    rp = np.zeros((len(RIDGE_ALPHAS), n, t))
    kp = np.zeros((len(KRR_GAMMA_MULT), len(KRR_ALPHAS), n, t))
    for tr, te in splits(n, min(inner, n), seed):
        xtr, ytr = augmented(x, y, xm, tr)
        mean, scale = standardize(xtr, weights)
        g = Grid((xtr - mean) / scale, ytr)
        xt = (x[te] - mean) / scale
        rp[:, te] = g.ridge_preds(xt)
        kp[:, :, te] = g.krr_preds(xt)
    ridge_mse = ((rp - y) ** 2).mean(1)
    krr_mse = ((kp - y) ** 2).mean(2)
    ra = ridge_mse.argmin(0)
    kg, ka = np.unravel_index(krr_mse.reshape(-1, t).argmin(0), krr_mse.shape[:2])
    cols = np.arange(t)
    best_r = rp[ra, :, cols].T
    best_k = kp[kg, ka, :, cols].T
    blend_mse = np.stack([(((1 - w) * best_r + w * best_k - y) ** 2).mean(0) for w in BLENDS])
    return {"ridge_alpha": RIDGE_ALPHAS[ra], "krr_gamma_idx": kg, "krr_alpha": KRR_ALPHAS[ka],
            "blend": BLENDS[blend_mse.argmin(0)]}


def fit(x: np.ndarray, y: np.ndarray, hp: dict, weights: np.ndarray | None = None) -> dict:
    """Fit with chosen hyper-parameters: the arrays a Head needs, less its references."""
    mean, scale = standardize(x, weights)
    xs = (x - mean) / scale
    g = Grid(xs, y)
    t = y.shape[1]
    lin = np.stack([g.ridge_coef(hp["ridge_alpha"][j])[:, j] for j in range(t)], 1)
    dual = np.stack([g.krr_dual(int(hp["krr_gamma_idx"][j]), hp["krr_alpha"][j])[:, j] for j in range(t)], 1)
    return {"x_mean": mean, "x_scale": scale, "lin_coef": lin, "lin_bias": g.ymean,
            "krr_support": xs.astype(np.float32), "krr_dual": dual,
            "krr_gamma": g.gammas[hp["krr_gamma_idx"]], "krr_bias": g.ymean, "blend": hp["blend"]}


def predict_raw(params: dict, x: np.ndarray) -> np.ndarray:
    """What Head.raw computes, from feature rows, batched (tests check the two agree)."""
    xs = (x - params["x_mean"]) / params["x_scale"]
    lin = xs @ params["lin_coef"] + params["lin_bias"]
    d2 = sqdist(xs, params["krr_support"].astype(np.float64))
    krr = np.stack([np.exp(-g * d2) @ params["krr_dual"][:, j] for j, g in enumerate(params["krr_gamma"])], 1)
    krr += params["krr_bias"]
    return (1 - params["blend"]) * lin + params["blend"] * krr


def cross_validate(x: np.ndarray, xm: np.ndarray | None, y: np.ndarray, k: int, seed: int = SEED,
                   weights: np.ndarray | None = None, splits: Splits = kfold,
                   inner_seed: int | None = None) -> np.ndarray:
    """Out-of-fold predictions (n, T) of the whole procedure, hyper-parameter selection included
    (its inner folds use `inner_seed`, by default the outer `seed`)."""
    y2 = y.reshape(len(y), -1)
    oof = np.zeros_like(y2, dtype=np.float64)
    for tr, te in splits(len(y2), k, seed):
        hp = select(x[tr], y2[tr], None if xm is None else xm[tr], seed=seed if inner_seed is None else inner_seed,
                    weights=weights, splits=splits)
        xtr, ytr = augmented(x, y2, xm, tr)
        oof[te] = predict_raw(fit(xtr, ytr, hp, weights), x[te])
    return oof


# ---------------------------------------------------------------- statistics


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    den = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def bootstrap_r(pred: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = SEED) -> tuple[float, float]:
    """Percentile 95% interval of Pearson r over resamples of the faces."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    a, b = pred[idx], y[idx]
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rs = (a * b).sum(1) / np.sqrt((a**2).sum(1) * (b**2).sum(1))
    rs = rs[np.isfinite(rs)]
    lo, hi = np.percentile(rs, [2.5, 97.5])
    return float(lo), float(hi)


def terciles(groups: np.ndarray) -> np.ndarray:
    """Each value's tercile of `groups`: 0 (low), 1 (mid) or 2 (high)."""
    return np.digitize(groups, np.quantile(groups, [1 / 3, 2 / 3]), right=True)


def tercile_table(pred: np.ndarray, y: np.ndarray, groups: np.ndarray) -> list[dict]:
    """Per tercile of `groups` (low / mid / high): n, group value range, mean signed error
    (predicted - rated), MAE and r. Aggregates only: nothing per face."""
    which = terciles(groups)
    out = []
    for t, name in enumerate(("low", "mid", "high")):
        m = which == t
        err = pred[m] - y[m]
        out.append({
            "tercile": name, "n": int(m.sum()),
            "range": [round(float(groups[m].min()), 1), round(float(groups[m].max()), 1)] if m.any() else None,
            "mean_signed_error": round(float(err.mean()), 2) if m.any() else None,
            "mae": round(float(np.abs(err).mean()), 2) if m.any() else None,
            "r": round(pearson(pred[m], y[m]), 3) if m.sum() > 2 else None,
        })
    return out


# ---------------------------------------------------------------- training and scoring


@dataclass
class Trained:
    arrays: dict
    oof: np.ndarray  # (n,) out-of-fold predictions
    r: float
    ci: tuple[float, float]
    mae: float
    hp: dict


def train(ds: Dataset, target: str, folds: int = 5, seed: int = SEED) -> Trained:
    check_target(target)
    n = len(ds.y)
    if n < 10:
        raise UsageError(f"only {n} usable faces: need at least 10 to train and cross-validate")
    folds = max(2, min(folds, n // 2))
    y = ds.y.reshape(-1, 1)
    oof = cross_validate(ds.x, None, y, folds, seed)[:, 0]
    hp = select(ds.x, y, seed=seed)
    params = fit(ds.x, y, hp)
    arrays = {
        "version": np.array(f"{VERSION_PREFIX}:{target}"),
        "outputs": np.array([target]),
        "geometry": np.array(1),
        "embedding": np.array(H.EMBEDDING_MODEL),
        **params,
        "ref_scores": np.sort(np.clip(oof, 0.0, 100.0)),
        "ref_mean": np.array([oof.mean()]),
        "ref_sd": np.array([oof.std() or 1.0]),
    }
    arrays = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in arrays.items()}
    return Trained(arrays, oof, pearson(oof, ds.y), bootstrap_r(oof, ds.y), float(np.abs(oof - ds.y).mean()), hp)


def save(arrays: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # np.savez_compressed would add .npz to other names
        np.savez_compressed(fh, **arrays)


def load_arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    outputs = [str(t) for t in np.atleast_1d(arrays["outputs"])]
    if any(is_forbidden(t) for t in outputs):
        raise UsageError(f"{path}: the head outputs a forbidden attribute; refused")
    return arrays


def score(arrays: dict, x: np.ndarray) -> np.ndarray:
    """The head's `score` (first output, clipped to 0-100) for feature rows."""
    params = {k: arrays[k].astype(np.float64) for k in
              ("x_mean", "x_scale", "lin_coef", "lin_bias", "krr_support", "krr_dual", "krr_gamma", "krr_bias", "blend")}
    return np.clip(predict_raw(params, x)[:, 0], 0.0, 100.0)


def evaluate(arrays: dict, ds: Dataset, n_boot: int = 2000) -> dict:
    pred = score(arrays, ds.x)
    lo, hi = bootstrap_r(pred, ds.y, n_boot)
    out = {
        "head": str(arrays["version"]), "n": len(ds.y), "r": round(pearson(pred, ds.y), 4),
        "r_ci95": [round(lo, 4), round(hi, 4)], "mae": round(float(np.abs(pred - ds.y).mean()), 3),
        "missing_images": len(ds.missing), "no_face": len(ds.no_face),
    }
    if ds.groups is not None:
        out["groups"] = tercile_table(pred, ds.y, ds.groups)
    return out

