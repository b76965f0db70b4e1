"""The detection and embedding services, as real processes on free ports (CONTRACT.md, the ML services)."""
from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES, answer_of, dies_with_pytest, free_port, stalled_upload

from facescore_cli import images
from facescore_cli.cli import app
from facescore_cli.ml.detect import detect
from facescore_cli.ml.embed import embed
from facescore_cli.ml import models
from facescore_cli.ml.types import Face

TOKEN = "t0ken-for-tests"
IMAGE_LIMIT = 600_000  # FACESCORE_MAX_IMAGE_BYTES for the services here; the body limit follows from it
BODY_LIMIT = IMAGE_LIMIT * 4 // 3 + 1024 * 1024


class Service:
    """`python -m facescore_cli serve KIND --port P` as a subprocess, ready once /health answers."""

    def __init__(self, kind: str, env: dict[str, str] | None = None, token: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.args = args
        self.port = free_port()
        self.token = token
        self.env = {**os.environ, "FACESCORE_SERVICE_THREADS": "2", **(env or {})}
        for name in ("FACESCORE_SERVICE_TOKEN", "FACE_DETECTION_SERVICE", "FACE_EMBEDDING_SERVICE"):
            self.env.pop(name, None)
        if token:
            self.env["FACESCORE_SERVICE_TOKEN"] = token
        self.proc: subprocess.Popen | None = None
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout: float = 30.0) -> "Service":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "Service":
        """Start the process (from the calling thread: it dies with that thread, see dies_with_pytest)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facescore_cli", "serve", self.kind, "--port", str(self.port), "--log-level", "warning",
             *self.args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=self.stderr, preexec_fn=dies_with_pytest(),
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> "Service":
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} service exited: {self.log()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", headers=self.headers, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.kind} service did not answer /health within {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log_so_far(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def log(self) -> str:
        """What the service wrote to stderr (stops it first)."""
        self.stop()
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")


def start_pair(env: dict[str, str] | None = None, token: str | None = None) -> tuple[Service, Service]:
    """Both services, loading side by side (launched from this thread, so they die with it)."""
    det, emb = Service("detection", env, token).launch(), Service("embedding", env, token).launch()
    try:
        det.wait_ready()
        emb.wait_ready()
    except BaseException:
        det.stop()
        emb.stop()
        raise
    return det, emb


@pytest.fixture(scope="module")
def pair():
    det, emb = start_pair({"FACESCORE_MAX_IMAGE_BYTES": str(IMAGE_LIMIT), "FACESCORE_BODY_TIMEOUT": "2s"}, token=TOKEN)
    yield det, emb
    det.stop()
    emb.stop()


@pytest.fixture(scope="module")
def group_bytes() -> bytes:
    return (EXAMPLES / "group.jpg").read_bytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- health, OpenAPI ------------------------------------------------------------------------

def test_health_names_model_and_version(pair):
    det, emb = pair
    for svc, model in ((det, "mtcnn"), (emb, "resnet")):
        r = httpx.get(svc.url + "/health", headers=svc.headers)
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and model in body["model"] and body["version"]


def test_openapi_documents_are_valid(pair):
    from openapi_spec_validator import validate

    for svc, path in zip(pair, ("/detect", "/embed")):
        r = httpx.get(svc.url + "/openapi.json")  # public: no token needed to read the contract
        assert r.status_code == 200
        doc = r.json()
        validate(doc)
        assert {"/health", path} <= set(doc["paths"])
        op = doc["paths"][path]["post"]
        assert {"401", "413", "422"} <= set(op["responses"])
        assert "application/json" in op["requestBody"]["content"]
    detect_body = httpx.get(pair[0].url + "/openapi.json").json()["paths"]["/detect"]["post"]["requestBody"]
    assert "image/jpeg" in detect_body["content"]


# --- /detect and /embed: the same models as local scoring ------------------------------------

def test_detect_raw_and_json_match_local_detection(pair, group_bytes):
    det, _ = pair
    raw = httpx.post(det.url + "/detect", content=group_bytes, headers={**det.headers, "Content-Type": "image/jpeg"},
                     timeout=30)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    image = images.decode(group_bytes)
    assert (body["width"], body["height"]) == (image.width, image.height) == (1600, 1200)
    local = [f.to_json() for f in detect(image)]
    assert len(local) == 5
    assert body["faces"] == local
    js = httpx.post(det.url + "/detect", json={"image": _b64(group_bytes)}, headers=det.headers, timeout=30)
    assert js.status_code == 200
    assert js.json()["faces"] == local


def test_embed_matches_local_embedding(pair, group_bytes):
    _, emb = pair
    image = images.decode(group_bytes)
    faces = [f.to_json() for f in detect(image)]
    r = httpx.post(emb.url + "/embed", json={"image": _b64(group_bytes), "faces": faces}, headers=emb.headers, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == models.EMBEDDING_DIM and body["model"] == models.EMBEDDING_MODEL
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (5, models.EMBEDDING_DIM)
    expected = embed(image, [Face.from_json(f) for f in faces])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_embed_with_no_faces_is_an_empty_list(pair, group_bytes):
    _, emb = pair
    r = httpx.post(emb.url + "/embed", json={"image": _b64(group_bytes), "faces": []}, headers=emb.headers)
    assert r.status_code == 200 and r.json()["embeddings"] == []


def test_concurrent_requests_get_the_same_answers(pair, group_bytes):
    """Inference runs in a thread pool; the ResNet is not shared by two threads at once."""
    det, emb = pair
    faces = httpx.post(det.url + "/detect", content=group_bytes, timeout=30,
                       headers={**det.headers, "Content-Type": "image/jpeg"}).json()["faces"]
    body = {"image": _b64(group_bytes), "faces": faces}

    def one(_: int) -> list:
        return httpx.post(emb.url + "/embed", json=body, headers=emb.headers, timeout=60).json()["embeddings"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    for a in answers[1:]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(answers[0]), atol=1e-6)


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_missing_or_wrong_token_is_401(pair, group_bytes, headers):
    det, emb = pair
    assert httpx.get(det.url + "/health", headers=headers).status_code == 401
    r = httpx.post(det.url + "/detect", content=group_bytes, headers={**headers, "Content-Type": "image/jpeg"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(emb.url + "/embed", json={"image": "", "faces": []}, headers=headers).status_code == 401


def test_body_over_the_limit_is_413_by_content_length(pair):
    det, _ = pair
    r = httpx.post(det.url + "/detect", content=b"\xff" * (BODY_LIMIT + 1),
                   headers={**det.headers, "Content-Type": "image/jpeg"})
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]


def test_body_over_the_limit_is_413_when_streamed_without_length(pair):
    det, _ = pair

    def chunks():
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"\xff" * 65536

    r = httpx.post(det.url + "/detect", content=chunks(), headers={**det.headers, "Content-Type": "image/jpeg"})
    assert "content-length" not in r.request.headers  # chunked: only the bytes received can tell
    assert r.status_code == 413


def test_a_body_that_does_not_arrive_is_408(pair, group_bytes):
    """Headers sent, then the body stops: the service answers 408 after FACESCORE_BODY_TIMEOUT
    (2 s here) instead of holding the connection and its buffer for as long as the client likes."""
    for svc, path in zip(pair, ("/detect", "/embed")):
        sock = stalled_upload(svc.port, f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
                                        f"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                                        f"{{\"image\": \"".encode())
        try:
            answer = answer_of(sock)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert answer.endswith(b'{"detail":"the body did not arrive within 2 s"}')
    r = httpx.post(pair[0].url + "/detect", content=group_bytes, headers={**pair[0].headers, "Content-Type": "image/jpeg"})
    assert r.status_code == 200


def test_image_over_the_limit_inside_json_is_413(pair):
    _, emb = pair
    big = b"\xff" * (IMAGE_LIMIT + 1)
    r = httpx.post(emb.url + "/embed", json={"image": _b64(big), "faces": []}, headers=emb.headers)
    assert r.status_code == 413


@pytest.mark.parametrize("body,ctype", [
    (b"not an image at all", "image/jpeg"),
    ((EXAMPLES / "group.jpg").read_bytes()[:2000], "image/jpeg"),  # truncated JPEG
    (b'{"image": "%%% not base64"}', "application/json"),
    (b'{"image": ', "application/json"),
    (b'{"picture": "abc"}', "application/json"),
])
def test_bad_image_or_json_is_422(pair, body, ctype):
    det, _ = pair
    r = httpx.post(det.url + "/detect", content=body, headers={**det.headers, "Content-Type": ctype})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("body", [
    b"[" * 1000 + b"]" * 1000,  # an uncaught RecursionError, a plain-text 500, before
    b'{"image": "AAAA", "faces": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"image": 1e999999, "faces": []}',
    b'{"image": "AAAA", "faces": [' + b"9" * 100_000 + b"]}",
    b'{"image": "\xff\xfe", "faces": []}',
    b'{"image": "AAAA", "image": "BBBB", "faces": []}',
    b'{"image": "AAAA", "faces": [NaN]}',
], ids=["deep", "deep-inside", "1e999999", "100k-digits", "utf8", "duplicate-key", "nan"])
def test_malformed_json_is_422_with_the_error_model(pair, body):
    for svc, path in zip(pair, ("/detect", "/embed")):
        r = httpx.post(svc.url + path, content=body, headers={**svc.headers, "Content-Type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"].startswith("malformed JSON"), r.text


def test_bad_faces_are_422(pair, group_bytes):
    _, emb = pair
    for faces in ([{"box": [1, 2, 3]}], "nope", [{"box": [1, 2, 3, 4], "landmarks": [[1, 2]]}]):
        r = httpx.post(emb.url + "/embed", json={"image": _b64(group_bytes), "faces": faces}, headers=emb.headers)
        assert r.status_code == 422, (faces, r.text)


def test_other_content_types_are_415(pair):
    det, _ = pair
    r = httpx.post(det.url + "/detect", content=b"hello", headers={**det.headers, "Content-Type": "text/plain"})
    assert r.status_code == 415


def test_one_log_line_per_request(group_bytes):
    det = Service("detection").start()
    try:
        for _ in range(3):
            httpx.post(det.url + "/detect", content=b"junk", headers={"Content-Type": "image/png"})
        # the line is written once the response is sent: give the last one a moment to land
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and det.log_so_far().count("POST /detect") < 3:
            time.sleep(0.05)
    finally:
        log = det.log()
    lines = [line for line in log.splitlines() if "POST /detect" in line]
    assert len(lines) == 3, log
    assert all(" 422 " in line for line in lines)


def test_workers_serve_from_separate_processes(group_bytes):
    """--workers 2: two processes, each loading its own models, answering the same port alike."""
    import re

    emb = Service("embedding", args=("--workers", "2"))
    emb.start(timeout=90)
    try:
        image = images.decode(group_bytes)
        faces = [f.to_json() for f in detect(image)]
        body = {"image": _b64(group_bytes), "faces": faces}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.post(emb.url + "/embed", json=body, timeout=60), range(8)))
        assert all(r.status_code == 200 for r in answers)
        assert all(r.json()["embeddings"] == answers[0].json()["embeddings"] for r in answers)
        assert np.allclose(answers[0].json()["embeddings"], embed(image, detect(image)), atol=1e-6)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and emb.log_so_far().count(" ready: ") < 2:
            time.sleep(0.2)
    finally:
        emb.proc.send_signal(signal.SIGTERM)  # uvicorn's supervisor stops its workers on SIGTERM
        emb.proc.wait(30)
        log = emb.log()
    ready = set(re.findall(r"facescore\.services\[(\d+)\] .* ready: ", log))
    assert len(ready) == 2 and str(emb.proc.pid) not in ready, log[-2000:]


def test_serve_help_shows_loopback_and_default_ports():
    runner = CliRunner()
    for kind, port in (("detection", "8001"), ("embedding", "8002")):
        result = runner.invoke(app, ["serve", kind, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "127.0.0.1" in result.output and port in result.output


def test_the_apps_are_import_string_factories_for_uvicorn_workers(clean_env):
    from uvicorn.importer import import_from_string

    for kind in ("detection", "embedding"):
        factory = import_from_string(f"facescore_cli.services.{kind}:create_app")
        assert "/openapi.json" in {r.path for r in factory().routes}


def test_serve_refuses_a_broken_configuration(clean_env, monkeypatch):
    monkeypatch.setenv("ML_SERVICE_TIMEOUT", "soon")
    result = CliRunner().invoke(app, ["serve", "detection", "--port", "1"])
    assert result.exit_code == 2
    assert "ML_SERVICE_TIMEOUT" in result.output


# --- property-based: schemathesis generates requests from each service's own /openapi.json -----

@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    """A 320 px copy of the group photo: a real image that decodes fast."""
    from PIL import Image

    img = Image.open(EXAMPLES / "group.jpg")
    img.thumbnail((320, 320))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_services_honour_their_openapi_documents(pair, small_jpeg, mode):
    """Requests generated from the document each service publishes: no 5xx, only documented
    status codes and content types, responses matching their schemas, every schema-invalid
    request rejected with a 4xx. In positive mode the generated image is replaced by a real one,
    so the generated faces reach the embedding code (they found a 500 there: coordinates like
    1e300 went on to dlib). 'Schema-valid data must be accepted' is not checked: the schema
    cannot say 'these bytes decode as an image', and such bodies get the documented 422."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import checks as C

    checks = [C.not_a_server_error, C.status_code_conformance, C.content_type_conformance,
              C.response_schema_conformance, C.response_headers_conformance, C.negative_data_rejection]
    positive = mode == "positive"
    generation = schemathesis.GenerationMode.POSITIVE if positive else schemathesis.GenerationMode.NEGATIVE
    statuses: dict[str, set[int]] = {}
    for svc in pair:
        schema = schemathesis.openapi.from_url(svc.url + "/openapi.json")
        for result in schema.get_all_operations():
            op = result.ok()
            label = op.label

            @settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=generation))
            def call(case):
                if not positive and any(v is None or v == [] for v in (case.query or {}).values()):
                    # A parameter "added" with no value (None, []) is not sent at all (the HTTP
                    # client drops it), so the request that goes out is valid and rightly
                    # accepted: {'min_face': 6514, 'J': []} went out as ?min_face=6514.
                    return
                if positive and isinstance(case.body, dict) and "image" in case.body:
                    case.body["image"] = _b64(small_jpeg)
                elif positive and isinstance(case.body, bytes):
                    case.body = small_jpeg
                response = case.call_and_validate(base_url=svc.url, headers=svc.headers, checks=checks)  # noqa: B023 (called at once)
                statuses.setdefault(label, set()).add(response.status_code)  # noqa: B023 (called at once)

            call()
    assert {"GET /health", "POST /detect", "POST /embed"} <= set(statuses)
    if positive:  # real images with generated faces: some embedded, some refused as not on the image
        assert {200, 422} <= statuses["POST /embed"] and 200 in statuses["POST /detect"]


def test_embed_refuses_faces_that_are_not_on_the_image(pair, small_jpeg):
    _, emb = pair
    face = {"box": [10, 10, 50, 50], "landmarks": [[20, 20], [30, 20], [40, 20], [50, 20], [35, 40]]}
    for bad in ({"landmarks": [[1e300, 20], *face["landmarks"][1:]]},
                {"box": [10, 10, 0, 50]},
                {"box": [10, 10, 10**40, 50]},
                {"landmarks": [[float("1e20"), float("-1e20")], *face["landmarks"][1:]]}):
        r = httpx.post(emb.url + "/embed", headers=emb.headers,
                       json={"image": _b64(small_jpeg), "faces": [{**face, **bad}]})
        assert r.status_code == 422 and "not on this 320x" in r.json()["detail"], r.text
    r = httpx.post(emb.url + "/embed", headers=emb.headers, json={"image": _b64(small_jpeg), "faces": [face]})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1
