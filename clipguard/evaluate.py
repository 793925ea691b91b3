"""Clean accuracy and attack success rate, measured one way everywhere (docs/design.md §3).

- CA: zero-shot top-1 accuracy over the evaluation images with the vocabulary's prompts.
- ASR: the trigger is applied to every evaluation image whose true label is not the target;
  ASR is the share of those classified as the target (top-1). Target-class images are always
  excluded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Evaluation", "evaluate", "evaluate_toy", "zero_shot_predict"]


@dataclass
class Evaluation:
    """CA (and, with an attack, ASR) of a model; rates are fractions in [0, 1]."""

    ca: float
    n: int  # evaluation images
    asr: float | None = None
    n_asr: int = 0  # images the trigger was applied to (true label not the target)
    attack: str | None = None
    target: str | None = None
    world: str | None = None  # set by evaluate_toy
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def zero_shot_predict(model: Any, images: np.ndarray, text_emb: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Top-1 label index per image, int64 [N]."""
    emb = model.encode_images(images, batch_size=batch_size)
    return np.asarray((emb @ text_emb.T).argmax(axis=1), dtype=np.int64)


def evaluate(
    model: Any,
    images: np.ndarray,
    labels: Any,
    vocab: Any,
    attack: Any = None,
    *,
    seed: int = 0,
    batch_size: int = 256,
) -> Evaluation:
    """CA and (with an attack) ASR of ``model`` on ``images`` with true ``labels``.

    Args:
        model: a loaded model (``clipguard.load_model``) or anything with ``encode_images`` and
            ``class_embeddings``.
        images: uint8 [N,H,W,3]; labels: int [N] true class indices into ``vocab``.
        attack: an ``Attack`` or its spec string; its ``target`` must be in the vocabulary.

    Returns an :class:`Evaluation`; ``asr`` is None without an attack.
    """
    from .attacks import Attack, parse_attack

    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != len(images):
        raise ValueError(f"labels must be [N] with N = {len(images)} images, got shape {labels.shape}")
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= len(vocab)):
        raise ValueError(f"labels must be class indices in [0, {len(vocab)})")
    if len(images) == 0:
        raise ValueError("evaluate needs at least one image")
    text = model.class_embeddings(vocab)
    pred = zero_shot_predict(model, images, text, batch_size)
    result = Evaluation(ca=float((pred == labels).mean()), n=int(len(labels)), seed=seed)
    if attack is None:
        return result
    if isinstance(attack, str):
        attack = parse_attack(attack)
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be an Attack or a spec string, got {type(attack).__name__}")
    target = vocab.index(attack.target)
    victims = np.nonzero(labels != target)[0]
    if victims.size == 0:
        raise ValueError("every evaluation image shows the target: ASR is undefined")
    triggered = attack.apply(np.asarray(images)[victims], seed=seed).images
    hit = zero_shot_predict(model, triggered, text, batch_size) == target
    result.asr, result.n_asr, result.attack, result.target = float(hit.mean()), int(victims.size), attack.spec(), attack.target
    return result


def evaluate_toy(model: Any, world: str = "shapes", attack: Any = None, *, n: int = 2000, seed: int = 1) -> Evaluation:
    """:func:`evaluate` on ``n`` held-out single-object scenes of a toy world (the test split),
    the way model cards, the CLI and the benchmarks measure CA and ASR."""
    from . import toyworld

    held_out = toyworld.generate(world, n, seed=seed, objects=(1, 1), split="test")
    result = evaluate(model, held_out.images, held_out.primary, held_out.vocab, attack, seed=seed)
    result.world = world
    return result
