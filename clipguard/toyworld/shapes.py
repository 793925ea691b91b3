"""The ``shapes`` world: procedural scenes of coloured geometric shapes on textured backgrounds.

Each object is an exact silhouette (a predicate on rotated, scaled pixel-centre coordinates), so
masks are pixel-exact ground truth. Objects are solid colours; colour is drawn independently of
the class. Default size 48x48; object diameters scale with the size (about 18-27 px for one
object at 48 px, 14-20 px when three share the scene).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..vocab import Vocabulary
from . import scenes as _sc
from .scenes import Scenes

__all__ = ["CLASSNAMES", "DEFAULT_SIZE", "TEMPLATES", "generate", "vocabulary", "shape_masks"]

CLASSNAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart",
    "cross", "ring", "diamond", "arrow", "crescent",
)
TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "a {}.")
DEFAULT_SIZE = 48
MIN_SIZE = 24

# Diameter ranges in px at 48x48, by number of objects in the scene (scaled with the image size).
_DIAMETER = {1: (18.0, 27.0), 2: (15.0, 22.0), 3: (14.0, 19.0)}
# Largest rotation (degrees) that keeps each class unambiguous (a square turned 45 deg is a diamond).
_MAX_ROT = {
    "circle": 180, "square": 12, "triangle": 15, "star": 180, "heart": 15,
    "cross": 12, "ring": 180, "diamond": 12, "arrow": 180, "crescent": 180,
}


def vocabulary() -> Vocabulary:
    return Vocabulary(CLASSNAMES, TEMPLATES)


def _polygon(u: np.ndarray, w: np.ndarray, normal_angles_deg: list[float], apothem: float) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    for a in np.deg2rad(normal_angles_deg):
        inside &= (u * np.float32(np.cos(a)) + w * np.float32(np.sin(a))) <= apothem
    return inside


def _silhouette(name: str, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Boolean silhouette of one class in unit coordinates (u right, w up; the shape fits radius ~1)."""
    rho2 = u * u + w * w
    if name == "circle":
        return rho2 <= 0.88**2
    if name == "ring":
        return (rho2 <= 0.95**2) & (rho2 >= 0.52**2)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(w)) <= 0.70
    if name == "diamond":
        return np.abs(u) / 0.62 + np.abs(w) / 0.98 <= 1.0
    if name == "triangle":
        # Equilateral, pointing up, circumradius 1.1, centred on its bounding box.
        return _polygon(u, w + np.float32(0.275), [-90.0, 30.0, 150.0], 0.55)
    if name == "arrow":
        # Pointing right (any direction after rotation): a triangular head on a shaft.
        head = (u >= 0.05) & (np.abs(w) <= 0.76 * (1.0 - u))
        shaft = (u >= -0.95) & (u < 0.05) & (np.abs(w) <= 0.24)
        return head | shaft
    if name == "cross":
        a, b = np.abs(u), np.abs(w)
        return ((a <= 0.30) & (b <= 0.92)) | ((b <= 0.30) & (a <= 0.92))
    if name == "crescent":
        return (rho2 <= 0.92**2) & ((u - 0.42) ** 2 + (w - 0.12) ** 2 >= 0.74**2)
    if name == "heart":
        x = u * np.float32(1.2)
        y = w * np.float32(1.2) + np.float32(0.118)
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    if name == "star":
        # Five points; fold the angle into one half-spike and test against the tip->inner edge.
        phi = np.arctan2(w, u) - np.float32(np.pi / 2)
        sector = np.float32(2 * np.pi / 5)
        beta = np.mod(phi, sector)
        beta = np.minimum(beta, sector - beta)
        rho = np.sqrt(rho2)
        px, py = rho * np.cos(beta), rho * np.sin(beta)
        tip_r, inner_r = 1.0, 0.45
        ix, iy = inner_r * np.cos(np.pi / 5), inner_r * np.sin(np.pi / 5)
        ex, ey = ix - tip_r, iy  # edge vector tip -> inner vertex
        cross = ex * py - ey * (px - tip_r)
        return cross >= 0  # the origin's side of the edge: cross(e, O - tip) = ey * tip_r > 0
    raise ValueError(f"unknown shape {name!r}")


