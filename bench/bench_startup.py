"""How fast facescore starts: `--version`, every `--help`, and one `score photo.jpg` against the
face_recognition command line on the same photo, same run.

    pip install --no-deps face_recognition && pip install click 'setuptools<81'
    python bench/bench_startup.py [--repeat 5] [--photo PATH]

Every command is a fresh process, timed whole (interpreter start-up included). The commands
are alternated round by round and each row is the best of --repeat, with the spread (worst /
best). The anchor row `python -c pass` is the interpreter alone, on the same machine in the same
run. `score` runs with default settings (the face store on) in a fresh FACESCORE_HOME whose
model cache was filled beforehand, as after a first run on a machine; the face_recognition CLI
gets the same photo and an empty folder of known people, with --cpus 1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HELP_TARGET_S = 0.25
SCORE_TARGET = 0.3


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "faces" / "omi-46.jpg")
    args = ap.parse_args()

    anchor_bin = shutil.which("face_recognition") or str(BIN / "face_recognition")
    if not Path(anchor_bin).exists():
        sys.exit("the anchor is missing: pip install --no-deps face_recognition && pip install click 'setuptools<81'")
    facescore = str(BIN / "facescore")
    with tempfile.TemporaryDirectory(prefix="facescore-startup-") as tmp:
        home, known = Path(tmp) / "home", Path(tmp) / "known"
        known.mkdir()
        env = {**os.environ, "FACESCORE_HOME": str(home)}
        # fill the model cache (and create the store) once, as a first run would
        timed([facescore, "score", str(args.photo), "--via", "local", "-q"], env)
        commands: dict[str, list[str]] = {"python -c pass (anchor)": [sys.executable, "-c", "pass"],
                                          "facescore --version": [facescore, "--version"],
                                          "facescore --help": [facescore, "--help"]}
        for sub in ("score", "batch", "submit", "results", "worker", "health", "similar", "forget", "report",
                    "train", "evaluate", "serve api", "serve detection", "serve embedding"):
            commands[f"facescore {sub} --help"] = [facescore, *sub.split(), "--help"]
        commands["facescore score photo"] = [facescore, "score", str(args.photo), "-q"]
        commands["face_recognition photo (anchor)"] = [anchor_bin, "--cpus", "1", str(known), str(args.photo)]
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                times[name].append(timed(cmd, env))
    best = {k: min(v) for k, v in times.items()}
    print(f"start-up, best of {args.repeat} alternated rounds (s); spread = worst / best")
    print("| command | best s | spread | target |")
    print("|---|---:|---:|---|")
    for name, vals in times.items():
        target = ""
        if name.startswith("facescore") and name != "facescore score photo":
            target = f"< {HELP_TARGET_S} s: {'met' if best[name] < HELP_TARGET_S else 'NOT met'}"
        print(f"| {name} | {best[name]:.3f} | {max(vals) / min(vals):.2f} | {target} |")
    ratio = best["facescore score photo"] / best["face_recognition photo (anchor)"]
    print(f"\none photo: facescore score {best['facescore score photo']:.2f} s, face_recognition "
          f"{best['face_recognition photo (anchor)']:.2f} s: {ratio:.2f}x its time "
          f"(target <= {SCORE_TARGET}x: {'met' if ratio <= SCORE_TARGET else 'NOT met'})")
    slowest = max((k for k in best if k.startswith("facescore") and k != "facescore score photo"), key=best.get)
    print(f"slowest start: {slowest} {best[slowest]:.3f} s; the interpreter alone {best['python -c pass (anchor)']:.3f} s")


if __name__ == "__main__":
    main()
