"""One owner for the scoring processes: `batch`, `worker` and `serve api --via local` all score
through a `ScoringPool`.

Each process loads the models once and scores one image at a time; a thread of the owner feeds
it over a pipe. What the pool guarantees, and `concurrent.futures.ProcessPoolExecutor` does not:

- a process that dies (a native crash, the OOM killer, `kill -9`) is replaced, and the image it
  held is tried once more in the new one; a second crash on it gives that image an error result.
  The other processes and their images are not disturbed;
- a process that takes longer than the time limit on one image (`FACESCORE_IMAGE_TIMEOUT`, 60 s:
  a native loop, a pathological image, SIGSTOP) is killed with SIGKILL and replaced, and that
  image gets an error result at once, without a retry: a deterministic hang would hang again;
- work that has not started can be cancelled (`Future.cancel()`), so an image nobody waits for
  any more is never scored; `max_waiting` bounds what may wait at all (`PoolBusy` beyond it);
- a process is handed the next file before it answers for the one it scores (HOLD), so it never
  sits idle waiting for the owner's threads; the file it holds is not blamed when it is lost;
- no process outlives its owner by more than about a second, even after SIGKILL of the owner:
  the kernel sends it SIGKILL when the owning thread dies (prctl PR_SET_PDEATHSIG), and a thread
  in it checks every second that its parent is still the one that started it (gunicorn's
  "Parent changed, shutting down") for the cases prctl misses (not Linux, a race at start);
- Ctrl-C reaches the whole process group, but only the owner decides: the processes ignore it.

Processes start with `spawn`: a fresh interpreter, no copy of the owner's threads (uvicorn's,
asyncio's, redis-py's) or locks. Loading the models dominates start-up either way (see
docs/queue-and-api.md for the figures), and each process is started by its own feeding thread,
which lives as long as the pool: the PDEATHSIG is tied to the thread that started the process.
"""
from __future__ import annotations

import base64
import binascii
import collections
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import blas, heap
from .config import Settings
from .errors import ServiceUnavailable
from .forked import die_with_parent
from .result import NO_FACE, ImageResult

CRASHED = "the scoring process crashed on this image"
PARENT_CHECK_S = 1.0
READY_TIMEOUT_S = 300.0  # loading the models on a busy 2-core machine
# Starts in a row that a slot may fail (backing off 1, 2, 4 s...) before, with no process ready
# anywhere, the images waiting get an error instead of waiting for ever: a broken install must
# end a batch with one-line errors, not hang it. The pool keeps trying for later work.
START_FAILURES = 4
# Images a process may hold at once: the one it scores and the next, already in its pipe, so that
# it starts on the next the moment it answers instead of waiting for its feeding thread, which
# needs the owner's GIL to hand it over (held 5-10 ms at a time by the face store's native calls,
# by the output, by an HTTP server's threads: 4-12 ms a group photo that the process sat idle).
# Only files (a path: a message far below the pipe's buffer, so a send never waits on the
# process) are sent ahead, and only while every process has at least one more image waiting:
# the last images of a batch are never held behind another while a process is free.
HOLD = 2


_TOO_LONG = "scoring took longer than {:g} s"


def too_long(limit_s: float) -> str:
    """The error of an image that was still scoring when its time limit ran out."""
    return _TOO_LONG.format(limit_s)


def is_too_long(error: object) -> bool:
    """Whether `error` is `too_long`'s: how a job's failure reason, which BullMQ keeps as text
    only, tells a timed-out image from the others."""
    pattern = re.escape(_TOO_LONG).replace(re.escape("{:g}"), "[0-9.e+-]+")
    return isinstance(error, str) and re.fullmatch(pattern, error) is not None


class PoolBusy(ServiceUnavailable):
    """More images are waiting than the pool's `max_waiting`; try again later."""


class PoolClosed(ServiceUnavailable):
    """The pool is shutting down; it takes no more work."""


