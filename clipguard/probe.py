"""Probe sets and vocabularies for the scan, from the strings a user types on the command line.

- ``toy:WORLD:N[:RATE[:ATTACK]]``: N scenes of a toy world, the stand-in for a sample of the
  model's training data; a share RATE of them (default 0.02) carries the trigger of ATTACK
  (default: the model card's attack, or BadNet on the world's first class for a clean model).
  The ground truth (which scenes carry the trigger, and where) comes with it.
- ``DIR``: every image file in a folder (PNG, JPEG, BMP, WebP, TIFF), resized to a common size.
  Unreadable, truncated or oversized files are skipped and listed, never fatal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Probe", "load_probe", "load_vocab"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000


@dataclass
class Probe:
    images: np.ndarray  # uint8 [N,H,W,3]
    names: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Ground truth for toy probes: indices that carry the trigger, and their trigger boxes.
    poisoned: np.ndarray | None = None
    trigger_boxes: np.ndarray | None = None
    attack: str | None = None
    labels: np.ndarray | None = None  # primary true label per image (toy probes)


def load_vocab(spec: str) -> Any:
    """``toy:WORLD`` or a JSON vocabulary file."""
    from . import toyworld
    from .vocab import Vocabulary

    if spec.startswith("toy:"):
        return toyworld.vocabulary(spec[4:])
    return Vocabulary.from_json(spec)


def _toy_probe(spec: str, model: Any, seed: int) -> Probe:
    from . import toyworld
    from .attacks import parse_attack, poison

    parts = spec.split(":", 4)
    if len(parts) < 3:
        raise ValueError(f"a toy probe is toy:WORLD:N[:RATE[:ATTACK]], got {spec!r}")
    world = parts[1]
    try:
        n = int(parts[2])
        rate = float(parts[3]) if len(parts) > 3 and parts[3] else 0.02
    except ValueError:
        raise ValueError(f"toy probe {spec!r}: N must be an integer and RATE a number") from None
    if n < 1 or not 0.0 <= rate <= 1.0:
        raise ValueError(f"toy probe {spec!r}: need N >= 1 and 0 <= RATE <= 1")
    card = getattr(model, "card", None) or {}
    attack_spec = parts[4] if len(parts) > 4 else card.get("attack")
    vocab = toyworld.vocabulary(world)
    if not attack_spec:
        attack_spec = f"badnet:target={vocab.classnames[0]}"
    attack = parse_attack(attack_spec)
    scenes = toyworld.generate(world, n, seed=seed + 424_242)
    poisoned_scenes, idx = poison(scenes, attack, rate, seed=seed)
    boxes = attack.apply(scenes.images[idx], seed=seed).boxes if attack.localized else None
    return Probe(images=poisoned_scenes.images, names=[f"{world}-{i}" for i in range(n)], poisoned=idx,
                 trigger_boxes=boxes, attack=attack.spec(), labels=scenes.primary)


def _read_image(path: Path) -> np.ndarray:
    import cv2

    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if img is None:
        raise ValueError("not a readable image (corrupt, truncated or unsupported)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, over {MAX_PIXELS} pixels")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _dir_probe(path: Path, size: int, limit: int | None) -> Probe:
    import cv2

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    images, names, skipped = [], [], []
    for f in files:
        try:
            img = _read_image(f)
        except (ValueError, OSError, cv2.error) as exc:
            skipped.append({"input": str(f), "reason": str(exc).strip().splitlines()[-1]})
            continue
        interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
        images.append(cv2.resize(img, (size, size), interpolation=interp))
        names.append(str(f.relative_to(path)))
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return Probe(images=arr, names=names, skipped=skipped)


def load_probe(spec: str, model: Any, *, seed: int = 0, size: int | None = None, limit: int | None = None) -> Probe:
    """A probe set from a spec (see the module docstring). Folder images are resized to ``size``
    (default: the model's input size)."""
    if spec.startswith("toy:"):
        return _toy_probe(spec, model, seed)
    path = Path(os.path.expanduser(spec))
    if not path.is_dir():
        raise ValueError(f"probe {spec!r} is neither toy:WORLD:N[:RATE[:ATTACK]] nor a folder of images")
    return _dir_probe(path, int(size or model.input_size), limit)
