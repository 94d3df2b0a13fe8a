"""An index scan's heap fetch (engine/access/heap_fetch.py): the C helper
slk_heap_gather against its Python reference on arbitrary pages, requests and snapshots,
damaged pages included; fetch_pages, gather_heap and fetch_tuple against Heap.fetch on a
real heap, on every io method; BufferManager.pin_cached."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import heap_fetch as hf
from slonik.engine.access.heap import Heap
from slonik.engine.access.tuple import Tid, TupleFormatError, pack_tuple
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import (
    BLCKSZ,
    LpFlag,
    init_page,
    page_add_item,
    page_set_item_flags,
)
from slonik.storage.smgr import Smgr
from slonik.wal.xlog import Wal

needs_c = pytest.mark.skipif(not hf.C_GATHER,
                             reason="storage._pagecheck not built (no C compiler at install)")


@st.composite
def heap_page(draw) -> bytes:
    """A heap page of random tuples (some slots then marked UNUSED or DEAD), an all-zero
    page, or (rarely) one with a damaged line pointer or tuple header."""
    if draw(st.integers(0, 9)) == 0:
        return bytes(BLCKSZ)
    page = bytearray(BLCKSZ)
    init_page(page)
    datas = draw(st.lists(st.binary(max_size=300), max_size=30))
    for i, d in enumerate(datas):
        try:
            page_add_item(page, pack_tuple(i + 1, draw(st.sampled_from([0, 0, 7])), 0, d))
        except Exception:  # noqa: BLE001 - the page is full: stop adding
            break
    n = (struct.unpack_from("<H", page, 14)[0] - 24) // 4
    for off in draw(st.lists(st.integers(1, max(n, 1)), max_size=4)):
        if off <= n:  # the line pointer's state bits rewritten: UNUSED, REDIRECT or DEAD
            lp_at = 24 + 4 * (off - 1)
            (lp,) = struct.unpack_from("<I", page, lp_at)
            state = draw(st.sampled_from([LpFlag.UNUSED, LpFlag.REDIRECT, LpFlag.DEAD]))
            struct.pack_into("<I", page, lp_at, (lp & ~(3 << 15)) | (int(state) << 15))
    damage = draw(st.integers(0, 7))
    if damage == 1 and n:  # a line pointer past the end of the page
        lp_at = 24 + 4 * (draw(st.integers(1, n)) - 1)
        struct.pack_into("<I", page, lp_at, (BLCKSZ - 8) | (1 << 15) | (64 << 17))
    elif damage == 2 and n:  # a tuple header whose data_len disagrees with the item
        lp_at = 24 + 4 * (draw(st.integers(1, n)) - 1)
        (lp,) = struct.unpack_from("<I", page, lp_at)
        if (lp >> 15) & 3 == 1:
            struct.pack_into("<I", page, (lp & 0x7FFF) + 18, (lp >> 17) + 5)
    return bytes(page)


def _outcome(fn):
    try:
        return "ok", fn()
    except TupleFormatError as e:
        return "TupleFormatError", str(e), e.relation, e.fork, e.block
    except ValueError as e:
        return "ValueError", str(e)


@needs_c
@settings(max_examples=300, deadline=None)
@given(pages=st.lists(heap_page(), min_size=1, max_size=4), data=st.data())
def test_c_gather_equals_reference(pages, data):
    """gather (C) gives gather_py's statuses, bounds and gathered data for random requests
    and random snapshots (xmax, own, sorted excluded xids over the pages' xmins 1..30 and
    xmaxes 0/7), and raises the reference's error on a damaged slot."""
    reqs = data.draw(st.lists(st.tuples(st.integers(0, len(pages) - 1), st.integers(0, 40)),
                              max_size=40, unique=True))
    page_of = [p for p, _o in reqs]
    offnums = [o for _p, o in reqs]
    snap = (data.draw(st.integers(0, 40)), data.draw(st.integers(0, 40)),
            tuple(sorted(data.draw(st.sets(st.integers(1, 40), max_size=8)))))
    c = _outcome(lambda: hf.gather(pages, page_of, offnums, snap, rel=9, blocks=[4, 5, 6, 7]))
    py = _outcome(lambda: hf.gather_py(pages, page_of, offnums, snap, rel=9,
                                       blocks=[4, 5, 6, 7]))
    assert c == py


