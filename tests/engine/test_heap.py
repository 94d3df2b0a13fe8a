"""The heap over real files, a real buffer manager and a real WAL, on every io method.

Redo is checked byte for byte: before each operation every page is copied, after it the
records it wrote are read back from the WAL files with ``wal.reader`` and replayed with
``heap_redo`` on the copies (through a stand-in redo context that always asks for redo,
so the redo code runs even where a full-page image would have been restored); the result
must equal the pages the operation left in the buffer pool. A crash test replays the same
records through ``engine.recovery.RedoContext`` over what reached the disk.
"""

from __future__ import annotations

import gc
import os
import threading
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from slonik.engine.access.heap import (
    XLOG_HEAP_DELETE,
    XLOG_HEAP_INSERT,
    XLOG_HEAP_INSERT_MULTI,
    XLOG_HEAP_OPMASK,
    XLOG_HEAP_PRUNE,
    XLOG_HEAP_UPDATE,
    FreeSpaceMap,
    Heap,
    HeapTuple,
    Tid,
    collector_paused,
    heap_describe,
    heap_redo,
)
from slonik.engine.access.tuple import (
    HEAP_UPDATED,
    HEAP_XMAX_UPDATE,
    MAX_TUPLE_DATA_BYTES,
    TupleTooLargeError,
)
from slonik.engine.recovery import RedoAction, RedoContext
from slonik.engine.rmgrlist import install as install_rmgrs
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import BLCKSZ, CHECKSUM_OFFSET, page_check
from slonik.storage.smgr import Fork, Smgr
from slonik.wal.errors import WalError
from slonik.wal.reader import WalReader
from slonik.wal.rmgr import RM_HEAP, get_rmgr
from slonik.wal.xlog import Wal

from tests.support.redo import StandInRedoContext, no_pins

REL = 16384
SEGMENT_BLOCKS = 8                # small data segments: the heap spans files
WAL_SEGMENT_BYTES = 1 << 20
SHARED_BUFFERS = 32               # small pool: evictions (and WAL flushes) during tests


@dataclass
class Env:
    path: str
    aio: object
    smgr: Smgr
    wal: Wal
    bm: BufferManager
    heap: Heap

    def pages(self, bm: BufferManager | None = None) -> dict[int, bytes]:
        """Every block's page as it is in the pool, with the checksum field zeroed (it is
        only set when a page is written)."""
        bm = bm or self.bm
        out = {}
        for block in range(self.smgr.nblocks(REL, Fork.MAIN) if self.smgr.exists(REL, Fork.MAIN) else 0):
            buf = bm.read_buffer(REL, Fork.MAIN, block)
            bm.lock_shared(buf)
            page = bytearray(bm.page(buf))
            bm.unlock_shared(buf)
            bm.unpin(buf)
            page[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 4] = bytes(4)
            out[block] = bytes(page)
        return out

    def records(self, start_lsn: int) -> list:
        self.wal.flush()
        reader = WalReader(os.path.join(self.path, "wal"), WAL_SEGMENT_BYTES, start_lsn)
        out = list(reader)
        assert not out or out[-1].end_lsn <= self.wal.insert_lsn
        return out

    def close(self) -> None:
        self.bm.flush_all()
        self.wal.close()
        self.smgr.close()


def make_env(path: str, aio) -> Env:
    os.makedirs(os.path.join(path, "wal"), exist_ok=True)
    smgr = Smgr(path, segment_size=SEGMENT_BLOCKS, max_files=8, aio=aio)
    wal = Wal(os.path.join(path, "wal"), aio, wal_segment_size=WAL_SEGMENT_BYTES)
    bm = BufferManager(smgr, aio, shared_buffers=SHARED_BUFFERS, io_combine_limit=4,
                       flush_wal=wal.flush)
    return Env(path, aio, smgr, wal, bm, Heap(REL, bm, wal))


@pytest.fixture
def env(tmp_path, aio):
    e = make_env(str(tmp_path), aio)
    yield e
    e.close()


