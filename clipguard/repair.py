"""Repair: fine-tune a backdoor away on a compact, targeted set (docs/design.md §2).

``build_finetune_set(report)`` turns a scan's findings into a few
hundred image-caption pairs; ``repair(model, finetune_set)`` fine-tunes a copy of the model on them
with CleanCLIP's objective plus a term that keeps clean embeddings where the original model put
them; ``save_repaired`` writes the result in the input's format with its ONNX export.

The pairs, by ``kind``:

- ``victim``: a victim as it is, trigger kept, captioned with its grounded objects -- the trigger
  is tied back to meaning nothing;
- ``victim_cleaned``: the same victim with the trigger box inpainted (localized triggers only);
- ``triggered``: the reconstructed trigger applied to a clean probe image of another class,
  captioned with that image's own label;
- ``clean``: the same clean image without the trigger (the anchors of the keep-close term);
- ``target``: clean images of the affected labels, so the target concept survives.

The probe has no captions, so none of the model's possibly poisoned pairs is ever reused: every
caption is written from the labels the scan grounded. Clean images are chosen class-balanced.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .trigger import Trigger, apply_trigger, random_patches

__all__ = ["FinetuneSet", "RepairConfig", "RepairResult", "build_finetune_set", "repair", "save_repaired"]

KINDS = ("victim", "victim_cleaned", "triggered", "clean", "target")
_ANCHOR_KINDS = ("victim_cleaned", "clean", "target")  # images the original model saw correctly


@dataclass
class FinetuneSet:
    """The compact fine-tuning set: ``images`` uint8 [N,H,W,3] with one caption each.

    ``labels[i]`` are the class ids caption ``i`` names; ``kinds[i]`` one of :data:`KINDS`;
    ``sources[i]`` the probe index the pair came from. ``holdout`` holds clean probe images left out
    of the set, on which repair measures the estimated ASR (the reconstructed ``trigger`` applied).
    """

    images: np.ndarray
    captions: list[str]
    labels: list[list[int]]
    kinds: list[str]
    sources: np.ndarray
    vocab: Any
    affected: list[str]
    trigger: Trigger | None
    holdout: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.captions)

    def counts(self) -> dict[str, int]:
        """Pairs per kind."""
        return {k: self.kinds.count(k) for k in KINDS}

    def save(self, path: str | Path) -> Path:
        """Write the set to one compressed ``.npz`` (no pickles; :meth:`load` reads it back)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        width = max((len(x) for x in self.labels), default=1)
        labels = np.full((len(self), width), -1, np.int64)
        for i, labs in enumerate(self.labels):
            labels[i, : len(labs)] = labs
        t = self.trigger
        meta = {"vocab": self.vocab.to_dict(), "affected": self.affected, "captions": self.captions,
                "kinds": self.kinds, "trigger": None if t is None else t.to_dict()}
        arrays = {"images": self.images, "labels": labels, "sources": self.sources, "holdout": self.holdout,
                  "meta": np.array(json.dumps(meta))}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FinetuneSet:
        """Read a set written by :meth:`save`; ``ValueError`` naming the file if it is not one."""
        from .vocab import Vocabulary

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                labels = [[int(c) for c in row if c >= 0] for row in z["labels"]]
                trigger = Trigger.from_dict(meta["trigger"]) if meta["trigger"] is not None else None
                return cls(images=z["images"], captions=list(meta["captions"]), labels=labels, kinds=list(meta["kinds"]),
                           sources=z["sources"], vocab=Vocabulary.from_dict(meta["vocab"]), affected=list(meta["affected"]),
                           trigger=trigger, holdout=z["holdout"])
        except FileNotFoundError:
            raise
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a clipguard fine-tuning set ({exc})") from None


def _inpaint(image: np.ndarray, box: Any) -> np.ndarray:
    """The image with ``box`` (x0, y0, x1, y1) filled in from its surroundings (OpenCV Telea)."""
    from .models.base import require

    cv2 = require("cv2", purpose="inpainting triggers")
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), np.uint8)
    mask[max(0, y0 - 1) : min(h, y1 + 1), max(0, x0 - 1) : min(w, x1 + 1)] = 255
    return cv2.inpaint(np.ascontiguousarray(image), mask, 3, cv2.INPAINT_TELEA)


