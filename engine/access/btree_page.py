"""B+tree pages: special space, leaf entries, pivots, in-page search and page edits. Pure.

A B+tree page is an ordinary ``storage.page`` page (header, line pointers, checksum) whose
16-byte special space holds the Lehman & Yao links and the level::

    special (struct "<IIIHH", at BLCKSZ - 16)
      prev    u32  left sibling on the same level (P_NONE = 0: leftmost)
      next    u32  right sibling (P_NONE: rightmost); block 0 is the metapage, so 0 is free
      level   u32  0 = leaf, counting up to the root
      flags   u16  BTP_* bits
      zero    u16

Line pointers are kept in key order (an insert in the middle shifts the later ones, as
PostgreSQL's PageAddItem with shuffle does), so the item at offnum N is the N-th smallest.
A page that is not rightmost has its **high key** at offnum 1 (an exclusive upper bound:
every item on the page is < high key <= every item of the right sibling); its data items
start at offnum 2. A rightmost page has no high key (+inf) and data from offnum 1.

Items (all integers little-endian)::

    leaf entry   "<QQBH" xmin, xmax, eflags, keylen | key | payload
    pivot        "<IQBH" child, xmin, pflags, keylen | key      (internal items, high keys)

Order: entries compare by ``(key ascending, xmin descending)``; pivots carry the same pair
(the separator is the first entry of the right page at split time). The first data item of
an internal page is the minus-infinity pivot (``PIVOT_MINUS_INF``, no key): "one more
downlink than keys". A child holds the items ``>=`` its pivot and ``<`` the next pivot.

The entry format is generic: the clustered KV store puts the version's creating xid in
``xmin`` and the deleting one in ``xmax``; a secondary index can put a heap TID
(``(block << 16) | offnum``) in ``xmin`` as its tiebreaker and leave ``xmax`` 0.
``eflags & ENTRY_OVERFLOW`` marks a payload that is an overflow reference (``overflow.py``)
rather than the value itself.

Overflow pages (level 0, ``BTP_OVERFLOW``, ``prev`` = chunk index) hold one item, a chunk
of an out-of-line value; free pages (``BTP_FREE``, ``next`` = the next free page) hold none.

Invariants:
1. Every page edit here is deterministic in its inputs (a page in a given state, the same
   arguments, the same bytes out), so redo running these functions on the pre-change page
   reproduces the page byte for byte.
2. No B+tree page has an UNUSED line pointer (deletes rebuild the page), so appending a
   line pointer and rotating it into place is the whole insert.
3. ``search_page`` (C when ``storage._pagecheck`` is built) and ``search_page_py`` give the
   same offnum for every page and target; likewise ``visible_offnums``.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from slonik.storage.errors import DataCorruptionError
from slonik.storage.hotlib import hot_for
from slonik.storage.page import (
    BLCKSZ,
    HEADER_SIZE,
    LINE_POINTER_SIZE,
    LOWER_OFFSET,
    PAGE_LAYOUT_VERSION,
    init_page,
    max_item_size,
    maxalign,
    page_free_space,
    page_get_item,
    page_is_new,
)

try:  # the optional C helpers (storage/_pagecheck_build.py); pure Python without them
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_bt_locate"):  # an extension built before the helpers existed
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None
_hot = hot_for(_lib)   # its page-sized helpers, the GIL kept (storage/hotlib.py)
C_SEARCH = _lib is not None
# _C_EXPORTS: ``ffi.from_buffer(page)`` of a buffer-pool page (a memoryview) is an export of
# that view while the cdata lives. A cdata kept in a local of a frame that a raised error's
# traceback then holds can end up in a garbage cycle with the view, and CPython 3.11's
# collector may clear the exported view first and crash freeing it. So a cdata of a page
# is either a call's temporary argument or held in a ``with`` block that ends before any
# reference implementation (which raises on a malformed page) runs.

__all__ = [
    "P_NONE", "BTP_LEAF", "BTP_ROOT", "BTP_DELETED", "BTP_META", "BTP_OVERFLOW", "BTP_FREE",
    "SPECIAL_SIZE", "ENTRY_OVERFLOW", "PIVOT_MINUS_INF", "XMIN_MAX",
    "LEAF_HEADER_SIZE", "PIVOT_HEADER_SIZE", "KEY_MAX_BYTES", "ENTRY_MAX_BYTES",
    "PAGE_CAPACITY_BYTES", "OVERFLOW_CHUNK_BYTES",
    "Special", "LeafEntry", "Pivot", "BTreePageError",
    "bt_init", "bt_special", "bt_set_special", "bt_set_prev", "bt_set_next", "bt_set_child", "bt_first_data",
    "bt_item_count", "bt_items", "bt_item_lengths", "bt_build", "bt_rebuild", "bt_insert_item", "bt_delete_items",
    "bt_set_xmax", "bt_fits", "bt_used_bytes", "item_cost", "item_costs",
    "pack_entry", "unpack_entry", "entry_key", "pack_pivot", "unpack_pivot",
    "minus_inf_pivot", "item_sort_key", "search_page", "search_page_py", "bt_item",
    "locate", "locate_py", "MOVE_RIGHT",
    "visible_offnums", "visible_offnums_py", "C_SEARCH",
    "probe_leaf", "probe_leaf_flat", "probe_leaf_py", "ProbeKeys", "probe_many",
    "probe_many_py", "PROBE_FOUND", "PROBE_TOO_MANY", "PROBE_MANY_VERSIONS_MAX", "PROBE_MOVE_RIGHT", "PROBE_CONTINUES",
    "extract_leaf", "extract_leaf_py", "EXTRACT_DONE", "EXTRACT_OVERFLOW",
    "EXTRACT_BELOW_START", "gather_leaf", "gather_leaf_py", "extract_cut", "extract_cut_py",
    "page_locator", "children", "children_py", "first_versions", "first_versions_py",
    "first_versions_out",
]

P_NONE = 0
_LP_NORMAL_BITS = 1 << 15  # LpFlag.NORMAL in a line pointer
_PAGE_HEADER = struct.Struct("<QIHHHHHH")
BTP_LEAF = 0x1
BTP_ROOT = 0x2
BTP_DELETED = 0x4  # a leaf unlinked by vacuum: readers that still reach it move right
BTP_META = 0x8
BTP_OVERFLOW = 0x10
BTP_FREE = 0x20
BTP_VALID_FLAGS = BTP_LEAF | BTP_ROOT | BTP_DELETED | BTP_META | BTP_OVERFLOW | BTP_FREE

_SPECIAL = struct.Struct("<IIIHH")
SPECIAL_SIZE = _SPECIAL.size  # 16, MAXALIGNed
_SPECIAL_AT = BLCKSZ - SPECIAL_SIZE
assert maxalign(SPECIAL_SIZE) == SPECIAL_SIZE

_LEAF = struct.Struct("<QQBH")
_PIVOT = struct.Struct("<IQBH")
LEAF_HEADER_SIZE = _LEAF.size    # 19
PIVOT_HEADER_SIZE = _PIVOT.size  # 15
ENTRY_OVERFLOW = 0x1
ENTRY_VALID_FLAGS = ENTRY_OVERFLOW
PIVOT_MINUS_INF = 0x1
XMIN_MAX = (1 << 64) - 1

# Usable bytes of a B+tree page: everything but the header and the special space.
PAGE_CAPACITY_BYTES = BLCKSZ - HEADER_SIZE - SPECIAL_SIZE  # 8152
# Keys up to about a quarter page; with it, a leaf entry is at most ENTRY_MAX_BYTES, and a
# page always holds a high key plus two entries (or two pivots plus minus-inf), so a split
# always has a legal split point.
KEY_MAX_BYTES = 2000
ENTRY_MAX_BYTES = 2712  # as PostgreSQL's BTMaxItemSize (2704) plus our wider header
OVERFLOW_CHUNK_BYTES = max_item_size(SPECIAL_SIZE)  # 8144 bytes of a value per page


def item_cost(length: int) -> int:
    """Bytes an item of ``length`` takes on a page: aligned storage plus its line pointer."""
    return maxalign(length) + LINE_POINTER_SIZE


def item_costs(lengths: Iterable[int]) -> Iterator[int]:
    """``item_cost`` of each length, by C-level maps (no interpreted step per item)."""
    return map(operator.add, map(operator.and_, map(operator.add, lengths, _SEVEN),
                                 _NOT_SEVEN), _LP_SIZE)


_SEVEN = itertools.repeat(7)
_NOT_SEVEN = itertools.repeat(~7)
_LP_SIZE = itertools.repeat(LINE_POINTER_SIZE)


assert item_cost(PIVOT_HEADER_SIZE + KEY_MAX_BYTES) + 2 * item_cost(ENTRY_MAX_BYTES) \
    <= PAGE_CAPACITY_BYTES
assert 4 * item_cost(PIVOT_HEADER_SIZE + KEY_MAX_BYTES) <= PAGE_CAPACITY_BYTES


class BTreePageError(DataCorruptionError):
    """A B+tree page or item that cannot be right; the message names the field."""


class Special(NamedTuple):
    prev: int
    next: int
    level: int
    flags: int


class LeafEntry(NamedTuple):
    """A decoded leaf entry. ``payload`` is the value, or an overflow reference when
    ``flags & ENTRY_OVERFLOW``."""

    key: bytes
    xmin: int
    xmax: int
    flags: int
    payload: bytes


class Pivot(NamedTuple):
    key: bytes
    xmin: int
    child: int
    minus_inf: bool


# ---------------------------------------------------------------------------- special


def bt_init(page, special: Special) -> None:
    """Make ``page`` an empty B+tree page with these links, level and flags."""
    init_page(page, SPECIAL_SIZE)
    _SPECIAL.pack_into(page, _SPECIAL_AT, special.prev, special.next, special.level,
                       special.flags, 0)


def bt_special(page) -> Special:
    """The special space; BTreePageError when it cannot be a B+tree page's."""
    prev, next_, level, flags, zero = _SPECIAL.unpack_from(page, _SPECIAL_AT)
    special = struct.unpack_from("<H", page, 18)[0]
    if special != _SPECIAL_AT or zero or flags & ~BTP_VALID_FLAGS:
        raise BTreePageError(f"special space at {special} (flags {flags:#x}, pad {zero}) is "
                             f"not a B+tree page's")
    return Special(prev, next_, level, flags)


