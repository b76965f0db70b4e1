"""batch --resume (issue 12 goal 4) and stop signals (goal 5): never lose or repeat an image."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import dies_with_pytest
from facescore_cli.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def photos(tmp_path: Path, omi_dir: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for stim in ("1", "2", "3", "4"):
        shutil.copy(omi_dir / "images" / f"{stim}.jpg", folder / f"{stim}.jpg")
    return folder


def per_image(rows: list[dict]) -> Counter:
    return Counter(os.path.realpath(r["path"]) for r in rows if r["face"] in ("", "0"))


def test_another_spelling_of_the_folder_adds_no_row(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    assert invoke("batch", str(photos.resolve()), "--out", str(out), "--via", "local", "--no-store").exit_code == 0
    before = out.read_bytes()
    os.chdir(tmp_path)  # the parent folder: `photos` relative
    res = invoke("batch", "photos", "--out", str(out), "--resume", "--via", "local", "--no-store")
    assert res.exit_code == 0 and "nothing to score" in res.stderr
    assert out.read_bytes() == before


def _live_children() -> list[str]:
    """The command lines of the processes (not zombies) whose parent is this test process, but
    multiprocessing's resource tracker, which lives as long as its owner by design."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid = rest.rsplit(") ", 1)[1].split()[:2]
        if int(ppid) == me and state != "Z" and "resource_tracker" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_nothing_to_score_stops_the_scoring_processes_started_early(clean_env: Path, photos: Path,
                                                                      tmp_path: Path) -> None:
    # With --via local, batch starts its scoring processes before it reads --out; when --resume
    # then finds nothing to do, they must go as well.
    out = tmp_path / "r.csv"
    before = _live_children()  # e.g. the tests' own redis-server
    assert invoke("batch", str(photos), "--out", str(out), "--via", "local", "--no-store", "--jobs", "2").exit_code == 0
    assert _live_children() == before
    res = invoke("batch", str(photos), "--out", str(out), "--resume", "--via", "local", "--no-store", "--jobs", "2")
    assert res.exit_code == 0 and "nothing to score" in res.stderr
    assert _live_children() == before


def test_moved_folder_is_recognised_by_content(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    os.chdir(tmp_path)
    assert invoke("batch", "photos", "--out", str(out), "--via", "local", "--no-store").exit_code == 0
    moved = tmp_path / "moved"
    photos.rename(moved)
    shutil.copy(moved / "1.jpg", moved / "copy-of-1.jpg")  # same bytes, a new file: scored on its own
    res = invoke("batch", str(moved), "--out", str(out), "--resume", "--via", "local", "--no-store")
    assert res.exit_code == 0, res.output
    assert "4 of them recognised by content" in res.stderr
    rows = rows_of(out)
    assert len(rows) == 5 and rows[-1]["path"].endswith("copy-of-1.jpg")


def test_cut_line_is_repaired_and_errors_retried(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    (photos / "0-broken.jpg").write_bytes(b"not yet an image")
    assert invoke("batch", str(photos), "--out", str(out), "--via", "local", "--no-store").exit_code == 1
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    last = lines[-1]
    out.write_text("".join(lines[:-1]) + last[: len(last.split(",")[0]) + 3])  # cut after the path column
    cut_path = last.split(",")[0]
    shutil.copy(photos / "1.jpg", photos / "0-broken.jpg")  # the failed image is now fine
    res = invoke("batch", str(photos), "--out", str(out), "--resume", "--via", "local", "--no-store")
    assert res.exit_code == 0, res.output
    assert "repaired" in res.stderr and cut_path in res.stderr
    assert "scoring again 1 image(s) whose rows were errors" in res.stderr
    rows = rows_of(out)
    assert per_image(rows) == Counter({os.path.realpath(p): 1 for p in photos.iterdir()})
    assert all(r["error"] == "" for r in rows)


def test_duplicates_from_older_runs_are_dropped(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    assert invoke("batch", str(photos), "--out", str(out), "--via", "local", "--no-store").exit_code == 0
    lines = out.read_text().splitlines(keepends=True)
    # what the old --resume did from the parent folder: the same images again under another spelling
    again = [line.replace(str(photos), os.path.relpath(photos, tmp_path), 1) for line in lines[1:]]
    out.write_text("".join(lines + again))
    os.chdir(tmp_path)
    res = invoke("batch", str(photos), "--out", str(out), "--resume", "--via", "local", "--no-store")
    assert res.exit_code == 0, res.output
    assert per_image(rows_of(out)) == Counter({os.path.realpath(p): 1 for p in photos.iterdir()})


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]


@pytest.mark.parametrize("sig, code", SIGNALS, ids=[s.name for s, _ in SIGNALS])
def test_signal_stops_cleanly_and_resume_completes(clean_env: Path, omi_dir: Path, tmp_path: Path,
                                                   sig: signal.Signals, code: int) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for stim in sorted(p.stem for p in (omi_dir / "images").glob("*.jpg"))[:40]:
        shutil.copy(omi_dir / "images" / f"{stim}.jpg", folder / f"{stim}.jpg")
    out = tmp_path / "r.csv"
    argv = ["batch", str(folder), "--out", str(out), "--via", "local", "--no-store", "--jobs", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "facescore_cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=dies_with_pytest())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert f"stopped by {sig.name}" in stderr
    again = f"python -m facescore_cli {' '.join(argv)} --resume"
    assert again in stderr
    partial = per_image(rows_of(out))
    assert 0 < len(partial) < 40 and set(partial.values()) == {1}
    res = subprocess.run([sys.executable, "-m", "facescore_cli", *argv, "--resume"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert per_image(rows_of(out)) == Counter({os.path.realpath(p): 1 for p in folder.iterdir()})


def test_store_rank_does_not_depend_on_which_process_finished_first(clean_env: Path, omi_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for stim in ("9", "11", "12", "13", "14", "15"):
        shutil.copy(omi_dir / "images" / f"{stim}.jpg", folder / f"{stim}.jpg")
    (folder / "9.jpg").rename(folder / "0-big.jpg")  # first in input order
    ranks = []
    for run in ("a", "b"):
        monkeypatch.setenv("FACESCORE_HOME", str(tmp_path / f"home-{run}"))  # an empty store each time
        out = tmp_path / f"{run}.csv"
        res = invoke("batch", str(folder), "--out", str(out), "--via", "local", "--jobs", "2")
        assert res.exit_code == 0, res.output
        rows = rows_of(out)
        assert [r["path"] for r in rows] == sorted(str(p) for p in folder.iterdir())  # input order
        ranks.append([(r["path"], r["store_rank"]) for r in rows])
    assert ranks[0] == ranks[1]
    assert ranks[0][0][1] == ""  # the first face stored has no other face to rank against
