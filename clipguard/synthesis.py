"""Trigger synthesis: find a backdoor from clean images alone.

A model from a zoo comes without its training data, so no probe image carries the trigger. For
every label of the vocabulary, all labels in one batched PyTorch job, the synthesis searches the
smallest input change that sends clean probe images to that label (Neural Cleanse's idea,
CLIP-Inspector's setting: from unlabeled images, against the text embeddings of the labels):

- a *patch*: a mask ``m`` and a pattern ``p``, ``x' = (1 - m) x + m p``, with the mask's area
  penalized; the penalty of each label adapts (raised while the label's flip rate is above the
  target, lowered below it), and the smallest mask that reached the target is kept;
- a *square*: a patch of fixed side (a trigger's size) at each corner, where BadNet's fixed
  triggers sit, only its pattern optimized: a free mask on a dozen images finds a clean label's
  adversarial pixels as cheaply as a trigger at one place, and settles there instead;
- a *global* pattern: an additive offset ``x' = x + d`` under an RMS penalty, adapted the same way
  (a blend, a sinusoid, a colour cast).

A backdoor target needs a far smaller change than every other label: the median-absolute-
deviation index of the log sizes (low side) marks suspects. A clean model also has small
"adversarial patches" for some labels, so each suspect goes through the oracle check (the
isolated patch must show the label while the image's objects keep their own) and the same
confirmation as a reconstructed trigger (stamped on held-out clean images against a random
control). Triggers that are not small -- SIG's sinusoids, Blended's noise, WaNet's warps -- are
swept instead (:func:`_sweep`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, AbstractSet, Any, Callable

import numpy as np

from .aggregate import backdoor_score
from .findings import Suspect
from .scoring import probabilities
from .trigger import Trigger, apply_trigger, confirm, random_patches, warp_image

if TYPE_CHECKING:
    from .scan import ScanConfig, _Encoder

__all__ = ["Synthesis", "SynthesisConfig", "SynthesisUnavailable", "synthesize"]


class SynthesisUnavailable(RuntimeError):
    """The synthesis cannot run for this model (no torch weights, torch missing, too few images)."""


# Image towers under this many parameters run the optimized kinds side by side by default: the toy
# towers (1.3 M) gain 1.0-1.2x; ViT-B/32 (88 M) lost 1.36x and peaked at twice the memory (9.2 GB)
SMALL_TOWER = 10_000_000
KINDS = ("patch", "square", "global", "sinusoid", "noise", "warp")  # the first three optimized, the others swept
SWEPT = ("sinusoid", "noise", "warp")
PATCHES = ("patch", "square")  # kinds stamped as a patch at a place
FIXED_SIZE = SWEPT + ("square",)  # kinds whose size is set, not found: no size anomaly, suspects by held-out flip
MIN_HELD_OUT = 40  # held-out images: half screen every label's trigger, half confirm the suspects
# SIG's family, swept: sinusoids across the width or down the height, at these periods across the
# image, two phases and two amplitudes (grey levels). An attacker picks a frequency and an
# amplitude; a backdoor learned at one fires at its neighbours too (measured on the toy zoo).
SWEEP_PERIODS = (1, 2, 3, 4, 6, 8, 12, 16, 24)  # a trigger's selectivity is testable at 2-12 (48 px)
SWEEP_AMPLITUDES = (30.0, 60.0)
SWEEP_IMAGES = 50  # of the screening half of the held-out images
# Blended's family: i.i.d. uniform noise in grains of these model-input pixels, at these
# amplitudes (grey levels; Blended's alpha 0.15-0.3 adds noise of about 128 alpha).
NOISE_GRAINS = (1, 2)
NOISE_AMPLITUDES = (20.0, 40.0)
# WaNet's family: smooth random warps (WaNet's k x k control grid and strength s) and a shift by
# half a pixel, all resampled bilinearly. A backdoor learned on one warp can answer to any
# resampling (measured: a toy WaNet model sends 76% of images to its target under any random
# warp, 88% under a sub-pixel shift); one tied to its own field alone is not found this way.
WARP_GRIDS = (4, 8)
WARP_STRENGTHS = (1.0, 2.0)


@dataclass
class SynthesisConfig:
    """The synthesis recipe. ``images``: clean probe images optimized on (per step, every label
    sees all of them but its own); ``holdout``: further images the suspects are confirmed on."""

    images: int = 12  # few images: a label's trigger must then generalize to be a suspect (below)
    holdout: int = 200  # half screens every label's trigger, half confirms the suspects
    steps: int = 200
    lr: float = 0.2  # Adam step of the patch's mask and pattern logits
    global_lr: float = 0.01  # Adam step of the global offset (pixels in [0, 1])
    target_flip: float = 0.9  # a trigger must send this share of images to its label
    patch_cost: float = 0.2  # initial weight of the mask area (adapted per label)
    # ... and of the mask's total variation beside its area, as in TABOR: a mask free to scatter
    # finds a clean model's adversarial pixels as readily as a trigger, and misses a trigger at one
    # place (a solid 6 px corner patch: held-out flip 6% scattered, 84-92% with this term).
    patch_smoothness: float = 1.0
    # The square: its side (share of the model input's side: 8 px at 48 px, 2.8% of the image,
    # covers BadNet's corner triggers of 3-8 px flush with the border), steps and images.
    square_side: float = 1 / 6
    square_steps: int = 30
    square_images: int = 8
    square_lr: float = 0.5  # 0.2 (the free mask's) left an 8 px trigger's square unconverged on one seed of three
    # A backdoor learned at one corner answers there, not at the others; a clean model's adversarial
    # square for a label works at every corner (a clean toy model's "ring": 67-79% at all four; the
    # zoo's solid corner BadNets: 54-90 points over their best other corner).
    square_selectivity: float = 0.3
    # ... and must send this share of held-out images (the free mask's bar, generalize, is lower):
    # at 8 px the square is larger than most triggers it covers, and a weakly trained clean model
    # has adversarial squares for several labels (the toy zoo's clean-lr: 64-77% for three, at
    # one corner), while a corner BadNet's trigger inside the square reproduces about its ASR
    # (85-98% on the zoo's corner BadNets whose backdoor took)
    square_share: float = 0.8
    global_cost: float = 5.0  # initial weight of the offset's RMS (adapted per label)
    adapt_every: int = 5
    anomaly: float = 2.0  # MAD index of the log size, low side, above which a label is a suspect ...
    generalize: float = 0.5  # ... or the held-out flip rate of its trigger, whatever its size
    # The index above which a patch is the labels' size outlier: the oracle check's box rule does
    # not apply (the zoo's clean models' large adversarial patches reached 4.5; a BadNet ring at
    # random places 9.2)
    outlier_anomaly: float = 5.0
    sweep_share: float = 0.8  # a swept pattern (sinusoid, noise) must send this share of held-out images to its label ...
    sweep_selectivity: float = 0.5  # ... and that many points more than its references (_family)
    # A confirmed swept trigger's control (the turned wave, coarse noise, the whole-pixel warp) may
    # send at most this share of the trigger's rate: a backdoor learned on one pattern ignores its
    # sibling (the zoo's SIG, Blended and WaNet targets: at most 0.40), a label that answers to the
    # family at large does not (a clean model's "ring" under stripes: 72% against 44% turned)
    swept_control: float = 0.5
    min_images: int = 16  # fewer probe images: the synthesis does not run at all
    kinds: tuple[str, ...] = KINDS
    refine_steps: int = 100  # a patch suspect's pattern re-optimized at random places (0: off)
    oracle_check: bool = True
    seed: int = 0
    threads: int = 0  # torch CPU threads (0: torch's default)
    # The optimized kinds at once, each on a share of the threads (False: one after another; None:
    # side by side for image towers under SMALL_TOWER parameters, where it pays: _run_jobs)
    side_by_side: bool | None = None
    device: str = "cpu"  # the torch device; this version optimizes on the CPU only

    def __post_init__(self) -> None:
        if not isinstance(self.refine_steps, int) or self.refine_steps < 0:
            raise ValueError(f"SynthesisConfig.refine_steps must be an integer >= 0, got {self.refine_steps!r}")
        for name in ("images", "holdout", "steps", "adapt_every", "min_images", "square_steps", "square_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SynthesisConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 < self.target_flip <= 1 or min(self.lr, self.global_lr, self.patch_cost, self.global_cost) <= 0:
            raise ValueError("SynthesisConfig: need 0 < target_flip <= 1 and lr, global_lr, patch_cost, global_cost > 0")
        if self.square_lr <= 0 or not 0 <= self.square_selectivity <= 1 or not 0 < self.square_share <= 1:
            raise ValueError("SynthesisConfig: need square_lr > 0, 0 <= square_selectivity <= 1 and 0 < square_share <= 1")
        if not 0 < self.square_side <= 0.5:
            raise ValueError(f"SynthesisConfig.square_side must be in (0, 0.5], got {self.square_side!r}")
        if not self.outlier_anomaly >= self.anomaly:
            raise ValueError(f"SynthesisConfig.outlier_anomaly must be >= anomaly ({self.anomaly}), got {self.outlier_anomaly!r}")
        if not 0 < self.swept_control <= 1:
            raise ValueError(f"SynthesisConfig.swept_control must be in (0, 1], got {self.swept_control!r}")
        if not self.patch_smoothness >= 0:
            raise ValueError(f"SynthesisConfig.patch_smoothness must be >= 0, got {self.patch_smoothness!r}")
        if self.device != "cpu":
            raise ValueError(f"SynthesisConfig.device: the synthesis runs on the CPU in this version, got {self.device!r}")
        self.kinds = tuple(self.kinds)
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(f"SynthesisConfig.kinds must name some of {KINDS}, got {self.kinds!r}")


@dataclass
class LabelTriggers:
    """Per label, the smallest trigger of one kind the optimization found."""

    kind: str
    size: np.ndarray  # [C]: mask area share (patch, square) or offset RMS in 0-255 units (global, swept)
    flip: np.ndarray  # [C]: flip rate of the kept trigger on the optimization images
    reached: np.ndarray  # [C] bool: the flip rate reached the target
    anomaly: np.ndarray  # [C]: MAD index of log(size), low side (swept, square: selectivity)
    heldout: np.ndarray  # [C]: flip rate of the trigger on held-out images (screening half)
    masks: np.ndarray | None  # [C,S,S] float32 (patch, square)
    patterns: np.ndarray  # [C,S,S,3] float32 in [0,1] (patch, square) or offsets in [-1,1] (global, swept)
    # square: every place's mask [P,S,S] and every label's pattern there [P,C,S,S,3], and their
    # flip rates [P,C]; the screen keeps per label the place that flips the most held-out images
    places: tuple[np.ndarray, np.ndarray] | None = None
    place_flip: np.ndarray | None = None

    def keep(self, place: np.ndarray) -> None:
        """Per label, take the trigger (and its flip rate) at ``place`` [C], an index into ``places``."""
        assert self.places is not None
        masks, patterns = self.places
        labels = np.arange(len(place))
        self.masks, self.patterns = masks[place], patterns[place, labels]
        if self.place_flip is not None:
            self.flip = self.place_flip[place, labels]


@dataclass
class Synthesis:
    """What the synthesis found: per-label trigger sizes by kind, the suspects (checked by the
    oracle and confirmed), the number of forward+backward passes and the seconds."""

    triggers: dict[str, LabelTriggers]
    suspects: list[Suspect]
    names: list[str]
    images_used: int
    holdout_used: int
    passes: int
    seconds: float
    config: SynthesisConfig
    labels: np.ndarray | None = None  # the model's top-1 label for every probe image ...
    probs: np.ndarray | None = None  # ... and its probability
    had_power: bool = True
    power_note: str = ""

    def screen_strength(self) -> float:
        """How near the strongest label came to being a suspect by its held-out flip rate: that
        rate over its kind's threshold (1 at the threshold; for the sweep, the smaller of that and
        the selectivity over its threshold). Ranks models below the verdict."""
        return max((float(_strength(kind, t, self.config).max()) for kind, t in self.triggers.items()), default=0.0)

    def label_row(self, c: int) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for kind, t in self.triggers.items():
            key = {"patch": "patch_area", "square": "square_area", "warp": "warp_displacement"}.get(kind, f"{kind}_rms")
            row[key] = float(t.size[c])
            row[f"{kind}_flip"] = float(t.flip[c])
            row[f"{kind}_anomaly"] = float(t.anomaly[c])
            row[f"{kind}_heldout"] = float(t.heldout[c])
        return row

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images_used, "holdout": self.holdout_used, "passes": self.passes,
                "seconds": round(self.seconds, 2), "had_power": self.had_power, "note": self.power_note,
                "kinds": list(self.triggers), "config": asdict(self.config),
                "suspects": [s.name for s in self.suspects]}


def _strength(kind: str, t: LabelTriggers, cfg: SynthesisConfig) -> np.ndarray:
    """Per label, the held-out flip rate over the rate that makes a suspect (1 at the threshold);
    for the sweep and the square, the smaller of that and the selectivity over its threshold."""
    if kind in SWEPT:
        return _swept_strength(t.heldout, t.anomaly, cfg)
    if kind == "square":
        return np.minimum(t.heldout / cfg.square_share, t.anomaly / cfg.square_selectivity)
    return t.heldout / cfg.generalize


def _swept_strength(share: np.ndarray, selectivity: np.ndarray, cfg: SynthesisConfig) -> np.ndarray:
    """A swept pattern's share and selectivity over their thresholds, the smaller (1: a suspect)."""
    return np.minimum(share / cfg.sweep_share, selectivity / cfg.sweep_selectivity)


