"""facescore: score faces in photos for perceived attractiveness, as rated by a population of raters."""
from .errors import ConfigError, FaceScoreError, ImageError, NoFaceFound, ScoringFailed, ServiceUnavailable

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FaceScoreError",
    "ImageError",
    "NoFaceFound",
    "ScoringFailed",
    "ServiceUnavailable",
    "__version__",
]
