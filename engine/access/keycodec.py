"""Order-preserving key encoding for table indexes. Pure: values in, bytes out.

``encode_key(types, values)`` turns a tuple of column values into bytes whose ``bytes``
order is the values' natural order, column by column (the first column decides, then the
next...), so a B+tree that compares keys as bytes orders rows as PostgreSQL's btree
operator classes would. A key over the first k columns of an index (a *prefix*) encodes to
a byte prefix of every full key that starts with those values, which is what range and
prefix lookups rely on.

Per column, one tag byte and then the value::

    0x01 value     a value (NOT NULL)
    0x02           NULL: after every value, as PostgreSQL's default NULLS LAST

    int8    8 bytes big-endian, sign bit flipped (so -2**63 .. 2**63-1 ascend as bytes)
    float8  8 bytes: IEEE 754 big-endian; positives get the sign bit set, negatives are
            inverted whole. -0.0 is encoded as 0.0 (they are equal, as in PostgreSQL) and
            every NaN as one NaN, above +inf (PostgreSQL: NaN is greater than every number)
    bool    one byte, 0x00 false, 0x01 true
    text    the UTF-8 bytes, escaped 0x00 -> 0x00 0xFF, ended by 0x00 0x01: order is by
            code point (UTF-8 byte order is code point order), PostgreSQL's "C" collation
    bytea   the bytes, escaped and ended as text

Invariants:
1. For values a, b of one schema: ``a < b`` (column-wise natural order, NULLs last)
   ⇔ ``encode_key(a) < encode_key(b)``, and equal values give equal bytes.
2. The terminator 0x00 0x01 sorts below any escaped continuation (0x00 0xFF) and any
   other byte, so a shorter string sorts first and no encoding is a prefix of a different
   column value's encoding.
3. ``decode_key(types, encode_key(types, v)) == v`` except that -0.0 comes back as 0.0
   and every NaN as ``float("nan")``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from itertools import repeat

__all__ = ["encode_key", "key_encoder", "value_encoder", "keys_encoder", "columns_encoder",
           "decode_key",
           "prefix_end",
           "KeyCodecError", "TAG_VALUE", "TAG_NULL"]

TAG_VALUE = 0x01
TAG_NULL = 0x02
_ESCAPE = b"\x00\xff"
_TERMINATOR = b"\x00\x01"
_U64 = struct.Struct(">Q")
_SIGN = 1 << 63
_MASK = (1 << 64) - 1
_INT8_MIN = -(1 << 63)
_INT8_MAX = (1 << 63) - 1
_NAN_BITS = 0x7FF8000000000000


class KeyCodecError(ValueError):
    """Bytes that are not an encoded key (names the column and what was wrong)."""


def _float_bits(x: float) -> int:
    if math.isnan(x):
        bits = _NAN_BITS
    elif x == 0.0:
        bits = 0  # -0.0 and 0.0 are one value
    else:
        bits = _U64.unpack(struct.pack(">d", x))[0]
    return (bits ^ _MASK) if bits & _SIGN else (bits | _SIGN)


def _escape(b: bytes) -> bytes:
    return b.replace(b"\x00", _ESCAPE) + _TERMINATOR


def _check(name: str, typ: str, v: object) -> None:
    ok = {"int8": lambda: type(v) is int and _INT8_MIN <= v <= _INT8_MAX,
          "float8": lambda: type(v) is float or (type(v) is int and abs(v) <= 1 << 53),
          "bool": lambda: type(v) is bool,
          "text": lambda: type(v) is str,
          "bytea": lambda: isinstance(v, (bytes, bytearray, memoryview))}[typ]()
    if not ok:
        raise TypeError(f"key column {name!r} is {typ}; got {type(v).__name__} {v!r:.60}")


def encode_key(columns: Sequence[tuple[str, str]], values: Sequence) -> bytes:
    """The encoding of ``values`` (one per column of ``columns``, or fewer: a prefix).
    TypeError naming the column for a value of the wrong type; ValueError for too many
    values."""
    if len(values) > len(columns):
        raise ValueError(f"a key of {len(values)} values for {len(columns)} key columns "
                         f"({', '.join(n for n, _t in columns)})")
    out = bytearray()
    for (name, typ), v in zip(columns, values, strict=False):
        if v is None:
            out.append(TAG_NULL)
            continue
        _check(name, typ, v)
        out.append(TAG_VALUE)
        if typ == "int8":
            out += _U64.pack((v + _SIGN) & _MASK)
        elif typ == "float8":
            out += _U64.pack(_float_bits(float(v)))
        elif typ == "bool":
            out.append(1 if v else 0)
        elif typ == "text":
            try:
                out += _escape(v.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValueError(f"key column {name!r} (text): {v!r:.60} is not "
                                 f"UTF-8-encodable") from None
        else:
            out += _escape(bytes(v))
    return bytes(out)


class _Slow(Exception):
    """A value the fast column encoders leave to ``encode_key`` (an unusual type, a
    value out of range, a string that is not UTF-8-encodable): it encodes it or raises
    naming the column."""


_V = bytes([TAG_VALUE])
_NULL = bytes([TAG_NULL])
_FALSE = _V + b"\x00"
_TRUE = _V + b"\x01"
_pack_u64 = _U64.pack


def _fast_int8(v) -> bytes:
    if type(v) is int and _INT8_MIN <= v <= _INT8_MAX:
        return _V + _pack_u64(v + _SIGN)
    if v is None:
        return _NULL
    raise _Slow


def _fast_float8(v) -> bytes:
    if type(v) is float:
        return _V + _pack_u64(_float_bits(v))
    if v is None:
        return _NULL
    raise _Slow


def _fast_bool(v) -> bytes:
    if v is True:
        return _TRUE
    if v is False:
        return _FALSE
    if v is None:
        return _NULL
    raise _Slow


def _fast_text(v) -> bytes:
    if type(v) is str:
        try:
            return _V + v.encode("utf-8").replace(b"\x00", _ESCAPE) + _TERMINATOR
        except UnicodeEncodeError:
            raise _Slow from None
    if v is None:
        return _NULL
    raise _Slow


def _fast_bytea(v) -> bytes:
    if type(v) is bytes:
        return _V + v.replace(b"\x00", _ESCAPE) + _TERMINATOR
    if v is None:
        return _NULL
    raise _Slow


_FAST = {"int8": _fast_int8, "float8": _fast_float8, "bool": _fast_bool,
         "text": _fast_text, "bytea": _fast_bytea}


def key_encoder(columns: Sequence[tuple[str, str]]):
    """``encode_key`` bound to ``columns`` once: a function of ``values`` giving exactly
    ``encode_key(columns, values)`` (the same bytes, the same errors), with the per-column
    type dispatch done here instead of on every call (a point lookup encodes one key).
    Values of unusual types go through ``encode_key`` itself."""
    columns = tuple((name, typ) for name, typ in columns)
    for name, typ in columns:
        if typ not in _FAST:
            raise ValueError(f"key column {name!r}: unknown type {typ!r}")
    parts = tuple(_FAST[typ] for _name, typ in columns)
    n = len(columns)
    join = b"".join

    if n == 1:
        (only,) = parts

        def encode_one(values: Sequence) -> bytes:
            if len(values) == 1:
                try:
                    return only(values[0])
                except _Slow:
                    pass
            return encode_key(columns, values)
        return encode_one

    def encode(values: Sequence) -> bytes:
        if len(values) <= n:
            try:
                return join([part(v) for part, v in zip(parts, values, strict=False)])
            except _Slow:
                pass
        return encode_key(columns, values)
    return encode


def value_encoder(column: tuple[str, str]):
    """``key_encoder([column])`` for one value instead of a sequence of one: a function
    of ``v`` giving exactly ``encode_key([column], (v,))`` (the same bytes, the same
    errors). An int8 column's is one Python call (a primary-key lookup and its re-check
    encode one such value each)."""
    name, typ = column
    if typ not in _FAST:
        raise ValueError(f"key column {name!r}: unknown type {typ!r}")
    columns = ((name, typ),)
    if typ == "int8":
        def encode_int8(v) -> bytes:
            if type(v) is int and _INT8_MIN <= v <= _INT8_MAX:
                return _V + _pack_u64(v + _SIGN)
            return encode_key(columns, (v,))   # None, other types: as encode_key
        return encode_int8
    fast = _FAST[typ]

    def encode_value(v) -> bytes:
        try:
            return fast(v)
        except _Slow:
            return encode_key(columns, (v,))
    return encode_value


def _column_int8(col: list) -> list[bytes] | None:
    if set(map(type, col)) != {int} or min(col) < _INT8_MIN or max(col) > _INT8_MAX:
        return None
    return list(map(_V.__add__, map(_pack_u64, map(int.__add__, col, repeat(_SIGN)))))


def _column_float8(col: list) -> list[bytes] | None:
    if set(map(type, col)) != {float}:
        return None
    return list(map(_V.__add__, map(_pack_u64, map(_float_bits, col))))


def _column_text(col: list) -> list[bytes] | None:
    if set(map(type, col)) != {str}:
        return None
    try:
        raw = list(map(str.encode, col))
    except UnicodeEncodeError:
        return None
    return _escaped_column(raw)


def _column_bytea(col: list) -> list[bytes] | None:
    if set(map(type, col)) != {bytes}:
        return None
    return _escaped_column(col)


def _escaped_column(raw: list[bytes]) -> list[bytes]:
    esc = map(bytes.replace, raw, repeat(b"\x00"), repeat(_ESCAPE))
    return list(map(b"".join, zip(repeat(_V), esc, repeat(_TERMINATOR))))


def _column_bool(col: list) -> list[bytes] | None:
    if set(map(type, col)) != {bool}:
        return None
    return [_TRUE if v else _FALSE for v in col]


_COLUMN = {"int8": _column_int8, "float8": _column_float8, "bool": _column_bool,
           "text": _column_text, "bytea": _column_bytea}


def keys_encoder(columns: Sequence[tuple[str, str]]):
    """``key_encoder`` for many keys at once: a function of a list of value tuples (full
    keys) giving ``[encode_key(columns, v) for v in ...]``, the same bytes and errors.
    Each column is encoded in C-level iteration when all its values have the column's
    exact type and no NULL (one type check per column, no Python step per value); any
    other list goes key by key."""
    one = key_encoder(columns)
    by_column = columns_encoder(columns)
    n = len(columns)

    def encode_many(keys: list) -> list[bytes]:
        if not keys:
            return []
        if set(map(len, keys)) == {n}:
            got = by_column([list(col) for col in zip(*keys, strict=True)])
            if got is not None:
                return got
        return list(map(one, keys))
    return encode_many


def columns_encoder(columns: Sequence[tuple[str, str]]):
    """The column-wise path of ``keys_encoder``: a function of one list of values per
    column (equal lengths) giving each row's ``encode_key`` bytes, or None when a column
    holds a NULL or a value not of its exact type (then encode key by key: that gives the
    right bytes or error)."""
    coders = tuple(_COLUMN[typ] for _name, typ in columns)

    def encode_columns(cols: list[list]) -> list[bytes] | None:
        parts = []
        for coder, col in zip(coders, cols, strict=True):
            got = coder(col)
            if got is None:
                return None
            parts.append(got)
        return parts[0] if len(parts) == 1 else list(map(b"".join, zip(*parts, strict=True)))
    return encode_columns


def _unescape(data: bytes, pos: int, name: str) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        i = data.find(b"\x00", pos)
        if i < 0 or i + 1 >= len(data):
            raise KeyCodecError(f"key column {name!r}: no terminator")
        out += data[pos:i]
        nxt = data[i + 1]
        if nxt == 0x01:
            return bytes(out), i + 2
        if nxt != 0xFF:
            raise KeyCodecError(f"key column {name!r}: bad escape byte {nxt:#x}")
        out.append(0)
        pos = i + 2


def decode_key(columns: Sequence[tuple[str, str]], data: bytes) -> tuple[tuple, int]:
    """(the values, bytes consumed) of a key encoded for ``columns``."""
    pos = 0
    values = []
    for name, typ in columns:
        if pos >= len(data):
            raise KeyCodecError(f"key column {name!r}: key ends early")
        tag = data[pos]
        pos += 1
        if tag == TAG_NULL:
            values.append(None)
            continue
        if tag != TAG_VALUE:
            raise KeyCodecError(f"key column {name!r}: bad tag {tag:#x}")
        if typ in ("int8", "float8"):
            if pos + 8 > len(data):
                raise KeyCodecError(f"key column {name!r}: key ends early")
            (u,) = _U64.unpack_from(data, pos)
            pos += 8
            if typ == "int8":
                values.append(u - _SIGN)
            else:
                bits = (u ^ _SIGN) if u & _SIGN else (u ^ _MASK)
                values.append(struct.unpack(">d", _U64.pack(bits))[0])
        elif typ == "bool":
            if pos >= len(data) or data[pos] > 1:
                raise KeyCodecError(f"key column {name!r}: bad bool")
            values.append(bool(data[pos]))
            pos += 1
        else:
            raw, pos = _unescape(data, pos, name)
            values.append(raw.decode("utf-8") if typ == "text" else raw)
    return tuple(values), pos


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string that starts with ``prefix`` (None: no
    such bound, the prefix is all 0xFF)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])
