"""A table scan's one C call per run of pages (storage/_pagecheck slk_heap_scan_rows:
visible tuples, row layout, text columns joined with character bounds), through
heap._RunReader.rows, agrees with its Python reference heap.scan_rows_py (run_items_py,
then RowCodec.decode_run_py) on arbitrary schemas, rows, pages and snapshots; damaged
pages and rows raise the same errors; Table.scan/items/count give the same rows with
and without the C module on every io method."""

from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import heap as hp
from slonik.engine.access import tuple as tuple_module
from slonik.engine.access.btree import XidSnapshot
from slonik.engine.access.tuple import C_ROW_LAYOUT, RowCodec, TupleFormatError, pack_tuple
from slonik.storage.page import BLCKSZ, PageFullError, init_page, page_add_item, page_delete_item

from tests.engine.dbutil import open_db

needs_c = pytest.mark.skipif(not (hp.C_HEAP and C_ROW_LAYOUT),
                             reason="storage._pagecheck not built (no C compiler at install)")

REL, FORK, FIRST_BLOCK = 16384, 0, 5
COLUMN_TYPES = ["int8", "float8", "text", "bytea", "bool"]
SHORT = {"int8": st.integers(-(1 << 63), (1 << 63) - 1), "float8": st.floats(allow_nan=False),
         "text": st.text(max_size=20), "bytea": st.binary(max_size=20), "bool": st.booleans()}
LONG = dict(SHORT, text=st.text(min_size=200, max_size=900),
            bytea=st.binary(min_size=200, max_size=900))
xids = st.integers(1, 30)
snapshots = st.builds(lambda xmax, own, ex: XidSnapshot(xmax, own, tuple(sorted(ex))),
                      st.integers(1, 32), st.integers(0, 31), st.sets(st.integers(1, 31)))


@st.composite
def schema_and_pages(draw):
    """(codec, run of pages as bytes, page count): a random schema (1..5 columns), rows
    (sometimes with NULLs, short or long values, text with any code point) as heap tuples
    with random xmin/xmax, on 1..4 pages (some all-zero, some with UNUSED slots)."""
    types = draw(st.lists(st.sampled_from(COLUMN_TYPES), min_size=1, max_size=5))
    codec = RowCodec([(f"c{i}", t) for i, t in enumerate(types)])
    values = LONG if draw(st.booleans()) else SHORT
    nullable = draw(st.booleans())
    row = st.tuples(*[st.one_of(st.none(), values[t]) if nullable else values[t]
                      for t in types])
    pages = []
    for _ in range(draw(st.integers(1, 4))):
        page = bytearray(BLCKSZ)
        if draw(st.integers(0, 5)):   # else an all-zero (new) page
            init_page(page)
            n = 0
            for r in draw(st.lists(row, max_size=30)):
                xmin, xmax = draw(xids), draw(st.one_of(st.just(0), xids))
                try:
                    page_add_item(page, pack_tuple(xmin, xmax, 0, codec.encode(r)))
                    n += 1
                except PageFullError:
                    break
            for off in sorted(draw(st.sets(st.integers(1, 30), max_size=5))):
                if off <= n:
                    page_delete_item(page, off)
        pages.append(bytes(page))
    return codec, b"".join(pages), len(pages)


def answer(f):
    """f()'s result, or its error as (type name, message, block or None)."""
    try:
        return f()
    except TupleFormatError as e:
        return ("error", type(e).__name__, str(e), getattr(e, "block", None))


def c_rows(data, npages, snap, codec, tids=True, slice_min=tuple_module.SCAN_SLICE_MIN_VALUE_BYTES):
    reader = hp._RunReader(npages, snap)
    return reader.rows(data, npages, REL, FORK, FIRST_BLOCK, codec, tids, slice_min)


# how the C call joins a run's text/bytea columns: every column split at a separator
# (when one is left), the default (by average value size), every text column sliced by
# character bounds
slice_mins = st.sampled_from([1 << 30, tuple_module.SCAN_SLICE_MIN_VALUE_BYTES, 0])


def ref_rows(data, npages, snap, codec):
    return hp.scan_rows_py(data, npages, snap, REL, FORK, FIRST_BLOCK, codec)


def float_bits(got):
    """Rows with each float as its 8 bytes (a damaged float8 may decode to NaN)."""
    if not isinstance(got, tuple) or got[0] == "error":
        return got
    pages, offnums, rows = got
    return pages, offnums, [tuple(struct.pack("<d", v) if type(v) is float else v for v in r)
                            for r in rows]


@needs_c
@settings(max_examples=300, deadline=None)
@given(sp=schema_and_pages(), snap=st.one_of(st.none(), snapshots), tids=st.booleans(),
       slice_min=slice_mins)
