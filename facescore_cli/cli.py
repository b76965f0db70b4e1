"""Typer commands only: parse, call, print."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__, output, pipeline
from .config import Settings
from .console import err, fail, out, settings_or_exit, via_choice
from .result import ImageResult

app = typer.Typer(
    help="Score faces in photos for perceived attractiveness (as rated by a population of raters), "
    "with a one-word vibe and a percentile rank.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

VIA_HELP = "auto | local | queue (env FACESCORE_VIA). auto uses the queue when a worker is alive, else local."


def _resolve_via(settings: Settings, via: Optional[str]) -> str:
    """local or queue, said in one line on stderr. auto takes the queue when Redis answers and a
    worker is alive; queue without Redis or without a live worker is exit 2, said at once."""
    from . import queue

    choice = via_choice(settings, via)
    if choice == "local":
        return "local"
    try:
        mode, why = queue.choose_via(settings, choice)
    except queue.ServiceUnavailable as exc:
        err.print(f"[red]--via queue:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"[dim]{why}[/dim]", highlight=False)
    return mode


def _results(items: list[pipeline.Item], settings: Settings, mode: str, jobs: int) -> Iterator[ImageResult]:
    """Results as they arrive, from the path `_resolve_via` chose."""
    if mode == "queue":
        from . import queue

        return queue.score_items(items, settings,
                                 warn=lambda msg: err.print(f"[yellow]warning:[/yellow] {msg}", highlight=False),
                                 on_batch=lambda b: err.print(f"[dim]batch {b.id}: {b.jobs} job(s) queued[/dim]",
                                                              highlight=False))
    return pipeline.score_items(items, settings, jobs)


def _remember(results: Iterator[ImageResult], settings: Settings, store: bool = True) -> Iterator[ImageResult]:
    """Where results pass on their way to the output: real-model faces go into the store (in this
    process only: the embedded store allows one writer) and get their `store_rank`."""
    from rich.markup import escape

    from .store import remember_all

    return remember_all(results, settings, lambda msg: err.print(f"[yellow]warning:[/yellow] {escape(msg)}"),
                        enabled=store)


def _exit_code(results: list[ImageResult]) -> int:
    return 1 if any(r.failed for r in results) else 0


@app.callback(invoke_without_command=True)
def main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the chain does."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if version:
        out.print(__version__)
        raise typer.Exit(0)


@app.command()
def score(
    images: list[Path] = typer.Argument(..., help="Image files to score.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    via: Optional[str] = typer.Option(None, "--via", help=VIA_HELP, show_default=False),
    store: bool = typer.Option(True, "--store/--no-store", help="Keep real-model results in the face store (Qdrant)."),
) -> None:
    """Score one or more images and print a table: file, face, score, vibe, rank, confidence, source.

    [bold]Examples[/bold]

      facescore score examples/faces/omi-46.jpg

      facescore score a.jpg b.png --json
    """
    settings = settings_or_exit()
    mode = _resolve_via(settings, via)
    items = [pipeline.Item(p, str(p)) for p in images]
    results = list(_remember(_results(items, settings, mode, jobs=1), settings, store))
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        out.print(output.results_table(results))
    raise typer.Exit(_exit_code(results))


@app.command()
def batch(
    inputs: list[str] = typer.Argument(..., help="Files and folders (folders are walked recursively).", show_default=False),
    out_path: Path = typer.Option(..., "--out", "-o", help="results.csv or results.jsonl (format from the extension)."),
    resume: bool = typer.Option(False, "--resume", help="Skip inputs already in --out and append to it."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Processes to score in (0 = one per core)."),
    via: Optional[str] = typer.Option(None, "--via", help=VIA_HELP, show_default=False),
    store: bool = typer.Option(True, "--store/--no-store", help="Keep real-model results in the face store (Qdrant)."),
) -> None:
    """Score files and folders, writing one row per face to CSV or JSONL as it is produced.

    [bold]Examples[/bold]

      facescore batch examples/ --out results.csv

      facescore batch photos/ more/ --out results.jsonl --jobs 2 --resume
    """
    settings = settings_or_exit()
    try:
        output.format_for(out_path)
    except ValueError as exc:
        fail(str(exc))
    mode = _resolve_via(settings, via)
    found = pipeline.collect(inputs)
    for shown in found.skipped:
        err.print(f"[yellow]skipped (not an image):[/yellow] {shown}")
    items = found.items
    resumed = 0
    if resume:
        done = output.done_paths(out_path)
        resumed = sum(1 for i in items if i.display in done)
        items = [i for i in items if i.display not in done]
    if not items and not resumed:
        fail("no image files found in the inputs")
    jobs = jobs if jobs > 0 else pipeline.default_jobs()
    results: list[ImageResult] = []
    start = time.perf_counter()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, transient=False,
    )
    try:
        with output.RowWriter(out_path, append=resume) as writer, progress:
            task = progress.add_task("scoring", total=len(items), rate="")
            for r in _remember(_results(items, settings, mode, jobs), settings, store):
                writer.write(r)
                results.append(r)
                if r.failed:
                    progress.console.print(f"[red]failed[/red] {r.path}: {r.error}")
                elapsed = time.perf_counter() - start
                progress.update(task, advance=1, rate=f"{len(results) / elapsed:.2f} img/s" if elapsed > 0 else "")
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted: {len(results)} images written to {out_path}; "
                  f"run again with --resume to finish[/yellow]")
        raise typer.Exit(130) from None
    err.print(output.summary_table(results, time.perf_counter() - start, len(found.skipped), resumed))
    err.print(f"wrote {out_path}")
    raise typer.Exit(_exit_code(results))


def _register_commands() -> None:
    """Each module in facescore_cli/commands/ adds its commands with `register(app)`."""
    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}").register(app)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    app()
