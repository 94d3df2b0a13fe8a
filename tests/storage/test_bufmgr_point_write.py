"""``BufferManager.read_buffer_exclusive`` and ``release_dirty``: a writer's point access
(an autocommit put's leaf) in one call each, on every io method, against the calls they
stand for (``read_buffer`` + ``lock_exclusive``; ``mark_dirty`` + ``unlock_exclusive`` +
``unpin``): the same page, pin, lock, change counter, hit count and dirty state, a miss
read from disk, a held lock waited for, and an interrupt while waiting leaving no pin."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from slonik.storage import bufmgr as bufmgr_module
from slonik.storage import hotlib
from slonik.storage.bufmgr import BM_DIRTY
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork

from tests.support.pages import make_page

REL = 16384  # small_pool's relation (tests/storage/conftest.py)


def test_a_miss_then_a_hit_pinned_locked_and_released_dirty(small_pool):
    """Block 3 not in the pool: read from disk, pinned once, held exclusively, its change
    counter odd. Writing into it and ``release_dirty``: dirty, unlocked (the counter even
    again), unpinned. The second access is a hit (counted) on the same buffer, with the
    change still there; check() passes."""
    bm, _smgr = small_pool
    hits, reads = bm.stats().hits, bm.stats().reads
    buf = bm.read_buffer_exclusive(REL, Fork.MAIN, 3)
    d = bm.descs[buf]
    assert bytes(bm.page(buf)) == bytes(make_page(3))
    assert d.refcount == 1 and d.lock.held_exclusive
    assert bm.stats().reads == reads + 1 and bm.stats().hits == hits
    if bm.seq is not None:
        assert bm.seq_of(buf) % 2 == 1
    bm.page(buf)[BLCKSZ - 8:] = b"written!"
    bm.release_dirty(buf)
    assert d.refcount == 0 and not d.lock.held_exclusive and d.flags & BM_DIRTY
    if bm.seq is not None:
        assert bm.seq_of(buf) % 2 == 0
    again = bm.read_buffer_exclusive(REL, int(Fork.MAIN), 3)
    assert again == buf and bm.stats().hits == hits + 1
    assert bytes(bm.page(buf))[BLCKSZ - 8:] == b"written!"
    bm.release_dirty(again)
    bm.check()


def test_a_hit_whose_lock_is_held_waits_for_it(small_pool):
    """Block 2 in the pool, held shared by another thread: ``read_buffer_exclusive``
    returns only after that hold ends, then holds the buffer exclusively with one pin of
    its own."""
    bm, _smgr = small_pool
    reader = bm.read_buffer(REL, Fork.MAIN, 2)
    bm.lock_shared(reader)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(bm.read_buffer_exclusive(REL, Fork.MAIN,
                                                                            2)))
    t.start()
    time.sleep(0.2)
    assert got == [] and t.is_alive()
    bm.unlock_shared(reader)
    bm.unpin(reader)
    t.join(10)
    assert got == [reader]
    d = bm.descs[reader]
    assert d.refcount == 1 and d.lock.held_exclusive
    bm.release_dirty(reader)
    bm.check()


def test_an_interrupt_while_waiting_for_the_lock_leaves_no_pin(small_pool):
    """Block 4 held exclusively: a ``read_buffer_exclusive`` of it in the main thread
    waits, and a real signal (SIGALRM) whose handler raises ends the wait, as a
    KeyboardInterrupt would: the exception propagates and the pin taken for the access is
    dropped again (only the holder's pin remains)."""
    bm, _smgr = small_pool
    holder = bm.read_buffer(REL, Fork.MAIN, 4)
    bm.lock_exclusive(holder)

    class Interrupted(BaseException):
        pass

    def handler(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            bm.read_buffer_exclusive(REL, Fork.MAIN, 4)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert bm.descs[holder].refcount == 1
    bm.unlock_exclusive(holder)
    bm.unpin(holder)
    bm.check()


def test_the_change_counter_bump_keeps_the_gil(small_pool):
    """Every exclusive hold bumps the buffer's change counter twice (invariant 8), inside
    the commit path: the bump is made by the content-lock calls of the GIL-keeping build
    (storage/hotlib.py), so that a writer holding the commit lock does not hand the GIL to
    another thread twice per put (with 8 committers that cost ~15 us of each put's
    apply)."""
    bm, _smgr = small_pool
    if bufmgr_module._lib is None:
        pytest.skip("storage._pagecheck not built (no C compiler at install)")
    hot = hotlib.hot_for(bufmgr_module._lib)
    if hot is not bufmgr_module._lib:   # the _pagehot module is built: the lock words' calls
        assert bm._words.c is not None and bm._words.c[0] is hot
    else:
        assert bm._words.c is None
    buf = bm.read_buffer_exclusive(REL, Fork.MAIN, 1)
    assert bm.seq_of(buf) % 2 == 1
    bm.release_dirty(buf)
    assert bm.seq_of(buf) % 2 == 0


def test_uncached_lists_the_blocks_not_in_the_pool(small_pool):
    """``uncached`` (recovery's prefetch filter): of blocks 0..5, after reading 1 and 4 the
    others are listed, in the order given (from a list or an iterator); no pin is
    taken."""
    bm, _smgr = small_pool
    for b in (1, 4):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, b))
    tags = [(REL, int(Fork.MAIN), b) for b in (5, 4, 3, 2, 1, 0)]
    assert bm.uncached(tags) == [(REL, 0, 5), (REL, 0, 3), (REL, 0, 2), (REL, 0, 0)]
    assert bm.uncached(iter(tags[:2])) == [(REL, 0, 5)]
    assert all(d.refcount == 0 for d in bm.descs)
    assert bm.uncached([]) == []
    bm.check()


