"""``ReadStream.next_buffers``: a run of pinned buffers per call, on every io method."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.storage.bufmgr import BufferManager
from slonik.storage.errors import DataCorruptionError
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork, Smgr

from tests.storage.test_bufmgr import REL, corrupt, item
from tests.storage.test_read_stream import (
    DEFAULT_MAX_IOS,
    NBLOCKS,
    block_sequences,
    check_stream,
    expected_item,
    make_source,
    pinned_blocks,
    rel,  # noqa: F401  (the fixture)
)

_block = st.integers(0, NBLOCKS - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=block_sequences,
       cached=st.sets(_block, max_size=NBLOCKS),
       shared_buffers=st.integers(32, 64),
       io_combine_limit=st.integers(4, 16),
       max_ios=st.sampled_from([None, 0, 1, 4, 16]),
       per_buffer_data=st.booleans(),
       kind=st.sampled_from(["list", "iter", "callable", "range", "runs"]),
       limits=st.lists(st.integers(0, 40), min_size=1, max_size=8),
       bulk_read=st.booleans())
def test_batches_return_exactly_the_blocks_in_order(rel, blocks, cached,  # noqa: F811
                                                    shared_buffers, io_combine_limit,
                                                    max_ios, per_buffer_data, kind, limits,
                                                    bulk_read):
    """For the read stream property test's block sequences, cached sets and sources, calls
    of next_buffers(limit) with random limits (0 = one next_buffer call instead), with
    or without a BULKREAD ring, return
    exactly the source's blocks in order (block_of and page content checked), never more
    than the limit, never an empty batch before the end; pins and distance stay within
    max_pinned_buffers after every call; every block counts once as read or hit; after the
    end nothing is pinned and the buffer manager's check passes."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=shared_buffers,
                       io_combine_limit=io_combine_limit)
    for b in sorted(cached):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, b))
    items = [(b, ("data", i, b)) for i, b in enumerate(blocks)] if per_buffer_data else blocks
    stream = ReadStream(bm, REL, Fork.MAIN, make_source(kind, items),
                        per_buffer_data=per_buffer_data, max_ios=max_ios, bulk_read=bulk_read)
    got: list = []
    k = 0
    while True:
        limit = limits[k % len(limits)]
        k += 1
        if limit == 0:
            r = stream.next_buffer()
            batch = [] if r is None else [r]
        else:
            batch = stream.next_buffers(limit)
            assert len(batch) <= limit
        check_stream(stream)
        if not batch:
            break
        for r in batch:
            buf, data = r if per_buffer_data else (r, None)
            _rel, _fork, block = bm.block_of(buf)
            assert item(bm, buf) == expected_item(block)
            got.append((block, data) if per_buffer_data else block)
        bm.unpin_many([r[0] if per_buffer_data else r for r in batch])
    assert got == items
    assert stream.next_buffers(4) == []
    s = stream.stats
    assert s.max_pinned_seen <= stream.max_pinned_buffers
    assert s.blocks_read + s.hits == len(blocks)
    stream.close()
    assert pinned_blocks(bm) == {}
    bm.check()


def _consume_in_batches(bm: BufferManager, stream: ReadStream, limit: int
                        ) -> tuple[list[int], list[int]]:
    """Take ``stream`` to its end with next_buffers(limit), unpinning each batch: (the
    batch sizes, the block numbers in the order handed out)."""
    sizes: list[int] = []
    blocks: list[int] = []
    while batch := stream.next_buffers(limit):
        sizes.append(len(batch))
        blocks += [bm.block_of(b)[2] for b in batch]
        bm.unpin_many(batch)
    return sizes, blocks


