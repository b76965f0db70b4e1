"""`facescore similar` and `facescore forget`: reading and pruning the face store."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .. import console
from ..console import err, fail, out, settings_or_exit

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import FaceStore

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def _open(settings: Settings) -> FaceStore:
    from ..store import FaceStore, StoreUnavailable

    try:
        return FaceStore.open(settings, note=console.note)
    except StoreUnavailable as exc:
        err.print(f"[red]store unavailable:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def similar(
    image: Path = typer.Argument(..., help="The image whose largest face to look for.", show_default=False,
                                 metavar="IMAGE"),
    limit: int = typer.Option(10, "--limit", "-k", min=1, max=1000, metavar="K", help="How many stored faces to show."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """The stored faces most like the largest face in IMAGE, most similar first.

    IMAGE is scored with the real models (never stored by this command); the search covers the
    faces stored by the same model version. similarity is the cosine similarity of the face
    embeddings clipped to 0-1: ~1.0 is the same photo, different people are mostly 0.80-0.93.

    [bold]Examples[/bold]

      facescore similar examples/faces/omi-46.jpg

      facescore similar me.jpg --limit 3 --json
    """
    from rich.table import Table

    from ..scoring import Scorer
    from ..store import StoreUnavailable, describe, storable

    settings = settings_or_exit()
    if not image.is_file():
        fail(f"no such file: {image}" if not image.exists() else f"{image} is a folder; give one image")
    result = Scorer.from_settings(settings).score_file(image, str(image))
    if result.failed:
        err.print(f"[red]{escape(str(image))}:[/red] {escape(result.error or 'could not be scored')}")
        raise typer.Exit(1)
    if not result.faces:
        err.print(f"[red]{escape(str(image))}:[/red] no face found, nothing to search for")
        raise typer.Exit(1)
    if not storable(result):
        err.print(f"[red]{escape(str(image))}:[/red] only the {result.source} model could score it; "
                  f"searching needs a real embedding (check `facescore health`)")
        raise typer.Exit(1)
    assert result.embeddings is not None and result.model
    largest = max(range(len(result.faces)), key=lambda i: result.faces[i].face.area)
    with _open(settings) as store:
        try:
            matches = store.similar(result.embeddings[largest], result.model, limit)
        except StoreUnavailable as exc:
            err.print(f"[red]store unavailable:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([m.to_json() for m in matches], indent=2))
        return
    if not matches:
        err.print(f"no stored faces for model {escape(result.model)} in {escape(describe(settings))}")
    table = Table(title=f"faces like {escape(str(image))} (face {largest}, score {result.faces[largest].score:.1f})")
    for name, justify in (("#", "right"), ("file", "left"), ("face", "right"), ("similarity", "right"),
                          ("score", "right"), ("vibe", "left"), ("stored", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for i, m in enumerate(matches, 1):
        table.add_row(str(i), escape(m.path), str(m.face), f"{m.similarity:.3f}", f"{m.score:.1f}",
                      escape(m.vibe), m.stored_at)
    out.print(table)


def forget(
    targets: list[str] = typer.Argument(None, help="Image files (or their SHA-256 in hex).", show_default=False,
                                        metavar="IMAGE..."),
    everything: bool = typer.Option(False, "--all", help="Delete every stored face, of every model version."),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --all: do not ask (needed when stdin is not a terminal)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Delete the stored faces of these images (found by the SHA-256 of their bytes), or --all.

    --json prints a list of {path, sha256, removed} objects, or {"all": true, "removed": N}.

    [bold]Examples[/bold]

      facescore forget examples/faces/omi-46.jpg

      facescore forget --all --yes
    """
    from .. import images
    from ..store import StoreUnavailable, describe

    targets = targets or []
    if everything == bool(targets):
        fail("give image files to forget, or --all (not both)")
    settings = settings_or_exit()
    if everything and not yes:
        if not console.is_terminal(sys.stdin):
            fail("forget --all deletes every stored face: add --yes to confirm (stdin is not a terminal)")
        if not typer.confirm(f"Delete every stored face in {describe(settings)}?", default=False, err=True):
            fail("nothing deleted")
    if everything:
        with _open(settings) as store:
            try:
                removed = store.forget_all()
            except StoreUnavailable as exc:
                err.print(f"[red]store unavailable:[/red] {escape(str(exc))}")
                raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps({"all": True, "removed": removed}))
        else:
            out.print(f"removed {removed} stored face{'s' if removed != 1 else ''}")
        return

    rows: list[dict] = []
    for target in targets:
        path = Path(target)
        if path.is_file():
            try:
                rows.append({"path": target, "sha256": images.sha256(path.read_bytes()), "removed": 0})
            except OSError as exc:
                rows.append({"path": target, "sha256": None, "removed": 0, "error": exc.strerror or str(exc)})
        elif _HEX64.match(target):
            rows.append({"path": target, "sha256": target.lower(), "removed": 0})
        else:
            rows.append({"path": target, "sha256": None, "removed": 0, "error": "no such file"})
    hashes = [r["sha256"] for r in rows if r["sha256"]]
    if hashes:
        with _open(settings) as store:
            try:
                removed = store.forget(hashes)
            except StoreUnavailable as exc:
                err.print(f"[red]store unavailable:[/red] {escape(str(exc))}")
                raise typer.Exit(1) from None
        counted: set[str] = set()
        for r in rows:  # the same image given twice is removed once
            if r["sha256"] and r["sha256"] not in counted:
                r["removed"] = removed.get(r["sha256"], 0)
                counted.add(r["sha256"])
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        from rich.table import Table

        table = Table(title="forgotten")
        for name, justify in (("file", "left"), ("sha256", "left"), ("faces removed", "right"), ("error", "left")):
            table.add_column(name, justify=justify, overflow="fold")
        for r in rows:
            table.add_row(escape(r["path"]), (r["sha256"] or "")[:12], str(r["removed"]),
                          f"[red]{escape(r['error'])}[/red]" if r.get("error") else "")
        out.print(table)
    raise typer.Exit(1 if any(r.get("error") for r in rows) else 0)


def register(app: typer.Typer) -> None:
    app.command()(similar)
    app.command()(forget)