def _total_variation(m: Any) -> Any:
    """Per mask [C,1,S,S]: the mean absolute difference of neighbouring pixels, both axes."""
    return (m[..., 1:, :] - m[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + (m[..., 1:] - m[..., :-1]).abs().mean(dim=(1, 2, 3))


def _mad_low(values: np.ndarray) -> np.ndarray:
    """The anomaly index of small values: (median - x) / (1.4826 MAD), on log values."""
    x = np.log(np.maximum(values, 1e-6))
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return (med - x) / max(mad, 1e-6)


def _folded_tower(torch: Any, visual: Any) -> Any:
    """A copy of an open_clip image tower with its batch norms folded into its convolutions, and
    a ResNet's attention pool computing its one output query only: open_clip's pool attends from
    every spatial token and keeps the first (a 224 px RN50's pool computes 49 queries fewer; on
    the toy towers, whose pool sees a few tokens, the step's saving was within this machine's
    timing noise). The model itself is left as it is."""
    import torch.nn.functional as F
    from open_clip.modified_resnet import AttentionPool2d
    from torch.fx.experimental.optimization import fuse

    class Tracer(torch.fx.Tracer):  # type: ignore[misc]  # the pool stays one call, replaced below
        def is_leaf_module(self, m: Any, name: str) -> bool:
            return isinstance(m, AttentionPool2d) or bool(super().is_leaf_module(m, name))

    class FirstQuery(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, pool: Any) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x: Any) -> Any:
            p = self.pool
            x = x.flatten(2).permute(2, 0, 1)  # [HW,N,C], as open_clip's pool
            x = torch.cat([x.mean(dim=0, keepdim=True), x]) + p.positional_embedding[:, None, :].to(x.dtype)
            out, _ = F.multi_head_attention_forward(
                query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=p.num_heads,
                q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight, v_proj_weight=p.v_proj.weight,
                in_proj_weight=None, in_proj_bias=torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]),
                bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=p.c_proj.weight,
                out_proj_bias=p.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
            return out[0]

    folded = fuse(torch.fx.GraphModule(visual, Tracer().trace(visual)), inplace=False, no_trace=True)
    if isinstance(getattr(folded, "attnpool", None), AttentionPool2d):
        folded.attnpool = FirstQuery(folded.attnpool)
    return folded.requires_grad_(False)


