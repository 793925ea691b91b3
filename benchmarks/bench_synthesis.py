"""Trigger synthesis cost: a bundled toy model in full, and a ViT-B/32 per optimization step.

    python benchmarks/bench_synthesis.py [--vit-steps 2]

For each bundled toy model the default synthesis runs end to end (all labels, every kind,
the oracle check, confirmation and refinement) on 300 clean scenes of its world: seconds and
forward+backward passes, with the optimized kinds side by side (the default) and, as the
reference in the same run, one after another on all threads (``side_by_side=False``). For
ViT-B/32 (open_clip architecture, random weights: the cost does not depend on them,
saved as a safetensors checkpoint and loaded through ``open_clip:ViT-B-32:PATH`` like a user's)
each optimized kind runs ``--vit-steps`` steps on 224 px scenes with the default batch, each
swept kind once; the seconds per step, times the default number of steps, give the synthesis'
cost, printed beside the measured runs (each run's screen is scaled with its steps: an upper
bound). Timings here are absolute seconds on the machine named in the header, not ratios: they
size the job.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import machine, vit_b32_checkpoint

import clipguard
from clipguard import toyworld
from clipguard.scan import ScanConfig, _Encoder, _resolve_oracle
from clipguard.synthesis import SWEPT, SynthesisConfig, synthesize


def toy_rows(names: list[str]) -> None:
    for name in names:
        model = clipguard.load_model(f"toy:{name}")
        world = model.card.get("world", "shapes")
        vocab = toyworld.vocabulary(world)
        images = clipguard.load_probe(f"toy:{world}:300:0", model, seed=0).images
        text = model.class_embeddings(vocab)
        seconds = {}
        for side_by_side in (True, False):
            t0 = time.perf_counter()
            s = synthesize(model, images, vocab, text, model.logit_scale, _resolve_oracle("classical"),
                           _Encoder(model, 256), ScanConfig(), SynthesisConfig(side_by_side=side_by_side))
            seconds[side_by_side] = time.perf_counter() - t0
            found = ", ".join(f"{x.name} ({x.kind})" for x in s.suspects if x.confirmed) or "-"
            what = "full synthesis" + ("" if side_by_side else ", kinds one after another (reference)")
            print(f"| `toy:{name}` ({model.input_size} px) | {what} | {s.passes:,} | {seconds[side_by_side]:.1f} | {found} |",
                  flush=True)
        print(f"| `toy:{name}` | side by side against one after another | | {seconds[False] / seconds[True]:.2f}x | |",
              flush=True)


def vit_row(steps: int, device: str) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model = clipguard.load_model(vit_b32_checkpoint(Path(tmp) / "vit-b-32.safetensors"), runtime="torch",
                                     device=device)
    vocab = toyworld.vocabulary("shapes")
    images = toyworld.generate("shapes", 64, seed=0, size=224).images
    text = model.class_embeddings(vocab)
    cfg = SynthesisConfig()
    total, passes = 0.0, 0
    for kind in cfg.kinds:
        swept = kind in SWEPT  # a sweep has no steps: timed once, in full
        quick = SynthesisConfig(steps=steps, square_steps=steps, kinds=(kind,), refine_steps=0, oracle_check=False)
        t0 = time.perf_counter()
        s = synthesize(model, images, vocab, text, model.logit_scale, _resolve_oracle("classical"),
                       _Encoder(model, 64), ScanConfig(), quick)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        times = 1 if swept else (cfg.square_steps if kind == "square" else cfg.steps) / steps  # the default's share
        total += seconds * times
        passes += round(s.passes * times)
        what = f"{kind}: the sweep" if swept else f"{kind}: {steps} steps measured ({seconds / steps:.1f} s per step)"
        print(f"| ViT-B/32 (224 px, random weights, {device}) | {what} | {s.passes:,} | {seconds:.1f} | - |", flush=True)
    print(f"| ViT-B/32 (224 px, random weights, {device}) | default synthesis ({cfg.steps} steps per optimized kind, "
          f"{cfg.square_steps} for the squares; from the per-step times, screen and sweeps included) | {passes:,} | "
          f"{total:.0f} | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", nargs="*", default=["badnet", "clean", "fashion-badnet", "fashion-clean"])
    parser.add_argument("--vit-steps", type=int, default=2)
    args = parser.parse_args()
    print(f"# trigger synthesis; {machine()}")
    print("| model | what | forward+backward passes | seconds | confirmed suspects |")
    print("| --- | --- | --- | --- | --- |")
    toy_rows(args.toy)
    if args.vit_steps > 0:
        vit_row(args.vit_steps, "cpu")


if __name__ == "__main__":
    main()
