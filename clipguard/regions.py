"""Region views of oracle masks, rendered in one batched native call (Algorithm 1, step 2).

Three views per region, all returned as normalized NCHW float32 model inputs:

- ``crop``: the mask's tight bounding box, pixels outside the mask filled, padded to a centred
  square with the fill colour and resized (FastSAM's way);
- ``isolate``: the whole image with pixels outside the region filled, resized;
- ``occlude``: the whole image with pixels inside the region filled, resized.

Regions are masks ``[R,H,W]`` or boxes ``[R,4]`` (``x0, y0, x1, y1``, end-exclusive; for window
occlusion). Resizing is bilinear with OpenCV's ``INTER_LINEAR`` convention; a view whose canvas
already has the output size is copied exactly.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, Union

import numpy as np

from . import _core
from ._backend import resolve_backend
from ._validate import as_array, check_dtype, check_ndim, index_array

__all__ = ["MODES", "CLIP_MEAN", "CLIP_STD", "render", "boxes", "image_means"]

Mode = Literal["crop", "isolate", "occlude"]
MODES: dict[str, int] = {"crop": 0, "isolate": 1, "occlude": 2}

#: OpenAI CLIP's normalization, the default for open_clip models.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Fill = Union[float, Sequence[float], np.ndarray, str]


def _images(images: Any) -> np.ndarray:
    arr = as_array(images, "images")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    check_ndim(arr, "images", 4, "[N,H,W,3]")
    if arr.shape[-1] != 3:
        raise ValueError(f"images must be [N,H,W,3] RGB, got shape {arr.shape}")
    check_dtype(arr, "images", "u", "uint8")
    if arr.dtype != np.uint8:
        raise TypeError(f"images must have dtype uint8, got {arr.dtype}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"images must have H, W > 0, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _masks(masks: Any) -> np.ndarray:
    arr = as_array(masks, "masks")
    check_ndim(arr, "masks", 3, "[R,H,W]")
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr).view(np.uint8)
    if arr.dtype != np.uint8:
        raise TypeError(f"masks must have dtype bool or uint8, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def boxes(masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes ``int32 [R,4]`` (x0, y0, x1, y1, end-exclusive) and areas ``int64 [R]``.

    An empty mask is not an error: its box is ``(0, 0, 0, 0)`` and its area 0.
    """
    return _core.regions.mask_boxes(_masks(masks))


def image_means(images: Any) -> np.ndarray:
    """Mean colour ``float32 [N,3]`` (0..255) of uint8 images ``[N,H,W,3]``."""
    return _core.regions.image_means(_images(images))


def _fill_per_region(fill: Fill, images: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    r = image_index.shape[0]
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill must be a colour or 'mean', got {fill!r}")
        return np.ascontiguousarray(image_means(images)[image_index], dtype=np.float32)
    arr = np.asarray(fill, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(3, float(arr))
    if arr.shape == (3,):
        arr = np.broadcast_to(arr, (r, 3))
    if arr.shape != (r, 3):
        raise ValueError(f"fill must be a scalar, an RGB triple, [R,3] or 'mean', got shape {arr.shape}")
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255):
        raise ValueError("fill colours must be finite values in [0, 255]")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _channel_triple(x: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.shape == (1,):
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be three finite numbers, got {x!r}")
    if name == "std" and (arr == 0).any():
        raise ValueError(f"std must be nonzero, got {x!r}")
    return arr.astype(np.float32)


def render(
    images: Any,
    masks: Any,
    image_index: Any,
    mode: Mode = "crop",
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    fill: Fill = 0,
    backend: str = "auto",
) -> np.ndarray:
    """Render region views ``float32 [R,3,size,size]``, normalized ``(x/255 - mean)/std``.

    Args:
        images: uint8 ``[N,H,W,3]`` (or one ``[H,W,3]`` image).
        masks: bool/uint8 ``[R,H,W]`` region masks, or ``[R,4]`` integer boxes
            (x0, y0, x1, y1, end-exclusive) inside the image.
        image_index: ``[R]`` index of each region's image.
        mode: "crop", "isolate" or "occlude" (see the module docstring).
        size: output side length.
        mean, std: per-channel normalization on the 0..1 scale.
        fill: colour (scalar or RGB, 0..255), ``[R,3]`` colours, or ``"mean"`` (each image's
            mean colour) for the pixels a view removes.
        backend: "auto", "cpu" or "cuda".

    An empty mask renders as pure fill in crop and isolate mode and as the untouched image in
    occlude mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 1 <= size <= 8192:
        raise ValueError(f"size must be an integer in [1, 8192], got {size!r}")
    imgs = _images(images)
    n, h, w = imgs.shape[:3]
    regions = as_array(masks, "masks")
    if regions.ndim == 2:  # boxes
        if regions.shape[1] != 4:
            raise ValueError(f"boxes must be [R,4] (x0, y0, x1, y1), got shape {regions.shape}")
        if regions.size and regions.dtype.kind not in "iu":
            raise TypeError(f"boxes must have an integer dtype, got {regions.dtype}")
        box = np.ascontiguousarray(regions, dtype=np.int32)
        bad = (box[:, 0] < 0) | (box[:, 1] < 0) | (box[:, 2] > w) | (box[:, 3] > h)
        bad |= (box[:, 0] > box[:, 2]) | (box[:, 1] > box[:, 3])
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"boxes[{i}] = {box[i].tolist()} is not a box (x0 <= x1, y0 <= y1) inside the "
                f"{w}x{h} image"
            )
        mask_arr = None
    else:
        mask_arr = _masks(regions)
        if mask_arr.shape[1:] != (h, w):
            raise ValueError(
                f"masks must be [R,{h},{w}] to match images {imgs.shape}, got {mask_arr.shape}"
            )
        box, _ = _core.regions.mask_boxes(mask_arr)
    r = box.shape[0]
    index = index_array(image_index, "image_index", r, n)
    fills = _fill_per_region(fill, imgs, index)
    native = resolve_backend(backend)
    return native.regions.render(
        imgs, mask_arr, box, index, fills, MODES[mode], int(size),
        _channel_triple(mean, "mean"), _channel_triple(std, "std"),
    )
