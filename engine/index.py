"""Secondary B+tree indexes of tables (and primary keys): entries, lookups, vacuum, checks.

A ``TableIndex`` is one B+tree relation (``engine.access.btree``) whose entries point at
heap tuples, like PostgreSQL's nbtree over a heap:

    entry key  = encode_key(index columns, row values) | block u32 BE | offnum u16 BE
    xmin       = the xid that inserted the heap tuple (the tree's WAL records name it)
    xmax       = 0 (never set: visibility is the heap's business)
    payload    = empty

The heap TID at the end of the key makes every entry unique and orders the entries of
one key value by TID. Every heap tuple a table writes (insert, the new version of an
update) gets one entry in every index, in the same transaction, after the heap change
(WAL order: heap record, index record, COMMIT). Entries are never changed after that:
a delete or an update leaves the old version's entries pointing at a version that the
heap's visibility rules (xmin/xmax against the reader's snapshot) hide, so every read
fetches the heap tuple, checks it is visible and re-checks its key.

Vacuum (``prune_with_indexes``): the heap tuples about to be pruned are found first,
their entries are removed from every index, and only then the heap prunes exactly those
tuples (a tuple not found dead in the first pass is not pruned). So an index never points
at a slot that a later insert reuses for a stranger's row.

Invariants:
1. Every heap tuple that is not pruned has exactly one entry in each index of its table,
   keyed by its own values (``check_index`` verifies this, and that every entry points
   at a tuple with that key).
2. Entries of an index are added only under the table's write lock (uniqueness checks
   and the entries they guard are atomic with respect to other writers of the table).
3. Keys stay within the tree's ``KEY_MAX_BYTES``: a longer key raises ``ValueError``
   naming the index, before the heap is touched.
4. A point read's leaf in the pool is read without its share lock (``point_tids``:
   ``slk_ix_point_step_opt`` copies the leaf whole while its change counter shows no
   writer, ``storage/bufmgr.py`` invariant 8, and answers from the copy, all inside one
   descriptor-lock section, ``BufferManager.read_hit``, whose held lock stands in for
   the pin); a writer holding it meanwhile, or a page only the reference can judge,
   sends the read to the share-locked path, which answers or raises naming the page. A
   leaf holding none of the key while its high key starts with it sends the probe to
   its right sibling (L&Y "move right"; the reader is registered, so no leaf it
   reaches is recycled meanwhile).
"""

from __future__ import annotations

import operator
import struct
import threading
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, repeat, starmap
from operator import itemgetter
from typing import NamedTuple

from slonik.engine.access.btree import KEY_MAX_BYTES, BTree, DeadTids, VersionWrite, XidSnapshot
from slonik.engine.access.btree_leafrun import sorted_joined
from slonik.engine.access.btree_page import (
    BTP_DELETED,
    BTP_LEAF,
    EXTRACT_DONE,
    P_NONE,
    BTreePageError,
    bt_item,
    bt_item_count,
    bt_special,
    extract_cut,
    extract_leaf_py,
    gather_leaf_py,
    unpack_entry,
    unpack_pivot,
)
from slonik.engine.access.heap import DeadOf, Heap
from slonik.engine.access.heap_fetch import (
    C_RANGE_ROWS,
    NO_TUPLE,
    OPT_RETRY,
    Gathered,
    fetch_tuple,
    gather_heap,
    gather_heap_rows,
    key_check,
    recheck,
    rows_of,
)
from slonik.engine.access.keycodec import (
    columns_encoder,
    key_encoder,
    prefix_end,
    value_encoder,
)
from slonik.engine.access.tuple import HeapTuple, RowCodec, Tid
from slonik.engine.catalog import IndexEntry
from slonik.storage.hotlib import hot_for
from slonik.storage.page import BLCKSZ, HEADER_SIZE, LINE_POINTER_SIZE

try:  # the optional C helper (storage/_pagecheck_build.py, "table index" block)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_ix_point"):  # an older build of the module
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None
_hot = hot_for(_lib)   # its page-sized helpers, the GIL kept (storage/hotlib.py)
# The point probe that also names a move right ("point probe" block); None in an older
# build, where point_tuple probes with slk_ix_point_opt and walks the leaves instead.
_point_step = getattr(_hot, "slk_ix_point_step_opt", None)
_POINT_RIGHT = _lib.SLK_IX_POINT_RIGHT if _point_step is not None else None
_point_probe = _point_step or (_hot.slk_ix_point_opt if _lib is not None else None)
_heap_fetch_opt = _hot.slk_heap_fetch_opt if _lib is not None else None

__all__ = ["TableIndex", "prune_with_indexes", "check_index", "check_entries",
           "IndexCheckResult", "split_entry_key", "TID_SUFFIX_BYTES", "fetch_batched",
           "HeapBatch", "point_entries", "point_entries_py", "POINT_ENTRIES_MAX",
           "BatchTids", "batch_tids", "batch_tids_py", "BATCH_TIDS_MAX", "BATCH_TIDS_C_MIN",
           "POINT_OTHER", "fetch_rows", "range_rows", "point_right_py"]

_TID = struct.Struct(">IH")
TID_SUFFIX_BYTES = _TID.size
# A range scan fetches heap tuples for the entries of this many index entries at a time,
# so the heap read stream knows that many blocks ahead (the look-ahead it can use).
INDEX_SCAN_BATCH_ENTRIES = 256
# A forward range scan reads this many leaves itself (from the cached internal pages, no
# read-ahead) before handing over to the tree's streamed leaf walk: most ranges end there.
RANGE_WALK_LEAVES = 2
# Every entry (xmax is never set): as a snapshot the tree filters in C, seeing any xmin.
_EVERY_ENTRY = XidSnapshot(1 << 63, 0, ())
# A point read of an index (``point_entries``) answers for at most this many entries; a key
# shared by more is read by ``walk_leaves``.
POINT_ENTRIES_MAX = 4
# A point read moves right past at most this many leaves holding none of its key (a leaf
# split exactly at the key, and empty leaves vacuum has not unlinked yet) before it
# hands the key to the general path.
POINT_MOVES_RIGHT_MAX = 4
# ``batch_tids`` takes at most this many entry keys per C call (the C helper's bound;
# fetch_batched's batches of INDEX_SCAN_BATCH_ENTRIES stay below it).
BATCH_TIDS_MAX = _lib.SLK_IX_TIDS_MAX if _lib is not None else 512
# ... and at least this many: a smaller batch is cheaper in the reference (measured: C
# ~5 us fixed, the reference ~0.25 us per key; equal near 16 keys).
BATCH_TIDS_C_MIN = 16
_tls = threading.local()


