"""The buffer manager's batch calls recovery's B+tree runs use
(``pin_exclusive_if_valid_many``, ``release_many``, ``apply_held``: the whole run in one
section) and ``lock_exclusive_many`` / ``unlock_exclusive_many``, on every io method: each
equals its one-buffer calls applied to every buffer in turn."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.storage.smgr import Fork

REL = 16384  # small_pool's relation (tests/storage/conftest.py): blocks 0..7


def _cache_and_ask(bm, cached: list[int], dirty: list[int], asked: list[int]
                   ) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Read blocks ``cached`` into the pool (unpinned), dirtying those also in ``dirty``;
    then (the tags of ``asked``, what ``pin_if_valid`` gives for each: buffer or -1), no
    pin left."""
    for block in cached:
        buf = bm.read_buffer(REL, Fork.MAIN, block)
        if block in dirty:
            bm.lock_exclusive(buf)
            bm.mark_dirty(buf)
            bm.unlock_exclusive(buf)
        bm.unpin(buf)
    tags = [(REL, int(Fork.MAIN), block) for block in asked]
    expected = []
    for tag in tags:
        buf = bm.pin_if_valid(*tag)
        if buf >= 0:
            bm.unpin(buf)
        expected.append(buf)
    return tags, expected


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.integers(0, 7), max_size=8), st.lists(st.integers(0, 7), max_size=8),
       st.lists(st.integers(0, 9), unique=True, max_size=10))
def test_batch_calls_equal_one_buffer_calls(small_pool, cached, dirty, asked):
    """Blocks ``cached`` are read into the pool (and unpinned), those of ``dirty`` among
    them dirtied; then for the distinct blocks ``asked`` (8 and 9 do not exist, so are
    never in the pool): pin_exclusive_if_valid_many gives what pin_if_valid gives block
    by block (buffer or -1), raising each pinned buffer's pin count by one and the hit
    count by the number pinned, each held exclusively with an odd change counter;
    release_many with every other pinned buffer to dirty returns how many of those were
    clean and leaves them dirty, no lock, no pin, even counters; lock_exclusive_many and
    unlock_exclusive_many do the same to the locks; check() passes. Fails when a miss is
    pinned, a hit is skipped or a count is off."""
    bm, _smgr = small_pool
    tags, expected = _cache_and_ask(bm, cached, dirty, asked)
    refcounts = [bm.descs[b].refcount for b in range(len(bm.descs))]
    hits = bm.stats().hits
    got = bm.pin_exclusive_if_valid_many(tags)
    pinned = [b for b in got if b >= 0]
    to_dirty = set(pinned[::2])
    try:  # a failed check releases what it holds: the next example must not hang on it
        assert got == expected
        assert set(pinned) <= {bm._table.get(t) for t in tags}
        assert [bm.descs[b].refcount for b in range(len(bm.descs))] == \
            [n + (b in pinned) for b, n in enumerate(refcounts)]
        assert bm.stats().hits == hits + len(pinned)
        assert all(bm.descs[b].lock.held_exclusive for b in pinned)
        if bm.seq is not None:
            assert all(bm.seq_of(b) % 2 == 1 for b in pinned)
        was_dirty = {b: bm.is_dirty(b) for b in pinned}
        clean = sum(not was_dirty[b] for b in to_dirty)
    finally:
        turned = bm.release_many(pinned, to_dirty)
    assert turned == clean
    assert all(bm.is_dirty(b) == (was_dirty[b] or b in to_dirty) for b in pinned)
    assert [bm.pin_if_valid(*bm.block_of(b)) for b in pinned] == pinned
    bm.lock_exclusive_many(pinned)
    try:
        assert all(bm.descs[b].lock.held_exclusive for b in pinned)
    finally:
        bm.unlock_exclusive_many(pinned)
        bm.unpin_many(pinned)
    assert not any(bm.descs[b].lock.held_exclusive for b in pinned)
    assert all(bm.descs[b].refcount == 0 for b in range(len(bm.descs)))
    if bm.seq is not None:
        assert all(bm.seq_of(b) % 2 == 0 for b in range(len(bm.descs)))
    bm.check()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.integers(0, 7), max_size=8), st.lists(st.integers(0, 7), max_size=8),
       st.lists(st.integers(0, 9), min_size=1, max_size=10), st.integers(0, 3))