@dataclass(frozen=True)
class PoolStatus:
    processes: int  # how many the pool keeps
    ready: int  # alive with their models loaded
    running: int  # images handed to a process: being scored, or the next it holds (HOLD)
    waiting: int  # images submitted, not yet started
    restarts: int  # processes replaced since the start
    scored: int  # images the processes have scored (cancelled ones never are)
    last_error: str | None  # why the last one was replaced or could not start

    @property
    def can_score(self) -> bool:
        return self.ready > 0

    def to_json(self) -> dict[str, Any]:
        return {"processes": self.processes, "ready": self.ready, "running": self.running,
                "waiting": self.waiting, "restarts": self.restarts, "scored": self.scored, "last_error": self.last_error}


# -- in the scoring processes -----------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    die_with_parent(parent)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                sys.stderr.write(f"facescore scoring process {os.getpid()}: parent changed, shutting down\n")
                os._exit(1)
            time.sleep(PARENT_CHECK_S)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def warm_up(scorer: Any) -> None:
    """Load every link's models now, so the first image is not slow. A link that cannot warm up
    fails per image instead, and the chain falls back as configured."""
    for link in scorer.chain:
        warm = getattr(link, "warm_up", None)
        if warm:
            try:
                warm()
            except Exception:  # refusing to start would fail every image, fallback or not
                pass


def _score_file(scorer: Any, path: str, display: str) -> ImageResult:
    try:
        return scorer.score_file(Path(path), display)
    except Exception as exc:
        return ImageResult(path=display, error=f"{type(exc).__name__}: {exc}")


def _score_encoded(scorer: Any, image_b64: str, filename: str, min_face: int | None = None) -> dict[str, Any]:
    """Decode and score one base64 image (a job's or a request's). Returns {"kind": "ok" |
    "image" | "failed", ...}: "image" is the input's fault (no retry helps), "failed" is not.
    `min_face` None: the process's settings decide."""
    max_bytes = scorer.settings.max_image_bytes
    image_b64 = image_b64.strip()
    if image_b64.startswith("data:") and "," in image_b64:  # a data URL, as browsers send them
        image_b64 = image_b64.split(",", 1)[1]
    if len(image_b64) // 4 * 3 > max_bytes + 3:
        mb = len(image_b64) // 4 * 3 / (1024 * 1024)
        return {"kind": "image", "error": f"image is {mb:.1f} MB, over the {max_bytes / (1024 * 1024):.1f} MB cap"}
    try:
        data = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError):
        return {"kind": "image", "error": "job data 'image' is not valid base64"}
    try:
        result = scorer.score_bytes(data, filename, min_face=min_face)
    except Exception as exc:
        return {"kind": "failed", "error": f"{type(exc).__name__}: {exc}"}
    if result.error and result.width is None:  # refused before any pixel was decoded: the input's fault
        return {"kind": "image", "error": result.error, "sha256": result.sha256}
    if result.failed:
        return {"kind": "failed", "error": result.error, "sha256": result.sha256}
    out = result.to_data()
    out["embeddings"] = result.embeddings or []
    if result.error == NO_FACE:
        out["error"] = NO_FACE
    return {"kind": "ok", "data": out, "ms": result.elapsed_ms}


_TASKS = {"file": _score_file, "encoded": _score_encoded}


