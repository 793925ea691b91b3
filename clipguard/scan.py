"""The scan: find the trigger, the affected labels and the victims.

Two analyses, combined by ``mode``:

*Probe analysis* (Algorithms 1-2; finds triggers that the probe images carry). Per probe image,
in named stages: :func:`whole_image_labels` (the model's label for the whole image); the
oracle's regions (:func:`oracle_regions`); :func:`ground` (their isolate views, one batched
native render; a label is *grounded* when an object-sized region shows it on its own, an
ungrounded label is a *candidate*); :func:`verify` (occluded views and every image's
background view: a candidate is *verified* and *localized* by the native trigger score -- how
much of the image's probability for the label disappears when a region is occluded);
:func:`localize_windows` (where no small region explains a candidate, a coarse-to-fine
occlusion-window search that does not depend on the oracle). Over the probe set
(:mod:`clipguard.aggregate`): per label, how often it is a verified candidate relative to how
often the model predicts it; the iterated median-absolute-deviation anomaly index picks
suspects; each is confirmed by reconstructing its trigger from the victims and stamping it on
clean probe images against a random control.

*Synthesis* (:mod:`clipguard.synthesis`; needs no triggered image): per label, the smallest
patch and the smallest global pattern that send clean probe images to it; a label that needs a
far smaller change than the others is a suspect, checked by the oracle and confirmed the same
way.

The verdict (:func:`clipguard.aggregate.decide`) is ``backdoored`` when a suspect is confirmed,
``clean`` only when the scan had the power to see a backdoor, else ``inconclusive`` with the
reason.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import regions, scoring
from .findings import ImageFinding, Suspect
from .report import ScanReport
from .trigger import Box

__all__ = ["MODES", "ScanConfig", "ImageFinding", "scan", "whole_image_labels", "oracle_regions", "ground",
           "verify", "localize_windows", "search_until_futile"]

MODES = ("auto", "probe", "synthesize")


@dataclass
class ScanConfig:
    """Thresholds of the scan. Areas are fractions of the image; ``*_match`` thresholds are
    :func:`~clipguard.trigger.match_patch` scores (0 is an exact copy, unrelated content ~1)."""

    min_region_area: float = 0.002  # smaller oracle regions are noise
    max_region_area: float = 0.98  # a region covering the image says nothing
    object_area: float = 0.025  # a region at least this big can ground a label ...
    max_object_area: float = 0.6  # ... and at most this big (larger ones are background)
    trigger_area: float = 0.1  # a localized trigger is smaller than this
    min_drop: float = 0.5  # occluding the trigger removes at least this share of p(label)
    window_min: float = 0.06  # smallest occlusion window, as a share of the image side
    anomaly: float = 2.0  # anomaly index above which a label is a suspect
    search_anomaly: float = 1.0  # the window search runs on labels whose unexplained rate has at least this index
    search_round: int = 4  # images per label per round of the window search (futile labels stop early)
    min_victims: int = 2  # fewer verified candidates than this are not evidence
    global_share: float = 0.75  # share of an image's regions carrying the label for a global trigger
    background_prob: float = 0.9  # the background view (all regions occluded) must show the label this surely
    shared_pattern: float = 0.3  # a global probe trigger's victims share its fine pattern (median leave-one-out correlation)
    stamp_images: int = 200  # clean probe images a trigger is stamped on to confirm it
    margin: float = 0.15  # estimated ASR above the random control's flip rate that confirms a trigger
    copy_match: float = 0.1  # a patch this close to the reconstructed trigger is a copy of it (a victim)
    victim_match: float = 0.5  # a victim's trigger box must match the reconstructed patch this well
    min_probe: int = 100  # fewer probe images cannot show a poisoned sample: no "clean" from them alone
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        shares = ("min_region_area", "max_region_area", "object_area", "max_object_area", "trigger_area",
                  "min_drop", "window_min", "global_share", "background_prob", "margin", "shared_pattern")
        for name in shares:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"ScanConfig.{name} must be a number in [0, 1], got {v!r}")
        for name in ("copy_match", "victim_match", "anomaly", "search_anomaly"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v >= 0.0:
                raise ValueError(f"ScanConfig.{name} must be a number >= 0, got {v!r}")
        for name, low in (("min_victims", 1), ("search_round", 1), ("stamp_images", 1), ("batch_size", 1), ("min_probe", 1), ("seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"ScanConfig.{name} must be an integer >= {low}, got {v!r}")
        if self.min_region_area > self.max_region_area or self.object_area > self.max_object_area:
            raise ValueError("ScanConfig: min_region_area <= max_region_area and object_area <= max_object_area")


class _Clock:
    """Seconds per stage (one place for every timing) and the progress bar's ticks."""

    def __init__(self, bar: Any) -> None:
        self.seconds: dict[str, float] = {}
        self.bar = bar

    @contextlib.contextmanager
    def __call__(self, name: str, tick: bool = False) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if tick:
                self.bar.update(1)


