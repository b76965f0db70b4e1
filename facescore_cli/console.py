"""The terminal side shared by every command: where output goes, how loud, and exit 2 on usage.

Nothing here imports rich until something is printed through it, so `--version` and `--help`
stay fast (rich's console alone costs ~40 ms of imports).
"""
from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from .ml.types import DEFAULT_MIN_FACE, LARGEST_MIN_FACE, SMALLEST_MIN_FACE

if TYPE_CHECKING:
    from rich.console import Console

    from .config import Settings

# -v / -q on every command (set by cli.CommonOptions before the command runs)
VERBOSITY = 0  # -1 quiet: errors only; 0 normal; 1+ verbose: notes and the chain's log
# The arguments the command line was called with, for messages that say how to run it again.
ARGV: list[str] = []


class _LazyConsole:
    """A rich Console made at first use."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def real(self) -> Console:
        """The Console itself, for rich objects that take one (Progress, Live, status)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)

    def __enter__(self) -> Console:
        return self.real().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.real().__exit__(*exc)


out: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]
err: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]


def set_verbosity(level: int) -> None:
    global VERBOSITY
    VERBOSITY = level
    logging.basicConfig(level=logging.INFO if level > 0 else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s", force=True)


def is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stdout_is_terminal() -> bool:
    return is_terminal(sys.stdout)


def stderr_is_terminal() -> bool:
    return is_terminal(sys.stderr)


def settings_or_exit(min_face: int | None = None) -> Settings:
    """The settings, or a one-line configuration error and exit code 2. `min_face`: the
    command's --min-face, which wins over FACESCORE_MIN_FACE."""
    import dataclasses

    from .config import Settings
    from .errors import ConfigError

    try:
        settings = Settings.load()
    except ConfigError as exc:
        error(f"configuration error: {exc}")
        raise typer.Exit(2) from None
    return settings if min_face is None else dataclasses.replace(settings, min_face=min_face)


# --min-face of score, batch and submit (typer checks the range: below it, one line and exit 2).
MIN_FACE = typer.Option(None, "--min-face", metavar="PX", min=SMALLEST_MIN_FACE, max=LARGEST_MIN_FACE,
                        show_default=False,
                        help=f"The narrowest face to look for, in pixels (env FACESCORE_MIN_FACE, default "
                             f"{DEFAULT_MIN_FACE}; {SMALLEST_MIN_FACE} at least): larger is faster; faces much "
                             "narrower are not looked for.")


def error(msg: str) -> None:
    """One line on stderr, always shown (also with -q)."""
    from rich.markup import escape

    err.print(f"[red]{escape(msg)}[/red]", highlight=False, soft_wrap=True)


def fail(msg: str) -> NoReturn:
    """A one-line usage error on stderr, then exit code 2 (bad input or an unusable setting)."""
    error(msg)
    raise typer.Exit(2)


def warn(msg: str) -> None:
    from rich.markup import escape

    err.print(f"[yellow]warning:[/yellow] {escape(msg)}", highlight=False, soft_wrap=True)


def note(msg: str, *, level: int = 0) -> None:
    """A dim informational line on stderr, shown at verbosity >= `level` (never with -q)."""
    if VERBOSITY >= level and VERBOSITY >= 0:
        from rich.markup import escape

        err.print(f"[dim]{escape(msg)}[/dim]", highlight=False, soft_wrap=True)


def via_choice(settings: Settings, via: str | None) -> str:
    """--via (else FACESCORE_VIA), lower-cased: auto, local or queue; anything else exits 2."""
    choice = (via or settings.via).lower()
    if choice not in ("auto", "local", "queue"):
        fail(f"--via must be auto, local or queue, not {choice!r}")
    return choice


def program() -> str:
    """How to call us again: `python -m facescore_cli` when run that way, else `facescore`."""
    return "python -m facescore_cli" if sys.argv and sys.argv[0].endswith("__main__.py") else "facescore"


def duration(text: str) -> float:
    """Seconds from `30s`, `500ms`, `2m`, `12h`, `7d` or a bare number of seconds (`parse_duration`,
    as a Typer parser)."""
    from .config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def duration_from_ms_era(text: str) -> float:
    """`duration` for options that took milliseconds before: a bare number over 600 is refused
    (it was meant in ms), so that 30000 does not silently become eight hours."""
    raw = str(text).strip()
    try:
        bare = float(raw)
    except ValueError:
        return duration(raw)
    if bare > 600:
        raise typer.BadParameter(f"{raw} has no unit; this option now takes a duration like 30s "
                                 f"({raw} ms is {bare / 1000:g}s)")
    return bare