def redo_reproduces(env: Env, before: dict[int, bytes], start_lsn: int) -> list:
    """Replay the records from ``start_lsn`` on copies of ``before``; every page must come
    out equal to the pool's. Also each full-page image equals the page redo produced for
    that record (LSN and checksum aside). Returns the records."""
    after = env.pages()
    records = env.records(start_lsn)
    ctx = StandInRedoContext({b: bytearray(p) for b, p in before.items()}, REL)
    for rr in records:
        assert rr.record.rmgr == RM_HEAP
        heap_redo(ctx, rr)
        for ref in rr.record.blocks:
            if ref.image is not None:
                assert bytes(ctx.pages[ref.block][12:]) == ref.image[12:], \
                    f"image of block {ref.block} differs from redo's page"
        heap_describe(rr.record)
    assert set(ctx.pages) == set(after), (sorted(ctx.pages), sorted(after))
    for block, page in after.items():
        got = ctx.pages[block]
        got[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 4] = bytes(4)
        assert bytes(got) == page, f"redo of block {block} differs from the original"
        page_check(page)
    return records


def model_scan(model: dict[Tid, HeapTuple]) -> list[HeapTuple]:
    return [model[t] for t in sorted(model)]


# ---------------------------------------------------------------------------- basics


def test_insert_fetch_update_delete_scan(env):
    """The life of a tuple: insert, fetch, update (old gets xmax + HEAP_XMAX_UPDATE, new
    gets xmin + HEAP_UPDATED), delete (xmax, update bit cleared), scan lists every version,
    and each operation's redo reproduces its pages."""
    h = env.heap
    start, before = env.wal.insert_lsn, env.pages()
    tid = h.insert(7, b"hello")
    assert tid == Tid(0, 1)
    assert h.fetch(tid) == HeapTuple(tid, 7, 0, 0, b"hello")
    [rr] = redo_reproduces(env, before, start)
    assert rr.record.info == XLOG_HEAP_INSERT and rr.record.blocks[0].will_init
    assert heap_describe(rr.record) == f"INSERT rel {REL} blk 0 off 1 len 5 xmin 7 (init page)"

    start, before = env.wal.insert_lsn, env.pages()
    new = h.update(tid, 8, b"hello again")
    assert new == Tid(0, 2)
    assert h.fetch(tid) == HeapTuple(tid, 7, 8, HEAP_XMAX_UPDATE, b"hello")
    assert h.fetch(new) == HeapTuple(new, 8, 0, HEAP_UPDATED, b"hello again")
    [rr] = redo_reproduces(env, before, start)
    assert rr.record.info == XLOG_HEAP_UPDATE and len(rr.record.blocks) == 1
    assert "same page" in heap_describe(rr.record)

    start, before = env.wal.insert_lsn, env.pages()
    h.delete(new, 9)
    assert h.fetch(new) == HeapTuple(new, 8, 9, HEAP_UPDATED, b"hello again")
    [rr] = redo_reproduces(env, before, start)
    assert rr.record.info == XLOG_HEAP_DELETE and rr.record.xid == 9
    assert heap_describe(rr.record) == f"DELETE rel {REL} blk 0 off 2 xmax 9"

    assert list(h.scan()) == [h.fetch(tid), h.fetch(new)]
    assert h.nblocks() == 1 and no_pins(env.bm)


def test_update_to_another_page_and_delete_after_update(env):
    """An update that does not fit on the old page goes to another page in one record with
    two block references (new page first); deleting the old version afterwards clears
    HEAP_XMAX_UPDATE."""
    h = env.heap
    tid = h.insert(1, bytes(5000))
    start, before = env.wal.insert_lsn, env.pages()
    new = h.update(tid, 2, b"y" * 5000)
    assert new.block == 1
    [rr] = redo_reproduces(env, before, start)
    assert [b.block for b in rr.record.blocks] == [1, 0]
    assert rr.record.blocks[0].will_init
    assert heap_describe(rr.record) == (f"UPDATE rel {REL} blk 0 off 1 -> blk 1 off 1 "
                                        f"(init page) xmax 2")
    assert h.fetch(tid).xmax == 2 and h.fetch(new).xmin == 2
    h.delete(tid, 3)
    assert h.fetch(tid).flags == 0 and h.fetch(tid).xmax == 3