def bt_set_special(page, special: Special) -> None:
    _SPECIAL.pack_into(page, _SPECIAL_AT, special.prev, special.next, special.level,
                       special.flags, 0)


def bt_set_prev(page, prev: int) -> None:
    struct.pack_into("<I", page, _SPECIAL_AT, prev)


def bt_set_next(page, next_: int) -> None:
    struct.pack_into("<I", page, _SPECIAL_AT + 4, next_)


def bt_set_child(page, offnum: int, child: int) -> None:
    """Point the pivot at ``offnum`` at another child."""
    struct.pack_into("<I", bt_item(page, offnum), 0, child)


def bt_first_data(special: Special) -> int:
    """Offnum of the first data item: 2 behind a high key, 1 on a rightmost page."""
    return 1 if special.next == P_NONE else 2


def bt_item_count(page) -> int:
    return (struct.unpack_from("<H", page, LOWER_OFFSET)[0] - HEADER_SIZE) // LINE_POINTER_SIZE


def bt_items(page, lo: int = 1, hi: int | None = None) -> list[bytes]:
    """Copies of every item, in offnum order (high key first when there is one); with
    ``lo``/``hi``, of offnums lo..hi-1 only (IndexError outside 1..count+1).
    (Slicing by C-level maps measured slower than this loop for a leaf's ~55 items.)"""
    count = bt_item_count(page)
    if hi is None:
        hi = count + 1
    elif not 1 <= lo <= hi <= count + 1:
        raise IndexError(f"items {lo}..{hi - 1} of a page of {count}")
    out = []
    for offnum, lp in enumerate(struct.unpack_from(f"<{hi - lo}I", page, HEADER_SIZE +
                                                   (lo - 1) * LINE_POINTER_SIZE), lo):
        off, length = lp & 0x7FFF, lp >> 17
        if off < HEADER_SIZE or off + length > _SPECIAL_AT or (lp >> 15) & 3 != 1:
            raise BTreePageError(f"line pointer {offnum} (offset {off}, length {length}) is "
                                 f"not a normal item inside the page")
        out.append(bytes(page[off:off + length]))
    return out


