"""__main__.exit_now: the command's exit without the interpreter's teardown keeps what sys.exit
promises: the status, the atexit handlers, flushed output, threads that are not daemons."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import dies_with_pytest


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_status_atexit_handlers_and_buffered_output_survive():
    res = run("""
        import atexit, sys, threading, time
        from facescore_cli.__main__ import exit_now
        atexit.register(lambda: print("atexit ran"))
        def late():
            time.sleep(0.3)
            print("thread finished")
        threading.Thread(target=late).start()
        sys.stdout.write("no newline yet")  # still in the buffer
        exit_now(3)
    """)
    assert res.returncode == 3
    assert res.stdout == "no newline yetthread finished\natexit ran\n"


def test_exit_codes_as_sys_exit_gives_them():
    assert run("from facescore_cli.__main__ import exit_now; exit_now(None)").returncode == 0
    res = run("from facescore_cli.__main__ import exit_now; exit_now('bad thing')")
    assert res.returncode == 1 and res.stderr == "bad thing\n"
    assert run("from facescore_cli.__main__ import exit_now; exit_now(-1)").returncode == 255


def test_a_closed_stdout_is_not_an_error():
    proc = subprocess.Popen([sys.executable, "-c", "from facescore_cli.__main__ import exit_now\n"
                             "import sys\nsys.stdout.write('x' * 100000)\nexit_now(0)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=dies_with_pytest())
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err
