"""Typer commands only: parse, call, print.

Start-up matters (`--help` and `--version` under 0.25 s): this module and facescore_cli/commands/
import only typer and the standard library at the top; numpy, PIL, rich, redis, qdrant and the
models are imported inside the commands that need them.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Optional

from . import helpfast

helpfast.install()  # before typer: its help then imports no rich.markdown / rich.traceback

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from . import __version__, console  # noqa: E402
from .console import MIN_FACE, err, fail, note, settings_or_exit, warn

if TYPE_CHECKING:
    from .config import Settings
    from .output import RowWriter, Tally
    from .pipeline import Item, LocalScorer
    from .pool import ScoringPool
    from .result import ImageResult

_QUIET = {"-q", "--quiet"}
_VERBOSE = {"-v", "--verbose", "-vv"}
# Errors the machine gives a write, not bugs: a full disk, a quota, a file-size limit, a failing
# or read-only device. They end a command with one line, not a traceback (a broken pipe, `| head`,
# is click's: exit 1 in silence).
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


class FaceScoreGroup(TyperGroup):
    """The root command group: `-v` / `-q` anywhere on the line (before `--`), and real metavars."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self)

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        console.ARGV[:] = argv
        if argv == ["--version"]:  # before any parsing
            print(__version__)
            return 0 if kwargs.get("standalone_mode", True) is False else sys.exit(0)
        kept: list[str] = []
        level = 0
        for i, a in enumerate(argv):
            if a == "--":
                kept += argv[i:]
                break
            if a in _QUIET:
                level = -1
            elif a in _VERBOSE:
                level = max(level, 0) + (2 if a == "-vv" else 1) if level >= 0 else level
            else:
                kept.append(a)
        console.set_verbosity(level)
        for p in self.params:  # typer adds --install-completion and --show-completion after __init__
            if getattr(p, "is_flag", False):
                p.metavar = ""
        standalone = kwargs.pop("standalone_mode", True)
        if not standalone:
            return super().main(kept, *rest, standalone_mode=False, **kwargs)
        try:
            rv = super().main(kept, *rest, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # typer's click exceptions: usage mistakes
            # One line, not a panel: what was wrong and where to look (exit 2 for usage mistakes).
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
                hint = f" (try '{exc.ctx.command_path} -h')" if getattr(exc, "ctx", None) is not None else ""
                sys.stderr.write(f"{where}{exc.format_message()}{hint}\n")
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.stderr.write("aborted\n")
            sys.exit(1)
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            try:  # stderr may be on the same full disk
                sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
                sys.stderr.flush()
            except OSError:
                pass
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


class _Untyped:
    """An argument's type whose help shows no `<str>` column; it parses as the type it wraps."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return ""


def _plain_argument(p: Any) -> None:
    """`INPUT...` in the usage line rather than typer's `{INPUT...}`, and no type column."""
    p.type = _Untyped(p.type)
    p.get_usage_pieces = lambda ctx, p=p: [_argument_metavar(p) if p.required else f"[{_argument_metavar(p)}]"]


def _argument_metavar(p: Any) -> str:
    return p.metavar or p.name.upper() + ("..." if p.nargs != 1 else "")


def _quiet_help_option(cmd: Any) -> None:
    made = cmd.get_help_option

    def get_help_option(ctx: Any) -> Any:
        opt = made(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = get_help_option


def _tidy_help(group: Any) -> None:
    """Flags show no `<bool>`; options and arguments without a metavar show their name."""
    _quiet_help_option(group)
    for p in group.params:
        if getattr(p, "is_flag", False) or getattr(p, "count", False):
            p.metavar = ""
    for cmd in group.commands.values():
        if hasattr(cmd, "commands"):
            _tidy_help(cmd)
            continue
        _quiet_help_option(cmd)
        for p in cmd.params:
            if p.param_type_name == "argument":  # its metavar is its name; no type column, no braces
                _plain_argument(p)
            if p.metavar is not None:
                continue
            if getattr(p, "is_flag", False) or getattr(p, "count", False):
                p.metavar = ""
            elif p.param_type_name == "argument":
                p.metavar = p.name.upper() + ("..." if p.nargs != 1 else "")
            else:
                p.metavar = p.name.upper().replace("_PATH", "")


app = typer.Typer(
    cls=FaceScoreGroup,
    help="Score faces in photos for perceived attractiveness (as rated by a population of raters), "
    "with a one-word vibe and a percentile rank. -v for more detail, -q for errors only, on any command.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Via(str, Enum):
    auto = "auto"
    local = "local"
    queue = "queue"


VIA_HELP = "Who scores (env FACESCORE_VIA, default auto): local here, queue through Redis and the workers, " \
           "auto the queue when a worker is alive, else local."
STORE_HELP = "Keep real-model results in the face store (Qdrant); --no-store keeps them out."
NUL_HELP = "With INPUT -: the paths on stdin are separated by NUL (find -print0), not newlines."
# The options every command that takes inputs shares.
VIA = typer.Option(None, "--via", help=VIA_HELP, show_default=False, metavar="auto|local|queue")
STORE = typer.Option(True, "--store/--no-store", help=STORE_HELP)
NUL = typer.Option(False, "-0", "--null", help=NUL_HELP)
ANNOTATE = typer.Option(None, "--annotate", metavar="DIR", show_default=False,
                        help="Write a copy of each scored image to this folder, at the same relative path, "
                             "with its boxes, scores and vibes drawn.")


def _resolve_via(settings: Settings, via: Optional[Via]) -> str:
    """local or queue (`_ask_via`, waited for)."""
    return _ask_via(settings, via)()


def _ask_via(settings: Settings, via: Optional[Via]) -> Callable[[], str]:
    """A call that returns local or queue. Silent unless the queue is used (or -v): a user who
    never asked for a queue hears nothing about Redis. --via queue without Redis or a live worker
    exits 2 when called.

    With --via auto or queue the question (redis-py's import and a look at the workers) runs in a
    forked child (`forked.Forked`) from now on, so the caller can load the models meanwhile."""
    choice = console.via_choice(settings, via.value if via else None)
    if choice == "local":
        return lambda: "local"
    from .errors import ServiceUnavailable
    from .forked import Forked

    asking = Forked(_choose_via, settings, choice)

    def answer() -> str:
        try:
            mode, why = asking.result()
        except ServiceUnavailable as exc:
            fail(f"--via queue: {exc}")
        note(why, level=0 if mode == "queue" else 1)
        return mode

    return answer


def _choose_via(settings: Settings, choice: str) -> tuple[str, str]:
    from . import queue

    return queue.choose_via(settings, choice)


def read_inputs(inputs: list[str], null: bool) -> list[str]:
    """The inputs with `-` replaced by the paths on stdin (one a line, or NUL-separated with -0),
    each checked to exist: a typo is a usage error (exit 2) before any work starts."""
    given: list[str] = []
    for name in inputs:
        if name == "-":
            data = sys.stdin.read()
            given += [p for p in (data.split("\0") if null else data.splitlines()) if p.strip()]
        else:
            given.append(name)
    if not given:
        fail("no inputs: give files or folders, or - to read paths from stdin")
    missing = [g for g in given if not os.path.exists(g)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        fail(f"no such file or folder: {missing[0]}{more}")
    return given


def collect_inputs(given: list[str]) -> tuple[list[Item], int]:
    """(the images to score, how many other files the folders held), each of those said in
    one line; no image at all is a usage error (exit 2)."""
    from . import pipeline

    found = pipeline.collect(given)
    for shown in found.skipped:
        note(f"skipped (not an image file): {shown}")
    if not found.items:
        fail("no image files in the inputs" + (f" ({len(found.skipped)} other files skipped)" if found.skipped else ""))
    return found.items, len(found.skipped)


def _results(items: list[Item], settings: Settings, mode: str, jobs: int, store: bool,
             ordered: bool = False, local: LocalScorer | None = None, pool: ScoringPool | None = None,
             ) -> tuple[Iterator[ImageResult], Iterator[ImageResult]]:
    """(the scorer's results, the same through the face store), from the path `_ask_via`
    chose, as they arrive or, `ordered`, in input order: then the store also sees the faces in
    input order, so `store_rank` does not depend on which process finished first. The first is
    returned too, so that a stopped run can close it. `local`: the in-process scorer to use
    when jobs is 1 (its models may be loading already); `pool`: the scoring processes to use when
    jobs > 1 (started already; not closed here)."""
    from .store import remember_all

    if mode == "queue":
        from . import queue

        raw = queue.score_items(items, settings, warn=warn,
                                on_batch=lambda b: note(f"batch {b.id}: {b.jobs} job(s) queued"))
    else:
        from . import pipeline

        raw = pipeline.score_items(items, settings, jobs, local=local, pool=pool)
    return raw, remember_all(in_input_order(raw, items) if ordered else raw, settings, warn, enabled=store, note=note)


def in_input_order(results: Iterable[ImageResult], items: list[Item]) -> Iterator[ImageResult]:
    """Results in the order of `items`. The scorers keep a bounded window of work in flight,
    so this holds at most that many results back."""
    index = {item.display: i for i, item in enumerate(items)}
    held: dict[int, ImageResult] = {}
    nxt = 0
    for r in results:
        i = index.get(r.path)
        if i is None:  # not one of ours (cannot happen today): pass it on
            yield r
            continue
        held[i] = r
        while nxt in held:
            yield held.pop(nxt)
            nxt += 1
    for i in sorted(held):
        yield held[i]


def _annotate_ready(to: Optional[Path]) -> None:
    """--annotate DIR is created, or exit 2 before any work starts."""
    if to is not None:
        from . import annotate

        try:
            annotate.prepare(to)
        except annotate.AnnotateError as exc:
            fail(str(exc))


def _annotating(results: Iterator[ImageResult], to: Optional[Path]) -> Iterator[ImageResult]:
    """--annotate DIR: the results pass through annotate.py, which writes each image's copy."""
    if to is None:
        return results
    from . import annotate

    return annotate.annotated(results, to, warn)


def _exit_code(failed: bool) -> int:
    return 1 if failed else 0


@app.callback(invoke_without_command=True)
def main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Say more: why local or queue, the chain's log (any command)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Errors only: no notes, progress or summary (any command)."),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


# --------------------------------------------------------------------------------------- score


def _format(as_json: bool, as_jsonl: bool, as_csv: bool, as_tsv: bool) -> str | None:
    chosen = [name for name, on in (("json", as_json), ("jsonl", as_jsonl), ("csv", as_csv), ("tsv", as_tsv)) if on]
    if len(chosen) > 1:
        fail(f"give one output format, not {' and '.join('--' + c for c in chosen)}")
    return chosen[0] if chosen else None


@app.command()
def score(
    inputs: list[str] = typer.Argument(..., help="Image files and folders (folders recursively); - reads paths from stdin.",
                                       show_default=False, metavar="INPUT..."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image (its faces nested), as a list."),
    as_jsonl: bool = typer.Option(False, "--jsonl", help="Result rows as JSON lines (the batch schema)."),
    as_csv: bool = typer.Option(False, "--csv", help="Result rows as CSV (the batch schema)."),
    as_tsv: bool = typer.Option(False, "--tsv", help="Result rows as TSV (the batch schema)."),
    via: Optional[Via] = VIA,
    store: bool = STORE,
    null: bool = NUL,
    annotate_to: Optional[Path] = ANNOTATE,
    min_face: Optional[int] = MIN_FACE,
) -> None:
    """Score images and print a table: file, face, score, vibe, rank, confidence, source.

    On a terminal the table is drawn; in a pipe it is plain tab-separated lines with a header,
    never folded. Exit 0 when every image was scored (no face is a result), 1 when any failed.

    [bold]Examples[/bold]

      facescore score examples/faces/omi-46.jpg

      facescore score examples/ --csv > results.csv

      find photos -name '*.jpg' -print0 | facescore score - -0 --jsonl

      facescore score examples/group.jpg --annotate annotated/

      facescore score crowd.jpg --min-face 100
    """
    fmt = _format(as_json, as_jsonl, as_csv, as_tsv)
    settings = settings_or_exit(min_face)
    _annotate_ready(annotate_to)
    given = read_inputs(inputs, null)
    items, _ = collect_inputs(given)  # imports numpy and Pillow, which the child below inherits
    answer = _ask_via(settings, via)
    local = None
    if console.via_choice(settings, via.value if via else None) != "queue":
        from .pipeline import LocalScorer

        # The models load while the child decides local or queue: the common answer is local.
        local = LocalScorer(settings)
    raw, results = _results(items, settings, answer(), jobs=1, store=store, local=local)
    collected = list(_annotating(results, annotate_to))
    if fmt == "json":
        import json

        typer.echo(json.dumps([r.to_json() for r in collected], indent=2))
    elif fmt is not None:
        from .output import RowWriter

        with RowWriter(None, fmt) as writer:
            for r in collected:
                writer.write(r)
    elif console.stdout_is_terminal():
        from .output import results_table

        console.out.print(results_table(collected))
    else:
        from .output import plain_table

        sys.stdout.write(plain_table(collected))
        sys.stdout.flush()
    raise typer.Exit(_exit_code(any(r.failed for r in collected)))


# --------------------------------------------------------------------------------------- batch


class Stopped(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt, so that no `except
    Exception` on the way turns it into an error row)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class stop_signals:
    """SIGINT, SIGTERM and SIGHUP raise Stopped in the main thread, once; later ones are ignored
    while the run winds down (it finishes or drops what is in flight and flushes the file)."""

    def __enter__(self) -> "stop_signals":
        self._old = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
        for s in _STOP_SIGNALS:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        for s in _STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def resume_command(out: str) -> str:
    """The command line that was run, with --resume (and without --force): how to finish."""
    argv = [a for a in console.ARGV if a not in ("--force", "-f")]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join([*shlex.split(console.program()), *argv])


class _Progress:
    """A progress bar on a terminal; elsewhere (nohup, CI, a redirect) a plain line every ~10 s."""

    INTERVAL_S = 10.0

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._bar: Any = None
        self._task: Any = None
        self.enabled = console.VERBOSITY >= 0
        if self.enabled and console.stderr_is_terminal():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=err.real(), transient=False)

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task("scoring", total=self.total, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.enabled and self.done and self._last < self.elapsed - 0.5:
            self._line()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def print(self, msg: str) -> None:
        (self._bar.console if self._bar is not None else err).print(msg, highlight=False, soft_wrap=True)

    def advance(self) -> None:
        self.done += 1
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=f"{rate:.2f} img/s")
        elif self.enabled and (self.done == 1 or self.elapsed - self._last >= self.INTERVAL_S):
            self._line()

    def _line(self) -> None:
        self._last = self.elapsed
        rate = self.done / self._last if self._last > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        err.print(f"scored {self.done}/{self.total} ({pct:.0f}%), {rate:.2f} images/s, "
                  f"elapsed {_hms(self._last)}, ETA {_hms(left)}", highlight=False, soft_wrap=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _out_kind(out: str, fmt: str | None) -> str:
    """The output format, checked before any work: from the flag for `-`, else the extension."""
    from .output import format_for

    if out == "-":
        return fmt or "csv"
    path = Path(out)
    if path.is_dir():
        fail(f"--out {path} is a folder; give a file name such as {path / 'results.csv'}")
    try:
        kind = format_for(path)
    except ValueError as exc:
        fail(str(exc))
    if fmt and fmt != kind:
        fail(f"--{fmt} does not match --out {path.name} (the format follows the extension)")
    return kind


@app.command()
def batch(
    inputs: list[str] = typer.Argument(..., help="Files and folders (folders recursively); - reads paths from stdin.",
                                       show_default=False, metavar="INPUT..."),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="FILE|-", show_default=False,
                                      help="results.csv, .tsv, .json or .jsonl (format from the extension), or - for "
                                           "stdout (the default when --csv, --tsv, --json or --jsonl is given)."),
    resume: bool = typer.Option(False, "--resume", help="Add to an existing --out: skip images already in it, "
                                "score again those whose row was an error."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing --out."),
    as_csv: bool = typer.Option(False, "--csv", help="Rows as CSV on stdout (the default for --out -)."),
    as_tsv: bool = typer.Option(False, "--tsv", help="Rows as TSV on stdout."),
    as_json: bool = typer.Option(False, "--json", help="Rows as one JSON list on stdout, at the end."),
    as_jsonl: bool = typer.Option(False, "--jsonl", help="Rows as JSON lines on stdout, as they are scored."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, metavar="N", help="Processes to score in (0 = one per core)."),
    ordered: bool = typer.Option(True, "--ordered/--unordered",
                                 help="Rows in input order (store_rank then does not depend on which process "
                                      "finished first); --unordered writes each as soon as it is scored."),
    via: Optional[Via] = VIA,
    store: bool = STORE,
    null: bool = NUL,
    annotate_to: Optional[Path] = ANNOTATE,
    min_face: Optional[int] = MIN_FACE,
) -> None:
    """Score files and folders, writing one row per face as it is produced.

    An existing --out is added to only with --resume and replaced only with --force. Stopped by
    Ctrl-C, SIGTERM or SIGHUP, it finishes or drops what is in flight, keeps the file whole and
    prints the command that carries on.

    [bold]Examples[/bold]

      facescore batch examples/ --out results.csv

      facescore batch photos/ --out results.jsonl --resume

      find photos -newer last-run -print0 | facescore batch - -0 --jsonl | jq .score

      facescore batch photos/ --out results.csv --annotate annotated/
    """
    fmt = _format(as_json, as_jsonl, as_csv, as_tsv)
    if out is None:
        if fmt is None:
            fail("where to? --out results.csv (or .tsv, .json, .jsonl), or --csv, --json or --jsonl for stdout")
        out = "-"
    kind = _out_kind(out, fmt)
    to_stdout = out == "-"
    if to_stdout and resume:
        fail("--resume needs an output file, not --out -")
    out_path = None if to_stdout else Path(out)
    if out_path is not None:
        from .output import check_out

        problem = check_out(out_path, resume=resume, force=force)
        if problem:
            fail(problem)
    settings = settings_or_exit(min_face)
    _annotate_ready(annotate_to)
    given = read_inputs(inputs, null)
    # The scoring processes load their models while this one collects the inputs and imports
    # what it writes with (~0.2 s of a batch): at once when the answer is sure to be local.
    with _early_pool(settings, via, jobs, given) as pool:
        mode = _resolve_via(settings, via)
        items, skipped = collect_inputs(given)

        keep: list[dict[str, str]] = []
        resumed = 0
        append = False
        if resume and out_path is not None and out_path.is_file() and out_path.stat().st_size > 0:
            items, keep, resumed = _plan_resume(out_path, kind, items)
            append = kind != "json"
            if not items:
                note(f"nothing to score: all {resumed} images are already in {out_path}")
                raise typer.Exit(0)

        from .output import RowWriter, Tally, score_summary, summary_table

        tally = Tally()
        writer = RowWriter(out_path, kind, append=append, keep=keep if kind == "json" else None)
        n_jobs = jobs if jobs > 0 else _default_jobs()
        raw, stream = _results(items, settings, mode, n_jobs, store, ordered, pool=pool)
        stream = _annotating(stream, annotate_to)
        progress = _Progress(len(items))
        try:
            with stop_signals(), writer, progress:
                for r in stream:
                    writer.write(r)
                    tally.add(r)
                    if r.failed:
                        progress.print(f"[red]failed[/red] {_esc(r.path)}: {_esc(r.error or '')}")
                    progress.advance()
        except (Stopped, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            for gen in (stream, raw):  # finish or drop the work in flight, close the store
                close = getattr(gen, "close", None)
                if close:
                    close()
            name = signal.Signals(signum).name
            where = "stdout" if to_stdout else str(out_path)
            console.error(f"stopped by {name}: {tally.images} of {len(items)} images written to {where}")
            if not to_stdout:
                again = resume_command(out)
                stdin = " (with the same paths on stdin)" if "-" in inputs else ""
                err.print(f"to finish, run{stdin}: {again}", highlight=False, soft_wrap=True)
            raise typer.Exit(128 + signum) from None
        if console.VERBOSITY >= 0:
            err.print(summary_table(tally, progress.elapsed, skipped=skipped, resumed=resumed))
            text = score_summary(tally)
            if text:
                err.print(text, highlight=False, soft_wrap=True)
            if not to_stdout:
                note(f"wrote {out_path}")
        raise typer.Exit(_exit_code(tally.failed > 0))


def _early_pool(settings: Settings, via: Optional[Via], jobs: int, given: list[str]) -> ContextManager[ScoringPool | None]:
    """The batch's scoring processes, started now when it will score locally with more than one
    (--via local, or FACESCORE_VIA=local), else None; closed on leaving the block."""
    n = jobs if jobs > 0 else _default_jobs()
    if all(os.path.isfile(g) for g in given):  # files only: no more processes than files
        n = min(n, len(given))
    if n <= 1 or console.via_choice(settings, via.value if via else None) != "local":
        return contextlib.nullcontext()
    from .pool import ScoringPool

    return ScoringPool(settings, n)


def _plan_resume(out_path: Path, kind: str, items: list[Item]) -> tuple[list[Item], list[dict[str, str]], int]:
    """(what is left to score, the rows a .json file keeps, how many inputs are done), after
    repairing the file; says what it skipped, retried and repaired."""
    from . import resume
    from .output import read_rows, rewrite

    try:
        existing = read_rows(out_path)
    except ValueError as exc:
        fail(str(exc))
    p = resume.plan(out_path, items, existing)
    if p.repaired:
        note(f"repaired {out_path}: its last line was cut short; scoring {p.repaired} again")
    if p.retried:
        note(f"scoring again {len(p.retried)} image(s) whose rows were errors (first: {p.retried[0]})")
    if p.done:
        how = f", {p.by_content} of them recognised by content" if p.by_content else ""
        note(f"skipping {p.done} image(s) already in {out_path}{how}")
    if p.rewrite and kind != "json":
        rewrite(out_path, p.keep)
        note(f"rewrote {out_path} without {p.dropped} row(s) (errors, duplicates, a cut line)", level=1)
    return p.todo, p.keep, p.done


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _default_jobs() -> int:
    from .pipeline import default_jobs

    return default_jobs()


def _register_commands() -> None:
    """Each module in facescore_cli/commands/ adds its commands with `register(app)` (modules
    whose name starts with _ are helpers). They import only what registering needs."""
    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{mod}").register(app)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    app()
