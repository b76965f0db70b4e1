"""What one image costs to decode (and detect): CPU seconds and peak resident MB, per format.

    python bench/bench_decode.py [--side 7745] [--rounds 3] [--detect] [--before OLD_images.py]
                                 [--only png-L-solid,...]

Every cell runs in a fresh process (peak RSS is its VmHWM, so imports count: the
`base` column is the peak right after importing numpy, PIL and the package, before the image).
The anchor is a normal photo: an OMI portrait (1024 px JPEG) decoded the same way in the same
run; each image's CPU is also printed as a ratio to it. Implementations and images alternate
round by round; each cell is the best of `--rounds`, with the spread (max/min) beside it.
`--work-side N` adds the current code at another working size. `--before` points at an older images.py (e.g. `git show HEAD~3:facescore_cli/images.py > old.py`)
to print before/after side by side. `--detect` adds MTCNN detection on the decoded array
(models loaded before the clock starts), i.e. the image's whole cost up to the embedding.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"

CHILD = r"""
import importlib.util, json, resource, sys, time
import numpy, PIL.Image
import facescore_cli.images, facescore_cli.errors
impl, path, detect, work_side = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
if impl == "current":
    mod = facescore_cli.images
else:
    spec = importlib.util.spec_from_file_location("facescore_cli._images_before", impl)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
if detect:
    from facescore_cli.ml import detect as det
    det.load_models()
    det.detect_pixels(numpy.zeros((64, 64, 3), numpy.uint8))
def hwm():  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
data = open(path, "rb").read()
base = hwm()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t = cpu()
try:
    img = mod.decode(data, **({"work_side": work_side} if work_side else {}))
    out = "%dx%d" % (img.pixels.shape[1], img.pixels.shape[0])
    if detect:
        out += " %d faces" % len(det.detect_pixels(img.pixels, img.scale))
except facescore_cli.errors.ImageError as exc:
    out = "refused: " + str(exc)[:50]
print(json.dumps({"cpu": cpu() - t, "peak": hwm(),
                  "base": base, "out": out}))
"""


def make_images(folder: Path, side: int, only: set[str] | None) -> dict[str, Path]:
    """Huge canvases, flat (the 7 KB attack) and noisy (as much entropy as the 40 MB cap lets in)."""
    rng = np.random.default_rng(0)
    shape = (side, side)

    def noise(levels: int, channels: int = 1) -> np.ndarray:
        step = 255 // max(levels - 1, 1)
        a = rng.integers(0, levels, size=shape + ((channels,) if channels > 1 else ()), dtype=np.uint8)
        return a * np.uint8(step)

    recipes = {
        "png-P-solid": lambda: (Image.new("P", shape, 3), "PNG", {}),
        "png-L-solid": lambda: (Image.new("L", shape, 128), "PNG", {}),
        "png-RGB-solid": lambda: (Image.new("RGB", shape, (200, 150, 120)), "PNG", {}),
        "png-RGBA-solid": lambda: (Image.new("RGBA", shape, (200, 150, 120, 128)), "PNG", {}),
        "png-16bit-solid": lambda: (Image.new("I;16", shape, 30000), "PNG", {}),
        "png-L-noisy": lambda: (Image.fromarray(noise(4)), "PNG", {}),
        "png-RGB-noisy": lambda: (Image.fromarray(noise(2, 3)), "PNG", {}),
        "gif-solid": lambda: (Image.new("P", shape, 3), "GIF", {}),
        "gif-noisy": lambda: (Image.fromarray(noise(2)).convert("P"), "GIF", {}),
        "tiff-RGB-solid": lambda: (Image.new("RGB", shape, (200, 150, 120)), "TIFF", {"compression": "tiff_deflate"}),
        "tiff-RGB-noisy": lambda: (Image.fromarray(noise(2, 3)), "TIFF", {"compression": "tiff_deflate"}),
        "webp-solid": lambda: (Image.new("RGB", shape, (200, 150, 120)), "WEBP", {"quality": 80}),
        "webp-noisy": lambda: (Image.fromarray(noise(4, 3)), "WEBP", {"quality": 30}),
        "bmp-1bit-noisy": lambda: (Image.fromarray(noise(2)).convert("1"), "BMP", {}),
        "jpeg-solid": lambda: (Image.new("RGB", shape, (200, 150, 120)), "JPEG", {"quality": 85}),
        "jpeg-noisy": lambda: (Image.fromarray(noise(2, 3)), "JPEG", {"quality": 30}),
    }
    out = {}
    for name, recipe in recipes.items():
        if only and name not in only:
            continue
        path = folder / f"{name}-{side}.{name.split('-')[0]}"
        if not path.exists():
            img, fmt, kw = recipe()
            buf = io.BytesIO()
            img.save(buf, fmt, **kw)
            path.write_bytes(buf.getvalue())
        out[name] = path
    return out


def run(impl: str, path: Path, detect: bool, work_side: int = 0) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, impl, str(path), "1" if detect else "0", str(work_side)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    if proc.returncode:
        return {"cpu": float("nan"), "peak": float("nan"), "base": float("nan"),
                "out": "crashed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:60]}
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=7745)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--detect", action="store_true")
    ap.add_argument("--before", help="an older images.py to compare with")
    ap.add_argument("--only", help="comma-separated image names")
    ap.add_argument("--work-side", type=int, action="append", default=[],
                    help="also run the current images.py at this working size (repeatable)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "facescore-bench-decode"))
    args = ap.parse_args()
    folder = Path(args.cache)
    folder.mkdir(exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    imgs = {"anchor: OMI 1024 px JPEG": sorted(OMI.glob("*.jpg"))[0]}
    imgs.update(make_images(folder, args.side, only))
    impls = {"after": ("current", 0)}
    if args.before:
        impls = {"before": (str(Path(args.before).resolve()), 0), **impls}
    impls.update({f"work {n}": ("current", n) for n in args.work_side})
    cells: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for name, path in imgs.items():
            for label, impl in impls.items():
                cells.setdefault((name, label), []).append(run(impl[0], path, args.detect, impl[1]))
    anchor = {label: min(r["cpu"] for r in cells[(next(iter(imgs)), label)]) for label in impls}
    print(f"{'decode + detect' if args.detect else 'decode'}, {args.side} px canvases, best of {args.rounds} "
          f"(spread = max/min CPU); anchor CPU: " + ", ".join(f"{k} {v:.3f} s" for k, v in anchor.items()))
    print(f"| image | file | impl | CPU s | x anchor | spread | peak MB | base MB | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in imgs.items():
        size = path.stat().st_size
        for label in impls:
            rs = cells[(name, label)]
            best = min(rs, key=lambda r: r["cpu"])
            cpus = [r["cpu"] for r in rs]
            spread = max(cpus) / min(cpus) if min(cpus) > 0 else float("nan")
            print(f"| {name} | {size / 1e6:.2f} MB | {label} | {best['cpu']:.2f} | {best['cpu'] / anchor[label]:.1f} | "
                  f"{spread:.2f} | {max(r['peak'] for r in rs):.0f} | {best['base']:.0f} | {best['out']} |")


if __name__ == "__main__":
    main()
