"""A dirty victim is written in its evicting thread (``BufferManager._write_victim``, as
PostgreSQL's FlushBuffer): WAL flushed up to the page's LSN before the page reaches the
file, the page checksummed on disk, the buffer clean afterwards; a failure before or in the
write leaves the page dirty in the pool and raises."""

from __future__ import annotations

import threading

import pytest
from slonik.storage.bufmgr import BM_DIRTY, BufferManager, BufferState
from slonik.storage.page import (
    page_get_item,
    page_get_lsn,
)
from slonik.storage.smgr import Fork, Smgr

from tests.support.pages import block_on_disk, dirty_first_blocks, make_page

REL = 16384
SEGMENT = 8
POOL = 16
BLOCKS = 24


@pytest.fixture
def env(tmp_path, aio):
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(b, REL, text=b"old %d" % b) for b in range(BLOCKS)])
    bm = BufferManager(smgr, aio, shared_buffers=POOL, io_combine_limit=4)
    yield bm, smgr
    aio.wait_all()
    smgr.close()


def on_disk(smgr: Smgr, block: int) -> bytes:
    return block_on_disk(smgr, block, SEGMENT, REL)


def dirty_pool(bm: BufferManager) -> None:
    """Fill the pool with blocks 0..POOL-1, each rewritten ('new b') under LSN 1000 + b."""
    dirty_first_blocks(bm, POOL, 1000, REL)


def test_victim_write_flushes_wal_first_then_writes_a_checksummed_page(env):
    """Every buffer dirty (distinct LSNs), then reads of other blocks evict them one at a
    time. flush_wal records, for each call, which blocks still hold their old bytes on
    disk: the evicted block's exact LSN was flushed while its file block was still old
    (WAL before data). Afterwards each evicted block on disk is the new page, its checksum
    valid (read back through a fresh pool, which verifies it), and the write counters
    count one write per victim."""
    bm, smgr = env
    dirty_pool(bm)
    calls: list[tuple[int, bool]] = []

    def flush_wal(lsn: int) -> None:
        block = lsn - 1000
        calls.append((lsn, page_get_item(on_disk(smgr, block), 1) == b"old %d" % block))

    bm.flush_wal = flush_wal
    before = bm.stats()
    for block in range(POOL, BLOCKS):
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, block))
    after = bm.stats()
    evicted = [lsn - 1000 for lsn, _ in calls]
    assert len(evicted) == BLOCKS - POOL
    assert all(old for _, old in calls)
    assert after.writes - before.writes == len(evicted)
    assert after.write_ios - before.write_ios == len(evicted)
    fresh = BufferManager(smgr, bm.aio, shared_buffers=POOL, io_combine_limit=4)
    for block in evicted:
        assert page_get_lsn(on_disk(smgr, block)) == 1000 + block
        b = fresh.read_buffer(REL, Fork.MAIN, block)  # checksum verified on read
        assert bytes(page_get_item(fresh.page(b), 1)) == b"new %d" % block
        fresh.unpin(b)


def test_victim_write_failure_leaves_the_page_dirty(env):
    """A flush_wal that fails, then a file write that fails: the read needing the victim
    raises that error, the victim stays in the pool dirty (DIRTY, or WRITE_FAILED after a
    failed write) with its new bytes and no pin, and the file block still holds the old
    page. Once both work again, reads of other blocks evict it and the new page reaches disk."""
    bm, smgr = env
    dirty_pool(bm)

    def broken_wal(lsn: int) -> None:
        raise OSError(5, "wal device gone")

    bm.flush_wal = broken_wal
    with pytest.raises(OSError, match="wal device gone"):
        bm.read_buffer(REL, Fork.MAIN, POOL)
    dirty = [d for d in bm.descs if d.flags & BM_DIRTY]
    assert len(dirty) == POOL and all(d.refcount == 0 for d in dirty)
    assert {d.flags for d in dirty} == {int(BufferState.DIRTY)}

    bm.flush_wal = lambda lsn: None
    real_writev = smgr.writev

    def failing_writev(rel, fork, block, buffers):
        raise OSError(28, "no space left on device")

    smgr.writev = failing_writev
    with pytest.raises(OSError, match="no space left"):
        bm.read_buffer(REL, Fork.MAIN, POOL)
    failed = [d for d in bm.descs if d.flags == BufferState.WRITE_FAILED]
    assert len(failed) == 1 and failed[0].refcount == 0
    block = failed[0].tag[2]
    assert bytes(page_get_item(bm.page(failed[0].buf_id), 1)) == b"new %d" % block
    assert page_get_item(on_disk(smgr, block), 1) == b"old %d" % block

    smgr.writev = real_writev
    for other in list(range(POOL, BLOCKS)) * 2:  # the clock hand comes round to it
        if block not in (d.tag[2] for d in bm.descs if d.tag is not None):
            break
        bm.unpin(bm.read_buffer(REL, Fork.MAIN, other))
    assert block not in (d.tag[2] for d in bm.descs if d.tag is not None)
    assert page_get_item(on_disk(smgr, block), 1) == b"new %d" % block
    bm.check()