@dataclass
class WholeImage:
    """Algorithm 1, step 1: the model's top-1 label and probability per image, and embeddings."""

    label: np.ndarray  # int64 [N]
    prob: np.ndarray  # float32 [N]
    emb: np.ndarray  # float32 [N,D]


@dataclass
class Regions:
    """The oracle's kept regions: masks [R,H,W], parent image [R] (ascending, so image i's
    regions are ``masks[start[i]:start[i+1]]``), area fraction [R]."""

    masks: np.ndarray
    index: np.ndarray
    area: np.ndarray
    start: np.ndarray


@dataclass
class Grounding:
    """Algorithm 1, steps 2-4: isolate-view embeddings and labels per region (-1 and zeros where
    a region was not encoded), which regions are object-sized and encoded, which images have
    their label grounded, and each image's candidate (-1: none)."""

    iso_emb: np.ndarray
    region_label: np.ndarray
    object_sized: np.ndarray
    grounded: np.ndarray
    candidate: np.ndarray
    encoded: np.ndarray


def whole_image_labels(enc: _Encoder, images: np.ndarray, text: np.ndarray, scale: float) -> WholeImage:
    """The model's top-1 label for each whole image."""
    emb = enc.images(images)
    whole = scoring.compare(np.zeros((0, text.shape[1]), np.float32), emb, np.zeros(0, np.int64), text, scale, 1)
    return WholeImage(label=whole.image_labels[:, 0].astype(np.int64), prob=whole.image_probs[:, 0], emb=emb)


def oracle_regions(oracle: Callable, images: np.ndarray, cfg: ScanConfig) -> Regions:
    """The oracle's regions of every image, those too small or too large dropped."""
    masks, index, area = _oracle_regions(oracle, images, cfg)
    return Regions(masks=masks, index=index, area=area, start=np.searchsorted(index, np.arange(len(images) + 1)))


def ground(model: Any, enc: _Encoder, clock: _Clock, images: np.ndarray, reg: Regions, whole: WholeImage,
           text: np.ndarray, scale: float, cfg: ScanConfig, complete: bool = True) -> Grounding:
    """Each region's isolate view labelled by the model; an image's label is grounded when an
    object-sized region shows it on its own; ungrounded labels are the candidates.

    With ``complete=False`` an image's object-sized regions are encoded largest first until one
    grounds its label (the largest object is most often the one the label names); the rest, and
    the small and the background-sized regions, only matter where the label is a candidate, so
    ungrounded images get every region. :func:`complete_regions` encodes the rest of an image's
    regions where they matter later, :func:`name_objects` its objects where a repair captions
    them."""
    n = len(images)
    object_sized = (reg.area >= cfg.object_area) & (reg.area <= cfg.max_object_area)
    g = Grounding(iso_emb=np.zeros((len(reg.index), text.shape[1]), np.float32),
                  region_label=np.full(len(reg.index), -1, np.int64), object_sized=object_sized,
                  grounded=np.zeros(n, bool), candidate=np.full(n, -1, np.int64), encoded=np.zeros(len(reg.index), bool))
    if complete:
        complete_regions(model, enc, clock, images, reg, whole, g, text, scale, np.arange(n))
    else:
        rank = _object_rank(reg, object_sized)
        for r in range(int(rank.max(initial=-1)) + 1):  # the largest objects first, until the label grounds
            pick = np.nonzero((rank == r) & ~g.grounded[reg.index])[0]
            _encode_isolated(model, enc, clock, images, reg, whole, g, text, scale, pick)
        complete_regions(model, enc, clock, images, reg, whole, g, text, scale, np.nonzero(~g.grounded)[0])
    g.candidate = np.where(g.grounded, -1, whole.label)
    return g


