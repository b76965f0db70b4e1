"""The one scoring pool (facescore_cli/pool.py), with real processes and real photos: a process
killed with SIGKILL is replaced and its image still scored, waiting work is cancelled, the
processes die with their owner (SIGKILL of the owner included), also under `facescore batch`."""
from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from facescore_cli.pool import CRASHED, PoolBusy, PoolClosed, ScoringPool
from facescore_cli.scoring import Scorer
from queue_support import CLI, alive, base_env, big_photo, children, settings_for, small_faces, wait_until


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

        # Two processes busy with real photos; eight more wait and are cancelled: never scored.
        futures = [pool.submit_file(p, p.name) for p in faces[:10]]
        cancelled = sum(f.cancel() for f in futures[2:])
        for f in futures:
            if not f.cancelled():
                assert f.result(60).faces
        assert cancelled >= 6  # at most the two processes took one more each before the cancel
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
        owner = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
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
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(children(batch.pid)) >= 2, 60, "batch started its scoring processes")
        kids = children(batch.pid)
        time.sleep(1.0)
        assert batch.poll() is None, "the batch finished before the test could kill it"
        os.kill(batch.pid, signal.SIGKILL)
        batch.wait(10)
        wait_until(lambda: not any(alive(p) for p in kids), 5, "batch's scoring processes gone after its SIGKILL")
    finally:
        if batch.poll() is None:
            batch.kill()
