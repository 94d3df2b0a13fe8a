"""A point read's pool miss read inline by its issuer (BufferManager.read_buffer), on real
files, under every io method."""

from __future__ import annotations

import errno
import os
import threading
import time
import warnings

import pytest
from slonik.aio import osfile
from slonik.aio.errors import IOFailure, IoMethodUnavailable
from slonik.aio.handle import IoOp
from slonik.storage.bufmgr import BufferManager, BufferState, DamagedPageWarning
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ, page_get_item
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork, Smgr

from tests.support.method_faulty import FaultRule
from tests.support.pages import make_page


def handle_reads(aio) -> int:
    """Reads that went through AIO handles (the issuer contexts' counters), as opposed to
    the inline reads ``aio.stats()`` also counts (``Aio.count_direct``)."""
    return sum(c.ios for ctx in list(aio._contexts.values())
               for (_target, op), c in list(ctx.counters.items()) if op == IoOp.READV)

REL = 16384  # relation_files' relation (tests/storage/conftest.py)
SEGMENT = 8
NBLOCKS = 20
WAIT_LIMIT_S = 30.0  # a bound on polling for another thread to get somewhere, not a timing claim


def item(bm: BufferManager, b: int) -> bytes:
    return bytes(page_get_item(bm.page(b), 1))


