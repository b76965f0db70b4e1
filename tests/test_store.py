"""The face store: ids, ranks, similar, forget, and how scoring behaves when the store is
locked or unreachable. Real images throughout; commands go through the CLI runner."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facescore_cli import images
from facescore_cli.cli import app
from facescore_cli.config import Settings
from facescore_cli.ml.detect import detect
from facescore_cli.ml.embed import embed
from facescore_cli.result import FaceResult, ImageResult
from facescore_cli.health import check_qdrant
from facescore_cli.store import (FaceStore, StoreLocked, collection_name, embedded_path, legacy_path, percentile,
                                 point_id, points_of, remember_all, similarity)

from conftest import EXAMPLES, dies_with_pytest, free_port

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


def test_a_shard_opened_elsewhere_is_reported_as_locked(clean_env: Path, embedded_faces: list) -> None:
    """The engine's own lock (on each shard's log) is StoreLocked too, whoever took it."""
    import qdrant_edge

    with FaceStore.open(Settings.load()) as store:
        store.remember(result_of(embedded_faces[0], [50.0]))
    shard = qdrant_edge.EdgeShard.load(str(embedded_path(Settings.load()) / collection_name("test-head 1")))
    try:
        with FaceStore.open(Settings.load()) as store:
            with pytest.raises(StoreLocked, match="QDRANT_URL"):
                store.count()
    finally:
        shard.close()
    assert stored() == 1


def _legacy_store(home: Path, embedded_faces: list) -> dict[str, dict]:
    """A store as facescore wrote it before the embedded engine: qdrant-client's local mode in
    FACESCORE_HOME/qdrant, a collection per model version. Returns id -> (collection, vector, payload)."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(home / "qdrant"))
    written: dict[str, dict] = {}
    try:
        for model, items in (("old-head 1", embedded_faces), ("old-head 2", embedded_faces[:2])):
            name = collection_name(model)
            client.create_collection(name, vectors_config=models.VectorParams(size=len(items[0][1][0]),
                                                                              distance=models.Distance.COSINE))
            for k, item in enumerate(items):
                result = result_of(item, [10.0 * (k + 1) + 0.5 * i for i in range(len(item[2]))], model=model,
                                   path=f"old/{k}.jpg")
                points = points_of(result, now="2025-06-01T12:00:00+00:00")
                for p in points:
                    del p.payload["score_tenths"]  # the old payload had no such field
                    written[p.id] = {"collection": name, "vector": p.vector, "payload": p.payload}
                client.upsert(name, points=[models.PointStruct(id=p.id, vector=p.vector, payload=p.payload)
                                            for p in points], wait=True)
        client.create_collection("not_ours", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    finally:
        client.close()
    return written


def test_an_old_store_is_carried_over_once_with_nothing_lost(clean_env: Path, embedded_faces: list) -> None:
    import qdrant_edge

    written = _legacy_store(clean_env, embedded_faces)
    assert len(written) == 10 + 2  # five one-face images and the five-face group, then two images again
    settings = Settings.load()
    assert "carried over on first use" in check_qdrant(settings).detail
    with FaceStore.open(settings) as store:
        assert store.collections() == [collection_name("old-head 1"), collection_name("old-head 2")]
        assert store.count("old-head 1") == 10 and store.count("old-head 2") == 2
        # ranks and search work on what came over: the group's first face scored 60.0 among
        # 10, 20, 30, 40, 50 and the group's 60.5, 61, 61.5, 62
        assert store.rank("old-head 1", 60.0) == 55.6
        top = store.similar(embedded_faces[2][1][0], "old-head 1", limit=1)[0]
        assert top.path == "old/2.jpg" and top.similarity > 0.999 and top.stored_at == "2025-06-01T12:00:00+00:00"
    assert not legacy_path(settings).exists() and (clean_env / "qdrant.migrated").is_dir()

    # Every point, payload and vector, read back through the engine itself.
    for name in {w["collection"] for w in written.values()}:
        shard = qdrant_edge.EdgeShard.load(str(embedded_path(settings) / name))
        try:
            mine = {i: w for i, w in written.items() if w["collection"] == name}
            records = shard.retrieve(list(mine), with_payload=True, with_vector=True)
        finally:
            shard.close()
        assert len(records) == len(mine)
        for r in records:
            want = mine[str(r.id)]
            assert r.payload == {**want["payload"], "score_tenths": round(want["payload"]["score"] * 10)}
            v = np.asarray(want["vector"])
            assert np.allclose(r.vector, v / np.linalg.norm(v), atol=1e-6)  # cosine shards keep unit vectors

    with FaceStore.open(settings) as store:  # not carried over twice
        assert store.count() == 12
    assert "carried over" not in check_qdrant(settings).detail
    assert "12 faces of 2 model versions" in check_qdrant(settings).detail


def test_carrying_an_old_store_over_is_said_on_the_command_line(clean_env: Path, embedded_faces: list,
                                                                portrait: Path) -> None:
    """The copy takes seconds at 100k faces, once: the command says so before and after."""
    _legacy_store(clean_env, embedded_faces)
    res = run("score", str(portrait))
    assert res.exit_code == 0
    said = " ".join(res.stderr.split())
    assert f"carrying 12 stored faces over from the store of an older facescore in {clean_env / 'qdrant'}" in said
    assert f"carried 12 faces over into {embedded_path(Settings.load())}; {clean_env / 'qdrant.migrated'} can be deleted" in said
    assert "carrying" not in run("score", str(portrait)).stderr  # once
    assert stored() == 12 + 1


def test_an_old_store_in_use_is_left_alone_and_said(clean_env: Path, embedded_faces: list) -> None:
    from qdrant_client import QdrantClient

    _legacy_store(clean_env, embedded_faces[:1])
    old = QdrantClient(path=str(clean_env / "qdrant"))  # an older facescore, still running
    try:
        with pytest.raises(StoreLocked, match="old face store"):
            FaceStore.open(Settings.load())
    finally:
        old.close()
    assert (clean_env / "qdrant").is_dir()
    with FaceStore.open(Settings.load()) as store:
        assert store.count() == 2


# A writer that reports each image once `remember` returned (its faces are in the store), forever.
WRITER = textwrap.dedent("""
    import sys, uuid
    import numpy as np
    from facescore_cli.config import Settings
    from facescore_cli.ml.types import Face
    from facescore_cli.result import FaceResult, ImageResult
    from facescore_cli.store import FaceStore

    rng = np.random.default_rng(int(sys.argv[1]))
    face = Face(box=(10, 10, 100, 100), confidence=0.99, landmarks=((0.0, 0.0),) * 5)
    with FaceStore.open(Settings.load()) as store:
        while True:
            vec = rng.normal(size=(2, 128))
            r = ImageResult(path="x.jpg", source="local", model="kill-test", sha256=uuid.uuid4().hex * 2,
                            faces=[FaceResult(face=face, score=float(round(rng.uniform(0, 100), 1)), vibe="calm",
                                              rank=50.0) for _ in range(2)],
                            embeddings=vec.tolist())
            store.remember(r)
            print(r.sha256, r.faces[0].store_rank, flush=True)
""")


def test_sigkill_while_writing_never_loses_a_face_reported_stored(clean_env: Path) -> None:
    reported: list[str] = []
    for round_, stop_after in enumerate((700, 1300)):  # 1400 and 2600 faces: past a flush (every 1000)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(round_)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                                preexec_fn=dies_with_pytest())
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                reported.append(line.split()[0])
                if len(reported) >= sum((700, 1300)[:round_ + 1]):
                    proc.send_signal(signal.SIGKILL)  # while it goes on writing
                    break
            # What it reported before dying but we had not read yet (on a loaded machine the pipe
            # holds hundreds of lines): those images are in the store as well.
            reported += [line.split()[0] for line in proc.stdout]
        finally:
            proc.kill()
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
    with FaceStore.open(Settings.load()) as store:
        stored_faces = store.count("kill-test")
        assert stored_faces >= 2 * len(reported)  # at most the one it was writing when killed is extra
        assert stored_faces <= 2 * len(reported) + 4
        removed = store.forget(reported)
    assert set(removed.values()) == {2}  # every image reported stored was there, both faces


def test_health_tells_what_the_embedded_store_holds(clean_env: Path, embedded_faces: list) -> None:
    settings = Settings.load()
    assert "created on first use" in check_qdrant(settings).detail
    with FaceStore.open(settings) as store:
        store.remember(result_of(embedded_faces[5], [40.0, 60.0]))
        store.remember(result_of(embedded_faces[0], [50.0], model="test-head 2"))
        row = check_qdrant(settings)
        assert row.status == "locked" and "QDRANT_URL" in row.detail
    row = check_qdrant(settings)
    assert row.status == "ok" and "3 faces of 2 model versions" in row.detail


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


def test_score_stores_without_importing_qdrant_client(clean_env: Path, portrait: Path) -> None:
    """qdrant-client (~1 s of imports) is for QDRANT_URL and the one-off carry-over only."""
    code = ("import sys; from typer.testing import CliRunner; from facescore_cli.cli import app; "
            f"r = CliRunner().invoke(app, ['score', {str(portrait)!r}, '--json']); "
            "print(r.exit_code, 'qdrant_client' in sys.modules, 'qdrant_edge' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.stdout.split() == ["0", "False", "True"], proc.stdout + proc.stderr
    assert stored() == 1


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
    res = run("forget", "--all", "--yes", "--json")
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


HOLDER = textwrap.dedent("""
    import sys, time
    from facescore_cli.config import Settings
    from facescore_cli.store import FaceStore

    with FaceStore.open(Settings.load()):
        print("held", flush=True)
        time.sleep(float(sys.argv[1]))
    print("released", flush=True)
""")


def hold_store(tmp_path: Path, seconds: float) -> subprocess.Popen:
    """Another process (holder.py) holding the embedded store of FACESCORE_HOME for `seconds`,
    as `health`, `similar` or `forget` do briefly and a worker does for its life."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(seconds)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=dies_with_pytest())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_short_holder_is_waited_for(clean_env: Path, portrait: Path) -> None:
    """`score` started while another command holds the store briefly (here 2 s) waits for it and
    stores, instead of skipping the store with a warning; so does the library's open."""
    holder = hold_store(clean_env.parent, 2.0)
    try:
        proc = subprocess.run([sys.executable, "-m", "facescore_cli", "score", str(portrait), "--json"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr, proc.stderr
        assert json.loads(proc.stdout)[0]["faces"][0]["score"] is not None
        assert holder.wait(30) == 0 and holder.stdout.read().strip() == "released"
    finally:
        holder.kill()
    assert stored() == 1  # the face went in (alone there, it has no store_rank)

    holder = hold_store(clean_env.parent, 0.5)
    try:
        with FaceStore.open(Settings.load()) as store:  # waited: the holder let go first
            assert holder.wait(30) == 0 and holder.stdout.read().strip() == "released"
            assert store.count() == 1
    finally:
        holder.kill()


def test_a_long_holder_is_named_at_once(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder that has kept the store past LONG_HOLD_S (a worker, a server) is not waited
    for; the error and `health` name its pid and command."""
    import facescore_cli.store as store_module

    monkeypatch.setattr(store_module, "LONG_HOLD_S", 0.2)
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", 60.0)
    holder = hold_store(clean_env.parent, 120.0)
    try:
        import time

        time.sleep(0.3)
        start = time.monotonic()
        with pytest.raises(StoreLocked) as caught:
            FaceStore.open(Settings.load())
        assert time.monotonic() - start < 10  # not the 60 s it would wait for a short holder
        message = str(caught.value)
        assert f"pid {holder.pid}, `holder.py 120.0`" in message and "QDRANT_URL" in message
        assert caught.value.holder and f"pid {holder.pid}" in caught.value.holder
        row = check_qdrant(Settings.load())
        assert row.status == "locked" and f"pid {holder.pid}" in row.detail
    finally:
        holder.kill()
        holder.wait(10)
    with FaceStore.open(Settings.load()) as store:  # a killed holder's lock goes with it
        assert store.count() == 0


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
    assert run("forget", "--all", "--yes").exit_code == 1
