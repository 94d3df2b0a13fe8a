"""The ``slonik`` command. Subcommands arrive with the layers they wrap."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from aio import io_uring_available


def _cmd_info(args: argparse.Namespace) -> int:
    ok, reason = io_uring_available()
    methods = {"sync": (True, "always available"),
               "worker": (True, "always available"),
               "io_uring": (ok, reason)}
    if args.json:
        print(json.dumps({name: {"available": a, "detail": d} for name, (a, d) in methods.items()}))
    else:
        print(f"{'io_method':<10} {'available':<10} detail")
        for name, (available, detail) in methods.items():
            print(f"{name:<10} {'yes' if available else 'no':<10} {detail}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slonik",
        description="Slonik: an embedded storage engine built the way PostgreSQL 18 builds "
                    "its storage stack.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    info = sub.add_parser("info", help="which io methods work on this machine, and why not")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
