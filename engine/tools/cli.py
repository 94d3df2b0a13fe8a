"""The ``slonik`` command: one subcommand per job, each a thin wrapper over the engine.

Data commands (``init``, ``put``, ``get``, ``del``, ``scan``, ``stats``, ``check``,
``dump``, ``load``) take the database directory first. Keys, values and store names are UTF-8 text on the command line
(``--hex``: keys and values are hexadecimal instead, both ways); ``get`` and ``scan`` write
values as their raw bytes (``--hex``/``--json`` for binary data). Every command but
``init`` refuses a directory that is not already a Slonik database, without writing to
it; ``get``/``scan`` refuse a store that does not exist without creating it, while ``put``
creates it (as ``db.kv(name)`` does).

Settings of ``Database.open`` are ``NAME=VALUE`` words after ``init DIR`` and ``-c
NAME=VALUE`` options elsewhere (PostgreSQL's ``postgres -c``), with ``--io-method`` as a
shortcut. Errors the engine raises on purpose (``SlonikError``), caller errors
(``ValueError``, ``TypeError``, ``KeyError``) and OS errors print one line to stderr and
exit 1; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence

from slonik.aio.core import IO_METHODS
from slonik.aio.errors import SlonikError
from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.database import Database
from slonik.engine.tools.bench import add_arguments as add_bench_aio_arguments
from slonik.engine.tools.bench import cmd_bench_aio, nonnegative_int, positive_float, positive_int
from slonik.engine.tools.bench_kv import add_arguments as add_bench_kv_arguments
from slonik.engine.tools.bench_kv import cmd_bench_kv
from slonik.engine.tools.bench_scan import add_arguments as add_bench_scan_arguments
from slonik.engine.tools.bench_scan import cmd_bench_scan
from slonik.engine.tools.bench_table import add_arguments as add_bench_table_arguments
from slonik.engine.tools.bench_table import cmd_bench_table
from slonik.engine.tools.bench_wal import add_arguments as add_bench_wal_arguments
from slonik.engine.tools.bench_wal import cmd_bench_wal
from slonik.engine.tools.check import check_database, recover_database
from slonik.engine.tools.demo import run_demo
from slonik.engine.tools.dump import dump_database, load_database, write_dump
from slonik.engine.tools.plot import add_plot_argument
from slonik.engine.tools.progress import Progress
from slonik.engine.tools.waltools import (
    add_controldata_arguments,
    add_waldump_arguments,
    cmd_controldata,
    cmd_waldump,
)
from slonik.storage.page import BLCKSZ
from slonik.wal.control import CONTROL_FILE_NAME

_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+\.?\d*[eE][+-]?\d+)$")


class CommandError(Exception):
    """A data command's clear refusal (exit 1, one line on stderr)."""


# --- helpers ---------------------------------------------------------------------------------

def _setting_value(text: str) -> object:
    """A ``NAME=VALUE`` word's value: int and float literals become numbers; everything else
    (``on``/``off``, ``128MB``, ``io_uring``) stays text for ``Database.open`` to parse."""
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    return text


def parse_setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a setting is NAME=VALUE, got {text!r}")
    return name, _setting_value(value.strip())


def _settings(args: argparse.Namespace) -> dict[str, object]:
    settings = dict(getattr(args, "settings", None) or ())
    if getattr(args, "io_method", None):
        settings["io_method"] = args.io_method
    return settings


