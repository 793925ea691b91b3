"""clipguard: find and remove backdoors in CLIP-style image-text models.

``import clipguard`` needs only NumPy and the native core; torch, ONNX Runtime and OpenCV are
imported by the modules that use them.
"""

from . import regions, scoring
from ._backend import HAS_CUDA, available_backends, build_info
from ._core import ClipguardError, __version__

__all__ = [
    "ClipguardError",
    "HAS_CUDA",
    "__version__",
    "available_backends",
    "build_info",
    "regions",
    "scoring",
]
