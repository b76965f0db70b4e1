"""Result rows in every format (CSV, TSV, JSON, JSONL; files or stdout), the terminal tables and
the end-of-run summary. Rows are written and flushed as they are produced.

One row schema everywhere rows are written (see docs/results.md): the contract's first columns,
then `store_rank, model, sha256, ms` and one `trait_<name>` column per trait, with `_` for `-`
so that pandas and SQL take the names as they are. In JSON and JSONL the same keys carry numbers
as numbers and empty cells as null.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .ml.ratings import TRAITS
from .result import COLUMNS, NO_FACE, ImageResult, trait_column

if TYPE_CHECKING:
    from rich.table import Table

EXTRA_COLUMNS = ["store_rank", "model", "sha256", "ms"] + [trait_column(t) for t in TRAITS]
# Fixed, so a resumed file keeps one header.
CSV_COLUMNS = COLUMNS + EXTRA_COLUMNS
FORMATS = ("csv", "tsv", "json", "jsonl")
_NUMERIC = {"face", "x", "y", "width", "height", "confidence", "score", "rank", "store_rank", "ms"}
_INTS = {"face", "x", "y", "width", "height"}


def format_for(path: Path) -> str:
    """The format a file's extension names; ValueError for any other extension."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"--out must end in .csv, .tsv, .json or .jsonl, not {path.name!r} "
                         f"(or use --out - with --csv, --json or --jsonl)")
    return suffix


def check_out(path: Path, *, resume: bool, force: bool) -> str | None:
    """Why --out cannot be used as given (a one-line usage error), or None when it can.

    Checked before any input is read or any service asked: a missing folder, a folder where
    the file should be, an unknown extension, an existing file without --resume or --force.
    """
    try:
        format_for(path)
    except ValueError as exc:
        return str(exc)
    if path.is_dir():
        return f"--out {path} is a folder; give a file name such as {path / 'results.csv'}"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"--out {path}: the folder {parent} does not exist (create it first)"
    if not os.access(parent, os.W_OK):
        return f"--out {path}: the folder {parent} is not writable"
    if resume and force:
        return "--resume adds to --out and --force replaces it: give one of them"
    if path.exists() and path.stat().st_size > 0 and not (resume or force):
        return (f"{path} exists; add --resume to carry on where it stopped, or --force to replace it")
    return None


# ----------------------------------------------------------------------------- the row schema


