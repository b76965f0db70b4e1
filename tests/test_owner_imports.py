"""The owner of a scoring pool never decodes a pixel: a local `batch --jobs 2` must not import
numpy, Pillow or the models' code in the process that hands out the paths, since that CPU is
taken from the scoring processes loading their models on the same cores (facescore_cli/formats.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

CODE = """
    import json, sys
    sys.argv = ["facescore", "batch", {folder!r}, "--out", {out!r}, "--via", "local", "--jobs", "2", "-q"]
    from facescore_cli import cli
    try:
        cli.app(prog_name="facescore")
    except SystemExit as exc:
        code = exc.code
    heavy = ("numpy", "PIL", "onnxruntime", "dlib", "facescore_cli.images", "facescore_cli.scoring")
    print(json.dumps({{"code": code, "loaded": [m for m in heavy if m in sys.modules]}}))
"""


def test_a_pool_owner_imports_no_numpy_pillow_or_models(tmp_path: Path, omi_dir: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        shutil.copy(omi_dir / "images" / name, folder / name)
    (folder / "notes.txt").write_text("not an image")  # skipped by suffix, without Pillow
    out = tmp_path / "out.csv"
    env = {**os.environ, "FACESCORE_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(CODE.format(folder=str(folder), out=str(out)))],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert report == {"code": 0, "loaded": []}
    rows = out.read_text().splitlines()
    assert len(rows) == 4 and all(",local," in r for r in rows[1:])  # three images scored, by the pool