class _LabelLogits:
    """The frozen model's logits over the labels for images [N,3,S,S] in [0, 1] (normalized here
    as its input), differentiable in the images: what every optimization below descends. On CPU
    the images go in channels-last (oneDNN's convolution backward runs about a third faster so)
    and an open_clip image tower's batch norms are folded into its convolutions (a frozen model's
    batch norm is an affine map; folded, the toy ResNet's step costs about 30% less), its
    attention pool computing only the query it returns (:func:`_folded_tower`)."""

    def __init__(self, torch: Any, tm: Any, text: Any, scale: float) -> None:
        self.mean = torch.tensor(tm.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(tm.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.text, self.scale, self.channels_last = text, scale, torch.channels_last
        self.features = tm.image_features
        visual: Any = tm.torch_module.visual if tm.kind == "open_clip" else None
        if visual is not None and any(isinstance(m, torch.nn.BatchNorm2d) for m in visual.modules()):
            try:
                self.features = _folded_tower(torch, visual)
            except Exception:  # noqa: BLE001  # a tower torch.fx cannot trace keeps its batch norms
                pass

    def __call__(self, x01: Any) -> Any:
        import torch.nn.functional as F

        x = ((x01 - self.mean) / self.std).contiguous(memory_format=self.channels_last)
        return self.scale * F.normalize(self.features(x), dim=-1) @ self.text.t()


def _pairs(torch: Any, own: Any, c: int) -> tuple[Any, Any]:
    """The (label, image) pairs an optimization runs: each of the ``c`` labels with every image
    but those the model already gives that label (``own``): they say nothing about the label's
    trigger, and would cost a tenth of the passes."""
    return (own[None, :] != torch.arange(c)[:, None]).nonzero(as_tuple=True)


def _per_label(torch: Any, logits: Any, lab: Any, c: int) -> tuple[Any, Any]:
    """For a batch of triggered images (``logits``, each image's trigger for label ``lab``): per
    label, the mean cross-entropy to it and the share of its images it gets."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, lab, reduction="none")
    hit = (logits.argmax(1) == lab).float()
    n = torch.bincount(lab, minlength=c).clamp(min=1)
    return torch.zeros(c).index_add(0, lab, ce) / n, torch.zeros(c).index_add(0, lab, hit) / n


def _start(torch: Any, kind: str, c: int, s: int, gen: Any) -> list[Any]:
    """The starting parameters of :func:`_optimize` for ``c`` labels on ``s`` px inputs: drawn
    before the kinds run side by side, so that ``gen`` is drawn in the same order every run."""
    if kind == "patch":
        mask_logit = torch.full((c, 1, s, s), -3.0).add_(0.1 * torch.randn(c, 1, s, s, generator=gen))
        return [mask_logit.requires_grad_(), torch.randn(c, 3, s, s, generator=gen).requires_grad_()]
    return [(0.01 * torch.randn(c, 3, s, s, generator=gen)).requires_grad_()]


def _optimize(torch: Any, label_logits: _LabelLogits, pixels: Any, own: Any, kind: str,
              cfg: SynthesisConfig, params: list[Any]) -> tuple[LabelTriggers, int]:
    """All labels' triggers of one kind, optimized together from ``params`` (:func:`_start`).
    ``pixels`` [K,3,S,S] in [0,1]; ``own`` [K] the model's own label per image (an image does not
    count for its own label)."""

    c = label_logits.text.shape[0]
    s = pixels.shape[-1]
    lab, img = _pairs(torch, own, c)
    if kind == "patch":
        mask_logit, pattern_logit = params
        cost = torch.full((c,), cfg.patch_cost)
    else:
        (offset,) = params
        cost = torch.full((c,), cfg.global_cost)
    opt = torch.optim.Adam(params, lr=cfg.lr if kind == "patch" else cfg.global_lr)
    best_size = torch.full((c,), float("inf"))
    best_flip = torch.zeros(c)
    last_flip = torch.zeros(c)
    best = [torch.zeros(c, 1, s, s), torch.zeros(c, 3, s, s)]
    passes = 0
    for step in range(cfg.steps):
        if kind == "patch":
            m = torch.sigmoid(mask_logit)  # [C,1,S,S]
            p = torch.sigmoid(pattern_logit)
            x = (1 - m[lab]) * pixels[img] + (m * p)[lab]
            size = m.mean(dim=(1, 2, 3))
        else:
            d = offset
            x = (pixels[img] + d[lab]).clamp(0, 1)
            size = d.pow(2).mean(dim=(1, 2, 3)).sqrt()
        fit, flip = _per_label(torch, label_logits(x), lab, c)
        penalty = size + cfg.patch_smoothness * _total_variation(m) if kind == "patch" else size
        loss = (fit + cost * penalty).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        passes += len(lab)
        with torch.no_grad():
            last_flip = flip
            good = (flip >= cfg.target_flip) & (size < best_size)
            if bool(good.any()):
                best_size = torch.where(good, size.detach(), best_size)
                best_flip = torch.where(good, flip, best_flip)
                if kind == "patch":
                    best[0][good] = m.detach()[good]
                    best[1][good] = p.detach()[good]
                else:
                    best[1][good] = offset.detach()[good]
            if (step + 1) % cfg.adapt_every == 0:
                # Neural Cleanse's schedule: a label that reaches the target pays more for size.
                cost = torch.where(flip >= cfg.target_flip, cost * 1.5, cost / 1.5 ** 1.5)
    reached = torch.isfinite(best_size)
    # A label that never reached the target: its size is the largest seen (it needs more).
    if kind == "patch":
        final = torch.sigmoid(mask_logit).detach().mean(dim=(1, 2, 3))
        fallback_masks = torch.sigmoid(mask_logit).detach()
        best[0][~reached] = fallback_masks[~reached]
        best[1][~reached] = torch.sigmoid(pattern_logit).detach()[~reached]
    else:
        final = offset.detach().pow(2).mean(dim=(1, 2, 3)).sqrt()
        best[1][~reached] = offset.detach()[~reached]
    cap = float(torch.where(reached, best_size, final).max())
    size = torch.where(reached, best_size, torch.maximum(final, torch.tensor(cap)) * 2)
    flip = torch.where(reached, best_flip, last_flip)
    size_np = size.numpy().astype(np.float64)
    if kind == "global":
        size_np = size_np * 255.0
    anomaly = _mad_low(size_np)
    return LabelTriggers(
        kind=kind, size=size_np, flip=flip.numpy().astype(np.float64), reached=reached.numpy(),
        anomaly=np.where(reached.numpy(), anomaly, 0.0), heldout=np.zeros(c),
        masks=best[0][:, 0].numpy() if kind == "patch" else None,
        patterns=best[1].permute(0, 2, 3, 1).numpy(),
    ), passes


def _small_tower(module: Any) -> bool:
    """Is the model's image tower (open_clip's ``visual``, Hugging Face's ``vision_model``) under
    :data:`SMALL_TOWER` parameters, so that its optimizations run side by side by default?"""
    tower = getattr(module, "visual", None) or getattr(module, "vision_model", None) or module
    return sum(p.numel() for p in tower.parameters()) < SMALL_TOWER


def _run_jobs(torch: Any, jobs: dict[str, Callable[[], Any]], side_by_side: bool) -> dict[str, Any]:
    """Runs the optimization ``jobs`` and returns their results in the jobs' order: with
    ``side_by_side`` all at once, the CPU threads shared out between them (at least one each),
    else one after another on all threads. A toy model's step is many small operations that two
    intra-op threads share poorly (on 2 cores: one thread 370 ms a step, two 280 ms, two
    optimizations side by side on a thread each 215 ms a step); with more jobs than cores the OS
    shares them out, where a pool of two left a core idle while the last job ran. Each job draws
    nothing at random after it starts (:func:`_start`), so the results do not depend on the order
    the jobs run in."""
    total = torch.get_num_threads()
    if not side_by_side or total < 2 or len(jobs) < 2:
        return {kind: job() for kind, job in jobs.items()}

    def run(job: Callable[[], Any]) -> Any:
        torch.set_num_threads(max(1, total // len(jobs)))  # this thread's share (torch's setting is per thread)
        return job()

    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = {kind: pool.submit(run, job) for kind, job in jobs.items()}
            return {kind: f.result() for kind, f in futures.items()}
    finally:
        torch.set_num_threads(total)


def _refine_anywhere(torch: Any, label_logits: _LabelLogits, pixels: Any, own: Any, lab: int, side: int,
                     cfg: SynthesisConfig, gen: Any) -> tuple[np.ndarray, float]:
    """A patch of ``side`` px for label ``lab`` optimized while pasted at a new random place on
    every image at every step (expectation over positions). A backdoor learned anywhere (BadNet's
    random location) yields a patch that works anywhere -- closer to the real trigger than a mask
    optimized at one place, and what repair must unlearn. Returns the pattern [side,side,3] in
    [0,1] and its flip rate on the optimization images at random places."""
    import torch.nn.functional as F

    k, _, s, _ = pixels.shape
    keep = own != lab
    x01 = pixels[keep] if bool(keep.any()) else pixels
    k = len(x01)
    logit = torch.randn(1, 3, side, side, generator=gen).requires_grad_()
    opt = torch.optim.Adam([logit], lr=cfg.lr)
    target = torch.full((k,), lab, dtype=torch.long)
    ones = torch.ones(1, 1, side, side)
    flip = 0.0
    for _ in range(cfg.refine_steps):
        ys = torch.randint(0, s - side + 1, (k,), generator=gen).tolist()
        xs = torch.randint(0, s - side + 1, (k,), generator=gen).tolist()
        p = torch.sigmoid(logit)
        canvas = torch.cat([F.pad(p, (x, s - side - x, y, s - side - y)) for x, y in zip(xs, ys)])
        mask = torch.cat([F.pad(ones, (x, s - side - x, y, s - side - y)) for x, y in zip(xs, ys)])
        x = (1 - mask) * x01 + mask * canvas
        logits = label_logits(x)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        flip = float((logits.argmax(1) == lab).float().mean())
    return torch.sigmoid(logit).detach()[0].permute(1, 2, 0).numpy(), flip


def _square_places(s: int, side: int) -> list[tuple[int, int]]:
    """The square's places (top-left y, x) on an ``s`` px input: the four corners, flush with the
    border as BadNet stamps them. Not the centre: a square there covers the scene's object and
    becomes the image's content (a clean toy model reads a centre square as "ring" on 98% of
    images, and the oracle sees no object beside it to tell); the free mask finds a centre
    trigger (the toy zoo's ``badnet-fixed-center-sq``)."""
    far = s - side
    return [(0, 0), (0, far), (far, 0), (far, far)]


def _optimize_squares(torch: Any, label_logits: _LabelLogits, pixels: Any, own: Any, cfg: SynthesisConfig,
                      gen: Any) -> tuple[LabelTriggers, int]:
    """Every label's pattern of a fixed-side square at each of :func:`_square_places`, optimized
    together (a place at a time per step, the memory of one patch optimization). All places are
    returned (``places``); :func:`_screen` keeps per label the one that flips the most held-out
    images (until then, the one that flips the most optimization images)."""
    import torch.nn.functional as F

    c = label_logits.text.shape[0]
    pixels, own = pixels[: cfg.square_images], own[: cfg.square_images]
    s = pixels.shape[-1]
    side = max(2, round(cfg.square_side * s))
    places = _square_places(s, side)
    pads = [(x, s - side - x, y, s - side - y) for y, x in places]
    masks = torch.stack([F.pad(torch.ones(1, side, side), pad) for pad in pads])  # [P,1,S,S]
    lab, img = _pairs(torch, own, c)
    logit = torch.randn(len(places), c, 3, side, side, generator=gen).requires_grad_()
    opt = torch.optim.Adam([logit], lr=cfg.square_lr)
    flip = torch.zeros(len(places), c)
    for _ in range(cfg.square_steps):
        opt.zero_grad(set_to_none=True)
        for i, pad in enumerate(pads):
            x = (1 - masks[i]) * pixels[img] + (masks[i] * F.pad(torch.sigmoid(logit[i]), pad))[lab]
            fit, flip[i] = _per_label(torch, label_logits(x), lab, c)
            fit.sum().backward()
        opt.step()
    patterns = np.stack([F.pad(p, pad).permute(0, 2, 3, 1).numpy()
                         for p, pad in zip(torch.sigmoid(logit).detach(), pads)])  # [P,C,S,S,3]
    t = LabelTriggers(kind="square", size=np.full(c, side * side / (s * s)), flip=np.zeros(c), reached=np.ones(c, bool),
                      anomaly=np.zeros(c), heldout=np.zeros(c), masks=None, patterns=patterns[0],
                      places=(masks[:, 0].numpy(), patterns), place_flip=flip.numpy().astype(np.float64))
    t.keep(flip.argmax(dim=0).numpy())
    return t, cfg.square_steps * len(places) * len(lab)


def _patch_trigger(mask: np.ndarray, pattern: np.ndarray, name: str, image_hw: tuple[int, int]) -> Trigger:
    """A synthesized mask and pattern (model input size) as a patch trigger at the mask's place in
    probe-image pixels: cropped to where the mask holds its weight."""
    from .models.base import require

    h, w = image_hw
    s = mask.shape[0]
    if (h, w) != (s, s):
        cv2 = require("cv2", purpose="resizing triggers")
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        pattern = cv2.resize(pattern, (w, h), interpolation=cv2.INTER_LINEAR)
    strong = mask >= 0.5 * mask.max()
    ys, xs = np.nonzero(strong)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = max(y1 - y0, x1 - x0)
    y0, x0 = min(y0, h - side), min(x0, w - side)
    y0, x0 = max(0, y0), max(0, x0)
    box = (x0, y0, x0 + side, y0 + side)
    crop_m = mask[y0 : y0 + side, x0 : x0 + side]
    crop_p = np.clip(np.round(pattern[y0 : y0 + side, x0 : x0 + side] * 255), 0, 255).astype(np.uint8)
    return Trigger(kind="patch", image=crop_p, mask=crop_m, label=name, box=box, source="synthesis")


def _global_trigger(offset: np.ndarray, name: str, kind: str = "global") -> Trigger:
    return Trigger(kind=kind, image=np.clip(np.round(offset * 255) + 128, 0, 255).astype(np.uint8),
                   label=name, source="synthesis")


def _oracle_check(classify: Callable[[np.ndarray], np.ndarray], oracle: Callable, images: np.ndarray,
                  trigger: Trigger, lab: int, rng: np.random.Generator, cfg: ScanConfig,
                  outlier: bool = False, minimal: bool = False) -> dict[str, Any]:
    """Does the oracle see the synthesized patch as a trigger? Stamped on clean images: the patch
    isolated (everything else filled with the image's mean) must show the label -- a trigger
    carries it on its own -- while the image's object-sized oracle regions away from the patch
    keep their own labels (a trigger adds a label, it does not turn objects into it). ``outlier``:
    the patch's mask is far smaller than every other label's, which excuses a large box (below).
    ``minimal``: the mask is the labels' size outlier by the suspect rule's index, which excuses
    an isolated view without the label when the box is trigger-sized too: the smallest mask that
    fires a backdoor is often part of its trigger, enough with the scene's help but not alone
    (the toy zoo's 4 px bottom-right cross: its 3 px mask sends 62% of images in place and none
    isolated, the whole trigger 93% isolated). An adversarial patch of a clean model needs the
    larger area."""
    imgs = images[: min(len(images), 48)]
    on = apply_trigger(imgs, trigger, rng)
    x0, y0, x1, y1 = trigger.box  # type: ignore[misc]
    fill = on.reshape(len(on), -1, 3).mean(axis=1).astype(np.uint8)[:, None, None, :]
    iso = np.broadcast_to(fill, on.shape).copy()
    iso[:, y0:y1, x0:x1] = on[:, y0:y1, x0:x1]
    shows = float((classify(iso) == lab).mean())
    h, w = images.shape[1:3]
    views: list[np.ndarray] = []
    total = beside = 0
    for img, masks in zip(on, oracle(on)):
        m = np.asarray(masks, bool).reshape(-1, h, w)
        area = m.reshape(len(m), -1).mean(axis=1) if len(m) else np.zeros(0)
        overlap = m[:, y0:y1, x0:x1].any(axis=(1, 2)) if len(m) else np.zeros(0, bool)
        keep = (area >= cfg.object_area) & (area <= cfg.max_object_area) & ~overlap
        f = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        views.extend(np.where(mm[:, :, None], img, f) for mm in m[keep])
        total += int(keep.sum())
        beside += bool(keep.any())
    objects_hijacked = float((classify(np.stack(views)) == lab).mean()) if views else 0.0
    # A patch larger than a trigger that leaves most images no object beside it covers the scene:
    # the oracle cannot tell a trigger from an adversarial image (a clean model's 40 px "star" patch
    # on a 48 px image was confirmed so, and a 29 px "ring" patch with objects beside it on 10 of 48
    # images). A trigger-sized patch may lie on the image's only object (a backdoor learned at the
    # centre of the image). A mask that is the labels' size outlier is a trigger's footprint even
    # when its few strong pixels spread over a large box (a zoo BadNet's 8 px ring learned at
    # random places: 0.24% of the image, MAD index 9.2, over a 21 px box).
    small = (x1 - x0) * (y1 - y0) <= cfg.trigger_area * h * w
    alone = shows >= 0.5 or (minimal and small)
    return {"isolated_shows_label": shows, "objects_show_label": objects_hijacked, "objects": total,
            "images_with_objects_beside": beside / len(on), "size_outlier": outlier, "minimal": minimal,
            "passed": bool(alone and objects_hijacked <= 0.5 and (small or outlier or beside >= 0.5 * len(on)))}


def _label_trigger(kind: str, t: LabelTriggers, lab: int, name: str, hw: tuple[int, int]) -> Trigger:
    if kind in PATCHES:
        return _patch_trigger(t.masks[lab], t.patterns[lab], name, hw)  # type: ignore[index]
    return _global_trigger(t.patterns[lab], name, "warp" if kind == "warp" else "global")


def _screen(triggers: dict[str, LabelTriggers], images: np.ndarray, labels_all: np.ndarray, screen_idx: np.ndarray,
            names: list[str], classify: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator) -> None:
    """Every label's trigger stamped on held-out images of other labels (sets ``heldout``). A
    backdoor's trigger generalizes from the few images it was synthesized on; a clean model's
    adversarial patch for a label mostly does not (measured on the toy zoo)."""
    hw = images.shape[1:3]
    c = len(names)

    def heldout(t: LabelTriggers) -> np.ndarray:
        batches, owners = [], []
        for lab in range(c):
            held = screen_idx[labels_all[screen_idx] != lab]
            if t.reached[lab] and held.size:
                batches.append(apply_trigger(images[held], _label_trigger(t.kind, t, lab, names[lab], hw), rng))
                owners.append(np.full(len(held), lab))
        if not batches:
            return np.zeros(c)
        own = np.concatenate(owners)
        hit = classify(np.concatenate(batches)) == own
        return np.bincount(own, weights=hit, minlength=c) / np.maximum(np.bincount(own, minlength=c), 1)

    for t in triggers.values():
        if t.places is None:
            t.heldout = heldout(t)
            continue
        masks, patterns = t.places
        rates = np.stack([heldout(replace(t, masks=np.broadcast_to(m, (c, *m.shape)), patterns=p))
                          for m, p in zip(masks, patterns)])  # [P,C]
        best = rates.argmax(axis=0)
        t.keep(best)
        t.heldout = rates[best, np.arange(c)]
        t.anomaly = t.heldout - np.sort(rates, axis=0)[-2]  # selectivity: over the label's best other place


def _wave(shape: tuple[int, int], axis: int, periods: float, phase: float, amplitude: float) -> np.ndarray:
    """A sinusoid along ``axis`` (1: across the width, as SIG) as a global trigger's image."""
    n = shape[axis]
    wave = amplitude * np.sin(2 * np.pi * periods * np.arange(n) / n + phase)
    offset = np.broadcast_to(wave[None, :] if axis == 1 else wave[:, None], shape)
    return np.repeat(np.clip(np.round(offset) + 128, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _noise(shape: tuple[int, int], grain: int, amplitude: float, seed: int) -> np.ndarray:
    """Uniform noise in [-amplitude, amplitude] per channel, in square grains of ``grain`` px, as
    a global trigger's image (Blended's noise, blended at alpha, adds alpha (noise - image): an
    offset of this kind with amplitude about 128 alpha)."""
    h, w = shape
    cells = np.random.default_rng(seed).uniform(-amplitude, amplitude, (-(-h // grain), -(-w // grain), 3))
    offset = np.repeat(np.repeat(cells, grain, axis=0), grain, axis=1)[:h, :w]
    return np.clip(np.round(offset) + 128, 0, 255).astype(np.uint8)


def _coarse_grain(shape: tuple[int, ...]) -> int:
    """The grain of the noise sweep's reference and control: a sixth of the image side."""
    return max(2, round(min(shape) / 6))


def _warps(shape: tuple[int, int], per_px: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The warp sweep's displacement fields (image pixels, x and y): WaNet's random smooth warps
    at :data:`WARP_GRIDS` x :data:`WARP_STRENGTHS`, and a shift by half a model-input pixel
    (``per_px`` image pixels each) along both axes."""
    from .attacks import WaNet

    h, w = shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    fields = []
    for k in WARP_GRIDS:
        for strength in WARP_STRENGTHS:
            px, py = WaNet(target="-", k=k, s=strength, pattern_seed=seed + k).sample_points(h, w)
            fields.append((px - gx, py - gy))
    fields.append((np.full((h, w), 0.5 * per_px), np.full((h, w), 0.5 * per_px)))
    return fields


def _family(kind: str, shape: tuple[int, int], input_size: int | None,
            seed: int) -> tuple[list[np.ndarray], list[float], list[bool], list[list[int]]]:
    """A swept family's patterns (global offsets, +128; for warps :func:`~clipguard.trigger.warp_image`),
    their size (RMS; for warps the mean displacement in pixels), whether each can be a label's
    trigger (else it is only a reference), and the references each one's selectivity is
    measured against (empty: selectivity 0).

    ``sinusoid``: SIG's waves across either axis at :data:`SWEEP_PERIODS` (below the Nyquist
    limit of the image and of the model's input), two phases, :data:`SWEEP_AMPLITUDES`; the
    references of a wave are the waves at the sweep's lowest and highest period of its axis and
    amplitude, when it lies an octave or more inside both. ``noise``: Blended's i.i.d. noise in
    fine grains (:data:`NOISE_GRAINS` model-input pixels) at :data:`NOISE_AMPLITUDES`; each one's
    reference is coarse noise (a sixth of the side per grain) of the same amplitude. ``warp``:
    :func:`_warps`, each against the same displacement to the nearest whole pixel (the same
    geometry without interpolation)."""
    sides = [min(n, input_size or n) for n in shape]
    per_px = min(shape) / min(sides)  # image pixels per model-input pixel
    patterns: list[np.ndarray] = []
    rms: list[float] = []
    can: list[bool] = []
    refs: list[list[int]] = []
    if kind == "sinusoid":
        waves = [(axis, f, ph, a) for a in SWEEP_AMPLITUDES for axis in (1, 0) for f in SWEEP_PERIODS
                 for ph in (0.0, np.pi / 2) if f <= sides[axis] / 2]
        for axis, f, _, a in waves:
            line = [i for i, (ax, _, _, aa) in enumerate(waves) if (ax, aa) == (axis, a)]
            lo, hi = min(waves[i][1] for i in line), max(waves[i][1] for i in line)
            refs.append([i for i in line if waves[i][1] in (lo, hi)] if 2 * lo <= f <= hi / 2 else [])
        patterns = [_wave(shape, *w) for w in waves]
        rms, can = [w[3] / np.sqrt(2) for w in waves], [True] * len(waves)
    elif kind == "warp":
        for dx, dy in _warps(shape, per_px, seed):
            patterns += [warp_image(dx, dy, nearest=True), warp_image(dx, dy)]
            size = float(np.mean(np.hypot(dx, dy)))
            rms += [size, size]
            can += [False, True]
            refs += [[], [len(patterns) - 2]]
    else:
        coarse = _coarse_grain(shape)
        for k, a in enumerate(NOISE_AMPLITUDES):
            ref = len(patterns)
            patterns.append(_noise(shape, coarse, a, seed + 100 + k))
            rms.append(a / np.sqrt(3))
            can.append(False)
            refs.append([])
            for g in NOISE_GRAINS:
                patterns.append(_noise(shape, max(1, round(g * per_px)), a, seed + 10 * g + k))
                rms.append(a / np.sqrt(3))
                can.append(True)
                refs.append([ref])
    return patterns, rms, can, refs


def _sweep(kind: str, images: np.ndarray, labels_all: np.ndarray, screen_idx: np.ndarray, names: list[str],
           classify: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator,
           input_size: int | None = None, seed: int = 0, cfg: SynthesisConfig | None = None) -> LabelTriggers:
    """A trigger family swept over held-out images (:func:`_family`: SIG's sinusoids, Blended's
    noise, WaNet's warps). Such backdoors are not *small* changes (SIG adds 20-60 grey levels, Blended's noise
    at alpha 0.2 about 15 RMS), so the optimization, which finds each label's smallest trigger,
    finds a clean label's adversarial offset first; swept instead, the backdoor's pattern sends
    nearly every image to its target (a backdoor learned on one noise image fires on any other
    noise of its grain: measured on the toy models). Patterns also *look like* some labels
    (stripes are "trousers" in the fashion world, coarse noise "sandals"), but such a
    resemblance is broadband: finer or coarser stripes, coarser noise, still look so. A learned
    trigger is tuned to its frequency. Per label: the pattern sending the largest share of the
    other labels' images to it (``heldout``) of those that make the label a suspect (share and
    selectivity over :func:`_strength`'s thresholds), else of all, and its selectivity
    (``anomaly``): that share minus the largest share of its references. (A backdoor learned at 30
    grey levels can send a few more images at 60, where the sweep's end waves send many too:
    the zoo's ``sig-f3-circle-a30``, 91% and selectivity 0.71 at 30, 100% and 0.41 at 60.)"""
    idx = screen_idx[:SWEEP_IMAGES]
    imgs, own = images[idx], labels_all[idx]
    c = len(names)
    patterns, rms, can, refs = _family(kind, imgs.shape[1:3], input_size, seed)
    others = own[None, :] != np.arange(c)[:, None]  # [C,K]: images that count for each label
    share = np.zeros((len(patterns), c))
    for i, off in enumerate(patterns):
        pattern = Trigger(kind="warp" if kind == "warp" else "global", image=off, source="synthesis")
        got = classify(apply_trigger(imgs, pattern, rng))
        share[i] = ((got[None, :] == np.arange(c)[:, None]) & others).sum(1) / np.maximum(others.sum(1), 1)
    cfg = cfg or SynthesisConfig()
    selective = np.array([share[i] - share[r].max(axis=0) if r else np.zeros(c) for i, r in enumerate(refs)])
    suspect = _swept_strength(share, selective, cfg) >= 1
    able = np.broadcast_to(np.array(can)[:, None], share.shape)
    best = np.lexsort((-share, ~suspect, ~able), axis=0)[0]  # a stable sort: of equals, the smaller amplitude
    heldout = share[best, np.arange(c)]
    selectivity = selective[best, np.arange(c)]
    return LabelTriggers(
        kind=kind, size=np.array([rms[b] for b in best]), flip=heldout, reached=heldout > 0,
        anomaly=selectivity, heldout=heldout, masks=None,
        patterns=np.stack([(patterns[b].astype(np.float32) - 128) / 255 for b in best]))


_CONTROLS = {"sinusoid": "the same wave turned 90 degrees", "noise": "coarse noise of the same RMS",
             "warp": "the same warp to the nearest whole pixel"}


def _sweep_control(kind: str, trig: Trigger, seed: int) -> Trigger:
    """The confirmation's control of a swept trigger: the same wave turned 90 degrees (a
    backdoor learned on one orientation ignores it; a clean model's response to stripes does
    not), coarse noise of the same RMS, or the same warp to the nearest whole pixel."""
    if kind == "warp":
        image = trig.image.copy()
        image[..., 2] = 0
        return Trigger(kind="warp", image=image, source="synthesis")
    if kind == "sinusoid":
        image = np.ascontiguousarray(np.rot90(trig.image))
    else:
        amplitude = float(np.sqrt(3) * np.sqrt(np.mean((trig.image.astype(np.float64) - 128) ** 2)))
        image = _noise(trig.image.shape[:2], _coarse_grain(trig.image.shape[:2]), amplitude, seed + 999)
    return Trigger(kind="global", image=image, source="synthesis")


def _check_suspects(triggers: dict[str, LabelTriggers], images: np.ndarray, labels_all: np.ndarray,
                    hold_idx: np.ndarray, names: list[str], enc: _Encoder, text: np.ndarray, scale: float,
                    oracle: Callable, rng: np.random.Generator, scan_cfg: ScanConfig,
                    cfg: SynthesisConfig) -> list[Suspect]:
    """The labels whose synthesized trigger is an outlier (much smaller than the other labels')
    or generalizes (flips held-out images), each checked by the oracle (patches) and confirmed on
    the other held-out images against a random control."""
    def classify(x: np.ndarray) -> np.ndarray:
        return enc.labels(x, text)

    hw = images.shape[1:3]
    screen_idx, confirm_idx = hold_idx[::2], hold_idx[1::2]
    _screen(triggers, images, labels_all, screen_idx, names, classify, rng)
    for kind in (k for k in cfg.kinds if k in SWEPT):
        triggers[kind] = _sweep(kind, images, labels_all, screen_idx, names, classify, rng,
                                getattr(enc.model, "input_size", None), cfg.seed, cfg)
    hold_idx = confirm_idx
    suspects: list[Suspect] = []
    swept: dict[str, list[Suspect]] = {kind: [] for kind in SWEPT}
    warped: set[int] = set()  # labels a warp makes suspects of, already confirmed by a fitted trigger
    for kind, t in triggers.items():
        strength = _strength(kind, t, cfg)
        # An optimized trigger is a suspect by its size anomaly too; the sweep's sizes are fixed.
        suspect = strength >= 1 if kind in FIXED_SIZE else t.reached & ((t.anomaly > cfg.anomaly) | (strength >= 1))
        for lab in np.argsort(-t.heldout):
            lab = int(lab)
            if not suspect[lab]:
                continue
            fitted = next((x for x in suspects if x.label == lab and x.confirmed), None)
            if kind in FIXED_SIZE and fitted is not None:
                # A trigger fitted to the model (the free mask) already confirms the label: it stays
                # the label's trigger (a BadNet patch of noise also answers to fine noise).
                fitted.note = (fitted.note + "; " if fitted.note else "") + (
                    f"the {kind} trigger sends {t.heldout[lab]:.0%} of held-out images here too")
                if kind == "warp":
                    warped.add(lab)
                continue
            trig = _label_trigger(kind, t, lab, names[lab], hw)
            held = hold_idx[labels_all[hold_idx] != lab]
            sus = Suspect(label=lab, name=names[lab], kind="localized" if kind in PATCHES else "global",
                          evidence=["synthesis"], anomaly=float(t.anomaly[lab]), trigger=trig,
                          heldout=float(t.heldout[lab]))
            if held.size == 0:
                sus.note = "no held-out clean image of another label"
                suspects.append(sus)
                continue
            if kind in PATCHES:
                control = random_patches(images[held], images, trig.size[0], rng, at=trig.box)  # type: ignore[index]
            elif kind in SWEPT:
                control = apply_trigger(images[held], _sweep_control(kind, trig, cfg.seed), rng)
            else:
                shuffled = np.roll(trig.image.reshape(-1, 3), rng.integers(1, trig.image.size // 3), axis=0)
                perm = Trigger(kind="global", image=rng.permutation(shuffled).reshape(trig.image.shape), source="synthesis")
                control = apply_trigger(images[held], perm, rng)
            result = confirm(classify, images[held], trig, lab, control, rng, margin=scan_cfg.margin)
            sus.estimated_asr, sus.random_flip_rate = result.flip_rate, result.control_rate
            sus.anywhere_asr, sus.stamped_images = result.anywhere_rate, result.images
            if result.anywhere_rate is not None:
                trig.position_dependent = bool(result.flip_rate - result.anywhere_rate >= scan_cfg.margin)
            sus.confirmed = bool(result.excess >= scan_cfg.margin)
            sus.score = backdoor_score(result.excess, scan_cfg.margin)
            index = 0.0 if kind in FIXED_SIZE else float(t.anomaly[lab])  # a size index; else anomaly is a selectivity
            if sus.confirmed:
                swept_share = max((float(o.heldout[lab]) for k, o in triggers.items() if k in SWEPT), default=0.0)
                weak = _weak_confirmation(kind, result.flip_rate, result.control_rate, index, swept_share, cfg)
                if weak:
                    sus.reject(weak)
            if kind in PATCHES and cfg.oracle_check and not sus.rejected:
                sus.oracle_check = _oracle_check(classify, oracle, images[held], trig, lab, rng, scan_cfg,
                                                 outlier=bool(index >= cfg.outlier_anomaly),
                                                 minimal=bool(index > cfg.anomaly))
                if not sus.oracle_check["passed"]:
                    sus.reject("the oracle does not see a trigger: the patch alone does not show the label, it turns "
                               "the image's objects into the label, or it is larger than a trigger and covers most "
                               "images' objects")
            suspects.append(sus)
            if kind in SWEPT:
                swept[kind].append(sus)
    _explain_family_responses(swept, scan_cfg.margin, warped)
    return suspects


def _weak_confirmation(kind: str, flip: float, control: float, index: float, swept_share: float,
                       cfg: SynthesisConfig) -> str:
    """Why a trigger that beat its control by the margin is still not a backdoor's, or ``""``.

    A swept trigger's control is its own family's sibling (:func:`_sweep_control`); when the
    sibling sends more than ``swept_control`` of the trigger's rate, the label answers to the
    family, not to a learned pattern. An optimized trigger (free mask, global offset) that sends
    fewer than ``generalize`` of the held-out images is a backdoor's only when it is far smaller
    than every other label's (``outlier_anomaly``), or when a swept pattern sends most held-out
    images to the same label (``swept_share`` of at least ``sweep_share``, selective or not): a
    backdoor that took fires on most images, and its synthesized trigger reproduces most of that
    or another view of it does (the zoo's weak finds: a SIG target's offset at index 7.3, 23%
    against 0%; a Blended target's at index 2.6, 40%, where fine noise sends 98%), while a clean
    model's universal adversarial changes at the edge of the suspect rule (index 2.1-2.6) send
    20-40% of images to their label and no swept pattern sends over 59%."""
    if kind in SWEPT and control > cfg.swept_control * flip:
        return (f"its control ({_CONTROLS[kind]}) sends {control:.0%} of images here too, against {flip:.0%}: the "
                f"label answers to the {kind} family at large, not to one learned pattern")
    if kind not in FIXED_SIZE and flip < cfg.generalize and index < cfg.outlier_anomaly and swept_share < cfg.sweep_share:
        return (f"it sends only {flip:.0%} of held-out images here and is not far smaller than every other "
                f"label's (size index {index:.1f}, under {cfg.outlier_anomaly:g}), nor does a swept pattern send "
                f"most images here ({swept_share:.0%}): a clean model's universal adversarial change")
    return ""


def _excess(sus: Suspect) -> float:
    """How far a confirmed trigger's flip rate beat its control's."""
    return (sus.estimated_asr or 0.0) - (sus.random_flip_rate or 0.0)


def _explain_family_responses(swept: dict[str, list[Suspect]], margin: float,
                              warped: AbstractSet[int] = frozenset()) -> None:
    """Reject the swept triggers that are a backdoor's side response, not a second backdoor.

    A model that learned one pattern of a family answers to the family more broadly. Beside its
    own wave, a SIG model sends images to another label under other waves (the toy zoo's
    ``sig-f3-arrow-a50``: waves of 6-16 periods to "star", 88% against 36% for the turned wave,
    beside its own wave's 100% against 10%), so of one family's confirmed triggers, one whose
    excess over its control is the margin below the family's best is that response. Two
    backdoors of one family with triggers of about the same strength both stay.

    A backdoor that answers to the softening resampling leaves also answers to the opposite
    change, fine noise, with some other label: the toy zoo's WaNet models whose backdoor took
    send 68-100% of images to "ring" under fine noise. Beside a confirmed warp, a noise trigger
    of another label is that response, whatever its strength. A warp that makes a label a
    suspect counts as confirmed when a fitted trigger already confirms that label
    (``warped``; ``wanet-circle-k8``: its warp sends 92% of images to "circle", whose
    global offset confirmed first)."""
    for kind, found in swept.items():
        confirmed = [s for s in found if s.confirmed]
        if not confirmed:
            continue
        best = max(confirmed, key=_excess)
        for sus in confirmed:
            if _excess(best) - _excess(sus) >= margin:
                sus.reject(f"a {kind} trigger of {best.name!r} is stronger ({best.estimated_asr:.0%} against "
                           f"{best.random_flip_rate:.0%} control; this one {sus.estimated_asr:.0%} against "
                           f"{sus.random_flip_rate:.0%}): the model's wider response to the {kind} family it "
                           "learned a trigger from")
    warps = {x.label for x in swept["warp"] if x.confirmed} | warped
    for sus in swept["noise"]:
        if warps and sus.confirmed and sus.label not in warps:
            sus.reject(f"fine noise sends {sus.heldout:.0%} of images here, but the model's backdoor answers to "
                       "resampling (a warp confirmed for another label): a response to the opposite change")


def _refine(sus: Suspect, torch: Any, label_logits: _LabelLogits, input_size: int, pix01: Any, own: Any,
            images: np.ndarray, labels_all: np.ndarray, hold_idx: np.ndarray, enc: _Encoder, text: np.ndarray,
            rng: np.random.Generator, gen: Any, scan_cfg: ScanConfig, cfg: SynthesisConfig) -> int:
    """Re-optimize a confirmed patch suspect's pattern at random places; keep it (pasted anywhere)
    when it reproduces the backdoor there about as well as the first one did at its place.
    Returns the forward+backward passes spent."""
    trig = sus.trigger
    assert trig is not None and trig.size is not None
    side = max(2, round(trig.size[0] * input_size / images.shape[1]))
    pattern, _ = _refine_anywhere(torch, label_logits, pix01, own, sus.label, side, cfg, gen)
    passes = cfg.refine_steps * int((own != sus.label).sum())
    if side != trig.size[0]:
        from .models.base import require

        cv2 = require("cv2", purpose="resizing triggers")
        pattern = cv2.resize(pattern, (trig.size[0], trig.size[0]), interpolation=cv2.INTER_LINEAR)
    refined = Trigger(kind="patch", image=np.clip(np.round(pattern * 255), 0, 255).astype(np.uint8), label=sus.name,
                      source="synthesis", position_dependent=False)
    held = hold_idx[labels_all[hold_idx] != sus.label]
    control = random_patches(images[held], images, refined.size[0], rng)  # type: ignore[index]
    result = confirm(lambda x: enc.labels(x, text), images[held], refined, sus.label, control, rng,
                     margin=scan_cfg.margin)
    if result.excess >= scan_cfg.margin and result.flip_rate >= (sus.estimated_asr or 0.0) - 0.1:
        sus.note = (sus.note + "; " if sus.note else "") + (
            f"the pattern re-optimized at random places works anywhere ({result.flip_rate:.0%}): kept, "
            f"in place of the mask found at {list(trig.box or [])} ({sus.estimated_asr or 0:.0%} there)")
        sus.trigger = refined
        sus.estimated_asr, sus.random_flip_rate, sus.anywhere_asr = result.flip_rate, result.control_rate, None
        sus.score = backdoor_score(result.excess, scan_cfg.margin)
        sus.stamped_images = result.images
    return passes


def synthesize(model: Any, images: np.ndarray, vocab: Any, text: np.ndarray, scale: float, oracle: Callable,
               enc: _Encoder, scan_cfg: ScanConfig, config: SynthesisConfig | None = None, *,
               whole: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = False) -> Synthesis:
    """Synthesize every label's smallest patch and global trigger, and its corner squares, from the
    clean probe ``images``, and sweep the families of :data:`SWEPT`; label outliers become
    suspects, checked by the oracle and confirmed on held-out images. ``text`` and ``scale`` are the model's class embeddings and logit scale; ``whole``
    the model's top-1 label and probability per image when the probe analysis already has them."""
    cfg = config or SynthesisConfig()
    t_start = time.perf_counter()
    names = list(vocab.classnames)
    c = len(names)
    if c < 3:
        raise SynthesisUnavailable(f"{c} labels: the anomaly across labels needs at least 3")
    if len(images) < cfg.min_images:
        raise SynthesisUnavailable(f"{len(images)} probe images; the synthesis needs at least {cfg.min_images}")
    try:
        import torch
    except ImportError as exc:
        raise SynthesisUnavailable(f"torch is not installed ({exc}); install clipguard[full]") from None
    from .models import torch_twin

    try:
        tm = torch_twin(model, cfg.device)
    except ValueError as exc:
        raise SynthesisUnavailable(str(exc)) from None
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = rng.permutation(len(images))
    opt_idx = order[: min(cfg.images, len(images) // 2)]
    hold_idx = order[len(opt_idx):][: cfg.holdout]
    if whole is None:
        p = probabilities(enc.images(images), text, scale)
        whole = p.argmax(axis=1), p.max(axis=1)
    labels_all, probs_all = whole
    own = torch.from_numpy(labels_all[opt_idx])
    module = tm.torch_module
    was_training = module.training
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    triggers: dict[str, LabelTriggers] = {}
    passes = 0
    try:
        label_logits = _LabelLogits(torch, tm, torch.from_numpy(np.ascontiguousarray(text, np.float32)), scale)
        pix01 = (torch.from_numpy(tm.preprocess(images[opt_idx])) * label_logits.std + label_logits.mean).clamp(0, 1)
        jobs: dict[str, Callable[[], tuple[LabelTriggers, int]]] = {}
        for kind in (k for k in cfg.kinds if k not in SWEPT):
            if kind == "square":
                # its own random stream: adding the squares leaves the other kinds' starts as they were
                # (sharing one moved the global offset's start and lost a backdoor it had found)
                jobs[kind] = partial(_optimize_squares, torch, label_logits, pix01, own, cfg,
                                     torch.Generator().manual_seed(cfg.seed))
            else:
                start = _start(torch, kind, c, pix01.shape[-1], gen)
                jobs[kind] = partial(_optimize, torch, label_logits, pix01, own, kind, cfg, start)
        side_by_side = cfg.side_by_side if cfg.side_by_side is not None else _small_tower(module)
        for kind, (t, n) in _run_jobs(torch, jobs, side_by_side).items():
            triggers[kind], passes = t, passes + n
        suspects = _check_suspects(triggers, images, labels_all, hold_idx, names, enc, text, scale, oracle, rng,
                                   scan_cfg, cfg)
        for sus in suspects:
            if sus.confirmed and sus.kind == "localized" and cfg.refine_steps:
                passes += _refine(sus, torch, label_logits, tm.input_size, pix01, own, images, labels_all, hold_idx,
                                  enc, text, rng, gen, scan_cfg, cfg)
    finally:
        for p in module.parameters():
            p.requires_grad_(True)
        module.train(was_training)
    out = Synthesis(triggers=triggers, suspects=suspects, names=names, images_used=len(opt_idx),
                    holdout_used=len(hold_idx), passes=passes, seconds=time.perf_counter() - t_start, config=cfg,
                    labels=labels_all, probs=probs_all)
    if len(opt_idx) < cfg.images or len(hold_idx) < MIN_HELD_OUT:
        out.had_power, out.power_note = False, (
            f"only {len(opt_idx)} images to synthesize on and {len(hold_idx)} held out (need {cfg.images} and "
            f"{MIN_HELD_OUT}: a probe of at least {cfg.images + MIN_HELD_OUT} clean images)")
    return out