def _object_rank(reg: Regions, object_sized: np.ndarray) -> np.ndarray:
    """Each object-sized region's rank by area within its image (0: the largest), -1 elsewhere."""
    order = np.lexsort((-reg.area, ~object_sized, reg.index))  # per image: object-sized first, largest first
    pos = np.empty(len(order), np.int64)
    pos[order] = np.arange(len(order))
    rank = pos - reg.start[reg.index]
    return np.where(object_sized, rank, -1)


def complete_regions(model: Any, enc: _Encoder, clock: _Clock, images: np.ndarray, reg: Regions, whole: WholeImage,
                     g: Grounding, text: np.ndarray, scale: float, ids: Any) -> None:
    """Encode the isolate views of images ``ids``' regions not encoded yet."""
    ids = np.asarray(ids, np.int64)
    want = np.zeros(len(images), bool)
    want[ids] = True
    _encode_isolated(model, enc, clock, images, reg, whole, g, text, scale,
                     np.nonzero(want[reg.index] & ~g.encoded)[0])


def _encode_isolated(model: Any, enc: _Encoder, clock: _Clock, images: np.ndarray, reg: Regions, whole: WholeImage,
                     g: Grounding, text: np.ndarray, scale: float, pick: np.ndarray) -> None:
    if not len(pick):
        return
    with clock("render"):
        isolated = _render(model, images, reg.masks[pick], reg.index[pick], "isolate")
    with clock("encode_regions"):
        emb = enc.pixels(isolated)
    with clock("scoring"):
        label = scoring.compare(emb, whole.emb, reg.index[pick], text, scale, 1).region_labels[:, 0].astype(np.int64)
    g.iso_emb[pick], g.region_label[pick], g.encoded[pick] = emb, label, True
    np.logical_or.at(g.grounded, reg.index[pick], g.object_sized[pick] & (label == whole.label[reg.index[pick]]))


def verify(model: Any, enc: _Encoder, clock: _Clock, images: np.ndarray, reg: Regions, whole: WholeImage,
           g: Grounding, text: np.ndarray, scale: float, cfg: ScanConfig,
           lazy_background: bool = False) -> list[ImageFinding]:
    """Occluded views where they can verify something (the small regions of images with a
    candidate that show it on their own) and the images' background views (all their regions
    occluded: a trigger that is everywhere survives there, an object's label mostly does not);
    the native trigger scores; one :class:`ImageFinding` per image.

    Where ``g`` is not complete, a grounded image whose background still shows its label gets
    the rest of its regions encoded, so that its share of regions showing the label (a global
    trigger hijacks them all) is exact; elsewhere that share is a lower bound. (Measured on the
    bundled models' 2% triggered probes: every Blended victim's background showed the target;
    the images whose regions showed their label without the background doing so, 19-25 of 500
    fashion scenes in clean and backdoored models alike, were scenes of several objects of one
    label.)

    With ``lazy_background`` a grounded image gets its background view only where its label's
    ungrounded images showed a background hit: elsewhere the label has no unexplained evidence of
    a global trigger to complete, and ``background_holds`` (then a lower bound, like
    ``global_share``) stays False. (Measured on the bundled models' 2% triggered probes: grounded
    images whose background held were 0-2 per label in the shapes world, each Blended target
    flagged by 10 ungrounded ones.)"""
    n = len(images)
    index = reg.index
    sel = np.nonzero(~g.grounded[index])[0]
    # A trigger carries the label on its own: occluding it removes the label, isolating it shows
    # it. (Occluding an ordinary object can also change a multi-object scene's label; isolating
    # it then shows that object, not the label.) Only such regions get an occluded view.
    sel = sel[(reg.area[sel] <= cfg.trigger_area) & (g.region_label[sel] == g.candidate[index[sel]])]
    occ_emb, background_holds = _occlusion_views(model, enc, clock, images, reg, whole, text, scale, cfg, sel,
                                                 ~g.grounded if lazy_background else np.ones(n, bool))
    if lazy_background:
        flagged = np.isin(whole.label, whole.label[~g.grounded & background_holds])
        _, holds = _occlusion_views(model, enc, clock, images, reg, whole, text, scale, cfg, sel[:0],
                                    g.grounded & flagged)
        background_holds |= holds  # False outside the images asked for
    complete_regions(model, enc, clock, images, reg, whole, g, text, scale, np.nonzero(background_holds)[0])
    with clock("scoring"):
        trig = scoring.trigger_scores(occ_emb, g.iso_emb[sel], whole.emb, index[sel], g.candidate, text, scale)
        verified = np.zeros(len(index), bool)
        verified[sel] = (trig.score > 0) & (trig.p_occluded <= (1 - cfg.min_drop) * trig.p_image)
        score = np.zeros(len(index), np.float32)
        score[sel] = trig.score
    region_boxes, _ = regions.boxes(reg.masks)
    findings = []
    for i in range(n):
        f = ImageFinding(index=i, label=int(whole.label[i]), prob=float(whole.prob[i]),
                         regions=int(reg.start[i + 1] - reg.start[i]), grounded=bool(g.grounded[i]),
                         background_holds=bool(background_holds[i]))
        describe_regions(f, reg, g)
        if not g.grounded[i]:
            f.candidate = int(whole.label[i])
            mine = reg.start[i] + np.nonzero(verified[reg.start[i]:reg.start[i + 1]])[0]
            if mine.size:
                best = mine[np.argmax(score[mine])]
                f.verified, f.localized_by = True, "region"
                f.trigger_box = tuple(int(v) for v in region_boxes[best])  # type: ignore[assignment]
        findings.append(f)
    return findings


