"""Scenes (images, instance masks, captions) and the pieces both toy worlds share.

Everything here is vectorized over scenes: textured backgrounds, object placement, compositing
with occlusion, and template captions. The worlds (``shapes``, ``fashion``) only say how one
object looks (a boolean silhouette and, for fashion, a shading map).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..vocab import Vocabulary

__all__ = ["Scenes", "PALETTE", "BACKGROUNDS", "CAPTION_TEMPLATES"]

#: Object colours: name -> RGB. Colours are drawn independently of the class.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 30),
    "orange": (245, 135, 25),
    "purple": (140, 55, 190),
    "pink": (245, 110, 190),
    "cyan": (40, 205, 215),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

#: Background textures and the word captions use for each.
BACKGROUNDS: dict[str, str] = {
    "plain": "plain",
    "gradient": "shaded",
    "stripes": "striped",
    "checker": "checkered",
    "noise": "mottled",
}

#: Caption templates; ``{objs}`` is the object list ("a red star and a blue circle"), ``{bg}`` the
#: background word.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{objs}",
    "a photo of {objs}.",
    "a picture of {objs}.",
    "{objs} on a {bg} background.",
    "an image showing {objs}.",
)

_MAX_OBJECTS = 3


@dataclass
class Scenes:
    """A batch of toy scenes with exact ground truth.

    ``masks[i][j]`` is the *visible* part of object ``j`` of image ``i`` (after occlusion by objects
    drawn later); ``labels[i][j]`` its class id in ``vocab``; ``colors[i][j]`` its base RGB colour.
    """

    images: np.ndarray
    labels: list[np.ndarray]
    masks: list[np.ndarray]
    captions: list[str]
    vocab: Vocabulary
    colors: list[np.ndarray] | None = None
    world: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs = self.images
        if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
            desc = f"{imgs.dtype} {imgs.shape}" if isinstance(imgs, np.ndarray) else type(imgs).__name__
            raise ValueError(f"Scenes.images must be uint8 [N,H,W,3], got {desc}")
        n = imgs.shape[0]
        for name in ("labels", "masks", "captions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Scenes.{name} has {len(getattr(self, name))} entries for {n} images")
        if self.colors is not None and len(self.colors) != n:
            raise ValueError(f"Scenes.colors has {len(self.colors)} entries for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def primary(self) -> np.ndarray:
        """int64 [N]: the label of the largest visible object of each image (first one on ties)."""
        out = np.empty(len(self), dtype=np.int64)
        for i, (lab, m) in enumerate(zip(self.labels, self.masks)):
            if len(lab) == 0:
                out[i] = -1
            elif len(lab) == 1:
                out[i] = lab[0]
            else:
                out[i] = lab[int(np.argmax(m.reshape(len(lab), -1).sum(1)))]
        return out

    def subset(self, idx: Any) -> Scenes:
        """The scenes at ``idx`` (integer indices, a boolean mask or a slice), as a new ``Scenes``."""
        n = len(self)
        if isinstance(idx, slice):
            ii = np.arange(n)[idx]
        else:
            arr = np.asarray(idx)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise ValueError(f"boolean index must have shape ({n},), got {arr.shape}")
                ii = np.flatnonzero(arr)
            elif arr.size == 0:
                ii = np.zeros(0, dtype=np.int64)
            elif np.issubdtype(arr.dtype, np.integer):
                ii = arr.reshape(-1).astype(np.int64)
                if ii.size and (ii.min() < -n or ii.max() >= n):
                    raise IndexError(f"index out of range for {n} scenes")
                ii = np.where(ii < 0, ii + n, ii)
            else:
                raise TypeError(f"subset needs integer indices, a boolean mask or a slice, got {arr.dtype}")
        return dataclasses.replace(
            self,
            images=self.images[ii],
            labels=[self.labels[i] for i in ii],
            masks=[self.masks[i] for i in ii],
            captions=[self.captions[i] for i in ii],
            colors=None if self.colors is None else [self.colors[i] for i in ii],
            info=dict(self.info),
        )

    def __repr__(self) -> str:
        h, w = self.size
        return f"Scenes(world={self.world!r}, n={len(self)}, size={h}x{w}, classes={len(self.vocab)})"


# ------------------------------------------------------------------------------------------
# Shared machinery for the worlds
# ------------------------------------------------------------------------------------------


def check_common_args(n: Any, size: Any, objects: Any, num_classes: int, min_size: int) -> tuple[int, int, int, int]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < min_size:
        raise ValueError(f"size must be an integer >= {min_size}, got {size!r}")
    try:
        lo, hi = (int(v) for v in objects)
    except (TypeError, ValueError):
        raise ValueError(f"objects must be a pair (min, max), got {objects!r}") from None
    if not 1 <= lo <= hi <= min(_MAX_OBJECTS, num_classes):
        raise ValueError(f"objects must satisfy 1 <= min <= max <= {_MAX_OBJECTS}, got {objects!r}")
    return int(n), int(size), lo, hi


def split_seed(seed: int, split: str, world: str) -> np.random.SeedSequence:
    """A seed stream per (world, split): ``split='test'`` never repeats the train scenes of a seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    tag = sum(ord(c) * 31**i for i, c in enumerate(world)) % (2**31)
    return np.random.SeedSequence([int(seed), tag, 0 if split == "train" else 1])


