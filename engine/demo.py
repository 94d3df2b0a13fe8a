"""``slonik demo``: what the storage stack does today, end to end, on real files.

For each io method available here: write a relation of checksummed heap pages through
asynchronous vectored writes, read it back through asynchronous reads with many I/Os in
flight, verify every page, and print throughput and the AIO counters. Then damage one
byte on disk and show that verification names the block.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from aio import io_uring_available, osfile
from aio.core import Aio
from aio.handle import AioReturn
from aio.memory import aligned_buffer
from storage.page import (
    BLCKSZ,
    PageStatus,
    init_page,
    page_add_item,
    page_set_checksum,
    verify_page,
)
from storage.smgr import Fork, Smgr

REL = 16384
COMBINE = 16          # blocks per I/O (io_combine_limit's default)
IN_FLIGHT = 16        # I/Os kept in flight


def _fill(mem: memoryview, first_block: int, nblocks: int) -> None:
    for i in range(nblocks):
        page = mem[i * BLCKSZ:(i + 1) * BLCKSZ]
        page[:] = bytes(BLCKSZ)
        init_page(page)
        block = first_block + i
        for k in range(20):
            page_add_item(page, f"row {block}.{k} ".encode() * 8)
        page_set_checksum(page, REL, Fork.MAIN, block)


def _run_io(aio: Aio, smgr: Smgr, write: bool, nblocks: int, mem: memoryview) -> float:
    """Read or write blocks 0..nblocks-1 in COMBINE-block I/Os, IN_FLIGHT at a time."""
    start = time.perf_counter()
    window: list[tuple] = []
    block = 0
    slot = 0
    while block < nblocks or window:
        with aio.batch():
            while block < nblocks and len(window) < IN_FLIGHT:
                n = min(COMBINE, nblocks - block, smgr.maxcombine(block))
                ret = AioReturn()
                h = aio.acquire(ret)
                ref = h.wait_ref()
                base = (slot % IN_FLIGHT) * COMBINE * BLCKSZ
                bufs = [mem[base + i * BLCKSZ:base + (i + 1) * BLCKSZ] for i in range(n)]
                if write:
                    _fill(mem[base:base + n * BLCKSZ], block, n)
                    smgr.start_writev(h, REL, Fork.MAIN, block, bufs)
                else:
                    smgr.start_readv(h, REL, Fork.MAIN, block, bufs)
                window.append((ref, ret, block, bufs))
                block += n
                slot += 1
        ref, ret, first, bufs = window.pop(0)
        aio.wait(ref)
        ret.raise_if_failed()
        if not write:
            for i, page in enumerate(bufs):
                v = verify_page(page, REL, Fork.MAIN, first + i)
                if v.status not in (PageStatus.VALID, PageStatus.NEW):
                    raise AssertionError(f"block {first + i}: {v.reason}")
    return time.perf_counter() - start


def run_demo(size_mb: int = 64, directory: str | None = None) -> int:
    methods = ["sync", "worker"]
    ok, reason = io_uring_available()
    if ok:
        methods.append("io_uring")
    else:
        print(f"io_uring unavailable here: {reason}")
    nblocks = size_mb * 1024 * 1024 // BLCKSZ
    root = directory or tempfile.mkdtemp(prefix="slonik-demo-")
    print(f"Slonik storage demo: a {size_mb} MiB relation of checksummed pages in {root}\n")
    print(f"{'io_method':<10} {'write MB/s':>11} {'read+verify MB/s':>17} {'I/Os':>7} "
          f"{'avg I/O KiB':>12} {'wait ms':>9}")
    try:
        for method in methods:
            data_dir = os.path.join(root, method)
            if not osfile.exists(data_dir):
                osfile.mkdir(data_dir)
            with Aio(method, io_max_concurrency=IN_FLIGHT * 2) as aio:
                smgr = Smgr(data_dir, segment_size=8192, aio=aio)
                smgr.create(REL, Fork.MAIN, exist_ok=True)
                mem = memoryview(aligned_buffer(IN_FLIGHT * COMBINE * BLCKSZ))
                wt = _run_io(aio, smgr, True, nblocks, mem)
                smgr.immedsync(REL, Fork.MAIN)
                rt = _run_io(aio, smgr, False, nblocks, mem)
                stats = aio.stats()
                ios = stats.total("readv") + stats.total("writev")
                nbytes = stats.total("readv", "bytes") + stats.total("writev", "bytes")
                wait_ms = (stats.total("readv", "wait_ns") + stats.total("writev", "wait_ns")) / 1e6
                print(f"{method:<10} {size_mb / wt:>11.0f} {size_mb / rt:>17.0f} {ios:>7} "
                      f"{nbytes / ios / 1024:>12.0f} {wait_ms:>9.1f}")
                smgr.close()
        # Damage one byte of one block on disk and show that verification names it.
        data_dir = os.path.join(root, methods[-1])
        victim = nblocks // 3
        path = os.path.join(data_dir, "base", str(REL))
        with open(path, "r+b") as f:
            f.seek(victim * BLCKSZ + 4000)
            byte = f.read(1)
            f.seek(victim * BLCKSZ + 4000)
            f.write(bytes([byte[0] ^ 0x40]))
        with Aio(methods[-1]) as aio:
            smgr = Smgr(data_dir, segment_size=8192, aio=aio)
            mem = memoryview(aligned_buffer(IN_FLIGHT * COMBINE * BLCKSZ))
            try:
                _run_io(aio, smgr, False, nblocks, mem)
                print("\nthe damaged page was NOT detected")
                return 1
            except AssertionError as exc:
                print(f"\nflipped one bit on disk in block {victim}; verification says: {exc}")
            smgr.close()
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0
