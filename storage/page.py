"""The 8 KiB page: header, line pointers, items, checksum and verification. Pure, no I/O.

Every function takes the page as a buffer (``bytes``, ``bytearray``, ``memoryview``, an
``mmap`` slice) of exactly ``BLCKSZ`` bytes; the mutating ones change a writable buffer in
place. Nothing here reads or writes a file.

Layout (all integers little-endian)::

    0        24                        lower           upper                 special   8192
    +--------+-----+-----+-----+-------+---------------+---------+-----+------+---------+
    | header | lp1 | lp2 | ... | lp N  |  free (zero)  | item N  | ... | item1| special |
    +--------+-----+-----+-----+-------+---------------+---------+-----+------+---------+
              line pointers grow -->                     <-- items grow down from special

    header (24 bytes, struct "<QIHHHHHH")
      0..8    lsn        u64  LSN of the last WAL record that changed the page
      8..12   checksum   u32  CRC-32C, see below
     12..14   flags      u16  PD_HAS_FREE_LINES | PD_PAGE_FULL | PD_ALL_VISIBLE
     14..16   lower      u16  end of the line pointer array = start of free space
     16..18   upper      u16  end of free space = start of the lowest item
     18..20   special    u16  start of the special space (BLCKSZ when there is none)
     20..22   version    u16  PAGE_LAYOUT_VERSION
     22..24   reserved   u16  zero

    line pointer (4 bytes, one u32): bits 0..14 item offset, 15..16 LpFlag, 17..31 length

Line pointers are numbered from 1 (``offnum``, PostgreSQL's OffsetNumber); line pointer N
sits at ``HEADER_SIZE + 4 * (N - 1)``. A tuple's address is (block, offnum), so an offnum
never changes while its item lives.

The checksum is CRC-32C of the page with the checksum field read as zero, continued over
``pack("<IBI", relnumber, fork, block)``: a page that lands in the wrong block, fork or
relation fails as surely as one with a flipped bit. It is computed over memoryview slices
without copying the page. Measured here with timeit (best of 7 x 200k, a page in an mmap,
crc32c 2.9 on SSE4.2): page_checksum 0.98 us per page, of which the CRC of 8 KiB itself is
0.37 us and the rest call overhead; verify_page 1.3 us for a valid page, 0.7 us for a new one.
``PageRunVerifier`` checks a run of pages in one call to the optional C module
(``storage/_pagecheck_build.py``): 0.26 us per page for a 16-page run with the page in CPU
cache; ``verify_page`` stays the reference and explains every page the C code flags.

Invariants (``page_check`` tests 1-6 on a whole page; ``verify_page`` tests 1-2 and 8):

1. A page is ``BLCKSZ`` bytes. An all-zero page is a valid new page; any other page has
   a valid header (rule 2), so a zero header over nonzero bytes is corruption.
2. ``version == PAGE_LAYOUT_VERSION``, ``reserved == 0``, ``flags`` has only
   ``PD_VALID_FLAG_BITS``, ``HEADER_SIZE <= lower <= upper <= special <= BLCKSZ``,
   ``lower`` ends a whole line pointer, ``upper`` and ``special`` are MAXALIGNed.
3. A NORMAL line pointer, and a DEAD one until compaction drops its storage, points at
   ``length > 0`` bytes at a MAXALIGNed offset inside ``[upper, special)``; the
   MAXALIGNed extents of items never overlap. UNUSED has offset = length = 0; REDIRECT
   (kept for layout compatibility, never created here) has length 0.
4. Line pointers move only along ``LP_TRANSITIONS``: UNUSED -> NORMAL (``page_add_item``),
   NORMAL -> DEAD (``page_set_item_flags``), NORMAL/DEAD/REDIRECT -> UNUSED
   (``page_delete_item``). Compaction keeps every offnum; it only truncates trailing
   UNUSED line pointers.
5. The free gap ``[lower, upper)`` is all zero (init zeroes it, items are written with
   zero padding, compaction re-zeroes what it frees), so a full-page image may omit it.
6. ``PD_HAS_FREE_LINES`` clear implies no UNUSED line pointer (set, it is only a hint).
7. Every mutation leaves the checksum stale: ``page_set_checksum`` is the last step
   before a page is written, and ``verify_page`` the first after it is read.
8. ``verify_page`` checks the cheap header before the checksum and never raises on bad
   bytes; the page operations raise ``PageCorruptError`` naming the field instead.
"""

from __future__ import annotations

import struct
import threading
from enum import IntEnum
from itertools import pairwise
from typing import NamedTuple

