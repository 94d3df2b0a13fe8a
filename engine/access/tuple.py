"""Heap tuple format, the KV data codec and the table row codec. Pure: bytes in, bytes out.

A heap tuple is one page item: a 24-byte header, then the data::

    0        8        16     18       22   24
    +--------+--------+------+--------+----+------------------+
    | xmin   | xmax   | flags| data_len| pad| data (data_len)  |
    +--------+--------+------+--------+----+------------------+
      u64      u64      u16    u32     2 zero bytes   (struct "<QQHIxx", little-endian)

``xmin`` is the transaction that created the version, ``xmax`` the one that deleted or
replaced it (0 = none). ``flags`` are the ``HEAP_*`` bits below. ``data_len`` repeats the
item length minus the header, so a line pointer and its tuple are checked against each other.

Data codecs (what goes in ``data``):

- KV: ``key_len u32 | key | value`` — key and value are bytes (``encode_kv``/``decode_kv``).
- Table rows: a ``RowCodec`` is built once per schema; its ``encode``/``decode`` are Python
  functions generated for that schema (as ``collections.namedtuple`` does), so a row is one
  ``struct.pack`` with inline type checks and no per-value dispatch. Row layout::

      null bitmap (ceil(ncols/8) bytes, bit i set = column i is NULL)
      fixed part: every int8 (q), float8 (d), bool (?) column in schema order (0 when NULL)
      lengths:    u32 per text/bytea column, in schema order (0 when NULL)
      var part:   the text (UTF-8) and bytea bytes, in schema order

Invariants:
1. ``len(item) == TUPLE_HEADER_SIZE + data_len``; the pad bytes are zero.
2. ``MAX_TUPLE_DATA_BYTES`` is the largest ``data`` whose tuple fits in an empty page;
   anything larger raises ``TupleTooLargeError`` before any page is touched.
3. Encoding rejects wrong types with ``TypeError`` and bad values (int8 out of range, text
   that is not UTF-8-encodable) with ``ValueError``, each naming the column and its type.
4. Decoding checks lengths and raises ``TupleFormatError`` (a ``DataCorruptionError``)
   naming the field, never returns a silently short value.
"""

from __future__ import annotations

import struct
import sys
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import NamedTuple

from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import (
    BLCKSZ,
    HEADER_SIZE,
    LINE_POINTER_SIZE,
    LOWER_OFFSET,
    LpFlag,
    max_item_size,
)

try:  # the optional C row-layout helper (storage/_pagecheck_build.py, "heap page" block)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_row_layout"):  # an older build of the module
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None
C_ROW_LAYOUT = _lib is not None  # whether RowCodec.decode_run finds row layouts in C
# slk_row_layout without the join (long values sliced instead), when the build has it
_ROW_BOUNDS = getattr(_lib, "slk_row_bounds", None)
# decode_run's output arrays: every byte read back is written by slk_row_layout first, so
# they need not be zeroed (a run's joined values are as large as the run's pages).
_new_unzeroed = None if _ffi is None else _ffi.new_allocator(should_clear_after_alloc=False)
# decode_run decodes fewer rows than this one by one (decode_run_py): the C layout's fixed
# cost (~5 us: its arrays and a pass per column) is more than a few rows' decode (~0.6 us
# each for 4 columns); the two are equal near 12-16 rows.
DECODE_RUN_C_MIN_ROWS = 12
# A table scan's run (Heap.scan_rows) joins a text/bytea column whose values average fewer
# bytes than this with a separator and splits it (str.split: ~20-50 ns a short value);
# longer text values are slices of their joined text by character bounds (~120-170 ns
# each, but split scans every character: ~200 ns at 512 bytes). Crossover measured ~300.
SCAN_SLICE_MIN_VALUE_BYTES = 256
# decode_run slices the text/bytea values of a run whose rows average at least this many
# bytes (of the run's buffer per row) by their bounds, one bytes.decode each
# (slk_row_bounds), instead of joining, decoding and splitting them: str.split scans a
# character at a time, so for long values the slices are cheaper (timeit, 128 KiB of
# values: equal near 512-byte values; 1,000-byte values 28 us sliced vs 44 us split plus
# the C join's copy and NUL search).
DECODE_SLICE_MIN_ROW_BYTES = 512
# pack_many lays rows out column by column (slk_rows_pack) from this many rows on (a chosen
# bound, not a measured crossover: a handful of rows does not repay the columnar path's
# fixed cost, its arrays and a pass per column). 300k small rows: ~0.24 us a row against
# the per-row encoder's ~0.38 (best of 3), and no bytes object per row for the page
# filler to join again.
PACK_MANY_MIN_ROWS = 32
# slk_rows_pack's limit of text/bytea columns (a schema with more packs row by row)
PACK_MANY_MAX_VAR = getattr(_lib, "SLK_ROWS_PACK_MAX_VAR", 0)
# the arrays pack_many hands to C hold little-endian values of these sizes
_PACK_ARRAYS_OK = (sys.byteorder == "little" and array("I").itemsize == 4
                   and array("q").itemsize == 8 and array("d").itemsize == 8)