def _child_main(conn: Any, settings: Settings, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when we stop
    _die_with_parent(parent)
    blas.one_thread()  # before .scoring imports numpy: also when the owner is not our CLI
    heap.keep_freed_memory()  # before the models and the first image allocate
    try:
        from .scoring import Scorer

        scorer = Scorer.from_settings(settings)
        warm_up(scorer)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg is None:
            # Nothing here needs a tidy interpreter shutdown (no files, no store): tearing down
            # numpy, onnxruntime and dlib took ~0.2 s that the owner's close() waited for.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        kind, args = msg
        conn.send(_TASKS[kind](scorer, *args))


# -- in the owner -----------------------------------------------------------------------------


class _Task:
    __slots__ = ("kind", "args", "future", "crashes", "display", "started")

    def __init__(self, kind: str, args: tuple[Any, ...], display: str) -> None:
        self.kind = kind
        self.args = args
        self.future: Future[Any] = Future()
        self.crashes = 0
        self.display = display
        self.started = False  # its future is running: it can no longer be cancelled

    def claim(self) -> bool:
        """Mark its future running; False when it was cancelled (then it is dropped, never scored).
        A retried task is running already."""
        if not self.started:
            self.started = self.future.set_running_or_notify_cancel()
        return self.started

    def lost(self, error: str, kind: str = "crashed") -> Any:
        """The result of an image whose process was lost on it for good: an error row, or `kind`
        "crashed" (twice) or "timeout" (killed past the time limit); no retry can help either."""
        if self.kind == "file":
            return ImageResult(path=self.display, error=error)
        return {"kind": kind, "error": error}


class _Gone(Exception):
    """The process died (or the pipe broke) while it held a task or while starting."""


class _TooLong(_Gone):
    """The process held one task past the time limit; it has been killed."""


class ScoringPool:
    """`processes` scoring processes, started at once (`start()`) or on first use.

    `submit_file` / `submit_encoded` return a `concurrent.futures.Future` (wrap it with
    `asyncio.wrap_future` in async code). Cancel it before it starts and the image is never
    scored. They raise `PoolBusy` when `max_waiting` images already wait, `PoolClosed` after
    `close()`. Use it as a context manager, or call `close()`.
    """

    def __init__(self, settings: Settings, processes: int, *, max_waiting: int | None = None) -> None:
        self.settings = settings
        # 0: no limit. The clock starts when the process receives the image, not while it waits.
        self.image_timeout_s = settings.image_timeout_s
        self.processes = max(1, processes)
        self.max_waiting = max_waiting
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Condition()
        self._waiting: collections.deque[_Task] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._pids: dict[int, int] = {}  # slot -> pid of its live process
        self._busy: set[int] = set()  # slots scoring an image now
        self._ready = 0
        self._running = 0
        self._restarts = 0
        self._scored = 0
        self._last_error: str | None = None
        self._closing = False
        self._owner = os.getpid()

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> "ScoringPool":
        with self._lock:
            if self._threads or self._closing:
                return self
            for slot in range(self.processes):
                t = threading.Thread(target=self._feed, args=(slot,), name=f"scoring-{slot}", daemon=True)
                self._threads.append(t)
            for t in self._threads:
                t.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every process has its models loaded; False on timeout
        (`status().last_error` says why, when a process could not start)."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._ready < self.processes:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left if left is not None else 1.0)
        return True

    def close(self, grace_s: float = 5.0) -> None:
        """Cancel what waits, let running images finish within `grace_s`, stop every process."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            while self._waiting:
                task = self._waiting.popleft()
                if not task.future.cancel() and not task.future.done():
                    task.future.set_exception(PoolClosed("the scoring pool was closed"))
            self._lock.notify_all()
        deadline = time.monotonic() + grace_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for pid in self.pids():  # still scoring after the grace period
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for t in self._threads:
            t.join(5.0)

    def __enter__(self) -> "ScoringPool":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def pids(self, busy: bool = False) -> list[int]:
        """The live scoring processes; with busy=True those scoring an image now."""
        with self._lock:
            return sorted(pid for slot, pid in self._pids.items() if not busy or slot in self._busy)

    def status(self) -> PoolStatus:
        with self._lock:
            return PoolStatus(self.processes, self._ready, self._running, len(self._waiting), self._restarts,
                              self._scored, self._last_error)

    # work --------------------------------------------------------------------------------------

    def submit_file(self, path: Path | str, display: str) -> "Future[ImageResult]":
        """Score a file; the result is an ImageResult (an error row when it cannot be scored)."""
        return self._submit(_Task("file", (str(path), display), display))

    def submit_encoded(self, image_b64: str, filename: str = "", min_face: int | None = None) -> "Future[dict[str, Any]]":
        """Score a base64 image: {"kind": "ok", "data": ImageResult.to_data() + "embeddings"} or
        {"kind": "image" | "failed" | "crashed" | "timeout", "error": ...}; "crashed": two processes
        were lost on this image, "timeout": one was killed past the time limit on it (`too_long`);
        retrying either elsewhere would not help.
        `min_face`: the narrowest face to look for (None: the pool's settings, FACESCORE_MIN_FACE)."""
        return self._submit(_Task("encoded", (image_b64, filename, min_face), filename))

    def _submit(self, task: _Task) -> Future[Any]:
        self.start()
        with self._lock:
            if self._closing:
                raise PoolClosed("the scoring pool is shutting down")
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise PoolBusy(f"{len(self._waiting)} image(s) already waiting for {self.processes} "
                               f"scoring process(es)")
            self._waiting.append(task)
            self._lock.notify()
        return task.future

    def _take(self) -> _Task | None:
        """The next task nobody cancelled; None after a second without one (so the feeding
        thread can look at its process) or when closing."""
        with self._lock:
            task = self._next_locked()
            if task is None and not self._closing:
                self._lock.wait(PARENT_CHECK_S)
                task = self._next_locked()
            return task

    def _take_ahead(self) -> _Task | None:
        """A file to send a process ahead of time (see HOLD), if one waits and at least as many
        images wait as there are processes; None otherwise, without waiting."""
        with self._lock:
            while self._waiting and not self._closing and len(self._waiting) >= self.processes:
                task = self._waiting[0]
                if task.kind != "file":
                    return None
                self._waiting.popleft()
                if task.claim():
                    self._running += 1
                    return task
            return None

    def _next_locked(self) -> _Task | None:
        while self._waiting:
            task = self._waiting.popleft()
            if task.claim():
                self._running += 1
                return task
        return None

    def _fail_waiting(self, error: str) -> None:
        """While no process is ready, give every waiting image `error` (cancelled ones stay
        cancelled); work handed in later waits for a process again."""
        with self._lock:
            if self._ready:
                return
            while self._waiting:
                task = self._waiting.popleft()
                if task.claim():
                    task.future.set_result(task.lost(error))

    # one feeding thread per process ------------------------------------------------------------

    def _spawn(self, slot: int) -> tuple[Any, Any]:
        parent_end, child_end = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child_main, args=(child_end, self.settings, self._owner),
                                 name=f"facescore-scoring-{slot}", daemon=True)
        proc.start()
        child_end.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not parent_end.poll(0.2):
            if self._closing or not proc.is_alive() or time.monotonic() > deadline:
                self._stop(proc, parent_end, 0.0)
                raise _Gone("exited while loading the models" if not self._closing else "closing")
        try:
            state, detail = parent_end.recv()
        except (EOFError, OSError):
            self._stop(proc, parent_end, 0.0)
            raise _Gone("exited while loading the models") from None
        if state != "ready":
            self._stop(proc, parent_end, 0.0)
            raise _Gone(f"could not load the models: {detail}")
        return proc, parent_end

    @staticmethod
    def _send(conn: Any, task: _Task) -> bool:
        """Hand the process a task; False when its pipe is broken (the process is gone)."""
        try:
            conn.send((task.kind, task.args))
        except (OSError, ValueError):
            return False
        return True

    def _answer(self, proc: Any, conn: Any, since: float) -> Any:
        """The process's answer for the oldest task it holds, which it began at `since` (the time
        limit counts from then); _Gone when it dies first, _TooLong (killed) past the limit."""
        limit = self.image_timeout_s
        deadline = since + limit if limit > 0 else None
        try:
            while not conn.poll(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))):
                if not proc.is_alive():
                    raise _Gone(f"exited with {proc.exitcode}")
                if deadline is not None and time.monotonic() >= deadline:
                    proc.kill()  # SIGKILL: it also ends a stopped process, which SIGTERM would not
                    proc.join(5.0)
                    raise _TooLong(f"was killed after {limit:g} s")
            return conn.recv()
        except (EOFError, OSError) as exc:
            proc.join(1.0)
            raise _Gone(f"exited with {proc.exitcode}" if proc.exitcode is not None else str(exc)) from None

    def _feed(self, slot: int) -> None:
        proc = conn = None
        failures = 0
        held: collections.deque[_Task] = collections.deque()  # sent to the process, oldest first
        since = 0.0  # when the process began on held[0]
        try:
            while True:
                if proc is None:
                    if self._closing:
                        return
                    try:
                        proc, conn = self._spawn(slot)
                        failures = 0
                    except Exception as exc:  # _Gone, or the process could not even start
                        if self._closing:
                            return
                        failures += 1
                        self._note(slot, None, f"scoring process {slot} {exc}", restarted=False)
                        if failures >= START_FAILURES:
                            self._fail_waiting(f"no scoring process could start ({exc})")
                        time.sleep(min(30.0, 0.5 * 2 ** failures))  # a broken install: do not spin
                        continue
                    with self._lock:
                        self._pids[slot] = proc.pid
                        self._ready += 1
                        self._lock.notify_all()
                if not held:
                    task = self._take()
                    if task is None and self._closing:
                        return
                    if not proc.is_alive() or (task is not None and not self._send(conn, task)):
                        # died while idle: replace it; the task is not to blame
                        proc.join(1.0)  # a broken pipe can come a moment before the exit status
                        self._note(slot, proc, f"scoring process {proc.pid} exited with {proc.exitcode} while idle")
                        proc = conn = None
                        if task is not None:
                            self._give_back([task])
                        continue
                    if task is None:
                        continue
                    held.append(task)
                    since = time.monotonic()
                    with self._lock:
                        self._busy.add(slot)
                while len(held) < HOLD and held[-1].kind == "file":
                    ahead = self._take_ahead()
                    if ahead is None:
                        break
                    held.append(ahead)
                    if not self._send(conn, ahead):
                        break  # gone: _answer says so
                try:
                    value = self._answer(proc, conn, since)
                except _Gone as exc:
                    task = held.popleft()
                    if self._closing:  # stopped by close() after its grace period
                        self._note(slot, proc, None)
                    else:
                        self._note(slot, proc, f"scoring process {proc.pid} {exc} while scoring "
                                               f"{task.display or 'an image'}")
                    proc = conn = None
                    with self._lock:  # (reentrant): the files it held go back behind `task`, in order
                        self._give_back(held)  # sent ahead, not begun: not to blame
                        held.clear()
                        self._busy.discard(slot)
                        self._running -= 1
                        task.crashes += 1
                        if self._closing:  # not the image's fault: the owner may hand it to another
                            task.future.set_exception(PoolClosed("the scoring pool was closed while scoring"))
                        elif isinstance(exc, _TooLong):  # not retried: a deterministic hang hangs again
                            task.future.set_result(task.lost(too_long(self.image_timeout_s), "timeout"))
                        elif task.crashes >= 2:
                            task.future.set_result(task.lost(CRASHED))
                        else:
                            self._waiting.appendleft(task)  # once more, in a fresh process
                            self._lock.notify()
                    continue
                task = held.popleft()
                since = time.monotonic()  # the process has begun on the next it holds
                with self._lock:
                    if not held:
                        self._busy.discard(slot)
                    self._running -= 1
                    self._scored += 1
                task.future.set_result(value)
        finally:
            if held:  # only on an unexpected error in this thread: no future may wait for ever
                self._give_back(held)
            if proc is not None:
                self._stop(proc, conn, 5.0)
                with self._lock:
                    self._pids.pop(slot, None)
                    self._ready -= 1
                    self._lock.notify_all()

    def _give_back(self, tasks: "collections.abc.Iterable[_Task]") -> None:
        """Tasks a process was handed but never began (it died first): back to the front of the
        queue in their order, still claimed; closing, they fail with PoolClosed instead."""
        tasks = list(tasks)
        with self._lock:
            self._running -= len(tasks)
            for task in reversed(tasks):
                if self._closing:
                    task.future.set_exception(PoolClosed("the scoring pool was closed"))
                else:
                    self._waiting.appendleft(task)
            self._lock.notify_all()

    def _note(self, slot: int, proc: Any, error: str | None, restarted: bool = True) -> None:
        """Record the loss of a slot's process (error None: a stop, not a failure)."""
        with self._lock:
            if proc is not None:
                self._pids.pop(slot, None)
                self._ready -= 1
                self._lock.notify_all()
            if error is not None:
                self._restarts += restarted
                self._last_error = error
        if proc is not None:
            self._stop(proc, None, 0.0)
        if error is not None:
            sys.stderr.write(f"facescore: {error}; starting another\n")

    @staticmethod
    def _stop(proc: Any, conn: Any, grace_s: float) -> None:
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        proc.join(grace_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(2.0)
        if conn is not None:
            conn.close()
