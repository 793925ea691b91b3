"""Native decoding of segmentation-model outputs into instance masks.

Two layouts, both on a letterboxed model input of ``S_h x S_w`` pixels (``input = image * scale +
pad`` per axis, see :func:`letterbox_params`):

- **YOLOv8-seg / FastSAM** (:func:`decode_yolo_seg`): ``output0 [B, 4 + nc + nm, A]`` holds per
  anchor the box ``cx, cy, w, h`` in input pixels, ``nc`` class scores (sigmoid already applied;
  FastSAM has ``nc = 1``) and ``nm`` mask coefficients; ``output1 [B, nm, ph, pw]`` the mask
  prototypes over the whole input (``ph = S_h / 4`` for YOLOv8). Decoding: score = best class
  score, kept when ``> score_threshold``; the ``max_candidates`` best enter a class-agnostic greedy
  NMS (suppressed when IoU ``> iou_threshold`` with a kept box), at most ``max_det`` kept per
  image; mask = ``sigmoid(coeffs . protos)`` sampled bilinearly at each image pixel's centre
  mapped through the letterbox (half-pixel centres, clamped borders), ``> mask_threshold``, and
  zero outside the box (pixel centres in ``[x0, x1) x [y0, y1)``, the box in image pixels,
  clipped). Box decode, NMS and mask assembly run in the native core (CPU or CUDA).
- **mask logits** (:func:`decode_mask_logits`): ``logits [B, K, h, w]``, one instance per channel,
  over the whole input; optional ``scores [B, K]`` (probabilities) choose which are kept. Masks are
  the logits sampled the same way, ``sigmoid > mask_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .._backend import resolve_backend
from .._validate import as_array, check_finite, check_ndim, index_array

__all__ = [
    "Detections",
    "Letterbox",
    "assemble_masks",
    "decode_mask_logits",
    "decode_yolo_seg",
    "letterbox_params",
]


@dataclass(frozen=True)
class Letterbox:
    """Where the image sits in the model input: ``input = image * scale + pad`` per axis."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def array(self) -> np.ndarray:
        arr = np.array([self.scale_x, self.scale_y, self.pad_x, self.pad_y], dtype=np.float32)
        if not np.isfinite(arr).all() or arr[0] <= 0 or arr[1] <= 0:
            raise ValueError(f"letterbox scales must be finite and > 0 and pads finite, got {self}")
        return arr


def _size_pair(x: Any, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in x)
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in x)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (1 <= h <= 32768 and 1 <= w <= 32768):
        raise ValueError(f"{name} must be a pair of integers (height, width) in [1, 32768], got {x!r}")
    return h, w


