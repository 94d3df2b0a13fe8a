"""The buffer manager over every io method, on real files."""

from __future__ import annotations

import errno
import struct
import threading
import warnings

import pytest
from slonik.aio import osfile
from slonik.aio.core import Aio, make_method
from slonik.aio.errors import IOFailure
from slonik.aio.handle import IoOp, WaitRef
from slonik.storage.bufmgr import (
    LEGAL_TRANSITIONS,
    BufferManager,
    BufferState,
    DamagedPageWarning,
    NoFreeBuffersError,
)
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import (
    BLCKSZ,
    init_page,
    page_add_item,
    page_get_item,
    page_set_checksum,
    page_set_lsn,
)
from slonik.storage.smgr import Fork, Smgr

from tests.support.method_faulty import FaultInjectingMethod, FaultRule

REL = 16384
SEGMENT = 8


def make_page(rel: int, block: int, text: bytes = b"") -> bytes:
    buf = bytearray(BLCKSZ)
    init_page(buf)
    page_add_item(buf, text or f"rel {rel} block {block}".encode())
    page_set_checksum(buf, rel, Fork.MAIN, block)
    return bytes(buf)


def item(bm: BufferManager, b: int) -> bytes:
    return bytes(page_get_item(bm.page(b), 1))


@pytest.fixture
def env(tmp_path, aio):
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(REL, b) for b in range(40)])
    bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=4)
    yield bm, smgr
    aio.wait_all()
    smgr.close()


