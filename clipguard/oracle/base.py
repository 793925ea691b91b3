"""The oracle interface and the post-processing every oracle shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["Oracle", "check_images", "postprocess", "require"]


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency or raise an ImportError naming the extra that provides it."""
    from ..models.base import require as _require

    return _require(module, extra="full", purpose=purpose)


def check_images(images: Any) -> np.ndarray:
    """uint8 ``[N,H,W,3]`` (a single ``[H,W,3]`` image becomes ``N = 1``), C-contiguous."""
    if not isinstance(images, np.ndarray):
        try:
            images = np.asarray(images)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"images must be a uint8 array [N,H,W,3], got {type(images).__name__}: {exc}") from None
    if images.ndim == 3 and images.shape[-1] == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N,H,W,3] RGB, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must have dtype uint8, got {images.dtype}")
    if images.shape[1] < 2 or images.shape[2] < 2:
        raise ValueError(f"images must be at least 2x2 pixels, got shape {images.shape}")
    return np.ascontiguousarray(images)


def postprocess(masks: np.ndarray, *, min_area: int, max_area: int, merge_iou: float,
                max_regions: int | None) -> np.ndarray:
    """Drop masks outside ``[min_area, max_area]`` pixels and merge near-duplicates.

    ``masks`` (bool ``[k,H,W]``) come best first. A mask whose IoU with an earlier kept mask is
    above ``merge_iou`` is merged into it (their union takes the earlier one's place); at most
    ``max_regions`` masks are returned, best first (masks ranked after the ``max_regions``-th
    kept one are not looked at).
    """
    from ..regions import boxes as mask_boxes

    if masks.shape[0] == 0:
        return masks
    boxes, areas = mask_boxes(masks)
    ok = (areas >= min_area) & (areas <= max_area)
    masks, boxes, areas = masks[ok], boxes[ok].astype(np.int64), areas[ok]
    kept: list[int] = []
    merged: dict[int, np.ndarray] = {}
    for i in range(masks.shape[0]):
        if max_regions is not None and len(kept) >= max_regions:
            break  # the rest could only be dropped or grow a kept mask by a near-duplicate
        bi = boxes[i]
        target = -1
        for j in kept:
            bj = boxes[j]
            x0, y0 = max(bi[0], bj[0]), max(bi[1], bj[1])
            x1, y1 = min(bi[2], bj[2]), min(bi[3], bj[3])
            if x0 >= x1 or y0 >= y1:
                continue
            mj = merged.get(j, masks[j])
            inter = int(np.count_nonzero(masks[i, y0:y1, x0:x1] & mj[y0:y1, x0:x1]))
            union = int(areas[i]) + int(areas[j]) - inter
            if union > 0 and inter / union > merge_iou:
                target = j
                break
        if target < 0:
            kept.append(i)
            continue
        mj = merged.get(target, masks[target]) | masks[i]
        merged[target] = mj
        ys, xs = np.nonzero(mj.any(1))[0], np.nonzero(mj.any(0))[0]
        boxes[target] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        areas[target] = int(np.count_nonzero(mj))
    if not kept:
        return np.zeros((0, *masks.shape[1:]), bool)
    return np.stack([merged.get(j, masks[j]) for j in kept])


class Oracle(ABC):
    """Images in, class-agnostic instance masks out.

    ``oracle(images)`` takes uint8 ``[N,H,W,3]`` RGB (or one ``[H,W,3]`` image) and returns a list
    of ``N`` bool arrays ``[k_i,H,W]``, best region first (``k_i`` may be 0). Every oracle applies
    the same post-processing: masks smaller than ``min_area`` pixels (or ``min_area_fraction`` of
    the image, whichever is larger) or larger than ``max_area_fraction`` of the image are dropped,
    and a mask whose IoU with a better one exceeds ``merge_iou`` is merged into it; at most
    ``max_regions`` are kept.
    """

    #: short name of the oracle kind ("classical", "onnx", "toy")
    name: str = ""

    def __init__(self, *, min_area: int = 8, min_area_fraction: float = 0.002,
                 max_area_fraction: float = 0.6, merge_iou: float = 0.8,
                 max_regions: int | None = 12) -> None:
        if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 1:
            raise ValueError(f"min_area must be a positive integer (pixels), got {min_area!r}")
        for name, v in (("min_area_fraction", min_area_fraction), ("max_area_fraction", max_area_fraction),
                        ("merge_iou", merge_iou)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        if max_regions is not None and (isinstance(max_regions, bool) or not isinstance(max_regions, (int, np.integer))
                                        or max_regions < 1):
            raise ValueError(f"max_regions must be a positive integer or None, got {max_regions!r}")
        self.min_area = int(min_area)
        self.min_area_fraction = float(min_area_fraction)
        self.max_area_fraction = float(max_area_fraction)
        self.merge_iou = float(merge_iou)
        self.max_regions = None if max_regions is None else int(max_regions)

    @property
    def spec(self) -> str:
        """The spec string :func:`clipguard.oracle.get_oracle` builds this oracle from."""
        return self.name

    def area_limits(self, height: int, width: int) -> tuple[int, int]:
        """(min, max) region area in pixels for an image of this size."""
        pixels = height * width
        lo = max(self.min_area, int(np.ceil(self.min_area_fraction * pixels)))
        return lo, int(self.max_area_fraction * pixels)

    def __call__(self, images: Any) -> list[np.ndarray]:
        imgs = check_images(images)
        n, h, w = imgs.shape[:3]
        if n == 0:
            return []
        raw = self._segment(imgs)
        if len(raw) != n:
            raise RuntimeError(f"{type(self).__name__} returned {len(raw)} mask sets for {n} images")
        lo, hi = self.area_limits(h, w)
        return [postprocess(np.asarray(m, dtype=bool).reshape(-1, h, w), min_area=lo, max_area=hi,
                            merge_iou=self.merge_iou, max_regions=self.max_regions) for m in raw]

    @abstractmethod
    def _segment(self, images: np.ndarray) -> list[np.ndarray]:
        """Raw masks per image, best first (post-processing is applied by ``__call__``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r})"
