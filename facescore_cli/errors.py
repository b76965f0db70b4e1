"""A small exception hierarchy that callers can catch precisely.

Every message is one line a person can act on; it ends up in the `error` column.
"""
from __future__ import annotations


class FaceScoreError(Exception):
    """Base class of every error facescore raises on purpose."""


class ImageError(FaceScoreError):
    """The bytes are not an image we can score (empty, truncated, corrupt, too large...)."""


class NoFaceFound(FaceScoreError):
    """The image decoded but holds no face."""

    def __init__(self, message: str = "no face found") -> None:
        super().__init__(message)


class ServiceUnavailable(FaceScoreError):
    """A remote ML service could not be used for this image (down, slow, malformed answer)."""


class ConfigError(FaceScoreError):
    """The settings are inconsistent or point nowhere; exit code 2."""


class ScoringFailed(FaceScoreError):
    """Every link of the fallback chain was disabled or failed for this image."""
