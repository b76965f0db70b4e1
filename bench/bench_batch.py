"""facescore batch against the face_recognition command line, same images, same run.

    pip install --no-deps face_recognition && pip install click psutil 'setuptools<81'
    python bench/bench_batch.py [--images N] [--cpus C] [--kind portraits|groups|both] [--repeat R]
                                [--min-face PX] [--cold]

The anchor is ageitgey's `face_recognition` CLI (dlib HOG detection + dlib ResNet embedding),
run with --cpus equal to the cores. Both tools get the same folder; we time whole commands
(start-up included), R rounds alternated, and print the best rate of each and their ratio, the
spread of the ratio over the rounds, and each tool's peak resident memory. The stage times are
measured in this process on one core; `embed` includes the mirror pass, as `embed.embed` does.
Portraits are OMI faces (1024x1024 JPEG, one face each); group photos are 1600x1200 collages
of OMI faces 40-400 px wide made here with a fixed seed. `--min-face PX` runs facescore with that
setting (the anchor has none: it looks for faces of ~40 px and up either way), to see what the
option buys; the targets are measured without it. facescore's model cache ($FACESCORE_HOME/cache)
is filled before each round, as after a machine's first run; `--cold` leaves it empty.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"


def portraits(dst: Path, n: int) -> list[Path]:
    files = sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem))[:n]
    for f in files:
        shutil.copy(f, dst / f.name)
    return files


def groups(dst: Path, n: int, seed: int = 11) -> dict[str, list[tuple[int, int, int]]]:
    """n 1600x1200 collages; returns, per file name, the pasted squares (centre x, centre y, side)."""
    rng = np.random.default_rng(seed)
    pool = sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem))
    truth: dict[str, list[tuple[int, int, int]]] = {}
    for i in range(n):
        yy, xx = np.mgrid[0:1200, 0:1600]
        bg = np.stack([80 + 70 * xx / 1600, 100 + 50 * yy / 1200, 150 - 60 * xx / 1600], 2) + rng.normal(0, 8, (1200, 1600, 3))
        canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        occupied: list[tuple[int, int, int]] = []
        for _ in range(int(rng.integers(3, 7))):
            face_w = int(rng.integers(40, 401))
            size = int(face_w / 0.6)  # the crop is ~1.65x the face width
            for _try in range(30):
                x, y = int(rng.integers(0, 1600 - size)), int(rng.integers(0, 1200 - size))
                cx, cy = x + size // 2, y + size // 2  # pasted squares must not overlap: compare centres
                if all(abs(cx - ox) > (size + os_) / 2 or abs(cy - oy) > (size + os_) / 2 for ox, oy, os_ in occupied):
                    break
            else:
                continue
            src = Image.open(pool[int(rng.integers(len(pool)))]).convert("RGB").crop((120, 100, 904, 944))
            face = src.resize((size, size), Image.LANCZOS)
            mask = Image.new("L", (size, size), 0)
            ImageDraw.Draw(mask).ellipse((0, 0, size, size), fill=255)
            angle = float(rng.uniform(-20, 20))
            canvas.paste(face.rotate(angle, Image.BICUBIC), (x, y), mask.filter(ImageFilter.GaussianBlur(size / 40)).rotate(angle))
            occupied.append((x + size // 2, y + size // 2, size))
        canvas.save(dst / f"group-{i:03d}.jpg", quality=85)
        truth[f"group-{i:03d}.jpg"] = occupied
    return truth


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str, int, str, float]:
    """Wall seconds, peak RSS (MB, largest single process of the tree), stdout, exit code, the
    last line of stderr, and the CPU seconds (user + system) of the command's whole process tree,
    sampled every 50 ms (the anchor's workers live under a forkserver that nobody reaps, so the
    kernel's accounting of waited-for children misses them). CPU time leaves out what a shared
    machine's hypervisor took (steal): the CPU ratio moves far less than the wall ratio."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> user + system seconds, last seen
    outbuf: list[str] = []
    errbuf: list[str] = []
    readers = [threading.Thread(target=lambda: outbuf.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: errbuf.append(proc.stderr.read()), daemon=True)]
    for r in readers:
        r.start()
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                with p.oneshot():
                    peak = max(peak, p.memory_info().rss / 2**20)
                    t = p.cpu_times()
                    cpu[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                continue
        time.sleep(0.05)
    for r in readers:
        r.join()
    err = [line for line in "".join(errbuf).splitlines() if line.strip()]
    return time.perf_counter() - start, peak, "".join(outbuf), proc.returncode, err[-1] if err else "", sum(cpu.values())


def anchor_faces_found(out: str, folder: Path) -> int:
    """Faces the face_recognition CLI reported: one '<image path>,<name>' line each."""
    return sum(1 for line in out.splitlines() if line.startswith(f"{folder}{os.sep}") and "," in line)


def bench(folder: Path, count: int, cpus: int, label: str, repeat: int = 3, min_face: int | None = None,
          cold: bool = False) -> dict:
    """Both tools `repeat` times, alternated (anchor, facescore, anchor, ...); the best time of
    each, and the spread of the ratio over the rounds."""
    known = folder.parent / f"{folder.name}-known"
    known.mkdir(exist_ok=True)
    anchor_bin = shutil.which("face_recognition") or str(Path(sys.executable).parent / "face_recognition")
    if not Path(anchor_bin).exists():
        sys.exit("the anchor is missing: pip install --no-deps face_recognition && pip install click 'setuptools<81'")
    facescore = str(Path(sys.executable).parent / "facescore")
    rounds = []
    for i in range(repeat):
        a_sec, a_mem, a_out, a_code, a_err, a_cpu = run([anchor_bin, "--cpus", str(cpus), str(known), str(folder)])
        anchor_faces = anchor_faces_found(a_out, folder)
        if a_code != 0 or anchor_faces == 0:
            # e.g. face_recognition_models needs pkg_resources, which setuptools >= 81 no longer has
            first = next((line for line in a_out.splitlines() if line.strip()), "")
            sys.exit(f"the anchor did not run (exit {a_code}, {anchor_faces} faces): {a_err or first}\n"
                     "fix: pip install 'setuptools<81' (face_recognition_models imports pkg_resources)")
        out_csv = folder.parent / f"{folder.name}-{i}.csv"
        # default settings (the face store included), in a fresh FACESCORE_HOME so runs compare;
        # its model cache filled beforehand, as after the first run on a machine (--cold: empty)
        home = folder.parent / f"{folder.name}-home{i}"
        if not cold:
            warm_model_cache(home)
        env = {**os.environ, "FACESCORE_HOME": str(home)}
        extra = ["--min-face", str(min_face)] if min_face else []
        f_sec, f_mem, _, f_code, f_err, f_cpu = run([facescore, "batch", str(folder), "--out", str(out_csv), "--jobs", str(cpus),
                                              "--via", "local", *extra], env)
        if f_code != 0:
            sys.exit(f"facescore batch failed (exit {f_code}): {f_err}")
        rounds.append((a_sec, a_mem, anchor_faces, f_sec, f_mem, out_csv, a_cpu, f_cpu))
    a_best = min(r[0] for r in rounds)
    f_best = min(r[3] for r in rounds)
    ratios = [r[0] / r[3] for r in rounds]
    with rounds[-1][5].open() as fh:
        rows = list(csv.DictReader(fh))
    faces = sum(1 for r in rows if r["face"] != "")
    return {"rows": rows, "label": label, "images": count, "anchor_rate": count / a_best, "facescore_rate": count / f_best,
            "ratio": a_best / f_best, "spread": (min(ratios), max(ratios)), "rounds": len(rounds),
            "anchor_mb": max(r[1] for r in rounds), "facescore_mb": max(r[4] for r in rounds), "faces": faces,
            "cpu_ratio": min(r[6] for r in rounds) / min(r[7] for r in rounds),
            "cpu_ms": (min(r[6] for r in rounds) * 1000 / count, min(r[7] for r in rounds) * 1000 / count),
            "anchor_faces": rounds[-1][2]}


def warm_model_cache(home: Path) -> None:
    """Build what facescore keeps in $FACESCORE_HOME/cache once per machine, as its first session
    does: the ResNet's plain and onnxruntime-optimized models and the 5-point landmark model's
    arrays (without these, each scoring process builds them from dlib's .dat). By the product's
    own loader, so the benchmark fills whatever the product caches; in a fresh interpreter each
    time, because the loader keeps one model per process and looks at `cache_dir` only on first
    use: called in this process, every round after the first ran with an empty cache (20 group
    photos 0.3-0.4 s slower, which every `--kind both` group round until 2026-12-03 measured)."""
    code = "import sys; from pathlib import Path; from facescore_cli.scoring import LocalBackend; " \
           "LocalBackend(Path(sys.argv[1])).warm_up()"
    subprocess.run([sys.executable, "-c", code, str(home / "cache")], check=True)
    if not any((home / "cache").glob("dlib-resnet-*-ort-*")):
        sys.exit(f"the model cache in {home} was not filled")


def accuracy(rows: list[dict], truth: dict[str, list[tuple[int, int, int]]]) -> tuple[float, float]:
    """(recall, precision) of the detections: a detection matches a pasted face when its centre
    lies in the face's half-side core of the pasted square and its width is 30-90% of the side."""
    found = 0
    matched: set[tuple[str, int]] = set()
    detections = [r for r in rows if r["face"] != ""]
    for r in detections:
        name = Path(r["path"]).name
        cx, cy = float(r["x"]) + float(r["width"]) / 2, float(r["y"]) + float(r["height"]) / 2
        for j, (tx, ty, side) in enumerate(truth.get(name, [])):
            if abs(cx - tx) < side / 4 and abs(cy - ty) < side / 4 and 0.3 * side < float(r["width"]) < 0.9 * side \
                    and (name, j) not in matched:
                matched.add((name, j))
                found += 1
                break
    total = sum(len(v) for v in truth.values())
    return found / max(total, 1), found / max(len(detections), 1)


def ratings_r(rows: list[dict]) -> float:
    """Pearson r of the scores with OMI's mean 'attractive' ratings (largest face per image)."""
    with (OMI.parent / "ratings.csv").open() as fh:
        human = {r["stimulus"]: float(r["attractive"]) for r in csv.DictReader(fh)}
    pairs = [(float(r["score"]), human[Path(r["path"]).stem]) for r in rows
             if r["face"] == "0" and Path(r["path"]).stem in human]
    a = np.array(pairs)
    return float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])


