"""Issue 15: the command line people expect. Pipes, --out rules, usage errors, help, confirmation."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES

from facescore_cli.cli import app
from facescore_cli.output import CSV_COLUMNS
from facescore_cli.result import COLUMNS

runner = CliRunner()
FACES = sorted((Path(__file__).parents[1] / "examples" / "faces").glob("*.jpg"))


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


@pytest.fixture()
def two_faces(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for f in FACES[:2]:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("out_name, words", [
    ("missing/dir/r.csv", "does not exist"),
    (".", "is a folder"),
    ("r.txt", "must end in"),
])
def test_bad_out_is_one_line_and_exit_two_before_any_work(clean_env: Path, portrait: Path, tmp_path: Path,
                                                           out_name: str, words: str) -> None:
    res = invoke("batch", str(portrait), "--out", str(tmp_path / out_name), "--via", "queue")
    # --via queue would exit 2 too, but only after probing Redis: the --out message comes first
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_typo_is_an_early_usage_error(clean_env: Path, portrait: Path, tmp_path: Path) -> None:
    for cmd in (["score"], ["batch", "--out", str(tmp_path / "r.csv")]):
        res = invoke(*cmd, str(portrait), str(tmp_path / "potrait.jpg"))
        assert res.exit_code == 2 and "no such file or folder" in res.output and "potrait.jpg" in res.output
    assert not (tmp_path / "r.csv").exists()


def test_existing_out_refused_without_resume_or_force(clean_env: Path, two_faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    assert invoke("batch", str(two_faces), "--out", str(out), "--via", "local", "--no-store").exit_code == 0
    before = out.read_bytes()
    res = invoke("batch", str(two_faces), "--out", str(out), "--via", "local")
    assert res.exit_code == 2 and "--resume" in res.output and "--force" in res.output
    assert out.read_bytes() == before
    res = invoke("batch", str(two_faces / FACES[0].name), "--out", str(out), "--force", "--via", "local", "--no-store")
    assert res.exit_code == 0
    assert len(list(csv.DictReader(out.open()))) == 1


def test_out_dash_and_paths_from_stdin(clean_env: Path, two_faces: Path) -> None:
    paths = "\n".join(str(p) for p in sorted(two_faces.iterdir())) + "\n"
    res = runner.invoke(app, ["batch", "-", "--out", "-", "--jsonl", "--via", "local", "--no-store", "-q"], input=paths)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in rows] == sorted(str(p) for p in two_faces.iterdir())  # input order
    assert list(rows[0]) == CSV_COLUMNS and isinstance(rows[0]["score"], float)
    nul = "\0".join(str(p) for p in sorted(two_faces.iterdir()))
    res = runner.invoke(app, ["batch", "-", "-0", "--out", "-", "--csv", "--via", "local", "--no-store", "-q"], input=nul)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 2 and list(rows[0])[: len(COLUMNS)] == COLUMNS


@pytest.mark.parametrize("ext", ["tsv", "json"])
def test_tsv_and_json_files_share_the_schema(clean_env: Path, two_faces: Path, tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"r.{ext}"
    assert invoke("batch", str(two_faces), "--out", str(out), "--via", "local", "--no-store").exit_code == 0
    if ext == "json":
        rows = json.loads(out.read_text())
        assert list(rows[0]) == CSV_COLUMNS
    else:
        rows = list(csv.DictReader(out.open(), delimiter="\t"))
        assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 and "trait_well_groomed" in rows[0]


def test_score_takes_folders_and_prints_plain_lines_in_a_pipe(clean_env: Path, two_faces: Path) -> None:
    long = two_faces / ("a-rather-long-file-name-that-a-folded-table-would-break-" * 2 + ".jpg")
    shutil.copy(FACES[2], long)
    res = invoke("score", str(two_faces), "--via", "local", "--no-store")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["file", "face", "score"]
    assert len(lines) == 4 and str(long) in res.stdout  # one line per face, nothing folded


def test_a_fifo_in_a_folder_is_an_error_row_not_a_hang(clean_env: Path, two_faces: Path) -> None:
    """A named pipe called *.jpg in a folder held a scoring process until its 60 s time limit."""
    os.mkfifo(two_faces / "pipe.jpg")
    res = invoke("batch", str(two_faces), "--out", "-", "--csv", "--via", "local", "--no-store", "--jobs", "2")
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert rows["pipe.jpg"]["error"] == "a named pipe (FIFO) with nothing written to it"
    assert sum(1 for r in rows.values() if r["score"]) == 2, res.stdout


@pytest.mark.parametrize("argv", [["score", "{portrait}"], ["batch", "{portrait}", "--out", "-", "--csv"]],
                         ids=["score", "batch"])
def test_a_full_disk_is_one_line_and_exit_1(clean_env: Path, portrait: Path, argv: list[str]) -> None:
    """Output on a full disk (/dev/full: every write fails with ENOSPC) was a traceback."""
    cmd = [sys.executable, "-m", "facescore_cli", *[a.format(portrait=portrait) for a in argv], "--no-store"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "FACESCORE_VIA": "local"})
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == "error: No space left on device" and "Traceback" not in proc.stderr


def test_score_csv_is_the_batch_schema(clean_env: Path, portrait: Path) -> None:
    res = invoke("score", str(portrait), "--csv", "--via", "local", "--no-store")
    assert res.exit_code == 0
    [row] = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(row) == CSV_COLUMNS and row["path"] == str(portrait)


def test_via_auto_is_silent_when_no_queue(clean_env: Path, portrait: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")  # nothing listens there
    res = invoke("score", str(portrait), "--json", "--no-store")
    assert res.exit_code == 0 and "redis" not in res.stderr.lower() and "via" not in res.stderr
    res = invoke("score", str(portrait), "--json", "--no-store", "-v")
    assert "via auto: scoring locally" in res.stderr


def test_submit_refuses_a_redis_without_workers(clean_env: Path, portrait: Path, redis_server,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("FACESCORE_QUEUE", "unrelated-test-queue")
    res = invoke("submit", str(portrait))
    assert res.exit_code == 2 and "no live worker" in res.output and "--via queue" in res.output
    import redis

    assert not redis.Redis.from_url(redis_server.url).keys("bull:unrelated-test-queue:*")


def test_help_has_metavars_short_h_and_choices(clean_env: Path) -> None:
    for cmd in (["batch"], ["score"], ["worker"], ["serve", "detection"], ["forget"]):
        res = runner.invoke(app, [*cmd, "-h"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (cmd, res.output)
        assert "<bool>" not in res.output and "list[" not in res.output and "{" not in res.output.split("\n")[1]
    res = runner.invoke(app, ["batch", "-h"], env={"COLUMNS": "200"})
    assert "INPUT..." in res.output and "FILE|-" in res.output
    res = invoke("score", "x.jpg", "--via", "bogus")
    assert res.exit_code == 2 and "bogus" in res.output
    res = invoke("serve", "detection", "--log-level", "loud")
    assert res.exit_code == 2


def test_quiet_and_verbose_on_any_command(clean_env: Path, two_faces: Path, tmp_path: Path) -> None:
    res = invoke("batch", str(two_faces), "--out", str(tmp_path / "r.csv"), "--via", "local", "--no-store", "-q")
    assert res.exit_code == 0 and res.stderr == ""
    res = invoke("batch", str(two_faces), "--out", str(tmp_path / "s.csv"), "--via", "local", "--no-store")
    assert "scored 1/2" in res.stderr and "median" in res.stderr and "vibes" in res.stderr  # plain progress


def test_forget_all_needs_yes_without_a_terminal(clean_env: Path) -> None:
    res = invoke("forget", "--all", input="")
    assert res.exit_code == 2 and "--yes" in res.output
    res = invoke("forget", "--all", "--yes", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["all"] is True


def test_version_and_help_start_fast_without_heavy_imports() -> None:
    code = ("import sys, facescore_cli.cli; heavy = {'numpy', 'PIL', 'rich.progress', 'fastapi', 'redis', 'bullmq', "
            "'qdrant_client', 'onnxruntime', 'dlib'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    res = subprocess.run([sys.executable, "-m", "facescore_cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip()[0].isdigit()


@pytest.mark.parametrize("argv, words", [
    (["batch"], "Missing argument"),
    (["bogus"], "No such command"),
    (["score", "x.jpg", "--via", "nope"], "'nope'"),
    (["worker", "--lock-duration", "30000"], "30000 ms is 30s"),
    (["worker", "--grace", "soon"], "not a duration"),
    (["batch", "examples"], "--out results.csv"),
])
def test_usage_mistakes_are_one_line_exit_two(clean_env: Path, argv: list[str], words: str) -> None:
    res = subprocess.run([sys.executable, "-m", "facescore_cli", *argv], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 2 and words in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_durations_take_units_everywhere() -> None:
    from facescore_cli.console import duration

    assert [duration(v) for v in ("30s", "500ms", "2m", "12h", "7d", "45")] == [30, 0.5, 120, 43200, 604800, 45]


def test_batch_format_flag_alone_writes_stdout(clean_env: Path, portrait: Path) -> None:
    res = invoke("batch", str(portrait), "--json", "--via", "local", "--no-store", "-q")
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["path"] == str(portrait)


def test_readme_next_command_works_as_written(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).parents[1]
    readme = (repo / "README.md").read_text()
    after = readme.split("make test", 1)[1]  # past the quick start's two commands
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.startswith("facescore ")]
    assert commands, block
    monkeypatch.chdir(repo)
    for line in commands:
        res = runner.invoke(app, line.split()[1:] + ["--no-store"])
        assert res.exit_code == 0, (line, res.output)
        assert "group.jpg" in res.stdout


def test_shell_completion_completes_commands_and_options() -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = dict(os.environ, COMP_WORDS=words, COMP_CWORD=str(cword), _FACESCORE_COMPLETE="complete_bash")
        res = subprocess.run([sys.executable, "-m", "facescore_cli"], env=env, capture_output=True, text=True)
        return res.stdout.split()

    assert complete("facescore ba", 1) == ["batch"]
    assert {"--jobs", "--json", "--jsonl"} <= set(complete("facescore batch --j", 2))


def test_folders_behind_links_are_walked_once_and_a_loop_ends(tmp_path: Path) -> None:
    """A photo library assembled from linked folders is scored whole; a link back up ends."""
    from facescore_cli import pipeline

    lib, other = tmp_path / "lib", tmp_path / "elsewhere"
    lib.mkdir()
    other.mkdir()
    shutil.copy(EXAMPLES / "faces" / "omi-46.jpg", lib / "a.jpg")
    shutil.copy(EXAMPLES / "faces" / "omi-238.jpg", other / "b.jpg")
    (lib / "linked").symlink_to(other, target_is_directory=True)
    (other / "up").symlink_to(lib, target_is_directory=True)  # a loop
    shown = [i.display for i in pipeline.collect([str(lib)]).items]
    assert shown == [str(lib / "a.jpg"), str(lib / "linked" / "b.jpg")]


def test_the_model_cache_goes_to_the_home_set_in_dotenv(tmp_path: Path) -> None:
    """FACESCORE_HOME written only in .env still decides where the built ResNet model is kept."""
    home, work = tmp_path / "home-from-dotenv", tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(f"FACESCORE_HOME={home}\n")
    env = {k: v for k, v in os.environ.items() if k != "FACESCORE_HOME"}
    env["HOME"] = str(tmp_path / "user")
    res = subprocess.run([sys.executable, "-m", "facescore_cli", "score", str(EXAMPLES / "faces" / "omi-46.jpg"),
                          "--via", "local", "--no-store", "--csv"], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list((home / "cache").glob("*.onnx")), list(home.rglob("*"))
    assert not (tmp_path / "user" / ".local" / "share" / "facescore" / "cache").exists()
