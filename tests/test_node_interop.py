"""A Node.js BullMQ producer (the original system's side) talks to `facescore worker`."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from queue_support import WorkerProc, base_env

PRODUCER = Path(__file__).parent / "node" / "producer.mjs"


@pytest.fixture(scope="session")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bullmq (and ioredis, which bullmq 6 leaves to the application) from npm, once per session."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are not installed")
    where = tmp_path_factory.mktemp("npm")
    res = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(where),
                          "bullmq", "ioredis"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"npm install bullmq failed: {res.stderr[-2000:]}"
    return where / "node_modules"


def _produce(node_modules: Path, env: dict[str, str], image: Path) -> dict:
    res = subprocess.run(["node", str(PRODUCER), str(image)], env={**env, "NODE_PATH": str(node_modules)},
                         capture_output=True, text=True, timeout=90)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no answer from the Node producer: {res.stdout[-1000:]} {res.stderr[-2000:]}"
    return json.loads(lines[-1])


def test_node_producer_gets_the_result_and_a_clear_failure(redis_server, node_modules, portrait, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    w = WorkerProc(env, tmp_path / "w.log")
    try:
        w.wait_started()
        answer = _produce(node_modules, env, portrait)
        assert answer["ok"], answer
        result = answer["result"]
        assert isinstance(result["score"], (int, float)) and 0 <= result["score"] <= 100
        assert isinstance(result["vibe"], str) and result["vibe"]
        assert 0 <= result["rank"] <= 100
        assert result["faces"] and result["faces"][0]["score"] == result["score"]
        assert result["source"] in ("local", "remote", "simulated")
        assert [e["job"] for e in w.events("completed")] == [answer["id"]]  # Node's own numeric id

        text = tmp_path / "notes.jpg"
        text.write_text("meeting notes, not a photo")
        answer = _produce(node_modules, env, text)
        assert not answer["ok"]
        assert "not an image" in answer["error"]
        assert len(w.events("failed")) == 1  # failed at once, no retries
    finally:
        w.stop()
