"""`facescore train` and `facescore evaluate`: a scoring head from your own rated faces, and its
accuracy on labelled faces. Parse, call facescore_cli.training, print."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from typing import TYPE_CHECKING

import typer

from ..console import err, fail, out, settings_or_exit, warn

if TYPE_CHECKING:
    from .. import training as T

ID_HELP = "Column naming the image: stimulus (OMI: images/<stimulus>.jpg) or filename. Default: stimulus or filename if present, else the first column."


def _dataset(images_dir: Path, ratings_csv: Path, target: str, id_column: Optional[str],
             group_column: Optional[str] = None) -> T.Dataset:
    from .. import training as T

    if not images_dir.is_dir():
        fail(f"{images_dir} is not a folder")
    if not ratings_csv.is_file():
        fail(f"{ratings_csv} not found")
    try:
        ratings = T.read_ratings(ratings_csv, target, id_column, group_column)
    except T.UsageError as exc:
        fail(str(exc))
    with err.status(f"extracting faces from {len(ratings.ids)} images") as status:
        ds = T.build(images_dir, ratings, lambda k, n: status.update(f"extracting faces: {k}/{n}"))
    if ds.missing:
        warn(f"{len(ds.missing)} rated images not found in {images_dir} (first: {ds.missing[0]})")
    if ds.no_face:
        warn(f"no face found in {len(ds.no_face)} images; left out")
    return ds


def train(
    images_dir: Path = typer.Argument(..., help="Folder of face images.", show_default=False),
    ratings_csv: Path = typer.Argument(..., help="Ratings: CSV with a header, or whitespace-separated 'id value' lines.",
                                       show_default=False),
    target: str = typer.Option(..., "--target", help="The rating column to learn; the head reports it as score."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Head file to write (.npz)."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=ID_HELP, show_default=False),
    folds: int = typer.Option(5, "--folds", help="Outer cross-validation folds for the reported r."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Train a scoring head on your own rated faces; print its cross-validated Pearson r.

    The head is the shipped kind (ridge + RBF kernel ridge on the runtime face vector and landmark
    geometry, hyper-parameters chosen by inner CV). It outputs the chosen column as score and no
    traits. Use it with FACESCORE_HEAD=head.npz. Protected attributes are refused (exit 2).

    [bold]Examples[/bold]

      facescore train SCUT-FBP5500/Images train.txt --target score --id-column filename --out scut.npz

      facescore train omi/images omi/ratings.csv --target attractive --out omi-mine.npz
    """
    from .. import training as T

    try:
        T.check_target(target)
    except T.UsageError as exc:
        fail(str(exc))
    if folds < 2:
        fail("--folds must be at least 2")
    ds = _dataset(images_dir, ratings_csv, target, id_column)
    try:
        with err.status(f"training on {len(ds.y)} faces ({folds}-fold nested CV)"):
            res = T.train(ds, target, folds)
    except T.UsageError as exc:
        fail(str(exc))
    T.save(res.arrays, out_path)
    figures = {"target": target, "n": len(ds.y), "folds": folds, "cv_r": round(res.r, 4),
               "cv_r_ci95": [round(v, 4) for v in res.ci], "cv_mae": round(res.mae, 3), "out": str(out_path)}
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
    else:
        typer.echo(f"{len(ds.y)} faces, target {target!r}: {folds}-fold nested cross-validated Pearson r = "
                   f"{res.r:.3f} (95% CI {res.ci[0]:.3f} to {res.ci[1]:.3f}), MAE {res.mae:.2f}")
        typer.echo(f"wrote {out_path}; use it with FACESCORE_HEAD={out_path}")


def evaluate(
    images_dir: Path = typer.Argument(..., help="Folder of labelled face images.", show_default=False),
    ratings_csv: Path = typer.Argument(..., help="Ratings file, as for train.", show_default=False),
    target: str = typer.Option(..., "--target", help="The rating column the head's score is compared with."),
    head_path: Optional[Path] = typer.Option(None, "--head", help="Head file (default: FACESCORE_HEAD, else the bundled head).",
                                             show_default=False),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=ID_HELP, show_default=False),
    group_column: Optional[str] = typer.Option(None, "--group-column",
                                               help="Numeric column; figures per tercile of it (never per image).",
                                               show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Score labelled faces with a head: n, Pearson r (bootstrap 95% CI) and MAE.

    [bold]Examples[/bold]

      facescore evaluate omi/images omi/ratings.csv --target attractive

      facescore evaluate SCUT/Images test.txt --target score --head scut.npz --json
    """
    from .. import training as T

    try:
        T.check_target(target)
    except T.UsageError as exc:
        fail(str(exc))
    path = Path(head_path or settings_or_exit().head_path or T.H.DEFAULT_PATH)
    if not path.is_file():
        fail(f"head file {path} not found")
    try:
        arrays = T.load_arrays(path)
    except (T.UsageError, ValueError, KeyError, OSError) as exc:
        fail(f"cannot read head {path}: {exc}")
    ds = _dataset(images_dir, ratings_csv, target, id_column, group_column)
    if len(ds.y) < 3:
        fail(f"only {len(ds.y)} usable faces: need at least 3")
    res = T.evaluate(arrays, ds)
    seen = training_overlap(arrays, images_dir, ds.ids)
    if seen:
        res["training_overlap"] = seen
        warn(f"{seen} of the {len(ds.ids)} faces are the bundled head's own training images (OMI): r on them "
             f"is optimistic. The honest figure is its cross-validated r (about 0.85, MODEL_CARD.md), or "
             f"evaluate on faces it never saw")
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"head {res['head']} vs {target!r}: n = {res['n']}, Pearson r = {res['r']:.3f} "
               f"(95% CI {res['r_ci95'][0]:.3f} to {res['r_ci95'][1]:.3f}), MAE = {res['mae']:.2f}")
    if "groups" in res:
        from rich.table import Table

        table = Table("tercile of " + group_column, "range", "n", "mean signed error", "MAE", "r")
        for g in res["groups"]:
            fmt = lambda v, f: "" if v is None else format(v, f)
            rng = "" if g["range"] is None else f"{g['range'][0]:g}-{g['range'][1]:g}"
            table.add_row(g["tercile"], rng, str(g["n"]), fmt(g["mean_signed_error"], "+.2f"), fmt(g["mae"], ".2f"),
                          fmt(g["r"], ".3f"))
        out.print(table)


def training_overlap(arrays: dict, images_dir: Path, ids: list[str]) -> int:
    """How many of these images the bundled OMI head was trained on (by SHA-256; 0 for other heads)."""
    from .. import images, training as T
    from ._omi_training import SHA256_PREFIXES

    if not str(arrays.get("version", "")).startswith("omi-"):
        return 0
    seen = 0
    for ident in ids:
        path = T.image_path(images_dir, ident)
        if path is not None and images.sha256(path.read_bytes())[:16] in SHA256_PREFIXES:
            seen += 1
    return seen


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