def test_c_scan_rows_equal_reference(sp, snap, tids, slice_min):
    """For random schemas, rows, runs of 1..4 pages and snapshots (or none), with the
    columns split at separators, joined by character bounds, or chosen by size, the one C
    call gives exactly the reference's (pages, offnums, rows) (pages and offnums empty
    with tids=False), rows of the same types; and the reference's rows are the encoded
    rows the snapshot sees, in page then offnum order."""
    codec, data, npages = sp
    got = c_rows(data, npages, snap, codec, tids, slice_min)
    ref = ref_rows(data, npages, snap, codec)
    assert got[2] == ref[2]
    assert [list(map(type, r)) for r in got[2]] == [list(map(type, r)) for r in ref[2]]
    assert got[:2] == (ref[:2] if tids else ([], []))
    every = hp.run_items_py(data, npages, snap, REL, FORK, FIRST_BLOCK)
    assert ref[2] == [codec.decode(data[s:e]) for s, e in zip(every[2], every[3], strict=True)]


@needs_c
@settings(max_examples=300, deadline=None)
@given(sp=schema_and_pages(), at=st.integers(0, 4 * BLCKSZ - 1), byte=st.integers(0, 255),
       snap=st.one_of(st.none(), snapshots), slice_min=slice_mins)
def test_c_scan_rows_on_damaged_runs(sp, at, byte, snap, slice_min):
    """One byte changed anywhere in a run (after the page checksum: line pointers, tuple
    headers, null bitmaps, value lengths, UTF-8 of text), columns joined either way: C
    and the reference agree, both giving the same rows or both raising TupleFormatError
    with the same message (and block, for a damaged page)."""
    codec, data, npages = sp
    damaged = bytearray(data)
    pos = at % len(damaged)
    if pos % BLCKSZ < 14:   # the header before lower/upper is the checksum's, verified on read
        pos += 14
    damaged[pos] = byte
    damaged = bytes(damaged)
    got = answer(lambda: c_rows(damaged, npages, snap, codec, True, slice_min))
    ref = answer(lambda: ref_rows(damaged, npages, snap, codec))
    assert float_bits(got) == float_bits(ref)


def raw_text_row(nulls: int, values: list[bytes]) -> bytes:
    """A row of a (text, text) schema with the given raw (maybe not UTF-8) values."""
    return bytes([nulls]) + struct.pack("<II", *map(len, values)) + b"".join(values)


@needs_c
@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=12).filter(lambda s: not s.isascii()),
       cut=st.integers(1, 40), other=st.text(max_size=5), slice_min=slice_mins)
def test_c_scan_rows_text_split_inside_a_character(text, cut, other, slice_min):
    """A text value ending inside a multi-byte UTF-8 character whose next value in the
    column holds the rest: the column's bytes joined are valid UTF-8 but neither value
    is. C must not hand out the joined text's slices (joined by character bounds) nor
    its split (joined at a separator): it raises the reference's TupleFormatError."""
    raw = text.encode()
    k = cut % len(raw)
    if k == 0:
        k = 1
    first, rest = raw[:k], raw[k:]
    codec = RowCodec([("a", "text"), ("b", "text")])
    page = bytearray(BLCKSZ)
    init_page(page)
    for values in ([first, other.encode()], [rest, other.encode()]):
        page_add_item(page, pack_tuple(1, 0, 0, raw_text_row(0, values)))
    data = bytes(page)
    got = answer(lambda: c_rows(data, 1, None, codec, True, slice_min))
    ref = answer(lambda: ref_rows(data, 1, None, codec))
    assert got == ref
    try:
        first.decode()
        rest.decode()
    except UnicodeDecodeError:
        assert ref[0] == "error"


@needs_c
def test_c_scan_rows_grows_its_scratch_for_a_run_of_many_rows(monkeypatch):
    """A run with more rows than the thread's layout scratch holds (4 pages of ~180
    one-int8 rows; a fresh thread, whose scratch starts at 256 rows) is read again with
    room for every line pointer: the same rows as the reference, and the thread's scratch
    then holds them all."""
    monkeypatch.setattr(hp, "SCAN_ROWS_SCRATCH", 1)
    codec = RowCodec([("i", "int8")])
    pages = []
    value = 0
    for _ in range(4):
        page = bytearray(BLCKSZ)
        init_page(page)
        try:
            while True:
                page_add_item(page, pack_tuple(1, 0, 0, codec.encode((value,))))
                value += 1
        except PageFullError:
            pages.append(bytes(page))
    data = b"".join(pages)
    out = {}

    def run():
        out["got"] = c_rows(data, 4, None, codec)
        out["rows"] = tuple_module.layout_scratch(1, 1, 1, 8).rows

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert value > 2 * tuple_module.LAYOUT_SCRATCH_ROWS
    assert out["got"] == ref_rows(data, 4, None, codec)
    assert out["got"][2] == [(i,) for i in range(value)]
    assert out["rows"] >= value


