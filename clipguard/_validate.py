"""First-line argument checks for the native wrappers: clear ValueError/TypeError naming the
argument, its shape and dtype, before anything reaches C++ (which checks again)."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}: {exc}") from None


def check_ndim(x: np.ndarray, name: str, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {layout} ({ndim} dims), got shape {x.shape}")


def check_dtype(x: np.ndarray, name: str, kinds: str, expected: str) -> None:
    if x.dtype.kind not in kinds:
        raise TypeError(f"{name} must have dtype {expected}, got {x.dtype}")


def check_finite(x: np.ndarray, name: str) -> None:
    if x.size and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")


def index_array(x: Any, name: str, length: int, upper: int) -> np.ndarray:
    """An int64 [length] array of indices in [0, upper)."""
    arr = as_array(x, name)
    check_ndim(arr, name, 1, f"[{length}]")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.shape[0] != length:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {length}")
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper}), got values in [{int(arr.min())}, {int(arr.max())}]"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)
