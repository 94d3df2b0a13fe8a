"""The index range fetch in one C call (``slk_ix_range_rows`` through
``heap_fetch.gather_rows_pool``) against its Python reference (``gather_rows_py``:
``gather_py`` then ``RowCodec.decode_run_py``), and ``BufferManager.read_cached``, which
runs it under the descriptor lock instead of pins."""

from __future__ import annotations

import struct
from itertools import accumulate
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine import index as ix
from slonik.engine.access import heap_fetch as hf
from slonik.engine.access.keycodec import key_encoder
from slonik.engine.access.tuple import (
    RowCodec,
    Tid,
    TupleFormatError,
    pack_tuple,
    slot_tuple,
)
from slonik.engine.database import Database
from slonik.storage.page import BLCKSZ, LpFlag, PageFullError, init_page, page_add_item

from tests.engine.test_heap_fetch import heap  # noqa: F401 - the fixture

needs_c = pytest.mark.skipif(not hf.C_RANGE_ROWS,
                             reason="storage._pagecheck not built (no C compiler at install)")

COLUMNS = [("id", "int8"), ("name", "text"), ("score", "float8"), ("ok", "bool"),
           ("payload", "bytea")]
CODEC = RowCodec(COLUMNS)
# int8, text (with NULs and non-ASCII), float8, bool, bytea (with NULs): each may be NULL
ROWS = st.tuples(st.none() | st.integers(-(1 << 63), (1 << 63) - 1),
                 st.none() | st.text(max_size=12),
                 st.none() | st.floats(allow_nan=False),
                 st.none() | st.booleans(),
                 st.none() | st.binary(max_size=20))


@st.composite
def row_page(draw) -> bytes:
    """A heap page of encoded rows (xmin 1..30, xmax 0 or 7; a few not rows at all, or
    with text that is not UTF-8), some slots then UNUSED, REDIRECT or DEAD, rarely a line
    pointer past the page or a tuple header whose length disagrees; or an all-zero page."""
    if draw(st.integers(0, 9)) == 0:
        return bytes(BLCKSZ)
    page = bytearray(BLCKSZ)
    init_page(page)
    for i in range(draw(st.integers(0, 30))):
        kind = draw(st.integers(0, 19))
        data = CODEC.encode(draw(ROWS))
        if kind == 0:
            data = draw(st.binary(max_size=40))   # not a row
        elif kind == 1 and b"\xff" not in data:  # a text value that is not UTF-8
            data = CODEC.encode((1, "ab", 0.0, True, b"")).replace(b"ab", b"a\xff")
        try:
            page_add_item(page, pack_tuple(draw(st.integers(1, 30)),
                                           draw(st.sampled_from([0, 0, 7])), 0, data))
        except PageFullError:
            break
        del i
    n = (struct.unpack_from("<H", page, 14)[0] - 24) // 4
    for off in draw(st.lists(st.integers(1, max(n, 1)), max_size=4)):
        if off <= n:
            lp_at = 24 + 4 * (off - 1)
            (lp,) = struct.unpack_from("<I", page, lp_at)
            state = draw(st.sampled_from([LpFlag.UNUSED, LpFlag.REDIRECT, LpFlag.DEAD]))
            struct.pack_into("<I", page, lp_at, (lp & ~(3 << 15)) | (int(state) << 15))
    damage = draw(st.integers(0, 9))
    if damage == 1 and n:
        lp_at = 24 + 4 * (draw(st.integers(1, n)) - 1)
        struct.pack_into("<I", page, lp_at, (BLCKSZ - 8) | (1 << 15) | (64 << 17))
    elif damage == 2 and n:
        lp_at = 24 + 4 * (draw(st.integers(1, n)) - 1)
        (lp,) = struct.unpack_from("<I", page, lp_at)
        if (lp >> 15) & 3 == 1:
            struct.pack_into("<I", page, (lp & 0x7FFF) + 18, (lp >> 17) + 5)
    return bytes(page)


def _pool(pages: list[bytes]) -> SimpleNamespace:
    """A C pool holding ``pages`` at buffer ids in reverse order, all counters even: what
    gather_rows_pool takes from a BufferManager (``c_pool``, ``seq``)."""
    ffi = hf._ffi
    n = len(pages)
    pool = ffi.new("uint8_t[]", n * BLCKSZ)
    for i, page in enumerate(pages):
        ffi.memmove(pool + (n - 1 - i) * BLCKSZ, page, BLCKSZ)
    return SimpleNamespace(c_pool=pool, seq=ffi.new("uint32_t[]", [2 * i for i in range(n)]))


