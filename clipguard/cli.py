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
    )
    card = train_toy_model(config, args.out, progress=not args.quiet)
    asr = "" if card["asr"] is None else f", ASR {100 * card['asr']:.1f}%"
    print(f"wrote {args.out}: CA {100 * card['ca']:.1f}%{asr}, {card['train_seconds']:.0f} s")
    return EXIT_CLEAN


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
