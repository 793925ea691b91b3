"""clipguard: find and remove backdoors in CLIP-style image-text models.

``import clipguard`` needs only NumPy and the native core; torch, ONNX Runtime and OpenCV are
imported by the modules that use them, when they are used.
"""

import pkgutil

# Run from a source checkout next to a non-editable install (`python -m clipguard` there, or a Ray
# worker started in it), this folder shadows the installed package but lacks the compiled `_core`:
# let the package's submodules also be found in the installed copy.
__path__ = pkgutil.extend_path(__path__, __name__)

from . import attacks, oracle, probe, regions, scoring, toyworld
from ._backend import HAS_CUDA, available_backends, build_info
from ._core import ClipguardError, __version__
from .attacks import Attack, Triggered, parse_attack, poison
from .evaluate import Evaluation, evaluate, evaluate_toy
from .findings import ImageFinding, Suspect, Victim
from .guard import Alarm, Guard, GuardResult
from .models import (
    ClipModel,
    ModelLoadError,
    UnsafeModelError,
    available_toy_models,
    export_onnx,
    load_model,
    save_model_dir,
)
from .oracle import get_oracle
from .probe import Probe, load_probe, load_vocab
from .repair import FinetuneSet, RepairConfig, RepairRecord, RepairResult, build_finetune_set, repair, save_repaired
from .report import ScanReport
from .scan import MODES, ScanConfig, scan
from .synthesis import SynthesisConfig
from .toyworld import Scenes
from .trigger import Trigger
from .vocab import Vocabulary

__all__ = [
    "HAS_CUDA",
    "MODES",
    "__version__",
    "attacks",
    "available_backends",
    "available_toy_models",
    "build_finetune_set",
    "build_info",
    "Evaluation",
    "evaluate",
    "evaluate_toy",
    "export_onnx",
    "get_oracle",
    "load_model",
    "load_probe",
    "load_vocab",
    "oracle",
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
    "Alarm",
    "Attack",
    "ClipModel",
    "ClipguardError",
    "FinetuneSet",
    "Guard",
    "GuardResult",
    "ImageFinding",
    "ModelLoadError",
    "Probe",
    "RepairConfig",
    "RepairRecord",
    "RepairResult",
    "ScanConfig",
    "ScanReport",
    "Scenes",
    "Suspect",
    "SynthesisConfig",
    "Trigger",
    "Triggered",
    "UnsafeModelError",
    "Victim",
    "Vocabulary",
]
