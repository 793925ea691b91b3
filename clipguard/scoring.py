"""Region scoring: the batched mask-region embedding comparison and the label anomaly index.

``compare`` is Algorithm 1's step 3 for a whole probe set at once: every region and every image
against the vocabulary, fused so the full ``[R,C]`` probability matrix is never materialized.
``label_anomaly`` is Algorithm 2's outlier statistic over labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from ._backend import resolve_backend
from ._validate import as_array, check_finite, check_ndim, index_array

__all__ = ["Comparison", "TriggerScores", "compare", "label_anomaly", "probabilities", "trigger_scores"]


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`. Labels are sorted by descending probability."""

    region_labels: np.ndarray  # int32 [R,k]
    region_probs: np.ndarray  # float32 [R,k]
    image_labels: np.ndarray  # int32 [N,k]
    image_probs: np.ndarray  # float32 [N,k]
    region_image_cos: np.ndarray  # float32 [R]: cosine of each region with its parent image


def _embeddings(x: Any, name: str, dim: int | None) -> np.ndarray:
    arr = as_array(x, name)
    check_ndim(arr, name, 2, "[rows, D]")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, text_emb has {dim}")
    check_finite(arr, name)
    return np.ascontiguousarray(arr, dtype=np.float32)


def compare(
    region_emb: Any,
    image_emb: Any,
    image_index: Any,
    text_emb: Any,
    scale: float = 100.0,
    k: int = 5,
    backend: str = "auto",
) -> Comparison:
    """Compare region and image embeddings with the label texts.

    All embeddings are L2-normalized first (a zero vector stays zero). Probabilities are
    ``softmax(scale * cos)`` over the ``C`` labels; only the top ``k`` are returned. Ties go to the
    lower label index.

    Args:
        region_emb: ``[R,D]`` region embeddings; image_emb: ``[N,D]`` whole-image embeddings;
        image_index: ``[R]`` parent image of each region; text_emb: ``[C,D]`` label embeddings;
        scale: the model's logit scale; k: labels kept per row, ``1 <= k <= C``.
    """
    text = _embeddings(text_emb, "text_emb", None)
    c, d = text.shape
    if c == 0 or d == 0:
        raise ValueError(f"text_emb must be non-empty [C,D], got shape {text.shape}")
    regions = _embeddings(region_emb, "region_emb", d)
    images = _embeddings(image_emb, "image_emb", d)
    index = index_array(image_index, "image_index", regions.shape[0], images.shape[0])
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ValueError(f"k must be an integer in [1, {c}], got {k!r}")
    native = resolve_backend(backend)
    return Comparison(*native.scoring.compare(regions, images, index, text, float(scale), int(k)))


def label_anomaly(counts: Any, totals: Any) -> np.ndarray:
    """Anomaly index per label of the rate ``counts / totals`` (float64 ``[C]``).

    ``(rate - median) / (1.4826 * MAD)`` over the labels with ``totals > 0`` — Neural Cleanse's
    rule, signed so that only an excess is positive; an index above ~2 marks an outlier. Labels
    with ``totals == 0`` get 0. Where the MAD is 0 (most labels identical), the mean absolute
    deviation stands in; where that is 0 too, every index is 0.
    """
    cnt = as_array(counts, "counts")
    tot = as_array(totals, "totals")
    check_ndim(cnt, "counts", 1, "[C]")
    if tot.shape != cnt.shape:
        raise ValueError(f"totals must have the shape of counts {cnt.shape}, got {tot.shape}")
    for arr, name in ((cnt, "counts"), (tot, "totals")):
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be numeric, got {arr.dtype}")
        check_finite(arr.astype(np.float64), name)
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} must be non-negative")
    return _core.scoring.label_anomaly(
        np.ascontiguousarray(cnt, dtype=np.float64), np.ascontiguousarray(tot, dtype=np.float64)
    )


@dataclass(frozen=True)
class TriggerScores:
    """Result of :func:`trigger_scores`, one entry per region. Regions of images without a
    candidate have NaN probabilities, top-1 labels -1 and score 0."""

    p_image: np.ndarray  # float32 [R]: the parent image's probability of its candidate label
    p_occluded: np.ndarray  # float32 [R]: the same with the region occluded
    p_isolated: np.ndarray  # float32 [R]: the region alone (isolate view)
    occluded_top1: np.ndarray  # int32 [R]
    isolated_top1: np.ndarray  # int32 [R]
    score: np.ndarray  # float32 [R]: drop * (0.5 + 0.5 * p_isolated), drop = 1 - p_occluded / p_image


def trigger_scores(
    occluded_emb: Any,
    isolated_emb: Any,
    image_emb: Any,
    image_index: Any,
    candidate: Any,
    text_emb: Any,
    scale: float = 100.0,
    backend: str = "auto",
) -> TriggerScores:
    """Score every region as the possible trigger of its image's candidate label (Algorithm 1,
    step 5): how much of the image's probability for the candidate disappears when the region is
    occluded (the counterfactual), weighted up when the region alone also shows the label.

    Args:
        occluded_emb, isolated_emb: ``[R,D]`` embeddings of each region's occlude and isolate views.
        image_emb: ``[N,D]``; image_index: ``[R]`` parent image of each region.
        candidate: ``[N]`` candidate label per image, -1 where the image has none.
        text_emb: ``[C,D]`` label embeddings; scale: the model's logit scale.
        backend: "auto", "cpu" or "cuda".
    """
    text = _embeddings(text_emb, "text_emb", None)
    c, d = text.shape
    if c == 0 or d == 0:
        raise ValueError(f"text_emb must be non-empty [C,D], got shape {text.shape}")
    occ = _embeddings(occluded_emb, "occluded_emb", d)
    iso = _embeddings(isolated_emb, "isolated_emb", d)
    if iso.shape != occ.shape:
        raise ValueError(f"isolated_emb {iso.shape} and occluded_emb {occ.shape} must have the same shape")
    images = _embeddings(image_emb, "image_emb", d)
    index = index_array(image_index, "image_index", occ.shape[0], images.shape[0])
    cand = as_array(candidate, "candidate")
    check_ndim(cand, "candidate", 1, "[N]")
    if cand.shape[0] != images.shape[0] or (cand.size and cand.dtype.kind not in "iu"):
        raise ValueError(f"candidate must be integer [N={images.shape[0]}], got {cand.dtype} {cand.shape}")
    if cand.size and (cand.min() < -1 or cand.max() >= c):
        raise ValueError(f"candidate must hold label indices in [0, {c}) or -1")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    native = resolve_backend(backend)
    return TriggerScores(*native.scoring.trigger_scores(
        occ, iso, images, index, np.ascontiguousarray(cand, dtype=np.int64), text, float(scale)
    ))


def probabilities(emb: np.ndarray, text: np.ndarray, scale: float) -> np.ndarray:
    """float64 [N,C]: the softmax of ``scale * emb @ text.T`` (zero-shot probabilities, NumPy)."""
    z = scale * emb @ text.T
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)