import crc32c
from slonik.storage.errors import DataCorruptionError
from slonik.storage.hotlib import hot_for

__all__ = [
    "BLCKSZ", "ZERO_PAGE", "HEADER_SIZE", "LINE_POINTER_SIZE", "MAXIMUM_ALIGNOF",
    "PAGE_LAYOUT_VERSION", "LSN_OFFSET", "CHECKSUM_OFFSET", "CHECKSUM_SIZE", "FLAGS_OFFSET",
    "LOWER_OFFSET", "UPPER_OFFSET", "SPECIAL_OFFSET", "VERSION_OFFSET", "RESERVED_OFFSET",
    "FIRST_OFFSET_NUMBER", "PD_HAS_FREE_LINES", "PD_PAGE_FULL", "PD_ALL_VISIBLE",
    "PD_VALID_FLAG_BITS", "LpFlag", "LP_TRANSITIONS", "PageStatus", "PageVerify", "PageHeader",
    "PageCorruptError", "PageFullError", "maxalign", "init_page", "page_is_new",
    "page_header", "page_get_lsn", "page_set_lsn", "page_set_flags", "page_item_count",
    "page_free_space", "max_item_size", "page_add_item", "page_get_item", "page_item_flags",
    "page_set_item_flags", "page_delete_item", "page_compact", "page_get_special",
    "page_checksum", "page_set_checksum", "verify_page", "page_check", "PageRunVerifier",
    "C_VERIFIER",
]

BLCKSZ = 8192  # bytes per page, as PostgreSQL's default; offsets must fit 15 bits
PAGE_LAYOUT_VERSION = 1
MAXIMUM_ALIGNOF = 8  # items start on 8-byte boundaries (PostgreSQL's MAXALIGN on x86-64)

_HEADER = struct.Struct("<QIHHHHHH")
HEADER_SIZE = _HEADER.size  # 24
LSN_OFFSET = 0
CHECKSUM_OFFSET = 8
CHECKSUM_SIZE = 4
FLAGS_OFFSET = 12
LOWER_OFFSET = 14
UPPER_OFFSET = 16
SPECIAL_OFFSET = 18
VERSION_OFFSET = 20
RESERVED_OFFSET = 22
assert HEADER_SIZE == 24 and RESERVED_OFFSET + 2 == HEADER_SIZE

_LP = struct.Struct("<I")
LINE_POINTER_SIZE = _LP.size  # 4
FIRST_OFFSET_NUMBER = 1
_LP_OFFSET_MASK = 0x7FFF  # 15 bits
_LP_FLAGS_SHIFT = 15
_LP_LENGTH_SHIFT = 17
assert BLCKSZ - 1 <= _LP_OFFSET_MASK and BLCKSZ % MAXIMUM_ALIGNOF == 0

PD_HAS_FREE_LINES = 0x1  # hint: some line pointer may be UNUSED
PD_PAGE_FULL = 0x2  # hint for callers: the last update found no room
PD_ALL_VISIBLE = 0x4  # every tuple is visible to everyone
PD_VALID_FLAG_BITS = PD_HAS_FREE_LINES | PD_PAGE_FULL | PD_ALL_VISIBLE

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TAG = struct.Struct("<IBI")  # relnumber, fork, block mixed into the checksum
ZERO_PAGE = bytes(BLCKSZ)  # an all-zero page (bytes: read-only, shared)
_ZERO_CHECKSUM = bytes(CHECKSUM_SIZE)
_crc = crc32c.crc32c

try:  # the optional C verifier (storage/_pagecheck_build.py); pure Python without it
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    _lib.slk_pagecheck_init()
except ImportError:  # not built (no C compiler at install time)
    _ffi = _lib = None
C_VERIFIER = _lib is not None  # whether PageRunVerifier checks runs in C
# The run verifier keeps the GIL (storage/hotlib.py): it runs in the thread that completes
# a read, often an I/O worker whose GIL hand-off and take-back around a ~10 us call cost
# more than the call (a worker-method cold scan made 29% fewer futex calls).
_verify_pages = None if _lib is None else \
    getattr(hot_for(_lib), "slk_verify_pages", _lib.slk_verify_pages)  # (an older build lacks it)


class _VerifyStatus(threading.local):
    """A thread's status array for ``PageRunVerifier.verify`` (one uint8 per page, written
    by the C verifier for every page of a call and read before the call returns), kept
    between calls instead of an ``ffi.new`` per call (~240 ns per pool miss); it grows to
    the longest run the thread verified. Class defaults: no array yet."""

    array = None
    pages = 0


