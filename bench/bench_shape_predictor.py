"""dlib's 5-point shape predictor against facescore_cli/ml/shape_predictor.py (same .dat, numpy).

    python bench/bench_shape_predictor.py                 # agreement on 300 OMI portraits, then times
    python bench/bench_shape_predictor.py --images 800 --no-time
    python bench/bench_shape_predictor.py --images 0 --rounds 20     # times only

Agreement: the landmarks of both for the same image and box, on
* the portraits upright and rolled by +25 and -25 degrees, each face's box made as detect.py
  makes it (MTCNN's points -> detect.hog_rect);
* the upright portrait cropped through the box's centre on each side in turn (half the box
  outside the image), and as a grey (h, w) array;
* four boxes jittered in place and size (seeded), all four in one `predict_many` call.
Printed: faces compared, faces where any coordinate differs by more than 1e-3 px, the worst
difference. Landmarks are whole pixels in both, so "differs" means a pixel off.

Times, CPU time (time.process_time), the two implementations alternated round by round, best /
median / worst of the rounds: in this process, loading (dlib's deserialization; ours from an
empty cache folder, i.e. parsing the .dat and writing the cache; ours from that cache) and
predicting one face (and five at once, per face) in a 1024x1024 portrait; in fresh processes,
first use: importing the module (dlib / shape_predictor), loading, one prediction.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"
SEED = 20261202

from facescore_cli.ml import detect, models  # noqa: E402
from facescore_cli.ml import shape_predictor as sp  # noqa: E402


def mtcnn_boxes(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The rectangles detect.detect_pixels gives the landmark predictor."""
    _, points = detect.find(pixels, 40.0)
    return [detect.hog_rect(pts) for pts in points]


class Agreement:
    def __init__(self, dlib_predictor, ours: sp.ShapePredictor):
        self.ref, self.ours = dlib_predictor, ours
        self.counts: dict[str, list[int]] = {}   # case -> [faces, differing]
        self.worst = 0.0
        self.worst_case = ""

    def dlib(self, pixels: np.ndarray, box) -> np.ndarray:
        import dlib

        return np.array([(p.x, p.y) for p in self.ref(pixels, dlib.rectangle(*box)).parts()], dtype=np.float64)

    def compare(self, case: str, pixels: np.ndarray, boxes: list) -> None:
        if not boxes:
            return
        got = self.ours.predict_many(pixels, boxes)
        for box, g in zip(boxes, got):
            err = float(np.abs(g - self.dlib(pixels, box)).max())
            c = self.counts.setdefault(case, [0, 0])
            c[0] += 1
            c[1] += err > 1e-3
            if err > self.worst:
                self.worst, self.worst_case = err, f"{case} {box}"

    def report(self) -> None:
        total = [0, 0]
        for case, (n, bad) in self.counts.items():
            print(f"  {case:<22} {n:5d} faces, {bad} differ")
            total[0] += n
            total[1] += bad
        print(f"  {'all':<22} {total[0]:5d} faces, {total[1]} differ; worst difference {self.worst:g} px"
              + (f" ({self.worst_case})" if self.worst else ""))


