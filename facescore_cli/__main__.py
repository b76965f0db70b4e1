"""`facescore` (the console script) and `python -m facescore_cli`."""
from __future__ import annotations

import atexit
import os
import sys
import threading


def main() -> None:
    # `--version` alone is answered before typer, rich and the commands are imported: ~0.1 s less.
    if sys.argv[1:] == ["--version"]:
        from . import __version__

        print(__version__)
        return
    from . import blas

    blas.for_command(sys.argv[1:])  # before anything imports numpy
    from .cli import app

    try:
        app(prog_name="facescore")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    exit_now(code)


def exit_now(code: object) -> None:
    """End the process the way `sys.exit(code)` would, without the interpreter's teardown.

    Once a command has returned, everything it wrote is flushed and closed, but tearing down the
    interpreter (every module, numpy's, onnxruntime's and dlib's objects) cost 0.1-0.3 s of CPU
    after a `score`: a third of what the command itself took. So: wait for the threads that are
    not daemons, as the interpreter would; run the atexit handlers; flush; then os._exit."""
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message on stderr, status 1
        sys.stderr.write(f"{code}\n")
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing to keep
            pass
    os._exit(status & 0xFF)


if __name__ == "__main__":
    main()