def _no_lookup(xid: int) -> bool:
    """The ``committed`` test of an index build, which has no OLD_LOOKUP write to resolve."""
    raise AssertionError(f"an index build asked whether transaction {xid} committed")


def split_entry_key(key: bytes) -> tuple[bytes, Tid]:
    """(encoded key, heap TID) of an index entry's key."""
    n = len(key) - TID_SUFFIX_BYTES
    if n < 0:
        raise ValueError(f"an index entry key of {len(key)} bytes has no heap TID")
    return key[:n], Tid(*_TID.unpack_from(key, n))


class TableIndex:
    """One index of a table: its definition, its tree and how a row maps to its key."""

    def __init__(self, entry: IndexEntry, table_columns: Sequence[tuple[str, str]],
                 tree: BTree | None) -> None:
        types = dict(table_columns)
        names = [n for n, _t in table_columns]
        self.entry = entry
        self.name = entry.name
        self.unique = entry.unique
        self.primary = entry.primary
        self.tree = tree
        self.key_columns = tuple((c, types[c]) for c in entry.columns)
        self.positions = tuple(names.index(c) for c in entry.columns)
        # Bound once per index: a lookup encodes its key, and every row an index read
        # returns is re-checked by encoding its key (see key_of_row).
        self._encode = key_encoder(self.key_columns)
        self._encode_columns = columns_encoder(self.key_columns)
        self._column_getters = tuple(map(itemgetter, self.positions))
        self._values_of = itemgetter(*self.positions) if len(self.positions) > 1 else \
            (lambda row, _i=self.positions[0]: (row[_i],))
        # A one-column index's key of one value (``encode((v,))`` without the size check;
        # None for wider indexes): a point read encodes its key and re-checks its row so.
        self.encode_value = value_encoder(self.key_columns[0]) \
            if len(self.key_columns) == 1 else None
        # A range scan's key re-check in C (heap_fetch.KeyCheck for a row codec), made by
        # the first range scan (fetch_rows)
        self._range_key_check = None

    def __repr__(self) -> str:
        kind = "primary key" if self.primary else "unique index" if self.unique else "index"
        return f"<{kind} {self.name!r} on {list(self.entry.columns)}>"

    @property
    def rel(self) -> int:
        return self.entry.relfilenumber

    def values_of(self, row: Sequence) -> tuple:
        return self._values_of(row)

    def key_of_row(self, row: Sequence) -> bytes:
        """The encoded key of ``row`` (no size check: a stored row's key passed it)."""
        return self._encode(self._values_of(row))

    def keys_of_rows(self, rows: list) -> list[bytes]:
        """``[key_of_row(r) for r in rows]`` (an index scan's re-checks): the key columns
        taken out of the rows and encoded column-wise, or row by row when a column holds
        a NULL or an unusual type."""
        if not rows:
            return []
        got = self._encode_columns([list(map(g, rows)) for g in self._column_getters])
        return got if got is not None else list(map(self.key_of_row, rows))

    def encode_rows(self, rows: list) -> list[bytes] | None:
        """``[encode(values_of(r)) for r in rows]`` column-wise (a bulk insert's keys), or
        None when a key column holds a NULL or a value not of its exact type, or a key is
        over the size limit: ``encode`` row by row then gives the right bytes or error."""
        if not rows:
            return []
        got = self._encode_columns([list(map(g, rows)) for g in self._column_getters])
        if got is None or max(map(len, got)) + TID_SUFFIX_BYTES > KEY_MAX_BYTES:
            return None
        return got

    def holders(self, keys: Collection[bytes]) -> dict[bytes, list[Tid]]:
        """The heap TIDs of the entries of each of ``keys`` (whole encoded keys, distinct:
        a set, or a dict's keys) that has entries, in index order: one walk of the leaves
        from the least key to the greatest when the keys are at least as many as the
        index's pages (a bulk insert: each leaf read once), else a descent per key
        (``matching``)."""
        if not keys:
            return {}
        tree = self.tree
        out: dict[bytes, list[Tid]] = {}
        if len(keys) < tree.bufmgr.smgr.nblocks(tree.rel, tree.fork):
            for key in keys:
                got = self.matching(key)
                if got:
                    out[key] = [tid for _k, tid in got]
            return out
        entries, _done = walk_leaves(tree, min(keys), prefix_end(max(keys)))
        for key, tid in map(split_entry_key, entries):
            if key in keys:
                out.setdefault(key, []).append(tid)
        return out

    def encode(self, values: Sequence) -> bytes:
        """The encoded key (or key prefix) of ``values``; TypeError naming the column for
        a wrong type, ValueError naming the index for a key over the size limit."""
        key = self._encode(values)
        if len(key) + TID_SUFFIX_BYTES > KEY_MAX_BYTES:
            raise ValueError(f"index {self.name!r}: a key of {len(key)} bytes (for "
                             f"{values!r:.80}) is over the limit of "
                             f"{KEY_MAX_BYTES - TID_SUFFIX_BYTES} bytes")
        return key

    # --- writes ---------------------------------------------------------------------------
    def insert(self, xid: int, key: bytes, tid: Tid) -> None:
        """Add the entry for the heap tuple at ``tid`` (``key`` from ``key_of_row``): the
        tree's one-C-call put of a key new to its leaf (``BTree.put_new``, an entry key
        being unique) where it applies, else its general insert (a split, a move right)."""
        entry = key + _TID.pack(*tid)
        tree = self.tree
        if len(entry) > KEY_MAX_BYTES or tree.put_new(entry, b"", xid, None) is None:
            tree.insert(entry, b"", xid)

    def build(self, xid: int, entries: list[tuple[bytes, Tid]]) -> None:
        """Add the entries of existing rows in one sorted batch (leaves filled in order)."""
        if entries:
            self.build_columns(xid, *zip(*entries, strict=True))

    def build_columns(self, xid: int, keys: Sequence[bytes], tids: Sequence[Tid]) -> None:
        """``build`` of the entries (keys[i], tids[i]): made and sorted column-wise and
        applied without a check per entry (``apply_trusted_columns``: the entry keys are
        distinct, their TIDs being, and bytes), unless one is over the tree's key limit:
        ``apply`` then refuses it."""
        if not keys:
            return
        keys = list(map(operator.add, keys, starmap(_TID.pack, tids)))
        tree = self.tree
        if max(map(len, keys)) > KEY_MAX_BYTES:
            tree.apply([VersionWrite(k, xid, b"") for k in keys])   # (raises naming it)
            return
        _order, keys, joined = sorted_joined(keys)   # (one C sort, the keys joined by it)
        n = len(keys)
        tree.apply_trusted_columns(keys, [b""] * n, xid, [0] * n, _no_lookup, joined)

    def vacuum(self, dead: set[Tid]) -> int:
        """Remove the entries pointing at ``dead`` heap tuples; how many went."""
        if not dead:
            return 0
        return self.tree.vacuum(DeadTids(dead), by_entry=True).entries_removed

    # --- reads ----------------------------------------------------------------------------
    def tids(self, start: bytes | None, stop: bytes | None, *,
             reverse: bool = False) -> Iterator[tuple[bytes, Tid]]:
        """(encoded key, tid) of the entries with ``start <= key < stop`` (bytes of
        encoded key prefixes; None: unbounded), in key order (then TID order)."""
        return map(split_entry_key, self.entry_keys(start, stop, reverse=reverse))

    def entry_keys(self, start: bytes | None, stop: bytes | None, *,
                   reverse: bool = False) -> Iterator[bytes]:
        """The whole keys (TID suffix included) of the entries of ``tids``, same order."""
        return chain.from_iterable(self.entry_key_batches(start, stop, reverse=reverse))

    def entry_key_batches(self, start: bytes | None, stop: bytes | None, *,
                          reverse: bool = False) -> Iterator[list[bytes]]:
        """``entry_keys`` a leaf (or a few) at a time, as non-empty lists. Forward, the
        first ``RANGE_WALK_LEAVES`` leaves are walked from the tree's cached internal
        pages (``walk_leaves``: a short range reads one leaf and no parent); a range that
        goes on past them continues through ``BTree.item_batches`` from the last key
        returned (its leaf read stream keeps a long scan's leaf reads in flight)."""
        tree = self.tree
        if not reverse:
            keys, done = walk_leaves(tree, start, stop, RANGE_WALK_LEAVES)
            if keys:
                yield keys
                start = keys[-1] + b"\x00"   # entry keys are unique: the next is above this
            if done:
                return
        yield from _item_key_batches(tree, start, stop, reverse)

    def matching(self, prefix: bytes) -> list[tuple[bytes, Tid]]:
        """The entries whose key starts with ``prefix``, in key order (one descent)."""
        return list(map(split_entry_key, self.matching_keys(prefix)))

    def matching_keys(self, prefix: bytes) -> list[bytes]:
        """The whole keys (TID suffix included) of ``matching``'s entries, same order:
        encoded keys are self-delimiting, so whole-key byte order is (key, TID) order."""
        return prefix_keys(self.tree, prefix)

    def point_tids(self, key: bytes) -> list[int] | None:
        """[block, offnum, block, offnum, ...] of the entries whose encoded key is
        exactly ``key`` (a whole key, as from ``encode`` of every column), in index order,
        when one leaf holds them all and they are at most ``POINT_ENTRIES_MAX``; None when
        ``matching_keys`` must walk the leaves instead (or an entry starting with ``key``
        is longer: ``key`` was a prefix). One descent by the cached internal pages and
        one C call on the leaf (``point_entries``): a pool hit in one descriptor-lock
        section (``read_hit``) without the share lock (``slk_ix_point_step_opt``: the
        leaf copied whole while no writer holds it, see ``storage/bufmgr.py`` invariant
        8; a leaf split exactly at the key sends the probe right, ``_probe_right``),
        else under it."""
        tree = self.tree
        bm = tree.bufmgr
        epoch = tree._begin_read()
        try:
            block = tree._leaf_for(key)
            if _lib is not None:
                out = getattr(_tls, "point_out", None)
                if out is None:
                    out = _point_arrays().point_out
                # one C call in one descriptor-lock section (read_hit), None on a miss
                n = bm.read_hit(tree.rel, tree._forkno, block, _point_probe, key, len(key),
                                POINT_ENTRIES_MAX, _tls.point_ents, out)
                if n is not None:
                    if n == _POINT_RIGHT:   # the leaf split exactly at the key: move right
                        n = _probe_right(tree, key, out)
                    got = _point_answer(n, out, len(key))
                    if got is not _UNDECIDED:
                        return got
                    if n > 1:
                        return _whole_key_tids(_ffi.unpack(out, 3 * n), len(key))
                    # else a writer held the leaf meanwhile, or a flawed page (-1: the
                    # reference raises naming it): the share lock decides
            buf = tree._read(block)   # pinned and share-locked
            try:
                page = bm.page(buf)
                if _lib is not None:   # point_entries' C call inlined for its usual answers
                    out = getattr(_tls, "point_out", None)
                    if out is None:
                        out = _point_arrays().point_out
                    n = _hot.slk_ix_point(_ffi.from_buffer(page), key, len(key),
                                          POINT_ENTRIES_MAX, _tls.point_ents, out)
                    got = _point_answer(n, out, len(key))
                    if got is not _UNDECIDED:
                        return got
                try:
                    got = point_entries(page, key, POINT_ENTRIES_MAX)
                except BTreePageError as e:
                    tree._special(page, block)   # an all-zero page says so
                    raise tree._corrupt(block, str(e)) from None
            finally:
                bm.unlock_shared(buf)   # tree._release inlined
                bm.unpin(buf)
        finally:
            tree._end_read(epoch)
        return None if got is None else _whole_key_tids(got, len(key))

    def point_tuple(self, key: bytes, heap: Heap):
        """A unique key's point read fused (``point_tids`` then ``heap_fetch.fetch_tuple``
        of its one entry, with fewer calls): (xmin, xmax, data copy) of the heap tuple
        the one entry of the whole encoded key ``key`` points at; None when no entry has
        that key or its slot holds no tuple; ``POINT_OTHER`` when the caller must take the
        general path (``point_tids``): more entries, ``key`` a prefix of an entry's key,
        the leaf not in the pool or a writer holding it, no C helper. Visibility and the
        key re-check are the caller's, on the tuple returned, as after ``fetch_tuple``.
        Both pages are read as ``point_tids`` and ``fetch_tuple`` read them (pool hits
        without the share lock: index.py invariant 4, heap_fetch.py invariant 4), each in
        one descriptor-lock section instead of a pin and an unpin (``read_hit``). A leaf
        that holds none of the key while its high key starts with it (split exactly at
        the key: ``slk_ix_point_step_opt`` says so) sends the probe to its right sibling,
        as a Lehman & Yao reader moves right, instead of to the general path."""
        tree = self.tree
        bm = tree.bufmgr
        if _lib is None or bm.seq is None:
            return POINT_OTHER
        arrays = getattr(_tls, "point_tuple", None)
        if arrays is None:
            arrays = _point_tuple_arrays()
        out, ents, data, meta = arrays
        # a registered reader for the leaf reads: BTree._begin_read / _end_read inlined,
        # as BTree.get_trusted inlines them (the same registration, two calls fewer)
        token = next(tree._reader_tokens)
        readers = tree._readers
        readers[token] = tree._epoch
        try:
            # each page read by one C call in one descriptor-lock section (read_hit: the
            # held lock stands in for the pin), None when it is not in the pool
            n = bm.read_hit(tree.rel, tree._forkno, tree._leaf_for_point(key), _point_probe,
                            key, len(key), POINT_ENTRIES_MAX, ents, out)
            if n is None:
                return POINT_OTHER
            if n == _POINT_RIGHT:
                n = _probe_right(tree, key, out)
        finally:
            del readers[token]
        if n != 1:
            return None if n == 0 else POINT_OTHER
        if out[0] != len(key):
            return POINT_OTHER
        block, offnum = out[1], out[2]
        n = heap.bufmgr.read_hit(heap.rel, heap.fork, block, _heap_fetch_opt, offnum, data,
                                 BLCKSZ, meta)   # (a Fork is an int: the same tag)
        if n is None or n == OPT_RETRY:
            # not in the pool (or past the end), a writer held the page meanwhile, or a
            # flawed slot: fetch_tuple reads it (pinned; share-locked when it must be)
            return fetch_tuple(heap, block, offnum)
        if n < 0:
            return None
        return meta[0], meta[1], _ffi.unpack(data, n)


