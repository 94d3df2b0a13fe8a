"""The background writer (storage/bgwriter.py, ``BufferManager.clean_dirty``): dirty
buffers are written without a checkpoint or an eviction — WAL flushed first, adjacent
blocks combined, checksummed pages on disk — buffers pinned or locked exclusively by
others are passed over, ``stop`` waits for the writes in flight, and a failure is recorded
and reported, never swallowed. Every test runs on every io method."""

from __future__ import annotations

import threading
import time

import pytest
from slonik.storage.bgwriter import (
    BGWRITER_PIN_POOL_DIVISOR,
    BgWriter,
    BgWriterState,
    check_bgwriter_delay,
    check_bgwriter_lru_maxpages,
)
from slonik.storage.bufmgr import BM_DIRTY, BufferManager, BufferState
from slonik.storage.page import (
    page_get_item,
    page_get_lsn,
)
from slonik.storage.smgr import Fork, Smgr

from tests.support.pages import block_on_disk, dirty_first_blocks, make_page

REL = 16384
SEGMENT = 8
POOL = 64
BLOCKS = 80
WAIT_SECONDS = 30  # a generous bound for the thread to get to work (a hang fails the test)


@pytest.fixture
def env(tmp_path, aio):
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(b, REL, text=b"old %d" % b) for b in range(BLOCKS)])
    bm = BufferManager(smgr, aio, shared_buffers=POOL, io_combine_limit=4, bgwriter_delay=10)
    yield bm, smgr
    bm.stop_bgwriter()
    aio.wait_all()
    smgr.close()


def on_disk(smgr: Smgr, block: int) -> bytes:
    return block_on_disk(smgr, block, SEGMENT, REL)


def dirty_pool(bm: BufferManager) -> None:
    """Fill the pool with blocks 0..POOL-1, each rewritten ('new b') under LSN 1000 + b."""
    dirty_first_blocks(bm, POOL, 1000, REL)


def dirty_blocks(bm: BufferManager) -> list[int]:
    return sorted(d.tag[2] for d in bm.descs if d.flags & BM_DIRTY)


def assert_new_on_disk(bm: BufferManager, smgr: Smgr, blocks) -> None:
    """Each block on disk is the new page, its checksum valid (read through a fresh pool,
    which verifies it)."""
    fresh = BufferManager(smgr, bm.aio, shared_buffers=POOL, io_combine_limit=4)
    for block in blocks:
        assert page_get_lsn(on_disk(smgr, block)) == 1000 + block
        b = fresh.read_buffer(REL, Fork.MAIN, block)
        assert bytes(page_get_item(fresh.page(b), 1)) == b"new %d" % block
        fresh.unpin(b)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_round_writes_every_dirty_buffer_wal_first_in_combined_runs(env):
    """One round (called directly, no thread) of a pool all dirty: flush_wal is called
    for each combined write with its newest page's LSN while every block of that run still
    holds its old bytes on disk (WAL before data); afterwards no buffer is dirty, each
    block on disk is the new checksummed page, and the 64 adjacent blocks went out as 16
    writes (io_combine_limit 4; batches of 64 / 16 = 4 pinned buffers), not 64."""
    bm, smgr = env
    dirty_pool(bm)
    calls: list[tuple[int, bool]] = []

    def flush_wal(lsn: int) -> None:
        last = lsn - 1000
        first = last - last % 4
        calls.append((lsn, all(page_get_item(on_disk(smgr, b), 1) == b"old %d" % b
                               for b in range(first, last + 1))))

    bm.flush_wal = flush_wal
    before = bm.stats()
    writer = BgWriter(bm, bgwriter_delay_ms=10, bgwriter_lru_maxpages=100)
    assert writer.round() == POOL
    after = bm.stats()
    assert sorted(lsn for lsn, _ in calls) == list(range(1003, 1000 + POOL, 4))
    assert all(old for _, old in calls)
    assert after.writes - before.writes == POOL
    assert after.write_ios - before.write_ios == POOL // 4
    assert dirty_blocks(bm) == []
    assert_new_on_disk(bm, smgr, range(POOL))
    bm.check(quiescent=True)
    assert writer.round() == 0  # nothing left to write


