"""Loading CLIP models, running them (ONNX Runtime or PyTorch), exporting them, and reading
untrusted model files safely.

``import clipguard.models`` is cheap: torch, onnxruntime, open_clip, transformers and OpenCV are
imported when a model is loaded.
"""

from __future__ import annotations

from .base import CARD_FIELDS, ClipModel, ModelLoadError, UnsafeModelError, normalize_card
from .export import export_onnx, save_model_dir
from .loading import SPEC_KINDS, available_toy_models, cache_dir, load_model, parse_spec, torch_twin
from .onnx_runtime import OnnxClipModel
from .torch_runtime import TOY_ARCH, TorchClipModel, open_clip_module

__all__ = [
    "CARD_FIELDS",
    "SPEC_KINDS",
    "TOY_ARCH",
    "ClipModel",
    "ModelLoadError",
    "OnnxClipModel",
    "TorchClipModel",
    "UnsafeModelError",
    "available_toy_models",
    "cache_dir",
    "export_onnx",
    "load_model",
    "normalize_card",
    "open_clip_module",
    "parse_spec",
    "save_model_dir",
    "torch_twin",
]
