"""RowCodec.pack_many (the C slk_rows_pack laying rows out column by column) against its
reference, the generated per-row encoder: the same bytes for every row it takes, and no
row taken that the encoder would encode differently or refuse; Table.insert_many through
it stores what the row-by-row path stores, on every io method."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from slonik.engine.access import tuple as tuple_module
from slonik.engine.access.tuple import MAX_TUPLE_DATA_BYTES, PackedRows, RowCodec
from slonik.engine.database import Database

needs_c = pytest.mark.skipif(tuple_module._lib is None or not tuple_module._PACK_ARRAYS_OK,
                             reason="storage._pagecheck not built (no C compiler at install)")

COLUMN_TYPES = ["int8", "float8", "text", "bytea", "bool"]
VALUES = {"int8": st.integers(-(1 << 63), (1 << 63) - 1),
          "float8": st.one_of(st.floats(), st.integers(-(1 << 60), 1 << 60)),
          "text": st.one_of(st.text(max_size=20), st.text(alphabet="abc xyz", max_size=20)),
          "bytea": st.binary(max_size=20), "bool": st.booleans()}


class IntSub(int):
    pass


class StrSub(str):
    pass


# values the per-row encoder converts or refuses, so pack_many must leave the rows to it
ODD = {"int8": [None, True, IntSub(3), 1 << 63, -(1 << 63) - 1, 2.0],
       "float8": [None, True, 1 << 1100, "1.5"],
       "text": [None, StrSub("s"), "bad \ud800 surrogate", b"bytes"],
       "bytea": [None, bytearray(b"ba"), memoryview(b"mv"), "str"],
       "bool": [None, 1, 0]}


def expected_type_ok(typ: str, v: object) -> bool:
    """Whether ``v`` is a value pack_many must take for a column of ``typ``."""
    t = type(v)
    if typ == "int8":
        return t is int and -(1 << 63) <= v < (1 << 63)
    if typ == "float8":
        if t is float:
            return True
        if t is not int:
            return False
        try:
            float(v)
        except OverflowError:
            return False
        return True
    if typ == "bool":
        return t is bool
    if typ == "text":
        if t is not str:
            return False
        try:
            v.encode()
        except UnicodeEncodeError:
            return False
        return True
    return t is bytes


@st.composite
def schema_rows(draw):
    """A schema of 1..6 columns and 0..90 rows, sometimes with one odd value (see ODD),
    a wrong-width row, or a row too large for a page."""
    types = draw(st.lists(st.sampled_from(COLUMN_TYPES), min_size=1, max_size=6))
    rows = draw(st.lists(st.tuples(*[VALUES[t] for t in types]), max_size=90))
    rows = [list(r) if draw(st.booleans()) and i % 7 == 0 else r for i, r in enumerate(rows)]
    spoil = draw(st.sampled_from(["none", "none", "odd", "width", "large"]))
    if rows and spoil != "none":
        k = draw(st.integers(0, len(rows) - 1))
        row = list(rows[k])
        if spoil == "odd":
            c = draw(st.integers(0, len(types) - 1))
            row[c] = draw(st.sampled_from(ODD[types[c]]))
        elif spoil == "width":
            row = row + [0] if draw(st.booleans()) else row[:-1]
        else:
            var = [i for i, t in enumerate(types) if t in ("text", "bytea")]
            if var:
                c = var[0]
                row[c] = "x" * MAX_TUPLE_DATA_BYTES if types[c] == "text" \
                    else b"x" * MAX_TUPLE_DATA_BYTES
        rows[k] = tuple(row)
    return [(f"c{i}", t) for i, t in enumerate(types)], rows


def encoded_or_error(codec: RowCodec, rows: list) -> list[bytes] | tuple[str, str]:
    try:
        return codec.encode_many(rows)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


def packable(codec: RowCodec, rows: list) -> bool:
    """Whether pack_many must take ``rows`` (from PACK_MANY_MIN_ROWS on)."""
    width = len(codec.types)
    if not (all(type(r) in (tuple, list) and len(r) == width for r in rows)
            and all(expected_type_ok(t, r[i]) for r in rows for i, t in enumerate(codec.types))):
        return False
    try:
        return all(len(codec.encode(r)) <= MAX_TUPLE_DATA_BYTES for r in rows)
    except ValueError:   # TupleTooLargeError
        return False


@needs_c
@settings(max_examples=300, deadline=None)
@given(sr=schema_rows(), min_rows=st.sampled_from([0, 1, 32]))
def test_pack_many_equals_the_row_encoder(sr, min_rows):
    """For random schemas and rows: pack_many's rows are byte for byte encode_many's,
    back to back in one buffer; it takes every batch of exact-typed, NULL-free rows that
    fit a page, and leaves to encode_many every batch holding a value the encoder
    converts (a subclass, an int for float8) or refuses (which encode_many then names)."""
    columns, rows = sr
    codec = RowCodec(columns)
    keep = tuple_module.PACK_MANY_MIN_ROWS
    tuple_module.PACK_MANY_MIN_ROWS = min_rows
    try:
        packed = codec.pack_many(rows)
    finally:
        tuple_module.PACK_MANY_MIN_ROWS = keep
    want = encoded_or_error(codec, rows)
    takes = len(rows) >= max(min_rows, 1) and packable(codec, rows)
    event(f"packed: {takes}")
    if not takes:
        if packed is not None:   # (a subclass or a converted value may still encode alike)
            assert list(packed) == want
            assert packable(codec, rows)
        return
    assert isinstance(packed, PackedRows) and isinstance(want, list)
    assert list(packed) == want
    assert len(packed) == len(rows)
    assert packed.total == sum(map(len, want))
    assert [packed.at[i] for i in range(len(rows))] == \
        [sum(map(len, want[:i])) for i in range(len(rows))]
    assert packed[-1] == want[-1]
    with pytest.raises(IndexError):
        packed[len(rows)]


@needs_c
@pytest.mark.parametrize("typ", COLUMN_TYPES)
def test_pack_many_leaves_every_odd_value_to_the_row_encoder(typ):
    """One odd value (see ODD) among 40 good rows of (int8, <typ>, text): pack_many takes
    nothing, so the per-row encoder converts it or raises naming it."""
    codec = RowCodec([("id", "int8"), ("v", typ), ("t", "text")])
    good = {"int8": 7, "float8": 1.5, "text": "x", "bytea": b"y", "bool": False}[typ]
    for odd in ODD[typ]:
        rows = [(i, good, "row") for i in range(40)]
        rows[17] = (17, odd, "row")
        assert codec.pack_many(rows) is None, (typ, odd)
        rows[17] = (17, good, "row")
        assert list(codec.pack_many(rows)) == codec.encode_many(rows)


@needs_c
def test_pack_many_takes_the_bench_rows_and_small_batches_go_row_by_row():
    """The (int8, text, float8) rows of bench scan's insert_many comparison, ASCII and not,
    are packed; fewer than PACK_MANY_MIN_ROWS rows are not (the per-row path is cheaper)."""
    codec = RowCodec([("id", "int8"), ("name", "text"), ("score", "float8")])
    rows = [(i, f"name-{i}" if i % 3 else f"näme-{i}✓", i / 7) for i in range(1000)]
    packed = codec.pack_many(rows)
    assert packed is not None and list(packed) == codec.encode_many(rows)
    assert codec.pack_many(rows[:tuple_module.PACK_MANY_MIN_ROWS - 1]) is None


def test_insert_many_packed_stores_what_the_row_path_stores(tmp_path, io_method):
    """Table.insert_many of the same rows through pack_many and row by row (pack_many off)
    gives the same Tids and rows, also after the database is reopened; a batch with one
    bad value is refused whole, naming it, and leaves the table as it was."""
    rows = [(i, f"row {i} " + "z" * (i % 50), i * 0.5, bytes([i % 256]) * (i % 9), i % 2 == 0)
            for i in range(3000)]
    columns = [("id", "int8"), ("t", "text"), ("f", "float8"), ("b", "bytea"), ("ok", "bool")]
    path = str(tmp_path / "db")
    with Database.open(path, io_method=io_method) as db:
        packed_t = db.create_table("packed", columns)
        plain_t = db.create_table("plain", columns)
        with db.transaction():
            tids_packed = packed_t.insert_many(rows)
        keep = tuple_module.PACK_MANY_MIN_ROWS
        tuple_module.PACK_MANY_MIN_ROWS = 1 << 40
        try:
            with db.transaction():
                tids_plain = plain_t.insert_many(rows)
        finally:
            tuple_module.PACK_MANY_MIN_ROWS = keep
        assert tids_packed == tids_plain
        bad = list(rows[:100])
        bad[57] = (57, "text", "not a float", b"", True)
        with pytest.raises(TypeError, match="'f'"), db.transaction():
            packed_t.insert_many(bad)
    with Database.open(path, io_method=io_method) as db:
        got = sorted(db.table("packed").scan())
        assert got == sorted(db.table("plain").scan()) == rows
