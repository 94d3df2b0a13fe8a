"""``slonik bench scan``: a table scanned through the public ``Table.scan()``, per io method,
against fio on the same file; warm scans and bulk loads of small rows beside SQLite.

A table ``scan(id int8, payload text)`` of about ``--size`` bytes of heap (rows of
``--row-bytes`` bytes of text) is built once in a database under ``--dir`` and reused.
Each measurement, per io method (``--methods``), in the same invocation:

- cold: the database is opened with ``io_direct="data"`` (O_DIRECT; ``--buffered``: the
  OS page cache instead, dropped right before the scan when root) and a pool of
  ``--shared-buffers`` pages; ``Table.scan()`` reads every page through a read stream
  (checksums verified in the read's completion), every row is decoded and counted.
  Figure: MB/s of heap (file size / seconds).
- fio on the table's segment file, same direct/buffered mode: sequential 128 KiB reads at
  depth 32 (``--ioengine=io_uring``) and at depth 1 (``psync``, what the sync method can
  at best do), measured in alternation with the scans.
- warm: the same table with a pool holding all of it, scanned once to fill it, then timed
  (``--no-warm`` skips it).
- small rows: ``--small-rows`` rows ``(int8, text, float8)`` loaded by ``insert_many`` in
  one transaction (commit included) into a new table, then a warm ``Table.scan()``;
  SQLite (WAL, synchronous=FULL) does ``executemany`` in one transaction and
  ``SELECT *`` on the same rows.

- the row floor: what CPython alone needs to make the table's rows (no I/O, pages,
  buffers or visibility: the columns laid out, a scan run's rows at a time); the checksum
  floor: what the C verifier needs to check every page's CRC-32C in memory (the table's
  pages read in first, untimed). From both and fio's depth-1 rate, the most a sync scan
  can give: it waits for each read in the thread that verifies the pages and makes the
  rows.

Medians of ``--runs`` runs; per method ``ratios``: cold vs fio depth 32 and depth 1 (and
vs sync), warm scan and insert_many vs SQLite. Targets (issue #14): io_uring >= 0.8 x fio
depth 32, sync >= 0.8 x fio depth 1, worker >= 0.6 x fio depth 32, warm scan >= 1.0 x and
insert_many >= 0.5 x SQLite.
"""

from __future__ import annotations

import argparse
import array
import math
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Iterable, Iterator
from itertools import accumulate, chain
from typing import NamedTuple

from slonik.aio import osfile
from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.access.heap import SCAN_RUN_PAGES
from slonik.engine.database import Database
from slonik.engine.tools.bench import (
    parse_methods,
    parse_size,
    positive_int,
    run_bench_command,
)
from slonik.engine.tools.bench_replay import WORKLOADS as REPLAY_WORKLOADS
from slonik.engine.tools.bench_replay import run_replay_bench
from slonik.engine.tools.fio import FioError, fio_status, run_fio_job
from slonik.storage.page import BLCKSZ, C_VERIFIER, PageRunVerifier

__all__ = ["add_arguments", "cmd_bench_scan", "run_scan_bench", "format_table", "floor_run",
           "floor_batches", "FloorRun", "row_floor_seconds", "checksum_floor_seconds",
           "sync_bound_mb_s"]

