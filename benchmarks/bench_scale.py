"""The scan's cost at real model size (issue 13): encoder inputs per probe image, seconds, the
encoder's share and its arithmetic rate against the machine's.

    python benchmarks/bench_scale.py [--vit-images 100] [--toy-images 500] [--skip-vit] [--skip-toy]
                                     [--precisions fp32 int8]

*Bundled models*: a probe analysis (mode ``probe``) of each bundled toy model on 500 scenes of its
world, 2% triggered: encoder inputs per probe image by stage, verdict and seconds.
*ViT-B/32*: an open_clip ViT-B/32 checkpoint with random weights built by the script (224 px),
loaded through ``open_clip:ViT-B-32:PATH`` (its ONNX export cached by a first load that is not
timed), scanned (mode ``probe``) on N shapes scenes rendered at 224 px with the shapes
vocabulary: inputs per image, seconds, the share of the scan spent in the encoder, and the
encoder's GFLOP/s (8.8 GFLOP = 4.4 G multiply-adds per 224 px ViT-B/32 image, counted from its shapes) against
the machine's fp32 matrix-multiply rate measured in the same run (torch, all threads). Each
precision (``fp32``; ``int8``: the image encoder quantized by ONNX Runtime) is scanned, and the
int8 encoder's top-1 labels are compared with fp32's on the same inputs (random weights) and on
the bundled toy models (trained weights).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from _common import machine, vit_b32_checkpoint

import clipguard
from clipguard import scan as scan_module  # noqa: F401  (the module, patched below to count by stage)
from clipguard import toyworld
from clipguard.probe import load_probe


def vit_b32_gflop(width: int = 768, layers: int = 12, patch: int = 32, side: int = 224) -> float:
    """FLOPs (a multiply-add counts 2) of one image through ViT-B/32's image tower: the patch
    embedding, and per layer the QKV and output projections, attention and the 4x MLP."""
    tokens = (side // patch) ** 2 + 1
    macs = (tokens - 1) * 3 * patch * patch * width
    macs += layers * (tokens * width * (3 * width + width + 2 * 4 * width) + 2 * tokens * tokens * width)
    return 2 * macs / 1e9


VIT_GFLOP = vit_b32_gflop()  # 8.8 (4.4 G multiply-adds)


@contextlib.contextmanager
def counting() -> Iterator[collections.Counter]:
    """Encoder inputs by scan stage, counted while the block runs."""
    import importlib

    s = importlib.import_module("clipguard.scan")
    counts: collections.Counter = collections.Counter()
    stage = ["other"]
    orig_pixels, orig_images, orig_clock = s._Encoder.pixels, s._Encoder.images, s._Clock.__call__

    def pixels(self: Any, x: np.ndarray) -> np.ndarray:
        counts[stage[0]] += len(x)
        return orig_pixels(self, x)

    def images(self: Any, x: np.ndarray) -> np.ndarray:
        counts[stage[0]] += len(x)
        return orig_images(self, x)

    @contextlib.contextmanager
    def clock(self: Any, name: str, tick: bool = False) -> Iterator[None]:
        prev, stage[0] = stage[0], name
        try:
            with orig_clock(self, name, tick):
                yield
        finally:
            stage[0] = prev

    s._Encoder.pixels, s._Encoder.images, s._Clock.__call__ = pixels, images, clock  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        s._Encoder.pixels, s._Encoder.images, s._Clock.__call__ = orig_pixels, orig_images, orig_clock  # type: ignore[method-assign]


def matmul_gflops(seconds: float = 3.0) -> float:
    """The machine's fp32 matrix-multiply rate (torch, all threads): a practical peak."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - t0) / 1e9


def toy_rows(n: int) -> None:
    print("\n| model | verdict | inputs / image | by stage (per image) | scan s |")
    print("| --- | --- | --- | --- | --- |")
    for name in clipguard.available_toy_models():
        model = clipguard.load_model(f"toy:{name}")
        world = model.card["world"]
        probe = load_probe(f"toy:{world}:{n}:0.02", model, seed=0)
        with counting() as counts:
            t0 = time.perf_counter()
            report = clipguard.scan(model, probe.images, toyworld.vocabulary(world), "classical", mode="probe")
            seconds = time.perf_counter() - t0
        total = sum(counts.values())
        stages = ", ".join(f"{k} {v / n:.2f}" for k, v in counts.items())
        print(f"| `toy:{name}` | {report.verdict} | {total / n:.2f} | {stages} | {seconds:.1f} |", flush=True)


