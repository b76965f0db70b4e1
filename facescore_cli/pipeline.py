"""Finding input files and scoring many of them in N processes, results as they are produced."""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings
from .formats import is_image_path
from .pool import ScoringPool, warm_up
from .result import ImageResult

if TYPE_CHECKING:
    from .scoring import Scorer


@dataclass(frozen=True)
class Item:
    path: Path  # where to read it
    display: str  # how to name it in the output: the folder given, joined with the path below it


@dataclass
class Inputs:
    items: list[Item]
    skipped: list[str]  # files inside folders that are not images (reported, not scored)


def collect(inputs: Iterable[str]) -> Inputs:
    """Files as given (each is an input, image or not); folders recursively, images only."""
    items: list[Item] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            # Linked folders are followed (a photo library is often assembled from links), each
            # real folder once, so a link that points back up cannot loop.
            visited: set[str] = set()
            for root, dirs, files in os.walk(p, followlinks=True):
                real = os.path.realpath(root)
                if real in visited:
                    dirs[:] = []
                    continue
                visited.add(real)
                dirs.sort()
                for name in sorted(files):
                    rel = os.path.relpath(os.path.join(root, name), p)
                    shown = os.path.join(given, rel)
                    f = Path(root) / name
                    if not is_image_path(f):
                        skipped.append(shown)
                    elif shown not in seen:
                        seen.add(shown)
                        items.append(Item(f, shown))
        elif given not in seen:
            seen.add(given)
            items.append(Item(p, given))
    return Inputs(items, skipped)


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LocalScorer:
    """The in-process `Scorer` for one-process runs, its models loading in a thread from the
    moment it is made; `ready()` waits for them. `score` makes one before it knows whether the
    queue will score instead, so the load overlaps that question."""

    def __init__(self, settings: Settings) -> None:
        from . import heap
        from .scoring import Scorer  # numpy, Pillow, the models' code: not for a pool's owner

        heap.keep_freed_memory()
        self._scorer = Scorer.from_settings(settings)
        # Not a daemon: the interpreter waits for it at exit. Ended mid-load (the queue answered,
        # or the command failed), onnxruntime's C++ aborted the process ("terminate called").
        self._loading = threading.Thread(target=warm_up, args=(self._scorer,), name="warm-up")
        self._loading.start()

    def ready(self) -> Scorer:
        self._loading.join()
        return self._scorer


def score_items(items: list[Item], settings: Settings, jobs: int,
                local: LocalScorer | None = None, pool: ScoringPool | None = None) -> Iterator[ImageResult]:
    """Yield one ImageResult per item as soon as it is ready (not in input order).

    With jobs 1 the images are scored in this process (by `local` when given). With jobs > 1 they
    are scored by `pool` when given (its owner closes it), else by a pool of their own; the models load once in each process of a `ScoringPool`; a window of work keeps
    memory flat for 100k files. A process that dies is replaced and its image retried once (an
    image that crashes two processes comes back as an error row); closing the generator early,
    or the death of this process, stops the scoring processes.
    """
    if not items:
        return
    jobs = max(1, min(jobs, len(items)))
    if jobs == 1 and pool is None:
        scorer = (local or LocalScorer(settings)).ready()
        for item in items:
            yield scorer.score_file(item.path, item.display)
        return
    todo = iter(items)
    window = jobs * 4
    with contextlib.nullcontext(pool) if pool is not None else ScoringPool(settings, jobs) as pool:
        inflight: set[Future[ImageResult]] = set()
        while True:
            for item in todo:
                inflight.add(pool.submit_file(item.path, item.display))
                if len(inflight) >= window:
                    break
            if not inflight:
                return
            done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()


def score_all(items: list[Item], settings: Settings, jobs: int,
              on_result: Callable[[ImageResult], None] | None = None) -> list[ImageResult]:
    out = []
    for r in score_items(items, settings, jobs):
        if on_result:
            on_result(r)
        out.append(r)
    return out
