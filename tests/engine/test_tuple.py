"""The tuple format and the KV / row codecs: round trips, limits and clear errors (pure)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.engine.access.tuple import (
    COLUMN_TYPES,
    HEAP_UPDATED,
    MAX_TUPLE_DATA,
    MAX_TUPLE_DATA_BYTES,
    TUPLE_HEADER_SIZE,
    RowCodec,
    TupleFormatError,
    TupleTooLargeError,
    decode_kv,
    encode_kv,
    pack_tuple,
    unpack_tuple,
    unpack_tuple_header,
)
from slonik.storage.page import BLCKSZ, init_page, page_add_item, page_free_space

INT8_MIN, INT8_MAX = -(1 << 63), (1 << 63) - 1

VALUES = {
    "int8": st.integers(INT8_MIN, INT8_MAX),
    "float8": st.floats(allow_nan=False),
    "text": st.text(max_size=40),
    "bytea": st.binary(max_size=40),
    "bool": st.booleans(),
}


# ---------------------------------------------------------------------------- tuple header


def test_max_tuple_data_is_exactly_what_fits_in_an_empty_page():
    """A tuple with MAX_TUPLE_DATA_BYTES of data fills an empty page exactly (no room left),
    and one byte more is refused by pack_tuple with the size and the limit in the message."""
    assert MAX_TUPLE_DATA == MAX_TUPLE_DATA_BYTES
    page = bytearray(BLCKSZ)
    init_page(page)
    page_add_item(page, pack_tuple(1, 0, 0, bytes(MAX_TUPLE_DATA_BYTES)))
    assert page_free_space(page) == 0
    with pytest.raises(TupleTooLargeError, match=f"{MAX_TUPLE_DATA_BYTES + 1} bytes.*limit is "
                                                  f"{MAX_TUPLE_DATA_BYTES}") as e:
        pack_tuple(1, 0, 0, bytes(MAX_TUPLE_DATA_BYTES + 1))
    assert isinstance(e.value, ValueError)
    assert e.value.limit == MAX_TUPLE_DATA_BYTES and e.value.size == MAX_TUPLE_DATA_BYTES + 1


@given(xmin=st.integers(0, (1 << 64) - 1), xmax=st.integers(0, (1 << 64) - 1),
       flags=st.integers(0, 0xFFFF), data=st.binary(max_size=300))
def test_tuple_header_round_trip(xmin, xmax, flags, data):
    """pack_tuple then unpack_tuple gives back every field; the header is 24 bytes with
    zero padding and data_len equal to the data's length."""
    item = pack_tuple(xmin, xmax, flags, data)
    assert len(item) == TUPLE_HEADER_SIZE + len(data)
    assert item[22:24] == b"\0\0"
    assert unpack_tuple(item) == (xmin, xmax, flags, data)
    assert unpack_tuple(memoryview(bytearray(item))) == (xmin, xmax, flags, data)
    assert pack_tuple(xmin, xmax, flags, bytearray(data)) == item


def test_tuple_header_errors_name_the_field():
    """Bad header values and malformed items raise errors that say which field is wrong."""
    with pytest.raises(ValueError, match="xmin"):
        pack_tuple(-1, 0, 0, b"x")
    with pytest.raises(ValueError, match="flags"):
        pack_tuple(1, 0, 1 << 16, b"x")
    with pytest.raises(TypeError, match="xmax"):
        pack_tuple(1, "2", 0, b"x")
    with pytest.raises(TypeError, match="data"):
        pack_tuple(1, 0, 0, "text")
    with pytest.raises(TupleFormatError, match="shorter than its 24-byte header"):
        unpack_tuple_header(b"\0" * 10)
    with pytest.raises(TupleFormatError, match="data_len 5 does not match"):
        unpack_tuple_header(struct.pack("<QQHIxx", 1, 0, 0, 5) + b"abc")


# ---------------------------------------------------------------------------- KV codec


@given(key=st.binary(max_size=200), value=st.binary(max_size=2000))
def test_kv_round_trip(key, value):
    """decode_kv(encode_kv(k, v)) == (k, v) for any bytes, including empty ones."""
    data = encode_kv(key, value)
    assert decode_kv(data) == (key, value)
    assert decode_kv(memoryview(data)) == (key, value)


def test_kv_type_errors_name_the_argument():
    """Non-bytes keys or values are TypeErrors naming `key` or `value`."""
    with pytest.raises(TypeError, match="key must be bytes, not str"):
        encode_kv("k", b"v")
    with pytest.raises(TypeError, match="value must be bytes, not int"):
        encode_kv(b"k", 3)
    with pytest.raises(TypeError, match="value must be bytes, not NoneType"):
        encode_kv(b"k", None)
    assert decode_kv(encode_kv(bytearray(b"k"), memoryview(b"v"))) == (b"k", b"v")


