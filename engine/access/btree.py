"""The B+tree access method: a WAL-logged Lehman & Yao tree of MVCC entries.

A ``BTree`` keeps leaf entries ``(key, xmin, xmax, value)`` ordered by ``(key, xmin
descending)`` in the checksummed pages of one relation fork, through the shared buffer
manager; every page change is one RM_BTREE record (``btree_wal``) logged before the page
can be written, with a full-page image on the first touch after a checkpoint. Versions of
one key sit together, newest first; a reader passes a snapshot (``visible(xmin, xmax)``)
and sees at most the version it makes visible. Values over ``VALUE_INLINE_MAX_BYTES`` go
out of line into overflow pages of the same relation (``OverflowRef``), read back through
a read stream so adjacent pages combine into vectored reads. Scans, ``get_many`` and vacuum
read leaves through read streams fed from the level above the leaves (PostgreSQL 18 has
no such prefetch for index scans); a forward scan copies a run of up to 16 leaves out of
the pool and extracts their visible pairs in one C call (``btree_scanrun``).

Worked example::

    tree = BTree.create(16384, bufmgr, wal)          # metapage (block 0) + empty root leaf
    tree.insert(b"k", b"v1", xmin=5)
    tree.set_xmax(b"k", 5, 6); tree.insert(b"k", b"v2", xmin=6)   # an update by xid 6
    tree.get(b"k", snapshot)                         # b"v2" or b"v1", as the snapshot sees
    tree.apply([VersionWrite(b"k", 7, b"v3", old_xmin=6)])   # a commit's write set, batched
    tree.get_many([b"k", b"x"], snapshot)            # [b"v3", None]: leaves in one stream
    for key, value in tree.items(b"a", b"m", snapshot=snapshot, reverse=True): ...
    tree.vacuum(lambda xmin, xmax: xmax != 0 and xmax < horizon)
    tree.check()   # or check_tree(tree): amcheck-like; DataCorruptionError
    BTree.open(16384, bufmgr, wal)                   # reads the metapage only

Layout: ``btree_page`` (pages and items), metapage item ``"<IIIIII"`` magic, version,
root, level, free-list head, free-list length; free pages are chained by their ``next``.

Invariants (``check()`` verifies 1-6 on a quiet tree):
1. Items on a page are strictly increasing; every item < the page's high key <= every
   item of its right sibling; ``right.prev == this``; the leftmost page of a level has
   ``prev = P_NONE``, the rightmost ``next = P_NONE``.
2. Each downlink of a level-L page points at a level L-1 page; the downlinks of a level,
   left to right, are exactly the pages of the level below in right-link order (a split
   and its parent insert are one record: no incomplete splits); a child's items lie in
   ``[its pivot, next pivot or the parent's high key)``.
3. The metapage names the root, which is the only page of its level and flagged ROOT.
4. Every overflow reference covers pages flagged OVERFLOW whose chunk index runs 0..n-1
   and whose lengths add up to the value's; no page is referenced twice or also free.
5. The free list holds ``free_count`` pages flagged FREE, without a cycle.
6. Changes are serialized by the tree's write lock (one writer at a time; the engine's
   commit lock serializes them anyway); readers lock one page at a time (share) and
   follow right-links (L&Y "move right") past splits they did not see.
7. Pages are unpinned before values are returned; values are copies.
8. Overflow pages are written (and logged) before the entry that references them, and
   freed only after the entry is gone: a crash in between leaks pages, never a dangling
   reference.
9. Vacuum unlinks an empty leaf (not the rightmost, and only when its right sibling's
   downlink is in the same parent) in one record; the DELETED page keeps its right-link,
   so a reader that still reaches it moves right, and it is recycled onto the free list
   only once every reader registered before the unlink has finished. Unlinked pages
   waiting for that are remembered in memory only: a crash leaks them (``check()``
   counts them as unreached), as it leaks overflow pages under invariant 8.

Limits: a split and all the splits it causes above it are one record with full-page
images of the pages touched first after a checkpoint, so a cascade through a tall tree
can need a few hundred KiB of ``wal_buffers`` (the default 4 MiB is ample; the minimum
64 KiB is not). A bottom-up append record (``_append_leaves``) carries up to
APPEND_LEAVES_MAX new leaves, bounded to a quarter of ``wal_buffers``. Internal pages are
never deleted.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import struct
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from slonik.engine.access.btree_leafrun import (
    KIND_INLINE,
    KIND_NONE,
    KIND_OVERFLOW,
    LOOKUP_U64,
    OLD_LOOKUP,
    STOP_END,
    STOP_NO_ROOM,
    LeafBatch,
    LeafRunState,
    PutScratch,
    join_keys,
    leaf_run,
    make_batch,
    new_runner,
    put_new,
    single_batch,
)
from slonik.engine.access.btree_page import (
    BTP_DELETED,
    BTP_FREE,
    BTP_LEAF,
    BTP_META,
    BTP_OVERFLOW,
    BTP_ROOT,
    ENTRY_MAX_BYTES,
    ENTRY_OVERFLOW,
    EXTRACT_BELOW_START,
    EXTRACT_DONE,
    EXTRACT_OVERFLOW,
    KEY_MAX_BYTES,
    LEAF_HEADER_SIZE,
    MOVE_RIGHT,
    OVERFLOW_CHUNK_BYTES,
    P_NONE,
    PAGE_CAPACITY_BYTES,
    PIVOT_HEADER_SIZE,
    PROBE_CONTINUES,
    PROBE_FOUND,
    PROBE_MOVE_RIGHT,
    PROBE_TOO_MANY,
    XMIN_MAX,
    BTreePageError,
    LeafEntry,
    ProbeKeys,
    Special,
    bt_first_data,
    bt_fits,
    bt_item,
    bt_item_count,
    bt_item_lengths,
    bt_items,
    bt_special,
    children,
    entry_key,
    extract_cut,
    first_versions,
    first_versions_out,
    item_cost,
    item_costs,
    locate,
    minus_inf_pivot,
    pack_entry,
    pack_pivot,
    page_locator,
    probe_leaf_flat,
    probe_many,
    search_page,
    unpack_entry,
    unpack_pivot,
    visible_offnums,
)
from slonik.engine.access.btree_scanrun import C_EXTRACT_RUN, RUN_PAGES_MAX, extract_run
from slonik.engine.access.btree_wal import (
    A_DELETE,
    A_INIT,
    A_INSERT,
    A_SET_CHILD,
    A_SET_NEXT,
    A_SET_PREV,
    A_SET_XMAX,
    A_SPLIT_LEFT,
    XLOG_BTREE_FREE,
    XLOG_BTREE_INSERT,
    XLOG_BTREE_NEWTREE,
    XLOG_BTREE_OVERFLOW,
    XLOG_BTREE_SET_XMAX,
    XLOG_BTREE_SPLIT,
    XLOG_BTREE_UNLINK,
    XLOG_BTREE_VACUUM,
    apply_action,
    apply_block_actions,
    apply_payload_actions,
    delete_data,
    encode_actions,
    init_data,
    insert_data,
    set_child_data,
    set_next_data,
    set_prev_data,
    set_xmax_data,
    split_left_data,
)
from slonik.storage.errors import DataCorruptionError
from slonik.storage.hotlib import hot_for
from slonik.storage.page import (
    BLCKSZ,
    LOWER_OFFSET,
    LSN_OFFSET,
    page_get_lsn,
    page_is_new,
    page_set_lsn,
)
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork
from slonik.wal.rmgr import RM_BTREE
from slonik.wal.xlog import BlockSpec

try:  # the optional C helper's optimistic leaf probe (storage/bufmgr.py invariant 8)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_bt_probe_opt"):  # an older build of the module
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None
_hot = hot_for(_lib)   # its page-sized helpers, the GIL kept (storage/hotlib.py)
_OPT_PROBE_VERSIONS = 8   # versions the optimistic probe has room for (more: the lock)
# A point read's one-call descent (BTree._leaf_for_point; None in an older build).
_c_descend = getattr(_hot, "slk_bt_descend", None) if _lib is not None else None
# A point read's leaf probe: on the pool page itself, copying only the versions' items
# (slk_bt_probe_inplace), or the whole page copied first in an older build.
_PROBE = (getattr(_hot, "slk_bt_probe_inplace", None) or _hot.slk_bt_probe_opt
          if _lib is not None else None)
# A descent table that is missing (never built, or dropped: too many copies retired, a
# block past its end) is built after this many descents without it (a build copies up
# to INNER_CACHE_PAGES_MAX pointers: a few tens of us), and only for trees whose cached
# blocks are below this (the table is a pointer per block: 2 MiB at most). Splits do
# not make it stale: it follows the cache (BTree.__init__).
DESCENT_REBUILD_READS = 64
DESCENT_TABLE_BLOCKS_MAX = 1 << 18
# A table's pointers beyond the highest cached block (new internal pages join it in place),
# and the copies it may retire (each dropped from the cache) before a fresh table frees
# them: INNER_CACHE_PAGES_MAX, so a tree's retired copies hold 2 MiB at most.
DESCENT_TABLE_HEADROOM = 1024
DESCENT_RETIRED_MAX = 256
_opt_tls = threading.local()


def _probe_unlocked(bm, rel: int, forkno: int, block: int, key: bytes):
    """(``probe_leaf_flat``'s list, the page it is about) for ``key`` on leaf ``block``,
    probed in one C call without the leaf's share lock (``slk_bt_probe_inplace``: the
    leaf searched in the pool, the versions' items copied into this thread's scratch
    page at their own offsets, all while no writer held it, storage/bufmgr.py invariant
    8), when the leaf is in the pool or its miss is read inline first
    (``BufferManager.read_through``: a clean victim, the read in this thread, the probe
    in the completion's lock section); (None, None) when the miss needs the
    two-step path (a dirty victim, a read in progress elsewhere), a writer held the leaf
    meanwhile, the page is one the reference must judge, or the key has more versions
    there than the call has room for: read it locked. The call runs in a descriptor-lock
    section (the held lock stands in for a pin and unpin). The scratch page is valid until
    this thread's next call (its values are sliced out at once)."""
    tls = _opt_tls
    out = getattr(tls, "out", None)
    if out is None:
        _probe_unlocked_scratch(tls)
        out = tls.out
    n = bm.read_through(rel, forkno, block, _PROBE, key, len(key), out,
                        _OPT_PROBE_VERSIONS, tls.copy)
    if n is not None and 0 <= n <= _OPT_PROBE_VERSIONS:
        return _ffi.unpack(out, 2 + 5 * n), tls.view
    return None, None


def _probe_unlocked_scratch(tls) -> None:
    """This thread's scratch for the optimistic probe: ``copy`` (a page the versions'
    items are copied into), ``view`` over it, ``out`` (the probe's answer)."""
    tls.copy = _ffi.new("uint8_t[]", BLCKSZ)
    tls.view = memoryview(_ffi.buffer(tls.copy))
    tls.out = _ffi.new("uint64_t[]", 2 + 5 * _OPT_PROBE_VERSIONS)


def _judge_versions(v, page, key: bytes, snapshot: Snapshot, found: dict, retry: list) -> None:
    """A probe's answer for ``key`` (``probe_leaf_flat``'s list: right-link, status, then
    offset, length, xmin, xmax, eflags per version, newest first, the items at those
    offsets of ``page``) judged by ``snapshot``: ``found[key]`` = the newest visible value
    (an OverflowRef for an out-of-line one) or None; ``key`` goes to ``retry`` when its
    leaf is further right (split or unlinked since) or its versions continue on the right
    sibling with none visible here."""
    status = v[1]
    if status & PROBE_MOVE_RIGHT:
        retry.append(key)
        return
    for i in range(2, len(v), 5):
        if snapshot(v[i + 2], v[i + 3]):
            off = v[i]
            value = page[off + LEAF_HEADER_SIZE + len(key):off + v[i + 1]].tobytes()
            found[key] = unpack_overflow_ref(value) if v[i + 4] & ENTRY_OVERFLOW else value
            return
    if status & PROBE_CONTINUES:
        retry.append(key)  # more versions on the right sibling
    else:
        found[key] = None


__all__ = [
    "BTree", "XidSnapshot", "VersionWrite", "OverflowRef", "VacuumResult", "CheckResult",
    "OLD_LOOKUP",
    "BTreeStats", "check_tree",
    "BTREE_MAGIC", "BTREE_VERSION", "VALUE_INLINE_MAX_BYTES", "VALUE_MAX_BYTES",
    "OVERFLOW_EXTENTS_MAX", "OVERFLOW_PAGES_PER_RECORD", "pack_overflow_ref",
    "unpack_overflow_ref", "KEY_MAX_BYTES",
]

BTREE_MAGIC = 0x534C4254  # "SLBT"
BTREE_VERSION = 1
_META = struct.Struct("<IIIIII")  # magic, version, root, level, free head, free count
META_BLOCK = 0

VALUE_MAX_BYTES = 1 << 30  # 1 GiB, the contract's limit for one value
# A value longer than this (or one whose entry would pass ENTRY_MAX_BYTES) goes out of line:
# about a quarter page, so a leaf holds at least a few entries whatever their values.
VALUE_INLINE_MAX_BYTES = 2000
# Extents in one overflow reference: 8 bytes each, so a reference stays under 300 bytes.
# Free pages are reused while they keep the count below this; the rest comes from
# extending the relation, which gives one contiguous extent.
OVERFLOW_EXTENTS_MAX = 32
# Overflow pages per WAL record: 4 x 8 KiB keeps a record far below the smallest
# wal_buffers (64 KiB) while amortizing the per-record cost.
OVERFLOW_PAGES_PER_RECORD = 4
# Pages a batch's splits extend the relation by at once (_extend: 1, 2, 4, ... up to this,
# and to 1/EXTEND_AHEAD_POOL_DIVISOR of shared_buffers, since extension pins them all);
# one extension per split cost a write, a size check and a pin of its own.
EXTEND_AHEAD_PAGES_MAX = 16
EXTEND_AHEAD_POOL_DIVISOR = 64
# A leaf walk uses a BULKREAD ring when the tree's blocks outnumber 1/this of shared_buffers
# (PostgreSQL's seq scan rule: NBuffers / 4).
BULK_SCAN_POOL_DIVISOR = 4
_REF_HEAD = struct.Struct("<QH")
_EXTENT = struct.Struct("<II")
_META_SPECIAL = Special(P_NONE, P_NONE, 0, BTP_META)
LEAF_FILLFACTOR_PERCENT = 90  # a rightmost leaf split for ascending inserts, as nbtree
# Localized ascending inserts (_localized_ascending): the two entries left of the new one
# were written, in that order, by transactions at most this many xids before it (nbtree's
# split-after-new-item heuristic uses heap TID adjacency as its sign of "just before").
ASCENDING_XID_WINDOW = 64
# A sorted run past the rightmost leaf's last key is appended bottom-up (``_append_leaves``,
# as nbtsort builds): new leaves filled to LEAF_FILLFACTOR_PERCENT, at most this many per
# record (each is a block reference of the record and ~8 KiB of its payload).
APPEND_LEAVES_MAX = 16
APPEND_MOVE_MAX = 8  # items a full old leaf may hand the first new leaf for its high key
_APPEND_RESERVE_BYTES = PAGE_CAPACITY_BYTES * (100 - LEAF_FILLFACTOR_PERCENT) // 100
assert _REF_HEAD.size + OVERFLOW_EXTENTS_MAX * _EXTENT.size + LEAF_HEADER_SIZE \
    + KEY_MAX_BYTES <= ENTRY_MAX_BYTES


class OverflowRef(NamedTuple):
    length: int
    extents: tuple[tuple[int, int], ...]  # (first block, number of blocks)

    def blocks(self) -> Iterator[int]:
        return itertools.chain.from_iterable(range(s, s + n) for s, n in self.extents)

    def npages(self) -> int:
        return sum(n for _s, n in self.extents)


def pack_overflow_ref(ref: OverflowRef) -> bytes:
    return _REF_HEAD.pack(ref.length, len(ref.extents)) + b"".join(
        _EXTENT.pack(s, n) for s, n in ref.extents)


def unpack_overflow_ref(data: bytes) -> OverflowRef:
    if len(data) < _REF_HEAD.size:
        raise BTreePageError(f"overflow reference of {len(data)} bytes is too short")
    length, count = _REF_HEAD.unpack_from(data)
    if len(data) != _REF_HEAD.size + count * _EXTENT.size or count > OVERFLOW_EXTENTS_MAX:
        raise BTreePageError(f"overflow reference of {len(data)} bytes does not hold "
                             f"{count} extents")
    ext = tuple(_EXTENT.unpack_from(data, _REF_HEAD.size + i * _EXTENT.size)
                for i in range(count))
    return OverflowRef(length, ext)


class VersionWrite(NamedTuple):
    """One key's change in a batch (``BTree.apply``): the version ``old_xmin`` (0: none;
    ``OLD_LOOKUP``: the key's newest committed one, found where the write lands) gets
    xmax = ``xid``, and unless ``value`` is None a new version (key, ``xid``) with
    ``value`` is added."""

    key: bytes
    xid: int
    value: bytes | None
    old_xmin: int = 0


# VersionWrite.old_xmin OLD_LOOKUP (btree_leafrun) means "the key's newest version whose
# xmin is committed, unless its xmax is committed too (then none)": BTree.apply finds it on
# the leaf it writes, so a commit that does not validate the key first (a blind put)
# descends once, not twice.
_write_key = operator.itemgetter(0)  # a VersionWrite's key: a batch's sort order
_write_xid = operator.itemgetter(1)
_write_value = operator.itemgetter(2)
_write_old = operator.itemgetter(3)


class XidSnapshot(NamedTuple):
    """A snapshot as data, so a leaf's visible entries are found in one C call: an xid is
    seen when it is ``own`` or below ``xmax`` and not in ``excluded`` (sorted: running or
    aborted). Callable like any snapshot: ``snap(xmin, xmax)``."""

    xmax: int
    own: int
    excluded: tuple[int, ...]

    def sees(self, xid: int) -> bool:
        if xid == self.own:
            return True
        if xid >= self.xmax:
            return False
        ex = self.excluded
        i = bisect.bisect_left(ex, xid)
        return not (i < len(ex) and ex[i] == xid)

    def __call__(self, xmin: int, xmax: int) -> bool:
        return self.sees(xmin) and not (xmax and self.sees(xmax))


Snapshot = Callable[[int, int], bool]


_SKIP = object()  # _visit_leaf's result for an unlinked leaf
# probe_many statuses that send a key to the one-key read: split or unlinked since the
# descent, versions continuing on the right sibling, too many versions to judge in C.
_PROBE_ELSEWHERE = PROBE_MOVE_RIGHT | PROBE_CONTINUES | PROBE_TOO_MANY


def _see_all_live(xmin: int, xmax: int) -> bool:
    return xmax == 0


# _see_all_live as data (every xid below XMIN_MAX is seen, so a version is visible exactly
# when its xmax is 0), for the scans' one-C-call-per-leaf path.
_SEE_ALL_LIVE_DATA = XidSnapshot(XMIN_MAX, 0, ())
# Internal pages (level > 0) kept as verified bytes copies per tree, so a descent pins and
# locks only its leaf: 256 x 8 KiB = 2 MiB per tree, room for the upper levels of a tree of
# tens of millions of keys (a level-1 page holds ~200 downlinks of 16-byte keys).
INNER_CACHE_PAGES_MAX = 256


def _cut_pairs(flags: int, flat: list[int] | None, cut: tuple[bytes, ...],
               values: bool) -> tuple[list[tuple], bool]:
    """(key, value) pairs of ``extract_cut``'s output on a leaf: (pairs, any out of line),
    an out-of-line value as its OverflowRef, every value None without ``values``. No
    Python step per pair unless a value is out of line."""
    if not values:
        return list(zip(cut, itertools.repeat(None))), False
    it = iter(cut)  # key, value, key, value, ...
    pairs = list(zip(it, it, strict=True))
    overflow = bool(flags & EXTRACT_OVERFLOW)
    if overflow:
        for i, eflags in enumerate(flat[3::4]):
            if eflags & ENTRY_OVERFLOW:
                pairs[i] = (pairs[i][0], unpack_overflow_ref(pairs[i][1]))
    return pairs, overflow


def _entry_pairs(entries: list[LeafEntry], values: bool) -> tuple[list[tuple], bool]:
    """``_cut_pairs`` for decoded entries (the callable-snapshot path)."""
    if not values:
        return [(e.key, None) for e in entries], False
    pairs = [(e.key, unpack_overflow_ref(e.payload) if e.flags & ENTRY_OVERFLOW
              else e.payload) for e in entries]
    return pairs, any(e.flags & ENTRY_OVERFLOW for e in entries)


@dataclass(frozen=True)
class VacuumResult:
    entries_removed: int
    leaves_changed: int
    overflow_pages_freed: int
    leaves_unlinked: int = 0   # empty leaves taken out of the tree
    pages_recycled: int = 0    # unlinked leaves put on the free list (no reader can reach)


@dataclass(frozen=True)
class CheckResult:
    levels: int
    pages_per_level: tuple[int, ...]  # root level first
    entries: int
    overflow_pages: int
    free_pages: int
    unreached_pages: int  # blocks in none of the above: never-initialised extensions, or
                          # overflow pages leaked by a crash between writing and linking


# Whether vacuum judges a leaf's entries in one C call (slk_bt_leaf_vacuum).
C_LEAF_VACUUM = _lib is not None and hasattr(_lib, "slk_bt_leaf_vacuum")


class DeadTids:
    """``BTree.vacuum``'s ``is_dead`` for a table index (``by_entry``): the entries whose
    key ends with the heap TID (big-endian block, offnum) of one of ``tids``; as
    ``block << 16 | offnum`` integers, sorted, for the leaf's one C call."""

    __slots__ = ("tids", "sorted", "_c")

    def __init__(self, tids: Iterable[tuple[int, int]]) -> None:
        self.tids = {(b << 16) | o for b, o in tids}
        self.sorted = sorted(self.tids)
        self._c = None

    def __call__(self, entry: LeafEntry) -> bool:
        key = entry.key
        if len(key) < 6:
            return False
        block, offnum = struct.unpack_from(">IH", key, len(key) - 6)
        return (block << 16) | offnum in self.tids

    def c_array(self):
        if self._c is None:
            self._c = _ffi.new("uint64_t[]", self.sorted)
        return self._c


def leaf_vacuum_py(page, first: int, is_dead: Callable, by_entry: bool
                   ) -> tuple[list[int], set[int]]:
    """Reference of ``leaf_vacuum``: (the offnums, ascending, of the entries from ``first``
    that ``is_dead(entry)`` (``by_entry``) or ``is_dead(xmin, xmax)`` condemns, the subset
    of them holding an out-of-line value)."""
    dead: list[int] = []
    overflow: set[int] = set()
    for off in range(first, bt_item_count(page) + 1):
        e = unpack_entry(bt_item(page, off))
        if is_dead(e) if by_entry else is_dead(e.xmin, e.xmax):
            dead.append(off)
            if e.flags & ENTRY_OVERFLOW:
                overflow.add(off)
    return dead, overflow


def leaf_vacuum(page, first: int, is_dead: Callable, by_entry: bool
                ) -> tuple[list[int], set[int]]:
    """``leaf_vacuum_py`` with the leaf's entries read by one C call (slk_bt_leaf_vacuum):
    a ``DeadTids`` test judged there too (a binary search per entry), any other test on
    the xmin and xmax arrays it returns (``is_dead.of_pairs`` when it has one: one call
    for the leaf). A leaf the C call refuses goes through the reference, which raises
    naming the flaw."""
    n = bt_item_count(page) + 1 - first
    if not C_LEAF_VACUUM or n <= 0 or (by_entry and not isinstance(is_dead, DeadTids)):
        return leaf_vacuum_py(page, first, is_dead, by_entry)
    flags = _ffi.new("uint8_t[]", n)
    # (the page's C export is made inline: alive for the call only, never in the frame
    # while the reference may raise; see the README on CPython 3.11's collector)
    if by_entry:
        offs = _ffi.new("uint16_t[]", n)
        got = _lib.slk_bt_leaf_vacuum(_ffi.from_buffer(page), first, is_dead.c_array(),
                                      len(is_dead.sorted), _ffi.NULL, _ffi.NULL, flags, offs)
        if got < 0:
            return leaf_vacuum_py(page, first, is_dead, by_entry)
        dead = _ffi.unpack(offs, got)
        fl = _ffi.unpack(flags, got)
        return dead, {o for o, f in zip(dead, fl, strict=True) if f & ENTRY_OVERFLOW}
    xmins = _ffi.new("uint64_t[]", n)
    xmaxs = _ffi.new("uint64_t[]", n)
    got = _lib.slk_bt_leaf_vacuum(_ffi.from_buffer(page), first, _ffi.NULL, 0, xmins, xmaxs,
                                  flags, _ffi.NULL)
    if got < 0:
        return leaf_vacuum_py(page, first, is_dead, by_entry)
    xs, ys = _ffi.unpack(xmins, got), _ffi.unpack(xmaxs, got)
    of_pairs = getattr(is_dead, "of_pairs", None)
    idx = of_pairs(xs, ys) if of_pairs is not None else \
        [i for i, (x, y) in enumerate(zip(xs, ys, strict=True)) if is_dead(x, y)]
    fl = _ffi.unpack(flags, got)
    return [first + i for i in idx], {first + i for i in idx if fl[i] & ENTRY_OVERFLOW}


@dataclass(frozen=True)
class BTreeStats:
    root: int
    height: int
    free_pages: int


def _check_key(key) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) > KEY_MAX_BYTES:
        raise ValueError(f"key of {len(key)} bytes is over the limit of {KEY_MAX_BYTES} bytes")
    return key