def test_insert_many_one_record_per_page(env):
    """insert_many fills page after page with one INSERT_MULTI record each, returns the
    Tids in input order, and redo reproduces every page."""
    h = env.heap
    datas = [i.to_bytes(4, "little") * 100 for i in range(100)]  # 400 bytes each
    start, before = env.wal.insert_lsn, env.pages()
    tids = h.insert_many(5, datas)
    records = redo_reproduces(env, before, start)
    assert len(tids) == 100 and len(set(tids)) == 100
    assert len(records) == h.nblocks() == len({t.block for t in tids})
    assert all(rr.record.info == XLOG_HEAP_INSERT_MULTI for rr in records)
    assert heap_describe(records[0].record).startswith(f"INSERT_MULTI rel {REL} blk 0 ")
    assert [h.fetch(t).data for t in tids] == datas
    assert [t.data for t in h.scan()] == datas
    assert h.insert_many(5, []) == []


@pytest.mark.parametrize("op", ["insert", "insert_many", "update"])
def test_redo_reproduces_reused_slots_and_stale_free_line_hint(env, op):
    """After a prune leaves an UNUSED slot in the middle of a page, the next insert reuses
    that offnum (the PD_HAS_FREE_LINES hint stays set, now stale) and the one after that
    finds no free slot and clears the hint: redo must reproduce both, hint bits included."""
    from slonik.storage.page import PD_HAS_FREE_LINES, page_header
    h = env.heap
    tids = h.insert_many(1, [b"a" * 10, b"b" * 10, b"c" * 10])
    h.delete(tids[1], 2)
    assert h.prune(lambda t: t.xmax != 0) == 1
    assert page_header(env.pages()[0]).flags & PD_HAS_FREE_LINES
    start, before = env.wal.insert_lsn, env.pages()
    if op == "insert":
        got = [h.insert(3, b"d"), h.insert(3, b"e")]
    elif op == "insert_many":
        got = h.insert_many(3, [b"d", b"e"])
    else:
        got = [h.update(tids[0], 3, b"d"), h.update(tids[2], 3, b"e")]
    assert got == [Tid(0, 2), Tid(0, 4)]
    assert not page_header(env.pages()[0]).flags & PD_HAS_FREE_LINES
    redo_reproduces(env, before, start)


def test_fetch_and_change_errors(env):
    """fetch of an unused or never-used slot is None; a block past the end is a ValueError;
    delete/update of a slot without a tuple, bad tids and bad xids are clear errors."""
    h = env.heap
    tid = h.insert(1, b"a")
    assert h.fetch(Tid(0, 2)) is None
    with pytest.raises(ValueError, match=r"tid \(5, 1\) is past the end of relation 16384"):
        h.fetch(Tid(5, 1))
    with pytest.raises(ValueError, match=r"no tuple at tid \(0, 9\)"):
        h.delete(Tid(0, 9), 2)
    with pytest.raises(ValueError, match=r"no tuple at tid \(0, 9\)"):
        h.update(Tid(0, 9), 2, b"x")
    with pytest.raises(TypeError, match="tid must be a Tid"):
        h.fetch(3)
    with pytest.raises(ValueError, match="offnum >= 1"):
        h.fetch(Tid(0, 0))
    with pytest.raises(ValueError, match="xid must be in 1.."):
        h.insert(0, b"x")
    with pytest.raises(TypeError, match="xid must be an int"):
        h.delete(tid, "2")
    with pytest.raises(TypeError, match="data must be bytes-like"):
        h.insert(1, "text")
    assert h.prune(lambda t: True) == 1
    assert h.fetch(tid) is None
    with pytest.raises(ValueError, match="no tuple at tid"):
        h.delete(tid, 3)
    assert no_pins(env.bm)


