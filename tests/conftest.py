"""Shared fixtures: real images, a private redis-server on a free port, free ports."""
from __future__ import annotations

import csv
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
OMI = REPO.parent / "shared" / "datasets" / "omi"


def dies_with_pytest(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A Popen `preexec_fn`: the child gets `sig` when the test process dies, however it dies
    (SIGKILL included; prctl PR_SET_PDEATHSIG, Linux), so no redis-server, service or worker is
    left running after a killed test run. The kernel ties it to the *thread* that started the
    child: start long-lived processes from the test's own thread, not from a pool's."""
    pytest_pid = os.getpid()

    def preexec() -> None:
        if _PRCTL is None:
            return
        _PRCTL(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != pytest_pid:  # the test process died before the request took effect
            os._exit(1)

    return preexec


def _find_prctl() -> Callable[..., int] | None:
    # Looked up here, not in the forked child: a dlopen after fork could wait for ever on the
    # loader's lock held by another thread of the test process at the moment of the fork.
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stalled_upload(port: int, head: bytes) -> socket.socket:
    """A raw connection to 127.0.0.1:`port` that has sent `head` (request line, headers and the
    start of a body shorter than its Content-Length) and sends nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head)
    return sock


def answer_of(sock: socket.socket) -> bytes:
    """What the server sent on a raw connection, up to the end of its JSON body (or its closing,
    or 30 s)."""
    got = b""
    sock.settimeout(30)
    while b'"}' not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


@pytest.fixture(scope="session")
def omi_dir() -> Path:
    if not (OMI / "images").is_dir():
        pytest.skip(f"the OMI dataset is not at {OMI}")
    return OMI


@pytest.fixture(scope="session")
def omi_ratings(omi_dir: Path) -> dict[str, dict[str, float]]:
    with (omi_dir / "ratings.csv").open() as fh:
        return {row["stimulus"]: {k: float(v) for k, v in row.items() if k != "stimulus"} for row in csv.DictReader(fh)}


@pytest.fixture(scope="session")
def portrait() -> Path:
    """A real one-face photo from examples/."""
    return EXAMPLES / "faces" / "omi-46.jpg"


@pytest.fixture(scope="session")
def group_photo() -> Path:
    """A real five-face collage from examples/."""
    return EXAMPLES / "group.jpg"


class RedisServer:
    """A private redis-server on a free port, stoppable and restartable by tests."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=dies_with_pytest(),
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No facescore settings leak in from the machine; FACESCORE_HOME is a fresh folder."""
    for name in ("REDIS_URL", "FACE_DETECTION_SERVICE", "FACE_EMBEDDING_SERVICE", "ML_SERVICE_TIMEOUT",
                 "USE_REAL_ML", "FALLBACK_TO_SIMULATED", "SIMULATED_ML_THRESHOLD", "FALLBACK_TO_LOCAL",
                 "FACESCORE_VIA", "FACESCORE_QUEUE", "QDRANT_URL", "QDRANT_API_KEY", "FACESCORE_SERVICE_TOKEN",
                 "FACESCORE_MAX_IMAGE_BYTES", "FACESCORE_MAX_IMAGE_PIXELS", "FACESCORE_HEAD", "FACESCORE_MIN_FACE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("FACESCORE_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # so no .env from the checkout is read
    return home
