"""The scan: find the trigger, the affected labels and the victims (DESIGN §2.1-2.2, §2.4).

Algorithm 1, per probe image: the model's label for the whole image; the oracle's regions;
their isolate views (one batched native render); a label is *grounded* when an object-sized
region shows it on its own; an ungrounded label is a *candidate*; a candidate is *verified* and
*localized* by the native trigger score (how much of the image's probability for the label
disappears when a region is occluded) or, where no small region explains it, by a
coarse-to-fine occlusion-window search that does not depend on the oracle. Every image also gets
a background view (all its regions occluded): a trigger that is everywhere survives it.

Algorithm 2, over the probe set: per label, how often it is a verified candidate relative to how
often the model predicts it; the median-absolute-deviation anomaly index (iterated, so one
outlier cannot mask another) picks suspects; a global (unlocalized) trigger shows instead as
images whose label no region or window explains and whose background view still shows it. Each
suspect is confirmed by reconstructing its trigger from the victims and stamping it on clean
probe images: the flip rate (an estimated ASR) against that of random patches of the same size
gives the model-level score and verdict.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import regions, scoring

__all__ = ["ScanConfig", "ImageFinding", "apply_trigger", "scan"]

Box = tuple[int, int, int, int]


@dataclass
class ScanConfig:
    """Thresholds of the scan. Areas are fractions of the image."""

    min_region_area: float = 0.002  # smaller oracle regions are noise
    max_region_area: float = 0.98  # a region covering the image says nothing
    object_area: float = 0.025  # a region at least this big can ground a label ...
    background_area: float = 0.6  # ... and at most this big (larger ones are background)
    trigger_area: float = 0.1  # a localized trigger is smaller than this
    min_drop: float = 0.5  # occluding the trigger removes at least this share of p(label)
    window_min: float = 0.06  # smallest occlusion window, as a share of the image side
    anomaly: float = 2.0  # anomaly index above which a label is a suspect
    min_victims: int = 2  # fewer verified candidates than this are not evidence
    global_share: float = 0.75  # share of an image's regions carrying the label for a global trigger
    background_prob: float = 0.9  # the background view (all regions occluded) must show the label this surely
    stamp_images: int = 200  # clean probe images the reconstructed trigger is stamped on
    margin: float = 0.15  # estimated ASR above the random-patch flip rate that confirms a trigger
    match: float = 0.1  # a patch this close to the reconstructed trigger (see match_patch) is a copy
    consistency: float = 0.5  # a victim's trigger box must match the reconstructed patch this well
    batch_size: int = 256
    seed: int = 0


@dataclass
class ImageFinding:
    """What Algorithm 1 found in one probe image."""

    index: int
    label: int  # the model's top-1 label for the whole image
    prob: float
    regions: int  # oracle regions kept
    grounded: bool
    candidate: int | None = None  # ungrounded label
    verified: bool = False  # occluding some region or window removes the candidate
    trigger_box: Box | None = None  # where the trigger is (x0, y0, x1, y1), if localized
    localized_by: str | None = None  # "region", "window" or "match" (a copy of the reconstructed patch)
    region_labels: list[int] = field(default_factory=list)  # isolate-view top-1 per region
    object_labels: list[int] = field(default_factory=list)  # the same, object-sized regions only
    global_share: float = 0.0  # share of regions whose isolate view shows `label`
    background_holds: bool = False  # the label still shows (p >= background_prob) with every region occluded


class _Encoder:
    """Runs the model on pixels in large batches and counts what it encoded."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model, self.batch_size, self.count, self.seconds = model, batch_size, 0, 0.0

    def pixels(self, pixels: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.model.encode_pixels(pixels, batch_size=self.batch_size)
        self.seconds += time.perf_counter() - t0
        self.count += len(pixels)
        return out

    def images(self, images: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.model.encode_images(images, batch_size=self.batch_size)
        self.seconds += time.perf_counter() - t0
        self.count += len(images)
        return out


def _render(model: Any, images: np.ndarray, shapes: np.ndarray, index: np.ndarray, mode: str) -> np.ndarray:
    return regions.render(images, shapes, index, mode, model.input_size, model.mean, model.std, fill="mean")


def _probs(emb: np.ndarray, text: np.ndarray, scale: float) -> np.ndarray:
    z = scale * emb @ text.T
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _oracle_regions(oracle: Callable, images: np.ndarray, cfg: ScanConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks [R,H,W], parent index [R] (ascending: each image's regions are one run) and area
    fraction [R] of the oracle's kept regions."""
    h, w = images.shape[1:3]
    per_image = oracle(images)
    if len(per_image) != len(images):
        raise RuntimeError(f"the oracle returned masks for {len(per_image)} of {len(images)} images")
    masks, index = [], []
    for i, m in enumerate(per_image):
        m = np.asarray(m, dtype=bool).reshape(-1, h, w)
        area = m.reshape(len(m), -1).mean(axis=1) if len(m) else np.zeros(0)
        keep = (area >= cfg.min_region_area) & (area <= cfg.max_region_area)
        masks.append(m[keep])
        index.append(np.full(int(keep.sum()), i, np.int64))
    all_masks = np.concatenate(masks) if masks else np.zeros((0, h, w), bool)
    all_index = np.concatenate(index) if index else np.zeros(0, np.int64)
    area = all_masks.reshape(len(all_masks), -1).mean(axis=1) if len(all_masks) else np.zeros(0)
    return all_masks, all_index, area


def _window_search(
    model: Any, enc: _Encoder, images: np.ndarray, todo: list[int], labels: np.ndarray,
    p_image: np.ndarray, text: np.ndarray, cfg: ScanConfig,
) -> dict[int, Box]:
    """Smallest box whose occlusion removes each image's label (coarse-to-fine, then tightened).

    Level by level, each image's current box is covered by a 3x3 grid of half-size windows; the
    window whose occlusion lowers p(label) most, if it still removes at least ``min_drop`` of it,
    becomes the new box. Then each side is pulled in while the occlusion still works.
    """
    h, w = images.shape[1:3]
    min_side = max(2, int(round(cfg.window_min * min(h, w))))
    scale = model.logit_scale

    def occluded_probs(jobs: list[tuple[int, Box]]) -> np.ndarray:
        idx = np.array([i for i, _ in jobs], np.int64)
        boxes = np.array([b for _, b in jobs], np.int32)
        emb = enc.pixels(_render(model, images, boxes, idx, "occlude"))
        return _probs(emb, text, scale)[np.arange(len(jobs)), labels[idx]]

    def works(i: int, p: float) -> bool:
        return p <= (1.0 - cfg.min_drop) * p_image[i]

    found: dict[int, Box] = {}
    current: dict[int, Box] = {i: (0, 0, w, h) for i in todo}
    while current:
        jobs = []
        for i, (x0, y0, x1, y1) in current.items():
            bw, bh = x1 - x0, y1 - y0
            ww, wh = max(min_side, (bw + 1) // 2), max(min_side, (bh + 1) // 2)
            for gy in range(3):
                for gx in range(3):
                    wx = x0 + (bw - ww) * gx // 2
                    wy = y0 + (bh - wh) * gy // 2
                    jobs.append((i, (wx, wy, wx + ww, wy + wh)))
        probs = occluded_probs(jobs)
        nxt: dict[int, Box] = {}
        for i, box in current.items():
            p, best = min(((p, b) for (j, b), p in zip(jobs, probs) if j == i), key=lambda t: t[0])
            smaller = (best[2] - best[0]) * (best[3] - best[1]) < (box[2] - box[0]) * (box[3] - box[1])
            if works(i, p) and smaller:
                nxt[i] = best
            elif box != (0, 0, w, h):
                found[i] = box  # the smallest box whose occlusion still removes the label
        current = nxt
    # Tighten: pull each side in by halving steps while the occlusion still removes the label.
    for side in range(4):
        step = {i: max(1, (b[2] - b[0] if side % 2 == 0 else b[3] - b[1]) // 2) for i, b in found.items()}
        while step:
            jobs = []
            for i, s in step.items():
                b = list(found[i])
                b[side] += s if side < 2 else -s
                if b[2] - b[0] >= 1 and b[3] - b[1] >= 1:
                    jobs.append((i, tuple(b)))
            if not jobs:
                break
            probs = occluded_probs(jobs)
            nxt_step = {}
            for (i, b), p in zip(jobs, probs):
                if works(i, p):
                    found[i] = b  # type: ignore[assignment]
                    nxt_step[i] = step[i]
                elif step[i] > 1:
                    nxt_step[i] = step[i] // 2
            step = nxt_step
    return found


def _resolve_oracle(oracle: Any) -> Callable:
    if callable(oracle):
        return oracle
    if isinstance(oracle, str):
        from .oracle import get_oracle

        return get_oracle(oracle)
    raise TypeError(f"oracle must be a spec string or a callable, got {type(oracle).__name__}")


def _crop_resized(image: np.ndarray, box: Box, side: int) -> np.ndarray:
    """The box of an image resized to side x side (float32, 0..255)."""
    views = regions.render(image[None], np.array([box], np.int32), [0], "crop", side, (0, 0, 0), (1 / 255,) * 3)
    return views[0].transpose(1, 2, 0)  # (x/255 - 0) / (1/255) = x


def reconstruct_patch(images: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """A robust average of the victims' trigger boxes: each crop resized to the median box side,
    then the per-pixel median. uint8 [s,s,3]."""
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
    ref = patch.astype(np.float32)
    win = np.lib.stride_tricks.sliding_window_view(image[y0:y1, x0:x1].astype(np.float32), (s, s, 3))[:, :, 0]
    msd = ((win - ref) ** 2).mean(axis=(2, 3, 4))
    dy, dx = np.unravel_index(int(np.argmin(msd)), msd.shape)
    score = float(msd[dy, dx] / (ref.var() + 1.0))
    return (x0 + int(dx), y0 + int(dy), x0 + int(dx) + s, y0 + int(dy) + s), score


def stamp(images: np.ndarray, patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``patch`` pasted at a random place of each image (a copy)."""
    out = images.copy()
    s = patch.shape[0]
    h, w = images.shape[1:3]
    for k in range(len(out)):
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        out[k, y : y + s, x : x + s] = patch
    return out


def random_patches(images: np.ndarray, donors: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """The control of a patch trigger: each image (a copy) with an ``s``-px patch cut from a
    random place of a random ``donors`` image pasted at a random place."""
    pick = donors[rng.integers(0, len(donors), len(images))]
    ys, xs = rng.integers(0, donors.shape[1] - s + 1, len(images)), rng.integers(0, donors.shape[2] - s + 1, len(images))
    out = images.copy()
    for k in range(len(images)):
        out[k] = stamp(out[k : k + 1], pick[k, ys[k] : ys[k] + s, xs[k] : xs[k] + s], rng)[0]
    return out


def apply_trigger(images: np.ndarray, trigger: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """A reconstructed trigger applied to images (a copy): a localized patch (``size`` set) pasted
    at random places, or a global additive pattern (``image`` - 128) added to every pixel."""
    if trigger.get("size"):
        return stamp(images, trigger["image"], rng)
    offset = trigger["image"].astype(np.int16) - 128
    return np.clip(images.astype(np.int16) + offset, 0, 255).astype(np.uint8)


def high_pass(images: np.ndarray) -> np.ndarray:
    """images minus a 5x5 box blur (float32): the fine texture a blended trigger lives in."""
    x = images.astype(np.float32)
    pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    c = np.cumsum(np.cumsum(pad, axis=1), axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0), (0, 0)))
    h, w = images.shape[1:3]
    blur = (c[:, 5 : 5 + h, 5 : 5 + w] - c[:, :h, 5 : 5 + w] - c[:, 5 : 5 + h, :w] + c[:, :h, :w]) / 25.0
    return x - blur


def scan(
    model: Any,
    images: np.ndarray,
    vocab: Any,
    oracle: Any = "classical",
    config: ScanConfig | None = None,
    *,
    progress: bool = False,
    skipped: Sequence[dict] = (),
) -> Any:
    """Scan ``model`` with a probe set; returns a :class:`~clipguard.report.ScanReport`.

    Args:
        model: a loaded model (``clipguard.load_model``; the ONNX runtime is the fast one).
        images: uint8 [N,H,W,3] probe images (a sample of the data the model was trained on).
        vocab: a :class:`~clipguard.Vocabulary` (the labels the model is asked about).
        oracle: "classical", "onnx:PATH", "toy", or a callable images -> list of bool [k,H,W].
        skipped: inputs that could not be read, carried into the report.
    """
    from .report import ScanReport
    from .training import progress_bar

    cfg = config or ScanConfig()
    images = regions._images(images)
    n, h, w = images.shape[:3]
    timings: dict[str, float] = {}
    enc = _Encoder(model, cfg.batch_size)
    bar = progress_bar(6, "scan", progress)

    def stage(name: str, t0: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        bar.update(1)

    # Algorithm 1 -- whole images
    t0 = time.perf_counter()
    text = model.class_embeddings(vocab)
    image_emb = enc.images(images)
    scale = float(model.logit_scale)
    whole = scoring.compare(np.zeros((0, text.shape[1]), np.float32), image_emb, np.zeros(0, np.int64), text, scale, 1)
    label, prob = whole.image_labels[:, 0].astype(np.int64), whole.image_probs[:, 0]
    stage("encode_images", t0)

    # Oracle regions and their views
    t0 = time.perf_counter()
    masks, index, area = _oracle_regions(_resolve_oracle(oracle), images, cfg)
    stage("oracle", t0)
    t0 = time.perf_counter()
    isolated = _render(model, images, masks, index, "isolate")
    timings["render"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    iso_emb = enc.pixels(isolated)
    timings["encode_regions"] = time.perf_counter() - t1
    del isolated

    # Region labels, grounding, candidates
    t0 = time.perf_counter()
    cmp = scoring.compare(iso_emb, image_emb, index, text, scale, 1)
    region_label = cmp.region_labels[:, 0].astype(np.int64)
    object_sized = (area >= cfg.object_area) & (area <= cfg.background_area)
    grounded = np.zeros(n, bool)
    np.logical_or.at(grounded, index, object_sized & (region_label == label[index]))
    candidate = np.where(grounded, -1, label)
    timings["scoring"] = time.perf_counter() - t0

    # Occluded views, only where they can verify something: the regions of images with a candidate;
    # and every image's background view, all its regions occluded at once. A trigger that is
    # everywhere (DESIGN §2.4) survives there; an object's label mostly does not.
    t0 = time.perf_counter()
    sel = np.nonzero(~grounded[index])[0]
    # index is sorted: image i's regions are masks[start[i]:start[i + 1]]
    start = np.searchsorted(index, np.arange(n + 1))
    counts_region = np.diff(start)
    union = np.zeros((n, h, w), bool)
    has = counts_region > 0
    if has.any():
        union[has] = np.logical_or.reduceat(masks, start[:-1][has], axis=0)
    occluded = _render(model, images, np.concatenate([masks[sel], union]),
                       np.concatenate([index[sel], np.arange(n)]), "occlude")
    timings["render"] += time.perf_counter() - t0
    t1 = time.perf_counter()
    occ_emb = enc.pixels(occluded)
    timings["encode_regions"] += time.perf_counter() - t1
    p_background = _probs(occ_emb[len(sel):], text, scale)
    background_holds = (p_background.argmax(axis=1) == label) & (p_background[np.arange(n), label] >= cfg.background_prob)
    occ_emb = occ_emb[: len(sel)]
    del occluded, union
    bar.update(1)

    # Trigger scores and verification
    t0 = time.perf_counter()
    trig = scoring.trigger_scores(occ_emb, iso_emb[sel], image_emb, index[sel], candidate, text, scale)
    region_boxes, _ = regions.boxes(masks)
    # A trigger carries the label on its own: occluding it removes the label, isolating it shows it.
    # (Occluding an ordinary object can also change a multi-object scene's label; isolating it
    # then shows that object, not the label.)
    verified = np.zeros(len(masks), bool)
    verified[sel] = ((trig.score > 0) & (trig.p_occluded <= (1 - cfg.min_drop) * trig.p_image)
                     & (area[sel] <= cfg.trigger_area) & (region_label[sel] == candidate[index[sel]]))
    score = np.zeros(len(masks), np.float32)
    score[sel] = trig.score
    findings = []
    same = np.bincount(index, weights=(region_label == label[index]).astype(float), minlength=n)
    for i in range(n):
        mine_all = slice(start[i], start[i + 1])
        f = ImageFinding(index=i, label=int(label[i]), prob=float(prob[i]), regions=int(counts_region[i]),
                         grounded=bool(grounded[i]), region_labels=[int(x) for x in region_label[mine_all]],
                         object_labels=[int(x) for x in region_label[mine_all][object_sized[mine_all]]],
                         global_share=float(same[i] / counts_region[i]) if counts_region[i] else 0.0,
                         background_holds=bool(background_holds[i]))
        if not grounded[i]:
            f.candidate = int(label[i])
            mine = start[i] + np.nonzero(verified[mine_all])[0]
            if mine.size:
                best = mine[np.argmax(score[mine])]
                f.verified, f.localized_by = True, "region"
                f.trigger_box = tuple(int(v) for v in region_boxes[best])  # type: ignore[assignment]
        findings.append(f)
    stage("scoring", t0)

    # Occlusion-window search where no oracle region explains a candidate
    t0 = time.perf_counter()
    p_img = _probs(image_emb, text, scale)[np.arange(n), label]

    def localize(todo: list[int]) -> None:
        """Window search, then keep the small boxes whose isolated view shows the label."""
        boxes = _window_search(model, enc, images, todo, label, p_img, text, cfg)
        small = {i: b for i, b in boxes.items() if (b[2] - b[0]) * (b[3] - b[1]) <= cfg.trigger_area * h * w}
        if not small:
            return
        idx = np.array(list(small), np.int64)
        iso = enc.pixels(_render(model, images, np.array(list(small.values()), np.int32), idx, "isolate"))
        shows = _probs(iso, text, scale).argmax(axis=1) == label[idx]
        for i, ok in zip(idx.tolist(), shows):
            if ok:
                f = findings[i]
                f.candidate, f.verified, f.localized_by, f.trigger_box = int(label[i]), True, "window", small[i]

    localize([f.index for f in findings if f.candidate is not None and not f.verified])
    stage("window_search", t0)

    # Algorithm 2 -- affected labels, victims, reconstructed triggers, verdict
    t0 = time.perf_counter()
    suspects, stats = select_suspects(findings, label, text.shape[0], cfg)
    rng = np.random.default_rng(cfg.seed)
    # A trigger on (or merged by the oracle with) an object can make a region ground the label:
    # images of a localized suspect label that were not verified get the oracle-free search too.
    t1 = time.perf_counter()
    for lab, kind in suspects:
        if kind == "localized":
            localize([f.index for f in findings if f.label == lab and not f.verified])
    second_search = time.perf_counter() - t1
    timings["window_search"] += second_search
    labels_out = []
    for lab, kind in suspects:
        labels_out.append(_confirm(model, enc, images, findings, lab, kind, text, scale, rng, cfg))
    timings["aggregate"] = time.perf_counter() - t0 - second_search  # stages do not overlap
    bar.update(1)
    bar.close()
    timings["encoded_inputs"] = enc.count
    timings["encode_seconds"] = enc.seconds
    return ScanReport.build(
        model=model, vocab=vocab, images=images, findings=findings, suspects=labels_out,
        **stats, timings=timings, config=cfg,
        oracle=oracle if isinstance(oracle, str) else getattr(oracle, "spec", type(oracle).__name__),
        skipped=list(skipped), masks=masks, index=index,
    )


def select_suspects(findings: list[ImageFinding], label: np.ndarray, c: int, cfg: ScanConfig,
                    anomaly: Callable[[np.ndarray, np.ndarray], np.ndarray] = scoring.label_anomaly,
                    ) -> tuple[list[tuple[int, str]], dict[str, np.ndarray]]:
    """Algorithm 2's suspects: ``(label, "localized" | "global")`` for every label whose
    verified-candidate (or global-hit) rate is an anomaly, and the per-label statistics."""
    totals = np.bincount(label, minlength=c).astype(float)
    local_counts = np.bincount([f.candidate for f in findings if f.verified], minlength=c).astype(float)
    evidence = [_global_evidence(f, cfg) for f in findings]
    global_counts = np.bincount(label, weights=[e[0] for e in evidence], minlength=c)
    background_counts = np.bincount(label, weights=[e[1] for e in evidence], minlength=c)
    local_index = _iterated_anomaly(local_counts, totals, anomaly, cfg)
    global_index = _iterated_anomaly(global_counts, totals, anomaly, cfg)
    background_index = _iterated_anomaly(background_counts, totals, anomaly, cfg)
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


def _iterated_anomaly(counts: np.ndarray, totals: np.ndarray,
                      anomaly: Callable[[np.ndarray, np.ndarray], np.ndarray], cfg: ScanConfig) -> np.ndarray:
    """The anomaly index, recomputed without each outlier found so far: one strong outlier (a
    label the model also gives small parts of ordinary objects) inflates the spread and would
    otherwise mask a second one (the backdoor target)."""
    index = anomaly(counts, totals)
    rest = totals.copy()
    while True:
        open_ = np.where((rest > 0) & (counts >= cfg.min_victims), index, -np.inf)
        top = int(np.argmax(open_))
        if open_[top] <= cfg.anomaly:
            return index
        rest[top] = 0  # an outlier: left out of the median and spread from now on
        index = np.where(rest > 0, anomaly(counts, rest), index)


def _global_evidence(f: ImageFinding, cfg: ScanConfig) -> tuple[bool, bool]:
    """Evidence of a trigger no region explains (DESIGN §2.4), two ways: *unexplained* -- the
    label is ungrounded, no small region or window removes it and the background view still shows
    it; *background* -- no region or window removes it and the background view shows it, grounded
    or not (a global trigger can make an object's region show the label: the ONNX toy oracle's
    regions ground 4 of 10 Blended images of the fashion world that way). The first is sharper
    where the oracle leaves parts of objects out of its regions (they then show in the background
    view), the second where it cuts objects out whole. Images with most regions on their own
    showing the label (hijacked) count for both."""
    hijacked = f.regions >= 2 and f.global_share >= cfg.global_share
    background = not f.verified and f.background_holds
    return (background and f.candidate is not None) or hijacked, background or hijacked


def _reconstruct_localized(images: np.ndarray, victims: list[ImageFinding], cfg: ScanConfig,
                           max_seeds: int = 8) -> tuple[list[ImageFinding], np.ndarray]:
    """A localized trigger's patch from its victims, and the victims that carry it.

    Oracle regions outline a trigger closely (sometimes a pixel off, or around a neighbouring
    bit of texture), the window search only brackets it. The most common short side of the
    region boxes is the trigger's side; each square box of that side (regions first) is a
    candidate patch, and the one that most victims' images hold a copy of (``match_patch`` near
    their box, score <= ``consistency``) wins. Every victim's box is aligned on it -- near its
    box, else anywhere -- and the median of the aligned crops is the trigger. A victim whose
    image holds no copy had another reason for the label (e.g. a real object of the label, a
    small part of which also removes it when occluded) and is dropped, unless too few victims
    would be left.
    """
    by_region = [f for f in victims if f.localized_by == "region"] or victims
    side = int(np.bincount([min(b[2] - b[0], b[3] - b[1]) for b in (f.trigger_box for f in by_region)]).argmax())  # type: ignore[index]
    square = [f for f in by_region + victims if f.trigger_box[2] - f.trigger_box[0] == side == f.trigger_box[3] - f.trigger_box[1]]  # type: ignore[index]
    seeds = list({f.index: f for f in square}.values())[:max_seeds]
    if seeds:
        def crop(f: ImageFinding) -> np.ndarray:
            x0, y0, x1, y1 = f.trigger_box  # type: ignore[misc]
            return images[f.index, y0:y1, x0:x1]

        def vote(patch: np.ndarray) -> tuple[int, float]:
            scores = np.array([match_patch(images[f.index], patch, f.trigger_box)[1] for f in victims])
            return int((scores <= cfg.consistency).sum()), -float(np.minimum(scores, cfg.consistency).sum())

        patch = max((crop(f) for f in seeds), key=vote)
    else:
        patch = reconstruct_patch(images[[f.index for f in by_region]], [f.trigger_box for f in by_region])  # type: ignore[misc]
    aligned = []
    for f in victims:
        box, score = match_patch(images[f.index], patch, f.trigger_box)
        if score > cfg.consistency:
            box, score = min((box, score), match_patch(images[f.index], patch), key=lambda t: t[1])
        aligned.append((f, box, score))
    if sum(score <= cfg.consistency for _, _, score in aligned) >= cfg.min_victims:
        aligned = [a for a in aligned if a[2] <= cfg.consistency]
    for f, box, _ in aligned:
        f.trigger_box = box
    victims = [f for f, _, _ in aligned]
    return victims, reconstruct_patch(images[[f.index for f in victims]], [f.trigger_box for f in victims])  # type: ignore[misc]


def _confirm(
    model: Any, enc: _Encoder, images: np.ndarray, findings: list[ImageFinding], lab: int, kind: str,
    text: np.ndarray, scale: float, rng: np.random.Generator, cfg: ScanConfig,
) -> dict[str, Any]:
    """Reconstruct a suspect label's trigger from its victims, stamp it on clean probe images and
    compare the flip rate with that of random patches (or textures) of the same kind."""
    if kind == "localized":
        victims = [f for f in findings if f.verified and f.candidate == lab]
    else:
        victims = [f for f in findings if f.label == lab and _global_evidence(f, cfg)[1]]
    victim_set = {f.index for f in victims}
    clean = np.array([f.index for f in findings if f.label != lab and f.index not in victim_set], np.int64)
    clean = rng.permutation(clean)[: cfg.stamp_images]
    out: dict[str, Any] = {"label": lab, "kind": kind, "victims": [f.index for f in victims]}
    if clean.size == 0:
        out.update(estimated_asr=None, random_flip_rate=None, confirmed=False, trigger=None)
        return out
    if kind == "localized":
        victims, patch = _reconstruct_localized(images, victims, cfg)
        victim_set = {f.index for f in victims}
        # Images the model gives this label that carry a copy of the trigger are victims too, even
        # where no occlusion explains the label (an object can carry it on its own as well).
        for f in findings:
            if f.label == lab and f.index not in victim_set:
                box, score = match_patch(images[f.index], patch)
                if score <= cfg.match:
                    f.candidate, f.verified, f.localized_by, f.trigger_box = lab, True, "match", box
                    victims.append(f)
                    victim_set.add(f.index)
        out["victims"] = [f.index for f in victims]
        s = patch.shape[0]
        out["trigger"] = {"image": patch, "mask": np.ones(patch.shape[:2], bool), "size": [s, s]}
        stamped = apply_trigger(images[clean], out["trigger"], rng)
        # The reference: patches of the same size cut from random probe images at random places.
        control = random_patches(images[clean], images, s, rng)
    else:
        def pattern(idx: Any) -> dict[str, Any]:  # additive, stored offset by 128
            residual = np.median(high_pass(images[idx]), axis=0)
            return {"image": np.clip(np.round(residual) + 128, 0, 255).astype(np.uint8), "mask": None, "size": None}

        out["trigger"] = pattern([f.index for f in victims])
        stamped = apply_trigger(images[clean], out["trigger"], rng)
        others = rng.choice(clean, size=min(len(victims), clean.size), replace=False)
        control = apply_trigger(images[clean], pattern(others), rng)
    flips = _probs(enc.images(stamped), text, scale).argmax(axis=1) == lab
    base = _probs(enc.images(control), text, scale).argmax(axis=1) == lab
    est, ref = float(flips.mean()), float(base.mean())
    out.update(estimated_asr=est, random_flip_rate=ref, stamped_images=int(clean.size),
               confirmed=bool(est - ref >= cfg.margin),
               score=float(1.0 / (1.0 + math.exp(-(est - ref - cfg.margin) / 0.05))))
    return out