def corrupt(smgr: Smgr, block: int) -> bytes:
    """Flip one byte of ``block`` on disk; returns the original block."""
    path = smgr.segment_path(REL, Fork.MAIN, block // SEGMENT)
    with open(path, "r+b") as f:
        f.seek((block % SEGMENT) * BLCKSZ)
        original = f.read(BLCKSZ)
        f.seek((block % SEGMENT) * BLCKSZ + 5000)
        f.write(bytes([original[5000] ^ 0x20]))
    return original


def repair(smgr: Smgr, block: int, original: bytes) -> None:
    with open(smgr.segment_path(REL, Fork.MAIN, block // SEGMENT), "r+b") as f:
        f.seek((block % SEGMENT) * BLCKSZ)
        f.write(original)


def desc_of(bm: BufferManager, block: int):
    return next(d for d in bm.descs if d.tag == (REL, int(Fork.MAIN), block))


@pytest.fixture
def files(relation_files, aio):
    return relation_files(SEGMENT, NBLOCKS), aio


class CountingLayer(osfile.OsLayer):
    """Counts preadv calls per (fd, offset); a read at ``hold_offset`` waits for ``go``."""

    def __init__(self, hold_offset: int = -1) -> None:
        self.calls: dict[int, int] = {}
        self.hold_offset = hold_offset
        self.held = threading.Event()
        self.go = threading.Event()

    def preadv(self, fd, buffers, offset):
        self.calls[offset] = self.calls.get(offset, 0) + 1
        if offset == self.hold_offset:
            self.held.set()
            assert self.go.wait(WAIT_LIMIT_S), "the test never released the held read"
        return super().preadv(fd, buffers, offset)


class FailingLayer(osfile.OsLayer):
    def preadv(self, fd, buffers, offset):
        raise OSError(errno.EIO, "injected EIO")


def test_a_miss_is_read_inline_without_an_aio_handle(files):
    """Every block read once through read_buffer (pool smaller than the relation, so the
    later reads evict) comes back pinned, VALID, with its own content; each miss counts as
    one buffer-manager read and one relation read in aio.stats() but no AIO handle I/O,
    and one preadv per block went through the OS boundary; a second read_buffer of a
    cached block is a hit. check() passes at the end."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16)
    by_handle = handle_reads(aio)
    counted = aio.stats().total("readv")
    layer = CountingLayer()
    with osfile.installed(layer):
        for block in range(NBLOCKS):
            b = bm.read_buffer(REL, Fork.MAIN, block)
            assert bm.block_of(b) == (REL, Fork.MAIN, block)
            assert item(bm, b) == f"block {block}".encode()
            assert bm.descs[b].flags == BufferState.VALID
            bm.unpin(b)
    assert handle_reads(aio) == by_handle
    assert aio.stats().total("readv") == counted + NBLOCKS
    assert aio.stats().counters["relation/readv"]["bytes"] >= NBLOCKS * BLCKSZ
    assert sum(layer.calls.values()) == NBLOCKS
    s = bm.stats()
    assert (s.reads, s.read_ios, s.read_bytes) == (NBLOCKS, NBLOCKS, NBLOCKS * BLCKSZ)
    assert s.evictions == NBLOCKS - 16
    b = bm.read_buffer(REL, Fork.MAIN, NBLOCKS - 1)
    assert bm.stats().hits == s.hits + 1 and bm.stats().reads == NBLOCKS
    bm.unpin(b)
    bm.check()


def test_a_damaged_page_fails_naming_relation_and_block_and_is_retryable(files):
    """A block with a flipped byte raises DataCorruptionError naming the relation, fork and
    block (checksum); the buffer is left READ_FAILED and unpinned (check passes), the
    neighbours still read, and after the block is repaired the next read succeeds."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16)
    original = corrupt(smgr, 5)
    with pytest.raises(DataCorruptionError,
                       match=rf"invalid page in block 5 of relation {REL} fork main: .*checksum") as ei:
        bm.read_buffer(REL, Fork.MAIN, 5)
    assert (ei.value.relation, ei.value.block) == (REL, 5)
    d = desc_of(bm, 5)
    assert d.flags == BufferState.READ_FAILED and d.refcount == 0 and "checksum" in d.error
    bm.check()
    for block in (4, 6):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, block))
    repair(smgr, 5, original)
    b = bm.read_buffer(REL, Fork.MAIN, 5)
    assert item(bm, b) == b"block 5"
    bm.unpin(b)
    bm.check()


def test_zero_damaged_pages_and_ignore_checksum_failure_inline(files):
    """zero_damaged_pages: the damaged block reads as an all-zero VALID page with a
    DamagedPageWarning naming the block (the file keeps its damage); with
    ignore_checksum_failure the page is accepted as it is, with a warning; both count."""
    smgr, aio = files
    corrupt(smgr, 3)
    bm = BufferManager(smgr, aio, shared_buffers=16, zero_damaged_pages=True)
    with pytest.warns(DamagedPageWarning, match=r"block\(s\) \[3\] .*zero_damaged_pages"):
        b = bm.read_buffer(REL, Fork.MAIN, 3)
    assert bytes(bm.page(b)) == bytes(BLCKSZ) and bm.descs[b].flags == BufferState.VALID
    bm.unpin(b)
    assert bm.stats().zeroed_pages == 1
    on_disk = bytearray(BLCKSZ)
    smgr.read_block(REL, Fork.MAIN, 3, on_disk)
    assert on_disk != bytes(BLCKSZ) and page_get_item(on_disk, 1) == b"block 3"
    bm2 = BufferManager(smgr, aio, shared_buffers=16, ignore_checksum_failure=True)
    with pytest.warns(DamagedPageWarning, match=r"ignoring checksum failure in block\(s\) \[3\]"):
        b = bm2.read_buffer(REL, Fork.MAIN, 3)
    assert page_get_item(bm2.page(b), 1) == b"block 3"  # the flipped byte is past the item
    bm2.unpin(b)
    assert bm2.stats().ignored_checksum_failures == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bm2.unpin(bm2.read_buffer(REL, Fork.MAIN, 4))  # an intact page: no warning
    bm.check()
    bm2.check()


def test_a_concurrent_reader_waits_for_the_inline_read(files):
    """Thread A's inline read of block 7 is held inside its preadv; thread B asks for the
    same block, finds it being read (IO_IN_PROGRESS, no wait reference) and waits instead
    of reading it again. Once A's read completes both hold the same VALID buffer: one
    preadv of that block in all, one buffer-manager read, and B's counts as a hit."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16)
    layer = CountingLayer(hold_offset=(7 % SEGMENT) * BLCKSZ)
    got: dict[str, int] = {}
    errors: list[BaseException] = []

    def read(name: str) -> None:
        try:
            got[name] = bm.read_buffer(REL, Fork.MAIN, 7)
        except BaseException as exc:  # reported below
            errors.append(exc)

    with osfile.installed(layer):
        a = threading.Thread(target=read, args=("a",))
        a.start()
        assert layer.held.wait(WAIT_LIMIT_S)
        d = desc_of(bm, 7)
        assert d.flags == BufferState.READING and d.io_wref is None
        b = threading.Thread(target=read, args=("b",))
        b.start()
        deadline = time.monotonic() + WAIT_LIMIT_S
        while d.refcount < 2 and time.monotonic() < deadline:  # B pinned it and waits
            time.sleep(0.001)
        assert d.refcount == 2 and d.flags == BufferState.READING and "b" not in got
        layer.go.set()
        a.join(WAIT_LIMIT_S)
        b.join(WAIT_LIMIT_S)
    assert not errors
    assert got["a"] == got["b"] == d.buf_id and item(bm, d.buf_id) == b"block 7"
    assert layer.calls[(7 % SEGMENT) * BLCKSZ] == 1
    s = bm.stats()
    assert s.reads == 1 and s.hits == 1
    bm.unpin_many([got["a"], got["b"]])
    bm.check()


def test_an_os_error_names_the_block_and_leaves_the_buffer_retryable(files):
    """EIO from preadv (through the OS boundary) raises IOFailure with the errno, naming
    the block, relation and file; the buffer is READ_FAILED and unpinned, and the next
    read (layer removed) succeeds. A block past the relation's end is a
    DataCorruptionError saying how much was read."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16)
    with osfile.installed(FailingLayer()), pytest.raises(IOFailure) as ei:
        bm.read_buffer(REL, Fork.MAIN, 9)
    assert ei.value.errno == errno.EIO
    assert f"block 9 of relation {REL} fork main in file" in str(ei.value)
    assert desc_of(bm, 9).flags == BufferState.READ_FAILED and desc_of(bm, 9).refcount == 0
    bm.check()
    b = bm.read_buffer(REL, Fork.MAIN, 9)
    assert item(bm, b) == b"block 9"
    bm.unpin(b)
    with pytest.raises(DataCorruptionError, match=rf"block {NBLOCKS} of relation {REL}.*"
                                                  rf"read only 0 of {BLCKSZ} bytes"):
        bm.read_buffer(REL, Fork.MAIN, NBLOCKS)
    bm.check()


def test_a_wrapping_test_method_sees_single_block_reads(faulty_aio, tmp_path):
    """A method that is not one of the public three (the fault-injecting wrapper) keeps
    read_buffer's miss on an AIO handle: its injected EIO surfaces as IOFailure, and the
    read counts as a handle I/O."""
    aio, method = faulty_aio
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(b) for b in range(4)])
    bm = BufferManager(smgr, aio, shared_buffers=16)
    assert not aio.synchronous_reads_inline
    method.add(FaultRule("eio", op=IoOp.READV, errno=errno.EIO))
    before = aio.stats().total("readv")
    with pytest.raises(IOFailure, match=rf"block 2 of relation {REL} fork main"):
        bm.read_buffer(REL, Fork.MAIN, 2)
    assert aio.stats().total("readv") == before + 1
    b = bm.read_buffer(REL, Fork.MAIN, 2)
    assert item(bm, b) == b"block 2"
    bm.unpin(b)
    bm.check()
    aio.wait_all()
    smgr.close()