# layout_scratch's arrays are made for at least this many rows and bytes of row data (an
# index scan's batch: index.INDEX_SCAN_BATCH_ENTRIES rows from up to as many pages), and
# grown when a run needs more; one set per thread, reused (the C call writes every byte it
# hands back).
LAYOUT_SCRATCH_ROWS = 256
LAYOUT_SCRATCH_BYTES = 1 << 20
_tls = threading.local()

__all__ = [
    "TUPLE_HEADER_SIZE", "MAX_TUPLE_DATA_BYTES", "MAX_TUPLE_DATA", "MAX_COLUMNS",
    "HEAP_UPDATED", "HEAP_XMAX_UPDATE", "HEAP_VALID_FLAG_BITS", "COLUMN_TYPES",
    "Tid", "HeapTuple", "TupleTooLargeError", "TupleFormatError",
    "pack_tuple", "unpack_tuple", "unpack_tuple_header", "check_data_size",
    "encode_kv", "decode_kv", "KV_HEADER_SIZE", "RowCodec", "slot_tuple", "layout_scratch",
    "PackedRows",
]

_HEADER = struct.Struct("<QQHIxx")
TUPLE_HEADER_SIZE = _HEADER.size  # 24, a multiple of MAXIMUM_ALIGNOF
assert TUPLE_HEADER_SIZE == 24

# The largest data whose tuple fits in an empty page (no special space): 8136 bytes.
MAX_TUPLE_DATA_BYTES = max_item_size() - TUPLE_HEADER_SIZE
MAX_TUPLE_DATA = MAX_TUPLE_DATA_BYTES  # the contract's name for the same limit

MAX_COLUMNS = 1600  # PostgreSQL's MaxHeapAttributeNumber; the generated codec stays small

# Tuple flag bits (the header's u16). The heap sets these; the transaction layer reads them.
HEAP_UPDATED = 0x0001      # this version was created by update() (an older version exists)
HEAP_XMAX_UPDATE = 0x0002  # xmax was set by update() (a newer version exists), not delete()
HEAP_VALID_FLAG_BITS = 0x00FF  # low byte: heap and transaction layer; high byte reserved

_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


class Tid(NamedTuple):
    """A tuple's address: block number and line pointer number (from 1)."""

    block: int
    offnum: int


class HeapTuple(NamedTuple):
    """A tuple as read from a page; ``data`` is a copy (bytes), valid after the page is unpinned."""

    tid: Tid
    xmin: int
    xmax: int
    flags: int
    data: bytes


class TupleTooLargeError(ValueError):
    """Tuple data larger than ``MAX_TUPLE_DATA_BYTES``; says the size and the limit."""

    def __init__(self, size: int, what: str = "tuple data") -> None:
        super().__init__(f"{what} is {size} bytes; the limit is {MAX_TUPLE_DATA_BYTES} bytes "
                         f"(a tuple must fit in one page: a {max_item_size()}-byte item "
                         f"less its {TUPLE_HEADER_SIZE}-byte header)")
        self.size = size
        self.limit = MAX_TUPLE_DATA_BYTES


class TupleFormatError(DataCorruptionError):
    """Tuple bytes that cannot be decoded; the message names the field."""


_SLOT_LOWER_UPPER = struct.Struct("<HH")
_SLOT_LP = struct.Struct("<I")
_SLOT_HEAD = struct.Struct("<QQHI")
_SLOT_NORMAL = int(LpFlag.NORMAL)


def slot_tuple(page, offnum: int, rel: int, fork: int, block: int
               ) -> tuple[int, int, int, int, int] | None:
    """(xmin, xmax, flags, data start, data end) of the NORMAL heap tuple at ``offnum``
    of a (locked, verified) heap page, or None when that slot holds none (past the line
    pointers, unused, dead or redirected). A pd_lower past the page, a line pointer
    outside the tuple space, or a header whose data length disagrees with it, is a
    TupleFormatError naming relation, block and offnum (a heap fetch's one-slot form of a
    scan's page checks; the C readers, ``slk_heap_gather`` and its optimistic forms, make
    the same checks in the same order)."""
    lower, upper = _SLOT_LOWER_UPPER.unpack_from(page, LOWER_OFFSET)
    if lower > BLCKSZ:
        raise TupleFormatError(
            f"relation {rel} block {block} offnum {offnum}: pd_lower {lower} is past the "
            f"end of the page ({BLCKSZ})", relation=rel, fork=fork, block=block)
    lp_at = HEADER_SIZE + (offnum - 1) * LINE_POINTER_SIZE
    if lower == 0 or offnum < 1 or lp_at + LINE_POINTER_SIZE > lower:
        return None
    (lp,) = _SLOT_LP.unpack_from(page, lp_at)
    if (lp >> 15) & 3 != _SLOT_NORMAL:
        return None
    offset = lp & 0x7FFF
    length = lp >> 17
    if offset < upper or offset + length > BLCKSZ or length < TUPLE_HEADER_SIZE:
        raise TupleFormatError(
            f"relation {rel} block {block} offnum {offnum}: line pointer (offset {offset}, "
            f"length {length}) is not a heap tuple inside [{upper}, {BLCKSZ})",
            relation=rel, fork=fork, block=block)
    xmin, xmax, flags, data_len = _SLOT_HEAD.unpack_from(page, offset)
    if data_len != length - TUPLE_HEADER_SIZE:
        raise TupleFormatError(
            f"relation {rel} block {block} offnum {offnum}: tuple data_len {data_len} does "
            f"not match its item length {length}", relation=rel, fork=fork, block=block)
    return xmin, xmax, flags, offset + TUPLE_HEADER_SIZE, offset + length


