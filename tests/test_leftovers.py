"""The processes the tests start die with the test run, however it dies: a pytest killed with
SIGKILL (a CI timeout, the OOM killer) leaves no redis-server, worker or scoring process behind."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import dies_with_pytest
from queue_support import alive, children, kill9_and_check_gone, wait_until

TESTS = Path(__file__).resolve().parent

INNER = textwrap.dedent('''
    import time
    from pathlib import Path

    from conftest import RedisServer
    from queue_support import WorkerProc, base_env

    def test_hold(tmp_path):
        server = RedisServer(tmp_path)
        server.start()
        worker = WorkerProc(base_env(server.url, tmp_path / "home"), tmp_path / "w.log")
        worker.wait_started(120)
        print("PIDS", server.proc.pid, worker.proc.pid, flush=True)
        time.sleep(600)
''')


def test_a_killed_test_run_leaves_no_process(tmp_path: Path):
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    inner = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                              str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
                             preexec_fn=dies_with_pytest())
    try:
        deadline = time.monotonic() + 150
        line = ""
        while time.monotonic() < deadline and not line.startswith("PIDS"):
            line = inner.stdout.readline().lstrip(".")
            assert line or inner.poll() is None, "the inner test run ended early"
        redis_pid, worker_pid = (int(p) for p in line.split()[1:])
        wait_until(lambda: children(worker_pid), 60, "the worker's scoring process")
        scoring = children(worker_pid)
        everyone = [redis_pid, worker_pid, *scoring]
        assert all(alive(p) for p in everyone)
        kill9_and_check_gone(inner, everyone, 10, "no process left after the test run's SIGKILL")
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait(10)
