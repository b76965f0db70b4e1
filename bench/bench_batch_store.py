"""What the face store costs `batch` and `score`: the same commands with and without --no-store.

    python bench/bench_batch_store.py [--images 300] [--rounds 3] [--singles 5] [--many 3000]
                                      [--big DIR] [--parts abc] [--jobs N]

(a) `facescore batch DIR --out x.csv --force` on --images dataset faces, three ways per round,
    alternated (the order rotates every round): --no-store (the anchor), the store in a fresh
    FACESCORE_HOME, and the store in a copy of a pre-filled store of 100k faces (--big: a home
    made by `bench/bench_store.py --fill 100000 --home DIR`; made here when missing).
(b) `facescore score one.jpg`, --no-store against the store (a home where the store already
    exists, and the 100k copy), --singles rounds alternated.
(c) one `facescore batch --jsonl` of --many images, each a new image (a dataset face cropped by
    1-3 px, brightened or darkened by up to 3%, JPEG re-encoded: a new SHA-256 each), with the
    store on in a fresh home; every row's arrival time is taken as stdout yields it, and the
    images/s of the first and the last thousand are compared (windows of 1000 rows, so that
    start-up is outside both).

Wall times of whole commands (start-up included), best of the rounds with the spread, and the median
of each round's own ratio to the anchor (--no-store, measured in the same rounds: the machine is shared).
Every command runs --via local with --jobs = cores and dies with this process; each has a timeout.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"
FACESCORE = [sys.executable, "-m", "facescore_cli"]
BIG_DEFAULT = Path("/tmp/big100k")


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "FACESCORE_HOME": str(home), "FACESCORE_VIA": "local"}


def timed(cmd: list[str], home: Path, timeout: float) -> float:
    """Wall seconds of a command that must exit 0; its stderr's last lines when it does not."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, preexec_fn=_die_with_parent)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return wall


def best_and_spread(times: list[float]) -> tuple[float, float]:
    return min(times), max(times) / min(times)


def faces(n: int) -> list[Path]:
    files = sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem))
    if not files:
        raise SystemExit(f"no dataset images in {OMI}")
    return files[:n]


def big_home(given: Path | None, work: Path) -> Path:
    """A FACESCORE_HOME holding a store of 100k faces: --big, /tmp/big100k, or filled here once."""
    for home in (given, BIG_DEFAULT):
        if home is not None and (home / "store").is_dir():
            return home
    home = given or BIG_DEFAULT
    print(f"filling a store of 100k faces in {home} (a few minutes)...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(REPO / "bench" / "bench_store.py"), "--fill", "100000", "--home", str(home)],
                   check=True, timeout=1800, preexec_fn=_die_with_parent)
    return home