def agreement(n_images: int, ours: sp.ShapePredictor) -> None:
    import dlib

    a = Agreement(dlib.shape_predictor(models.LANDMARKS_5_PATH), ours)
    rng = np.random.default_rng(SEED)
    paths = sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem))[:n_images]
    t = time.perf_counter()
    for path in paths:
        img = Image.open(path).convert("RGB")
        px = np.asarray(img)
        boxes = mtcnn_boxes(px)
        a.compare("upright", px, boxes)
        for angle in (25, -25):
            rolled = np.asarray(img.rotate(angle, resample=Image.BILINEAR))
            a.compare(f"rolled {angle:+d}", rolled, mtcnn_boxes(rolled))
        a.compare("grey", np.asarray(img.convert("L")), boxes)
        for left, top, right, bottom in boxes:
            cx, cy = (left + right) // 2, (top + bottom) // 2
            a.compare("half outside (left)", px[:, cx:], [(left - cx, top, right - cx, bottom)])
            a.compare("half outside (top)", px[cy:], [(left, top - cy, right, bottom - cy)])
            a.compare("half outside (right)", px[:, :cx], [(left, top, right, bottom)])
            a.compare("half outside (bottom)", px[:cy], [(left, top, right, bottom)])
            side = right - left
            jittered = []
            for _ in range(4):
                dx, dy = rng.integers(-side // 4, side // 4 + 1, 2)
                grow = int(rng.integers(-side // 5, side // 5 + 1))
                jittered.append((left + dx - grow, top + dy - grow, right + dx + grow, bottom + dy + grow))
            a.compare("jittered, 4 per call", px, jittered)
    print(f"agreement with dlib on {len(paths)} OMI portraits ({time.perf_counter() - t:.0f} s):")
    a.report()


def spread(ms: list[float]) -> str:
    return f"{min(ms):7.2f} {statistics.median(ms):7.2f} {max(ms):7.2f}"


def times(rounds: int) -> None:
    import dlib

    px = np.asarray(Image.open(OMI / "1.jpg").convert("RGB"))
    box = mtcnn_boxes(px)[0]
    rect = dlib.rectangle(*box)
    ref = dlib.shape_predictor(models.LANDMARKS_5_PATH)
    clock = time.process_time
    print(f"\nCPU ms of this process, best / median / worst of {rounds} rounds (alternated)")

    load = {"dlib": [], "ours, empty cache": [], "ours, cached": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(3, rounds // 4)):
            t = clock()
            dlib.shape_predictor(models.LANDMARKS_5_PATH)
            load["dlib"].append((clock() - t) * 1e3)
            fresh = Path(tmp) / f"c{i}"
            t = clock()
            sp.load(fresh)
            load["ours, empty cache"].append((clock() - t) * 1e3)
            t = clock()
            m = sp.load(fresh)
            m._plan   # what the first predict would build
            load["ours, cached"].append((clock() - t) * 1e3)
            shutil.rmtree(fresh)
    print(f"{'load':<32} {'best':>7} {'median':>7} {'worst':>7}")
    for k, v in load.items():
        print(f"  {k:<30} {spread(v)}")

    ours = sp.load(Path(tempfile.gettempdir()) / "facescore-bench-shape")
    five = [box] + [(box[0] + d, box[1] - d, box[2] + d, box[3] - d) for d in (-9, -3, 4, 11)]
    k = 20
    pred = {"dlib, 1 face": [], "ours, 1 face": [], "dlib, 5 faces (per face)": [], "ours, 5 at once (per face)": []}
    rects = [dlib.rectangle(*b) for b in five]
    for _ in range(rounds):
        t = clock()
        for _ in range(k):
            ref(px, rect)
        pred["dlib, 1 face"].append((clock() - t) * 1e3 / k)
        t = clock()
        for _ in range(k):
            ours.predict(px, box)
        pred["ours, 1 face"].append((clock() - t) * 1e3 / k)
        t = clock()
        for _ in range(k // 5):
            for r in rects:
                ref(px, r)
        pred["dlib, 5 faces (per face)"].append((clock() - t) * 1e3 / k)
        t = clock()
        for _ in range(k // 5):
            ours.predict_many(px, five)
        pred["ours, 5 at once (per face)"].append((clock() - t) * 1e3 / k)
    print(f"{'predict, ms per face':<32} {'best':>7} {'median':>7} {'worst':>7}")
    for name, v in pred.items():
        print(f"  {name:<30} {spread(v)}")


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def first_use_child(which: str, dat: str, cache: str, box: str) -> None:
    """In a fresh process: CPU ms to import, load and predict once (the image already read),
    and the resident MB that added."""
    px = np.asarray(Image.open(OMI / "1.jpg").convert("RGB"))
    rect = tuple(int(v) for v in box.split(","))
    rss = rss_mb()
    t = time.process_time()
    if which == "dlib":
        import dlib

        dlib.shape_predictor(dat)(px, dlib.rectangle(*rect))
    else:
        from facescore_cli.ml import shape_predictor

        shape_predictor.load(Path(cache), dat).predict(px, rect)
    print(f"{(time.process_time() - t) * 1e3:.2f} {rss_mb() - rss:.1f}")


def first_use(rounds: int) -> None:
    px = np.asarray(Image.open(OMI / "1.jpg").convert("RGB"))
    box = ",".join(str(v) for v in mtcnn_boxes(px)[0])
    got: dict[str, list[float]] = {"dlib": [], "ours": []}
    mem: dict[str, list[float]] = {"dlib": [], "ours": []}
    with tempfile.TemporaryDirectory() as cache:
        sp.cached_arrays(Path(cache), models.LANDMARKS_5_PATH)
        for _ in range(rounds):
            for which in got:
                out = subprocess.run([sys.executable, __file__, "--first-use-child", which, models.LANDMARKS_5_PATH,
                                      cache, box], check=True, capture_output=True, text=True).stdout.split()
                got[which].append(float(out[0]))
                mem[which].append(float(out[1]))
    print(f"{'fresh process: import, load, 1 face':<32} {'best':>7} {'median':>7} {'worst':>7}  resident MB added")
    for which, v in got.items():
        label = which + (" (from its cache)" if which == "ours" else "")
        print(f"  {label:<30} {spread(v)}  {statistics.median(mem[which]):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300, help="OMI portraits to compare on (0: none)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--first-use-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.first_use_child:
        return first_use_child(*args.first_use_child)
    if args.images:
        with tempfile.TemporaryDirectory() as tmp:
            agreement(args.images, sp.load(Path(tmp)))
    if not args.no_time:
        times(args.rounds)
        first_use(max(4, args.rounds // 2))


if __name__ == "__main__":
    main()