def describe_regions(f: ImageFinding, reg: Regions, g: Grounding) -> None:
    """A finding's per-region fields from the isolate views encoded so far (a region not encoded
    is ``None`` in ``region_labels`` and counts as not showing the label in ``global_share``)."""
    mine = slice(reg.start[f.index], reg.start[f.index + 1])
    labels, encoded, objects = g.region_label[mine], g.encoded[mine], g.object_sized[mine]
    f.region_labels = [int(x) if e else None for x, e in zip(labels, encoded)]  # type: ignore[misc]
    f.object_labels = [int(x) for x in labels[objects & encoded]]
    f.global_share = float((encoded & (labels == f.label)).mean()) if len(labels) else 0.0


def _occlusion_views(model: Any, enc: _Encoder, clock: _Clock, images: np.ndarray, reg: Regions, whole: WholeImage,
                     text: np.ndarray, scale: float, cfg: ScanConfig, occlude: np.ndarray,
                     background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of regions ``occlude``'s occluded views, and whether each image of
    ``background`` (bool [N]) still shows its label with all its regions occluded (an image
    without regions: its own whole-image probability, nothing encoded twice; an image outside
    ``background``: False)."""
    regions_of = np.diff(reg.start) > 0
    holds = (whole.prob >= cfg.background_prob) & background  # the label is the whole image's top-1
    has = regions_of & background
    if not len(occlude) and not has.any():
        return np.zeros((0, text.shape[1]), np.float32), holds
    with clock("render"):
        # reduceat runs to the next listed start: every image with regions listed, then the wanted kept
        union = (np.logical_or.reduceat(reg.masks, reg.start[:-1][regions_of], axis=0)[background[regions_of]]
                 if has.any() else reg.masks[:0])
        views = _render(model, images, np.concatenate([reg.masks[occlude], union]),
                        np.concatenate([reg.index[occlude], np.nonzero(has)[0]]), "occlude")
    with clock("encode_regions"):
        emb = enc.pixels(views)
    del views, union
    with clock("scoring"):
        if has.any():
            p = scoring.probabilities(emb[len(occlude):], text, scale)
            label = whole.label[has]
            holds[has] = (p.argmax(axis=1) == label) & (p[np.arange(len(label)), label] >= cfg.background_prob)
    return emb[: len(occlude)], holds


def localize_windows(model: Any, enc: _Encoder, images: np.ndarray, findings: list[ImageFinding], todo: list[int],
                     whole: WholeImage, text: np.ndarray, scale: float, cfg: ScanConfig) -> None:
    """The oracle-free occlusion-window search on images ``todo``; a small box whose occlusion
    removes the label and whose isolated view shows it verifies and localizes the finding."""
    if not todo:
        return
    n, h, w = images.shape[:3]
    p_img = scoring.probabilities(whole.emb, text, scale)[np.arange(n), whole.label]
    boxes = _window_search(model, enc, images, todo, whole.label, p_img, text, cfg)
    small = {i: b for i, b in boxes.items() if (b[2] - b[0]) * (b[3] - b[1]) <= cfg.trigger_area * h * w}
    if not small:
        return
    idx = np.array(list(small), np.int64)
    iso = enc.pixels(_render(model, images, np.array(list(small.values()), np.int32), idx, "isolate"))
    shows = scoring.probabilities(iso, text, scale).argmax(axis=1) == whole.label[idx]
    for i, ok in zip(idx.tolist(), shows):
        if ok:
            f = findings[i]
            f.candidate, f.verified, f.localized_by, f.trigger_box = int(whole.label[i]), True, "window", small[i]


def search_until_futile(model: Any, enc: _Encoder, images: np.ndarray, findings: list[ImageFinding], todo: list[int],
                        whole: WholeImage, text: np.ndarray, scale: float, cfg: ScanConfig, enough: int = 0) -> list[int]:
    """The window search on ``todo`` in rounds of ``cfg.search_round`` images per label (in a
    seeded random order), a label's search stopping when its first round verified none of them,
    or once at least two rounds were searched and at most one image in eight was verified: its
    unexplained candidates are then the oracle missing parts of objects, not a trigger (a
    trigger's images verify at a far higher rate, so its count, Algorithm 2's evidence, is kept
    whole). With ``enough`` > 0 a label also stops once that many of its images are verified
    (after Algorithm 2, when only its trigger's reconstruction needs them). Returns the images
    searched."""
    rng = np.random.default_rng(cfg.seed)
    queues: dict[int, list[int]] = {}
    for i in rng.permutation(np.array(todo, np.int64)).tolist():
        queues.setdefault(int(whole.label[i]), []).append(i)
    done: dict[int, list[int]] = {lab: [] for lab in queues}
    while queues:
        batch = {lab: q[: cfg.search_round] for lab, q in queues.items()}
        localize_windows(model, enc, images, findings, [i for b in batch.values() for i in b], whole, text, scale, cfg)
        for lab, b in batch.items():
            done[lab] += b
            queues[lab] = queues[lab][len(b):]
            verified = sum(findings[i].verified for i in done[lab])
            futile = verified == 0 or (len(done[lab]) >= 2 * cfg.search_round and 8 * verified <= len(done[lab]))
            full = enough > 0 and sum(f.verified for f in findings if f.label == lab) >= enough
            if not queues[lab] or futile or full:
                del queues[lab]
    return sorted(i for d in done.values() for i in d)


def worth_searching(findings: list[ImageFinding], label: np.ndarray, c: int, cfg: ScanConfig) -> list[int]:
    """The images the occlusion-window search is worth its cost on (about 50 encoder inputs
    each): those with a candidate no region explained, of labels where that happens anomalously
    often (index >= ``search_anomaly``, at least ``min_victims`` images), or that region-verified
    candidates already point at. Elsewhere an unexplained candidate is the oracle missing a part
    of an object, spread evenly over the labels, and Algorithm 2 could not single a label out.
    Not on labels with ``2 * min_victims`` region-verified candidates already: their patch can be
    reconstructed, and the confirmation finds its copies in the other images without the encoder."""
    from .aggregate import iterated_anomaly

    unexplained = [f for f in findings if f.candidate is not None and not f.verified]
    totals = np.bincount(label, minlength=c).astype(float)
    counts = np.bincount([f.label for f in unexplained], minlength=c).astype(float)
    verified = np.bincount([f.label for f in findings if f.verified], minlength=c)
    index = iterated_anomaly(counts, totals, cfg.search_anomaly, cfg.min_victims)
    labels = {lab for lab in range(c) if ((counts[lab] >= cfg.min_victims and index[lab] >= cfg.search_anomaly)
                                           or verified[lab] >= cfg.min_victims) and verified[lab] < 2 * cfg.min_victims}
    return [f.index for f in unexplained if f.label in labels]


@dataclass
class ProbeAnalysis:
    """Algorithms 1-2 on the probe set."""

    findings: list[ImageFinding]
    suspects: list[Suspect]
    stats: dict[str, np.ndarray]
    regions: Regions
    whole: WholeImage
    grounding: Grounding


def probe_analysis(model: Any, enc: _Encoder, clock: _Clock, images: np.ndarray, vocab: Any, oracle: Callable,
                   text: np.ndarray, scale: float, cfg: ScanConfig) -> ProbeAnalysis:
    """Algorithm 1 on every probe image, then Algorithm 2's suspects, each confirmed."""
    from . import aggregate

    with clock("encode_images", tick=True):
        whole = whole_image_labels(enc, images, text, scale)
    with clock("oracle", tick=True):
        reg = oracle_regions(oracle, images, cfg)
    g = ground(model, enc, clock, images, reg, whole, text, scale, cfg, complete=False)
    clock.bar.update(1)
    findings = verify(model, enc, clock, images, reg, whole, g, text, scale, cfg, lazy_background=True)
    clock.bar.update(1)
    searched = worth_searching(findings, whole.label, text.shape[0], cfg)
    with clock("window_search", tick=True):
        searched = search_until_futile(model, enc, images, findings, searched, whole, text, scale, cfg)
    with clock("aggregate"):
        picked, stats = aggregate.select_suspects(findings, whole.label, text.shape[0], cfg)
    # A trigger on (or merged by the oracle with) an object can make a region ground the label:
    # images of a localized suspect label that were not verified, and not searched already, get
    # the oracle-free search too -- until the victims found are enough to reconstruct the patch,
    # whose copies the confirmation then finds in the other images without the encoder.
    with clock("window_search"):
        done = set(searched)
        for lab, kind in picked:
            if kind == "localized" and stats["local_counts"][lab] < 2 * cfg.min_victims:
                todo = [f.index for f in findings if f.label == lab and not f.verified and f.index not in done]
                done.update(search_until_futile(model, enc, images, findings, todo, whole, text, scale, cfg,
                                                enough=2 * cfg.min_victims))
    with clock("aggregate", tick=True):
        rng = np.random.default_rng(cfg.seed)
        names = list(vocab.classnames)
        suspects = [aggregate.confirm_probe_suspect(enc, images, findings, lab, kind, names[lab], stats, text, rng, cfg)
                    for lab, kind in picked]
    # Every region of a victim, labelled: the report shows them (the trigger's own region among them).
    victims = sorted({i for s in suspects for i in s.victims})
    complete_regions(model, enc, clock, images, reg, whole, g, text, scale, victims)
    for i in victims:
        describe_regions(findings[i], reg, g)
    return ProbeAnalysis(findings=findings, suspects=suspects, stats=stats, regions=reg, whole=whole, grounding=g)


def name_objects(model: Any, enc: _Encoder, clock: _Clock, images: np.ndarray, probe: ProbeAnalysis,
                 text: np.ndarray, scale: float) -> None:
    """Every object-sized region isolated and labelled, where grounding stopped at the first
    object that showed the label: a repair captions an image with all its objects (a caption
    naming the label alone teaches the model that a busy scene is that label)."""
    g, reg = probe.grounding, probe.regions
    _encode_isolated(model, enc, clock, images, reg, probe.whole, g, text, scale,
                     np.nonzero(g.object_sized & ~g.encoded)[0])
    for f in probe.findings:
        describe_regions(f, reg, g)


def scan(
    model: Any,
    images: np.ndarray,
    vocab: Any,
    oracle: Any = "classical",
    config: ScanConfig | None = None,
    *,
    mode: str = "auto",
    synthesis: Any = None,
    progress: bool = False,
    skipped: Sequence[dict] = (),
) -> ScanReport:
    """Scan ``model`` for a backdoor; returns a :class:`~clipguard.report.ScanReport`.

    Args:
        model: a loaded model (``clipguard.load_model``; the ONNX runtime is the fast one).
        images: uint8 [N,H,W,3] probe images: a sample of the data the model was trained on
            (auditing), or clean images only (vetting a model without its data).
        vocab: a :class:`~clipguard.Vocabulary` (the labels the model is asked about).
        oracle: "classical", "onnx:PATH", "toy", or a callable images -> list of bool [k,H,W].
        mode: "probe" (Algorithms 1-2: triggers the probe images carry), "synthesize" (triggers
            synthesized from clean images; needs the model's torch weights) or "auto" (both,
            their evidence combined).
        synthesis: a :class:`~clipguard.synthesis.SynthesisConfig` (defaults otherwise).
        skipped: inputs that could not be read, carried into the report.
    """
    from . import aggregate
    from .synthesis import SynthesisUnavailable, synthesize
    from .training import progress_bar

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    cfg = config or ScanConfig()
    images = regions._images(images)
    enc = _Encoder(model, cfg.batch_size)
    ticks = (6 if mode in ("auto", "probe") else 0) + (1 if mode in ("auto", "synthesize") else 0)
    clock = _Clock(progress_bar(ticks, "scan", progress))
    with clock("encode_text"):
        text = model.class_embeddings(vocab)
    scale = float(model.logit_scale)
    oracle_fn = _resolve_oracle(oracle)
    names = list(vocab.classnames)
    errors: list[str] = []
    probe = None
    if mode in ("auto", "probe"):
        probe = probe_analysis(model, enc, clock, images, vocab, oracle_fn, text, scale, cfg)
    synth = None
    synth_enc = _Encoder(model, cfg.batch_size)  # the synthesis' screening and confirmation, counted apart
    if mode in ("auto", "synthesize"):
        with clock("synthesis", tick=True):
            try:
                synth = synthesize(model, images, vocab, text, scale, oracle_fn, synth_enc, cfg, synthesis, progress=progress,
                                   whole=(probe.whole.label, probe.whole.prob) if probe else None)
            except SynthesisUnavailable as exc:
                errors.append(f"synthesis did not run: {exc}")
    clock.bar.close()
    suspects = aggregate.merge(probe.suspects if probe else [], synth.suspects if synth else [])
    decision = aggregate.decide(suspects, probe_size=len(images), mode=mode,
                                synthesis=synth, synthesis_error=errors[0] if errors else None, cfg=cfg)
    confirmed = [s for s in suspects if s.confirmed]
    if probe and confirmed:  # only a backdoor found is repaired, and the repair captions the objects
        name_objects(model, enc, clock, images, probe, text, scale)
    timings: dict[str, float] = dict(clock.seconds)
    timings["encoded_inputs"] = enc.count
    timings["encode_seconds"] = enc.seconds
    if synth is not None:
        timings["synthesis_passes"] = synth.passes
        timings["synthesis_encoded_inputs"] = synth_enc.count
        timings["encode_seconds"] += synth_enc.seconds
    findings = probe.findings if probe else _label_only_findings(synth)
    victims = aggregate.victims_of(confirmed, findings)
    return ScanReport(
        model=ScanReport.model_info(model), verdict=decision.verdict, score=decision.score, reason=decision.reason,
        mode=mode, affected_labels=sorted({s.name for s in confirmed}, key=names.index), suspects=suspects,
        trigger=confirmed[0].trigger if confirmed else None, victims=victims,
        labels=aggregate.label_table(names, probe.stats if probe else None, synth), findings=findings,
        synthesis=synth.to_dict() if synth else None, timings=timings, config=asdict(cfg),
        oracle=oracle if isinstance(oracle, str) else getattr(oracle, "spec", type(oracle).__name__),
        probe_size=len(images), errors=errors, skipped=list(skipped), images=images, vocab=vocab,
        region_views=ScanReport.region_views_of(images, probe.regions.masks, probe.regions.index, victims)
        if probe else {},
    )


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

    def labels(self, images: np.ndarray, text: np.ndarray) -> np.ndarray:
        """The model's top-1 label of each uint8 image."""
        return (self.images(images) @ text.T).argmax(axis=1)


def _label_only_findings(synth: Any) -> list[ImageFinding]:
    """Without the probe analysis: each image's whole-image label only (the synthesis computed
    them), so that a fine-tuning set can caption clean images."""
    if synth is None or synth.labels is None:
        return []
    return [ImageFinding(index=i, label=int(c), prob=float(p), regions=0, grounded=False)
            for i, (c, p) in enumerate(zip(synth.labels, synth.probs))]


def _render(model: Any, images: np.ndarray, shapes: np.ndarray, index: np.ndarray, mode: Any) -> np.ndarray:
    return regions.render(images, shapes, index, mode, model.input_size, model.mean, model.std, fill="mean")


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
        return scoring.probabilities(emb, text, scale)[np.arange(len(jobs)), labels[idx]]

    def works(i: int, p: float) -> bool:
        return p <= (1.0 - cfg.min_drop) * p_image[i]

    found: dict[int, Box] = {}
    current: dict[int, Box] = {i: (0, 0, w, h) for i in todo}
    while current:
        jobs: list[tuple[int, Box]] = []
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
                edge = list(found[i])
                edge[side] += s if side < 2 else -s
                if edge[2] - edge[0] >= 1 and edge[3] - edge[1] >= 1:
                    jobs.append((i, (edge[0], edge[1], edge[2], edge[3])))
            if not jobs:
                break
            probs = occluded_probs(jobs)
            nxt_step = {}
            for (i, b), p in zip(jobs, probs):
                if works(i, p):
                    found[i] = b
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