def test_gather_reference_applies_the_snapshot():
    """The reference itself: of three tuples (xmin 10 visible; xmin 11 excluded; xmin 12
    deleted by a seen xmax 3) and an unused slot, only the first is VISIBLE with its data
    gathered; the others are INVISIBLE / NO_TUPLE with empty bounds; C agrees."""
    page = bytearray(BLCKSZ)
    init_page(page)
    for xmin, xmax, d in [(10, 0, b"keep"), (11, 0, b"running"), (12, 3, b"deleted")]:
        page_add_item(page, pack_tuple(xmin, xmax, 0, d))
    pages = [bytes(page)]
    got = hf.gather_py(pages, [0, 0, 0, 0], [1, 2, 3, 4], (20, 0, (11,)))
    assert got.status == [hf.VISIBLE, hf.INVISIBLE, hf.INVISIBLE, hf.NO_TUPLE]
    assert got.data == b"keep" and got.starts == [0, 4, 4, 4] and got.ends == [4, 4, 4, 4]
    assert hf.gather(pages, [0, 0, 0, 0], [1, 2, 3, 4], (20, 0, (11,))) == got
    own = hf.gather_py(pages, [0, 0], [2, 1], (20, 11, (11,)))   # own xid: seen
    assert own.status == [hf.VISIBLE, hf.VISIBLE] and own.data == b"runningkeep"


def test_reference_finds_the_tuples():
    """On a page built with known tuples, the reference returns each tuple's xmin, xmax and
    exact data bounds, all zeros for an unused slot and for offnums past the line pointers
    or on an all-zero page (so the reference itself is checked, not only C against it)."""
    page = bytearray(BLCKSZ)
    init_page(page)
    for i, d in enumerate([b"a", b"bb", b"ccc"]):
        page_add_item(page, pack_tuple(10 + i, 3 * i, 0, d))
    page_set_item_flags(page, 2, LpFlag.UNUSED)
    pages = [bytes(page), bytes(BLCKSZ)]
    page_of = [0, 0, 0, 0, 1]
    xmins, xmaxs, starts, ends = hf.tuples_at_py(pages, page_of, [1, 2, 3, 9, 1])
    assert xmins == [10, 0, 12, 0, 0] and xmaxs == [0, 0, 6, 0, 0]
    assert [pages[p][s:e] for p, s, e in zip(page_of, starts, ends, strict=True)] == \
        [b"a", b"", b"ccc", b"", b""]
    # gather under a snapshot that sees every xid: the first tuple, not the third (its
    # xmax 6 is seen: deleted), no tuple at the other slots
    got = hf.gather(pages, page_of, [1, 2, 3, 9, 1], (99, 0, ()))
    assert got.status == [hf.VISIBLE, hf.NO_TUPLE, hf.INVISIBLE, hf.NO_TUPLE, hf.NO_TUPLE]
    assert got.data == b"a" and got.ends == [1, 1, 1, 1, 1]


@pytest.fixture
def heap(tmp_path, aio):
    """A heap in a small pool (16 buffers: a fetch of many pages evicts and re-reads)."""
    os.makedirs(tmp_path / "wal")
    smgr = Smgr(str(tmp_path), segment_size=8, max_files=8, aio=aio)
    wal = Wal(str(tmp_path / "wal"), aio, wal_segment_size=1 << 20)
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4, flush_wal=wal.flush)
    yield Heap(16384, bm, wal)
    bm.flush_all()
    wal.close()
    smgr.close()


