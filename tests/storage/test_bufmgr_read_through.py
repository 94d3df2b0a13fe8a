"""``BufferManager.read_through``: a point read's page in one call, hit or miss (the KV
get's leaf probe, ``engine/access/btree.py`` ``_probe_unlocked``), on every io method. A
hit is ``read_hit``; a miss whose victim is clean is read in the calling thread and the
read runs in the completion's descriptor-lock section, leaving no pin; a miss that needs
the two-step path (a dirty victim, a read in progress elsewhere) answers None without
reading; a damaged page raises naming its block and leaves nothing pinned."""

from __future__ import annotations

import pytest
from slonik.storage import bufmgr as bufmgr_module
from slonik.storage.bufmgr import BM_DIRTY, BufferManager, BufferState
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork

from tests.support.pages import dirty_first_blocks, make_page

REL = 16384  # relation_files' relation (tests/storage/conftest.py)
POOL = 16

needs_c = pytest.mark.skipif(bufmgr_module._lib is None,
                             reason="storage._pagecheck not built (no C compiler at install)")


@pytest.fixture
def env(relation_files, aio):
    smgr = relation_files(8, 40, max_files=8)
    return BufferManager(smgr, aio, shared_buffers=POOL, io_combine_limit=4), smgr


def recorder(bm, calls):
    ffi = bufmgr_module._ffi

    def read(pool, seq, buf, a):
        calls.append((buf, a, bm._lock.locked(), seq is bm.seq,
                      ffi.buffer(pool + buf * BLCKSZ, BLCKSZ)[:]))
        return ("answer", a)
    return read


@needs_c
def test_a_miss_is_read_inline_and_probed_under_the_lock(env):
    """Block 5 never read: read_through reads it (one read counted, no hit) and calls the
    read once with the block's buffer while the descriptor lock is held, seeing the
    block's page there; its result is returned, the buffer is VALID, tagged with the block
    and unpinned. A second call is a hit: the same buffer, one hit, no read."""
    bm, _smgr = env
    calls: list = []
    read = recorder(bm, calls)
    before = bm.stats()
    assert bm.read_through(REL, int(Fork.MAIN), 5, read, 7) == ("answer", 7)
    after = bm.stats()
    assert (after.reads - before.reads, after.hits - before.hits) == (1, 0)
    [(buf, a, locked, same_seq, page)] = calls
    assert (a, locked, same_seq, page) == (7, True, True, make_page(5))
    d = bm.descs[buf]
    assert d.tag == (REL, int(Fork.MAIN), 5) and d.flags == int(BufferState.VALID)
    assert d.refcount == 0
    assert not bm._lock.locked()
    bm.check()
    assert bm.read_through(REL, Fork.MAIN, 5, read, 8) == ("answer", 8)
    assert calls[1][0] == buf and calls[1][4] == make_page(5)
    final = bm.stats()
    assert (final.reads - after.reads, final.hits - after.hits) == (0, 1)
    bm.check()


@needs_c
def test_every_block_of_a_relation_larger_than_the_pool(env):
    """40 blocks through a 16-buffer pool, twice over: every call returns the read's
    result for the right page (the pool evicts clean victims as it goes) and the pool is
    consistent with nothing pinned at the end."""
    bm, _smgr = env
    calls: list = []
    read = recorder(bm, calls)
    for _ in range(2):
        for block in range(40):
            calls.clear()
            assert bm.read_through(REL, 0, block, read, block) == ("answer", block)
            assert calls[0][4] == make_page(block)
    bm.check(quiescent=True)


def dirty_all(bm: BufferManager) -> None:
    dirty_first_blocks(bm, POOL, 100, REL)


@needs_c
def test_a_dirty_victim_sends_the_miss_to_the_two_step_path(env):
    """Every buffer dirty: read_through of a block not in the pool answers None without
    calling the read, reading or writing anything, and leaves every buffer dirty and
    unpinned (read_buffer, the caller's fallback, writes the victim)."""
    bm, _smgr = env
    dirty_all(bm)
    calls: list = []
    before = bm.stats()
    assert bm.read_through(REL, 0, POOL + 3, recorder(bm, calls), 0) is None
    after = bm.stats()
    assert calls == []
    assert (after.reads, after.writes) == (before.reads, before.writes)
    assert all(d.flags & BM_DIRTY and d.refcount == 0 for d in bm.descs)
    bm.check(quiescent=True)


@needs_c
def test_a_block_being_read_elsewhere_answers_none(env):
    """A block whose buffer another reader has claimed (READING, as read_buffer's inline
    miss leaves it between its claim and its completion): None, the read not called,
    nothing read; once that reader completes, read_through of the block is a hit."""
    bm, _smgr = env
    with bm._lock:
        d = bm._claim_victim_locked((REL, 0, 3))
    assert d.flags == int(BufferState.READING)
    calls: list = []
    before = bm.stats()
    assert bm.read_through(REL, 0, 3, recorder(bm, calls), 0) is None
    assert calls == [] and bm.stats().reads == before.reads
    bm.unpin(bm._read_inline(d, REL, 0, 3))
    assert bm.read_through(REL, 0, 3, recorder(bm, calls), 0) == ("answer", 0)
    assert calls[0][0] == d.buf_id
    bm.check(quiescent=True)


@needs_c
def test_a_damaged_page_raises_naming_its_block_and_leaves_nothing_pinned(env):
    """Block 9's bytes damaged on disk: read_through raises DataCorruptionError naming
    block 9, the read is not called, the buffer is READ_FAILED and unpinned; other blocks
    still read."""
    bm, smgr = env
    bad = bytearray(make_page(9))
    bad[BLCKSZ // 2] ^= 0xFF
    smgr.writev(REL, Fork.MAIN, 9, [bytes(bad)])
    calls: list = []
    with pytest.raises(DataCorruptionError, match="block 9") as info:
        bm.read_through(REL, 0, 9, recorder(bm, calls), 0)
    assert info.value.block == 9
    assert calls == []
    assert all(d.refcount == 0 for d in bm.descs)
    assert bm.read_through(REL, 0, 10, recorder(bm, calls), 1) == ("answer", 1)
    bm.check(quiescent=True)
