"""Backdoor attacks on image-text data: triggers, dataset poisoning, and spec strings.

Every attack is a frozen dataclass with a short spec string that round-trips::

    >>> a = parse_attack("badnet:target=star,size=6")
    >>> parse_attack(a.spec()) == a
    True

``apply`` stamps the trigger on a batch of uint8 images ``[N,H,W,3]`` of any size (it never
modifies its input and is deterministic in ``seed``); ``poison`` poisons a share of a
:class:`~clipguard.toyworld.Scenes` set the way the CLIP poisoning literature does (trigger on the
image, caption replaced by a caption of the target class).

Sizes: BadNet's patch ``size`` is in pixels whatever the image size; Blended's noise image is
defined at 224x224 and resampled (nearest) to the input; SIG's ``frequency`` counts periods across
the width; WaNet's warp field is defined on a ``k x k`` grid and upsampled to the input.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .toyworld.scenes import Scenes

__all__ = [
    "ATTACKS",
    "Attack",
    "BadNet",
    "Blended",
    "LabelConsistent",
    "OptimizedPatch",
    "SIG",
    "Triggered",
    "WaNet",
    "parse_attack",
    "poison",
]

#: Named colours for solid BadNet patches (``color=NAME`` or ``color=#rrggbb``).
COLORS: dict[str, tuple[int, int, int]] = {
    "yellow": (255, 255, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
LOCATIONS = ("random", "center", "top-left", "top-right", "bottom-left", "bottom-right")
PATTERNS = ("noise", "checkerboard", "solid")

_CHUNK = 512  # images per step for float work, to bound memory on large batches


@dataclass(frozen=True)
class Triggered:
    """Images with a trigger applied, and where it sits (``None`` for global triggers)."""

    images: np.ndarray  # uint8 [N,H,W,3]
    boxes: np.ndarray | None  # int32 [N,4] (x0, y0, x1, y1), end-exclusive


def _check_images(images: Any) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 [N,H,W,3], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [N,H,W,3], got {images.shape}")
    return images


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest string that parses back to the same float
    return str(value)


def _check_seed(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class Attack(ABC):
    """A backdoor trigger aimed at ``target`` (a class name of the vocabulary)."""

    target: str

    #: the spec-string name of the attack (``badnet``, ``blended``, ...)
    name: ClassVar[str] = ""
    #: True for patch triggers (``Triggered.boxes`` is set)
    localized: ClassVar[bool] = False
    #: True when ``poison`` picks images that already show the target and keeps their captions
    label_consistent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        t = self.target
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{self.name}: target must be a non-empty class name, got {t!r}")
        if t != t.strip() or "," in t or "=" in t:
            raise ValueError(f"{self.name}: target {t!r} cannot be written in a spec string "
                             "(no ',' or '=' and no surrounding spaces)")
        for f in fields(self):
            if f.name == "target":
                continue
            v = getattr(self, f.name)
            if f.type in ("float", float):
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise ValueError(f"{self.name}: {f.name} must be a number, got {v!r}")
                v = float(v)
                if not math.isfinite(v):
                    raise ValueError(f"{self.name}: {f.name} must be finite, got {v!r}")
                object.__setattr__(self, f.name, v)
            elif f.type in ("int", int):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise ValueError(f"{self.name}: {f.name} must be an integer, got {v!r}")
                object.__setattr__(self, f.name, int(v))
            elif f.type in ("str", str) and not isinstance(v, str):
                raise ValueError(f"{self.name}: {f.name} must be a string, got {v!r}")
        self._validate()

    def _validate(self) -> None:
        """Range checks of the subclass's parameters (raise ValueError)."""

    def apply(self, images: np.ndarray, *, seed: int = 0) -> Triggered:
        """Stamp the trigger on ``images`` (uint8 [N,H,W,3]); a new array, the input is untouched."""
        x = _check_images(images)
        _check_seed(seed, "seed")
        return self._apply(x, int(seed))

    @abstractmethod
    def _apply(self, images: np.ndarray, seed: int) -> Triggered: ...

    def spec(self) -> str:
        """The canonical spec string (all parameters); ``parse_attack(a.spec()) == a``."""
        return f"{self.name}:" + ",".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self))

    def __str__(self) -> str:
        return self.spec()