def corrupt(smgr: Smgr, block: int, offset: int = 5000) -> bytes:
    """Flip one byte of a block on disk (outside Slonik, like a bad disk); returns the
    original block so a test can repair it."""
    path = smgr.segment_path(REL, Fork.MAIN, block // SEGMENT)
    with open(path, "r+b") as f:
        f.seek((block % SEGMENT) * BLCKSZ)
        original = f.read(BLCKSZ)
        f.seek((block % SEGMENT) * BLCKSZ + offset)
        f.write(bytes([original[offset] ^ 0x20]))
    return original


def repair(smgr: Smgr, block: int, original: bytes) -> None:
    path = smgr.segment_path(REL, Fork.MAIN, block // SEGMENT)
    with open(path, "r+b") as f:
        f.seek((block % SEGMENT) * BLCKSZ)
        f.write(original)


def test_read_combines_and_hits(env):
    """Reading 10 uncached blocks takes ceil-by-limit-and-segment vectored I/Os; reading
    them again is all hits; every page has the right content."""
    bm, _ = env
    bufs = bm.read_buffers(REL, Fork.MAIN, 2, 10)
    assert [item(bm, b) for b in bufs] == [f"rel {REL} block {k}".encode() for k in range(2, 12)]
    s = bm.stats()
    assert s.reads == 10 and s.read_ios == 3  # 2-5 | 6-7 (segment end) | 8-11 (limit 4)
    bm.unpin_many(bufs)
    bufs = bm.read_buffers(REL, Fork.MAIN, 2, 10)
    assert bm.stats().hits == 10 and bm.stats().reads == 10
    bm.unpin_many(bufs)
    bm.check()


def test_eight_threads_read_each_block_once(env):
    """Eight threads read the same 24 blocks at once: each block is read from disk exactly
    once (the others wait on the first reader's I/O), and all see the right pages."""
    bm, _ = env
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            for block in range(24):
                b = bm.read_buffer(REL, Fork.MAIN, block)
                assert item(bm, b) == f"rel {REL} block {block}".encode()
                bm.unpin(b)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    s = bm.stats()
    assert s.reads == 24, s
    assert s.hits == 8 * 24 - 24
    bm.check()


def test_eviction_never_takes_a_pinned_buffer(env):
    """With 32 buffers, 20 held pinned, reading 40 other blocks evicts only unpinned ones;
    the pinned pages keep their content. Pinning all 32 makes the next read fail clearly."""
    bm, _ = env
    held = bm.read_buffers(REL, Fork.MAIN, 0, 20)
    for block in range(20, 40):
        b = bm.read_buffer(REL, Fork.MAIN, block)
        bm.unpin(b)
    assert [item(bm, b) for b in held] == [f"rel {REL} block {k}".encode() for k in range(20)]
    assert bm.stats().evictions > 0
    more = bm.read_buffers(REL, Fork.MAIN, 20, 12)
    with pytest.raises(NoFreeBuffersError, match="all 32 shared_buffers are pinned"):
        bm.read_buffer(REL, Fork.MAIN, 35)
    bm.unpin_many(held + more)
    bm.check()


def test_corrupt_page_reported_neighbours_readable_retry_after_repair(env):
    """A flipped byte on disk: reading that block raises DataCorruptionError naming
    relation, fork and block; its neighbours in the same vectored read are readable; after
    the disk is repaired the same read succeeds."""
    bm, smgr = env
    original = corrupt(smgr, 5)
    with pytest.raises(DataCorruptionError, match=rf"invalid page in block 5 of relation {REL} "
                                                  r"fork main: checksum mismatch") as info:
        bm.read_buffers(REL, Fork.MAIN, 4, 4)
    assert (info.value.relation, info.value.fork, info.value.block) == (REL, 0, 5)
    for block in (4, 6, 7):
        b = bm.read_buffer(REL, Fork.MAIN, block)
        assert item(bm, b) == f"rel {REL} block {block}".encode()
        bm.unpin(b)
    with pytest.raises(DataCorruptionError):
        bm.read_buffer(REL, Fork.MAIN, 5)
    repair(smgr, 5, original)
    b = bm.read_buffer(REL, Fork.MAIN, 5)
    assert item(bm, b) == f"rel {REL} block 5".encode()
    bm.unpin(b)
    bm.check()


def test_two_bad_pages_in_one_read(env):
    """Two damaged blocks in one combined read: the error counts them and names the first."""
    bm, smgr = env
    corrupt(smgr, 9)
    corrupt(smgr, 11, offset=10)  # in the header this time
    with pytest.raises(DataCorruptionError, match=r"2 invalid pages among blocks 8\.\.11 .* "
                                                  r"block 9 held the first"):
        bm.read_buffers(REL, Fork.MAIN, 8, 4)


def test_zero_damaged_pages_and_ignore_checksum_failure(env):
    """zero_damaged_pages zeroes a damaged page and warns; ignore_checksum_failure accepts a
    page whose only fault is its checksum and warns; both are captured when the read is
    issued (per call here), and are off by default."""
    bm, smgr = env
    corrupt(smgr, 13)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = bm.start_read_buffers(REL, Fork.MAIN, 13, 1, ignore_checksum_failure=True)
        bm.wait_read_buffers(op)
    assert any(issubclass(w.category, DamagedPageWarning) and "ignoring checksum" in str(w.message)
               for w in caught)
    assert bytes(bm.page(op.buffers[0])[5000:5001]) != b"\x00"  # kept as read
    bm.unpin_many(op.buffers)
    bm.drop_relation_buffers(REL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = bm.start_read_buffers(REL, Fork.MAIN, 13, 1, zero_damaged_pages=True)
        bm.wait_read_buffers(op)
    assert any("zeroing out page" in str(w.message) for w in caught)
    assert bytes(bm.page(op.buffers[0])) == bytes(BLCKSZ)
    assert bm.stats().zeroed_pages == 1 and bm.stats().ignored_checksum_failures == 1
    bm.unpin_many(op.buffers)


def test_all_zero_page_is_valid_new_page(env):
    """An all-zero block on disk (zeroextend) reads as a valid new page."""
    bm, smgr = env
    smgr.zeroextend(REL, Fork.MAIN, 40, 2)
    bufs = bm.read_buffers(REL, Fork.MAIN, 40, 2)
    assert all(bytes(bm.page(b)) == bytes(BLCKSZ) for b in bufs)
    bm.unpin_many(bufs)


@pytest.fixture
def faulty_env(tmp_path, io_method):
    method = FaultInjectingMethod(make_method(io_method))
    aio = Aio(method=method, io_max_concurrency=16)
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(REL, b) for b in range(16)])
    bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=8)
    yield bm, method
    aio.shutdown()
    smgr.close()


@pytest.mark.parametrize("cut", [BLCKSZ, 3 * BLCKSZ + 77, 7 * BLCKSZ])
def test_short_read_is_reissued(faulty_env, cut):
    """An 8-block read that comes back short is re-issued for the remainder by
    wait_read_buffers; all 8 pages end up valid with the right content."""
    bm, method = faulty_env
    method.add(FaultRule("short", op=IoOp.READV, short=cut))
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 8)
    assert [item(bm, b) for b in bufs] == [f"rel {REL} block {k}".encode() for k in range(8)]
    assert bm.stats().read_ios == 2
    bm.unpin_many(bufs)