def stage_times(folder: Path, limit: int = 30, min_face: int | None = None) -> dict[str, float]:
    """Milliseconds per image of each stage, in this process (one core), on the first images."""
    from facescore_cli.ml.types import DEFAULT_MIN_FACE

    from facescore_cli import images
    from facescore_cli.ml import detect, embed
    from facescore_cli.ml.head import load_head

    files = sorted(folder.glob("*.jpg"))[:limit]
    head = load_head()
    detect.load_models()
    embed.embed_chips(embed.chips(images.decode(files[0].read_bytes()),
                                  detect.detect(images.decode(files[0].read_bytes()))))  # warm
    total = dict.fromkeys(("decode", "detect", "align", "embed", "head"), 0.0)
    for f in files:
        data = f.read_bytes()
        t0 = time.perf_counter()
        img = images.decode(data)
        t1 = time.perf_counter()
        faces = detect.detect(img, min_face=min_face or DEFAULT_MIN_FACE)
        t2 = time.perf_counter()
        chips = embed.chips(img, faces)
        t3 = time.perf_counter()
        vecs = embed.flip_averaged(chips)  # what embed.embed runs: the chips and their mirrors
        t4 = time.perf_counter()
        head.predict(vecs, faces)
        t5 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("align", t2, t3), ("embed", t3, t4), ("head", t4, t5)):
            total[k] += (b - a) * 1000
    return {k: v / len(files) for k, v in total.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--kind", choices=["portraits", "groups", "both"], default="portraits")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of both tools, alternated; the best of each counts")
    ap.add_argument("--min-face", type=int, default=None, help="facescore's --min-face (default: its own, 40 px)")
    ap.add_argument("--cold", action="store_true", help="facescore's model cache empty in every round, as on a "
                    "machine's first run (default: filled beforehand, as on every later run)")
    args = ap.parse_args()
    if not OMI.is_dir():
        sys.exit(f"the OMI images are not at {OMI}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.kind in ("portraits", "both"):
            d = Path(tmp) / "portraits"
            d.mkdir()
            portraits(d, args.images)
            r = bench(d, args.images, args.cpus, "portraits 1024x1024", args.repeat, args.min_face, args.cold)
            r["stages"] = stage_times(d, min_face=args.min_face)
            r["accuracy"] = f"r with human ratings {ratings_r(r['rows']):.3f} (training faces: a check that the pipeline is intact)"
            rows.append(r)
        if args.kind in ("groups", "both"):
            d = Path(tmp) / "groups"
            d.mkdir()
            truth = groups(d, max(args.images // 5, 4))
            r = bench(d, max(args.images // 5, 4), args.cpus, "groups 1600x1200", args.repeat, args.min_face, args.cold)
            r["truth_faces"] = sum(len(v) for v in truth.values())
            r["stages"] = stage_times(d, min_face=args.min_face)
            recall, precision = accuracy(r["rows"], truth)
            r["accuracy"] = f"detection recall {recall:.3f}, precision {precision:.3f}"
            rows.append(r)
    if args.min_face:
        print(f"facescore ran with --min-face {args.min_face} (the anchor has no such setting)")
    if args.cold:
        print("facescore ran with an empty model cache in every round (a machine's first run)")
    print(f"cpus={args.cpus}; best of {args.repeat} alternated rounds per tool; spread = the lowest and highest "
          "ratio of a single round")
    print(f"{'set':22} {'images':>6} {'anchor img/s':>12} {'facescore img/s':>15} {'ratio':>6} {'spread':>13} "
          f"{'anchor MB':>9} {'facescore MB':>12} {'faces (anchor)':>15}")
    for r in rows:
        extra = f" of {r['truth_faces']} pasted" if "truth_faces" in r else ""
        spread = f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f}x"
        print(f"{r['label']:22} {r['images']:>6} {r['anchor_rate']:>12.2f} {r['facescore_rate']:>15.2f} "
              f"{r['ratio']:>5.2f}x {spread:>13} {r['anchor_mb']:>9.0f} {r['facescore_mb']:>12.0f} "
              f"{r['faces']:>6} ({r['anchor_faces']}){extra}")
    print("CPU time (user + system of each tool's process tree, sampled every 50 ms, least of the rounds; "
          "steal time is not in it):")
    for r in rows:
        print(f"  {r['label']:22} anchor {r['cpu_ms'][0]:.0f} ms/image, facescore {r['cpu_ms'][1]:.0f} ms/image: "
              f"{r['cpu_ratio']:.2f}x")
    print("facescore accuracy:")
    for r in rows:
        print(f"  {r['label']:22} {r['accuracy']}")
    print("facescore stage times, ms per image on one core:")
    for r in rows:
        print(f"  {r['label']:22} " + "  ".join(f"{k} {v:.1f}" for k, v in r["stages"].items()))


if __name__ == "__main__":
    main()