def test_oversized_tuple_rejected_and_nothing_changed(env):
    """Data one byte over MAX_TUPLE_DATA_BYTES is refused by insert, insert_many (even when
    only the last item is too big) and update, with the limit named; no page, no WAL and
    no file size changed. Exactly MAX_TUPLE_DATA_BYTES fits (on a page of its own)."""
    h = env.heap
    tid = h.insert(1, b"keep")
    env.wal.flush()
    before, lsn, nblocks = env.pages(), env.wal.insert_lsn, h.nblocks()
    too_big = bytes(MAX_TUPLE_DATA_BYTES + 1)
    with pytest.raises(TupleTooLargeError, match=f"limit is {MAX_TUPLE_DATA_BYTES} bytes"):
        h.insert(2, too_big)
    with pytest.raises(TupleTooLargeError):
        h.insert_many(2, [b"small"] * 10 + [too_big])
    with pytest.raises(TupleTooLargeError):
        h.update(tid, 2, too_big)
    assert env.pages() == before and env.wal.insert_lsn == lsn and h.nblocks() == nblocks
    assert h.fetch(tid) == HeapTuple(tid, 1, 0, 0, b"keep")
    big = h.insert(3, bytes(MAX_TUPLE_DATA_BYTES))
    assert big == Tid(1, 1) and len(h.fetch(big).data) == MAX_TUPLE_DATA_BYTES
    assert no_pins(env.bm)


# ---------------------------------------------------------------------------- free space


def test_prune_reuses_space_and_file_stops_growing(env):
    """Overwrite-heavy workload: 40 keys of 400 bytes each updated 30 times, pruning dead
    versions every round. The relation stops growing after the first rounds, every live
    version stays readable, and each prune's redo reproduces its pages."""
    h = env.heap
    tids = h.insert_many(1, [bytes([k]) * 400 for k in range(40)])
    sizes = []
    xid = 2
    for round_ in range(30):
        for k in range(40):
            tids[k] = h.update(tids[k], xid, bytes([k]) * 399 + bytes([round_]))
            xid += 1
        start, before = env.wal.insert_lsn, env.pages()
        pruned = h.prune(lambda t: t.xmax != 0)
        assert pruned == 40
        if round_ % 10 == 0:
            records = redo_reproduces(env, before, start)
            assert records and all(r.record.info == XLOG_HEAP_PRUNE for r in records)
            assert "unused" in heap_describe(records[0].record)
        sizes.append(h.nblocks())
    assert max(sizes[3:]) <= sizes[2] + 1, sizes
    assert max(sizes) <= 6, sizes  # 40 x 428 bytes = 2.1 pages live, twice that mid-round
    assert sorted(t.tid for t in h.scan()) == sorted(tids)
    assert all(h.fetch(tids[k]).data[0] == k for k in range(40))
    fsm = h.free_space_map()
    assert len(fsm) == h.nblocks()


def test_free_space_map_rebuilt_when_heap_is_opened_again(env):
    """A new Heap over an existing relation learns the free space from the pages: after a
    prune, its first insert goes into a freed page instead of extending. A full scan builds
    the map as a side effect."""
    h = env.heap
    tids = h.insert_many(1, [bytes(1000)] * 30)
    nblocks = h.nblocks()
    for t in tids[:8]:
        h.delete(t, 2)
    assert h.prune(lambda t: t.xmax != 0) == 8
    h2 = Heap(REL, env.bm, env.wal)
    tid = h2.insert(3, bytes(1000))
    assert tid.block == 0 and h2.nblocks() == nblocks
    h3 = Heap(REL, env.bm, env.wal)
    assert len(list(h3.scan())) == 23
    assert h3._fsm is not None and len(h3._fsm) == nblocks
    assert h3.insert(4, bytes(1000)).block == 0
    assert no_pins(env.bm)


