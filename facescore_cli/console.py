"""The terminal side shared by every command: where output goes, and settings or exit 2."""
from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from .config import Settings
from .errors import ConfigError

out = Console()
err = Console(stderr=True)


def settings_or_exit() -> Settings:
    """The settings, or a one-line configuration error and exit code 2."""
    try:
        return Settings.load()
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def fail(msg: str) -> NoReturn:
    """A one-line error in red on stderr, then exit code 2 (bad input or an unusable setting)."""
    err.print(f"[red]{escape(msg)}[/red]")
    raise typer.Exit(2)


def via_choice(settings: Settings, via: str | None) -> str:
    """--via (else FACESCORE_VIA), lower-cased: auto, local or queue; anything else exits 2."""
    choice = (via or settings.via).lower()
    if choice not in ("auto", "local", "queue"):
        fail(f"--via must be auto, local or queue, not {choice!r}")
    return choice


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(msg)}")