def test_fetch_pages_and_fetch_tuple_match_heap_fetch(heap):
    """On a real heap (every io method), fetch_tuple returns Heap.fetch's xmin, xmax and
    data for every slot (None for a pruned slot and past the end), and fetch_pages +
    tuples_at_py return the same for TIDs spread over the pages, with the pages both cached
    and read cold (dropped from shared buffers: through the read stream) or half and half;
    gather_heap (pages pinned and locked a chunk at a time in the pool, 2 pages per chunk
    in this 16-buffer pool) equals gather_py over fetch_pages' copies under snapshots
    that see all, none or part of the tuples; no pin or lock is left behind."""
    h = heap
    bm = h.bufmgr
    tids = h.insert_many(1, [bytes([i % 250]) * (50 + i % 200) for i in range(400)])
    h.delete(tids[5], 2)
    assert h.prune(lambda t: t.xmax == 2) == 1
    for tid in tids:
        t = h.fetch(tid)
        got = hf.fetch_tuple(h, tid.block, tid.offnum)
        assert got == (None if t is None else (t.xmin, t.xmax, t.data))
    assert hf.fetch_tuple(h, h.nblocks(), 1) is None
    sample = tids[::7][::-1][:12]   # fewer pages than the pool's buffers
    blocks = list(dict.fromkeys(t.block for t in sample))
    for mode in ("cached", "cold", "mixed"):
        if mode != "cached":
            bm.flush_all()
            bm.drop_relation_buffers(h.rel)
        if mode == "mixed":  # every other page back in the pool
            for block in blocks[::2]:
                h.fetch(Tid(block, 1))
        pages = hf.fetch_pages(h, blocks)
        assert [len(p) for p in pages] == [BLCKSZ] * len(blocks)
        page_of = [blocks.index(t.block) for t in sample]
        xmins, xmaxs, starts, ends = hf.tuples_at_py(pages, page_of,
                                                     [t.offnum for t in sample])
        for tid, p, xmin, xmax, s, e in zip(sample, page_of, xmins, xmaxs, starts, ends,
                                            strict=True):
            t = h.fetch(tid)
            assert (xmin, xmax, pages[p][s:e]) == ((0, 0, b"") if t is None else
                                                   (t.xmin, t.xmax, t.data))
        bm.check()   # every pin fetch_pages took was released
        # every sampled tuple has xmin 1: seen by the first and last snapshots, not by the
    # middle two (1 is not below xmax 1; 1 is excluded and not the reader's own xid)
    for snap, sees in [((2, 0, ()), True), ((1, 0, ()), False), ((9, 0, (1,)), False),
                       ((9, 1, (1,)), True)]:
            if mode != "cached":
                bm.flush_all()
                bm.drop_relation_buffers(h.rel)
            if mode == "mixed":
                for block in blocks[::2]:
                    h.fetch(Tid(block, 1))
            got = hf.gather_heap(h, blocks, page_of, [t.offnum for t in sample], snap)
            want = hf.gather_py(hf.fetch_pages(h, blocks), page_of,
                                [t.offnum for t in sample], snap)
            assert got == want, (mode, snap)
            assert got.status.count(hf.VISIBLE) == (len(sample) if sees else 0)
            bm.check()   # no pin or content lock left behind
    with pytest.raises(ValueError, match="past the end of relation 16384"):
        hf.fetch_pages(h, [h.nblocks()])


def test_pin_cached_pins_only_valid_blocks(heap):
    """BufferManager.pin_cached pins exactly the blocks whose pages are VALID in the pool
    (their buffer ids, each with one more pin), answers -1 without a pin for the others
    (dropped from the pool, never read), and unpin_many gives the pins back (check() finds
    no leaked pin)."""
    h = heap
    bm = h.bufmgr
    h.insert_many(1, [bytes(3000) for _ in range(8)])   # 8 tuples of 3000 bytes: 4 pages
    assert h.nblocks() == 4
    bm.flush_all()
    bm.drop_relation_buffers(h.rel)
    h.fetch(Tid(1, 1))
    h.fetch(Tid(3, 1))
    got = bm.pin_cached(h.rel, h.fork, [0, 1, 2, 3, 1, 99])
    assert [b >= 0 for b in got] == [False, True, False, True, True, False]
    assert got[1] == got[4] and bm.block_of(got[1]) == (h.rel, int(h.fork), 1)
    assert bm.block_of(got[3]) == (h.rel, int(h.fork), 3)
    assert bm.descs[got[1]].refcount == 2 and bm.descs[got[3]].refcount == 1
    with pytest.raises(AssertionError, match="leak|pinned|refcount"):
        bm.check()
    bm.unpin_many([b for b in got if b >= 0])
    bm.check()


def test_python_fallback_without_the_c_module(heap, monkeypatch):
    """With the C helper absent (as when storage._pagecheck was not built), gather and
    gather_heap run the reference: the same answers as with C, over copies of the pages."""
    h = heap
    tids = h.insert_many(3, [bytes([i]) * (40 + i) for i in range(120)])
    blocks = sorted({t.block for t in tids})
    page_of = [blocks.index(t.block) for t in tids]
    offnums = [t.offnum for t in tids]
    with_c = hf.gather_heap(h, blocks, page_of, offnums, (4, 0, ()))
    monkeypatch.setattr(hf, "_lib", None)
    without = hf.gather_heap(h, blocks, page_of, offnums, (4, 0, ()))
    assert without == with_c
    assert without.status == [hf.VISIBLE] * len(tids)
    assert [without.data[s:e] for s, e in zip(without.starts, without.ends, strict=True)] == \
        [bytes([i]) * (40 + i) for i in range(120)]
    h.bufmgr.check()