# ---------------------------------------------------------------------------- failures


class FailingWal:
    """Wraps a Wal; insert raises WalError while ``fail`` is set."""

    def __init__(self, wal: Wal) -> None:
        self.wal = wal
        self.fail = False

    def insert(self, *args, **kwargs):
        if self.fail:
            raise WalError("injected: WAL insert failed")
        return self.wal.insert(*args, **kwargs)


def test_failed_wal_insert_puts_the_page_back(env):
    """When the WAL insert fails, insert, insert_many, update, delete and prune each leave
    every page exactly as it was (nothing unlogged is visible) and no buffer pinned."""
    wal = FailingWal(env.wal)
    h = Heap(REL, env.bm, wal)
    tids = h.insert_many(1, [bytes(600)] * 20)
    h.delete(tids[0], 2)
    before = env.pages()
    wal.fail = True
    for op in (lambda: h.insert(3, b"x"), lambda: h.insert_many(3, [b"y"] * 5),
               lambda: h.update(tids[1], 3, b"z"), lambda: h.update(tids[2], 3, bytes(7000)),
               lambda: h.delete(tids[3], 3), lambda: h.prune(lambda t: t.xmax != 0)):
        with pytest.raises(WalError, match="injected"):
            op()
        for b, page in env.pages().items():
            if b not in before:  # a page extended before the failure stays empty
                assert page == bytes(BLCKSZ)
            else:
                assert page == before[b]
        assert no_pins(env.bm)
    wal.fail = False
    assert h.fetch(tids[1]).xmax == 0 and h.prune(lambda t: t.xmax != 0) == 1


def test_scan_unpins_even_when_abandoned(env):
    """A scan holds no pin once finished, and closing it midway (break) releases the read
    stream's pins too."""
    h = env.heap
    h.insert_many(1, [bytes(500)] * 200)
    assert sum(1 for _ in h.scan()) == 200
    assert no_pins(env.bm)
    scan = h.scan()
    next(scan)
    scan.close()
    assert no_pins(env.bm)
    for i, _t in enumerate(h.scan()):
        if i == 50:
            break
    assert no_pins(env.bm)


def test_concurrent_inserts_and_reads(env):
    """Two writer threads and a reader thread on one Heap: every insert gets its own Tid,
    every tuple reads back, and scans during the writes never fail."""
    h = env.heap
    results: dict[int, list[Tid]] = {}
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(n: int) -> None:
        try:
            results[n] = [h.insert(n + 1, bytes([n]) * (100 + i)) for i in range(150)]
        except BaseException as e:
            errors.append(e)

    def reader() -> None:
        try:
            while not done.is_set():
                for t in h.scan():
                    assert len(t.data) >= 100
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join()
    assert not errors, errors
    all_tids = results[0] + results[1]
    assert len(set(all_tids)) == 300
    for n in range(2):
        for i, tid in enumerate(results[n]):
            assert h.fetch(tid).data == bytes([n]) * (100 + i)
    assert no_pins(env.bm)


