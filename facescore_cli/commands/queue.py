"""`facescore submit`, `results`, `worker` and `serve api`: the Redis queue from the command line."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import output, pipeline, queue
from ..console import err, fail, out, settings_or_exit, via_choice, warn
from ..errors import ServiceUnavailable
from ..health import redact
from ..result import ImageResult
from ..store import remember_all

def submit(
    inputs: list[str] = typer.Argument(..., help="Files and folders (folders are walked recursively).", show_default=False),
    via: Optional[str] = typer.Option(None, "--via", help="queue or auto (env FACESCORE_VIA); submit always uses the queue.",
                                      show_default=False),
    keep: int = typer.Option(queue.KEEP_RESULTS_S, "--keep", help="Seconds the batch record stays in Redis."),
    as_json: bool = typer.Option(False, "--json", help='Print {"batch", "jobs", "inputs", "errors"} instead of the id.'),
    store: bool = typer.Option(True, "--store/--no-store",
                               help="Keep the results in the face store when they are collected with `results`."),
) -> None:
    """Put images on the Redis queue and print the batch id at once; collect with `facescore results`.

    Each image is one job whose id comes from its bytes and the model version, so an image
    submitted again is not scored again while its result is kept. Unreadable files and files
    over the size cap are recorded as errors and not queued.

    [bold]Examples[/bold]

      facescore submit photos/

      id=$(facescore submit a.jpg b.jpg) && facescore results "$id" --wait --out results.csv
    """
    settings = settings_or_exit()
    if (via or settings.via).lower() == "local":
        fail("submit puts images on the queue; --via local makes no sense here (use score or batch)")
    found = pipeline.collect(inputs)
    for shown in found.skipped:
        err.print(f"[yellow]skipped (not an image):[/yellow] {escape(shown)}")
    if not found.items:
        fail("no image files found in the inputs")
    try:
        workers = queue.live_workers(settings)
        batch = queue.run(queue.submit(((i.path, i.display) for i in found.items), settings, keep_s=keep,
                                       workers=workers, store=store))
    except ServiceUnavailable as exc:
        fail(str(exc))
    errors = [e for e in batch.entries if e.error]
    for e in errors:
        err.print(f"[red]not queued[/red] {escape(e.path)}: {escape(e.error or '')}")
    if not workers:
        err.print(f"[yellow]no live worker on queue {settings.queue!r}: the jobs wait until one starts "
                  f"(facescore worker)[/yellow]")
    if as_json:
        typer.echo(json.dumps({"batch": batch.id, "jobs": batch.jobs, "inputs": len(batch.entries),
                               "errors": [{"path": e.path, "error": e.error} for e in errors]}))
    else:
        err.print(f"[dim]{batch.jobs} job(s) queued for {len(batch.entries)} input(s) on queue {settings.queue!r}[/dim]")
        typer.echo(batch.id)
    raise typer.Exit(1 if errors else 0)


def results(
    batch_id: str = typer.Argument(..., help="The id `facescore submit` printed.", show_default=False),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write rows to .csv or .jsonl as they arrive."),
    wait: bool = typer.Option(False, "--wait", help="Wait until every job has finished (with a progress bar)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
) -> None:
    """Collect what the workers returned for a batch; again and again, until the results expire.

    Without --wait, shows what has finished and says how many are still queued (exit 1 while
    any is). With --wait, rows are written as they arrive; if no worker is alive it says so
    within seconds instead of waiting forever.

    [bold]Examples[/bold]

      facescore results 20240101-120000-1a2b3c4d

      facescore results 20240101-120000-1a2b3c4d --wait --out results.jsonl
    """
    settings = settings_or_exit()
    if out_path is not None:
        try:
            output.format_for(out_path)
        except ValueError as exc:
            fail(str(exc))
    try:
        batch = queue.run(queue.load_batch(settings, batch_id))
    except KeyError:
        fail(f"no batch {batch_id!r} in Redis (unknown id, or its results expired)")
    except ServiceUnavailable as exc:
        fail(str(exc))
    collected: list[ImageResult] = []
    pending: list[queue.Entry] = []
    problem: str | None = None
    start = time.perf_counter()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=False,
        disable=not wait,
    )
    writer = output.RowWriter(out_path) if out_path is not None else None
    try:
        with progress:
            task = progress.add_task(f"batch {batch_id}", total=len(batch.entries))
            try:
                arriving = queue.iterate(queue.collect(batch, settings, wait=wait, warn=warn, pending=pending))
                for r in remember_all(arriving, settings, warn, enabled=batch.store):
                    collected.append(r)
                    if writer is not None:
                        writer.write(r)
                    progress.update(task, advance=1)
            except ServiceUnavailable as exc:
                problem = str(exc)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted; nothing is lost: run `facescore results {batch_id}` again[/yellow]")
        raise typer.Exit(130) from None
    finally:
        if writer is not None:
            writer.close()
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in collected], indent=2))
    elif out_path is None:
        out.print(output.results_table(collected))
    if wait or collected:
        err.print(output.summary_table(collected, time.perf_counter() - start))
    if out_path is not None:
        err.print(f"wrote {out_path}")
    if problem:
        err.print(f"[red]{escape(problem)}[/red]")
    if pending:
        err.print(f"[yellow]{len(pending)} image(s) still queued; run `facescore results {batch_id} --wait` "
                  f"to collect them[/yellow]")
    raise typer.Exit(1 if pending or any(r.failed for r in collected) else 0)


def worker(
    concurrency: int = typer.Option(0, "--concurrency", "-c", help="Jobs at once, one process each (0 = one per core)."),
    lock_duration: int = typer.Option(30_000, "--lock-duration", min=1000, help="Job lock, ms; renewed at half."),
    stalled_interval: int = typer.Option(30_000, "--stalled-interval", min=500,
                                         help="How often jobs of dead workers are looked for, ms."),
    keep_results: int = typer.Option(queue.KEEP_RESULTS_S, "--keep-results", help="Seconds completed results stay in Redis."),
    grace: float = typer.Option(30.0, "--grace", help="Seconds to finish in-flight jobs after SIGINT/SIGTERM."),
) -> None:
    """Take `score` jobs from the Redis queue (FACESCORE_QUEUE at REDIS_URL), score them, return results.

    One JSON line per job on stdout. A heartbeat in Redis tells `health` and `--via auto` that
    this worker is alive. SIGINT/SIGTERM: no new jobs, in-flight ones finish within --grace, the
    rest go back to the queue through BullMQ's stalled-job check.

    [bold]Examples[/bold]

      facescore worker

      REDIS_URL=rediss://:s3cret@redis.example:6380 facescore worker --concurrency 4
    """
    from ..worker import FaceWorker, serve

    settings = settings_or_exit()
    try:
        queue.ping(settings)
    except ServiceUnavailable as exc:
        fail(str(exc))
    serve(FaceWorker(settings, concurrency=concurrency if concurrency > 0 else pipeline.default_jobs(),
                     lock_ms=lock_duration, stalled_ms=stalled_interval, keep_results_s=keep_results, grace_s=grace,
                     log=sys.stdout))


def api(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(3000, "--port", help="Port to listen on."),
    via: Optional[str] = typer.Option(None, "--via", help="auto | local | queue (env FACESCORE_VIA): who scores.",
                                      show_default=False),
    timeout: float = typer.Option(90.0, "--timeout", min=1.0,
                                  help="Seconds a request waits for a worker's result; keep it over the workers' "
                                       "--lock-duration + --stalled-interval, so a job of a killed worker comes back."),
    processes: int = typer.Option(0, "--processes", min=0,
                                  help="Scoring processes for --via local (0 = FACESCORE_API_PROCESSES, else one per core)."),
    max_waiting: int = typer.Option(0, "--max-waiting", min=0,
                                    help="Requests that may wait beyond those being scored before the answer is 503 "
                                         "with Retry-After (0 = FACESCORE_API_MAX_WAITING, else 4 per scoring slot)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
) -> None:
    """The original REST endpoint: POST /api/score with {"image": "<base64>"}.

    Answers {"success": true, "data": {"score", "vibe", "rank", "faces", ...}} or
    {"success": false, "error": ...} with 400 (bad request), 413 (too big), 422 (not an image,
    no face), 503 (busy, no worker, timeout; with Retry-After) or 500. GET /health is 503 with
    the reasons when the API cannot score.

    [bold]Examples[/bold]

      facescore serve api

      curl -s localhost:3000/api/score -H 'content-type: application/json' \\
        -d "{\\"image\\": \\"$(base64 -w0 examples/faces/omi-46.jpg)\\"}"
    """
    import uvicorn

    from ..api import create_app

    settings = settings_or_exit()
    choice = via_choice(settings, via)
    err.print(f"[dim]via {choice}: "
              + ("scoring in this machine's processes" if choice == "local" else
                 f"queue {settings.queue!r} at {redact(settings.redis_url)}"
                 + (", local when no worker is alive" if choice == "auto" else "")) + "[/dim]", highlight=False)
    app = create_app(settings, choice, timeout, processes=processes, max_waiting=max_waiting or None)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level,
                timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(results)
    app.command()(worker)
    # `serve` belongs to commands/serve.py; its Typer group builds its click group only when the
    # CLI runs, so adding a command here works whichever module registers first.
    try:
        from .serve import serve_app
    except ImportError:  # pragma: no cover - the services module is missing
        serve_app = typer.Typer(help="Run facescore's HTTP services.", no_args_is_help=True)
        app.add_typer(serve_app, name="serve")
    serve_app.command("api")(api)