def test_pin_exclusive_if_valid_many_and_release_many(small_pool):
    """Blocks 1, 2, 4 in the pool, 3 and 5 not: ``pin_exclusive_if_valid_many`` pins and
    holds exclusively 1, 2 and 4 (their change counters odd, hits counted), -1 and no pin
    for the others. ``release_many`` with {2} dirty: all unlocked and unpinned, only 2
    dirtied, and it says one buffer turned dirty. A block whose content lock another
    thread holds shared is waited for, then held."""
    bm, _smgr = small_pool
    for b in (1, 2, 4):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, b))
    hits = bm.stats().hits
    tags = [(REL, 0, b) for b in (1, 3, 2, 4, 5)]
    got = bm.pin_exclusive_if_valid_many(tags)
    assert got[1] == -1 and got[4] == -1
    held = [got[0], got[2], got[3]]
    assert all(bm.block_of(buf) == tags[i][:3] for i, buf in ((0, got[0]), (2, got[2])))
    for buf in held:
        d = bm.descs[buf]
        assert d.refcount == 1 and d.lock.held_exclusive and not d.flags & BM_DIRTY
        if bm.seq is not None:
            assert bm.seq_of(buf) % 2 == 1
    assert bm.stats().hits == hits + 3
    assert bm.release_many(held, {got[2]}) == 1
    for buf in held:
        d = bm.descs[buf]
        assert d.refcount == 0 and not d.lock.held
        assert bool(d.flags & BM_DIRTY) == (buf == got[2])
        if bm.seq is not None:
            assert bm.seq_of(buf) % 2 == 0
    assert bm.release_many([], ()) == 0

    reader = bm.read_buffer(REL, Fork.MAIN, 4)
    bm.lock_shared(reader)
    out: list[list[int]] = []
    t = threading.Thread(target=lambda: out.append(bm.pin_exclusive_if_valid_many(
        [(REL, 0, 1), (REL, 0, 4)])))
    t.start()
    time.sleep(0.2)
    assert out == [] and t.is_alive()
    bm.unlock_shared(reader)
    bm.unpin(reader)
    t.join(10)
    assert out and out[0][1] == reader and bm.descs[reader].lock.held_exclusive
    assert bm.release_many(out[0], ()) == 0
    bm.check()
