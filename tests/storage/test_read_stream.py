"""The read stream over every io method, on real files: order, pins, look-ahead, errors."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.aio.errors import StorageError
from slonik.storage.bufmgr import BM_VALID, BufferManager
from slonik.storage.errors import DataCorruptionError
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork, Smgr

from tests.storage.test_bufmgr import REL, SEGMENT, corrupt, item, make_page

NBLOCKS = 64
DEFAULT_MAX_IOS = 16


def expected_item(block: int) -> bytes:
    return f"rel {REL} block {block}".encode()


@pytest.fixture
def rel(tmp_path, aio):
    """A 64-block relation in 8-block segments, written once per test; each test (or
    hypothesis example) builds its own BufferManager over it."""
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(REL, b) for b in range(NBLOCKS)])
    yield smgr, aio
    aio.wait_all()
    smgr.close()


def pinned_blocks(bm: BufferManager) -> dict[int, int]:
    """block -> refcount of every pinned buffer (empty when nothing is pinned)."""
    return {d.tag[2]: d.refcount for d in bm.descs if d.refcount}


def check_stream(stream: ReadStream) -> None:
    assert 0 <= stream.pinned <= stream.max_pinned_buffers, (stream.pinned,
                                                             stream.max_pinned_buffers)
    assert 0 <= stream.distance <= stream.max_pinned_buffers, (stream.distance,
                                                               stream.max_pinned_buffers)


def consume(bm: BufferManager, stream: ReadStream, *, per_buffer_data: bool = False,
            hold: int = 0, limit: int | None = None) -> list:
    """Drain ``stream`` (or take ``limit`` buffers), checking the pin invariants after every
    call and each page's content against its block number. The caller keeps the last
    ``hold`` returned buffers pinned, like a scan that looks at neighbours. Returns the
    blocks (or (block, data) pairs) in the order they came back; everything is unpinned."""
    got: list = []
    held: deque[int] = deque()
    try:
        while limit is None or len(got) < limit:
            r = stream.next_buffer()
            check_stream(stream)
            if r is None:
                break
            if per_buffer_data:
                buf, data = r
            else:
                buf, data = r, None
            rel_, fork, block = bm.block_of(buf)
            assert (rel_, fork) == (REL, int(Fork.MAIN))
            assert item(bm, buf) == expected_item(block)
            got.append((block, data) if per_buffer_data else block)
            held.append(buf)
            while len(held) > hold:
                bm.unpin(held.popleft())
    finally:
        bm.unpin_many(list(held))
    return got


# --- 1. property: exactly the blocks, in order, within the pin cap -----------------------------

_block = st.integers(0, NBLOCKS - 1)
_sequential = st.builds(lambda s, n: list(range(s, min(s + n, NBLOCKS))), _block,
                        st.integers(1, NBLOCKS))
_backwards = _sequential.map(lambda b: b[::-1])
_strided = st.builds(lambda s, k, n: [(s + i * k) % NBLOCKS for i in range(n)], _block,
                     st.integers(2, 9), st.integers(1, 40))
_repeated = st.builds(lambda b, n: [b] * n, _block, st.integers(1, 20))
_patterned = st.lists(st.tuples(_block, st.integers(1, 12), st.integers(1, 3)), max_size=8).map(
    lambda runs: [b for s, n, reps in runs for _ in range(reps)
                  for b in range(s, min(s + n, NBLOCKS))])
_random = st.lists(_block, max_size=80)
block_sequences = st.one_of(_sequential, _backwards, _strided, _repeated, _patterned, _random)


def make_source(kind: str, items: list):
    if kind == "range":  # the sequential-scan source the stream follows with a cursor
        if items and all(isinstance(b, int) for b in items) and \
                items == list(range(items[0], items[0] + len(items))):
            return range(items[0], items[0] + len(items))
        return list(items)
    if kind == "list":
        return list(items)
    if kind == "iter":
        return (x for x in items)
    if kind == "runs":  # a callable with next_run: a run of consecutive blocks per call
        return _RunSource(items)
    it = iter(items)
    return lambda: next(it, None)


class _RunSource:
    """A callable source that also gives runs (``ReadStream``'s ``next_run``): the next
    items while they are consecutive block numbers, at most ``limit``. With per-block data
    the stream takes it as a plain callable."""

    def __init__(self, items: list) -> None:
        self.items = list(items)
        self.pos = 0
        self.runs = 0  # next_run calls that gave blocks

    def __call__(self):
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def next_run(self, limit: int) -> list[int]:
        first = self()
        if first is None:
            return []
        run = [first]
        while (len(run) < limit and self.pos < len(self.items)
               and self.items[self.pos] == run[-1] + 1):
            run.append(self.items[self.pos])
            self.pos += 1
        self.runs += 1
        return run


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=block_sequences,
       cached=st.sets(_block, max_size=NBLOCKS),
       shared_buffers=st.integers(32, 64),
       io_combine_limit=st.integers(4, 16),
       max_ios=st.sampled_from([None, 0, 1, 4, 16]),
       max_pinned=st.sampled_from([None, 1, 2, 3, 8]),
       per_buffer_data=st.booleans(),
       kind=st.sampled_from(["list", "iter", "callable", "range", "runs"]),
       hold=st.integers(0, 2))
def test_stream_returns_exactly_the_blocks_in_order(rel, blocks, cached, shared_buffers,
                                                    io_combine_limit, max_ios, max_pinned,
                                                    per_buffer_data, kind, hold):
    """For random, sequential, backwards, strided, repeated and patterned block sequences,
    with some blocks pre-read (hits) and the rest not, any max_ios/max_pinned, a list,
    generator, callable or range source, with or without per-buffer data: the stream returns
    exactly the source's blocks in order (checked by block_of and page content), each with
    the data the source gave it; after every call pinned and distance stay within
    max_pinned_buffers; max_pinned_buffers follows the sizing rule; every block is counted
    once as read or hit; after the end and close() no buffer is pinned."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=shared_buffers,
                       io_combine_limit=io_combine_limit)
    for b in sorted(cached):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, b))
    reads_before = bm.stats().reads
    items = [(b, ("data", i, b)) for i, b in enumerate(blocks)] if per_buffer_data else blocks
    stream = ReadStream(bm, REL, Fork.MAIN, make_source(kind, items),
                        per_buffer_data=per_buffer_data, max_ios=max_ios, max_pinned=max_pinned)
    ios = DEFAULT_MAX_IOS if max_ios is None else max_ios
    if max_pinned is None:
        # max_ios=0 is sized exactly by test_synchronous_stream_sizing
        cap = max(1, min((max(ios, 1) + 1) * io_combine_limit, shared_buffers // 4))
        assert 1 <= stream.max_pinned_buffers <= cap
        assert ios == 0 or stream.max_pinned_buffers == cap
    else:
        assert 1 <= stream.max_pinned_buffers <= max_pinned
    got = consume(bm, stream, per_buffer_data=per_buffer_data, hold=hold)
    assert got == items
    assert stream.next_buffer() is None  # stays at end
    assert stream.pinned == 0
    s = stream.stats
    assert s.max_pinned_seen <= stream.max_pinned_buffers
    assert s.ios <= s.blocks_read <= len(blocks)
    assert s.blocks_read + s.hits == len(blocks)
    assert s.blocks_read >= bm.stats().reads - reads_before  # exact: test_stats_count_...
    if not blocks:
        assert s.ios == 0 and s.blocks_read == 0
    stream.close()
    stream.close()
    assert pinned_blocks(bm) == {}
    bm.check()


def test_synchronous_stream_sizing(rel):
    """max_ios=0 (no concurrency): the default pin cap is (max_ios + 1) * io_combine_limit
    as PostgreSQL computes it before turning max_ios 0 into 1, i.e. one combined read's
    worth; the stream still returns every block."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=4)
    with ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS), max_ios=0) as stream:
        assert stream.max_pinned_buffers == 4
        assert consume(bm, stream) == list(range(NBLOCKS))
    assert pinned_blocks(bm) == {}


def test_stats_count_reads_and_hits_like_the_buffer_manager(rel):
    """Blocks 0, 1, 2 with block 1 already cached: the stream's blocks_read counts only
    the blocks actually read from disk (2, as the buffer manager's reads) and hits the one
    found in the pool, even though all three are one run of adjacent blocks."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=4)
    bm.unpin(bm.read_buffer(REL, Fork.MAIN, 1))
    before = bm.stats()
    with ReadStream(bm, REL, Fork.MAIN, [0, 1, 2]) as stream:
        assert consume(bm, stream) == [0, 1, 2]
        s = stream.stats
    after = bm.stats()
    assert after.reads - before.reads == 2 and after.hits - before.hits == 1
    assert (s.blocks_read, s.hits) == (2, 1), s


# --- 2. a small pool -------------------------------------------------------------------------

def test_small_pool_still_streams_everything(rel):
    """shared_buffers=16 with io_combine_limit=16 and max_ios=16 wants far more look-ahead
    than the pool has: the stream caps its pins (at most a quarter of the pool), returns all
    64 blocks sequentially and then in a scattered order, and never runs out of buffers
    while the caller holds up to 2 returned buffers."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=16)
    seq = list(range(NBLOCKS))
    scattered = [(b * 37) % NBLOCKS for b in range(NBLOCKS)]
    for blocks in (seq, scattered, seq):
        with ReadStream(bm, REL, Fork.MAIN, blocks, max_ios=16) as stream:
            assert 1 <= stream.max_pinned_buffers <= 16 // 4
            assert consume(bm, stream, hold=2) == blocks
            assert stream.stats.max_pinned_seen <= stream.max_pinned_buffers
        assert pinned_blocks(bm) == {}
    bm.check()


# --- 3. distance: grows with I/O, stays low when cached --------------------------------------

def test_distance_grows_for_io_and_stays_low_when_cached(rel):
    """A sequential stream over uncached blocks ramps its look-ahead distance above 1 and
    does reads; streaming the same (now cached) blocks again does no I/O, keeps the
    distance at 1-2 after every call and hands blocks out through the fast path."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=4)
    blocks = list(range(16))
    with ReadStream(bm, REL, Fork.MAIN, blocks) as stream:
        assert consume(bm, stream) == blocks
        s = stream.stats
    assert s.max_distance > 1 and s.ios > 0 and s.blocks_read == 16
    assert bm.stats().reads == 16

    with ReadStream(bm, REL, Fork.MAIN, blocks) as stream:
        got = []
        while (buf := stream.next_buffer()) is not None:
            assert stream.distance <= 2
            got.append(bm.block_of(buf)[2])
            bm.unpin(buf)
        s = stream.stats
    assert got == blocks
    assert s.ios == 0 and s.blocks_read == 0
    assert s.max_distance <= 2
    assert s.fast_path_blocks > 0
    assert bm.stats().reads == 16
    assert pinned_blocks(bm) == {}


# --- 4. combining ----------------------------------------------------------------------------

def test_adjacent_blocks_combine_into_few_ios(rel):
    """A sequential scan of 64 uncached blocks with io_combine_limit=8 and 8-block segments
    reads each block exactly once in at most 8 full reads plus a little ramp-up slack."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=8)
    with ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS)) as stream:
        assert consume(bm, stream) == list(range(NBLOCKS))
        s = stream.stats
    assert bm.stats().reads == NBLOCKS
    assert s.blocks_read == NBLOCKS
    assert NBLOCKS // 8 <= s.ios <= NBLOCKS // 8 + 4, s
    assert bm.stats().read_ios == s.ios
    assert pinned_blocks(bm) == {}


# --- 5. corruption mid-stream ----------------------------------------------------------------

@pytest.mark.parametrize("max_ios", [0, 4, 16])
def test_corrupt_block_mid_stream(rel, max_ios):
    """Block 20 is corrupt on disk: a sequential stream returns a clean prefix of the
    blocks (at least 0..15, which are in other segments and so other reads), then raises
    DataCorruptionError naming block 20; after the caller unpins what it got, close()
    leaves every buffer unpinned and the pool consistent."""
    smgr, aio = rel
    corrupt(smgr, 20)
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=8)
    stream = ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS), max_ios=max_ios)
    got: list[int] = []
    with pytest.raises(DataCorruptionError, match=r"block 20 of relation") as info:
        while (buf := stream.next_buffer()) is not None:
            block = bm.block_of(buf)[2]
            assert item(bm, buf) == expected_item(block)
            got.append(block)
            bm.unpin(buf)
    assert info.value.block == 20 and info.value.relation == REL
    assert got == list(range(len(got))) and 16 <= len(got) <= 20
    stream.close()
    stream.close()
    assert stream.pinned == 0
    bm.check()
    assert pinned_blocks(bm) == {}


def test_no_failed_buffer_after_an_error(rel):
    """A caller that catches the DataCorruptionError for block 20 and keeps calling
    next_buffer must never be handed a buffer whose read failed: every buffer that comes
    back is VALID, and block 20's buffer never comes back without an error."""
    smgr, aio = rel
    corrupt(smgr, 20)
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=8)
    errors = 0
    with ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS)) as stream:
        for _ in range(2 * NBLOCKS):
            try:
                buf = stream.next_buffer()
            except DataCorruptionError:
                errors += 1
                continue
            if buf is None:
                break
            block = bm.block_of(buf)[2]
            valid = bool(bm.descs[buf].flags & BM_VALID)
            bm.unpin(buf)
            assert valid and block != 20, f"block {block} handed out after its read failed"
    assert errors >= 1


