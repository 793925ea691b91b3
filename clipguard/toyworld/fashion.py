"""The ``fashion`` world: real Fashion-MNIST items, tinted and composited onto textured backgrounds.

Items come from the Debian package ``dataset-fashion-mnist`` (MIT licence; 60k train + 10k test
28x28 grayscale images, 10 classes). Each item is resized (bilinear), flipped at random, tinted
with a palette colour (pixel = tint * (0.3 + 0.7 * intensity)) and pasted; its mask is its
silhouette (intensity above 8%), minus what later items cover. Default size 64x64: item boxes of
about 32-48 px for one item, 22-30 px when three share the scene (Fashion-MNIST's own scale is
28 px), so a ViT with patch 8 sees 8x8 patches.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache

import numpy as np

from ..vocab import Vocabulary
from . import scenes as _sc
from .scenes import Scenes

__all__ = ["CLASSNAMES", "DEFAULT_DIR", "DEFAULT_SIZE", "TEMPLATES", "generate", "load_items", "vocabulary"]

#: Fashion-MNIST's classes (label order), in words that read well in prompts.
CLASSNAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "a {}.")
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_SIZE = 64
MIN_SIZE = 32
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"

_ITEM = 28
_THRESHOLD = 0.08  # silhouette: resized intensity above this fraction of white
# Item box side in px at 64x64, by number of items in the scene (scaled with the image size).
_SIDE = {1: (32.0, 48.0), 2: (26.0, 38.0), 3: (22.0, 30.0)}
_COLORS = [c for c in _sc.PALETTE if c != "black"]  # a black tint would hide the item's texture


def vocabulary() -> Vocabulary:
    return Vocabulary(CLASSNAMES, TEMPLATES)


def _data_dir(data_dir: str | os.PathLike[str] | None) -> str:
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get("CLIPGUARD_FASHION_MNIST", DEFAULT_DIR)


def available(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether the four Fashion-MNIST files the fashion world reads are there."""
    root = _data_dir(data_dir)
    return all(os.path.isfile(os.path.join(root, f"{stem}-{kind}-ubyte.gz"))
               for stem in ("train", "t10k") for kind in ("images-idx3", "labels-idx1"))


