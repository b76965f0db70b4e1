"""Finding input files and scoring many of them in N processes, results as they are produced."""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .images import is_image_path
from .result import ImageResult
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
            for root, dirs, files in os.walk(p):
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


_scorer: Scorer | None = None


def _init_process(settings: Settings) -> None:
    global _scorer
    _scorer = Scorer.from_settings(settings)
    for link in _scorer.chain:
        warm = getattr(link, "warm_up", None)
        if warm:
            warm()


def _score_item(item: Item) -> ImageResult:
    assert _scorer is not None, "process not initialised"
    return _scorer.score_file(item.path, item.display)


def score_items(items: list[Item], settings: Settings, jobs: int) -> Iterator[ImageResult]:
    """Yield one ImageResult per item as soon as it is ready (not in input order).

    With jobs > 1 the models load once in each of N processes; a window of work keeps memory
    flat for 100k files. When a process dies (a native crash), the images in flight are retried
    once in a fresh pool; an image that is in flight for two crashes comes back as an error row.
    """
    if not items:
        return
    jobs = max(1, min(jobs, len(items)))
    if jobs == 1:
        _init_process(settings)
        for item in items:
            yield _score_item(item)
        return
    pending: deque[Item] = deque(items)
    crashes: dict[Item, int] = {}
    window = jobs * 4
    while pending:
        pool = ProcessPoolExecutor(max_workers=jobs, initializer=_init_process, initargs=(settings,))
        inflight: dict[Future[ImageResult], Item] = {}
        broken = False
        try:
            while (pending or inflight) and not broken:
                while pending and len(inflight) < window:
                    item = pending.popleft()
                    inflight[pool.submit(_score_item, item)] = item
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    item = inflight.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool:
                        broken = True
                        inflight[fut] = item  # handled with the rest below
                    except Exception as exc:
                        yield ImageResult(path=item.display, error=f"{type(exc).__name__}: {exc}")
            if broken:
                for item in inflight.values():
                    crashes[item] = crashes.get(item, 0) + 1
                    if crashes[item] >= 2:
                        yield ImageResult(path=item.display, error="the scoring process crashed on this image")
                    else:
                        pending.appendleft(item)
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)


def score_all(items: list[Item], settings: Settings, jobs: int,
              on_result: Callable[[ImageResult], None] | None = None) -> list[ImageResult]:
    out = []
    for r in score_items(items, settings, jobs):
        if on_result:
            on_result(r)
        out.append(r)
    return out