def _check_value(value) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    if len(value) > VALUE_MAX_BYTES:
        raise ValueError(f"value of {len(value)} bytes is over the limit of {VALUE_MAX_BYTES} "
                         f"bytes (1 GiB)")
    return bytes(value)


def _check_xid(xid, name: str) -> int:
    if not isinstance(xid, int) or isinstance(xid, bool):
        raise TypeError(f"{name} must be an int, not {type(xid).__name__}")
    if not 1 <= xid < XMIN_MAX:
        raise ValueError(f"{name} must be in 1..{XMIN_MAX - 1}, got {xid}")
    return xid


# A full leaf is pruned instead of split when that frees at least this much of it
# (entries and their line pointers): a quarter of the page.
PRUNE_MIN_BYTES = BLCKSZ // 4


def _hole(page) -> tuple[int, int]:
    return struct.unpack_from("<HH", page, LOWER_OFFSET)


# A page's LSN and free hole (pd_lsn, pd_lower, pd_upper) in one unpack (BTree.put_new).
_LSN_AND_HOLE = struct.Struct(f"<Q{LOWER_OFFSET - 8}xHH")
_PAGE_LSN = struct.Struct("<Q")   # pd_lsn, at LSN_OFFSET


# What a leaf's high key (a pivot of one entry's key) can cost on the page: _choose_split
# bounds its search with these.
_HIGH_KEY_COST_MIN = item_cost(PIVOT_HEADER_SIZE)
_HIGH_KEY_COST_MAX = item_cost(PIVOT_HEADER_SIZE + KEY_MAX_BYTES)


class _SplitItems(Sequence):
    """A leaf's data items (offnum ``first`` on) with ``item`` inserted at ``new_index``, as
    a sequence whose items are copied from the page (``bt_item``: checked) only when
    asked for: a split looks at a few keys and copies the items it moves right."""

    __slots__ = ("page", "first", "item", "new_index", "n")

    def __init__(self, page, first: int, item: bytes, new_index: int, n: int) -> None:
        self.page, self.first, self.item, self.new_index, self.n = \
            page, first, item, new_index, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k):
        if isinstance(k, slice):
            start, stop, step = k.indices(self.n)
            if step != 1 or start >= stop:
                return [self[i] for i in range(start, stop, step)]
            at = self.new_index
            out = bt_items(self.page, self.first + (start if start <= at else start - 1),
                           self.first + (stop if stop <= at else stop - 1))
            if start <= at < stop:
                out.insert(at - start, self.item)
            return out
        if k < 0:
            k += self.n
        if not 0 <= k < self.n:
            raise IndexError(k)
        if k == self.new_index:
            return self.item
        return bytes(bt_item(self.page, self.first + (k if k < self.new_index else k - 1)))