def test_kv_size_limit_names_limit_and_sizes():
    """The largest pair that fits is accepted; one byte more raises TupleTooLargeError
    naming the key and value sizes and the limit."""
    fits = MAX_TUPLE_DATA_BYTES - 4 - 10
    assert decode_kv(encode_kv(bytes(10), bytes(fits))) == (bytes(10), bytes(fits))
    with pytest.raises(TupleTooLargeError, match=rf"key \(10 bytes\) \+ value \({fits + 1} "
                                                 rf"bytes\).*limit is {MAX_TUPLE_DATA_BYTES}"):
        encode_kv(bytes(10), bytes(fits + 1))


def test_kv_decode_rejects_malformed_data():
    """A key length past the end, or data shorter than the length field, is a
    TupleFormatError naming the field."""
    with pytest.raises(TupleFormatError, match="key_len 100"):
        decode_kv(struct.pack("<I", 100) + b"abc")
    with pytest.raises(TupleFormatError, match="shorter than its 4-byte key length"):
        decode_kv(b"ab")


# ---------------------------------------------------------------------------- row codec


@st.composite
def schemas_and_rows(draw):
    types = draw(st.lists(st.sampled_from(COLUMN_TYPES), min_size=1, max_size=12))
    columns = [(f"c{i}", t) for i, t in enumerate(types)]
    rows = draw(st.lists(st.tuples(*[st.none() | VALUES[t] for t in types]), max_size=5))
    return columns, rows


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(schemas_and_rows())
def test_row_codec_round_trip(case):
    """For random schemas of every type (NULLs anywhere), decode(encode(row)) == row and
    lists encode like tuples."""
    columns, rows = case
    codec = RowCodec(columns)
    for row in rows:
        data = codec.encode(row)
        assert codec.decode(data) == row
        assert codec.decode(memoryview(data)) == row
        assert codec.encode(list(row)) == data


def test_row_codec_all_types_and_nulls():
    """A row of each type and an all-NULL row round-trip; a float8 column takes an int and
    gives back a float; bytea takes bytearray/memoryview and gives back bytes."""
    codec = RowCodec([("id", "int8"), ("x", "float8"), ("name", "text"), ("blob", "bytea"),
                      ("ok", "bool")])
    row = (INT8_MIN, -0.5, "żółw 🐢", b"\x00\xff", False)
    assert codec.decode(codec.encode(row)) == row
    assert codec.decode(codec.encode((None,) * 5)) == (None,) * 5
    got = codec.decode(codec.encode((INT8_MAX, 3, "", bytearray(b"ab"), True)))
    assert got == (INT8_MAX, 3.0, "", b"ab", True) and type(got[1]) is float
    assert codec.decode(codec.encode((1, 2.0, "a", memoryview(b"m"), True)))[3] == b"m"
    inf = codec.decode(codec.encode((1, math.inf, "a", b"", True)))[1]
    assert inf == math.inf


def test_row_codec_many_columns_null_bitmap():
    """With more than 8 columns the null bitmap spans several bytes; NULLs in each byte
    survive."""
    columns = [(f"c{i}", "int8") for i in range(20)]
    codec = RowCodec(columns)
    row = tuple(None if i % 3 == 0 else i for i in range(20))
    assert codec.decode(codec.encode(row)) == row
    assert codec.bitmap_size == 3


@pytest.mark.parametrize("column, typ, value, exc, match", [
    ("id", "int8", "1", TypeError, "column 'id' is int8; got str"),
    ("id", "int8", 1.5, TypeError, "column 'id' is int8; got float"),
    ("id", "int8", True, TypeError, "column 'id' is int8; got bool"),
    ("id", "int8", 1 << 63, ValueError, "column 'id' is int8; 9223372036854775808 is out of range"),
    ("id", "int8", INT8_MIN - 1, ValueError, "column 'id' is int8; .* out of range"),
    ("x", "float8", "1.0", TypeError, "column 'x' is float8; got str"),
    ("x", "float8", True, TypeError, "column 'x' is float8; got bool"),
    ("x", "float8", 1 << 2000, ValueError, "column 'x' is float8; .* out of its range"),
    ("name", "text", b"a", TypeError, "column 'name' is text; got bytes"),
    ("name", "text", "\ud800", ValueError, "column 'name' is text; .*UTF-8"),
    ("blob", "bytea", "a", TypeError, "column 'blob' is bytea; got str"),
    ("blob", "bytea", 3, TypeError, "column 'blob' is bytea; got int"),
    ("ok", "bool", 1, TypeError, "column 'ok' is bool; got int"),
    ("ok", "bool", "yes", TypeError, "column 'ok' is bool; got str"),
])
def test_row_codec_rejects_wrong_types_naming_the_column(column, typ, value, exc, match):
    """Each wrong type is a TypeError and each bad value a ValueError, naming the column
    and its type."""
    codec = RowCodec([("pad", "text"), (column, typ)])
    with pytest.raises(exc, match=match):
        codec.encode(("p", value))


