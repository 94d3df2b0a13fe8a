"""The order-preserving key encoding (engine/access/keycodec.py) against Python's sort."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access.keycodec import (
    decode_key,
    encode_key,
    key_encoder,
    keys_encoder,
    prefix_end,
    value_encoder,
)

COLUMNS = [("i", "int8"), ("f", "float8"), ("t", "text"), ("b", "bytea"), ("x", "bool")]
_VALUES = {
    "int8": st.integers(-(1 << 63), (1 << 63) - 1),
    "float8": st.floats(allow_nan=True, allow_infinity=True),
    "text": st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=6),
    "bytea": st.binary(max_size=6),
    "bool": st.booleans(),
}


def _sort_key(columns, row):
    """PostgreSQL's order as a Python sort key: NULLs last, NaN above every float,
    -0.0 == 0.0, text by code point, bytea by bytes."""
    out = []
    for (_n, typ), v in zip(columns, row, strict=True):
        if v is None:
            out.append((1, 0, 0))
        elif typ == "float8":
            out.append((0, math.isnan(v), 0.0 if math.isnan(v) else v))
        else:
            out.append((0, 0, v))
    return tuple(out)


@st.composite
def schema_and_rows(draw):
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3))
    row = st.tuples(*(st.one_of(st.none(), _VALUES[t]) for _n, t in columns))
    return columns, draw(st.lists(row, min_size=2, max_size=20))


@settings(max_examples=300, deadline=None)
@given(schema_and_rows())
def test_byte_order_is_natural_order(case):
    """Sorting rows by their encodings gives the same order (and the same ties) as
    Python's sort of the rows under PostgreSQL's ordering rules (NULLs last, NaN
    greatest, -0.0 == 0.0): checked pairwise and on the whole list."""
    columns, rows = case
    for a in rows:
        for b in rows:
            ka, kb = _sort_key(columns, a), _sort_key(columns, b)
            ea, eb = encode_key(columns, a), encode_key(columns, b)
            assert (ka < kb) == (ea < eb), (a, b)
            assert (ka == kb) == (ea == eb), (a, b)
    by_bytes = sorted(rows, key=lambda r: encode_key(columns, r))
    by_python = sorted(rows, key=lambda r: _sort_key(columns, r))
    assert [_sort_key(columns, r) for r in by_bytes] == [_sort_key(columns, r) for r in by_python]


@settings(max_examples=200, deadline=None)
@given(schema_and_rows())
def test_round_trip_and_prefixes(case):
    """decode(encode(row)) gives the row back (NaN as NaN, -0.0 as 0.0), and the
    encoding of a row's first k values is a byte prefix of the full encoding that sorts
    below prefix_end(prefix)."""
    columns, rows = case
    for row in rows:
        enc = encode_key(columns, row)
        back, used = decode_key(columns, enc)
        assert used == len(enc)
        assert _sort_key(columns, back) == _sort_key(columns, row)
        for k in range(len(row) + 1):
            p = encode_key(columns[:k], row[:k])
            assert enc.startswith(p)
            end = prefix_end(p)
            assert end is None or enc < end


def test_float8_places_like_postgresql():
    """-inf < negatives < -0.0 == 0.0 < positives < inf < NaN < NULL, by encoding."""
    cols = [("f", "float8")]
    order = [-math.inf, -1e300, -1.0, -5e-324, -0.0, 5e-324, 1.0, 1e300, math.inf, math.nan,
             None]
    encs = [encode_key(cols, (v,)) for v in order]
    assert encs[4] == encode_key(cols, (0.0,))
    assert all(a < b for a, b in zip(encs, encs[1:], strict=False))


def test_wrong_types_name_the_column():
    """A value of the wrong type raises TypeError naming the key column and type; too
    many values, ValueError."""
    with pytest.raises(TypeError, match="'i' is int8"):
        encode_key([("i", "int8")], ("1",))
    with pytest.raises(TypeError, match="'t' is text"):
        encode_key([("t", "text")], (b"x",))
    with pytest.raises(ValueError, match="2 values for 1 key columns"):
        encode_key([("i", "int8")], (1, 2))


# Values of every type a caller might pass, the wrong ones included: key_encoder must
# give encode_key's bytes or encode_key's exception for each.
_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 64), 1 << 64), st.floats(),
    st.text(max_size=6), st.binary(max_size=6), st.binary(max_size=4).map(bytearray),
    st.sampled_from(["\ud800", "a\x00b", "\x00", b"\x00\xff", -0.0, float("nan")]))


def _outcome(fn):
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001 - the exception itself is what is compared
        return type(e).__name__, str(e)


@settings(max_examples=500, deadline=None)
@given(columns=st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3),
       values=st.lists(_ANY_VALUE, max_size=4), typed=st.data())
def test_key_encoder_equals_encode_key(columns, values, typed):
    """key_encoder(columns)(values) is encode_key(columns, values) exactly: the same bytes
    for well-typed values (full keys and prefixes, NULLs, surrogate strings, -0.0, NaN,
    ints for float8), and the same exception type and message for wrong types, too many
    values or non-UTF-8 text. Checked on arbitrary values and on values of the right
    types."""
    enc = key_encoder(columns)
    assert _outcome(lambda: enc(values)) == _outcome(lambda: encode_key(columns, values))
    k = typed.draw(st.integers(0, len(columns)))
    good = tuple(typed.draw(st.one_of(st.none(), _VALUES[t])) for _n, t in columns[:k])
    assert enc(good) == encode_key(columns, good)
    assert enc(list(good)) == encode_key(columns, good)


def test_key_encoder_rejects_unknown_type():
    """A column type the codec does not know is refused when the encoder is built,
    naming the column."""
    with pytest.raises(ValueError, match="'c': unknown type 'money'"):
        key_encoder([("c", "money")])


@settings(max_examples=400, deadline=None)
@given(columns=st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3), data=st.data())
def test_keys_encoder_equals_encode_key_per_key(columns, data):
    """keys_encoder(columns)(keys) is [encode_key(columns, k) for k in keys]: the same
    bytes for lists of well-typed keys (the column-wise path: no NULLs, exact types; and
    the key-by-key path when a NULL or another type is among them), the same exception
    for a wrong type or a wrong number of values anywhere in the list."""
    typed = st.tuples(*(_VALUES[t] for _n, t in columns))
    keys = data.draw(st.lists(typed, max_size=12))
    if data.draw(st.booleans()):   # sometimes a NULL, an odd value or a short key
        keys.insert(data.draw(st.integers(0, len(keys))),
                    tuple(data.draw(st.lists(_ANY_VALUE, min_size=1, max_size=len(columns)))))
    enc = keys_encoder(columns)
    assert _outcome(lambda: enc(keys)) == \
        _outcome(lambda: [encode_key(columns, k) for k in keys])


@settings(max_examples=500, deadline=None)
@given(column=st.sampled_from(COLUMNS), value=_ANY_VALUE, typed=st.data())
def test_value_encoder_equals_encode_key(column, value, typed):
    """value_encoder(column)(v) is encode_key([column], (v,)) exactly: the same bytes for
    values of the column's type and NULL (int8 at and past its bounds included), the same
    exception type and message for the wrong types. Checked on arbitrary values and on
    values of the right type."""
    enc = value_encoder(column)
    assert _outcome(lambda: enc(value)) == _outcome(lambda: encode_key([column], (value,)))
    good = typed.draw(st.one_of(st.none(), _VALUES[column[1]]))
    assert enc(good) == encode_key([column], (good,))


def test_value_encoder_refuses_an_unknown_type():
    """value_encoder names the column of an unknown type, as key_encoder does."""
    with pytest.raises(ValueError, match="'c'.*unknown type 'int4'"):
        value_encoder(("c", "int4"))
