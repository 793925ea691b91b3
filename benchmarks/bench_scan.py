"""Scan throughput: clipguard.scan against a straightforward implementation, by stage.

``clipguard.scan`` (ONNX Runtime, batched native kernels) against the same algorithm as a user
would write it (a per-image Python loop, per-region OpenCV/NumPy views, PyTorch eager), in the
same run, with the time split by stage.

    python benchmarks/bench_scan.py [--probe 500] [--rate 0.02] [--oracle classical] [--repeat 1]
                                    [--threads N] [--batched-window]

Both paths scan the bundled ``toy:badnet`` with the probe ``toy:shapes:N:RATE`` and the same oracle
object. The reference does Algorithm 1 itself, image by image: the whole-image label (torch, one
image), the oracle's masks (one image per call), isolate views, occlude views (images with a
candidate) and the background view rendered region by region (``tests/reference.py``: NumPy
fill, ``cv2.resize``), the view embeddings (torch, one image's views per call), region labels,
grounding, trigger scores and the verification rule of ``clipguard/scan.py`` in NumPy. The
occlusion-window search and Algorithm 2 (anomaly index, confirmation) run the package's own code
(``_window_search``, ``aggregate.confirm_probe_suspect``) with the reference's torch-eager encoder, the window search one
image at a time as a per-image loop does (``--batched-window``: batched over the images as
``scan()`` does, a stricter reference that shares the batching); "Algorithm 1 alone" compares the
stages before it. Per image, the whole-image label, grounding, region labels, the background
view's verdict and the region-verified flag (and, after the window search and Algorithm 2, the
final verified flag) are asserted equal up to 0.5% of the images (ONNX Runtime and PyTorch differ
by ~1e-6, which can flip an argmax tie or a threshold); the verdict and the affected labels
exactly.

Stages: *oracle* (inside the oracle's call), *render* (region and window views), *encoder* (every
image-encoder and text-encoder call), *scoring* (Algorithm 1's labels, grounding, trigger scores,
verification) and *other* (the rest: window-search and Algorithm 2 bookkeeping, trigger
reconstruction, the report). The oracle and the encoder are the model stages; render, scoring and
other are the non-model ones. The render time of the window search is taken by wrapping the
private ``clipguard.scan._render`` for the duration of each run (both paths).

Measure on an idle machine: while another process holds a core, PyTorch's spinning OpenMP threads
slow down by up to 100x per call (the header prints the load average before the run).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import time
from typing import Any, Callable

import numpy as np
from _common import machine, reference

import clipguard
from clipguard import toyworld
from clipguard.aggregate import confirm_probe_suspect, select_suspects
from clipguard.findings import ImageFinding
from clipguard.probe import load_probe
from clipguard.scan import ScanConfig, _Encoder, _window_search
from clipguard.scoring import probabilities

# The module (the package's `clipguard.scan` attribute is the function of the same name).
scan_mod = importlib.import_module("clipguard.scan")

MODEL = "toy:badnet"
STAGES = ("oracle", "render", "encoder", "scoring", "other")


class TimedModel:
    """A loaded model whose encoder calls (images, pixels, class texts) are timed; everything
    else is the model's own."""

    def __init__(self, model: Any) -> None:
        self._model, self.seconds, self.inputs = model, 0.0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def _timed(self, fn: Callable, arg: Any, *rest: Any) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return fn(arg, *rest)
        finally:
            self.seconds += time.perf_counter() - t0

    def encode_images(self, images: Any, batch_size: int = 256) -> np.ndarray:
        self.inputs += len(images)
        return self._timed(self._model.encode_images, images, batch_size)

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        self.inputs += len(pixels)
        return self._timed(self._model.encode_pixels, pixels, batch_size)

    def class_embeddings(self, vocab: Any) -> np.ndarray:
        return self._timed(self._model.class_embeddings, vocab)


class TimedOracle:
    """The oracle, timed: images -> list of bool [k,H,W]."""

    def __init__(self, oracle: Any) -> None:
        self.oracle, self.seconds, self.spec = oracle, 0.0, getattr(oracle, "spec", "oracle")

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        t0 = time.perf_counter()
        try:
            return self.oracle(images)
        finally:
            self.seconds += time.perf_counter() - t0


@contextlib.contextmanager
def timed_render(clock: dict[str, float]):
    """Time every view ``clipguard.scan`` renders (regions and occlusion windows) into clock["render"]."""
    original = scan_mod._render

    def render(*args: Any, **kwargs: Any) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            clock["render"] += time.perf_counter() - t0

    scan_mod._render = render
    try:
        yield
    finally:
        scan_mod._render = original


