"""``slonik bench kv``: the KV store through the whole engine, per io method.

For each io method, ``--runs`` times in alternating method order (medians reported), on a
new database in ``--dir``/<method>:

- load: ``--keys`` puts (16-byte keys, ``--value-size``-byte values) in one transaction,
  in random key order (one fixed permutation), commit included. Figure: puts/s.
- autocommit 1 / autocommit 8: 1 thread, then 8 threads, each putting new keys outside a
  transaction (one durable commit per put: its WAL is fsynced before the put returns;
  threads committing together share a sync) for ``--seconds``. Figures: puts/s, WAL syncs,
  puts per sync (the group-commit ratio), CPU µs per put (the process's, every thread,
  user + system) and µs per WAL flush (write + sync, as the WAL timed it).
- overwrite 1: 1 thread putting random keys of the load (``GET_SAMPLE_KEYS`` of them, the
  gets' sample) outside a transaction: each put supersedes the key's committed version.
  Figures as autocommit 1; SQLite's paired baseline is the same ``INSERT OR REPLACE`` of
  random keys of a table holding that sample.
- get: random keys of the load, read one by one outside a transaction, warm (every page
  is in memory after the load: in shared buffers or, past the default 128 MiB pool — the
  leaves of 1M keys take ~250 MB —, in the OS page cache, read through the io method; SQLite's
  128 MiB cache is in the same position), for ``--seconds``. Figure: gets/s.
- get_many: random keys in batches of ``GET_MANY_BATCH_KEYS`` (``kv.get_many``: the
  leaves of a batch read in one read stream), warm, for ``--seconds``. Figure: keys/s.
- scan: every pair in key order (``items()``), one snapshot, warm. Figure: keys/s and MB/s
  of key + value bytes.
- open: the database closed (shutdown checkpoint) and opened again (the B+tree's open
  reads its metapage only), then one get. Figures: seconds, and the process's RSS growth
  across the open (MB).
- cold scan: the database closed, its files dropped from the page cache
  (``posix_fadvise(DONTNEED)`` after the shutdown checkpoint's fsync), reopened with
  ``io_direct="data"`` (O_DIRECT: every leaf comes from the device through the read stream),
  and scanned in key order. Figure: keys/s.
- cold scan, eic 1: the same with ``effective_io_concurrency=1``: one read in flight at a
  time. As in PostgreSQL that read still combines up to ``io_combine_limit`` adjacent
  blocks, and the leaves of a tree built by one commit are adjacent in key order, so this
  is one 128 KiB read (16 leaves) at a time, not one leaf. Ratio: ``cold_vs_eic1``.
- cold scan, one leaf at a time: ``effective_io_concurrency=1`` and ``io_combine_limit=1``:
  one 8 KiB leaf read in flight, no look-ahead of any kind (neither more reads nor
  combining). The stream's look-ahead shows as the ratio of the cold scan to this one
  (``cold_vs_one_leaf``).
- aged store: a second store of ``--aged-keys`` keys (same key format and value), put in
  the same kind of random order but ``AGED_KEYS_PER_TXN`` per transaction, as a store that
  grew over time does: every commit splits leaves all over the key range, and a split's new
  leaf goes to the end of the file, so neighbouring leaves in key order are far apart on
  disk and a scan reads one 8 KiB leaf per I/O (combining has nothing to combine). Cold
  scans of it (as above) at the default ``effective_io_concurrency`` and at 1: their ratio
  (``aged_cold_vs_eic1``) is what the look-ahead's concurrent reads buy where only
  concurrency can help. Figure of the build: puts/s.

SQLite (``journal_mode=WAL``, ``synchronous=FULL``, a 128 MiB page cache, ``WITHOUT
ROWID`` so the table is its primary-key B-tree like the store) does the same in the same
``--dir`` once per run: the same keys in the same order in one transaction, the same random
gets, ``IN (...)`` batches of the same size, an ordered scan warm and cold (file dropped
from the page cache the same way; SQLite has no O_DIRECT), and its open (connect and first
query). The ratio table gives Slonik / SQLite for each rate (above 1: Slonik faster) and for
open seconds and RSS (below 1: Slonik smaller).

Baselines, measured in the same invocation and ``--dir`` (same file system), once per run:

- SQLite: one thread inserting rows (16-byte key, the same value) in autocommit with
  ``journal_mode=WAL`` and ``synchronous=FULL`` (every commit fsyncs its WAL), for
  ``--seconds``. Figure: puts/s.
- fio: 8 KiB sequential writes with fdatasync after each (``slonik bench wal``'s baseline),
  the device's flush rate. Figure: syncs/s (absent, with the reason, without fio).

The table gives each method's autocommit rates as ratios of these: auto1 / SQLite, auto1 /
fio, auto8 / SQLite. SQLite's autocommit is also measured again right before each of a
method's autocommit figures (``sqlite_paired_puts_s``, same ``--seconds``): the "paired"
ratios are the median over runs of each run's rate over that SQLite rate, so that both
sides of a ratio ran in the same minute (the machine's speed drifts by up to 2x within
minutes here, and the once-per-run baseline ran before a whole method's load).

The numbers are for one Python process: the engine's CPU cost per key (tuple coding,
index maintenance, the GIL) dominates, not the device; compare io methods with each other,
not with a C engine.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import threading
import time

from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.database import Database
from slonik.engine.tools.bench import (
    ALL_METHODS,
    parse_methods,
    positive_float,
    positive_int,
    run_bench_command,
)
from slonik.engine.tools.bench_wal import FIO_FILE, FIO_SIZE, run_fio_sync
from slonik.engine.tools.fio import FioError, fio_status
from slonik.engine.tools.progress import Progress

DEFAULT_DIR = "./bench-data/kv"
DEFAULT_KEYS = 1_000_000
DEFAULT_VALUE_SIZE = 100
VALUE_SIZE_MAX_BYTES = 4000           # a KV tuple must fit a page (no TOAST)
AUTOCOMMIT_THREADS = (1, 8)
LOAD_PROGRESS_STEP_KEYS = 10_000      # progress redraws and clock reads this seldom
GET_SAMPLE_KEYS = 100_000             # random keys drawn up front (cycled) for the get loop
OPS_PER_CLOCK_READ = 64               # time-bounded loops read the clock this seldom
RANDOM_SEED = 20250601
SQLITE_FILE = "sqlite-baseline.db"
SQLITE_READS_FILE = "sqlite-reads.db"
SQLITE_CACHE_KIB = 128 * 1024         # SQLite's page cache for the read comparison: 128 MiB
GET_MANY_BATCH_KEYS = 100             # keys per get_many call (and per SQLite IN (...))
DEFAULT_AGED_KEYS = 200_000           # the aged store's keys (~5,000 leaves, ~40 MB)
AGED_KEYS_PER_TXN = 1_000             # the aged store's puts per transaction


def _key(i: int) -> bytes:
    return b"key:%012d" % i


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help=f"scratch directory; one database per io method is created "
                             f"here and removed afterwards (default {DEFAULT_DIR})")
    parser.add_argument("--keys", type=positive_int, default=DEFAULT_KEYS,
                        help=f"keys loaded in one transaction (default {DEFAULT_KEYS})")
    parser.add_argument("--aged-keys", type=positive_int, default=DEFAULT_AGED_KEYS,
                        help=f"keys of the aged store, put {AGED_KEYS_PER_TXN:,} per "
                             f"transaction in random order (default {DEFAULT_AGED_KEYS})")
    parser.add_argument("--value-size", type=_value_size, default=DEFAULT_VALUE_SIZE,
                        help=f"bytes per value (default {DEFAULT_VALUE_SIZE})")
    parser.add_argument("--seconds", type=positive_float, default=2.0,
                        help="length of each time-bounded measurement: autocommit puts, "
                             "gets (default 2)")
    parser.add_argument("--runs", type=positive_int, default=1,
                        help="measurements of each kind; the median is reported (default 1)")
    parser.add_argument("--methods", type=parse_methods, default=None,
                        help="comma-separated io methods (default: sync,worker,io_uring, "
                             "those available)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _value_size(text: str) -> int:
    size = int(text)
    if not 0 <= size <= VALUE_SIZE_MAX_BYTES:
        raise argparse.ArgumentTypeError(
            f"value size must be 0..{VALUE_SIZE_MAX_BYTES} bytes, got {text!r}")
    return size


# --- measurements --------------------------------------------------------------------------

def _load_order(nkeys: int) -> list[int]:
    """The key numbers in the (fixed) random order both engines load them in."""
    order = list(range(nkeys))
    random.Random(RANDOM_SEED).shuffle(order)
    return order


def _sample(nkeys: int) -> list[bytes]:
    """The random keys both engines' get loops cycle through."""
    rng = random.Random(RANDOM_SEED)
    return [_key(rng.randrange(nkeys)) for _ in range(min(nkeys, GET_SAMPLE_KEYS))]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _drop_from_page_cache(paths: list[str]) -> None:
    """Evict the files' pages from the OS page cache (they are clean: fsynced)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _files_under(path: str) -> list[str]:
    return [os.path.join(d, n) for d, _dirs, names in os.walk(path) for n in names]


def measure_load(db: Database, nkeys: int, value: bytes, progress: bool) -> dict:
    kv = db.kv("bench")
    order = _load_order(nkeys)
    start = time.perf_counter()
    with Progress("  load", nkeys, unit="puts", enabled=progress) as p, db.transaction():
        for first in range(0, nkeys, LOAD_PROGRESS_STEP_KEYS):
            last = min(first + LOAD_PROGRESS_STEP_KEYS, nkeys)
            for i in order[first:last]:
                kv[_key(i)] = value
            p.advance(last - first)
    seconds = time.perf_counter() - start
    return {"puts": nkeys, "seconds": seconds, "puts_s": nkeys / seconds}


def build_aged(path: str, method: str, nkeys: int, value: bytes) -> dict:
    """The aged store at ``path``: ``nkeys`` puts in random key order (``_load_order``),
    ``AGED_KEYS_PER_TXN`` per transaction."""
    order = _load_order(nkeys)
    with Database.open(path, io_method=method) as db:
        kv = db.kv("bench")
        start = time.perf_counter()
        for first in range(0, nkeys, AGED_KEYS_PER_TXN):
            with db.transaction():
                for i in order[first:first + AGED_KEYS_PER_TXN]:
                    kv[_key(i)] = value
        seconds = time.perf_counter() - start
    return {"puts": nkeys, "seconds": seconds, "puts_s": nkeys / seconds}


def settle(db: Database) -> None:
    """Write back what earlier phases left dirty before a commit-rate measurement: a
    checkpoint (the pool's dirty pages) and an OS sync (the kernel's write-back of them
    and of the WAL). Without it the load's hundreds of MB were still being written while
    the first autocommit puts ran, their fdatasyncs queued behind it, and the last io
    method measured got the most of it (SQLite's baseline starts from a clean state)."""
    db.checkpoint()
    os.sync()


def measure_autocommit(db: Database, threads: int, seconds: float, value: bytes,
                       keys: list[bytes] | None = None) -> dict:
    """Durable autocommit puts from ``threads`` threads for ``seconds``: new keys, or with
    ``keys`` random ones of them (overwrites of existing keys)."""
    kv = db.kv("bench")
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def putter(t: int) -> None:
        prefix = b"auto%d:%d:" % (threads, t)
        pick = None if keys is None else random.Random(RANDOM_SEED + t).choice
        n = 0
        barrier.wait()
        deadline = time.perf_counter() + seconds
        try:
            while True:
                for _ in range(OPS_PER_CLOCK_READ):
                    kv[prefix + b"%09d" % n if pick is None else pick(keys)] = value
                    n += 1
                if time.perf_counter() >= deadline:
                    break
        except BaseException as exc:  # reported by the parent
            errors.append(exc)
        counts[t] = n

    before = db.stats().wal
    writer = db._walwriter   # (its flushes: the WAL's count includes them)
    writer_before = writer.stats().flushes if writer is not None else 0
    workers = [threading.Thread(target=putter, args=(t,), name=f"bench-kv-{t}")
               for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    cpu_start = time.process_time()   # every thread's CPU, user + system
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    if errors:
        raise errors[0]
    after = db.stats().wal
    writer_flushes = (writer.stats().flushes - writer_before) if writer is not None else 0
    puts = sum(counts)
    syncs = max(after.flushes - before.flushes, 0)
    # CPU per put (the process's, all threads) beside the device time of one flush (the
    # WAL's write + sync, as the WAL timed it): what a commit costs besides waiting.
    return {"threads": threads, "puts": puts, "seconds": elapsed, "puts_s": puts / elapsed,
            "wal_flushes": syncs, "puts_per_flush": puts / syncs if syncs else None,
            # (of wal_flushes, those the background WAL writer made: one that catches a
            # put's records before its commit's flush adds a flush to that put)
            "walwriter_flushes": writer_flushes,
            "cpu_us_per_put": cpu / puts * 1e6 if puts else None,
            "flush_us": (after.sync_ns - before.sync_ns) / syncs / 1e3 if syncs else None}


def measure_gets(db: Database, nkeys: int, seconds: float) -> dict:
    kv = db.kv("bench")
    keys = _sample(nkeys)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    nsample = len(keys)
    while True:
        for _ in range(OPS_PER_CLOCK_READ):
            if kv[keys[i]] is None:
                raise AssertionError("a loaded key is missing")
            i = i + 1 if i + 1 < nsample else 0
        n += OPS_PER_CLOCK_READ
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return {"gets": n, "seconds": elapsed, "gets_s": n / elapsed}


def measure_get_many(db: Database, nkeys: int, seconds: float) -> dict:
    kv = db.kv("bench")
    keys = _sample(nkeys)
    batches = [keys[i:i + GET_MANY_BATCH_KEYS]
               for i in range(0, len(keys) - GET_MANY_BATCH_KEYS + 1, GET_MANY_BATCH_KEYS)] \
        or [keys]
    n = i = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        got = kv.get_many(batches[i])
        if None in got:
            raise AssertionError("a loaded key is missing")
        n += len(got)
        i = i + 1 if i + 1 < len(batches) else 0
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return {"keys": n, "seconds": elapsed, "keys_s": n / elapsed}


def measure_cold_scan(path: str, method: str, eic: int | None = None,
                      combine: int | None = None) -> dict:
    """Drop the closed database's files from the page cache, reopen with O_DIRECT data
    files (and ``effective_io_concurrency=eic``, ``io_combine_limit=combine`` unless None:
    the defaults), scan in key order."""
    _drop_from_page_cache(_files_under(os.path.join(path, "base")))
    extra = {} if eic is None else {"effective_io_concurrency": eic}
    if combine is not None:
        extra["io_combine_limit"] = combine
    with Database.open(path, io_method=method, io_direct="data", **extra) as db:
        out = measure_scan(db)
        out["read_ios"] = db.stats().buffers.read_ios
    return out


def measure_scan(db: Database) -> dict:
    kv = db.kv("bench")
    n = nbytes = 0
    start = time.perf_counter()
    for k, v in kv.items():
        n += 1
        nbytes += len(k) + len(v)
    elapsed = time.perf_counter() - start
    return {"keys": n, "seconds": elapsed, "keys_s": n / elapsed,
            "mb_s": nbytes / 1e6 / elapsed}


def measure_open(path: str, method: str, probe: bytes) -> dict:
    rss = _rss_bytes()
    start = time.perf_counter()
    with Database.open(path, io_method=method) as db:
        if db.kv("bench").get(probe) is None:
            raise AssertionError("a loaded key is missing")
        elapsed = time.perf_counter() - start
        rss_mb = max(_rss_bytes() - rss, 0) / 1e6
        stats = db.stats()
        keys = next(r.live_keys for r in stats.relations if r.name == "bench")
        heap_bytes = next(r.bytes for r in stats.relations if r.name == "bench")
        read_ios = stats.buffers.read_ios
    return {"seconds": elapsed, "keys": keys, "keys_s": keys / elapsed,
            "heap_mb": heap_bytes / 1e6, "read_ios": read_ios, "rss_mb": rss_mb}


def measure_sqlite_reads(path: str, nkeys: int, seconds: float, value: bytes) -> dict:
    """SQLite doing what the store does: load in one transaction (same order), warm random
    gets, IN (...) batches, warm and cold ordered scans, open; WAL, synchronous=FULL."""
    files = [path + suffix for suffix in ("", "-wal", "-shm")]

    def remove() -> None:
        for f in files:
            if os.path.exists(f):
                os.unlink(f)

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        return con

    def scan(con) -> dict:
        n = nbytes = 0
        start = time.perf_counter()
        for k, v in con.execute("SELECT key, value FROM kv ORDER BY key"):
            n += 1
            nbytes += len(k) + len(v)
        elapsed = time.perf_counter() - start
        return {"keys": n, "seconds": elapsed, "keys_s": n / elapsed,
                "mb_s": nbytes / 1e6 / elapsed}

    remove()
    out = {}
    try:
        con = connect()
        con.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) "
                    "WITHOUT ROWID")
        start = time.perf_counter()
        con.execute("BEGIN")
        con.executemany("INSERT INTO kv VALUES (?, ?)",
                        ((_key(i), value) for i in _load_order(nkeys)))
        con.execute("COMMIT")
        elapsed = time.perf_counter() - start
        out["load"] = {"puts": nkeys, "seconds": elapsed, "puts_s": nkeys / elapsed}
        keys = _sample(nkeys)
        get = "SELECT value FROM kv WHERE key = ?"
        n = i = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(OPS_PER_CLOCK_READ):
                if con.execute(get, (keys[i],)).fetchone() is None:
                    raise AssertionError("a loaded key is missing")
                i = i + 1 if i + 1 < len(keys) else 0
            n += OPS_PER_CLOCK_READ
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        out["get"] = {"gets": n, "seconds": elapsed, "gets_s": n / elapsed}
        batch = min(GET_MANY_BATCH_KEYS, len(keys))
        many = f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * batch)})"
        n = i = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            chunk = keys[i:i + batch]
            if len(chunk) < batch:
                i, chunk = 0, keys[:batch]
            got = dict(con.execute(many, chunk).fetchall())
            if len(got) != len(set(chunk)):
                raise AssertionError("a loaded key is missing")
            n += batch
            i += batch
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        out["get_many"] = {"keys": n, "seconds": elapsed, "keys_s": n / elapsed}
        out["scan"] = scan(con)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        _drop_from_page_cache([f for f in files if os.path.exists(f)])
        rss = _rss_bytes()
        start = time.perf_counter()
        con = connect()
        if con.execute(get, (keys[0],)).fetchone() is None:
            raise AssertionError("a loaded key is missing")
        elapsed = time.perf_counter() - start
        out["open"] = {"seconds": elapsed, "rss_mb": max(_rss_bytes() - rss, 0) / 1e6}
        con.close()
        _drop_from_page_cache([f for f in files if os.path.exists(f)])
        con = connect()
        out["cold_scan"] = scan(con)
        con.close()
    finally:
        remove()
    return out


