"""Fairness report for the 'attractive' score on the 800 OMI faces, from out-of-fold predictions.

    python bench/fairness_report.py [--folds 10] [--seed 0] [--json]

Features come from the training cache (training/features.py: the runtime pipeline); each face is
predicted by a head fitted (hyper-parameters selected by inner CV, as for the shipped head) on the
other folds only, so the errors are those on unseen faces. The faces are then split into terciles
of the raters' mean perceived-gender rating (OMI 'gender', 0 = rated feminine, 100 = masculine)
and of the mean skin-colour rating (OMI 'skin-color', 0 = rated light, 100 = dark), and the table
gives per tercile: n, the rating range, mean signed error (predicted - rated 'attractive', with a
bootstrap 95% CI), MAE and Pearson r, and per attribute whether the predictions' gap between the
tercile means is wider than the ratings' own. These two attributes are read here only and only for
grouping; nothing is written or printed per face.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

from features import load, ratings, runtime_vectors

from facescore_cli import training as T
from facescore_cli.ml import head as H

GROUPS = {"gender": "gender (0 fem.-100 masc.)", "skin-color": "skin colour (0 light-100 dark)"}


def mse_ci(err: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = err[rng.integers(0, len(err), size=(n_boot, len(err)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def oof_attractive(folds: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    data = load()
    _, names, vals = ratings()
    keep = data["found"]
    faces = T.faces_from(data["box"][keep], data["landmarks"][keep])
    x = H.features(runtime_vectors(data)[keep].astype(np.float64), faces)  # as the shipped head sees them
    y = vals[keep, names.index("attractive")]
    groups = {g: vals[keep, names.index(g)] for g in GROUPS}
    oof = np.clip(T.cross_validate(x, None, y, folds, seed)[:, 0], 0.0, 100.0)
    return oof, y, groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    oof, y, groups = oof_attractive(args.folds, args.seed)
    lo, hi = T.bootstrap_r(oof, y)
    report = {
        "n": len(y), "folds": args.folds, "seed": args.seed,
        "r": round(T.pearson(oof, y), 4), "r_ci95": [round(lo, 4), round(hi, 4)],
        "mae": round(float(np.abs(oof - y).mean()), 3), "groups": {},
    }
    for g in GROUPS:
        rows = T.tercile_table(oof, y, groups[g])
        which = T.terciles(groups[g])  # the terciles tercile_table used
        for t, row in enumerate(rows):
            row["mean_signed_error_ci95"] = [round(v, 2) for v in mse_ci(oof[which == t] - y[which == t])]
            row["mean_rated"] = round(float(y[which == t].mean()), 2)
        report["groups"][g] = rows
        # Does the head widen the gaps the ratings already have? Spread = the largest minus the
        # smallest tercile mean, of the ratings and of the predictions.
        rated = [float(y[which == t].mean()) for t in range(len(rows))]
        pred = [float(oof[which == t].mean()) for t in range(len(rows))]
        report.setdefault("gap", {})[g] = {"rated": round(max(rated) - min(rated), 2),
                                           "predicted": round(max(pred) - min(pred), 2)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"'attractive', {args.folds}-fold nested out-of-fold predictions (fold seed {args.seed}), "
          f"{report['n']} OMI faces: r = {report['r']:.3f} (95% CI {lo:.3f}-{hi:.3f}), MAE {report['mae']:.2f}"
          f"  [{time.time() - t0:.0f} s]\n")
    print(f"{'group (tercile of mean rating)':44s} {'range':>11s} {'n':>4s} {'rated':>6s} "
          f"{'signed err [95% CI]':>22s} {'MAE':>5s} {'r':>6s}")
    for g, label in GROUPS.items():
        for row in report["groups"][g]:
            ci = row["mean_signed_error_ci95"]
            rng = f"{row['range'][0]:.0f}-{row['range'][1]:.0f}"
            print(f"{label + ': ' + row['tercile']:44s} {rng:>11s} {row['n']:4d} {row['mean_rated']:6.1f} "
                  f"{row['mean_signed_error']:+6.2f} [{ci[0]:+5.2f},{ci[1]:+5.2f}] {row['mae']:5.2f} {row['r']:6.3f}")
    print("\nsigned error = predicted - rated; a CI excluding 0 means the score is biased for that group.")
    print("\ngap between the tercile means (largest - smallest): rated vs predicted")
    for g, label in GROUPS.items():
        gap = report["gap"][g]
        verdict = "widened" if gap["predicted"] > gap["rated"] else "not widened"
        print(f"  {label:40s} rated {gap['rated']:5.2f}  predicted {gap['predicted']:5.2f}  ({verdict})")


if __name__ == "__main__":
    main()