@pytest.mark.parametrize("combine, limit", [(16, 16), (4, 32)])
def test_batches_of_a_cached_range_come_whole(rel, combine, limit):  # noqa: F811
    """An all-cached sequential scan in batches of ``limit`` settles on the fast path and
    then hands out batches of consecutive blocks, one start_read_buffers per batch: up to
    LOOK_AHEAD_BATCH_IOS combined reads' worth (a table scan's 64-page step is a few
    calls, not one per io_combine_limit), never more than the limit: at least three
    batches of 16 or more both with io_combine_limit 16 and batches of 16 and with
    io_combine_limit 4 and batches of 32 (there at most 5 before the fast path took
    several combined reads' worth). The
    blocks come back 0..63 in order, nothing stays pinned."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=128, io_combine_limit=combine)
    bm.unpin_many(bm.read_buffers(REL, Fork.MAIN, 0, NBLOCKS))
    with ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS)) as stream:
        sizes, blocks = _consume_in_batches(bm, stream, limit)
    assert blocks == list(range(NBLOCKS))
    assert max(sizes) <= limit and sum(size >= 16 for size in sizes) >= 3, sizes
    assert stream.stats.fast_path_blocks >= 32
    assert pinned_blocks(bm) == {}

@pytest.mark.parametrize("kind", ["callable", "iter", "runs"])
def test_batches_of_cached_consecutive_blocks_come_whole_from_any_source(rel, kind):  # noqa: F811
    """An all-cached stream over a callable (or iterator, or run-giving) source of runs of
    consecutive blocks (0..29, then 40..63) in batches of 16 (io_combine_limit 8) settles
    on the fast
    path and then hands out a run of up to 8 consecutive blocks per call (a full 8 at
    least twice, none longer; past a first buffer queued before, each batch one run: none
    across the gap from 29 to 40); the blocks come back in source order."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=128, io_combine_limit=8)
    bm.unpin_many(bm.read_buffers(REL, Fork.MAIN, 0, NBLOCKS))
    source = list(range(30)) + list(range(40, NBLOCKS))
    src = make_source(kind, source)
    with ReadStream(bm, REL, Fork.MAIN, src) as stream:
        batches = []
        while batch := stream.next_buffers(16):
            batches.append([bm.block_of(b)[2] for b in batch])
            bm.unpin_many(batch)
    assert [b for batch in batches for b in batch] == source
    sizes = [len(b) for b in batches]
    assert max(sizes) <= 9 and sizes.count(8) >= 2, sizes  # (a queued buffer + a run)
    # past a first, queued buffer, each batch is one run of consecutive blocks
    assert all(b[i + 1] == b[i] + 1 for b in batches for i in range(1, len(b) - 1)), batches
    assert stream.stats.fast_path_blocks >= 16
    assert pinned_blocks(bm) == {}
    if kind == "runs":  # the stream took runs: a call per run, not per block
        assert 0 < src.runs < len(source) // 4, src.runs


@pytest.mark.parametrize("max_ios", [0, DEFAULT_MAX_IOS])
def test_corrupt_block_stops_the_batch_before_it(rel, max_ios):  # noqa: F811
    """A corrupt block 20 in a 0..63 scan: next_buffers hands out a prefix of blocks
    0..19 (whole batches; the blocks of the failed combined read are never handed out)
    and then raises DataCorruptionError naming block 20; close() leaves nothing pinned."""
    smgr, aio = rel
    corrupt(smgr, 20)
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=8)
    got = []
    stream = ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS), max_ios=max_ios)
    with pytest.raises(DataCorruptionError, match="block 20"):
        while batch := stream.next_buffers(32):
            got += [bm.block_of(b)[2] for b in batch]
            bm.unpin_many(batch)
    assert got == list(range(len(got))) and len(got) <= 20, got
    stream.close()
    assert pinned_blocks(bm) == {}


