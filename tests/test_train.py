"""`facescore train` / `evaluate` on real OMI faces, through Typer's CliRunner."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facescore_cli import training as T
from facescore_cli.cli import app
from facescore_cli.ml.head import DEFAULT_PATH, VECTOR_DIM, load_head

OMI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "omi"
N_TRAIN = 40
N_EVAL = 20

pytestmark = pytest.mark.skipif(
    not (OMI / "ratings.csv").exists(), reason=f"OMI dataset not found at {OMI} (see shared/datasets/omi/README.md)"
)
runner = CliRunner()


def _rows() -> list[dict]:
    with open(OMI / "ratings.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SCUT-style two-column whitespace list (no header) of N_TRAIN faces, and a CSV with a
    header of the next N_EVAL faces."""
    d = tmp_path_factory.mktemp("train")
    rows = _rows()
    train = d / "train.txt"
    train.write_text("".join(f"{r['stimulus']}.jpg  {r['attractive']}\n" for r in rows[:N_TRAIN]))
    held = d / "held.csv"
    with held.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stimulus", "attractive", "gender"])
        for r in rows[N_TRAIN:N_TRAIN + N_EVAL]:
            w.writerow([r["stimulus"], r["attractive"], r["gender"]])
    return {"dir": d, "train": train, "held": held, "head": d / "mine.npz"}


@pytest.fixture(scope="module")
def trained(files: dict[str, Path]) -> dict:
    res = runner.invoke(app, ["train", str(OMI / "images"), str(files["train"]), "--target", "attractive",
                              "--out", str(files["head"]), "--id-column", "filename", "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_read_ratings_formats(tmp_path: Path) -> None:
    ws = tmp_path / "a.txt"
    ws.write_text("1.jpg 3.5\n2.jpg\t4\n")
    r = T.read_ratings(ws, "score")
    assert r.ids == ["1.jpg", "2.jpg"] and r.values.tolist() == [3.5, 4.0]
    hdr = tmp_path / "b.txt"
    hdr.write_text("filename score\nx.png 1\n")
    assert T.read_ratings(hdr, "score").ids == ["x.png"]
    with pytest.raises(T.UsageError):
        T.read_ratings(hdr, "attractive")


def test_train_reports_cross_validated_r(trained: dict, files: dict[str, Path]) -> None:
    assert trained["n"] == N_TRAIN and trained["folds"] == 5
    # 40 faces: well below the 800-face head, but clearly learning (0.72 when written).
    assert 0.45 < trained["cv_r"] < 0.95
    lo, hi = trained["cv_r_ci95"]
    assert lo < trained["cv_r"] < hi
    with np.load(files["head"]) as data:
        assert [str(t) for t in data["outputs"]] == ["attractive"]
        # one row a face (vectors are mirror-averaged): the vector and the 6 landmark proportions
        assert data["krr_support"].shape == (N_TRAIN, VECTOR_DIM + 6)


def test_evaluate_held_out_faces(trained: dict, files: dict[str, Path]) -> None:
    res = runner.invoke(app, ["evaluate", str(OMI / "images"), str(files["held"]), "--target", "attractive",
                              "--head", str(files["head"]), "--group-column", "gender", "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == N_EVAL and out["r"] > 0.3 and 0 < out["mae"] < 20
    assert out["r_ci95"][0] < out["r"] < out["r_ci95"][1]
    assert [g["tercile"] for g in out["groups"]] == ["low", "mid", "high"]
    assert sum(g["n"] for g in out["groups"]) == N_EVAL
    assert "stimulus" not in res.stdout and str(_rows()[N_TRAIN]["gender"]) not in res.stdout  # nothing per face


def test_evaluate_matches_runtime_head(files: dict[str, Path]) -> None:
    """evaluate's batched scorer computes what Head.raw does (on the bundled head)."""
    ds = T.build(OMI / "images", T.read_ratings(files["held"], "attractive"))
    ours = T.score(T.load_arrays(DEFAULT_PATH), ds.x[:5])
    head = load_head(DEFAULT_PATH)
    theirs = np.clip(np.stack([head._row(r) for r in (ds.x[:5] - head._mean) / head._scale])[:, 0], 0, 100)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_trained_head_scores_through_facescore_head(trained: dict, files: dict[str, Path], clean_env: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_head(files["head"]).outputs == ("attractive",)
    monkeypatch.setenv("FACESCORE_HEAD", str(files["head"]))
    img = OMI / "images" / f"{_rows()[N_TRAIN]['stimulus']}.jpg"
    res = runner.invoke(app, ["score", str(img), "--json", "--via", "local", "--no-store"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["source"] == "local" and r["model"].startswith(T.VERSION_PREFIX)
    ds = T.build(OMI / "images", T.Ratings([img.name], np.array([0.0]), None))
    assert r["score"] == pytest.approx(float(T.score(T.load_arrays(files["head"]), ds.x)[0]), abs=0.05)


@pytest.mark.parametrize("target", ["gender", "skin-color", "Black", "looks-like-you"])
def test_forbidden_target_exits_2(files: dict[str, Path], target: str) -> None:
    for cmd in (["train", str(OMI / "images"), str(files["train"]), "--target", target, "--out", str(files["dir"] / "x.npz")],
                ["evaluate", str(OMI / "images"), str(files["held"]), "--target", target]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, res.output
    assert not (files["dir"] / "x.npz").exists()
