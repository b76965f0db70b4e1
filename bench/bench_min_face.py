"""What `--min-face` buys: detection time and faces found at several settings, same images.

    python bench/bench_min_face.py [--sizes 40,80,150] [--repeat 3]

On one core, in this process: the 1600x1200 group photos of bench_batch.py (faces 40-400 px,
fixed seed) and 30 OMI portraits (1024x1024, one face ~500 px). The settings are alternated
round by round and the best round of each counts; the anchor is the default (40 px), so the
ratios are detection time against the default's. Recall is bench_batch.py's (pasted faces found).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_batch import OMI, groups  # noqa: E402

from facescore_cli import blas  # noqa: E402

blas.one_thread()  # as in every scoring process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="40,80,150")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    from facescore_cli import images
    from facescore_cli.ml import detect

    detect.load_models()
    with tempfile.TemporaryDirectory() as tmp:
        truth = groups(Path(tmp), 20)
        sets = {
            "groups 1600x1200": [(images.decode((Path(tmp) / n).read_bytes()), truth[n]) for n in sorted(truth)],
            "portraits 1024x1024": [(images.decode(p.read_bytes()), None)
                                    for p in sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem))[:30]],
        }
    print(f"detection on one core, best of {args.repeat} alternated rounds; ratio = time / the 40 px default's")
    print(f"{'set':22} {'min-face':>8} {'ms/image':>9} {'ratio':>6} {'faces':>6} {'pasted found':>13}")
    for label, imgs in sets.items():
        best = {m: float("inf") for m in sizes}
        found: dict[int, list] = {}
        detect.detect(imgs[0][0])  # warm
        for _ in range(args.repeat):
            for m in sizes:
                t0 = time.perf_counter()
                out = [detect.detect(img, min_face=m) for img, _ in imgs]
                best[m] = min(best[m], (time.perf_counter() - t0) * 1000 / len(imgs))
                found[m] = out
        base = best[40] if 40 in best else best[sizes[0]]
        for m in sizes:
            faces = sum(len(f) for f in found[m])
            recall = ""
            if imgs[0][1] is not None:
                hit = total = 0
                for (img, pasted), fs in zip(imgs, found[m]):
                    for cx, cy, side in pasted:
                        total += 1
                        hit += any(abs(f.box[0] + f.box[2] / 2 - cx) < side / 4 and abs(f.box[1] + f.box[3] / 2 - cy) < side / 4
                                   for f in fs)
                recall = f"{hit}/{total}"
            print(f"{label:22} {m:>8} {best[m]:>9.1f} {best[m] / base:>5.2f}x {faces:>6} {recall:>13}")


if __name__ == "__main__":
    main()
