"""The face detection service: `POST /detect` runs the same detector as local scoring.

Run it with `facescore serve detection`; uvicorn builds the app from the import string
`facescore_cli.services.detection:create_app` (factory), once per worker process.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from fastapi import HTTPException, Query, Request
from pydantic import BaseModel

from .. import __version__
from ..ml import detect as _detect
from ..ml.types import DEFAULT_MIN_FACE, LARGEST_MIN_FACE, SMALLEST_MIN_FACE
from ._app import ERRORS, FaceModel, Health, Service, ServiceConfig, image_from_json, parse_json, setup_logging

MODEL = getattr(_detect, "DETECTOR_NAME", "facescore-detector")
RAW_TYPES = ("image/", "application/octet-stream")


class DetectResponse(BaseModel):
    width: int
    height: int
    model: str
    faces: list[FaceModel]


def _warm_up() -> None:
    from ..images import DecodedImage
    from ..ml import models

    # A blank image loads the detector's networks without finding anything.
    blank = np.full((64, 64, 3), 127, dtype=np.uint8)
    _detect.detect(DecodedImage(pixels=blank, scale=1.0, width=64, height=64, format="PNG"))
    models.landmarks_5()


def create_app(config: ServiceConfig | None = None) -> Any:
    setup_logging()
    svc = Service(config or ServiceConfig.from_env(), _warm_up)
    app = svc.build("facescore detection service",
                    "Finds faces: boxes, confidences and dlib's 5 landmarks, largest face first.")
    auth = svc.auth()

    @app.get("/health", response_model=Health, responses={401: ERRORS[401]}, dependencies=[auth])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": MODEL, "version": __version__}

    @app.post(
        "/detect",
        response_model=DetectResponse,
        responses=ERRORS,
        dependencies=[auth],
        openapi_extra={"requestBody": {"required": True, "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "description": "the image bytes in base64"}}}},
        }}},
    )
    async def detect(
        request: Request,
        min_face: int = Query(DEFAULT_MIN_FACE, ge=SMALLEST_MIN_FACE, le=LARGEST_MIN_FACE,
                              description="the narrowest face to look for, in the image's pixels; larger is faster"),
    ) -> dict[str, Any]:
        """Faces in the image (raw bytes with an image content type, or JSON `{"image": base64}`)."""
        unknown = sorted(set(request.query_params) - {"min_face"})
        if unknown:  # a typo (min-face, minface) must not silently search from 40 px
            raise HTTPException(422, f"unknown query parameter {unknown[0]!r} (this endpoint takes min_face)")
        ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
        if ctype == "application/json":
            data = image_from_json(parse_json(await svc.read_body(request)))
        elif ctype.startswith(RAW_TYPES):
            data = await svc.read_body(request)
        else:
            raise HTTPException(415, f"send the image as image/* bytes or JSON {{\"image\": base64}}, not {ctype}")
        image = await svc.decode(data)
        await svc.delay()
        faces = await svc.run(functools.partial(_detect.detect, min_face=min_face), image)
        return {"width": image.width, "height": image.height, "model": MODEL,
                "faces": [f.to_json() for f in faces]}

    return app
