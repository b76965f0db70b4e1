"""Train the scoring head on OMI and write facescore_cli/ml/weights/omi-head.npz.

    python training/train_head.py                  # measure (5- and 10-fold nested CV) and write
    python training/train_head.py --seeds 3        # ... each over 3 fold seeds
    python training/train_head.py --no-chip-stats --no-write   # the embedding + geometry only
    python training/train_head.py --no-geometry --no-write

Features come from the runtime pipeline (training/features.py, cached in training/cache/): the
vector `embed.embed` returns (128-d ResNet embedding + 112 chip colour/texture statistics + 384
ResNet band means) and the landmark geometry. Every output (attractive + the allowed traits;
nothing else is read from ratings.csv) is a blend of a linear ridge and an RBF kernel ridge on
standardized features, the chip statistics weighted by CHIP_WEIGHT and the band means by
BANDS_WEIGHT (they count for less than the embedding in the kernel's distance and are shrunk
harder by the ridge; the weights are folded into the stored scales). The model maths is
facescore_cli.training's, with scikit-learn's fold splits. Hyper-parameters
(ridge alpha, kernel alpha and gamma, blend weight) are chosen per output by an inner 5-fold
CV on the training part only, so the outer-fold r figures are honest (nested CV). The written
head is selected and fitted the same way on all 800 faces; its reference population (for rank
and vibe z-scores) is the 10-fold out-of-fold predictions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

from facescore_cli.ml import head as H  # noqa: E402
# The model maths is shared with `facescore train`; this script adds the OMI specifics
# (15 outputs, scikit-learn's fold splits, the bundled head's file layout).
from facescore_cli.training import (  # noqa: E402
    BANDS_WEIGHT, CHIP_WEIGHT, KRR_GAMMA_MULT, SEED, augmented, bootstrap_r, cross_validate, faces_from, fit, pearson,
    select,
)
from features import load, ratings, runtime_vectors  # noqa: E402

VERSION = "omi-ridge-krr-v4"


def sk_splits(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's shuffled K-fold: the folds the shipped head's figures were measured on."""
    return list(KFold(k, shuffle=True, random_state=seed).split(np.arange(n)))


def head_arrays(params: dict, geometry: bool) -> dict:
    return {
        "version": np.array(VERSION),
        "outputs": np.array(H.OUTPUTS),
        "geometry": np.array(int(geometry)),
        "embedding": np.array(H.EMBEDDING_MODEL),
        **params,
        # Refs are filled by the caller; placeholders so a Head can be built for CV predictions.
        "ref_scores": np.array([50.0]),
        "ref_mean": np.zeros(len(H.OUTPUTS)),
        "ref_sd": np.ones(len(H.OUTPUTS)),
    }