def _require_database(path: str) -> str:
    """``path`` made absolute, refusing (nothing written) anything but a Slonik database."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise CommandError(f"no database at {path} (create one with: slonik init {path})")
    if not os.path.isdir(path):
        raise CommandError(f"{path} is not a directory, so not a Slonik database")
    if not os.path.exists(os.path.join(path, CONTROL_FILE_NAME)):
        raise CommandError(f"{path} is not a Slonik database (it has no {CONTROL_FILE_NAME}); "
                           f"nothing was changed")
    return path


def _open(args: argparse.Namespace) -> Database:
    return Database.open(_require_database(args.dir), **_settings(args))


def _encode(args: argparse.Namespace, text: str, what: str) -> bytes:
    if getattr(args, "hex", False):
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise CommandError(f"{what} is not hexadecimal: {text!r}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # argv bytes that are not UTF-8 arrive as surrogates: take them back as given.
        return os.fsencode(text)


def _text(data: bytes, as_hex: bool) -> str:
    return data.hex() if as_hex else data.decode("utf-8", "backslashreplace")


def _kv_store(db, name: str, *, create: bool):
    kinds = db.relations()
    kind = kinds.get(name)
    if kind is None and not create:
        stores = [n for n, k in kinds.items() if k == "kv"]
        raise CommandError(f"no KV store named {name!r} in {db.path} (stores: "
                           f"{', '.join(stores) if stores else 'none'})")
    if kind == "table":
        raise CommandError(f"{name!r} is a table, not a KV store")
    return db.kv(name)


# --- data commands ---------------------------------------------------------------------------

def _cmd_init(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.dir)
    if os.path.exists(os.path.join(path, CONTROL_FILE_NAME)):
        raise CommandError(f"{path} is already a Slonik database; nothing was changed")
    with Database.open(path, **_settings(args)) as db:
        s = db.settings
        method = db.io_method
    print(f"initialized a Slonik database in {path} (io_method {method}, wal_segment_size "
          f"{s.wal_segment_size} bytes, segment_size {s.segment_size} blocks)")
    return 0


def _cmd_put(args: argparse.Namespace) -> int:
    key = _encode(args, args.key, "KEY")
    value = _encode(args, args.value, "VALUE")
    with _open(args) as db:
        _kv_store(db, args.store, create=True)[key] = value
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    key = _encode(args, args.key, "KEY")
    with _open(args) as db:
        value = _kv_store(db, args.store, create=False).get(key)
    if value is None:
        raise CommandError(f"key {_text(key, args.hex)!r} not found in store {args.store!r}")
    out = sys.stdout
    if args.hex:
        out.write(value.hex() + "\n")
    else:
        out.flush()
        out.buffer.write(value + b"\n")
        out.buffer.flush()
    return 0


def _cmd_del(args: argparse.Namespace) -> int:
    key = _encode(args, args.key, "KEY")
    with _open(args) as db:
        store = _kv_store(db, args.store, create=False)
        if key not in store:
            raise CommandError(f"key {_text(key, args.hex)!r} not found in store "
                               f"{args.store!r}; nothing was changed")
        del store[key]
    return 0


def _relation_kind(db, name: str) -> str:
    kinds = db.relations()
    kind = kinds.get(name)
    if kind is None:
        raise CommandError(f"no KV store named {name!r} in {db.path}, and no table of that "
                           f"name (relations: {', '.join(sorted(kinds)) if kinds else 'none'})")
    return kind


def _cmd_scan(args: argparse.Namespace) -> int:
    with _open(args) as db:
        if _relation_kind(db, args.store) == "table":
            return _scan_table(args, db.table(args.store))
        return _scan_kv(args, db)


def _scan_kv(args: argparse.Namespace, db) -> int:
    start = None if args.start is None else _encode(args, args.start, "--start")
    stop = None if args.stop is None else _encode(args, args.stop, "--stop")
    out = sys.stdout
    n = 0
    store = _kv_store(db, args.store, create=False)
    if args.json:
        out.write("[")
    for key, value in store.items(start=start, stop=stop, reverse=args.reverse):
        if args.limit is not None and n >= args.limit:
            break
        if args.json:
            out.write(("," if n else "") + "\n  " + json.dumps(
                {"key": _text(key, args.hex), "value": _text(value, args.hex)}))
        elif args.hex:
            out.write(f"{key.hex()}\t{value.hex()}\n")
        else:
            out.flush()
            out.buffer.write(key + b"\t" + value + b"\n")
        n += 1
    if args.json:
        out.write("\n]\n" if n else "]\n")
    out.flush()
    return 0


# PostgreSQL's COPY text format: a tab between columns, \N for NULL, and these escapes.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_FLOAT_WORDS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def _copy_text(value: object) -> str:
    """One column value as PostgreSQL's COPY text format writes it (bytea as \\x hex)."""
    if value is None:
        return "\\N"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return _FLOAT_WORDS.get(repr(value), repr(value))
    return str(value).translate(_COPY_ESCAPES)


def _json_value(value: object) -> object:
    return "\\x" + value.hex() if isinstance(value, bytes) else value


