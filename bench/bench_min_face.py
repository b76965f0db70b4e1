"""What `--min-face` buys: detection time and faces found at several settings, same images.

    python bench/bench_min_face.py [--sizes 40,80,150] [--repeat 3]

On one core, in this process: the 1600x1200 group photos of bench_batch.py (faces 40-400 px,
fixed seed) and 30 OMI portraits (1024x1024, one face ~500 px). The settings are alternated
round by round and the best round of each counts; the anchor is the default (40 px), so the
ratios are detection time against the default's. Recall and precision are bench_batch.py's
`accuracy` (the pasted faces found, one detection each).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_batch import OMI, accuracy, groups  # noqa: E402

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
            "groups 1600x1200": [(n, images.decode((Path(tmp) / n).read_bytes())) for n in sorted(truth)],
            "portraits 1024x1024": [(p.name, images.decode(p.read_bytes()))
                                    for p in sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem))[:30]],
        }
    print(f"detection on one core, best of {args.repeat} alternated rounds; ratio = time / the 40 px default's")
    print(f"{'set':22} {'min-face':>8} {'ms/image':>9} {'ratio':>6} {'faces':>6} {'recall':>7} {'precision':>9}")
    for label, imgs in sets.items():
        best = {m: float("inf") for m in sizes}
        found: dict[int, list] = {}
        detect.detect(imgs[0][1])  # warm
        for _ in range(args.repeat):
            for m in sizes:
                t0 = time.perf_counter()
                out = [detect.detect(img, min_face=m) for _, img in imgs]
                best[m] = min(best[m], (time.perf_counter() - t0) * 1000 / len(imgs))
                found[m] = out
        base = best[40] if 40 in best else best[sizes[0]]
        for m in sizes:
            faces = sum(len(f) for f in found[m])
            measured = ("", "")
            if label.startswith("groups"):  # rows as `batch` writes them, for bench_batch's own check
                rows = [{"path": name, "face": str(i), "x": f.box[0], "y": f.box[1], "width": f.box[2],
                         "height": f.box[3]} for (name, _), fs in zip(imgs, found[m]) for i, f in enumerate(fs)]
                measured = tuple(f"{v:.3f}" for v in accuracy(rows, truth))
            print(f"{label:22} {m:>8} {best[m]:>9.1f} {best[m] / base:>5.2f}x {faces:>6} {measured[0]:>7} {measured[1]:>9}")


if __name__ == "__main__":
    main()
