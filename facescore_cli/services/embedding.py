"""The face embedding service: `POST /embed` aligns each face and runs the same ResNet as local
scoring, so a remote vector equals the local one for the same image and faces.

Run it with `facescore serve embedding`; uvicorn builds the app from the import string
`facescore_cli.services.embedding:create_app` (factory), once per worker process.
"""
from __future__ import annotations

import math
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel

from .. import __version__
from ..ml import models, resnet
from ..ml.types import Face
from ._app import (
    ERRORS,
    FACE_SCHEMA,
    Health,
    Service,
    ServiceConfig,
    image_from_json,
    parse_json,
    setup_logging,
)

MODEL = models.EMBEDDING_MODEL
DIM = models.EMBEDDING_DIM
MAX_FACES = 256


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


def _warm_up() -> None:
    resnet.session()


def _embed(image: Any, faces: list[Face]) -> list[list[float]]:
    from ..ml.embed import embed

    vectors = embed(image, faces)  # onnxruntime sessions are safe to run from several threads
    return [[float(v) for v in row] for row in vectors]


def _faces(obj: dict[str, Any]) -> list[Face]:
    raw = obj.get("faces")
    if not isinstance(raw, list):
        raise HTTPException(422, 'the JSON body needs "faces": a list of faces as /detect returns them')
    if len(raw) > MAX_FACES:
        raise HTTPException(413, f"{len(raw)} faces, over the limit of {MAX_FACES}")
    try:
        return [Face.from_json(f) for f in raw]
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise HTTPException(422, f"malformed face: {exc or type(exc).__name__}") from None


def _check_faces(faces: list[Face], width: int, height: int) -> None:
    """422 unless every face lies on this image: a box of positive size and landmarks that are
    finite and within one image size of its edges (a face may hang over an edge, no further).
    Found by schemathesis: numbers like 1e300 reached dlib and answered 500."""
    for i, face in enumerate(faces):
        x, y, w, h = face.box
        xs = [x, x + w, *(px for px, _ in face.landmarks)]
        ys = [y, y + h, *(py for _, py in face.landmarks)]
        inside = all(math.isfinite(v) and -width <= v <= 2 * width for v in xs) and all(
            math.isfinite(v) and -height <= v <= 2 * height for v in ys)
        if w <= 0 or h <= 0 or not inside:
            raise HTTPException(422, f"face {i} is not on this {width}x{height} image (box {list(face.box)}); "
                                     "send faces as /detect returned them for the same image")


def create_app(config: ServiceConfig | None = None) -> Any:
    setup_logging()
    svc = Service(config or ServiceConfig.from_env(), _warm_up)
    app = svc.build("facescore embedding service",
                    f"Turns faces into {DIM}-d vectors with {MODEL}, after aligning them on their landmarks.")
    auth = svc.auth()

    @app.get("/health", response_model=Health, responses={401: ERRORS[401]}, dependencies=[auth])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": MODEL, "version": __version__}

    @app.post(
        "/embed",
        response_model=EmbedResponse,
        responses=ERRORS,
        dependencies=[auth],
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "object", "required": ["image", "faces"], "properties": {
                "image": {"type": "string", "description": "the image bytes in base64"},
                "faces": {"type": "array", "items": FACE_SCHEMA, "description": "faces as /detect returned them"},
            }}},
        }}},
    )
    async def embed(request: Request) -> dict[str, Any]:
        """One vector per face, in the order given."""
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPException(415, f'send JSON {{"image": base64, "faces": [...]}}, not {ctype}')
        obj = parse_json(await svc.read_body(request))
        faces = _faces(obj)
        image = await svc.decode(image_from_json(obj))
        _check_faces(faces, image.width, image.height)
        await svc.delay()
        vectors = await svc.run(_embed, image, faces) if faces else []
        return {"model": MODEL, "dim": DIM, "embeddings": vectors}

    return app