_VERIFY_STATUS = _VerifyStatus()


class LpFlag(IntEnum):
    """State of a line pointer (PostgreSQL's lp_flags)."""

    UNUSED = 0  # free for reuse; offset = length = 0
    NORMAL = 1  # points at a live item
    REDIRECT = 2  # offset holds another offnum, length 0 (not created by this module)
    DEAD = 3  # item is dead; storage kept until compaction


# Legal line pointer state changes (invariant 4). Into NORMAL only through page_add_item.
LP_TRANSITIONS: dict[LpFlag, frozenset[LpFlag]] = {
    LpFlag.UNUSED: frozenset({LpFlag.NORMAL}),
    LpFlag.NORMAL: frozenset({LpFlag.DEAD, LpFlag.UNUSED}),
    LpFlag.DEAD: frozenset({LpFlag.UNUSED}),
    LpFlag.REDIRECT: frozenset({LpFlag.UNUSED}),
}


class PageStatus(IntEnum):
    """Outcome of ``verify_page``."""

    VALID = 0  # header sane, checksum matches
    NEW = 1  # all zero: a valid, never-initialised page
    BAD_CHECKSUM = 2  # header sane, checksum does not match this relation/fork/block
    BAD_HEADER = 3  # header fields impossible (checksum not looked at)


class PageVerify(NamedTuple):
    """Result of ``verify_page``: a status and, unless VALID/NEW, a sentence saying why."""

    status: PageStatus
    reason: str


class PageHeader(NamedTuple):
    """The decoded 24-byte page header, fields in on-page order."""

    lsn: int
    checksum: int
    flags: int
    lower: int
    upper: int
    special: int
    version: int
    reserved: int


class PageCorruptError(DataCorruptionError):
    """A page whose header or line pointers are impossible; the message names the field."""