# ---------------------------------------------------------------------------- model + redo

ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 3000)),
    st.tuples(st.just("insert_many"), st.lists(st.integers(0, 1500), max_size=12)),
    st.tuples(st.just("update"), st.integers(0, 1000), st.integers(0, 4000)),
    st.tuples(st.just("delete"), st.integers(0, 1000)),
    st.tuples(st.just("prune"), st.integers(0, 3)),
    st.tuples(st.just("max"), st.just(0)),
), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=ops)
def test_heap_against_model_with_redo_after_every_step(tmp_path_factory, aio, steps):
    """Random operation sequences against a dict model (Tid -> HeapTuple): after every step
    fetch and scan agree with the model, every page passes page_check, and the step's WAL
    records replayed on the pre-step pages give the post-step pages byte for byte."""
    env = make_env(str(tmp_path_factory.mktemp("heap")), aio)
    try:
        h = env.heap
        model: dict[Tid, HeapTuple] = {}
        xid = 1
        for step in steps:
            xid += 1
            start, before = env.wal.insert_lsn, env.pages()
            kind = step[0]
            live = sorted(t for t, v in model.items() if v.xmax == 0)
            if kind == "insert":
                data = bytes([xid % 256]) * step[1]
                tid = h.insert(xid, data)
                assert tid not in model
                model[tid] = HeapTuple(tid, xid, 0, 0, data)
            elif kind == "max":
                data = bytes([xid % 256]) * MAX_TUPLE_DATA_BYTES
                tid = h.insert(xid, data)
                model[tid] = HeapTuple(tid, xid, 0, 0, data)
            elif kind == "insert_many":
                datas = [bytes([(xid + i) % 256]) * n for i, n in enumerate(step[1])]
                for tid, data in zip(h.insert_many(xid, datas), datas, strict=True):
                    assert tid not in model
                    model[tid] = HeapTuple(tid, xid, 0, 0, data)
            elif kind == "update" and live:
                old = model[live[step[1] % len(live)]]
                data = bytes([xid % 256]) * step[2]
                tid = h.update(old.tid, xid, data)
                model[old.tid] = old._replace(xmax=xid, flags=old.flags | HEAP_XMAX_UPDATE)
                model[tid] = HeapTuple(tid, xid, 0, HEAP_UPDATED, data)
            elif kind == "delete" and live:
                old = model[live[step[1] % len(live)]]
                h.delete(old.tid, xid)
                model[old.tid] = old._replace(xmax=xid, flags=old.flags & ~HEAP_XMAX_UPDATE)
            elif kind == "prune":
                # prune the versions deleted by xids of one residue class (mixed pages)
                def dead(t, r=step[1]):
                    return t.xmax != 0 and t.xmax % 4 >= r
                gone = [t for t, v in model.items() if dead(v)]
                assert h.prune(dead) == len(gone)
                for t in gone:
                    del model[t]
            records = redo_reproduces(env, before, start)
            for rr in records:
                assert rr.record.info & XLOG_HEAP_OPMASK in (
                    XLOG_HEAP_INSERT, XLOG_HEAP_INSERT_MULTI, XLOG_HEAP_UPDATE,
                    XLOG_HEAP_DELETE, XLOG_HEAP_PRUNE)
            assert list(h.scan()) == model_scan(model)
            for tid, t in model.items():
                assert h.fetch(tid) == t
            assert no_pins(env.bm)
    finally:
        env.close()


# ---------------------------------------------------------------------------- recovery


def test_crash_recovery_through_redo_context(tmp_path, aio):
    """Crash: the pool's dirty pages are lost (a new buffer manager over the files, which
    hold only what evictions wrote), then every record is replayed through
    engine.recovery's RedoContext — full-page images restored, will_init pages rebuilt,
    pages already newer skipped. The pages equal the pre-crash pool's, and a Heap over the
    recovered pool reads every tuple."""
    env = make_env(str(tmp_path), aio)
    h = env.heap
    tids = h.insert_many(1, [bytes([i % 256]) * 700 for i in range(60)])
    env.bm.flush_all()
    env.wal.begin_checkpoint()  # next changes log full-page images again
    for i, t in enumerate(tids[:30]):
        tids[i] = h.update(t, 2 + i, b"v2" * (i + 1))
    h.delete(tids[40], 100)
    h.prune(lambda t: t.xmax != 0 and t.xmax < 20)
    h.insert(101, b"last")
    expected_pages = env.pages()
    expected = list(h.scan())
    env.wal.flush()

    bm2 = BufferManager(env.smgr, aio, shared_buffers=64, flush_wal=env.wal.flush)
    ctx = RedoContext(bm2, env.smgr)
    reader = WalReader(os.path.join(env.path, "wal"), WAL_SEGMENT_BYTES, WAL_SEGMENT_BYTES)
    actions = []
    real = ctx.read_buffer_for_redo

    def spy(rr, i):
        action, buf = real(rr, i)
        actions.append(action)
        return action, buf

    ctx.read_buffer_for_redo = spy
    n = 0
    install_rmgrs()  # as recovery's startup does
    for rr in reader:
        get_rmgr(rr.record.rmgr).redo(ctx, rr)
        n += 1
    assert n > 0 and RedoAction.RESTORED in actions and RedoAction.NEEDS_REDO in actions
    env.bm = bm2  # the old pool is the "crashed" one: never written
    assert env.pages(bm2) == expected_pages
    assert list(Heap(REL, bm2, env.wal).scan()) == expected
    bm2.flush_all()
    env.wal.close()
    env.smgr.close()


