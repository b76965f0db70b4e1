"""glibc keeps a scoring process's freed memory for the next image (facescore_cli/heap.py).
Without it, each decode of a 1600x1200 photo took thousands of fresh pages from the kernel (and
each score of one). Real interpreters, real photos, a real scoring pool; page faults are read
from the kernel's own counters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facescore_cli import heap
from facescore_cli.pool import ScoringPool
from queue_support import CLI, base_env, settings_for

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc's malloc")
# A user's own malloc tuning (here one that changes nothing: tcache_count's default) turns ours off.
USER_TUNING = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}


def without_user_tuning(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in heap.USER_SETTINGS}
    env.update(extra)
    return env


def decode_faults(photo: Path, keep: bool, env: dict[str, str]) -> dict:
    """Page faults of 10 more decodes of `photo` in a fresh interpreter, after a first one."""
    code = f"""
        import json, resource
        from pathlib import Path
        from facescore_cli import heap, images
        kept = heap.keep_freed_memory() if {keep!r} else None
        data = Path({str(photo)!r}).read_bytes()
        images.decode(data)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            images.decode(data)
        print(json.dumps({{"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@linux_glibc
def test_decoding_the_same_photo_again_reuses_the_memory_it_freed(group_photo: Path) -> None:
    default = decode_faults(group_photo, False, without_user_tuning())
    kept = decode_faults(group_photo, True, without_user_tuning())
    assert kept["kept"] is True
    # Pillow 13 on Python 3.11: ~4,600 fresh 4 KB pages a decode; Pillow 12.3 on 3.10: ~370
    assert kept["faults"] < 100 and default["faults"] > 1000


@linux_glibc
def test_a_users_own_malloc_tuning_is_left_alone(group_photo: Path) -> None:
    for name, value in [*USER_TUNING.items(), ("MALLOC_TRIM_THRESHOLD_", "131072")]:
        told = decode_faults(group_photo, True, without_user_tuning(**{name: value}))
        assert told["kept"] is False, name


def scoring_faults_per_image(settings, photo: Path) -> float:
    """Page faults of a real scoring process per score of `photo`, once it has scored it thrice."""
    with ScoringPool(settings, 1) as pool:
        assert pool.wait_ready(120)
        (pid,) = pool.pids()
        for _ in range(3):
            assert pool.submit_file(photo, photo.name).result(120).faces
        before = minor_faults(pid)
        for _ in range(4):
            assert pool.submit_file(photo, photo.name).result(120).faces
        return (minor_faults(pid) - before) / 4


def minor_faults(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])  # minflt, the 10th field


@linux_glibc
def test_a_scoring_process_keeps_its_freed_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  group_photo: Path) -> None:
    # Only the process's own setting is asserted: without it the count depends on the process's
    # history (glibc's thresholds follow the largest buffer freed so far, and which of the
    # warm-up's threads frees what varies from run to run): ~4,300 a score in most runs, a few
    # in some. The fresh-interpreter decode test above shows the default without that noise.
    env = base_env("redis://127.0.0.1:1", tmp_path / "home")
    settings = settings_for(env)
    # The models' cache built first, as after a machine's first run: building it frees ~70 MB
    # at once, and that free alone moves glibc's own thresholds up for the process's life.
    code = "from facescore_cli.config import Settings; from facescore_cli.scoring import LocalBackend; " \
           "LocalBackend(Settings.load().home / 'cache').warm_up()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    for name in heap.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert scoring_faults_per_image(settings, group_photo) < 100


def test_scores_do_not_depend_on_where_memory_comes_from(tmp_path: Path, group_photo: Path) -> None:
    def score(extra: dict[str, str]) -> list[dict]:
        env = base_env("redis://127.0.0.1:1", tmp_path / "home", FACESCORE_VIA="local", **extra)
        env = {k: v for k, v in env.items() if k not in heap.USER_SETTINGS or k in extra}
        res = subprocess.run(CLI + ["score", str(group_photo), "--no-store", "--json"], capture_output=True,
                             text=True, timeout=180, env=env)
        assert res.returncode == 0, res.stderr
        (image,) = json.loads(res.stdout)
        return image["faces"]

    kept, default = score({}), score(USER_TUNING)
    assert len(kept) == 5
    assert kept == default  # boxes, confidences, scores, traits, vibes, ranks