DEFAULT_DIR = "./bench-data/scan"
DEFAULT_SIZE = 512 << 20
DEFAULT_ROW_BYTES = 1000
DEFAULT_SMALL_ROWS = 300_000
TABLE = "scan"
COLUMNS = [("id", "int8"), ("payload", "text")]
SMALL_COLUMNS = [("id", "int8"), ("name", "text"), ("score", "float8")]
LOAD_BATCH_ROWS = 20_000        # rows per insert_many while building the big table
BUILD_SHARED_BUFFERS = 16384    # pages (128 MiB) while building
WARM_POOL_SLACK_PAGES = 1024    # the warm pool: the whole table plus this
# fio reads the file once (not time-based): allow for a slow disk on top of startup
FIO_SCAN_SECONDS_MAX = 480
BLOCK_KIB = 8                   # a page; fio reads io_combine_limit pages at a time
DEFAULT_REPLAY_MB = 64.0        # WAL per replay workload
REPLAY_TARGET_MB_S = 150.0      # the issue's replay target, MB of WAL per second
FLOOR_REPEATS = 3               # the row floor: the best of this many passes
CHECKSUM_CHUNK_PAGES = 1024     # the checksum floor: pages a verifier call (8 MiB)
TARGETS = {"io_uring": ("cold_vs_fio_depth32", 0.8), "sync": ("cold_vs_fio_depth1", 0.8),
           "worker": ("cold_vs_fio_depth32", 0.6)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE,
                        help="heap size of the scanned table, e.g. 256M or 1G (default 512M)")
    parser.add_argument("--row-bytes", type=positive_int, default=DEFAULT_ROW_BYTES,
                        help=f"text bytes per row of the scanned table (default {DEFAULT_ROW_BYTES})")
    parser.add_argument("--small-rows", type=positive_int, default=DEFAULT_SMALL_ROWS,
                        help=f"rows of the insert_many / warm-scan comparison with SQLite "
                             f"(default {DEFAULT_SMALL_ROWS})")
    parser.add_argument("--runs", type=positive_int, default=3, help="runs; medians reported")
    parser.add_argument("--direct", dest="buffered", action="store_false", default=False,
                        help="O_DIRECT data files and fio (the default)")
    parser.add_argument("--buffered", dest="buffered", action="store_true", default=False,
                        help="buffered data files and fio; the page cache is dropped before "
                             "each cold read (root only)")
    parser.add_argument("--methods", type=parse_methods, default=None,
                        help="comma-separated io methods (default: all available)")
    parser.add_argument("--shared-buffers", type=positive_int, default=16384,
                        help="pool size in pages for the cold scans (default 16384)")
    parser.add_argument("--io-combine-limit", type=positive_int, default=16,
                        help="blocks per read (default 16)")
    parser.add_argument("--effective-io-concurrency", type=int, default=16,
                        help="reads in flight per stream (default 16)")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm big-table scans")
    parser.add_argument("--replay-mb", type=float, default=DEFAULT_REPLAY_MB,
                        help="MB of WAL replayed by crash recovery per io method and "
                             f"workload (bulk: page-sized heap records; mixed: KV puts and "
                             f"indexed rows); 0 skips (default {DEFAULT_REPLAY_MB:g})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _mkdirs(path: str) -> None:
    parent = os.path.dirname(path.rstrip("/"))
    if parent and not osfile.exists(parent):
        _mkdirs(parent)
    if not osfile.exists(path):
        osfile.mkdir(path)


def build_table(data_dir: str, size: int, row_bytes: int, log) -> tuple[str, int]:
    """Build the scanned table once (reused while ``--size`` and ``--row-bytes`` stay);
    returns (its database directory, its relfilenumber)."""
    db_dir = os.path.join(data_dir, "db")
    marker = os.path.join(data_dir, f"built-{size}-{row_bytes}")
    if osfile.exists(marker):
        with open(marker) as f:  # a bench bookkeeping file, not a data file
            return db_dir, int(f.read())
    _mkdirs(data_dir)
    for name in os.listdir(data_dir):
        if name.startswith("built-"):
            os.unlink(os.path.join(data_dir, name))
    shutil.rmtree(db_dir, ignore_errors=True)
    pad = _pad(row_bytes)
    db = Database.open(db_dir, io_method="sync", shared_buffers=BUILD_SHARED_BUFFERS)
    try:
        t = db.create_table(TABLE, COLUMNS)
        n = 0
        while t.heap.nblocks() * BLCKSZ < size:
            with db.transaction():
                t.insert_many([(i, f"{i:012d}{pad}") for i in range(n, n + LOAD_BATCH_ROWS)])
            n += LOAD_BATCH_ROWS
        rel = t.rel
    finally:
        db.close()
    with open(marker, "w") as f:
        f.write(str(rel))
    log(f"built a {size >> 20} MiB table ({n} rows of {row_bytes} bytes) in {db_dir}")
    return db_dir, rel


def _pad(row_bytes: int) -> str:
    """What follows a scanned row's 12-digit id in its payload."""
    return "x" * max(0, row_bytes - 12)


# --- the row floor --------------------------------------------------------------------------
# What producing the scanned table's rows costs CPython with no engine at all: no I/O,
# pages, buffers, visibility or tuple headers, the rows' columns already laid out the way
# the fastest decoder wants them (the ids as int8 bytes, the payloads back to back with
# their ends), a scan run's rows at a time. A scan makes its rows in the thread that
# consumes them, holding the GIL, so no io method makes them faster than this; the sync
# method also waits for each read in that thread, so its time is at least fio's depth-1
# read time plus this floor (sync_bound_mb_s).

class FloorRun(NamedTuple):
    """A run of the scanned table's rows laid out column-wise (``floor_run``)."""

    ids: bytes            # the ids, native int8
    payloads: bytes       # the payloads' UTF-8, back to back
    ends: list[int]       # where each payload ends, in characters of the decoded whole


def floor_run(first: int, count: int, row_bytes: int) -> FloorRun:
    """Rows ``[first, first + count)`` of the scanned table laid out column-wise."""
    pad = _pad(row_bytes)
    ids = array.array("q", range(first, first + count)).tobytes()
    values = [f"{i:012d}{pad}" for i in range(first, first + count)]
    return FloorRun(ids, "".join(values).encode(), list(accumulate(map(len, values))))


def floor_batches(runs: Iterable[FloorRun]) -> Iterator[list[tuple]]:
    """Each run's rows as ``Table.scan()`` yields them, made as cheaply as CPython can make
    them: one cast of the ids, one decode of the payloads and a slice of it per value (the
    fastest of the ways timed: 84 ms for 460,000 values of 988 bytes, against 98 ms for a
    decoded bytes slice per value and 230 ms for one decode split at a separator), one
    zip."""
    for ids, payloads, ends in runs:
        whole = payloads.decode()
        texts = [whole[s:e] for s, e in zip([0, *ends[:-1]], ends, strict=True)]
        yield list(zip(memoryview(ids).cast("q").tolist(), texts, strict=True))


def row_floor_seconds(nrows: int, row_bytes: int, rows_per_run: int,
                      repeats: int = FLOOR_REPEATS) -> float:
    """Seconds for ``floor_batches`` to make and ``count_rows`` to consume ``nrows`` rows
    of the scanned table, ``rows_per_run`` at a time (one laid-out run reused: the work
    does not depend on the digits); the best of ``repeats`` passes."""
    full, rest = divmod(nrows, rows_per_run)
    runs = [floor_run(0, rows_per_run, row_bytes)] * full
    if rest:
        runs.append(floor_run(0, rest, row_bytes))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        count_rows(chain.from_iterable(floor_batches(runs)))
        best = min(best, time.perf_counter() - start)
    return best


def checksum_floor_seconds(paths: list[str], rel: int,
                           chunk_pages: int = CHECKSUM_CHUNK_PAGES) -> float | None:
    """Seconds for the C page verifier (what a read's completion runs) to check every page
    of the relation ``rel`` whose segment files are ``paths`` (in order), ``chunk_pages``
    pages a call; only the calls are timed, not reading the files in. None without the C
    module. Raises ValueError naming the first page that does not verify: the bench's
    table must be whole."""
    if not C_VERIFIER:
        return None
    buf = bytearray(chunk_pages * BLCKSZ)
    view = memoryview(buf)
    verifier = PageRunVerifier(buf)
    total = 0.0
    block = 0
    for path in paths:
        with open(path, "rb") as f:   # (a data file read once, outside the engine)
            while got := f.readinto(view):
                n = got // BLCKSZ
                start = time.perf_counter()
                bad = verifier.verify(range(n), rel, 0, block)
                total += time.perf_counter() - start
                if bad:
                    k, why = bad[0]
                    raise ValueError(f"block {block + k} of relation {rel} does not verify: "
                                     f"{why.reason}")
                block += n
    return total


def sync_bound_mb_s(table_bytes: int, fio_depth1_mb_s: float | None,
                    floor_s: float) -> float | None:
    """The most a sync scan can give, MB/s: its one thread waits for each read (at best
    fio's depth-1 rate) and then does the CPU work that cannot be skipped, ``floor_s``
    (the row floor plus the checksum floor), never both at once. None without fio."""
    if not fio_depth1_mb_s:
        return None
    mb = table_bytes / 1e6
    return mb / (mb / fio_depth1_mb_s + floor_s)


def drop_caches() -> bool:
    """Drop the OS page cache (root only). True when it was dropped."""
    if os.geteuid() != 0:
        return False
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:  # a kernel knob, not a data file
        f.write("3\n")
    return True


def _open(db_dir: str, method: str, args: argparse.Namespace, shared_buffers: int) -> Database:
    return Database.open(db_dir, io_method=method,
                         io_direct="none" if args.buffered else "data",
                         shared_buffers=shared_buffers, io_combine_limit=args.io_combine_limit,
                         effective_io_concurrency=args.effective_io_concurrency)


def count_rows(rows) -> int:
    """Consume an iterator of rows as an application would (one step each); how many."""
    n = 0
    for _row in rows:
        n += 1
    return n


def timed_scan(db: Database) -> tuple[float, int]:
    """(seconds, rows) of one full ``Table.scan()`` of the scanned table."""
    t = db.table(TABLE)
    start = time.perf_counter()
    n = count_rows(t.scan())
    return time.perf_counter() - start, n


def fio_block(io_combine_limit: int) -> str:
    """fio's block size for a scan combining ``io_combine_limit`` pages per read (128k at
    the default 16): the baseline reads as much per request as the scan does."""
    return f"{io_combine_limit * BLOCK_KIB}k"


def run_fio(path: str, size: int, direct: bool, depth: int, block: str = fio_block(16)
            ) -> float:
    """MB/s of fio reading ``size`` bytes of the file once, sequentially, ``block`` bytes
    at a time: io_uring at ``depth`` (> 1), or psync (one read at a time) at depth 1."""
    engine = ["--ioengine=io_uring", f"--iodepth={depth}"] if depth > 1 else ["--ioengine=psync"]
    job = run_fio_job([f"--filename={path}", f"--direct={int(direct)}", *engine,
                       "--rw=read", f"--bs={block}", f"--size={size}"],
                      seconds=FIO_SCAN_SECONDS_MAX)
    return job["read"]["bw_bytes"] / 1e6


def small_rows(n: int) -> list[tuple]:
    return [(i, f"name {i:08d}", i * 0.5) for i in range(n)]


def slonik_small(path: str, method: str, rows: list[tuple]) -> tuple[float, float]:
    """(insert_many rows/s in one transaction, commit included; warm scan rows/s)."""
    shutil.rmtree(path, ignore_errors=True)
    db = Database.open(path, io_method=method)
    try:
        t = db.create_table("small", SMALL_COLUMNS)
        start = time.perf_counter()
        with db.transaction():
            t.insert_many(rows)
        load = time.perf_counter() - start
        start = time.perf_counter()
        n = count_rows(t.scan())
        scan = time.perf_counter() - start
        assert n == len(rows), (n, len(rows))
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)
    return len(rows) / load, len(rows) / scan