def _taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (i0, i1, weight of i1) with half-pixel centres, edge clamped."""
    pos = (np.arange(out_len, dtype=np.float64) + 0.5) * (in_len / out_len) - 0.5
    pos = np.clip(pos, 0.0, in_len - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def resize_bilinear(arr: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """float32 [B,h,w] -> [B,out_h,out_w], separable bilinear (half-pixel centres, no antialias).

    Gathers and lerps only: no BLAS, whose thread pool stalls on small products on a busy machine.
    """
    y0, y1, wy = _taps(out_h, arr.shape[1])
    x0, x1, wx = _taps(out_w, arr.shape[2])
    a = arr[:, y0, :] * (1 - wy)[None, :, None] + arr[:, y1, :] * wy[None, :, None]
    return a[:, :, x0] * (1 - wx) + a[:, :, x1] * wx


def make_backgrounds(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured backgrounds: (uint8 [n,3,S,S] channel-first, kind ids int64 [n], mean colour [n,3]).

    Low-saturation two-tone textures (plain, gradient, stripes, checker, smooth noise) with fine
    pixel noise, so saturated objects stand out and colour never gives the class away.
    """
    s = size
    scale = s / 48.0
    kinds = rng.integers(0, len(BACKGROUNDS), n)
    grey = rng.uniform(70, 185, (n, 1))
    c1 = grey + rng.uniform(-22, 22, (n, 3))
    delta = rng.uniform(28, 60, (n, 1)) * rng.choice([-1.0, 1.0], (n, 1))
    c2 = c1 + delta + rng.uniform(-12, 12, (n, 3))
    phi = rng.uniform(0, np.pi, n)
    period = rng.uniform(5, 13, n) * scale
    phase = rng.uniform(0, 2 * np.pi, n)
    cell = np.maximum(2, np.round(rng.uniform(4, 10, n) * scale)).astype(np.int64)
    off = rng.integers(0, 64, (n, 2))
    blobs = rng.random((n, 5, 5), dtype=np.float32)
    fine = rng.random((n, s, s), dtype=np.float32)  # uniform pixel noise, +-7 grey levels

    t = np.zeros((n, s, s), dtype=np.float32)
    ax = np.arange(s, dtype=np.float32)
    for k, name in enumerate(BACKGROUNDS):
        sel = np.flatnonzero(kinds == k)
        if sel.size == 0 or name == "plain":
            continue
        if name in ("gradient", "stripes"):
            c = np.cos(phi[sel]).astype(np.float32)[:, None, None]
            si = np.sin(phi[sel]).astype(np.float32)[:, None, None]
            proj = ax[None, None, :] * c + ax[None, :, None] * si
            if name == "gradient":
                lo = proj.min(axis=(1, 2), keepdims=True)
                hi = proj.max(axis=(1, 2), keepdims=True)
                t[sel] = (proj - lo) / np.maximum(hi - lo, 1e-6)
            else:
                f = (2 * np.pi / period[sel]).astype(np.float32)[:, None, None]
                t[sel] = 0.5 + 0.5 * np.sin(proj * f + phase[sel].astype(np.float32)[:, None, None])
        elif name == "checker":
            ii = np.arange(s)
            cy = (ii[None, :] + off[sel, 0, None]) // cell[sel, None]  # [m,S]
            cx = (ii[None, :] + off[sel, 1, None]) // cell[sel, None]
            t[sel] = ((cy[:, :, None] + cx[:, None, :]) & 1).astype(np.float32)
        elif name == "noise":
            t[sel] = resize_bilinear(blobs[sel], s, s)
    fine -= np.float32(0.5)
    fine *= np.float32(14.0)
    fine += np.float32(0.5)  # the uint8 conversion below truncates
    c1f = c1.astype(np.float32)
    d = (c2 - c1).astype(np.float32)
    bg = np.empty((n, 3, s, s), dtype=np.uint8)
    tmp = np.empty((n, s, s), dtype=np.float32)
    for ch in range(3):
        np.multiply(t, d[:, ch, None, None], out=tmp)
        tmp += c1f[:, ch, None, None]
        tmp += fine
        np.clip(tmp, 0, 255, out=tmp)
        bg[:, ch] = tmp  # truncation; the 0.5 offset is folded into the noise
    mean = c1 + 0.5 * (c2 - c1)
    return bg, kinds, mean


