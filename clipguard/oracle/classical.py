"""The classical oracle: OpenCV graph segmentation, region merging and a colour-rarity filter.

1. Felzenszwalb-Huttenlocher graph segmentation (``cv2.ximgproc.segmentation``) over-segments
   the image.
2. Adjacent segments merge (single linkage, one pass) when their mean CIE Lab colours plus
   ``std_weight`` times their Lab standard deviations differ by less than ``merge_distance``:
   shaded or split objects become one region, and a noise patch (high internal spread) does not
   merge into a background of its mean colour.
3. Each region gets a *rarity*: the share of its pixels whose colour (a 16-level-per-channel
   RGB histogram, smoothed over neighbouring bins) occurs in fewer than ``common_fraction`` of the
   image's pixels outside the region. Objects and patches are rare; background texture
   elements (checker cells, stripes), whose colour repeats over the image, are common.
4. Texture patches: compact blobs of pixels that differ strongly from all four neighbours (noise
   or checkerboard triggers), found even where they touch or overlap an object.
5. Regions, best first: texture patches, rare regions (rarest first), connected unions of
   adjacent rare regions (a patch or object fragmented into several segments), and with
   ``fill=True`` enclosed common regions (not touching the image border) to fill up to
   ``max_regions``.

Parameters are given for a 48x48 image and scale with the image: areas and the segmentation's
``k`` and ``min_size`` with the pixel count (``sigma``, a per-pixel smoothing, stays).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .base import Oracle, require

__all__ = ["ClassicalOracle"]

_Q = 16  # colour histogram levels per channel


def _smooth_bins(hist: np.ndarray) -> np.ndarray:
    """Sum over the 3x3x3 neighbourhood of each bin of ``hist [n,Q,Q,Q]`` (zero outside)."""
    out = hist.copy()
    for axis in (1, 2, 3):  # separable box filter
        src = out
        out = src.copy()
        lo = [slice(None)] * 4
        hi = [slice(None)] * 4
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out[tuple(hi)] += src[tuple(lo)]
        out[tuple(lo)] += src[tuple(hi)]
    return out


def _union_find_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component id per node of the graph with edges ``pairs [m,2]`` (ids 0..c-1, by first node)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    return ids


def _adjacent_pairs(lab: np.ndarray) -> np.ndarray:
    """Distinct unordered pairs of 4-adjacent labels, ``[m,2]`` with a < b."""
    h = np.stack([lab[:, :-1].ravel(), lab[:, 1:].ravel()], 1)
    v = np.stack([lab[:-1].ravel(), lab[1:].ravel()], 1)
    pairs = np.concatenate([h, v])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    if pairs.size == 0:
        return pairs.reshape(0, 2)
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


class ClassicalOracle(Oracle):
    """OpenCV graph segmentation + region merging + colour rarity (see the module docstring).

    Args:
        sigma, k, min_size: Felzenszwalb-Huttenlocher parameters at 48x48.
        merge_distance, std_weight: the region-merging rule (CIE Lab units).
        common_fraction: a colour is common when it covers this share of the image outside a region.
        rare_fraction: a region is rare when this share of its pixels has uncommon colours.
        fill: fill up to ``max_regions`` with enclosed common regions.
        texture_threshold: mean absolute difference to the neighbours (per channel, 0-255) above
            which a pixel is part of a noise-like patch; texture_max_fraction: the largest such
            patch, as a share of the image.
        threads: images segmented in parallel (default: ``CLIPGUARD_NUM_THREADS``, else all cores).
        Other keyword arguments: the shared post-processing (:class:`~clipguard.oracle.Oracle`).
    """

    name = "classical"

    def __init__(self, *, sigma: float = 0.5, k: float = 150.0, min_size: int = 10,
                 merge_distance: float = 15.0, std_weight: float = 0.5,
                 common_fraction: float = 0.04, rare_fraction: float = 0.3, fill: bool = False,
                 texture_threshold: float = 45.0, texture_max_fraction: float = 0.1,
                 threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, v in (("sigma", sigma), ("k", k), ("merge_distance", merge_distance),
                        ("std_weight", std_weight), ("texture_threshold", texture_threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (
                    np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name, v in (("common_fraction", common_fraction), ("rare_fraction", rare_fraction),
                        ("texture_max_fraction", texture_max_fraction)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
            raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
        self.sigma, self.k, self.min_size = float(sigma), float(k), int(min_size)
        self.merge_distance, self.std_weight = float(merge_distance), float(std_weight)
        self.common_fraction, self.rare_fraction = float(common_fraction), float(rare_fraction)
        self.fill = bool(fill)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        self.texture_threshold = float(texture_threshold)
        self.texture_max_fraction = float(texture_max_fraction)
        self._cv2 = require("cv2", "the classical oracle (opencv-contrib-python-headless)")
        if not hasattr(self._cv2, "ximgproc"):
            raise ImportError(
                "the classical oracle needs OpenCV's contrib modules (cv2.ximgproc); install "
                "opencv-contrib-python-headless, e.g. pip install 'clipguard[full]'"
            )
        self._local = threading.local()  # a segmenter per thread: OpenCV objects are not shared

    def _segmenter(self, h: int, w: int) -> Any:
        cache = self._local.__dict__.setdefault("segmenters", {})
        seg = cache.get((h, w))
        if seg is None:
            area_scale = h * w / 48.0**2
            seg = self._cv2.ximgproc.segmentation.createGraphSegmentation(
                self.sigma, self.k * area_scale, max(1, int(round(self.min_size * area_scale))))
            cache[(h, w)] = seg
        return seg

    def _segment(self, images: np.ndarray) -> list[np.ndarray]:
        threads = self.threads
        if threads is None:
            from .. import _core

            threads = _core.num_threads()  # CLIPGUARD_NUM_THREADS, else all cores
        threads = min(threads, len(images))
        if threads <= 1:
            return [self.segment_one(im) for im in images]
        # OpenCV and most of the NumPy work release the GIL: images run side by side.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(self.segment_one, images))

    def segment_one(self, image: np.ndarray) -> np.ndarray:
        """Raw candidate masks of one uint8 ``[H,W,3]`` image, best first (before post-processing)."""
        cv2 = self._cv2
        h, w = image.shape[:2]
        n_px = h * w
        lab = self._segmenter(h, w).processImage(image).astype(np.int64)

        # Merge adjacent segments with similar colour statistics.
        lab_img = cv2.cvtColor(image.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)
        flat = lab.ravel()
        n = int(flat.max()) + 1
        count = np.maximum(np.bincount(flat, minlength=n), 1).astype(np.float64)
        feats = lab_img.reshape(-1, 3).astype(np.float64)
        mean = np.stack([np.bincount(flat, feats[:, c], minlength=n) for c in range(3)], 1) / count[:, None]
        sq = np.stack([np.bincount(flat, feats[:, c] ** 2, minlength=n) for c in range(3)], 1) / count[:, None]
        spread = np.sqrt(np.maximum(sq - mean**2, 0.0)).sum(1)
        pairs = _adjacent_pairs(lab)
        if pairs.shape[0] and self.merge_distance > 0:
            dist = np.linalg.norm(mean[pairs[:, 0]] - mean[pairs[:, 1]], axis=1)
            dist += self.std_weight * np.abs(spread[pairs[:, 0]] - spread[pairs[:, 1]])
            lab = _union_find_labels(n, pairs[dist < self.merge_distance])[lab]
            flat = lab.ravel()
            n = int(flat.max()) + 1

        # Colour rarity of each region against the rest of the image.
        step = 256 // _Q
        q = ((image[..., 0] // step).astype(np.int64) * _Q + image[..., 1] // step) * _Q + image[..., 2] // step
        hist = np.bincount((lab * _Q**3 + q).ravel(), minlength=n * _Q**3).reshape(n, _Q, _Q, _Q)
        hist = hist.astype(np.float32)
        smooth = _smooth_bins(hist)
        outside = smooth.sum(0, keepdims=True) - smooth
        area = hist.reshape(n, -1).sum(1)
        common = (hist * (outside >= self.common_fraction * n_px)).reshape(n, -1).sum(1)
        rarity = 1.0 - common / np.maximum(area, 1.0)
        rare = rarity >= self.rare_fraction

        lo, hi = self.area_limits(h, w)
        sized = (area >= lo) & (area <= hi)
        border = np.zeros(n, bool)
        border[np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))] = True

        # Texture patches, then rare regions (rarest first), then unions of adjacent rare regions.
        masks = self._texture_patches(image, lo, hi)
        first = np.flatnonzero(rare & sized)
        first = first[np.argsort(-rarity[first], kind="stable")]
        if self.max_regions is not None:  # slack for the duplicates post-processing merges
            first = first[:3 * self.max_regions]
        masks.extend(lab == i for i in first)
        fg = (rare & (area <= hi))[lab].astype(np.uint8)
        n_comp, comp = cv2.connectedComponents(fg, connectivity=4)
        for c in range(1, n_comp):
            m = comp == c
            if len(np.unique(lab[m])) > 1 and lo <= m.sum() <= hi:
                masks.append(m)
        if self.fill:
            # Enclosed common regions: low-contrast objects, largest first.
            rest = np.flatnonzero(~rare & sized & ~border)
            rest = rest[np.argsort(-area[rest], kind="stable")]
            masks.extend(lab == i for i in rest)
        if not masks:
            return np.zeros((0, h, w), bool)
        return np.stack(masks)

    def _texture_patches(self, image: np.ndarray, lo: int, hi: int) -> list[np.ndarray]:
        """Compact blobs of pixels that differ strongly from all their neighbours (noise or
        checkerboard patches); object edges are thin and removed by the opening."""
        cv2 = self._cv2
        x = image.astype(np.int16)
        dx = np.abs(np.diff(x, axis=1)).sum(2)
        dy = np.abs(np.diff(x, axis=0)).sum(2)
        rough = np.zeros(image.shape[:2], np.float32)
        rough[:, :-1] += dx
        rough[:, 1:] += dx
        rough[:-1] += dy
        rough[1:] += dy
        # mean absolute difference per neighbour and channel (border pixels have fewer neighbours)
        neighbours = np.full(image.shape[:2], 4.0, np.float32)
        neighbours[[0, -1], :] -= 1
        neighbours[:, [0, -1]] -= 1
        rough /= 3 * neighbours
        on = (rough > self.texture_threshold).astype(np.uint8)
        on = cv2.morphologyEx(on, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
        on = cv2.morphologyEx(on, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        n, comp, stats, _ = cv2.connectedComponentsWithStats(on, connectivity=8)
        out = []
        limit = min(hi, self.texture_max_fraction * image.shape[0] * image.shape[1])
        for c in range(1, n):
            area = stats[c, cv2.CC_STAT_AREA]
            box = stats[c, cv2.CC_STAT_WIDTH] * stats[c, cv2.CC_STAT_HEIGHT]
            if lo <= area <= limit and area >= 0.5 * box:
                out.append(comp == c)
        return out

    @property
    def spec(self) -> str:
        return "classical"