def copy_home(src: Path, dst: Path) -> Path:
    """A copy of a home to measure (a store run changes its store); the copy is not timed."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    os.sync()  # else the store's first flush also writes the copy's 170 MB out, inside the timing
    return dst


def rounds(variants: dict[str, object], n: int) -> dict[str, list[float]]:
    """Run each variant (a callable returning wall seconds) once per round, the order rotating."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(variants[name]())  # type: ignore[operator]
        print(f"  round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in names), file=sys.stderr, flush=True)
    return times


def table(title: str, times: dict[str, list[float]], anchor: str, per: int = 0) -> None:
    """Best, spread, and two ratios to the anchor: of the bests, and the median of each round's
    own ratio (the load of a shared machine drifts between rounds more than within one)."""
    base, _ = best_and_spread(times[anchor])
    print(f"\n{title}")
    print(f"| run | best wall s | spread (worst/best) | {'images/s | ' if per else ''}best vs best {anchor} | "
          f"median of the rounds' ratios |")
    print(f"|---|---:|---:|{'---:|' if per else ''}---:|---:|")
    for name, ts in times.items():
        best, spread = best_and_spread(ts)
        rate = f" {per / best:.2f} |" if per else ""
        paired = statistics.median(t / a for t, a in zip(ts, times[anchor]))
        print(f"| {name} | {best:.2f} | {spread:.2f}x |{rate} {best / base:.3f}x | {paired:.3f}x |")


def part_a(args: argparse.Namespace, work: Path, big: Path | None) -> None:
    src = work / f"faces-{args.images}"
    if not src.is_dir():
        src.mkdir(parents=True)
        for f in faces(args.images):
            shutil.copy(f, src / f.name)
    out = work / "a.csv"
    cmd = [*FACESCORE, "batch", str(src), "--out", str(out), "--force", "--jobs", str(args.jobs)]
    timeout = 60 + 5 * args.images

    def fresh() -> float:
        home = work / "home-fresh"
        shutil.rmtree(home, ignore_errors=True)
        return timed(cmd, home, timeout)

    variants = {"--no-store": lambda: timed([*cmd, "--no-store"], work / "home-none", timeout),
                "store, fresh home": fresh}
    if big is not None:
        variants["store, 100k faces"] = lambda: timed(cmd, copy_home(big, work / "home-big"), timeout)
    print(f"(a) batch of {args.images} faces, {args.rounds} rounds", file=sys.stderr, flush=True)
    table(f"(a) `facescore batch` of {args.images} dataset faces, --jobs {args.jobs}, best of {args.rounds}",
          rounds(variants, args.rounds), "--no-store", per=args.images)


def part_b(args: argparse.Namespace, work: Path, big: Path | None) -> None:
    one = faces(1)[0]
    cmd = [*FACESCORE, "score", str(one)]
    warm = work / "home-single"
    shutil.rmtree(warm, ignore_errors=True)
    timed([*FACESCORE, "score", str(faces(2)[1])], warm, 120)  # the store exists, as after a first use
    variants = {"--no-store": lambda: timed([*cmd, "--no-store"], work / "home-none", 120),
                "store (exists)": lambda: timed(cmd, warm, 120)}
    if big is not None:
        variants["store, 100k faces"] = lambda: timed(cmd, copy_home(big, work / "home-big"), 120)
    print(f"(b) score one image, {args.singles} rounds", file=sys.stderr, flush=True)
    table(f"(b) `facescore score {one.name}`, best of {args.singles}", rounds(variants, args.singles), "--no-store")


def _variant(job: tuple[Path, Path, int]) -> None:
    from PIL import Image, ImageEnhance

    src, dst, k = job
    with Image.open(src) as im:
        im = im.convert("RGB")
        shift = 1 + k % 3
        im = im.crop((shift, k % 2, im.width - (k % 4), im.height - shift))
        im = ImageEnhance.Brightness(im).enhance(0.97 + 0.06 * ((k * 37) % 101) / 100)
        im.save(dst, quality=88 + k % 5)


def many_images(work: Path, n: int, jobs: int) -> Path:
    """n new images made from the dataset's faces (kept in `work` between runs of this bench)."""
    folder = work / f"many-{n}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = faces(10**6)
    todo = [(pool[k % len(pool)], folder / f"v{k:05d}.jpg", k) for k in range(n)]
    t = time.perf_counter()
    with ProcessPoolExecutor(jobs) as ex:
        list(ex.map(_variant, todo, chunksize=32))
    print(f"  made {n} images in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return folder


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads, not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def arrivals(cmd: list[str], home: Path, timeout: float) -> tuple[list[float], list[float]]:
    """For every image, in the order its JSONL rows arrive: the arrival time (s after start) and
    the CPU seconds the batch's main process (which stores; the scoring is in its children) had
    used by then."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=_die_with_parent)
    seen: set[str] = set()
    at: list[float] = []
    cpu: list[float] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - start
        if now > timeout:
            proc.kill()
            raise SystemExit(f"batch of many images took over {timeout:.0f} s")
        path = json.loads(line)["path"]
        if path not in seen:  # an image's first row: its faces arrive together
            seen.add(path)
            at.append(now)
            cpu.append(cpu_seconds(proc.pid))
    if proc.wait() != 0:
        raise SystemExit(f"batch of many images exited {proc.returncode}")
    return at, cpu


def part_c(args: argparse.Namespace, work: Path) -> None:
    n = args.many
    folder = many_images(work, n, args.jobs)
    cmd = [*FACESCORE, "batch", str(folder), "--jsonl", "--jobs", str(args.jobs)]
    variants = [("store, fresh home", [], work / "home-many")]
    if args.many_anchor:
        variants.insert(0, ("--no-store", ["--no-store"], work / "home-none"))
    w = min(1000, n // 2)
    print(f"\n(c) one `facescore batch --jsonl` of {n} new images, --jobs {args.jobs}: each row's arrival time, "
          f"and the CPU of the main process (the store's side; the scoring runs in its children)")
    print(f"| run | wall s | load avg | images/s, first {w} | images/s, last {w} | last/first | "
          f"main CPU ms/image, first {w} | last {w} | images/s per 500 rows |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for name, extra, home in variants:
        shutil.rmtree(home, ignore_errors=True)
        print(f"(c) {name}: {n} images", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        t, cpu = arrivals([*cmd, *extra], home, timeout=60 + 2 * n)
        if len(t) != n:
            raise SystemExit(f"{len(t)} images came back of {n}")
        first, last = w / (t[w] - t[0]), w / (t[-1] - t[-1 - w])
        cpu_first, cpu_last = 1000 * (cpu[w] - cpu[0]) / w, 1000 * (cpu[-1] - cpu[-1 - w]) / w
        ends = [(i, min(i + 500, n - 1)) for i in range(0, n - 1, 500)]
        series = " ".join(f"{(j - i) / (t[j] - t[i]):.1f}" for i, j in ends if j - i >= 100)
        print(f"| {name} | {t[-1]:.0f} | {load:.1f}-{os.getloadavg()[0]:.1f} | {first:.2f} | {last:.2f} | "
              f"{last / first:.3f} | {cpu_first:.2f} | {cpu_last:.2f} | {series} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300, help="dataset faces in (a)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (a)")
    ap.add_argument("--singles", type=int, default=5, help="rounds of (b)")
    ap.add_argument("--many", type=int, default=3000, help="images in (c)")
    ap.add_argument("--many-anchor", action="store_true", help="(c) with --no-store too, before the store run")
    ap.add_argument("--big", type=Path, help=f"a FACESCORE_HOME with 100k stored faces (default {BIG_DEFAULT})")
    ap.add_argument("--no-big", action="store_true", help="leave out the 100k-face store")
    ap.add_argument("--parts", default="abc", help="which of a, b, c to run")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="--jobs for batch (default: the cores)")
    ap.add_argument("--work", type=Path, help="where to keep images and homes (default: a temporary folder)")
    args = ap.parse_args()
    if args.many < 2:
        ap.error("--many needs at least 2 images")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-batch-store-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        big = None if args.no_big or not set(args.parts) & {"a", "b"} else big_home(args.big, work)
        if "a" in args.parts:
            part_a(args, work, big)
        if "b" in args.parts:
            part_b(args, work, big)
        if "c" in args.parts:
            part_c(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