def test_bulk_read_ring_keeps_the_pool(rel):  # noqa: F811
    """A bulk_read scan of 48 uncached blocks through a 32-buffer pool (whose ring is
    capped at an eighth of it, 4 buffers) leaves the 8 blocks cached before it still
    cached and uses no more than the ring's buffers for its own blocks (at most 4
    buffers end up tagged with scanned blocks), while the same scan without a ring
    evicts every one of them; both return the 48 blocks in order and leave nothing
    pinned."""
    smgr, aio = rel
    cached = list(range(56, 64))

    def scan(bulk_read: bool) -> tuple[BufferManager, list[int]]:
        bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=1)
        bm.unpin_many(bm.read_buffers(REL, Fork.MAIN, 56, 8))
        blocks = []
        with ReadStream(bm, REL, Fork.MAIN, range(48), max_ios=1, max_pinned=1,
                        bulk_read=bulk_read) as stream:
            assert (stream.strategy is not None) == bulk_read
            while batch := stream.next_buffers(2):
                blocks += [bm.block_of(b)[2] for b in batch]
                bm.unpin_many(batch)
        assert blocks == list(range(48))
        assert pinned_blocks(bm) == {}
        bm.check()
        return bm, blocks

    bm, _ = scan(bulk_read=True)
    assert all(bm.cached(REL, Fork.MAIN, b, 1) for b in cached)
    tagged = [d for d in bm.descs if d.tag is not None and d.tag[2] < 48]
    assert len(tagged) <= 4, len(tagged)
    bm, _ = scan(bulk_read=False)
    assert not any(bm.cached(REL, Fork.MAIN, b, 1) for b in cached)


