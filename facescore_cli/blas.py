"""One BLAS thread in every process that scores.

numpy's OpenBLAS starts a thread per extra core as numpy is imported, and that thread spins a
while before it sleeps: ~50 ms of CPU per process on this project's 2-core machine (CPU time
against wall time of the import), taken from whatever else runs then (the other scoring
processes, the thread loading the models, the child asking Redis). Scoring parallelises by
processes and its own products are small or kept on one thread (`einsum` in ml/head.py), so it
gains nothing from those threads. Measured, alternated, best of 5-9: one `score photo.jpg`
0.84x the time, a 2-image batch 0.92x, 20 group photos 0.93x. `train` and `evaluate` fit models
with large products and keep OpenBLAS's threads.

OpenBLAS reads its variable once, as numpy loads: `one_thread` must run before numpy is imported;
processes started afterwards inherit it. A value the user set is kept.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

VARIABLE = "OPENBLAS_NUM_THREADS"
# Commands whose linear algebra is large enough for OpenBLAS's threads to pay.
THREADED_COMMANDS = frozenset({"train", "evaluate"})


def one_thread() -> None:
    """Ask OpenBLAS for one thread, unless the environment already says how many."""
    os.environ.setdefault(VARIABLE, "1")


def command_of(args: Sequence[str]) -> str | None:
    """The command named in facescore's arguments (without the program name): the first that
    is not an option. The global options (--verbose, --quiet, --version) take no value."""
    return next((a for a in args if not a.startswith("-")), None)


def for_command(args: Sequence[str]) -> None:
    """`one_thread` unless the command is one of THREADED_COMMANDS."""
    if command_of(args) not in THREADED_COMMANDS:
        one_thread()
