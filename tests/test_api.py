"""`facescore serve api`: POST /api/score as the original system answered it, locally and through
the workers. The app runs for real (in-process through httpx, and once under uvicorn)."""
from __future__ import annotations

import base64
import dataclasses
import subprocess
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import free_port, wait_for_port
from facescore_cli.api import create_app
from queue_support import CLI, WorkerProc, base_env, settings_for, wait_live


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture()
def local_client(redis_server, tmp_path):
    settings = settings_for(base_env(redis_server.url, tmp_path / "home"))
    with TestClient(create_app(settings, via="local", processes=1)) as client:
        yield client


def test_local_real_image_bad_base64_no_body_not_an_image(local_client, portrait):
    r = local_client.post("/api/score", json={"image": _b64(portrait)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    data = body["data"]
    assert {"score", "vibe", "rank", "faces", "source", "model"} <= data.keys()
    assert 0 <= data["score"] <= 100 and data["faces"][0]["score"] == data["score"]
    assert "embeddings" not in data

    r = local_client.post("/api/score", json={"image": "this is *not* base64!"})
    assert r.status_code == 400 and r.json() == {"success": False, "error": '"image" is not valid base64'}

    r = local_client.post("/api/score")
    assert r.status_code == 400 and r.json()["success"] is False and "no body" in r.json()["error"]

    r = local_client.post("/api/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]

    r = local_client.post("/api/score", json={"picture": "AAAA"})
    assert r.status_code == 400 and '"image"' in r.json()["error"]

    r = local_client.post("/api/score", json={"image": base64.b64encode(b"plain text, no pixels").decode()})
    assert r.status_code == 422 and r.json()["success"] is False and "not an image" in r.json()["error"]

    # a data URL, as a browser's FileReader produces it
    r = local_client.post("/api/score", json={"image": "data:image/jpeg;base64," + _b64(portrait)})
    assert r.status_code == 200 and r.json()["data"]["score"] == data["score"]


def test_too_big_is_413(redis_server, portrait, tmp_path):
    settings = dataclasses.replace(settings_for(base_env(redis_server.url, tmp_path / "home")),
                                   max_image_bytes=portrait.stat().st_size - 1)
    with TestClient(create_app(settings, via="local", processes=1)) as client:
        r = client.post("/api/score", json={"image": _b64(portrait)})
        assert r.status_code == 413 and r.json()["success"] is False and "cap" in r.json()["error"]
        r = client.post("/api/score", content=b"x" * (settings.max_image_bytes * 2 + 100_000))
        assert r.status_code == 413


def test_through_the_workers_under_uvicorn(redis_server, portrait, tmp_path):
    env = base_env(redis_server.url, tmp_path / "home")
    port = free_port()
    api = subprocess.Popen(CLI + ["serve", "api", "--port", str(port), "--via", "queue", "--timeout", "20"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    w = None
    try:
        wait_for_port(port, 30)
        url = f"http://127.0.0.1:{port}/api/score"
        start = time.monotonic()
        r = httpx.post(url, json={"image": _b64(portrait)}, timeout=30)
        assert r.status_code == 503 and "no live worker" in r.json()["error"]  # says so, does not hang
        assert time.monotonic() - start < 5

        w = WorkerProc(env, tmp_path / "w.log")
        w.wait_started()
        wait_live(env)
        time.sleep(1.1)  # the app caches the worker list for a second
        r = httpx.post(url, json={"image": _b64(portrait)}, timeout=30)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert r.json()["success"] is True and w.events("completed")
        assert {"score", "vibe", "rank", "faces"} <= data.keys()

        r = httpx.post(url, json={"image": base64.b64encode(b"GIF89a but truncated").decode()}, timeout=30)
        assert r.status_code == 422 and r.json()["success"] is False
        assert w.events("failed")[0]["error"] == r.json()["error"]

        r = httpx.post(url, json={"image": "@@@"}, timeout=30)
        assert r.status_code == 400
        r = httpx.post(url, timeout=30)
        assert r.status_code == 400
    finally:
        if w:
            w.stop()
        api.terminate()
        api.wait(15)