def test_apply_held_equals_pin_change_release_or_takes_nothing(small_pool, cached, dirty,
                                                               asked, change):
    """apply_held over the blocks ``asked`` (a block may repeat, as a page does in a run of
    records): when every one is VALID in the pool it calls apply once with their buffers
    (pin_if_valid's, one per tag in order), each held exclusively (odd change counter) and
    unpinned by the call; the buffers apply returns (every ``change``-th) turn dirty and the
    count of those that were clean comes back; after it no lock, no pin, even counters,
    hits up by the distinct blocks. When one is not in the pool (8 and 9 never are) it
    returns None without calling apply, and nothing is pinned, locked, dirtied or counted.
    Fails when a miss is applied, a repeated block is locked twice, a dirty count is off or
    a lock or pin is left."""
    bm, _smgr = small_pool
    tags, expected = _cache_and_ask(bm, cached, dirty, asked)
    was_dirty = {b: bm.is_dirty(b) for b in expected if b >= 0}
    hits = bm.stats().hits
    seen: list[list[int]] = []

    def apply(bufs: list[int]) -> list[int]:
        seen.append(list(bufs))
        assert all(bm.descs[b].lock.held_exclusive for b in bufs)
        assert all(bm.descs[b].refcount == 0 for b in bufs)
        if bm.seq is not None:
            assert all(bm.seq_of(b) % 2 == 1 for b in bufs)
        return bufs[::change + 1]

    turned = bm.apply_held(tags, apply)
    if -1 in expected:
        assert turned is None and seen == []
        assert bm.stats().hits == hits
        assert all(bm.is_dirty(b) == d for b, d in was_dirty.items())
    else:
        assert seen == [expected]
        to_dirty = set(expected[::change + 1])
        assert turned == sum(not was_dirty[b] for b in to_dirty)
        assert all(bm.is_dirty(b) == (was_dirty[b] or b in to_dirty) for b in expected)
        assert bm.stats().hits == hits + len(set(expected))
    assert not any(bm.descs[b].lock.held_exclusive for b in range(len(bm.descs)))
    assert all(bm.descs[b].refcount == 0 for b in range(len(bm.descs)))
    if bm.seq is not None:
        assert all(bm.seq_of(b) % 2 == 0 for b in range(len(bm.descs)))
    bm.check()


def test_apply_held_takes_nothing_when_a_lock_is_held_and_releases_on_error(small_pool):
    """A content lock held by someone else (a share lock here): None, apply not called,
    the other locks given back, the holder's lock untouched. An apply that raises: the
    error comes out, every lock is given back and nothing is marked dirty."""
    bm, _smgr = small_pool
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 3)
    bm.unpin_many(bufs)
    tags = [(REL, int(Fork.MAIN), k) for k in range(3)]
    other = bm.read_buffer(REL, Fork.MAIN, 1)
    bm.lock_shared(other)
    called = []
    assert bm.apply_held(tags, called.append) is None and called == []
    assert not bm.descs[bufs[0]].lock.held_exclusive
    assert not bm.descs[bufs[2]].lock.held_exclusive
    bm.unlock_shared(other)
    bm.unpin(other)

    def boom(held: list[int]) -> list[int]:
        raise RuntimeError("apply failed")

    with pytest.raises(RuntimeError, match="apply failed"):
        bm.apply_held(tags, boom)
    assert not any(bm.descs[b].lock.held_exclusive for b in bufs)
    assert not any(bm.is_dirty(b) for b in bufs)
    assert all(bm.descs[b].refcount == 0 for b in bufs)
    bm.check()