def test_rmgr_registered_and_describe_is_one_line():
    """The engine's rmgr table (engine/rmgrlist.py) binds RM_HEAP as "heap" with
    heap_redo/heap_describe; a malformed payload is described, not raised."""
    install_rmgrs()
    rm = get_rmgr(RM_HEAP)
    assert rm.name == "heap" and rm.redo is heap_redo and rm.describe is heap_describe
    from slonik.wal.record import BlockRef, WalRecord
    text = heap_describe(WalRecord(RM_HEAP, XLOG_HEAP_DELETE, 5, b"\x01",
                                   (BlockRef(REL, 0, 3),)))
    assert "malformed" in text and "\n" not in text


def test_scan_builds_the_map_each_page_would_give(env):
    """The free-space map a first full scan builds (from the run's header fields) holds,
    block for block, what Heap._page_free says of each page in the pool: after tuples
    of mixed sizes, deletes and a prune (pages with free line pointers), an all-zero page
    extended at the end, and pages filled to the last byte."""
    h = env.heap
    tids = h.insert_many(1, [bytes(n % 1500) for n in range(0, 60000, 377)])
    h.insert_many(2, [bytes(8000)] * 3)
    for t in tids[::3]:
        h.delete(t, 3)
    h.prune(lambda t: t.xmax != 0)
    (buf,) = env.bm.extend(REL, Fork.MAIN, 1)  # a new page nobody initialised
    env.bm.unlock_release(buf)
    h2 = Heap(REL, env.bm, env.wal)
    list(h2.scan())
    want = []
    for block in range(h2.nblocks()):
        with env.bm.buffer_locked(REL, Fork.MAIN, block) as b:
            want.append(Heap._page_free(env.bm.page(b)))
    assert [h2._fsm.get(b) for b in range(len(h2._fsm))] == want
    assert want[-1] == h2._fsm.get(len(want) - 1) and len(set(want)) > 3
    assert no_pins(env.bm)


def test_a_scan_larger_than_the_pool_keeps_the_pool(tmp_path, aio):
    """A heap of 300 pages scanned through a 256-buffer pool reads through a BULKREAD ring
    (32 buffers): the 3 pages of another relation cached before the scan are still
    cached after it, every tuple is returned and at most the ring's 32 buffers hold the
    big heap's pages; a heap that fits in the pool is left cached whole (a second scan
    of it is all hits)."""
    env = make_env(str(tmp_path), aio)
    try:
        other = Heap(REL + 1, env.bm, env.wal)
        other.insert_many(1, [bytes(3000)] * 6)
        big = Heap(REL, env.bm, env.wal)
        for _ in range(6):
            big.insert_many(1, [bytes(3000)] * 100)
        env.bm.flush_all()
        bm = BufferManager(env.smgr, aio, shared_buffers=256, io_combine_limit=4)
        bm.unpin_many(bm.read_buffers(REL + 1, Fork.MAIN, 0, 3))
        assert Heap(REL, bm, env.wal).nblocks() == 300
        assert len(list(Heap(REL, bm, env.wal).scan())) == 600
        assert bm.cached(REL + 1, Fork.MAIN, 0, 3)
        assert sum(1 for d in bm.descs if d.tag is not None and d.tag[0] == REL) <= 32
        small = BufferManager(env.smgr, aio, shared_buffers=64)
        assert len(list(Heap(REL + 1, small, env.wal).scan())) == 6
        reads = small.stats().reads
        assert len(list(Heap(REL + 1, small, env.wal).scan())) == 6
        assert small.stats().reads == reads == 3
        assert no_pins(bm) and no_pins(small)
    finally:
        env.close()