def _remove_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def sqlite_small(path: str, rows: list[tuple]) -> tuple[float, float]:
    """SQLite doing the same: (executemany rows/s in one transaction, SELECT * rows/s)."""
    _remove_sqlite(path)
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE small (id INTEGER, name TEXT, score REAL)")
        start = time.perf_counter()
        with con:
            con.executemany("INSERT INTO small VALUES (?, ?, ?)", rows)
        load = time.perf_counter() - start
        count_rows(con.execute("SELECT * FROM small"))  # warm its cache
        start = time.perf_counter()
        n = count_rows(con.execute("SELECT * FROM small"))
        scan = time.perf_counter() - start
        assert n == len(rows), (n, len(rows))
    finally:
        con.close()
        _remove_sqlite(path)
    return len(rows) / load, len(rows) / scan


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def run_scan_bench(args: argparse.Namespace, log=None) -> dict:
    """The bench; returns the report (see the module docstring; ``methods[m]["ratios"]``
    holds the same-run ratios, ``methods[m]["cold_target"]`` the issue's target)."""
    log = log or (lambda msg: None)
    methods = args.methods or ["sync", "worker", "io_uring"]
    ok, reason = io_uring_available()
    notes = []
    if "io_uring" in methods and not ok:
        methods = [m for m in methods if m != "io_uring"]
        notes.append(f"io_uring unavailable: {reason}")
    db_dir, rel = build_table(args.dir, args.size, args.row_bytes, log)
    segment = os.path.join(db_dir, "base", str(rel))
    fio_bytes = table_bytes = os.path.getsize(segment)
    segments = [segment]
    while os.path.exists(f"{segment}.{len(segments)}"):
        segments.append(f"{segment}.{len(segments)}")
        table_bytes += os.path.getsize(segments[-1])
    if len(segments) > 1:
        notes.append("fio reads the first 1 GiB segment only")
    have_fio, fio_note = fio_status()
    if not have_fio:
        notes.append(fio_note)
    direct = not args.buffered
    if not direct and os.geteuid() != 0:
        notes.append("not root: the page cache cannot be dropped, 'cold' buffered scans are warm-ish")
    mb = table_bytes / 1e6
    cold: dict[str, list[float]] = {m: [] for m in methods}
    cold_rows: dict[str, list[float]] = {m: [] for m in methods}
    warm: dict[str, list[float]] = {m: [] for m in methods}
    small_load: dict[str, list[float]] = {m: [] for m in methods}
    small_scan: dict[str, list[float]] = {m: [] for m in methods}
    fio: dict[str, list[float]] = {"depth32": [], "depth1": []}
    replay: dict[str, dict[str, list[float]]] = {m: {w: [] for w in REPLAY_WORKLOADS}
                                                 for m in methods}
    sq_load: list[float] = []
    sq_scan: list[float] = []
    rows = small_rows(args.small_rows)
    nrows = 0
    for run in range(args.runs):
        if have_fio:
            try:
                for name, depth in (("depth32", 32), ("depth1", 1)):
                    if not direct:
                        drop_caches()
                    fio[name].append(run_fio(segment, fio_bytes, direct, depth,
                                             fio_block(args.io_combine_limit)))
                    log(f"run {run + 1}: fio {name} {fio[name][-1]:.0f} MB/s")
            except (FioError, KeyError) as exc:   # as the other benches: no baseline
                have_fio = False
                fio = {"depth32": [], "depth1": []}
                notes.append(f"fio failed, no ratios: {exc}")
        for method in methods:
            db = _open(db_dir, method, args, args.shared_buffers)
            try:
                if not direct:  # (O_DIRECT reads skip the page cache: dropping it, and
                    drop_caches()  # the writeback it starts, would only disturb the scan)
                seconds, nrows = timed_scan(db)
            finally:
                db.close()
            cold[method].append(mb / seconds)
            cold_rows[method].append(nrows / seconds)
            log(f"run {run + 1}: {method} cold {cold[method][-1]:.0f} MB/s "
                f"({cold_rows[method][-1] / 1e6:.2f} M rows/s)")
            if not args.no_warm:
                db = _open(db_dir, method, args, table_bytes // BLCKSZ + WARM_POOL_SLACK_PAGES)
                try:
                    timed_scan(db)
                    seconds, _n = timed_scan(db)
                finally:
                    db.close()
                warm[method].append(mb / seconds)
                log(f"run {run + 1}: {method} warm {warm[method][-1]:.0f} MB/s")
            load, scan = slonik_small(os.path.join(args.dir, "small"), method, rows)
            small_load[method].append(load)
            small_scan[method].append(scan)
            log(f"run {run + 1}: {method} small rows: insert_many {load / 1e6:.2f} M rows/s, "
                f"warm scan {scan / 1e6:.2f} M rows/s")
        if args.replay_mb > 0:
            for workload in REPLAY_WORKLOADS:
                for method in methods:
                    got = run_replay_bench(os.path.join(args.dir, f"replay-{workload}"),
                                           args.replay_mb, method, workload=workload)
                    replay[method][workload].append(got["mb_per_s"])
                    log(f"run {run + 1}: {method} replay ({workload}) "
                        f"{got['mb_per_s']:.0f} MB/s of WAL, {got['records_per_s']:,.0f} "
                        f"records/s")
        load, scan = sqlite_small(os.path.join(args.dir, "small.sqlite"), rows)
        sq_load.append(load)
        sq_scan.append(scan)
        log(f"run {run + 1}: sqlite executemany {load / 1e6:.2f} M rows/s, "
            f"SELECT * {scan / 1e6:.2f} M rows/s")
    fio32, fio1 = _median(fio["depth32"]), _median(fio["depth1"])
    floor_s = None
    if nrows:
        pages = max(table_bytes // BLCKSZ, 1)
        floor_s = row_floor_seconds(nrows, args.row_bytes,
                                    max(round(nrows / pages * SCAN_RUN_PAGES), 1))
        log(f"row floor: {floor_s:.3f} s for {nrows} rows")
    checksum_s = checksum_floor_seconds(segments, rel)
    if checksum_s is not None:
        log(f"checksum floor: {checksum_s:.3f} s for {table_bytes // BLCKSZ} pages")
    sync_mb = _median(cold.get("sync", []))
    sq_load_m, sq_scan_m = _median(sq_load), _median(sq_scan)
    out_methods = {}
    for m in methods:
        c = _median(cold[m])
        ratios = {"cold_vs_fio_depth32": _ratio(c, fio32),
                  "cold_vs_fio_depth1": _ratio(c, fio1),
                  "cold_vs_sync": _ratio(c, sync_mb),
                  "warm_scan_vs_sqlite": _ratio(_median(small_scan[m]), sq_scan_m),
                  "insert_many_vs_sqlite": _ratio(_median(small_load[m]), sq_load_m)}
        target = TARGETS.get(m)
        out_methods[m] = {
            "cold_mb_s": c, "cold_rows_s": _median(cold_rows[m]), "warm_mb_s": _median(warm[m]),
            "small_insert_many_rows_s": _median(small_load[m]),
            "small_warm_scan_rows_s": _median(small_scan[m]),
            "ratios": ratios,
            "cold_target": None if target is None else {"of": target[0], "at_least": target[1]},
            "replay_mb_s": {w: _median(v) for w, v in replay[m].items()},
            "cold_runs": [round(x, 1) for x in cold[m]],
            "warm_runs": [round(x, 1) for x in warm[m]]}
    return {"command": "scan", "size_bytes": args.size, "replay_mb": args.replay_mb,
            "replay_target_mb_s": REPLAY_TARGET_MB_S, "table_bytes": table_bytes, "table_rows": nrows,
            "row_bytes": args.row_bytes, "direct": direct, "runs": args.runs,
            "shared_buffers": args.shared_buffers, "io_combine_limit": args.io_combine_limit,
            "effective_io_concurrency": args.effective_io_concurrency,
            "cold_state": "O_DIRECT" if direct else (
                "page cache dropped right before each scan" if os.geteuid() == 0
                else "not dropped"),
            "fio_depth32_mb_s": fio32, "fio_depth1_mb_s": fio1,
            "fio_runs": {k: [round(x, 1) for x in v] for k, v in fio.items()},
            "small_rows": args.small_rows,
            "row_floor_s": floor_s,
            "row_floor_mb_s": mb / floor_s if floor_s else None,
            "checksum_floor_s": checksum_s,
            "sync_bound_mb_s": None if floor_s is None else sync_bound_mb_s(
                table_bytes, fio1, floor_s + (checksum_s or 0.0)),
            "sqlite": {"insert_many_rows_s": sq_load_m, "warm_scan_rows_s": sq_scan_m},
            "methods": out_methods, "notes": notes}


def _fmt(v, spec: str) -> str:
    return format(v, spec) if v is not None else "n/a"


def _m(v: float | None) -> float | None:
    return None if v is None else v / 1e6


def format_table(r: dict) -> str:
    lines = [f"Table.scan() of {r['table_bytes'] >> 20} MiB ({r['table_rows']} rows of "
             f"{r['row_bytes']} bytes), checksums verified, "
             f"{'O_DIRECT' if r['direct'] else 'buffered'}; cold = {r['cold_state']}; "
             f"medians of {r['runs']} runs",
             f"fio sequential {fio_block(r['io_combine_limit'])}: depth 32 {_fmt(r['fio_depth32_mb_s'], '.0f')} MB/s, "
             f"depth 1 {_fmt(r['fio_depth1_mb_s'], '.0f')} MB/s",
             f"{'method':<10} {'cold MB/s':>10} {'/fio32':>7} {'/fio1':>7} {'/sync':>6} "
             f"{'warm MB/s':>10}  target"]
    for m, row in r["methods"].items():
        ratios = row["ratios"]
        target = row["cold_target"]
        tgt = "n/a"
        if target is not None and ratios[target["of"]] is not None:
            met = "met" if ratios[target["of"]] >= target["at_least"] else "missed"
            tgt = f"{target['of']} >= {target['at_least']}: {met}"
        lines.append(f"{m:<10} {_fmt(row['cold_mb_s'], '>10.0f')} "
                     f"{_fmt(ratios['cold_vs_fio_depth32'], '>7.2f')} "
                     f"{_fmt(ratios['cold_vs_fio_depth1'], '>7.2f')} "
                     f"{_fmt(ratios['cold_vs_sync'], '>6.2f')} "
                     f"{_fmt(row['warm_mb_s'], '>10.0f')}  {tgt}")
    if r.get("row_floor_s"):
        bound, fio1 = r["sync_bound_mb_s"], r["fio_depth1_mb_s"]
        lines.append(f"row floor (CPython making these rows with no engine: no I/O, pages or "
                     f"buffers): {r['row_floor_s']:.3f} s = {r['row_floor_mb_s']:.0f} MB/s; "
                     f"checksum floor (C CRC-32C of every page): "
                     f"{_fmt(r['checksum_floor_s'], '.3f')} s; sync waits for each read, "
                     f"so at most {_fmt(bound, '.0f')} MB/s = "
                     f"{_fmt(_ratio(bound, fio1), '.2f')} x fio depth 1")
    sq = r["sqlite"]
    lines.append(f"{r['small_rows']} small rows (int8, text, float8), M rows/s; SQLite: "
                 f"executemany {_fmt(_m(sq['insert_many_rows_s']), '.2f')}, "
                 f"SELECT * {_fmt(_m(sq['warm_scan_rows_s']), '.2f')}")
    lines.append(f"{'method':<10} {'insert_many':>12} {'/sqlite':>8} {'warm scan':>10} "
                 f"{'/sqlite':>8}")
    for m, row in r["methods"].items():
        ratios = row["ratios"]
        lines.append(f"{m:<10} {_fmt(_m(row['small_insert_many_rows_s']), '>12.2f')} "
                     f"{_fmt(ratios['insert_many_vs_sqlite'], '>8.2f')} "
                     f"{_fmt(_m(row['small_warm_scan_rows_s']), '>10.2f')} "
                     f"{_fmt(ratios['warm_scan_vs_sqlite'], '>8.2f')}")
    if r["replay_mb"] > 0:
        lines.append(f"WAL replay (crash recovery of {r['replay_mb']:g} MB per workload), MB of "
                     f"WAL/s; target {r['replay_target_mb_s']:.0f}")
        lines.append(f"{'method':<10} " + " ".join(f"{w:>8}" for w in REPLAY_WORKLOADS))
        for m, row in r["methods"].items():
            lines.append(f"{m:<10} " + " ".join(_fmt(row["replay_mb_s"][w], ">8.0f")
                                                for w in REPLAY_WORKLOADS))
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def cmd_bench_scan(args: argparse.Namespace) -> int:
    # run_scan_bench always logs; --json sends no progress (run_bench_command's log None)
    return run_bench_command(
        args, lambda a, log: run_scan_bench(a, log=log or (lambda _msg: None)), format_table)