def test_eio_surfaces_and_buffer_is_retryable(faulty_env):
    """An injected EIO raises IOFailure naming the relation and blocks; the buffers are
    not left VALID or in progress, and the next read of them succeeds."""
    bm, method = faulty_env
    method.add(FaultRule("eio", op=IoOp.READV, errno=errno.EIO))
    with pytest.raises(IOFailure, match=rf"blocks 0\.\.3 of relation {REL} fork main") as info:
        bm.read_buffers(REL, Fork.MAIN, 0, 4)
    assert info.value.errno == errno.EIO
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 4)
    assert [item(bm, b) for b in bufs] == [f"rel {REL} block {k}".encode() for k in range(4)]
    bm.unpin_many(bufs)
    bm.check()


def test_extend_dirty_flush_calls_flush_wal_first(env):
    """Extending gives zeroed, pinned, exclusively locked buffers; dirty pages with an LSN
    are written only after flush_wal(page_lsn) was called with that LSN (WAL before data),
    and the written pages verify on disk."""
    bm, smgr = env
    calls: list[tuple[int, bool]] = []
    bm.flush_wal = lambda lsn: calls.append((lsn, bm.is_dirty(new[0])))
    new = bm.extend(REL, Fork.MAIN, 2)
    assert smgr.nblocks(REL, Fork.MAIN) == 42
    for k, b in enumerate(new):
        assert bytes(bm.page(b)) == bytes(BLCKSZ)
        init_page(bm.page(b))
        page_add_item(bm.page(b), f"new {k}".encode())
        page_set_lsn(bm.page(b), 1000 + k)
        bm.mark_dirty(b)
        bm.unlock_exclusive(b)
    bm.unpin_many(new)
    written = bm.flush_all()
    assert written == 2
    assert calls == [(1001, True)]  # once for the combined run, before the write
    assert not bm.is_dirty(new[0])
    bm.drop_relation_buffers(REL)
    bufs = bm.read_buffers(REL, Fork.MAIN, 40, 2)
    assert [item(bm, b) for b in bufs] == [b"new 0", b"new 1"]
    bm.unpin_many(bufs)


def test_dirty_eviction_writes_victim_after_flush_wal(env):
    """Dirtying every buffer and then reading other blocks forces dirty victims out: each
    is written (after flush_wal with its LSN) and reads back correctly afterwards."""
    bm, smgr = env
    seen: list[int] = []
    bm.flush_wal = seen.append
    for block in range(32):
        b = bm.read_buffer(REL, Fork.MAIN, block)
        bm.lock_exclusive(b)
        page_set_lsn(bm.page(b), 5000 + block)
        bm.mark_dirty(b)
        bm.unlock_exclusive(b)
        bm.unpin(b)
    for block in range(32, 40):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, block))
    assert bm.stats().writes >= 8
    assert len(seen) >= 8 and all(lsn >= 5000 for lsn in seen)
    bm.flush_all()
    bm.drop_relation_buffers(REL)
    for block in range(32):
        b = bm.read_buffer(REL, Fork.MAIN, block)
        assert item(bm, b) == f"rel {REL} block {block}".encode()
        bm.unpin(b)


def test_flush_all_writes_each_dirty_page_once_combined(env):
    """flush_all writes every dirty buffer exactly once, adjacent blocks combined into
    vectored writes (split at segment ends and io_combine_limit), and a second flush_all
    writes nothing."""
    bm, _ = env
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 12)
    for b in bufs:
        bm.lock_exclusive(b)
        bm.mark_dirty(b)
        bm.unlock_exclusive(b)
    bm.unpin_many(bufs)
    before = bm.stats()
    assert bm.flush_all() == 12
    after = bm.stats()
    assert after.writes - before.writes == 12
    assert after.write_ios - before.write_ios == 3  # 0-3, 4-7, 8-11 (limit 4, segment 8)
    assert bm.flush_all() == 0
    bm.check()


def test_bad_settings_are_rejected(env):
    """shared_buffers and io_combine_limit out of range name the setting and range."""
    _, smgr = env
    with pytest.raises(ValueError, match="shared_buffers must be an int in 16"):
        BufferManager(smgr, smgr.aio, shared_buffers=4)
    with pytest.raises(ValueError, match="io_combine_limit must be an int in 1..128"):
        BufferManager(smgr, smgr.aio, shared_buffers=16, io_combine_limit=0)


