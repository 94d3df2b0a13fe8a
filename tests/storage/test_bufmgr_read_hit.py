"""``BufferManager.read_hit``: a point read's page in one descriptor-lock section, the
held lock standing in for a pin (storage/bufmgr.py invariants 1 and 8), on every io
method: the read gets the pool, the change counters and the buffer that holds the block,
runs under the lock, leaves no pin, counts as a hit; a block not in the pool is not read."""

from __future__ import annotations

import pytest
from slonik.storage import bufmgr as bufmgr_module
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork

from tests.support.pages import make_page

REL = 16384  # small_pool's relation (tests/storage/conftest.py)

needs_c = pytest.mark.skipif(bufmgr_module._lib is None,
                             reason="storage._pagecheck not built (no C compiler at install)")


@pytest.fixture
def env(small_pool):
    return small_pool


@needs_c
def test_read_hit_reads_a_cached_block_under_the_lock_without_a_pin(env):
    """A block never read: None, the read not called, no hit counted. Once the block is
    in the pool (read and unpinned): the read is called once with (c_pool, seq, the
    block's buffer, the extra arguments) while the descriptor lock is held, sees the
    block's page at that buffer in the pool, and its result is returned; the hit is
    counted, the buffer's pin count is back to zero and check() passes."""
    bm, _smgr = env
    ffi = bufmgr_module._ffi
    calls = []

    def read(pool, seq, buf, a, b):
        calls.append((buf, a, b, bm._lock.locked(), seq is bm.seq,
                      ffi.buffer(pool + buf * BLCKSZ, BLCKSZ)[:]))
        return "answer"

    hits = bm.stats().hits
    assert bm.read_hit(REL, Fork.MAIN, 5, read, 1, 2) is None
    assert calls == [] and bm.stats().hits == hits
    buf = bm.read_buffer(REL, Fork.MAIN, 5)
    bm.unpin(buf)
    hits = bm.stats().hits
    assert bm.read_hit(REL, int(Fork.MAIN), 5, read, 1, 2) == "answer"
    assert calls == [(buf, 1, 2, True, True, bytes(make_page(5)))]
    assert bm.stats().hits == hits + 1
    assert bm.descs[buf].refcount == 0
    assert not bm._lock.locked()
    bm.check()


@needs_c
def test_read_hit_releases_the_lock_when_the_read_raises(env):
    """A read that raises (a C call given a bad argument) propagates its error and leaves
    the descriptor lock free and no pin behind."""
    bm, _smgr = env
    bm.unpin(bm.read_buffer(REL, Fork.MAIN, 2))

    def read(pool, seq, buf):
        raise OverflowError("an offnum that is no u32")

    with pytest.raises(OverflowError, match="offnum"):
        bm.read_hit(REL, Fork.MAIN, 2, read)
    assert not bm._lock.locked()
    bm.check()