def _scan_table(args: argparse.Namespace, table) -> int:
    """A table's rows in physical order: COPY text format lines, or a JSON array of
    objects keyed by column name (bytea as "\\x..." hex text)."""
    if args.start is not None or args.stop is not None or args.reverse or args.hex:
        raise CommandError(f"{args.store!r} is a table: --start, --stop, --reverse and --hex "
                           f"are for KV stores (a table scan is in physical order)")
    names = [name for name, _type in table.columns]
    out = sys.stdout
    n = 0
    if args.json:
        out.write("[")
    for row in table.scan():
        if args.limit is not None and n >= args.limit:
            break
        if args.json:
            out.write(("," if n else "") + "\n  " + json.dumps(
                {name: _json_value(v) for name, v in zip(names, row, strict=True)}))
        else:
            out.write("\t".join(_copy_text(v) for v in row) + "\n")
        n += 1
    if args.json:
        out.write("\n]\n" if n else "]\n")
    out.flush()
    return 0


def stats_report(stats) -> dict:
    """``db.stats()`` as plain JSON-able data."""
    return dataclasses.asdict(stats)


def format_stats(stats) -> str:
    """``db.stats()`` as text: the io method, a pg_stat_io-like table, then the rest."""
    lines = [f"io_method: {stats.io_method}", "",
             f"{'target/op':<20} {'ios':>10} {'bytes':>14} {'avg KiB':>8} {'wait ms':>10}"]
    for key, c in sorted(stats.aio.counters.items()):
        ios, nbytes = c.get("ios", 0), c.get("bytes", 0)
        lines.append(f"{key:<20} {ios:>10,} {nbytes:>14,} "
                     f"{(nbytes / ios / 1024 if ios else 0):>8.1f} "
                     f"{c.get('wait_ns', 0) / 1e6:>10.1f}")
    if not stats.aio.counters:
        lines.append("(no I/O yet)")
    b = stats.buffers
    lines += ["", f"buffers: shared_buffers {b.shared_buffers} pages, hits {b.hits:,}, reads "
                  f"{b.reads:,} in {b.read_ios:,} I/Os, writes {b.writes:,} in "
                  f"{b.write_ios:,} I/Os, evictions {b.evictions:,}, I/O wait "
                  f"{b.io_wait_ns / 1e6:.1f} ms"]
    w = stats.wal
    lines.append(f"wal: {w.records:,} records ({w.record_bytes:,} bytes, "
                 f"{w.full_page_images:,} full-page images), {w.flushes:,} flushes, "
                 f"{w.syncs:,} syncs")
    c = stats.checkpointer
    lines.append(f"checkpoints: {c.checkpoints} ({c.requested} requested, {c.timed} timed), "
                 f"{c.buffers_written:,} buffers written")
    t = stats.transactions
    lines.append(f"transactions: next xid {t.next_xid}, {t.commits:,} commits, "
                 f"{t.aborts:,} aborts, {t.conflicts:,} conflicts")
    lines.append(f"recovery at open: {'crash recovery, ' if stats.recovery_crashed else ''}"
                 f"{stats.recovery_replayed:,} records replayed in "
                 f"{stats.recovery_seconds:.2f} s")
    lines += ["", f"{'relation':<20} {'kind':<6} {'relfilenumber':>13} {'blocks':>8} "
                  f"{'bytes':>14} {'live keys':>10} {'dead':>8}"]
    for r in stats.relations:
        live = "" if r.live_keys is None else f"{r.live_keys:,}"
        lines.append(f"{r.name:<20} {r.kind:<6} {r.relfilenumber:>13} {r.nblocks:>8,} "
                     f"{r.bytes:>14,} {live:>10} {r.dead_versions:>8,}")
    if not stats.relations:
        lines.append("(no relations)")
    return "\n".join(lines)


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as db:
        stats = db.stats()
    print(json.dumps(stats_report(stats), indent=2) if args.json else format_stats(stats))
    return 0


