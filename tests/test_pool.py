"""The one scoring pool (facescore_cli/pool.py), with real processes and real photos: a process
killed with SIGKILL is replaced and its image still scored, one that hangs (SIGSTOP) is killed past
the per-image time limit and its image gets an error, the file a process holds ahead is not blamed
for its loss, waiting work is cancelled, the processes die with their owner (SIGKILL of the owner
included), also under `facescore batch`."""
from __future__ import annotations

import base64
import csv
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import dies_with_pytest
from facescore_cli.config import Settings
from facescore_cli.errors import ConfigError
from facescore_cli.pool import CRASHED, PoolBusy, PoolClosed, ScoringPool, is_too_long, too_long
from facescore_cli.scoring import Scorer
from queue_support import (CLI, alive, base_env, big_photo, children, kill9_and_check_gone, run_cli, scoring_children,
                           settings_for, small_faces, wait_until)

LIMIT_S = 5.0  # the time limit in these tests: far above a 256 px face's 0.1-0.3 s, even on a loaded machine


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory):
    return settings_for(base_env("redis://127.0.0.1:1", tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="module")
def faces(omi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return small_faces(omi_dir, tmp_path_factory.mktemp("faces"), 12)


@pytest.fixture(scope="module")
def big(portrait: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo large enough to take a while (so a test can kill the process scoring it)."""
    return big_photo(portrait, tmp_path_factory.mktemp("big") / "big.jpg")


def test_scores_as_in_process_and_cancelled_work_is_never_scored(settings, faces):
    anchor = Scorer.from_settings(settings)
    with ScoringPool(settings, 2) as pool:
        assert pool.wait_ready(120)
        futures = [pool.submit_file(p, p.name) for p in faces]
        got = {f.result(60).path: f.result() for f in futures}
        for p in faces:
            want = anchor.score_file(p, p.name)
            assert [f.score for f in got[p.name].faces] == [f.score for f in want.faces]
        assert pool.status().scored == len(faces)

        # Two processes busy with real photos and each holding the next; six more wait and are
        # cancelled: never scored.
        futures = [pool.submit_file(p, p.name) for p in faces[:10]]
        cancelled = sum(f.cancel() for f in futures[2:])
        for f in futures:
            if not f.cancelled():
                assert f.result(60).faces
        assert cancelled >= 6  # the two processes took at most one more each (held) before the cancel
        assert pool.status().scored == len(faces) + 10 - cancelled
        assert pool.status().waiting == 0 and pool.status().running == 0

        encoded = base64.b64encode(faces[0].read_bytes()).decode()
        out = pool.submit_encoded(encoded, "x.jpg").result(60)
        assert out["kind"] == "ok" and out["data"]["faces"] and out["data"]["embeddings"]
        assert pool.submit_encoded("@@not base64@@").result(60)["kind"] == "image"
        assert pool.submit_encoded(base64.b64encode(b"no pixels").decode()).result(60)["kind"] == "image"
    with pytest.raises(PoolClosed):
        pool.submit_file(faces[0], "late")


def test_max_waiting_refuses_at_once(settings, faces):
    with ScoringPool(settings, 1, max_waiting=2) as pool:  # not ready yet: everything waits
        pool.submit_file(faces[0], "a"), pool.submit_file(faces[1], "b")
        start = time.monotonic()
        with pytest.raises(PoolBusy, match="2 image"):
            pool.submit_file(faces[2], "c")
        assert time.monotonic() - start < 0.1


def _kill_while_scoring(pool: ScoringPool) -> int:
    """SIGKILL the process scoring the big image: a crash mid-image. The busy process is stopped
    first and still busy a moment later (any result it had written is read by then), so it
    surely dies holding the image, however fast this machine scores it."""
    held: list[int] = []

    def stopped_while_busy() -> bool:
        busy = pool.pids(busy=True)
        if len(busy) != 1 or pool.status().ready != 2:
            return False
        os.kill(busy[0], signal.SIGSTOP)
        time.sleep(0.1)
        if busy[0] in pool.pids(busy=True):
            held.append(busy[0])
            return True
        os.kill(busy[0], signal.SIGCONT)  # it finished just before the stop: wait for the retry
        return False

    wait_until(stopped_while_busy, 120, "scoring the big image")
    pid = held[0]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pid not in pool.pids(), 10, "the killed process out of the pool")
    return pid


def test_kill9_of_a_scoring_process_is_replaced_and_its_image_retried_once(settings, faces, big):
    with ScoringPool(settings, 2) as pool:
        assert pool.wait_ready(120)
        victim = pool.submit_file(big, "big.jpg")
        killed = _kill_while_scoring(pool)
        assert victim.result(120).faces, victim.result().error  # retried in another process
        assert pool.wait_ready(120)
        status = pool.status()
        assert status.restarts == 1 and "exited with -9 while scoring big.jpg" in status.last_error
        assert len(pool.pids()) == 2 and killed not in pool.pids() and not alive(killed)
        assert all(f.result(60).faces for f in [pool.submit_file(p, p.name) for p in faces[:4]])

        # Killed on the same image twice: an error for that image; the pool scores on.
        victim = pool.submit_file(big, "poison.jpg")
        _kill_while_scoring(pool)
        _kill_while_scoring(pool)
        assert victim.result(120).error == CRASHED
        assert pool.submit_file(faces[0], "after").result(120).faces
        assert pool.status().restarts == 3


def test_a_process_holds_the_next_file_and_its_loss_does_not_blame_that_file(settings, faces, big):
    """A process is handed the next file before it answers (pool.HOLD), so it never waits for the
    owner's threads. That file is claimed (no longer cancellable); when the process is killed past
    the time limit, or dies, before answering, it goes back to the queue without blame."""
    limited = dataclasses.replace(settings, image_timeout_s=LIMIT_S)
    with ScoringPool(limited, 1) as pool:
        assert pool.wait_ready(120)
        [pid] = pool.pids()
        os.kill(pid, signal.SIGSTOP)  # nothing it is handed can finish
        first = pool.submit_file(big, "first.jpg")
        second = pool.submit_file(faces[0], "second.jpg")
        third = pool.submit_file(faces[1], "third.jpg")
        wait_until(lambda: pool.status().running == 2, 10, "two files handed to the process")
        assert pool.status().waiting == 1 and pool.pids(busy=True) == [pid]
        assert not second.cancel() and third.cancel()
        assert first.result(LIMIT_S + 60).error == too_long(LIMIT_S)
        assert second.result(120).faces  # scored by the replacement, not failed with the first
        status = pool.status()
        assert status.restarts == 1 and status.last_error.endswith(f"{pid} was killed after 5 s while scoring first.jpg")
        assert (status.scored, status.waiting, status.running) == (1, 0, 0) and third.cancelled()

        # SIGKILL while it holds two: the first is retried once, the one behind it scored as well
        [pid] = pool.pids()
        os.kill(pid, signal.SIGSTOP)
        again, behind = pool.submit_file(big, "again.jpg"), pool.submit_file(faces[2], "behind.jpg")
        wait_until(lambda: pool.status().running == 2, 10, "two files handed to the process")
        os.kill(pid, signal.SIGKILL)
        assert again.result(120).faces and behind.result(120).faces
        status = pool.status()
        assert status.restarts == 2 and "exited with -9 while scoring again.jpg" in status.last_error
        assert (status.scored, status.waiting, status.running) == (3, 0, 0)


def test_the_last_files_are_not_held_while_a_process_is_free(settings, faces):
    """Files are sent ahead only while every process has another one waiting: two files for two
    processes go one to each, not both to the first."""
    with ScoringPool(settings, 2) as pool:
        assert pool.wait_ready(120)
        for pid in pool.pids():
            os.kill(pid, signal.SIGSTOP)
        try:
            futures = [pool.submit_file(p, p.name) for p in faces[:2]]
            wait_until(lambda: pool.status().running == 2, 10, "both files handed out")
            time.sleep(0.2)
            assert pool.pids(busy=True) == pool.pids() and len(pool.pids()) == 2
        finally:
            for pid in pool.pids():
                os.kill(pid, signal.SIGCONT)
        assert all(f.result(120).faces for f in futures)


def test_processes_die_with_their_owner_even_on_sigkill(settings, faces, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from facescore_cli.config import Settings
        from facescore_cli.pool import ScoringPool
        if __name__ == "__main__":
            pool = ScoringPool(Settings.load(), 2).start()
            pool.wait_ready(120)
            print(" ".join(map(str, pool.pids())), flush=True)
            time.sleep(600)
    """))
    env = base_env("redis://127.0.0.1:1", tmp_path / "home")
    for sig in (signal.SIGKILL, signal.SIGTERM):
        owner = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True,
                                 preexec_fn=dies_with_pytest())
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        os.kill(owner.pid, sig)
        owner.wait(10)
        wait_until(lambda: not any(alive(p) for p in pids), 5, f"scoring processes gone after {sig.name} of the owner")


