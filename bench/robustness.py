"""How much the score moves under everyday changes to the same photo, on OMI faces.

    python bench/robustness.py [--n 60] [--tolerance 3] [--head PATH] [--json]

For each of --n OMI faces (evenly spread over the stimulus list) the original image and four
altered copies go through the runtime pipeline (images.decode -> detect -> embed -> the scoring
head): a half-size copy (Lanczos), JPEG at quality 50, a 15-degree rotation (canvas expanded,
black corners) and a horizontal flip. Reported per change: the share of faces whose score moved
by <= --tolerance points (0-100 scale), the median and largest move, and faces no longer found
(counted as moved). Only aggregates are printed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facescore_cli.images import decode
from facescore_cli.ml import detect, embed
from facescore_cli.ml.head import load_head

OMI = ROOT.parent / "shared" / "datasets" / "omi"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    return buf.getvalue()


CHANGES = {
    "half size": lambda im: _png(im.resize((im.width // 2, im.height // 2), Image.LANCZOS)),
    "JPEG q50": lambda im: _jpeg(im, 50),
    "rotated 15 deg": lambda im: _png(im.rotate(15, resample=Image.BICUBIC, expand=True)),
    "mirrored": lambda im: _png(ImageOps.mirror(im)),
}


def score(head, data: bytes) -> float | None:
    img = decode(data)
    faces = detect.detect(img)
    if not faces:
        return None
    return head.predict(embed.embed(img, faces[:1]), faces[:1])[0].score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--tolerance", type=float, default=3.0)
    ap.add_argument("--head", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with open(OMI / "ratings.csv", newline="") as fh:
        stims = [r["stimulus"] for r in csv.DictReader(fh)]
    picked = [stims[int(i)] for i in np.linspace(0, len(stims) - 1, args.n)]
    head = load_head(args.head)
    t0 = time.time()
    moves: dict[str, list[float]] = {c: [] for c in CHANGES}
    lost = {c: 0 for c in CHANGES}
    used = 0
    for s in picked:
        raw = (OMI / "images" / f"{s}.jpg").read_bytes()
        base = score(head, raw)
        if base is None:
            continue
        used += 1
        im = Image.open(io.BytesIO(raw)).convert("RGB")
        for c, change in CHANGES.items():
            v = score(head, change(im))
            if v is None:
                lost[c] += 1
                moves[c].append(float("inf"))
            else:
                moves[c].append(abs(v - base))
    report = {"head": head.version, "faces": used, "tolerance": args.tolerance, "changes": {}}
    every = np.ones(used, bool)
    for c, m in moves.items():
        m = np.array(m)
        ok = m <= args.tolerance
        every &= ok
        finite = m[np.isfinite(m)]
        report["changes"][c] = {
            "within_tolerance": round(float(ok.mean()), 3), "median_move": round(float(np.median(finite)), 2),
            "max_move": round(float(finite.max()), 2), "faces_lost": lost[c],
        }
    report["within_tolerance_all_four"] = round(float(every.mean()), 3)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{used} OMI faces, head {head.version}: share whose score moved by <= {args.tolerance:g} points"
          f"  [{time.time() - t0:.0f} s]\n")
    print(f"{'change':16s} {'within':>7s} {'median':>7s} {'max':>6s} {'lost':>5s}")
    for c, r in report["changes"].items():
        print(f"{c:16s} {100 * r['within_tolerance']:6.1f}% {r['median_move']:7.2f} {r['max_move']:6.2f} {r['faces_lost']:5d}")
    print(f"{'all four':16s} {100 * report['within_tolerance_all_four']:6.1f}%")


if __name__ == "__main__":
    main()