def test_row_codec_int_subclass_accepted_as_int8():
    """An int subclass (not bool) is accepted for int8 and comes back as a plain int."""
    import enum

    class Color(enum.IntEnum):
        RED = 7

    codec = RowCodec([("c", "int8")])
    got = codec.decode(codec.encode((Color.RED,)))
    assert got == (7,) and type(got[0]) is int


def test_row_codec_row_shape_errors():
    """A row of the wrong length is a ValueError listing the columns; a non-sequence row is
    a TypeError."""
    codec = RowCodec([("a", "int8"), ("b", "text")])
    with pytest.raises(ValueError, match=r"row has 3 values; the table has 2 columns \['a', 'b'\]"):
        codec.encode((1, "x", 3))
    with pytest.raises(TypeError, match="row must be a tuple or list of 2 values, not dict"):
        codec.encode({"a": 1})


def test_row_codec_schema_errors():
    """Bad schemas are rejected at construction with the column named."""
    with pytest.raises(ValueError, match="column 'a': unknown type 'int4'"):
        RowCodec([("a", "int4")])
    with pytest.raises(ValueError, match="column 'a' appears twice"):
        RowCodec([("a", "int8"), ("a", "text")])
    with pytest.raises(TypeError, match="column name must be a non-empty str"):
        RowCodec([("", "int8")])
    with pytest.raises(ValueError, match="1..1600 columns"):
        RowCodec([])
    with pytest.raises(TypeError, match=r"columns\[0\] must be a \(name, type\) pair"):
        RowCodec(["a"])
    with pytest.raises(TypeError, match="sequence of"):
        RowCodec("a int8")


def test_row_codec_names_never_reach_generated_source():
    """A hostile column name is only data: the codec still works and the name appears in
    messages, never in the generated code."""
    name = "x'); import os; ('"
    codec = RowCodec([(name, "int8")])
    assert name not in codec.source
    assert codec.decode(codec.encode((5,))) == (5,)
    with pytest.raises(TypeError, match="import os"):
        codec.encode(("a",))


def test_row_codec_too_large_row():
    """A row whose encoding exceeds the page limit is a TupleTooLargeError naming the limit."""
    codec = RowCodec([("id", "int8"), ("blob", "bytea")])
    with pytest.raises(TupleTooLargeError, match=f"row data is .* limit is {MAX_TUPLE_DATA_BYTES}"):
        codec.encode((1, bytes(MAX_TUPLE_DATA_BYTES)))
    fits = MAX_TUPLE_DATA_BYTES - codec.head_size
    assert len(codec.encode((1, bytes(fits)))) == MAX_TUPLE_DATA_BYTES


def test_row_codec_decode_rejects_malformed_data():
    """Truncated data, trailing bytes and invalid UTF-8 are TupleFormatErrors naming what
    is wrong, never a silently shorter row."""
    codec = RowCodec([("id", "int8"), ("name", "text")])
    data = codec.encode((1, "abc"))
    with pytest.raises(TupleFormatError, match="add up to"):
        codec.decode(data[:-1])
    with pytest.raises(TupleFormatError, match="add up to"):
        codec.decode(data + b"x")
    with pytest.raises(TupleFormatError, match="shorter than its"):
        codec.decode(data[:3])
    bad = data[:-3] + b"\xff\xfe\xfd"
    with pytest.raises(TupleFormatError, match="column 'name' .*invalid UTF-8"):
        codec.decode(bad)
    fixed = RowCodec([("a", "int8")])
    with pytest.raises(TupleFormatError, match="add up to"):
        fixed.decode(fixed.encode((1,)) + b"\0")


def test_heap_flag_bits_are_distinct():
    """The heap's tuple flag bits are single distinct bits in the low byte."""
    from slonik.engine.access.tuple import HEAP_VALID_FLAG_BITS, HEAP_XMAX_UPDATE
    assert HEAP_UPDATED & HEAP_XMAX_UPDATE == 0
    assert (HEAP_UPDATED | HEAP_XMAX_UPDATE) & ~HEAP_VALID_FLAG_BITS == 0
