"""The buffer change counters of optimistic reads (storage/bufmgr.py invariant 8): odd
exactly while a buffer's exclusive content lock is held, by every way of taking it
(lock_exclusive, extend, zero_buffer), unchanged by shared locks, pins and reads;
``check()`` names an odd counter left behind; without the C helper there are none."""

from __future__ import annotations

import pytest
from slonik.storage import bufmgr as bufmgr_module
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork

REL = 16384  # small_pool's relation (tests/storage/conftest.py)

needs_c = pytest.mark.skipif(bufmgr_module._lib is None,
                             reason="storage._pagecheck not built (no C compiler at install)")


@pytest.fixture
def env(small_pool):
    return small_pool


@needs_c
def test_counter_is_odd_exactly_while_held_exclusive(env):
    """Per buffer: a read, a pin and a shared lock leave the counter as it was (even); each
    lock_exclusive makes it odd and the matching unlock_exclusive even again, two more per
    hold; other buffers' counters do not move; check() passes after."""
    bm, _smgr = env
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 4)
    before = [bm.seq_of(b) for b in bufs]
    assert all(s % 2 == 0 for s in before)
    bm.lock_shared(bufs[0])
    assert bm.seq_of(bufs[0]) == before[0]
    bm.unlock_shared(bufs[0])
    for hold in range(1, 4):
        bm.lock_exclusive(bufs[1])
        assert bm.seq_of(bufs[1]) == before[1] + 2 * hold - 1
        bm.page(bufs[1])[100] = hold
        bm.unlock_exclusive(bufs[1])
        assert bm.seq_of(bufs[1]) == before[1] + 2 * hold
    assert [bm.seq_of(b) for b in (bufs[0], bufs[2], bufs[3])] == \
        [before[0], before[2], before[3]]
    bm.unpin_many(bufs)
    bm.check()


@needs_c
def test_extend_and_zero_buffer_hand_out_odd_counters(env):
    """extend's and zero_buffer's buffers come exclusively locked, and their counters odd
    (the page is zeroed after the bump: an optimistic reader of a VALID block being zeroed
    in place sees a change); the release makes them even."""
    bm, _smgr = env
    (new,) = bm.extend(REL, Fork.MAIN, 1)
    assert bm.seq_of(new) % 2 == 1
    bm.unlock_exclusive(new)
    assert bm.seq_of(new) % 2 == 0
    bm.unpin(new)
    buf = bm.read_buffer(REL, Fork.MAIN, 3)   # VALID in the pool: zeroed in place
    start = bm.seq_of(buf)
    zeroed = bm.zero_buffer(REL, Fork.MAIN, 3)
    assert zeroed == buf and bm.seq_of(buf) == start + 1
    assert bytes(bm.page(buf)) == bytes(BLCKSZ)
    bm.unlock_exclusive(buf)
    assert bm.seq_of(buf) == start + 2
    bm.unpin_many([buf, buf])
    bm.check()


@needs_c
def test_check_names_an_odd_counter(env):
    """A counter left odd with no exclusive holder (a bump without its pair) is a problem
    check() reports naming the buffer."""
    bm, _smgr = env
    buf = bm.read_buffer(REL, Fork.MAIN, 2)
    bm.unpin(buf)
    bump = bufmgr_module._lib.slk_seq_bump
    bump(bm.seq, buf)
    with pytest.raises(AssertionError, match=f"buffer {buf} .*odd change counter"):
        bm.check()
    bump(bm.seq, buf)
    bm.check()


def test_no_counters_without_the_c_helper(env, monkeypatch):
    """With the C helper absent, a buffer manager has no counters (seq_of is None) and its
    exclusive locks work as before."""
    _bm, smgr = env
    monkeypatch.setattr(bufmgr_module, "_lib", None)
    monkeypatch.setattr(bufmgr_module, "_ffi", None)
    bm = BufferManager(smgr, _bm.aio, shared_buffers=16, io_combine_limit=4)
    buf = bm.read_buffer(REL, Fork.MAIN, 1)
    assert bm.seq is None and bm.seq_of(buf) is None
    bm.lock_exclusive(buf)
    bm.page(buf)[200] = 7
    bm.unlock_exclusive(buf)
    assert bm.page(buf)[200] == 7
    bm.unpin(buf)
    bm.check()


@needs_c
def test_many_at_once_bump_each_counter_once(env):
    """pin_exclusive_if_valid_many and release_many move the counters as lock_exclusive and
    unlock_exclusive do, with the run's locks, one call each (slk_cl_*_many): odd exactly
    while each is held, even and two more after; a block not in the pool gets -1 and no
    counter moves for it. A release that lists a buffer twice is refused before anything
    changes (its counter would move twice)."""
    bm, _smgr = env
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 5)
    bm.unpin_many(bufs)
    before = {b: bm.seq_of(b) for b in range(bm.nbuffers)}
    tags = [(REL, int(Fork.MAIN), k) for k in range(5)] + [(REL, int(Fork.MAIN), 40)]
    got = bm.pin_exclusive_if_valid_many(tags)
    assert got[:5] == bufs and got[5] == -1
    assert all(bm.seq_of(b) == before[b] + 1 for b in bufs)
    bm.page(bufs[2])[100] = 7
    with pytest.raises(AssertionError, match="repeated"):
        bm.release_many([*bufs, bufs[1]], ())
    assert all(bm.seq_of(b) == before[b] + 1 for b in bufs)
    assert bm.release_many(bufs, {bufs[2]}) == 1 and bm.is_dirty(bufs[2])
    after = {b: bm.seq_of(b) for b in range(bm.nbuffers)}
    assert all(after[b] == before[b] + (2 if b in bufs else 0) for b in after), after
    bm.check()