def test_adjacent_pool_buffers_travel_as_one_wide_view(env, io_method):
    """A read whose claimed pool buffers are adjacent and in order is issued as one wide
    view (one iovec): counted through the OS layer on sync/worker (io_uring bypasses it).
    When the clock wraps or pinned buffers split them, each block gets its own view; the
    pages read are right either way, and the buffers stay consistent (check())."""
    bm, smgr = env

    class Counting(osfile.OsLayer):
        def __init__(self) -> None:
            self.iovecs: list[list[int]] = []

        def preadv(self, fd, buffers, offset):
            self.iovecs.append([len(b) for b in buffers])
            return super().preadv(fd, buffers, offset)

    layer = Counting()
    with osfile.installed(layer):
        bufs = bm.read_buffers(REL, Fork.MAIN, 0, 4)
    assert bufs == list(range(bufs[0], bufs[0] + 4))
    if io_method != "io_uring":
        assert layer.iovecs == [[4 * BLCKSZ]]
    assert [item(bm, b) for b in bufs] == [f"rel {REL} block {k}".encode() for k in range(4)]
    bm.unpin_many(bufs)
    # (the pool's buffers exist once the first read made them: POOL_GROW_BUFFERS > 32)
    assert [len(v) for v in bm._io_views([3, 4, 5])] == [3 * BLCKSZ]
    assert [len(v) for v in bm._io_views([3, 5, 4])] == [BLCKSZ] * 3
    assert [len(v) for v in bm._io_views([31, 0])] == [BLCKSZ] * 2
    held = []
    for start in range(4, 40, 4):  # wraps the 32-buffer pool, some buffers held pinned
        bufs = bm.read_buffers(REL, Fork.MAIN, start, 4)
        assert [item(bm, b) for b in bufs] == \
            [f"rel {REL} block {k}".encode() for k in range(start, start + 4)]
        held.append(bufs[1])
        bm.unpin_many([b for b in bufs if b != bufs[1]])
    bm.unpin_many(held)
    bm.check()


def test_extend_waits_for_a_read_of_the_new_block(env):
    """A reader that sees the new size first and reads the new block must not wipe what the
    extender then writes into it: 300 extensions, each stamped while a second thread keeps
    reading the last block; every stamped page keeps its item (checked after the race)."""
    bm, smgr = env
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                n = smgr.nblocks(REL, Fork.MAIN)
                b = bm.read_buffer(REL, Fork.MAIN, n - 1)
                bm.unpin(b)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    stamped = []
    try:
        for i in range(300):
            (b,) = bm.extend(REL, Fork.MAIN, 1)
            page = bm.page(b)
            init_page(page)
            page_add_item(page, f"stamp {i}".encode())
            bm.mark_dirty(b)
            stamped.append((bm.block_of(b)[2], f"stamp {i}".encode()))
            bm.unlock_exclusive(b)
            bm.unpin(b)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    for block, text in stamped:
        b = bm.read_buffer(REL, Fork.MAIN, block)
        assert item(bm, b) == text, f"block {block} lost its item"
        bm.unpin(b)


def _dirty_block(bm: BufferManager, block: int) -> int:
    """Read ``block``, dirty it under its exclusive lock; returns the buffer, still pinned."""
    b = bm.read_buffer(REL, Fork.MAIN, block)
    bm.lock_exclusive(b)
    bm.mark_dirty(b)
    bm.unlock_exclusive(b)
    return b


def test_check_finds_a_leaked_pin(env):
    """A pin nobody gives back is reported by check() (naming the buffer and block) at a
    quiescent point; once it is released check() passes, and a check that is told pins
    are expected (quiescent=False) does not report it."""
    bm, _ = env
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 3)
    bm.unpin_many(bufs[:2])
    with pytest.raises(AssertionError, match=rf"block 2 of relation {REL}.*still pinned"):
        bm.check()
    bm.check(quiescent=False)
    bm.unpin(bufs[2])
    bm.check()


def test_check_finds_a_buffer_stuck_in_io_in_progress(env):
    """A buffer whose I/O was claimed (StartBufferIO) but never terminated — planted through
    the state machine's own start call — is reported as stuck in IO_IN_PROGRESS with no I/O
    owning it; terminating the I/O makes check() pass again."""
    bm, _ = env
    b = _dirty_block(bm, 5)
    bm.unpin(b)
    d = bm.descs[b]
    with bm._lock:
        assert bm._start_buffer_io_locked(d, for_input=False)
    assert BufferState(d.flags) == BufferState.WRITING
    with pytest.raises(AssertionError, match=r"stuck in IO_IN_PROGRESS \(no I/O owns it\)"):
        bm.check()
    with bm._lock:
        bm._terminate_buffer_io_locked(d, BufferState.DIRTY, io_pin=False)
    bm.check()
    assert bm.flush_all() == 1


