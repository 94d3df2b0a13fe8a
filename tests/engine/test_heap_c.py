"""The C heap-page helpers in storage/_pagecheck (slk_heap_run_items, slk_row_layout,
slk_row_bounds, slk_heap_fill_page) agree with their Python references (heap.run_items_py,
RowCodec.decode_run_py, heap.fill_page_py) on arbitrary pages, rows and snapshots;
damaged input makes C hand over to the reference, which raises naming the flaw."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import heap as hp
from slonik.engine.access import tuple as tuple_module
from slonik.engine.access.btree import XidSnapshot
from slonik.engine.access.tuple import (
    C_ROW_LAYOUT,
    MAX_TUPLE_DATA_BYTES,
    RowCodec,
    TupleFormatError,
    pack_tuple,
)
from slonik.storage.page import (
    BLCKSZ,
    PageFullError,
    init_page,
    page_add_item,
    page_delete_item,
)

needs_c = pytest.mark.skipif(not (hp.C_HEAP and C_ROW_LAYOUT),
                             reason="storage._pagecheck not built (no C compiler at install)")

xids = st.integers(1, 30)
snapshots = st.builds(lambda xmax, own, ex: XidSnapshot(xmax, own, tuple(sorted(ex))),
                      st.integers(1, 32), st.integers(0, 31), st.sets(st.integers(1, 31)))


def heap_page(tuples, deleted) -> bytearray:
    """A page holding ``tuples`` [(xmin, xmax, flags, data)] (as many as fit), then the
    offnums in ``deleted`` made UNUSED (PD_HAS_FREE_LINES set)."""
    page = bytearray(BLCKSZ)
    init_page(page)
    n = 0
    for xmin, xmax, flags, data in tuples:
        try:
            page_add_item(page, pack_tuple(xmin, xmax, flags, data))
            n += 1
        except PageFullError:
            break
    for off in sorted(deleted):
        if off <= n:
            page_delete_item(page, off)
    return page


tuple_lists = st.lists(st.tuples(xids, st.one_of(st.just(0), xids), st.integers(0, 255),
                                 st.binary(max_size=300)), max_size=40)
pages = st.builds(heap_page, tuple_lists, st.sets(st.integers(1, 40), max_size=8))


def both(data, npages, snap, first_block=7):
    """(C result or exception, reference result or exception)."""
    out = []
    for f in (hp.run_items, hp.run_items_py):
        try:
            out.append(f(bytes(data), npages, snap, 16384, 0, first_block))
        except TupleFormatError as e:
            out.append(("error", str(e), e.block))
    return out


@needs_c
@settings(max_examples=200, deadline=None)
@given(run=st.lists(st.one_of(pages, st.just(bytearray(BLCKSZ))), min_size=1, max_size=4),
       snap=st.one_of(st.none(), snapshots))
def test_c_run_items_equal_reference(run, snap):
    """For runs of 1..4 random heap pages (some all-zero, some with UNUSED slots) and a
    random snapshot or none, the C extraction returns exactly the reference's (page,
    offnum, start, end, xmin, xmax, flags) lists, and with a snapshot exactly the tuples
    XidSnapshot says are visible."""
    data = b"".join(bytes(p) for p in run)
    c, ref = both(data, len(run), snap)
    assert c == ref
    if snap is not None:
        all_ = hp.run_items_py(data, len(run), None, 16384, 0, 7)
        want = [k for k in range(len(all_[0])) if snap(all_[4][k], all_[5][k])]
        assert ref[1] == [all_[1][k] for k in want]


@settings(max_examples=100, deadline=None)
@given(run=st.lists(st.one_of(pages, st.just(bytearray(BLCKSZ))), min_size=1, max_size=5))
def test_run_free_equals_page_free(run):
    """A scan's free-space entries for a run of pages (strided header reads, _run_free)
    equal Heap._page_free of each page alone, for random heap pages (some all-zero, some
    with UNUSED slots), runs of 1..5 pages."""
    data = b"".join(bytes(p) for p in run)
    want = [hp.Heap._page_free(memoryview(bytes(p))) for p in run]
    assert hp._run_free(data, len(run)) == want


@needs_c
@settings(max_examples=200, deadline=None)
@given(page=pages, at=st.integers(14, BLCKSZ - 1), byte=st.integers(0, 255))
def test_c_run_items_on_damaged_pages(page, at, byte):
    """One byte of a page changed anywhere after the checksum (line pointers, header
    fields, tuple headers): C and the reference agree, both returning the same tuples or
    both raising TupleFormatError with the same message and block."""
    page[at] = byte
    c, ref = both(page, 1, None)
    assert c == ref


COLUMN_TYPES = ["int8", "float8", "text", "bytea", "bool"]
VALUES = {"int8": st.integers(-(1 << 63), (1 << 63) - 1),
          "float8": st.floats(allow_nan=False), "text": st.text(max_size=20),
          "bytea": st.binary(max_size=20), "bool": st.booleans()}


LONG_VALUES = {"text": st.text(min_size=300, max_size=400),
               "bytea": st.binary(min_size=300, max_size=400)}


@st.composite
def schema_and_rows(draw):
    """A schema and rows; half the time with long (300..400-byte) text/bytea values."""
    types = draw(st.lists(st.sampled_from(COLUMN_TYPES), min_size=1, max_size=6))
    columns = [(f"c{i}", t) for i, t in enumerate(types)]
    nullable = draw(st.booleans())
    values = dict(VALUES, **LONG_VALUES) if draw(st.booleans()) else VALUES
    rows = draw(st.lists(st.tuples(*[st.one_of(st.none(), values[t]) if nullable else values[t]
                                     for t in types]), max_size=30))
    return columns, rows


def laid_out(encoded, gaps):
    """The rows in one bytes buffer with junk between them; (buf, starts, ends)."""
    parts, starts, ends, pos = [], [], [], 0
    for k, row in enumerate(encoded):
        gap = b"\xee" * gaps[k % len(gaps)]
        parts += [gap, row]
        pos += len(gap)
        starts.append(pos)
        pos += len(row)
        ends.append(pos)
    return b"".join(parts), starts, ends


def decode_both(codec, buf, starts, ends):
    """decode_run with its values joined (slk_row_layout), decode_run with its values
    sliced by their bounds (slk_row_bounds; by default only for rows of 512 bytes and more)
    and the reference, each answer or its TupleFormatError; the C layout is taken for runs
    of every length (by default short runs go row by row)."""
    out = []
    keep = tuple_module.DECODE_RUN_C_MIN_ROWS, tuple_module.DECODE_SLICE_MIN_ROW_BYTES
    tuple_module.DECODE_RUN_C_MIN_ROWS = 0
    try:
        for f, slice_min in ((codec.decode_run, 1 << 62), (codec.decode_run, 0),
                             (codec.decode_run_py, 0)):
            tuple_module.DECODE_SLICE_MIN_ROW_BYTES = slice_min
            try:
                out.append(f(buf, starts, ends))
            except TupleFormatError as e:
                out.append(("error", str(e)))
    finally:
        tuple_module.DECODE_RUN_C_MIN_ROWS, tuple_module.DECODE_SLICE_MIN_ROW_BYTES = keep
    return out


@needs_c
@settings(max_examples=200, deadline=None)
@given(sr=schema_and_rows(), gaps=st.lists(st.integers(0, 9), min_size=1, max_size=5))
def test_c_decode_run_equals_reference(sr, gaps):
    """For random schemas (1..6 columns of every type) and rows (with or without NULLs,
    text with any code point, bytea with NUL bytes, short or long values), laid out with
    junk between rows, decode_run returns exactly the reference's rows, which are the
    rows encoded."""
    columns, rows = sr
    codec = RowCodec(columns)
    buf, starts, ends = laid_out(codec.encode_many(rows), gaps)
    c, sliced, ref = decode_both(codec, buf, starts, ends)
    assert c == ref
    assert sliced == ref
    assert ref == [tuple(r) for r in rows]


@needs_c
@settings(max_examples=300, deadline=None)
@given(sr=schema_and_rows(), row=st.integers(0, 29), at=st.integers(0, 200),
       byte=st.integers(0, 255), cut=st.integers(0, 3))
def test_c_decode_run_on_damaged_rows(sr, row, at, byte, cut):
    """One row of a run damaged (a byte changed: lengths, bitmap, UTF-8, bool bytes; or
    a few bytes cut off its end): C and the reference agree, both giving the same rows
    or both raising TupleFormatError with the same message."""
    columns, rows = sr
    codec = RowCodec(columns)
    encoded = codec.encode_many(rows)
    if encoded:
        k = row % len(encoded)
        damaged = bytearray(encoded[k])
        if damaged:
            damaged[at % len(damaged)] = byte
        encoded[k] = bytes(damaged[:max(0, len(damaged) - cut)])
    buf, starts, ends = laid_out(encoded, [1])
    c, sliced, ref = decode_both(codec, buf, starts, ends)
    assert float_bits(c) == float_bits(ref)
    assert float_bits(sliced) == float_bits(ref)


def float_bits(answer):
    """``answer`` (rows, or an error tuple) with each float as its 8 bytes, so a damaged
    float8 that decodes to NaN compares equal exactly when its bits are the same (NaN is
    unequal to itself)."""
    if not isinstance(answer, list):
        return answer
    return [tuple(struct.pack("<d", v) if type(v) is float else v for v in row)
            for row in answer]


@needs_c
@settings(max_examples=200, deadline=None)
@given(low=st.integers(0, 130), extra=st.binary(max_size=40),
       text=st.text(max_size=12), n=st.integers(1, 12))
def test_c_row_layout_joins_with_a_byte_no_value_holds(low, extra, text, n):
    """Each text/bytea column is joined with the smallest ASCII byte none of its values
    holds (NUL first): bytea values holding every byte below ``low`` (0..130) plus random
    ones, text values holding the characters below min(low, 128). The layout's joined_ok
    names exactly that byte + 1 (0 when every ASCII byte is taken, the slicing path), and
    decode_run returns the rows encoded, as the reference does."""
    present = bytes(range(min(low, 256)))
    codec = RowCodec([("b", "bytea"), ("t", "text"), ("i", "int8")])
    rows = [(present + extra + bytes([k]), "".join(map(chr, range(min(low, 128)))) + text,
             k) for k in range(n)]
    buf, starts, ends = laid_out(codec.encode_many(rows), [3])
    c, sliced, ref = decode_both(codec, buf, starts, ends)
    assert c == sliced == ref == rows
    # the separator each column was joined with, from the layout itself
    ffi, lib = tuple_module._ffi, tuple_module._lib
    sc = tuple_module.layout_scratch(n, len(buf), 2, 8)
    sc.starts[0:n] = starts
    sc.ends[0:n] = ends
    nb, nfixed, fixed_sizes, nvar = codec.layout_args
    assert lib.slk_row_layout(ffi.from_buffer(buf), n, sc.starts, sc.ends, nb, nfixed,
                              fixed_sizes, nvar, sc.fixed_out, sc.var_out, sc.joined,
                              sc.joined_len, sc.joined_ok) == 0
    for j, values in enumerate(([r[0] for r in rows], [r[1].encode() for r in rows])):
        used = set(b"".join(values))
        free = [b for b in range(128) if b not in used]
        assert sc.joined_ok[j] == (free[0] + 1 if free else 0)
        if free:
            joined = bytes(ffi.buffer(sc.joined))[sum(sc.joined_len[0:j]):]
            assert joined[:sc.joined_len[j]] == bytes([free[0]]).join(values)


@needs_c
@settings(max_examples=200, deadline=None)
@given(datas=st.lists(st.one_of(st.binary(max_size=400), st.binary(min_size=3000, max_size=4000)),
                      max_size=60),
       xmin=st.integers(1, (1 << 64) - 1), flags=st.integers(0, 0xFFFF))
def test_c_fill_page_equals_reference(datas, xmin, flags):
    """For random tuple data (small and page-sized), xmin and flags, filling a new page in
    C gives the same page, byte for byte, the same count and the same INSERT_MULTI record
    items as page_add_item of each pack_tuple in turn."""
    a, b = bytearray(BLCKSZ), bytearray(BLCKSZ)
    init_page(a)
    init_page(b)
    got = hp.fill_page(a, xmin, flags, datas)
    want = hp.fill_page_py(b, xmin, flags, datas)
    assert got == want
    assert a == b
    assert got[0] == len(datas) or got[0] < len(datas)  # stopped at the first that did not fit
    if got[0] < len(datas):
        with pytest.raises(PageFullError):
            page_add_item(b, pack_tuple(xmin, 0, flags, datas[got[0]]))


def test_fill_page_refuses_oversized_data_like_the_reference():
    """Data larger than MAX_TUPLE_DATA_BYTES is refused with the reference's error, and
    a bad flags value raises ValueError naming flags, C or not."""
    page = bytearray(BLCKSZ)
    init_page(page)
    with pytest.raises(ValueError, match="limit"):
        hp.fill_page(page, 5, 0, [b"x" * (MAX_TUPLE_DATA_BYTES + 1)])
    with pytest.raises(ValueError, match="flags"):
        hp.fill_page(page, 5, 1 << 16, [b"x"])
    assert struct.unpack_from("<H", page, 14)[0] == 24  # nothing added


@pytest.mark.parametrize("without_c", [False, True])
def test_table_bulk_load_and_scan_with_and_without_c(tmp_path, io_method, monkeypatch,
                                                     without_c):
    """On every io method, with the C helpers and with the modules' C handles removed
    (the pure-Python fallback), 3000 rows of (int8, text, float8, bool, bytea) with some
    NULLs loaded by insert_many in one transaction come back from scan() in physical
    (Tid) order, each at the Tid insert_many returned for it (items()); a reopen reads
    the same rows, and count() agrees."""
    from slonik.engine.access import tuple as tp

    from tests.engine.dbutil import open_db

    if without_c:
        monkeypatch.setattr(hp, "_lib", None)
        monkeypatch.setattr(tp, "_lib", None)
    rows = [(i, f"name {i}" if i % 7 else None, i * 0.25, i % 3 == 0, bytes([i % 256]) * (i % 50))
            for i in range(3000)]
    db = open_db(tmp_path / "db", io_method)
    t = db.create_table("t", [("id", "int8"), ("name", "text"), ("score", "float8"),
                              ("flag", "bool"), ("blob", "bytea")])
    with db.transaction():
        tids = t.insert_many(rows)
    by_tid = [row for _tid, row in sorted(zip(tids, rows, strict=True))]
    assert list(t.scan()) == by_tid
    assert list(t.items()) == sorted(zip(tids, rows, strict=True))
    assert t.count() == len(rows)
    db.close()
    db = open_db(tmp_path / "db", io_method)
    t = db.table("t")
    assert list(t.scan()) == by_tid
    db.close()
