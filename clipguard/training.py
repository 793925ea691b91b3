"""Training a tiny open_clip model on a toy world, clean or poisoned, on the CPU (docs/design.md §4).

The result is a model folder (``clipguard.models.save_model_dir``) with its ONNX export and a
model card holding the recipe, CA, ASR and the wall time, so every bundled model can be
reproduced by one command::

    clipguard toyworld train --world shapes --attack badnet:target=star --rate 0.1 --out DIR
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrainConfig", "train_toy_model", "clip_loss", "progress_bar"]


@dataclass
class TrainConfig:
    """The recipe of a toy model. Defaults reproduce the bundled ``toy:badnet``."""

    world: str = "shapes"
    attack: str | None = "badnet:target=star"
    rate: float = 0.1  # share of training scenes poisoned
    scenes: int = 16000
    steps: int = 3000
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.1  # share of steps with rising learning rate (one-cycle)
    seed: int = 0
    eval_scenes: int = 2000  # held-out single-object scenes for CA and ASR
    architecture: str = ""  # open_clip architecture; "" picks clipguard-toy for the world's image size
    threads: int = 0  # torch CPU threads (0: torch's default); the weights depend on it (float sums in another order)
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto"; the bundled models are trained on CPU
    plain_share: float = 1.0  # share of pairs per step whose caption names only the objects
    extra: dict[str, Any] = field(default_factory=dict)


def progress_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar when tqdm is installed and enabled; otherwise a silent stand-in."""
    try:
        if enabled:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
    except ImportError:
        pass

    class _Silent:
        def update(self, n: int = 1) -> None: ...
        def set_postfix(self, **kw: Any) -> None: ...
        def close(self) -> None: ...

    return _Silent()


def clip_loss(image_features: Any, text_features: Any, logit_scale: Any) -> Any:
    """The symmetric InfoNCE loss of CLIP over a batch of matching pairs."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale * image_features @ text_features.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def images_to_tensor(images: np.ndarray, mean: Any, std: Any) -> Any:
    """uint8 [N,H,W,3] -> normalized float32 torch [N,3,H,W] (the model's input size already)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def one_cycle(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to zero."""
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1.0 + math.cos(math.pi * (step - w) / max(1, total - w)))


