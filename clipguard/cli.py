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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clipguard", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="versions, what was built, live execution providers")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)
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
