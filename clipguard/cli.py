"""The ``clipguard`` command line: a thin layer over the public functions.

Exit codes (as modelscan's): 0 nothing found, 1 backdoor found, 2 error, 3 nothing scanned,
4 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits with 2; usage errors are 4 here
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_info(args: argparse.Namespace) -> int:
    from ._backend import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_CLEAN
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return EXIT_CLEAN


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import toyworld
    from .evaluate import evaluate
    from .models import load_model

    model = load_model(args.model, runtime=args.runtime, device=args.device)
    attack = args.attack
    if attack is None and args.model.startswith("toy:"):
        attack = model.card.get("attack")  # a bundled model is measured against its own trigger
    held_out = toyworld.generate(args.world, args.n, seed=args.seed, objects=(1, 1), split="test")
    result = evaluate(model, held_out.images, held_out.primary, held_out.vocab, attack, seed=args.seed)
    result.update(model=args.model, world=args.world, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = f"{args.model}: CA {100 * result['ca']:.1f}% on {result['n']} {args.world} scenes"
        if "asr" in result:
            line += f", ASR {100 * result['asr']:.1f}% under {result['attack']} ({result['n_asr']} images)"
        print(line)
    return EXIT_CLEAN


def _cmd_toyworld_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train_toy_model

    config = TrainConfig(
        world=args.world, attack=None if args.clean else args.attack, rate=args.rate,
        scenes=args.scenes, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
        threads=args.threads,
    )
    card = train_toy_model(config, args.out, progress=not args.quiet)
    asr = "" if card["asr"] is None else f", ASR {100 * card['asr']:.1f}%"
    print(f"wrote {args.out}: CA {100 * card['ca']:.1f}%{asr}, {card['train_seconds']:.0f} s")
    return EXIT_CLEAN


def _cmd_scan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .models import ModelLoadError, load_model
    from .probe import load_probe, load_vocab
    from .scan import ScanConfig, scan

    try:
        model = load_model(args.model, runtime=args.runtime, device=args.device)
    except ModelLoadError as exc:
        print(f"clipguard scan: cannot load {args.model}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    probe = load_probe(args.probe, model, seed=args.seed, limit=args.limit)
    for s in probe.skipped:
        print(f"skipped {s['input']}: {s['reason']}", file=sys.stderr)
    if len(probe.images) == 0:
        print("clipguard scan: nothing to scan (no readable probe images)", file=sys.stderr)
        return EXIT_NOTHING
    vocab = load_vocab(args.vocab or _default_vocab(args, model))
    report = scan(model, probe.images, vocab, args.oracle, ScanConfig(seed=args.seed),
                  progress=not args.quiet, skipped=probe.skipped)
    out = Path(args.out)
    report.to_json(out / "report.json")
    report.to_html(out / "report.html")
    print(f"{args.model}: {report.verdict} (score {report.score:.3f}); affected labels: "
          f"{', '.join(report.affected_labels) or 'none'}; {len(report.victims)} victims in "
          f"{len(probe.images)} probe images -> {out / 'report.html'}")
    return EXIT_FOUND if report.verdict == "backdoored" else EXIT_CLEAN


def _cmd_demo(args: argparse.Namespace) -> int:
    """Scan the bundled toy:badnet on a toy probe set, show what was found, measure it."""
    import time
    from pathlib import Path

    from . import toyworld
    from .evaluate import evaluate
    from .models import load_model
    from .probe import load_probe
    from .scan import ScanConfig, scan

    out = Path(args.out)
    t0 = time.perf_counter()
    model = load_model(args.model)
    probe = load_probe(f"toy:shapes:{args.probe}:{args.rate}", model, seed=args.seed)
    vocab = toyworld.vocabulary("shapes")
    report = scan(model, probe.images, vocab, args.oracle, ScanConfig(seed=args.seed), progress=not args.quiet)
    t_scan = time.perf_counter() - t0
    held_out = toyworld.generate("shapes", 1000, seed=args.seed + 1, objects=(1, 1), split="test")
    before = evaluate(model, held_out.images, held_out.primary, vocab, model.card.get("attack"), seed=args.seed)
    truth = set(int(i) for i in probe.poisoned) if probe.poisoned is not None else set()
    found = {v["index"] for v in report.victims}
    record = {
        "model": args.model, "probe": {"images": len(probe.images), "poisoned": len(truth), "attack": probe.attack},
        "scan": {"verdict": report.verdict, "score": report.score, "affected_labels": report.affected_labels,
                 "victims": len(found), "victim_precision": len(found & truth) / max(1, len(found)),
                 "victim_recall": len(found & truth) / max(1, len(truth))},
        "before": {"ca": before["ca"], "asr": before.get("asr")},
        "seconds": {"scan": round(t_scan, 2), **{k: round(v, 3) for k, v in report.timings.items() if isinstance(v, float)}},
    }
    report.to_json(out / "report.json")
    report.to_html(out / "report.html")
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    s = record["scan"]
    print(f"model         {args.model} (card: {model.card.get('attack')})")
    print(f"probe         {len(probe.images)} toy scenes, {len(truth)} carrying the trigger")
    print(f"verdict       {s['verdict']} (score {s['score']:.3f}), affected labels: {', '.join(s['affected_labels']) or 'none'}")
    print(f"victims       {s['victims']} found, precision {s['victim_precision']:.2f}, recall {s['victim_recall']:.2f}")
    print(f"CA / ASR      {100 * before['ca']:.1f}% / {100 * (before.get('asr') or 0):.1f}% (held-out scenes)")
    print(f"scan time     {t_scan:.1f} s")
    print(f"report        {out / 'report.html'}")
    return EXIT_FOUND if report.verdict == "backdoored" else EXIT_CLEAN


def _default_vocab(args: argparse.Namespace, model: object) -> str:
    if args.probe.startswith("toy:"):
        return "toy:" + args.probe.split(":")[1]
    world = (getattr(model, "card", None) or {}).get("world")
    if world:
        return f"toy:{world}"
    raise ValueError("--vocab is required for a folder probe and a model without a toy world")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clipguard", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="versions, what was built, live execution providers")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)

    ev = sub.add_parser("evaluate", help="clean accuracy and attack success rate on held-out toy scenes")
    ev.add_argument("model", help="model spec: toy:NAME, dir:PATH, open_clip:ARCH:PATH, hf:DIR, onnx:DIR")
    ev.add_argument("--world", default="shapes", help="toy world of the evaluation scenes")
    ev.add_argument("--attack", help="attack spec, e.g. badnet:target=star,size=6 (toy models: their own)")
    ev.add_argument("--n", type=int, default=2000, help="held-out single-object scenes")
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--runtime", choices=["onnx", "torch"], default="onnx")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    demo = sub.add_parser("demo", help="scan the bundled toy:badnet offline and show what was found")
    demo.add_argument("--model", default="toy:badnet")
    demo.add_argument("--probe", type=int, default=500, help="probe scenes")
    demo.add_argument("--rate", type=float, default=0.02, help="share of probe scenes carrying the trigger")
    demo.add_argument("--oracle", default="classical")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="clipguard-demo")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    sc = sub.add_parser("scan", help="scan a model for a backdoor with a probe set and an oracle")
    sc.add_argument("model", help="model spec: toy:NAME, dir:PATH, open_clip:ARCH:PATH, hf:DIR, onnx:DIR")
    sc.add_argument("--probe", required=True, help="toy:WORLD:N[:RATE[:ATTACK]] or a folder of images")
    sc.add_argument("--vocab", help="toy:WORLD or a JSON vocabulary file (default: the probe's world)")
    sc.add_argument("--oracle", default="classical", help="classical, toy, or onnx:PATH")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--limit", type=int, help="scan at most this many folder images")
    sc.add_argument("--runtime", choices=["onnx", "torch"], default="onnx")
    sc.add_argument("--device", default="auto")
    sc.add_argument("--out", required=True, help="folder for report.json and report.html")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(func=_cmd_scan)

    tw = sub.add_parser("toyworld", help="toy worlds: train fixture models")
    tw_sub = tw.add_subparsers(dest="toyworld_command", required=True, parser_class=_Parser)
    tr = tw_sub.add_parser("train", help="train a tiny open_clip model, clean or poisoned, on CPU")
    tr.add_argument("--world", default="shapes")
    group = tr.add_mutually_exclusive_group()
    group.add_argument("--attack", default="badnet:target=star", help="attack spec used to poison")
    group.add_argument("--clean", action="store_true", help="train without poisoning")
    tr.add_argument("--rate", type=float, default=0.03, help="share of training pairs poisoned")
    tr.add_argument("--scenes", type=int, default=16000)
    tr.add_argument("--steps", type=int, default=3000)
    tr.add_argument("--batch", type=int, default=128)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all)")
    tr.add_argument("--out", required=True, help="output model folder")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_toyworld_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # the CLI's contract: a clear message and exit code 2, no traceback
        print(f"clipguard {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