def bt_item_lengths(page) -> list[int]:
    """Every item's length from its line pointer, in offnum order (high key first when
    there is one), unchecked and uncopied: for a caller that checks each item where it
    uses it (a split sizes every item but copies only those it moves, ``bt_item``'s
    checks, and the split's apply checks those it keeps). ~2 us for a leaf of ~58 entries
    against bt_items' ~17 us, by timeit."""
    return [lp >> 17 for lp in struct.unpack_from(f"<{bt_item_count(page)}I", page,
                                                      HEADER_SIZE)]


def bt_used_bytes(items: Sequence[bytes]) -> int:
    return sum(item_cost(len(i)) for i in items)


def bt_fits(page, length: int) -> bool:
    """Whether one more item of ``length`` bytes fits."""
    return page_free_space(page) >= maxalign(length)


def bt_build(page, special: Special, items: Sequence[bytes], lsn: bytes = bytes(8)) -> None:
    """Write ``page`` from nothing: ``items`` in this order, ``special``, header LSN
    ``lsn``. Byte for byte what ``bt_init`` followed by ``page_add_item`` of each item
    gives (items packed down from the special space, MAXALIGNed, zero padded), in one
    pass. ValueError when the items do not fit."""
    buf = bytearray(BLCKSZ)
    upper = _SPECIAL_AT
    lps = []
    for item in items:
        n = len(item)
        if n == 0:
            raise ValueError("an item needs at least one byte")
        upper -= (n + 7) & ~7
        buf[upper:upper + n] = item
        lps.append(upper | _LP_NORMAL_BITS | (n << 17))
    lower = HEADER_SIZE + LINE_POINTER_SIZE * len(items)
    if lower > upper:
        raise ValueError(f"{len(items)} items of {bt_used_bytes(items)} bytes do not fit a "
                         f"page's {PAGE_CAPACITY_BYTES}")
    _PAGE_HEADER.pack_into(buf, 0, 0, 0, 0, lower, upper, _SPECIAL_AT, PAGE_LAYOUT_VERSION, 0)
    buf[:8] = lsn
    struct.pack_into(f"<{len(lps)}I", buf, HEADER_SIZE, *lps)
    _SPECIAL.pack_into(buf, _SPECIAL_AT, special.prev, special.next, special.level,
                       special.flags, 0)
    page[:] = buf


def bt_rebuild(page, special: Special, items: Sequence[bytes]) -> None:
    """Rebuild ``page`` from scratch with ``items`` in this order; the LSN is kept."""
    bt_build(page, special, items, bytes(page[:8]))


def bt_insert_item(page, offnum: int, item: bytes) -> None:
    """Put ``item`` at ``offnum``, shifting the line pointers from there one place up:
    the bytes ``page_add_item`` would write, with the new line pointer rotated into
    place. ValueError when it does not fit."""
    lower, upper = struct.unpack_from("<HH", page, LOWER_OFFSET)
    count = (lower - HEADER_SIZE) // LINE_POINTER_SIZE
    if not 1 <= offnum <= count + 1:
        raise ValueError(f"offnum {offnum} out of range 1..{count + 1}")
    if not HEADER_SIZE <= lower <= upper <= _SPECIAL_AT:
        raise BTreePageError(f"page header lower {lower} upper {upper} is impossible")
    n = len(item)
    new_upper = upper - ((n + 7) & ~7)
    if n == 0 or new_upper < lower + LINE_POINTER_SIZE:
        raise ValueError(f"item of {n} bytes does not fit: {upper - lower} bytes free")
    page[new_upper:new_upper + n] = item
    page[new_upper + n:upper] = bytes(upper - new_upper - n)
    at = HEADER_SIZE + (offnum - 1) * LINE_POINTER_SIZE
    page[at + LINE_POINTER_SIZE:lower + LINE_POINTER_SIZE] = bytes(page[at:lower])
    struct.pack_into("<I", page, at, new_upper | _LP_NORMAL_BITS | (n << 17))
    struct.pack_into("<HH", page, LOWER_OFFSET, lower + LINE_POINTER_SIZE, new_upper)


def bt_delete_items(page, offnums: Sequence[int]) -> None:
    """Drop the items at ``offnums`` (the page is rebuilt in order, LSN kept)."""
    gone = set(offnums)
    items = bt_items(page)
    if not gone <= set(range(1, len(items) + 1)):
        raise ValueError(f"offnums {sorted(gone)} not all in 1..{len(items)}")
    bt_rebuild(page, bt_special(page), [it for i, it in enumerate(items, 1) if i not in gone])


