"""The ``slonik`` command. Subcommands arrive with the layers they wrap."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from aio import io_uring_available
from engine.bench import add_arguments as add_bench_aio_arguments
from engine.bench import cmd_bench_aio
from engine.bench_scan import add_arguments as add_bench_scan_arguments
from engine.bench_scan import cmd_bench_scan
from engine.bench_wal import add_arguments as add_bench_wal_arguments
from engine.bench_wal import cmd_bench_wal
from engine.demo import run_demo
from engine.waltools import (
    add_controldata_arguments,
    add_waldump_arguments,
    cmd_controldata,
    cmd_waldump,
)


def _cmd_info(args: argparse.Namespace) -> int:
    ok, reason = io_uring_available()
    methods = {"sync": (True, "always available"),
               "worker": (True, "always available"),
               "io_uring": (ok, reason)}
    auto = "io_uring" if ok else "worker"
    if args.json:
        print(json.dumps({**{name: {"available": a, "detail": d}
                             for name, (a, d) in methods.items()}, "auto": auto}))
    else:
        print(f"{'io_method':<10} {'available':<10} detail")
        for name, (available, detail) in methods.items():
            print(f"{name:<10} {'yes' if available else 'no':<10} {detail}")
        print(f"io_method=auto picks {auto} here")
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
    demo = sub.add_parser("demo", help="show the storage stack at work on every io method")
    demo.add_argument("--size-mb", type=int, default=64, help="relation size (default 64)")
    demo.add_argument("--dir", default=None, help="keep the files here (default: a temp dir)")
    demo.set_defaults(func=lambda a: run_demo(a.size_mb, a.dir))
    bench = sub.add_parser("bench", help="benchmarks (fio as the device baseline)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK")
    bench_sub.required = True
    bench_aio = bench_sub.add_parser(
        "aio", help="O_DIRECT reads through each io method against fio, same file, same run")
    add_bench_aio_arguments(bench_aio)
    bench_aio.set_defaults(func=cmd_bench_aio)
    bench_scan = bench_sub.add_parser(
        "scan", help="a relation scanned through a read stream with checksums, per io method, "
                     "cold and warm, against fio")
    add_bench_scan_arguments(bench_scan)
    bench_scan.set_defaults(func=cmd_bench_scan)
    bench_wal = bench_sub.add_parser(
        "wal", help="WAL insert rate, durable commits/s (1 and 8 threads) and recovery replay "
                    "per io method, against fio's 8 KiB write + fdatasync rate")
    add_bench_wal_arguments(bench_wal)
    bench_wal.set_defaults(func=cmd_bench_wal)
    controldata = sub.add_parser("controldata", help="print a data directory's control file")
    add_controldata_arguments(controldata)
    controldata.set_defaults(func=cmd_controldata)
    waldump = sub.add_parser("waldump", help="print a data directory's WAL records, one a line")
    add_waldump_arguments(waldump)
    waldump.set_defaults(func=cmd_waldump)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
