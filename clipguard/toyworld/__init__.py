"""Toy worlds: scenes with exact ground truth (instance masks, labels, captions), made offline.

``shapes``: procedural coloured shapes (10 classes, default 48x48, no data needed).
``fashion``: real Fashion-MNIST items composited into scenes (default 64x64; needs the Debian
package ``dataset-fashion-mnist``).

>>> scenes = generate("shapes", 1000, seed=0)                       # training scenes, 1-3 objects
>>> held_out = generate("shapes", 500, seed=1, objects=(1, 1), split="test")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..vocab import Vocabulary
from . import fashion, shapes
from .scenes import BACKGROUNDS, PALETTE, Scenes

__all__ = ["World", "WORLDS", "Scenes", "PALETTE", "BACKGROUNDS", "generate", "vocabulary"]


@dataclass(frozen=True)
class World:
    """A toy world: its name, default image size, vocabulary and scene generator."""

    name: str
    default_size: int
    min_size: int
    description: str
    _generate: Callable[..., Scenes]
    _vocabulary: Callable[[], Vocabulary]

    def generate(self, n: int, **kwargs: Any) -> Scenes:
        return self._generate(n, **kwargs)

    def vocabulary(self) -> Vocabulary:
        return self._vocabulary()


WORLDS: dict[str, World] = {
    "shapes": World("shapes", shapes.DEFAULT_SIZE, shapes.MIN_SIZE,
                    "procedural coloured shapes on textured backgrounds (10 classes)",
                    shapes.generate, shapes.vocabulary),
    "fashion": World("fashion", fashion.DEFAULT_SIZE, fashion.MIN_SIZE,
                     "Fashion-MNIST items tinted and composited on textured backgrounds (10 classes)",
                     fashion.generate, fashion.vocabulary),
}


def _world(world: str) -> World:
    try:
        return WORLDS[world]
    except (KeyError, TypeError):
        raise ValueError(f"unknown world {world!r}; choose one of {sorted(WORLDS)}") from None


def generate(world: str, n: int, *, seed: int = 0, size: int | None = None,
             objects: tuple[int, int] = (1, 3), split: str = "train", **kwargs: Any) -> Scenes:
    """``n`` scenes of ``world`` with 1-3 objects each (``objects=(1, 1)`` for single-object scenes).

    Deterministic in its arguments. ``split="test"`` gives held-out scenes: the fashion world
    draws items from Fashion-MNIST's t10k file, and both worlds use a separate seed stream.
    ``size=None`` means the world's default (shapes 48, fashion 64).
    """
    return _world(world).generate(n, seed=seed, size=size, objects=objects, split=split, **kwargs)


def vocabulary(world: str) -> Vocabulary:
    """The class names and prompt templates of ``world``."""
    return _world(world).vocabulary()