def pearson_per_output(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column of `pred` with the same column of `y`."""
    return np.array([pearson(pred[:, j], y[:, j]) for j in range(y.shape[1])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedding", choices=("chip", "flip-avg"), default="flip-avg",
                    help="what the runtime embed returns: the mean of the chip's and its mirror "
                         "image's vectors (flip-avg, default) or the chip's vector alone (chip)")
    ap.add_argument("--no-augment", action="store_true",
                    help="with --embedding chip: do not add the mirror images as extra training rows")
    ap.add_argument("--no-geometry", action="store_true", help="no landmark proportions")
    ap.add_argument("--no-chip-stats", action="store_true",
                    help="measure without the chip statistics (the ResNet embedding only); implies --no-write")
    ap.add_argument("--chip-weight", type=float, default=CHIP_WEIGHT, help="weight of the chip statistics")
    ap.add_argument("--no-bands", action="store_true",
                    help="measure without the ResNet band means (as head v3); implies --no-write")
    ap.add_argument("--bands-weight", type=float, default=BANDS_WEIGHT, help="weight of the ResNet band means")
    ap.add_argument("--seeds", type=int, default=1, help="repeat the 5- and 10-fold CV over this many fold seeds")
    ap.add_argument("--no-write", action="store_true", help="measure only")
    ap.add_argument("--out", type=Path, default=H.DEFAULT_PATH)
    args = ap.parse_args()
    geometry = not args.no_geometry
    stats = not args.no_chip_stats
    bands = not args.no_bands

    data = load()
    stim, names, vals = ratings()
    # Only the allowed outputs are ever read from the ratings.
    y = np.stack([vals[:, names.index(t)] for t in H.OUTPUTS], 1)
    keep = data["found"]
    if not keep.all():
        print(f"no face found in {int((~keep).sum())} images; left out", file=sys.stderr)
    y = y[keep]
    faces = faces_from(data["box"][keep], data["landmarks"][keep])
    # columns of the runtime vector: [ResNet embedding | chip statistics | band means]
    n_stats = H.CHIP_STATS_DIM if stats else 0
    cols = np.r_[0:H.RESNET_DIM, H.RESNET_DIM:H.RESNET_DIM + n_stats,
                 (H.RESNET_DIM + H.CHIP_STATS_DIM if bands else H.VECTOR_DIM):H.VECTOR_DIM]
    dim = len(cols)
    chip = data["emb"][keep][:, cols].astype(np.float64)
    mirror = data["emb_flip"][keep][:, cols].astype(np.float64)
    if args.embedding == "flip-avg":
        avg = runtime_vectors(data)[keep][:, cols]  # the rows equal what `embed` returns
        x, xm = H.features(avg.astype(np.float64), faces, geometry=geometry, dim=dim), None
    else:
        # The landmark proportions are mirror-symmetric, so the mirror row keeps the face's.
        x = H.features(chip, faces, geometry=geometry, dim=dim)
        xm = None if args.no_augment else H.features(mirror, faces, geometry=geometry, dim=dim)
    # per-column weights of this layout (the geometry keeps 1)
    weights = np.ones(x.shape[1])
    weights[H.RESNET_DIM:H.RESNET_DIM + n_stats] = args.chip_weight
    weights[H.RESNET_DIM + n_stats:dim] = args.bands_weight
    print(f"{len(y)} faces; embedding: {args.embedding}; mirror rows added in training: "
          f"{'yes' if xm is not None else 'no'}; geometry: {'yes' if geometry else 'no'}; "
          f"chip statistics: {f'yes, weight {args.chip_weight:g}' if stats else 'no'}; "
          f"ResNet band means: {f'yes, weight {args.bands_weight:g}' if bands else 'no'}")

    r, oofs = {}, {}
    for k in (5, 10):
        for seed in range(args.seeds):
            t0 = time.time()
            # inner folds always with SEED, as when the shipped head's figures were measured
            oofs[k, seed] = cross_validate(x, xm, y, k, seed=seed, weights=weights, splits=sk_splits, inner_seed=SEED)
            r[k, seed] = pearson_per_output(oofs[k, seed], y)
            print(f"{k}-fold nested CV, fold seed {seed}: r(attractive) = {r[k, seed][0]:.4f}"
                  f" ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    seeds = range(args.seeds)
    r5, r10 = np.mean([r[5, s] for s in seeds], 0), np.mean([r[10, s] for s in seeds], 0)
    print("\nnested cross-validated Pearson r" + (f", mean over {args.seeds} fold seeds" if args.seeds > 1 else ", fold seed 0"))
    # 95% interval: bootstrap over the faces of the 10-fold, fold seed 0 out-of-fold predictions
    print(f"  {'output':13s} {'5-fold':>7s} {'10-fold':>7s} {'mean':>7s}   95% CI (10-fold, seed 0)")
    for j, name in enumerate(H.OUTPUTS):
        lo, hi = bootstrap_r(oofs[10, 0][:, j], y[:, j])
        print(f"  {name:13s} {r5[j]:7.4f} {r10[j]:7.4f} {(r5[j] + r10[j]) / 2:7.4f}   {lo:.3f}-{hi:.3f}")

    if args.no_write or not stats or not bands:
        return
    hp = select(x, y, xm, weights=weights, splits=sk_splits)
    xtr, ytr = augmented(x, y, xm, np.arange(len(y)))
    arrays = head_arrays(fit(xtr, ytr, hp, weights), geometry)
    ref = oofs[10, 0]
    arrays["ref_scores"] = np.sort(np.clip(ref[:, 0], 0.0, 100.0))
    arrays["ref_mean"] = ref.mean(0)
    arrays["ref_sd"] = ref.std(0)
    small = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in arrays.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **small)
    print("\nchosen per output: ridge alpha, kernel gamma x d, kernel alpha, kernel blend weight")
    for j, name in enumerate(H.OUTPUTS):
        print(f"  {name:13s} {hp['ridge_alpha'][j]:8.1f} {KRR_GAMMA_MULT[hp['krr_gamma_idx'][j]]:6.3f}"
              f" {hp['krr_alpha'][j]:7.3f} {hp['blend'][j]:4.1f}")
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB), version {VERSION}")


if __name__ == "__main__":
    main()