def _probe_right(tree: BTree, key: bytes, out) -> int:
    """``point_tuple``'s probe moved right: ``slk_ix_point_step_opt`` on the right
    siblings, starting at ``out[0]``, while each holds none of ``key`` and its high key
    starts with it (at most ``POINT_MOVES_RIGHT_MAX`` leaves); its answer there, or -2
    (walk the leaves) when a sibling is not in the pool or the moves run out. The caller
    is a registered reader (``BTree._begin_read``): a leaf it reaches is not recycled."""
    bm = tree.bufmgr
    ents = _tls.point_ents
    for _ in range(POINT_MOVES_RIGHT_MAX):
        n = bm.read_hit(tree.rel, tree._forkno, out[0], _point_step, key, len(key),
                        POINT_ENTRIES_MAX, ents, out)
        if n is None:
            return -2
        if n != _POINT_RIGHT:
            return n
    return -2


# ``TableIndex.point_tuple``'s answer when the general path must decide.
POINT_OTHER = object()


_UNDECIDED = object()   # _point_answer: the count needs more than the usual answers


def _point_answer(n: int, out, klen: int):
    """``point_tids``' answer from a C point read (``slk_ix_point`` / its optimistic
    twin) of a ``klen``-byte key for its usual counts: one entry (its [block, offnum] when
    it is the whole key, else None), none ([]), or -2 (None: walk the leaves); else
    ``_UNDECIDED``."""
    if n == 1:   # a unique key's point read
        return [out[1], out[2]] if out[0] == klen else None
    if n == 0:
        return []
    if n == -2:
        return None
    return _UNDECIDED