def fast_scan(model: Any, images: np.ndarray, vocab: Any, oracle: Any, cfg: ScanConfig) -> tuple[Any, dict]:
    """``clipguard.scan`` and its time per stage."""
    timed, orc = TimedModel(model), TimedOracle(oracle)
    clock = {"render": 0.0}
    t0 = time.perf_counter()
    with timed_render(clock):
        report = clipguard.scan(timed, images, vocab, orc, cfg, mode="probe")
    total = time.perf_counter() - t0
    alg1 = sum(report.timings[k] for k in ("encode_images", "oracle", "render", "encode_regions", "scoring"))
    t = {"total": total, "oracle": orc.seconds, "render": clock["render"], "encoder": timed.seconds,
         "scoring": report.timings["scoring"], "inputs": timed.inputs, "algorithm1": alg1}
    return report, t


def reference_scan(model: Any, images: np.ndarray, vocab: Any, oracle: Any, cfg: ScanConfig,
                   per_image_window: bool = True) -> tuple[dict, dict]:
    """The same scan written plainly (see the module docstring); its findings, suspects and
    Algorithm 1 snapshot, and its time per stage. ``per_image_window``: run the window search one
    image at a time (as a per-image loop would) instead of batched over the images as scan() does."""
    model, orc = TimedModel(model), TimedOracle(oracle)
    clock = {"render": 0.0, "scoring": 0.0}
    t_start = time.perf_counter()
    n, h, w = images.shape[:3]
    text = model.class_embeddings(vocab)
    scale = float(model.logit_scale)
    size, mean, std = model.input_size, model.mean, model.std
    labels, p_img = np.empty(n, np.int64), np.empty(n)
    findings, region_verified = [], []
    for i in range(n):
        image = images[i : i + 1]
        emb = model.encode_images(image)
        masks = np.asarray(orc(image)[0], dtype=bool).reshape(-1, h, w)
        t0 = time.perf_counter()
        area = masks.reshape(len(masks), -1).mean(axis=1) if len(masks) else np.zeros(0)
        keep = (area >= cfg.min_region_area) & (area <= cfg.max_region_area)
        masks, area = masks[keep], area[keep]
        zero = np.zeros(len(masks), np.int64)
        clock["scoring"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        iso = reference.render(image, masks, zero, "isolate", size, mean, std, "mean")
        clock["render"] += time.perf_counter() - t0
        iso_emb = model.encode_pixels(iso) if len(masks) else np.zeros((0, text.shape[1]), np.float32)
        t0 = time.perf_counter()
        p = reference.probabilities(emb, text, scale)[0]
        label = int(np.argmax(p))  # ties to the lower index, as the native compare
        labels[i], p_img[i] = label, p[label]
        region_label = reference.compare(iso_emb, emb, zero, text, scale, 1)[0][:, 0]
        object_sized = (area >= cfg.object_area) & (area <= cfg.max_object_area)
        grounded = bool((object_sized & (region_label == label)).any())
        clock["scoring"] += time.perf_counter() - t0
        verified = np.zeros(len(masks), bool)
        if not grounded and len(masks):  # occluded views only where they can verify a candidate
            t0 = time.perf_counter()
            occ = reference.render(image, masks, zero, "occlude", size, mean, std, "mean")
            clock["render"] += time.perf_counter() - t0
            occ_emb = model.encode_pixels(occ)
            t0 = time.perf_counter()
            p_image, p_occ, _, _, _, score = reference.trigger_scores(
                occ_emb, iso_emb, emb, zero, np.array([label]), text, scale)
            verified = ((score > 0) & (p_occ <= (1 - cfg.min_drop) * p_image)
                        & (area <= cfg.trigger_area) & (region_label == label))
            clock["scoring"] += time.perf_counter() - t0
        t0 = time.perf_counter()  # the background view: every region occluded at once
        union = masks.any(axis=0, keepdims=True) if len(masks) else np.zeros((1, h, w), bool)
        background = reference.render(image, union, np.zeros(1, np.int64), "occlude", size, mean, std, "mean")
        clock["render"] += time.perf_counter() - t0
        p_bg = reference.probabilities(model.encode_pixels(background), text, scale)[0]
        t0 = time.perf_counter()
        same = region_label == label
        f = ImageFinding(index=i, label=label, prob=float(p[label]), regions=len(masks), grounded=grounded,
                         region_labels=[int(x) for x in region_label],
                         object_labels=[int(x) for x in region_label[object_sized]],
                         global_share=float(same.mean()) if len(masks) else 0.0,
                         background_holds=bool(np.argmax(p_bg) == label and p_bg[label] >= cfg.background_prob))
        if not grounded:
            f.candidate = label
            if verified.any():
                mine = np.nonzero(verified)[0]
                best = mine[np.argmax(score[mine])]
                f.verified, f.localized_by = True, "region"
                f.trigger_box = reference.tight_box(masks[best])
        region_verified.append(f.verified)
        findings.append(f)
        clock["scoring"] += time.perf_counter() - t0
    t_alg1 = time.perf_counter() - t_start

    # From here on, clipguard/scan.py's own code (the window search, the anomaly index and the
    # confirmation) with the torch-eager encoder: not what the native kernels and the batching
    # speed up. The statements mirror scan() from its window search on.
    enc = _Encoder(model, cfg.batch_size)

    def localize(todo: list[int]) -> None:
        if per_image_window:
            boxes = {}
            for i in todo:
                boxes.update(_window_search(model, enc, images, [i], labels, p_img, text, cfg))
        else:
            boxes = _window_search(model, enc, images, todo, labels, p_img, text, cfg)
        small = {i: b for i, b in boxes.items() if (b[2] - b[0]) * (b[3] - b[1]) <= cfg.trigger_area * h * w}
        if not small:
            return
        idx = np.array(list(small), np.int64)
        iso = enc.pixels(scan_mod._render(model, images, np.array(list(small.values()), np.int32), idx, "isolate"))
        shows = probabilities(iso, text, scale).argmax(axis=1) == labels[idx]
        for i, ok in zip(idx.tolist(), shows):
            if ok:
                f = findings[i]
                f.candidate, f.verified, f.localized_by, f.trigger_box = int(labels[i]), True, "window", small[i]

    with timed_render(clock):
        localize([f.index for f in findings if f.candidate is not None and not f.verified])
        suspects, stats = select_suspects(findings, labels, text.shape[0], cfg, anomaly=reference.label_anomaly)
        rng = np.random.default_rng(cfg.seed)
        searched = {f.index for f in findings if f.candidate is not None and not f.verified}
        for lab, kind in suspects:
            if kind == "localized":
                localize([f.index for f in findings if f.label == lab and not f.verified and f.index not in searched])
        names = list(vocab.classnames)
        out = [confirm_probe_suspect(enc, images, findings, lab, kind, names[lab], stats, text, rng, cfg)
               for lab, kind in suspects]
    total = time.perf_counter() - t_start
    names = list(vocab.classnames)
    result = {"findings": findings, "region_verified": region_verified, "suspects": out,
              "affected": [s.name for s in sorted(out, key=lambda s: s.label) if s.confirmed]}
    t = {"total": total, "oracle": orc.seconds, "render": clock["render"], "encoder": model.seconds,
         "scoring": clock["scoring"], "inputs": model.inputs, "algorithm1": t_alg1}
    return result, t


def compare_findings(report: Any, ref: dict) -> tuple[list[int], list[int]]:
    """Images whose Algorithm 1 results differ (label, grounding, region labels, background view,
    region-verified flag), and those whose final verified flag differs."""
    alg1, final = [], []
    for f, g, g_region in zip(report.findings, ref["findings"], ref["region_verified"]):
        # A region-verified finding is never changed after Algorithm 1 (the window search and the
        # copy matching only touch unverified ones), so localized_by == "region" is its flag.
        if (f.label, f.grounded, f.region_labels, f.background_holds, f.localized_by == "region") != (
                g.label, g.grounded, g.region_labels, g.background_holds, g_region):
            alg1.append(f.index)
        if (f.verified, f.candidate) != (g.verified, g.candidate):
            final.append(f.index)
    return alg1, final


def best(runs: list[tuple[Any, dict]]) -> tuple[Any, dict]:
    return min(runs, key=lambda r: r[1]["total"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=int, default=500, help="probe images (toy:shapes:N:RATE)")
    parser.add_argument("--rate", type=float, default=0.02, help="share of probe images with the trigger")
    parser.add_argument("--oracle", default="classical", help="oracle spec: classical, toy, onnx:PATH")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each path; the fastest is shown")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads of the native kernels, the oracle, ONNX Runtime and torch")
    parser.add_argument("--batched-window", action="store_true",
                        help="the reference batches the window search over the images, as scan() does")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["CLIPGUARD_NUM_THREADS"] = str(args.threads)  # read at each native call
    os.environ["CLIPGUARD_ORT_THREADS"] = str(args.threads)  # read when the ONNX session is made
    import torch

    torch.set_num_threads(args.threads)

    from clipguard.oracle import get_oracle

    fast_model = clipguard.load_model(MODEL)
    torch_model = clipguard.load_model(MODEL, runtime="torch", device="cpu")
    spec = f"toy:shapes:{args.probe}:{args.rate:g}"
    probe = load_probe(spec, fast_model, seed=args.seed)
    images, vocab = probe.images, toyworld.vocabulary("shapes")
    oracle = get_oracle(args.oracle)
    cfg = ScanConfig(seed=args.seed)
    n = len(images)
    load = os.getloadavg()[0]  # other work on the cores slows torch's spinning OpenMP threads badly

    # One untimed warm-up of each path on a few images (first calls of ORT, torch, OpenCV).
    fast_scan(fast_model, images[:16], vocab, oracle, cfg)
    reference_scan(torch_model, images[:16], vocab, oracle, cfg, not args.batched_window)

    report, tf = best([fast_scan(fast_model, images, vocab, oracle, cfg) for _ in range(args.repeat)])
    ref, tr = best([reference_scan(torch_model, images, vocab, oracle, cfg, not args.batched_window)
                    for _ in range(args.repeat)])

    alg1, final = compare_findings(report, ref)
    allowed = int(0.005 * n)
    regions = sum(f.regions for f in report.findings)
    print(f"# scan of {MODEL} with {n} probe images {images.shape[1]}x{images.shape[2]} ({spec}, "
          f"{len(probe.poisoned)} with the trigger), oracle {args.oracle}, {regions / n:.1f} regions per image, "
          f"{args.threads} threads, load average {load:.2f} before the run; {machine()}")
    print("# fast: clipguard.scan (ONNX Runtime, batched native render/compare/trigger scores); reference: "
          "per-image loop, per-region OpenCV/NumPy views, PyTorch eager,")
    window = "batched over the images as in scan()" if args.batched_window else "one image at a time"
    print(f"# the window search ({window}) and Algorithm 2 with the package's code and the torch encoder in the "
          f"reference; best of {args.repeat}, after a warm-up on 16 images")
    print("# stages in seconds: oracle, encoder = model stages; render, scoring, other = non-model")
    head = f"{'path':<10} {'images/s':>9} {'total s':>8}" + "".join(f" {s:>8}" for s in STAGES)
    print(head + f" {'non-model':>10} {'encoded':>8}")
    rows = {}
    for name, t in (("fast", tf), ("reference", tr)):
        t["other"] = t["total"] - sum(t[s] for s in STAGES if s != "other")
        share = (t["render"] + t["scoring"] + t["other"]) / t["total"]
        rows[name] = t
        print(f"{name:<10} {n / t['total']:9.1f} {t['total']:8.2f}" + "".join(f" {t[s]:8.3f}" for s in STAGES)
              + f" {share:10.1%} {t['inputs']:8d}")
    ratio = tr["total"] / tf["total"]
    print(f"{'ratio':<10} {ratio:9.1f} {'':>8}" + "".join(
        f" {rows['reference'][s] / rows['fast'][s]:8.1f}" if rows["fast"][s] > 0 else f" {'-':>8}" for s in STAGES))
    a1f, a1r = tf["algorithm1"], tr["algorithm1"]
    print(f"# Algorithm 1 alone (whole-image labels, oracle, views, region embeddings, scoring; no window "
          f"search): fast {a1f:.2f} s, reference {a1r:.2f} s, ratio {a1r / a1f:.1f}")
    fast_conf = sorted((s.label, s.kind, s.confirmed) for s in report.suspects)
    ref_conf = sorted((s.label, s.kind, s.confirmed) for s in ref["suspects"])
    ref_verdict = "backdoored" if ref["affected"] else "clean"
    print(f"# agreement: Algorithm 1 (label, grounded, region labels, background view, region-verified) differs on {len(alg1)} "
          f"of {n} images, the final verified flag on {len(final)} (allowed: {allowed} each); verdict "
          f"{report.verdict} / {ref_verdict}, affected labels {report.affected_labels} / {ref['affected']}")
    assert len(alg1) <= allowed, f"Algorithm 1 differs on images {alg1[:20]}"
    assert len(final) <= allowed, f"the final verified flag differs on images {final[:20]}"
    assert report.verdict == ref_verdict and report.affected_labels == ref["affected"], (fast_conf, ref_conf)


if __name__ == "__main__":
    main()