def check_data_size(size: int, what: str = "tuple data") -> None:
    """TupleTooLargeError if ``size`` bytes of data do not fit in a heap page."""
    if size > MAX_TUPLE_DATA_BYTES:
        raise TupleTooLargeError(size, what)


# ---------------------------------------------------------------------------- tuple header


def pack_tuple(xmin: int, xmax: int, flags: int, data) -> bytes:
    """Header + data as one item. ``data`` is bytes-like; TupleTooLargeError if too big."""
    try:
        n = memoryview(data).nbytes
    except TypeError:
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
    check_data_size(n)
    try:
        return _HEADER.pack(xmin, xmax, flags, n) + data
    except struct.error:
        for name, value, bound in (("xmin", xmin, _U64_MAX), ("xmax", xmax, _U64_MAX),
                                   ("flags", flags, 0xFFFF)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
            if not 0 <= value <= bound:
                raise ValueError(f"{name} must be in 0..{bound}, got {value}") from None
        raise
    except TypeError:  # bytes + memoryview/bytearray
        return _HEADER.pack(xmin, xmax, flags, n) + bytes(data)


def unpack_tuple_header(item) -> tuple[int, int, int, int]:
    """(xmin, xmax, flags, data_len) of a tuple item, checked against the item's length."""
    n = len(item)
    if n < TUPLE_HEADER_SIZE:
        raise TupleFormatError(f"heap tuple of {n} bytes is shorter than its "
                               f"{TUPLE_HEADER_SIZE}-byte header")
    xmin, xmax, flags, data_len = _HEADER.unpack_from(item)
    if data_len != n - TUPLE_HEADER_SIZE:
        raise TupleFormatError(f"heap tuple data_len {data_len} does not match the item "
                               f"length {n} - {TUPLE_HEADER_SIZE}")
    return xmin, xmax, flags, data_len


def unpack_tuple(item) -> tuple[int, int, int, bytes]:
    """(xmin, xmax, flags, data) with ``data`` copied out of ``item``."""
    xmin, xmax, flags, _n = unpack_tuple_header(item)
    return xmin, xmax, flags, bytes(item[TUPLE_HEADER_SIZE:])


# ---------------------------------------------------------------------------- KV codec

_KV = struct.Struct("<I")
KV_HEADER_SIZE = _KV.size


def encode_kv(key: bytes, value: bytes) -> bytes:
    """``key_len | key | value``. TypeError naming the argument unless both are bytes;
    TupleTooLargeError if the pair does not fit in a heap page."""
    if type(key) is not bytes:
        if not isinstance(key, bytes | bytearray | memoryview):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        key = bytes(key)
    if type(value) is not bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        value = bytes(value)
    size = KV_HEADER_SIZE + len(key) + len(value)
    if size > MAX_TUPLE_DATA_BYTES:
        raise TupleTooLargeError(size, f"key ({len(key)} bytes) + value ({len(value)} bytes) "
                                       f"+ {KV_HEADER_SIZE}-byte length")
    return _KV.pack(len(key)) + key + value


def decode_kv(data) -> tuple[bytes, bytes]:
    """(key, value) copied out of ``data``; TupleFormatError naming the field if malformed."""
    n = len(data)
    if n < KV_HEADER_SIZE:
        raise TupleFormatError(f"KV data of {n} bytes is shorter than its "
                               f"{KV_HEADER_SIZE}-byte key length")
    (klen,) = _KV.unpack_from(data)
    end = KV_HEADER_SIZE + klen
    if end > n:
        raise TupleFormatError(f"KV key_len {klen} exceeds the {n - KV_HEADER_SIZE} bytes "
                               f"after the length")
    return bytes(data[KV_HEADER_SIZE:end]), bytes(data[end:])


# ---------------------------------------------------------------------------- row codec

class _LayoutScratch:
    """One thread's arrays of ``slk_row_layout`` (and of the index range fetch, which
    ends in it): rows' bounds in, column layout out; capacities in rows, bytes of row
    data, text/bytea columns and fixed-width bytes per row."""

    def __init__(self, rows: int, nbytes: int, nvar: int, fixed: int) -> None:
        self.rows, self.nbytes, self.nvar, self.fixed = rows, nbytes, nvar, fixed
        self.starts = _new_unzeroed("uint32_t[]", rows)
        self.ends = _new_unzeroed("uint32_t[]", rows)
        self.sel = _new_unzeroed("uint32_t[]", rows)
        self.fixed_out = _new_unzeroed("uint8_t[]", max(fixed, 1) * rows)
        self.var_out = _new_unzeroed("uint32_t[]", 2 * max(nvar, 1) * rows)
        self.joined = _new_unzeroed("uint8_t[]", nbytes + max(nvar, 1) * rows + 1)
        self.joined_len = _ffi.new("uint32_t[]", max(nvar, 1))
        self.joined_ok = _ffi.new("uint8_t[]", max(nvar, 1))
        self.out = _new_unzeroed("uint8_t[]", nbytes)
        self.layout = _ffi.new("int *")
        # slk_heap_scan_rows: text values' bounds in characters of their column's joined text
        self.chars = _new_unzeroed("uint32_t[]", 2 * max(nvar, 1) * rows)
        # views made once (a call slices them instead of making a cffi buffer each time)
        self.joined_view = memoryview(_ffi.buffer(self.joined))
        self.fixed_view = memoryview(_ffi.buffer(self.fixed_out))
        self.var_view = memoryview(_ffi.buffer(self.var_out)).cast("I")
        self.chars_view = memoryview(_ffi.buffer(self.chars)).cast("I")


def layout_scratch(rows: int, nbytes: int, nvar: int, fixed: int) -> _LayoutScratch:
    """This thread's ``_LayoutScratch`` with room for ``rows`` rows of ``nbytes`` bytes of
    row data with ``nvar`` text/bytea columns and ``fixed`` fixed-width bytes per row
    (made on first use, grown on demand, never per call: a C call's results are copied
    out before the next call reuses them)."""
    sc = getattr(_tls, "layout", None)
    if sc is None or sc.rows < rows or sc.nbytes < nbytes or sc.nvar < nvar or \
            sc.fixed < fixed:
        sc = _tls.layout = _LayoutScratch(
            max(rows, LAYOUT_SCRATCH_ROWS, sc.rows if sc else 0),
            max(nbytes, LAYOUT_SCRATCH_BYTES, sc.nbytes if sc else 0),
            max(nvar, sc.nvar if sc else 0), max(fixed, sc.fixed if sc else 0))
    return sc


class PackedRows(Sequence):
    """Encoded rows back to back in one C buffer (``RowCodec.pack_many``): row ``i`` is
    ``lens[i]`` bytes at ``at[i]`` of ``blob`` (cffi arrays, as ``Heap.insert_many``'s page
    filler reads them); ``total`` bytes in all. Indexing gives a row's bytes, as
    ``encode`` would have made them."""

    __slots__ = ("blob", "n", "at", "lens", "total", "_view")

    def __init__(self, blob, n: int, at, lens, total: int) -> None:
        self.blob, self.n, self.at, self.lens, self.total = blob, n, at, lens, total
        self._view = _ffi.buffer(blob, total)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:   # type: ignore[override]
        if not -self.n <= i < self.n:
            raise IndexError(f"row {i} of {self.n}")
        i %= self.n
        start = self.at[i]
        return self._view[start:start + self.lens[i]]

    def __iter__(self) -> Iterator[bytes]:
        return map(self.__getitem__, range(self.n))


def _packed_column(typ: str, col: list) -> tuple[object, object] | None:
    """One column of ``pack_many``: (its values as C reads them, its lengths or None for
    a fixed-width one), or None when a value is not of the column's exact type (or out
    of its range): the per-row encoder then takes the rows, and names the value."""
    types = set(map(type, col))
    try:
        if typ == "int8":
            return (array("q", col), None) if types == {int} else None
        if typ == "float8":
            return (array("d", col), None) if types and types <= {float, int} else None
        if typ == "bool":
            return (array("B", col), None) if types == {bool} else None
        if typ == "text":
            if types != {str}:
                return None
            joined = "".join(col)
            if joined.isascii():
                return joined.encode("ascii"), array("I", map(len, col))
            values = list(map(str.encode, col))
        else:
            if types != {bytes}:
                return None
            values = col
        return b"".join(values), array("I", map(len, values))
    except (OverflowError, UnicodeEncodeError):
        return None


COLUMN_TYPES = ("int8", "float8", "text", "bytea", "bool")
# slk_row_layout's joined_ok[j] (separator byte + 1, bytes 0..127) as split's argument
_SEP_BYTES = (None, *(bytes((b,)) for b in range(128)))
_SEP_STR = (None, *(chr(b) for b in range(128)))
_bool = bool
_FIXED_CODE = {"int8": "q", "float8": "d", "bool": "?"}
_INT8_MIN = -(1 << 63)
_INT8_MAX = (1 << 63) - 1


class RowCodec:
    """Encoder/decoder of table rows for one schema ``[(name, type), ...]``.

    ``encode(row)`` takes a tuple or list with one value (or None) per column and returns
    bytes; ``decode(data)`` returns a tuple. Both are generated once for the schema.
    """

    def __init__(self, columns: Sequence[tuple[str, str]]) -> None:
        cols = _check_columns(columns)
        self.columns: tuple[tuple[str, str], ...] = cols
        self.names = tuple(n for n, _ in cols)
        self.types = tuple(t for _, t in cols)
        ncols = len(cols)
        self._fixed = [i for i, t in enumerate(self.types) if t in _FIXED_CODE]
        self._var = [i for i, t in enumerate(self.types) if t not in _FIXED_CODE]
        self.bitmap_size = (ncols + 7) // 8
        fmt = "<" + "".join(_FIXED_CODE[self.types[i]] for i in self._fixed) + "I" * len(self._var)
        self._head = struct.Struct(fmt)
        self.head_size = self.bitmap_size + self._head.size
        self.source = _generate(self)
        namespace: dict = {
            "_pack": self._head.pack, "_unpack": self._head.unpack_from,
            "_bad": self._bad, "_coerce": self._coerce, "_wrong_shape": self._wrong_shape,
            "_short": self._short, "_bad_text": self._bad_text, "_too_large": _too_large, "_str": str, "_bytes": bytes,
            "_int": int, "_float": float, "_bool": bool, "_len": len,
            "_from_bytes": int.from_bytes, "_MAX": MAX_TUPLE_DATA_BYTES,
        }
        exec(compile(self.source, f"<RowCodec {self.names}>", "exec"), namespace)
        self.encode: Callable[[Sequence], bytes] = namespace["encode"]
        self.decode: Callable[[bytes], tuple] = namespace["decode"]
        # decode_run's C layout: the fixed-width part alone, and which values are text.
        self._fixed_struct = struct.Struct(
            "<" + "".join(_FIXED_CODE[self.types[i]] for i in self._fixed))
        self.fixed_size = self._fixed_struct.size   # fixed-width bytes per row
        self._text_var = tuple(self.types[i] == "text" for i in self._var)
        self.var_text = self._text_var   # per text/bytea column: whether it is text
        self._fixed_layout = tuple((i, _FIXED_CODE[self.types[i]],
                                    struct.calcsize(_FIXED_CODE[self.types[i]]))
                                   for i in self._fixed)
        self._c_fixed_sizes = (_ffi.new("uint8_t[]", [size for _i, _c, size in self._fixed_layout]
                                        or [0]) if _lib is not None else None)
        # rows_from_scan's plans: (column, struct code, byte offset in the fixed part, size)
        # of each fixed-width column, (index among the variable ones, column, is text) of each
        # text/bytea column
        self._fixed_plan = tuple((i, code, sum(z for _j, _c, z in self._fixed_layout[:k]), size)
                                 for k, (i, code, size) in enumerate(self._fixed_layout))
        self._var_plan = tuple((j, i, self._text_var[j]) for j, i in enumerate(self._var))
        # slk_heap_scan_rows' var_text: per text/bytea column, 1 when it is text
        self.c_var_text = (_ffi.new("uint8_t[]", [int(t) for t in self._text_var] or [0])
                           if _lib is not None else None)

    # --- batches: one call per page run, no interpreted loop per row or column -------------
    def encode_many(self, rows: Sequence[Sequence]) -> list[bytes]:
        """``[encode(r) for r in rows]``, with the same errors (the generated per-row
        encoder is one struct.pack and one join per row). A batch for the heap is
        ``pack_many`` where it applies: made column by column into one buffer, it skips
        the bytes object per row that made a column-wise ``encode_many`` slower."""
        return list(map(self.encode, rows))

    def pack_many(self, rows: list) -> PackedRows | None:
        """The rows encoded as ``encode_many`` would, in one buffer, column by column: a
        pass per column (its values' types, one array or join) and one C call laying the
        rows out (``slk_rows_pack``), no interpreted step per row. None (nothing
        raised) unless every row is a tuple or list of the schema's width with no NULL
        and every value of its column's exact type and range, each row fitting a page;
        None too for fewer than ``PACK_MANY_MIN_ROWS`` rows or without the C helper.
        ``encode_many`` then encodes (or rejects, naming the value) them row by row."""
        n = len(rows)
        if (_lib is None or not _PACK_ARRAYS_OK or n < PACK_MANY_MIN_ROWS
                or len(self._var) > PACK_MANY_MAX_VAR
                or not set(map(type, rows)) <= {tuple, list}
                or set(map(len, rows)) != {len(self.types)}):
            return None
        fixed, data, lens = [], [], []
        for i, typ in enumerate(self.types):
            got = _packed_column(typ, list(map(itemgetter(i), rows)))
            if got is None:
                return None
            if got[1] is None:
                fixed.append(_ffi.from_buffer("uint8_t[]", got[0]))
            else:
                data.append(_ffi.from_buffer("uint8_t[]", got[0]))
                lens.append(_ffi.from_buffer("uint32_t[]", got[1]))
        total = n * self.head_size + sum(map(len, data))
        if total > _U32_MAX:
            return None
        blob = _new_unzeroed("uint8_t[]", max(total, 1))
        at = _new_unzeroed("uint32_t[]", n)
        out_len = _new_unzeroed("uint32_t[]", n)
        got = _lib.slk_rows_pack(n, self.bitmap_size, len(fixed), self._c_fixed_sizes,
                                 _ffi.new("uint8_t *[]", fixed or 1),
                                 len(data), _ffi.new("uint8_t *[]", data or 1),
                                 _ffi.new("uint32_t *[]", lens or 1), MAX_TUPLE_DATA_BYTES,
                                 blob, at, out_len)
        if got < 0:   # a row too large: the per-row encoder names it
            return None
        assert got == total, (got, total)
        return PackedRows(blob, n, at, out_len, total)

    def decode_run_py(self, buf: bytes, starts: Sequence[int], ends: Sequence[int]) -> list[tuple]:
        """Reference of ``decode_run``: each row ``buf[starts[i]:ends[i]]`` decoded alone."""
        decode = self.decode
        return [decode(buf[s:e]) for s, e in zip(starts, ends, strict=True)]

    def decode_run(self, buf: bytes, starts: Sequence[int], ends: Sequence[int]) -> list[tuple]:
        """The rows ``buf[starts[i]:ends[i]]`` (``buf`` bytes, e.g. a run of heap pages),
        decoded as ``decode`` does each, with the same errors. One C call lays the run
        out column by column (``slk_row_layout``, into this thread's scratch arrays,
        ``layout_scratch``), then ``rows_from_layout`` builds the rows. Rows with a NULL,
        or that do not decode, go row by row (which raises naming the flaw)."""
        n = len(starts)
        if _lib is None or n == 0 or n < DECODE_RUN_C_MIN_ROWS or type(buf) is not bytes:
            return self.decode_run_py(buf, starts, ends)
        sc = layout_scratch(n, len(buf), len(self._var), self.fixed_size)
        sc.starts[0:n] = starts
        sc.ends[0:n] = ends
        nb, nfixed, fixed_sizes, nvar = self.layout_args
        if nvar and len(buf) >= n * DECODE_SLICE_MIN_ROW_BYTES and _ROW_BOUNDS is not None:
            got = _ROW_BOUNDS(_ffi.from_buffer(buf), n, sc.starts, sc.ends, nb, nfixed,
                              fixed_sizes, nvar, sc.fixed_out, sc.var_out)
            rows = self.rows_from_layout(buf, n, sc, sliced=True) if got == 0 else None
            return self.decode_run_py(buf, starts, ends) if rows is None else rows
        got = _lib.slk_row_layout(_ffi.from_buffer(buf), n, sc.starts, sc.ends, nb, nfixed,
                                  fixed_sizes, nvar, sc.fixed_out, sc.var_out, sc.joined,
                                  sc.joined_len, sc.joined_ok)
        rows = self.rows_from_layout(buf, n, sc) if got == 0 else None
        return self.decode_run_py(buf, starts, ends) if rows is None else rows

    def field_at(self, i: int) -> int:
        """Where column ``i`` is in a row: a fixed-width column's byte offset in the fixed
        part, a text/bytea column's index among the variable-width ones."""
        if i in self._var:
            return self._var.index(i)
        return sum(size for j, _code, size in self._fixed_layout if j < i)

    @property
    def layout_args(self) -> tuple:
        """``slk_row_layout``'s schema arguments: (null bitmap bytes, fixed-width column
        count, their sizes as a C array, variable-width column count)."""
        return self.bitmap_size, len(self._fixed), self._c_fixed_sizes, len(self._var)

    def rows_from_layout(self, buf, n: int, sc, *, sliced: bool = False) -> list[tuple] | None:
        """The ``n`` rows a successful ``slk_row_layout`` (result 0) laid out into the
        scratch ``sc`` (``layout_scratch``) from ``buf`` (bytes, or a cffi buffer: slices
        of it are bytes): each fixed-width column one ``memoryview.cast().tolist()``, each
        text/bytea column one decode and split of its values joined by a separator byte
        none of them holds (or slices of ``buf``, when every ASCII byte is in some value,
        or ``sliced``: laid out by ``slk_row_bounds``, nothing joined).
        None when a text value is not UTF-8 (decode row by row: that raises naming it)."""
        cols: list = [None] * len(self.types)
        fixed_size = self.fixed_size
        if fixed_size:
            fixed = memoryview(_ffi.buffer(sc.fixed_out, n * fixed_size))
            at = 0
            for i, code, size in self._fixed_layout:
                part = fixed[n * at:n * (at + size)]
                # bool: any non-zero byte is True, as struct's "?" reads it
                cols[i] = list(map(_bool, part)) if code == "?" else part.cast(code).tolist()
                at += size
        nvar = len(self._var)
        if nvar:
            values = _ffi.buffer(sc.joined)
            joined_len, joined_ok = sc.joined_len, sc.joined_ok
            at = 0
            bounds = None
            for j, i in enumerate(self._var):
                size = joined_len[j]
                text = self._text_var[j]
                try:
                    sep = 0 if sliced else joined_ok[j]  # the separator byte + 1, or 0: slice
                    if sep:
                        if text:
                            part = str(sc.joined_view[at:at + size], "utf-8")
                            cols[i] = part.split(_SEP_STR[sep])
                        else:
                            cols[i] = values[at:at + size].split(_SEP_BYTES[sep])
                    else:
                        if bounds is None:
                            bounds = memoryview(_ffi.buffer(sc.var_out, 8 * nvar * n)).cast("I").tolist()
                        b = 2 * j * n
                        pairs = zip(bounds[b:b + n], bounds[b + n:b + 2 * n], strict=True)
                        cols[i] = [buf[s:e].decode() for s, e in pairs] if text else \
                            [buf[s:e] for s, e in pairs]
                except UnicodeDecodeError:
                    return None
                at += size
        return list(zip(*cols, strict=True))

    def rows_from_scan(self, buf, n: int, sc) -> list[tuple] | None:
        """The ``n`` rows a ``slk_heap_scan_rows`` call (layout 0) laid out into the
        scratch ``sc`` from ``buf`` (bytes, or a cffi buffer: slices of it are bytes): each
        fixed-width column one ``memoryview.cast().tolist()``; a text/bytea column joined
        at a separator (joined_ok = separator + 2) one decode (text) and split; a text
        column joined with character bounds (joined_ok 1) one decode and a slice of it
        per value (each value starts where the one before ends: only the ends are read);
        any other (0) slices of ``buf`` by their byte bounds, decoded one by one if text.
        None when a text value is not UTF-8 (decode row by row: that raises naming it)."""
        cols: list = [None] * len(self.types)
        if self.fixed_size:
            fixed = sc.fixed_view
            for i, code, at, size in self._fixed_plan:
                part = fixed[n * at:n * (at + size)]
                # bool: any non-zero byte is True, as struct's "?" reads it
                cols[i] = list(map(_bool, part)) if code == "?" else part.cast(code).tolist()
        if self._var:
            joined, joined_len, joined_ok = sc.joined_view, sc.joined_len, sc.joined_ok
            at = 0
            try:
                for j, i, text in self._var_plan:
                    size = joined_len[j]
                    mode = joined_ok[j]
                    if mode == 1:
                        ends = sc.chars_view[(2 * j + 1) * n:(2 * j + 2) * n].tolist()
                        part = str(joined[at:at + size], "utf-8")
                        # (slices in a comprehension: BUILD_SLICE reuses a cached slice
                        # object and subscripts directly, ~25% fewer instructions a value
                        # than map over slice objects through the method wrapper)
                        cols[i] = [part[s:e] for s, e in zip([0, *ends[:-1]], ends, strict=False)]
                    elif mode:
                        part = joined[at:at + size]
                        cols[i] = str(part, "utf-8").split(_SEP_STR[mode - 1]) if text else \
                            bytes(part).split(_SEP_BYTES[mode - 1])
                    else:
                        bounds = sc.var_view[2 * j * n:(2 * j + 2) * n].tolist()
                        pairs = zip(bounds[:n], bounds[n:], strict=True)
                        cols[i] = [buf[s:e].decode() for s, e in pairs] if text else \
                            [buf[s:e] for s, e in pairs]
                    at += size
            except UnicodeDecodeError:
                return None
        return list(zip(*cols, strict=True))

    def __repr__(self) -> str:
        return f"RowCodec({list(self.columns)!r})"

    # --- slow paths of the generated code: rare values and errors ----------------------------
    def _bad(self, i: int, value: object) -> None:
        name, typ = self.columns[i]
        raise TypeError(f"column {name!r} is {typ}; got {type(value).__name__} {value!r:.60}")

    def _coerce(self, i: int, value: object) -> object:
        """A value of an unusual type (a subclass, an int for float8): convert or raise."""
        name, typ = self.columns[i]
        if typ == "int8":
            if isinstance(value, int) and not isinstance(value, bool):
                value = int(value)
                if not _INT8_MIN <= value <= _INT8_MAX:
                    raise ValueError(f"column {name!r} is int8; {value} is out of range "
                                     f"{_INT8_MIN}..{_INT8_MAX}")
                return value
        elif typ == "float8":
            if isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    return float(value)
                except OverflowError:
                    raise ValueError(f"column {name!r} is float8; {value} is out of its "
                                     f"range") from None
        elif typ == "bool":
            if isinstance(value, bool):
                return bool(value)
        elif typ == "text":
            if isinstance(value, str):
                try:
                    return str(value).encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"column {name!r} is text; the string cannot be encoded "
                                     f"as UTF-8 ({e.reason} at index {e.start})") from None
        elif isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        self._bad(i, value)
        raise AssertionError("unreachable")

    def _wrong_shape(self, row: object) -> None:
        if not isinstance(row, tuple | list):
            raise TypeError(f"row must be a tuple or list of {len(self.columns)} values, not "
                            f"{type(row).__name__}")
        raise ValueError(f"row has {len(row)} values; the table has {len(self.columns)} "
                         f"columns {list(self.names)}")

    def _short(self, data: bytes, expected: int | None) -> None:
        if expected is None:
            raise TupleFormatError(f"row data of {len(data)} bytes is shorter than its "
                                   f"{self.head_size}-byte header (null bitmap, fixed-width "
                                   f"values, lengths)")
        raise TupleFormatError(f"row data is {len(data)} bytes but its header and value "
                               f"lengths add up to {expected}")

    def _bad_text(self, i: int, e: UnicodeDecodeError) -> None:
        raise TupleFormatError(f"column {self.names[i]!r} (text) holds invalid UTF-8 at byte "
                               f"{e.start}: {e.reason}")


