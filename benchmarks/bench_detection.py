"""Detection quality of the scan on the bundled toy models: what issue 4's acceptance figures are.

    python benchmarks/bench_detection.py [--models badnet fashion-badnet ...] [--oracles classical toy]
                                         [--probe 500] [--rate 0.02] [--seeds 0]

For each bundled model and oracle: a probe of N toy scenes of the model's world, a share RATE
carrying the trigger of the model's attack (a clean model: BadNet on its world's target), scanned
with ``clipguard.scan``. Printed per row: verdict, affected labels, victim precision and recall
against the triggered images, how many found victims have a trigger box of IoU >= 0.5 with the
true patch (localized triggers), the estimated ASR of the reconstructed trigger against its
random-patch control and the model's true ASR (``evaluate_toy``, 1,000 held-out scenes), and the
scan time. A markdown table, ready for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

from _common import machine

import clipguard
from clipguard import toyworld
from clipguard.evaluate import evaluate_toy
from clipguard.probe import load_probe

TARGET = {"shapes": "star", "fashion": "bag"}


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy)


def row(name: str, oracle: str, n: int, rate: float, seed: int, mode: str = "probe") -> str:
    model = clipguard.load_model(f"toy:{name}")
    card = model.card
    world = card["world"]
    attack = card["attack"] or f"badnet:target={TARGET[world]}"
    probe = load_probe(f"toy:{world}:{n}:{rate:g}:{attack}", model, seed=seed)
    t0 = time.perf_counter()
    report = clipguard.scan(model, probe.images, toyworld.vocabulary(world), oracle, clipguard.ScanConfig(seed=seed),
                            mode=mode)
    seconds = time.perf_counter() - t0
    truth = {int(i): tuple(b) if b is not None else None
             for i, b in zip(probe.poisoned, probe.trigger_boxes if probe.trigger_boxes is not None
                             else [None] * len(probe.poisoned))}
    found = {v.index: v.trigger_box for v in report.victims}
    hits = set(found) & set(truth)
    precision = f"{len(hits) / len(found):.2f}" if found and card["attack"] else "–"
    recall = f"{len(hits) / len(truth):.2f}" if truth and card["attack"] else "–"  # a clean model has no victims to find
    boxes = [i for i in hits if found[i] is not None and truth[i] is not None]
    iou_ok = f"{sum(iou(found[i], truth[i]) >= 0.5 for i in boxes)} of {len(hits)}" if boxes else "–"
    asr = "–"
    suspect = next((s for s in report.suspects if s.confirmed), None)
    if suspect is not None and card["attack"]:
        true_asr = evaluate_toy(model, world, card["attack"], n=1000, seed=1).asr
        asr = (f"{100 * suspect.estimated_asr:.1f}% ({100 * suspect.random_flip_rate:.1f}%) "
               f"vs {100 * true_asr:.1f}%")
    kind = f"{report.trigger.kind} ({report.trigger.source})" if report.trigger else "–"
    return (f"| `toy:{name}` | {oracle} | {seed} | {report.verdict} | {', '.join(report.affected_labels) or '–'} | "
            f"{kind} | {precision} / {recall} | {iou_ok} | {asr} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=clipguard.models.available_toy_models())
    parser.add_argument("--oracles", nargs="+", default=["classical", "toy"])
    parser.add_argument("--probe", type=int, default=500)
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--mode", choices=["auto", "probe", "synthesize"], default="probe",
                        help="the scan's analyses (probe: Algorithms 1-2 only, the setting of the table)")
    args = parser.parse_args()
    print(f"# {args.probe} probe scenes, {args.rate:.0%} with the trigger, mode {args.mode}; {machine()}")
    print("| model | oracle | seed | verdict | affected | trigger | victim precision / recall | IoU ≥ 0.5 "
          "| estimated ASR (random) vs true | scan s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        for oracle in args.oracles:
            for seed in args.seeds:
                print(row(name, oracle, args.probe, args.rate, seed, args.mode), flush=True)


if __name__ == "__main__":
    main()
