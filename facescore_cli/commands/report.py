"""`facescore report`: one self-contained HTML file from the results `batch` wrote.

Like every command module, it imports only typer at the top: facescore_cli.report (numpy,
Pillow) loads when the command runs, so `--help` stays fast."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..console import err, fail

DEFAULT_TOP = 12  # facescore_cli.report.DEFAULT_TOP, kept here so --help needs no numpy (tested)


def report(
    results: Path = typer.Argument(..., help="A results file written by `facescore batch` (.csv, .tsv, .jsonl, .json).",
                                   show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write (- for stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it exists."),
    top: int = typer.Option(DEFAULT_TOP, "--top", min=0, max=500, help="How many top and bottom faces to show."),
    base: Path = typer.Option(Path("."), "--base", help="The folder the results' relative paths start from "
                              "(where batch ran).", show_default=False),
    thumbs: bool = typer.Option(True, "--thumbs/--no-thumbs", help="Embed a small thumbnail of every image."),
    title: str = typer.Option("facescore report", "--title", help="The page's title."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Processes making thumbnails (0 = one per core)."),
) -> None:
    """Write ONE self-contained HTML report (no network): counts, a score histogram, counts per vibe,
    the top and bottom faces as crops, a sortable and filterable table of every row, the failures.

    Images that moved since the batch are shown as missing.

    [bold]Examples[/bold]

      facescore batch photos/ --out results.csv && facescore report results.csv --out report.html

      facescore report results.jsonl --out report.html --top 24 --no-thumbs --force
    """
    to_stdout = str(out) == "-"
    if not to_stdout and out.exists() and not force:
        fail(f"{out} exists: add --force to replace it")
    if not to_stdout and out.suffix.lower() not in (".html", ".htm"):
        fail(f"--out must end in .html, not {out.name!r}")
    if not base.is_dir():
        fail(f"--base {base}: not a folder")
    from .. import report as _report

    try:
        rows, bad = _report.load(results)
    except _report.ReportError as exc:
        fail(str(exc))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..pipeline import default_jobs

    with Progress(TextColumn("thumbnails"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not thumbs or not err.is_terminal) as bar:
        task = bar.add_task("thumbnails", total=None)
        built = _report.build(rows, base=base, top=top, thumbs=thumbs, title=title, bad_lines=bad,
                              jobs=jobs or default_jobs(),
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    if to_stdout:
        sys.stdout.write(built.html)
        return
    from ..output import write_atomic

    try:
        write_atomic(out, built.html, sync=False)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    size = len(built.html.encode("utf-8"))
    note = f", {built.missing} image(s) missing or changed" if built.missing else ""
    if bad:
        note += f", {bad} line(s) not understood"
    from rich.markup import escape  # here: rich.markup costs ~30 ms of every start-up

    err.print(f"wrote {escape(str(out))}: {built.rows:,} rows, {built.images:,} images, "
              f"{size / 1e6:.1f} MB in {built.seconds:.1f} s{escape(note)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
