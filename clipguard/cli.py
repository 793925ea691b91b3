"""The ``clipguard`` command line: a thin layer over the public functions.

Exit codes (as modelscan's): 0 nothing found, 1 backdoor found, 2 error, 3 nothing scanned
(or nothing to repair), 4 usage error, 5 inconclusive (the scan could not have seen a backdoor,
or a strong suspect failed its confirmation: never read as clean). ``clipguard zoo``: 1 if any
model is backdoored, else 2 if any scan failed, else 5 if any is inconclusive, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR, EXIT_NOTHING, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4, 5
VERDICT_EXIT = {"clean": EXIT_CLEAN, "backdoored": EXIT_FOUND, "inconclusive": EXIT_INCONCLUSIVE}
FINETUNE_SET = "finetune_set.npz"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits with 2; usage errors are 4 here
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
    from .evaluate import evaluate_toy
    from .models import load_model

    model = load_model(args.model, runtime=args.runtime, device=args.device)
    attack = args.attack
    if attack is None and args.model.startswith("toy:"):
        attack = model.card.get("attack")  # a bundled model is measured against its own trigger
    result = evaluate_toy(model, args.world, attack, n=args.n, seed=args.seed)
    if args.json:
        print(json.dumps({**result.to_dict(), "model": args.model}, indent=2))
    else:
        line = f"{args.model}: CA {100 * result.ca:.1f}% on {result.n} {args.world} scenes"
        if result.asr is not None:
            line += f", ASR {100 * result.asr:.1f}% under {result.attack} ({result.n_asr} images)"
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
    from .repair import build_finetune_set
    from .scan import ScanConfig, scan

    try:
        model = load_model(args.model, runtime=args.runtime, device=args.device, precision=args.precision)
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
    report = scan(model, probe.images, vocab, args.oracle, ScanConfig(seed=args.seed), mode=args.mode,
                  progress=not args.quiet, skipped=probe.skipped)
    out = Path(args.out)
    report.to_json(out / "report.json")
    report.to_html(out / "report.html")
    if report.verdict == "backdoored":  # what `clipguard repair --scan DIR` fine-tunes on
        build_finetune_set(report, seed=args.seed).save(out / FINETUNE_SET)
    print(summary_line(args.model, report) + f" -> {out / 'report.html'}")
    return VERDICT_EXIT[report.verdict]


def summary_line(name: str, r: Any) -> str:
    """The verdict, its reason, the affected labels and the suspects that failed confirmation
    (``r``: a ScanReport)."""
    line = (f"{name}: {r.verdict} (score {r.score:.3f}); affected labels: {', '.join(r.affected_labels) or 'none'}; "
            f"{len(r.victims)} victims in {r.probe_size} probe images; {r.reason}")
    inputs = r.timings.get("encoded_inputs")
    if inputs and r.probe_size:
        line += f"; {inputs / r.probe_size:.1f} encoder inputs per probe image"
    if r.timings.get("synthesis_passes"):
        line += (f" (synthesis apart: {r.timings['synthesis_passes']:,} forward+backward passes, "
                 f"{r.timings.get('synthesis_encoded_inputs', 0):,} encoder inputs)")
    unconfirmed = [s for s in r.suspects if not s.confirmed]
    if unconfirmed:
        line += "; unconfirmed suspects: " + ", ".join(
            f"{s.name} ({'+'.join(s.evidence)}, anomaly {s.anomaly:.1f}, {len(s.victims)} victims"
            f"{', explained away: see the report' if s.rejected else ''})" for s in unconfirmed)
    return line


def _toy_metrics(model: object, card: dict, seed: int, n: int = 2000) -> dict | None:
    """CA and ASR on held-out scenes of a model's toy world under its own attack; None if the
    card names no toy world."""
    from .evaluate import evaluate_toy

    world = card.get("world")
    if not world:
        return None
    r = evaluate_toy(model, world, card.get("attack"), n=n, seed=seed)
    return {"ca": r.ca, "asr": r.asr}


def _repair_and_save(model_spec: str, fset: Any, out: Path, args: argparse.Namespace) -> tuple[Any, dict]:
    """Repair, write the model (input format + ONNX) and return (repaired, record)."""
    from .models import load_model
    from .repair import RepairConfig, repair, save_repaired

    torch_model = load_model(model_spec, runtime="torch", device="cpu" if args.device == "auto" else args.device)
    result = repair(torch_model, fset, RepairConfig(seed=args.seed, steps=args.steps), progress=not args.quiet)
    save_repaired(result.model, out / "model")
    return result.model, result.record.to_dict()


def _cmd_repair(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .models import load_model
    from .repair import FinetuneSet

    out = Path(args.out)
    if args.scan:
        path = Path(args.scan) / FINETUNE_SET
        if not path.is_file():
            report_file = Path(args.scan) / "report.json"
            why = "the scan found no backdoor" if report_file.is_file() else "it is not a scan folder"
            print(f"clipguard repair: {path} does not exist ({why}); nothing to repair", file=sys.stderr)
            return EXIT_NOTHING
        fset = FinetuneSet.load(path)
    else:
        from .probe import load_probe, load_vocab
        from .repair import build_finetune_set
        from .scan import ScanConfig, scan

        model = load_model(args.model, device=args.device)
        probe = load_probe(args.probe, model, seed=args.seed)
        for s in probe.skipped:
            print(f"skipped {s['input']}: {s['reason']}", file=sys.stderr)
        if len(probe.images) == 0:
            print("clipguard repair: nothing to scan (no readable probe images)", file=sys.stderr)
            return EXIT_NOTHING
        vocab = load_vocab(args.vocab or _default_vocab(args, model))
        report = scan(model, probe.images, vocab, args.oracle, ScanConfig(seed=args.seed), mode=args.mode,
                      progress=not args.quiet, skipped=probe.skipped)
        report.to_json(out / "scan" / "report.json")
        report.to_html(out / "scan" / "report.html")
        if report.verdict != "backdoored":
            print(f"clipguard repair: {summary_line(args.model, report)}; nothing to repair "
                  f"({out / 'scan' / 'report.html'})", file=sys.stderr)
            return EXIT_NOTHING
        fset = build_finetune_set(report, seed=args.seed)
    repaired, record = _repair_and_save(args.model, fset, out, args)
    before_model = load_model(args.model, runtime="torch", device="cpu")
    card = before_model.card or {}
    record.update(model=args.model, repaired=str(out / "model"),
                  before=_toy_metrics(before_model, card, args.seed), after=_toy_metrics(repaired, card, args.seed))
    out.mkdir(parents=True, exist_ok=True)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    est = record["estimated_asr"]
    line = (f"repaired {args.model} with {record['pairs']} pairs in {record['steps']} steps ({record['seconds']:.0f} s): "
            f"estimated ASR {_pct(est['before'])} -> {_pct(est['after'])}")
    if record["before"]:
        b, a = record["before"], record["after"]
        line += f"; CA {_pct(b['ca'])} -> {_pct(a['ca'])}, ASR {_pct(b['asr'])} -> {_pct(a['asr'])}"
    print(line + f" -> {out / 'model'}")
    return EXIT_CLEAN


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _cmd_demo(args: argparse.Namespace) -> int:
    """Scan a bundled toy model (toy:badnet by default), repair it on the compact set the scan
    builds, and measure CA and ASR before and after, offline."""
    import time
    from pathlib import Path

    from . import toyworld
    from .models import load_model
    from .probe import load_probe
    from .repair import build_finetune_set
    from .scan import ScanConfig, scan

    out = Path(args.out)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_model(args.model)
    world = (getattr(model, "card", None) or {}).get("world")
    if not world:
        raise ValueError(f"the demo needs a toy model (toy:NAME or a folder with a toy card), got {args.model!r}")
    probe = load_probe(f"toy:{world}:{args.probe}:{args.rate}", model, seed=args.seed)
    vocab = toyworld.vocabulary(world)
    report = scan(model, probe.images, vocab, args.oracle, ScanConfig(seed=args.seed), mode=args.mode,
                  progress=not args.quiet)
    report.to_json(out / "report.json")
    report.to_html(out / "report.html")
    seconds["scan"] = time.perf_counter() - t0
    truth = set(int(i) for i in probe.poisoned) if probe.poisoned is not None else set()
    found = {v.index for v in report.victims}
    record: dict = {
        "model": args.model, "probe": {"images": len(probe.images), "poisoned": len(truth), "attack": probe.attack},
        "scan": {"verdict": report.verdict, "score": report.score, "affected_labels": report.affected_labels,
                 "victims": len(found), "victim_precision": len(found & truth) / max(1, len(found)),
                 "victim_recall": len(found & truth) / max(1, len(truth)),
                 "timings": {k: round(v, 3) for k, v in report.timings.items() if isinstance(v, float)}},
    }
    t0 = time.perf_counter()
    record["before"] = _toy_metrics(model, model.card, args.seed)
    seconds["evaluate"] = time.perf_counter() - t0
    if report.verdict == "backdoored":
        t0 = time.perf_counter()
        fset = build_finetune_set(report, seed=args.seed)
        repaired, rep = _repair_and_save(args.model, fset, out, args)
        seconds["repair"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        record["after"] = _toy_metrics(repaired, model.card, args.seed)
        seconds["evaluate"] += time.perf_counter() - t0
        record["pairs"] = rep["pairs"]
        record["repair"] = {k: rep[k] for k in ("pairs_by_kind", "steps", "stopped_early", "estimated_asr")}
        t0 = time.perf_counter()  # the repaired model, scanned again with the same probe
        again = scan(load_model(f"dir:{out / 'model'}"), probe.images, vocab, args.oracle, ScanConfig(seed=args.seed),
                     mode=args.mode)
        record["rescan"] = {"verdict": again.verdict, "score": again.score, "affected_labels": again.affected_labels}
        seconds["rescan"] = time.perf_counter() - t0
    record["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    s = record["scan"]
    print(f"model     {args.model} ({model.card.get('attack')})")
    print(f"probe     {len(probe.images)} toy scenes, {len(truth)} carrying the trigger")
    print(f"scan      {s['verdict']} (score {s['score']:.3f}; {report.reason}), affected labels: {', '.join(s['affected_labels']) or 'none'}; "
          f"{s['victims']} victims, precision {s['victim_precision']:.2f}, recall {s['victim_recall']:.2f}")
    print(f"\n{'':10}{'CA':>8}{'ASR':>8}")
    for name in ("before", "after"):
        if record.get(name):
            print(f"{name:10}{_pct(record[name]['ca']):>8}{_pct(record[name]['asr']):>8}")
    if "pairs" in record:
        print(f"\nrepair    {record['pairs']} pairs, {record['repair']['steps']} steps -> {out / 'model'}")
        print(f"rescan    {record['rescan']['verdict']} (score {record['rescan']['score']:.3f})")
    print("seconds   " + ", ".join(f"{k} {v:.1f}" for k, v in record["seconds"].items()))
    print(f"report    {out / 'report.html'}\nrecord    {out / 'record.json'}")
    return EXIT_CLEAN  # the demo ran; `clipguard scan` is the command whose exit code is a verdict


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import ZooConfig, exit_code, zoo

    cfg = ZooConfig(probe=args.probe, vocab=args.vocab, mode=args.mode, oracle=args.oracle, engine=args.engine,
                    workers=args.workers, address=args.address, timeout=args.timeout, arch=args.arch, seed=args.seed,
                    limit=args.limit)
    summary = zoo(args.source, args.out, cfg, progress=not args.quiet)
    for s in summary["skipped"]:
        print(f"skipped {s['input']}: {s['reason']}", file=sys.stderr)
    for r in sorted(summary["models"], key=lambda r: -(r["score"] or 0.0)):
        what = r["verdict"] or f"error: {r['error']}"
        print(f"{r['name']}: {what}" + (f" (score {r['score']:.3f}; {', '.join(r['affected']) or 'no label'})"
                                        if r["verdict"] else ""))
    c = summary["counts"]
    print(f"{len(summary['models'])} models: {c['backdoored']} backdoored, {c['inconclusive']} inconclusive, "
          f"{c['clean']} clean, {c['failed']} failed -> {Path(args.out) / 'zoo.html'}")
    return exit_code(summary)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .guard import Guard
    from .models import load_model
    from .probe import load_vocab
    from .serve import run

    model = load_model(args.model, device=args.device)
    vocab = args.vocab or _default_vocab(args, model)
    with Guard(model, load_vocab(vocab), oracle=args.oracle, report=args.report, max_batch=args.max_batch) as guard:
        known = ", ".join(guard.names[c] for c in guard.known) or "none"
        print(f"clipguard serve: {args.model} on http://{args.host}:{args.port} (mode {guard.mode}; known triggers: "
              f"{known}); POST /classify, GET /health, GET /alarms", file=sys.stderr)
        run(guard, args.host, args.port)
    return EXIT_CLEAN


def _default_vocab(args: argparse.Namespace, model: object) -> str:
    """Without --vocab: a toy probe's world, else a toy model's own world."""
    probe = getattr(args, "probe", None) or ""
    if probe.startswith("toy:"):
        return "toy:" + probe.split(":")[1]
    world = (getattr(model, "card", None) or {}).get("world")
    if world:
        return f"toy:{world}"
    raise ValueError("--vocab is required for a folder probe or a model without a toy world")


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

    demo = sub.add_parser("demo", help="scan, repair and measure the bundled toy:badnet, offline")
    demo.add_argument("--model", default="toy:badnet", help="a toy model: toy:NAME or dir:PATH with a toy card")
    demo.add_argument("--probe", type=int, default=500, help="probe scenes")
    demo.add_argument("--rate", type=float, default=0.02, help="share of probe scenes carrying the trigger")
    demo.add_argument("--oracle", default="classical")
    demo.add_argument("--mode", choices=["auto", "probe", "synthesize"], default="auto",
                    help="probe: triggers the probe images carry; synthesize: triggers synthesized from clean "
                         "images; auto: both (default)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="clipguard-demo")
    demo.add_argument("--steps", type=int, default=300, help="repair steps at most (it stops early)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    rp = sub.add_parser("repair", help="fine-tune a backdoor away on the compact set a scan builds")
    rp.add_argument("model", help="model spec: toy:NAME, dir:PATH, open_clip:ARCH:PATH, hf:DIR")
    source = rp.add_mutually_exclusive_group(required=True)
    source.add_argument("--scan", help="a `clipguard scan --out` folder of this model")
    source.add_argument("--probe", help="scan first with this probe (toy:WORLD:N[:RATE[:ATTACK]] or a folder)")
    rp.add_argument("--vocab", help="with --probe: toy:WORLD or a JSON vocabulary file")
    rp.add_argument("--oracle", default="classical", help="with --probe: classical, toy, or onnx:PATH")
    rp.add_argument("--mode", choices=["auto", "probe", "synthesize"], default="auto",
                    help="probe: triggers the probe images carry; synthesize: triggers synthesized from clean "
                         "images; auto: both (default)")
    rp.add_argument("--steps", type=int, default=300, help="fine-tuning steps at most (it stops early)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--device", default="auto")
    rp.add_argument("--out", required=True, help="folder for model/ and record.json")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=_cmd_repair)

    sc = sub.add_parser("scan", help="scan a model for a backdoor with a probe set and an oracle")
    sc.add_argument("model", help="model spec: toy:NAME, dir:PATH, open_clip:ARCH:PATH, hf:DIR, onnx:DIR")
    sc.add_argument("--probe", required=True, help="toy:WORLD:N[:RATE[:ATTACK]] or a folder of images")
    sc.add_argument("--vocab", help="toy:WORLD or a JSON vocabulary file (default: the probe's world)")
    sc.add_argument("--oracle", default="classical", help="classical, toy, or onnx:PATH")
    sc.add_argument("--mode", choices=["auto", "probe", "synthesize"], default="auto",
                    help="probe: triggers the probe images carry; synthesize: triggers synthesized from clean "
                         "images; auto: both (default)")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--limit", type=int, help="scan at most this many folder images")
    sc.add_argument("--runtime", choices=["onnx", "torch"], default="onnx")
    sc.add_argument("--device", default="auto")
    sc.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                    help="int8: the ONNX image encoder quantized (CPU only, about 2x faster at ViT-B/32 size)")
    sc.add_argument("--out", required=True, help="folder for report.json and report.html")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(func=_cmd_scan)

    zo = sub.add_parser("zoo", help="scan every model of a folder or a list (resumable, one process per model)")
    zo.add_argument("source", help="a folder of models (searched recursively) or a .txt/.json list of model specs")
    zo.add_argument("--probe", required=True, help="toy:WORLD:N[:RATE[:ATTACK]] or a folder of images")
    zo.add_argument("--vocab", help="toy:WORLD or a JSON vocabulary file (default: the probe's world)")
    zo.add_argument("--oracle", default="classical", help="classical, toy, or onnx:PATH")
    zo.add_argument("--mode", choices=["auto", "probe", "synthesize"], default="auto",
                    help="auto (default): probe analysis and trigger synthesis; a zoo model comes without its data")
    zo.add_argument("--out", required=True, help="folder for results.jsonl, zoo.html/json/csv and models/NAME/")
    zo.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local: worker processes here; ray: tasks on Ray (clipguard[ray])")
    zo.add_argument("--workers", type=int, default=1, help="models scanned at once")
    zo.add_argument("--address", help="with --engine ray: an existing cluster (default: a local Ray for the run)")
    zo.add_argument("--timeout", type=float, default=3600.0, help="seconds per model before its worker is killed")
    zo.add_argument("--arch", help="open_clip architecture of checkpoints whose file name does not name one")
    zo.add_argument("--seed", type=int, default=0)
    zo.add_argument("--limit", type=int, help="at most this many folder probe images")
    zo.add_argument("--quiet", action="store_true")
    zo.set_defaults(func=_cmd_zoo)

    sv = sub.add_parser("serve", help="serve the model behind the guard over HTTP (clipguard[serve])")
    sv.add_argument("model", help="model spec: toy:NAME, dir:PATH, open_clip:ARCH:PATH, hf:DIR, onnx:DIR")
    sv.add_argument("--vocab", help="toy:WORLD or a JSON vocabulary file (default: a toy model's world)")
    sv.add_argument("--report", help="a `clipguard scan --out` folder of this model: its triggers are matched directly")
    sv.add_argument("--oracle", default="classical", help="classical, toy, or onnx:PATH (Algorithm 1 per request)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=32, help="concurrent requests batched together at most")
    sv.add_argument("--device", default="auto")
    sv.set_defaults(func=_cmd_serve)

    tw = sub.add_parser("toyworld", help="toy worlds: train fixture models")
    tw_sub = tw.add_subparsers(dest="toyworld_command", required=True, parser_class=_Parser)
    tr = tw_sub.add_parser("train", help="train a tiny open_clip model, clean or poisoned, on CPU")
    tr.add_argument("--world", default="shapes")
    group = tr.add_mutually_exclusive_group()
    group.add_argument("--attack", default="badnet:target=star", help="attack spec used to poison")
    group.add_argument("--clean", action="store_true", help="train without poisoning")
    tr.add_argument("--rate", type=float, default=0.1, help="share of training pairs poisoned")
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