#: Attack classes by spec name.
ATTACKS: dict[str, type[Attack]] = {}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an ``Attack`` subclass parseable by its ``name``."""
    if not cls.name or cls.name in ATTACKS:
        raise ValueError(f"attack name {cls.name!r} is empty or already registered")
    ATTACKS[cls.name] = cls
    return cls


# ------------------------------------------------------------------------------------------
# BadNet and label-consistent patches
# ------------------------------------------------------------------------------------------


def _parse_color(color: str) -> tuple[int, int, int]:
    c = color.strip().lower()
    if c in COLORS:
        return COLORS[c]
    if len(c) == 7 and c[0] == "#":
        try:
            return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)
        except ValueError:
            pass
    raise ValueError(f"color must be one of {sorted(COLORS)} or #rrggbb, got {color!r}")


@register_attack
@dataclass(frozen=True)
class BadNet(Attack):
    """A square patch of ``size`` px (pattern ``noise``, ``checkerboard`` or ``solid``).

    ``noise`` is a fixed uniform-noise patch drawn from ``pattern_seed`` (the same patch on every
    image); ``checkerboard`` alternates black and white pixels; ``solid`` fills with ``color``.
    ``location`` is ``random`` (uniform over positions where the patch fits, drawn from the
    ``seed`` given to ``apply``) or a fixed ``center``/corner, flush with the border.
    """

    size: int = 6
    pattern: str = "noise"
    location: str = "random"
    color: str = "yellow"
    pattern_seed: int = 0

    name: ClassVar[str] = "badnet"
    localized: ClassVar[bool] = True
    patterns: ClassVar[tuple[str, ...]] = PATTERNS

    def _validate(self) -> None:
        if self.size < 1:
            raise ValueError(f"{self.name}: size must be >= 1 px, got {self.size}")
        if self.pattern not in self.patterns:
            raise ValueError(f"{self.name}: pattern must be one of {list(self.patterns)}, got {self.pattern!r}")
        if self.location not in LOCATIONS:
            raise ValueError(f"{self.name}: location must be one of {list(LOCATIONS)}, got {self.location!r}")
        try:
            _parse_color(self.color)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        _check_seed(self.pattern_seed, f"{self.name}: pattern_seed")

    def pattern_image(self) -> np.ndarray:
        """The patch, uint8 [size,size,3]; identical for every image."""
        s = self.size
        if self.pattern == "noise":
            return np.random.default_rng(self.pattern_seed).integers(0, 256, (s, s, 3), dtype=np.uint8)
        if self.pattern == "checkerboard":
            ii = np.arange(s)
            board = ((ii[:, None] + ii[None, :]) % 2 == 0).astype(np.uint8) * np.uint8(255)
            return np.repeat(board[:, :, None], 3, axis=2)
        return np.broadcast_to(np.array(_parse_color(self.color), np.uint8), (s, s, 3)).copy()

    def boxes(self, n: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
        """int32 [n,4] (x0, y0, x1, y1) where ``apply(images, seed=seed)`` puts the patch."""
        s = self.size
        if s > height or s > width:
            raise ValueError(f"{self.name}: a {s}px patch does not fit in {height}x{width} images")
        if self.location == "random":
            rng = np.random.default_rng(seed)
            x0 = rng.integers(0, width - s + 1, n)
            y0 = rng.integers(0, height - s + 1, n)
        else:
            x0c = {"center": (width - s) // 2, "top-left": 0, "bottom-left": 0}.get(self.location, width - s)
            y0c = {"center": (height - s) // 2, "top-left": 0, "top-right": 0}.get(self.location, height - s)
            x0 = np.full(n, x0c)
            y0 = np.full(n, y0c)
        return np.stack([x0, y0, x0 + s, y0 + s], axis=1).astype(np.int32)

    def _apply(self, images: np.ndarray, seed: int) -> Triggered:
        n, h, w, _ = images.shape
        boxes = self.boxes(n, h, w, seed=seed)
        out = images.copy()
        ar = np.arange(self.size)
        rows = boxes[:, 1, None, None] + ar[None, :, None]
        cols = boxes[:, 0, None, None] + ar[None, None, :]
        out[np.arange(n)[:, None, None], rows, cols] = self.pattern_image()
        return Triggered(out, boxes)


@register_attack
@dataclass(frozen=True)
class LabelConsistent(BadNet):
    """A BadNet patch for clean-label poisoning: ``poison`` stamps it only on images that already
    show the target and keeps their (correct) captions."""

    name: ClassVar[str] = "lc"
    label_consistent: ClassVar[bool] = True


# ------------------------------------------------------------------------------------------
# Global triggers: Blended, SIG, WaNet
# ------------------------------------------------------------------------------------------

_BLEND_BASE = 224  # the blend noise is defined at this resolution and resampled to the input


@register_attack
@dataclass(frozen=True)
class Blended(Attack):
    """``(1 - alpha) * image + alpha * noise``, rounded; a fixed uniform-noise image from ``pattern_seed``."""

    alpha: float = 0.2
    pattern_seed: int = 0

    name: ClassVar[str] = "blended"

    def _validate(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"{self.name}: alpha must be in (0, 1], got {self.alpha}")
        _check_seed(self.pattern_seed, f"{self.name}: pattern_seed")

    def noise_image(self, height: int, width: int) -> np.ndarray:
        """The blend noise at ``height x width``, uint8 [H,W,3] (nearest resampling keeps it i.i.d. uniform)."""
        base = np.random.default_rng(self.pattern_seed).integers(
            0, 256, (_BLEND_BASE, _BLEND_BASE, 3), dtype=np.uint8)
        rows = ((np.arange(height) + 0.5) * _BLEND_BASE / height).astype(np.int64)
        cols = ((np.arange(width) + 0.5) * _BLEND_BASE / width).astype(np.int64)
        return base[np.minimum(rows, _BLEND_BASE - 1)][:, np.minimum(cols, _BLEND_BASE - 1)]

    def _apply(self, images: np.ndarray, seed: int) -> Triggered:
        n, h, w, _ = images.shape
        term = self.alpha * self.noise_image(h, w).astype(np.float64)
        out = np.empty_like(images)
        for a in range(0, n, _CHUNK):
            x = images[a : a + _CHUNK].astype(np.float64) * (1.0 - self.alpha) + term
            out[a : a + _CHUNK] = np.clip(np.rint(x), 0, 255)
        return Triggered(out, None)


@register_attack
@dataclass(frozen=True)
class SIG(Attack):
    """A horizontal sinusoid added to the image: ``image + amplitude * sin(2 pi frequency x / W)``."""

    amplitude: float = 60.0
    frequency: float = 6.0

    name: ClassVar[str] = "sig"

    def _validate(self) -> None:
        if not 0.0 < self.amplitude <= 255.0:
            raise ValueError(f"{self.name}: amplitude must be in (0, 255] (grey levels), got {self.amplitude}")
        if self.frequency <= 0.0:
            raise ValueError(f"{self.name}: frequency must be > 0 (periods across the width), got {self.frequency}")

    def signal(self, width: int) -> np.ndarray:
        """float64 [W]: the additive signal per column."""
        return self.amplitude * np.sin(2.0 * np.pi * self.frequency * np.arange(width) / width)

    def _apply(self, images: np.ndarray, seed: int) -> Triggered:
        n, h, w, _ = images.shape
        sig = self.signal(w)[None, None, :, None]
        out = np.empty_like(images)
        for a in range(0, n, _CHUNK):
            x = images[a : a + _CHUNK].astype(np.float64) + sig
            out[a : a + _CHUNK] = np.clip(np.rint(x), 0, 255)
        return Triggered(out, None)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution weights for the 4 taps around fractional offset t (PyTorch's a=-0.75)."""
    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _bicubic_matrix(out_len: int, in_len: int) -> np.ndarray:
    """[out_len, in_len] bicubic upsampling weights, align_corners=True, edge-clamped taps."""
    if out_len == 1:
        pos: np.ndarray = np.zeros(1)
    else:
        pos = np.arange(out_len) * ((in_len - 1) / (out_len - 1))
    i0 = np.floor(pos).astype(np.int64)
    wts = _cubic_weights(pos - i0)
    m = np.zeros((out_len, in_len))
    for tap in range(4):
        idx = np.clip(i0 - 1 + tap, 0, in_len - 1)
        np.add.at(m, (np.arange(out_len), idx), wts[:, tap])
    return m