def test_a_round_writes_at_most_maxpages_next_victims_first(env):
    """bgwriter_lru_maxpages bounds a round: with 5, one round writes exactly 5 pages, the
    ones the clock hand reaches first (buffers 0..4 from a hand at 0), and the next round
    the next 5."""
    bm, smgr = env
    dirty_pool(bm)
    writer = BgWriter(bm, bgwriter_delay_ms=10, bgwriter_lru_maxpages=5)
    assert writer.round() == 5
    assert dirty_blocks(bm) == list(range(5, POOL))
    assert writer.round() == 5
    assert dirty_blocks(bm) == list(range(10, POOL))


def test_pinned_or_exclusively_locked_buffers_are_passed_over(env):
    """A buffer another thread holds pinned (block 3), and one it holds locked exclusively
    (block 9), stay dirty through a round (the writer neither waits nor writes a page in
    use); the other 62 are written. Released, they are 2 dirty of 64 — under a quarter of
    the pool, so a round writes only what the sweep will reach soon: nothing while no
    victim was taken; after two evictions (hand at buffer 2), the next 2 x 2 buffers ahead
    of the hand, which hold block 3 but not block 9."""
    bm, smgr = env
    dirty_pool(bm)
    pinned = bm.read_buffer(REL, Fork.MAIN, 3)
    locked = bm.read_buffer(REL, Fork.MAIN, 9)
    bm.lock_exclusive(locked)
    writer = BgWriter(bm, bgwriter_delay_ms=10, bgwriter_lru_maxpages=100)
    assert writer.round() == POOL - 2
    assert dirty_blocks(bm) == [3, 9]
    bm.unlock_exclusive(locked)
    bm.unpin(locked)
    bm.unpin(pinned)
    assert writer.round() == 0
    for block in (POOL, POOL + 1):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, block))
    assert bm._hand == 2
    assert writer.round() == 1
    assert dirty_blocks(bm) == [9]
    assert_new_on_disk(bm, smgr, [b for b in range(2, POOL) if b != 9])


def test_the_thread_cleans_the_pool_without_a_checkpoint(env):
    """start_bgwriter on a pool all dirty: with no flush_all and no eviction, every buffer
    becomes clean and its new page is on disk; the writer's counters say it wrote them,
    and stop leaves nothing pinned, locked or in progress."""
    bm, smgr = env
    dirty_pool(bm)
    before = bm.stats()
    bm.start_bgwriter()
    wait_until(lambda: not dirty_blocks(bm), "the background writer")
    bm.stop_bgwriter()
    assert bm.bgwriter_stats().written == POOL
    assert bm.bgwriter_stats().state == "stopped"
    assert bm.stats().writes - before.writes == POOL
    assert bm.stats().evictions == before.evictions
    assert_new_on_disk(bm, smgr, range(POOL))
    bm.check(quiescent=True)


def test_stop_waits_for_the_writes_in_flight(env):
    """The writer is held inside a write (its WAL flush blocks on a gate) when stop is
    called from another thread; the gate opens only after that call began. When stop
    returns, the thread has ended, the write it had claimed reached the disk, no buffer is
    left WRITING, pinned or locked, and the writer ended after its current batch (of 4
    buffers: 1/16 of the pool)."""
    bm, smgr = env
    dirty_pool(bm)
    entered, gate, stopping = threading.Event(), threading.Event(), threading.Event()
    flushed: list[int] = []

    def flush_wal(lsn: int) -> None:
        entered.set()
        assert gate.wait(WAIT_SECONDS)
        flushed.append(lsn)

    bm.flush_wal = flush_wal
    bm.start_bgwriter()
    assert entered.wait(WAIT_SECONDS)
    stopper = threading.Thread(target=lambda: (stopping.set(), bm.stop_bgwriter()))
    stopper.start()
    assert stopping.wait(WAIT_SECONDS)
    time.sleep(0.05)  # let stop() reach its join (the outcome is the same if it did not)
    gate.set()
    stopper.join(WAIT_SECONDS)
    assert not stopper.is_alive()
    writer = bm._bgwriter
    assert not writer.thread.is_alive() and writer.state is BgWriterState.STOPPED
    written = [b for b in range(POOL) if b not in dirty_blocks(bm)]
    assert written and len(written) <= POOL // BGWRITER_PIN_POOL_DIVISOR
    assert max(flushed) - 1000 in written
    assert_new_on_disk(bm, smgr, written)
    assert all(d.flags != int(BufferState.WRITING) for d in bm.descs)
    bm.check(quiescent=True)