def _read_idx(path: str, magic: int, header: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated Fashion-MNIST file ({exc}); "
                         f"reinstall with: {INSTALL_HINT}") from None
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path}: not an IDX file with magic {magic:#x}; reinstall with: {INSTALL_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


@lru_cache(maxsize=4)
def load_items(split: str = "train", data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``(images uint8 [M,28,28], labels int64 [M])`` for ``split`` (train: 60k, test: 10k).

    Reads ``$CLIPGUARD_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``; raises
    ``FileNotFoundError`` with the install command when the files are missing.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _data_dir(data_dir)
    stem = "train" if split == "train" else "t10k"
    img_path = os.path.join(root, f"{stem}-images-idx3-ubyte.gz")
    lab_path = os.path.join(root, f"{stem}-labels-idx1-ubyte.gz")
    missing = [p for p in (img_path, lab_path) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. The fashion world needs the Debian "
            f"package dataset-fashion-mnist: {INSTALL_HINT} "
            f"(or set CLIPGUARD_FASHION_MNIST to a folder holding the four .gz files)"
        )
    images = _read_idx(img_path, 0x00000803, 16)
    labels = _read_idx(lab_path, 0x00000801, 8)
    if images.size != labels.size * _ITEM * _ITEM:
        raise ValueError(f"{img_path}: {images.size} bytes of pixels for {labels.size} labels; "
                         f"reinstall with: {INSTALL_HINT}")
    if labels.size and labels.max() >= len(CLASSNAMES):
        raise ValueError(f"{lab_path}: label {int(labels.max())} out of range")
    images = images.reshape(-1, _ITEM, _ITEM)
    images.flags.writeable = False
    return images, labels.astype(np.int64)


@lru_cache(maxsize=4)
def _class_index(split: str, data_dir: str | None) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = load_items(split, data_dir)
    per_class = [np.flatnonzero(labels == c) for c in range(len(CLASSNAMES))]
    # Mean silhouette fraction per class, for sizes that give every class a similar visible area.
    frac = np.array([(images[ix[:500]] > _THRESHOLD * 255).mean() for ix in per_class])
    factor = np.clip(np.sqrt(frac.mean() / frac), 0.85, 1.25)
    return per_class, factor


def _render_chunk(rng: np.random.Generator, first: np.ndarray, counts: np.ndarray, size: int,
                  split: str, data_dir: str | None, out: np.ndarray, out_visible: np.ndarray):
    items, _ = load_items(split, data_dir)
    per_class, factor = _class_index(split, data_dir)
    n = counts.shape[0]
    classes = _sc.draw_classes(rng, first, len(CLASSNAMES))

    bg, bg_kinds, bg_mean = _sc.make_backgrounds(rng, n, size)
    color_ids, rgb = _sc.draw_colors(rng, n, bg_mean, _COLORS)

    # As in the shapes world: the balanced class gets the largest box and is drawn last (on top).
    scale = size / float(DEFAULT_SIZE)
    lo = np.array([_SIDE[k][0] for k in (1, 2, 3)])[counts - 1]
    hi = np.array([_SIDE[k][1] for k in (1, 2, 3)])[counts - 1]
    budget = -np.sort(-(lo[:, None] + rng.random((n, 3)) * (hi - lo)[:, None]), axis=1)
    order = np.array([[0, 1, 2], [0, 1, 2], [1, 0, 2], [1, 2, 0]])[counts]
    classes = np.take_along_axis(classes, order, axis=1)
    budget = np.take_along_axis(budget, order, axis=1)
    side = np.clip(np.rint(budget * factor[classes] * scale), 8, size).astype(np.int64)
    centres = _sc.place(rng, counts, side / 2.0, size)
    pick = rng.random((n, 3))
    flip = rng.random((n, 3)) < 0.5

    present = np.arange(3)[None, :] < counts[:, None]
    value = np.zeros((n, 3, size, size), dtype=np.float32)
    ii_all, jj_all = np.nonzero(present)
    item_id = np.empty(ii_all.shape[0], dtype=np.int64)
    for c in range(len(CLASSNAMES)):
        sel = classes[ii_all, jj_all] == c
        pool = per_class[c]
        item_id[sel] = pool[(pick[ii_all[sel], jj_all[sel]] * len(pool)).astype(np.int64)]
    sides = side[ii_all, jj_all]
    for d in np.unique(sides):
        sel = np.flatnonzero(sides == d)
        ii, jj = ii_all[sel], jj_all[sel]
        src = items[item_id[sel]].astype(np.float32) * np.float32(1 / 255)
        src = np.where(flip[ii, jj][:, None, None], src[:, :, ::-1], src)
        res = _sc.resize_bilinear(src, int(d), int(d))
        x0 = np.clip(np.rint(centres[ii, jj, 0] - d / 2.0).astype(np.int64), 0, size - d)
        y0 = np.clip(np.rint(centres[ii, jj, 1] - d / 2.0).astype(np.int64), 0, size - d)
        _sc.paste(value, ii, jj, y0, x0, res)
    raw = value > np.float32(_THRESHOLD)
    shade = value  # bilinear resampling keeps values in [0, 1]
    shade *= np.float32(0.7)
    shade += np.float32(0.3)
    _sc.composite(bg, raw, rgb, out, out_visible, shade)
    return classes, rgb, color_ids, bg_kinds


def generate(n: int, *, seed: int = 0, size: int | None = None, objects: tuple[int, int] = (1, 3),
             split: str = "train", data_dir: str | os.PathLike[str] | None = None) -> Scenes:
    """``n`` scenes of 1-3 Fashion-MNIST items. ``split`` picks the train (60k) or t10k (10k) items.

    Deterministic in (seed, size, objects, split).
    """
    size = DEFAULT_SIZE if size is None else size
    n, size, lo, hi = _sc.check_common_args(n, size, objects, len(CLASSNAMES), MIN_SIZE)
    ss = _sc.split_seed(seed, split, "fashion")
    ddir = None if data_dir is None else os.fspath(data_dir)
    load_items(split, ddir)  # fail early, with the install hint, when the files are missing
    vocab = vocabulary()
    info = {"seed": int(seed), "split": split, "objects": (lo, hi)}
    top = np.random.default_rng(ss.spawn(1)[0])
    counts = top.integers(lo, hi + 1, n)
    first = top.permutation(np.resize(np.arange(len(CLASSNAMES)), n)).astype(np.int64)
    if n == 0:
        return _sc.empty_scenes("fashion", vocab, size, info)
    chunk = max(16, int(2_500_000 // (size * size)))
    starts = range(0, n, chunk)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    visible = np.empty((n, 3, size, size), dtype=bool)
    parts = []
    for start, child in zip(starts, ss.spawn(len(starts))):
        sl = slice(start, min(n, start + chunk))
        parts.append(_render_chunk(np.random.default_rng(child), first[sl], counts[sl], size, split, ddir,
                                   images[sl], visible[sl]))
    cat = [np.concatenate([p[k] for p in parts]) for k in range(4)]
    return _sc.assemble(world="fashion", vocab=vocab, images=images, visible=visible, classes=cat[0],
                        counts=counts, rgb=cat[1], color_names=_COLORS, color_ids=cat[2],
                        bg_kinds=cat[3], rng=np.random.default_rng(ss.spawn(1)[0]), info=info)
