"""The trigger toolbox shared by the scan, the synthesis, repair and the guard.

A :class:`Trigger` is what the scan hands on: a *patch* (``image`` [s,s,3] with a ``mask`` [s,s]
in [0,1], pasted at ``box`` when the backdoor was learned at one place, else anywhere) or a
*global* pattern (``image`` [H,W,3] holding an additive offset stored +128). Patches come from
two sources: reconstructed from the probe's victims (Algorithm 2) or synthesized from clean
images (:mod:`clipguard.synthesis`); the confirmation below treats both the same way.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from . import regions

__all__ = [
    "Box",
    "Confirmation",
    "Trigger",
    "apply_trigger",
    "confirm",
    "high_pass",
    "match_global",
    "match_patch",
    "random_patches",
    "reconstruct_patch",
    "stamp",
    "warp_image",
]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass
class Trigger:
    """A trigger, reconstructed or synthesized.

    ``kind``: "patch", "global" or "warp". ``image``: uint8, the patch [s,s,3], the global offset
    [H,W,3] (+128), or a warp's displacement field [H,W,3] (:func:`warp_image`). ``mask``: float32 [s,s] in [0,1] (patches; all ones for a pasted patch).
    ``box``: where the victims carry a patch (x0, y0, x1, y1) in probe-image pixels; ``None``
    means "anywhere". ``position_dependent``: the backdoor fires at ``box`` but not elsewhere
    (``None`` when not measured). ``source``: "probe" or "synthesis".
    """

    kind: str
    image: np.ndarray
    label: str = ""
    mask: np.ndarray | None = None
    box: Box | None = None
    position_dependent: bool | None = None
    source: str = "probe"

    def __post_init__(self) -> None:
        if self.kind not in ("patch", "global", "warp"):
            raise ValueError(f"trigger kind must be 'patch', 'global' or 'warp', got {self.kind!r}")
        self.image = np.asarray(self.image, dtype=np.uint8)
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"trigger image must be uint8 [h,w,3], got shape {self.image.shape}")
        if self.kind == "patch":
            if self.mask is None:
                self.mask = np.ones(self.image.shape[:2], np.float32)
            self.mask = np.clip(np.asarray(self.mask, np.float32), 0.0, 1.0)
            if self.mask.shape != self.image.shape[:2]:
                raise ValueError(f"trigger mask {self.mask.shape} does not match its image {self.image.shape[:2]}")
        else:
            self.mask = None
        if self.box is not None:
            self.box = tuple(int(v) for v in self.box)  # type: ignore[assignment]

    @property
    def size(self) -> list[int] | None:
        """A patch's [height, width]; None for a global pattern."""
        return [int(self.image.shape[0]), int(self.image.shape[1])] if self.kind == "patch" else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (image and mask as base64 PNG)."""
        from .report import png_bytes

        d: dict[str, Any] = {"kind": self.kind, "label": self.label, "source": self.source, "size": self.size,
                             "box": list(self.box) if self.box else None,
                             "position_dependent": self.position_dependent, "shape": list(self.image.shape),
                             "image_png": base64.b64encode(png_bytes(self.image)).decode()}
        if self.mask is not None:
            d["mask_png"] = base64.b64encode(png_bytes(np.round(self.mask * 255).astype(np.uint8))).decode()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trigger:
        image = _png_array(d["image_png"])
        mask = _png_array(d["mask_png"])[:, :, 0].astype(np.float32) / 255.0 if d.get("mask_png") else None
        return cls(kind=d["kind"], image=image, label=d.get("label", ""), mask=mask,
                   box=tuple(d["box"]) if d.get("box") else None,  # type: ignore[arg-type]
                   position_dependent=d.get("position_dependent"), source=d.get("source", "probe"))


def _png_array(b64: str) -> np.ndarray:
    """A base64 PNG written by :func:`clipguard.report.png_bytes` -> uint8 [h,w,3]."""
    from .models.base import require

    cv2 = require("cv2", purpose="reading report images")
    buf = np.frombuffer(base64.b64decode(b64), np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("a report image is not a readable PNG")
    return np.ascontiguousarray(img[:, :, ::-1])


# ---------------------------------------------------------------------------------- patches
def stamp(images: np.ndarray, patch: np.ndarray, rng: np.random.Generator, *, at: Box | None = None,
          mask: np.ndarray | None = None) -> np.ndarray:
    """``patch`` pasted on each image (a copy): at the top-left corner of ``at`` if given, else at
    a random place; blended through ``mask`` [s,s] in [0,1] if given."""
    out = images.copy()
    s_h, s_w = patch.shape[:2]
    h, w = images.shape[1:3]
    if s_h > h or s_w > w:
        raise ValueError(f"a {s_h}x{s_w} patch does not fit {h}x{w} images")
    m = None if mask is None else np.asarray(mask, np.float32)[:, :, None]
    for k in range(len(out)):
        if at is None:
            y, x = int(rng.integers(0, h - s_h + 1)), int(rng.integers(0, w - s_w + 1))
        else:
            x, y = min(max(0, at[0]), w - s_w), min(max(0, at[1]), h - s_h)
        if m is None:
            out[k, y : y + s_h, x : x + s_w] = patch
        else:
            region = out[k, y : y + s_h, x : x + s_w].astype(np.float32)
            out[k, y : y + s_h, x : x + s_w] = np.round((1 - m) * region + m * patch).astype(np.uint8)
    return out


def random_patches(images: np.ndarray, donors: np.ndarray, s: int, rng: np.random.Generator,
                   at: Box | None = None) -> np.ndarray:
    """The control of a patch trigger: each image (a copy) with an ``s``-px patch cut from a
    random place of a random ``donors`` image pasted at ``at`` (or a random place)."""
    pick = donors[rng.integers(0, len(donors), len(images))]
    ys = rng.integers(0, donors.shape[1] - s + 1, len(images))
    xs = rng.integers(0, donors.shape[2] - s + 1, len(images))
    out = images.copy()
    for k in range(len(images)):
        out[k] = stamp(out[k : k + 1], pick[k, ys[k] : ys[k] + s, xs[k] : xs[k] + s], rng, at=at)[0]
    return out


def _fit_global(trigger: Trigger, shape: tuple[int, int]) -> np.ndarray:
    """A global trigger's offset image (or a warp's field) resized to images of ``shape`` (a
    synthesized pattern lives at the model's input size; probes may differ)."""
    if trigger.image.shape[:2] == shape:
        return trigger.image
    from .models.base import require

    cv2 = require("cv2", purpose="resizing triggers")
    return cv2.resize(trigger.image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


WARP_SCALE = 1024.0  # a warp's image: 128 + the displacement, as a share of the image side, times this


def warp_image(dx: np.ndarray, dy: np.ndarray, nearest: bool = False) -> np.ndarray:
    """A warp trigger's image from its displacement field (pixels, float [H,W] each): channels
    0 and 1 hold x and y as a share of the side (so it fits any image size), channel 2 the
    resampling -- 255 bilinear, 0 nearest pixel (the same geometry without interpolation)."""
    h, w = dx.shape
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = np.clip(np.round(128 + dx / w * WARP_SCALE), 0, 255)
    img[..., 1] = np.clip(np.round(128 + dy / h * WARP_SCALE), 0, 255)
    img[..., 2] = 0 if nearest else 255
    return img


def _warp(images: np.ndarray, trigger: Trigger) -> np.ndarray:
    from .attacks import resample

    h, w = images.shape[1:3]
    field = _fit_global(trigger, (h, w)).astype(np.float64)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    px, py = gx + (field[..., 0] - 128) / WARP_SCALE * w, gy + (field[..., 1] - 128) / WARP_SCALE * h
    if field[..., 2].mean() < 128:  # nearest pixel: a permutation of pixels, no interpolation
        px, py = np.floor(px + 0.5), np.floor(py + 0.5)
    return resample(images, px, py)


def apply_trigger(images: np.ndarray, trigger: Trigger, rng: np.random.Generator, *,
                  anywhere: bool = False) -> np.ndarray:
    """A trigger applied to images (a copy): a patch pasted at its ``box`` (or at random places
    when it has none, or ``anywhere``), a global offset added to every pixel, a warp resampled."""
    if trigger.kind == "patch":
        return stamp(images, trigger.image, rng, at=None if anywhere else trigger.box, mask=trigger.mask)
    if trigger.kind == "warp":
        return _warp(images, trigger)
    offset = _fit_global(trigger, images.shape[1:3]).astype(np.int16) - 128
    return np.clip(images.astype(np.int16) + offset, 0, 255).astype(np.uint8)


def _crop_resized(image: np.ndarray, box: Box, side: int) -> np.ndarray:
    """The box of an image resized to side x side (float32, 0..255)."""
    views = regions.render(image[None], np.array([box], np.int32), [0], "crop", side, (0, 0, 0), (1 / 255,) * 3)
    return views[0].transpose(1, 2, 0)  # (x/255 - 0) / (1/255) = x


def reconstruct_patch(images: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """A robust average of the victims' trigger boxes: each crop resized to the median box side,
    then the per-pixel median. uint8 [s,s,3]."""
    if len(images) == 0 or len(images) != len(boxes):
        raise ValueError(f"need one box per image and at least one image, got {len(images)} and {len(boxes)}")
    sides = [max(b[2] - b[0], b[3] - b[1]) for b in boxes]
    side = max(1, int(np.median(sides)))
    crops = np.stack([_crop_resized(img, b, side) for img, b in zip(images, boxes)])
    return np.clip(np.round(np.median(crops, axis=0)), 0, 255).astype(np.uint8)


def match_patch(image: np.ndarray, patch: np.ndarray, box: Box | None = None) -> tuple[Box, float]:
    """Where ``image`` matches ``patch`` best -- within one patch side of ``box``, or anywhere --
    and how well: the mean squared difference over the patch's own variance (0 is an exact copy,
    unrelated content scores about 1 or more)."""
    s = patch.shape[0]
    h, w = image.shape[:2]
    if s > min(h, w):
        return (box or (0, 0, w, h)), float("inf")
    if box is None:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0, y0 = max(0, min(box[0] - s, w - s)), max(0, min(box[1] - s, h - s))
        x1, y1 = min(w, max(box[2] + s, x0 + s)), min(h, max(box[3] + s, y0 + s))
    from .models.base import require

    cv2 = require("cv2", purpose="matching trigger patches")
    ref = np.ascontiguousarray(patch, np.float32)
    # Sum of squared differences at every offset (OpenCV's template matching, summed over channels).
    ssd = cv2.matchTemplate(np.ascontiguousarray(image[y0:y1, x0:x1], np.float32), ref, cv2.TM_SQDIFF)
    dy, dx = np.unravel_index(int(np.argmin(ssd)), ssd.shape)
    score = float(max(0.0, float(ssd[dy, dx])) / ref.size / (ref.var() + 1.0))
    return (x0 + int(dx), y0 + int(dy), x0 + int(dx) + s, y0 + int(dy) + s), score


# ---------------------------------------------------------------------------------- global patterns
def _box_blur(x: np.ndarray, k: int) -> np.ndarray:
    """A k x k box blur of float32 [N,H,W,3] (edge-padded), by summed-area tables."""
    r = k // 2
    pad = np.pad(x, ((0, 0), (r, k - 1 - r), (r, k - 1 - r), (0, 0)), mode="edge")
    c = np.cumsum(np.cumsum(pad, axis=1), axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0), (0, 0)))
    h, w = x.shape[1:3]
    return (c[:, k : k + h, k : k + w] - c[:, :h, k : k + w] - c[:, k : k + h, :w] + c[:, :h, :w]) / float(k * k)


def high_pass(images: np.ndarray, k: int = 5) -> np.ndarray:
    """images minus a k x k box blur (float32): the fine texture a blended trigger lives in."""
    x = images.astype(np.float32)
    return x - _box_blur(x, k)


def match_global(images: np.ndarray, trigger: Trigger) -> np.ndarray | None:
    """How strongly each image carries a global trigger: the correlation of the images' fine
    texture (:func:`high_pass`) with the pattern's, float32 [N] in [-1, 1] (clean images about 0).
    None when the pattern has little fine texture (a low-frequency pattern such as a sinusoid,
    which image content would mask in any band): then there is no cheap test."""
    offset = _fit_global(trigger, images.shape[1:3]).astype(np.float32) - 128.0
    fine = high_pass(offset[None])[0]
    centred = offset - offset.mean()
    if float((fine**2).sum()) < 0.5 * float((centred**2).sum()):
        return None
    hp = high_pass(images).reshape(len(images), -1)
    ref = (fine - fine.mean()).ravel()
    return (hp @ ref / (np.linalg.norm(hp, axis=1) * np.linalg.norm(ref) + 1e-9)).astype(np.float32)


# ---------------------------------------------------------------------------------- confirmation
@dataclass
class Confirmation:
    """A trigger stamped on clean images against a control: ``flip_rate`` (the estimated ASR) and
    ``control_rate`` are the shares labelled with the suspect label; ``anywhere_rate`` is the
    flip rate with a patch pasted at random places (position dependence)."""

    flip_rate: float
    control_rate: float
    images: int
    anywhere_rate: float | None = None

    @property
    def excess(self) -> float:
        return self.flip_rate - self.control_rate


def confirm(classify: Callable[[np.ndarray], np.ndarray], images: np.ndarray, trigger: Trigger, label: int,
            control: np.ndarray, rng: np.random.Generator, *, margin: float | None = None,
            first: int = 50) -> Confirmation:
    """Stamp ``trigger`` on clean ``images`` and compare how often ``classify`` (uint8 images ->
    top-1 labels) answers ``label`` with how often it does on ``control`` (the same images with a
    random patch or pattern of the same kind). A patch with a box is also pasted at random
    places, to report whether the backdoor depends on the position.

    With ``margin`` (the excess that confirms), sequential: the first ``first`` images decide when
    their excess lies three standard errors or more from the margin, either way (a backdoor's
    excess is near 1, a clean label's near 0); only a close call stamps the rest."""
    n_all = len(images)
    stops = [first, n_all] if margin is not None and first < n_all else [n_all]
    hits = [np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, bool)]
    done = 0
    for stop in stops:
        part = images[done:stop]
        batch = [apply_trigger(part, trigger, rng), control[done:stop]]
        if trigger.kind == "patch" and trigger.box is not None:
            batch.append(apply_trigger(part, trigger, rng, anywhere=True))
        got = classify(np.concatenate(batch)) == label
        hits = [np.concatenate([h, got[k * len(part) : (k + 1) * len(part)]]) for k, h in enumerate(hits)]
        done = stop
        flip, ctrl = float(hits[0].mean()), float(hits[1].mean())
        se = np.sqrt((flip * (1 - flip) + ctrl * (1 - ctrl) + 1.0 / done) / done)
        if margin is None or abs(flip - ctrl - margin) >= 3 * se:
            break
    anywhere = float(hits[2].mean()) if len(hits[2]) else None
    return Confirmation(flip_rate=flip, control_rate=ctrl, images=done, anywhere_rate=anywhere)