def test_sigkill_of_batch_leaves_no_scoring_process(omi_dir, tmp_path):
    folder = tmp_path / "many"
    small_faces(omi_dir, folder, 200)
    env = base_env("redis://127.0.0.1:1", tmp_path / "home")
    batch = subprocess.Popen(CLI + ["batch", str(folder), "--out", str(tmp_path / "out.csv"), "--via", "local",
                                    "--jobs", "2", "--no-store"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=dies_with_pytest())
    try:
        wait_until(lambda: len(children(batch.pid)) >= 2, 60, "batch started its scoring processes")
        kids = children(batch.pid)
        time.sleep(1.0)
        assert batch.poll() is None, "the batch finished before the test could kill it"
        kill9_and_check_gone(batch, kids, 5, "batch's scoring processes gone after its SIGKILL")
    finally:
        if batch.poll() is None:
            batch.kill()


def _state(pid: int) -> str:
    """The process state letter from /proc: R running, S sleeping, T stopped, Z zombie."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _stop_while_scoring(pool: ScoringPool) -> int:
    """SIGSTOP the process scoring the big image: a hang mid-image, which no crash check sees."""
    wait_until(lambda: len(pool.pids(busy=True)) == 1 and pool.status().ready == 2, 120, "scoring the big image")
    [pid] = pool.pids(busy=True)
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: _state(pid) == "T", 5, f"process {pid} stopped")
    return pid


def test_image_timeout_setting():
    def load(value: str) -> float:
        return Settings.load(environ={"FACESCORE_IMAGE_TIMEOUT": value}, dotenv=None).image_timeout_s

    assert Settings.load(environ={}, dotenv=None).image_timeout_s == 60
    assert [load(v) for v in ("90s", "2m", "1500ms", "45", "0", "")] == [90, 120, 1.5, 45, 0, 60]
    for bad, why in (("soon", "is not a duration"), ("-5s", "is negative"), ("inf", "is not a finite duration")):
        with pytest.raises(ConfigError, match=f"FACESCORE_IMAGE_TIMEOUT: '{bad}' {why}"):
            load(bad)


def test_a_hung_process_is_killed_after_the_time_limit_and_its_image_not_retried(settings, faces, big):
    limited = dataclasses.replace(settings, image_timeout_s=LIMIT_S)
    with ScoringPool(limited, 2) as pool:
        assert pool.wait_ready(120)
        victim = pool.submit_file(big, "hung.jpg")
        hung = _stop_while_scoring(pool)
        others = [pool.submit_file(p, p.name) for p in faces[:6]]
        assert victim.result(LIMIT_S + 60).error == too_long(LIMIT_S) == "scoring took longer than 5 s"
        assert is_too_long(too_long(LIMIT_S)) and is_too_long(too_long(0.25)) and is_too_long(too_long(1e6))
        assert not is_too_long("scoring took longer than usual") and not is_too_long(CRASHED)
        assert not is_too_long(None)
        assert all(f.result(120).faces for f in others)  # the other process scored on meanwhile
        wait_until(lambda: not alive(hung), 5, f"the hung process {hung} killed")
        assert pool.wait_ready(120) and len(pool.pids()) == 2 and hung not in pool.pids()
        status = pool.status()
        assert status.restarts == 1
        assert status.last_error == f"scoring process {hung} was killed after 5 s while scoring hung.jpg"
        # Not retried: only the six others were ever scored, and nothing is left waiting or running.
        assert (status.scored, status.waiting, status.running) == (6, 0, 0)

        # The worker's and the API's kind of image: "timeout" (final, no retry), with the reason.
        victim = pool.submit_encoded(base64.b64encode(big.read_bytes()).decode(), "hung-too.jpg")
        _stop_while_scoring(pool)
        assert victim.result(LIMIT_S + 60) == {"kind": "timeout", "error": "scoring took longer than 5 s"}
        assert pool.submit_file(faces[0], "after").result(120).faces
        assert pool.status().restarts == 2


def test_batch_gives_hung_images_error_rows_and_scores_the_rest(omi_dir, tmp_path):
    folder = tmp_path / "many"
    paths = small_faces(omi_dir, folder, 100)
    out, log = tmp_path / "out.csv", tmp_path / "stderr.txt"
    env = base_env("redis://127.0.0.1:1", tmp_path / "home", FACESCORE_IMAGE_TIMEOUT=f"{LIMIT_S:g}s")
    with log.open("w") as fh:
        batch = subprocess.Popen(CLI + ["batch", str(folder), "--out", str(out), "--via", "local", "--jobs", "2",
                                        "--no-store"], env=env, stdout=subprocess.DEVNULL, stderr=fh,
                                 preexec_fn=dies_with_pytest())
    hung: list[int] = []
    try:
        # Rows on disk: the models are loaded and work is handed out. Both processes are stopped with
        # most images still to come, so each holds an image (or is sent its next one while stopped),
        # and only processes started in their place can score the rest. 20 rows, not the first few:
        # on a loaded machine the second process may still be loading its models at row 4, and a
        # process stopped before it is ready holds no image (seen while apt-get ran beside the tests).
        wait_until(lambda: out.is_file() and out.read_text().count("\n") >= 20, 120, "batch writing rows")
        hung = scoring_children(batch.pid)
        assert len(hung) == 2 and batch.poll() is None
        for pid in hung:
            os.kill(pid, signal.SIGSTOP)
        # Every scoring process seen from now on: the two replacements need not be alive at the
        # same poll (one may finish the batch before the other has started, on a fast machine).
        seen: set[int] = set()

        def replaced() -> bool:
            seen.update(scoring_children(batch.pid))
            return len(seen - set(hung)) >= 2 or batch.poll() is not None

        wait_until(replaced, LIMIT_S + 30, "processes started in place of the hung ones")
        batch.wait(300)
        assert not any(alive(pid) for pid in hung)
        assert seen - set(hung), "no process started in place of the hung ones"
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait(10)
        for pid in hung:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    stderr = log.read_text()
    assert batch.returncode == 1, stderr  # inputs failed
    rows = list(csv.DictReader(out.open(newline="")))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in paths)  # one row each: one face each
    failed = [r for r in rows if r["error"]]
    assert [r["error"] for r in failed] == ["scoring took longer than 5 s"] * 2, failed
    assert all(r["score"] for r in rows if not r["error"])  # the other 98 scored, most by the replacements
    for pid in hung:
        assert f"scoring process {pid} was killed after 5 s while scoring" in stderr
    for r in failed:
        assert f"{r['path']}: scoring took longer than 5 s" in stderr


def test_a_bad_image_timeout_is_one_line_and_exit_2(faces, tmp_path):
    env = base_env("redis://127.0.0.1:1", tmp_path / "home", FACESCORE_IMAGE_TIMEOUT="forever")
    done = run_cli(["batch", str(faces[0]), "--out", str(tmp_path / "out.csv"), "--via", "local"], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: FACESCORE_IMAGE_TIMEOUT: 'forever' is not a duration (like 30s, 500ms, 2m, 12h, 7d)"]


def test_images_get_an_error_when_no_scoring_process_can_start(faces, tmp_path):
    """A pool whose processes cannot even start (here: its owner runs from stdin, which `spawn`
    cannot import again in the child) ends its waiting images with a one-line error after a few
    backed-off tries, instead of waiting for ever."""
    script = textwrap.dedent(f"""
        from facescore_cli.config import Settings
        from facescore_cli.pool import ScoringPool
        pool = ScoringPool(Settings.load(), 1).start()
        print(pool.submit_file({str(faces[0])!r}, "a.jpg").result(120).error, flush=True)
        pool.close(1.0)
    """)
    env = base_env("redis://127.0.0.1:1", tmp_path / "home")
    res = subprocess.run([sys.executable, "-"], input=script, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("no scoring process could start (exited while loading the models)"), res.stdout
