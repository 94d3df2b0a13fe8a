"""BufferManager.zero_buffer (recovery's RBM_ZERO_AND_LOCK): the buffer of an existing block,
pinned, VALID and exclusively locked with an all-zero page, without reading the block."""

from __future__ import annotations

import pytest
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, Smgr

from tests.support.pages import make_page

REL = 16384
SEGMENT = 8


@pytest.fixture
def env(tmp_path, aio):
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=8, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(b) for b in range(40)])
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
    yield bm, smgr
    aio.wait_all()
    smgr.close()


def test_zero_buffer_does_not_read_and_survives_a_damaged_page(env):
    """A block not in the pool, damaged on disk (a byte flipped: its checksum fails), is
    handed out zeroed, locked and VALID with no read counted and no error; once written
    and released, a read of it returns what the caller put there."""
    bm, smgr = env
    path = smgr.segment_path(REL, Fork.MAIN, 0)
    with open(path, "r+b") as f:
        f.seek(3 * BLCKSZ + 5000)
        f.write(b"\xff")
    reads = bm.stats().reads
    buf = bm.zero_buffer(REL, Fork.MAIN, 3)
    assert bm.stats().reads == reads
    assert bytes(bm.page(buf)) == bytes(BLCKSZ)
    assert bm.block_of(buf) == (REL, Fork.MAIN, 3)
    assert bm.cached(REL, Fork.MAIN, 3, 1)
    bm.page(buf)[:] = make_page(3)
    bm.mark_dirty(buf)       # asserts the pin and the exclusive lock
    bm.unlock_release(buf)
    bm.flush_all()
    for b in range(8, 40):   # push block 3 out of the 16-buffer pool
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, b))
    got = bm.read_buffer(REL, Fork.MAIN, 3)
    assert bytes(bm.page(got)) == make_page(3)
    bm.unpin(got)
    bm.check()


def test_zero_buffer_of_a_cached_dirty_block_zeroes_it_in_place(env):
    """A block VALID (and dirty) in the pool keeps its buffer: the same buffer id comes
    back, locked, its page zeroed, still dirty; no read."""
    bm, _smgr = env
    buf = bm.read_buffer(REL, Fork.MAIN, 5)
    bm.lock_exclusive(buf)
    bm.mark_dirty(buf)
    bm.unlock_release(buf)
    reads = bm.stats().reads
    again = bm.zero_buffer(REL, Fork.MAIN, 5)
    assert again == buf and bm.stats().reads == reads
    assert bytes(bm.page(again)) == bytes(BLCKSZ) and bm.is_dirty(again)
    bm.page(again)[:] = make_page(5)
    bm.unlock_release(again)
    bm.check()


def test_zero_buffer_with_an_image_writes_it_and_refuses_a_wrong_length(env):
    """With ``image`` the page gets those bytes (a full-page image's restore, written once),
    for a block out of the pool and one in it, with no read; an image that is not one page
    long is refused before anything is pinned or claimed."""
    bm, _smgr = env
    reads = bm.stats().reads
    buf = bm.zero_buffer(REL, Fork.MAIN, 6, make_page(106))
    assert bytes(bm.page(buf)) == make_page(106) and bm.stats().reads == reads
    bm.mark_dirty(buf)
    bm.unlock_release(buf)
    again = bm.zero_buffer(REL, Fork.MAIN, 6, make_page(206))
    assert again == buf and bytes(bm.page(again)) == make_page(206)
    bm.unlock_release(again)
    pins = [d.refcount for d in bm.descs]
    with pytest.raises(ValueError, match="an image of 100 bytes"):
        bm.zero_buffer(REL, Fork.MAIN, 7, bytes(100))
    assert [d.refcount for d in bm.descs] == pins
    assert not bm.cached(REL, Fork.MAIN, 7, 1)
    bm.check()
