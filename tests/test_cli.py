"""score and batch through Typer's CliRunner, on real images, with the real local models."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from facescore_cli.cli import app
from facescore_cli.result import COLUMNS

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def score_json(*paths: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    res = invoke("score", *map(str, paths), "--json", "--via", "local", *extra)
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_one_face_table(clean_env: Path, portrait: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: no path folded across lines
    res = invoke("score", str(portrait), "--via", "local")
    assert res.exit_code == 0, res.output
    assert "omi-46" in res.stdout and "local" in res.stdout


def test_score_json_one_face(clean_env: Path, portrait: Path) -> None:
    [r] = score_json(portrait)
    assert r["source"] == "local" and len(r["faces"]) == 1
    assert 0 <= r["score"] <= 100 and 0 <= r["rank"] <= 100 and r["vibe"].isalpha()
    x, y, w, h = r["faces"][0]["box"]
    assert 100 < w < 400 and 0 < x < 256 and 0 < y < 256  # the face sits in the middle of 512 px


def test_score_several_faces_largest_first(clean_env: Path, group_photo: Path) -> None:
    [r] = score_json(group_photo)
    areas = [f["box"][2] * f["box"][3] for f in r["faces"]]
    assert len(r["faces"]) == 5
    assert areas == sorted(areas, reverse=True)
    assert r["score"] == r["faces"][0]["score"]


def test_no_face_is_a_result_not_an_error(clean_env: Path, tmp_path: Path) -> None:
    blank = tmp_path / "wall.png"
    Image.linear_gradient("L").resize((400, 300)).convert("RGB").save(blank)
    res = invoke("score", str(blank), "--json", "--via", "local")
    assert res.exit_code == 0
    [r] = json.loads(res.stdout)
    assert r["faces"] == [] and r["error"] == "no face found" and r["score"] is None


def test_same_image_twice_same_score(clean_env: Path, portrait: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jpg"
    shutil.copy(portrait, copy)
    a, b = score_json(portrait, copy)
    assert a["score"] == b["score"] and a["faces"][0]["traits"] == b["faces"][0]["traits"]


def test_exif_rotated_scores_like_upright(clean_env: Path, portrait: Path, tmp_path: Path) -> None:
    upright = Image.open(portrait)
    sideways = upright.rotate(90, expand=True)  # stored turned; EXIF 6 says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    sideways.save(rotated, quality=95, exif=exif)
    same = tmp_path / "same.jpg"
    upright.save(same, quality=95)
    a, b = score_json(same, rotated)
    assert abs(a["score"] - b["score"]) <= 1.0
    assert all(abs(p - q) <= 3 for p, q in zip(a["faces"][0]["box"], b["faces"][0]["box"]))


def test_half_size_copy_within_two_points(clean_env: Path, omi_dir: Path, tmp_path: Path) -> None:
    diffs = []
    for stim in ("1", "2", "3", "4", "5"):
        src = omi_dir / "images" / f"{stim}.jpg"
        half = tmp_path / f"half-{stim}.jpg"
        Image.open(src).resize((512, 512), Image.LANCZOS).save(half, quality=92)
        a, b = score_json(src, half)
        diffs.append(abs(a["score"] - b["score"]))
    assert max(diffs) <= 2.0, diffs


def make_bad_inputs(folder: Path, portrait: Path) -> dict[str, str]:
    """One file per class of bad input, with the words its error must contain."""
    good = portrait.read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a picture\n")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, "PNG")
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    return {"empty.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncated",
            "corrupt.png": "corrupt", "bomb.png": "decompression bomb"}


def test_batch_bad_inputs_get_rows_and_good_files_are_scored(clean_env: Path, portrait: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESCORE_MAX_IMAGE_PIXELS", "50000000")
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(portrait, folder / "good.jpg")
    shutil.copy(portrait, folder / "sub" / "good2.jpg")
    (folder / "notes.txt").write_text("skipped: not an image file")
    expected = make_bad_inputs(folder, portrait)
    out = tmp_path / "r.csv"
    res = invoke("batch", str(folder), "--out", str(out), "--jobs", "2", "--via", "local")
    assert res.exit_code == 1, res.output
    assert "notes.txt" in res.output  # reported as skipped
    rows = read_csv(out)
    assert list(rows[0].keys())[: len(COLUMNS)] == COLUMNS
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "notes.txt" not in by_name
    for name, words in expected.items():
        assert words in by_name[name]["error"], (name, by_name[name]["error"])
        assert by_name[name]["face"] == "" and by_name[name]["score"] == ""
    for name in ("good.jpg", "good2.jpg"):
        assert by_name[name]["error"] == "" and by_name[name]["source"] == "local"
        assert 0 <= float(by_name[name]["score"]) <= 100
    assert by_name["good2.jpg"]["path"] == str(folder / "sub" / "good2.jpg")


def test_batch_exit_zero_resume_and_jsonl(clean_env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    faces = sorted((Path(__file__).parents[1] / "examples" / "faces").glob("*.jpg"))[:3]
    for f in faces[:2]:
        shutil.copy(f, folder / f.name)
    out = tmp_path / "r.jsonl"
    res = invoke("batch", str(folder), "--out", str(out), "--jobs", "1", "--via", "local")
    assert res.exit_code == 0, res.output
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 2 and all(r["source"] == "local" and r["trait_well_groomed"] for r in first)
    # an interrupted write leaves half a line; --resume repairs it and scores only what is new
    with out.open("a") as fh:
        fh.write('{"path": "cut sh')
    shutil.copy(faces[2], folder / faces[2].name)
    res = invoke("batch", str(folder), "--out", str(out), "--resume", "--via", "local")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(str(folder / f.name) for f in faces)


def test_usage_errors_exit_two(clean_env: Path, portrait: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert invoke("batch", str(portrait), "--out", str(tmp_path / "r.txt")).exit_code == 2
    assert invoke("batch", str(tmp_path / "empty-folder-missing"), "--out", str(tmp_path / "r.csv")).exit_code == 2
    monkeypatch.setenv("USE_REAL_ML", "maybe")
    res = invoke("score", str(portrait))
    assert res.exit_code == 2 and "USE_REAL_ML" in res.output


def test_simulated_is_labelled_and_deterministic(clean_env: Path, portrait: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_REAL_ML", "false")
    copy = tmp_path / "copy.jpg"  # the same path twice is one input
    shutil.copy(portrait, copy)
    a, b = score_json(portrait, copy)
    assert a["source"] == b["source"] == "simulated" and a["model"] == "simulated-v1"
    assert a["score"] == b["score"]


def test_everything_disabled_fails_each_image_clearly(clean_env: Path, portrait: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLBACK_TO_LOCAL", "false")
    monkeypatch.setenv("FALLBACK_TO_SIMULATED", "false")
    res = invoke("score", str(portrait), "--json", "--via", "local")
    assert res.exit_code == 1
    [r] = json.loads(res.stdout)
    assert r["source"] is None and "no scoring path" in r["error"]