# --- 6. reset, close, callable sources -------------------------------------------------------

def test_reset_mid_stream_continues_from_the_source(rel):
    """After 10 buffers of a sequential callable source, reset() unpins everything queued
    (pinned == 0, distance 1) without rewinding the source: the stream goes on with the
    first block the source produces after the reset, up to the end."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=4)
    produced: list[int] = []
    it = iter(range(NBLOCKS))

    def source():
        b = next(it, None)
        if b is not None:
            produced.append(b)
        return b

    stream = ReadStream(bm, REL, Fork.MAIN, source)
    assert consume(bm, stream, limit=10) == list(range(10))
    stream.reset()
    assert stream.pinned == 0 and stream.distance == 1
    assert pinned_blocks(bm) == {}
    n = len(produced)
    assert n >= 10
    rest = consume(bm, stream)
    assert rest == list(range(n, NBLOCKS)) == produced[n:]
    stream.close()
    stream.close()
    assert pinned_blocks(bm) == {}
    bm.check()


def test_reset_after_end_reads_on(rel):
    """reset() also clears the end of the stream: a callable source that yields 0..9, None,
    then 30..39, None gives the first run, ends, and after reset() gives the second run."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=4)
    it = iter([*range(10), None, *range(30, 40), None])
    with ReadStream(bm, REL, Fork.MAIN, lambda: next(it)) as stream:
        assert consume(bm, stream) == list(range(10))
        assert stream.next_buffer() is None
        stream.reset()
        assert consume(bm, stream) == list(range(30, 40))
    assert pinned_blocks(bm) == {}