def _whole_key_tids(got: list[int], n: int) -> list[int] | None:
    """``point_tids``' answer from ``point_entries``' (key length, block, offnum per
    entry): the TIDs, or None when some entry's key is longer than ``n`` bytes (the key
    asked for was a prefix of it)."""
    if any(k != n for k in got[0::3]):
        return None
    del got[0::3]
    return got


class HeapBatch(NamedTuple):
    """The heap side of a batch of index entries, one list item per entry, in index
    order: the entry's encoded key (TID suffix removed), its heap TID, and what the
    reader's snapshot finds there (``heap_fetch.NO_TUPLE``, ``INVISIBLE`` or ``VISIBLE``);
    the visible tuples' data is ``data[starts[i]:ends[i]]``."""

    keys: list[bytes]
    tids: list[tuple[int, int]]
    status: list[int]
    starts: list[int]
    ends: list[int]
    data: bytes


def prefix_keys(tree: BTree, prefix: bytes) -> list[bytes]:
    """The keys of every entry of ``tree`` that starts with ``prefix`` (any xmin; index
    entries never get an xmax), in tree order: a point read of an index.

    ``tree.with_prefix`` with the descent of ``tree.get`` (``walk_leaves`` over
    [prefix, prefix_end(prefix)) to the end)."""
    keys, _done = walk_leaves(tree, prefix, prefix_end(prefix))
    return keys


def point_entries_py(page, prefix: bytes, entries_max: int) -> list[int] | None:
    """Reference: the entries of a leaf whose key starts with ``prefix`` (any xmin, no
    xmax: ``walk_leaves``' look at a leaf), when the page holds all of them: per entry its
    key length without the TID suffix, the heap block and offnum of that suffix, flat in
    page order. None when it may not: a DELETED page or not a leaf, the entries going on
    (or moved) right of it, more than ``entries_max`` of them, one too short for a TID
    suffix, a prefix that is empty, all 0xFF or longer than a page. BTreePageError (from
    ``extract_leaf_py``) for a page it cannot read."""
    _prev, nxt, _level, pflags, _pad = _SPECIAL.unpack_from(page, BT_SPECIAL_AT)
    if pflags & BTP_DELETED or not pflags & BTP_LEAF:
        return None
    stop = prefix_end(prefix)
    if stop is None or len(prefix) > BLCKSZ:
        return None
    flags, flat = extract_leaf_py(page, prefix, stop, *_EVERY_ENTRY)
    if not flags & EXTRACT_DONE and nxt != P_NONE:
        return None
    if len(flat) > 4 * entries_max:
        return None
    out: list[int] = []
    for i in range(0, len(flat), 4):
        n = flat[i + 1] - flat[i] - TID_SUFFIX_BYTES
        if n < 0:
            return None
        out += (n, *_TID.unpack_from(page, flat[i + 1] - TID_SUFFIX_BYTES))
    return out


def point_right_py(page, prefix: bytes) -> int:
    """Reference of ``slk_ix_point_right``: the right-link of a live leaf (flags LEAF,
    not DELETED, with a right sibling) that holds no entry whose key starts with
    ``prefix`` and whose high key starts with it, so the entries starting with ``prefix``,
    if any, begin right of it; else ``P_NONE``. BTreePageError for a page it cannot
    read."""
    special = bt_special(page)
    if special.flags & BTP_DELETED or not special.flags & BTP_LEAF or special.next == P_NONE:
        return P_NONE
    if not unpack_pivot(bt_item(page, 1)).key.startswith(prefix):
        return P_NONE
    for offnum in range(2, bt_item_count(page) + 1):
        if unpack_entry(bt_item(page, offnum)).key.startswith(prefix):
            return P_NONE
    return special.next