def test_bulk_insert_extends_exactly_the_pages_it_fills(env):
    """insert_many of 2000 tuples of mixed sizes (0..2999 bytes) into an empty heap:
    every block of the relation holds some of them (no extended page is left empty;
    the extension is a lower bound of the pages needed), the Tids are distinct and each
    fetches its own data."""
    h = env.heap
    datas = [bytes([n % 251]) * ((n * 7919) % 3000) for n in range(2000)]
    tids = h.insert_many(1, datas)
    assert len(set(tids)) == 2000
    assert sorted({t.block for t in tids}) == list(range(h.nblocks()))
    assert [h.fetch(t).data for t in tids] == datas
    assert no_pins(env.bm)


def test_collector_pauses_of_two_threads_nest():
    """Two threads' bulk steps overlap: the first to finish does not switch the collector
    back on under the other (still paused), and the last one out restores it (on)."""
    first_in, second_in, first_out, second_may_leave = (threading.Event() for _ in range(4))
    seen: dict[str, bool] = {}

    def first() -> None:
        with collector_paused():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with collector_paused():
            second_in.set()
            first_out.wait(5)
            seen["after first left"] = gc.isenabled()
            second_may_leave.wait(5)

    gc.enable()
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    try:
        assert first_out.wait(5)
        second_may_leave.set()
        for t in threads:
            t.join(5)
        assert seen == {"after first left": False}
        assert gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("collector_on", [True, False])
def test_bulk_insert_leaves_the_garbage_collector_as_it_was(env, collector_on):
    """insert_many pauses the cyclic garbage collector while it creates its Tids: after
    a bulk load, and after one whose WAL insert fails (WalError, nothing logged), the
    collector is on exactly when it was on before."""
    h = Heap(REL, env.bm, FailingWal(env.wal))
    (gc.enable if collector_on else gc.disable)()
    try:
        assert len(h.insert_many(1, [bytes(100)] * 500)) == 500
        assert gc.isenabled() is collector_on
        h.wal.fail = True
        with pytest.raises(WalError):
            h.insert_many(2, [bytes(100)] * 500)
        assert gc.isenabled() is collector_on
    finally:
        gc.enable()
    assert no_pins(env.bm)


FREE = st.integers(0, 8000)


@settings(max_examples=150, deadline=None)
@example(initial=[5], ops=[(True, 1, 100, -1), (True, 1, 0, -1), (False, 0, 50, -1)])
@given(initial=st.lists(FREE, max_size=30),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40), FREE, st.integers(-1, 40)),
                    max_size=30))
def test_free_space_map_equals_a_list_model(initial, ops):
    """A FreeSpaceMap built from a scan's list (its order sorted on first use) and then
    set / find at random agrees with a plain list: get and len after every set (blocks
    beyond the end filled as full), and find(need, exclude) gives a block other than
    ``exclude`` with the most free space, or None exactly when no such block has ``need``.
    The example grows the map before its order is sorted, then shrinks that block's free
    space: an order sorted after the list grew would hold the block twice, once stale."""
    fsm = FreeSpaceMap(initial)
    model = list(initial)
    for is_set, block, free, exclude in ops:
        if is_set:
            fsm.set(block, free)
            model.extend([0] * (block + 1 - len(model)))
            model[block] = free
            assert len(fsm) == len(model)
            assert [fsm.get(b) for b in range(len(model))] == model
        else:
            got = fsm.find(free, exclude)
            best = max((f for b, f in enumerate(model) if b != exclude), default=-1)
            if best < free:
                assert got is None
            else:
                assert got is not None and got != exclude and model[got] == best
    assert fsm.total_free() == sum(model)