def bt_item(page, offnum: int) -> memoryview:
    """The item at ``offnum`` as a view (the hot-path twin of ``page_get_item``, with
    the checks a B+tree page needs: in range, NORMAL, inside the items area)."""
    lower = struct.unpack_from("<H", page, LOWER_OFFSET)[0]
    if offnum < 1 or HEADER_SIZE + offnum * LINE_POINTER_SIZE > lower:
        raise BTreePageError(f"offnum {offnum} is past the page's line pointers")
    off, length = _item_at(page, offnum)
    return memoryview(page)[off:off + length]


def bt_set_xmax(page, offnum: int, xmax: int) -> None:
    item = page_get_item(page, offnum)
    struct.pack_into("<Q", item, 8, xmax)


# ---------------------------------------------------------------------------- items


def pack_entry(key: bytes, xmin: int, xmax: int, flags: int, payload: bytes) -> bytes:
    return _LEAF.pack(xmin, xmax, flags, len(key)) + key + payload


def unpack_entry(item) -> LeafEntry:
    if len(item) < LEAF_HEADER_SIZE:
        raise BTreePageError(f"leaf entry of {len(item)} bytes is shorter than its header")
    xmin, xmax, flags, keylen = _LEAF.unpack_from(item)
    end = LEAF_HEADER_SIZE + keylen
    if end > len(item) or flags & ~ENTRY_VALID_FLAGS:
        raise BTreePageError(f"leaf entry: key length {keylen} / flags {flags:#x} do not fit "
                             f"an item of {len(item)} bytes")
    return LeafEntry(bytes(item[LEAF_HEADER_SIZE:end]), xmin, xmax, flags, bytes(item[end:]))


def entry_key(item) -> tuple[bytes, int]:
    """(key, xmin) of a leaf entry."""
    xmin, _xmax, _flags, keylen = _LEAF.unpack_from(item)
    return bytes(item[LEAF_HEADER_SIZE:LEAF_HEADER_SIZE + keylen]), xmin


def pack_pivot(key: bytes, xmin: int, child: int) -> bytes:
    return _PIVOT.pack(child, xmin, 0, len(key)) + key


def minus_inf_pivot(child: int) -> bytes:
    return _PIVOT.pack(child, 0, PIVOT_MINUS_INF, 0)


def unpack_pivot(item) -> Pivot:
    if len(item) < PIVOT_HEADER_SIZE:
        raise BTreePageError(f"pivot of {len(item)} bytes is shorter than its header")
    child, xmin, flags, keylen = _PIVOT.unpack_from(item)
    if PIVOT_HEADER_SIZE + keylen != len(item) or flags & ~PIVOT_MINUS_INF:
        raise BTreePageError(f"pivot: key length {keylen} / flags {flags:#x} do not match an "
                             f"item of {len(item)} bytes")
    return Pivot(bytes(item[PIVOT_HEADER_SIZE:]), xmin, child, bool(flags & PIVOT_MINUS_INF))


def item_sort_key(item, leaf: bool) -> tuple:
    """A Python sort key for an item: (0,) for minus infinity, else (1, key, -xmin)."""
    if leaf:
        key, xmin = entry_key(item)
        return (1, key, -xmin)
    p = unpack_pivot(item)
    return (0,) if p.minus_inf else (1, p.key, -p.xmin)


# ---------------------------------------------------------------------------- search


def _item_at(page, offnum: int) -> tuple[int, int]:
    lp = struct.unpack_from("<I", page, HEADER_SIZE + (offnum - 1) * LINE_POINTER_SIZE)[0]
    off, length = lp & 0x7FFF, lp >> 17
    if off < HEADER_SIZE or off + length > _SPECIAL_AT or (lp >> 15) & 3 != 1:
        raise BTreePageError(f"line pointer {offnum} (offset {off}, length {length}) is not "
                             f"a normal item inside the page")
    return off, length


def search_page_py(page, key: bytes, xmin: int, upper: bool) -> int:
    """Reference: the first data offnum whose item is >= (key, xmin) (``upper`` False) or
    > it (``upper`` True) in (key asc, xmin desc) order; one past the last when none is.
    Minus-infinity pivots are below every target."""
    special = bt_special(page)
    leaf = special.level == 0
    lo, hi = bt_first_data(special), bt_item_count(page) + 1
    hdr = LEAF_HEADER_SIZE if leaf else PIVOT_HEADER_SIZE
    target = (key, -xmin)
    while lo < hi:
        mid = (lo + hi) // 2
        off, length = _item_at(page, mid)
        if length < hdr:
            raise BTreePageError(f"item {mid} of {length} bytes is shorter than its header")
        if leaf:
            ixmin, _x, _f, keylen = _LEAF.unpack_from(page, off)
            below = False
        else:
            _c, ixmin, pflags, keylen = _PIVOT.unpack_from(page, off)
            below = bool(pflags & PIVOT_MINUS_INF)
        if hdr + keylen > length:
            raise BTreePageError(f"item {mid}: key length {keylen} overruns its {length} bytes")
        if below:
            lo = mid + 1
            continue
        mine = (bytes(page[off + hdr:off + hdr + keylen]), -ixmin)
        if mine < target or (upper and mine == target):
            lo = mid + 1
        else:
            hi = mid
    return lo


MOVE_RIGHT = -2  # locate(): the target is at or past the high key


