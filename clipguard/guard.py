"""The guard: screen the inputs of a served CLIP model, one request at a time.

A :class:`Guard` answers each image with the model's label and whether a trigger drives it
(:class:`GuardResult`). Two ways, the cheapest sufficient evidence first:

*With a scan report* that confirmed a trigger: only images the model gives an affected label get
a closer look. A known patch is matched directly (:func:`~clipguard.trigger.match_patch`) and
occluded; a known global pattern is subtracted. The image is triggered when that removes the
label (the same ``min_drop`` as the scan), and the label of the cleaned view is its
``clean_label``. Other images cost one encoding, as plain zero-shot classification does.

*Without one* (or with a report that confirmed nothing): Algorithm 1 per image, stage by stage --
the whole-image label, the oracle's regions, their isolate views, largest object first (a label an
object-sized region shows on its own is grounded: done), the occluded views of an ungrounded
image's regions (one whose occlusion removes the label and whose isolate view shows it is the
trigger), and the oracle-free window search where no region explains the label.

Both feed an *online Algorithm 2*: running per-label counts of triggered inputs against how often
the model gives each label, with the scan's iterated anomaly index. When a label turns anomalous,
the guard reconstructs its trigger from the victims it kept and confirms it on clean inputs it
kept (as the scan does); a confirmed label raises an :class:`Alarm` (``guard.alarms``), and with
``learn=True`` its trigger is matched directly in later requests too. A backdoor nobody scanned
for is thus found from the model's traffic.

One guard serves many threads: requests go to one worker thread, which batches those that arrive
within ``max_wait`` seconds (up to ``max_batch`` images) and runs them together. Each image's
answer depends on that image only, so it is the same whatever it was batched with.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import aggregate, scoring
from .findings import ImageFinding
from .report import ScanReport
from .scan import (
    ScanConfig,
    _Clock,
    _Encoder,
    _render,
    _resolve_oracle,
    ground,
    localize_windows,
    oracle_regions,
    verify,
    whole_image_labels,
)
from .trigger import Box, Trigger, match_global, match_patch

__all__ = ["Alarm", "Guard", "GuardResult"]

# A global trigger is only removed and re-checked in images whose fine texture correlates with
# its pattern at least this much (measured on toy:blended: clean images at most 0.04, Blended
# images at alpha 0.1 at least 0.24, at alpha 0.2 at least 0.48).
GLOBAL_MATCH = 0.1


@dataclass
class GuardResult:
    """The guard's answer for one image.

    ``label``: the model's answer. ``triggered``: a trigger drives it. ``clean_label``: the
    model's answer with the trigger occluded or subtracted (None when not triggered or when the
    trigger could not be removed). ``box``: where the trigger is, (x0, y0, x1, y1) in the image's
    own pixels (None for a global trigger or none). ``score``: the share of the label's
    probability that removing the trigger takes away (0 when not triggered). ``evidence``: what
    showed it -- "known-patch", "known-global" (a report's trigger), "region", "window" (Algorithm
    1), "global" (no region explains the label and it survives every region occluded).
    """

    label: str
    triggered: bool
    clean_label: str | None = None
    box: Box | None = None
    score: float = 0.0
    evidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["box"] = list(self.box) if self.box is not None else None
        return d


@dataclass
class Alarm:
    """A label the online Algorithm 2 found anomalous over the requests so far, and confirmed.

    ``victims``: request numbers (0 = the guard's first image) of the triggered inputs seen for
    it, the most recent ``Guard.keep_victims``; ``requests``: images screened when it was raised;
    ``anomaly``: its anomaly index then; ``estimated_asr``/``random_flip_rate``: its trigger
    stamped on kept clean inputs against a random control (None for a report's known trigger).
    """

    label: str
    kind: str
    anomaly: float
    requests: int
    victims: list[int] = field(default_factory=list)
    trigger: Trigger | None = None
    estimated_asr: float | None = None
    random_flip_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "trigger"}
        d["trigger"] = self.trigger.to_dict() if self.trigger is not None else None
        return d


@dataclass
class _Request:
    images: np.ndarray  # at the guard's working size
    sizes: list[tuple[int, int]]  # each image's own (height, width)
    future: Future


class Guard:
    """Screens images for triggers before (or beside) the model answers them.

    Args:
        model: a loaded model (``clipguard.load_model``).
        vocab: the :class:`~clipguard.Vocabulary` the service classifies into.
        oracle: the segmentation oracle for Algorithm 1 ("classical", "onnx:PATH", "toy", a callable).
        report: a :class:`~clipguard.ScanReport` or the path of a scan's output folder; its
            confirmed triggers make the guard cheap and sharp.
        config: the scan's thresholds (:class:`~clipguard.ScanConfig`).
        max_batch: images a batch gathers at most from concurrent requests.
        max_wait: seconds the worker waits for more requests once one arrived.
        keep_victims: triggered inputs kept per label (and clean inputs kept in all) to
            reconstruct and confirm a trigger the online Algorithm 2 finds.
        min_clean: clean inputs kept before a confirmation is tried.
        learn: an alarm's confirmed trigger is matched directly in later requests too (catching
            the triggered inputs Algorithm 1 misses, e.g. a patch the oracle merged with an object).
    """

    def __init__(self, model: Any, vocab: Any, *, oracle: Any = "classical", report: ScanReport | str | Path | None = None,
                 config: ScanConfig | None = None, max_batch: int = 32, max_wait: float = 0.005,
                 keep_victims: int = 64, min_clean: int = 100, learn: bool = True, seed: int = 0) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not isinstance(max_wait, (int, float)) or not 0.0 <= max_wait <= 10.0:
            raise ValueError(f"max_wait must be seconds in [0, 10], got {max_wait!r}")
        if keep_victims < 1 or min_clean < 1:
            raise ValueError("keep_victims and min_clean must be >= 1")
        self.model, self.vocab = model, vocab
        self.cfg = config or ScanConfig()
        self.names = list(vocab.classnames)
        self._enc = _Encoder(model, self.cfg.batch_size)
        self._text = model.class_embeddings(vocab)
        self._scale = float(model.logit_scale)
        self._oracle = _resolve_oracle(oracle)
        self._clock = _Clock(None)
        self._seconds: dict[str, float] = {}
        if isinstance(report, (str, Path)):
            report = ScanReport.from_json(report)
        self.report = report
        self.known: dict[int, Trigger] = {}  # label -> a trigger the report confirmed
        self.learned: dict[int, Trigger] = {}  # label -> a trigger an alarm confirmed (with learn=True)
        self.learn = learn
        size = None
        if report is not None:
            size = report.image_size
            for s in report.suspects:
                if s.confirmed and s.trigger is not None:
                    if s.name not in self.names:
                        raise ValueError(f"the report's affected label {s.name!r} is not in the vocabulary")
                    self.known.setdefault(self.names.index(s.name), s.trigger)
        self.size: tuple[int, int] = (int(size[0]), int(size[1])) if size else (model.input_size, model.input_size)
        self.max_batch, self.max_wait, self.keep_victims, self.min_clean = max_batch, float(max_wait), keep_victims, min_clean
        # Online Algorithm 2: running counts, kept inputs, alarms.
        c = len(self.names)
        self.requests = 0
        self._counts = {k: np.zeros(c) for k in ("totals", "local", "global", "background")}
        self._victims: dict[int, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=keep_victims))
        self._clean: list[tuple[np.ndarray, ImageFinding]] = []
        self._tried: dict[int, int] = {}  # label -> victims when its confirmation last failed
        self._alarms: list[Alarm] = []
        self._rng = np.random.default_rng(seed)
        self._state = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._inflight = 0  # check() calls not answered yet
        self._closed = False

    # ------------------------------------------------------------------ public API
    @property
    def mode(self) -> str:
        """"known" (a report's confirmed triggers are matched) or "algorithm1"."""
        return "known" if self.known else "algorithm1"

    @property
    def alarms(self) -> list[Alarm]:
        with self._state:
            return list(self._alarms)

    def stats(self) -> dict[str, Any]:
        """Requests screened, per-label counts, alarms and seconds per stage so far."""
        with self._state:
            return {"requests": self.requests, "mode": self.mode,
                    "predicted": dict(zip(self.names, self._counts["totals"].astype(int).tolist())),
                    "triggered": dict(zip(self.names, (self._counts["local"] + self._counts["global"]).astype(int).tolist())),
                    "alarms": [a.label for a in self._alarms], "encoded_inputs": self._enc.count,
                    "seconds": dict(self._seconds)}

    def check(self, images: Any) -> list[GuardResult]:
        """Screen images: a uint8 [H,W,3] image, a [N,H,W,3] batch, or a list of [H,W,3] images
        of any sizes. One :class:`GuardResult` per image, in order. Thread-safe."""
        batch, sizes = self._prepare(images)
        if len(batch) == 0:
            return []
        req = _Request(batch, sizes, Future())
        self._ensure_worker()
        with self._state:
            self._inflight += 1
        try:
            self._queue.put(req)
            return req.future.result()
        finally:
            with self._state:
                self._inflight -= 1

    def close(self) -> None:
        """Stop the worker thread (requests after this raise RuntimeError)."""
        self._closed = True
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ requests and batching
    def _prepare(self, images: Any) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Validated uint8 RGB images resized to the working size, and their own sizes."""
        h, w = self.size
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 \
                and images.shape[1:] == (h, w, 3):  # a batch at the working size: as it is
            return np.ascontiguousarray(images), [(h, w)] * len(images)
        if isinstance(images, np.ndarray):
            items: Sequence[Any] = [images] if images.ndim == 3 else list(images) if images.ndim == 4 else [images]
        elif isinstance(images, (list, tuple)):
            items = images
        else:
            raise TypeError(f"images must be a uint8 array or a list of them, got {type(images).__name__}")
        out = np.empty((len(items), h, w, 3), np.uint8)
        sizes = []
        for k, img in enumerate(items):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
                raise ValueError(f"image {k}: expected uint8 [H,W,3] RGB, got {img.dtype} {img.shape}")
            sizes.append((int(img.shape[0]), int(img.shape[1])))
            out[k] = img if img.shape[:2] == (h, w) else _resize(img, h, w)
        return out, sizes

    def _ensure_worker(self) -> None:
        if self._closed:
            raise RuntimeError("the guard is closed")
        with self._state:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="clipguard-guard", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        import time

        while True:
            req = self._queue.get()
            if req is None:
                return
            batch, n = [req], len(req.images)
            deadline = time.monotonic() + self.max_wait
            # Wait for more only while other callers are on their way (a lone caller never waits).
            while n < self.max_batch and self._inflight > len(batch):
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
                n += len(nxt.images)
            try:
                results = self._screen(np.concatenate([r.images for r in batch]))
            except BaseException as exc:  # the callers get the error; the worker keeps serving
                for r in batch:
                    r.future.set_exception(exc)
                continue
            k = 0
            for r in batch:
                mine = results[k : k + len(r.images)]
                k += len(r.images)
                r.future.set_result([_to_own_size(res, size, self.size) for res, size in zip(mine, r.sizes)])

    # ------------------------------------------------------------------ screening
    def _screen(self, images: np.ndarray) -> list[GuardResult]:
        """One batch through the guard (the worker thread only)."""
        self._clock = _Clock(None)  # this batch's seconds, added to the totals at the end
        with self._clock("encode_images"):
            whole = whole_image_labels(self._enc, images, self._text, self._scale)
        if self.mode == "known":
            unflagged = [GuardResult(label=self.names[int(c)], triggered=False) for c in whole.label]
            results, findings = self._check_known(images, whole, self.known, unflagged), None
        else:
            results, findings = self._algorithm1(images, whole)
            if self.learned:  # triggers the online Algorithm 2 confirmed: matched directly too
                results = self._check_known(images, whole, self.learned, results)
        with self._clock("online"):
            self._observe(images, whole, results, findings)
        with self._state:
            for k, v in self._clock.seconds.items():
                self._seconds[k] = self._seconds.get(k, 0.0) + v
        return results

    def _views(self, views: np.ndarray, labels: np.ndarray, p_image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Model inputs (already rendered) of cleaned images: their top-1 labels, the share of
        p(label) they take away, and whether that removes the label (``min_drop``)."""
        probs = scoring.probabilities(self._enc.pixels(views), self._text, self._scale)
        p = probs[np.arange(len(labels)), labels]
        drop = np.clip(1.0 - p / np.maximum(p_image, 1e-12), 0.0, 1.0)
        return probs.argmax(axis=1), drop, p <= (1.0 - self.cfg.min_drop) * p_image

    def _check_known(self, images: np.ndarray, whole: Any, triggers: dict[int, Trigger],
                     results: list[GuardResult]) -> list[GuardResult]:
        """Images given a label with a known trigger, not flagged yet: the trigger matched and
        removed (``results`` updated in place and returned)."""
        boxes: list[tuple[int, Box]] = []
        globals_: list[tuple[int, Trigger]] = []
        for lab, trig in triggers.items():
            todo = [i for i in np.nonzero(whole.label == lab)[0].tolist() if not results[i].triggered]
            if not todo:
                continue
            if trig.kind == "warp":
                continue  # a warp leaves no pattern to match; Algorithm 1's global evidence remains
            if trig.kind == "global":
                texture = match_global(images[todo], trig)
                globals_ += [(i, trig) for k, i in enumerate(todo) if texture is None or texture[k] >= GLOBAL_MATCH]
                continue
            for i in todo:
                box, match = match_patch(images[i], trig.image, trig.box if trig.position_dependent else None)
                if match > self.cfg.victim_match and trig.box is not None and trig.position_dependent:
                    box, match = match_patch(images[i], trig.image)
                if match <= self.cfg.victim_match:
                    boxes.append((i, box))
        if not boxes and not globals_:
            return results
        p_img = scoring.probabilities(whole.emb, self._text, self._scale)[np.arange(len(images)), whole.label]
        with self._clock("known_trigger"):
            if boxes:
                idx = np.array([i for i, _ in boxes], np.int64)
                views = _render(self.model, images, np.array([b for _, b in boxes], np.int32), idx, "occlude")
                self._mark(results, idx, [b for _, b in boxes], views, whole.label, p_img, "known-patch")
            if globals_:
                idx = np.array([i for i, _ in globals_], np.int64)
                cleaned = np.stack([_subtract(images[i], t) for i, t in globals_])
                views = self.model.preprocess(cleaned)
                self._mark(results, idx, [None] * len(idx), views, whole.label, p_img, "known-global")
        return results

    def _mark(self, results: list[GuardResult], idx: np.ndarray, boxes: Sequence[Box | None], views: np.ndarray,
              label: np.ndarray, p_img: np.ndarray, evidence: str) -> None:
        top, drop, removed = self._views(views, label[idx], p_img[idx])
        for j, i in enumerate(idx.tolist()):
            if removed[j]:
                results[i] = GuardResult(label=results[i].label, triggered=True, clean_label=self.names[int(top[j])],
                                         box=boxes[j], score=float(drop[j]), evidence=evidence)

    def _algorithm1(self, images: np.ndarray, whole: Any) -> tuple[list[GuardResult], list[ImageFinding]]:
        """Algorithm 1 per image, the cheapest sufficient evidence first."""
        enc, text, scale, cfg = self._enc, self._text, self._scale, self.cfg
        with self._clock("oracle"):
            reg = oracle_regions(self._oracle, images, cfg)
        # Largest object first until one grounds the label: a grounded image is answered then, and
        # an ungrounded one gets every region, so each answer is the one full grounding gives.
        g = ground(self.model, enc, self._clock, images, reg, whole, text, scale, cfg, complete=False)
        findings = verify(self.model, enc, self._clock, images, reg, whole, g, text, scale, cfg)
        with self._clock("window_search"):
            todo = [f.index for f in findings if f.candidate is not None and not f.verified]
            localize_windows(self.model, enc, images, findings, todo, whole, text, scale, cfg)
        results = [GuardResult(label=self.names[f.label], triggered=False) for f in findings]
        for f in findings:
            if f.candidate is not None and not f.verified and aggregate.global_evidence(f, cfg)[0]:
                # A global trigger cannot be cut out; the objects the oracle isolated that show
                # another label on their own tell what the image is.
                others = collections.Counter(c for c in f.object_labels if c != f.label).most_common(1)
                results[f.index] = GuardResult(label=results[f.index].label, triggered=True, evidence="global",
                                               clean_label=self.names[others[0][0]] if others else None,
                                               score=float(f.prob))
        # The label with the trigger occluded: one more view per localized image.
        local = [f for f in findings if f.verified and f.trigger_box is not None]
        if local:
            idx = np.array([f.index for f in local], np.int64)
            boxes = [f.trigger_box for f in local]
            p_img = whole.prob[idx]
            views = _render(self.model, images, np.array(boxes, np.int32), idx, "occlude")
            top, drop, _ = self._views(views, whole.label[idx], p_img)
            for j, f in enumerate(local):
                results[f.index] = GuardResult(label=results[f.index].label, triggered=True,
                                               clean_label=self.names[int(top[j])], box=f.trigger_box,
                                               score=float(drop[j]), evidence=str(f.localized_by))
        return results, findings

    # ------------------------------------------------------------------ online Algorithm 2
    def _observe(self, images: np.ndarray, whole: Any, results: list[GuardResult],
                 findings: list[ImageFinding] | None) -> None:
        """Count the batch, keep victims and clean inputs, and raise alarms."""
        c = len(self.names)
        with self._state:
            first = self.requests
            self.requests += len(images)
            counts = self._counts
            counts["totals"] += np.bincount(whole.label, minlength=c)
            if findings is None:
                # Known triggers only: counts and victims' request numbers; nothing to confirm,
                # so no inputs are kept.
                hits = np.array([r.triggered for r in results], bool)
                local = np.array([r.box is not None for r in results], bool)
                counts["local"] += np.bincount(whole.label[hits & local], minlength=c)
                counts["global"] += np.bincount(whole.label[hits & ~local], minlength=c)
                for i in np.nonzero(hits)[0].tolist():
                    self._victims[int(whole.label[i])].append((None, first + i))
            else:
                for i, found in enumerate(findings):
                    f = dataclasses.replace(found, index=first + i)
                    is_global, background = aggregate.global_evidence(f, self.cfg)
                    counts["global"][f.label] += is_global
                    counts["background"][f.label] += background
                    counts["local"][f.label] += f.verified
                    if f.verified or background:
                        self._victims[f.label].append((images[i].copy(), f))
                    else:
                        self._keep_clean(images[i], f)
            picked, stats = aggregate.anomalous_labels(counts["totals"], counts["local"], counts["global"],
                                                       counts["background"], self.cfg)
            alarmed = {a.label for a in self._alarms}
            for lab, kind in picked:
                if self.names[lab] not in alarmed:
                    self._maybe_alarm(lab, kind, stats)

    def _keep_clean(self, image: np.ndarray, f: ImageFinding) -> None:
        """Reservoir sampling: a uniform sample of the clean inputs seen so far."""
        seen = f.index + 1
        if len(self._clean) < self.keep_victims * 4:
            self._clean.append((image.copy(), f))
        else:
            j = int(self._rng.integers(0, seen))
            if j < len(self._clean):
                self._clean[j] = (image.copy(), f)

    def _maybe_alarm(self, lab: int, kind: str, stats: dict[str, np.ndarray]) -> None:
        victims = list(self._victims[lab])
        anomaly = float(stats["local_index"][lab] if kind == "localized"
                        else max(stats["global_index"][lab], stats["background_index"][lab]))
        if lab in self.known:  # the report's trigger, confirmed by the scan; victims are request numbers
            self._alarms.append(Alarm(label=self.names[lab], kind=kind, anomaly=anomaly, requests=self.requests,
                                      victims=[v for _, v in victims], trigger=self.known[lab]))
            return
        ids = [f.index for _, f in victims]
        others = [(img, f) for img, f in self._clean if f.label != lab]
        if len(others) < self.min_clean or len(victims) < max(self.cfg.min_victims, 1.5 * self._tried.get(lab, 0)):
            return  # too little to confirm with yet, or no new victims since the last failed try
        pool = victims + others
        images = np.stack([img for img, _ in pool])
        findings = [dataclasses.replace(f, index=k) for k, (_, f) in enumerate(pool)]
        with self._clock("confirm"):
            s = aggregate.confirm_probe_suspect(self._enc, images, findings, lab, kind, self.names[lab], stats,
                                                self._text, self._rng, self.cfg)
        if not s.confirmed:
            self._tried[lab] = len(victims)
            return
        self._alarms.append(Alarm(label=self.names[lab], kind=kind, anomaly=anomaly, requests=self.requests,
                                  victims=ids, trigger=s.trigger, estimated_asr=s.estimated_asr,
                                  random_flip_rate=s.random_flip_rate))
        if self.learn and s.trigger is not None:
            self.learned[lab] = s.trigger


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if img.shape[0] > h or img.shape[1] > w else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _subtract(image: np.ndarray, trigger: Trigger) -> np.ndarray:
    """A global trigger's offset taken away from an image."""
    from .trigger import _fit_global

    offset = _fit_global(trigger, image.shape[:2]).astype(np.int16) - 128
    return np.clip(image.astype(np.int16) - offset, 0, 255).astype(np.uint8)


def _to_own_size(r: GuardResult, size: tuple[int, int], work: tuple[int, int]) -> GuardResult:
    """A result's box in the image's own pixels."""
    if r.box is None or size == work:
        return r
    sy, sx = size[0] / work[0], size[1] / work[1]
    x0, y0, x1, y1 = r.box
    box = (int(np.floor(x0 * sx)), int(np.floor(y0 * sy)), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)))
    return dataclasses.replace(r, box=box)