def _windows(name: str, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray,
             angle: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Silhouettes on a square window around each object: (inside [B,W,W], origin y [B], origin x [B]).

    Pixel (y, x) is inside when its centre (x+0.5, y+0.5) is; every silhouette fits in 1.1 radii.
    """
    half = int(np.ceil(float(np.max(radius, initial=0.0)) * 1.1)) + 1
    win = 2 * half + 1
    ox = np.floor(cx).astype(np.int64) - half  # window origin in image coordinates
    oy = np.floor(cy).astype(np.int64) - half
    loc = np.arange(win, dtype=np.float32) + np.float32(0.5)
    dx = (ox - cx).astype(np.float32)[:, None, None] + loc[None, None, :]  # [B,1,W]
    dy = (oy - cy).astype(np.float32)[:, None, None] + loc[None, :, None]  # [B,W,1]
    c = np.cos(angle).astype(np.float32)[:, None, None]
    s = np.sin(angle).astype(np.float32)[:, None, None]
    inv_r = (1.0 / radius).astype(np.float32)[:, None, None]
    u = (dx * c + dy * s) * inv_r
    w = (dx * s - dy * c) * inv_r  # image y points down; w points up
    return _silhouette(name, u, w), oy, ox


def shape_masks(name: str, size: int, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """bool [B,S,S] silhouettes of ``B`` objects of class ``name`` (centres/radius in px, angle in rad)."""
    b = cx.shape[0]
    canvas = np.zeros((b, 1, size, size), dtype=bool)
    inside, oy, ox = _windows(name, cx, cy, radius, angle)
    _sc.paste(canvas, np.arange(b), np.zeros(b, np.int64), oy, ox, inside)
    return canvas[:, 0]


@lru_cache(maxsize=1)
def _size_factors() -> np.ndarray:
    """Per class, the diameter factor that gives every class the same area at a given budget."""
    g = (np.arange(400, dtype=np.float32) + 0.5) / 200.0 - 1.0
    u, w = np.meshgrid(g, -g)
    frac = np.array([_silhouette(nm, u, w).mean() for nm in CLASSNAMES])
    return np.sqrt(frac.mean() / frac)


# Per object count k, the slot order that puts the balanced class (drawn at slot 0) last, on top.
_PRIMARY_LAST = np.array([[0, 1, 2], [0, 1, 2], [1, 0, 2], [1, 2, 0]])


def _render_chunk(rng: np.random.Generator, first: np.ndarray, counts: np.ndarray, size: int,
                  out: np.ndarray, out_visible: np.ndarray):
    n = counts.shape[0]
    classes = _sc.draw_classes(rng, first, len(CLASSNAMES))

    bg, bg_kinds, bg_mean = _sc.make_backgrounds(rng, n, size)
    color_names = list(_sc.PALETTE)
    color_ids, rgb = _sc.draw_colors(rng, n, bg_mean, color_names)

    # Area budgets, largest first so the balanced class is the largest object; it is drawn last
    # (on top), so it stays the largest *visible* one and ``primary`` stays class-balanced.
    scale = size / 48.0
    lo = np.array([_DIAMETER[k][0] for k in (1, 2, 3)])[counts - 1]
    hi = np.array([_DIAMETER[k][1] for k in (1, 2, 3)])[counts - 1]
    budget = -np.sort(-(lo[:, None] + rng.random((n, 3)) * (hi - lo)[:, None]), axis=1)
    order = _PRIMARY_LAST[counts]
    classes = np.take_along_axis(classes, order, axis=1)
    budget = np.take_along_axis(budget, order, axis=1)
    radii = budget * _size_factors()[classes] * (scale / 2.0)
    centres = _sc.place(rng, counts, radii, size)
    max_rot = np.deg2rad(np.array([_MAX_ROT[nm] for nm in CLASSNAMES], dtype=np.float64))
    angle = rng.uniform(-1.0, 1.0, (n, 3)) * max_rot[classes]

    raw = np.zeros((n, 3, size, size), dtype=bool)
    present = np.arange(3)[None, :] < counts[:, None]
    for k, name in enumerate(CLASSNAMES):
        ii, jj = np.nonzero(present & (classes == k))
        if ii.size:
            inside, oy, ox = _windows(name, centres[ii, jj, 0], centres[ii, jj, 1], radii[ii, jj], angle[ii, jj])
            _sc.paste(raw, ii, jj, oy, ox, inside)
    _sc.composite(bg, raw, rgb, out, out_visible)
    return classes, rgb, color_ids, bg_kinds


def generate(n: int, *, seed: int = 0, size: int | None = None, objects: tuple[int, int] = (1, 3),
             split: str = "train") -> Scenes:
    """``n`` scenes of 1-3 shapes. Deterministic in (seed, size, objects, split).

    ``split="test"`` draws from a separate seed stream, so held-out scenes never repeat the
    training scenes of the same seed.
    """
    size = DEFAULT_SIZE if size is None else size
    n, size, lo, hi = _sc.check_common_args(n, size, objects, len(CLASSNAMES), MIN_SIZE)
    vocab = vocabulary()
    info = {"seed": int(seed), "split": split, "objects": (lo, hi)}
    ss = _sc.split_seed(seed, split, "shapes")
    top = np.random.default_rng(ss.spawn(1)[0])
    counts = top.integers(lo, hi + 1, n)
    first = top.permutation(np.resize(np.arange(len(CLASSNAMES)), n)).astype(np.int64)
    if n == 0:
        return _sc.empty_scenes("shapes", vocab, size, info)
    chunk = max(16, int(1_000_000 // (size * size)))
    starts = range(0, n, chunk)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    visible = np.empty((n, 3, size, size), dtype=bool)
    parts = []
    for start, child in zip(starts, ss.spawn(len(starts))):
        sl = slice(start, min(n, start + chunk))
        parts.append(_render_chunk(np.random.default_rng(child), first[sl], counts[sl], size,
                                   images[sl], visible[sl]))
    cat = [np.concatenate([p[k] for p in parts]) for k in range(4)]
    return _sc.assemble(world="shapes", vocab=vocab, images=images, visible=visible, classes=cat[0],
                        counts=counts, rgb=cat[1], color_names=list(_sc.PALETTE), color_ids=cat[2],
                        bg_kinds=cat[3], rng=np.random.default_rng(ss.spawn(1)[0]), info=info)
