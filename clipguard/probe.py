"""Probe sets and vocabularies for the scan, from the strings a user types on the command line.

- ``toy:WORLD:N[:RATE[:ATTACK]]``: N scenes of a toy world, the stand-in for a sample of the
  model's training data; a share RATE of them (default 0.02) carries the trigger of ATTACK
  (default: the model card's attack, or BadNet on the world's first class for a clean model).
  The ground truth (which scenes carry the trigger, and where) comes with it.
- ``DIR``: every image file in a folder (PNG, JPEG, BMP, WebP, TIFF), resized to a common size.
  Unreadable, truncated or oversized files are skipped and listed, never fatal. Symbolic links
  are not followed out of the folder (listed as skipped), and the listing is bounded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Probe", "decode_image", "load_probe", "load_vocab"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000
MAX_LISTED = 1_000_000  # folder entries looked at before the listing stops with a clear error


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


def image_header_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) of a PNG or JPEG from its header, without decoding it (so that a
    decompression bomb is refused before it is inflated); None for other or malformed data."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return "png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):  # JPEG: walk the segments to the first start-of-frame
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return "jpeg", int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, *, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB [H,W,3]. PNG and JPEG are measured from their header
    before decoding; ``formats`` ("png", "jpeg") refuses any other; ValueError with the reason."""
    import cv2

    if not data:
        raise ValueError("empty image data")
    header = image_header_size(data)
    if formats is not None and (header is None or header[0] not in formats):
        raise ValueError(f"not a {' or '.join(f.upper() for f in formats)} image")
    if header is not None:
        _, w, h = header
        if w < 1 or h < 1:
            raise ValueError(f"image header gives a {w}x{h} image")
        if w * h > max_pixels:
            raise ValueError(f"image is {w}x{h}, over the {max_pixels:,} pixel limit")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError("not a readable image (corrupt, truncated or unsupported)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, over the {max_pixels:,} pixel limit")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_image(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit")
    return decode_image(path.read_bytes())


def _list_images(path: Path, limit: int | None) -> tuple[list[Path], list[dict[str, str]]]:
    """Image files under ``path`` in a stable order, without following links out of it; stops at
    ``limit`` files, and refuses a folder of more than MAX_LISTED entries without one."""
    root = path.resolve()
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    seen = 0
    for here, dirs, names in os.walk(path, followlinks=False):
        dirs.sort()
        seen += len(dirs) + len(names)
        if seen > MAX_LISTED and limit is None:
            raise ValueError(f"{path}: more than {MAX_LISTED:,} entries; pass a limit (--limit N) or a smaller folder")
        for name in sorted(names):
            f = Path(here) / name
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if f.is_symlink():
                try:
                    f.resolve(strict=True).relative_to(root)
                except (ValueError, OSError):
                    skipped.append({"input": str(f), "reason": "a symbolic link out of the probe folder (not followed)"})
                    continue
            files.append(f)
            if limit is not None and len(files) >= limit:
                return files, skipped
    return files, skipped


def _dir_probe(path: Path, size: int, limit: int | None) -> Probe:
    import cv2

    files, skipped = _list_images(path, limit)
    images, names = [], []
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