def test_illegal_buffer_state_transitions_are_asserted(env):
    """Every change of a descriptor's flags goes through one setter that asserts the edge
    against LEGAL_TRANSITIONS: a clean VALID buffer cannot jump to WRITING, an I/O that is
    not in progress cannot be terminated, a second read claim on a buffer being read is
    refused; the buffer keeps its state after each refusal."""
    bm, _ = env
    b = bm.read_buffer(REL, Fork.MAIN, 1)
    d = bm.descs[b]
    assert BufferState(d.flags) == BufferState.VALID
    with bm._lock:
        with pytest.raises(AssertionError, match="illegal buffer state transition VALID -> WRITING"):
            bm._set_state_locked(d, BufferState.WRITING)
        with pytest.raises(AssertionError, match="VALID -> VALID"):
            bm._terminate_buffer_io_locked(d, BufferState.VALID, io_pin=False)
        assert not bm._start_buffer_io_locked(d, for_input=True)  # VALID: nothing to read
    assert BufferState(d.flags) == BufferState.VALID
    assert BufferState.WRITING not in LEGAL_TRANSITIONS[BufferState.VALID]
    bm.unpin(b)
    bm.check()


def test_a_run_of_reads_terminates_in_one_pass_and_refuses_a_buffer_not_being_read(env):
    """_terminate_reads_locked (a read completion's one loop over its run): two buffers
    claimed for reading with an I/O pin and wait reference each end VALID with the I/O's
    pin and reference gone (the caller's pin stays); a run holding a VALID buffer is
    refused with the assertion naming the edge, the buffer keeps its state; an edge
    LEGAL_TRANSITIONS lacks (READING -> DIRTY) is refused before any buffer changes."""
    bm, _ = env
    bufs = bm.read_buffers(REL, Fork.MAIN, 5, 2)
    descs = [bm.descs[b] for b in bufs]
    ref = WaitRef(0, 1)
    with bm._lock:
        for d in descs:
            bm._set_state_locked(d, BufferState.EMPTY)
            assert bm._start_buffer_io_locked(d, for_input=True)
            d.refcount += 1  # the I/O's own pin, as _read_stage takes it
            d.io_wref = ref
        with pytest.raises(AssertionError, match="no edge READING -> 0x13"):
            bm._terminate_reads_locked(bufs, int(BufferState.DIRTY), io_pin=True)
        assert all(BufferState(d.flags) == BufferState.READING for d in descs)
        bm._terminate_reads_locked(bufs, int(BufferState.VALID), io_pin=True)
        assert all(BufferState(d.flags) == BufferState.VALID for d in descs)
        assert [(d.refcount, d.io_wref) for d in descs] == [(1, None), (1, None)]
        with pytest.raises(AssertionError, match="VALID -> VALID"):
            bm._terminate_reads_locked(bufs[:1], int(BufferState.VALID), io_pin=False)
    assert BufferState(descs[0].flags) == BufferState.VALID
    assert len(bm.copy_release(bufs)) == 2 * BLCKSZ
    bm.check()


def test_a_malformed_page_is_refused_before_it_is_written(env):
    """A dirty page whose header breaks the page rules (lower past upper) is refused with
    an AssertionError naming the block before any byte reaches the file; the buffer stays
    dirty and unclaimed, and once the page is repaired the same flush writes it."""
    bm, smgr = env
    b = _dirty_block(bm, 6)
    page = bm.page(b)
    good = bytes(page)
    before = bytearray(BLCKSZ)
    smgr.readv(REL, Fork.MAIN, 6, [before])
    bm.lock_exclusive(b)
    page[14:18] = struct.pack("<HH", 8000, 100)  # pd_lower > pd_upper
    bm.unlock_exclusive(b)
    with pytest.raises(AssertionError, match=rf"malformed page: block 6 of relation {REL}"):
        bm.flush_buffer(b)
    after = bytearray(BLCKSZ)
    smgr.readv(REL, Fork.MAIN, 6, [after])
    assert after == before
    assert BufferState(bm.descs[b].flags) == BufferState.DIRTY
    bm.lock_exclusive(b)
    page[:] = good
    bm.unlock_exclusive(b)
    bm.flush_buffer(b)
    assert BufferState(bm.descs[b].flags) == BufferState.VALID
    bm.unpin(b)
    bm.check()


