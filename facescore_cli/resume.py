"""`batch --resume`: which inputs an output file already holds, by what the file IS rather than
how its path was typed, and what to drop so that each image ends with exactly one result.

An image in the file is known by the resolved path of its rows and by their `sha256`. An input
whose resolved path matches is done. Only when some rows name a path that no longer resolves to
a file (another working folder, a moved folder) are the other inputs hashed, and an input whose
bytes match such rows is done too: hashing costs a read of each file, so it is skipped when it
cannot find anything. Rows whose image failed are dropped and the image scored again; a last
line cut short by a kill is dropped with the rows of its image; duplicate results of one image
(from runs of older versions) keep the first. When rows are dropped the file is rewritten
atomically before anything is appended.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .output import Existing, failed_row, read_rows


@dataclass
class _Image:
    """The consecutive rows of one image in the output file."""

    path: str
    sha256: str
    rows: list[dict[str, str]]
    resolved: str
    exists: bool

    @property
    def failed(self) -> bool:
        return all(failed_row(r) for r in self.rows)


@dataclass
class Plan:
    todo: list  # the inputs (pipeline.Item) still to score, in input order
    done: int = 0  # inputs already in the file
    by_content: int = 0  # ... of which recognised by their sha256, not their path
    retried: list[str] = field(default_factory=list)  # inputs whose rows were errors
    repaired: str | None = None  # what a cut last line was, when there was one
    dropped: int = 0  # rows removed from the file
    keep: list[dict[str, str]] = field(default_factory=list)  # the rows that stay
    rewrite: bool = False  # the file must be rewritten (rows dropped, or an older header)
    hashed: int = 0  # inputs read to compute their sha256


def file_sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _resolved(path: str) -> str:
    return os.path.realpath(path)


def _group(rows: list[dict[str, str]]) -> list[_Image]:
    images: list[_Image] = []
    for row in rows:
        key = (row.get("path", ""), row.get("sha256", ""))
        last = images[-1] if images else None
        # a new image starts at a new path, or at face 0 / an empty face of the same path again
        if last is not None and (last.path, last.sha256) == key and row.get("face") not in ("", "0"):
            last.rows.append(row)
            continue
        resolved = _resolved(key[0])
        images.append(_Image(key[0], key[1], [row], resolved, os.path.isfile(resolved)))
    return images


def plan(out_path: Path, items: Sequence, existing: Existing | None = None) -> Plan:
    """What --resume does with `items` (pipeline.Item) against the file at `out_path`."""
    found = existing if existing is not None else read_rows(out_path)
    result = Plan(todo=[], rewrite=not found.header_ok)
    images = _group(found.rows)
    drop: set[int] = set()  # indexes into `images`
    if found.cut is not None:
        result.rewrite = True
        result.repaired = found.cut_path or found.cut[:60]
        result.dropped += 1
        # The rows of one image are written and flushed together: the cut line's image may have
        # complete rows just before it. Its path is a prefix of theirs when the cut fell inside it.
        if images and found.cut_path is not None and images[-1].path.startswith(found.cut_path):
            drop.add(len(images) - 1)
            result.repaired = images[-1].path

    # Duplicates: the same file (resolved path) with the same bytes, written more than once.
    first: dict[tuple[str, str], int] = {}
    for i, img in enumerate(images):
        if i in drop:
            continue
        key = (img.resolved, img.sha256)
        if key in first:
            j = first[key]
            if images[j].failed and not img.failed:
                drop.add(j)
                first[key] = i
            else:
                drop.add(i)
        else:
            first[key] = i

    by_path: dict[str, int] = {}
    orphans: dict[str, list[int]] = {}  # sha256 -> images whose path resolves to no file
    for i, img in enumerate(images):
        if i in drop:
            continue
        by_path.setdefault(img.resolved, i)
        if not img.exists and img.sha256:
            orphans.setdefault(img.sha256, []).append(i)

    for item in items:
        i = by_path.get(_resolved(str(item.path)))
        if i is None and orphans:
            result.hashed += 1
            digest = file_sha256(Path(item.path))
            candidates = orphans.get(digest or "", [])
            if candidates:
                i = candidates.pop(0)  # one input per image: a second copy is scored on its own
                result.by_content += 1
        if i is None:
            result.todo.append(item)
        elif images[i].failed:
            drop.add(i)
            result.retried.append(item.display)
            result.todo.append(item)
        else:
            result.done += 1

    for i in sorted(drop):
        result.dropped += len(images[i].rows)
    result.rewrite = result.rewrite or bool(drop)
    result.keep = [row for i, img in enumerate(images) if i not in drop for row in img.rows]
    return result