def locate_py(page, key: bytes, xmin: int) -> int:
    """Reference: one step of a descent. ``MOVE_RIGHT`` when the page has a high key and
    (key, xmin) >= it; else on a leaf the first offnum >= (key, xmin), on an internal page
    the child block of the last pivot <= (key, xmin)."""
    special = bt_special(page)
    if special.next != P_NONE:
        hk = unpack_pivot(bt_item(page, 1))
        if (key, -xmin) >= (hk.key, -hk.xmin):
            return MOVE_RIGHT
    if special.level == 0:
        return search_page_py(page, key, xmin, False)
    pos = search_page_py(page, key, xmin, True) - 1
    if pos < bt_first_data(special):
        raise BTreePageError("internal page without a downlink")
    return unpack_pivot(bt_item(page, pos)).child


def locate(page, key: bytes, xmin: int) -> int:
    """``locate_py`` in one C call when the helper module is built."""
    if _lib is None:
        return locate_py(page, key, xmin)
    got = _hot.slk_bt_locate(_ffi.from_buffer(page), key, len(key), xmin)
    if got == -1:  # malformed: the reference names what is wrong
        return locate_py(page, key, xmin)
    return got


def first_versions_py(page, high: bytes | None, keys: Sequence[bytes], start: int
                      ) -> list[int]:
    """For keys[start:] (sorted) below ``high`` (None: no high key), the offnum of each
    key's first (newest) entry on the leaf ``page``, 0 when it has none; stops at the
    first key >= ``high``. BTreePageError (or struct.error) for a damaged page."""
    count = bt_item_count(page)
    out = []
    for key in itertools.islice(keys, start, None):
        if high is not None and key >= high:
            break
        off = search_page(page, key, XMIN_MAX, False)
        out.append(off if off <= count and entry_key(bt_item(page, off))[0] == key else 0)
    return out


def first_versions(page, high: bytes | None, keys: Sequence[bytes], blob: bytes, at,
                   start: int, out) -> list[int]:
    """``first_versions_py`` in one C call: ``blob`` is the keys joined, ``at`` their
    len(keys) + 1 offsets (array 'Q'), ``out`` a ``uint32_t[len(keys)]`` (None: the
    reference); a page C cannot read goes to the reference."""
    if _lib is None or out is None or not hasattr(_lib, "slk_bt_first_versions"):
        return first_versions_py(page, high, keys, start)
    got = _hot.slk_bt_first_versions(_ffi.from_buffer(page),  # export: a temporary
                                     _ffi.NULL if high is None else high,
                                     -1 if high is None else len(high), blob,
                                     _ffi.from_buffer("uint64_t[]", at), start, len(keys), out)
    if got < 0:
        return first_versions_py(page, high, keys, start)
    return _ffi.unpack(out, got)


def first_versions_out(n: int):
    """The ``out`` array of ``first_versions`` for ``n`` keys (None without the C call)."""
    if _lib is None or not hasattr(_lib, "slk_bt_first_versions"):
        return None
    return _ffi.new("uint32_t[]", max(n, 1))


def children_py(page, first: int) -> list[int]:
    """Reference: the child blocks of the pivots at offnums ``first``.. of an internal
    page (BTreePageError naming a malformed one)."""
    return [unpack_pivot(bt_item(page, off)).child for off in range(first, bt_item_count(page) + 1)]


def children(page, first: int) -> list[int]:
    """``children_py`` in one C call (a scan's leaf feed takes a level-1 page's downlinks)."""
    if _lib is None:
        return children_py(page, first)
    tls = _thread_arrays()
    n = _hot.slk_bt_children(_ffi.from_buffer(page), first, tls.gather_ents)  # export: a temporary
    if n < 0:  # a leaf, or malformed: the reference says what is wrong
        return children_py(page, first)
    return memoryview(_ffi.buffer(tls.gather_ents, 4 * n)).cast("I").tolist()


def page_locator(page: bytes) -> Callable[[bytes, int, int], int]:
    """``locate`` bound to an immutable page copy, as a callable ``(key, len(key), xmin)``
    that is one C call (the buffer handed to C once, not per call); it returns -1 where
    ``locate`` would raise (call ``locate`` then for the error)."""
    if _lib is None:
        return functools.partial(_locate_or_minus_one, page)
    return functools.partial(_hot.slk_bt_locate, _ffi.from_buffer(page))


def _locate_or_minus_one(page, key: bytes, _keylen: int, xmin: int) -> int:
    try:
        return locate_py(page, key, xmin)
    except BTreePageError:
        return -1


def search_page(page, key: bytes, xmin: int, upper: bool) -> int:
    """``search_page_py`` in one C call when the helper module is built."""
    if _lib is None:
        return search_page_py(page, key, xmin, upper)
    got = _hot.slk_bt_search(_ffi.from_buffer(page), key, len(key), xmin, 1 if upper else 0)
    if got < 0:  # malformed: the reference names what is wrong
        return search_page_py(page, key, xmin, upper)
    return got


def xid_sees_py(snap_xmax: int, own: int, excluded: Sequence[int]) -> Callable[[int], bool]:
    """Reference: whether a snapshot given as data sees transaction ``x``: its own xid,
    or one below ``snap_xmax`` that is not in the sorted ``excluded`` (running or aborted)
    -- what the C helpers' xid_sees decides."""
    def sees(x: int) -> bool:
        if x == own:
            return True
        if x >= snap_xmax:
            return False
        i = bisect.bisect_left(excluded, x)
        return not (i < len(excluded) and excluded[i] == x)

    return sees


