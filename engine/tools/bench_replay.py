"""WAL replay benchmark: crash recovery of a realistic WAL, per io method.

``build_crashed_database(dir, wal_mb)`` makes, once, a database that crashed with about
``wal_mb`` MB of WAL to replay: a forked child creates a KV store and a table with a
primary key, loads them, checkpoints, then keeps inserting 100-byte table rows (heap
INSERT_MULTI + B+tree records) and putting 100-byte values under random keys (B+tree
records, full-page images of the leaves first touched after the checkpoint) in
transactions of ``ROWS_PER_TRANSACTION``, until the WAL past the checkpoint's redo point
reaches the target; then it ends with ``os._exit`` without closing (a crash as kill -9
leaves it: every commit durable, data pages partly written). ``workload="bulk"`` instead
inserts rows into a table without an index only: one heap record per filled page, the
WAL of a bulk load.

``run_replay_bench(dir, wal_mb, io_method)`` copies that database to a scratch directory
and opens it with ``io_method``: recovery replays the WAL. Figures (MB is 10^6 bytes):
``mb_per_s`` (replayed WAL bytes over the replay pass's seconds), ``records_per_s``,
``scan_seconds`` (the read-only first pass that finds the end of WAL), ``replay_seconds``
(the second pass: read, decode and redo), ``decode_seconds`` (a separate read + CRC +
decode pass over the same WAL, no redo: the decode share of the replay pass) and
``apply_seconds`` (replay minus decode: redo, buffer and data-file work), and
``recovery_seconds`` (both passes: what open spends in recovery).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import traceback

from slonik.engine.database import Database
from slonik.engine.recovery import RedoBatch
from slonik.engine.wal_decode import C_FIELDS, C_SCANNER
from slonik.wal.control import read_control
from slonik.wal.reader import WalReader

ROW_PAYLOAD_BYTES = 100            # a small row / value
ROWS_PER_TRANSACTION = 500         # table rows (and as many KV puts) per commit
PRELOAD_ROWS = 50_000              # rows and keys loaded before the checkpoint
KV_KEYS = 200_000                  # the KV key space the random puts draw from
BUILD_SEED = 14
MARKER_FILE = "bench-replay.json"  # what the pristine copy holds, written after the build
BUILD_SETTINGS = {"checkpoint_timeout": 3600, "max_wal_size": 1 << 40,
                  "io_method": "sync"}
MB = 1_000_000
# mixed: table rows with a primary key plus as many random KV puts (small B+tree records,
# leaf images); bulk: table rows without an index (one heap record per filled page).
WORKLOADS = ("mixed", "bulk")


def _child_build(path: str, wal_bytes: int, preload_rows: int, workload: str) -> None:
    """In the forked child: fill the database, then die without closing."""
    rng = random.Random(BUILD_SEED)
    pad = bytes(ROW_PAYLOAD_BYTES)
    db = Database.open(path, **BUILD_SETTINGS)
    kv = db.kv("kv")
    mixed = workload == "mixed"
    table = db.create_table("t", [("id", "int8"), ("payload", "bytea")],
                            primary_key="id" if mixed else None)
    next_id = 0

    def step() -> None:
        nonlocal next_id
        with db.transaction():
            table.insert_many([(next_id + i, pad) for i in range(ROWS_PER_TRANSACTION)])
            next_id += ROWS_PER_TRANSACTION
            if mixed:
                for _ in range(ROWS_PER_TRANSACTION):
                    kv[b"k%09d" % rng.randrange(KV_KEYS)] = pad

    for _ in range(max(1, preload_rows // ROWS_PER_TRANSACTION)):
        step()
    db.checkpoint()
    start = db._wal.insert_lsn
    while db._wal.insert_lsn - start < wal_bytes:
        step()
    sys.stdout.flush()
    os._exit(0)


def build_crashed_database(bench_dir: str, wal_mb: float, *, preload_rows: int = PRELOAD_ROWS,
                           workload: str = "mixed") -> str:
    """The path of a crashed database with about ``wal_mb`` MB of WAL past its redo point
    (``preload_rows`` rows and puts before the checkpoint), built under ``bench_dir`` unless
    one of that size is already there. ``workload``: ``mixed`` (WORKLOADS)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {' | '.join(WORKLOADS)}, got {workload!r}")
    pristine = os.path.join(bench_dir, f"crashed-{workload}-{wal_mb:g}mb-{preload_rows}")
    marker = os.path.join(pristine, MARKER_FILE)
    if os.path.exists(marker):
        return pristine
    if os.path.exists(pristine):
        shutil.rmtree(pristine)
    os.makedirs(bench_dir, exist_ok=True)
    pid = os.fork()
    if pid == 0:
        try:
            _child_build(pristine, int(wal_mb * MB), preload_rows, workload)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"building the crashed database under {pristine} failed "
                           f"(child exit status {status})")
    control = read_control(pristine)
    with open(marker, "w") as f:
        json.dump({"wal_mb": wal_mb, "redo_lsn": control.redo_lsn}, f)
    return pristine


def decode_pass_seconds(path: str) -> tuple[float, int, int]:
    """(seconds, records, bytes) of one read + CRC + decode pass over the WAL to replay, as
    replay reads it (``recovery.RedoBatch``: the fast records' fields in one C call per
    batch, the rest decoded)."""
    control = read_control(path)
    reader = WalReader(os.path.join(path, "wal"), control.wal_segment_size, control.redo_lsn,
                       scanner=C_SCANNER)
    t0 = time.perf_counter()
    n = 0
    for item in reader.raw_batches():
        n += RedoBatch(item, C_FIELDS).n
    return time.perf_counter() - t0, n, reader.end_lsn - control.redo_lsn


def run_replay_bench(bench_dir: str, wal_mb: float, io_method: str, *,
                     workload: str = "mixed") -> dict:
    """Recover a copy of the crashed database with ``io_method``; the figures (module doc)."""
    pristine = build_crashed_database(bench_dir, wal_mb, workload=workload)
    work = os.path.join(bench_dir, f"replay-{io_method}")
    if os.path.exists(work):
        shutil.rmtree(work)
    shutil.copytree(pristine, work)
    try:
        decode_s, _n, _b = decode_pass_seconds(work)
        db = Database.open(work, io_method=io_method)
        try:
            info = db._recovery
        finally:
            db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    replay_s = info.replay_seconds
    return {
        "io_method": io_method,
        "workload": workload,
        "wal_mb": info.replay_bytes / MB,
        "records": info.replayed,
        "mb_per_s": info.replay_bytes / MB / replay_s,
        "records_per_s": info.replayed / replay_s,
        "scan_seconds": info.scan_seconds,
        "replay_seconds": replay_s,
        "decode_seconds": decode_s,
        "apply_seconds": max(0.0, replay_s - decode_s),
        "recovery_seconds": info.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="./bench-data/replay")
    p.add_argument("--wal-mb", type=float, default=64.0)
    p.add_argument("--methods", default="sync,worker,io_uring")
    p.add_argument("--workload", choices=WORKLOADS, default="mixed")
    args = p.parse_args(argv)
    for m in args.methods.split(","):
        r = run_replay_bench(args.dir, args.wal_mb, m, workload=args.workload)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