def measure_sqlite(path: str, seconds: float, value: bytes,
                   keys: list[bytes] | None = None) -> dict:
    """SQLite autocommit inserts from one thread, WAL journal, synchronous=FULL; with
    ``keys`` (loaded first, in one transaction) ``INSERT OR REPLACE`` of random ones."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL)")
        insert = "INSERT INTO kv VALUES (?, ?)"
        pick = None
        if keys is not None:
            con.execute("BEGIN")
            con.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)",
                            ((k, value) for k in keys))
            con.execute("COMMIT")
            insert = "INSERT OR REPLACE INTO kv VALUES (?, ?)"
            pick = random.Random(RANDOM_SEED).choice
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(OPS_PER_CLOCK_READ):
                con.execute(insert, (_key(n) if pick is None else pick(keys), value))
                n += 1
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
    return {"puts": n, "seconds": elapsed, "puts_s": n / elapsed}


def measure_baselines(directory: str, seconds: float, value: bytes, fio_ok: bool) -> dict:
    """SQLite FULL, 1 thread, and fio's fdatasync rate, in ``directory``, each from a
    clean state (an OS sync first, as ``settle`` before the autocommit puts)."""
    os.sync()
    out = {"sqlite": measure_sqlite(os.path.join(directory, SQLITE_FILE), seconds, value)}
    if fio_ok:
        path = os.path.join(directory, FIO_FILE)
        try:
            os.sync()
            out["fio"] = run_fio_sync(path, FIO_SIZE, seconds)
        except (FioError, KeyError) as exc:
            out["fio"] = {"error": str(exc)}
        finally:
            if os.path.exists(path):
                os.unlink(path)
    return out


def measure_paired(db: Database, args: argparse.Namespace, threads: int, value: bytes,
                   keys: list[bytes] | None = None) -> dict:
    """``measure_autocommit`` with SQLite's 1-thread autocommit of the same kind (new keys,
    or with ``keys`` ``INSERT OR REPLACE`` of them) measured right before it, from a
    synced file system and a settled database: its puts/s as ``sqlite_paired_puts_s``."""
    os.sync()
    paired = measure_sqlite(os.path.join(args.dir, SQLITE_FILE), args.seconds, value,
                            keys=keys)["puts_s"]
    settle(db)
    out = measure_autocommit(db, threads, args.seconds, value, keys=keys)
    out["sqlite_paired_puts_s"] = paired
    return out


def run_once(path: str, method: str, args: argparse.Namespace, log) -> dict:
    if os.path.exists(path):
        shutil.rmtree(path)
    value = bytes(random.Random(RANDOM_SEED).randbytes(args.value_size))
    try:
        with Database.open(path, io_method=method) as db:
            placement = db._wal.commit_placement
            load = measure_load(db, args.keys, value, progress=log is not None)
            auto = {}
            for threads in AUTOCOMMIT_THREADS:
                if log:
                    log(f"  autocommit puts, {threads} thread{'s' if threads > 1 else ''}"
                        f" (SQLite's 1-thread autocommit right before: the paired baseline)")
                auto[threads] = measure_paired(db, args, threads, value)
            if log:
                log("  autocommit overwrites of loaded keys, 1 thread (SQLite's INSERT OR "
                    "REPLACE of its keys right before)")
            over = measure_paired(db, args, 1, value, keys=_sample(args.keys))
            if log:
                log("  random gets, get_many, scan, reopen, cold scan")
            gets = measure_gets(db, args.keys, args.seconds)
            many = measure_get_many(db, args.keys, args.seconds)
            scan = measure_scan(db)
        opened = measure_open(path, method, _key(0))
        cold = measure_cold_scan(path, method)
        cold_eic1 = measure_cold_scan(path, method, eic=1)
        cold_one_leaf = measure_cold_scan(path, method, eic=1, combine=1)
        if os.path.exists(path):
            shutil.rmtree(path)
        if log:
            log(f"  aged store: {args.aged_keys:,} keys, {AGED_KEYS_PER_TXN:,} per "
                f"transaction; cold scans")
        aged = build_aged(path, method, args.aged_keys, value)
        cold_aged = measure_cold_scan(path, method)
        cold_aged_eic1 = measure_cold_scan(path, method, eic=1)
    finally:
        if os.path.exists(path):
            shutil.rmtree(path)
    return {"load": load, "autocommit_1": auto[1], "autocommit_8": auto[8],
            "overwrite_1": over, "get": gets,
            "get_many": many, "scan": scan, "open": opened, "cold_scan": cold,
            "cold_scan_eic1": cold_eic1, "cold_scan_one_leaf": cold_one_leaf,
            "aged_build": aged, "cold_scan_aged": cold_aged,
            "cold_scan_aged_eic1": cold_aged_eic1, "commit_placement": placement}


FIGURES = {
    "load": ("puts_s", "seconds"),
    "autocommit_1": ("puts_s", "wal_flushes", "puts_per_flush", "cpu_us_per_put", "flush_us",
                     "sqlite_paired_puts_s"),
    "autocommit_8": ("puts_s", "wal_flushes", "puts_per_flush", "cpu_us_per_put", "flush_us",
                     "sqlite_paired_puts_s"),
    "overwrite_1": ("puts_s", "wal_flushes", "puts_per_flush", "cpu_us_per_put", "flush_us",
                    "sqlite_paired_puts_s"),
    "get": ("gets_s",),
    "get_many": ("keys_s",),
    "scan": ("keys_s", "mb_s"),
    "open": ("seconds", "keys_s"),
    "cold_scan": ("keys_s", "mb_s"),
    "cold_scan_eic1": ("keys_s", "mb_s"),
    "cold_scan_one_leaf": ("keys_s", "mb_s"),
    "aged_build": ("puts_s",),
    "cold_scan_aged": ("keys_s", "mb_s"),
    "cold_scan_aged_eic1": ("keys_s", "mb_s"),
}
# Slonik / SQLite for the table: (row, kind, figure); rates above 1 favour Slonik,
# open seconds and RSS below 1.
READ_RATIOS = (("puts in one transaction", "load", "puts_s"),
               ("warm random gets", "get", "gets_s"),
               (f"get_many, batches of {GET_MANY_BATCH_KEYS}", "get_many", "keys_s"),
               ("warm ordered scan", "scan", "keys_s"),
               ("cold ordered scan", "cold_scan", "keys_s"),
               ("open seconds", "open", "seconds"),
               ("RSS growth at open", "open", "rss_mb"))


def _median(samples: list[dict], keys: tuple[str, ...]) -> dict:
    out = {}
    for k in keys:
        values = [s[k] for s in samples if s.get(k) is not None]
        out[k] = statistics.median(values) if values else None
    out["runs"] = samples
    return out


def run_kv_bench(args: argparse.Namespace, log=None) -> dict:
    methods = args.methods or [m for m in ALL_METHODS
                               if m != "io_uring" or io_uring_available()[0]]
    if "io_uring" in methods and not io_uring_available()[0]:
        raise ValueError(f"io_uring is unavailable here: {io_uring_available()[1]}")
    os.makedirs(args.dir, exist_ok=True)
    fio_ok, fio_detail = fio_status()
    value = bytes(random.Random(RANDOM_SEED).randbytes(args.value_size))
    samples: dict[str, list[dict]] = {m: [] for m in methods}
    baselines: list[dict] = []
    for run in range(args.runs):
        if log:
            log(f"baselines (SQLite FULL, fio fdatasync): run {run + 1} of {args.runs}")
        baselines.append(measure_baselines(args.dir, args.seconds, value, fio_ok))
        if log:
            log(f"SQLite reads (load, gets, IN batches, scans, open): run {run + 1} of "
                f"{args.runs}")
        baselines[-1]["sqlite_reads"] = measure_sqlite_reads(
            os.path.join(args.dir, SQLITE_READS_FILE), args.keys, args.seconds, value)
        order = methods if run % 2 == 0 else list(reversed(methods))
        for method in order:
            if log:
                log(f"{method}: run {run + 1} of {args.runs}")
            samples[method].append(run_once(os.path.join(args.dir, method), method, args, log))
    report = {"command": "kv", "keys": args.keys, "aged_keys": args.aged_keys,
              "value_size": args.value_size,
              "seconds": args.seconds, "runs": args.runs,
              "autocommit_threads": list(AUTOCOMMIT_THREADS), "methods": {},
              "baselines": {
                  "sqlite": _median([b["sqlite"] for b in baselines], ("puts_s",)),
                  "fio": (_median([b["fio"] for b in baselines], ("syncs_s",))
                          if fio_ok else {"syncs_s": None, "detail": fio_detail})}}
    sqlite_reads = report["baselines"]["sqlite_reads"] = {
        kind: _median([b["sqlite_reads"][kind] for b in baselines],
                      tuple(k for k in ("puts_s", "gets_s", "keys_s", "mb_s", "seconds",
                                        "rss_mb") if k in baselines[0]["sqlite_reads"][kind]))
        for kind in baselines[0]["sqlite_reads"]}
    sqlite_s = report["baselines"]["sqlite"]["puts_s"]
    fio_s = report["baselines"]["fio"]["syncs_s"]
    for method in methods:
        m = report["methods"][method] = {
            kind: _median([s[kind] for s in samples[method]], keys)
            for kind, keys in FIGURES.items()}
        m["commit_placement"] = samples[method][0]["commit_placement"]
        a1, a8 = m["autocommit_1"]["puts_s"], m["autocommit_8"]["puts_s"]
        paired = {k: statistics.median(s[f"autocommit_{k}"]["puts_s"]
                                       / s[f"autocommit_{k}"]["sqlite_paired_puts_s"]
                                       for s in samples[method]) for k in (1, 8)}
        m["ratios"] = {"auto1_sqlite": a1 / sqlite_s,
                       "auto1_fio": a1 / fio_s if fio_s else None,
                       "auto8_sqlite": a8 / sqlite_s,
                       # each run's rate over SQLite's measured right before it (the same
                       # minute of a machine whose speed drifts), median of the runs
                       "auto1_sqlite_paired": paired[1], "auto8_sqlite_paired": paired[8],
                       "over1_sqlite_paired": statistics.median(
                           s["overwrite_1"]["puts_s"] / s["overwrite_1"]["sqlite_paired_puts_s"]
                           for s in samples[method]),
                       "cold_vs_eic1": m["cold_scan"]["keys_s"] / m["cold_scan_eic1"]["keys_s"],
                       "cold_vs_one_leaf":
                           m["cold_scan"]["keys_s"] / m["cold_scan_one_leaf"]["keys_s"],
                       "aged_cold_vs_eic1":
                           m["cold_scan_aged"]["keys_s"] / m["cold_scan_aged_eic1"]["keys_s"]}
        rss = _median([s["open"] for s in samples[method]], ("rss_mb",))["rss_mb"]
        mine = {("open", "rss_mb"): rss}
        m["read_ratios"] = {}
        for row, kind, fig in READ_RATIOS:
            ours = mine.get((kind, fig), m[kind].get(fig))
            theirs = sqlite_reads[kind].get(fig)
            m["read_ratios"][row] = ours / theirs if ours is not None and theirs else None
    return report


def format_table(report: dict) -> str:
    head = (f"{'io_method':<9} {'load puts/s':>11} {'auto1 puts/s':>12} {'auto8 puts/s':>12} "
            f"{'auto8 puts/flush':>16} {'gets/s':>9} {'scan keys/s':>11} {'scan MB/s':>9} "
            f"{'open s':>7}")
    lines = [f"slonik bench kv: {report['keys']:,} keys of {report['value_size']} bytes, "
             f"{report['seconds']:g} s per timed figure, median of {report['runs']} "
             f"run{'s' if report['runs'] != 1 else ''}", "", head, "-" * len(head)]
    for method, m in report["methods"].items():
        ppf = m["autocommit_8"]["puts_per_flush"]
        lines.append(
            f"{method:<9} {m['load']['puts_s']:>11,.0f} {m['autocommit_1']['puts_s']:>12,.0f} "
            f"{m['autocommit_8']['puts_s']:>12,.0f} "
            f"{(f'{ppf:.1f}' if ppf is not None else '-'):>16} {m['get']['gets_s']:>9,.0f} "
            f"{m['scan']['keys_s']:>11,.0f} {m['scan']['mb_s']:>9.1f} "
            f"{m['open']['seconds']:>7.2f}")
    base = report["baselines"]
    sqlite_s, fio_s = base["sqlite"]["puts_s"], base["fio"]["syncs_s"]
    lines.append("")
    lines.append(f"SQLite (WAL, synchronous=FULL), 1 thread: {sqlite_s:,.0f} puts/s; "
                 + (f"fio 8 KiB write + fdatasync: {fio_s:,.0f} syncs/s" if fio_s
                    else f"fio: {base['fio'].get('detail', 'failed')}"))
    placements = {tuple(m["commit_placement"] or ()) for m in report["methods"].values()}
    if len(placements) == 1:
        cpus = placements.pop()
        lines.append("commit placement: " + (f"waiting committers on CPU {cpus[0]}, WAL "
                                             f"flusher on CPU {cpus[1]}" if cpus else "off"))
    # Indented: a sub-table of the one above (its rows are the methods' again).
    head = (f"  {'ratios':<9} {'auto1 puts/s':>12} {'auto1/SQLite':>12} {'paired':>7} "
            f"{'auto1/fio':>9} {'auto8 puts/s':>12} {'auto8/SQLite':>12} {'paired':>7} "
            f"{'CPU us/put 1/8':>14} {'flush us 1/8':>12}")
    lines += ["", head, "  " + "-" * (len(head) - 2)]
    for method, m in report["methods"].items():
        r = m["ratios"]
        a1f = f"{r['auto1_fio']:.2f}" if r["auto1_fio"] is not None else "-"
        a1, a8 = m["autocommit_1"], m["autocommit_8"]
        cpu = f"{a1['cpu_us_per_put'] or 0:.0f} / {a8['cpu_us_per_put'] or 0:.0f}"
        flush = f"{a1['flush_us'] or 0:.0f} / {a8['flush_us'] or 0:.0f}"
        lines.append(f"  {method:<9} {a1['puts_s']:>12,.0f} "
                     f"{r['auto1_sqlite']:>12.2f} {r['auto1_sqlite_paired']:>7.2f} {a1f:>9} "
                     f"{a8['puts_s']:>12,.0f} {r['auto8_sqlite']:>12.2f} "
                     f"{r['auto8_sqlite_paired']:>7.2f} {cpu:>14} {flush:>12}")
    head = (f"  {'overwrites':<9} {'over1 puts/s':>12} {'SQLite paired':>13} "
            f"{'over1/paired':>12} {'CPU us/put':>10}")
    lines += ["", head, "  " + "-" * (len(head) - 2)]
    for method, m in report["methods"].items():
        o = m["overwrite_1"]
        lines.append(f"  {method:<9} {o['puts_s']:>12,.0f} {o['sqlite_paired_puts_s']:>13,.0f} "
                     f"{m['ratios']['over1_sqlite_paired']:>12.2f} "
                     f"{o['cpu_us_per_put'] or 0:>10.0f}")
    sr = base["sqlite_reads"]
    lines += ["", "Slonik / SQLite (WAL, synchronous=FULL, 128 MiB cache, WITHOUT ROWID), "
                  "same keys, same order:", ""]
    methods = list(report["methods"])
    head = f"  {'workload':<26} {'SQLite':>12} " + " ".join(f"{m:>9}" for m in methods)
    lines += [head, "  " + "-" * (len(head) - 2)]
    for row, kind, fig in READ_RATIOS:
        theirs = sr[kind].get(fig)
        cells = []
        for method in methods:
            r = report["methods"][method]["read_ratios"][row]
            cells.append(f"{r:>9.2f}" if r is not None else f"{'-':>9}")
        unit = {"puts_s": "/s", "gets_s": "/s", "keys_s": "/s", "seconds": " s",
                "rss_mb": " MB"}[fig]
        shown = f"{theirs:,.3f}{unit}" if fig in ("seconds", "rss_mb") and theirs is not None \
            else (f"{theirs:,.0f}{unit}" if theirs is not None else "-")
        lines.append(f"  {row:<26} {shown:>12} " + " ".join(cells))
    for label, kind, ratio in (("eic 1", "cold_scan_eic1", "cold_vs_eic1"),
                               ("one leaf", "cold_scan_one_leaf", "cold_vs_one_leaf")):
        cells = " ".join(f"{report['methods'][m][kind]['keys_s']:>9,.0f}" for m in methods)
        lines.append(f"  {f'cold scan, {label} (keys/s)':<26} {'':>12} " + cells)
        cells = " ".join(f"{report['methods'][m]['ratios'][ratio]:>9.2f}" for m in methods)
        lines.append(f"  {f'cold scan / cold {label}':<26} {'':>12} " + cells)
    lines += ["", f"Aged store: {report['aged_keys']:,} keys put in random order, "
                  f"{AGED_KEYS_PER_TXN:,} per transaction (leaves scattered on disk):", ""]
    head = f"  {'keys/s':<26} {'':>12} " + " ".join(f"{m:>9}" for m in methods)
    lines += [head, "  " + "-" * (len(head) - 2)]
    for label, kind in (("build (puts/s)", "aged_build"), ("cold scan", "cold_scan_aged"),
                        ("cold scan, eic 1", "cold_scan_aged_eic1")):
        fig = "puts_s" if kind == "aged_build" else "keys_s"
        cells = " ".join(f"{report['methods'][m][kind][fig]:>9,.0f}" for m in methods)
        lines.append(f"  {label:<26} {'':>12} " + cells)
    cells = " ".join(f"{report['methods'][m]['ratios']['aged_cold_vs_eic1']:>9.2f}"
                     for m in methods)
    lines.append(f"  {'cold scan / cold eic 1':<26} {'':>12} " + cells)
    lines.append("")
    lines.append("load: all keys in one transaction, random order, commit included; "
                 "auto1/auto8: durable autocommit puts from 1/8 threads (CPU us/put: the "
                 "process's CPU per put; flush us: one WAL write + sync); over1: durable "
                 "autocommit overwrites of loaded keys, 1 thread, beside SQLite's INSERT OR "
                 "REPLACE right before; gets: random, warm; "
                 "open: reopen (metapage only) and one get; cold scan: page cache dropped, "
                 "O_DIRECT; eic 1: effective_io_concurrency=1 (one read in flight, still "
                 "combining adjacent leaves); one leaf: eic 1 and io_combine_limit=1 (one "
                 "8 KiB leaf read in flight)")
    return "\n".join(lines)


def cmd_bench_kv(args: argparse.Namespace) -> int:
    return run_bench_command(args, run_kv_bench, format_table)