def visible_offnums_py(page, snap_xmax: int, own: int, excluded: Sequence[int]) -> list[int]:
    """Reference: offnums of the leaf entries a snapshot sees. An xid is seen when it is
    ``own``, or below ``snap_xmax`` and not in ``excluded`` (sorted: running or aborted);
    an entry is visible when its xmin is seen and its xmax is 0 or not seen."""
    special = bt_special(page)
    out = []

    sees = xid_sees_py(snap_xmax, own, excluded)

    for offnum in range(bt_first_data(special), bt_item_count(page) + 1):
        off, length = _item_at(page, offnum)
        if length < LEAF_HEADER_SIZE:
            raise BTreePageError(f"item {offnum} of {length} bytes is shorter than its header")
        xmin, xmax, _f, _k = _LEAF.unpack_from(page, off)
        if sees(xmin) and not (xmax and sees(xmax)):
            out.append(offnum)
    return out


def visible_offnums(page, snap_xmax: int, own: int, excluded: Sequence[int]) -> list[int]:
    """``visible_offnums_py`` in one C call when the helper module is built."""
    if _lib is None or page_is_new(page):
        return visible_offnums_py(page, snap_xmax, own, excluded)
    out = _ffi.new("uint16_t[]", BLCKSZ // LINE_POINTER_SIZE)
    excl = _ffi.new("uint64_t[]", list(excluded)) if excluded else _ffi.NULL
    n = _hot.slk_bt_visible(_ffi.from_buffer(page), snap_xmax, own, excl, len(excluded), out)
    if n < 0:
        return visible_offnums_py(page, snap_xmax, own, excluded)
    return list(out[0:n])


# ---------------------------------------------------------------------------- leaf reads

PROBE_MOVE_RIGHT = 1  # probe_leaf: the key belongs right of this page (or it is DELETED)
PROBE_CONTINUES = 2   # probe_leaf: versions of the key may continue on the right sibling
PROBE_FOUND = 4       # probe_many: a version the snapshot sees is on the page
PROBE_TOO_MANY = 8    # probe_many: over PROBE_MANY_VERSIONS_MAX versions, not judged
PROBE_MANY_VERSIONS_MAX = 64  # versions of one key probe_many judges (C: a stack array)
PROBE_VERSIONS_ROOM = 8  # versions the first C call has room for (more: a second call)
EXTRACT_DONE = 1         # extract_leaf: no entry right of this page is in the range
EXTRACT_OVERFLOW = 2     # extract_leaf: some entry returned holds an overflow reference
EXTRACT_BELOW_START = 4  # extract_leaf: the page holds a data entry below ``start``
_EXTRACT_ROOM = 4 * ((BLCKSZ - HEADER_SIZE) // LINE_POINTER_SIZE)  # 4 numbers per entry
_tls = threading.local()  # per-thread output arrays of the C calls below


def _leaf_special(page) -> Special:
    """The special space of a leaf, or of a leaf vacuum unlinked (BTP_DELETED alone: its
    BTP_LEAF bit is cleared, and a reader still reaching it moves right)."""
    special = bt_special(page)
    if special.level != 0 or not special.flags & (BTP_LEAF | BTP_DELETED):
        raise BTreePageError(f"expected a leaf, found flags {special.flags:#x} level "
                             f"{special.level}")
    return special


def probe_leaf_py(page, key: bytes) -> tuple[int, int, list[int]]:
    """Reference: a point read's look at one leaf. (right-link, status, versions): status
    ``PROBE_MOVE_RIGHT`` when the page is DELETED or (key, XMIN_MAX) >= its high key (no
    versions then), ``PROBE_CONTINUES`` when the key's versions run to the page's end and
    the high key's key is ``key``; versions are five numbers per entry of ``key``, newest
    first, in one flat list: item offset, item length, xmin, xmax, eflags."""
    special = _leaf_special(page)
    if special.flags & BTP_DELETED:
        return special.next, PROBE_MOVE_RIGHT, []
    hk_same = False
    if special.next != P_NONE:
        hk = unpack_pivot(bt_item(page, 1))
        if (key, -XMIN_MAX) >= (hk.key, -hk.xmin):
            return special.next, PROBE_MOVE_RIGHT, []
        hk_same = hk.key == key
    count = bt_item_count(page)
    off = search_page_py(page, key, XMIN_MAX, False)
    out = []
    while off <= count:
        at, length = _item_at(page, off)
        e = unpack_entry(memoryview(page)[at:at + length])
        if e.key != key:
            break
        out += (at, length, e.xmin, e.xmax, e.flags)
        off += 1
    return special.next, PROBE_CONTINUES if off > count and hk_same else 0, out


def probe_leaf(page, key: bytes) -> tuple[int, int, list[int]]:
    """``probe_leaf_py`` in one C call when the helper module is built."""
    flat = probe_leaf_flat(page, key)
    return flat[0], flat[1], flat[2:]


def probe_leaf_flat(page, key: bytes) -> list[int]:
    """``probe_leaf`` as one flat list, ``[right-link, status, versions...]`` (the C
    helper's output as it is, no slicing or tuple: the point-read hot path)."""
    if _lib is None:
        nxt, status, v = probe_leaf_py(page, key)
        return [nxt, status, *v]
    out = getattr(_tls, "probe_out", None)
    if out is None:
        out = _tls.probe_out = _ffi.new("uint64_t[]", 2 + 5 * PROBE_VERSIONS_ROOM)
    # The page's buffer export is each call's temporary argument (see _C_EXPORTS).
    n = _hot.slk_bt_probe(_ffi.from_buffer(page), key, len(key), out, PROBE_VERSIONS_ROOM)
    if n > PROBE_VERSIONS_ROOM:
        out = _ffi.new("uint64_t[]", 2 + 5 * n)
        n = _hot.slk_bt_probe(_ffi.from_buffer(page), key, len(key), out, n)
    if n < 0:  # malformed: the reference names what is wrong
        nxt, status, v = probe_leaf_py(page, key)
        return [nxt, status, *v]
    return _ffi.unpack(out, 2 + 5 * n)


class ProbeKeys:
    """A sorted batch of keys and a snapshot as data, prepared once for ``probe_many`` on
    each leaf of a batch read: the keys joined with their end offsets, the excluded xids
    and the output (four numbers per key) as C arrays (None without the C module)."""

    __slots__ = ("keys", "snap_xmax", "own", "excluded", "c_keys", "c_ends", "c_excluded",
                 "c_out")

    def __init__(self, keys: list[bytes], snap_xmax: int, own: int,
                 excluded: Sequence[int]) -> None:
        self.keys = keys
        self.snap_xmax, self.own, self.excluded = snap_xmax, own, excluded
        self.c_keys = self.c_ends = self.c_excluded = self.c_out = None
        if _lib is not None and keys:
            self.c_keys = b"".join(keys)
            self.c_ends = _ffi.new("uint32_t[]", list(itertools.accumulate(map(len, keys))))
            self.c_excluded = _ffi.new("uint64_t[]", list(excluded)) if excluded else _ffi.NULL
            self.c_out = _ffi.new("uint64_t[]", 4 * len(keys))


def probe_many_py(page, batch: ProbeKeys, lo: int, hi: int) -> list[int]:
    """Reference: a batch read's look at one leaf, for keys ``lo..hi-1`` of ``batch``:
    four numbers per key: status (``probe_leaf_py``'s bits, ``PROBE_FOUND`` when a version
    the snapshot sees is there, ``PROBE_TOO_MANY`` instead of judging more than
    ``PROBE_MANY_VERSIONS_MAX`` versions), then the first visible version's value start,
    value end (page offsets) and eflags (0, 0, 0 when none). Visibility as
    ``visible_offnums_py``'s."""
    snap_xmax, own, excluded = batch.snap_xmax, batch.own, batch.excluded

    sees = xid_sees_py(snap_xmax, own, excluded)

    out: list[int] = []
    for key in batch.keys[lo:hi]:
        _nxt, status, v = probe_leaf_py(page, key)
        got = [status, 0, 0, 0]
        if len(v) > 5 * PROBE_MANY_VERSIONS_MAX:
            got[0] |= PROBE_TOO_MANY
        else:
            for i in range(0, len(v), 5):
                if sees(v[i + 2]) and not (v[i + 3] and sees(v[i + 3])):
                    got = [status | PROBE_FOUND, v[i] + LEAF_HEADER_SIZE + len(key),
                           v[i] + v[i + 1], v[i + 4]]
                    break
        out += got
    return out


def probe_many(page, batch: ProbeKeys, lo: int, hi: int) -> list[int]:
    """``probe_many_py`` in one C call per leaf when the helper module is built."""
    if batch.c_out is None or hi <= lo:
        return probe_many_py(page, batch, lo, hi)
    # The page's buffer export is the call's temporary argument (see _C_EXPORTS).
    if _lib.slk_bt_probe_many(_ffi.from_buffer(page), batch.c_keys, batch.c_ends, lo, hi,
                              batch.snap_xmax, batch.own, batch.c_excluded,
                              len(batch.excluded), batch.c_out) < 0:
        return probe_many_py(page, batch, lo, hi)  # malformed: the reference says what
    return _ffi.unpack(batch.c_out + 4 * lo, 4 * (hi - lo))


def extract_leaf_py(page, start: bytes | None, stop: bytes | None, snap_xmax: int, own: int,
                    excluded: Sequence[int]) -> tuple[int, list[int]]:
    """Reference: a scan's look at one leaf. (flags, flat): for each entry with ``start <=
    key < stop`` (None: unbounded) that the snapshot sees (as ``visible_offnums_py``), in
    page order, four numbers: key start, key end (the value's start), value end (offsets
    in the page) and eflags. Flags: ``EXTRACT_DONE`` when an entry or the high key reaches
    ``stop``; ``EXTRACT_OVERFLOW`` when an entry returned is out of line;
    ``EXTRACT_BELOW_START`` when a data entry precedes ``start``."""
    special = bt_special(page)
    if special.level != 0:
        raise BTreePageError(f"expected a leaf, found level {special.level}")
    first = bt_first_data(special)
    pos, flags = first, 0
    if start is not None:
        pos = search_page_py(page, start, XMIN_MAX, False)
        if pos > first:
            flags |= EXTRACT_BELOW_START
    if stop is not None and first == 2 and unpack_pivot(bt_item(page, 1)).key >= stop:
        flags |= EXTRACT_DONE

    sees = xid_sees_py(snap_xmax, own, excluded)

    flat: list[int] = []
    for off in range(pos, bt_item_count(page) + 1):
        at, length = _item_at(page, off)
        e = unpack_entry(memoryview(page)[at:at + length])
        if stop is not None and e.key >= stop:
            flags |= EXTRACT_DONE
            break
        if sees(e.xmin) and not (e.xmax and sees(e.xmax)):
            kstart = at + LEAF_HEADER_SIZE
            flat += (kstart, kstart + len(e.key), at + length, e.flags)
            if e.flags & ENTRY_OVERFLOW:
                flags |= EXTRACT_OVERFLOW
    return flags, flat


def _thread_arrays():
    """This thread's output arrays of the leaf-read C calls (allocated on first use)."""
    tls = _tls
    if getattr(tls, "extract_out", None) is None:
        tls.flags = _ffi.new("int *")
        tls.excluded_of = None
        tls.excluded = _ffi.NULL
        tls.gather_dst = _ffi.new("uint8_t[]", BLCKSZ)
        tls.gather_fmt = _ffi.new("char[]", 12 * _EXTRACT_ROOM // 2 + 1)  # 2 x 6 per entry
        tls.gather_ents = _ffi.new("uint32_t[]", _EXTRACT_ROOM)
        tls.extract_out = _ffi.new("uint32_t[]", _EXTRACT_ROOM)
    return tls


def extract_leaf(page, start: bytes | None, stop: bytes | None, snap_xmax: int, own: int,
                 excluded: Sequence[int]) -> tuple[int, list[int]]:
    """``extract_leaf_py`` in one C call when the helper module is built (the output array
    and the last snapshot's excluded xids are kept per thread)."""
    if _lib is None:
        return extract_leaf_py(page, start, stop, snap_xmax, own, excluded)
    tls = _thread_arrays()
    out = tls.extract_out
    if tls.excluded_of is not excluded:
        tls.excluded = _ffi.new("uint64_t[]", list(excluded)) if excluded else _ffi.NULL
        tls.excluded_of = excluded
    n = _lib.slk_bt_extract(_ffi.from_buffer(page), _ffi.NULL if start is None else start,
                            -1 if start is None else len(start),
                            _ffi.NULL if stop is None else stop,
                            -1 if stop is None else len(stop), snap_xmax, own, tls.excluded,
                            len(excluded), out, tls.flags)
    if n < 0:  # malformed: the reference names what is wrong
        return extract_leaf_py(page, start, stop, snap_xmax, own, excluded)
    return tls.flags[0], memoryview(_ffi.buffer(out, 16 * n)).cast("I").tolist()


def extract_cut_py(page, start: bytes | None, stop: bytes | None, snap_xmax: int, own: int,
                   excluded: Sequence[int], values: bool
                   ) -> tuple[int, list[int] | None, tuple[bytes, ...]]:
    """Reference: ``extract_leaf`` and ``gather_leaf`` in one: (flags, flat, cut), where
    ``flat`` (the offsets and eflags) is given only when ``EXTRACT_OVERFLOW`` is set (the
    caller then needs the eflags), else None."""
    flags, flat = extract_leaf_py(page, start, stop, snap_xmax, own, excluded)
    cut = gather_leaf_py(page, flat, values)
    return flags, (flat if flags & EXTRACT_OVERFLOW else None), cut


def extract_cut(page, start: bytes | None, stop: bytes | None, snap_xmax: int, own: int,
                excluded: Sequence[int], values: bool
                ) -> tuple[int, list[int] | None, tuple[bytes, ...]]:
    """``extract_cut_py`` with both C calls on one output array (a scan's whole look at a
    leaf: no Python list of offsets unless an entry is out of line)."""
    if _lib is None:
        return extract_cut_py(page, start, stop, snap_xmax, own, excluded, values)
    tls = _thread_arrays()
    out = tls.extract_out
    if tls.excluded_of is not excluded:
        tls.excluded = _ffi.new("uint64_t[]", list(excluded)) if excluded else _ffi.NULL
        tls.excluded_of = excluded
    with _ffi.from_buffer(page) as cpage:  # export released before any fallback raises
        n = _lib.slk_bt_extract(cpage, _ffi.NULL if start is None else start,
                                -1 if start is None else len(start),
                                _ffi.NULL if stop is None else stop,
                                -1 if stop is None else len(stop), snap_xmax, own,
                                tls.excluded, len(excluded), out, tls.flags)
        got = 0
        if n > 0:
            got = _lib.slk_bt_gather(cpage, out, n, 1 if values else 0, tls.gather_dst,
                                     tls.gather_fmt)
    if n < 0:  # malformed: the reference names what is wrong
        return extract_cut_py(page, start, stop, snap_xmax, own, excluded, values)
    flags = tls.flags[0]
    flat = memoryview(_ffi.buffer(out, 16 * n)).cast("I").tolist() \
        if flags & EXTRACT_OVERFLOW else None
    if n == 0:
        return flags, flat, ()
    if got < 0:  # cannot happen after a successful extract; the reference says why
        return extract_cut_py(page, start, stop, snap_xmax, own, excluded, values)
    return flags, flat, struct.unpack_from(_ffi.string(tls.gather_fmt),
                                           _ffi.buffer(tls.gather_dst, got))


def gather_leaf_py(page, flat: Sequence[int], values: bool) -> tuple[bytes, ...]:
    """Reference: the key (and with ``values`` the value) bytes of ``extract_leaf``'s
    entries ``flat`` in one flat tuple: (key, value, key, value, ...) or (key, key, ...)."""
    data = bytes(page)
    out: list[bytes] = []
    for i in range(0, len(flat), 4):
        ks, ke, ve = flat[i], flat[i + 1], flat[i + 2]
        if not ks <= ke <= ve <= BLCKSZ:
            raise ValueError(f"entry {i // 4}: offsets {ks}, {ke}, {ve} are not ordered inside "
                             f"a page")
        out.append(data[ks:ke])
        if values:
            out.append(data[ke:ve])
    return tuple(out)


def gather_leaf(page, flat: list[int], values: bool) -> tuple[bytes, ...]:
    """``gather_leaf_py`` in one C call and one ``struct.unpack_from``: C copies the bytes
    back to back and writes the format that cuts them (no slice object per entry)."""
    if _lib is None or not flat:
        return gather_leaf_py(page, flat, values)
    tls = _thread_arrays()
    dst = tls.gather_dst
    n = len(flat) // 4
    ents = tls.gather_ents
    ents[0:len(flat)] = flat
    got = _lib.slk_bt_gather(_ffi.from_buffer(page), ents, n, 1 if values else 0, dst,
                             tls.gather_fmt)
    if got < 0:  # offsets out of order: the reference names them
        return gather_leaf_py(page, flat, values)
    return struct.unpack_from(_ffi.string(tls.gather_fmt), _ffi.buffer(dst, got))