def _choose_split(items: Sequence[bytes], leaf: bool, old_high_key: bytes | None,
                  new_index: int, lens: Sequence[int] | None = None) -> int:
    """``_choose_split_scan``'s answer for a leaf without sizing every candidate: only the
    left size depends on the high key, whose cost lies in [_HIGH_KEY_COST_MIN,
    _HIGH_KEY_COST_MAX], so bisecting the prefix sums bounds where the answer can be and
    only the candidates inside the bound are sized (a split of a leaf of small entries
    sizes a handful of its ~60 candidates). Internal pages take the scan. ``lens``: the
    items' lengths when the caller has them (``items`` then copies an item when asked)."""
    if not leaf:
        return _choose_split_scan(items, leaf, old_high_key, new_index)
    n = len(items)
    prefix = list(itertools.accumulate(item_costs(map(len, items) if lens is None else lens),
                                       initial=0))
    cap = PAGE_CAPACITY_BYTES
    right_base = (item_cost(len(old_high_key)) if old_high_key is not None else 0) + prefix[n]

    def left_of(k: int) -> int:
        return prefix[k] + item_cost(PIVOT_HEADER_SIZE + len(entry_key(items[k])[0]))

    ascending = _localized_ascending(items, new_index)
    if ascending and new_index < n - 1:
        k = new_index + 1
        if cap // 2 <= left_of(k) <= cap and right_base - prefix[k] <= cap:
            return k
    if (old_high_key is None or ascending) and new_index == n - 1:
        # The scan's pick: the largest legal k whose left side fits the fillfactor goal
        # (unless its left side is smaller than its right: the 50/50 pick below).
        # No k with prefix[k] > goal - _HIGH_KEY_COST_MIN can fit it.
        goal = cap * LEAF_FILLFACTOR_PERCENT // 100
        k = min(bisect.bisect_right(prefix, goal - _HIGH_KEY_COST_MIN) - 1, n - 1)
        while k >= 1:
            left = left_of(k)
            if left <= goal and right_base - prefix[k] <= cap:
                break
            k -= 1
        else:
            return _choose_split_scan(items, leaf, old_high_key, new_index)
        if left >= right_base - prefix[k]:
            return k
    # The scan's pick: the smallest legal k with the least |left - right|, where
    # left - right = 2 prefix[k] + high key cost - right_base.
    best: tuple[int, int] | None = None
    k0 = max(1, bisect.bisect_left(
        prefix, -(-(right_base - _HIGH_KEY_COST_MIN) // 2)))  # first k with bound >= 0
    for k in range(k0, n):  # |difference| >= 2 prefix[k] + min cost - right_base, growing
        if best is not None and 2 * prefix[k] + _HIGH_KEY_COST_MIN - right_base >= best[0]:
            break
        left, right = left_of(k), right_base - prefix[k]
        if left <= cap and right <= cap and (best is None or (abs(left - right), k) < best):
            best = (abs(left - right), k)
    for k in range(min(k0, n) - 1, 0, -1):  # |difference| >= -(2 prefix[k] + max cost - base)
        if best is not None and right_base - 2 * prefix[k] - _HIGH_KEY_COST_MAX > best[0]:
            break
        left, right = left_of(k), right_base - prefix[k]
        if left <= cap and right <= cap and (best is None or (abs(left - right), k) <= best):
            best = (abs(left - right), k)
    if best is None:
        return _choose_split_scan(items, leaf, old_high_key, new_index)
    return best[1]


def _localized_ascending(items: Sequence[bytes], new_index: int) -> bool:
    """Whether a leaf's new entry ``items[new_index]`` continues a localized ascending run
    (nbtree's ``_bt_afternewitemoff`` case): the two entries left of it are other keys
    written by earlier transactions, one after the other (xmins strictly ascending), the
    first at most ASCENDING_XID_WINDOW xids before the new one. A split then keeps the
    run left and leaves the run's future keys a page to themselves (fillfactor-full
    pages behind it, as at the tree's right edge) instead of half-empty pages at every
    split. One transaction's entries (one xid) never make a run: a batch splits as
    before."""
    if new_index < 2:
        return False
    key, xmin = entry_key(items[new_index])
    key1, xmin1 = entry_key(items[new_index - 1])
    key2, xmin2 = entry_key(items[new_index - 2])
    return key2 < key1 < key and xmin2 < xmin1 < xmin and \
        xmin - xmin2 <= ASCENDING_XID_WINDOW


def _choose_split_scan(items: Sequence[bytes], leaf: bool, old_high_key: bytes | None,
                       new_index: int) -> int:
    """Index k: the left page keeps items[:k] (+ a high key made of items[k]'s key), the
    right gets items[k:] (internal: items[k]'s downlink becomes its minus-inf item).
    Sizes every candidate (the reference ``_choose_split`` agrees with)."""
    n = len(items)
    costs = [item_cost(len(i)) for i in items]
    prefix = list(itertools.accumulate(costs, initial=0))
    right_extra = item_cost(len(old_high_key)) if old_high_key is not None else 0
    minus_inf_cost = item_cost(PIVOT_HEADER_SIZE)

    def sizes(k: int) -> tuple[int, int]:
        if leaf:
            hk = item_cost(PIVOT_HEADER_SIZE + len(entry_key(items[k])[0]))
            right = right_extra + prefix[n] - prefix[k]
        else:
            hk = item_cost(len(items[k]))  # same key bytes as the pivot (child -> 0)
            right = right_extra + minus_inf_cost + prefix[n] - prefix[k + 1]
        return prefix[k] + hk, right

    valid = []
    for k in range(1, n):
        left, right = sizes(k)
        if left <= PAGE_CAPACITY_BYTES and right <= PAGE_CAPACITY_BYTES:
            valid.append((k, left, right))
    assert valid, "no legal split point (item size limits guarantee one)"
    ascending = leaf and _localized_ascending(items, new_index)
    if ascending and new_index < n - 1:
        # A run ascending into the middle of the page: the left page keeps the run up to
        # the new entry, when that is at least half a page; the run goes on right of it.
        after = [v for v in valid if v[0] == new_index + 1 and v[1] >= PAGE_CAPACITY_BYTES // 2]
        if after:
            return after[0][0]
    if (old_high_key is None or ascending) and new_index == n - 1:
        # Ascending inserts at the right edge of the tree or of a localized run: leave the
        # left page fillfactor% full -- unless that leaves it emptier than the right (a
        # few entries near the size limit): then the 50/50 split below.
        goal = PAGE_CAPACITY_BYTES * LEAF_FILLFACTOR_PERCENT // 100
        fitting = [v for v in valid if v[1] <= goal]
        pick = fitting[-1] if fitting else valid[0]
        if pick[1] >= pick[2]:
            return pick[0]
    return min(valid, key=lambda v: abs(v[1] - v[2]))[0]


class _Change:
    """One page of a record being built: its pinned, exclusive-locked buffer and actions
    (or, for a leaf run, its actions already encoded: ``payload`` holding ``nactions``)."""

    __slots__ = ("buf", "block", "will_init", "actions", "payload", "nactions")

    def __init__(self, buf: int, block: int, will_init: bool) -> None:
        self.buf = buf
        self.block = block
        self.will_init = will_init
        self.actions: list[tuple[int, bytes]] = []
        self.payload: bytes | None = None
        self.nactions = 0


class _LeafFeed:
    """Next-block callback of a leaf-level read stream: the downlinks of the level above
    the leaves, from the one covering ``key`` rightwards, one parent page at a time (each
    copied under a short share lock). A lone root leaf is the whole feed. With ``stop``,
    the feed ends before the first child whose pivot is ``>= stop`` (every key there is
    past the range): no read-ahead past the end of a range scan."""

    def __init__(self, tree: BTree, key: bytes, stop: bytes | None = None) -> None:
        self.tree = tree
        self.stop = stop
        self.queue: list[int] = []
        self.pos = 0
        self.prefetch = _ParentPrefetch(tree)
        block, buf = tree._descend(key, XMIN_MAX, level=1)
        try:
            page = tree.bufmgr.page(buf)
            special = tree._special(page, block)
            if special.level == 0:  # the root is the only leaf
                self.queue = [block]
                self.next_parent = P_NONE
                return
            first = max(bt_first_data(special), search_page(page, key, XMIN_MAX, True) - 1)
            self._take(page, special, first, block)
        finally:
            tree._release(buf)
        self.prefetch.start(self.next_parent)

    def _take(self, page, special: Special, first: int, block: int) -> None:
        self.next_parent = special.next
        try:
            queue = children(page, first)  # one C call for the page's downlinks
            stop = self.stop
            if stop is not None:
                # The first pivot after the first one taken (which may be minus infinity)
                # whose key is >= stop: its child and those right of it are past the range.
                cut = max(search_page(page, stop, XMIN_MAX, False) - first, 1)
                if cut < len(queue):
                    del queue[cut:]
                    self.next_parent = P_NONE
        except BTreePageError as e:
            raise self.tree._corrupt(block, str(e)) from None
        self.queue = queue
        self.pos = 0

    def __call__(self) -> int | None:
        while self.pos >= len(self.queue):
            if self.next_parent == P_NONE:
                return None
            block = self.next_parent
            self.prefetch.finish()  # its read, started a parent page ago, is done by now
            _visit_parent(self.tree, block, "right", lambda page, special, blk: self._take(
                page, special, bt_first_data(special), blk))
            self.prefetch.start(self.next_parent)
        self.pos += 1
        return self.queue[self.pos - 1]

    def next_run(self, limit: int) -> list[int]:
        """The next blocks, as calls would give them, while they continue one run of
        consecutive block numbers (adjacent leaves: one combined read), at most ``limit``;
        an empty list at the end. The read stream takes a run per call this way."""
        first = self()
        if first is None:
            return []
        queue, pos = self.queue, self.pos
        end = min(len(queue), pos + limit - 1)
        k = pos
        while k < end and queue[k] == first + 1 + k - pos:
            k += 1
        self.pos = k
        return queue[pos - 1:k]

    def close(self) -> None:
        """Release the read of the next parent page started ahead, if any."""
        self.prefetch.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ParentPrefetch:
    """The read of the parent page a leaf feed visits next, started as soon as the feed
    knows its link: a cold scan's feed otherwise read it synchronously behind the leaf
    reads in flight, and its stream stalled there (a fifth of a cold io_uring scan's time
    in py-spy). Only the page's I/O is early: the feed still reads the page's content
    under its share lock when it gets there."""

    __slots__ = ("tree", "op")

    def __init__(self, tree: BTree) -> None:
        self.tree = tree
        self.op = None

    def start(self, block: int) -> None:
        """Start reading ``block`` (pinned until ``finish``); nothing for ``P_NONE``."""
        self.finish()
        if block != P_NONE:
            tree = self.tree
            self.op = tree.bufmgr.start_read_buffers(tree.rel, tree.fork, block, 1)

    def finish(self) -> None:
        """Wait for the read started (its failure is raised) and drop its pin."""
        op, self.op = self.op, None
        if op is not None:
            bm = self.tree.bufmgr
            try:
                if op.needs_wait:
                    bm.wait_read_buffers(op)
            finally:
                bm.unpin_many(op.buffers)


def _visit_parent(tree: BTree, block: int, link: str,
                  take: Callable[[object, Special, int], None]) -> None:
    """Share-lock the level-1 page ``block`` that a ``link``-link led to and hand its page,
    special space and block to ``take``; DataCorruptionError naming it when not on level
    1. The leaf feeds' step to the next parent page, either way."""
    buf = tree._read(block)
    try:
        page = tree.bufmgr.page(buf)
        special = tree._special(page, block)
        if special.level != 1:
            raise tree._corrupt(block, f"{link}-link on level 1 leads to a level "
                                       f"{special.level} page")
        take(page, special, block)
    finally:
        tree._release(buf)


class _LeafFeedReverse:
    """Next-block callback of a backward leaf-level read stream: the downlinks of the level
    above the leaves from the one covering ``stop`` (or the last) leftwards, one parent
    page at a time, following the parent level's left-links."""

    def __init__(self, tree: BTree, stop: bytes | None) -> None:
        self.tree = tree
        self.prefetch = _ParentPrefetch(tree)
        if stop is None:
            block, buf = tree._descend(b"", XMIN_MAX, rightmost=True, level=1)
        else:
            block, buf = tree._descend(stop, XMIN_MAX, level=1)
        try:
            page = tree.bufmgr.page(buf)
            special = tree._special(page, block)
            if special.level == 0:  # the root is the only leaf
                self.queue = [block]
                self.prev_parent = P_NONE
                return
            last = bt_item_count(page) if stop is None else \
                search_page(page, stop, XMIN_MAX, True) - 1
            self._take(page, special, block, max(last, bt_first_data(special)))
        finally:
            tree._release(buf)
        self.prefetch.start(self.prev_parent)

    def _take(self, page, special: Special, block: int, last: int) -> None:
        try:
            first = bt_first_data(special)
            self.queue = children(page, first)[:max(last + 1 - first, 0)]
        except BTreePageError as e:
            raise self.tree._corrupt(block, str(e)) from None
        self.prev_parent = special.prev

    def __call__(self) -> int | None:
        while not self.queue:
            if self.prev_parent == P_NONE:
                return None
            block = self.prev_parent
            self.prefetch.finish()
            _visit_parent(self.tree, block, "left", lambda page, special, blk: self._take(
                page, special, blk, bt_item_count(page)))
            self.prefetch.start(self.prev_parent)
        return self.queue.pop()

    def close(self) -> None:
        """Release the read of the next parent page started ahead, if any."""
        self.prefetch.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BTree:
    """See the module docstring. Build with ``BTree.create`` or ``BTree.open``; one object
    per relation fork in a process (it owns the write lock and the cached metapage)."""

    def __init__(self, rel: int, bufmgr, wal, *, fork: int = Fork.MAIN,
                 _meta: tuple[int, int, int, int] = (1, 0, P_NONE, 0)) -> None:
        if not isinstance(rel, int) or isinstance(rel, bool) or rel < 0:
            raise ValueError(f"rel must be a relfilenumber (non-negative int), got {rel!r}")
        self.rel = rel
        self.fork = Fork(fork)
        self.bufmgr = bufmgr
        self.wal = wal
        self._root, self._level, self._free_head, self._free_count = _meta
        self._write_lock = threading.RLock()
        self._put_scratch = PutScratch()  # put_new's buffers (used under _write_lock)
        # In-page pruning of a full leaf before a split (_prune_leaf): the vacuum test to
        # judge its entries by, made when wanted (the KV store's owner sets it; None: no
        # pruning), and how many entries it removed (a statistic).
        self.prune_test: Callable[[], Callable[[int, int], bool]] | None = None
        self.pruned = 0
        self._c_pool = getattr(bufmgr, "c_pool", None)   # the pool base for put_new's C call
        # Reader epochs: a leaf unlinked by vacuum at epoch E is recycled only once every
        # reader that started at or before E has finished (PostgreSQL's safexid, in-process).
        # Readers register without a lock (see _begin_read); the lock orders the unlinker's
        # epoch bumps and the recycler's look at the readers.
        self._epoch_lock = threading.Lock()
        self._epoch = 1
        self._reader_tokens = itertools.count(1)
        self._readers: dict[int, int] = {}  # reader token -> epoch it started in
        self._unlinked: list[tuple[int, int]] = []  # (epoch, block) waiting to be recycled
        # Inner-page cache (readers' descents): block -> (bytes copy, special) of internal
        # pages. Every logged change pops the blocks it touched and bumps the generation
        # (_forget_inner); a reader installs a copy only if the generation did not move
        # since before it read the page, so no stale copy is ever installed. A copy taken
        # out just before a change is still safe to descend by (L&Y move-right; the reader
        # epochs keep any leaf it names from being recycled meanwhile).
        self._inner: dict[int, tuple[bytes, Special, Callable]] = {}
        self._inner_lock = threading.Lock()
        self._inner_gen = 0
        self._inner_installs = 0   # copies installed (a point read's descent table, below)
        # A point read's (and an autocommit put's) descent in one C call
        # (_leaf_for_point): the cached copies as a C table, a list [pointers by block,
        # their count, generation, installs, {block: buffer keeping its copy alive},
        # retired buffers]. Built whole from the cache under _inner_lock at one
        # (generation, installs); then every change of the cache, made under that lock,
        # is made to the table as well (_table_drop, _table_add), which moves its
        # generation and installs along: writers' splits leave it current. A copy dropped
        # from it stays alive (retired) until the table is replaced, so a C call that
        # read a pointer before the drop never reads freed memory; None until a descent
        # builds one, and again once too many copies were retired or a block is past it.
        self._descent: list | None = None
        self._descent_stale = 0    # descents since the table went missing or stale
        self._forkno = int(self.fork)  # the buffer tag's fork number (point-read hit path)
        # A batch's splits extend the relation ahead (_extend): blocks extended and not yet
        # used (write lock held; empty outside _apply_sorted, whose end frees what is
        # left), and how many pages the next extension adds (1 outside a batch).
        self._spares: list[int] = []
        # the spares' buffers, still pinned (unlocked) from the extension, by block: a
        # split takes one without a buffer-mapping lookup; unpinned when the batch ends
        self._spare_pins: dict[int, int] = {}
        self._extend_pages = 1
        self._extend_ahead = False

    # --- creating and opening -------------------------------------------------------------------
    @classmethod
    def create(cls, rel: int, bufmgr, wal, *, fork: int = Fork.MAIN) -> BTree:
        """A new, empty tree in a relation fork that has no blocks yet: metapage at block
        0 and an empty root leaf at block 1, in one NEWTREE record."""
        smgr = bufmgr.smgr
        if smgr.exists(rel, fork) and smgr.nblocks(rel, fork) > 0:
            raise ValueError(f"relation {rel} fork {Fork(fork).label} already has blocks; "
                             f"open it instead")
        tree = cls(rel, bufmgr, wal, fork=fork)
        bufs = bufmgr.extend(rel, fork, 2)
        meta, root = (_Change(b, i, True) for i, b in enumerate(bufs))
        assert bufmgr.block_of(bufs[0])[2] == META_BLOCK
        meta.actions.append((A_INIT, tree._meta_init(1, 0, P_NONE, 0)))
        root.actions.append((A_INIT, init_data(Special(P_NONE, P_NONE, 0, BTP_LEAF | BTP_ROOT),
                                               [])))
        try:
            tree._log(XLOG_BTREE_NEWTREE, 0, [meta, root])
        finally:
            tree._release_changes([meta, root])
        return tree

    @classmethod
    def open(cls, rel: int, bufmgr, wal, *, fork: int = Fork.MAIN) -> BTree:
        """The tree of an existing relation fork; reads the metapage and nothing else.
        DataCorruptionError naming relation and block 0 when it is not a B+tree metapage."""
        tree = cls(rel, bufmgr, wal, fork=fork)
        page = tree._copy_page(META_BLOCK)
        tree._root, tree._level, tree._free_head, tree._free_count = tree._decode_meta(page)
        return tree

    def _meta_init(self, root: int, level: int, free_head: int, free_count: int) -> bytes:
        return init_data(_META_SPECIAL, [_META.pack(BTREE_MAGIC, BTREE_VERSION, root, level,
                                                    free_head, free_count)])

    def _decode_meta(self, page) -> tuple[int, int, int, int]:
        try:
            if page_is_new(page):
                raise BTreePageError("metapage is all zero")
            special = bt_special(page)
            item = bt_item(page, 1)
            if not special.flags & BTP_META or len(item) != _META.size:
                raise BTreePageError(f"block 0 is not a metapage (flags {special.flags:#x})")
            magic, version, root, level, free_head, free_count = _META.unpack_from(item)
        except (BTreePageError, ValueError) as e:
            raise self._corrupt(META_BLOCK, str(e)) from None
        if magic != BTREE_MAGIC or version != BTREE_VERSION:
            raise self._corrupt(META_BLOCK, f"metapage magic {magic:#x} version {version}, "
                                            f"expected {BTREE_MAGIC:#x} version {BTREE_VERSION}")
        return root, level, free_head, free_count

    @property
    def root(self) -> int:
        return self._root

    def stats(self) -> BTreeStats:
        """Root, height and free-list length, from the cached metapage (no I/O)."""
        return BTreeStats(self._root, self._level + 1, self._free_count)

    @property
    def height(self) -> int:
        """Levels including the leaves (1 for a lone root leaf)."""
        return self._level + 1

    # --- helpers -----------------------------------------------------------------------------
    @contextmanager
    def _reading(self):
        """Register a reader for the duration (see the reader epochs in __init__)."""
        epoch = self._begin_read()
        try:
            yield
        finally:
            self._end_read(epoch)

    def _begin_read(self) -> int:
        """Register a reader (``_reading`` without a generator, for point reads); returns
        its token for ``_end_read``.

        No lock: ``next()`` on an ``itertools.count`` and a dict store or delete are each
        one step under the GIL, and ``_recycle`` copies the dict in one step too. Why that
        is enough: a reader R reads the epoch (e), then registers (e), then descends. If
        the recycler's copy holds R, R's e <= the epoch at R's descent, so every leaf
        unlinked at or after e waits for R (and a leaf unlinked before e was unlinked
        before R's descent began: R cannot reach it). If the copy misses R, R registers
        after the copy, so R's descent begins after every unlink the recycler acts on had
        finished (logged, the parent's cached copy dropped, the epoch bumped): it cannot
        reach those leaves either."""
        token = next(self._reader_tokens)
        self._readers[token] = self._epoch
        return token

    def _end_read(self, token: int) -> None:
        del self._readers[token]

    def _forget_inner(self, changes: Sequence[_Change]) -> None:
        """Drop the cached copies of the pages a logged change touched (see __init__),
        and their pointers from a current descent table (which stays current)."""
        with self._inner_lock:
            table = self._current_table()
            self._inner_gen += 1
            inner = self._inner
            if inner:
                for ch in changes:
                    if inner.pop(ch.block, None) is not None and table is not None:
                        self._table_drop(table, ch.block)
            if table is not None and self._descent is table:
                table[2] = self._inner_gen

    def _current_table(self) -> list | None:
        """The descent table if it mirrors the cache as it is now, else None."""
        table = self._descent
        if table is not None and table[2] == self._inner_gen and \
                table[3] == self._inner_installs:
            return table
        return None

    def _table_drop(self, table: list, block: int) -> None:
        """Take ``block``'s copy out of the descent table (caller holds _inner_lock): its
        pointer NULL first, then its buffer retired (kept alive until the table goes)."""
        if block < table[1]:
            table[0][block] = _ffi.NULL
        buf = table[4].pop(block, None)
        if buf is not None:
            table[5].append(buf)
            if len(table[5]) > DESCENT_RETIRED_MAX:
                self._descent = None   # a fresh table frees them (readers keep theirs)

    def _table_add(self, table: list, block: int, page: bytes, locator) -> None:
        """Put a newly cached copy into the descent table (caller holds _inner_lock): its
        buffer kept first, then its pointer; a block past the table drops the table."""
        if block >= table[1]:
            self._descent = None
            return
        buf = getattr(locator, "args", (None,))[0]   # page_locator's buffer of the copy
        if not isinstance(buf, _ffi.CData):
            buf = _ffi.from_buffer(page)
        table[4][block] = buf
        table[0][block] = buf

    def _inner_page(self, block: int) -> tuple[bytes, Special, Callable] | None:
        """The cached copy of internal page ``block`` (bytes, special, its ``page_locator``),
        read (share-locked, verified by the buffer manager) and installed on a miss; None
        when ``block`` is a leaf."""
        got = self._inner.get(block)
        if got is not None:
            return got
        gen = self._inner_gen  # read before the page: a change after it voids the install
        buf = self._read(block)
        try:
            page = self.bufmgr.page(buf)
            special = self._special(page, block)
            if special.level == 0:
                return None
            copy = bytes(page)
            got = (copy, special, page_locator(copy))
        finally:
            self._release(buf)
        with self._inner_lock:
            if self._inner_gen == gen:
                table = self._current_table()
                inner = self._inner
                if len(inner) >= INNER_CACHE_PAGES_MAX:  # the oldest copy makes room
                    oldest = next(iter(inner))
                    del inner[oldest]
                    if table is not None:
                        self._table_drop(table, oldest)
                inner[block] = got
                self._inner_installs += 1
                if table is not None:
                    self._table_add(table, block, copy, got[2])
                    if self._descent is table:
                        table[3] = self._inner_installs
        return got

    def _leaf_for_point(self, key: bytes) -> int:
        """``_leaf_for(key)`` for a point read: one C call (``slk_bt_descend``) over the
        descent table, when it holds the cache as it is now (same generation and installs);
        ``_leaf_for`` when it does not, or when the C call cannot decide (a page not
        cached, a lone root leaf, a page only the reference judges). The table follows
        the cache through writers' splits; a missing one is built after
        ``DESCENT_REBUILD_READS`` descents without it. Its copies stay alive while this
        call holds it (a local, which keeps the retired ones too), whatever the cache
        drops meanwhile. An autocommit put (``put_new``) descends by it as well."""
        if _c_descend is None:
            return self._leaf_for(key)
        table = self._descent
        if table is None or table[2] != self._inner_gen or table[3] != self._inner_installs:
            self._descent_stale += 1
            if self._descent_stale < DESCENT_REBUILD_READS:
                return self._leaf_for(key)
            table = self._descent_table()
            if table is None:
                return self._leaf_for(key)
        found = _c_descend(table[0], table[1], self._root, key, len(key), XMIN_MAX)
        return found if found >= 0 else self._leaf_for(key)

    def _descent_table(self) -> list | None:
        """A new descent table from the inner-page cache as it is now (installed as
        ``_descent``), or None when the cache is empty or names a block past
        ``DESCENT_TABLE_BLOCKS_MAX``. Built under ``_inner_lock``, which every change of
        the cache takes: it mirrors the cache at its (generation, installs), and the
        changes after it are made to it as well (``_forget_inner``, ``_inner_page``)."""
        self._descent_stale = 0
        with self._inner_lock:
            inner = self._inner
            if not inner or max(inner) >= DESCENT_TABLE_BLOCKS_MAX:
                self._descent = None
                return None
            # room for blocks the tree adds (new internal pages) before a rebuild
            n = min(max(inner) + 1 + DESCENT_TABLE_HEADROOM, DESCENT_TABLE_BLOCKS_MAX)
            table = [_ffi.new("uint8_t *[]", n), n, self._inner_gen, self._inner_installs,
                     {}, []]
            for block, (page, _special, locator) in inner.items():
                self._table_add(table, block, page, locator)
            self._descent = table
        return table

    def _leaf_for(self, key: bytes, xmin: int = XMIN_MAX) -> int:
        """The leaf block where (key, xmin) belongs, by the cached internal pages (one C
        ``locate`` per level, moving right past splits); no page stays pinned. The leaf
        itself may have split or been unlinked since: its reader moves right."""
        block = self._root
        expect = None
        inner = self._inner
        while True:
            got = inner.get(block)
            if got is None:
                got = self._inner_page(block)
            if got is None:  # a leaf: only the root (a lone root leaf) gets here
                if expect is not None:
                    raise self._corrupt(block, f"level 0, but its parent is at level "
                                               f"{expect + 1}")
                return block
            page, special, locator = got
            if expect is not None and special.level != expect:
                raise self._corrupt(block, f"level {special.level}, but its parent is at "
                                           f"level {expect + 1}")
            found = locator(key, len(key), xmin)
            if found == -1:  # malformed: the reference says what is wrong
                try:
                    found = locate(page, key, xmin)
                except BTreePageError as e:
                    raise self._corrupt(block, str(e)) from None
            if found == MOVE_RIGHT:
                block = special.next
                expect = special.level
                continue
            if special.level == 1:
                return found
            expect = special.level - 1
            block = found

    def _corrupt(self, block: int, why: str) -> DataCorruptionError:
        return DataCorruptionError(f"B+tree relation {self.rel} block {block}: {why}",
                                   relation=self.rel, fork=int(self.fork), block=block)

    def _special(self, page, block: int) -> Special:
        if page_is_new(page):
            raise self._corrupt(block, "page is all zero (never initialised) inside the tree")
        try:
            return bt_special(page)
        except BTreePageError as e:
            raise self._corrupt(block, str(e)) from None

    def _read(self, block: int, *, exclusive: bool = False) -> int:
        """``block`` pinned and content-locked (shared, or exclusive): one buffer-manager
        call, whose one descriptor-lock section takes a pool hit, and whose miss the
        calling thread reads inline (``BufferManager.read_buffer``)."""
        bm = self.bufmgr
        buf = bm.read_buffer(self.rel, self.fork, block)
        try:
            (bm.lock_exclusive if exclusive else bm.lock_shared)(buf)
        except BaseException:
            bm.unpin(buf)
            raise
        return buf

    def _release(self, buf: int, *, exclusive: bool = False) -> None:
        bm = self.bufmgr
        (bm.unlock_exclusive if exclusive else bm.unlock_shared)(buf)
        bm.unpin(buf)

    def _copy_page(self, block: int) -> bytes:
        buf = self._read(block)
        try:
            return bytes(self.bufmgr.page(buf))
        finally:
            self._release(buf)

    def _log(self, info: int, xid: int, changes: Sequence[_Change], *,
             leaves_only: bool = False,
             then: Callable[[bytearray], tuple[bytes, int]] | None = None) -> int:
        """Apply each change's actions to its (exclusive-locked) page, log them as one
        record, stamp the pages with its end LSN and dirty them. If logging fails, every
        page is put back byte for byte. ``leaves_only``: the caller saw every changed page
        at level 0, which the inner-page cache never holds (it is left alone). A single
        change with its ``payload`` encoded already (a leaf run) logs that payload.
        ``then``: called with changes[0]'s page once every action is applied, it returns
        more actions of block index 0 (payload bytes, count: a leaf run on that page),
        applied to it and logged after the others in the same record."""
        bm = self.bufmgr
        pres = []
        specs = []
        actions = []
        try:
            encoded = changes[0].payload if len(changes) == 1 else None
            if encoded is None:
                for index, ch in enumerate(changes):
                    actions.extend((index, code, data) for code, data in ch.actions)
                payload = encode_actions(actions)
            else:
                payload = encoded
            for index, ch in enumerate(changes):
                page = bm.page(ch.buf)
                pres.append(bytes(page))
                lsn = page_get_lsn(page)
                # as redo applies them (byte for byte): a leaf's run of inserts and
                # set-xmaxes in one C call, the rest one by one
                if encoded is None:
                    apply_block_actions(page, payload, index, ch.actions)
                else:
                    apply_payload_actions(page, payload, index, ch.nactions)
                specs.append(BlockSpec(self.rel, int(self.fork), ch.block, page, lsn,
                                       ch.will_init, _hole(page)))
            if then is not None:
                page = bm.page(changes[0].buf)
                more, nmore = then(page)
                if nmore:
                    apply_payload_actions(page, more, 0, nmore)
                    payload += more
                    first = specs[0]
                    specs[0] = BlockSpec(first.rel, first.fork, first.block, page,
                                         first.page_lsn, first.will_init, _hole(page))
            _start, end = self.wal.insert(RM_BTREE, info, xid, payload, specs)
        except BaseException:
            for ch, pre in zip(changes, pres, strict=False):
                bm.page(ch.buf)[:] = pre
            raise
        for ch in changes:
            page_set_lsn(bm.page(ch.buf), end)
            bm.mark_dirty(ch.buf)
        if not leaves_only:
            self._forget_inner(changes)  # readers' cached copies of these pages are stale
        return end

    def _release_changes(self, changes: Sequence[_Change]) -> None:
        for ch in changes:
            self._release(ch.buf, exclusive=True)

    def _allocate(self, alloc: list[int]) -> _Change:
        """A page for a split: the head of the free list ``alloc`` = [head, count] (which
        moves on), else a new page at the end of the relation. Pinned, exclusive-locked,
        will_init."""
        head = alloc[0]
        if head == P_NONE:
            return self._extend()
        buf = self._read(head, exclusive=True)
        try:
            special = self._special(self.bufmgr.page(buf), head)
            if not special.flags & BTP_FREE:
                raise self._corrupt(head, f"page on the free list is not free (flags "
                                          f"{special.flags:#x})")
        except BaseException:
            self._release(buf, exclusive=True)
            raise
        alloc[0], alloc[1] = special.next, alloc[1] - 1
        return _Change(buf, head, True)

    def _extend(self) -> _Change:
        """A new page at the end of the relation: pinned, exclusive-locked, will_init.
        Inside a batch (``_apply_sorted``) the relation grows by ``_extend_pages`` at a
        time (doubling up to EXTEND_AHEAD_PAGES_MAX); the pages not used yet wait, all
        zero, in ``_spares``."""
        bm = self.bufmgr
        if self._spares:
            block = self._spares.pop()
            buf = self._spare_pins.pop(block, None)
            if buf is None:
                buf = self._read(block, exclusive=True)
            else:
                try:
                    bm.lock_exclusive(buf)
                except BaseException:
                    bm.unpin(buf)
                    raise
            if not page_is_new(bm.page(buf)):
                self._release(buf, exclusive=True)
                raise self._corrupt(block, "a page extended ahead for a split is no longer "
                                           "all zero")
            return _Change(buf, block, True)
        n = self._extend_pages
        bufs = bm.extend(self.rel, self.fork, n)
        if self._extend_ahead:
            self._extend_pages = max(1, min(2 * n, EXTEND_AHEAD_PAGES_MAX,
                                            bm.nbuffers // EXTEND_AHEAD_POOL_DIVISOR))
        spare = bufs[1:]
        if spare:
            blocks = [bm.block_of(b)[2] for b in spare]
            for b in spare:
                bm.unlock_exclusive(b)  # the pin stays: _spare_pins
            self._spare_pins.update(zip(blocks, spare, strict=True))
            self._spares.extend(reversed(blocks))  # pop() hands them out in block order
        return _Change(bufs[0], bm.block_of(bufs[0])[2], True)

    # --- descent -------------------------------------------------------------------------------
    def _descend(self, key: bytes, xmin: int, *, stack: list[int] | None = None,
                 exclusive: bool = False, rightmost: bool = False,
                 level: int = 0) -> tuple[int, int]:
        """(block, buf) of the leaf where (key, xmin) belongs (or the rightmost leaf),
        locked (share, or exclusive for writers). Moves right past splits (L&Y); records
        the internal pages passed in ``stack``. With ``level`` > 0 it stops at that level
        (or at the leaf when the tree is lower), share-locked."""
        bm = self.bufmgr
        block = self._root
        expect_level = None
        while True:
            buf: int | None = self._read(block)
            try:
                page = bm.page(buf)
                special = self._special(page, block)
                # One C call per page: move right (L&Y), or the child / leaf position.
                found = MOVE_RIGHT if rightmost or special.flags & BTP_DELETED \
                    else locate(page, key, xmin)
                while found == MOVE_RIGHT and special.next != P_NONE:
                    nxt = special.next
                    self._release(buf)
                    buf = None
                    buf = self._read(nxt)
                    block, page = nxt, bm.page(buf)
                    special = self._special(page, block)
                    found = MOVE_RIGHT if rightmost or special.flags & BTP_DELETED \
                        else locate(page, key, xmin)
                if expect_level is not None and special.level != expect_level:
                    raise self._corrupt(block, f"level {special.level}, but its parent "
                                               f"is at level {expect_level + 1}")
                if level and special.level == level:
                    return block, buf
                if special.level == 0:
                    if not special.flags & BTP_LEAF:
                        raise self._corrupt(block, f"level 0 page without the leaf flag "
                                                   f"(flags {special.flags:#x})")
                    if exclusive:  # the only writer: nothing changes it in between
                        bm.unlock_shared(buf)
                        bm.lock_exclusive(buf)
                    return block, buf
                if rightmost:
                    pos = bt_item_count(page)
                    if pos < bt_first_data(special):
                        raise self._corrupt(block, "internal page without a downlink")
                    child = unpack_pivot(bt_item(page, pos)).child
                else:
                    child = found
            except BTreePageError as e:
                if buf is not None:
                    self._release(buf)
                raise self._corrupt(block, str(e)) from None
            except BaseException:
                if buf is not None:
                    self._release(buf)
                raise
            if stack is not None:
                stack.append(block)
            expect_level = special.level - 1
            self._release(buf)
            block = child

    # --- reads ------------------------------------------------------------------------------
    def versions(self, key) -> list[LeafEntry]:
        """Every version of ``key``, newest (largest xmin) first, as stored (payload may be
        an overflow reference: see ``value_of``)."""
        key = _check_key(key)
        with self._reading():
            return list(self._versions(key))

    def _versions(self, key: bytes) -> Iterator[LeafEntry]:
        bm = self.bufmgr
        block, buf = self._descend(key, XMIN_MAX)
        while True:
            try:
                page = bm.page(buf)
                special = self._special(page, block)
                out = []
                ended = False
                first = bt_item_count(page) + 1 if special.flags & BTP_DELETED else \
                    search_page(page, key, XMIN_MAX, False)
                for off in range(first, bt_item_count(page) + 1):
                    e = unpack_entry(bt_item(page, off))
                    if e.key != key:
                        ended = True
                        break
                    out.append(e)
                nxt = special.next
                if nxt != P_NONE and not special.flags & BTP_DELETED and \
                        unpack_pivot(bt_item(page, 1)).key != key:
                    ended = True  # the right sibling starts at a greater key
            except BTreePageError as e:
                self._release(buf)
                raise self._corrupt(block, str(e)) from None
            except BaseException:
                self._release(buf)
                raise
            self._release(buf)
            yield from out
            if ended or nxt == P_NONE:
                return
            block, buf = nxt, self._read(nxt)

    def with_prefix(self, prefix) -> list[LeafEntry]:
        """Every entry whose key starts with ``prefix``, in (key, xmin descending) order,
        as stored: one descent, then right siblings only while their keys can still start
        with it (a secondary index's point lookup, its keys ending with a heap TID)."""
        prefix = _check_key(prefix)
        bm = self.bufmgr
        out: list[LeafEntry] = []
        with self._reading():
            block, buf = self._descend(prefix, XMIN_MAX)
            while True:
                try:
                    page = bm.page(buf)
                    special = self._special(page, block)
                    ended = False
                    count = bt_item_count(page)
                    first = count + 1 if special.flags & BTP_DELETED else \
                        search_page(page, prefix, XMIN_MAX, False)
                    for off in range(first, count + 1):
                        e = unpack_entry(bt_item(page, off))
                        if not e.key.startswith(prefix):
                            ended = True
                            break
                        out.append(e)
                    nxt = special.next
                    if nxt != P_NONE and not special.flags & BTP_DELETED and not ended:
                        high = unpack_pivot(bt_item(page, 1)).key
                        ended = high > prefix and not high.startswith(prefix)
                except BTreePageError as e:
                    self._release(buf)
                    raise self._corrupt(block, str(e)) from None
                except BaseException:
                    self._release(buf)
                    raise
                self._release(buf)
                if ended or nxt == P_NONE:
                    return out
                block, buf = nxt, self._read(nxt)

    def value_of(self, entry: LeafEntry) -> bytes:
        """The value of an entry: its payload, or the out-of-line value it references."""
        if entry.flags & ENTRY_OVERFLOW:
            return self._read_overflow(unpack_overflow_ref(entry.payload))
        return entry.payload

    def get(self, key, snapshot: Snapshot = _see_all_live) -> bytes | None:
        """The value of the version of ``key`` that ``snapshot(xmin, xmax)`` makes visible
        (newest first), or None. The default sees every version not deleted."""
        key = _check_key(key)
        epoch = self._begin_read()
        try:
            return self._get(key, snapshot)
        finally:
            self._end_read(epoch)

    def get_trusted(self, key: bytes, snapshot: Snapshot) -> bytes | None:
        """``get`` for a caller that has checked ``key`` itself (bytes of at most
        ``KEY_MAX_BYTES``): the KV store's point read, with ``_begin_read``/``_end_read``
        inlined (same registration, fewer frames)."""
        token = next(self._reader_tokens)
        readers = self._readers
        readers[token] = self._epoch
        try:
            return self._get(key, snapshot)
        finally:
            del readers[token]

    def get_point(self, key: bytes, snapshot: Snapshot) -> bytes | None:
        """``get_trusted`` in one frame for the common case (the KV store's point read):
        the reader registered as ``get_trusted`` does, the leaf from a current descent
        table (``slk_bt_descend``), the leaf probed in the pool or read inline
        (``BufferManager.read_through`` with ``_PROBE``, as ``_probe_unlocked``), and the
        snapshot asked of its versions newest first; an overflow value is read as
        ``_get`` reads it. Everything else goes to ``_get`` from the start (same answer,
        same errors): no C helper, no current table, a descent the table cannot decide,
        a probe that needs the locked read (a dirty victim, a read elsewhere, a writer
        meanwhile, a page the reference judges, more versions than the call has room
        for), or versions continuing on the right sibling."""
        table = self._descent
        out = getattr(_opt_tls, "out", None)
        if (out is None or _c_descend is None or table is None
                or table[2] != self._inner_gen or table[3] != self._inner_installs):
            return self.get_trusted(key, snapshot)  # (which counts a stale table's reads)
        token = next(self._reader_tokens)
        readers = self._readers
        readers[token] = self._epoch
        try:
            nkey = len(key)
            block = _c_descend(table[0], table[1], self._root, key, nkey, XMIN_MAX)
            if block >= 0:
                tls = _opt_tls
                n = self.bufmgr.read_through(self.rel, self._forkno, block, _PROBE, key,
                                             nkey, out, _OPT_PROBE_VERSIONS, tls.copy)
                if n is not None and 0 <= n <= _OPT_PROBE_VERSIONS:
                    v = _ffi.unpack(out, 2 + 5 * n)
                    for i in range(2, len(v), 5):  # offset, length, xmin, xmax, eflags
                        if snapshot(v[i + 2], v[i + 3]):
                            off = v[i]
                            payload = tls.view[off + LEAF_HEADER_SIZE + nkey:off + v[i + 1]]
                            if v[i + 4] & ENTRY_OVERFLOW:  # out of line: no leaf pinned
                                return self._read_overflow(
                                    unpack_overflow_ref(payload.tobytes()))
                            return payload.tobytes()
                    if not v[1] or v[0] == P_NONE:
                        return None  # no visible version, none further right
            return self._get(key, snapshot)
        finally:
            del readers[token]

    def _get(self, key: bytes, snapshot: Snapshot) -> bytes | None:
        """A point read: the leaf from the cached internal pages, then one C call on it
        (``probe_leaf``: the key's versions, newest first) and the snapshot on each until
        one is visible; right siblings only while versions continue there. A leaf in the
        pool is probed without its share lock (``_probe_unlocked``); under it when a
        writer held the leaf meanwhile, on a miss, or for a page the reference judges."""
        bm = self.bufmgr
        block = self._leaf_for_point(key)
        skip = LEAF_HEADER_SIZE + len(key)  # an entry's value starts this far into it
        while True:
            buf = -1   # a share-locked pin to release, when the leaf was read locked
            try:
                v = None
                if _lib is not None:
                    v, page = _probe_unlocked(bm, self.rel, self._forkno, block, key)
                if v is None:
                    buf = self._read(block)
                    page = bm.pages[buf]  # (bm.page(buf) without the call)
                    try:
                        v = probe_leaf_flat(page, key)  # right-link, status, versions
                    except BTreePageError as e:
                        self._special(page, block)  # an all-zero page says so
                        raise self._corrupt(block, str(e)) from None
                payload = None
                for i in range(2, len(v), 5):  # offset, length, xmin, xmax, eflags
                    if snapshot(v[i + 2], v[i + 3]):
                        off = v[i]
                        payload = page[off + skip:off + v[i + 1]].tobytes()
                        break
            finally:
                if buf >= 0:
                    bm.unlock_shared(buf)
                    bm.unpin(buf)
            if payload is not None:
                if v[i + 4] & ENTRY_OVERFLOW:  # read out of line, no leaf lock held
                    return self._read_overflow(unpack_overflow_ref(payload))
                return payload
            nxt = v[0]
            if not v[1] or nxt == P_NONE:
                return None
            block = nxt  # moved right past a split or unlink, or older versions continue

    def get_many(self, keys, snapshot: Snapshot = _see_all_live, default=None) -> list:
        """The visible value of each of ``keys`` (``default`` when none), in input order.
        The leaf of every key is found from the level above the leaves (internal pages,
        usually cached), then all those leaves are read in one read stream: one batch of
        AIO reads, adjacent leaves combined, instead of one synchronous read per key."""
        keys = [_check_key(k) for k in keys]
        with self._reading():
            return self._get_many(keys, snapshot, default)

    def get_many_trusted(self, keys: list[bytes], snapshot: Snapshot,
                         as_data: Callable[[], XidSnapshot] | None = None) -> list:
        """``get_many`` (default None) for a caller that has checked every key itself
        (bytes of at most ``KEY_MAX_BYTES``): the KV store's batch read. ``as_data()``, if
        given, is ``snapshot`` as data: asked for only when some leaf holds several of the
        keys, which then cost one C call for that leaf (``probe_many``)."""
        token = self._begin_read()
        try:
            return self._get_many(keys, snapshot, None, as_data)
        finally:
            self._end_read(token)

    def _get_many(self, keys: list[bytes], snapshot: Snapshot, default,
                  as_data: Callable[[], XidSnapshot] | None = None) -> list:
        skeys = sorted(set(keys))
        by_leaf: dict[int, list[int]] = {}  # leaf block -> positions in skeys
        leaf_for = self._leaf_for_point  # the cached internal pages: no I/O, no pins
        for i, k in enumerate(skeys):
            by_leaf.setdefault(leaf_for(k), []).append(i)
        found: dict[bytes, object] = {}
        retry: list[bytes] = []
        if _PROBE is not None and len(by_leaf) > 1:
            # A leaf in the pool holding one of the keys (the usual case for scattered
            # keys): probed as a point read's is, in one C call without pin or lock.
            self._probe_lone_keys(skeys, by_leaf, snapshot, found, retry)
        # A leaf holding several keys: one C call for all of them, the snapshot as data
        # (probe_many). A lone key's leaf costs as much either way (measured): probe_leaf.
        batch = None
        if len(by_leaf) < len(skeys):
            data = snapshot if isinstance(snapshot, XidSnapshot) else \
                as_data() if as_data is not None else None
            if data is not None:
                batch = ProbeKeys(skeys, *data)
        blocks = sorted(by_leaf)
        bm = self.bufmgr
        # Leaves in the pool: pinned in one call (no read stream step per leaf); the rest
        # come through one read stream below, adjacent ones combined.
        bufs = bm.pin_cached(self.rel, self._forkno, blocks)
        missing = [b for b, buf in zip(blocks, bufs, strict=True) if buf < 0]
        probe = self._probe_leaf
        lock, unlock, pages = bm.lock_shared, bm.unlock_shared, bm.pages
        try:
            for block, buf in zip(blocks, bufs, strict=True):
                if buf < 0:
                    continue
                lock(buf)
                try:
                    probe(block, pages[buf], skeys, by_leaf[block], snapshot, batch, found,
                          retry)
                finally:
                    unlock(buf)
        finally:
            bm.unpin_many([b for b in bufs if b >= 0])  # one call for all the pool's hits
        if missing and bm.aio.synchronous_reads_inline and not bm.smgr.io_direct:
            # A buffered relation under an io method that reads a point read's miss in its
            # issuer: a leaf with no missing neighbour is advised to the kernel first
            # (WILLNEED: read concurrently when the OS page cache lacks it), then read as a
            # point read's miss is (one preadv in this thread, no AIO handle, no
            # read-stream step: for a leaf the OS holds, most of the cost). Runs of
            # adjacent leaves stay for the read stream, which combines them.
            needed = set(missing)
            lone = [b for b in missing if b - 1 not in needed and b + 1 not in needed]
            missing = [b for b in missing if b - 1 in needed or b + 1 in needed]
            bm.smgr.prefetch_runs(self.rel, self._forkno, ((b, 1) for b in lone))
            for block in lone:
                buf = bm.read_buffer(self.rel, self._forkno, block)
                try:
                    lock(buf)
                    try:
                        probe(block, pages[buf], skeys, by_leaf[block], snapshot, batch,
                              found, retry)
                    finally:
                        unlock(buf)
                finally:
                    bm.unpin(buf)
        with ReadStream(bm, self.rel, self.fork, missing) as stream:
            for block, buf in zip(missing, stream, strict=True):
                try:
                    bm.lock_shared(buf)
                    try:
                        probe(block, bm.page(buf), skeys, by_leaf[block], snapshot, batch,
                              found, retry)
                    finally:
                        bm.unlock_shared(buf)
                finally:
                    bm.unpin(buf)
        for k, got in found.items():
            if type(got) is OverflowRef:
                found[k] = self._read_overflow(got)
        for k in retry:  # moved by a split since, or versions continuing to the right
            found[k] = self._get(k, snapshot)
        return [default if (v := found[k]) is None else v for k in keys]

    def _probe_leaf(self, block: int, page, skeys: list[bytes], where: list[int],
                    snapshot: Snapshot, batch: ProbeKeys | None, found: dict,
                    retry: list) -> None:
        """The keys at positions ``where`` (ascending) of the sorted ``skeys`` on one
        share-locked leaf: ``found[k]`` = the visible value (an OverflowRef for an
        out-of-line one) or None; keys whose leaf is further right, or whose versions
        continue there (or are too many for ``probe_many`` to judge), go to ``retry``. One
        ``probe_many`` C call for a run of several positions with ``batch``, else one
        ``probe_leaf`` call per key and ``snapshot`` on its versions."""
        try:
            lo, hi = where[0], where[-1] + 1
            if batch is not None and 1 < hi - lo == len(where):
                got = probe_many(page, batch, lo, hi)
                for j in range(0, 4 * (hi - lo), 4):  # status, value start, end, eflags
                    k = skeys[lo + (j >> 2)]
                    status = got[j]
                    if status & PROBE_FOUND:
                        value = page[got[j + 1]:got[j + 2]].tobytes()
                        if got[j + 3] & ENTRY_OVERFLOW:
                            value = unpack_overflow_ref(value)
                        found[k] = value
                    elif status & _PROBE_ELSEWHERE:
                        retry.append(k)
                    else:
                        found[k] = None
                return
            for pos in where:
                k = skeys[pos]
                _judge_versions(probe_leaf_flat(page, k), page, k, snapshot, found, retry)
        except BTreePageError as e:
            self._special(page, block)  # an all-zero page says so
            raise self._corrupt(block, str(e)) from None

    def _probe_lone_keys(self, skeys: list[bytes], by_leaf: dict[int, list[int]],
                         snapshot: Snapshot, found: dict, retry: list) -> None:
        """``_get_many``'s leaves that hold one key and are VALID in the pool: each probed
        by one C call under the descriptor lock (``BufferManager.read_hit`` with the point
        read's ``_PROBE``: the versions' items copied out under the page's change
        counter, no pin, no content lock) and judged as ``_probe_leaf`` judges them; such a
        leaf leaves ``by_leaf``. A leaf not in the pool, or one the optimistic probe
        cannot answer (a writer meanwhile, more versions than it has room for, a page the
        reference must judge) stays for the locked path."""
        tls = _opt_tls
        out = getattr(tls, "out", None)
        if out is None:
            _probe_unlocked_scratch(tls)
            out = tls.out
        read_hit = self.bufmgr.read_hit
        rel, forkno, copy, view = self.rel, self._forkno, tls.copy, tls.view
        unpack = _ffi.unpack
        for block, where in list(by_leaf.items()):
            if len(where) != 1:
                continue
            k = skeys[where[0]]
            n = read_hit(rel, forkno, block, _PROBE, k, len(k), out, _OPT_PROBE_VERSIONS, copy)
            if n is not None and 0 <= n <= _OPT_PROBE_VERSIONS:
                _judge_versions(unpack(out, 2 + 5 * n), view, k, snapshot, found, retry)
                del by_leaf[block]

    def items(self, start=None, stop=None, *, snapshot: Snapshot = _see_all_live,
              reverse: bool = False, values: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
        """(key, value) of the visible versions with ``start <= key < stop`` in key order
        (descending with ``reverse``), walking the leaf level; ``values=False`` yields
        (key, None) without reading overflow pages."""
        for batch in self.item_batches(start, stop, snapshot=snapshot, reverse=reverse,
                                       values=values):
            yield from batch

    def item_batches(self, start=None, stop=None, *, snapshot: Snapshot = _see_all_live,
                     reverse: bool = False, values: bool = True) -> Iterator[list[tuple]]:
        """``items`` a leaf (or a run of leaves) at a time: non-empty lists of (key, value)
        pairs, in order (``item_runs``' pairs as lists)."""
        for _count, pairs in self.item_runs(start, stop, snapshot=snapshot, reverse=reverse,
                                            values=values):
            yield pairs if type(pairs) is list else list(pairs)

    def item_runs(self, start=None, stop=None, *, snapshot: Snapshot = _see_all_live,
                  reverse: bool = False, values: bool = True) -> Iterator[tuple[int, Iterable]]:
        """``items`` as (count, pairs): ``count`` > 0 pairs, in order, as a list or a lazy
        iterable of fresh tuples, copied out of the pages already (no page is pinned or
        locked while the caller holds them). With an ``XidSnapshot`` (or the default) a
        forward scan takes a read-stream run of up to ``RUN_PAGES_MAX`` leaves per C call
        (``_leaf_pages``); a reverse one a leaf per ``extract_cut`` call; neither takes a
        Python step per entry."""
        start = None if start is None else _check_key(start)
        stop = None if stop is None else _check_key(stop)
        if snapshot is _see_all_live:
            snapshot = _SEE_ALL_LIVE_DATA
        with self._reading():
            if reverse:
                pages = ((len(pairs), pairs, overflow) for pairs, overflow in
                         self._leaf_pages_reverse(start, stop, snapshot, values))
            else:
                pages = self._leaf_pages(start, stop, snapshot, values)
            read_overflow = self._read_overflow
            for count, pairs, overflow in pages:
                if overflow:  # after the leaf's lock is gone: read the values out of line
                    pairs = [(k, read_overflow(v)) if type(v) is OverflowRef else (k, v)
                             for k, v in pairs]
                if count:
                    yield count, pairs

    def _visible(self, page, first: int, snapshot: Snapshot) -> list[int]:
        if isinstance(snapshot, XidSnapshot):
            got = visible_offnums(page, snapshot.xmax, snapshot.own, snapshot.excluded)
            return [o for o in got if o >= first]
        out = []
        count = bt_item_count(page)
        for off in range(first, count + 1):
            xmin, xmax = struct.unpack_from("<QQ", bt_item(page, off))
            if snapshot(xmin, xmax):
                out.append(off)
        return out

    def _leaf_pages(self, start: bytes | None, stop: bytes | None, snapshot: Snapshot,
                    values: bool) -> Iterator[tuple[int, Iterable[tuple], bool]]:
        """(count, pairs, any out of line) per leaf or run of leaves from the one holding
        ``start`` rightwards; a pair's value is bytes, an OverflowRef (in a list), or None
        without ``values``."""
        if isinstance(snapshot, XidSnapshot):
            xmax, own, excluded = snapshot

            def visit(block: int, page, special: Special) -> tuple[tuple, bool]:
                # Searched on every page, not only the first: the leaf the parent level
                # named may have split since, moving the start to a page after it.
                flags, flat, cut = extract_cut(page, start, stop, xmax, own, excluded, values)
                pairs, overflow = _cut_pairs(flags, flat, cut, values)
                return (len(pairs), pairs, overflow), bool(flags & EXTRACT_DONE)

            if C_EXTRACT_RUN and self.bufmgr.seq is not None:
                return self._leaf_runs(start, stop, snapshot, values, visit)
            return self._walk_leaves(start or b"", visit, stop)

        def visit_py(block: int, page, special: Special) -> tuple[tuple, bool]:
            first = bt_first_data(special) if start is None else \
                search_page(page, start, XMIN_MAX, False)
            out = []
            for off in self._visible(page, first, snapshot):
                e = unpack_entry(bt_item(page, off))
                if stop is not None and e.key >= stop:
                    pairs, overflow = _entry_pairs(out, values)
                    return (len(pairs), pairs, overflow), True
                out.append(e)
            # Everything to the right is >= the high key: done once that reaches stop.
            done = stop is not None and special.next != P_NONE and \
                unpack_pivot(bt_item(page, 1)).key >= stop
            pairs, overflow = _entry_pairs(out, values)
            return (len(pairs), pairs, overflow), done

        return self._walk_leaves(start or b"", visit_py, stop)

    def _leaf_runs(self, start: bytes | None, stop: bytes | None, snapshot: XidSnapshot,
                   values: bool, visit) -> Iterator[tuple[int, Iterable[tuple], bool]]:
        """``_walk_leaves`` for a forward scan with a snapshot as data, a run of leaves at
        a time: the read stream (fed as ``_walk_leaves``' is) hands over up to
        ``RUN_PAGES_MAX`` pinned leaves in one call; they are copied out of the pool in one
        C call under their change counters (storage/bufmgr.py invariant 8; a page a writer
        holds is copied under its share lock instead) and unpinned at once; then one
        ``extract_run`` call takes the copies that continue the right-link chain as live
        leaves with inline values and yields their pairs as one batch. A page it leaves is
        looked at alone as ``_walk_leaves`` does (``visit`` on the copy when it is the
        right-link expected; else the leaves in between and the page itself read
        directly), and the run goes on after it. Right-links stay the authority."""
        bm = self.bufmgr
        xmax, own, excluded = snapshot
        feed = _LeafFeed(self, start or b"", stop)
        expected: int | None = None  # the right-link of the leaf just visited
        # The scan's own copy area (not per thread: the scan pauses at every yield, and
        # another scan in this thread may run meanwhile).
        copy = _ffi.new("uint8_t[]", RUN_PAGES_MAX * BLCKSZ)
        view = memoryview(_ffi.buffer(copy))
        cbufs = _ffi.new("uint32_t[]", RUN_PAGES_MAX)
        block_of = bm.block_of
        bulk = bm.smgr.nblocks(self.rel, self.fork) > bm.nbuffers // BULK_SCAN_POOL_DIVISOR
        with feed, ReadStream(bm, self.rel, self.fork, feed, bulk_read=bulk) as stream:
            while True:
                bufs = stream.next_buffers(RUN_PAGES_MAX)
                if not bufs:
                    break
                n = len(bufs)
                try:
                    blocks = [tag[2] for tag in map(block_of, bufs)]
                    cbufs[0:n] = bufs
                    k = _lib.slk_seq_copy_pages(bm.c_pool, bm.seq, bm.nbuffers, cbufs, n, copy)
                    for j in range(k, n):  # a writer held it: copy it under its share lock
                        bm.lock_shared(bufs[j])
                        try:
                            view[j * BLCKSZ:(j + 1) * BLCKSZ] = bm.page(bufs[j])
                        finally:
                            bm.unlock_shared(bufs[j])
                finally:
                    bm.unpin_many(bufs)
                i = 0
                while i < n:
                    taken, done, nxt, count, pairs = extract_run(
                        copy, i, blocks, expected, start, stop, xmax, own, excluded, values)
                    if count:
                        yield count, pairs, False
                    if taken:
                        i += taken
                        expected = nxt
                        if done or nxt == P_NONE:
                            return
                        continue
                    block = blocks[i]
                    page = view[i * BLCKSZ:(i + 1) * BLCKSZ]
                    i += 1
                    special = self._special(page, block)
                    if expected is None or expected == block:
                        if special.flags & BTP_DELETED:  # unlinked since the parent listed it
                            expected = special.next
                            continue
                        result, end, nxt = self._visit_page(block, page, special, visit)
                    else:
                        if special.flags & BTP_DELETED:
                            continue
                        while expected != block:  # leaves the parent did not list yet
                            if expected == P_NONE:
                                raise self._corrupt(block, "leaf named by the parent level is "
                                                           "not on the leaf level's right-link "
                                                           "chain")
                            result, end, nxt = self._visit_read(expected, visit)
                            if result is not _SKIP:
                                yield result
                            if end:
                                return
                            expected = nxt
                        result, end, nxt = self._visit_read(block, visit)
                    if result is not _SKIP:
                        yield result
                    if end or nxt == P_NONE:
                        return
                    expected = nxt
        # The parent level ran out before the leaf level did (the last leaf it listed has
        # split since): follow the right-links.
        yield from self._visit_by_right_links(expected, visit)

    def _walk_leaves(self, key: bytes, visit, stop: bytes | None = None) -> Iterator:
        """Visit the leaves from the one where ``key`` belongs rightwards, in right-link
        order, each share-locked during ``visit(block, page, special) -> (result, stop)``;
        yields each result with no page locked.

        The leaves come through a read stream fed from the parent level (``_LeafFeed``):
        while the caller works on one leaf, the next ``effective_io_concurrency`` are
        being read, adjacent ones combined. Right-links stay the authority: a streamed
        leaf is used only when it is the right-link of the leaf just visited; leaves the
        parent did not list yet (split since) are read directly in between."""
        bm = self.bufmgr
        feed = _LeafFeed(self, key, stop)
        expected: int | None = None  # the right-link of the leaf just visited
        # A tree over a quarter of the pool is walked through a BULKREAD ring (PostgreSQL's
        # rule for a large scan): its misses reuse the ring's clean buffers instead of
        # sweeping the pool, so a scan after a load writes only the dirty victims the ring
        # fills with (not the whole pool's, one write each, ~100 us of Python per write)
        # and leaves the pool's working set in place.
        bulk = bm.smgr.nblocks(self.rel, self.fork) > bm.nbuffers // BULK_SCAN_POOL_DIVISOR
        with feed, ReadStream(bm, self.rel, self.fork, feed, bulk_read=bulk) as stream:
            for buf in stream:
                block = bm.block_of(buf)[2]
                try:
                    bm.lock_shared(buf)
                    try:
                        page = bm.page(buf)
                        special = self._special(page, block)
                        # The usual case, under this one lock: the right-link of the leaf
                        # just visited (or the first leaf), not unlinked.
                        fast = (expected is None or expected == block) and \
                            not special.flags & BTP_DELETED
                        if fast:
                            result, stop, nxt = self._visit_page(block, page, special, visit)
                    finally:
                        bm.unlock_shared(buf)
                    if not fast:
                        if special.flags & BTP_DELETED:  # unlinked since the parent listed it
                            if expected is None or expected == block:
                                expected = special.next
                            continue
                        while expected is not None and expected != block:
                            if expected == P_NONE:
                                raise self._corrupt(block, "leaf named by the parent level is "
                                                           "not on the leaf level's right-link "
                                                           "chain")
                            result, stop, nxt = self._visit_read(expected, visit)
                            if result is not _SKIP:
                                yield result
                            if stop:
                                return
                            expected = nxt
                        bm.lock_shared(buf)
                        try:
                            result, stop, nxt = self._visit_leaf(block, buf, visit)
                        finally:
                            bm.unlock_shared(buf)
                finally:
                    bm.unpin(buf)
                if result is not _SKIP:
                    yield result
                if stop or nxt == P_NONE:
                    return
                expected = nxt
        # The parent level ran out before the leaf level did (the last leaf it listed has
        # split since): follow the right-links.
        yield from self._visit_by_right_links(expected, visit)

    def _visit_by_right_links(self, expected: int | None, visit) -> Iterator:
        """``visit``'s results for leaf ``expected`` and those right of it, following the
        right-links (each leaf read directly), until a visit says stop or the level ends."""
        while expected is not None and expected != P_NONE:
            result, stop, nxt = self._visit_read(expected, visit)
            if result is not _SKIP:
                yield result
            if stop:
                return
            expected = nxt

    def _visit_read(self, block: int, visit) -> tuple[object, bool, int]:
        """``_visit_leaf`` of a leaf read directly (not from the stream): share-locked for
        the visit, released after."""
        buf = self._read(block)
        try:
            return self._visit_leaf(block, buf, visit)
        finally:
            self._release(buf)

    def _visit_leaf(self, block: int, buf: int, visit) -> tuple[object, bool, int]:
        page = self.bufmgr.page(buf)
        special = self._special(page, block)
        if special.flags & BTP_DELETED:  # unlinked: its keys now live to its right
            return _SKIP, False, special.next
        return self._visit_page(block, page, special, visit)

    def _visit_page(self, block: int, page, special: Special,
                    visit) -> tuple[object, bool, int]:
        """``visit`` a live (not DELETED) share-locked page that must be a leaf."""
        if not special.flags & BTP_LEAF:
            raise self._corrupt(block, f"expected a leaf, found flags {special.flags:#x} "
                                       f"level {special.level}")
        try:
            result, stop = visit(block, page, special)
        except BTreePageError as e:
            raise self._corrupt(block, str(e)) from None
        return result, stop, special.next

    def _leaf_pages_reverse(self, start: bytes | None, stop: bytes | None, snapshot: Snapshot,
                            values: bool) -> Iterator[tuple[list[tuple], bool]]:
        """(pairs, any out of line) per leaf, last pair first, as ``_leaf_pages`` does
        rightwards: leaves from the one holding ``stop`` leftwards. The leaves come through a read
        stream fed from the parent level walked leftwards (``_LeafFeedReverse``); the
        left-links stay the authority: a streamed leaf is used when it is the left-link
        of the leaf just visited and still links back to it, else the left neighbour is
        found by moving right from the left-link (``_step_left``), as nbtree does."""
        bm = self.bufmgr
        feed = _LeafFeedReverse(self, stop)
        pending: int | None = None  # a streamed buffer not used yet (pinned, unlocked)
        with feed, ReadStream(bm, self.rel, self.fork, feed) as stream:
            source = iter(stream)
            try:
                buf = next(source)
                block = bm.block_of(buf)[2]
                bm.lock_shared(buf)
                buf, block = self._move_right_to(buf, block, stop)
                first_page = True
                origin = block  # the last live leaf visited: the next must link back to it
                while True:
                    try:
                        page = bm.page(buf)
                        special = self._special(page, block)
                        prev = special.prev
                    except BaseException:
                        self._release(buf)
                        raise
                    if special.flags & BTP_DELETED:  # unlinked: step over it
                        self._release(buf)
                        out, done = None, False
                    else:
                        out, done = self._reverse_page(buf, block, special, first_page, start,
                                                       stop, snapshot, values)
                        origin = block
                        first_page = False
                        yield out
                    if done or prev == P_NONE:
                        return
                    if pending is None:
                        pending = next(source, None)
                    if pending is not None and bm.block_of(pending)[2] == prev:
                        buf, pending = pending, None
                        bm.lock_shared(buf)
                        try:
                            links_back = self._special(bm.page(buf), prev).next == origin
                        except BaseException:
                            self._release(buf)
                            raise
                        if not links_back:  # it split since: move right from it
                            self._release(buf)
                            buf = self._step_left(prev, origin)
                    else:
                        buf = self._step_left(prev, origin)
                    if buf < 0:   # everything left of the last leaf was unlinked since
                        return
                    block = bm.block_of(buf)[2]
            finally:
                if pending is not None:
                    bm.unpin(pending)

    def _reverse_page(self, buf: int, block: int, special: Special, first_page: bool,
                      start: bytes | None, stop: bytes | None, snapshot: Snapshot,
                      values: bool) -> tuple[tuple[list[tuple], bool], bool]:
        """The visible pairs of a share-locked leaf, last first, and whether the scan ends
        here (releases it)."""
        bm = self.bufmgr
        try:
            page = bm.page(buf)
            if isinstance(snapshot, XidSnapshot):
                # stop on every page: left of the first one every key is below it anyway.
                flags, flat, cut = extract_cut(page, start, stop, *snapshot, values)
                pairs, overflow = _cut_pairs(flags, flat, cut, values)
                pairs.reverse()
                return (pairs, overflow), bool(flags & EXTRACT_BELOW_START)
            first = bt_first_data(special)
            end = bt_item_count(page) + 1
            if first_page and stop is not None:
                end = search_page(page, stop, XMIN_MAX, False)
            out = []
            done = False
            for off in reversed([o for o in self._visible(page, first, snapshot) if o < end]):
                e = unpack_entry(bt_item(page, off))
                if start is not None and e.key < start:
                    done = True
                    break
                out.append(e)
            if start is not None and first < end and \
                    entry_key(bt_item(page, first))[0] < start:
                done = True
            return _entry_pairs(out, values), done
        except BTreePageError as e:
            raise self._corrupt(block, str(e)) from None
        finally:
            self._release(buf)

    def _move_right_to(self, buf: int, block: int, stop: bytes | None) -> tuple[int, int]:
        """From a share-locked leaf, move right to the one holding (stop, XMIN_MAX), or to
        the rightmost leaf when ``stop`` is None (a split may have moved it right)."""
        bm = self.bufmgr
        while True:
            page = bm.page(buf)
            try:
                special = self._special(page, block)
                if special.next == P_NONE or (
                        stop is not None and not special.flags & BTP_DELETED
                        and locate(page, stop, XMIN_MAX) != MOVE_RIGHT):
                    return buf, block
            except BaseException:
                self._release(buf)
                raise
            self._release(buf)
            block = special.next
            buf = self._read(block)

    def _step_left(self, prev: int, origin: int) -> int:
        """The page whose right-link is ``origin``, starting at its old left sibling
        ``prev`` and moving right past pages split off it since (share-locked).

        As nbtree's _bt_walk_left: when no page to the right of ``prev`` links to
        ``origin`` any more, ``origin`` is looked at again. Unlinked since (DELETED, a
        vacuum took it out after this scan left it): its key range went to the first live
        page right of it, whose left neighbour is the page wanted, so the walk starts over
        from that page. Still live: its left-link changed (its left neighbour split or was
        unlinked), so the walk starts over from the new one; an unchanged left-link means
        the links are broken (DataCorruptionError naming it). -1 when no page is left of
        it any more (all unlinked since: nothing more to visit)."""
        bm = self.bufmgr
        block = prev
        while True:
            buf = self._read(block)
            try:
                special = self._special(bm.page(buf), block)
            except BaseException:
                self._release(buf)
                raise
            if special.next == origin:
                return buf
            self._release(buf)
            if special.next != P_NONE:
                block = special.next
                continue
            live, new_prev = self._live_origin(origin)
            if live == origin and new_prev == prev:
                raise self._corrupt(origin, f"no page to the right of its left-link {prev} "
                                            f"links back to it")
            if new_prev == P_NONE:   # every page left of it was unlinked: none to visit
                return -1
            origin, block = live, new_prev
            prev = new_prev

    def _live_origin(self, origin: int) -> tuple[int, int]:
        """(``origin``, or the first live page right of it when it was unlinked, and that
        page's left-link): where ``_step_left`` starts over."""
        bm = self.bufmgr
        while True:
            buf = self._read(origin)
            try:
                special = self._special(bm.page(buf), origin)
            finally:
                self._release(buf)
            if not special.flags & BTP_DELETED:
                return origin, special.prev
            if special.next == P_NONE:
                raise self._corrupt(origin, "an unlinked leaf with no right-link")
            origin = special.next

    # --- overflow values ---------------------------------------------------------------------
    def _read_overflow(self, ref: OverflowRef) -> bytes:
        bm = self.bufmgr
        out = bytearray(ref.length)
        pos = 0
        blocks = list(ref.blocks())
        with ReadStream(bm, self.rel, self.fork, blocks) as stream:
            for seq, (block, buf) in enumerate(zip(blocks, stream, strict=True)):
                try:
                    bm.lock_shared(buf)
                    try:
                        page = bm.page(buf)
                        special = self._special(page, block)
                        if not special.flags & BTP_OVERFLOW or special.prev != seq:
                            raise self._corrupt(block, f"expected overflow chunk {seq}, found "
                                                       f"flags {special.flags:#x} chunk "
                                                       f"{special.prev}")
                        chunk = bt_item(page, 1)
                        if pos + len(chunk) > ref.length:
                            raise self._corrupt(block, f"overflow chunk {seq} runs past the "
                                                       f"value's {ref.length} bytes")
                        out[pos:pos + len(chunk)] = chunk
                        pos += len(chunk)
                    finally:
                        bm.unlock_shared(buf)
                finally:
                    bm.unpin(buf)
        if pos != ref.length:
            raise self._corrupt(blocks[-1] if blocks else META_BLOCK,
                                f"overflow value has {pos} bytes, its reference says "
                                f"{ref.length}")
        return bytes(out)

    def _write_overflow(self, value: bytes, xid: int) -> OverflowRef:
        """Store ``value`` in overflow pages (free pages first, then new ones at the end of
        the relation), logged OVERFLOW_PAGES_PER_RECORD pages to a record."""
        npages = -(-len(value) // OVERFLOW_CHUNK_BYTES)
        blocks: list[int] = []
        seq = 0
        extents: list[list[int]] = []

        def note(block: int) -> None:
            if extents and extents[-1][0] + extents[-1][1] == block:
                extents[-1][1] += 1
            else:
                extents.append([block, 1])

        def chunk(i: int) -> bytes:
            return value[i * OVERFLOW_CHUNK_BYTES:(i + 1) * OVERFLOW_CHUNK_BYTES]

        # Reuse free pages while the extent count leaves room for one more (the tail).
        while seq < npages and self._free_head != P_NONE \
                and len(extents) < OVERFLOW_EXTENTS_MAX - 1:
            meta = _Change(self._read(META_BLOCK, exclusive=True), META_BLOCK, True)
            changes = [meta]
            try:
                head, count = self._free_head, self._free_count
                while (len(changes) <= OVERFLOW_PAGES_PER_RECORD and seq < npages
                       and head != P_NONE):
                    ext_after = len(extents) + (0 if extents and
                                                extents[-1][0] + extents[-1][1] == head else 1)
                    if ext_after > OVERFLOW_EXTENTS_MAX - 1:
                        break
                    ch = _Change(self._read(head, exclusive=True), head, True)
                    changes.append(ch)
                    special = self._special(self.bufmgr.page(ch.buf), head)
                    if not special.flags & BTP_FREE:
                        raise self._corrupt(head, f"page on the free list is not free "
                                                  f"(flags {special.flags:#x})")
                    ch.actions.append((A_INIT, init_data(
                        Special(seq, P_NONE, 0, BTP_OVERFLOW), [chunk(seq)])))
                    note(head)
                    blocks.append(head)
                    seq += 1
                    head, count = special.next, count - 1
                if len(changes) == 1:
                    break
                meta.actions.append((A_INIT, self._meta_init(self._root, self._level, head,
                                                             count)))
                self._log(XLOG_BTREE_OVERFLOW, xid, changes)
                self._free_head, self._free_count = head, count
            finally:
                self._release_changes(changes)
        while seq < npages:
            n = min(OVERFLOW_PAGES_PER_RECORD, npages - seq)
            bufs = self.bufmgr.extend(self.rel, self.fork, n)
            changes = [_Change(b, self.bufmgr.block_of(b)[2], True) for b in bufs]
            try:
                for ch in changes:
                    ch.actions.append((A_INIT, init_data(
                        Special(seq, P_NONE, 0, BTP_OVERFLOW), [chunk(seq)])))
                    note(ch.block)
                    blocks.append(ch.block)
                    seq += 1
                if len(extents) > OVERFLOW_EXTENTS_MAX:
                    raise AssertionError("relation extended by someone else mid-value: "
                                         "one writer per tree (invariant 6)")
                self._log(XLOG_BTREE_OVERFLOW, xid, changes)
            finally:
                self._release_changes(changes)
        return OverflowRef(len(value), tuple((s, n) for s, n in extents))

    def _free_overflow(self, refs: Sequence[OverflowRef]) -> int:
        """Push the pages of ``refs`` onto the free list."""
        return self._free_pages(itertools.chain.from_iterable(r.blocks() for r in refs))

    def _free_pages(self, blocks) -> int:
        """Push ``blocks`` onto the free list (highest block first, so the list hands them
        back in ascending order), OVERFLOW_PAGES_PER_RECORD pages to a FREE record."""
        blocks = sorted(set(blocks), reverse=True)
        for i in range(0, len(blocks), OVERFLOW_PAGES_PER_RECORD):
            group = blocks[i:i + OVERFLOW_PAGES_PER_RECORD]
            changes = [_Change(self._read(META_BLOCK, exclusive=True), META_BLOCK, True)]
            try:
                head, count = self._free_head, self._free_count
                for block in group:
                    ch = _Change(self._read(block, exclusive=True), block, True)
                    changes.append(ch)
                    ch.actions.append((A_INIT, init_data(Special(P_NONE, head, 0, BTP_FREE),
                                                         [])))
                    head, count = block, count + 1
                changes[0].actions.append((A_INIT, self._meta_init(self._root, self._level,
                                                                   head, count)))
                self._log(XLOG_BTREE_FREE, 0, changes)
                self._free_head, self._free_count = head, count
            finally:
                self._release_changes(changes)
        return len(blocks)

    # --- changes -------------------------------------------------------------------------------
    def insert(self, key, value, xmin: int, *, xmax: int = 0) -> None:
        """Add the version (key, xmin). ValueError (nothing written) when that version
        exists; TypeError/ValueError naming the limit for bad keys and values."""
        key = _check_key(key)
        value = _check_value(value)
        _check_xid(xmin, "xmin")
        if xmax:
            _check_xid(xmax, "xmax")
        with self._write_lock:
            if len(value) > VALUE_INLINE_MAX_BYTES or \
                    LEAF_HEADER_SIZE + len(key) + len(value) > ENTRY_MAX_BYTES:
                # Checked before the overflow pages are written (_insert_item checks again).
                if any(e.xmin == xmin for e in self._versions(key)):
                    raise ValueError(f"key {key[:40]!r} already has a version with xmin "
                                     f"{xmin}")
                ref = self._write_overflow(value, xmin)
                item = pack_entry(key, xmin, xmax, ENTRY_OVERFLOW, pack_overflow_ref(ref))
            else:
                item = pack_entry(key, xmin, xmax, 0, value)
            assert len(item) <= ENTRY_MAX_BYTES
            self._insert_item(key, xmin, item, xmin)

    def apply(self, writes, committed: Callable[[int], bool] | None = None
              ) -> list[VersionWrite]:
        """Apply a batch of ``VersionWrite``s (at most one per key), as a transaction's
        commit does: sorted by key, and every run of writes that lands on one leaf with
        room for them is one INSERT record (xmax settings, then the new entries), instead
        of one descent and one record per write. A write whose leaf is full, or whose old
        version is not on that leaf, goes through set_xmax/insert (splits included); a
        new version that splits its leaf takes the run after it into the split's record.
        A write with ``old_xmin=OLD_LOOKUP`` replaces the key's newest version whose xmin
        is ``committed`` (none if its xmax is ``committed`` too: a delete then changes
        nothing), looked up on the leaf the write lands on.
        Everything is validated before anything is written; ValueError for a duplicate
        key in the batch, and (writes before it applied) when an old version is missing.
        Returns the writes done, in key order, each with its old version resolved."""
        checked = []
        for w in writes:
            if not isinstance(w, VersionWrite):
                raise TypeError(f"writes must be VersionWrite tuples, not {type(w).__name__}")
            key = _check_key(w.key)
            _check_xid(w.xid, "xid")
            if w.old_xmin == OLD_LOOKUP:
                if committed is None:
                    raise ValueError("old_xmin=OLD_LOOKUP needs the committed() test")
            elif w.old_xmin:
                _check_xid(w.old_xmin, "old_xmin")
            value = None if w.value is None else _check_value(w.value)
            checked.append(VersionWrite(key, w.xid, value, w.old_xmin))
        checked.sort(key=_write_key)
        for a, b in itertools.pairwise(checked):
            if a.key == b.key:
                raise ValueError(f"key {a.key[:40]!r} appears twice in one batch")
        return self._apply_writes(checked, committed)

    def apply_trusted(self, writes: list[VersionWrite], committed: Callable[[int], bool]
                      ) -> list[VersionWrite]:
        """``apply`` for a caller that has checked the batch itself, as the KV store's
        commit has (each key once, bytes of at most KEY_MAX_BYTES; values bytes of at most
        VALUE_MAX_BYTES or None; xids and old xmins in range or OLD_LOOKUP): sorted and
        applied without checking every write a second time."""
        return self._apply_writes(sorted(writes, key=_write_key), committed)

    def apply_trusted_columns(self, keys: list[bytes], values: list[bytes | None], xid: int,
                              olds: list[int], committed: Callable[[int], bool],
                              joined: tuple[bytes, array] | None = None) -> int:
        """``apply_trusted`` of the writes (keys[k], xid, values[k], olds[k]) given as
        columns, ``keys`` ascending: no object per write is made (a commit of a million
        puts); ``joined``: ``join_keys(keys)`` when the caller has it (validation made
        it). Returns how many old versions got xmax = ``xid``."""
        with self._write_lock:
            batch = self._leaf_batch(keys, values, array("Q", [xid]) * len(keys), olds,
                                     joined)
            resolved = self._apply_sorted(batch, committed)
        bolds = batch.olds
        explicit = len(bolds) - bolds.count(0) - bolds.count(LOOKUP_U64)
        return explicit + sum(map(bool, resolved.values()))

    def put_new(self, key: bytes, value: bytes, xid: int, then: tuple[int, int, bytes] | None,
                committed: Callable[[int], bool] | None = None) -> tuple[int, int] | None:
        """An autocommit put's fast path: the new version (``key``, ``xid``, ``value``
        inline, a checked key and value) on its leaf when that leaf needs no move right and
        has room, and either holds no version of ``key`` or (with ``committed``, the
        transaction status test) its newest version of ``key`` is committed and not
        deleted: that one gets ``xid`` as its xmax (``btree_leafrun.put_new``: one C call,
        asked again once the version is judged). Logged as the one INSERT record
        ``apply_trusted_columns`` would write, page and record byte for byte, and followed
        in the WAL by the record ``then`` (rmgr, info, payload) of ``xid``, in the same
        insertion where it fits (``Wal.insert_pair``). Where both records fit in the
        current WAL page, the leaf step and the two records are one C call
        (``Wal.insert_put_pair``), the same page and WAL bytes.
        Returns (the end LSN of ``then``'s record (``then`` None: of the INSERT record, as
        a table's index entry is added), the versions superseded: 0 or 1); None, with
        nothing written or logged, when the general path must take the put."""
        if len(value) > VALUE_INLINE_MAX_BYTES or \
                LEAF_HEADER_SIZE + len(key) + len(value) > ENTRY_MAX_BYTES:
            return None
        bm = self.bufmgr
        old = self._put_scratch.old
        with self._write_lock:
            block = self._leaf_for_point(key)   # (the C descent: splits keep it current)
            # Pinned and locked, then dirtied, unlocked and unpinned, in one buffer-manager
            # call each (the put's per-call work, issue #13).
            buf = bm.read_buffer_exclusive(self.rel, self._forkno, block)
            replaced = 0
            try:
                old[0] = 0
                got = None
                if then is not None and self._c_pool is not None:
                    # _put_on's one C call, made here: the usual put is this call alone
                    got = self.wal.insert_put_pair(self.rel, self._forkno, block,
                                                   self._c_pool + buf * BLCKSZ, key, value,
                                                   xid, old, RM_BTREE, XLOG_BTREE_INSERT, then)
                if got is None and not old[0]:
                    got = self._put_on(buf, block, key, value, xid, then, fused=False)
                if got is None and old[0] and committed is not None and not old[2] and \
                        committed(old[1]):
                    # the key's newest version, committed and not deleted: what the general
                    # path's OLD_LOOKUP supersedes (the page stayed locked meanwhile)
                    replaced = 1
                    got = self._put_on(buf, block, key, value, xid, then)
            except BaseException:
                self._release(buf, exclusive=True)
                raise
            if got is None:
                self._release(buf, exclusive=True)
                return None
            bm.release_dirty(buf)
        end, then_end = got
        if then is None:
            return end, replaced
        if not then_end:
            _start, then_end = self.wal.insert(then[0], then[1], xid, then[2])
        return then_end, replaced

    def _put_on(self, buf: int, block: int, key: bytes, value: bytes, xid: int,
                then: tuple[int, int, bytes] | None, *, fused: bool = True
                ) -> tuple[int, int] | None:
        """One try of ``put_new`` on its leaf (``buf``, pinned and exclusive-locked): made
        and logged with the record ``then`` in one C call where both records fit in the
        current WAL page (the usual case; ``fused`` False: the caller made that call),
        else in two steps. Returns (the INSERT record's end, ``then``'s end or 0 when
        ``then`` is still to be logged); None, nothing changed, when the put is not taken
        here — with ``scratch.old`` then naming the key's newest version when that is not
        the one it named (for the caller to judge)."""
        wal = self.wal
        scratch = self._put_scratch
        old = scratch.old
        want = old[0]
        if fused and then is not None and self._c_pool is not None:
            got = wal.insert_put_pair(self.rel, self._forkno, block,
                                      self._c_pool + buf * BLCKSZ, key, value, xid, old,
                                      RM_BTREE, XLOG_BTREE_INSERT, then)
            if got is not None:
                return got
            if old[0] != want:   # a version to judge: not taken here
                return None
        page = self.bufmgr.pages[buf]
        payload = put_new(page, key, value, xid, scratch)  # applied
        if payload is None:
            return None
        try:
            lsn, lower, upper = _LSN_AND_HOLE.unpack_from(page)
            spec = BlockSpec(self.rel, int(self.fork), block, page, lsn, False, (lower, upper))
            got = None if then is None else wal.insert_pair(
                RM_BTREE, XLOG_BTREE_INSERT, xid, payload, (spec,), *then)
            if got is None:
                got = wal.insert(RM_BTREE, XLOG_BTREE_INSERT, xid, payload, (spec,))[1], 0
        except BaseException:
            page[:] = scratch.pre   # as _log: the page put back byte for byte
            raise
        _PAGE_LSN.pack_into(page, LSN_OFFSET, got[0])   # (a WAL position: in range)
        return got

    def _apply_writes(self, checked: list[VersionWrite],
                      committed: Callable[[int], bool] | None) -> list[VersionWrite]:
        """``apply``'s work on a checked batch in key order; the writes done, resolved."""
        with self._write_lock:
            batch = self._leaf_batch(list(map(_write_key, checked)),
                                     list(map(_write_value, checked)),
                                     list(map(_write_xid, checked)),
                                     list(map(_write_old, checked)))
            resolved = self._apply_sorted(batch, committed)
        if not resolved and KIND_NONE not in batch.kinds and LOOKUP_U64 not in batch.olds:
            return checked
        out = []
        for k, w in enumerate(checked):  # deletes or OLD_LOOKUP writes among them
            old = resolved.get(k, 0 if w.old_xmin == OLD_LOOKUP else w.old_xmin)
            if old or batch.kinds[k] != KIND_NONE:
                out.append(w._replace(old_xmin=old) if old != w.old_xmin else w)
        return out

    def _apply_sorted(self, batch: LeafBatch, committed: Callable[[int], bool] | None
                      ) -> dict[int, int]:
        """A batch's work (write lock held): a leaf run at a time (``_apply_on_leaf``), a
        write that starts no run (its leaf is full, or its old version elsewhere) alone.
        Returns the old xmin each OLD_LOOKUP write resolved to, by index (a write absent
        from it found no version to replace)."""
        resolved: dict[int, int] = {}
        self._extend_ahead = True
        try:
            self._apply_runs(batch, committed, resolved)
        except ValueError:  # a write refused (nothing wrong with the WAL)
            self._extend_ahead = False
            self._free_spares()
            raise
        finally:
            self._extend_ahead = False
            self._extend_pages = 1
            self._unpin_spares()
        self._free_spares()
        return resolved

    def _unpin_spares(self) -> None:
        """Drop the pins the spares kept from their extension (they stay in ``_spares``)."""
        pins, self._spare_pins = self._spare_pins, {}
        if pins:
            self.bufmgr.unpin_many(list(pins.values()))

    def _free_spares(self) -> None:
        """Pages extended ahead and not used go on the free list. (After an error other
        than a refused write they stay for the next batch: all zero, and unreached if
        the process ends first, as after a crash between extension and use.)"""
        self._unpin_spares()
        spares, self._spares = self._spares, []
        if spares:
            self._free_pages(spares)

    def _apply_runs(self, batch: LeafBatch, committed: Callable[[int], bool] | None,
                    resolved: dict[int, int]) -> None:
        """``_apply_sorted``'s loop."""
        runner = new_runner(batch)
        n = len(batch.keys)
        kinds, olds = batch.kinds, batch.olds
        i = 0
        full = False  # the last run stopped at write i: its leaf has no room for it
        hint = None   # that leaf and the descent's stack to it (_insert_run)
        while i < n:
            if full and not olds[i] and kinds[i] != KIND_NONE:
                done = 0  # straight to the split, no second look at the full leaf
            else:
                done, stop = self._apply_on_leaf(batch, runner, i, committed, resolved)
                i += done
                hint = None
                if done and (i >= n or stop != STOP_NO_ROOM or olds[i] or
                             kinds[i] == KIND_NONE):
                    full = False
                    continue
            if not olds[i] and kinds[i] != KIND_NONE:
                # A new version alone: its split carries the run after it (_insert_run)
                done, stop, hint = self._insert_run(batch, runner, i, committed, resolved,
                                                    hint if full else None)
                full = stop == STOP_NO_ROOM
            else:  # the first write needs the general path
                full = False
                key, xid, old = batch.keys[i], batch.xids[i], batch.olds[i]
                if old == LOOKUP_U64:
                    old = self._newest_committed(key, committed)
                    if old:
                        resolved[i] = old
                if old and not self.set_xmax(key, old, xid):
                    raise ValueError(f"key {key[:40]!r} has no version with xmin {old}")
                kind = batch.kinds[i]
                if kind != KIND_NONE:
                    item = pack_entry(key, xid, 0, ENTRY_OVERFLOW if
                                      kind == KIND_OVERFLOW else 0, batch.payloads[i])
                    self._insert_item(key, xid, item, xid)
                done = 1
            i += done

    def _leaf_batch(self, keys: list[bytes], values: list[bytes | None], xids,
                    olds: list[int], joined: tuple[bytes, array] | None = None
                    ) -> LeafBatch:
        """Sorted writes as a leaf-run batch: each new version's payload is its value, or
        the reference to its value written out to overflow pages now (large values;
        write lock held). A batch of inline puts only takes no interpreted step per
        write; when the longest value fits beside a key of KEY_MAX_BYTES the keys' lengths
        are not looked at. One inline write (an autocommit put) is one ``single_batch``."""
        n = len(keys)
        if n == 1:
            value = values[0]
            if value is not None and len(value) <= VALUE_INLINE_MAX_BYTES and \
                    LEAF_HEADER_SIZE + len(keys[0]) + len(value) <= ENTRY_MAX_BYTES:
                return single_batch(keys[0], value, KIND_INLINE, xids[0], olds[0])
        if None not in values:
            vmax = max(map(len, values), default=0)
            if vmax <= VALUE_INLINE_MAX_BYTES and (
                    LEAF_HEADER_SIZE + KEY_MAX_BYTES + vmax <= ENTRY_MAX_BYTES or
                    LEAF_HEADER_SIZE + max(map(operator.add, map(len, keys), map(
                        len, values)), default=0) <= ENTRY_MAX_BYTES):
                return make_batch(keys, values, bytes([KIND_INLINE]) * n, xids, olds,
                                  joined)
        payloads = []
        kinds = bytearray()
        for key, value, xid in zip(keys, values, xids, strict=True):  # deletes or large values
            if value is None:
                payloads.append(b"")
                kinds.append(KIND_NONE)
            elif len(value) > VALUE_INLINE_MAX_BYTES or \
                    LEAF_HEADER_SIZE + len(key) + len(value) > ENTRY_MAX_BYTES:
                payloads.append(pack_overflow_ref(self._write_overflow(value, xid)))
                kinds.append(KIND_OVERFLOW)
            else:
                payloads.append(value)
                kinds.append(KIND_INLINE)
        return make_batch(keys, payloads, kinds, xids, olds, joined)

    def _newest_committed(self, key: bytes, committed: Callable[[int], bool]) -> int:
        """The xmin of ``key``'s newest version with a ``committed`` xmin, 0 when there is
        none or its xmax is committed too (write lock held)."""
        for e in self._versions(key):
            if committed(e.xmin):
                return 0 if e.xmax and committed(e.xmax) else e.xmin
        return 0

    def latest_versions(self, keys: Sequence[bytes], committed: Callable[[int], bool], *,
                        ordered: bool = False, joined: tuple[bytes, array] | None = None
                        ) -> list[tuple[int, int]]:
        """For each of ``keys`` (checked keys; any order, no duplicates) the (xmin, xmax)
        of its newest version with a ``committed`` xmin, xmax 0 unless ``committed``;
        (0, 0) when it has none. A commit's validation: the keys are taken in order and
        every run of them on one leaf costs one descent and one C call (``first_versions``:
        each key's first entry there); only keys with versions get an interpreted step.
        ``ordered``: the caller passes the keys ascending (they are not sorted again), and
        with them ``joined``, their ``join_keys`` when it has it."""
        if ordered:
            order: Sequence[int] = range(len(keys))
            skeys = keys
        else:
            order = sorted(range(len(keys)), key=keys.__getitem__)
            skeys = list(map(keys.__getitem__, order))
        blob, at = join_keys(skeys) if joined is None or not ordered else joined
        out: list[tuple[int, int]] = [(0, 0)] * len(keys)
        bm = self.bufmgr
        n = len(order)
        offs_out = first_versions_out(n)
        pos = 0
        with self._reading():
            while pos < n:
                key = skeys[pos]
                block, buf = self._leaf_locked(key, exclusive=False)
                try:
                    page = bm.page(buf)
                    special = self._special(page, block)
                    high = None
                    if special.flags & BTP_DELETED:
                        high = b""  # moved right of: the general path below
                    elif special.next != P_NONE:
                        high = unpack_pivot(bt_item(page, 1)).key
                    count = bt_item_count(page)
                    # Keys below the high key have every version on this page.
                    if high != b"":
                        offs = first_versions(page, high, skeys, blob, at, pos, offs_out)
                        for k in itertools.compress(range(pos, pos + len(offs)), offs):
                            off, key = offs[k - pos], skeys[k]
                            while off <= count:
                                e = unpack_entry(bt_item(page, off))
                                if e.key != key:
                                    break
                                if committed(e.xmin):
                                    out[order[k]] = (e.xmin, e.xmax if e.xmax and
                                                     committed(e.xmax) else 0)
                                    break
                                off += 1
                        pos += len(offs)
                        if pos < n:
                            key = skeys[pos]
                except BTreePageError as e:
                    raise self._corrupt(block, str(e)) from None
                finally:
                    self._release(buf)
                # A key equal to the high key may have versions on the right too; a
                # deleted page gave no run: both take the general path.
                if pos < n and (key == high or high == b""):
                    for e in self._versions(key):
                        if committed(e.xmin):
                            out[order[pos]] = (e.xmin, e.xmax if e.xmax and
                                               committed(e.xmax) else 0)
                            break
                    pos += 1
        return out

    def _leaf_locked(self, key: bytes, *, exclusive: bool) -> tuple[int, int]:
        """(block, buf) of the leaf where (key, XMIN_MAX) belongs, locked: found through
        the cached internal pages (``_leaf_for``: no internal page pinned or locked), then
        moving right (L&Y) past a split or an unlinked leaf, as ``_descend`` does."""
        block, buf, _special = self._leaf_locked_special(key, exclusive=exclusive)
        return block, buf

    def _leaf_locked_special(self, key: bytes, *, exclusive: bool) -> tuple[int, int, Special]:
        """``_leaf_locked`` and the leaf's special space, as checked on the way."""
        bm = self.bufmgr
        block = self._leaf_for(key)
        while True:
            buf = self._read(block, exclusive=exclusive)
            try:
                page = bm.page(buf)
                special = self._special(page, block)
                if special.level != 0 or not special.flags & (BTP_LEAF | BTP_DELETED):
                    raise self._corrupt(block, f"reached as a leaf, but level "
                                               f"{special.level} flags {special.flags:#x}")
                if special.next == P_NONE or not (special.flags & BTP_DELETED or
                                                  locate(page, key, XMIN_MAX) == MOVE_RIGHT):
                    return block, buf, special
            except BTreePageError as e:
                self._release(buf, exclusive=exclusive)
                raise self._corrupt(block, str(e)) from None
            except BaseException:
                self._release(buf, exclusive=exclusive)
                raise
            self._release(buf, exclusive=exclusive)
            block = special.next

    def _apply_on_leaf(self, batch: LeafBatch, runner, i: int,
                       committed: Callable[[int], bool] | None,
                       resolved: dict[int, int]) -> tuple[int, int]:
        """Apply writes i.. of ``batch`` that fit on write i's leaf in one record (OLD_LOOKUP
        old versions resolved on it, into ``resolved``; ``btree_leafrun.leaf_run``: one C
        call per stretch of writes); how many did, and why the run stopped (STOP_*)."""
        block, buf, special = self._leaf_locked_special(batch.keys[i], exclusive=True)
        ch = _Change(buf, block, False)
        try:
            page = self.bufmgr.page(buf)
            # A key past the high key's belongs further right; one equal to it may have
            # versions on the right too (the general path): both end the run.
            high = None if special.next == P_NONE else unpack_pivot(bt_item(page, 1)).key
            lower, upper = _hole(page)
            st = LeafRunState(upper - lower)
            done, stop = leaf_run(page, high, batch, i, st, committed, runner)
            if done == 0:
                return 0, stop
            nactions = st.nactions()
            if nactions:
                ch.payload, ch.nactions = st.payload(), nactions
                self._log(XLOG_BTREE_INSERT, batch.xids[i], [ch], leaves_only=True)
            if st.resolved:
                resolved.update(st.resolved)
            return done, stop
        finally:
            self._release(buf, exclusive=True)

    def _insert_run(self, batch: LeafBatch, runner, i: int,
                    committed: Callable[[int], bool] | None, resolved: dict[int, int],
                    hint: tuple[int, list[int]] | None = None
                    ) -> tuple[int, int, tuple[int, list[int]] | None]:
        """Write i of ``batch`` (a new version, no old one) as ``_insert_item`` does; when
        its leaf splits, the writes after it that fit on the page that took it go into
        the split's record as a leaf run there (``_log``'s ``then``: the run's actions
        after the split's), with no descent or record of their own. Returns the writes
        done, why the run stopped (STOP_END when there was none) and, when the run
        stopped for room, the hint for the next call: (that leaf, the internal pages the
        descent to it passed). With ``hint`` write i's leaf is taken from it (L&Y: the
        stack's pages are where to start looking for the parents, moving right), checked
        to be a live leaf below whose high key write i's key lies, else a descent."""
        key, xid, kind = batch.keys[i], batch.xids[i], batch.kinds[i]
        item = pack_entry(key, xid, 0, ENTRY_OVERFLOW if kind == KIND_OVERFLOW else 0,
                          batch.payloads[i])
        found = None if hint is None else self._hinted_leaf(hint[0], key)
        if found is None:
            stack: list[int] = []
            block, buf = self._descend(key, xid, stack=stack, exclusive=True)
        else:
            (block, buf), stack = found, list(hint[1])
        saved = list(stack)
        changes = [_Change(buf, block, False)]
        try:
            if stack:
                got = self._append_leaves(batch, runner, i, committed, resolved, block, buf,
                                          stack, len(item))
                if got is not None:
                    return got
            off = self._insert_or_plan(changes, key, xid, item)
            if off is None:
                self._log(XLOG_BTREE_INSERT, xid, changes)
                return 1, STOP_END, None
            side: list[bool] = []
            root, level, alloc = self._plan_split(changes, off, key, xid, item, stack, side)
            if side[0]:  # the run goes on on the new right page: block index 0
                changes[0], changes[1] = changes[1], changes[0]
            runs: list[tuple[int, int, LeafRunState]] = []
            run_block = changes[0].block

            def run_after(page) -> tuple[bytes, int]:
                special = self._special(page, run_block)
                high = None if special.next == P_NONE else unpack_pivot(bt_item(page, 1)).key
                lower, upper = _hole(page)
                st = LeafRunState(upper - lower)
                done, stop = leaf_run(page, high, batch, i + 1, st, committed, runner)
                runs.append((done, stop, st))
                return (st.payload(), st.nactions()) if done else (b"", 0)

            self._log(XLOG_BTREE_SPLIT, xid, changes,
                      then=run_after if i + 1 < len(batch.keys) else None)
            # the saved stack stays exact unless a page above the leaf split (or the
            # root, with a new level above it): then the next split descends again
            moved = level != self._level or len(side) > 1
            self._root, self._level = root, level
            self._free_head, self._free_count = alloc
            if not runs:
                return 1, STOP_END, None
            done, stop, st = runs[0]
            if st.resolved:
                resolved.update(st.resolved)
            return 1 + done, stop, None if moved or stop != STOP_NO_ROOM else (
                run_block, saved)
        finally:
            self._release_changes(changes)

    def _append_leaves(self, batch: LeafBatch, runner, i: int,
                       committed: Callable[[int], bool] | None, resolved: dict[int, int],
                       block: int, buf: int, stack: list[int], item_len: int
                       ) -> tuple[int, int, tuple[int, list[int]] | None] | None:
        """Writes i.. of ``batch`` appended bottom-up past the rightmost leaf ``block``
        (exclusive-locked by the caller, which keeps it), as nbtsort builds a level: when
        write i (a new version, no old one) is past the leaf's last key and the leaf is
        full to the fill factor, new leaves are filled to LEAF_FILLFACTOR_PERCENT each
        (a leaf run per leaf: one C call) and logged with their pivots in ONE split record:
        block 0 the old leaf (A_SPLIT_LEFT keeping every item, the first new leaf's key as
        its high key and the new leaf as its right-link), block 1 the parent (one A_INSERT
        per pivot, as many as its free room takes), then each new leaf (A_INIT, its run's
        inserts, and A_SPLIT_LEFT adding its high key and right-link when another leaf
        follows), the metapage last when the free list moved. Every page stays
        exclusive-locked until the record is logged and stamped (L&Y: a reader reaching a
        new leaf through a right-link or the parent sees it whole). Returns
        ``_insert_run``'s answer, or None (nothing changed, nothing more held) when the
        path does not apply: the caller splits as before."""
        if APPEND_LEAVES_MAX < 1:  # switched off: every leaf splits as before
            return None
        bm = self.bufmgr
        kinds, olds, keys = batch.kinds, batch.olds, batch.keys
        page = bm.page(buf)
        special = self._special(page, block)
        if special.next != P_NONE or special.level != 0 or special.flags != BTP_LEAF:
            return None
        count = bt_item_count(page)
        key = keys[i]
        if count < 1 or kinds[i] == KIND_NONE or olds[i] not in (0, LOOKUP_U64):
            return None
        lower, upper = _hole(page)
        hole = upper - lower
        if item_cost(item_len) <= hole - _APPEND_RESERVE_BYTES or \
                entry_key(bt_item(page, count))[0] >= key:
            return None  # room left below the fill factor, or not past the last key
        # The old leaf's high key must fit: if it is full, its last few items move to
        # the first new leaf (the separator then their first, suffix-truncated as _split)
        keep, moved = count, []
        sep_key, sep_xmin = key, XMIN_MAX
        while item_cost(PIVOT_HEADER_SIZE + len(sep_key)) > hole:
            if keep <= 1 or len(moved) >= APPEND_MOVE_MAX:
                return None
            item = bytes(bt_item(page, keep))
            moved.insert(0, item)
            hole += item_cost(len(item))
            keep -= 1
            sep_key, sep_xmin = entry_key(item)
            if entry_key(bt_item(page, keep))[0] != sep_key:
                sep_xmin = XMIN_MAX
        parent, poff = self._find_downlink(stack[-1], block, (key, batch.xids[i]))
        changes = [_Change(buf, block, False), parent]
        pres = [bytes(page), bytes(bm.page(parent.buf))]
        lower, upper = _hole(bm.page(parent.buf))
        proom = upper - lower
        if item_cost(PIVOT_HEADER_SIZE + len(sep_key)) > proom:
            self._release(parent.buf, exclusive=True)
            return None
        # at most a quarter of the WAL ring per record (new leaves and images of the old
        # leaf and the parent), so a small wal_buffers still takes it
        most = max(1, min(APPEND_LEAVES_MAX, self.wal.wal_buffers_bytes // (4 * BLCKSZ) - 2))
        alloc = [self._free_head, self._free_count]
        pieces: list[bytes] = []
        n = len(keys)
        j = i
        stop = STOP_END
        prev, prev_page, prev_special, prev_keep = block, page, special, keep
        try:
            while True:
                # the next leaf starts at write j (after the items ``moved``, the first
                # time): the previous page gets its high key and right-link, the parent
                # its pivot
                new = self._allocate(alloc)
                changes.append(new)
                pres.append(bytes(bm.page(new.buf)))
                index = len(changes) - 1
                prev_index = 0 if prev == block else index - 1
                data = split_left_data(prev_keep, -1, Special(prev_special.prev, new.block, 0,
                                                              prev_special.flags),
                                       pack_pivot(sep_key, sep_xmin, P_NONE), b"")
                apply_action(prev_page, A_SPLIT_LEFT, data)
                pieces.append(encode_actions([(prev_index, A_SPLIT_LEFT, data)]))
                pivot = pack_pivot(sep_key, sep_xmin, new.block)
                data = insert_data(poff, pivot)
                apply_action(bm.page(parent.buf), A_INSERT, data)
                pieces.append(encode_actions([(1, A_INSERT, data)]))
                poff += 1
                proom -= item_cost(len(pivot))
                npage = bm.page(new.buf)
                nspecial = Special(prev, P_NONE, 0, BTP_LEAF)
                data = init_data(nspecial, moved)
                apply_action(npage, A_INIT, data)
                pieces.append(encode_actions([(index, A_INIT, data)]))
                lower, upper = _hole(npage)
                st = LeafRunState(upper - lower - _APPEND_RESERVE_BYTES, index)
                done, stop = leaf_run(npage, None, batch, j, st, committed, runner)
                if done == 0 and not moved:
                    raise self._corrupt(new.block, f"a new leaf took no write of the run "
                                                   f"(stop {stop})")
                more = st.payload()
                apply_payload_actions(npage, more, index, st.nactions())
                pieces.append(more)
                if st.resolved:
                    resolved.update(st.resolved)
                j += done
                prev, prev_page, prev_special = new.block, npage, nspecial
                prev_keep = len(moved) + st.inserted
                moved, sep_key, sep_xmin = [], keys[j] if j < n else b"", XMIN_MAX
                if stop != STOP_NO_ROOM or done == 0 or j >= n or \
                        len(changes) - 2 >= most or \
                        kinds[j] == KIND_NONE or olds[j] not in (0, LOOKUP_U64) or \
                        keys[j] == keys[j - 1]:
                    break
                lower, upper = _hole(npage)
                hk_cost = item_cost(PIVOT_HEADER_SIZE + len(sep_key))
                if hk_cost > upper - lower or hk_cost > proom:
                    break
            if alloc != [self._free_head, self._free_count]:
                meta = _Change(self._read(META_BLOCK, exclusive=True), META_BLOCK, True)
                changes.append(meta)  # the metapage last, as nbtree locks it
                pres.append(bytes(bm.page(meta.buf)))
                data = self._meta_init(self._root, self._level, *alloc)
                apply_action(bm.page(meta.buf), A_INIT, data)
                pieces.append(encode_actions([(len(changes) - 1, A_INIT, data)]))
            specs = []
            for ch, pre in zip(changes, pres, strict=True):
                npage = bm.page(ch.buf)
                specs.append(BlockSpec(self.rel, int(self.fork), ch.block, npage,
                                       page_get_lsn(pre), ch.will_init, _hole(npage)))
            _start, end = self.wal.insert(RM_BTREE, XLOG_BTREE_SPLIT, batch.xids[i],
                                          b"".join(pieces), specs)
        except BaseException:
            for ch, pre in zip(changes, pres, strict=False):
                bm.page(ch.buf)[:] = pre
            self._release_changes(changes[1:])
            raise
        for ch in changes:
            page_set_lsn(bm.page(ch.buf), end)
            bm.mark_dirty(ch.buf)
        self._forget_inner(changes)
        self._free_head, self._free_count = alloc
        self._release_changes(changes[1:])
        return j - i, stop, (prev, list(stack)) if stop == STOP_NO_ROOM else None

    def _hinted_leaf(self, block: int, key: bytes) -> tuple[int, int] | None:
        """(block, buf) of leaf ``block`` exclusive-locked when it is a live leaf and ``key``
        lies below its high key (or it is the rightmost), else None (nothing held)."""
        bm = self.bufmgr
        buf = self._read(block, exclusive=True)
        try:
            page = bm.page(buf)
            special = self._special(page, block)
            if special.level == 0 and special.flags & BTP_LEAF and \
                    not special.flags & BTP_DELETED and (
                        special.next == P_NONE or key < unpack_pivot(bt_item(page, 1)).key):
                return block, buf
        except BTreePageError as e:
            self._release(buf, exclusive=True)
            raise self._corrupt(block, str(e)) from None
        except BaseException:
            self._release(buf, exclusive=True)
            raise
        self._release(buf, exclusive=True)
        return None

    def set_xmax(self, key, xmin: int, xmax: int) -> bool:
        """Set the xmax of version (key, xmin) (0 clears it); False when there is no such
        version. Whether that is allowed (conflicts) is the transaction layer's call."""
        key = _check_key(key)
        _check_xid(xmin, "xmin")
        if xmax:
            _check_xid(xmax, "xmax")
        with self._write_lock:
            block, buf = self._descend(key, xmin, exclusive=True)
            ch = _Change(buf, block, False)
            try:
                page = self.bufmgr.page(buf)
                off = search_page(page, key, xmin, False)
                if off > bt_item_count(page) or entry_key(bt_item(page, off)) != (key, xmin):
                    return False
                ch.actions.append((A_SET_XMAX, set_xmax_data(off, xmax)))
                self._log(XLOG_BTREE_SET_XMAX, xmax or xmin, [ch])
                return True
            finally:
                self._release(buf, exclusive=True)

    def put(self, key, value, xid: int, snapshot: Snapshot = _see_all_live) -> None:
        """An MVCC write: the version ``snapshot`` sees (if any) gets xmax = ``xid``, and
        (key, xid) is inserted with ``value``."""
        key = _check_key(key)
        value = _check_value(value)
        _check_xid(xid, "xid")
        with self._write_lock:
            for e in self._versions(key):
                if snapshot(e.xmin, e.xmax):
                    if e.xmin == xid:
                        raise ValueError(f"key {key[:40]!r} was already written by xid {xid}")
                    self.set_xmax(key, e.xmin, xid)
                    break
            self.insert(key, value, xid)

    def delete(self, key, xid: int, snapshot: Snapshot = _see_all_live) -> bool:
        """Set xmax = ``xid`` on the version ``snapshot`` sees; False when it sees none."""
        key = _check_key(key)
        _check_xid(xid, "xid")
        with self._write_lock:
            for e in self._versions(key):
                if snapshot(e.xmin, e.xmax):
                    return self.set_xmax(key, e.xmin, xid)
            return False

    def _insert_item(self, key: bytes, xmin: int, item: bytes, xid: int) -> None:
        stack: list[int] = []
        block, buf = self._descend(key, xmin, stack=stack, exclusive=True)
        changes = [_Change(buf, block, False)]
        try:
            off = self._insert_or_plan(changes, key, xmin, item)
            if off is None:
                self._log(XLOG_BTREE_INSERT, xid, changes)
                return
            root, level, alloc = self._plan_split(changes, off, key, xmin, item, stack)
            self._log(XLOG_BTREE_SPLIT, xid, changes)
            self._root, self._level = root, level
            self._free_head, self._free_count = alloc
        finally:
            self._release_changes(changes)

    def _insert_or_plan(self, changes: list[_Change], key: bytes, xmin: int,
                        item: bytes) -> int | None:
        """``item`` for (key, xmin) on changes[0]'s locked leaf: its insert action when it
        fits (None), else the offnum where it goes (the caller plans a split).
        ValueError when the leaf has that version already."""
        page = self.bufmgr.page(changes[0].buf)
        off = search_page(page, key, xmin, False)
        if off <= bt_item_count(page) and entry_key(bt_item(page, off)) == (key, xmin):
            raise ValueError(f"key {key[:40]!r} already has a version with xmin {xmin}")
        if bt_fits(page, len(item)):
            changes[0].actions.append((A_INSERT, insert_data(off, item)))
            return None
        if self._prune_leaf(changes[0].buf, changes[0].block, page):
            off = search_page(page, key, xmin, False)   # (entries before it may have gone)
            if bt_fits(page, len(item)):
                changes[0].actions.append((A_INSERT, insert_data(off, item)))
                return None
        return off

    def _prune_leaf(self, buf: int, block: int, page) -> bool:
        """A full leaf's in-page pruning before it splits (nbtree's simple deletion, the
        heap's page pruning): when the entries no snapshot, present or future, can see
        (the vacuum test ``prune_test()`` gives) take at least ``PRUNE_MIN_BYTES``, they are
        removed by one VACUUM record, as vacuum removes them; an entry holding an
        out-of-line value stays for vacuum, which frees its pages. ``buf`` is the leaf's,
        pinned and exclusive-locked (under the write lock). True when entries were
        removed. Without ``prune_test`` (a table's index, whose entries' visibility is
        their heap tuples') nothing is done."""
        make_test = self.prune_test
        if make_test is None:
            return False
        first = bt_first_data(self._special(page, block))
        dead, overflow = leaf_vacuum(page, first, make_test(), False)
        if overflow:
            dead = [o for o in dead if o not in overflow]
        # Worth it only when it frees a good part of the page: a leaf pruned of a few
        # entries would be full again, and pruned again (a general-path write each time),
        # a few puts later, where a split leaves room for many fast ones.
        if not dead or sum(len(bt_item(page, o)) + 4 for o in dead) < PRUNE_MIN_BYTES:
            return False
        ch = _Change(buf, block, False)
        ch.actions.append((A_DELETE, delete_data(dead)))
        self._log(XLOG_BTREE_VACUUM, 0, [ch], leaves_only=True)
        self.pruned += len(dead)
        return True

    def _plan_split(self, changes: list[_Change], off: int, key: bytes, xmin: int,
                    item: bytes, stack: list[int], side: list[bool] | None = None
                    ) -> tuple[int, int, list[int]]:
        """The split of changes[0]'s leaf for ``item`` at ``off`` (``_split``), with the
        metapage's change when the root or the free list moves: (root, level, [free
        head, count]) to set once the record is logged."""
        alloc = [self._free_head, self._free_count]
        new_root = self._split(changes, off, item, stack, (key, xmin), alloc, side)
        root, level = new_root if new_root is not None else (self._root, self._level)
        if new_root is not None or alloc != [self._free_head, self._free_count]:
            meta = _Change(self._read(META_BLOCK, exclusive=True), META_BLOCK, True)
            changes.append(meta)  # the metapage last, as nbtree locks it
            meta.actions.append((A_INIT, self._meta_init(root, level, *alloc)))
        return root, level, alloc

    def _split(self, changes: list[_Change], off: int, item: bytes, stack: list[int],
               target: tuple[bytes, int], alloc: list[int],
               side: list[bool] | None = None) -> tuple[int, int] | None:
        """Plan a split of changes[0]'s page for ``item`` at ``off``, cascading upwards:
        appends every page it touches (locked) to ``changes`` with its actions; new pages
        come from the free list ``alloc`` = [head, count] (updated) before extension.
        Returns (new root, new level) when the root split; the caller logs the metapage.
        ``side`` gets, for each page split (the leaf first: changes[0] and [1]), True when
        the item goes to the new right page."""
        bm = self.bufmgr
        cur = changes[0]
        while True:
            page = bm.page(cur.buf)
            special = self._special(page, cur.block)
            if bt_fits(page, len(item)):
                cur.actions.append((A_INSERT, insert_data(off, item)))
                return None
            leaf = special.level == 0
            first = bt_first_data(special)
            new_index = off - first
            if leaf:  # sized from the line pointers, only the items moved right copied
                lens = bt_item_lengths(page)[first - 1:]
                lens.insert(new_index, len(item))
                old_hk = bytes(bt_item(page, 1)) if first == 2 else None
                all_items: Sequence[bytes] = _SplitItems(page, first, item, new_index,
                                                         len(lens))
                k = _choose_split(all_items, leaf, old_hk, new_index, lens)
            else:
                items = bt_items(page)
                old_hk = items[0] if first == 2 else None
                data = items[first - 1:]
                all_items = data[:new_index] + [item] + data[new_index:]
                k = _choose_split(all_items, leaf, old_hk, new_index)
            right = self._allocate(alloc)
            changes.append(right)
            if leaf:
                sep_key, sep_xmin = entry_key(all_items[k])
                if entry_key(all_items[k - 1])[0] != sep_key:
                    # Suffix truncation: between two keys the separator is the key's
                    # lowest possible version, so a lookup of the key (target (key,
                    # XMIN_MAX)) descends straight to the right page.
                    sep_xmin = XMIN_MAX
                right_items = all_items[k:]
            else:
                p = unpack_pivot(all_items[k])
                sep_key, sep_xmin = p.key, p.xmin
                right_items = [minus_inf_pivot(p.child)] + all_items[k + 1:]
            flags = special.flags & ~BTP_ROOT
            left_special = Special(special.prev, right.block, special.level, flags)
            right_special = Special(cur.block, special.next, special.level, flags)
            if new_index < k:
                keep, left_new, left_item = k - 1, new_index, item
            else:
                keep, left_new, left_item = k, -1, b""
            if side is not None:
                side.append(new_index >= k)
            cur.actions.append((A_SPLIT_LEFT, split_left_data(
                keep, left_new, left_special, pack_pivot(sep_key, sep_xmin, P_NONE), left_item)))
            right.actions.append((A_INIT, init_data(
                right_special, ([old_hk] if old_hk is not None else []) + right_items)))
            if special.next != P_NONE:
                sib = _Change(self._read(special.next, exclusive=True), special.next, False)
                changes.append(sib)
                sib_special = self._special(bm.page(sib.buf), sib.block)
                if sib_special.prev != cur.block:
                    raise self._corrupt(sib.block, f"left-link {sib_special.prev}, expected "
                                                   f"{cur.block}")
                sib.actions.append((A_SET_PREV, set_prev_data(right.block)))
            downlink = pack_pivot(sep_key, sep_xmin, right.block)
            if special.flags & BTP_ROOT:
                root = self._allocate(alloc)
                changes.append(root)
                root.actions.append((A_INIT, init_data(
                    Special(P_NONE, P_NONE, special.level + 1, BTP_ROOT),
                    [minus_inf_pivot(cur.block), downlink])))
                return root.block, special.level + 1
            if not stack:
                raise self._corrupt(cur.block, "non-root page reached without a parent")
            parent, off = self._find_downlink(stack.pop(), cur.block, target)
            changes.append(parent)
            cur, item = parent, downlink

    def _find_downlink(self, block: int, child: int,
                       target: tuple[bytes, int]) -> tuple[_Change, int]:
        """The parent page (exclusive-locked) holding the downlink to ``child``, moving right
        from ``block`` if needed, and the offnum just after that downlink. ``target`` (the
        key being inserted below) finds it by binary search; a scan is the fallback."""
        bm = self.bufmgr
        while True:
            buf = self._read(block, exclusive=True)
            page = bm.page(buf)
            special = self._special(page, block)
            pos = search_page(page, target[0], target[1], True) - 1
            if pos >= bt_first_data(special) and unpack_pivot(bt_item(page, pos)).child == child:
                return _Change(buf, block, False), pos + 1
            for off in range(bt_first_data(special), bt_item_count(page) + 1):
                if unpack_pivot(bt_item(page, off)).child == child:
                    return _Change(buf, block, False), off + 1
            self._release(buf, exclusive=True)
            if special.next == P_NONE:
                raise self._corrupt(child, f"no downlink to it on level {special.level}")
            block = special.next

    # --- vacuum ------------------------------------------------------------------------------
    def vacuum(self, is_dead: Callable[[int, int], bool], *,
               by_entry: bool = False) -> VacuumResult:
        """Remove every leaf entry for which ``is_dead(xmin, xmax)`` (with ``by_entry``:
        ``is_dead(entry)``, the whole ``LeafEntry``, as a secondary index whose key ends
        with a heap TID needs) is True (one VACUUM
        record per leaf changed), free the overflow pages of those removed, unlink the
        leaves left empty (``_unlink_leaf``) and recycle unlinked leaves no reader can
        reach any more onto the free list, from which splits and overflow values take
        pages before extending the relation. Walks the
        leaf level through a read stream fed from the parent level (overflow pages are
        never read); ``is_dead`` runs with the leaf share-locked, so it must not touch
        the tree."""
        removed = leaves = 0
        refs: list[OverflowRef] = []
        with self._write_lock:
            def visit(block: int, page, special: Special) -> tuple[tuple, bool]:
                first = bt_first_data(special)
                count = bt_item_count(page) + 1 - first
                dead, overflow = leaf_vacuum(page, first, is_dead, by_entry)
                # (an out-of-line value's reference, read while the leaf is share-locked)
                dead = [(o, unpack_entry(bt_item(page, o)) if o in overflow else None)
                        for o in dead]
                return (block, dead, count, special.next == P_NONE), False

            empty = []
            for block, dead, count, rightmost in self._walk_leaves(b"", visit):
                if len(dead) == count and not rightmost:
                    empty.append(block)
                if not dead:
                    continue
                # The write lock is held: the leaf is as visit saw it.
                buf = self._read(block, exclusive=True)
                try:
                    ch = _Change(buf, block, False)
                    ch.actions.append((A_DELETE, delete_data([o for o, _e in dead])))
                    self._log(XLOG_BTREE_VACUUM, 0, [ch])
                finally:
                    self._release(buf, exclusive=True)
                removed += len(dead)
                leaves += 1
                refs += [unpack_overflow_ref(e.payload) for _o, e in dead if e is not None]
            freed = self._free_overflow(refs)
            unlinked = sum(self._unlink_leaf(block) for block in empty)
            recycled = self._recycle()
        return VacuumResult(removed, leaves, freed, unlinked, recycled)

    def _unlink_leaf(self, block: int) -> bool:
        """Take the empty, not rightmost leaf ``block`` out of the tree in one UNLINK record
        (as nbtree's page deletion, in one step since writers are serialized): its
        parent's pivot for it points at its right sibling instead and the sibling's own
        pivot goes, so the sibling takes over its key range; the siblings link past it;
        it becomes DELETED (keeping its right-link, so a reader still on it moves right)
        and waits in ``_unlinked`` until no reader that may know it is left. Only when
        both downlinks sit in one parent; False (nothing done) otherwise."""
        bm = self.bufmgr
        changes: list[_Change] = []
        try:
            leaf = _Change(self._read(block, exclusive=True), block, True)
            changes.append(leaf)
            page = bm.page(leaf.buf)
            special = self._special(page, block)
            if special.flags & BTP_DELETED or special.next == P_NONE or \
                    bt_item_count(page) != 1:  # not empty (or high key only) any more
                return False
            high = unpack_pivot(bt_item(page, 1))
            right = special.next
            pblock, pbuf = self._descend(high.key, high.xmin, level=1)
            bm.unlock_shared(pbuf)
            bm.lock_exclusive(pbuf)  # the only writer: nothing changed it in between
            parent = _Change(pbuf, pblock, False)
            changes.append(parent)
            ppage = bm.page(pbuf)
            if self._special(ppage, pblock).level != 1:
                return False
            pos = search_page(ppage, high.key, high.xmin, True) - 1
            first = bt_first_data(self._special(ppage, pblock))
            if pos - 1 < first or unpack_pivot(bt_item(ppage, pos)).child != right or \
                    unpack_pivot(bt_item(ppage, pos - 1)).child != block:
                return False
            sib = _Change(self._read(right, exclusive=True), right, False)
            changes.append(sib)
            sib.actions.append((A_SET_PREV, set_prev_data(special.prev)))
            if special.prev != P_NONE:
                left = _Change(self._read(special.prev, exclusive=True), special.prev, False)
                changes.append(left)
                left.actions.append((A_SET_NEXT, set_next_data(right)))
            parent.actions.append((A_SET_CHILD, set_child_data(pos - 1, right)))
            parent.actions.append((A_DELETE, delete_data([pos])))
            leaf.actions.append((A_INIT, init_data(
                Special(special.prev, right, 0, BTP_DELETED), [])))
            self._log(XLOG_BTREE_UNLINK, 0, changes)
        finally:
            self._release_changes(changes)
        with self._epoch_lock:
            self._unlinked.append((self._epoch, block))
            self._epoch += 1
        return True

    def _recycle(self) -> int:
        """Put the unlinked leaves no reader can reach any more on the free list."""
        with self._epoch_lock:
            readers = self._readers.copy()  # one step under the GIL (see _begin_read)
            oldest = min(readers.values(), default=self._epoch)
            ready = [b for e, b in self._unlinked if e < oldest]
            self._unlinked = [(e, b) for e, b in self._unlinked if e >= oldest]
        return self._free_pages(ready) if ready else 0

    # --- check ---------------------------------------------------------------------------------
    def check(self) -> CheckResult:
        """Verify the whole tree like amcheck's bt_index_parent_check (invariants 1-5);
        raise DataCorruptionError naming relation and block at the first violation. Holds
        the write lock: run it on a tree no one is changing."""
        with self._write_lock:
            return _Checker(self).run()


class _Checker:
    """One pass of ``BTree.check``: levels top-down, then overflow references, then the
    free list."""

    def __init__(self, tree: BTree) -> None:
        self.tree = tree
        self.bm = tree.bufmgr
        self.nblocks = tree.bufmgr.smgr.nblocks(tree.rel, tree.fork)
        self.seen: set[int] = {META_BLOCK}

    def fail(self, block: int, why: str) -> DataCorruptionError:
        return self.tree._corrupt(block, why)

    def page(self, block: int) -> tuple[bytes, Special]:
        if not 0 <= block < self.nblocks:
            raise self.fail(block, f"block is past the end of the relation ({self.nblocks} "
                                   f"blocks)")
        page = self.tree._copy_page(block)
        return page, self.tree._special(page, block)

    def run(self) -> CheckResult:
        t = self.tree
        root, level, free_head, free_count = t._decode_meta(t._copy_page(META_BLOCK))
        if (root, level) != (t._root, t._level):
            raise self.fail(META_BLOCK, f"metapage says root {root} level {level}, the tree "
                                        f"object has root {t._root} level {t._level}")
        page, special = self.page(root)
        if not special.flags & BTP_ROOT or special.level != level or \
                special.prev != P_NONE or special.next != P_NONE:
            raise self.fail(root, f"root page has flags {special.flags:#x} level "
                                  f"{special.level} links {special.prev}/{special.next}")
        # (block, lower bound or None, upper bound or None) expected on the current level
        expected: list[tuple[int, tuple | None, tuple | None]] = [(root, None, None)]
        per_level = []
        entries = 0
        refs: list[tuple[int, OverflowRef]] = []
        for lvl in range(level, -1, -1):
            below: list[tuple[int, tuple | None, tuple | None]] = []
            prev_block = P_NONE
            block = expected[0][0]
            walked = 0
            while block != P_NONE:
                if block in self.seen:
                    raise self.fail(block, "page reached twice (a cycle, or two downlinks)")
                self.seen.add(block)
                if walked >= len(expected) or expected[walked][0] != block:
                    want = expected[walked][0] if walked < len(expected) else None
                    raise self.fail(block, f"level {lvl} page at position {walked} of the "
                                           f"right-link chain; the parent level's downlink "
                                           f"there is {want}")
                _b, lower, upper = expected[walked]
                page, special = self.page(block)
                got = self.check_page(block, page, special, lvl, prev_block, lower, upper,
                                      below, refs)
                entries += got
                walked += 1
                prev_block, block = block, special.next
            if walked != len(expected):
                raise self.fail(expected[walked][0], f"downlink to a page not on level {lvl}'s "
                                                     f"right-link chain")
            per_level.append(walked)
            expected = below
        overflow = self.check_overflow(refs)
        free = self.check_free_list(free_head, free_count)
        return CheckResult(level + 1, tuple(per_level), entries, overflow, free,
                           self.nblocks - len(self.seen))

    def check_page(self, block, page, special, lvl, prev_block, lower, upper, below,
                   refs) -> int:
        if special.level != lvl:
            raise self.fail(block, f"level {special.level}, expected {lvl}")
        leaf = lvl == 0
        if bool(special.flags & BTP_LEAF) != leaf or special.flags & (
                BTP_META | BTP_OVERFLOW | BTP_FREE) or \
                bool(special.flags & BTP_ROOT) != (block == self.tree._root):
            raise self.fail(block, f"flags {special.flags:#x} on a level {lvl} page")
        if special.prev != prev_block:
            raise self.fail(block, f"left-link {special.prev}, but the page to its left is "
                                   f"{prev_block}")
        try:
            items = bt_items(page)
            first = bt_first_data(special)
            if (upper is None) != (special.next == P_NONE):
                raise self.fail(block, "a rightmost page must have no high key and every other "
                                       "page one")
            hk = None
            if first == 2:
                if not items:
                    raise self.fail(block, "high key missing")
                p = unpack_pivot(items[0])
                hk = (1, p.key, -p.xmin)
                if hk != upper:
                    raise self.fail(block, f"high key {p.key[:40]!r}/{p.xmin} differs from the "
                                           f"parent's bound")
            keys = []
            for i, item in enumerate(items[first - 1:]):
                if leaf:
                    e = unpack_entry(item)
                    keys.append((1, e.key, -e.xmin))
                    if len(e.key) > KEY_MAX_BYTES or e.xmin == 0:
                        raise self.fail(block, f"entry {first + i}: key of {len(e.key)} bytes, "
                                               f"xmin {e.xmin}")
                    if e.flags & ENTRY_OVERFLOW:
                        refs.append((block, unpack_overflow_ref(e.payload)))
                else:
                    p = unpack_pivot(item)
                    if p.minus_inf != (i == 0):
                        raise self.fail(block, f"item {first + i}: minus-infinity pivot "
                                               f"{'missing' if i == 0 else 'not first'}")
                    keys.append(lower if p.minus_inf else (1, p.key, -p.xmin))
            if not leaf and not keys:
                raise self.fail(block, "internal page without a downlink")
        except BTreePageError as e:
            raise self.fail(block, str(e)) from None
        for i in range(len(keys) - 1):
            a, b = keys[i], keys[i + 1]
            if a is not None and not a < b:
                raise self.fail(block, f"items {first + i} and {first + i + 1} out of order")
        for i, k in enumerate(keys):
            if k is None:
                continue
            if lower is not None and k < lower:
                raise self.fail(block, f"item {first + i} is below the page's lower bound (its "
                                       f"pivot in the parent)")
            if hk is not None and not k < hk:
                raise self.fail(block, f"item {first + i} is not below the high key")
        if not leaf:
            for i, item in enumerate(items[first - 1:]):
                child = unpack_pivot(item).child
                child_upper = keys[i + 1] if i + 1 < len(keys) else hk
                below.append((child, keys[i], child_upper))
            return 0
        return len(keys)

    def check_overflow(self, refs: list[tuple[int, OverflowRef]]) -> int:
        pages = 0
        for leaf_block, ref in refs:
            total = 0
            for seq, block in enumerate(ref.blocks()):
                if not 0 < block < self.nblocks:
                    raise self.fail(leaf_block, f"overflow reference to block {block} outside "
                                                f"the relation")
                if block in self.seen:
                    raise self.fail(block, f"overflow page referenced twice or also a tree "
                                           f"page (from leaf {leaf_block})")
                self.seen.add(block)
                page, special = self.page(block)
                if not special.flags & BTP_OVERFLOW or special.prev != seq:
                    raise self.fail(block, f"overflow chunk {seq} of a value on leaf "
                                           f"{leaf_block}: flags {special.flags:#x}, chunk "
                                           f"{special.prev}")
                if bt_item_count(page) != 1:
                    raise self.fail(block, "overflow page without exactly one chunk")
                n = len(bt_item(page, 1))
                last = seq == ref.npages() - 1
                if n != (ref.length - total if last else OVERFLOW_CHUNK_BYTES):
                    raise self.fail(block, f"overflow chunk {seq} has {n} bytes")
                total += n
                pages += 1
            if total != ref.length:
                raise self.fail(leaf_block, f"overflow value of {total} bytes, reference says "
                                            f"{ref.length}")
        return pages

    def check_free_list(self, head: int, count: int) -> int:
        n = 0
        block = head
        while block != P_NONE:
            if block in self.seen:
                raise self.fail(block, "free-list page is also in use, or the list has a cycle")
            self.seen.add(block)
            page, special = self.page(block)
            if not special.flags & BTP_FREE:
                raise self.fail(block, f"page on the free list has flags {special.flags:#x}")
            n += 1
            block = special.next
        if n != count:
            raise self.fail(META_BLOCK, f"free list holds {n} pages, the metapage says {count}")
        return n


def check_tree(tree: BTree) -> CheckResult:
    """amcheck's bt_index_check for one tree: ``tree.check()`` (see there)."""
    return tree.check()