def test_a_failed_round_is_reported_to_the_callback_and_leaves_pages_dirty(env):
    """A WAL flush that fails inside the writer: the failure reaches on_failure (once),
    the writer ends FAILED with the error recorded, every page is still dirty (DIRTY: the
    write never ran) and unpinned, and stop does not raise it a second time."""
    bm, smgr = env
    dirty_pool(bm)
    failures: list[BaseException] = []
    reported = threading.Event()

    def broken_wal(lsn: int) -> None:
        raise OSError(5, "wal device gone")

    bm.flush_wal = broken_wal
    bm.start_bgwriter(on_failure=lambda exc: (failures.append(exc), reported.set()))
    assert reported.wait(WAIT_SECONDS)
    wait_until(lambda: not bm._bgwriter.thread.is_alive(), "the writer to end")
    assert len(failures) == 1 and "wal device gone" in str(failures[0])
    assert bm.bgwriter_stats().state == "failed"
    assert "wal device gone" in bm.bgwriter_stats().error
    assert dirty_blocks(bm) == list(range(POOL))
    assert {d.flags for d in bm.descs} == {int(BufferState.DIRTY)}
    bm.stop_bgwriter()  # reported already: not raised again
    bm.check(quiescent=True)


def test_a_failure_without_a_callback_is_raised_by_stop(env):
    """Without on_failure, the writer's failure (a data write that fails) is raised by
    stop_bgwriter; the page whose write failed is WRITE_FAILED, still dirty."""
    bm, smgr = env
    dirty_pool(bm)

    def broken_writev(*args, **kwargs):
        raise OSError(28, "no space left")

    smgr.writev = broken_writev
    bm.start_bgwriter()
    wait_until(lambda: not bm._bgwriter.thread.is_alive(), "the writer to end")
    with pytest.raises(OSError, match="no space left"):
        bm.stop_bgwriter()
    assert dirty_blocks(bm) == list(range(POOL))
    assert int(BufferState.WRITE_FAILED) in {d.flags for d in bm.descs}
    bm.check(quiescent=True)


def test_maxpages_zero_starts_no_thread(env):
    """bgwriter_lru_maxpages=0 turns the writer off: start_bgwriter starts no thread (no
    writer, no stats) and stop_bgwriter is harmless."""
    bm, smgr = env
    off = BufferManager(smgr, bm.aio, shared_buffers=POOL, bgwriter_lru_maxpages=0)
    off.start_bgwriter()
    assert off.bgwriter_stats() is None
    off.stop_bgwriter()


def test_settings_are_checked():
    """Bad values name the setting and its range."""
    assert check_bgwriter_delay(200) == 200
    assert check_bgwriter_lru_maxpages(0) == 0
    with pytest.raises(ValueError, match=r"bgwriter_delay must be in 10\.\.10000 ms"):
        check_bgwriter_delay(5)
    with pytest.raises(TypeError, match="bgwriter_delay must be an int"):
        check_bgwriter_delay("200")
    with pytest.raises(ValueError, match="bgwriter_lru_maxpages must be in 0"):
        check_bgwriter_lru_maxpages(-1)
    with pytest.raises(TypeError, match="bgwriter_lru_maxpages must be an int"):
        check_bgwriter_lru_maxpages(True)