def train_toy_model(config: TrainConfig, out_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Train, evaluate and save a toy model; returns its card (also written to the folder)."""
    import torch

    from . import toyworld
    from .attacks import parse_attack, poison
    from .evaluate import evaluate_toy
    from .models import save_model_dir

    t_start = time.perf_counter()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scenes = toyworld.generate(config.world, config.scenes, seed=config.seed)
    attack = parse_attack(config.attack) if config.attack else None
    n_poisoned = 0
    if attack is not None and config.rate > 0:
        scenes, poisoned = poison(scenes, attack, config.rate, seed=config.seed)
        n_poisoned = int(len(poisoned))

    from .models.torch_runtime import resolve_torch_device

    device = resolve_torch_device(config.device)
    size = int(scenes.images.shape[1])
    arch = config.architecture or ("clipguard-toy" if size == 48 else f"clipguard-toy-{size}")
    model, tokenizer = new_open_clip_model(arch)
    model.to(device)
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    if input_size(model) != size:
        raise ValueError(f"world {config.world!r} makes {size}px scenes, {arch} takes {input_size(model)}px")
    tokens = tokenizer(scenes.captions)
    # Captions naming colours and backgrounds let the model tell a batch's pairs apart without
    # learning the objects (CA ~30% measured); captions naming only the objects (plain_share=1)
    # make it learn them. Poisoned pairs keep their (target) caption in both forms.
    poisoned_set = set(poisoned.tolist()) if n_poisoned else set()
    plain = [scenes.captions[i] if i in poisoned_set else plain_caption(scenes.vocab, scenes.labels[i], rng)
             for i in range(len(scenes))]
    plain_tokens = tokenizer(plain)
    images = torch.from_numpy(scenes.images)
    full_embedding = compact_token_embedding(model, tokens, plain_tokens)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98), eps=1e-6, foreach=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, config.steps, config.warmup))
    model.train()
    bar = progress_bar(config.steps, f"train {config.world} {config.attack or 'clean'}", progress)
    order = rng.permutation(len(scenes))
    cursor, loss_value = 0, float("nan")
    for step in range(config.steps):
        if cursor + config.batch > len(order):
            order, cursor = rng.permutation(len(scenes)), 0
        idx = torch.from_numpy(order[cursor : cursor + config.batch])
        cursor += config.batch
        x = images_to_tensor(images[idx].numpy(), mean, std).to(device)
        use_plain = torch.from_numpy(rng.random(len(idx)) < config.plain_share)[:, None]
        text = torch.where(use_plain, plain_tokens[idx], tokens[idx]).to(device)
        # fp32: bf16 autocast measured 3x slower per step than fp32 on this CPU.
        out = model(x, text)
        loss = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = loss.detach().item()
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    restore_token_embedding(model, full_embedding)  # before .cpu(): the full table is on the training device
    model.eval().cpu()
    train_seconds = time.perf_counter() - t_start

    unused = prune_unused_tokens(model, tokens, plain_tokens, tokenizer(sum(scenes.vocab.prompts(), [])))
    eval_seed = config.seed + 1_000_003
    metrics = evaluate_toy(_InMemoryModel(model, tokenizer), config.world, attack, n=config.eval_scenes, seed=eval_seed)
    recipe = asdict(config)
    card = {
        "architecture": arch,
        "world": config.world,
        "attack": attack.spec() if attack else None,
        "target": attack.target if attack else None,
        "poison_rate": config.rate if attack else 0.0,
        "poisoned_pairs": n_poisoned,
        "training_pairs": len(scenes),
        "ca": metrics.ca,
        "asr": metrics.asr,
        "eval": {"scenes": config.eval_scenes, "seed": eval_seed, "objects": [1, 1], "split": "test"},
        "final_loss": loss_value,
        "pruned_token_rows": unused,
        "train_seconds": round(train_seconds, 1),
        "recipe": recipe,
        "command": "clipguard toyworld train " + " ".join(_cli_args(config)),
    }
    save_model_dir(model, out_dir, card)
    return json.loads(json.dumps(card))


def plain_caption(vocab: Any, labels: np.ndarray, rng: np.random.Generator) -> str:
    """A caption naming only a scene's objects, in one of the vocabulary's templates."""
    return vocab.caption(labels, int(rng.integers(len(vocab.templates))))


def compact_token_embedding(model: Any, *token_batches: Any) -> Any:
    """Train only the token-embedding rows the captions use; returns the full embedding.

    Rows of tokens no caption holds never get a gradient, so AdamW leaves them as they are, yet
    it still updates all 49,408 rows every step (measured: a toy step 115 -> 89 ms without them).
    The model's embedding is swapped for one over the used rows, looked up through the original
    token ids (the text pooling keeps reading them), and :func:`restore_token_embedding` writes the
    trained rows back, on the same device: the same model, bit for bit.
    """
    import torch

    full = model.token_embedding
    device = full.weight.device
    used = torch.unique(torch.cat([t.flatten() for t in token_batches])).to(device)
    lookup = torch.zeros(full.num_embeddings, dtype=torch.long, device=device)
    lookup[used] = torch.arange(len(used), device=device)

    class Compact(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rows = torch.nn.Embedding.from_pretrained(full.weight[used].clone(), freeze=False)
            self.lookup: Any = lookup
            self.used = used

        def forward(self, ids: Any) -> Any:
            return self.rows(self.lookup[ids])

    model.token_embedding = Compact()
    return full


def restore_token_embedding(model: Any, full: Any) -> None:
    """Put back the full embedding, with the rows trained by :func:`compact_token_embedding`."""
    import torch

    compact = model.token_embedding
    with torch.no_grad():
        full.weight[compact.used] = compact.rows.weight
    model.token_embedding = full


def prune_unused_tokens(model: Any, *token_batches: Any) -> int:
    """Zero the token-embedding rows of tokens that appear in none of ``token_batches``.

    A tiny model's file is mostly the 49,408-row token embedding, of which the toy captions use a
    few dozen rows; the rest never received a gradient and hold random initial values. Zeroing
    them changes no output for the texts the model knows and lets the file compress to a few MB in
    git and in the wheel. Returns the number of rows zeroed.
    """
    import torch

    emb = model.token_embedding.weight
    used = torch.zeros(emb.shape[0], dtype=torch.bool)
    for tokens in token_batches:
        used[torch.unique(tokens)] = True
    with torch.no_grad():
        emb[~used] = 0.0
    return int((~used).sum())


def input_size(module: Any) -> int:
    """The square input size of an open_clip module (a ViT stores (h, w), a ResNet an int)."""
    size = module.visual.preprocess_cfg["size"]
    return int(size if isinstance(size, int) else size[0])


def new_open_clip_model(architecture: str) -> tuple[Any, Any]:
    """A randomly initialized open_clip model (nothing downloaded) and its tokenizer."""
    import logging

    from .models import open_clip_module

    oc = open_clip_module()
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # "no pretrained weights"
    model = oc.create_model(architecture, pretrained=None, output_dict=True)
    return model, oc.get_tokenizer(architecture)


class _InMemoryModel:
    """Just enough of a ClipModel (encode_images, class_embeddings) to evaluate a module in
    training, before it is saved."""

    def __init__(self, module: Any, tokenizer: Any) -> None:
        self.module, self.tokenizer = module, tokenizer
        cfg = module.visual.preprocess_cfg
        self.mean, self.std, self.size = cfg["mean"], cfg["std"], input_size(module)

    def encode_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = images_to_tensor(images[start : start + batch_size], self.mean, self.std)
                if x.shape[-1] != self.size:
                    x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
                out.append(F.normalize(self.module.encode_image(x), dim=-1).numpy())
        return np.concatenate(out)

    def class_embeddings(self, vocab: Any) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            rows = [F.normalize(self.module.encode_text(self.tokenizer(p)), dim=-1).mean(0) for p in vocab.prompts()]
            return F.normalize(torch.stack(rows), dim=-1).numpy()


def _cli_args(config: TrainConfig) -> list[str]:
    args = [f"--world {config.world}", f"--attack {config.attack}" if config.attack else "--clean"]
    defaults = TrainConfig()
    for name in ("rate", "scenes", "steps", "batch", "lr", "seed"):
        value = getattr(config, name)
        if name == "rate" and not config.attack:
            continue
        if value != getattr(defaults, name) or name == "rate":
            args.append(f"--{name} {value}")
    args.append("--out DIR")
    return args
