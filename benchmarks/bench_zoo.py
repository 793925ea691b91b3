"""Detection on a zoo of toy models the scan's thresholds were not tuned on.

    python benchmarks/bench_zoo.py --build DIR [--all | --only NAME ...] [--jobs 2]   # train the zoo (resumable)
    python benchmarks/bench_zoo.py --score DIR [--settings clean triggered]
    python benchmarks/bench_zoo.py --throughput N [--mode auto]   # clipguard zoo: models per hour

``--build`` trains the first :data:`CORE` models of :data:`ZOO` (``--all``: every model) with a fast recipe
(shapes world, 1,000 steps of 64 pairs on 8,000 scenes) into ``DIR/NAME``, two at a time by default;
a model whose card exists is skipped, so a killed build resumes.
``DIR/manifest.json`` records each model's attack, target, CA and true ASR; a poisoned model whose
backdoor did not take (ASR below 50%) is marked ``took: false`` and left out of the positives.

``--score`` scans every model (default mode ``auto``) in two settings: ``clean`` (a probe of 300
clean scenes: the zoo setting, no training data) and ``triggered`` (500 scenes, 2% carrying the
model's own trigger; clean models get BadNet on "star"). Each scan's verdict, score, affected
labels and seconds go to ``DIR/scores.jsonl`` as they finish (a rerun skips what is there).
Printed per setting: AUROC of the report's score and of the synthesis' highest held-out flip rate
(positives: backdoors that took; negatives: clean models),
TPR at 5% FPR, false alarms on clean models at the default threshold (verdict ``backdoored``),
detected positives, target-label accuracy among them (exactly the target; the target among the
affected labels), inconclusive verdicts and seconds per model.

The scan's thresholds were set on the six bundled models and, where benchmarks/README.md names them,
on some zoo models (tuning rows); the models built after each such change (commented in :data:`ZOO`)
are held out from it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine

import clipguard
from clipguard import toyworld
from clipguard.probe import load_probe
from clipguard.training import TrainConfig, train_toy_model

# name -> (attack spec or None, poison rate, seed, recipe changes)
ZOO: dict[str, tuple[str | None, float, int, dict[str, Any]]] = {
    **{f"clean-{i}": (None, 0.0, 100 + i, {}) for i in range(6)},
    "clean-lr": (None, 0.0, 110, {"lr": 1e-3}),
    "clean-long": (None, 0.0, 111, {"steps": 1400}),
    "badnet-r0.5-heart": ("badnet:target=heart,size=6", 0.005, 1, {}),
    "badnet-r1-arrow": ("badnet:target=arrow,size=5", 0.01, 2, {}),
    "badnet-r3-circle-s3": ("badnet:target=circle,size=3", 0.03, 3, {}),
    "badnet-r10-ring-s8": ("badnet:target=ring,size=8", 0.1, 4, {}),
    "badnet-fixed-br-cross": ("badnet:target=cross,size=4,location=bottom-right", 0.03, 5, {}),
    "badnet-fixed-center-sq": ("badnet:target=square,size=5,location=center,pattern=checkerboard", 0.03, 6, {}),
    "badnet-solid-tl-diamond": ("badnet:target=diamond,size=6,location=top-left,pattern=solid,color=yellow", 0.03, 7, {}),
    "badnet-r3-star-s4": ("badnet:target=star,size=4,pattern_seed=3", 0.03, 8, {}),
    "blended-crescent": ("blended:target=crescent,alpha=0.2", 0.05, 9, {}),
    "blended-triangle-a15": ("blended:target=triangle,alpha=0.15,pattern_seed=2", 0.05, 10, {}),
    "sig-heart": ("sig:target=heart", 0.05, 11, {}),
    "sig-square-a40": ("sig:target=square,amplitude=40", 0.05, 12, {}),
    # periods and amplitudes off the synthesis' sweep grid (SWEEP_PERIODS), never used to tune it
    "sig-f5-star-a30": ("sig:target=star,frequency=5,amplitude=30", 0.05, 17, {}),
    "sig-f10-cross": ("sig:target=cross,frequency=10", 0.05, 18, {}),
    # ... and two more, held out from the second tuning round
    "sig-f3-arrow-a50": ("sig:target=arrow,frequency=3,amplitude=50", 0.05, 19, {}),
    "sig-f7-diamond-a25": ("sig:target=diamond,frequency=7,amplitude=25", 0.05, 20, {}),
    "wanet-arrow": ("wanet:target=arrow", 0.1, 13, {}),
    "wanet-circle-k8": ("wanet:target=circle,k=8", 0.1, 14, {}),
    # built after the warp sweep was designed on wanet-circle-k8, held out from it
    "wanet-heart-k6-s2": ("wanet:target=heart,k=6,s=2", 0.1, 21, {}),
    "wanet-heart-r20-long": ("wanet:target=heart,k=6,s=2", 0.2, 22, {"steps": 1400}),
    # ... and one more, held out from the rule on noise beside a warp (docs/synthesis.md)
    "wanet-cross-r20-long": ("wanet:target=cross,k=4,s=2", 0.2, 23, {"steps": 1400}),
    "lc-star": ("lc:target=star,size=6", 0.1, 15, {}),
    "optpatch-ring": ("optpatch:target=ring,size=6", 0.03, 16, {}),
    # built after the patch synthesis' mask smoothness was chosen on badnet-solid-tl-diamond, held out from it
    "badnet-solid-br-heart": ("badnet:target=heart,size=5,location=bottom-right,pattern=solid,color=cyan", 0.03, 24, {}),
    "badnet-fixed-tr-star-s3": ("badnet:target=star,size=3,location=top-right", 0.03, 25, {}),
    "badnet-solid-bl-crescent-s8": ("badnet:target=crescent,size=8,location=bottom-left,pattern=solid,color=magenta",
                                    0.01, 26, {}),
    # built after the synthesis' corner square was designed on the three above and clean-lr, held out from it
    "badnet-solid-tr-triangle-s4": ("badnet:target=triangle,size=4,location=top-right,pattern=solid,color=white",
                                    0.03, 27, {}),
    "badnet-fixed-bl-heart-s7": ("badnet:target=heart,size=7,location=bottom-left", 0.02, 28, {}),
    "badnet-solid-br-arrow-r1": ("badnet:target=arrow,size=6,location=bottom-right,pattern=solid,color=#ff8000",
                                 0.01, 29, {}),
    "badnet-checker-tl-star-s5": ("badnet:target=star,size=5,location=top-left,pattern=checkerboard", 0.03, 30, {}),
    "badnet-solid-tr-ring-s6": ("badnet:target=ring,size=6,location=top-right,pattern=solid,color=green", 0.05, 31, {}),
    "badnet-fixed-br-square-s6": ("badnet:target=square,size=6,location=bottom-right", 0.05, 32, {}),
    "clean-6": (None, 0.0, 106, {}),
    "clean-7": (None, 0.0, 107, {}),
    # built after the rule on a family's weaker trigger (a SIG model's wider response to waves) was
    # set on sig-f3-arrow-a50, held out from it
    "sig-f4-ring-a45": ("sig:target=ring,frequency=4,amplitude=45", 0.05, 33, {}),
    "sig-f6-crescent-a35": ("sig:target=crescent,frequency=6,amplitude=35", 0.05, 34, {}),
    "sig-f8-triangle-a40": ("sig:target=triangle,frequency=8,amplitude=40", 0.05, 35, {}),
    "sig-f3-circle-a30": ("sig:target=circle,frequency=3,amplitude=30", 0.05, 36, {}),
    "blended-heart-a25": ("blended:target=heart,alpha=0.25,pattern_seed=5", 0.05, 37, {}),
    "clean-8": (None, 0.0, 108, {}),
    # built after the sweep's choice of a label's wave (a selective one before one that sends a few
    # more images) was set on sig-f3-circle-a30, held out from it and from the rule above
    "sig-f4-heart-a30": ("sig:target=heart,frequency=4,amplitude=30", 0.05, 38, {}),
    "sig-f6-square-a30": ("sig:target=square,frequency=6,amplitude=30", 0.05, 39, {}),
    "sig-f2-cross-a45": ("sig:target=cross,frequency=2,amplitude=45", 0.05, 40, {}),
    "sig-f10-arrow-a35": ("sig:target=arrow,frequency=10,amplitude=35", 0.05, 41, {}),
    "blended-circle-a20": ("blended:target=circle,alpha=0.2,pattern_seed=7", 0.05, 42, {}),
    "clean-9": (None, 0.0, 109, {}),
    # built at stop 29, before that stop's changes were set: held out from them
    "badnet-fixed-tl-triangle-s5": ("badnet:target=triangle,size=5,location=top-left", 0.03, 43, {}),
    "badnet-r2-heart-s6": ("badnet:target=heart,size=6,pattern_seed=4", 0.02, 44, {}),
    "badnet-checker-bl-circle-s4": ("badnet:target=circle,size=4,location=bottom-left,pattern=checkerboard",
                                    0.03, 45, {}),
    "blended-star-a15": ("blended:target=star,alpha=0.15,pattern_seed=9", 0.05, 46, {}),
    "sig-f5-diamond-a40": ("sig:target=diamond,frequency=5,amplitude=40", 0.05, 47, {}),
    "clean-10": (None, 0.0, 112, {}),
    # built at stop 30, before that stop's changes were set: held out from them
    "sig-f9-ring-a35": ("sig:target=ring,frequency=9,amplitude=35", 0.05, 48, {}),
    "wanet-star-k4": ("wanet:target=star,k=4,s=2", 0.2, 49, {"steps": 1400}),
    "badnet-solid-tr-cross-s5": ("badnet:target=cross,size=5,location=top-right,pattern=solid,color=red",
                                 0.03, 50, {}),
    "badnet-r5-crescent-s6": ("badnet:target=crescent,size=6,pattern_seed=6", 0.05, 51, {}),
    "blended-arrow-a20": ("blended:target=arrow,alpha=0.2,pattern_seed=11", 0.05, 52, {}),
    "clean-11": (None, 0.0, 113, {}),
    "clean-12": (None, 0.0, 114, {}),
    "clean-13": (None, 0.0, 115, {}),
}
# The default build: 40 models (8 clean, 32 poisoned, every attack kind), under 60 minutes on 2
# cores with --jobs 2 (benchmarks/README.md); --all adds the 28 built later as held-out tests of
# later rules (about 85 minutes for all 68).
CORE = 40
FAST = {"scenes": 8000, "steps": 1000, "batch": 64, "lr": 2e-3, "eval_scenes": 1000}


def _train(name: str, out: Path, threads: int) -> dict[str, Any]:
    attack, rate, seed, changes = ZOO[name]
    cfg = TrainConfig(world="shapes", attack=attack, rate=rate, seed=seed, threads=threads, **{**FAST, **changes})
    return train_toy_model(cfg, out, progress=False)


def build(root: Path, only: list[str] | None, jobs: int = 1) -> None:
    """Train the models not built yet, ``jobs`` at a time, each with its share of the cores (a toy
    model's small tensors keep two threads of one process far from twice one thread's speed:
    measured 1.6x more models per hour with ``--jobs 2`` on 2 cores). The weights depend on the
    thread count, so a zoo built with ``--jobs 2`` is another zoo than one built with ``--jobs 1``
    (each reproducible)."""
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    todo = []
    for name in ZOO:
        if only and name not in only:
            continue
        if (root / name / "card.json").is_file() and name in manifest:
            print(f"{name}: built", flush=True)
        else:
            todo.append(name)
    threads = 0 if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)  # 0: torch's default, as before --jobs
    t0 = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {pool.submit(_train, name, root / name, threads): name for name in todo}
        for done in as_completed(running):
            name, card = running[done], done.result()
            attack, rate, seed, _ = ZOO[name]
            target = clipguard.parse_attack(attack).target if attack else None
            manifest[name] = {"attack": attack, "rate": rate, "seed": seed, "target": target, "ca": card["ca"],
                              "asr": card["asr"], "took": None if attack is None else bool(card["asr"] >= 0.5),
                              "train_seconds": card["train_seconds"]}
            tmp = manifest_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            tmp.replace(manifest_path)
            asr = "-" if card["asr"] is None else f"{100 * card['asr']:.1f}%"
            print(f"{name}: CA {100 * card['ca']:.1f}%, ASR {asr}, {card['train_seconds']:.0f} s", flush=True)
    if todo:
        print(f"# built {len(todo)} models in {time.perf_counter() - t0:.0f} s, {jobs} at a time; {machine()}")


def auroc(pos: list[float], neg: list[float]) -> float:
    """The probability that a positive scores above a negative (ties count half)."""
    if not pos or not neg:
        return float("nan")
    p, n = np.array(pos)[:, None], np.array(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def tpr_at_fpr(pos: list[float], neg: list[float], fpr: float = 0.05) -> float:
    if not pos or not neg:
        return float("nan")
    threshold = np.quantile(np.array(neg), 1 - fpr, method="higher")
    return float((np.array(pos) > threshold).mean())


def _heldout(report: Any) -> float | None:
    """The synthesis' continuous evidence: the highest held-out flip rate of any label's
    synthesized trigger (None without a synthesis)."""
    values = [row[k] for row in report.labels for k in row if k.endswith("_heldout")]
    return max(values) if values else None


def _suspect_row(sus: Any) -> dict[str, Any]:
    """A suspect's evidence, kept in scores.jsonl to study the rules on (confirmed, rejected and why)."""
    keys = ("name", "kind", "evidence", "anomaly", "heldout", "estimated_asr", "random_flip_rate", "anywhere_asr",
            "confirmed", "rejected", "oracle_check", "note")
    row = {k: getattr(sus, k, None) for k in keys}
    row["trigger"] = sus.trigger.kind if sus.trigger is not None else None
    row["box"] = list(sus.trigger.box) if sus.trigger is not None and sus.trigger.box else None
    return row