def test_buffer_locked_releases_lock_and_pin_on_error(env):
    """buffer_locked() is the one pin/lock/unlock/unpin sequence: inside, the buffer is
    pinned and locked in the asked mode; leaving it, normally or by an exception, releases
    both (check() finds nothing left)."""
    bm, _ = env
    with bm.buffer_locked(REL, Fork.MAIN, 3, exclusive=True) as b:
        assert bm.descs[b].lock.held_exclusive and bm.descs[b].refcount == 1
        assert item(bm, b) == f"rel {REL} block 3".encode()
    bm.check()
    with pytest.raises(RuntimeError, match="inside"), bm.buffer_locked(REL, Fork.MAIN, 4) as b:
        assert bm.descs[b].lock.held and not bm.descs[b].lock.held_exclusive
        raise RuntimeError("inside")
    bm.check()


def test_locked_and_unlock_release_leave_no_pin_or_lock(env):
    """bm.locked(buf) takes over a pin the caller holds (as a read stream hands buffers
    out) and bm.unlock_release(buf) ends a pin-and-lock the caller began: afterwards, also
    when the body raised, check() finds no leaked pin and no held lock."""
    bm, _ = env
    buf = bm.read_buffer(REL, Fork.MAIN, 3)
    with bm.locked(buf, exclusive=True) as b:
        assert b == buf and bm.descs[b].lock.held_exclusive and bm.descs[b].refcount == 1
    bm.check()
    buf = bm.read_buffer(REL, Fork.MAIN, 4)
    with pytest.raises(RuntimeError, match="inside"), bm.locked(buf):
        assert bm.descs[buf].lock.held and not bm.descs[buf].lock.held_exclusive
        raise RuntimeError("inside")
    bm.check()
    buf = bm.read_buffer(REL, Fork.MAIN, 5)
    bm.lock_exclusive(buf)
    bm.unlock_release(buf)
    bm.check()


def test_copy_release_copies_under_shared_locks_and_drops_the_pins(env):
    """copy_release(bufs) returns the pages' bytes concatenated in the given order (each
    page's item names its block), holds no lock and no pin afterwards (check() passes),
    and waits for an exclusive holder: a writer changing block 2 while a copy of 1..3 is
    asked for finishes first, so the copy holds the whole change and never half of it."""
    bm, _ = env
    bufs = bm.read_buffers(REL, Fork.MAIN, 1, 3)
    data = bm.copy_release(bufs)
    assert len(data) == 3 * BLCKSZ
    for k in range(3):
        page = bytearray(data[k * BLCKSZ:(k + 1) * BLCKSZ])
        assert bytes(page_get_item(page, 1)) == f"rel {REL} block {k + 1}".encode()
    bm.check()
    writer = bm.read_buffer(REL, Fork.MAIN, 2)
    bm.lock_exclusive(writer)
    bufs = bm.read_buffers(REL, Fork.MAIN, 1, 3)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(bm.copy_release(bufs)))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # waiting for the exclusive lock on block 2
    page = bm.page(writer)
    page[5000:5004] = b"ABCD"
    page[6000:6004] = b"WXYZ"
    bm.unlock_release(writer)
    reader.join()
    assert got[0][BLCKSZ + 5000:BLCKSZ + 5004] == b"ABCD"
    assert got[0][BLCKSZ + 6000:BLCKSZ + 6004] == b"WXYZ"
    bm.check()


def test_pin_if_valid_pins_only_valid_pool_blocks(env):
    """pin_if_valid: -1 (no pin, no read, no hit counted) for a block not in the pool;
    after a read, the block's own buffer pinned once more (its page readable, one hit
    counted, check() sees the extra pin until it is dropped)."""
    bm, _ = env
    before = bm.stats()
    assert bm.pin_if_valid(REL, int(Fork.MAIN), 5) == -1
    after = bm.stats()
    assert (after.reads, after.hits) == (before.reads, before.hits)
    bm.check()  # nothing pinned
    buf = bm.read_buffer(REL, Fork.MAIN, 5)
    bm.unpin(buf)
    hits = bm.stats().hits
    got = bm.pin_if_valid(REL, int(Fork.MAIN), 5)
    assert got == buf and item(bm, got) == f"rel {REL} block 5".encode()
    assert bm.stats().hits == hits + 1 and bm.stats().reads == after.reads + 1
    with pytest.raises(AssertionError):
        bm.check()  # the pin is held
    bm.unpin(got)
    bm.check()
