"""The terminal side shared by every command: where output goes, and settings or exit 2."""
from __future__ import annotations

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


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(msg)}")