def test_read_block_checks_its_arguments(files):
    """Smgr.read_block refuses a bool or unknown fork, a negative block, a non-int
    relation and a buffer that is not one block, naming the argument, as readv does."""
    smgr, _aio = files
    page = bytearray(BLCKSZ)
    smgr.read_block(REL, Fork.MAIN, 1, page)
    assert page_get_item(page, 1) == b"block 1"
    with pytest.raises(TypeError, match="fork"):
        smgr.read_block(REL, True, 1, page)
    with pytest.raises(ValueError, match="fork"):
        smgr.read_block(REL, 7, 1, page)
    with pytest.raises(ValueError, match="block"):
        smgr.read_block(REL, 0, -1, page)
    with pytest.raises(TypeError, match="rel"):
        smgr.read_block("16384", 0, 1, page)
    with pytest.raises(ValueError, match=f"exactly {BLCKSZ} bytes"):
        smgr.read_block(REL, 0, 1, bytearray(100))


def test_two_step_reads_complete_at_start_under_sync_and_report_at_the_wait(files):
    """A 4-block read_buffers reads every block with its content; under the sync method it
    ran inline without an AIO handle (yet counted once in aio.stats()), under the others
    on handles. A read stream whose third block is damaged hands out block 0 (and never a
    block of the failed read) before raising DataCorruptionError naming block 2: the
    failure is reported when the stream reaches it, on every method; nothing stays
    pinned. (Worker and io_uring would read these cached pages inline too: that is
    turned off here, so their handle path is what is checked; test_bufmgr_nowait_read.py
    checks it on.)"""
    smgr, aio = files
    aio.nowait_reads_inline = False
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
    by_handle = handle_reads(aio)
    counted = aio.stats().total("readv")
    bufs = bm.read_buffers(REL, Fork.MAIN, 8, 4)
    assert [item(bm, b) for b in bufs] == [f"block {k}".encode() for k in range(8, 12)]
    bm.unpin_many(bufs)
    assert (handle_reads(aio) == by_handle) == aio.every_read_inline
    assert aio.stats().total("readv") == counted + 1
    assert bm.stats().read_ios == 1 and bm.stats().reads == 4
    corrupt(smgr, 2)
    got = []
    with (ReadStream(bm, REL, Fork.MAIN, range(0, 6)) as stream,
          pytest.raises(DataCorruptionError, match=rf"block 2 of relation {REL} fork main")):
        while (b := stream.next_buffer()) is not None:
            got.append(bm.block_of(b)[2])
            bm.unpin(b)
    assert got[:1] == [0] and got == list(range(len(got))) and len(got) <= 2
    bm.check()


