"""Helpers for the queue tests: real `facescore worker` processes, small real face images, the
environment a CLI subprocess runs with."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from PIL import Image

from conftest import dies_with_pytest
from facescore_cli import queue
from facescore_cli.config import Settings

CLI = [sys.executable, "-m", "facescore_cli"]


def real_ml_available() -> bool:
    """The scoring head has landed: test with the real models, with no silent simulated fallback."""
    try:
        from facescore_cli.ml.head import load_head

        load_head()
        return True
    except Exception:
        return False


def base_env(redis_url: str, home: Path, queue_name: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESCORE_", "FACE_", "QDRANT_"))
           and k not in ("REDIS_URL", "USE_REAL_ML", "FALLBACK_TO_SIMULATED", "FALLBACK_TO_LOCAL")}
    env.update(REDIS_URL=redis_url, FACESCORE_HOME=str(home),
               FACESCORE_QUEUE=queue_name or f"test-{uuid.uuid4().hex[:8]}", PYTHONUNBUFFERED="1")
    if real_ml_available():
        env.update(USE_REAL_ML="true", FALLBACK_TO_SIMULATED="false")
    else:
        env.update(USE_REAL_ML="false")
    env.update(extra)
    return env


def settings_for(env: dict[str, str]) -> Settings:
    return Settings.load(environ=env, dotenv=None)


class WorkerProc:
    """One `facescore worker` subprocess; its JSON log lines are read from a file."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 1, lock_ms: int = 2000,
                 stalled_ms: int = 1000, grace: float = 10.0) -> None:
        self.env = env
        self.log = log
        self.fh = log.open("w")
        self.proc = subprocess.Popen(
            CLI + ["worker", "--concurrency", str(concurrency), "--lock-duration", f"{lock_ms}ms",
                   "--stalled-interval", f"{stalled_ms}ms", "--grace", str(grace)],
            env=env, stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=dies_with_pytest(),
        )

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines() if line.get("event") == name]

    def wait_started(self, timeout: float = 60.0) -> "WorkerProc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events("started"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker did not start: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        """A crash: the main process dies at once, holding its jobs' locks."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        else:  # its pool processes may outlive a SIGKILL of the parent
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.fh.close()


def wait_live(env: dict[str, str], n: int = 1, timeout: float = 30.0) -> list[dict]:
    settings = settings_for(env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = queue.live_workers(settings)
        if len(workers) >= n:
            return workers
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {n} live worker(s)")


def small_faces(omi: Path, out: Path, n: int, side: int = 256) -> list[Path]:
    """`n` real OMI face photos scaled to `side` px (fast to score, still one real face each)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in sorted((omi / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:n]:
        dst = out / f"omi-{src.stem}.jpg"
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            im.save(dst, quality=90)
        paths.append(dst)
    return paths


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120.0, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          preexec_fn=dies_with_pytest())


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                continue
    return out


def wait_until(cond, timeout: float, what: str) -> None:
    """Poll `cond` every 50 ms; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def scoring_children(pid: int) -> list[int]:
    """The children of `pid` that are scoring processes (not multiprocessing's resource tracker)."""
    out = []
    for kid in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                out.append(kid)
        except OSError:
            continue
    return out


def big_photo(src: Path, dst: Path, side: int = 5000) -> Path:
    """A real photo upscaled to side x side: about a second of scoring, to catch a process at it."""
    with Image.open(src) as im:
        im.convert("RGB").resize((side, side)).save(dst, quality=90)
    return dst


class paused:
    """The scoring processes of `owner` stopped (SIGSTOP) inside the block and continued after:
    whatever they hold or are handed meanwhile cannot finish, however fast the machine scores,
    so a test's "while it is still being scored" holds by construction, not by timing."""

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.pids: list[int] = []

    def __enter__(self) -> "paused":
        self.pids = scoring_children(self.owner)
        assert self.pids, f"no scoring process under {self.owner}"
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


async def add_jobs(settings: Settings, jobs: list[tuple[str, dict, dict]]) -> None:
    """(name, data, opts) jobs added by BullMQ's own Queue.add, as any producer would."""
    from bullmq import Queue

    q = Queue(settings.queue, queue.bull_opts(settings))
    try:
        for name, data, opts in jobs:
            await q.add(name, data, opts)
    finally:
        await q.close()


def finished_job(client, settings: Settings, jid: str, timeout: float = 30.0) -> dict[str, str]:
    """The job's Redis hash once BullMQ has recorded its outcome (finishedOn set)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.hgetall(f"{queue.PREFIX}:{settings.queue}:{jid}")
        if job.get("finishedOn"):
            return job
        time.sleep(0.05)
    raise TimeoutError(jid)


def kill9_and_check_gone(proc: subprocess.Popen, pids: list[int], timeout: float, what: str) -> None:
    """SIGKILL `proc`, reap it, and wait (up to `timeout` s) until none of `pids` is alive."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not any(alive(p) for p in pids), timeout, what)
