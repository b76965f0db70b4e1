"""evaluate warns when it is asked to score the bundled head on its own training faces (issue 15.8)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from facescore_cli.cli import app


def _subset(omi_dir: Path, tmp_path: Path, recompress: bool) -> tuple[Path, Path]:
    images = tmp_path / ("re" if recompress else "same")
    images.mkdir()
    with (omi_dir / "ratings.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh)][:6]
    for r in rows:
        src = omi_dir / "images" / f"{r['stimulus']}.jpg"
        if recompress:  # other bytes: not the training files any more
            Image.open(src).resize((640, 640)).save(images / src.name, quality=90)
        else:
            shutil.copy(src, images / src.name)
    ratings = tmp_path / "ratings.csv"
    with ratings.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stimulus", "attractive"])
        w.writerows([r["stimulus"], r["attractive"]] for r in rows)
    return images, ratings


def test_evaluate_warns_on_the_heads_training_faces(clean_env: Path, omi_dir: Path, tmp_path: Path) -> None:
    images, ratings = _subset(omi_dir, tmp_path, recompress=False)
    res = CliRunner().invoke(app, ["evaluate", str(images), str(ratings), "--target", "attractive"])
    assert res.exit_code == 0, res.output
    assert "6 of the 6 faces are the bundled head's own training images" in res.stderr
    other, ratings = _subset(omi_dir, tmp_path / "b", recompress=True) if (tmp_path / "b").mkdir() is None else None
    res = CliRunner().invoke(app, ["evaluate", str(other), str(ratings), "--target", "attractive"])
    assert res.exit_code == 0 and "training images" not in res.stderr
