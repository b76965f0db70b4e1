"""`facescore serve detection|embedding`: the ML HTTP services, run by uvicorn.

Other modules may add commands to the same group: `from .serve import serve_app`.
"""
from __future__ import annotations

import os
from enum import Enum

import typer

from ..config import Settings
from ..errors import ConfigError


class LogLevel(str, Enum):
    """uvicorn's log levels."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


serve_app = typer.Typer(help="Run facescore's HTTP services.", no_args_is_help=True)

HOST_HELP = "Address to bind. The default answers this machine only; 0.0.0.0 opens it to the network."
WORKERS_HELP = "Processes, each with its own copy of the models (uvicorn workers)."
THREADS_HELP = "Inference threads per process (0 = up to 4, one per core)."
# The options both services share (Typer reads these as defaults; one instance serves both).
HOST = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help=HOST_HELP)
WORKERS = typer.Option(1, "--jobs", "-j", "--workers", min=1, metavar="N", help=WORKERS_HELP)
THREADS = typer.Option(0, "--threads", min=0, metavar="N", help=THREADS_HELP)
LOG_LEVEL = typer.Option(LogLevel.info, "--log-level", help="uvicorn's log level.")


def _run(factory: str, host: str, port: int, workers: int, threads: int, log_level: LogLevel) -> None:
    import uvicorn

    try:
        Settings.load()  # refuse a broken configuration here, not in every worker
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    if threads > 0:
        # Read by the app factory in each worker process (uvicorn spawns them afresh).
        os.environ["FACESCORE_SERVICE_THREADS"] = str(threads)
    uvicorn.run(factory, factory=True, host=host, port=port, workers=workers, access_log=False,
                log_level=log_level.value, timeout_graceful_shutdown=5)


@serve_app.command()
def detection(
    host: str = HOST,
    port: int = typer.Option(8001, "--port", help="Port to listen on."),
    workers: int = WORKERS,
    threads: int = THREADS,
    log_level: LogLevel = LOG_LEVEL,
) -> None:
    """The face detection service: POST /detect, GET /health, GET /openapi.json.

    Demands a bearer token when FACESCORE_SERVICE_TOKEN is set.

    [bold]Examples[/bold]

      facescore serve detection

      FACESCORE_SERVICE_TOKEN=s3cret facescore serve detection --host 0.0.0.0 --port 9001 --jobs 2
    """
    _run("facescore_cli.services.detection:create_app", host, port, workers, threads, log_level)


@serve_app.command()
def embedding(
    host: str = HOST,
    port: int = typer.Option(8002, "--port", help="Port to listen on."),
    workers: int = WORKERS,
    threads: int = THREADS,
    log_level: LogLevel = LOG_LEVEL,
) -> None:
    """The face embedding service: POST /embed, GET /health, GET /openapi.json.

    Demands a bearer token when FACESCORE_SERVICE_TOKEN is set.

    [bold]Examples[/bold]

      facescore serve embedding

      FACE_EMBEDDING_SERVICE=http://127.0.0.1:8002 facescore score photo.jpg  # from another shell
    """
    _run("facescore_cli.services.embedding:create_app", host, port, workers, threads, log_level)


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")
