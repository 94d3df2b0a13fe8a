"""``slonik demo``: the engine end to end, on real files, in well under two minutes.

1. Load: a new database gets ``--keys`` KV pairs (default 200,000; 16-byte keys, 100-byte
   values) in transactions of ``LOAD_BATCH_KEYS``, a table ``events`` of a quarter as
   many small rows, and a table ``bulk`` of ``--table-mb`` MB (default 256) of rows with
   ``BULK_PAYLOAD_BYTES`` payloads, loaded with ``insert_many``; progress on stderr.
2. Scan, per io method available here: a new ``Database`` (so the buffer pool is empty)
   with ``io_direct=data`` (so the OS page cache is out of the way too; ``--buffered``
   keeps it) opens the database (the metapages only: constant time), then scans the KV
   store in key order, the events table and the bulk table sequentially. One row per
   method: open time, keys/s of the ordered KV scan, rows/s of the events scan, MB/s of
   the bulk scan and its ratio to the sync method's (the bulk table is large enough that
   the I/O, not the per-row work, sets its speed: what each io method buys shows there),
   and the I/O counters of ``db.stats()`` (pg_stat_io's reads, average I/O size, I/O
   wait).
3. Crash: a child process (``writer_child``) opens the database and writes — autocommit
   puts, and every ``TXN_EVERY``-th step a transaction of ``TXN_KEYS`` puts — printing
   one line per write once its commit has returned (acknowledged = durable). After about
   ``--crash-seconds`` of acknowledged writes the parent kills it with SIGKILL, reopens
   (crash recovery) and checks that every acknowledged write is there with its value and
   that every transaction is all or nothing. A missing write makes the demo exit 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from slonik.aio import osfile
from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.database import Database
from slonik.engine.tools.progress import Progress

DEFAULT_KEYS = 200_000
LOAD_BATCH_KEYS = 10_000         # puts per load transaction: big commits, bounded memory
TABLE_ROWS_PER_KEY = 0.25        # events rows per KV pair
VALUE_BYTES = 100
CRASH_SECONDS_DEFAULT = 1.0      # acknowledged writing before the SIGKILL
CHILD_START_TIMEOUT_SECONDS = 60  # import + open (with recovery) of the child
TXN_EVERY = 5                    # every 5th writer step is a multi-key transaction ...
TXN_KEYS = 4                     # ... of this many puts
CRASH_STORE = "crash"
KV_STORE = "users"
TABLE = "events"
TABLE_COLUMNS = [("id", "int8"), ("name", "text"), ("score", "float8"), ("payload", "bytea")]
BULK_TABLE = "bulk"
BULK_COLUMNS = [("id", "int8"), ("payload", "bytea")]
BULK_PAYLOAD_BYTES = 1000        # 7 rows per 8 KiB page: the scan is I/O, not row decoding
BULK_ROW_BYTES = 1040            # payload + tuple header, columns and line pointer (about)
DEFAULT_TABLE_MB = 256

_CHILD_CODE = ("import sys; from slonik.engine.tools.demo import writer_child; "
               "sys.exit(writer_child(sys.argv[1], sys.argv[2]))")


def _key(i: int) -> bytes:
    return b"user:%011d" % i


def _value(i: int) -> bytes:
    head = b"value of %d " % i
    return head + b"." * (VALUE_BYTES - len(head))


def available_methods() -> list[str]:
    methods = ["sync", "worker"]
    if io_uring_available()[0]:
        methods.append("io_uring")
    return methods


# --- 1. load -------------------------------------------------------------------------------

def bulk_rows(table_mb: float) -> int:
    """Rows of ``BULK_TABLE`` for a table of about ``table_mb`` MB."""
    return int(table_mb * 1e6 / BULK_ROW_BYTES)


def load(path: str, nkeys: int, *, table_mb: float = 0, io_method: str = "auto",
         progress: bool = True) -> None:
    """``nkeys`` KV pairs in ``KV_STORE``, ``nkeys / 4`` rows in ``TABLE`` and about
    ``table_mb`` MB of rows in ``BULK_TABLE``."""
    with Database.open(path, io_method=io_method) as db:
        kv = db.kv(KV_STORE)
        with Progress("loading KV pairs", nkeys, unit="keys", enabled=progress) as p:
            for first in range(0, nkeys, LOAD_BATCH_KEYS):
                last = min(first + LOAD_BATCH_KEYS, nkeys)
                with db.transaction():
                    for i in range(first, last):
                        kv[_key(i)] = _value(i)
                p.advance(last - first)
        nrows = int(nkeys * TABLE_ROWS_PER_KEY)
        table = db.create_table(TABLE, TABLE_COLUMNS)
        with Progress("loading table rows", nrows, unit="rows", enabled=progress) as p:
            for first in range(0, nrows, LOAD_BATCH_KEYS):
                last = min(first + LOAD_BATCH_KEYS, nrows)
                with db.transaction():
                    table.insert_many([(i, f"event {i}", i / 7, b"\x00" * 32)
                                       for i in range(first, last)])
                p.advance(last - first)
        nbulk = bulk_rows(table_mb)
        bulk = db.create_table(BULK_TABLE, BULK_COLUMNS)
        payload = bytes(range(256)) * (BULK_PAYLOAD_BYTES // 256) + \
            b"." * (BULK_PAYLOAD_BYTES % 256)
        with Progress("loading bulk rows", nbulk, unit="rows", enabled=progress) as p:
            for first in range(0, nbulk, LOAD_BATCH_KEYS):
                last = min(first + LOAD_BATCH_KEYS, nbulk)
                with db.transaction():
                    bulk.insert_many([(i, payload) for i in range(first, last)])
                p.advance(last - first)


# --- 2. cold scans -------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanResult:
    io_method: str
    open_seconds: float
    kv_keys: int
    kv_bytes: int
    kv_seconds: float
    table_rows: int
    table_bytes: int
    table_seconds: float
    bulk_rows: int
    bulk_bytes: int
    bulk_seconds: float
    read_ios: int
    read_bytes: int
    hits: int
    io_wait_ms: float

    @property
    def kv_keys_s(self) -> float:
        return self.kv_keys / max(self.kv_seconds, 1e-9)

    @property
    def kv_mb_s(self) -> float:
        return self.kv_bytes / 1e6 / max(self.kv_seconds, 1e-9)

    @property
    def table_rows_s(self) -> float:
        return self.table_rows / max(self.table_seconds, 1e-9)

    @property
    def table_mb_s(self) -> float:
        return self.table_bytes / 1e6 / max(self.table_seconds, 1e-9)

    @property
    def bulk_mb_s(self) -> float:
        return self.bulk_bytes / 1e6 / max(self.bulk_seconds, 1e-9)


def scan_cold(path: str, io_method: str, *, io_direct: str = "data") -> ScanResult:
    """Open ``path`` with a new Database and scan the KV store and both tables once."""
    t0 = time.perf_counter()
    with Database.open(path, io_method=io_method, io_direct=io_direct) as db:
        open_seconds = time.perf_counter() - t0
        kv = db.kv(KV_STORE)
        t0 = time.perf_counter()
        nkeys = nbytes = 0
        for k, v in kv.items():
            nkeys += 1
            nbytes += len(k) + len(v)
        kv_seconds = time.perf_counter() - t0
        table = db.table(TABLE)
        t0 = time.perf_counter()
        nrows = sum(1 for _ in table.scan())
        table_seconds = time.perf_counter() - t0
        bulk = db.table(BULK_TABLE)
        t0 = time.perf_counter()
        nbulk = sum(1 for _ in bulk.scan())
        bulk_seconds = time.perf_counter() - t0
        stats = db.stats()
        size = {r.name: r.bytes for r in stats.relations}
        b = stats.buffers
        return ScanResult(stats.io_method, open_seconds, nkeys, nbytes, kv_seconds, nrows,
                          size[TABLE], table_seconds, nbulk, size[BULK_TABLE], bulk_seconds,
                          b.read_ios, b.read_bytes, b.hits, b.io_wait_ns / 1e6)


def format_scan_table(results: list[ScanResult]) -> str:
    head = (f"{'io_method':<9} {'open ms':>7} {'KV keys/s':>10} {'events rows/s':>13} "
            f"{'bulk MB/s':>9} {'x sync':>6} {'read I/Os':>9} {'read MB':>8} "
            f"{'KiB/I/O':>7} {'I/O wait ms':>11}")
    lines = [head, "-" * len(head)]
    sync = next((r.bulk_mb_s for r in results if r.io_method == "sync"), None)
    for r in results:
        avg_kib = r.read_bytes / r.read_ios / 1024 if r.read_ios else 0.0
        vs_sync = f"{r.bulk_mb_s / sync:.2f}" if sync else "-"
        lines.append(f"{r.io_method:<9} {r.open_seconds * 1e3:>7.1f} {r.kv_keys_s:>10,.0f} "
                     f"{r.table_rows_s:>13,.0f} {r.bulk_mb_s:>9.1f} {vs_sync:>6} "
                     f"{r.read_ios:>9,} {r.read_bytes / 1e6:>8.1f} {avg_kib:>7.0f} "
                     f"{r.io_wait_ms:>11.1f}")
    return "\n".join(lines)


# --- 3. crash ------------------------------------------------------------------------------

def writer_child(path: str, io_method: str) -> int:
    """Write until killed; one stdout line per acknowledged (committed, durable) write:
    ``a I`` for the autocommit put of ``w:I``; ``t G`` for transaction G's ``TXN_KEYS``
    puts of ``t:G:J``. Never returns on its own (the parent kills it)."""
    out = sys.stdout
    with Database.open(path, io_method=io_method) as db:
        kv = db.kv(CRASH_STORE)
        out.write("ready\n")
        out.flush()
        step = 0
        while True:
            if step % TXN_EVERY == TXN_EVERY - 1:
                with db.transaction():
                    for j in range(TXN_KEYS):
                        kv[b"t:%09d:%d" % (step, j)] = b"txn %d part %d" % (step, j)
                out.write(f"t {step}\n")
            else:
                kv[b"w:%09d" % step] = _value(step)
                out.write(f"a {step}\n")
            out.flush()
            step += 1


@dataclass(frozen=True)
class CrashResult:
    acknowledged_puts: int
    acknowledged_transactions: int
    missing: tuple[bytes, ...]          # acknowledged keys not found (or wrong value)
    partial_transactions: tuple[int, ...]
    recovered_seconds: float
    recovery_replayed: int
    unacknowledged_present: int         # writes committed but killed before the ack line

    @property
    def ok(self) -> bool:
        return not self.missing and not self.partial_transactions


def crash_and_verify(path: str, io_method: str, seconds: float = CRASH_SECONDS_DEFAULT
                     ) -> CrashResult:
    """Run ``writer_child`` in a subprocess, SIGKILL it after ``seconds`` of acknowledged
    writes, reopen and check every acknowledged write (see the module docstring)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, path, io_method],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        for raw in proc.stdout:
            if not raw.endswith(b"\n"):
                break                       # a line cut by the kill: not acknowledged
            line = raw.decode().strip()
            if line == "ready":
                ready.set()
            else:
                lines.append(line)
        ready.set()

    thread = threading.Thread(target=reader, name="demo-crash-reader", daemon=True)
    thread.start()
    try:
        if not ready.wait(CHILD_START_TIMEOUT_SECONDS) or proc.poll() is not None:
            proc.kill()
            err = proc.stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"the writer child did not start: {err or 'no output'}")
        time.sleep(seconds)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        thread.join()
        proc.stdout.close()
        proc.stderr.close()
    acked_keys: dict[bytes, bytes] = {}
    acked_txns: list[int] = []
    for line in lines:
        kind, number = line.split()
        step = int(number)
        if kind == "a":
            acked_keys[b"w:%09d" % step] = _value(step)
        else:
            acked_txns.append(step)
            for j in range(TXN_KEYS):
                acked_keys[b"t:%09d:%d" % (step, j)] = b"txn %d part %d" % (step, j)
    t0 = time.perf_counter()
    with Database.open(path, io_method=io_method) as db:
        recovered_seconds = time.perf_counter() - t0
        kv = db.kv(CRASH_STORE)
        present = dict(kv.items())
        stats = db.stats()
    missing = tuple(k for k, v in acked_keys.items() if present.get(k) != v)
    groups: dict[int, int] = {}
    for k in present:
        if k.startswith(b"t:"):
            g = int(k.split(b":")[1])
            groups[g] = groups.get(g, 0) + 1
    partial = tuple(sorted(g for g, n in groups.items() if n != TXN_KEYS))
    return CrashResult(len(acked_keys), len(acked_txns), missing, partial, recovered_seconds,
                       stats.recovery_replayed, len(set(present) - set(acked_keys)))