@pytest.mark.parametrize("without_c", [False, True])
def test_table_scan_rows_mvcc_nulls_and_long_text(tmp_path, io_method, monkeypatch, without_c):
    """On every io method, with the C module and without it (the modules' C handles
    removed): rows with NULLs, non-ASCII and long (multi-page) text come back from scan()
    as the rows each snapshot sees: while a transaction deletes and updates some, it sees
    its changes and another thread's scan the committed rows; after an abort of other
    changes and the commit, everyone sees the committed changes only; items() gives the
    rows at their Tids (get agrees) and count() agrees."""
    if without_c:
        monkeypatch.setattr(hp, "_lib", None)
        monkeypatch.setattr(tuple_module, "_lib", None)
    rows = [(i, None if i % 11 == 0 else f"é{i}ß" * (i % 5) + "x" * (i % 3 * 700), i % 2 == 0)
            for i in range(2000)]
    db = open_db(tmp_path / "db", io_method)
    t = db.create_table("t", [("id", "int8"), ("name", "text"), ("even", "bool")])
    with db.transaction():
        tids = t.insert_many(rows)
    assert sorted(t.scan()) == rows
    want = sorted([r for k, r in enumerate(rows) if k % 7 and k % 13 != 3]
                  + [(k, "ü" * 400, False) for k in range(3, 2000, 13) if k % 7])
    seen = []
    with db.transaction():
        for k in range(0, 2000, 7):
            t.delete(tids[k])
        for k in range(3, 2000, 13):
            if k % 7:
                t.update(tids[k], (k, "ü" * 400, False))
        assert sorted(t.scan()) == want
        th = threading.Thread(target=lambda: seen.append(sorted(t.scan())))
        th.start()
        th.join()
    assert seen == [rows]
    with pytest.raises(RuntimeError), db.transaction():
        t.insert_many([(-k, "aborted", None) for k in range(1, 300)])
        raise RuntimeError("abort")
    assert sorted(t.scan()) == want
    items = list(t.items())
    assert sorted(row for _tid, row in items) == want
    assert all(t.get(tid) == row for tid, row in items)
    assert t.count() == len(want)
    db.close()


@pytest.mark.parametrize("decode_pages", [1, 3, 64])
def test_scan_rows_decodes_a_run_in_parts(tmp_path, io_method, monkeypatch, decode_pages):
    """On every io method, Heap.scan_rows decoding each run of up to 64 pages in parts of
    ``decode_pages`` pages (SCAN_DECODE_PAGES) hands out the rows of scan_runs' tuples
    decoded one by one, each at its block and offnum (block = run part's first block +
    page index), in the same order, parts never longer than asked, and a scan left early
    stops cleanly (a second scan still sees every row)."""
    monkeypatch.setattr(hp, "SCAN_DECODE_PAGES", decode_pages)
    db = open_db(tmp_path / "db", io_method)
    t = db.create_table("t", [("id", "int8"), ("name", "text")])
    with db.transaction():
        t.insert_many([(i, f"{i}é" + "z" * (i % 900)) for i in range(3000)])
    heap, codec = t.heap, t._codec
    want = [(tup.tid, codec.decode(tup.data)) for tup in heap.scan()]
    got = []
    for run in heap.scan_rows(None, codec, run_pages=64):
        assert run.npages <= decode_pages
        tids = [(run.first_block + p, o) for p, o in zip(run.pages, run.offnums, strict=True)]
        got += zip(tids, run.rows, strict=True)
    assert got == [((tid.block, tid.offnum), row) for tid, row in want]
    early = heap.scan_rows(None, codec, run_pages=64)
    next(early)
    early.close()
    assert sum(len(run.rows) for run in heap.scan_rows(None, codec)) == len(want) == 3000
    db.close()


@needs_c
@settings(max_examples=300, deadline=None)
@given(sp=schema_and_pages(), headers=st.lists(st.tuples(st.integers(0, 0xFFFF),
                                                         st.integers(0, 0xFFFF)), max_size=4))
def test_c_run_free_equals_reference(sp, headers):
    """A scan's free-space entries for a run computed in C (one slk_heap_run_free call)
    equal the reference _run_free (and so Heap._page_free per page) for random heap and
    all-zero pages, and for pages with any lower/upper values (room negative, zero, not
    aligned)."""
    _codec, data, npages = sp
    odd = bytearray(BLCKSZ * len(headers))
    for k, (lower, upper) in enumerate(headers):
        struct.pack_into("<HH", odd, k * BLCKSZ + 14, lower, upper)
    run = data + bytes(odd)
    total = npages + len(headers)
    reader = hp._RunReader(total, None)
    assert reader.free(run, total) == hp._run_free(run, total)
    assert hp._run_free(data, npages) == [hp.Heap._page_free(memoryview(data[k * BLCKSZ:(k + 1) * BLCKSZ]))
                                          for k in range(npages)]
