"""The pool prefaulter (storage/prefault.py): it populates what it is asked for, a little
ahead, and never changes a byte of memory that is already in use."""

from __future__ import annotations

import mmap

import pytest
from slonik.aio.memory import aligned_buffer
from slonik.storage import prefault
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import BLCKSZ
from slonik.storage.prefault import PREFAULT_AHEAD_BYTES, PREFAULT_START_BYTES, Prefaulter
from slonik.storage.smgr import Fork, Smgr

from tests.storage.test_bufmgr import REL, make_page

needs_c = pytest.mark.skipif(prefault._lib is None, reason="the C helper is not built")


def _resident_pages(mem: mmap.mmap, start: int, n: int) -> int:
    """Pages of ``mem[start:start + n * PAGESIZE]`` resident, by /proc/self/pagemap."""
    page = mmap.PAGESIZE
    addr = int(prefault._ffi.cast("uintptr_t", prefault._ffi.from_buffer(mem)))
    with open("/proc/self/pagemap", "rb") as f:   # a kernel interface, read only
        f.seek((addr + start) // page * 8)
        entries = f.read(8 * n)
    return sum(1 for i in range(n) if int.from_bytes(entries[8 * i:8 * i + 8], "little") >> 63)


@needs_c
def test_populates_the_asked_range_ahead_and_stops_there():
    """``ahead(end)`` below PREFAULT_START_BYTES starts nothing; from there a thread it
    starts populates ``end`` + twice the look-ahead and exits; the pages past that stay
    unpopulated (pagemap's present bit says which), and asking again for an end whose
    look-ahead that covers starts nothing."""
    size = 64 << 20
    mem = aligned_buffer(size)
    pf = Prefaulter(mem)
    pf.ahead(PREFAULT_START_BYTES - 8192)
    pf.join(10)
    assert pf.populated == 0
    assert _resident_pages(mem, 0, 256) == 0
    pf.ahead(PREFAULT_START_BYTES)
    pf.join(10)
    want = PREFAULT_START_BYTES + 2 * PREFAULT_AHEAD_BYTES
    assert pf.disabled == ""
    assert pf.populated == want
    assert _resident_pages(mem, 0, want // mmap.PAGESIZE) == want // mmap.PAGESIZE
    assert _resident_pages(mem, size - (4 << 20), 256) == 0
    pf.ahead(PREFAULT_START_BYTES)   # asking for no more than is done starts nothing
    pf.ahead(want - PREFAULT_AHEAD_BYTES)
    assert pf._thread is None and pf.populated == want
    pf.ahead(want - PREFAULT_AHEAD_BYTES + 8192)   # past it: a thread again
    pf.join(10)
    assert pf.populated == want + 8192 + 2 * PREFAULT_AHEAD_BYTES - PREFAULT_AHEAD_BYTES


@needs_c
def test_never_changes_bytes_already_written():
    """Memory written before it is populated keeps every byte (MADV_POPULATE_WRITE leaves
    present pages alone); the rest of the range reads as zeros."""
    mem = aligned_buffer(16 << 20)
    pattern = bytes(range(256)) * 32
    for off in range(0, 4 << 20, 3 * 8192):
        mem[off:off + len(pattern)] = pattern
    pf = Prefaulter(mem)
    pf.ahead(16 << 20)
    pf.join(10)
    assert pf.populated == 16 << 20
    for off in range(0, 4 << 20, 3 * 8192):
        assert mem[off:off + len(pattern)] == pattern
    assert mem[(8 << 20):(8 << 20) + 8192] == bytes(8192)


def test_a_pool_prefaults_as_it_grows(tmp_path, aio):
    """A buffer manager reading blocks into fresh buffers (real files, each io method)
    asks its prefaulter for their memory and more; every block read is intact."""
    smgr = Smgr(str(tmp_path), segment_size=64, max_files=3, aio=aio)
    try:
        smgr.create(REL, Fork.MAIN)
        pages = [make_page(REL, b) for b in range(600)]
        smgr.writev(REL, Fork.MAIN, 0, pages)
        bm = BufferManager(smgr, aio, shared_buffers=4096, io_combine_limit=8)
        for first in range(0, 600, 40):
            bufs = bm.read_buffers(REL, Fork.MAIN, first, 40)
            try:
                assert [bytes(bm.page(b)) for b in bufs] == pages[first:first + 40]
            finally:
                bm.unpin_many(bufs)
        bm._prefault.join(10)
        if prefault._lib is not None:
            assert bm._prefault.disabled == ""
            assert bm._prefault.populated >= 600 * BLCKSZ + PREFAULT_AHEAD_BYTES
        bm.check()
    finally:
        aio.wait_all()
        smgr.close()
