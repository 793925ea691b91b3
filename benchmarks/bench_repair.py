"""Repair table: clipguard's targeted repair against CleanCLIP-style fine-tuning on clean data.

For each bundled poisoned toy model: no defense; CleanCLIP's objective (image-text contrastive
plus in-modal terms, not knowing the target) on clean pairs numbering 20% of the model's training
set -- the share CleanCLIP used -- and on a tenth of that; clipguard's repair on the compact set a
scan builds. CA and ASR on held-out single-object scenes (DESIGN §3), pairs used, wall time.

    python benchmarks/bench_repair.py [--models badnet blended] [--steps 300] [--no-baselines]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import machine

import clipguard
from clipguard import toyworld
from clipguard.evaluate import evaluate_toy
from clipguard.probe import load_probe
from clipguard.repair import FinetuneSet, RepairConfig, build_finetune_set, repair
from clipguard.scan import ScanConfig, scan


def clean_set(world: str, n: int, seed: int) -> FinetuneSet:
    """``n`` clean pairs of the model's training distribution, captioned with their objects."""
    scenes = toyworld.generate(world, n, seed=seed)
    labels = [[int(c) for c in lab] for lab in scenes.labels]
    rng = np.random.default_rng(seed)
    captions = [scenes.vocab.caption(lab, int(rng.integers(len(scenes.vocab.templates)))) for lab in labels]
    return FinetuneSet(images=scenes.images, captions=captions, labels=labels, kinds=["clean"] * n,
                       sources=np.arange(n), vocab=scenes.vocab, affected=[], trigger=None,
                       holdout=scenes.images[:0])


def row(name: str, method: str, model: object, card: dict, pairs: int, seconds: float, args) -> dict:
    r = evaluate_toy(model, card["world"], card["attack"], n=args.eval, seed=1)
    return {"model": name, "method": method, "ca": r.ca, "asr": r.asr, "pairs": pairs, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["badnet", "blended"],
                        help="bundled names (toy:NAME) or model specs such as dir:PATH")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps (CleanCLIP: all of them)")
    parser.add_argument("--eval", type=int, default=2000, help="held-out scenes for CA and ASR")
    parser.add_argument("--probe", type=int, default=500)
    parser.add_argument("--no-baselines", action="store_true",
                        help="only the no-defense and clipguard rows (the baselines do not depend on the repair recipe)")
    args = parser.parse_args()
    print(f"# {machine()}")
    rows = []
    for name in args.models:
        spec = name if ":" in name else f"toy:{name}"
        onnx_model = clipguard.load_model(spec)
        card = onnx_model.card
        name = f"{name} ({card['world']}, {card['attack'].split(',')[0]})"
        rows.append(row(name, "no defense", onnx_model, card, 0, 0.0, args))
        full = int(round(0.2 * card["training_pairs"]))
        for n in () if args.no_baselines else (full, full // 10):
            t0 = time.perf_counter()
            res = repair(spec, clean_set(card["world"], n, seed=7), RepairConfig(steps=args.steps, keep=0.0), progress=False)
            rows.append(row(name, f"CleanCLIP-style, {n} clean pairs", res.model, card, n,
                            time.perf_counter() - t0, args))
        t0 = time.perf_counter()
        probe = load_probe(f"toy:{card['world']}:{args.probe}:0.02", onnx_model, seed=0)
        report = scan(onnx_model, probe.images, toyworld.vocabulary(card["world"]), "classical", ScanConfig(seed=0),
                      mode="probe")
        if report.verdict != "backdoored":
            print(f"# {name}: the scan found nothing; no clipguard repair")
            continue
        fset = build_finetune_set(report)
        res = repair(spec, fset, RepairConfig(steps=args.steps), progress=False)
        rows.append(row(name, "clipguard (scan + targeted repair)", res.model, card, len(fset),
                        time.perf_counter() - t0, args))
        print(rows[-1], flush=True)
    print("\n| model | method | CA | ASR | pairs | seconds |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {100 * r['ca']:.1f}% | {100 * r['asr']:.1f}% | {r['pairs']} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
