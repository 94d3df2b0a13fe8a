"""Reads of pages the OS page cache holds, done in the issuer with a non-blocking preadv
(RWF_NOWAIT) under worker and io_uring (``Aio.nowait_reads_inline``,
``Smgr.read_into_nowait``), on real files, under every io method."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from typing import NoReturn

import pytest
from slonik.aio import osfile
from slonik.aio.handle import IoOp
from slonik.storage.bufmgr import BufferManager
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ, page_get_item
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork, Smgr

REL = 16384  # relation_files' relation (tests/storage/conftest.py)
SEGMENT = 8
NBLOCKS = 20
DROP_ATTEMPTS = 50
_libc = ctypes.CDLL(None, use_errno=True)


def handle_reads(aio) -> int:
    """Reads that went through AIO handles (to a worker, a ring, or the sync method's
    staging), as opposed to the inline reads ``aio.stats()`` also counts."""
    return sum(c.ios for ctx in list(aio._contexts.values())
               for (_target, op), c in list(ctx.counters.items()) if op == IoOp.READV)


def item(bm: BufferManager, b: int) -> bytes:
    return bytes(page_get_item(bm.page(b), 1))


def resident_pages(path: str) -> int:
    """How many of the file's pages the OS page cache holds (mincore(2) over a private
    mapping, which faults nothing in)."""
    size = os.path.getsize(path)
    if not size:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        npages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * npages)()
        start = ctypes.c_char.from_buffer(mm)
        try:
            if _libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size),
                             vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del start
        return sum(v & 1 for v in vec)
    finally:
        mm.close()


def drop_from_page_cache(smgr: Smgr, segno: int) -> None:
    """Make segment ``segno`` uncached: fsync it (clean pages can be dropped), then
    posix_fadvise(DONTNEED) the whole file (a range inside a large folio is kept), until
    mincore shows none of its pages cached (a page under writeback, or briefly held by
    the kernel, is not dropped the first time: the tests below depend on the drop)."""
    path = smgr.segment_path(REL, Fork.MAIN, segno)
    for _attempt in range(DROP_ATTEMPTS):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if resident_pages(path) == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} still has {resident_pages(path)} pages cached after "
                         f"{DROP_ATTEMPTS} fsync + DONTNEED rounds")


def assert_served_by_read_ahead(aio, by_handle: int, fallbacks: int) -> None:
    """A non-blocking read of a page just dropped was served after all, inline: no handle
    read, no fallback counted. Linux lets that happen: a RWF_NOWAIT read that misses the
    page cache still starts the file's read-ahead of the page (filemap_get_pages), and
    when that read completes before the call looks at the page again, the call copies
    it. The pages were checked right by the caller; the test drops them and tries again."""
    assert handle_reads(aio) == by_handle
    assert aio.stats().nowait_fallbacks == fallbacks


def until_a_read_is_declined(aio, expect: int, attempt) -> int:
    """Run ``attempt()`` (drop pages, read them through a new buffer manager, check what
    was read) until its read went to ``expect`` more AIO handles (1 under worker and
    io_uring: a declined non-blocking read; 0 under sync), at most DROP_ATTEMPTS times;
    an attempt whose read was served inline after all is checked as such
    (``assert_served_by_read_ahead``). Returns the fallback count before the attempt
    that made it."""
    for _attempt in range(DROP_ATTEMPTS):
        by_handle, fallbacks = handle_reads(aio), aio.stats().nowait_fallbacks
        attempt()
        if handle_reads(aio) == by_handle + expect:
            return fallbacks
        assert_served_by_read_ahead(aio, by_handle, fallbacks)
    never_declined()


def never_declined() -> NoReturn:
    """Every one of DROP_ATTEMPTS non-blocking reads of a just-dropped page was served,
    right each time (checked): the read-ahead each one starts finished before it looked
    again, every time. Seen on this VM in one CI run of many (a disk answering from the
    host's cache within microseconds); the decline cannot be observed then, so the test
    says so instead of failing on the kernel's timing."""
    pytest.skip(f"Linux served all {DROP_ATTEMPTS} non-blocking reads of a dropped page "
                f"(its read-ahead finished first each time): the decline was not observed")


def cache_one_block(smgr: Smgr, block: int) -> None:
    """Bring exactly ``block`` into the page cache: a plain read through a descriptor
    advised POSIX_FADV_RANDOM (no read-ahead of its neighbours)."""
    fd = os.open(smgr.segment_path(REL, Fork.MAIN, block // SEGMENT), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        assert len(os.pread(fd, BLCKSZ, (block % SEGMENT) * BLCKSZ)) == BLCKSZ
    finally:
        os.close(fd)


class CountingNowait(osfile.OsLayer):
    """Counts non-blocking read attempts (preadv is not overridden, so they really run)."""

    def __init__(self) -> None:
        self.nowait_calls = 0

    def preadv_nowait(self, fd, buffers, offset):
        self.nowait_calls += 1
        return super().preadv_nowait(fd, buffers, offset)


@pytest.fixture
def files(relation_files, aio):
    return relation_files(SEGMENT, NBLOCKS), aio


def test_the_setting_is_on_exactly_for_worker_and_io_uring(aio, faulty_aio):
    """nowait_reads_inline is on for worker and io_uring, off for sync (which reads
    every read inline anyway: every_read_inline) and for a wrapping test method, which
    keeps every read on a handle so it sees them all."""
    assert aio.nowait_reads_inline == (aio.method.name in ("worker", "io_uring"))
    assert aio.nowait_reads_inline != aio.every_read_inline
    wrapped, _method = faulty_aio
    assert not wrapped.nowait_reads_inline


def test_cached_pages_are_read_inline_with_no_handle(files):
    """The relation was just written, so the page cache holds it: a 4-block read_buffers
    and a read stream over every block return the right pages, and not one read went
    through an AIO handle (no worker hand-off, no ring) under any method; each read is
    still counted once in aio.stats() and in the buffer manager's stats, and no
    non-blocking attempt fell back. check() passes."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
    by_handle = handle_reads(aio)
    counted = aio.stats().total("readv")
    bufs = bm.read_buffers(REL, Fork.MAIN, 8, 4)
    assert [item(bm, b) for b in bufs] == [f"block {k}".encode() for k in range(8, 12)]
    bm.unpin_many(bufs)
    assert aio.stats().total("readv") == counted + 1
    assert bm.stats().read_ios == 1 and bm.stats().reads == 4
    got = []
    with ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS)) as stream:
        while (b := stream.next_buffer()) is not None:
            got.append(item(bm, b))
            bm.unpin(b)
    assert got == [f"block {k}".encode() for k in range(NBLOCKS)]
    assert handle_reads(aio) == by_handle
    assert aio.stats().nowait_fallbacks == 0
    bm.check()


def test_uncached_pages_go_to_the_method_and_read_right(files):
    """Segment 0 (blocks 0..7) dropped from the page cache (fsync, DONTNEED): a read_buffers of
    them cannot be served without waiting, so under worker and io_uring it falls back to
    an AIO handle (one more handle read, one counted fallback) and still returns the
    right pages; under sync it is read inline as always. check() passes."""
    smgr, aio = files
    expect = 1 if aio.nowait_reads_inline else 0

    def attempt() -> None:
        bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
        drop_from_page_cache(smgr, 0)
        bufs = bm.read_buffers(REL, Fork.MAIN, 4, 4)
        assert [item(bm, b) for b in bufs] == [f"block {k}".encode() for k in range(4, 8)]
        bm.unpin_many(bufs)
        bm.check()

    fallbacks = until_a_read_is_declined(aio, expect, attempt)
    assert aio.stats().nowait_fallbacks == fallbacks + expect


def test_a_partly_cached_run_falls_back_whole(files):
    """Only block 12 of the run 12..15 is in the page cache: the non-blocking read comes
    back short (one block), and under worker and io_uring the whole run
    goes to one AIO handle (no partial inline completion); all four pages are right,
    and the buffer manager counts one read I/O of four blocks."""
    smgr, aio = files

    def attempt() -> None:
        bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
        drop_from_page_cache(smgr, 1)
        cache_one_block(smgr, 12)
        bufs = bm.read_buffers(REL, Fork.MAIN, 12, 4)
        assert [item(bm, b) for b in bufs] == [f"block {k}".encode() for k in range(12, 16)]
        bm.unpin_many(bufs)
        assert bm.stats().read_ios == 1 and bm.stats().reads == 4
        bm.check()

    until_a_read_is_declined(aio, 1 if aio.nowait_reads_inline else 0, attempt)


def test_a_checksum_failure_found_inline_names_relation_and_block(files):
    """Block 10 is damaged on disk (one byte flipped through the file: the page cache
    holds the damaged page). A read stream over 8..11 hands out block 8 and 9 at most,
    then raises DataCorruptionError naming relation, fork and block 10, as the handle
    path does; the read went inline (no handle). Nothing stays pinned, and after the
    block is repaired (and its buffer given up) it reads fine."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
    path = smgr.segment_path(REL, Fork.MAIN, 1)
    with open(path, "r+b") as f:
        f.seek(2 * BLCKSZ)
        original = f.read(BLCKSZ)
        f.seek(2 * BLCKSZ + 5000)
        f.write(bytes([original[5000] ^ 0x20]))
    by_handle = handle_reads(aio)
    got = []
    with (ReadStream(bm, REL, Fork.MAIN, range(8, 12)) as stream,
          pytest.raises(DataCorruptionError, match=rf"block 10 of relation {REL} fork main")
          as ei):
        while (b := stream.next_buffer()) is not None:
            got.append(bm.block_of(b)[2])
            bm.unpin(b)
    assert ei.value.relation == REL and ei.value.block == 10
    assert got == [8, 9][:len(got)]
    assert handle_reads(aio) == by_handle
    with open(path, "r+b") as f:
        f.seek(2 * BLCKSZ)
        f.write(original)
    bm.check()
    bufs = bm.read_buffers(REL, Fork.MAIN, 10, 1)
    assert item(bm, bufs[0]) == b"block 10"
    bm.unpin_many(bufs)
    bm.check()


def test_o_direct_never_takes_the_nonblocking_path(files):
    """The relation was written buffered (so the page cache holds it). Opened with
    io_direct, its reads go through the method: no non-blocking attempt reaches the OS
    layer, read_into_nowait declines, and under worker and io_uring each read is a handle
    read. Read buffered, under worker and io_uring an attempt is made (so the count can
    move), under sync none."""
    buffered, aio = files
    bm = BufferManager(buffered, aio, shared_buffers=16, io_combine_limit=4)
    layer = CountingNowait()
    with osfile.installed(layer):
        bm.unpin_many(bm.read_buffers(REL, Fork.MAIN, 0, 4))
    assert layer.nowait_calls == (1 if aio.nowait_reads_inline else 0)
    smgr = Smgr(buffered.data_dir, segment_size=SEGMENT, max_files=3, io_direct=True, aio=aio)
    try:
        bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
        layer = CountingNowait()
        by_handle = handle_reads(aio)
        with osfile.installed(layer):
            bufs = bm.read_buffers(REL, Fork.MAIN, 4, 4)
            assert [item(bm, b) for b in bufs] == [f"block {k}".encode() for k in range(4, 8)]
            bm.unpin_many(bufs)
            assert not smgr.read_into_nowait(REL, Fork.MAIN, 8, [bm.page(0)])
        assert layer.nowait_calls == 0
        if not aio.every_read_inline:
            assert handle_reads(aio) == by_handle + 1
        assert aio.stats().nowait_fallbacks == 0
        bm.check()
    finally:
        aio.wait_all()
        smgr.close()


def test_read_into_nowait_reads_cached_bytes_and_declines_the_rest(files):
    """Smgr.read_into_nowait fills a two-block wide buffer from the page cache (True,
    counted as one smgr read), declines (False) past the end of the relation, for
    dropped pages, and when the layer says EOPNOTSUPP (after which it stops asking the
    layer at all); bad arguments raise naming what is wrong."""
    smgr, _aio = files
    buf = bytearray(2 * BLCKSZ)
    reads = smgr.stats().reads
    assert smgr.read_into_nowait(REL, Fork.MAIN, 2, [memoryview(buf)])
    assert page_get_item(memoryview(buf)[:BLCKSZ], 1) == b"block 2"
    assert page_get_item(memoryview(buf)[BLCKSZ:], 1) == b"block 3"
    assert smgr.stats().reads == reads + 1
    assert not smgr.read_into_nowait(REL, Fork.MAIN, NBLOCKS - 1, [memoryview(buf)])
    declined = True
    for _attempt in range(DROP_ATTEMPTS):
        drop_from_page_cache(smgr, 0)
        if not smgr.read_into_nowait(REL, Fork.MAIN, 5, [memoryview(buf)[:BLCKSZ]]):
            break
        # served after all (assert_served_by_read_ahead's race): the right bytes
        assert page_get_item(memoryview(buf)[:BLCKSZ], 1) == b"block 5"
    else:
        declined = False
    with pytest.raises(ValueError, match="block"):
        smgr.read_into_nowait(REL, Fork.MAIN, -1, [memoryview(buf)[:BLCKSZ]])
    with pytest.raises(ValueError, match="fork"):
        smgr.read_into_nowait(REL, 7, 0, [memoryview(buf)[:BLCKSZ]])
    with pytest.raises(ValueError, match="segment boundary"):
        smgr.read_into_nowait(REL, Fork.MAIN, SEGMENT - 1, [memoryview(buf)])

    class Unsupported(osfile.OsLayer):
        calls = 0

        def preadv_nowait(self, fd, buffers, offset):
            Unsupported.calls += 1
            raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT here")

    with osfile.installed(Unsupported()):
        assert not smgr.read_into_nowait(REL, Fork.MAIN, 2, [memoryview(buf)])
        assert not smgr.read_into_nowait(REL, Fork.MAIN, 2, [memoryview(buf)])
    assert Unsupported.calls == 1
    assert not smgr.read_into_nowait(REL, Fork.MAIN, 2, [memoryview(buf)])
    if not declined:   # (everything else was checked above)
        never_declined()


def test_a_layer_that_overrides_preadv_sees_every_read(files):
    """An OS layer overriding preadv (a test's fault injector) but not preadv_nowait
    declines each non-blocking attempt (EAGAIN), so under sync and worker every read of
    cached pages still reaches its preadv (io_uring's kernel reads bypass the layer)."""
    smgr, aio = files

    class Counting(osfile.OsLayer):
        def __init__(self) -> None:
            self.offsets: list[int] = []

        def preadv(self, fd, buffers, offset):
            self.offsets.append(offset)
            return super().preadv(fd, buffers, offset)

    layer = Counting()
    with pytest.raises(BlockingIOError):
        layer.preadv_nowait(0, [bytearray(BLCKSZ)], 0)
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
    with osfile.installed(layer):
        bufs = bm.read_buffers(REL, Fork.MAIN, 0, 4)
    assert [item(bm, b) for b in bufs] == [f"block {k}".encode() for k in range(4)]
    bm.unpin_many(bufs)
    if aio.method.name != "io_uring":
        assert layer.offsets == [0]
    bm.check()


def test_a_forked_child_does_not_read_inline(files):
    """After fork() the child's Aio turns nowait_reads_inline off (its reads take the
    handle path, which refuses in a child); the parent keeps its setting."""
    _smgr, aio = files
    before = aio.nowait_reads_inline
    pid = os.fork()
    if pid == 0:  # child
        os._exit(0 if not aio.nowait_reads_inline else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert aio.nowait_reads_inline == before
