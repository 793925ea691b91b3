"""Segmentation oracles: images in, class-agnostic instance masks out (docs/design.md §2).

>>> from clipguard.oracle import get_oracle
>>> oracle = get_oracle("classical")          # OpenCV, the default
>>> masks = oracle(images)                    # per image a bool array [k_i, H, W], best first

Specs: ``"classical"`` (:class:`ClassicalOracle`), ``"onnx:PATH"`` (:class:`OnnxOracle`: a
YOLOv8-seg / FastSAM or mask-logits model in ONNX) and ``"toy"`` (the segmentation network
clipguard trained on its toy worlds, shipped in the package). ``import clipguard.oracle`` needs
only NumPy and the native core; OpenCV and ONNX Runtime are imported when an oracle is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Oracle, check_images, postprocess
from .classical import ClassicalOracle
from .decode import (
    Detections,
    Letterbox,
    assemble_masks,
    decode_mask_logits,
    decode_yolo_seg,
    letterbox_params,
)
from .metrics import OracleQuality, best_iou, measure, measure_world
from .onnx_oracle import OnnxOracle, letterbox_images

__all__ = [
    "SPECS",
    "TOY_MODEL",
    "ClassicalOracle",
    "Detections",
    "Letterbox",
    "OnnxOracle",
    "Oracle",
    "OracleQuality",
    "assemble_masks",
    "best_iou",
    "check_images",
    "decode_mask_logits",
    "decode_yolo_seg",
    "get_oracle",
    "letterbox_images",
    "letterbox_params",
    "measure",
    "measure_world",
    "postprocess",
]

#: The shipped toy segmentation network (``get_oracle("toy")``).
TOY_MODEL = Path(__file__).resolve().parent / "models" / "toy_seg.onnx"

#: Spec forms :func:`get_oracle` accepts.
SPECS = ("classical", "onnx:PATH", "toy")


def get_oracle(spec: str | Oracle = "classical", **kwargs: Any) -> Oracle:
    """The oracle named by ``spec``: ``"classical"``, ``"onnx:PATH"`` or ``"toy"``.

    Keyword arguments go to the oracle's constructor (thresholds, post-processing, ``device`` for
    ONNX). An :class:`Oracle` instance is returned as it is.

    Raises:
        ValueError: an unknown spec, or an empty path.
        ModelLoadError (a ValueError): an ONNX file that is missing, corrupt or of the wrong layout.
        ImportError: OpenCV or ONNX Runtime missing (naming ``clipguard[full]``).
    """
    if isinstance(spec, Oracle):
        if kwargs:
            raise ValueError("keyword arguments cannot be applied to an existing Oracle instance")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"oracle spec must be a string or an Oracle, got {type(spec).__name__}")
    s = spec.strip()
    if s == "classical":
        return ClassicalOracle(**kwargs)
    if s == "toy":
        if not TOY_MODEL.is_file():
            raise FileNotFoundError(
                f"the toy segmentation model is missing from the package ({TOY_MODEL}); rebuild it "
                f"with: python -m clipguard.oracle.train --out {TOY_MODEL}")
        oracle = OnnxOracle(TOY_MODEL, spec="toy", **kwargs)
        oracle.name = "toy"
        return oracle
    if s.startswith("onnx:"):
        path = s[len("onnx:"):]
        if not path:
            raise ValueError("oracle spec 'onnx:PATH' needs a path, e.g. onnx:/models/FastSAM-s.onnx")
        return OnnxOracle(Path(path).expanduser(), **kwargs)
    raise ValueError(f"unknown oracle spec {spec!r}; use one of {', '.join(SPECS)}")