class PageFullError(ValueError):
    """An item does not fit in the page's free space; says how much was needed and free."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


_VALID = PageVerify(PageStatus.VALID, "")
_NEW = PageVerify(PageStatus.NEW, "")


def maxalign(n: int) -> int:
    """``n`` rounded up to a multiple of ``MAXIMUM_ALIGNOF``."""
    return (n + MAXIMUM_ALIGNOF - 1) & ~(MAXIMUM_ALIGNOF - 1)


# ---------------------------------------------------------------------------- helpers


def _view(buf, name: str = "buf", *, writable: bool = False) -> memoryview:
    """``buf`` as a flat byte memoryview of exactly BLCKSZ bytes (misuse -> Type/ValueError)."""
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"{name} must be a bytes-like object, not {type(buf).__name__}") from None
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if len(mv) != BLCKSZ:
        raise ValueError(f"{name} must be {BLCKSZ} bytes, got {len(mv)}")
    if writable and mv.readonly:
        raise TypeError(f"{name} must be a writable buffer (bytearray, mmap, ...), not read-only")
    return mv


def _header_problem(flags: int, lower: int, upper: int, special: int, version: int,
                    reserved: int) -> str | None:
    """Why these header fields are impossible (invariant 2), or None if they are fine."""
    if version != PAGE_LAYOUT_VERSION:
        return f"layout version {version}, expected {PAGE_LAYOUT_VERSION}"
    if reserved != 0:
        return f"reserved field {reserved:#06x}, expected 0"
    if flags & ~PD_VALID_FLAG_BITS:
        return f"flags {flags:#06x} has unknown bits {flags & ~PD_VALID_FLAG_BITS:#06x}"
    if lower < HEADER_SIZE:
        return f"lower {lower} < header size {HEADER_SIZE}"
    if lower > upper:
        return f"lower {lower} > upper {upper}"
    if upper > special:
        return f"upper {upper} > special {special}"
    if special > BLCKSZ:
        return f"special {special} > page size {BLCKSZ}"
    if special % MAXIMUM_ALIGNOF:
        return f"special {special} is not a multiple of {MAXIMUM_ALIGNOF}"
    if upper % MAXIMUM_ALIGNOF:
        return f"upper {upper} is not a multiple of {MAXIMUM_ALIGNOF}"
    if (lower - HEADER_SIZE) % LINE_POINTER_SIZE:
        return f"lower {lower} does not end a whole {LINE_POINTER_SIZE}-byte line pointer"
    return None


def _header(mv: memoryview) -> tuple[int, int, int, int]:
    """(flags, lower, upper, special) of an initialised page, else PageCorruptError."""
    _lsn, _checksum, flags, lower, upper, special, version, reserved = _HEADER.unpack_from(mv)
    if lower == 0 and ZERO_PAGE.startswith(mv):
        raise ValueError("buf is a new (all-zero) page; call init_page() first")
    problem = _header_problem(flags, lower, upper, special, version, reserved)
    if problem is not None:
        raise PageCorruptError(f"invalid page header: {problem}")
    return flags, lower, upper, special


def _lp_position(lower: int, offnum: int) -> int:
    """Byte position of line pointer ``offnum``; ValueError if there is no such offnum."""
    count = (lower - HEADER_SIZE) // LINE_POINTER_SIZE
    if not FIRST_OFFSET_NUMBER <= offnum <= count:
        raise ValueError(f"offnum {offnum} out of range {FIRST_OFFSET_NUMBER}..{count}")
    return HEADER_SIZE + (offnum - 1) * LINE_POINTER_SIZE


def _lp_decode(value: int) -> tuple[int, int, int]:
    """(offset, flags, length) of a packed line pointer."""
    return (value & _LP_OFFSET_MASK, (value >> _LP_FLAGS_SHIFT) & 0x3,
            value >> _LP_LENGTH_SHIFT)


def _lp_encode(offset: int, flags: int, length: int) -> int:
    return offset | (flags << _LP_FLAGS_SHIFT) | (length << _LP_LENGTH_SHIFT)


def _item_problem(offnum: int, offset: int, length: int, upper: int, special: int) -> str | None:
    """Why a line pointer with storage cannot be right (invariant 3), or None."""
    if length == 0:
        return f"line pointer {offnum}: length 0 for an item with storage"
    if offset < upper:
        return f"line pointer {offnum}: item offset {offset} is below upper {upper}"
    if offset + length > special:
        return (f"line pointer {offnum}: item offset {offset} + length {length} "
                f"exceeds special {special}")
    if offset % MAXIMUM_ALIGNOF:
        return f"line pointer {offnum}: item offset {offset} is not a multiple of {MAXIMUM_ALIGNOF}"
    return None


# ---------------------------------------------------------------------------- header


def init_page(buf, special_size: int = 0) -> None:
    """Zero ``buf`` and make it an empty page with ``special_size`` (MAXALIGNed) bytes of special space."""
    mv = _view(buf, writable=True)
    if not isinstance(special_size, int) or special_size < 0:
        raise ValueError(f"special_size must be a non-negative int, got {special_size!r}")
    special = BLCKSZ - maxalign(special_size)
    if special < HEADER_SIZE + LINE_POINTER_SIZE + MAXIMUM_ALIGNOF:
        raise ValueError(f"special_size {special_size} leaves no room for an item in a "
                         f"{BLCKSZ}-byte page")
    mv[:] = ZERO_PAGE
    _HEADER.pack_into(mv, 0, 0, 0, 0, HEADER_SIZE, special, special, PAGE_LAYOUT_VERSION, 0)


def page_is_new(buf) -> bool:
    """True if the page is all zero (a block that was extended but never initialised)."""
    mv = _view(buf)
    return ZERO_PAGE.startswith(mv)  # one memcmp; `mv == bytes` compares item by item


def page_header(buf) -> PageHeader:
    """The decoded header, unchecked (for diagnostics; the operations check it themselves)."""
    return PageHeader(*_HEADER.unpack_from(_view(buf)))


def page_get_lsn(buf) -> int:
    """The page LSN: WAL must be flushed up to here before the page is written."""
    return _U64.unpack_from(_view(buf), LSN_OFFSET)[0]


def page_set_lsn(buf, lsn: int) -> None:
    """Set the page LSN (a u64)."""
    mv = _view(buf, writable=True)
    if not isinstance(lsn, int) or not 0 <= lsn < 1 << 64:
        raise ValueError(f"lsn must be an int in 0..2**64-1, got {lsn!r}")
    _U64.pack_into(mv, LSN_OFFSET, lsn)


def page_set_flags(buf, flags: int) -> None:
    """Replace the header flags (a combination of the PD_* bits)."""
    mv = _view(buf, writable=True)
    _header(mv)
    if not isinstance(flags, int) or flags < 0 or flags & ~PD_VALID_FLAG_BITS:
        raise ValueError(f"flags must combine PD_* bits {PD_VALID_FLAG_BITS:#x}, got {flags!r}")
    _U16.pack_into(mv, FLAGS_OFFSET, flags)


def page_get_special(buf) -> memoryview:
    """The special space ``[special, BLCKSZ)`` as a view into ``buf`` (empty if none)."""
    mv = _view(buf)
    _flags, _lower, _upper, special = _header(mv)
    return mv[special:]


# ---------------------------------------------------------------------------- items


def page_item_count(buf) -> int:
    """Number of line pointers (the largest offnum), whatever their state."""
    _flags, lower, _upper, _special = _header(_view(buf))
    return (lower - HEADER_SIZE) // LINE_POINTER_SIZE


def page_free_space(buf) -> int:
    """The largest item ``page_add_item`` accepts now, assuming it needs a new line pointer.

    Conservative like PostgreSQL's PageGetFreeSpace: reusing an UNUSED line pointer saves 4
    more bytes. Rounded down to MAXALIGN so that an item of exactly this size fits.
    """
    _flags, lower, upper, _special = _header(_view(buf))
    room = upper - lower - LINE_POINTER_SIZE
    return room - room % MAXIMUM_ALIGNOF if room > 0 else 0


def max_item_size(special_size: int = 0) -> int:
    """The largest item an empty page with ``special_size`` bytes of special space holds."""
    room = BLCKSZ - maxalign(special_size) - HEADER_SIZE - LINE_POINTER_SIZE
    return room - room % MAXIMUM_ALIGNOF


def page_add_item(buf, data, offnum: int | None = None) -> int:
    """Store ``data`` as a NORMAL item and return its offnum.

    Without ``offnum``, an UNUSED line pointer is reused when the page has one, else a new
    one is appended. With ``offnum`` (WAL redo puts an item back where it was), that line
    pointer must be UNUSED or the next new one. PageFullError when it does not fit.
    """
    mv = _view(buf, writable=True)
    try:
        item = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
    length = item.nbytes
    if length == 0:
        raise ValueError("data is empty; an item needs at least one byte")
    flags, lower, upper, special = _header(mv)
    count = (lower - HEADER_SIZE) // LINE_POINTER_SIZE

    if offnum is None:
        offnum = count + 1
        if flags & PD_HAS_FREE_LINES:
            for i, (value,) in enumerate(_LP.iter_unpack(mv[HEADER_SIZE:lower]), 1):
                if (value >> _LP_FLAGS_SHIFT) & 0x3 == LpFlag.UNUSED:
                    offnum = i
                    break
            else:  # the hint was stale: remember that there is nothing to reuse
                flags &= ~PD_HAS_FREE_LINES
                _U16.pack_into(mv, FLAGS_OFFSET, flags)
    elif not isinstance(offnum, int) or not FIRST_OFFSET_NUMBER <= offnum <= count + 1:
        raise ValueError(f"offnum {offnum!r} out of range {FIRST_OFFSET_NUMBER}..{count + 1}")
    elif offnum <= count:
        position = HEADER_SIZE + (offnum - 1) * LINE_POINTER_SIZE
        state = LpFlag((_LP.unpack_from(mv, position)[0] >> _LP_FLAGS_SHIFT) & 0x3)
        if state != LpFlag.UNUSED:
            raise ValueError(f"offnum {offnum} is in use ({state.name}), not UNUSED")

    new_lower = lower + LINE_POINTER_SIZE if offnum == count + 1 else lower
    aligned = maxalign(length)
    if upper - aligned < new_lower:
        needed = aligned + new_lower - lower
        raise PageFullError(
            f"item of {length} bytes needs {needed} bytes ({aligned} aligned"
            f"{' + 4 for a line pointer' if new_lower != lower else ''}), "
            f"page has {upper - lower} free", needed=needed, available=upper - lower)
    new_upper = upper - aligned
    mv[new_upper:new_upper + length] = item if item.format == "B" and item.ndim == 1 else item.cast("B")
    mv[new_upper + length:upper] = ZERO_PAGE[:aligned - length]
    _LP.pack_into(mv, HEADER_SIZE + (offnum - 1) * LINE_POINTER_SIZE,
                  _lp_encode(new_upper, LpFlag.NORMAL, length))
    _U16.pack_into(mv, LOWER_OFFSET, new_lower)
    _U16.pack_into(mv, UPPER_OFFSET, new_upper)
    return offnum


def page_get_item(buf, offnum: int) -> memoryview:
    """The item at ``offnum`` as a view into ``buf`` (writable if ``buf`` is).

    ValueError if ``offnum`` is out of range or has no storage (UNUSED, REDIRECT, or DEAD
    after compaction); PageCorruptError if its line pointer points outside the items area.
    """
    mv = _view(buf)
    _flags, lower, upper, special = _header(mv)
    position = _lp_position(lower, offnum)
    offset, state, length = _lp_decode(_LP.unpack_from(mv, position)[0])
    if state == LpFlag.UNUSED or state == LpFlag.REDIRECT or (state == LpFlag.DEAD and not length):
        raise ValueError(f"offnum {offnum} is {LpFlag(state).name} and has no storage")
    problem = _item_problem(offnum, offset, length, upper, special)
    if problem is not None:
        raise PageCorruptError(f"corrupted line pointer: {problem}")
    return mv[offset:offset + length]


def page_item_flags(buf, offnum: int) -> LpFlag:
    """State of the line pointer at ``offnum``."""
    mv = _view(buf)
    _flags, lower, _upper, _special = _header(mv)
    value = _LP.unpack_from(mv, _lp_position(lower, offnum))[0]
    return LpFlag((value >> _LP_FLAGS_SHIFT) & 0x3)


def page_set_item_flags(buf, offnum: int, flags: LpFlag) -> None:
    """Move the line pointer at ``offnum`` to state ``flags`` along ``LP_TRANSITIONS``.

    DEAD keeps the item's storage until ``page_compact``; UNUSED drops it at once (the
    bytes are reclaimed by ``page_compact``). NORMAL is reached only by ``page_add_item``.
    """
    mv = _view(buf, writable=True)
    target = LpFlag(flags)
    page_flags, lower, _upper, _special = _header(mv)
    position = _lp_position(lower, offnum)
    offset, state, length = _lp_decode(_LP.unpack_from(mv, position)[0])
    state = LpFlag(state)
    if target not in LP_TRANSITIONS[state] or target == LpFlag.NORMAL:
        raise ValueError(f"offnum {offnum}: line pointer cannot go from {state.name} to "
                         f"{target.name}")
    if target == LpFlag.UNUSED:
        _LP.pack_into(mv, position, 0)
        _U16.pack_into(mv, FLAGS_OFFSET, page_flags | PD_HAS_FREE_LINES)
    else:
        _LP.pack_into(mv, position, _lp_encode(offset, target, length))


def page_delete_item(buf, offnum: int) -> None:
    """Mark the line pointer at ``offnum`` UNUSED; ``page_compact`` reclaims the bytes."""
    page_set_item_flags(buf, offnum, LpFlag.UNUSED)


def page_compact(buf) -> None:
    """Defragment (PostgreSQL's PageRepairFragmentation).

    NORMAL items slide together against ``special`` in their existing physical order and
    keep their offnums; DEAD line pointers stay DEAD but lose their storage; trailing
    UNUSED line pointers are truncated; the freed gap is zeroed; PD_HAS_FREE_LINES is set
    exactly when UNUSED line pointers remain.
    """
    mv = _view(buf, writable=True)
    flags, lower, upper, special = _header(mv)
    line_pointers = [_lp_decode(v) for (v,) in _LP.iter_unpack(mv[HEADER_SIZE:lower])]
    items = []  # (offset, length, offnum) of NORMAL items
    for offnum, (offset, state, length) in enumerate(line_pointers, 1):
        if state == LpFlag.NORMAL:
            problem = _item_problem(offnum, offset, length, upper, special)
            if problem is not None:
                raise PageCorruptError(f"corrupted line pointer: {problem}")
            items.append((offset, length, offnum))
    items.sort(reverse=True)
    for (offset, _length, offnum), (below, below_length, below_offnum) in pairwise(items):
        if below + maxalign(below_length) > offset:
            raise PageCorruptError(f"corrupted line pointer: items {below_offnum} and {offnum} "
                                   f"overlap at offset {offset}")

    count = len(line_pointers)
    while count and line_pointers[count - 1][1] == LpFlag.UNUSED:
        count -= 1
    new_lower = HEADER_SIZE + count * LINE_POINTER_SIZE
    snapshot = bytes(mv[upper:special])  # items are read from here, so moves never clash
    area = bytearray(special - new_lower)  # gap + items, zero padded, written once
    position = special
    new_values = [0 if state == LpFlag.UNUSED else
                  _lp_encode(0, state, 0) if state == LpFlag.DEAD else
                  _lp_encode(offset, state, length)
                  for offset, state, length in line_pointers[:count]]
    for offset, length, offnum in items:
        position -= maxalign(length)
        start = position - new_lower
        area[start:start + length] = snapshot[offset - upper:offset - upper + length]
        new_values[offnum - 1] = _lp_encode(position, LpFlag.NORMAL, length)
    mv[new_lower:special] = area
    mv[HEADER_SIZE:new_lower] = struct.pack(f"<{count}I", *new_values)
    if any(state == LpFlag.UNUSED for _, state, _ in line_pointers[:count]):
        flags |= PD_HAS_FREE_LINES
    else:
        flags &= ~PD_HAS_FREE_LINES
    _U16.pack_into(mv, FLAGS_OFFSET, flags)
    _U16.pack_into(mv, LOWER_OFFSET, new_lower)
    _U16.pack_into(mv, UPPER_OFFSET, position)


# ---------------------------------------------------------------------------- checksum


def page_checksum(page, relnumber: int, fork: int, block: int) -> int:
    """CRC-32C of ``page`` (checksum field read as zero) continued over (relnumber, fork, block)."""
    return _checksum(_view(page, "page"), relnumber, fork, block)


def _checksum(mv: memoryview, relnumber: int, fork: int, block: int) -> int:
    try:
        tag = _TAG.pack(relnumber, fork, block)
    except struct.error:
        raise ValueError(f"relnumber {relnumber!r} and block {block!r} must be u32 and fork "
                         f"{fork!r} u8") from None
    crc = _crc(mv[:CHECKSUM_OFFSET])
    crc = _crc(_ZERO_CHECKSUM, crc)
    crc = _crc(mv[CHECKSUM_OFFSET + CHECKSUM_SIZE:], crc)
    return _crc(tag, crc)


def page_set_checksum(buf, relnumber: int, fork: int, block: int) -> None:
    """Store the checksum for this relation, fork and block in the page header."""
    mv = _view(buf, writable=True)
    _U32.pack_into(mv, CHECKSUM_OFFSET, _checksum(mv, relnumber, fork, block))


def verify_page(page, relnumber: int, fork: int, block: int) -> PageVerify:
    """Classify a page just read as block ``block`` of (relnumber, fork). Never raises on bad bytes."""
    mv = _view(page, "page")
    lsn, checksum, flags, lower, upper, special, version, reserved = _HEADER.unpack_from(mv)
    if not (lsn or checksum or flags or lower or upper or special or version or reserved):
        if ZERO_PAGE.startswith(mv):
            return _NEW
        last = len(mv.tobytes().rstrip(b"\0")) - 1  # rare path: where is the stray byte
        return PageVerify(PageStatus.BAD_HEADER, f"invalid page header: header is all zero but "
                                                 f"byte {last} is not")
    problem = _header_problem(flags, lower, upper, special, version, reserved)
    if problem is not None:
        return PageVerify(PageStatus.BAD_HEADER, f"invalid page header: {problem}")
    computed = _checksum(mv, relnumber, fork, block)
    if computed != checksum:
        return PageVerify(PageStatus.BAD_CHECKSUM, f"checksum mismatch: stored {checksum:#010x}, "
                                                   f"computed {computed:#010x}")
    return _VALID


class PageRunVerifier:
    """``verify_page`` for a run of pages held in one pool of whole pages, in one call.

    ``pool`` is a buffer of ``k * BLCKSZ`` bytes (the buffer manager's mapping); page ``i``
    of the pool is ``pool[i * BLCKSZ:(i + 1) * BLCKSZ]``. ``verify(page_ids, rel, fork,
    first_block)`` checks page ``page_ids[k]`` as block ``first_block + k`` and returns
    ``[(k, PageVerify), ...]`` for the pages that are neither VALID nor NEW (empty when
    all are fine), with the same statuses and reasons as ``verify_page``. With the C
    module one call covers the run (header rules, all-zero, CRC-32C, the GIL kept);
    without it, or for a bad page's reason, ``verify_page`` runs per page.
    """

    __slots__ = ("_pool", "_pages", "_ptr", "_npages")

    def __init__(self, pool) -> None:
        mv = memoryview(pool).cast("B")
        if len(mv) == 0 or len(mv) % BLCKSZ:
            raise ValueError(f"pool must hold whole pages of {BLCKSZ} bytes, got {len(mv)} bytes")
        self._pool = mv
        self._npages = len(mv) // BLCKSZ
        self._pages: list[memoryview] | None = None
        # The C pointer exports the object underneath a view (the pool's mmap), not a
        # memoryview: CPython 3.11's collector can clear an exported memoryview that sits
        # in cyclic garbage and then crash freeing it; an mmap or bytearray has no such
        # clear step.
        base = pool.obj if isinstance(pool, memoryview) and pool.obj is not None else pool
        if isinstance(base, memoryview) or memoryview(base).nbytes != len(mv):
            base = mv  # a view of part of an object: only the view covers exactly the pool
        self._ptr = _ffi.from_buffer(base) if _lib is not None else None

    def verify(self, page_ids, relnumber: int, fork: int, first_block: int) -> list[tuple[int, PageVerify]]:
        n = len(page_ids)
        if n == 0:
            return []
        if self._ptr is None or not (0 <= relnumber <= 0xFFFFFFFF and 0 <= fork <= 0xFF
                                     and first_block >= 0 and first_block + n - 1 <= 0xFFFFFFFF):
            return self._verify_python(page_ids, relnumber, fork, first_block)
        first = page_ids[0]
        slot = _VERIFY_STATUS
        status = slot.array
        if slot.pages < n:
            status = slot.array = _ffi.new("uint8_t[]", n)
            slot.pages = n
        if page_ids[-1] - first == n - 1 and (n <= 2 or list(page_ids) == list(range(first, first + n))):
            if not (first >= 0 and first + n <= self._npages):
                raise ValueError(f"page_ids must be in 0..{self._npages - 1}")
            bad = _verify_pages(self._ptr, _ffi.NULL, n, first, relnumber, fork,
                                        first_block, status)
        else:
            if not (min(page_ids) >= 0 and max(page_ids) < self._npages):
                raise ValueError(f"page_ids must be in 0..{self._npages - 1}")
            bad = _verify_pages(self._ptr, _ffi.new("uint32_t[]", page_ids), n, 0,
                                        relnumber, fork, first_block, status)
        if not bad:
            return []
        out = []
        for k in range(n):
            if status[k] >= PageStatus.BAD_CHECKSUM:  # the reason sentence comes from Python
                v = verify_page(self._page(page_ids[k]), relnumber, fork, first_block + k)
                assert v.status == status[k], \
                    f"C verifier said {PageStatus(status[k]).name}, verify_page {v.status.name}"
                out.append((k, v))
        return out

    def _page(self, i: int) -> memoryview:
        return self._pool[i * BLCKSZ:(i + 1) * BLCKSZ]

    def _verify_python(self, page_ids, relnumber: int, fork: int, first_block: int) -> list[tuple[int, PageVerify]]:
        out = []
        for k, i in enumerate(page_ids):
            v = verify_page(self._page(i), relnumber, fork, first_block + k)
            if v.status >= PageStatus.BAD_CHECKSUM:
                out.append((k, v))
        return out


def page_check(buf) -> None:
    """Check the whole structure (invariants 1-6) and raise PageCorruptError naming the flaw.

    For tests after every step and for ``slonik check``; the checksum is ``verify_page``'s job.
    """
    mv = _view(buf)
    if ZERO_PAGE.startswith(mv):
        return
    _lsn, _checksum, flags, lower, upper, special, version, reserved = _HEADER.unpack_from(mv)
    problem = _header_problem(flags, lower, upper, special, version, reserved)
    if problem is not None:
        raise PageCorruptError(f"invalid page header: {problem}")
    count = (lower - HEADER_SIZE) // LINE_POINTER_SIZE
    extents = []
    unused = 0
    for offnum, (value,) in enumerate(_LP.iter_unpack(mv[HEADER_SIZE:lower]), 1):
        offset, state, length = _lp_decode(value)
        if state == LpFlag.UNUSED:
            unused += 1
            if offset or length:
                raise PageCorruptError(f"corrupted line pointer: line pointer {offnum} is "
                                       f"UNUSED but has offset {offset}, length {length}")
        elif state == LpFlag.REDIRECT:
            if length or not FIRST_OFFSET_NUMBER <= offset <= count:
                raise PageCorruptError(f"corrupted line pointer: line pointer {offnum} "
                                       f"redirects to {offset}, length {length}")
        elif state == LpFlag.NORMAL or length:
            problem = _item_problem(offnum, offset, length, upper, special)
            if problem is not None:
                raise PageCorruptError(f"corrupted line pointer: {problem}")
            extents.append((offset, offset + maxalign(length), offnum))
        elif offset:
            raise PageCorruptError(f"corrupted line pointer: line pointer {offnum} is DEAD "
                                   f"without storage but has offset {offset}")
    extents.sort()
    for (_start, end, offnum), (next_start, _end, next_offnum) in pairwise(extents):
        if end > next_start:
            raise PageCorruptError(f"corrupted line pointer: items {offnum} and {next_offnum} "
                                   f"overlap at offset {next_start}")
    if unused and not flags & PD_HAS_FREE_LINES:
        raise PageCorruptError(f"invalid page header: {unused} UNUSED line pointers but "
                               f"PD_HAS_FREE_LINES is clear")
    if not ZERO_PAGE.startswith(mv[lower:upper]):
        raise PageCorruptError(f"free space [{lower}, {upper}) is not all zero")