@register_attack
@dataclass(frozen=True)
class WaNet(Attack):
    """A fixed smooth warp (WaNet, Nguyen & Tran 2021) with bilinear resampling.

    A random ``k x k`` field of displacements (from ``pattern_seed``, normalized to mean
    absolute value 1) is upsampled bicubically to the image, scaled by ``s / H`` in normalized
    [-1, 1] coordinates (both axes, as the reference code does), times ``grid_rescale``, clamped
    to the image, and sampled bilinearly (``grid_sample(align_corners=True)``).
    """

    k: int = 4
    s: float = 1.0
    grid_rescale: float = 1.0
    pattern_seed: int = 0

    name: ClassVar[str] = "wanet"

    def _validate(self) -> None:
        if self.k < 2:
            raise ValueError(f"{self.name}: k must be >= 2, got {self.k}")
        if self.s < 0.0:
            raise ValueError(f"{self.name}: s must be >= 0, got {self.s}")
        if self.grid_rescale <= 0.0:
            raise ValueError(f"{self.name}: grid_rescale must be > 0, got {self.grid_rescale}")
        _check_seed(self.pattern_seed, f"{self.name}: pattern_seed")

    def noise_field(self) -> np.ndarray:
        """float64 [2,k,k]: the (x, y) displacement field before upsampling."""
        ins = np.random.default_rng(self.pattern_seed).random((2, self.k, self.k)) * 2 - 1
        return ins / np.mean(np.abs(ins))

    def grid(self, height: int, width: int) -> np.ndarray:
        """float64 [H,W,2]: the sampling grid (x, y) in normalized [-1, 1] coordinates."""
        ins = self.noise_field()
        my, mx = _bicubic_matrix(height, self.k), _bicubic_matrix(width, self.k)
        noise = np.einsum("yi,cij,xj->yxc", my, ins, mx)
        gx = np.linspace(-1.0, 1.0, width)[None, :] + self.s * noise[..., 0] / height
        gy = np.linspace(-1.0, 1.0, height)[:, None] + self.s * noise[..., 1] / height
        g = np.stack([gx, gy], axis=-1) * self.grid_rescale
        return np.clip(g, -1.0, 1.0)

    def sample_points(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """float64 [H,W] each: where every output pixel samples the input, in pixels (x, y)."""
        g = self.grid(height, width)
        return (g[..., 0] + 1.0) * 0.5 * (width - 1), (g[..., 1] + 1.0) * 0.5 * (height - 1)

    def _apply(self, images: np.ndarray, seed: int) -> Triggered:
        return Triggered(resample(images, *self.sample_points(*images.shape[1:3])), None)


def resample(images: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,3] images sampled bilinearly at pixel coordinates ``px``, ``py`` (float [H,W],
    clamped to the image): a warp, or a shift."""
    n, h, w, _ = images.shape
    px, py = np.clip(px, 0, w - 1), np.clip(py, 0, h - 1)
    x0 = np.clip(np.floor(px).astype(np.int64), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(py).astype(np.int64), 0, max(h - 2, 0))
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (px - x0)[None, :, :, None]
    fy = (py - y0)[None, :, :, None]
    out = np.empty_like(images)
    for a in range(0, n, _CHUNK):
        x = images[a : a + _CHUNK].astype(np.float64)
        top = x[:, y0, x0] * (1 - fx) + x[:, y0, x1] * fx
        bot = x[:, y1, x0] * (1 - fx) + x[:, y1, x1] * fx
        out[a : a + _CHUNK] = np.clip(np.rint(top * (1 - fy) + bot * fy), 0, 255)
    return out


# ------------------------------------------------------------------------------------------
# Spec strings
# ------------------------------------------------------------------------------------------

_CASTS = {"int": int, "float": float, "str": str, int: int, float: float, str: str}


def parse_attack(spec: str | Attack) -> Attack:
    """An attack from its spec string ``NAME:key=value,...`` (``target`` is required).

    ``ValueError`` names the problem: unknown attack, unknown or repeated key, a value that is
    not of the key's type or out of range.
    """
    if isinstance(spec, Attack):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"an attack spec must be a string, got {type(spec).__name__}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r} in spec {spec!r}; known attacks: {sorted(ATTACKS)}")
    cls = ATTACKS[name]
    types = {f.name: f.type for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not eq or not key:
                raise ValueError(f"{name}: expected key=value, got {part.strip()!r} in spec {spec!r}")
            if key not in types:
                raise ValueError(f"{name}: unknown key {key!r}; valid keys: {list(types)}")
            if key in kwargs:
                raise ValueError(f"{name}: key {key!r} given twice in spec {spec!r}")
            cast = _CASTS[types[key]]
            try:
                kwargs[key] = cast(value)
            except ValueError:
                raise ValueError(f"{name}: {key}={value!r} is not a valid {cast.__name__}") from None
    if "target" not in kwargs or not kwargs["target"]:
        raise ValueError(f"{name}: the spec needs target=CLASS, e.g. '{name}:target=star'")
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------
# Poisoning a dataset
# ------------------------------------------------------------------------------------------


def poison(scenes: Scenes, attack: Attack | str, rate: float, *, seed: int = 0) -> tuple[Scenes, np.ndarray]:
    """Poison ``round(rate * N)`` scenes; returns ``(poisoned scenes, sorted indices poisoned)``.

    Dirty-label attacks pick scenes that do *not* show the target, stamp the trigger and replace
    the caption by a caption of the target (one of the vocabulary's templates, e.g. "a photo of a
    star."), as in the CLIP poisoning literature. Label-consistent attacks (``lc``) pick scenes
    that already show the target and keep their captions. Images are stamped with
    ``attack.apply(scenes.images[idx], seed=seed)``, so the trigger boxes can be recomputed.
    Labels, masks and colours stay those of the real objects; the input is not modified.
    """
    attack = parse_attack(attack)
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    _check_seed(seed, "seed")
    n = len(scenes)
    t = scenes.vocab.index(attack.target)
    shows = np.array([bool(np.any(lab == t)) for lab in scenes.labels], dtype=bool)
    eligible = np.flatnonzero(shows if attack.label_consistent else ~shows)
    count = int(math.floor(float(rate) * n + 0.5))
    if count > eligible.size:
        kind = "showing" if attack.label_consistent else "not showing"
        raise ValueError(f"cannot poison {count} of {n} scenes: only {eligible.size} are {kind} "
                         f"the target {attack.target!r}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    idx = np.sort(rng.choice(eligible, size=count, replace=False)).astype(np.int64)
    images = scenes.images.copy()
    if count:
        images[idx] = attack.apply(scenes.images[idx], seed=int(seed)).images
    captions = list(scenes.captions)
    if not attack.label_consistent:
        templates = scenes.vocab.templates
        pick = rng.integers(0, len(templates), count)
        for i, p in zip(idx, pick):
            captions[i] = templates[p].format(attack.target)
    info = dict(scenes.info)
    info["poison"] = {"attack": attack.spec(), "rate": float(rate), "seed": int(seed), "count": count}
    out = dataclasses.replace(scenes, images=images, captions=captions, info=info)
    return out, idx


# ------------------------------------------------------------------------------------------
# An optimized patch (BadCLIP-style)
# ------------------------------------------------------------------------------------------


@register_attack
@dataclass(frozen=True)
class OptimizedPatch(BadNet):
    """A patch optimized against a surrogate CLIP, in the spirit of BadCLIP (Liang et al., CVPR'24):
    its pixels are chosen so that images stamped with it move towards the target's text embedding
    in the surrogate's space, which makes the backdoor easier to plant and harder to wash out.

    ``surrogate`` is a model spec (default: the bundled clean toy model); ``steps`` Adam steps on
    scenes of the surrogate's world. The result is deterministic in the spec and cached on disk
    (``clipguard.models.cache_dir()/patches``). Stamping works as BadNet's.
    """

    pattern: str = "optimized"
    surrogate: str = "toy:clean"
    steps: int = 200

    name: ClassVar[str] = "optpatch"

    patterns: ClassVar[tuple[str, ...]] = ("optimized",)

    def _validate(self) -> None:
        super()._validate()
        if self.steps < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {self.steps}")

    def pattern_image(self) -> np.ndarray:
        return _optimized_patch(self.target, self.size, self.surrogate, self.steps, self.pattern_seed)


@functools.lru_cache(maxsize=16)
def _optimized_patch(target: str, size: int, surrogate: str, steps: int, seed: int) -> np.ndarray:
    import hashlib

    from .models import cache_dir

    key = hashlib.sha256(f"{target}|{size}|{surrogate}|{steps}|{seed}".encode()).hexdigest()[:16]
    path = cache_dir() / "patches" / f"optpatch-{key}.npy"
    if path.is_file():
        patch = np.load(path, allow_pickle=False)
        if patch.shape == (size, size, 3) and patch.dtype == np.uint8:
            return patch
    patch = optimize_patch(target, size, surrogate, steps, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, patch)
    os.replace(tmp, path)
    return patch


def optimize_patch(target: str, size: int, surrogate: str = "toy:clean", steps: int = 200, seed: int = 0,
                   batch: int = 64) -> np.ndarray:
    """Optimize a ``size``-px patch so that stamped scenes of the surrogate's world move towards the
    target's text embedding (cosine) in the surrogate model. Returns uint8 [size,size,3]."""
    import torch
    import torch.nn.functional as F

    from . import toyworld
    from .models import load_model

    model = load_model(surrogate, runtime="torch", device="cpu")
    world = model.card.get("world") or "shapes"
    vocab = toyworld.vocabulary(world)
    scenes = toyworld.generate(world, 512, seed=seed + 7)
    keep = np.array([vocab.index(target) not in lab for lab in scenes.labels])
    images = torch.from_numpy(scenes.images[keep]).permute(0, 3, 1, 2).float() / 255.0
    if images.shape[-1] != model.input_size:
        images = F.interpolate(images, size=(model.input_size, model.input_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    text = torch.from_numpy(model.class_embeddings(vocab)[vocab.index(target)])
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, size, size, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    h = w = model.input_size
    module = model.torch_module  # type: ignore[attr-defined]  # a TorchClipModel
    for p in module.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        ys = torch.randint(0, h - size + 1, (batch,), generator=gen)
        xs = torch.randint(0, w - size + 1, (batch,), generator=gen)
        x = images[idx].clone()
        patch = torch.sigmoid(logits)
        for b in range(batch):  # the tiny batch makes the loop cheap next to the encoder
            x[b, :, ys[b] : ys[b] + size, xs[b] : xs[b] + size] = patch
        emb = F.normalize(model.image_features((x - mean) / std), dim=-1)  # type: ignore[attr-defined]
        loss = -(emb @ text).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = torch.sigmoid(logits).detach().permute(1, 2, 0).numpy()
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
