"""The ONNX oracle: a segmentation model in ONNX, run by ONNX Runtime, decoded natively.

Input: one tensor ``[B,3,S_h,S_w]`` float32, RGB in [0, 1], the image letterboxed (resized by
``min(S_h/H, S_w/W)``, centred, padded with grey 114/255; :func:`letterbox_images`). A symbolic
batch dimension runs whole batches; a fixed one runs chunks of that size. The layout is told
apart by the outputs:

- **yolo-seg** (YOLOv8-seg, FastSAM): two outputs, ``output0 [B, 4 + nc + nm, A]`` and
  ``output1 [B, nm, ph, pw]``; decoded by :func:`clipguard.oracle.decode.decode_yolo_seg` (native
  box decode, class-agnostic NMS, mask assembly). An export giving ``output0`` as ``[B, A, C]``
  (anchors first, ``A > C``) is transposed.
- **mask-logits**: ``logits [B, K, h, w]`` (one instance per channel, over the whole input), and
  optionally ``scores [B, K]`` (probabilities); decoded by
  :func:`clipguard.oracle.decode.decode_mask_logits`.

Default thresholds come from the file's metadata (``metadata_props`` key ``clipguard.oracle``, a
JSON object with ``score_threshold``, ``iou_threshold``, ``mask_threshold``) when present, else
YOLOv8's (score 0.25, IoU 0.7, mask 0.5); keyword arguments override both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..models.base import ModelLoadError
from .base import Oracle, require
from .decode import Letterbox, decode_mask_logits, decode_yolo_seg, letterbox_params

__all__ = ["LAYOUTS", "METADATA_KEY", "OnnxOracle", "letterbox_images"]

LAYOUTS = ("yolo-seg", "mask-logits")
METADATA_KEY = "clipguard.oracle"
PAD_VALUE = 114


def letterbox_images(images: np.ndarray, input_size: Sequence[int]) -> tuple[np.ndarray, Letterbox]:
    """uint8 ``[N,H,W,3]`` -> (float32 ``[N,3,S_h,S_w]`` in [0, 1], the letterbox used).

    Resizing is OpenCV's ``INTER_LINEAR``; padding is grey 114, as YOLOv8 and FastSAM do.
    """
    cv2 = require("cv2", "letterboxing images for ONNX segmentation models")
    n, h, w = images.shape[:3]
    sh, sw = int(input_size[0]), int(input_size[1])
    lb = letterbox_params((h, w), (sh, sw))
    nh, nw = int(round(h * lb.scale_y)), int(round(w * lb.scale_x))
    top, left = int(lb.pad_y), int(lb.pad_x)
    canvas = np.full((n, sh, sw, 3), PAD_VALUE, np.uint8)
    for i in range(n):
        img = images[i] if (nh, nw) == (h, w) else cv2.resize(images[i], (nw, nh), interpolation=cv2.INTER_LINEAR)
        canvas[i, top:top + nh, left:left + nw] = img
    x = canvas.transpose(0, 3, 1, 2).astype(np.float32)
    x *= np.float32(1 / 255)
    return x, lb


def _dims(shape: Sequence[Any]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


class OnnxOracle(Oracle):
    """A segmentation model in ONNX (see the module docstring for the layouts).

    Args:
        path: the ``.onnx`` file (checked before ONNX Runtime sees it: no custom operators, no
            external data outside its folder).
        device: "auto", "cpu", "cuda" or "cuda:N" (ONNX Runtime execution providers, checked).
        input_size: (S_h, S_w) for a model whose input size is symbolic.
        score_threshold, iou_threshold, mask_threshold, max_det: decoding (defaults from the
            file's metadata, else YOLOv8's).
        batch_size: images per ONNX Runtime call.
        backend: native decode backend, "auto", "cpu" or "cuda".
        Other keyword arguments: the shared post-processing (:class:`~clipguard.oracle.Oracle`).
    """

    name = "onnx"

    def __init__(self, path: str | Path, *, device: str = "auto",
                 input_size: Sequence[int] | None = None, score_threshold: float | None = None,
                 iou_threshold: float | None = None, mask_threshold: float | None = None,
                 max_det: int = 300, batch_size: int = 32, backend: str = "auto",
                 spec: str | None = None, **kwargs: Any) -> None:
        from ..models.onnx_runtime import choose_providers, ort_session
        from ..models.safety import check_onnx_file

        super().__init__(**kwargs)
        require("onnxruntime", "the ONNX oracle")
        self.path = Path(path)
        proto = check_onnx_file(self.path)
        meta: dict[str, Any] = {}
        for prop in proto.metadata_props:
            if prop.key == METADATA_KEY:
                try:
                    meta = json.loads(prop.value)
                except ValueError:
                    raise ModelLoadError(f"{self.path}: metadata {METADATA_KEY!r} is not JSON") from None
                if not isinstance(meta, dict):
                    raise ModelLoadError(f"{self.path}: metadata {METADATA_KEY!r} must be a JSON object")
        self.meta = meta
        providers, asked = choose_providers(device)
        self._sess = ort_session(self.path, providers, asked)
        self.providers = list(self._sess.get_providers())
        self.layout, self.input_size, self._batch = self._inspect(input_size)
        defaults = {"score_threshold": 0.25, "iou_threshold": 0.7, "mask_threshold": 0.5}
        given = {"score_threshold": score_threshold, "iou_threshold": iou_threshold,
                 "mask_threshold": mask_threshold}
        for key, default in defaults.items():
            value = given[key] if given[key] is not None else meta.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
            setattr(self, key, float(value))
        self.score_threshold: float
        self.iou_threshold: float
        self.mask_threshold: float
        if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
            raise ValueError(f"max_det must be a positive integer, got {max_det!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.max_det = max_det
        self.batch_size = self._batch or batch_size
        self.backend = backend
        self._spec = spec or f"onnx:{self.path}"

    @property
    def spec(self) -> str:
        return self._spec

    def _inspect(self, input_size: Sequence[int] | None) -> tuple[str, tuple[int, int], int | None]:
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        where = str(self.path)
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelLoadError(
                f"{where}: a segmentation model needs one image input [B,3,S,S], got "
                f"{[(i.name, i.shape) for i in inputs]}")
        if inputs[0].type != "tensor(float)":
            raise ModelLoadError(f"{where}: input {inputs[0].name!r} must be float32, got {inputs[0].type}")
        b, c, sh, sw = _dims(inputs[0].shape)
        if c not in (None, 3):
            raise ModelLoadError(f"{where}: input {inputs[0].name!r} has {c} channels, expected 3 (RGB)")
        if sh is None or sw is None:
            if input_size is None:
                raise ModelLoadError(f"{where}: the input size is symbolic ({inputs[0].shape}); pass input_size=(S, S)")
            sh, sw = (int(v) for v in input_size)
        elif input_size is not None and tuple(int(v) for v in input_size) != (sh, sw):
            raise ValueError(f"input_size {tuple(input_size)} does not match the model's input {(sh, sw)}")
        ranks = [len(o.shape) for o in outputs]
        if ranks[:2] == [3, 4]:
            layout = "yolo-seg"
        elif ranks[:1] == [4] and (len(ranks) == 1 or ranks[1] == 2):
            layout = "mask-logits"
        else:
            raise ModelLoadError(
                f"{where}: outputs {[(o.name, o.shape) for o in outputs]} fit neither layout: "
                "yolo-seg needs output0 [B, 4+nc+nm, A] and output1 [B, nm, h, w]; mask-logits "
                "needs logits [B, K, h, w] and optionally scores [B, K]")
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in outputs[:2 if len(outputs) > 1 else 1]]
        return layout, (sh, sw), b

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The model's raw outputs for uint8 ``[N,H,W,3]`` images (letterboxed), batch by batch
        concatenated."""
        x, _ = letterbox_images(images, self.input_size)
        return self._run(x)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        outs: list[list[np.ndarray]] = []
        for i in range(0, x.shape[0], self.batch_size):
            chunk = x[i:i + self.batch_size]
            n = chunk.shape[0]
            if self._batch is not None and n < self._batch:  # fixed batch: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((self._batch - n, *chunk.shape[1:]), np.float32)])
            res = self._sess.run(self._output_names, {self._input_name: chunk})
            outs.append([np.asarray(r)[:n] for r in res])
        return [np.concatenate([o[k] for o in outs]) for k in range(len(self._output_names))]

    def _segment(self, images: np.ndarray) -> list[np.ndarray]:
        h, w = images.shape[1:3]
        x, lb = letterbox_images(images, self.input_size)
        outs = self._run(x)
        if self.layout == "yolo-seg":
            o0, o1 = outs
            if o0.ndim == 3 and o0.shape[1] > o0.shape[2]:
                o0 = o0.transpose(0, 2, 1)
            # Post-processing keeps max_regions masks: assembling hundreds more (FastSAM gives up
            # to 300 per image) would only cost time and memory.
            max_det = self.max_det if self.max_regions is None else min(self.max_det, 4 * self.max_regions)
            dets = decode_yolo_seg(o0, o1, (h, w), input_size=self.input_size, letterbox=lb,
                                   score_threshold=self.score_threshold,
                                   iou_threshold=self.iou_threshold, max_det=max_det,
                                   mask_threshold=self.mask_threshold, backend=self.backend)
        else:
            scores = outs[1] if len(outs) > 1 else None
            dets = decode_mask_logits(outs[0], (h, w), input_size=self.input_size, letterbox=lb,
                                      scores=scores, score_threshold=self.score_threshold,
                                      mask_threshold=self.mask_threshold, backend=self.backend)
            # best first within each image
            order = np.lexsort((-dets.scores, dets.image_index))
            return [m for m in _split(dets.masks[order], dets.image_index[order], len(images))]
        return dets.per_image(len(images))


def _split(masks: np.ndarray, index: np.ndarray, n: int) -> list[np.ndarray]:
    bounds = np.searchsorted(index, np.arange(n + 1))
    return [masks[bounds[i]:bounds[i + 1]] for i in range(n)]
