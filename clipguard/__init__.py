"""clipguard: find and remove backdoors in CLIP-style image-text models.

``import clipguard`` needs only NumPy and the native core; torch, ONNX Runtime and OpenCV are
imported by the modules that use them, when they are used.
"""

from . import attacks, oracle, probe, regions, scoring, toyworld
from ._backend import HAS_CUDA, available_backends, build_info
from ._core import ClipguardError, __version__
from .attacks import Attack, Triggered, parse_attack, poison
from .evaluate import evaluate, evaluate_toy
from .models import (
    ClipModel,
    ModelLoadError,
    UnsafeModelError,
    available_toy_models,
    export_onnx,
    load_model,
    save_model_dir,
)
from .repair import FinetuneSet, RepairConfig, RepairResult, repair, save_repaired
from .scan import ScanConfig, scan
from .toyworld import Scenes
from .vocab import Vocabulary

__all__ = [
    "Attack",
    "ClipModel",
    "ClipguardError",
    "FinetuneSet",
    "HAS_CUDA",
    "ModelLoadError",
    "RepairConfig",
    "RepairResult",
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
    "evaluate_toy",
    "export_onnx",
    "load_model",
    "parse_attack",
    "poison",
    "probe",
    "regions",
    "repair",
    "save_model_dir",
    "save_repaired",
    "scan",
    "scoring",
    "toyworld",
]