def typed(row: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON carries it: the CSV columns in order, numbers as numbers, empty as null."""
    out: dict[str, Any] = {}
    for k in CSV_COLUMNS:
        v = row.get(k, "")
        if v == "" or v is None:
            out[k] = None
        elif k in _NUMERIC or k.startswith("trait_"):
            try:
                out[k] = int(v) if k in _INTS else float(v)
            except (TypeError, ValueError):
                out[k] = v
        else:
            out[k] = v
    return out


def normalize(row: dict[str, Any]) -> dict[str, str]:
    """A row read back from any format (this version's or an older one) as CSV strings."""
    flat = dict(row)
    traits = flat.pop("traits", None)  # JSONL before the flat schema nested them
    if isinstance(traits, dict):
        flat.update({trait_column(k): v for k, v in traits.items()})
    out: dict[str, str] = {}
    for k, v in flat.items():
        if k is None:
            continue
        key = trait_column(k[len("trait_"):]) if k.startswith("trait_") else k
        out[key] = "" if v is None else str(v)
    return out


# ----------------------------------------------------------------------------- writing


class RowWriter:
    """Writes result rows to a .csv/.tsv/.json/.jsonl file or to stdout (`path` None).

    CSV, TSV and JSONL are flushed after every image, so a killed run keeps what it finished.
    JSON is one array: it is written when the writer closes (atomically, for a file).
    `keep` are rows already in the file that stay (resume); with `append` they are already there.
    """

    def __init__(self, path: Path | None, kind: str | None = None, *, append: bool = False,
                 keep: list[dict[str, str]] | None = None, stream: IO[str] | None = None) -> None:
        self.path = path
        self.kind = kind or format_for(path)  # type: ignore[arg-type]
        self.rows_written = 0
        self._json_rows: list[dict[str, Any]] = [typed(r) for r in keep or []]
        self._owns = path is not None
        if self.kind == "json":
            self._fh: IO[str] | None = None if path is not None else (stream or sys.stdout)
        elif path is None:
            self._fh = stream or sys.stdout
        else:
            exists = append and path.is_file() and path.stat().st_size > 0
            self._fh = path.open("a" if exists else "w", newline="", encoding="utf-8")
            append = exists
        self._csv: csv.DictWriter | None = None
        if self.kind in ("csv", "tsv"):
            assert self._fh is not None
            self._csv = csv.DictWriter(self._fh, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                                       delimiter="\t" if self.kind == "tsv" else ",",
                                       lineterminator="\n" if self.kind == "tsv" else "\r\n")
            if not append:
                self._csv.writeheader()

    def write(self, result: ImageResult) -> None:
        self.write_rows(result.rows())

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.rows_written += 1
            if self._csv is not None:
                self._csv.writerow(row)
            elif self.kind == "jsonl":
                assert self._fh is not None
                self._fh.write(json.dumps(typed(row), ensure_ascii=False) + "\n")
            else:
                self._json_rows.append(typed(row))
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self.kind == "json":
            text = json.dumps(self._json_rows, indent=2, ensure_ascii=False) + "\n"
            if self.path is None:
                assert self._fh is not None
                self._fh.write(text)
                self._fh.flush()
            else:
                write_atomic(self.path, text)
            self._json_rows = []
        elif self._owns and self._fh is not None:
            self._fh.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomic(path: Path, content: str | bytes | Callable[[IO[bytes]], object], *, sync: bool = True) -> None:
    """Replace `path` all at once: a reader (or a kill) sees the old file or the new. `content` is
    text (written as UTF-8), bytes, or a function that writes to the open temporary file; `sync`
    flushes it to disk before the rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode("utf-8") if isinstance(content, str) else content)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def rewrite(path: Path, rows: list[dict[str, str]]) -> None:
    """Write `rows` as the whole of `path` (in its format), atomically."""
    kind = format_for(path)
    buf = io.StringIO()
    writer = RowWriter(None, kind, stream=buf)
    writer.write_rows(rows)
    writer.close()
    write_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- reading back


@dataclass
class Existing:
    """What an output file already holds, for --resume."""

    rows: list[dict[str, str]] = field(default_factory=list)  # complete rows, normalized
    cut: str | None = None  # the text of a last line cut short by a kill, if any
    cut_path: str | None = None  # as much of that line's path as was written
    header_ok: bool = True  # the file's columns are this version's


_JSON_PATH = re.compile(r'^\s*\{\s*"path"\s*:\s*"((?:[^"\\]|\\.)*)')


def read_rows(path: Path) -> Existing:
    """The rows of an existing output file; a last line cut short is set apart, not parsed."""
    if not path.is_file() or path.stat().st_size == 0:
        return Existing()
    kind = format_for(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    found = Existing()
    if kind == "json":
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError(f"{path} is not a JSON array of rows (was it cut short? a .json file is "
                             f"written at the end of a run; use .jsonl or .csv to resume from a kill)") from None
        found.rows = [normalize(r) for r in data if isinstance(r, dict) and r.get("path")]
        return found
    if not text.endswith("\n"):
        cut_at = text.rfind("\n") + 1
        text, found.cut = text[:cut_at], text[cut_at:]
        if kind == "jsonl":
            m = _JSON_PATH.match(found.cut)
            found.cut_path = json.loads(f'"{m.group(1)}"') if m and not m.group(1).endswith("\\") else None
        else:
            try:
                found.cut_path = next(csv.reader([found.cut], delimiter="\t" if kind == "tsv" else ","), [None])[0]
            except csv.Error:
                found.cut_path = None
    if kind == "jsonl":
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line garbled by an older interrupted run
            if isinstance(row, dict) and row.get("path"):
                found.rows.append(normalize(row))
        return found
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    fields = [normalize({k: ""}).popitem()[0] for k in reader.fieldnames or []]
    found.header_ok = fields == CSV_COLUMNS
    for row in reader:
        if None in row.values() or None in row:  # fewer or more fields than the header: damaged
            continue
        if row.get("path"):
            found.rows.append(normalize(row))
    return found


# ----------------------------------------------------------------------------- the terminal


def _cells(row: dict[str, Any], with_store: bool) -> list[str]:
    cells = [str(row["path"]), str(row["face"]), _num(row["score"]), str(row["vibe"]), _num(row["rank"])]
    cells += [_num(row.get("store_rank", ""))] if with_store else []
    cells += [_num(row["confidence"], 2), str(row["source"]), str(row["error"] or "")]
    return cells


def _headers(with_store: bool) -> list[str]:
    return ["file", "face", "score", "vibe", "rank"] + (["store"] if with_store else []) + ["conf", "source", "error"]


def results_table(results: list[ImageResult]) -> Table:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = [row for r in results for row in r.rows()]
    with_store = any(row.get("store_rank", "") != "" for row in rows)
    table = Table(title="facescore", show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in _headers(with_store):
        right = name in ("face", "score", "rank", "store", "conf")
        # numbers never break; on a narrow terminal the words and paths fold instead
        table.add_column(name, justify="right" if right else "left", overflow="fold", no_wrap=right,
                         min_width=12 if name == "file" else None)
    for row in rows:
        cells = [escape(c) for c in _cells(row, with_store)]
        if cells[-1]:
            cells[-1] = f"[red]{cells[-1]}[/red]"
        table.add_row(*cells)
    return table


def plain_table(results: list[ImageResult]) -> str:
    """The table's columns as tab-separated lines with a header: for pipes, never folded."""
    rows = [row for r in results for row in r.rows()]
    with_store = any(row.get("store_rank", "") != "" for row in rows)
    lines = ["\t".join(_headers(with_store))]
    lines += ["\t".join(c.replace("\t", " ").replace("\n", " ") for c in _cells(row, with_store)) for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Tally:
    """Counts for the end-of-run summary, kept as results go by (no result is held)."""

    images: int = 0
    faces: int = 0
    no_face: int = 0
    failed: int = 0
    scores: list[float] = field(default_factory=list)  # the largest face's, one per image
    vibes: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)

    def add(self, r: ImageResult) -> None:
        self.images += 1
        self.faces += len(r.faces)
        if r.failed:
            self.failed += 1
        elif not r.faces:
            self.no_face += 1
        if r.faces:
            self.scores.append(float(r.faces[0].score))
            self.vibes.update(f.vibe for f in r.faces if f.vibe)
        if r.source:
            self.sources[r.source] += 1


def summary_table(tally: Tally, seconds: float, *, skipped: int = 0, resumed: int = 0) -> Table:
    from rich.table import Table

    table = Table(title="summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("images scored", str(tally.images - tally.failed))
    table.add_row("faces", str(tally.faces))
    table.add_row("images with no face", str(tally.no_face))
    table.add_row("failed", f"[red]{tally.failed}[/red]" if tally.failed else "0")
    for source, n in sorted(tally.sources.items()):
        table.add_row(f"source {source}", str(n))
    if resumed:
        table.add_row("already in the output (--resume)", str(resumed))
    if skipped:
        table.add_row("non-image files skipped", str(skipped))
    if tally.images:
        rate = tally.images / seconds if seconds > 0 else 0.0
        table.add_row("time", f"{seconds:.1f} s ({rate:.2f} images/s)")
    return table


def score_summary(tally: Tally) -> str:
    """Count, mean, median, quartiles, a small histogram and the vibes, as plain lines."""
    s = sorted(tally.scores)
    if not s:
        return ""
    q1, med, q3 = (statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3)
    lines = [f"scores (largest face per image): n {len(s)}, mean {statistics.fmean(s):.1f}, "
             f"median {med:.1f}, quartiles {q1:.1f} / {q3:.1f}, range {s[0]:.1f}-{s[-1]:.1f}"]
    bins = Counter(min(int(v // 10), 9) for v in s)
    top = max(bins.values())
    for b in range(min(bins), max(bins) + 1):
        n = bins.get(b, 0)
        lines.append(f"  {b * 10:>3}-{b * 10 + 10:<3} {'#' * max(1 if n else 0, round(30 * n / top)):<30} {n}")
    vibes = ", ".join(f"{v} {n}" for v, n in tally.vibes.most_common())
    if vibes:
        lines.append(f"vibes (all faces): {vibes}")
    return "\n".join(lines)


def _num(value: Any, digits: int = 1) -> str:
    if value in ("", None):
        return ""
    return f"{float(value):.{digits}f}"


def failed_row(row: dict[str, str]) -> bool:
    """A row that says its image could not be scored (no face found is a result, not a failure)."""
    return bool(row.get("error")) and row.get("error") != NO_FACE