def _claim_write_elsewhere(bm: BufferManager, block: int) -> int:
    """Another thread's write of ``block``'s dirty buffer, claimed (WRITING) and not yet
    done, as an evicting thread's victim write is between its claim and its pwritev."""
    b = next(d.buf_id for d in bm.descs if d.tag is not None and d.tag[2] == block)
    with bm._lock:
        assert bm._start_buffer_io_locked(bm.descs[b], for_input=False)
    return b


@pytest.mark.parametrize("outcome", ["written", "failed"])
def test_flush_all_waits_for_a_write_in_progress_elsewhere(env, outcome):
    """A checkpoint's flush_all must not return while another thread's write of a dirty
    buffer is still in progress: the checkpoint fsyncs the files next, and a write landing
    after that fsync would not be durable at the checkpoint. One buffer's write is claimed
    "elsewhere"; flush_all (in a real thread) writes the other dirty buffers and then
    stays blocked until that write ends. When it ends written, flush_all leaves the page
    alone; when it ends failed (WRITE_FAILED), flush_all writes the page itself. Either
    way, when flush_all returns the new page is on disk and nothing is dirty."""
    bm, smgr = env
    dirty_pool(bm)
    block = 3
    b = _claim_write_elsewhere(bm, block)
    done: list[int] = []
    errors: list[BaseException] = []

    def checkpoint() -> None:
        try:
            done.append(bm.flush_all())
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)

    t = threading.Thread(target=checkpoint)
    t.start()
    # The other buffers get written; flush_all then waits on the claimed one.
    for _ in range(200):
        if all(page_get_item(on_disk(smgr, k), 1) == b"new %d" % k
               for k in range(POOL) if k != block):
            break
        t.join(0.05)
    t.join(0.2)
    assert t.is_alive(), "flush_all returned with a write still in progress elsewhere"
    assert page_get_item(on_disk(smgr, block), 1) == b"old %d" % block
    if outcome == "written":
        smgr.writev(REL, Fork.MAIN, block, [bytes(bm.page(b))])
        new = BufferState.VALID
    else:
        new = BufferState.WRITE_FAILED
    with bm._lock:
        bm._terminate_buffer_io_locked(bm.descs[b], new, io_pin=False)
        bm._io_done.notify_all()
    t.join(10)
    assert not t.is_alive() and not errors
    assert done == [POOL - 1 + (outcome == "failed")]
    assert page_get_item(on_disk(smgr, block), 1) == b"new %d" % block
    assert not [d for d in bm.descs if d.flags & BM_DIRTY]
    bm.check()


def test_a_victim_locked_exclusively_elsewhere_is_passed_over(env):
    """An evicting thread must not wait for a victim's content lock: it may hold other
    content locks that the victim's exclusive holder waits for (a deadlock PostgreSQL's
    GetVictimBuffer avoids with a conditional acquire). The victim (dirty, pinned by the
    evicting thread as the clock sweep leaves it) is held exclusively by another pin:
    taking it returns at once with None, the page still dirty and unwritten, no pin of
    ours left; once the lock is gone, taking it writes the new page and retags it."""
    bm, smgr = env
    dirty_pool(bm)
    block = 5
    b = bm.read_buffer(REL, Fork.MAIN, block)  # "another thread": a pin (a hit) ...
    bm.lock_exclusive(b)                       # ... and the exclusive lock
    bm.pin(b)                     # the evicting thread's pin
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(
        bm._take_dirty_victim(b, (REL, int(Fork.MAIN), POOL))))
    t.start()
    t.join(10)
    assert not t.is_alive(), "the eviction waited for the victim's exclusive lock"
    assert out == [None]
    d = bm.descs[b]
    assert d.flags == BufferState.DIRTY and d.refcount == 1
    assert page_get_item(on_disk(smgr, block), 1) == b"old %d" % block
    bm.unlock_exclusive(b)
    bm.unpin(b)
    assert bm.read_buffer(REL, Fork.MAIN, block) == b   # pinned again, unlocked now
    assert bm._take_dirty_victim(b, (REL, int(Fork.MAIN), POOL)) == b
    assert page_get_item(on_disk(smgr, block), 1) == b"new %d" % block
    assert bm.descs[b].tag == (REL, int(Fork.MAIN), POOL)
    assert bm.descs[b].flags == BufferState.EMPTY  # retagged, not read: unpinned unread
    bm.unpin(b)
    bm.check()
