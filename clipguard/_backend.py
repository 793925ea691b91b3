"""Which native backends are available, and why not. Never raises at import.

The CPU core (``clipguard._core``) is always built. The CUDA module (``clipguard._cuda``) is built
when a CUDA compiler was found at install time and is *used* only when a GPU is visible.
"""

from __future__ import annotations

import importlib
import platform
from types import ModuleType
from typing import Any

from . import _core

__all__ = ["HAS_CUDA", "available_backends", "build_info", "cuda_device_count", "resolve_backend"]


def _load_cuda() -> tuple[ModuleType | None, int, str]:
    try:
        mod = importlib.import_module("clipguard._cuda")
    except ImportError as exc:
        return None, 0, f"clipguard._cuda not importable ({_core.cuda_status}; {exc})"
    count = int(mod.device_count())
    if count == 0:
        return mod, 0, "clipguard._cuda is built but no CUDA device is visible"
    return mod, count, ""


_cuda, _device_count, _cuda_reason = _load_cuda()

#: True when the CUDA kernels can run here (module built and a GPU visible).
HAS_CUDA: bool = _device_count > 0


def cuda_device_count() -> int:
    """Number of CUDA devices the native CUDA module sees (0 when it is not built)."""
    return _device_count


def available_backends() -> list[str]:
    """Backends the kernels can run on here, best first: ``["cuda", "cpu"]`` or ``["cpu"]``."""
    return ["cuda", "cpu"] if HAS_CUDA else ["cpu"]


def resolve_backend(backend: str) -> Any:
    """The native module for ``backend`` ("auto", "cpu" or "cuda").

    "auto" picks CUDA when it is available; asking for "cuda" where it is not raises with the
    reason.
    """
    if backend == "auto":
        backend = "cuda" if HAS_CUDA else "cpu"
    if backend == "cpu":
        return _core
    if backend == "cuda":
        if not HAS_CUDA:
            raise RuntimeError(f"CUDA backend requested but unavailable: {_cuda_reason}")
        return _cuda
    raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")


def _optional_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed, or broken metadata: report absence
        return None


def build_info() -> dict[str, Any]:
    """What was built and what is live: versions, compiler, CUDA status, ONNX Runtime providers."""
    info: dict[str, Any] = {
        "clipguard": _core.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "compiler": _core.compiler,
        "build_type": _core.build_type,
        "native_threads": _core.num_threads(),
        "cuda_built": _cuda is not None,
        "cuda_build_status": _core.cuda_status,
        "cuda_devices": _device_count,
        "cuda_available": HAS_CUDA,
        "cuda_reason": _cuda_reason or None,
        "backends": available_backends(),
        "numpy": _optional_version("numpy"),
        "torch": _optional_version("torch"),
        "open_clip": _optional_version("open_clip_torch"),
        "opencv": _optional_version("opencv-contrib-python-headless"),
    }
    if _cuda is not None:
        info["cuda_runtime_version"] = int(_cuda.cuda_runtime_version)
    ort_version = _optional_version("onnxruntime-gpu") or _optional_version("onnxruntime")
    info["onnxruntime"] = ort_version
    if ort_version is not None:
        try:
            import onnxruntime as ort

            info["onnxruntime_providers"] = list(ort.get_available_providers())
        except ImportError as exc:
            info["onnxruntime_providers"] = f"import failed: {exc}"
    return info
