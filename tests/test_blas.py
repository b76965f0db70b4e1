"""One BLAS thread where we score (facescore_cli/blas.py): numpy's OpenBLAS starts a thread per
extra core as numpy loads, and it spins ~50 ms of CPU taken from the other scoring processes.
Real interpreters and a real scoring pool; a process's threads are counted in /proc."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from facescore_cli import blas
from facescore_cli.pool import ScoringPool
from queue_support import base_env, settings_for

several_cores = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or len(os.sched_getaffinity(0)) < 2,
    reason="OpenBLAS starts no thread of its own on one core (and /proc is Linux's)")


@pytest.mark.parametrize("args, command", [
    (["score", "photo.jpg"], "score"),
    (["-q", "batch", "photos/", "--jobs", "2"], "batch"),
    (["--verbose", "-v", "train", "--out", "x"], "train"),
    (["serve", "api"], "serve"),
    (["--help"], None),
    ([], None),
])
def test_the_command_is_the_first_argument_that_is_not_an_option(args, command) -> None:
    assert blas.command_of(args) == command


def threads_numpy_adds(args: list[str], env_value: str | None) -> int:
    """Threads that importing numpy adds in a fresh interpreter after blas.for_command(args)."""
    code = f"""
        import os
        from facescore_cli import blas
        blas.for_command({args!r})
        before = len(os.listdir("/proc/self/task"))
        import numpy
        print(len(os.listdir("/proc/self/task")) - before, os.environ.get(blas.VARIABLE))
    """
    env = {k: v for k, v in os.environ.items() if k != blas.VARIABLE}
    if env_value is not None:
        env[blas.VARIABLE] = env_value
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    added, value = res.stdout.split()
    assert value == (env_value or ("None" if blas.command_of(args) in blas.THREADED_COMMANDS else "1"))
    return int(added)


@several_cores
def test_scoring_commands_start_no_blas_thread_training_keeps_them() -> None:
    assert threads_numpy_adds(["score", "photo.jpg"], None) == 0
    assert threads_numpy_adds(["-q", "batch", "photos/"], None) == 0
    assert threads_numpy_adds(["train"], None) >= 1
    assert threads_numpy_adds(["evaluate"], None) >= 1


@several_cores
def test_a_value_the_user_set_is_kept() -> None:
    assert threads_numpy_adds(["score", "photo.jpg"], "2") == 1


def scoring_process_threads(settings, monkeypatch: pytest.MonkeyPatch, env_value: str | None) -> int:
    if env_value is None:
        monkeypatch.delenv(blas.VARIABLE, raising=False)
    else:
        monkeypatch.setenv(blas.VARIABLE, env_value)
    with ScoringPool(settings, 1) as pool:
        assert pool.wait_ready(120)
        (pid,) = pool.pids()
        return settled_threads(pid)


def settled_threads(pid: int, quiet_s: float = 1.0, timeout_s: float = 15.0) -> int:
    """The process's thread count once it has not changed for `quiet_s`. Right after "ready" it
    still moves: a short-lived thread of the warm-up may not have ended, and onnxruntime's own
    waiting thread may not have started (counts of 2, 3 and 4 were seen at that moment for the
    same process kind, which made a single look flaky)."""
    def count() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))

    deadline = time.monotonic() + timeout_s
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"the thread count of {pid} did not settle within {timeout_s} s")


@several_cores
def test_a_scoring_process_has_one_blas_thread_whoever_started_it(tmp_path, monkeypatch) -> None:
    # An owner that did not set the variable (a library user, not our CLI): the process sets it
    # itself before numpy loads, so it has the threads of one started with the variable set.
    settings = settings_for(base_env("redis://127.0.0.1:1", tmp_path / "home"))
    unset = scoring_process_threads(settings, monkeypatch, None)
    told = scoring_process_threads(settings, monkeypatch, "1")
    assert unset == told