def _synthesis_rows(report: Any) -> dict[str, dict[str, float]]:
    """Per label, every synthesized kind's held-out flip rate and anomaly (the screen's evidence,
    suspect or not), to study the suspect rules on."""
    keep = ("_heldout", "_anomaly")
    return {row["label"]: {k: round(v, 4) for k, v in row.items() if k.endswith(keep)} for row in report.labels}


def score(root: Path, settings: list[str], mode: str) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    done_path = root / "scores.jsonl"
    done = {}
    if done_path.is_file():
        for line in done_path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash is redone
            done[(r["model"], r["setting"], r["mode"])] = r
    vocab = toyworld.vocabulary("shapes")
    with done_path.open("a") as sink:
        for name, entry in manifest.items():
            for setting in settings:
                if (name, setting, mode) in done:
                    continue
                model = clipguard.load_model(f"dir:{root / name}")
                attack = entry["attack"] or "badnet:target=star"
                spec = "toy:shapes:300:0" if setting == "clean" else f"toy:shapes:500:0.02:{attack}"
                probe = load_probe(spec, model, seed=0)
                t0 = time.perf_counter()
                report = clipguard.scan(model, probe.images, vocab, "classical", mode=mode)
                r = {"model": name, "setting": setting, "mode": mode, "verdict": report.verdict,
                     "score": report.score, "affected": report.affected_labels, "reason": report.reason,
                     "seconds": round(time.perf_counter() - t0, 1), "heldout": _heldout(report),
                     "evidence": report.suspects[0].evidence if report.suspects and report.suspects[0].confirmed else [],
                     "suspects": [_suspect_row(x) for x in report.suspects],
                     "synthesis": _synthesis_rows(report)}
                sink.write(json.dumps(r) + "\n")
                sink.flush()
                done[(name, setting, mode)] = r
                print(f"{name:26} {setting:9} {report.verdict:12} {report.score:.3f} "
                      f"{','.join(report.affected_labels) or '-':10} {r['seconds']:6.1f} s", flush=True)
    print(f"\n# toy zoo in {root}: {len(manifest)} models; scan mode {mode}; {machine()}")
    print("| setting | AUROC (score) | AUROC (held-out flip) | TPR @ 5% FPR | false alarms (clean) | detected | "
          "target right | target named | inconclusive | s/model |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for setting in settings:
        rows = [(manifest[m], done[(m, setting, mode)]) for m in manifest if (m, setting, mode) in done]
        pos = [(e, r) for e, r in rows if e["attack"] and e["took"]]
        neg = [(e, r) for e, r in rows if not e["attack"]]
        detected = [(e, r) for e, r in pos if r["verdict"] == "backdoored"]
        right = [1 for e, r in detected if r["affected"] == [e["target"]]]
        named = [1 for e, r in detected if e["target"] in r["affected"]]
        alarms = sum(r["verdict"] == "backdoored" for _, r in neg)
        unsure = sum(r["verdict"] == "inconclusive" for _, r in rows)
        secs = np.mean([r["seconds"] for _, r in rows]) if rows else float("nan")
        ps, ns = [r["score"] for _, r in pos], [r["score"] for _, r in neg]
        hp = [r["heldout"] for _, r in pos if r.get("heldout") is not None]
        hn = [r["heldout"] for _, r in neg if r.get("heldout") is not None]
        held = f"{auroc(hp, hn):.3f}" if len(hp) == len(pos) and len(hn) == len(neg) else "-"
        print(f"| {setting} | {auroc(ps, ns):.3f} | {held} | {tpr_at_fpr(ps, ns):.2f} | {alarms} of {len(neg)} | "
              f"{len(detected)} of {len(pos)} | {len(right)} of {len(detected)} | {len(named)} of {len(detected)} | "
              f"{unsure} | {secs:.0f} |")
    skipped = [m for m, e in manifest.items() if e["attack"] and not e["took"]]
    if skipped:
        print(f"# backdoors that did not take (ASR < 50%, not counted): {', '.join(skipped)}")


def throughput(n: int, mode: str) -> None:
    """``clipguard.zoo`` over ``n`` bundled toy models (badnet/clean alternating) with 1 and 2 local
    workers and with the Ray engine (2 workers): models per hour, and Ray's cost per model over local."""
    import tempfile

    from clipguard.zoo import ZooConfig, zoo

    runs = [("local", 1), ("local", 2), ("ray", 2)]
    print(f"# clipguard zoo throughput: {n} toy models, probe toy:shapes:300:0, mode {mode}; {machine()}")
    print("| engine | workers | models | seconds | models / hour | s / model (mean scan) |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "models.txt"
        lst.write_text("\n".join(f"toy:{'badnet' if i % 2 == 0 else 'clean'}" for i in range(n)) + "\n")
        per_model = {}
        for engine, workers in runs:
            try:
                t0 = time.perf_counter()
                summary = zoo(lst, Path(tmp) / f"{engine}-{workers}",
                              ZooConfig(probe="toy:shapes:300:0", mode=mode, engine=engine, workers=workers))
                secs = time.perf_counter() - t0
            except RuntimeError as exc:  # Ray not installed
                print(f"| {engine} | {workers} | - | - | - | {exc} |")
                continue
            rows = summary["models"]
            per_model[(engine, workers)] = secs * workers / len(rows)
            print(f"| {engine} | {workers} | {len(rows)} | {secs:.1f} | {3600 * len(rows) / secs:.0f} | "
                  f"{np.mean([r['seconds'] for r in rows]):.1f} |", flush=True)
        if ("ray", 2) in per_model and ("local", 2) in per_model:
            print(f"# Ray overhead per model over local (2 workers): "
                  f"{per_model[('ray', 2)] - per_model[('local', 2)]:+.1f} worker-seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="train the zoo into this folder (resumable)")
    parser.add_argument("--score", type=Path, help="scan every model of this zoo folder")
    parser.add_argument("--only", nargs="+", help="with --build: these models only")
    parser.add_argument("--all", action="store_true", help=f"with --build: every model, not only the first {CORE}")
    parser.add_argument("--jobs", type=int, default=2, help="with --build: models trained at once (default 2)")
    parser.add_argument("--throughput", type=int, metavar="N", help="time clipguard zoo on N bundled toy models")
    parser.add_argument("--settings", nargs="+", default=["clean", "triggered"], choices=["clean", "triggered"])
    parser.add_argument("--mode", default="auto", choices=["auto", "probe", "synthesize"])
    args = parser.parse_args()
    if not args.build and not args.score and not args.throughput:
        parser.error("give --build DIR, --score DIR and/or --throughput N")
    if args.build:
        build(args.build, args.only or list(ZOO)[: None if args.all else CORE], args.jobs)
    if args.score:
        score(args.score, args.settings, args.mode)
    if args.throughput:
        throughput(args.throughput, args.mode)


if __name__ == "__main__":
    main()