def test_a_read_past_the_end_reads_what_exists_then_fails_naming_the_first_missing_block(files):
    """read_buffers of blocks NBLOCKS-2 .. NBLOCKS+1 (two past the end): the read comes
    back short, the rest is read again, and DataCorruptionError names block NBLOCKS and
    says how much was read; nothing stays pinned, and the two existing blocks read fine
    afterwards."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
    with pytest.raises(DataCorruptionError, match=rf"read only 0 of {2 * BLCKSZ} bytes") as ei:
        bm.read_buffers(REL, Fork.MAIN, NBLOCKS - 2, 4)
    assert ei.value.block == NBLOCKS
    bm.check()
    bufs = bm.read_buffers(REL, Fork.MAIN, NBLOCKS - 2, 2)
    assert [item(bm, b) for b in bufs] == [f"block {NBLOCKS - 2 + k}".encode() for k in range(2)]
    bm.unpin_many(bufs)
    bm.check()


def test_a_forked_child_is_refused_rather_than_reading_inline(files):
    """After fork() the child's reads take the handle path, which refuses with a clear
    IoMethodUnavailable naming fork (checked in the child, reported by its exit code);
    the parent's Aio still reads inline."""
    smgr, aio = files
    bm = BufferManager(smgr, aio, shared_buffers=16)
    bm.unpin(bm.read_buffer(REL, Fork.MAIN, 0))
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            bm.read_buffer(REL, Fork.MAIN, 1)
        except IoMethodUnavailable as exc:
            code = 0 if "fork" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert aio.synchronous_reads_inline
    b = bm.read_buffer(REL, Fork.MAIN, 1)
    assert item(bm, b) == b"block 1"
    bm.unpin(b)