def test_callable_with_per_buffer_data_and_context_manager(rel):
    """A callable source returning (block, data) pairs with per_buffer_data=True: each
    buffer comes back with the very object the source gave for it, repeats included;
    iterating the stream yields the same as next_buffer; leaving the with-block early
    (after 5 buffers) releases everything, and close() afterwards is harmless."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=8)
    pairs = [(b, {"i": i, "b": b}) for i, b in enumerate([3, 4, 5, 5, 40, 41, 2, 63, 0, 3])]
    it = iter(pairs)
    with ReadStream(bm, REL, Fork.MAIN, lambda: next(it, None), per_buffer_data=True,
                    max_ios=4) as stream:
        got = []
        for buf, data in stream:
            assert item(bm, buf) == expected_item(bm.block_of(buf)[2])
            got.append((bm.block_of(buf)[2], data))
            bm.unpin(buf)
            check_stream(stream)
    assert [b for b, _ in got] == [b for b, _ in pairs]
    assert all(d is want for (_, d), (_, want) in zip(got, pairs, strict=True))
    assert pinned_blocks(bm) == {}

    stream = ReadStream(bm, REL, Fork.MAIN, range(NBLOCKS))
    with stream:
        assert consume(bm, stream, limit=5) == list(range(5))
    assert stream.pinned == 0
    stream.close()
    assert pinned_blocks(bm) == {}
    bm.check()


# --- 7. blocks beyond the end ----------------------------------------------------------------

@pytest.mark.parametrize("bad", [NBLOCKS, NBLOCKS + 13])
@pytest.mark.parametrize("max_ios", [0, 16])
def test_block_beyond_end_raises_storage_error(rel, bad, max_ios):
    """A callable source that produces a block past the end of the relation (after 0..11):
    the stream raises a StorageError subclass (IOFailure for the missing segment file or
    DataCorruptionError for a short read) naming that block, after returning only a clean
    prefix of the valid blocks; close() then leaves no pins."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=4)
    it = iter([*range(12), bad, 1, 2])
    stream = ReadStream(bm, REL, Fork.MAIN, lambda: next(it, None), max_ios=max_ios)
    got: list[int] = []
    with pytest.raises(StorageError, match=rf"block {bad}\b"):
        while (buf := stream.next_buffer()) is not None:
            got.append(bm.block_of(buf)[2])
            bm.unpin(buf)
    assert got == list(range(len(got))) and len(got) <= 12
    stream.close()
    stream.close()
    assert stream.pinned == 0
    assert pinned_blocks(bm) == {}
    bm.check()


def test_range_source_reset_continues_from_the_cursor(rel):
    """A range source is followed by a cursor that takes whole runs at once: after 10
    buffers, reset() unpins everything and the stream goes on from the first block the
    cursor had not handed to the look-ahead yet, up to the end of the range; blocks
    before the range's start are never read."""
    smgr, aio = rel
    bm = BufferManager(smgr, aio, shared_buffers=64, io_combine_limit=4)
    stream = ReadStream(bm, REL, Fork.MAIN, range(5, NBLOCKS))
    assert consume(bm, stream, limit=10) == list(range(5, 15))
    taken = stream._seq_next  # where the cursor stood: the look-ahead took blocks before it
    assert 15 <= taken <= NBLOCKS
    stream.reset()
    assert stream.pinned == 0 and pinned_blocks(bm) == {}
    assert consume(bm, stream) == list(range(taken, NBLOCKS))
    assert stream.next_buffer() is None
    stream.close()
    assert pinned_blocks(bm) == {}
    bm.check()