def _base_blocks(path: str) -> int:
    """Blocks in the files under ``base/`` (the check's progress total)."""
    base = os.path.join(path, "base")
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    return sum(os.path.getsize(os.path.join(base, n)) // BLCKSZ for n in names)


def _cmd_check(args: argparse.Namespace) -> int:
    path = _require_database(args.dir)
    method = args.io_method or "auto"
    if args.recover:
        recover_database(path, io_method=method)
    with Progress("checking pages", _base_blocks(path), unit="pages",
                  enabled=not args.json and sys.stderr.isatty()) as p:
        report = check_database(path, io_method=method, progress=p.advance)
    print(report.to_json() if args.json else format_check(report))
    return 0 if report.ok else 1


def _block_line(what: str, b) -> str:
    return (f"{what}: relation {b.relation!r} (relfilenumber {b.relfilenumber}, {b.fork} "
            f"fork) block {b.block}: {b.reason}")


def format_check(report) -> str:
    """A ``CheckReport`` as text: whether recovery is pending, one line per relation fork,
    then each bad block (corrupt, or torn/stale and repaired by recovery)."""
    lines = [f"checked {report.path} (io_method {report.io_method or '-'}): "
             f"{report.pages_checked:,} pages in {len(report.relations)} relation forks"]
    if report.recovery_needed:
        lines.append(f"recovery needed: the database was not shut down cleanly (state "
                     f"{report.state}); replay would start at the redo point "
                     f"{report.redo_lsn}. Pages may be torn or stale until then. Nothing was "
                     f"changed: run 'slonik check --recover' (or open the database) to "
                     f"recover first")
    if report.wal_error:
        lines.append(f"the WAL could not be read from the redo point to its end "
                     f"({report.wal_error}); bad pages are all counted as corrupt")
    if report.open_error:
        lines.append(report.open_error)
    torn = report.recovery_needed   # the column of pages replay restores whole
    lines += ["", f"{'relation':<20} {'kind':<8} {'relfilenumber':>13} {'fork':<5} "
                  f"{'pages':>9} {'corrupt':>8}" + (f" {'torn':>6}" if torn else "")]
    for r in report.relations:
        lines.append(f"{r.name:<20} {r.kind:<8} {r.relfilenumber:>13} {r.fork:<5} "
                     f"{r.pages_checked:>9,} {r.corrupt_pages:>8,}"
                     + (f" {r.repairable_pages:>6,}" if torn else ""))
    if report.corrupt_blocks or report.repairable_blocks:
        lines.append("")
    for b in report.corrupt_blocks:
        lines.append(_block_line("corrupt block", b))
    for b in report.repairable_blocks:
        lines.append(_block_line("torn or stale block", b))
    n = len(report.corrupt_blocks)
    lines.append("")
    lines.append(f"{n} corrupt block{'s' if n != 1 else ''} found" if n
                 else "no corrupt blocks found")
    if report.repairable_blocks:
        k = len(report.repairable_blocks)
        lines.append(f"{k} torn or stale block{'s' if k != 1 else ''} that recovery "
                     f"restores from full-page images")
    if report.index_problems:
        lines += ["", *report.index_problems]
    if report.indexes_checked or report.index_problems:
        lines.append(f"{report.indexes_checked} table indexes checked against their heaps: "
                     f"{len(report.index_problems)} problems")
    if report.recovery_needed:
        lines.append(f"recovery needed from {report.redo_lsn}")
    return "\n".join(lines)


def _cmd_dump(args: argparse.Namespace) -> int:
    path = _require_database(args.dir)
    method = args.io_method or "auto"
    with Progress("dumping", 0, unit="pages", enabled=sys.stderr.isatty()) as p:
        if args.out is None:
            sys.stdout.flush()
            summary = write_dump(path, sys.stdout.buffer, io_method=method, progress=p)
            sys.stdout.buffer.flush()
            return 0
        summary = dump_database(path, args.out, io_method=method, progress=p)
    print(f"dumped {len(summary.relations)} relations ({summary.rows:,} rows, "
          f"{summary.pages_read:,} pages) from {path} to {os.path.abspath(args.out)}")
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    path = _require_database(args.dir)
    if args.file != "-":
        summary = load_database(path, args.file, **_settings(args))
    else:
        # Load reads the script twice (validate, then write): spool stdin to a file first.
        with tempfile.NamedTemporaryFile(prefix="slonik-load-", suffix=".sql") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.flush()
            summary = load_database(path, spool.name, **_settings(args))
    print(f"loaded {len(summary.relations)} relations ({summary.rows:,} rows) into {path}")
    return 0


# --- other commands --------------------------------------------------------------------------

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


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.keys, args.dir, buffered=args.buffered, table_mb=args.table_mb,
                    crash_seconds=args.crash_seconds)