def draw_classes(rng: np.random.Generator, first: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [n, 3] distinct classes per scene, column 0 given (``first``, balanced by the caller)."""
    n = first.shape[0]
    keys = rng.random((n, num_classes))
    keys[np.arange(n), first] = -1.0  # the given class sorts first, the rest in random order
    return np.argsort(keys, axis=1)[:, :_MAX_OBJECTS].astype(np.int64)


def draw_colors(rng: np.random.Generator, n: int, bg_mean: np.ndarray, names: list[str], min_dist: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """Per scene 3 distinct palette colours far enough from the background: (ids [n,3], rgb [n,3,3])."""
    pal = np.array([PALETTE[c] for c in names], dtype=np.float64)
    keys = rng.random((n, len(names)))
    dist = np.linalg.norm(bg_mean[:, None, :] - pal[None], axis=-1)
    keys = keys + (dist < min_dist) * 10.0  # low-contrast colours go last
    ids = np.argsort(keys, axis=1)[:, :_MAX_OBJECTS]
    jitter = rng.integers(-14, 15, (n, _MAX_OBJECTS, 3))
    rgb = np.clip(pal[ids] + jitter, 0, 255).astype(np.uint8)
    return ids, rgb


def place(rng: np.random.Generator, counts: np.ndarray, radii: np.ndarray, size: int, gap: float = 0.78, trials: int = 32) -> np.ndarray:
    """Object centres [n,3,2] (x, y) inside the image, pairwise distance >= gap*(r_i+r_j) where possible.

    Vectorized rejection sampling: ``trials`` candidate layouts per scene, the first valid one
    is kept (else the least-overlapping one).
    """
    n = counts.shape[0]
    lo = radii[:, None, :, None]
    cand = lo + rng.random((n, trials, _MAX_OBJECTS, 2)) * np.maximum(size - 2 * lo, 0.0)
    d = np.linalg.norm(cand[:, :, :, None, :] - cand[:, :, None, :, :], axis=-1)  # [n,T,3,3]
    need = gap * (radii[:, None, :, None] + radii[:, None, None, :])
    ratio = d / np.maximum(need, 1e-9)
    j = np.arange(_MAX_OBJECTS)
    active = (j[None, :] < counts[:, None])
    pair = active[:, :, None] & active[:, None, :] & (j[:, None] < j[None, :])[None]
    ratio = np.where(pair[:, None], ratio, np.inf)
    worst = ratio.min(axis=(2, 3))  # [n,T]
    ok = worst >= 1.0
    best = np.where(ok.any(1), ok.argmax(1), worst.argmax(1))
    return cand[np.arange(n), best]


def composite(background: np.ndarray, raw: np.ndarray, colors: np.ndarray, out: np.ndarray,
              out_visible: np.ndarray, shade: np.ndarray | None = None) -> None:
    """Draw objects in order over the background (later objects on top).

    background: uint8 [n,3,S,S] channel-first (consumed); raw: bool [n,3,S,S] object silhouettes
    (all False for absent objects); colors: uint8 [n,3,3] per-object colours; shade: optional
    float32 [n,3,S,S] per-pixel factor applied to the colour (pixel = rint(colour * shade)).
    Writes the images into ``out`` (uint8 [n,S,S,3]) and the visible masks into ``out_visible``
    (bool [n,3,S,S], disjoint).
    """
    visible = out_visible
    visible[...] = raw
    for j in range(_MAX_OBJECTS - 2, -1, -1):
        visible[:, j] &= ~raw[:, j + 1 :].any(axis=1)
    keep = ~visible.any(axis=1)  # background pixels
    # Visible masks are disjoint, so per pixel at most one term of each sum is non-zero.
    # Arithmetic on contiguous channel planes: several times faster than masked copies.
    if shade is not None:
        shade_top = np.zeros(keep.shape, dtype=np.float32)
        for j in range(_MAX_OBJECTS):
            shade_top += shade[:, j] * visible[:, j]
    for ch in range(3):
        col = colors[:, 0, ch, None, None] * visible[:, 0]
        for j in range(1, _MAX_OBJECTS):
            col += colors[:, j, ch, None, None] * visible[:, j]
        if shade is not None:
            col = np.rint(col * shade_top).astype(np.uint8)
        plane = background[:, ch]
        plane *= keep
        plane += col
    np.copyto(out, background.transpose(0, 2, 3, 1))


def paste(canvas: np.ndarray, ii: np.ndarray, jj: np.ndarray, oy: np.ndarray, ox: np.ndarray,
          patch: np.ndarray) -> None:
    """``canvas[ii, jj, oy:oy+h, ox:ox+w] = patch`` where ``patch`` is non-zero, clipped to the canvas.

    canvas: contiguous [n,3,S,S]; patch: [B,h,w]; ii, jj, oy, ox: int [B]. Only the non-zero
    pixels are scattered (one flat fancy-index write), which is what makes it fast.
    """
    slots, s = canvas.shape[1], canvas.shape[2]
    bi, py, px = np.nonzero(patch)
    y = oy[bi] + py
    x = ox[bi] + px
    ok = (y >= 0) & (y < s) & (x >= 0) & (x < s)
    bi, py, px, y, x = bi[ok], py[ok], px[ok], y[ok], x[ok]
    flat = ((ii[bi] * slots + jj[bi]) * s + y) * s + x
    canvas.reshape(-1)[flat] = patch[bi, py, px]


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def captions_for(rng: np.random.Generator, names: list[list[str]], colors: list[list[str]], bg_words: list[str]) -> list[str]:
    """Template captions; objects listed in the order given (largest visible first)."""
    tpl = rng.integers(0, len(CAPTION_TEMPLATES), len(names))
    out = []
    for i, (ns, cs) in enumerate(zip(names, colors)):
        parts = [f"{article(c)} {c} {nm}" for nm, c in zip(ns, cs)]
        objs = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        out.append(CAPTION_TEMPLATES[tpl[i]].format(objs=objs, bg=bg_words[i]))
    return out


def assemble(
    *,
    world: str,
    vocab: Vocabulary,
    images: np.ndarray,
    visible: np.ndarray,
    classes: np.ndarray,
    counts: np.ndarray,
    rgb: np.ndarray,
    color_names: list[str],
    color_ids: np.ndarray,
    bg_kinds: np.ndarray,
    rng: np.random.Generator,
    info: dict[str, Any],
) -> Scenes:
    """Per-image lists (labels, masks, colours) and captions from the padded [n,3,...] arrays."""
    n = images.shape[0]
    areas = visible.reshape(n, _MAX_OBJECTS, -1).sum(-1)
    bg_names = list(BACKGROUNDS.values())
    labels, masks, cols, cap_names, cap_cols, bg_words = [], [], [], [], [], []
    for i in range(n):
        k = int(counts[i])
        labels.append(classes[i, :k].copy())
        masks.append(visible[i, :k].copy())
        cols.append(rgb[i, :k].copy())
        order = np.argsort(-areas[i, :k], kind="stable")
        cap_names.append([vocab.classnames[classes[i, j]] for j in order])
        cap_cols.append([color_names[color_ids[i, j]] for j in order])
        bg_words.append(bg_names[bg_kinds[i]])
    captions = captions_for(rng, cap_names, cap_cols, bg_words)
    return Scenes(images=images, labels=labels, masks=masks, captions=captions, vocab=vocab,
                  colors=cols, world=world, info=info)


def empty_scenes(world: str, vocab: Vocabulary, size: int, info: dict[str, Any]) -> Scenes:
    return Scenes(images=np.zeros((0, size, size, 3), np.uint8), labels=[], masks=[], captions=[],
                  vocab=vocab, colors=[], world=world, info=info)