def test_buffered_sequential_scans_advise_the_window_ahead(rel, tmp_path):  # noqa: F811
    """On buffered files a range scan with worker or io_uring gives the kernel WILLNEED
    advice for the window beyond its reads in flight (advice calls counted, never more
    than one per read) and still returns blocks 0..63 in order; the sync method keeps its
    own advice mode instead; O_DIRECT files get no advice."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=4)
    with ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS), max_ios=4) as stream:
        blocks = []
        while batch := stream.next_buffers(8):
            blocks += [bm.block_of(b)[2] for b in batch]
            bm.unpin_many(batch)
        stats = stream.stats
    assert blocks == list(range(NBLOCKS))
    if aio.method.name == "sync":
        assert stream.advice and not stream.readahead
    else:
        assert stream.readahead and stats.advice_calls >= 1
        assert stats.advice_calls <= stats.ios
    direct = Smgr(str(tmp_path), segment_size=smgr.segment_size, aio=aio, io_direct=True)
    try:
        dbm = BufferManager(direct, aio, shared_buffers=64, io_combine_limit=4)
        with ReadStream(dbm, REL, Fork.MAIN, range(NBLOCKS), max_ios=4) as stream:
            while batch := stream.next_buffers(8):
                dbm.unpin_many(batch)
            assert not stream.readahead and stream.stats.advice_calls == 0
    finally:
        direct.close()
    assert pinned_blocks(bm) == {}



@pytest.fixture
def direct_pool(rel, tmp_path):  # noqa: F811
    """(BufferManager of 256 buffers over O_DIRECT files of ``rel``'s relation, aio): a pool
    large enough that max_ios, not the pin limit, bounds a scattered stream's look-ahead."""
    smgr, aio = rel
    direct = Smgr(str(tmp_path), segment_size=smgr.segment_size, aio=aio, io_direct=True)
    yield BufferManager(direct, aio, shared_buffers=256, io_combine_limit=4), aio
    aio.wait_all()
    direct.close()


SCATTERED = list(range(0, NBLOCKS, 2))  # no block adjacent to the next: one read each


def test_scattered_reads_are_submitted_in_batches(direct_pool):
    """Consumed one buffer at a time, a source of 32 blocks none adjacent to the next (an
    aged tree's leaves) keeps reads in flight but starts them several at a time: the
    look-ahead waits until max_ios has room for LOOK_AHEAD_BATCH_IOS reads, so worker and
    io_uring see at most a third as many submissions as reads (9 for 32 here; 17 when the
    look-ahead started a read per buffer consumed); sync executes each read as it starts
    and submits nothing."""
    bm, aio = direct_pool
    before = aio.stats().submissions
    got = []
    with ReadStream(bm, REL, Fork.MAIN, make_source("runs", SCATTERED), max_ios=16) as stream:
        while (buf := stream.next_buffer()) is not None:
            got.append(bm.block_of(buf)[2])
            bm.unpin(buf)
        assert stream.stats.ios == len(SCATTERED)
    assert got == SCATTERED
    submissions = aio.stats().submissions - before
    if aio.method.name == "sync":
        assert submissions == 0
    else:
        assert 1 <= submissions <= len(SCATTERED) // 3
    assert pinned_blocks(bm) == {}


def test_completed_scattered_reads_come_in_one_batch(direct_pool):
    """Reads that completed while the caller waited for an earlier one are handed out by
    the same next_buffers call: once every read in flight is done, one call returns every
    queued buffer (each its own one-block read), in source order."""
    bm, aio = direct_pool
    got: list[int] = []
    whole_batches = 0
    with ReadStream(bm, REL, Fork.MAIN, make_source("runs", SCATTERED), max_ios=16) as stream:
        while True:
            queued = len(stream._queue)
            aio.wait_all()  # every read in flight completes
            batch = stream.next_buffers(NBLOCKS)
            if not batch:
                break
            if queued > 1:
                assert len(batch) >= queued, "completed reads are handed out together"
                whole_batches += 1
            got += [bm.block_of(b)[2] for b in batch]
            bm.unpin_many(batch)
        assert stream.stats.ios == len(SCATTERED)
    assert got == SCATTERED
    assert whole_batches >= 1
    assert pinned_blocks(bm) == {}


def test_ring_reuse_claims_whole_runs_and_leaves_busy_buffers(rel, monkeypatch):  # noqa: F811
    """A bulk_read scan of 64 blocks through a 32-buffer ring (8-block reads): once the
    ring is full, a run of misses takes the ring's next buffers in one step
    (``_claim_ring_run_locked``). A ring buffer pinned by someone else and one dirtied
    meanwhile (each in another run's slots) stop that step at their block (only the run's
    prefix before it is claimed there); the block-by-block path goes on from it and
    leaves both buffers to the pool: the pinned one keeps its block, the dirty one
    (dirtied under the scan's own pin, so used only once) its block and its changes. The
    scan still returns the 64 blocks in order."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=256, io_combine_limit=8)
    answers: list[tuple[int, int]] = []   # (blocks claimed, blocks asked) per call
    claim = bm._claim_ring_run_locked

    def counted(*args):
        got = claim(*args)
        answers.append((len(got), args[-1]))
        return got

    monkeypatch.setattr(bm, "_claim_ring_run_locked", counted)
    blocks: list[int] = []
    held = dirty = -1
    with ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS), max_ios=1, max_pinned=8,
                    bulk_read=True) as stream:
        assert stream.strategy is not None and stream.strategy.size == 32
        while batch := stream.next_buffers(4):
            for b in batch:
                assert bm.block_of(b) == (REL, int(Fork.MAIN), len(blocks))
                assert item(bm, b) == expected_item(len(blocks))
                if len(blocks) == 13:  # dirtied by the scan's own pin: used once still
                    dirty = b
                    bm.lock_exclusive(b)
                    bm.mark_dirty(b)
                    bm.unlock_exclusive(b)
                blocks.append(len(blocks))
            bm.unpin_many(batch)
            if len(blocks) == 16:  # blocks 0..15's buffers come round again for 32..47
                assert all(k == 0 for k, _n in answers)  # (the ring was filling)
                held = bm.read_buffer(REL, Fork.MAIN, 2)
                answers.clear()
    assert blocks == list(range(NBLOCKS))
    short = [(k, n) for k, n in answers if k < n]
    assert len(short) >= 2 and any(k == n for k, n in answers), answers
    assert bm.block_of(held) == (REL, int(Fork.MAIN), 2) and pinned_blocks(bm) == {2: 1}
    assert bm.block_of(dirty) == (REL, int(Fork.MAIN), 13) and bm.is_dirty(dirty)
    bm.unpin(held)
    bm.check()
    tagged = [d for d in bm.descs if d.tag is not None and d.tag[2] < NBLOCKS]
    assert len(tagged) <= 34, len(tagged)  # the ring and the two buffers it let go