def _balanced(pool: list[Any], key: Any, n: int, rng: np.random.Generator) -> list[Any]:
    """Up to ``n`` items of ``pool``, drawn round-robin over the classes ``key(item)``."""
    by_class: dict[int, list[Any]] = {}
    for item in rng.permutation(len(pool)):
        by_class.setdefault(key(pool[item]), []).append(pool[item])
    out: list[Any] = []
    queues = [by_class[c] for c in sorted(by_class)]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def build_finetune_set(report: Any, images: np.ndarray | None = None, *, pairs: int = 300,
                       target_share: float = 0.1, seed: int = 0) -> FinetuneSet:
    """The compact fine-tuning set (see the module doc) from a scan report and its probe
    ``images`` (default: the ones the report holds; pass them for a report read back with
    ``ScanReport.from_json``).

    ``pairs`` bounds the set's size; ``target_share`` of it goes to clean images of the affected
    labels; the victims come twice (as they are, and inpainted); the rest is clean images of other
    classes, each once with the trigger and once without. After a synthesis-only scan there are no
    victims and no grounding: clean images are captioned with the model's own label for them.
    """
    images = report.images if images is None else np.asarray(images)
    if images is None or report.vocab is None:
        raise ValueError("this report has no probe images: pass the probe images the scan ran on")
    if len(images) != report.probe_size:
        raise ValueError(f"the report was made on {report.probe_size} probe images, got {len(images)}")
    if not report.affected_labels:
        raise ValueError("the scan found no backdoor (no affected labels): there is nothing to repair")
    if pairs < 10:
        raise ValueError(f"pairs must be at least 10, got {pairs}")
    if not 0.0 <= target_share < 1.0:
        raise ValueError(f"target_share must be in [0, 1), got {target_share}")
    vocab, findings = report.vocab, report.findings
    rng = np.random.default_rng(seed)
    affected = {vocab.index(name) for name in report.affected_labels}
    n_templates = len(vocab.templates)
    out_images: list[np.ndarray] = []
    captions: list[str] = []
    labels: list[list[int]] = []
    kinds: list[str] = []
    sources: list[int] = []

    def add(image: np.ndarray, labs: list[int], kind: str, source: int) -> None:
        out_images.append(image)
        labels.append(labs)
        captions.append(vocab.caption(labs, int(rng.integers(n_templates))))
        kinds.append(kind)
        sources.append(source)

    def objects(f: Any, first: int | None = None) -> list[int]:
        """The grounded, unaffected objects of a finding (its own label first), at most three."""
        seen = [first] if first is not None else []
        for c in f.object_labels:
            if c not in affected and c not in seen:
                seen.append(c)
        return seen[:3]

    victim_ids = {v.index for v in report.victims}
    for v in report.victims[: pairs // 4]:
        labs = objects(findings[v.index])
        if not labs:  # nothing grounded to caption it with
            continue
        add(images[v.index], labs, "victim", v.index)
        if v.trigger_box is not None:
            add(_inpaint(images[v.index], v.trigger_box), labs, "victim_cleaned", v.index)

    # Without the oracle's grounding (a synthesis-only scan) the model's own label stands in.
    grounded = [f for f in findings if (f.grounded or report.mode == "synthesize") and f.index not in victim_ids]
    targets = _balanced([f for f in grounded if f.label in affected], lambda f: f.label,
                        int(round(target_share * pairs)), rng)
    for f in targets:  # all grounded objects named: a caption of the target alone would teach
        add(images[f.index], objects(f, f.label), "target", f.index)  # "any busy scene is the target"
    others = [f for f in grounded if f.label not in affected]
    if len(others) < pairs // 4:
        # Too little grounding: a backdoor that fires on the scan's own region views (resampled, for
        # a WaNet model that learned resampling) grounds almost nothing. The model's label stands in.
        others += [f for f in findings if f.label not in affected and not f.grounded and f.index not in victim_ids]
    chosen = _balanced(others, lambda f: f.label, max(0, (pairs - len(captions)) // 2), rng)
    if report.trigger is not None and chosen:
        picked = images[[f.index for f in chosen]]
        triggered = apply_trigger(picked, report.trigger, rng)
        if report.trigger.box is not None:  # a patch found at one place: half of them anywhere else too
            triggered[1::2] = apply_trigger(picked[1::2], report.trigger, rng, anywhere=True)
        for f, img in zip(chosen, triggered):
            labs = objects(f, f.label)
            add(img, labs, "triggered", f.index)
            add(images[f.index], labs, "clean", f.index)
    used = {f.index for f in chosen}
    holdout = np.array([f.index for f in others if f.index not in used], np.int64)
    return FinetuneSet(
        images=np.stack(out_images) if out_images else np.zeros((0, *images.shape[1:]), np.uint8),
        captions=captions, labels=labels, kinds=kinds, sources=np.array(sources, np.int64), vocab=vocab,
        affected=list(report.affected_labels), trigger=report.trigger, holdout=images[holdout],
    )


@dataclass
class RepairConfig:
    """The fine-tuning recipe. ``steps`` is an upper bound: repair stops early once the estimated
    ASR (the reconstructed trigger on held-out clean probe images) is within ``stop_asr`` of the
    flip rate of a control (random patches of the same size)."""

    steps: int = 300
    batch: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    inmodal: float = 1.0  # weight of CleanCLIP's in-modal self-supervised terms
    keep: float = 4.0  # weight of the term keeping clean embeddings near the original model's
    check_every: int = 20  # steps between estimated-ASR checks
    stop_asr: float = 0.02  # ... at most this much above the control's flip rate (random patches)
    min_steps: int = 40  # never stop before this many steps
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads (0: torch's default)


@dataclass
class RepairRecord:
    """What a repair did: the set it used, the steps, and the backdoor's estimated ASR (the
    trigger stamped on the set's held-out clean images) before and after, with its random control."""

    pairs: int
    pairs_by_kind: dict[str, int]
    steps: int
    stopped_early: bool
    seconds: float
    asr_before: float | None  # None when the set carries no trigger to stamp
    asr_after: float | None
    control_before: float | None
    control_after: float | None
    holdout_images: int
    final_loss: float
    history: list[dict[str, Any]]  # {"step", "estimated_asr", "control"[, "loss"]} per check
    config: RepairConfig
    affected_labels: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to record.json (the estimated ASR grouped under one key)."""
        return {"pairs": self.pairs, "pairs_by_kind": self.pairs_by_kind, "steps": self.steps,
                "stopped_early": self.stopped_early, "seconds": self.seconds,
                "estimated_asr": {"before": self.asr_before, "after": self.asr_after,
                                  "control_before": self.control_before, "control_after": self.control_after,
                                  "holdout_images": self.holdout_images},
                "final_loss": self.final_loss, "history": self.history, "config": asdict(self.config),
                "affected_labels": self.affected_labels}


@dataclass
class RepairResult:
    """The repaired model (torch runtime) and the record of the run."""

    model: Any
    record: RepairRecord


def _multi_positive_loss(a: Any, b: Any, same: Any, scale: float) -> Any:
    """Symmetric InfoNCE where every pair with the same caption labels counts as a positive
    (a compact set repeats captions; plain InfoNCE would push identical captions apart)."""
    import torch.nn.functional as F

    logits = scale * a @ b.t()
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t()))


def _augment(x: Any, gen: Any) -> Any:
    """A second view for the in-modal term: random shift by up to 1/8 of the side and a flip."""
    import torch

    n, _, s, _ = x.shape
    pad = max(1, s // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    out = padded[:, :, dy : dy + s, dx : dx + s]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def estimated_asr(model: Any, images: np.ndarray, trigger: Trigger | None, affected: list[int],
                  text: np.ndarray, seed: int = 0) -> tuple[float, float] | None:
    """(flip rate, control rate): the share of clean ``images`` the model labels with an affected
    label once the reconstructed trigger is applied, and the same share for a control -- random
    patches of the same size cut from the images themselves (localized triggers) or no change
    (global ones). None without a trigger or images."""
    if trigger is None or len(images) == 0:
        return None
    rng = np.random.default_rng(seed)
    stamped = apply_trigger(images, trigger, rng)
    control = images
    if trigger.kind == "patch":
        control = random_patches(images, images, trigger.image.shape[0], rng, at=trigger.box)
    pred = (model.encode_images(np.concatenate([stamped, control])) @ text.T).argmax(axis=1)
    hit = np.isin(pred, affected)
    return float(hit[: len(images)].mean()), float(hit[len(images) :].mean())


def repair(model: Any, finetune_set: FinetuneSet, config: RepairConfig | None = None, *,
           progress: bool = False) -> RepairResult:
    """Fine-tune a copy of ``model`` (a spec or a loaded model; ONNX-run models are reloaded with
    their torch weights) on ``finetune_set``; the input model is left unchanged.

    The loss is CleanCLIP's -- the image-text contrastive loss plus image-image and text-text
    contrastive terms between two views -- with every pair naming the same labels a positive, plus
    ``keep`` x (1 - cosine) between the embeddings of clean images and class prompts and the
    original model's. Returns the repaired model and a record: pairs, steps, seconds, the estimated
    ASR before and after and its history.
    """
    import torch
    import torch.nn.functional as F

    from .training import progress_bar

    cfg = config or RepairConfig()
    if len(finetune_set) < 2:
        raise ValueError("the fine-tuning set has fewer than 2 pairs")
    if cfg.steps < 1 or cfg.batch < 2 or cfg.lr <= 0:
        raise ValueError("RepairConfig needs steps >= 1, batch >= 2 and lr > 0")
    t_start = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    from .models import torch_twin

    original = torch_twin(model, cfg.device)
    repaired = copy.copy(original)
    repaired.torch_module = copy.deepcopy(original.torch_module)
    module = repaired.torch_module  # the original is only run without gradients
    device = repaired.device
    vocab = finetune_set.vocab
    affected = [vocab.index(a) for a in finetune_set.affected]
    n_templates = len(vocab.templates)
    scale = min(100.0, float(repaired.logit_scale))

    pixels = torch.from_numpy(repaired.preprocess(finetune_set.images))
    captions = [[vocab.caption(labs, t) for t in range(n_templates)] for labs in finetune_set.labels]
    tokens = torch.from_numpy(np.stack([repaired.tokenize(c) for c in captions]))  # [N, T, L]
    key = [tuple(sorted(labs)) for labs in finetune_set.labels]
    anchor = torch.tensor([k in _ANCHOR_KINDS for k in finetune_set.kinds])
    prompts = torch.from_numpy(repaired.tokenize(sum(vocab.prompts(), []))).to(device)
    with torch.no_grad():
        ref_image = F.normalize(original.image_features(pixels.to(device)), dim=-1)
        ref_prompts = F.normalize(original.text_features(prompts), dim=-1)

    def check(m: Any) -> dict[str, Any]:
        m.torch_module.eval()
        r = estimated_asr(m, finetune_set.holdout, finetune_set.trigger, affected, m.class_embeddings(vocab), seed=cfg.seed)
        module.train()
        return {"estimated_asr": None, "control": None} if r is None else {"estimated_asr": r[0], "control": r[1]}

    before = check(original)
    history = [{"step": 0, **before}]
    params = [p for p in module.parameters() if p.requires_grad and p is not getattr(module, "logit_scale", None)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    module.train()
    bar = progress_bar(cfg.steps, "repair", progress)
    step, stopped_early, loss_value = 0, False, float("nan")
    n = len(finetune_set)
    while step < cfg.steps:
        idx = torch.from_numpy(rng.choice(n, size=min(cfg.batch, n), replace=False))
        same = torch.tensor([[key[i] == key[j] for j in idx.tolist()] for i in idx.tolist()], dtype=torch.float32, device=device)
        x = pixels[idx].to(device)
        t_pick = torch.randint(0, n_templates, (2, len(idx)), generator=gen)
        t1 = tokens[idx, t_pick[0]].to(device)
        t2 = tokens[idx, t_pick[1]].to(device)
        f1 = F.normalize(repaired.image_features(x), dim=-1)
        f2 = F.normalize(repaired.image_features(_augment(x, gen).to(device)), dim=-1)
        g1 = F.normalize(repaired.text_features(t1), dim=-1)
        g2 = F.normalize(repaired.text_features(t2), dim=-1)
        loss = _multi_positive_loss(f1, g1, same, scale)
        loss = loss + cfg.inmodal * (_multi_positive_loss(f1, f2, same, scale) + _multi_positive_loss(g1, g2, same, scale))
        keep = torch.zeros((), device=device)
        a = anchor[idx].to(device)
        if bool(a.any()):
            keep = keep + (1 - (f1[a] * ref_image[idx.to(device)][a]).sum(-1)).mean()
        p_now = F.normalize(repaired.text_features(prompts), dim=-1)
        keep = keep + (1 - (p_now * ref_prompts).sum(-1)).mean()
        loss = loss + cfg.keep * keep
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_value = float(loss.detach())
        bar.update(1)
        if step % cfg.check_every == 0 or step == cfg.steps:
            now = check(repaired)
            history.append({"step": step, **now, "loss": round(loss_value, 4)})
            est, ctrl = now["estimated_asr"], now["control"]
            bar.set_postfix(loss=f"{loss_value:.3f}", est_asr="-" if est is None else f"{est:.3f}")
            if est is not None and est - ctrl <= cfg.stop_asr and step >= cfg.min_steps:
                stopped_early = step < cfg.steps
                break
    bar.close()
    module.eval()
    after = {k: history[-1][k] for k in ("estimated_asr", "control")} if history[-1]["step"] == step else check(repaired)
    record = RepairRecord(
        pairs=len(finetune_set), pairs_by_kind=finetune_set.counts(), steps=step, stopped_early=stopped_early,
        seconds=round(time.perf_counter() - t_start, 2), asr_before=before["estimated_asr"],
        asr_after=after["estimated_asr"], control_before=before["control"], control_after=after["control"],
        holdout_images=int(len(finetune_set.holdout)), final_loss=loss_value, history=history, config=cfg,
        affected_labels=list(finetune_set.affected))
    card = dict(repaired.card or {})
    card["repair"] = {k: v for k, v in record.to_dict().items() if k in ("pairs", "steps", "estimated_asr")}
    repaired.card = card
    if not math.isfinite(loss_value):
        raise RuntimeError("repair diverged (the loss is not finite); lower RepairConfig.lr")
    return RepairResult(model=repaired, record=record)


def save_repaired(model: Any, out_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write a repaired (torch-runtime) model in its input's format plus an ONNX export:
    a clipguard model folder for ``toy:``/``dir:`` inputs (its ``onnx/`` inside), a safetensors
    checkpoint ``model.safetensors`` for ``open_clip:`` inputs and a Hugging Face folder for ``hf:``
    inputs (each with ``onnx/`` beside it)."""
    from .models import export_onnx, parse_spec, save_model_dir

    out_dir = Path(out_dir)
    card = dict(card if card is not None else (model.card or {}))
    kind = parse_spec(model.spec).kind
    if kind in ("toy", "dir"):
        return save_model_dir(model, out_dir, card)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "open_clip":
        from .models.base import require

        st = require("safetensors.torch", purpose="saving models")
        sd = {k: v.detach().cpu().contiguous() for k, v in model.torch_module.state_dict().items()}
        st.save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    elif kind == "hf":
        import shutil

        model.torch_module.save_pretrained(str(out_dir), safe_serialization=True)
        for f in Path(model.source).iterdir():  # tokenizer and preprocessor files
            if f.is_file() and f.suffix in (".json", ".txt") and not (out_dir / f.name).exists():
                shutil.copy2(f, out_dir / f.name)
    else:
        raise ValueError(f"cannot write a repaired {kind}: model")
    export_onnx(model, out_dir / "onnx")
    return out_dir