def _outcome(fn):
    try:
        return "ok", fn()
    except TupleFormatError as e:
        return "TupleFormatError", str(e)


def _reference(pages, page_of, offnums, snap, entry_keys=None, keys_of_rows=None):
    """gather_rows_py's answer, "flawed" where gather_py raises on a slot (the C call
    then retries), or the decode error a kept row raises."""
    try:
        hf.gather_py(pages, page_of, offnums, snap)
    except TupleFormatError:
        return "flawed"
    return _outcome(lambda: hf.gather_rows_py(pages, page_of, offnums, snap, CODEC,
                                              entry_keys=entry_keys,
                                              keys_of_rows=keys_of_rows))


def _slot_row(page: bytes, offnum: int):
    """The decoded row at ``offnum`` of ``page``, or None (no tuple, a flawed slot, data
    that is no row)."""
    try:
        got = slot_tuple(page, offnum, 0, 0, 0)
        return None if got is None else CODEC.decode(page[got[3]:got[4]])
    except (TupleFormatError, ValueError):
        return None


@needs_c
@settings(max_examples=300, deadline=None)
@given(pages=st.lists(row_page(), min_size=1, max_size=4), data=st.data())
def test_c_range_rows_equals_reference(pages, data):
    """For random pages of encoded rows (NULLs, text with NULs and non-ASCII, bytea with
    NULs, rows that do not decode, damaged slots), random requests (offnum 0 and past the
    line pointers included, pages in any order) and random snapshots, gather_rows_pool
    (one C call: judge, gather, re-check keys, lay out; rows built from the layout) gives
    exactly gather_rows_py's kept indices and rows: without a key check every visible
    row; with one, on an index over 1-3 random columns (any order) whose entry keys are
    each the slot's own row's key or another row's, only the rows whose keycodec key is
    their entry's. Where a slot is flawed it answers None (the locked path raises naming
    it), where a kept row does not decode it raises the reference's error; with a
    requested page's counter odd it answers None."""
    ffi = hf._ffi
    reqs = data.draw(st.lists(st.tuples(st.integers(0, len(pages) - 1), st.integers(0, 40)),
                              min_size=1, max_size=40, unique=True))
    page_of = [p for p, _o in reqs]
    offnums = [o for _p, o in reqs]
    snap = (data.draw(st.integers(0, 40)), data.draw(st.integers(0, 40)),
            tuple(sorted(data.draw(st.sets(st.integers(1, 40), max_size=8)))))
    pool = _pool(pages)
    bufs = [len(pages) - 1 - i for i in range(len(pages))]
    c_page_of = ffi.new("uint32_t[]", page_of)
    c_offnums = ffi.new("uint32_t[]", offnums)
    n = len(reqs)
    want = _reference(pages, page_of, offnums, snap)
    got = _outcome(lambda: hf.gather_rows_pool(pool, bufs, c_page_of, c_offnums, n, snap,
                                               CODEC))
    assert got == (("ok", None) if want == "flawed" else want)
    # the key re-check: an index on random columns, entry keys own or a stranger's
    positions = data.draw(st.lists(st.integers(0, len(COLUMNS) - 1), min_size=1,
                                   max_size=3, unique=True))
    encode = key_encoder([COLUMNS[p] for p in positions])

    def keys_of_rows(rows):
        return [encode(tuple(r[p] for p in positions)) for r in rows]

    entry_keys = []
    for p, o in reqs:
        row = _slot_row(pages[p], o)
        if row is None or data.draw(st.integers(0, 3)) == 0:
            row = data.draw(ROWS)
        entry_keys.append(encode(tuple(row[q] for q in positions)))
    whole = [k + struct.pack(">IH", p, o) for k, (p, o) in zip(entry_keys, reqs, strict=True)]
    ends = ffi.new("uint32_t[]", list(accumulate(map(len, whole))))
    keys = (b"".join(whole), ends, hf.key_check(CODEC, positions))
    want = _reference(pages, page_of, offnums, snap, entry_keys, keys_of_rows)
    got = _outcome(lambda: hf.gather_rows_pool(pool, bufs, c_page_of, c_offnums, n, snap,
                                               CODEC, keys))
    assert got == (("ok", None) if want == "flawed" else want)
    pool.seq[bufs[data.draw(st.sampled_from(page_of))]] += 1
    assert hf.gather_rows_pool(pool, bufs, c_page_of, c_offnums, n, snap, CODEC) is None


