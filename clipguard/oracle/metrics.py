"""How good an oracle is on scenes with known instance masks and trigger boxes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["OracleQuality", "best_iou", "measure", "measure_world"]


def best_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each ground-truth mask ``truth [g,H,W]``, its best IoU with any mask of ``pred [k,H,W]``."""
    g = truth.shape[0]
    if g == 0:
        return np.zeros(0)
    if pred.shape[0] == 0:
        return np.zeros(g)
    p = pred.reshape(pred.shape[0], -1).astype(np.float32)
    t = truth.reshape(g, -1).astype(np.float32)
    inter = t @ p.T
    union = t.sum(1)[:, None] + p.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1.0)).max(1)


@dataclass(frozen=True)
class OracleQuality:
    """Quality figures of an oracle on a set of scenes."""

    objects: int  # ground-truth objects evaluated
    object_iou: float  # mean best IoU per object
    object_recall: float  # share of objects with best IoU >= 0.5
    triggers: int  # triggered scenes evaluated
    trigger_iou: float  # mean best IoU with the trigger patch
    trigger_recall: float  # share of trigger patches with best IoU >= 0.5
    regions_per_image: float  # on clean scenes
    ms_per_image: float  # wall time per image, clean and triggered scenes together

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(oracle: Callable[[np.ndarray], Sequence[np.ndarray]], images: np.ndarray,
            masks: Sequence[np.ndarray], triggered: np.ndarray | None = None,
            trigger_boxes: np.ndarray | None = None, batch: int = 64) -> OracleQuality:
    """Best-IoU statistics of ``oracle`` on ``images`` with ground-truth ``masks`` (per image
    bool ``[k,H,W]``) and, optionally, on ``triggered`` images whose patch sits at
    ``trigger_boxes [N,4]`` (x0, y0, x1, y1)."""
    t0 = time.perf_counter()
    preds: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        preds.extend(oracle(images[i:i + batch]))
    ious = [best_iou(p, np.asarray(m, bool)) for p, m in zip(preds, masks)]
    obj = np.concatenate(ious) if ious else np.zeros(0)
    n_images = len(images)
    trig = np.zeros(0)
    if triggered is not None:
        if trigger_boxes is None or len(trigger_boxes) != len(triggered):
            raise ValueError("trigger_boxes must give one box per triggered image")
        h, w = triggered.shape[1:3]
        tpreds: list[np.ndarray] = []
        for i in range(0, len(triggered), batch):
            tpreds.extend(oracle(triggered[i:i + batch]))
        vals = []
        for p, (x0, y0, x1, y1) in zip(tpreds, np.asarray(trigger_boxes)):
            t = np.zeros((1, h, w), bool)
            t[0, y0:y1, x0:x1] = True
            vals.append(best_iou(p, t)[0])
        trig = np.asarray(vals)
        n_images += len(triggered)
    elapsed = time.perf_counter() - t0
    mean = lambda x: float(x.mean()) if x.size else float("nan")  # noqa: E731
    return OracleQuality(
        objects=int(obj.size), object_iou=mean(obj), object_recall=mean(obj >= 0.5),
        triggers=int(trig.size), trigger_iou=mean(trig), trigger_recall=mean(trig >= 0.5),
        regions_per_image=float(np.mean([p.shape[0] for p in preds])) if preds else float("nan"),
        ms_per_image=1000.0 * elapsed / max(n_images, 1),
    )


def measure_world(oracle: Callable[[np.ndarray], Sequence[np.ndarray]], world: str = "shapes",
                  n: int = 200, *, seed: int = 1000, attack: str | None = None,
                  size: int | None = None) -> OracleQuality:
    """:func:`measure` on ``n`` held-out scenes of a toy world (``split="test"``, so scenes a
    trained oracle never saw) and the same scenes with a BadNet patch (``attack``, default
    ``badnet`` aimed at the world's first class)."""
    from .. import toyworld
    from ..attacks import parse_attack

    scenes = toyworld.generate(world, n, seed=seed, split="test", size=size)
    spec = attack or f"badnet:target={scenes.vocab.classnames[0]}"
    trig = parse_attack(spec).apply(scenes.images, seed=seed)
    if trig.boxes is None:
        raise ValueError(f"attack {spec!r} is not localized: no trigger boxes to measure against")
    return measure(oracle, scenes.images, scenes.masks, trig.images, trig.boxes)
