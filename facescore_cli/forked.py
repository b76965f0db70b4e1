"""Run one function in a forked child while this process goes on, and take its result later.

`facescore score photo.jpg` must decide between the queue and local scoring (is a worker
listening on Redis?), and that question costs the import of redis-py and asyncio (0.1-0.25 s,
all Python, so a thread would only take turns with the model loading under the GIL). A forked
child asks it on the other core while this process loads the models.

The child is forked before this process starts any thread (a fork copies only the calling
thread, and a lock held by another would stay locked in the child); with other threads running,
or where there is no fork, the function simply runs at `result()`. The child dies with its parent
(PR_SET_PDEATHSIG), never runs this process's atexit handlers or flushes its buffers (`os._exit`),
and is reaped by `result()` or `close()`.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Forked(Generic[T]):
    """`fn(*args)` running in a child; `result()` returns its value or raises its exception."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._fn, self._args = fn, args
        self._pid: int | None = None
        self._read: int | None = None
        if hasattr(os, "fork") and threading.active_count() == 1:
            self._start()

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs (None when the function will run in this process)."""
        return self._pid

    def _start(self) -> None:
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.close(read)
                die_with_parent(parent)
                try:
                    payload = pickle.dumps(("ok", self._fn(*self._args)))
                except BaseException as exc:  # noqa: BLE001 - handed to the parent whatever it is
                    try:
                        payload = pickle.dumps(("raise", exc))
                    except Exception:  # an exception that does not pickle: its text does
                        payload = pickle.dumps(("raise", RuntimeError(f"{type(exc).__name__}: {exc}")))
                view = memoryview(payload)
                while view:
                    view = view[os.write(write, view):]
            except BaseException:  # noqa: BLE001 - never return into the parent's code
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        self._pid, self._read = pid, read

    def result(self) -> T:
        """The function's value (waiting for the child), or its exception raised here."""
        if self._pid is None:
            return self._fn(*self._args)
        chunks = []
        assert self._read is not None
        while True:
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        self.close()
        try:
            kind, value = pickle.loads(b"".join(chunks))
        except Exception:
            # The child died without an answer (killed, out of memory): ask here instead.
            return self._fn(*self._args)
        if kind == "raise":
            raise value
        return value

    def close(self) -> None:
        """Stop the child if it still runs, and reap it."""
        if self._read is not None:
            os.close(self._read)
            self._read = None
        if self._pid is not None:
            pid, self._pid = self._pid, None
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when `parent` (the pid that started it) goes
    (prctl PR_SET_PDEATHSIG, Linux only); exit now if it is gone already. Elsewhere, or when the
    call fails, this does nothing: `pool` adds a watching thread for those cases."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # it died before the request took effect
            os._exit(1)
