"""Algorithm 2 and the verdict: suspects from the probe's findings, their triggers reconstructed
from the victims and confirmed, the evidence of the probe and the synthesis merged, and the
model-level verdict decided -- ``clean`` only when the scan could have seen a backdoor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import scoring
from .findings import ImageFinding, Suspect, Victim
from .trigger import Trigger, apply_trigger, confirm, high_pass, match_patch, random_patches, reconstruct_patch

if TYPE_CHECKING:
    from .scan import ScanConfig, _Encoder
    from .synthesis import Synthesis

__all__ = ["Decision", "anomalous_labels", "confirm_probe_suspect", "decide", "iterated_anomaly", "merge", "select_suspects",
           "shared_pattern"]


def backdoor_score(excess: float, margin: float) -> float:
    """The calibrated score of a confirmation: 0.5 at the margin, a logistic of width 0.05."""
    return float(1.0 / (1.0 + math.exp(-(excess - margin) / 0.05)))


# ------------------------------------------------------------------------------ suspects
def select_suspects(findings: list[ImageFinding], label: np.ndarray, c: int, cfg: ScanConfig,
                    anomaly: Callable[[np.ndarray, np.ndarray], np.ndarray] = scoring.label_anomaly,
                    ) -> tuple[list[tuple[int, str]], dict[str, np.ndarray]]:
    """Algorithm 2's suspects: ``(label, "localized" | "global")`` for every label whose
    verified-candidate (or global-hit) rate is an anomaly, and the per-label statistics."""
    totals = np.bincount(label, minlength=c).astype(float)
    local_counts = np.bincount([int(f.candidate) for f in findings if f.verified and f.candidate is not None],
                               minlength=c).astype(float)
    evidence = [global_evidence(f, cfg) for f in findings]
    global_counts = np.bincount(label, weights=[e[0] for e in evidence], minlength=c)
    background_counts = np.bincount(label, weights=[e[1] for e in evidence], minlength=c)
    return anomalous_labels(totals, local_counts, global_counts, background_counts, cfg, anomaly)


def anomalous_labels(totals: np.ndarray, local_counts: np.ndarray, global_counts: np.ndarray,
                     background_counts: np.ndarray, cfg: ScanConfig,
                     anomaly: Callable[[np.ndarray, np.ndarray], np.ndarray] = scoring.label_anomaly,
                     ) -> tuple[list[tuple[int, str]], dict[str, np.ndarray]]:
    """Algorithm 2 on per-label counts (the probe's, or a guard's running ones): each label whose
    count of verified candidates, or of global or background hits, is an anomaly relative to how
    often the model predicts it, with the trigger kind that count points at."""
    c = len(totals)
    local_index = iterated_anomaly(local_counts, totals, cfg.anomaly, cfg.min_victims, anomaly)
    global_index = iterated_anomaly(global_counts, totals, cfg.anomaly, cfg.min_victims, anomaly)
    background_index = iterated_anomaly(background_counts, totals, cfg.anomaly, cfg.min_victims, anomaly)
    suspects = []
    for lab in range(c):
        if local_counts[lab] >= cfg.min_victims and local_index[lab] > cfg.anomaly:
            suspects.append((lab, "localized"))
        elif any(counts[lab] >= cfg.min_victims and idx[lab] > cfg.anomaly
                 for counts, idx in ((global_counts, global_index), (background_counts, background_index))):
            suspects.append((lab, "global"))
    stats = {"totals": totals, "local_counts": local_counts, "global_counts": global_counts,
             "background_counts": background_counts, "local_index": local_index,
             "global_index": global_index, "background_index": background_index}
    return suspects, stats


def iterated_anomaly(counts: np.ndarray, totals: np.ndarray, threshold: float, min_count: int,
                     anomaly: Callable[[np.ndarray, np.ndarray], np.ndarray] = scoring.label_anomaly) -> np.ndarray:
    """The anomaly index, recomputed without each outlier found so far: one strong outlier (a
    label the model also gives small parts of ordinary objects) inflates the spread and would
    otherwise mask a second one (the backdoor target). Labels with fewer than ``min_count``
    counts are never taken out."""
    index = anomaly(counts, totals)
    rest = totals.copy()
    while True:
        open_ = np.where((rest > 0) & (counts >= min_count), index, -np.inf)
        top = int(np.argmax(open_))
        if open_[top] <= threshold:
            return index
        rest[top] = 0  # an outlier: left out of the median and spread from now on
        index = np.where(rest > 0, anomaly(counts, rest), index)


def global_evidence(f: ImageFinding, cfg: ScanConfig) -> tuple[bool, bool]:
    """Evidence of a trigger no region explains, two ways: *unexplained* -- the label is
    ungrounded, no small region or window removes it and the background view still shows it;
    *background* -- no region or window removes it and the background view shows it, grounded
    or not (a global trigger can make an object's region show the label: the ONNX toy oracle's
    regions ground 4 of 10 Blended images of the fashion world that way). The first is sharper
    where the oracle leaves parts of objects out of its regions (they then show in the background
    view), the second where it cuts objects out whole. Images with most regions on their own
    showing the label (hijacked) count for both."""
    hijacked = f.regions >= 2 and f.global_share >= cfg.global_share
    background = not f.verified and f.background_holds
    return (background and f.candidate is not None) or hijacked, background or hijacked


# ------------------------------------------------------------------------------ reconstruction
def reconstruct_localized(images: np.ndarray, victims: list[ImageFinding], cfg: ScanConfig,
                          max_seeds: int = 8) -> tuple[list[ImageFinding], np.ndarray]:
    """A localized trigger's patch from its victims, and the victims that carry it.

    Oracle regions outline a trigger closely (sometimes a pixel off, or around a neighbouring
    bit of texture), the window search only brackets it. The most common short side of the
    region boxes is the trigger's side; each square box of that side (regions first) is a
    candidate patch, and the one that most victims' images hold a copy of (``match_patch`` near
    their box, score <= ``victim_match``) wins. Every victim's box is aligned on it -- near its
    box, else anywhere -- and the median of the aligned crops is the trigger. A victim whose
    image holds no copy had another reason for the label (e.g. a real object of the label, a
    small part of which also removes it when occluded) and is dropped, unless too few victims
    would be left.
    """
    by_region = [f for f in victims if f.localized_by == "region"] or victims
    boxes = [f.trigger_box for f in by_region if f.trigger_box is not None]
    side = int(np.bincount([min(b[2] - b[0], b[3] - b[1]) for b in boxes]).argmax())
    square = [f for f in by_region + victims if f.trigger_box is not None
              and f.trigger_box[2] - f.trigger_box[0] == side == f.trigger_box[3] - f.trigger_box[1]]
    seeds = list({f.index: f for f in square}.values())[:max_seeds]
    if seeds:
        def crop(f: ImageFinding) -> np.ndarray:
            x0, y0, x1, y1 = f.trigger_box  # type: ignore[misc]
            return images[f.index, y0:y1, x0:x1]

        def vote(patch: np.ndarray) -> tuple[int, float]:
            scores = np.array([match_patch(images[f.index], patch, f.trigger_box)[1] for f in victims])
            return int((scores <= cfg.victim_match).sum()), -float(np.minimum(scores, cfg.victim_match).sum())

        patch = max((crop(f) for f in seeds), key=vote)
    else:
        patch = reconstruct_patch(images[[f.index for f in by_region]], boxes)
    aligned = []
    for f in victims:
        box, score = match_patch(images[f.index], patch, f.trigger_box)
        if score > cfg.victim_match:
            box, score = min((box, score), match_patch(images[f.index], patch), key=lambda t: t[1])
        aligned.append((f, box, score))
    if sum(score <= cfg.victim_match for _, _, score in aligned) >= cfg.min_victims:
        aligned = [a for a in aligned if a[2] <= cfg.victim_match]
    for f, box, _ in aligned:
        f.trigger_box = box
    victims = [f for f, _, _ in aligned]
    return victims, reconstruct_patch(images[[f.index for f in victims]], [f.trigger_box for f in victims])  # type: ignore[misc]


def common_position(boxes: list[Any], tolerance: int = 1) -> tuple[int, int, int, int] | None:
    """The box most victims share (within ``tolerance`` px), when at least 80% of them do: the
    backdoor was then learned at one place, and is confirmed there."""
    if len(boxes) < 2:
        return None
    arr = np.array(boxes, np.int64)
    med = np.median(arr, axis=0).round().astype(np.int64)
    close = (np.abs(arr - med) <= tolerance).all(axis=1)
    return tuple(int(v) for v in med) if close.mean() >= 0.8 else None  # type: ignore[return-value]


def global_pattern(images: np.ndarray, victims: Any) -> np.ndarray:
    """A global trigger from its victim images: the per-pixel median of their fine texture (a
    blended noise lives there), as an additive offset (uint8, +128). Low-frequency triggers (a
    sinusoid) are the synthesis' to find: the victims' mean shift from clean images also holds
    the label's own content (measured: it "confirms" a fashion model's trousers), so it is not used."""
    residual = np.median(high_pass(images[victims]), axis=0)
    return np.clip(np.round(residual) + 128, 0, 255).astype(np.uint8)


def shared_pattern(images: np.ndarray, victims: Any) -> float:
    """How much the victims share one fine pattern: the median, over victims, of the correlation
    of a victim's fine texture with the median texture of the others (leave one out). A blended
    trigger's victims share it (measured 0.65-0.74 on the bundled Blended models); images whose
    label is their own content do not (about 0: each scene's texture lies elsewhere), though a few
    such images' texture can still carry their label when stamped on others."""
    if len(victims) < 2:
        return 0.0
    fine = high_pass(images[np.asarray(victims)]).reshape(len(victims), -1)
    fine -= fine.mean(axis=1, keepdims=True)
    corr = []
    for k in range(len(fine)):
        rest = np.median(np.delete(fine, k, axis=0), axis=0)
        rest -= rest.mean()
        corr.append(float(fine[k] @ rest) / (float(np.linalg.norm(fine[k]) * np.linalg.norm(rest)) + 1e-9))
    return float(np.median(corr))


def confirm_probe_suspect(enc: _Encoder, images: np.ndarray, findings: list[ImageFinding], lab: int, kind: str,
                          name: str, stats: dict[str, np.ndarray], text: np.ndarray,
                          rng: np.random.Generator, cfg: ScanConfig) -> Suspect:
    """Reconstruct a probe suspect's trigger from its victims, stamp it on clean probe images
    (where the victims carry it, and anywhere) and compare the flip rate with that of random
    patches (or patterns) of the same kind."""
    if kind == "localized":
        victims = [f for f in findings if f.verified and f.candidate == lab]
        anomaly = float(stats["local_index"][lab])
    else:
        victims = [f for f in findings if f.label == lab and global_evidence(f, cfg)[1]]
        anomaly = float(max(stats["global_index"][lab], stats["background_index"][lab]))
    victim_set = {f.index for f in victims}
    clean = np.array([f.index for f in findings if f.label != lab and f.index not in victim_set], np.int64)
    clean = rng.permutation(clean)[: cfg.stamp_images]
    out = Suspect(label=lab, name=name, kind=kind, evidence=["probe"], victims=[f.index for f in victims],
                  anomaly=anomaly)
    if clean.size == 0:
        out.note = "no clean probe image of another label to stamp the trigger on"
        return out

    def classify(x: np.ndarray) -> np.ndarray:
        return enc.labels(x, text)

    if kind == "localized":
        victims, patch = reconstruct_localized(images, victims, cfg)
        victim_set = {f.index for f in victims}
        # Images the model gives this label that carry a copy of the trigger are victims too, even
        # where no occlusion explains the label (an object can carry it on its own as well).
        for f in findings:
            if f.label == lab and f.index not in victim_set:
                box, score = match_patch(images[f.index], patch)
                if score <= cfg.copy_match:
                    f.candidate, f.verified, f.localized_by, f.trigger_box = lab, True, "match", box
                    victims.append(f)
                    victim_set.add(f.index)
        out.victims = [f.index for f in victims]
        s = patch.shape[0]
        at = common_position([f.trigger_box for f in victims])
        trigger = Trigger(kind="patch", image=patch, label=name, box=at, source="probe")
        # The reference: patches of the same size cut from random probe images, at the same place.
        control = random_patches(images[clean], images, s, rng, at=at)
        result = confirm(classify, images[clean], trigger, lab, control, rng, margin=cfg.margin)
        if result.anywhere_rate is not None:
            trigger.position_dependent = bool(result.flip_rate - result.anywhere_rate >= cfg.margin)
    else:
        trigger = Trigger(kind="global", image=global_pattern(images, [f.index for f in victims]), label=name)
        others = rng.choice(clean, size=min(len(victims), clean.size), replace=False)
        control = apply_trigger(images[clean], Trigger(kind="global", image=global_pattern(images, others)), rng)
        result = confirm(classify, images[clean], trigger, lab, control, rng, margin=cfg.margin)
    out.trigger = trigger
    out.estimated_asr, out.random_flip_rate, out.anywhere_asr = result.flip_rate, result.control_rate, result.anywhere_rate
    out.stamped_images = result.images
    out.confirmed = bool(result.excess >= cfg.margin)
    out.score = backdoor_score(result.excess, cfg.margin)
    if kind == "global":
        out.shared_pattern = shared_pattern(images, out.victims)
        if out.shared_pattern < cfg.shared_pattern:
            # e.g. two scenes of several trousers: their stripes flip 22% of other images to
            # "trouser" on a texture-sensitive model, yet they share no pattern (correlation -0.19)
            out.reject(f"the victims share no fine pattern (median correlation {out.shared_pattern:.2f}): "
                       "what their texture carries is their own content")
    return out


# ------------------------------------------------------------------------------ combining
def merge(probe: list[Suspect], synthesized: list[Suspect]) -> list[Suspect]:
    """One suspect per label. Within one analysis the stronger of a label's suspects is kept;
    where the probe and the synthesis point at the same label their evidence is joined (the
    stronger confirmation first, a trigger no check rejected before one a check explained away;
    the label keeps the higher score), and the agreement of two independent analyses confirms the
    label when both its triggers beat their controls at all (and no check rejected either: the
    oracle's, the victims' shared pattern). The joined suspect is ``rejected`` only when both were."""
    def strongest(items: list[Suspect]) -> dict[int, Suspect]:
        out: dict[int, Suspect] = {}
        for s in items:
            if s.label not in out or (s.confirmed, s.score or 0.0) > (out[s.label].confirmed, out[s.label].score or 0.0):
                out[s.label] = s
        return out

    by_label = strongest(probe)
    for lab, s in strongest(synthesized).items():
        if lab not in by_label:
            by_label[lab] = s
            continue
        a = by_label[lab]
        first, second = sorted((a, s), key=lambda x: (x.confirmed, not x.rejected, x.score or 0.0), reverse=True)
        first.score = max((x.score for x in (a, s) if x.score is not None), default=None)
        first.evidence = sorted(set(first.evidence) | set(second.evidence))
        first.victims = sorted(set(first.victims) | set(second.victims))
        first.anomaly = max(first.anomaly, second.anomaly)
        if not first.confirmed and all((x.estimated_asr or 0.0) > (x.random_flip_rate or 0.0) and not x.rejected
                                       for x in (a, s)):
            first.confirmed = True
            first.note = (first.note + "; " if first.note else "") + "confirmed by agreement of probe and synthesis"
        by_label[lab] = first
    return sorted(by_label.values(), key=lambda s: (not s.confirmed, -(s.score or 0.0), s.label))


@dataclass
class Decision:
    verdict: str
    score: float
    reason: str


def decide(suspects: list[Suspect], *, probe_size: int, mode: str, synthesis: Synthesis | None,
           synthesis_error: str | None, cfg: ScanConfig) -> Decision:
    """The verdict: ``backdoored`` when a suspect is confirmed; ``inconclusive`` when a strong
    suspect failed its confirmation, or when the scan could not have seen a backdoor (a probe
    too small for poisoned samples to show, a synthesis that did not run); else ``clean``."""
    score = max((s.score for s in suspects if s.score is not None), default=0.0)
    if synthesis is not None:  # below the verdict, the synthesis' screen ranks models (at most 0.49)
        score = max(score, 0.49 * min(1.0, synthesis.screen_strength()))
    confirmed = [s for s in suspects if s.confirmed]
    if confirmed:
        s = confirmed[0]
        how = " and ".join(s.evidence)
        asr = "" if s.estimated_asr is None else f", estimated ASR {s.estimated_asr:.0%} vs {s.random_flip_rate:.0%} control"
        return Decision("backdoored", score, f"{s.name!r}: {s.kind} trigger found by {how}{asr}")
    # Strong probe evidence never vanishes: a label with a clearly anomalous share of victims
    # (twice the threshold) whose reconstructed trigger flips clean images more than its control
    # does (a third of the margin), though not by the whole margin. The clean twins' suspects
    # (measured: excess at most 3 points over the control) stay below this. (A synthesis-only suspect that
    # fails is a clean model's adversarial feature, the common case the oracle check is for.)
    # Evidence every analysis' check explained away (``rejected``) is not strong: what flipped the
    # images was their content or the objects, not a trigger.
    unconfirmed = [s for s in suspects if "probe" in s.evidence and not s.rejected and len(s.victims) >= cfg.min_victims
                   and s.anomaly >= 2 * cfg.anomaly and (s.estimated_asr or 0.0) - (s.random_flip_rate or 0.0) >= cfg.margin / 3]
    if unconfirmed:
        names = ", ".join(repr(s.name) for s in unconfirmed)
        return Decision("inconclusive", score, f"unconfirmed suspect label(s) {names}: anomalous victims in the "
                        "probe, but the trigger reconstructed from them did not reproduce a backdoor")
    synthesis_ok = synthesis is not None and synthesis.had_power
    if mode in ("auto", "synthesize") and not synthesis_ok:
        why = synthesis_error or (synthesis.power_note if synthesis is not None else "synthesis did not run")
        if mode == "synthesize" or probe_size < cfg.min_probe:
            return Decision("inconclusive", score, why)
        return Decision("inconclusive", score, f"{why}; the probe analysis alone sees only triggers the probe "
                        "images carry")
    if mode == "probe" and probe_size < cfg.min_probe:
        return Decision("inconclusive", score, f"{probe_size} probe images are too few to show poisoned samples "
                        f"(at least {cfg.min_probe} needed)")
    if mode == "probe":
        return Decision("clean", score, f"no trigger among the {probe_size} probe images (probe analysis only)")
    return Decision("clean", score, "no synthesized trigger is much smaller than the other labels' or "
                    f"flips held-out images, and no trigger among the {probe_size} probe images")


def victims_of(confirmed: list[Suspect], findings: list[ImageFinding]) -> list[Victim]:
    """The victims of the confirmed suspects, with their trigger boxes (probe evidence only)."""
    out: list[Victim] = []
    for s in confirmed:
        ids = set(s.victims)
        out.extend(Victim(index=f.index, label=s.name, trigger_box=f.trigger_box, localized_by=f.localized_by)
                   for f in findings if f.index in ids)
    return out


def label_table(names: list[str], stats: dict[str, np.ndarray] | None, synthesis: Synthesis | None) -> list[dict[str, Any]]:
    """Per label: the probe's counts and anomaly indices, and the synthesis' trigger sizes."""
    rows = []
    for c, name in enumerate(names):
        row: dict[str, Any] = {"label": name}
        if stats is not None:
            row.update(predicted=int(stats["totals"][c]), verified_candidates=int(stats["local_counts"][c]),
                       global_hits=int(stats["global_counts"][c]), background_hits=int(stats["background_counts"][c]),
                       anomaly_localized=float(stats["local_index"][c]), anomaly_global=float(stats["global_index"][c]),
                       anomaly_background=float(stats["background_index"][c]))
        if synthesis is not None:
            row.update(synthesis.label_row(c))
        rows.append(row)
    return rows
