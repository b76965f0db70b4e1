"""Command groups beyond score/batch. Each module defines `register(app: typer.Typer) -> None`;
cli.py imports every module here, in name order."""
