"""`facescore submit`, `results`, `worker` and `serve api`: the Redis queue from the command line."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .. import console
from .serve import LOG_LEVEL, LogLevel
from ..console import MIN_FACE, duration, duration_from_ms_era, err, fail, note, out, settings_or_exit, via_choice, warn


def submit(
    inputs: list[str] = typer.Argument(..., help="Files and folders (folders recursively); - reads paths from stdin.",
                                       show_default=False, metavar="INPUT..."),
    via: Optional[str] = typer.Option(None, "--via", metavar="auto|queue", show_default=False,
                                      help="auto (default): refuse when no worker is alive on the queue, so photos never "
                                           "land in an unrelated Redis; queue: queue them anyway, for workers started later."),
    keep: float = typer.Option("7d", "--keep", parser=duration, metavar="DURATION",
                               help="How long the batch record stays in Redis (30s, 12h, 7d...)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"batch", "jobs", "inputs", "errors"} instead of the id.'),
    store: bool = typer.Option(True, "--store/--no-store",
                               help="Keep the results in the face store when they are collected with `results`."),
    null: bool = typer.Option(False, "-0", "--null", help="With INPUT -: the paths on stdin are NUL-separated."),
    min_face: Optional[int] = MIN_FACE,
) -> None:
    """Put images on the Redis queue and print the batch id at once; collect with `facescore results`.

    Each image is one job whose id comes from its bytes and the model version, so an image
    submitted again is not scored again while its result is kept. Unreadable files and files
    over the size cap are recorded as errors and not queued. With no live worker on the queue it
    refuses (exit 2) unless --via queue says to queue anyway.

    [bold]Examples[/bold]

      facescore submit photos/

      id=$(facescore submit a.jpg b.jpg) && facescore results "$id" --wait --out results.csv
    """
    from rich.markup import escape

    from .. import queue
    from ..cli import collect_inputs, read_inputs
    from ..errors import ServiceUnavailable

    settings = settings_or_exit(min_face)
    choice = via_choice(settings, via)
    if choice == "local":
        fail("submit puts images on the queue; --via local makes no sense here (use score or batch)")
    given = read_inputs(inputs, null)
    items, _ = collect_inputs(given)
    where = queue.describe(settings)

    async def put() -> tuple[list[dict], Optional[queue.Batch]]:
        async with queue.QueueClient(settings) as client:
            workers = await client.workers(max_age_s=0.0)
            if not workers and choice != "queue":
                return workers, None
            return workers, await client.submit(((i.path, i.display) for i in items), keep_s=int(keep),
                                                workers=workers, store=store)

    try:
        workers, batch = queue.run(put())
    except ServiceUnavailable as exc:
        fail(str(exc))
    if batch is None:
        fail(f"no live worker on {where}: nothing queued. Start `facescore worker` there, or pass "
             f"--via queue to queue for workers started later")
    errors = [e for e in batch.entries if e.error]
    for e in errors:
        err.print(f"[red]not queued[/red] {escape(e.path)}: {escape(e.error or '')}")
    if not workers:
        warn(f"no live worker on {where}: the jobs wait until one starts (facescore worker)")
    if as_json:
        typer.echo(json.dumps({"batch": batch.id, "jobs": batch.jobs, "inputs": len(batch.entries),
                               "errors": [{"path": e.path, "error": e.error} for e in errors]}))
    else:
        note(f"{batch.jobs} job(s) queued for {len(batch.entries)} input(s) on {where}")
        typer.echo(batch.id)
    raise typer.Exit(1 if errors else 0)


def results(
    batch_id: str = typer.Argument(..., help="The id `facescore submit` printed.", show_default=False, metavar="BATCH_ID"),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                            help="Write rows to .csv, .tsv, .json or .jsonl as they arrive."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing --out."),
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
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .. import output, queue
    from ..errors import ServiceUnavailable
    from ..result import ImageResult
    from ..store import remember_all

    if out_path is not None:
        problem = output.check_out(out_path, resume=False, force=force)
        if problem:
            fail(problem)
    settings = settings_or_exit()
    try:
        batch = queue.run(queue.load_batch(settings, batch_id))
    except KeyError:
        fail(f"no batch {batch_id!r} in Redis (unknown id, or its results expired)")
    except ServiceUnavailable as exc:
        fail(str(exc))
    collected: list[ImageResult] = []
    tally = output.Tally()
    pending: list[queue.Entry] = []
    problem: str | None = None
    start = time.perf_counter()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err.real(), transient=False,
        disable=not wait or console.VERBOSITY < 0,
    )
    writer = output.RowWriter(out_path) if out_path is not None else None
    try:
        with progress:
            task = progress.add_task(f"batch {batch_id}", total=len(batch.entries))
            try:
                arriving = queue.iterate(queue.collect(batch, settings, wait=wait, warn=warn, pending=pending))
                for r in remember_all(arriving, settings, warn, enabled=batch.store, note=note):
                    collected.append(r)
                    tally.add(r)
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
        if console.stdout_is_terminal():
            out.print(output.results_table(collected))
        else:
            sys.stdout.write(output.plain_table(collected))
    if (wait or collected) and console.VERBOSITY >= 0:
        err.print(output.summary_table(tally, time.perf_counter() - start))
    if out_path is not None:
        note(f"wrote {out_path}")
    if problem:
        err.print(f"[red]{escape(problem)}[/red]")
    if pending:
        err.print(f"[yellow]{len(pending)} image(s) still queued; run `facescore results {batch_id} --wait` "
                  f"to collect them[/yellow]")
    raise typer.Exit(1 if pending or any(r.failed for r in collected) else 0)


def worker(
    concurrency: int = typer.Option(0, "--jobs", "-j", "--concurrency", "-c", min=0, metavar="N",
                                    help="Jobs at once, one process each (0 = one per core)."),
    lock_duration: float = typer.Option("30s", "--lock-duration", parser=duration_from_ms_era, metavar="DURATION",
                                        help="Job lock (at least 1s); renewed at half."),
    stalled_interval: float = typer.Option("30s", "--stalled-interval", parser=duration_from_ms_era, metavar="DURATION",
                                           help="How often jobs of dead workers are looked for (at least 500ms)."),
    keep_results: float = typer.Option("7d", "--keep", "--keep-results", parser=duration, metavar="DURATION",
                                       help="How long completed results stay in Redis."),
    grace: float = typer.Option("30s", "--grace", parser=duration, metavar="DURATION", help="Time to finish in-flight jobs after SIGINT/SIGTERM."),
) -> None:
    """Take `score` jobs from the Redis queue (FACESCORE_QUEUE at REDIS_URL), score them, return results.

    One JSON line per job on stdout. A heartbeat in Redis tells `health` and `--via auto` that
    this worker is alive. SIGINT/SIGTERM: no new jobs, in-flight ones finish within --grace, the
    rest go back to the queue through BullMQ's stalled-job check.

    [bold]Examples[/bold]

      facescore worker

      REDIS_URL=rediss://:s3cret@redis.example:6380 facescore worker --concurrency 4
    """
    from .. import pipeline, queue
    from ..errors import ServiceUnavailable
    from ..worker import FaceWorker, serve

    if lock_duration < 1 or stalled_interval < 0.5:
        fail("--lock-duration must be at least 1s and --stalled-interval at least 500ms")
    settings = settings_or_exit()
    try:
        queue.ping(settings)
    except ServiceUnavailable as exc:
        fail(str(exc))
    serve(FaceWorker(settings, concurrency=concurrency if concurrency > 0 else pipeline.default_jobs(),
                     lock_ms=int(lock_duration * 1000), stalled_ms=int(stalled_interval * 1000),
                     keep_results_s=int(keep_results), grace_s=grace,
                     log=sys.stdout))


def api(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(3000, "--port", help="Port to listen on."),
    via: Optional[str] = typer.Option(None, "--via", help="auto | local | queue (env FACESCORE_VIA): who scores.",
                                      show_default=False, metavar="auto|local|queue"),
    timeout: float = typer.Option("90s", "--timeout", parser=duration, metavar="DURATION",
                                  help="How long a request waits for a worker's result; keep it over the workers' "
                                       "--lock-duration + --stalled-interval, so a job of a killed worker comes back."),
    jobs: int = typer.Option(0, "--jobs", "-j", "--processes", min=0, metavar="N",
                             help="Scoring processes for --via local (0 = FACESCORE_API_PROCESSES, else one per core)."),
    max_waiting: int = typer.Option(0, "--max-waiting", min=0, metavar="N",
                                    help="Requests that may wait beyond those being scored before the answer is 503 "
                                         "with Retry-After (0 = FACESCORE_API_MAX_WAITING, else 4 per scoring slot)."),
    log_level: LogLevel = LOG_LEVEL,
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

    from .. import queue
    from ..api import create_app

    settings = settings_or_exit()
    choice = via_choice(settings, via)
    err.print(f"[dim]via {choice}: "
              + ("scoring in this machine's processes" if choice == "local" else
                 queue.describe(settings)
                 + (", local when no worker is alive" if choice == "auto" else "")) + "[/dim]", highlight=False)
    app = create_app(settings, choice, timeout, processes=jobs, max_waiting=max_waiting or None)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level.value,
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
