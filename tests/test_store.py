"""The face store: ids, ranks, similar, forget, and how scoring behaves when the store is
locked or unreachable. Real images throughout; commands go through the CLI runner."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facescore_cli import images
from facescore_cli.cli import app
from facescore_cli.config import Settings
from facescore_cli.ml.detect import detect
from facescore_cli.ml.embed import embed
from facescore_cli.result import FaceResult, ImageResult
from facescore_cli.store import (FaceStore, StoreLocked, collection_name, percentile, point_id, remember_all,
                                 similarity)

from conftest import EXAMPLES, free_port

FACES = sorted((EXAMPLES / "faces").glob("*.jpg"))


@pytest.fixture()
def clean_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conftest's clean_env, scoring in this process whatever Redis the machine runs."""
    monkeypatch.setenv("FACESCORE_VIA", "local")
    return clean_env


@pytest.fixture(scope="module")
def embedded_faces() -> list[tuple[str, list[list[float]], list]]:
    """(sha256, vectors, faces) of each example image, from the real detector and embedding."""
    out = []
    for path in FACES + [EXAMPLES / "group.jpg"]:
        data = path.read_bytes()
        image = images.decode(data)
        faces = detect(image)
        out.append((images.sha256(data), embed(image, faces).tolist(), faces))
    return out


def result_of(item: tuple, scores: list[float], model: str = "test-head 1", path: str = "x.jpg") -> ImageResult:
    digest, vectors, faces = item
    return ImageResult(path=path, faces=[FaceResult(face=f, score=s, vibe="calm", rank=50.0)
                                         for f, s in zip(faces, scores)],
                       source="local", model=model, sha256=digest, embeddings=vectors[:len(scores)])


def stored(model: str | None = None) -> int:
    with FaceStore.open(Settings.load()) as store:
        return store.count(model)


def run(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output + result.stderr, result.output + result.stderr
    return result


# -- the store as a library ------------------------------------------------------------------


def test_ids_are_stable_and_models_never_share_a_collection() -> None:
    a = point_id("ab" * 32, 0, "head 1.0")
    assert a == point_id("ab" * 32, 0, "head 1.0")
    assert len({a, point_id("ab" * 32, 1, "head 1.0"), point_id("ab" * 32, 0, "head 1.1"),
                point_id("cd" * 32, 0, "head 1.0")}) == 4
    assert collection_name("omi-ridge v1.2/x") == "faces_omi-ridge_v1_2_x"
    assert collection_name("1.0") != collection_name("1.1")


def test_similarity_and_percentile_scales() -> None:
    assert similarity(1.0000001) == 1.0 and similarity(-0.3) == 0.0 and similarity(0.87) == 0.87
    assert percentile(0, 0, 0) is None
    assert percentile(3, 0, 4) == 75.0 and percentile(1, 2, 4) == 50.0 and percentile(0, 0, 5) == 0.0


def test_ranks_are_percentiles_that_move_the_right_way(clean_env: Path, embedded_faces: list) -> None:
    target = result_of(embedded_faces[0], [50.0], path="target.jpg")
    group = embedded_faces[5]  # five real faces, scored as we choose
    with FaceStore.open(Settings.load()) as store:
        assert store.remember(target) and target.faces[0].store_rank is None  # alone: no population
        store.remember(result_of(group, [40.0, 60.0], path="a.jpg"))
        store.remember(target)
        assert target.faces[0].store_rank == 50.0  # one lower, one higher
        store.remember(result_of(group, [40.0, 60.0, 70.0, 80.0], path="a.jpg"))  # two better faces
        store.remember(target)
        assert target.faces[0].store_rank == 25.0
        for item in embedded_faces[1:5]:  # four worse faces
            store.remember(result_of(item, [10.0]))
        store.remember(target)
        assert target.faces[0].store_rank == 62.5  # (1 + 4) of 8 below
        store.remember(result_of(embedded_faces[1], [50.0]))  # re-scored: 10 becomes a tie, counted half
        store.remember(target)
        assert target.faces[0].store_rank == 56.2  # (1 + 3 + 0.5) of 8
        assert store.count("test-head 1") == 9  # re-remembering replaced, never added
        kept = [store.counts("test-head 1", s) for s in SCORES]  # the histogram kept up by hand
    population = [50.0, 40.0, 60.0, 70.0, 80.0, 50.0, 10.0, 10.0, 10.0]
    with FaceStore.open(Settings.load()) as store:  # a new run reads the same ranks from disk
        assert store.rank("test-head 1", 50.0) == 56.2
        loaded = [store.counts("test-head 1", s) for s in SCORES]
    assert kept == loaded == [(9, sum(x < s for x in population), sum(x == s for x in population)) for s in SCORES]


SCORES = (0.0, 10.0, 39.9, 40.0, 50.0, 65.0, 80.0, 99.0)


def test_one_writer_per_embedded_store(clean_env: Path, embedded_faces: list) -> None:
    settings = Settings.load()
    warnings: list[str] = []
    r = result_of(embedded_faces[0], [50.0])
    with FaceStore.open(settings):
        with pytest.raises(StoreLocked, match="QDRANT_URL"):
            FaceStore.open(settings)
        out = list(remember_all([r, result_of(embedded_faces[1], [40.0])], settings, warnings.append))
    assert len(out) == 2 and len(warnings) == 1 and "QDRANT_URL" in warnings[0]
    assert stored() == 0


# -- through the CLI ------------------------------------------------------------------------


def test_rescoring_is_idempotent_and_batch_stores_in_the_parent(clean_env: Path, portrait: Path,
                                                                 group_photo: Path, tmp_path: Path) -> None:
    first = run("score", str(portrait), "--json")
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)[0]
    assert data["source"] == "local" and data["sha256"] == images.sha256(portrait.read_bytes())
    assert stored() == 1
    assert run("score", str(portrait)).exit_code == 0
    assert stored() == 1

    first, second = tmp_path / "1.csv", tmp_path / "2.csv"
    res = run("batch", str(EXAMPLES / "faces"), str(group_photo), "--out", str(first), "--jobs", "2")
    assert res.exit_code == 0, res.output
    assert stored() == len(FACES) + 5  # the portrait is one of FACES
    assert run("batch", str(EXAMPLES / "faces"), "--out", str(second), "--jobs", "1").exit_code == 0
    assert stored() == len(FACES) + 5

    # The second run found every other face stored: store_rank is the exact mid-rank percentile.
    everyone = {(r["path"], r["face"]): float(r["score"]) for r in csv.DictReader(first.open())}
    rows = list(csv.DictReader(second.open()))
    assert len(rows) == len(FACES) and len(everyone) == len(FACES) + 5
    for row in rows:
        s = float(row["score"])
        others = [v for k, v in everyone.items() if k != (row["path"], row["face"])]
        below, ties = sum(x < s for x in others), sum(x == s for x in others)
        assert float(row["store_rank"]) == percentile(below, ties, len(others))