def _point_tuple_arrays() -> tuple:
    """This thread's arrays of ``point_tuple`` (made on first use): ``point_entries``'
    output and scratch, and the heap tuple's data (char[]: ``ffi.unpack`` copies its
    first n bytes in one call) and (xmin, xmax, flags)."""
    tls = _point_arrays()
    tls.point_tuple = (tls.point_out, tls.point_ents, _ffi.new("char[]", BLCKSZ),
                       _ffi.new("uint64_t[]", 3))
    return tls.point_tuple


def _point_arrays():
    """This thread's scratch and output arrays of ``point_entries`` (made on first use)."""
    tls = _tls
    if getattr(tls, "point_out", None) is None:
        tls.point_ents = _ffi.new("uint32_t[]", 4 * ((BLCKSZ - HEADER_SIZE) // 4))
        tls.point_out = _ffi.new("uint32_t[]", 3 * POINT_ENTRIES_MAX)
    return tls


def point_entries(page, prefix: bytes, entries_max: int) -> list[int] | None:
    """``point_entries_py`` in one C call when the helper module is built (``entries_max``
    at most ``POINT_ENTRIES_MAX``)."""
    if not 0 <= entries_max <= POINT_ENTRIES_MAX:
        raise ValueError(f"entries_max {entries_max} is outside [0, {POINT_ENTRIES_MAX}]")
    if _lib is None:
        return point_entries_py(page, prefix, entries_max)
    tls = _tls
    out = getattr(tls, "point_out", None)
    if out is None:
        out = _point_arrays().point_out
    n = _hot.slk_ix_point(_ffi.from_buffer(page), prefix, len(prefix), entries_max,
                          tls.point_ents, out)
    if n == 1:
        return [out[0], out[1], out[2]]
    if n == -2:
        return None
    if n < 0:  # malformed: the reference raises naming what is wrong
        return point_entries_py(page, prefix, entries_max)
    return _ffi.unpack(out, 3 * n)


def _item_key_batches(tree: BTree, start: bytes | None, stop: bytes | None,
                      reverse: bool) -> Iterator[list[bytes]]:
    """``entry_key_batches`` through ``BTree.item_batches`` (its leaf read stream)."""
    for pairs in tree.item_batches(start, stop, snapshot=_EVERY_ENTRY, reverse=reverse,
                                   values=False):
        yield list(map(_first, pairs))


class _JoinedKeys:
    """This thread's output of a joined leaf walk (``walk_leaves(joined=True)``): the keys
    back to back in ``dst`` (``at`` bytes), their ends in ``ends`` (``n`` of them), with
    room for ``RANGE_WALK_LEAVES`` leaves; ``ents`` and ``flags`` are slk_bt_extract's
    output. Reused by the thread's next walk: read before the next one starts."""

    __slots__ = ("ents", "flags", "dst", "ends", "at", "n")

    def __init__(self) -> None:
        per_leaf = (BLCKSZ - HEADER_SIZE) // LINE_POINTER_SIZE   # entries a leaf can hold
        self.ents = _ffi.new("uint32_t[]", 4 * per_leaf)
        self.flags = _ffi.new("int *")
        self.dst = _ffi.new("uint8_t[]", RANGE_WALK_LEAVES * BLCKSZ)
        self.ends = _ffi.new("uint32_t[]", RANGE_WALK_LEAVES * per_leaf)
        self.at = self.n = 0


def _joined_keys() -> _JoinedKeys:
    """This thread's ``_JoinedKeys``, emptied (made on first use)."""
    jk = getattr(_tls, "joined_keys", None)
    if jk is None:
        jk = _tls.joined_keys = _JoinedKeys()
    jk.at = jk.n = 0
    return jk


def leaf_keys_py(page, flat: Sequence[int], at: int = 0) -> tuple[bytes, list[int]]:
    """Reference of ``slk_ix_leaf_keys``: the keys of ``extract_leaf``'s entries ``flat``
    (4 numbers each) of ``page`` joined, and their ends counted from ``at``. ValueError
    naming an entry whose offsets are not ordered inside a page."""
    keys = gather_leaf_py(page, flat, False)
    return b"".join(keys), list(accumulate(map(len, keys), initial=at))[1:]


def _leaf_keys_joined(page, start: bytes | None, stop: bytes | None,
                      jk: _JoinedKeys) -> int | None:
    """The entries of leaf ``page`` with ``start <= key < stop`` appended to ``jk`` in
    two C calls (slk_bt_extract, slk_ix_leaf_keys): extract's flags, or None when C
    refuses the page (``extract_cut`` then names the flaw)."""
    got = 0
    with _ffi.from_buffer(page) as cpage:
        n = _lib.slk_bt_extract(cpage, _ffi.NULL if start is None else start,
                                -1 if start is None else len(start),
                                _ffi.NULL if stop is None else stop,
                                -1 if stop is None else len(stop), _EVERY_ENTRY[0],
                                _EVERY_ENTRY[1], _ffi.NULL, 0, jk.ents, jk.flags)
        if n > 0:
            got = _lib.slk_ix_leaf_keys(cpage, jk.ents, n, jk.dst, jk.at, jk.ends + jk.n)
    if n < 0 or got < 0:
        return None
    if n > 0:
        jk.at = got
        jk.n += n
    return jk.flags[0]


def _split_keys(joined, size: int, ends, n: int) -> list[bytes]:
    """The ``n`` keys joined in ``joined`` (bytes, or a C array of ``size`` bytes) ending at
    the C array ``ends``, as bytes objects."""
    data = joined if type(joined) is bytes else _ffi.buffer(joined, size)[:]
    e = _ffi.unpack(ends, n)
    # (a comprehension of slices: ~1/3 fewer instructions a key than map over slice objects)
    return [data[s:t] for s, t in zip([0, *e[:-1]], e, strict=False)]  # (n = 0: none)


def _copy_leaf(pool, seq, buf: int, out) -> int:
    """``BufferManager.read_hit``'s read of a leaf: pool buffer ``buf`` copied to ``out``
    under its change counter (``slk_seq_copy_pages`` of one page): 1 when the copy is
    whole and consistent, 0 when a writer held the page (take the share lock)."""
    return _lib.slk_seq_copy_pages(pool, seq, buf + 1, [buf], 1, out)


class _LeafCopy(NamedTuple):
    c: object      # uint8_t[BLCKSZ]
    page: object   # the same bytes as a buffer (what the leaf readers take)


def _leaf_copy() -> _LeafCopy:
    """This thread's page-sized buffer for ``walk_leaves``' optimistic leaf copies (made
    on first use; every use copies what it needs out before the next)."""
    got = getattr(_tls, "leaf_copy", None)
    if got is None:
        c = _ffi.new("uint8_t[]", BLCKSZ)
        got = _tls.leaf_copy = _LeafCopy(c, _ffi.buffer(c))
    return got


def walk_leaves(tree: BTree, start: bytes | None, stop: bytes | None,
                leaves_max: int | None = None, joined: bool = False
                ) -> tuple[list[bytes] | _JoinedKeys, bool]:
    """(keys, done): the keys of the entries of ``tree`` with ``start <= key < stop``
    (None: unbounded) in tree order, from at most ``leaves_max`` leaves (None: all that
    hold the range); ``done`` says the range ends within them. With ``joined`` (the C
    helper built, ``leaves_max`` at most ``RANGE_WALK_LEAVES``) the keys come as this
    thread's ``_JoinedKeys`` (back to back, their ends in a C array: no bytes object per
    key), to be read before the thread's next walk.

    The first leaf comes from the tree's cached internal pages (``BTree._leaf_for``, as
    ``BTree.get`` descends: no pin above the leaf level); each leaf is read with one C
    call (``extract_cut``: the entries found and their keys copied out) from a copy of
    it taken under its change counter in one descriptor-lock section (a pool hit no
    writer held meanwhile: ``BufferManager.read_hit``, invariant 8), else under its
    share lock; right siblings are read only while the range goes on (a split since the descent,
    an unlinked leaf, or the range continuing there). Registered as a reader for the
    duration, so no leaf it reaches is recycled meanwhile (the tree's reader epochs)."""
    bm = tree.bufmgr
    out: list[bytes] = []
    if joined and (_lib is None or leaves_max is None or leaves_max > RANGE_WALK_LEAVES):
        raise ValueError(f"a joined leaf walk needs the C helper and at most "
                         f"{RANGE_WALK_LEAVES} leaves, not {leaves_max}")
    jk = _joined_keys() if joined else None
    copy = _leaf_copy() if _lib is not None and bm.seq is not None else None
    epoch = tree._begin_read()
    try:
        block = tree._leaf_for(start or b"")
        visited = 0
        while True:
            # A pool hit is copied whole under its change counter in one descriptor-lock
            # section (BufferManager.read_hit: no pin, no content lock; a copy one
            # share-locked read could have taken); a miss or a writer on it: pinned and
            # share-locked (buf >= 0).
            buf = -1
            if copy is not None and bm.read_hit(tree.rel, tree._forkno, block,
                                                _copy_leaf, copy.c) == 1:
                page = copy.page
            else:
                buf = tree._read(block)   # pinned and share-locked
            try:
                if buf >= 0:
                    page = bm.page(buf)
                # The special space read raw: extract_cut verifies the page (C, or the
                # reference raising); tree._special only names what is wrong.
                _prev, nxt, _level, pflags, _pad = _SPECIAL.unpack_from(page, BT_SPECIAL_AT)
                if pflags & BTP_DELETED or not pflags & BTP_LEAF:
                    special = tree._special(page, block)
                    if not special.flags & BTP_DELETED:
                        raise tree._corrupt(block, f"expected a leaf, found flags "
                                                   f"{special.flags:#x}")
                    done = False   # unlinked since: its keys are to its right
                else:
                    flags = None if jk is None else _leaf_keys_joined(page, start, stop, jk)
                    if flags is None:
                        try:   # the keys cut out in C (one bytes object each, no slices)
                            flags, _flat, cut = extract_cut(page, start, stop,
                                                            *_EVERY_ENTRY, False)
                        except BTreePageError as e:
                            tree._special(page, block)   # an all-zero page says so
                            raise tree._corrupt(block, str(e)) from None
                        if jk is not None:
                            raise AssertionError("slk_ix_leaf_keys refused a leaf the "
                                                 "reference accepts")
                        out += cut
                    done = bool(flags & EXTRACT_DONE)
            finally:
                if buf >= 0:
                    tree._release(buf)
            visited += 1
            if done or nxt == P_NONE:
                return (out if jk is None else jk), True
            if leaves_max is not None and visited >= leaves_max:
                return (out if jk is None else jk), False
            block = nxt
    finally:
        tree._end_read(epoch)


def fetch_batched(heap: Heap, key_batches: Iterable[list[bytes]],
                  snapshot: XidSnapshot) -> Iterator[HeapBatch]:
    """The heap tuples of index entries (lists of whole entry keys, TID suffix included)
    as ``snapshot`` sees them, in index order, a batch per list (split at
    ``INDEX_SCAN_BATCH_ENTRIES``): the heap pages of a batch are pinned and share-locked
    once each however many of the batch's TIDs they hold (the cached ones in one
    buffer-manager call, the others through a read stream, so their reads are in flight
    together), and every tuple is judged and the visible ones' data gathered from them in
    one C call (``heap_fetch.gather_heap``). TIDs past the end of the heap find no
    tuple."""
    nblocks = heap.nblocks()
    for whole in key_batches:
        for first in range(0, len(whole), INDEX_SCAN_BATCH_ENTRIES):
            batch = whole[first:first + INDEX_SCAN_BATCH_ENTRIES] \
                if len(whole) > INDEX_SCAN_BATCH_ENTRIES else whole
            yield _fetch_batch(heap, batch, nblocks, snapshot)
            nblocks = heap.nblocks()


def fetch_rows(heap: Heap, codec: RowCodec, index: TableIndex,
               key_batches: Iterable[list[bytes]], snapshot: XidSnapshot
               ) -> Iterator[list[tuple]]:
    """The rows of ``fetch_batched``'s visible tuples (a range scan's rows, without
    their TIDs), a list per batch, each row re-checked against its entry's key (a slot
    reused since the entry was read holds another key: skipped), decoded by ``codec``.
    With the C helper a batch is two C calls and no interpreted step per entry or page:
    its TIDs numbered into C arrays (``slk_ix_batch_tids``, only the distinct blocks
    come back as a list) and, when every page is in the pool, the tuples judged,
    gathered, re-checked against their entries' keys (the row's key columns encoded in C
    as keycodec encodes them) and laid out as columns in one call under the descriptor
    lock (``heap_fetch.gather_heap_rows``); a page not in the pool, or a writer on one,
    takes ``gather_heap``'s pins, read stream and share locks for that batch, and the
    re-check in Python (``keys_of_rows``)."""
    if _lib is None or not C_RANGE_ROWS:
        for b in fetch_batched(heap, key_batches, snapshot):
            got = rows_of(Gathered(b.status, b.starts, b.ends, b.data), codec.decode_run)
            yield recheck(got, b.keys, index.keys_of_rows).rows
        return
    nblocks = heap.nblocks()
    for whole in key_batches:
        for first in range(0, len(whole), INDEX_SCAN_BATCH_ENTRIES):
            ks = whole[first:first + INDEX_SCAN_BATCH_ENTRIES] \
                if len(whole) > INDEX_SCAN_BATCH_ENTRIES else whole
            rows = _fetch_rows_batch(heap, codec, index, ks, nblocks, snapshot)
            if rows:
                yield rows
            nblocks = heap.nblocks()


def range_rows(heap: Heap, codec: RowCodec, index: TableIndex, start: bytes | None,
               stop: bytes | None, snapshot: XidSnapshot, reverse: bool = False
               ) -> Iterator[list[tuple]]:
    """``fetch_rows`` of ``index.entry_key_batches(start, stop, reverse=reverse)``: a
    range scan's rows, a non-empty list per batch. With the C helper a forward range's
    first walk (``walk_leaves``, up to ``RANGE_WALK_LEAVES`` leaves) goes to
    ``_fetch_rows_batch`` with no generator between them, so the usual short range is one
    walk and one batch; the rest of a longer range continues as ``entry_key_batches``
    does (``BTree.item_batches`` from the key after the last one walked)."""
    if reverse or _lib is None or not C_RANGE_ROWS:
        yield from fetch_rows(heap, codec, index,
                              index.entry_key_batches(start, stop, reverse=reverse), snapshot)
        return
    nblocks = heap.nblocks()
    jk, done = walk_leaves(index.tree, start, stop, RANGE_WALK_LEAVES, joined=True)
    n = jk.n
    if n:
        # read out of the thread's arrays before any yield (another walk reuses them)
        if not done:
            last = _ffi.buffer(jk.dst, jk.at)[jk.ends[n - 2] if n > 1 else 0:]
        if n <= INDEX_SCAN_BATCH_ENTRIES:
            rows = _fetch_rows_joined(heap, codec, index, jk.dst, jk.at, jk.ends, n, nblocks,
                                      snapshot)
            if rows:
                yield rows
        else:
            keys = _split_keys(jk.dst, jk.at, jk.ends, n)
            yield from fetch_rows(heap, codec, index, (keys,), snapshot)
        if not done:
            start = last + b"\x00"   # entry keys are unique: the next is above this
    if not done:
        yield from fetch_rows(heap, codec, index,
                              _item_key_batches(index.tree, start, stop, False), snapshot)


def _fetch_rows_batch(heap: Heap, codec: RowCodec, index: TableIndex, ks: list[bytes],
                      nblocks: int, snapshot: XidSnapshot) -> list[tuple]:
    """``fetch_rows``' work for one batch of entry keys ``ks`` (non-empty, at most
    ``BATCH_TIDS_MAX``) with the C helper."""
    # the keys' ends as a C array without a conversion per element (an array.array
    # filled in C-level iteration, exported)
    ends = _ffi.from_buffer("uint32_t[]", array("I", accumulate(map(len, ks))))
    joined = b"".join(ks)
    return _fetch_rows_joined(heap, codec, index, joined, len(joined), ends, len(ks),
                              nblocks, snapshot, ks)


def _fetch_rows_joined(heap: Heap, codec: RowCodec, index: TableIndex, joined, size: int,
                       ends, n: int, nblocks: int, snapshot: XidSnapshot,
                       ks: list[bytes] | None = None) -> list[tuple]:
    """``_fetch_rows_batch`` of ``n`` entry keys given joined (``joined``: bytes or a C
    array, ``size`` bytes; ``ends``: a C ``uint32_t`` array), as a joined leaf walk
    hands them over; ``ks`` the same keys as bytes objects when the caller has them (the
    fallbacks make them otherwise)."""
    tls = _tls
    if getattr(tls, "bt_out", None) is None:
        _tids_arrays()
    nd = tls.bt_nd
    past = _lib.slk_ix_batch_tids(joined, size, ends, n, nblocks, tls.bt_out,
                                  tls.bt_distinct, nd)
    if past > 0 and heap.nblocks() != nblocks:   # grown since: look again before dropping
        nblocks = heap.nblocks()
        past = _lib.slk_ix_batch_tids(joined, size, ends, n, nblocks, tls.bt_out,
                                      tls.bt_distinct, nd)
    if past < 0:   # a key too short for a TID: the reference raises naming its length
        batch_tids_py(_split_keys(joined, size, ends, n) if ks is None else ks, nblocks)
        raise AssertionError("slk_ix_batch_tids refused keys the reference accepts")
    if past == n:
        return []
    distinct = memoryview(_ffi.buffer(tls.bt_distinct, 4 * nd[0])).cast("I").tolist()
    out = tls.bt_out
    kc = index._range_key_check
    if kc is None or kc.codec is not codec:
        kc = index._range_key_check = key_check(codec, index.positions)
    got = gather_heap_rows(heap, distinct, out + 3 * n, out + 4 * n, n, snapshot, codec,
                           (joined, ends, kc))
    if got.checked:   # re-checked in C
        return got.rows
    if ks is None:
        ks = _split_keys(joined, size, ends, n)
    return recheck(got, list(map(bytes.__getitem__, ks, repeat(_KEY_PART))),
                   index.keys_of_rows).rows


# An entry key less its TID suffix, as a constant slice (C-level map over a batch's keys).
_KEY_PART = slice(0, -TID_SUFFIX_BYTES)


class BatchTids(NamedTuple):
    """The heap TIDs of a batch of whole index entry keys, as arrays (``batch_tids``): per
    key its length without the TID suffix (``cut``), the stored ``block`` and ``offnum``,
    and the heap request: ``page_of`` (an index into ``distinct``, the distinct blocks
    below ``nblocks`` in order of first appearance) and ``req_offnums`` (the offnum, or
    page 0 and offnum 0, which is never a tuple, for a block at or past ``nblocks``);
    ``past`` counts the keys whose block is at or past ``nblocks``."""

    cut: list[int]
    block: list[int]
    offnum: list[int]
    page_of: list[int]
    req_offnums: list[int]
    distinct: list[int]
    past: int


def batch_tids_py(ks: Sequence[bytes], nblocks: int) -> BatchTids:
    """Reference of ``batch_tids``: the TID suffixes of the whole entry keys ``ks`` split
    off and their blocks numbered for ``gather_heap``. ValueError for a key shorter than
    the suffix."""
    cut, block, offnum, page_of, req, distinct = [], [], [], [], [], []
    slot: dict[int, int] = {}
    past = 0
    for k in ks:
        n = len(k) - TID_SUFFIX_BYTES
        if n < 0:
            raise ValueError(f"an index entry key of {len(k)} bytes has no heap TID")
        b, o = _TID.unpack_from(k, n)
        cut.append(n)
        block.append(b)
        offnum.append(o)
        if b >= nblocks:
            page_of.append(0)
            req.append(0)
            past += 1
            continue
        if b not in slot:
            slot[b] = len(distinct)
            distinct.append(b)
        page_of.append(slot[b])
        req.append(o)
    return BatchTids(cut, block, offnum, page_of, req, distinct, past)


def _tids_arrays():
    """This thread's arrays of ``batch_tids``' C call (made on first use)."""
    tls = _tls
    n = BATCH_TIDS_MAX
    tls.bt_out = _ffi.new("uint32_t[]", 5 * n)
    tls.bt_distinct = _ffi.new("uint32_t[]", n)
    tls.bt_nd = _ffi.new("int *")
    tls.bt_ends = _ffi.new("uint32_t[]", n)
    return tls


def batch_tids(ks: Sequence[bytes], nblocks: int) -> BatchTids:
    """``batch_tids_py`` in one C call over the joined keys (``slk_ix_batch_tids``) when
    the helper module is built and ``ks`` holds from ``BATCH_TIDS_C_MIN`` to
    ``BATCH_TIDS_MAX`` keys, so a batch of index entries becomes arrays without an
    interpreted step per entry (below that, the reference costs less than the C call's
    fixed conversions)."""
    n = len(ks)
    if _lib is None or not BATCH_TIDS_C_MIN <= n <= BATCH_TIDS_MAX or nblocks >= 1 << 32:
        return batch_tids_py(ks, nblocks)
    tls = _tls
    if getattr(tls, "bt_out", None) is None:
        _tids_arrays()
    ends = tls.bt_ends
    ends[0:n] = list(accumulate(map(len, ks)))
    joined = b"".join(ks)
    nd = tls.bt_nd
    past = _lib.slk_ix_batch_tids(joined, len(joined), ends, n, max(nblocks, 0), tls.bt_out,
                                  tls.bt_distinct, nd)
    if past < 0:   # a key too short for a TID: the reference raises naming its length
        return batch_tids_py(ks, nblocks)
    out = memoryview(_ffi.buffer(tls.bt_out, 20 * n)).cast("I").tolist()
    return BatchTids(out[:n], out[n:2 * n], out[2 * n:3 * n], out[3 * n:4 * n], out[4 * n:],
                     memoryview(_ffi.buffer(tls.bt_distinct, 4 * nd[0])).cast("I").tolist(),
                     past)


def _fetch_batch(heap: Heap, ks: list[bytes], nblocks: int,
                 snapshot: XidSnapshot) -> HeapBatch:
    """``fetch_batched``'s work for one batch of entry keys ``ks`` (non-empty): their
    TIDs split off and numbered in one call (``batch_tids``), the heap side in one more
    (``gather_heap``)."""
    t = batch_tids(ks, nblocks)
    if t.past:
        grown = heap.nblocks()  # grown since: look again before dropping any
        if grown != nblocks:
            t = batch_tids(ks, grown)
    keys = [k[:c] for k, c in zip(ks, t.cut, strict=True)]
    tids = list(zip(t.block, t.offnum, strict=True))
    if not t.distinct:
        n = len(ks)
        return HeapBatch(keys, tids, [NO_TUPLE] * n, [0] * n, [0] * n, b"")
    got = gather_heap(heap, t.distinct, t.page_of, t.req_offnums, snapshot)
    return HeapBatch(keys, tids, *got)


_first = itemgetter(0)
# A B+tree page's special space (btree_page): prev, next, level, flags, pad.
_SPECIAL = struct.Struct("<IIIHH")
BT_SPECIAL_AT = BLCKSZ - _SPECIAL.size
_second = itemgetter(1)


def prune_with_indexes(heap: Heap, indexes: Sequence[TableIndex],
                       is_dead: Callable[[HeapTuple], bool] | None = None, *,
                       dead_of: DeadOf | None = None) -> int:
    """Vacuum a table: the tuples ``is_dead`` (or the run judge ``dead_of``, see
    ``Heap.prune``) condemns lose their index entries first, then their heap slots (only
    those, and only while their headers are unchanged; see the module docstring): one
    pass over the heap a run of pages at a time, then only the pages holding them. Tuples
    pruned."""
    if not indexes:
        return heap.prune(is_dead, dead_of=dead_of)
    dead = heap.dead_tuples(is_dead, dead_of=dead_of)
    if not dead:
        return 0
    tids = set(dead)
    for index in indexes:
        index.vacuum(tids)
    return heap.prune_tids(dead)


@dataclass(frozen=True)
class IndexCheckResult:
    index: str
    entries: int
    tuples: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


PROBLEMS_REPORTED_MAX = 20  # per index: enough to see the pattern, bounded output


def check_index(index: TableIndex, tuples: dict[Tid, tuple],
                is_visible: Callable[[Tid], bool]) -> IndexCheckResult:
    """Verify invariant 1 of ``index`` against ``tuples`` (tid -> row of every tuple in
    the heap): every entry points at a tuple whose key is the entry's, and every tuple
    ``is_visible`` says a reader can see has an entry."""
    return check_entries(index, index.tids(None, None), tuples, is_visible)


def check_entries(index: TableIndex, entries: Iterable[tuple[bytes, Tid]],
                  tuples: dict[Tid, tuple], is_visible: Callable[[Tid], bool]
                  ) -> IndexCheckResult:
    """``check_index`` over ``entries`` read some other way (``slonik check`` reads the
    leaf pages from the files)."""
    problems: list[str] = []
    seen: set[Tid] = set()
    n = 0
    for key, tid in entries:
        n += 1
        row = tuples.get(tid)
        if row is None:
            problems.append(f"index {index.name!r}: entry {key!r:.60} points at {tuple(tid)}, "
                            f"where there is no heap tuple")
        elif index.key_of_row(row) != key:
            problems.append(f"index {index.name!r}: entry {key!r:.60} points at "
                            f"{tuple(tid)}, whose row has another key")
        elif tid in seen:
            problems.append(f"index {index.name!r}: two entries point at {tuple(tid)}")
        seen.add(tid)
    for tid in tuples:
        if tid not in seen and is_visible(tid):
            problems.append(f"index {index.name!r}: the visible heap tuple at {tuple(tid)} "
                            f"has no entry")
    return IndexCheckResult(index.name, n, len(tuples), tuple(problems[:PROBLEMS_REPORTED_MAX]))