def _too_large(size: int) -> None:
    raise TupleTooLargeError(size, "row data")


def _check_columns(columns: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    if isinstance(columns, str | bytes) or not isinstance(columns, Sequence):
        raise TypeError(f"columns must be a sequence of (name, type) pairs, not "
                        f"{type(columns).__name__}")
    if not 1 <= len(columns) <= MAX_COLUMNS:
        raise ValueError(f"a table has 1..{MAX_COLUMNS} columns, got {len(columns)}")
    out = []
    seen = set()
    for k, col in enumerate(columns):
        if not isinstance(col, tuple | list) or len(col) != 2:
            raise TypeError(f"columns[{k}] must be a (name, type) pair, got {col!r}")
        name, typ = col
        if not isinstance(name, str) or not name:
            raise TypeError(f"columns[{k}]: a column name must be a non-empty str, got {name!r}")
        if name in seen:
            raise ValueError(f"column {name!r} appears twice")
        if typ not in COLUMN_TYPES:
            raise ValueError(f"column {name!r}: unknown type {typ!r}; the types are "
                             f"{', '.join(COLUMN_TYPES)}")
        seen.add(name)
        out.append((name, typ))
    return tuple(out)


def _generate(codec: RowCodec) -> str:
    """Python source of ``encode(row)`` and ``decode(data)`` for the codec's schema.

    Only column indexes and type-derived constants go into the source, never names.
    """
    types = codec.types
    ncols = len(types)
    nb = codec.bitmap_size
    enc = ["def encode(row):",
           f"    if (type(row) is not tuple and type(row) is not list) or _len(row) != {ncols}:",
           "        _wrong_shape(row)"]
    enc.append(f"    ({', '.join(f'v{i}' for i in range(ncols))},) = row")
    enc.append("    nulls = 0")
    for i, t in enumerate(types):
        enc.append(f"    if v{i} is None:")
        enc.append(f"        nulls |= {1 << i}")
        if t == "int8":
            enc += [f"        v{i} = 0",
                    f"    elif type(v{i}) is not _int or not {_INT8_MIN} <= v{i} <= {_INT8_MAX}:",
                    f"        v{i} = _coerce({i}, v{i})"]
        elif t == "float8":
            enc += [f"        v{i} = 0.0",
                    f"    elif type(v{i}) is not _float:",
                    f"        v{i} = _coerce({i}, v{i})"]
        elif t == "bool":
            enc += [f"        v{i} = False",
                    f"    elif type(v{i}) is not _bool:",
                    f"        v{i} = _coerce({i}, v{i})"]
        elif t == "text":
            enc += [f"        v{i} = b''",
                    f"    elif type(v{i}) is _str and v{i}.isascii():",
                    f"        v{i} = v{i}.encode()",
                    "    else:",
                    f"        v{i} = _coerce({i}, v{i})"]
        else:  # bytea
            enc += [f"        v{i} = b''",
                    f"    elif type(v{i}) is not _bytes:",
                    f"        v{i} = _coerce({i}, v{i})"]
    head_args = ([f"v{i}" for i in codec._fixed] + [f"_len(v{i})" for i in codec._var])
    parts = [f"nulls.to_bytes({nb}, 'little')", f"_pack({', '.join(head_args)})"]
    parts += [f"v{i}" for i in codec._var]
    enc.append(f"    out = b''.join(({', '.join(parts)},))")
    enc.append("    if _len(out) > _MAX:")
    enc.append("        _too_large(_len(out))")
    enc.append("    return out")

    fixed_names = [f"v{i}" for i in codec._fixed]
    len_names = [f"n{i}" for i in codec._var]
    total = " + ".join([str(codec.head_size)] + len_names)
    dec = ["def decode(data):",
           "    if type(data) is not _bytes:",
           "        data = _bytes(data)",
           f"    if _len(data) < {codec.head_size}:",
           "        _short(data, None)",
           f"    ({', '.join(fixed_names + len_names)},) = _unpack(data, {nb})"]
    if codec._var:
        dec += [f"    if {total} != _len(data):",
                f"        _short(data, {total})",
                f"    pos = {codec.head_size}"]
        for i in codec._var:
            dec.append(f"    end = pos + n{i}")
            if types[i] == "text":
                dec += ["    try:",
                        f"        v{i} = _str(data[pos:end], 'utf-8')",
                        "    except UnicodeDecodeError as e:",
                        f"        _bad_text({i}, e)"]
            else:
                dec.append(f"    v{i} = data[pos:end]")
            dec.append("    pos = end")
    else:
        dec += [f"    if _len(data) != {codec.head_size}:",
                f"        _short(data, {codec.head_size})"]
    dec += [f"    nulls = _from_bytes(data[:{nb}], 'little')",
            f"    row = ({', '.join(f'v{i}' for i in range(ncols))},)",
            "    if nulls:",
            "        row = tuple(None if nulls >> i & 1 else v for i, v in enumerate(row))",
            "    return row"]
    return "\n".join(enc) + "\n\n\n" + "\n".join(dec) + "\n"
