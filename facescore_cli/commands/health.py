"""`facescore health`: one row per component; exit 0 only when real faces can be scored."""
from __future__ import annotations

import json

import typer


def health(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Check Redis, the detection and embedding services, the local models and Qdrant.

    Exit 0 when the configured scoring path can score real faces, 1 when it cannot,
    2 on a configuration error.

    [bold]Examples[/bold]

      facescore health

      FACE_DETECTION_SERVICE=http://127.0.0.1:8001 FACE_EMBEDDING_SERVICE=http://127.0.0.1:8002 facescore health --json
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .. import health as _health
    from ..config import Settings
    from ..errors import ConfigError

    style_of = {_health.OK: "green", _health.NOT_CONFIGURED: "dim", _health.DISABLED: "dim"}
    err = Console(stderr=True)
    try:
        report = _health.run(Settings.load())
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        table = Table("component", "status", "latency", "detail", title="facescore health")
        for c in report.checks:
            style = style_of.get(c.status, "red")
            latency = f"{c.latency_ms:.0f} ms" if c.latency_ms is not None else ""
            table.add_row(c.component, f"[{style}]{c.status}[/{style}]", latency, escape(c.detail))
        out = Console()
        out.print(table)
        colour = "green" if report.ok else "red"
        out.print(f"[{colour}]{'ready' if report.ok else 'not ready'}:[/{colour}] {escape(report.summary)}")
    raise typer.Exit(0 if report.ok else 1)


def register(app: typer.Typer) -> None:
    app.command("health")(health)
