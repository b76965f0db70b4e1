"""The fallback chain remote -> local -> simulated, producing one ImageResult per image.

Bad images are the input's fault, not a link's: they become an error row at once. A link that
fails for an image (service down, timeout, malformed answer) hands the image to the next link.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from . import images
from .config import Settings
from .errors import FaceScoreError, ImageError, ServiceUnavailable
from .ml.types import DEFAULT_MIN_FACE, Face, Prediction
from .result import NO_FACE, FaceResult, ImageResult

log = logging.getLogger(__name__)


class Backend(Protocol):
    """One link of the chain that finds faces and embeds them."""

    name: str  # the `source` it produces: remote | local

    def analyze(self, image: images.DecodedImage, data: bytes, *, min_face: int = DEFAULT_MIN_FACE
                ) -> tuple[list[Face], np.ndarray]:
        """The faces at least about `min_face` pixels wide, largest first, and their vectors."""
        ...


class LocalBackend:
    """The in-process models. `cache_dir` holds the ONNX model built from dlib's ResNet weights
    (the settings' FACESCORE_HOME/cache, so a home set only in .env is honoured too)."""

    name = "local"

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir

    def analyze(self, image: images.DecodedImage, data: bytes, *, min_face: int = DEFAULT_MIN_FACE
                ) -> tuple[list[Face], np.ndarray]:
        from .ml import resnet
        from .ml.detect import detect
        from .ml.embed import embed

        resnet.session(self.cache_dir)  # made once per process, in our cache folder
        # The faces as the wire carries them (landmarks to 0.01 px), so that the local link and
        # the remote services embed the very same points and agree on the score.
        faces = [Face.from_json(f.to_json()) for f in detect(image, min_face=min_face)]
        return faces, embed(image, faces)

    def warm_up(self) -> None:
        from .ml import detect, models, resnet
        from .ml.head import load_head

        # onnxruntime builds its sessions without holding the GIL, while this thread loads the
        # landmark model and the head (numpy, holding it): on a second core the two overlap.
        # onnxruntime is imported first, here: an import needs the GIL the loads below hold.
        # Errors surface below, where the same calls are made again (they keep only successes).
        _quietly(lambda: __import__("onnxruntime"))
        sessions = threading.Thread(target=_quietly, args=(detect.load_sessions, lambda: resnet.session(self.cache_dir)),
                                    name="onnx-sessions")
        sessions.start()
        models.landmarks_5(self.cache_dir)
        load_head()
        sessions.join()
        detect.load_models()
        resnet.session(self.cache_dir)


def _quietly(*calls: Callable[[], object]) -> None:
    for call in calls:
        try:
            call()
        except Exception:  # made again by the caller, which reports it
            pass


def build_chain(settings: Settings) -> list[Backend]:
    """The real-ML links in order; the simulated link is applied by the Scorer itself."""
    chain: list[Backend] = []
    if settings.face_detection_service and settings.face_embedding_service:
        try:
            from .services.client import RemoteBackend
        except ImportError:  # the services arrive in a later release of this module
            pass
        else:
            chain.append(RemoteBackend(settings))
    if settings.fallback_to_local:
        chain.append(LocalBackend(settings.home / "cache"))
    return chain


@dataclass
class Scorer:
    """Scores image bytes through the chain. Models load lazily, once per process."""

    settings: Settings
    chain: list[Backend] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Scorer":
        return cls(settings=settings, chain=build_chain(settings) if settings.use_real_ml else [])

    def score_file(self, path: Path, display: str | None = None) -> ImageResult:
        shown = display if display is not None else str(path)
        start = time.perf_counter()
        try:
            data = images.read_file(path, self.settings.max_image_bytes)
        except ImageError as exc:
            return ImageResult(path=shown, error=str(exc), elapsed_ms=_ms(start))
        return self.score_bytes(data, shown, start=start)

    def score_bytes(self, data: bytes, path: str = "", *, start: float | None = None,
                    min_face: int | None = None) -> ImageResult:
        """One image through the chain. `min_face`: the narrowest face to look for, in the
        image's pixels (None: the settings' FACESCORE_MIN_FACE)."""
        start = time.perf_counter() if start is None else start
        min_face = self.settings.min_face if min_face is None else min_face
        digest = images.sha256(data)
        try:
            image = images.decode(data, max_bytes=self.settings.max_image_bytes,
                                  max_pixels=self.settings.max_image_pixels)
        except ImageError as exc:
            return ImageResult(path=path, error=str(exc), sha256=digest, elapsed_ms=_ms(start))

        failures: list[str] = []
        for backend in self.chain:
            try:
                faces, vectors = backend.analyze(image, data, min_face=min_face)
                result = self._from_model(path, faces, vectors, backend.name)
            except ServiceUnavailable as exc:
                failures.append(f"{backend.name}: {exc}")
                log.warning("%s: %s failed, trying the next link: %s", path, backend.name, exc)
                continue
            except FaceScoreError as exc:
                failures.append(f"{backend.name}: {exc}")
                continue
            except Exception as exc:  # a model crash must not lose the image
                failures.append(f"{backend.name}: {type(exc).__name__}: {exc}")
                log.exception("%s: %s crashed", path, backend.name)
                continue
            return self._finish(result, digest, image, start)

        if self.settings.fallback_to_simulated or not self.settings.use_real_ml:
            from .ml import simulated

            face, pred = simulated.simulate(data, image.width, image.height, self.settings.simulated_ml_threshold)
            result = ImageResult(path=path, faces=[_face_result(face, pred)], source="simulated",
                                 model=simulated.MODEL)
            return self._finish(result, digest, image, start)

        if not self.chain:
            reason = "no scoring path enabled (USE_REAL_ML, FALLBACK_TO_LOCAL and FALLBACK_TO_SIMULATED allow none)"
        else:
            reason = "all scoring paths failed: " + "; ".join(failures)
        return self._finish(ImageResult(path=path, error=reason), digest, image, start)

    def _from_model(self, path: str, faces: list[Face], vectors: np.ndarray, source: str) -> ImageResult:
        from .ml.embed import identity
        from .ml.head import load_head

        head = load_head(self.settings.head_path)
        if not faces:
            return ImageResult(path=path, error=NO_FACE, source=source, model=head.version, embeddings=[])
        preds = head.predict(vectors, faces)
        return ImageResult(
            path=path,
            faces=[_face_result(f, p) for f, p in zip(faces, preds)],
            source=source,
            model=head.version,
            # the store keeps the identity part only: similarity is about who, not about lighting
            embeddings=[[float(v) for v in row] for row in identity(vectors)],
        )

    @staticmethod
    def _finish(result: ImageResult, digest: str, image: images.DecodedImage, start: float) -> ImageResult:
        result.sha256 = digest
        result.width, result.height = image.width, image.height
        result.elapsed_ms = _ms(start)
        return result


def _face_result(face: Face, pred: Prediction) -> FaceResult:
    return FaceResult(
        face=face,
        score=round(float(pred.score), 1),
        vibe=pred.vibe,
        rank=round(float(pred.rank), 1),
        traits={k: round(float(v), 1) for k, v in pred.traits.items()},
    )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
