"""forked.Forked: a function run in a forked child, its value or exception taken later."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import dies_with_pytest
from facescore_cli.errors import ServiceUnavailable
from facescore_cli.forked import Forked


def _pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def _refuse(message: str) -> None:
    raise ServiceUnavailable(message)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead too
        return fh.read().split(") ")[1][0] != "Z"


def test_the_value_comes_from_another_process():
    job = Forked(_pid_and, 21)
    child = job.pid
    assert child is not None and child != os.getpid()
    assert job.result() == (child, 42)
    assert job.pid is None and not _alive(child)  # reaped


def test_the_exception_is_raised_here_with_its_type_and_message():
    job = Forked(_refuse, "no live worker on queue q")
    with pytest.raises(ServiceUnavailable, match="no live worker on queue q"):
        job.result()


def test_with_another_thread_running_it_runs_here_instead():
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        job = Forked(_pid_and, 1)
        assert job.pid is None
        assert job.result() == (os.getpid(), 2)
    finally:
        stop.set()
        other.join()


def test_close_stops_a_child_that_still_runs():
    job = Forked(time.sleep, 60)
    pid = job.pid
    assert pid is not None and _alive(pid)
    job.close()
    assert not _alive(pid)


def _slow_in_a_child(parent: int, value: int) -> tuple[int, int]:
    if os.getpid() != parent:
        time.sleep(60)  # killed long before this ends
    return os.getpid(), value * 2


def test_a_killed_child_gives_the_answer_from_here():
    job = Forked(_slow_in_a_child, os.getpid(), 5)
    os.kill(job.pid, signal.SIGKILL)
    assert job.result() == (os.getpid(), 10)  # asked again in this process


def test_the_child_dies_with_its_parent_even_after_sigkill():
    code = textwrap.dedent("""
        import sys, time
        from facescore_cli.forked import Forked
        job = Forked(time.sleep, 60)
        print(job.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              preexec_fn=dies_with_pytest())
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait(10)