def test_no_store_and_simulated_results_are_not_stored(clean_env: Path, portrait: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("score", str(portrait), "--no-store").exit_code == 0
    monkeypatch.setenv("USE_REAL_ML", "false")
    res = run("score", str(portrait), "--json")
    assert json.loads(res.stdout)[0]["source"] == "simulated"
    assert not (clean_env / "store").exists()  # nothing even opened the store
    monkeypatch.delenv("USE_REAL_ML")
    assert stored() == 0


def test_similar_finds_the_image_itself_first_and_forget_removes_it(clean_env: Path, tmp_path: Path) -> None:
    target = FACES[1]
    assert run("batch", str(EXAMPLES / "faces"), "--out", str(tmp_path / "r.jsonl"), "--jobs", "1").exit_code == 0
    res = run("similar", str(target), "--json", "--limit", "3")
    assert res.exit_code == 0, res.output
    matches = json.loads(res.stdout)
    assert len(matches) == 3
    assert matches[0]["path"].endswith(target.name) and matches[0]["face"] == 0
    assert matches[0]["similarity"] > 0.999
    assert all(0 <= m["similarity"] < 0.99 for m in matches[1:])  # other people
    assert [m["similarity"] for m in matches] == sorted((m["similarity"] for m in matches), reverse=True)
    assert all(isinstance(m["score"], float) for m in matches)
    table = run("similar", str(target))
    assert table.exit_code == 0 and target.name in table.stdout

    res = run("forget", str(target), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["removed"] == 1
    assert stored() == len(FACES) - 1
    top = json.loads(run("similar", str(target), "--json").stdout)[0]
    assert not top["path"].endswith(target.name) and top["similarity"] < 0.99

    assert run("forget", str(target), "--json").stdout.count('"removed": 0') == 1  # already gone
    assert run("forget", "missing.jpg").exit_code == 1
    assert run("forget").exit_code == 2
    res = run("forget", "--all", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == {"all": True, "removed": len(FACES) - 1}
    assert stored() == 0


def test_a_second_process_gets_a_clear_message_and_still_scores(clean_env: Path, portrait: Path) -> None:
    with FaceStore.open(Settings.load()):  # this process holds the embedded store
        proc = subprocess.run([sys.executable, "-m", "facescore_cli", "score", str(portrait), "--json"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["faces"][0]["score"] is not None
        assert "in use by another facescore process" in proc.stderr and "QDRANT_URL" in proc.stderr
        assert proc.stderr.count("warning:") == 1 and "Traceback" not in proc.stderr

        res = run("similar", str(portrait))
        assert res.exit_code == 1 and "QDRANT_URL" in " ".join(res.stderr.split())
    assert stored() == 0  # the locked-out run stored nothing, and said so


def test_an_unreachable_qdrant_server_does_not_stop_scoring(clean_env: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("QDRANT_URL", url)
    out = tmp_path / "r.csv"
    res = run("batch", str(EXAMPLES / "faces"), "--out", str(out), "--jobs", "1")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(FACES) and all(r["score"] and not r["store_rank"] for r in rows)
    assert res.stderr.count("warning:") == 1 and url in "".join(res.stderr.split())
    assert run("forget", "--all").exit_code == 1
