"""clipguard: find and remove backdoors in CLIP-style image-text models.

``import clipguard`` needs only NumPy and the native core; torch, ONNX Runtime and OpenCV are
imported by the modules that use them, when they are used.
"""

from . import attacks, oracle, regions, scoring, toyworld
from ._backend import HAS_CUDA, available_backends, build_info
from ._core import ClipguardError, __version__
from .attacks import Attack, Triggered, parse_attack, poison
from .evaluate import evaluate
from .models import (
    ClipModel,
    ModelLoadError,
    UnsafeModelError,
    available_toy_models,
    export_onnx,
    load_model,
    save_model_dir,
)
from .scan import ScanConfig, scan
from .toyworld import Scenes
from .vocab import Vocabulary

__all__ = [
    "Attack",
    "ClipModel",
    "ClipguardError",
    "HAS_CUDA",
    "ModelLoadError",
    "ScanConfig",
    "Scenes",
    "Triggered",
    "UnsafeModelError",
    "Vocabulary",
    "__version__",
    "attacks",
    "oracle",
    "available_backends",
    "available_toy_models",
    "build_info",
    "evaluate",
    "export_onnx",
    "load_model",
    "parse_attack",
    "poison",
    "regions",
    "save_model_dir",
    "scan",
    "scoring",
    "toyworld",
]
