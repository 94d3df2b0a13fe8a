"""``slonik bench table``: a table with a primary key and a secondary index, beside SQLite
with the same schema and index, in the same run.

Schema (both engines): ``t(id int8 PRIMARY KEY, name text, score float8, payload bytea)``
with an index ``t_name`` on ``(name)``; ``--rows`` rows, ``name`` a zero-padded random
permutation of the ids (so a name range is a set of rows scattered over the heap),
``payload`` ``--payload-size`` bytes. SQLite runs on a file in the same directory
(``journal_mode=WAL``, ``synchronous=FULL``), ``id`` an ``INTEGER PRIMARY KEY`` (its rowid
B-tree, the fastest form SQLite has for the primary key).

Per io method (``--methods``), on a new database in ``--dir``:

- load: every row inserted in one transaction, each index maintained, commit included
  (figure: rows/s; SQLite: executemany in one transaction).
- lookup: warm point lookups by primary key, random ids (``t.get(id=...)``; SQLite:
  ``SELECT * FROM t WHERE id = ?``), for ``--seconds``. Figure: rows/s.
- range: index range scans of ``--range-rows`` consecutive names from random starting
  points (``t.range("t_name", start, stop)``: index entries, then the heap pages of the
  next entries through a read stream, each row re-checked; SQLite: ``... WHERE name >= ?
  AND name < ? ORDER BY name``), warm, for ``--seconds``. Figure: rows/s.
- update: updates by primary key of random ids, ``UPDATE_BATCH_ROWS`` per transaction
  (commit included), each setting a new ``score`` (a column no index holds) and keeping
  the rest (``t.update(row)``; SQLite: ``UPDATE t SET score = ? WHERE id = ?``), for
  ``--seconds``. Figure: rows/s. Old versions accumulate as they would in use, and
  autovacuum removes them on the way (its time is in the figure).

The timed figures (lookup, range, update) interleave the engines: every io method's database
and SQLite's stay open, and each figure runs in rounds of ``INTERLEAVE_ROUND_SECONDS``,
SQLite and each method in turn, until each has had ``--seconds``; so a machine whose
load changes during the run slows every engine alike, and the ratios stay comparable.
The ratios ``slonik / sqlite`` are what to read: one Python process against SQLite's C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import time

from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.database import Database
from slonik.engine.tools.bench import ALL_METHODS, parse_methods, positive_float, positive_int

__all__ = ["add_arguments", "cmd_bench_table", "run_table_bench", "format_table"]

DEFAULT_DIR = "./bench-data/table"
DEFAULT_ROWS = 100_000
DEFAULT_PAYLOAD_SIZE = 64
DEFAULT_RANGE_ROWS = 100
LOAD_BATCH_ROWS = 10_000          # rows per insert_many call
OPS_PER_CLOCK_READ = 32           # time-bounded loops read the clock this seldom
SAMPLE_KEYS = 50_000              # random ids / range starts drawn up front (cycled)
SHARED_BUFFERS_PAGES = 65_536     # 512 MiB: every page of the default run stays cached
RANDOM_SEED = 20250601
INTERLEAVE_ROUND_SECONDS = 0.25   # one engine's turn in a timed figure
UPDATE_BATCH_ROWS = 100           # updates per transaction in the update figure
FIGURES = ("lookup", "range", "update")
COLUMNS = [("id", "int8"), ("name", "text"), ("score", "float8"), ("payload", "bytea")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help=f"scratch directory, removed afterwards (default {DEFAULT_DIR})")
    parser.add_argument("--rows", type=positive_int, default=DEFAULT_ROWS,
                        help=f"rows loaded (default {DEFAULT_ROWS})")
    parser.add_argument("--payload-size", type=positive_int, default=DEFAULT_PAYLOAD_SIZE,
                        help=f"bytes of payload per row (default {DEFAULT_PAYLOAD_SIZE})")
    parser.add_argument("--range-rows", type=positive_int, default=DEFAULT_RANGE_ROWS,
                        help=f"rows per index range scan (default {DEFAULT_RANGE_ROWS})")
    parser.add_argument("--seconds", type=positive_float, default=2.0,
                        help="length of each timed figure (default 2)")
    parser.add_argument("--methods", type=parse_methods, default=None,
                        help="comma-separated io methods (default: those available)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _name(i: int) -> str:
    return f"n{i:010d}"


def _rows(n: int, payload_size: int) -> list[tuple]:
    rng = random.Random(RANDOM_SEED)
    names = list(range(n))
    rng.shuffle(names)
    payload = rng.randbytes(payload_size)
    return [(i, _name(names[i]), rng.random(), payload) for i in range(n)]


def _timed(seconds: float, step, first: int = 0) -> tuple[int, float, int]:
    """Call ``step(i)`` (returning rows produced) for i = first, first + 1, ... until
    ``seconds`` passed: (rows, seconds, next i)."""
    rows = 0
    i = first
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(OPS_PER_CLOCK_READ):
            rows += step(i)
            i += 1
        if time.perf_counter() >= deadline:
            break
    return rows, time.perf_counter() - start, i


def _interleaved(steps: dict[str, object], seconds: float) -> dict[str, float]:
    """rows/s of each engine's ``step``, timed in turns of ``INTERLEAVE_ROUND_SECONDS``
    (engines in order) until each has run ``seconds``."""
    rows = dict.fromkeys(steps, 0)
    spent = dict.fromkeys(steps, 0.0)
    nxt = dict.fromkeys(steps, 0)
    turn = min(INTERLEAVE_ROUND_SECONDS, seconds)
    while any(spent[name] < seconds for name in steps):
        for name, step in steps.items():
            if spent[name] < seconds:
                n, s, nxt[name] = _timed(min(turn, seconds - spent[name]), step, nxt[name])
                rows[name] += n
                spent[name] += s
    return {name: rows[name] / spent[name] for name in steps}


def _lookup_step(get_row, ids):
    def lookup(i: int) -> int:
        if get_row(ids[i % len(ids)]) is None:
            raise AssertionError("a loaded id is missing")
        return 1
    return lookup


def _range_step(range_rows, starts, k: int):
    def scan(i: int) -> int:
        lo = starts[i % len(starts)]
        got = sum(1 for _ in range_rows(_name(lo), _name(lo + k)))
        if got != k:
            raise AssertionError(f"a range of {k} names gave {got} rows")
        return got
    return scan


def _update_step(update_batch, ids, k: int):
    """``update_batch(batch of ids, new score)`` of ``k`` random ids per step."""
    def update(i: int) -> int:
        first = (i * k) % len(ids)
        batch = ids[first:first + k]
        update_batch(batch, float(i))
        return len(batch)
    return update


def _open_slonik(path: str, method: str, data: list[tuple]) -> tuple[Database, dict]:
    """A new database at ``path`` holding ``data`` (table t, its primary key, index
    t_name): (db, {"load_rows_s": ...})."""
    db = Database.open(path, io_method=method, shared_buffers=SHARED_BUFFERS_PAGES)
    try:
        t = db.create_table("t", COLUMNS, primary_key="id")
        t.create_index("t_name", ["name"])
        start = time.perf_counter()
        with db.transaction():
            for first in range(0, len(data), LOAD_BATCH_ROWS):
                t.insert_many(data[first:first + LOAD_BATCH_ROWS])
        return db, {"load_rows_s": len(data) / (time.perf_counter() - start)}
    except BaseException:
        db.close()
        raise


def _slonik_steps(db: Database, args, ids, starts, data: list[tuple]) -> dict:
    t = db.table("t")
    get = t.get
    rng = t.range

    def update_batch(batch: list[int], score: float) -> None:
        with db.transaction():
            for i in batch:
                _id, name, _score, payload = data[i]
                t.update((i, name, score, payload))
    return {"lookup": _lookup_step(lambda i: get(id=i), ids),
            "range": _range_step(lambda lo, hi: rng("t_name", start=(lo,), stop=(hi,)),
                                 starts, args.range_rows),
            "update": _update_step(update_batch, ids, UPDATE_BATCH_ROWS)}


def _open_sqlite(path: str, data: list[tuple]) -> tuple[sqlite3.Connection, dict]:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA cache_size=-524288")   # 512 MiB, as Slonik's shared_buffers
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, "
                    "payload BLOB)")
        con.execute("CREATE INDEX t_name ON t (name)")
        start = time.perf_counter()
        con.execute("BEGIN")
        con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", data)
        con.execute("COMMIT")
        return con, {"load_rows_s": len(data) / (time.perf_counter() - start)}
    except BaseException:
        con.close()
        raise


def _sqlite_steps(con: sqlite3.Connection, args, ids, starts) -> dict:
    q = "SELECT * FROM t WHERE id = ?"
    rq = "SELECT * FROM t WHERE name >= ? AND name < ? ORDER BY name"
    uq = "UPDATE t SET score = ? WHERE id = ?"

    def update_batch(batch: list[int], score: float) -> None:
        con.execute("BEGIN")
        for i in batch:
            con.execute(uq, (score, i))
        con.execute("COMMIT")
    return {"lookup": _lookup_step(lambda i: con.execute(q, (i,)).fetchone(), ids),
            "range": _range_step(lambda lo, hi: con.execute(rq, (lo, hi)), starts,
                                 args.range_rows),
            "update": _update_step(update_batch, ids, UPDATE_BATCH_ROWS)}


def run_table_bench(args: argparse.Namespace, log=None) -> dict:
    methods = args.methods or [m for m in ALL_METHODS
                               if m != "io_uring" or io_uring_available()[0]]
    if args.range_rows > args.rows:
        raise ValueError(f"--range-rows ({args.range_rows}) is more than --rows ({args.rows})")
    data = _rows(args.rows, args.payload_size)
    rng = random.Random(RANDOM_SEED)
    ids = [rng.randrange(args.rows) for _ in range(min(args.rows, SAMPLE_KEYS))]
    starts = [rng.randrange(args.rows - args.range_rows + 1)
              for _ in range(min(args.rows, SAMPLE_KEYS))]
    os.makedirs(args.dir, exist_ok=True)
    report = {"command": "table", "rows": args.rows, "payload_size": args.payload_size,
              "range_rows": args.range_rows, "seconds": args.seconds, "methods": {}}
    sqlite_path = os.path.join(args.dir, "sqlite.db")
    con = None
    dbs: dict[str, Database] = {}
    try:
        if log:
            log("sqlite: load")
        con, report["sqlite"] = _open_sqlite(sqlite_path, data)
        for method in methods:
            if log:
                log(f"{method}: load")
            dbs[method], report["methods"][method] = _open_slonik(
                os.path.join(args.dir, method), method, data)
        steps = {"sqlite": _sqlite_steps(con, args, ids, starts)}
        steps.update((m, _slonik_steps(db, args, ids, starts, data)) for m, db in dbs.items())
        for fig in FIGURES:
            if log:
                log(f"{fig}: {', '.join(steps)} in turns")
            rates = _interleaved({name: s[fig] for name, s in steps.items()}, args.seconds)
            report["sqlite"][f"{fig}_rows_s"] = rates["sqlite"]
            for method in dbs:
                report["methods"][method][f"{fig}_rows_s"] = rates[method]
        for m in report["methods"].values():
            for fig in ("load", *FIGURES):
                m[f"{fig}_vs_sqlite"] = m[f"{fig}_rows_s"] / report["sqlite"][f"{fig}_rows_s"]
    finally:
        for method, db in dbs.items():
            try:
                db.close()
            finally:
                shutil.rmtree(os.path.join(args.dir, method), ignore_errors=True)
        if con is not None:
            con.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(sqlite_path + suffix):
                os.unlink(sqlite_path + suffix)
    return report


def format_table(report: dict) -> str:
    head = (f"{'engine':<16} {'load rows/s':>12} {'pk lookups/s':>13} {'range rows/s':>13} "
            f"{'updates/s':>10} {'load x':>7} {'lookup x':>9} {'range x':>8} {'update x':>9}")
    lines = [f"slonik bench table: {report['rows']:,} rows, payload {report['payload_size']} "
             f"bytes, ranges of {report['range_rows']} rows, {report['seconds']:g} s per "
             f"timed figure", "", head, "-" * len(head)]
    s = report["sqlite"]
    lines.append(f"{'sqlite':<16} {s['load_rows_s']:>12,.0f} {s['lookup_rows_s']:>13,.0f} "
                 f"{s['range_rows_s']:>13,.0f} {s['update_rows_s']:>10,.0f} {1:>7.2f} "
                 f"{1:>9.2f} {1:>8.2f} {1:>9.2f}")
    for method, m in report["methods"].items():
        lines.append(f"{'slonik ' + method:<16} {m['load_rows_s']:>12,.0f} "
                     f"{m['lookup_rows_s']:>13,.0f} {m['range_rows_s']:>13,.0f} "
                     f"{m['update_rows_s']:>10,.0f} {m['load_vs_sqlite']:>7.2f} "
                     f"{m['lookup_vs_sqlite']:>9.2f} {m['range_vs_sqlite']:>8.2f} "
                     f"{m['update_vs_sqlite']:>9.2f}")
    lines += ["", "lookup: warm random point lookups by primary key; range: warm index range "
                  "scans on t_name; update: updates by primary key of a column no index "
                  f"holds, {UPDATE_BATCH_ROWS} per transaction; x: relative to SQLite in the "
                  "same run"]
    return "\n".join(lines)


def cmd_bench_table(args: argparse.Namespace) -> int:
    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = run_table_bench(args, log=None if args.json else log)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