def test_read_cached_reads_under_the_lock_only_when_all_cached(heap):  # noqa: F811
    """On a real heap (every io method): read_cached calls its reader with the buffer ids
    of the blocks (the pages it then reads are those blocks') only when every block is
    VALID in the pool, else answers None without calling it; it takes no pin (check()
    finds none left), counts the hits and raises the usage counts below the maximum."""
    h = heap
    bm = h.bufmgr
    h.insert_many(1, [bytes([65 + i]) * 3000 for i in range(8)])   # 4 pages, 2 tuples each
    assert h.nblocks() == 4
    bm.flush_all()
    bm.drop_relation_buffers(h.rel)
    h.fetch(Tid(1, 1))
    h.fetch(Tid(3, 1))
    calls = []

    def read(bufs):
        calls.append(bufs)
        return [bytes(bm.page(b)) for b in bufs]

    assert bm.read_cached(h.rel, h.fork, [1, 2], read) is None
    assert bm.read_cached(h.rel, h.fork, [3, 99], read) is None
    assert calls == []
    (b3,) = bm.pin_cached(h.rel, h.fork, [3])
    bm.unpin_many([b3])
    hits, usage = bm.stats().hits, bm.descs[b3].usage_count
    got = bm.read_cached(h.rel, h.fork, [3, 1, 3], read)
    assert bm.descs[b3].usage_count == min(usage + 2, 5)   # block 3 asked for twice
    assert bm.stats().hits == hits + 3
    assert [bm.block_of(b) for b in calls[0]] == [(h.rel, int(h.fork), b) for b in (3, 1, 3)]
    assert [h.fetch(Tid(b, 1)).data for b in (3, 1, 3)] == \
        [page[BLCKSZ - 3000:] for page in got]
    bm.check()
    # warm: once every usage count is at the maximum, the one-pass test answers the same
    # (reader called with the buffers, hits counted, counts left at the maximum)
    for _ in range(6):
        bm.read_cached(h.rel, h.fork, [1, 3], read)
    b1 = calls[0][1]
    assert (bm.descs[b1].usage_count, bm.descs[b3].usage_count) == (5, 5)
    hits, ncalls = bm.stats().hits, len(calls)
    got = bm.read_cached(h.rel, h.fork, [1, 3, 1], read)
    assert calls[ncalls:] == [[b1, b3, b1]]
    assert got == [bytes(bm.page(b)) for b in (b1, b3, b1)]
    assert bm.stats().hits == hits + 3
    assert (bm.descs[b1].usage_count, bm.descs[b3].usage_count) == (5, 5)
    # a hot block beside one not in the pool: None, the reader not called
    assert bm.read_cached(h.rel, h.fork, [1, 2, 3], read) is None
    assert len(calls) == ncalls + 1
    bm.check()


def test_range_fetch_without_the_c_call(tmp_path, io_method, monkeypatch):
    """With the range C call absent (an older build of storage._pagecheck), index ranges
    take gather_heap and decode_run and return the same rows (updated, deleted and
    NULL-holding rows included) as with it, on every io method; gather_rows_pool then
    answers None."""
    db = Database.open(str(tmp_path / "db"), io_method=io_method)
    try:
        t = db.create_table("r", COLUMNS, primary_key="id")
        t.create_index("r_name", ["name"])
        with db.transaction():
            t.insert_many([(i, f"n{i % 37:03d}", i / 3, i % 2 == 0,
                            None if i % 5 == 0 else bytes([i % 256]) * (i % 9))
                           for i in range(600)])
        with db.transaction():
            for i in range(0, 600, 7):
                t.update((i, f"n{(i + 1) % 37:03d}", None, None, b"\0u"))
            for i in range(3, 600, 11):
                t.delete(id=i)
        ranges = [(None, None), (("n005",), ("n020",)), (("n030",), None)]
        with_c = [list(t.range("r_name", a, b)) for a, b in ranges] + \
            [list(t.range("r_pkey", (50,), (400,), reverse=True))]
        monkeypatch.setattr(hf, "C_RANGE_ROWS", False)
        monkeypatch.setattr(ix, "C_RANGE_ROWS", False)
        without = [list(t.range("r_name", a, b)) for a, b in ranges] + \
            [list(t.range("r_pkey", (50,), (400,), reverse=True))]
        assert without == with_c
        model = {r[0]: r for r in t.scan()}
        assert len(model) == 600 - len(range(3, 600, 11))
        assert sorted(with_c[0]) == sorted(model.values())   # every live row, once
        assert [r[1] for r in with_c[0]] == sorted(r[1] for r in model.values())
        assert with_c[3] == [model[i] for i in range(399, 49, -1) if i in model]
        assert hf.gather_rows_pool(t._heap.bufmgr, [0], None, None, 1, (1, 0, ()),
                                   CODEC) is None
    finally:
        db.close()
