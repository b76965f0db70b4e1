"""Rich tables, CSV and JSONL. Rows are written and flushed as they are produced."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .ml.head import TRAITS
from .result import COLUMNS, ImageResult

# Free columns after the contract's; fixed so a resumed file keeps one header.
EXTRA_COLUMNS = ["store_rank", "model", "sha256", "ms"] + [f"trait_{t}" for t in TRAITS]
CSV_COLUMNS = COLUMNS + EXTRA_COLUMNS


def format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"--out must end in .csv or .jsonl, not {path.name!r}")
    return suffix[1:]


def done_paths(path: Path) -> set[str]:
    """The inputs already in an output file, for --resume."""
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    done: set[str] = set()
    with path.open(newline="", encoding="utf-8") as fh:
        if format_for(path) == "csv":
            for row in csv.DictReader(fh):
                if row.get("path"):
                    done.add(row["path"])
        else:
            for line in fh:
                try:
                    done.add(json.loads(line)["path"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interruption
    return done


class RowWriter:
    """Appends result rows to a .csv or .jsonl file, flushing after every image."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = path
        self.kind = format_for(path)
        exists = append and path.is_file() and path.stat().st_size > 0
        if exists:
            _repair_last_line(path)
        self._fh: IO[str] = path.open("a" if exists else "w", newline="", encoding="utf-8")
        self._csv: csv.DictWriter | None = None
        if self.kind == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if not exists:
                self._csv.writeheader()

    def write(self, result: ImageResult) -> None:
        for row in result.rows():
            if self._csv is not None:
                self._csv.writerow(row)
            else:
                self._fh.write(json.dumps(_jsonl_row(row), ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonl_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: (None if row.get(k, "") == "" else row.get(k)) for k in COLUMNS}
    traits = {k[len("trait_"):]: v for k, v in row.items() if k.startswith("trait_")}
    out.update({k: row[k] for k in ("store_rank", "model", "sha256", "ms") if row.get(k, "") != ""})
    if traits:
        out["traits"] = traits
    return out


def _repair_last_line(path: Path) -> None:
    """Drop a last line cut short by a kill, so the resumed file stays parseable."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def results_table(results: list[ImageResult]) -> Table:
    rows = [row for r in results for row in r.rows()]
    with_store = any(row.get("store_rank", "") != "" for row in rows)
    # no vertical rules: nine columns fit an 80-column terminal without cutting the last one
    table = Table(title="facescore", show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = [("file", "left"), ("face", "right"), ("score", "right"), ("vibe", "left"), ("rank", "right")]
    columns += [("store", "right")] if with_store else []  # store_rank
    columns += [("conf", "right"), ("source", "left"), ("error", "left")]
    for name, justify in columns:
        # numbers never break; on a narrow terminal the words and paths fold instead
        table.add_column(name, justify=justify, overflow="fold", no_wrap=justify == "right",
                         min_width=12 if name == "file" else None)
    for row in rows:
        cells = [str(row["path"]), str(row["face"]), _num(row["score"]), str(row["vibe"]), _num(row["rank"])]
        cells += [_num(row.get("store_rank", ""))] if with_store else []
        cells += [_num(row["confidence"], 2), str(row["source"]),
                  f"[red]{escape(str(row['error']))}[/red]" if row["error"] else ""]
        table.add_row(*cells)
    return table


def summary_table(results: list[ImageResult], seconds: float, skipped: int = 0, resumed: int = 0) -> Table:
    faces = sum(len(r.faces) for r in results)
    no_face = sum(1 for r in results if not r.faces and not r.failed)
    failed = sum(1 for r in results if r.failed)
    sources = Counter(r.source for r in results if r.source)
    table = Table(title="summary", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("images scored", str(len(results) - failed))
    table.add_row("faces", str(faces))
    table.add_row("images with no face", str(no_face))
    table.add_row("failed", f"[red]{failed}[/red]" if failed else "0")
    for source, n in sorted(sources.items()):
        table.add_row(f"source {source}", str(n))
    if resumed:
        table.add_row("already in output (--resume)", str(resumed))
    if skipped:
        table.add_row("non-image files skipped", str(skipped))
    rate = len(results) / seconds if seconds > 0 else 0.0
    table.add_row("time", f"{seconds:.1f} s ({rate:.2f} images/s)")
    return table


def _num(value: Any, digits: int = 1) -> str:
    if value in ("", None):
        return ""
    return f"{float(value):.{digits}f}"


def stderr_console() -> Console:
    return Console(stderr=True)
