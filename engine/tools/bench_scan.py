"""``slonik bench scan``: a relation scanned through a read stream, per io method, against fio.

A relation of ``--size`` bytes of checksummed heap pages (one md segment file per GiB) is
built once under ``--dir`` and reused. Each measurement scans it front to back through a
``ReadStream`` over the buffer manager: every page is verified (header + CRC-32C) in the
read's completion callback, in whichever thread completes the read.

- cold: the pool starts empty. Buffered (default): the OS page cache is dropped
  (``/proc/sys/vm/drop_caches``, root only) right before the scan, i.e. "drop and read at
  once" in ``shared/reference/python-io.md``'s terms. ``--direct``: the data files are
  opened with O_DIRECT and the page cache is out of the picture.
  The pool is ``--shared-buffers`` pages (default 16384 = 128 MiB), so a 1 GiB scan also
  exercises clock-sweep replacement.
- warm: a pool large enough for the whole relation, filled by one scan first; the
  measured scan is all hits.
- fio: sequential 128 KiB reads at depth 32 (``--ioengine=io_uring``) of the same segment
  file, same direct/buffered mode, same cache drop, in the same invocation.

Each method and fio are measured ``--runs`` times in alternation; medians are reported,
with ratios to fio and to ``sync``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.tools.bench import (
    parse_methods,
    parse_size,
    positive_int,
    run_bench_command,
)
from slonik.engine.tools.fio import FioError, fio_status, run_fio_job
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import BLCKSZ, init_page, page_add_item, page_set_checksum
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork, Smgr

DEFAULT_DIR = "./bench-data/scan"
REL = 16384
BUILD_CHUNK_BLOCKS = 128
# fio reads the relation once (not time-based): allow for a slow disk on top of startup
FIO_SCAN_SECONDS_MAX = 480
# Buffers a scan consumes before unpinning them together; small beside the pool (16384) and
# the stream's look-ahead pins (max_pinned), so the pins held stay well within the pool.
UNPIN_BATCH = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})")
    parser.add_argument("--size", type=parse_size, default=1 << 30,
                        help="relation size, e.g. 256M or 1G (default 1G)")
    parser.add_argument("--runs", type=positive_int, default=3, help="runs; medians reported")
    parser.add_argument("--direct", action="store_true", help="O_DIRECT data files (and fio)")
    parser.add_argument("--methods", type=parse_methods, default=None,
                        help="comma-separated io methods (default: all available)")
    parser.add_argument("--shared-buffers", type=positive_int, default=16384,
                        help="pool size in pages for the cold scans (default 16384)")
    parser.add_argument("--io-combine-limit", type=positive_int, default=16,
                        help="blocks per read (default 16)")
    parser.add_argument("--effective-io-concurrency", type=int, default=16,
                        help="reads in flight per stream (default 16)")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm scans")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_relation(data_dir: str, nblocks: int) -> bool:
    """Create the relation once (checksummed pages with a few tuples); True if built now."""
    marker = os.path.join(data_dir, f"built-{nblocks}")
    if osfile.exists(marker):
        return False
    for d in (os.path.dirname(data_dir.rstrip("/")) or ".", data_dir):
        if d and not osfile.exists(d):
            osfile.mkdir(d)
    template = bytearray(BLCKSZ)
    init_page(template)
    for k in range(40):
        page_add_item(template, f"tuple {k:04d} ".encode() * 10)
    with Smgr(data_dir) as smgr:
        smgr.unlink(REL)
        smgr.create(REL, Fork.MAIN)
        block = 0
        while block < nblocks:
            n = min(BUILD_CHUNK_BLOCKS, nblocks - block)
            pages = []
            for k in range(n):
                page = bytearray(template)
                page_set_checksum(page, REL, Fork.MAIN, block + k)
                pages.append(page)
            smgr.writev(REL, Fork.MAIN, block, pages)
            block += n
        smgr.immedsync(REL, Fork.MAIN)
    fd = osfile.open(marker, os.O_WRONLY | os.O_CREAT)
    osfile.close(fd)
    osfile.fsync_directory(data_dir)
    return True


def prefault(bm: BufferManager) -> None:
    """Fault the buffer pool's memory in before timing, through the public page views of
    a new pool (no buffer holds a page yet, so zeroing them changes nothing)."""
    zeros = bytes(BLCKSZ)
    for buf in range(bm.nbuffers):
        bm.page(buf)[:] = zeros


def drop_caches() -> bool:
    """Drop the OS page cache (root only). True when it was dropped."""
    if os.geteuid() != 0:
        return False
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:  # a kernel knob, not a data file
        f.write("3\n")
    return True


def scan(bm: BufferManager, nblocks: int) -> float:
    """One full scan through a read stream; returns seconds."""
    unpin_many = bm.unpin_many
    start = time.perf_counter()
    with ReadStream(bm, REL, Fork.MAIN, range(nblocks)) as stream:
        n = 0
        done: list[int] = []  # consumed buffers, unpinned a batch at a time (one lock section)
        for buf in stream:
            done.append(buf)
            if len(done) == UNPIN_BATCH:
                unpin_many(done)
                done.clear()
                n += UNPIN_BATCH
        unpin_many(done)
        n += len(done)
    elapsed = time.perf_counter() - start
    assert n == nblocks, f"scan returned {n} of {nblocks} blocks"
    return elapsed


def run_fio(path: str, size: int, direct: bool) -> float:
    """MB/s of fio reading the whole segment once, sequentially, 128 KiB at depth 32."""
    job = run_fio_job([f"--filename={path}", f"--direct={int(direct)}", "--ioengine=io_uring",
                       "--rw=read", "--bs=128k", "--iodepth=32", f"--size={size}"],
                      seconds=FIO_SCAN_SECONDS_MAX)
    return job["read"]["bw_bytes"] / 1e6


def run_scan_bench(args: argparse.Namespace, log=print) -> dict:
    nblocks = args.size // BLCKSZ
    methods = args.methods or ["sync", "worker", "io_uring"]
    ok, reason = io_uring_available()
    notes = []
    if "io_uring" in methods and not ok:
        methods = [m for m in methods if m != "io_uring"]
        notes.append(f"io_uring unavailable: {reason}")
    if build_relation(args.dir, nblocks):
        log(f"built a {args.size >> 20} MiB relation in {args.dir}")
    segment = os.path.join(args.dir, "base", str(REL))
    have_fio, fio_note = fio_status()
    if not have_fio:
        notes.append(fio_note)
    can_drop = args.direct or os.geteuid() == 0
    if not can_drop:
        notes.append("not root: the page cache cannot be dropped, 'cold' buffered scans are warm-ish")
    cold: dict[str, list[float]] = {m: [] for m in methods}
    warm: dict[str, list[float]] = {m: [] for m in methods}
    fio: list[float] = []
    mb = args.size / 1e6
    for run in range(args.runs):
        if have_fio:
            if not args.direct:
                drop_caches()
            try:
                fio.append(run_fio(segment, args.size, args.direct))
                log(f"run {run + 1}: fio {fio[-1]:.0f} MB/s")
            except (FioError, KeyError) as exc:   # as the other benches: no baseline
                have_fio = False
                fio.clear()
                notes.append(f"fio failed, no ratios: {exc}")
        for method in methods:
            with Aio(method, io_max_concurrency=64) as aio:
                smgr = Smgr(args.dir, io_direct=args.direct, aio=aio)
                bm = BufferManager(smgr, aio, shared_buffers=args.shared_buffers,
                                   io_combine_limit=args.io_combine_limit,
                                   effective_io_concurrency=args.effective_io_concurrency)
                prefault(bm)
                if not args.direct:
                    drop_caches()
                cold[method].append(mb / scan(bm, nblocks))
                log(f"run {run + 1}: {method} cold {cold[method][-1]:.0f} MB/s")
                if not args.no_warm:
                    big = BufferManager(smgr, aio, shared_buffers=nblocks + 64,
                                        io_combine_limit=args.io_combine_limit,
                                        effective_io_concurrency=args.effective_io_concurrency)
                    scan(big, nblocks)
                    warm[method].append(mb / scan(big, nblocks))
                    log(f"run {run + 1}: {method} warm {warm[method][-1]:.0f} MB/s")
                    del big
                smgr.close()
    med = statistics.median
    fio_mb = med(fio) if fio else None
    sync_mb = med(cold["sync"]) if cold.get("sync") else None
    rows = {}
    for m in methods:
        c = med(cold[m])
        rows[m] = {"cold_mb_s": round(c, 1),
                   "cold_vs_fio": round(c / fio_mb, 3) if fio_mb else None,
                   "cold_vs_sync": round(c / sync_mb, 3) if sync_mb else None,
                   "warm_mb_s": round(med(warm[m]), 1) if warm[m] else None,
                   "cold_runs": [round(x, 1) for x in cold[m]],
                   "warm_runs": [round(x, 1) for x in warm[m]]}
    return {"size_bytes": args.size, "direct": args.direct, "runs": args.runs,
            "shared_buffers": args.shared_buffers, "io_combine_limit": args.io_combine_limit,
            "effective_io_concurrency": args.effective_io_concurrency,
            "cold_state": "O_DIRECT" if args.direct else (
                "page cache dropped right before each scan" if can_drop else "not dropped"),
            "fio_mb_s": round(fio_mb, 1) if fio_mb else None,
            "fio_runs": [round(x, 1) for x in fio], "methods": rows, "notes": notes}


def format_table(r: dict) -> str:
    lines = [f"scan of {r['size_bytes'] >> 20} MiB, checksums verified, "
             f"{'O_DIRECT' if r['direct'] else 'buffered'}; cold = {r['cold_state']}; "
             f"medians of {r['runs']} runs",
             f"fio sequential 128 KiB depth 32: "
             f"{r['fio_mb_s'] if r['fio_mb_s'] is not None else 'n/a'} MB/s",
             f"{'method':<10} {'cold MB/s':>10} {'vs fio':>7} {'vs sync':>8} {'warm MB/s':>10}"]
    for m, row in r["methods"].items():
        def fmt(v, spec):
            return format(v, spec) if v is not None else "n/a"
        lines.append(f"{m:<10} {fmt(row['cold_mb_s'], '>10.0f')} {fmt(row['cold_vs_fio'], '>7.2f')} "
                     f"{fmt(row['cold_vs_sync'], '>8.2f')} {fmt(row['warm_mb_s'], '>10.0f')}")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def cmd_bench_scan(args: argparse.Namespace) -> int:
    # run_scan_bench always logs; --json sends no progress (run_bench_command's log None)
    return run_bench_command(
        args, lambda a, log: run_scan_bench(a, log=log or (lambda _msg: None)), format_table)