def vit_rows(n: int, precisions: list[str]) -> None:
    """The ViT-B/32 scan at each precision; the int8 encoder's agreement with fp32 on the same
    inputs (whole-image and isolated-region top-1 labels, embedding cosine)."""
    peak = matmul_gflops()
    vocab = toyworld.vocabulary("shapes")
    images = toyworld.generate("shapes", n, seed=0, size=224).images
    print(f"\nViT-B/32 (224 px, random weights, ONNX Runtime CPU) on {machine()}; "
          f"measured fp32 matmul rate {peak:.0f} GFLOP/s")
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = vit_b32_checkpoint(Path(tmp) / "vit-b-32.safetensors")
        for precision in precisions:
            t0 = time.perf_counter()
            clipguard.load_model(spec, precision=precision)  # the first load exports (and quantizes) into the cache
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            model = clipguard.load_model(spec, precision=precision)
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            emb = model.encode_images(images)
            once = time.perf_counter() - t0
            with counting() as counts:
                t0 = time.perf_counter()
                report = clipguard.scan(model, images, vocab, "classical", mode="probe")
                seconds = time.perf_counter() - t0
            inputs = report.timings["encoded_inputs"]
            enc = report.timings["encode_seconds"]
            rate = inputs * VIT_GFLOP / enc  # fp32-equivalent work per second
            runs[precision] = (emb, report)
            text = model.class_embeddings(vocab)
            print(f"\n**{precision}**: first load (export{', quantization' if precision != 'fp32' else ''}) {first:.0f} s, "
                  f"cached load {load:.1f} s; encoding the {n} images once {once:.1f} s ({n / once:.1f} images/s)")
            print(f"- scan of {n} images: {seconds:.1f} s, {inputs / n:.2f} encoder inputs per image "
                  f"({', '.join(f'{k} {v / n:.2f}' for k, v in counts.items())}), {seconds / once:.1f}x encoding them once")
            print(f"- encoder {enc:.1f} s = {100 * enc / seconds:.0f}% of the scan, {rate:.0f} GFLOP/s "
                  f"({100 * rate / peak:.0f}% of the fp32 matmul rate); verdict {report.verdict}")
            print(f"- a 500-image scan at this rate: about {500 / n * seconds / 60:.1f} min")
    if "fp32" in runs and "int8" in runs:
        (e32, r32), (e8, r8) = runs["fp32"], runs["int8"]
        whole = float(((e32 @ text.T).argmax(1) == (e8 @ text.T).argmax(1)).mean())
        cos = (e32 * e8).sum(1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e8, axis=1)
        regions = [(a, b) for f, g in zip(r32.findings, r8.findings) for a, b in zip(f.region_labels, g.region_labels)]
        same_regions = float(np.mean([a == b for a, b in regions])) if regions else float("nan")
        print(f"\nint8 against fp32 on the same inputs: whole-image top-1 labels agree on {100 * whole:.1f}% of {n}, "
              f"isolated-region top-1 labels on {100 * same_regions:.1f}% of {len(regions)}; embedding cosine "
              f"min {cos.min():.5f}; verdicts {r32.verdict} / {r8.verdict}")


def int8_agreement(n: int) -> None:
    """int8 against fp32 on trained models: the bundled toy models' top-1 labels on n scenes."""
    print("\n| model | int8 top-1 = fp32 top-1 | scenes |")
    print("| --- | --- | --- |")
    for name in clipguard.available_toy_models():
        a, b = clipguard.load_model(f"toy:{name}"), clipguard.load_model(f"toy:{name}", precision="int8")
        world = a.card["world"]
        text = a.class_embeddings(toyworld.vocabulary(world))
        imgs = load_probe(f"toy:{world}:{n}:0.02", a, seed=0).images
        same = float(((a.encode_images(imgs) @ text.T).argmax(1) == (b.encode_images(imgs) @ text.T).argmax(1)).mean())
        print(f"| `toy:{name}` | {100 * same:.1f}% | {n} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vit-images", type=int, default=100)
    ap.add_argument("--toy-images", type=int, default=500)
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--skip-toy", action="store_true")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    args = ap.parse_args()
    print(f"bench_scale on {machine()}")
    if not args.skip_toy:
        toy_rows(args.toy_images)
        if "int8" in args.precisions:
            int8_agreement(args.toy_images)
    if not args.skip_vit:
        vit_rows(args.vit_images, args.precisions)


if __name__ == "__main__":
    main()