def _add_db_options(p: argparse.ArgumentParser, *, settings: bool = True) -> None:
    p.add_argument("dir", metavar="DIR", help="the database directory")
    p.add_argument("--io-method", choices=IO_METHODS, default=None,
                   help="io method for this run (default: auto)")
    if settings:
        p.add_argument("-c", dest="settings", metavar="NAME=VALUE", type=parse_setting,
                       action="append", default=[],
                       help="a Database.open setting, e.g. -c shared_buffers=64MB (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slonik",
        description="Slonik: an embedded storage engine built the way PostgreSQL 18 builds "
                    "its storage stack. Keys and values are UTF-8 text on the command line "
                    "(--hex for hexadecimal).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="what to do (slonik COMMAND --help for its arguments)")
    sub.required = True

    init = sub.add_parser("init", help="create a new database directory")
    init.add_argument("dir", metavar="DIR", help="the database directory (new or empty)")
    init.add_argument("settings", metavar="NAME=VALUE", type=parse_setting, nargs="*",
                      help="settings, e.g. wal_segment_size=1MB segment_size=1024 "
                           "(fixed at creation) or io_method=sync")
    init.add_argument("--io-method", choices=IO_METHODS, default=None,
                      help="io method for this run (default: auto)")
    init.set_defaults(func=_cmd_init)

    put = sub.add_parser("put", help="store KEY=VALUE in a KV store (created if missing)")
    _add_db_options(put)
    put.add_argument("store", metavar="STORE", help="the KV store's name")
    put.add_argument("key", metavar="KEY", help="the key (UTF-8 text, or hex with --hex)")
    put.add_argument("value", metavar="VALUE", help="the value (UTF-8 text, or hex with --hex)")
    put.add_argument("--hex", action="store_true", help="KEY and VALUE are hexadecimal")
    put.set_defaults(func=_cmd_put)

    get = sub.add_parser("get", help="print a key's value (exit 1 when missing)")
    _add_db_options(get)
    get.add_argument("store", metavar="STORE", help="the KV store's name")
    get.add_argument("key", metavar="KEY", help="the key (UTF-8 text, or hex with --hex)")
    get.add_argument("--hex", action="store_true", help="KEY and the output are hexadecimal")
    get.set_defaults(func=_cmd_get)

    delete = sub.add_parser("del", help="delete a key from a KV store (exit 1 when missing)")
    _add_db_options(delete)
    delete.add_argument("store", metavar="STORE", help="the KV store's name")
    delete.add_argument("key", metavar="KEY", help="the key (UTF-8 text, or hex with --hex)")
    delete.add_argument("--hex", action="store_true", help="KEY is hexadecimal")
    delete.set_defaults(func=_cmd_del)

    scan = sub.add_parser("scan", help="print a KV store's pairs in key order (KEY<TAB>VALUE) "
                                       "or a table's rows (PostgreSQL's COPY text format)")
    _add_db_options(scan)
    scan.add_argument("store", metavar="NAME", help="the KV store's or table's name")
    scan.add_argument("--start", default=None, help="first key (inclusive; KV stores)")
    scan.add_argument("--stop", default=None, help="end key (exclusive; KV stores)")
    scan.add_argument("--reverse", action="store_true",
                      help="descending key order (KV stores)")
    scan.add_argument("--limit", type=nonnegative_int, default=None,
                      help="print at most this many pairs or rows")
    scan.add_argument("--json", action="store_true",
                      help="a JSON array: {key, value} per pair (text, or hex with --hex), "
                           "or one object per row keyed by column (bytea as \\x-prefixed hex text)")
    scan.add_argument("--hex", action="store_true",
                      help="keys and values in hexadecimal (KV stores)")
    scan.set_defaults(func=_cmd_scan)

    stats = sub.add_parser("stats", help="pg_stat_io-like counters and the io method in use")
    _add_db_options(stats)
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=_cmd_stats)

    check = sub.add_parser("check", help="verify every page of every relation, read-only (exit "
                                         "1 when a block is bad or recovery is needed)")
    _add_db_options(check, settings=False)
    check.add_argument("--recover", action="store_true",
                       help="run crash recovery first (opens the database, which recovers "
                            "and writes), then check; without it nothing is written")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_cmd_check)

    dump = sub.add_parser("dump", help="write the database as a SQL script PostgreSQL's psql "
                                       "loads (CREATE TABLE + COPY), read-only")
    _add_db_options(dump, settings=False)
    dump.add_argument("--out", metavar="FILE", default=None,
                      help="write the script to FILE (replaced only once the dump is "
                           "complete; not inside DIR); default: standard output")
    dump.set_defaults(func=_cmd_dump)

    load = sub.add_parser("load", help="read a script written by 'slonik dump' into an empty "
                                       "database (the whole file is checked first)")
    _add_db_options(load)
    load.add_argument("file", metavar="FILE",
                      help="the dump script ('-' for standard input)")
    load.set_defaults(func=_cmd_load)

    info = sub.add_parser("info", help="which io methods work on this machine, and why not")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser("demo", help="load a database, scan it cold with every io method, "
                                       "crash a writer and show nothing acknowledged is lost")
    demo.add_argument("--dir", default=None,
                      help="a new directory for the database, kept afterwards "
                           "(default: a temporary directory, removed)")
    demo.add_argument("--keys", type=positive_int, default=200_000,
                      help="KV pairs to load (default 200000)")
    demo.add_argument("--table-mb", type=positive_float, default=256,
                      help="size of the bulk table scanned cold with each io method, in MB "
                           "(default 256)")
    demo.add_argument("--buffered", action="store_true",
                      help="scan through the OS page cache (default: io_direct=data)")
    demo.add_argument("--crash-seconds", type=positive_float, default=1.0,
                      help="seconds of acknowledged writes before the SIGKILL (default 1)")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks (fio as the device baseline)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK",
                                     help="which benchmark (slonik bench BENCHMARK --help)")
    bench_sub.required = True
    bench_aio = bench_sub.add_parser(
        "aio", help="O_DIRECT reads through each io method against fio, same file, same run")
    add_bench_aio_arguments(bench_aio)
    bench_aio.set_defaults(func=cmd_bench_aio)
    bench_scan = bench_sub.add_parser(
        "scan", help="a table scanned through Table.scan() per io method, cold (O_DIRECT) "
                     "against fio at depth 32 and 1, warm; insert_many and warm scans of "
                     "small rows beside SQLite")
    add_bench_scan_arguments(bench_scan)
    add_plot_argument(bench_scan)
    bench_scan.set_defaults(func=cmd_bench_scan)
    bench_wal = bench_sub.add_parser(
        "wal", help="WAL insert rate, durable commits/s (1 and 8 threads) and recovery replay "
                    "per io method, against fio's 8 KiB write + fdatasync rate")
    add_bench_wal_arguments(bench_wal)
    add_plot_argument(bench_wal)
    bench_wal.set_defaults(func=cmd_bench_wal)
    bench_kv = bench_sub.add_parser(
        "kv", help="the KV store per io method: a big load, durable puts/s (1 and 8 "
                   "threads), random gets, ordered scan, open (index rebuild)")
    add_bench_kv_arguments(bench_kv)
    add_plot_argument(bench_kv)
    bench_kv.set_defaults(func=cmd_bench_kv)
    bench_table = bench_sub.add_parser(
        "table", help="a table with a primary key and an index beside SQLite: warm point "
                      "lookups by key and index range scans")
    add_bench_table_arguments(bench_table)
    bench_table.set_defaults(func=cmd_bench_table)

    controldata = sub.add_parser("controldata", help="print a data directory's control file")
    add_controldata_arguments(controldata)
    controldata.set_defaults(func=cmd_controldata)
    waldump = sub.add_parser("waldump", help="print a data directory's WAL records, one a line")
    add_waldump_arguments(waldump)
    waldump.set_defaults(func=cmd_waldump)
    return parser


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        arg = exc.args[0]
        return str(arg) if isinstance(arg, str) else f"not found: {arg!r}"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())   # one line


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command + (f" {args.bench}" if args.command == "bench" else "")
    try:
        code = args.func(args)
        sys.stdout.flush()   # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # ``slonik waldump DIR | head -1``: the reader has gone. As the Python docs
        # (signal module, "Note on SIGPIPE") advise: point stdout at /dev/null so the
        # interpreter's final flush finds nothing to complain about, and exit 1 quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except (CommandError, SlonikError, ValueError, TypeError, KeyError, OSError) as exc:
        sys.stdout.flush()
        print(f"slonik {command}: {_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"slonik {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