def letterbox_params(image_size: Sequence[int], input_size: Sequence[int]) -> Letterbox:
    """The letterbox of an ``image_size`` (H, W) image in an ``input_size`` (S_h, S_w) input.

    The image is resized by ``r = min(S_h/H, S_w/W)`` to ``(round(H r), round(W r))`` and centred
    (padding ``(S - new) // 2`` before it), as YOLOv8 and FastSAM preprocess; the returned scales
    are the exact per-axis factors ``new / old``.
    """
    h, w = _size_pair(image_size, "image_size")
    sh, sw = _size_pair(input_size, "input_size")
    r = min(sh / h, sw / w)
    nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
    return Letterbox(nw / w, nh / h, float((sw - nw) // 2), float((sh - nh) // 2))


@dataclass(frozen=True)
class Detections:
    """Decoded instances of a batch, image by image, each image's by descending score."""

    boxes: np.ndarray  # float32 [D,4] (x0, y0, x1, y1) in image pixels, clipped to the image
    scores: np.ndarray  # float32 [D]
    labels: np.ndarray  # int32 [D] best class (0 for class-agnostic models)
    image_index: np.ndarray  # int64 [D]
    anchors: np.ndarray  # int64 [D] anchor (or channel) each detection came from
    masks: np.ndarray  # bool [D,H,W]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def per_image(self, n_images: int) -> list[np.ndarray]:
        """The masks split by image: ``n_images`` bool arrays ``[k_i,H,W]`` (``k_i`` may be 0)."""
        order = np.searchsorted(self.image_index, np.arange(n_images + 1))
        return [self.masks[order[i]:order[i + 1]] for i in range(n_images)]


def _float_array(x: Any, name: str, ndim: int, layout: str) -> np.ndarray:
    arr = as_array(x, name)
    check_ndim(arr, name, ndim, layout)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name} must be a float array {layout}, got dtype {arr.dtype}")
    check_finite(arr, name)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _threshold(x: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {x!r}") from None
    if not np.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {x!r}")
    return v


def _positive_int(x: Any, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return int(x)


def _geometry(image_size: Any, input_size: Any, letterbox: Letterbox | None) -> tuple[tuple[int, int], tuple[int, int], np.ndarray]:
    image_hw = _size_pair(image_size, "image_size")
    input_hw = _size_pair(input_size, "input_size")
    if letterbox is None:
        letterbox = letterbox_params(image_hw, input_hw)
    elif not isinstance(letterbox, Letterbox):
        raise TypeError(f"letterbox must be a Letterbox, got {type(letterbox).__name__}")
    return image_hw, input_hw, letterbox.array()


def assemble_masks(
    coeffs: Any,
    protos: Any,
    image_index: Any,
    boxes: Any,
    image_size: Sequence[int],
    *,
    input_size: Sequence[int],
    letterbox: Letterbox | None = None,
    threshold: float = 0.5,
    backend: str = "auto",
) -> np.ndarray:
    """Instance masks bool ``[D,H,W]`` from prototype coefficients (the second half of decoding).

    Args:
        coeffs: ``[D, nm]`` mask coefficients; protos: ``[B, nm, ph, pw]`` prototypes;
        image_index: ``[D]`` image of each detection; boxes: ``[D,4]`` (x0, y0, x1, y1) in image
        pixels, masks are zero outside; image_size: (H, W) of the output masks;
        input_size: (S_h, S_w) of the model input the prototypes cover; letterbox: the image's
        place in that input (default: :func:`letterbox_params`); threshold: on the upsampled
        sigmoid.
    """
    p = _float_array(protos, "protos", 4, "[B, nm, ph, pw]")
    if p.shape[1] == 0 or p.shape[2] == 0 or p.shape[3] == 0:
        raise ValueError(f"protos must be non-empty [B, nm, ph, pw], got shape {p.shape}")
    c = _float_array(coeffs, "coeffs", 2, "[D, nm]")
    if c.shape[1] != p.shape[1]:
        raise ValueError(f"coeffs has {c.shape[1]} coefficients per detection, protos has {p.shape[1]} prototypes")
    b = _float_array(boxes, "boxes", 2, "[D, 4]")
    if b.shape != (c.shape[0], 4):
        raise ValueError(f"boxes must be [{c.shape[0]}, 4] to match coeffs, got {b.shape}")
    index = index_array(image_index, "image_index", c.shape[0], p.shape[0])
    (h, w), (sh, sw), lb = _geometry(image_size, input_size, letterbox)
    thr = _threshold(threshold, "threshold")
    native = resolve_backend(backend)
    out = native.decode.masks(c, p, index, b, sh, sw, h, w, lb, thr)
    return out.view(np.bool_)


def decode_yolo_seg(
    output0: Any,
    output1: Any,
    image_size: Sequence[int],
    *,
    input_size: Sequence[int] | None = None,
    letterbox: Letterbox | None = None,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    max_det: int = 300,
    max_candidates: int = 30000,
    mask_threshold: float = 0.5,
    backend: str = "auto",
) -> Detections:
    """Decode YOLOv8-seg / FastSAM outputs into boxes, scores and instance masks.

    Args:
        output0: ``[B, 4 + nc + nm, A]`` boxes (cx, cy, w, h; input pixels), class scores and mask
            coefficients per anchor; output1: ``[B, nm, ph, pw]`` mask prototypes.
        image_size: (H, W) of the original images (all of the batch).
        input_size: (S_h, S_w) of the model input; default ``(4 ph, 4 pw)`` (YOLOv8's stride-4
            prototypes).
        letterbox: the image's place in the input; default :func:`letterbox_params`.
        score_threshold, iou_threshold, max_det, max_candidates, mask_threshold: see the module
            docstring (defaults are YOLOv8's predict defaults).
        backend: "auto", "cpu" or "cuda".
    """
    preds = _float_array(output0, "output0", 3, "[B, 4 + nc + nm, A]")
    protos = _float_array(output1, "output1", 4, "[B, nm, ph, pw]")
    if protos.shape[0] != preds.shape[0]:
        raise ValueError(f"output0 has batch {preds.shape[0]}, output1 has batch {protos.shape[0]}")
    nm = protos.shape[1]
    if nm == 0 or protos.shape[2] == 0 or protos.shape[3] == 0:
        raise ValueError(f"output1 must be non-empty [B, nm, ph, pw], got shape {protos.shape}")
    if preds.shape[1] < 5 + nm:
        raise ValueError(
            f"output0 must be [B, 4 + nc + {nm}, A] with nc >= 1 for {nm} prototypes, got shape "
            f"{preds.shape} (a [B, A, C] export must be transposed to [B, C, A])"
        )
    if input_size is None:
        input_size = (4 * protos.shape[2], 4 * protos.shape[3])
    (h, w), (sh, sw), lb = _geometry(image_size, input_size, letterbox)
    score = _threshold(score_threshold, "score_threshold")
    iou = _threshold(iou_threshold, "iou_threshold", 0.0, 1.0)
    mthr = _threshold(mask_threshold, "mask_threshold")
    max_det = _positive_int(max_det, "max_det")
    max_candidates = _positive_int(max_candidates, "max_candidates")
    native = resolve_backend(backend)
    boxes, scores, labels, index, anchors, coeffs, _ = native.decode.detect(
        preds, nm, h, w, lb, score, iou, max_det, max_candidates
    )
    masks = native.decode.masks(coeffs, protos, index, boxes, sh, sw, h, w, lb, mthr)
    return Detections(boxes, scores, labels, index, anchors, masks.view(np.bool_))


def decode_mask_logits(
    logits: Any,
    image_size: Sequence[int],
    *,
    input_size: Sequence[int],
    letterbox: Letterbox | None = None,
    scores: Any = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    backend: str = "auto",
) -> Detections:
    """Decode a plain mask-logits model: ``logits [B, K, h, w]`` (one instance per channel, over
    the whole ``input_size`` input), optional ``scores [B, K]`` in [0, 1].

    An instance is kept when its score is ``> score_threshold`` (all are, without scores) and its
    mask is not empty. Boxes are the tight boxes of the masks; labels are 0.
    """
    lg = _float_array(logits, "logits", 4, "[B, K, h, w]")
    bsz, k = lg.shape[:2]
    if lg.shape[2] == 0 or lg.shape[3] == 0:
        raise ValueError(f"logits must have h, w > 0, got shape {lg.shape}")
    (h, w), (sh, sw), lb = _geometry(image_size, input_size, letterbox)
    if scores is None:
        sc = np.ones((bsz, k), np.float32)
    else:
        sc = _float_array(scores, "scores", 2, "[B, K]")
        if sc.shape != (bsz, k):
            raise ValueError(f"scores must be [{bsz}, {k}] to match logits, got {sc.shape}")
    thr = _threshold(score_threshold, "score_threshold")
    mthr = _threshold(mask_threshold, "mask_threshold")
    img, ch = np.nonzero(sc > thr)
    if k == 0 or img.size == 0:
        empty = np.zeros((0,), np.int64)
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                          np.zeros(0, np.int32), empty, empty, np.zeros((0, h, w), bool))
    coeffs = np.zeros((img.size, k), np.float32)
    coeffs[np.arange(img.size), ch] = 1.0
    full = np.broadcast_to(np.array([0, 0, w, h], np.float32), (img.size, 4))
    masks = assemble_masks(coeffs, lg, img, np.ascontiguousarray(full), (h, w),
                           input_size=(sh, sw), letterbox=Letterbox(*lb.tolist()),
                           threshold=mthr, backend=backend)
    from ..regions import boxes as mask_boxes

    tight, areas = mask_boxes(masks)
    keep = areas > 0
    return Detections(tight[keep].astype(np.float32), sc[img, ch][keep].astype(np.float32),
                      np.zeros(int(keep.sum()), np.int32), img[keep].astype(np.int64),
                      ch[keep].astype(np.int64), masks[keep])