# --- the command ---------------------------------------------------------------------------

def run_demo(nkeys: int = DEFAULT_KEYS, directory: str | None = None, *,
             buffered: bool = False, crash_seconds: float = CRASH_SECONDS_DEFAULT,
             table_mb: float = DEFAULT_TABLE_MB, progress: bool = True) -> int:
    if nkeys < 1:
        raise ValueError(f"--keys must be >= 1, got {nkeys}")
    if not table_mb > 0:
        raise ValueError(f"--table-mb must be > 0, got {table_mb}")
    methods = available_methods()
    ok, reason = io_uring_available()
    if directory is not None and osfile.exists(directory) and osfile.listdir(directory):
        raise ValueError(f"--dir {directory} is not empty; the demo needs a new directory")
    root = directory or tempfile.mkdtemp(prefix="slonik-demo-")
    path = os.path.abspath(root)
    started = time.perf_counter()
    try:
        print(f"Slonik demo in {path}")
        if not ok:
            print(f"(io_uring unavailable here: {reason})")
        print(f"\n1. Loading {nkeys:,} KV pairs ({LOAD_BATCH_KEYS:,} per transaction) into "
              f"store {KV_STORE!r} and {int(nkeys * TABLE_ROWS_PER_KEY):,} rows into table "
              f"{TABLE!r}; about {table_mb:g} MB ({bulk_rows(table_mb):,} rows of "
              f"{BULK_PAYLOAD_BYTES} bytes) into table {BULK_TABLE!r}", flush=True)
        t0 = time.perf_counter()
        load(path, nkeys, table_mb=table_mb, progress=progress)
        print(f"   loaded in {time.perf_counter() - t0:.1f} s")

        io_direct = "none" if buffered else "data"
        print(f"\n2. Cold scans: a new Database per io method (empty buffer pool"
              f"{', io_direct=data: no OS page cache' if not buffered else ''}); open "
              f"reads metapages only; x sync = bulk MB/s over the sync method's",
              flush=True)
        results = []
        for method in methods:
            try:
                results.append(scan_cold(path, method, io_direct=io_direct))
            except OSError as exc:
                if io_direct == "none":
                    raise
                print(f"   io_direct=data failed here ({exc}); scanning through the page "
                      f"cache instead")
                io_direct = "none"
                results.append(scan_cold(path, method, io_direct=io_direct))
        print(format_scan_table(results))
        expected_rows = int(nkeys * TABLE_ROWS_PER_KEY)
        for r in results:
            if r.kv_keys != nkeys or r.table_rows != expected_rows or \
                    r.bulk_rows != bulk_rows(table_mb):
                print(f"\n{r.io_method}: scanned {r.kv_keys} keys, {r.table_rows} events rows "
                      f"and {r.bulk_rows} bulk rows, expected {nkeys}, {expected_rows} and "
                      f"{bulk_rows(table_mb)}")
                return 1

        method = methods[-1]
        print(f"\n3. Crash: a child process writes ({method}), acknowledging each write "
              f"once its commit returned; SIGKILL after {crash_seconds:g} s", flush=True)
        crash = crash_and_verify(path, method, crash_seconds)
        print(f"   acknowledged: {crash.acknowledged_puts:,} puts "
              f"({crash.acknowledged_transactions:,} transactions of {TXN_KEYS})")
        print(f"   reopened in {crash.recovered_seconds:.2f} s, "
              f"{crash.recovery_replayed:,} WAL records replayed")
        print(f"   present after recovery: "
              f"{crash.acknowledged_puts - len(crash.missing):,} of "
              f"{crash.acknowledged_puts:,} acknowledged puts"
              f" (+{crash.unacknowledged_present} committed but not yet acknowledged)")
        if not crash.ok:
            print(f"   LOST: {len(crash.missing)} acknowledged puts missing "
                  f"(first: {[k.decode() for k in crash.missing[:5]]}); "
                  f"{len(crash.partial_transactions)} partial transactions")
            return 1
        print("   every acknowledged write survived; no transaction is partly visible")
        print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
        return 0
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
