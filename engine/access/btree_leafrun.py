"""A leaf's run of version writes as the actions of one INSERT record. Pure.

``BTree.apply`` sorts a batch of version writes by key and writes every run of them that
lands on one leaf as one record: a set-xmax per old version replaced, then an insert per
new version (``btree_wal``'s A_SET_XMAX and A_INSERT, block index 0 or the state's
``index``: a new leaf of a bottom-up append record), in key order. This
module computes that record's payload from the locked leaf and the batch, for as many
writes of the run as fit, in one C call (``slk_bt_leaf_run``) instead of an interpreted
step per write; ``leaf_run_py`` is its reference (the C module may be absent) and
``tests/storage/test_btree_leafrun.py`` compares the two.

The batch (``LeafBatch``) is built once per ``apply``: keys and payloads joined into one
byte string each with their offsets, the kind of each write (no new version, inline
value, overflow reference), its xid and its old version's xmin (0 none, ``OLD_LOOKUP``:
the key's newest committed version, judged by the caller's ``committed`` on this leaf).
The C call resolves an OLD_LOOKUP write whose key has no entry on the leaf (a new key:
nothing to supersede) itself; only a key with versions there takes the reference, whose
``committed`` judges their xmins.

Invariants:
1. ``leaf_run`` and ``leaf_run_py`` give the same count, stop reason, payload, room left
   and resolved old versions for every page and batch (the C call hands an OLD_LOOKUP
   write whose key has entries on the leaf, a full output buffer and a page it cannot
   read to the reference, one write).
2. A write is done whole or not at all: a write that stops the run leaves no action.
3. The payload applied to the page (``btree_wal.apply_payload_actions``) and replayed by
   redo gives the same bytes: it is the record's payload itself.
"""

from __future__ import annotations

import itertools
import struct
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from slonik.engine.access.btree_page import (
    BTP_DELETED,
    BTP_LEAF,
    ENTRY_OVERFLOW,
    P_NONE,
    XMIN_MAX,
    BTreePageError,
    bt_item,
    bt_item_count,
    bt_special,
    entry_key,
    item_cost,
    pack_entry,
    search_page,
    unpack_entry,
    unpack_pivot,
)
from slonik.engine.access.btree_wal import A_INSERT, A_SET_XMAX, apply_payload_actions
from slonik.storage.hotlib import hot_for
from slonik.storage.page import BLCKSZ

try:  # the optional C helpers (storage/_pagecheck_build.py, "leaf run apply" block)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_bt_leaf_run"):  # built before this helper existed
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None
_hot = hot_for(_lib)   # its page-sized helpers, the GIL kept (storage/hotlib.py)
C_LEAF_RUN = _lib is not None
# The "autocommit put" block (slk_bt_put_new); False in an older build.
C_PUT_NEW = _lib is not None and hasattr(_lib, "slk_bt_put_new")

__all__ = ["OLD_LOOKUP", "LOOKUP_U64", "KIND_NONE", "KIND_INLINE", "KIND_OVERFLOW", "LeafBatch",
           "LeafRunState", "LeafRunner", "join_keys", "make_batch", "single_batch", "new_runner", "leaf_run", "leaf_run_py", "C_LEAF_RUN",
           "STOP_END", "STOP_HIGH", "STOP_NO_OLD", "STOP_EXISTS", "STOP_NO_ROOM",
           "put_new", "put_new_py", "put_new_c", "PutScratch", "C_PUT_NEW", "PUT_NEW_ACTION_MAX_BYTES"]

# VersionWrite.old_xmin meaning "the key's newest version whose xmin is committed, unless
# its xmax is committed too (then none)", found on the leaf the write lands on.
OLD_LOOKUP = -1
LOOKUP_U64 = XMIN_MAX   # OLD_LOOKUP in a batch's u64 column (never a valid xid)

KIND_NONE = 0       # a delete: no new version
KIND_INLINE = 1     # the payload is the value
KIND_OVERFLOW = 2   # the payload is an overflow reference (entry flag ENTRY_OVERFLOW)

# Why a run stopped (slk_bt_leaf_run's LR_* codes).
STOP_END = 0        # every write of the batch done
STOP_HIGH = 1       # the next key is >= the leaf's high key
STOP_NO_OLD = 2     # the next write's old version is not on this leaf
STOP_EXISTS = 3     # the next write's new version is on the leaf already
STOP_NO_ROOM = 4    # the next write's new entry does not fit
_STOP_LOOKUP = 5    # C only: an OLD_LOOKUP write of a key on the leaf, for the reference
_STOP_FULL = 6      # C only: an output buffer is full, the reference goes on

_ACTION = struct.Struct("<BBI")     # btree_wal's action header: block index, code, length
_SET_XMAX = struct.Struct("<HQ")
_U16 = struct.Struct("<H")
_XMAX_ACTION_BYTES = _ACTION.size + _SET_XMAX.size   # 16
# Output room of one C call, bytes: every set-xmax names a distinct item of the page (at
# most ~2,000 line pointers) and the inserts fit the page's free space; a call that would
# pass these hands the write to the reference (_STOP_FULL).
_XMAX_OUT_BYTES = 40 * 1024
_INSERT_OUT_BYTES = 24 * 1024


class LeafBatch(NamedTuple):
    """A sorted batch of writes as data (``make_batch``)."""

    keys: list[bytes]
    payloads: list[bytes]       # b"" for KIND_NONE
    kinds: bytes                # KIND_* per write
    xids: array                 # 'Q'
    olds: array                 # 'Q': 0, an xmin, or LOOKUP_U64 for OLD_LOOKUP
    key_blob: bytes
    key_at: array               # 'Q', len(keys) + 1 offsets into key_blob
    payload_blob: bytes
    payload_at: array           # 'Q'


def join_keys(keys: Sequence[bytes]) -> tuple[bytes, array]:
    """``keys`` joined into one byte string and the 'Q' array of their len(keys) + 1
    offsets into it (C-level iteration only)."""
    return b"".join(keys), array("Q", itertools.accumulate(map(len, keys), initial=0))


def sorted_joined_py(keys: Sequence[bytes]) -> tuple[list[int], list[bytes],
                                                    tuple[bytes, array]]:
    """Reference: (order, sorted keys, their ``join_keys``) where sorted keys[i] is
    keys[order[i]], in bytes order (ties keep their order)."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    skeys = list(map(keys.__getitem__, order))
    return order, skeys, join_keys(skeys)


def sorted_joined(keys: Sequence[bytes]) -> tuple[list[int], list[bytes],
                                                 tuple[bytes, array]]:
    """``sorted_joined_py``'s answer with the sort and the sorted join in one C call
    (``slk_kv_sort``: a merge sort of (8-byte prefix, index) pairs over the keys joined
    once), for a commit's
    write set: no bytes comparison through the interpreter's generic compare and no
    dict lookup per key afterwards (its values are taken by ``order``)."""
    n = len(keys)
    if _lib is None or not hasattr(_lib, "slk_kv_sort") or n < 2 or n >= 1 << 32:
        return sorted_joined_py(keys)
    blob, at = join_keys(keys)
    perm = array("I", bytes(4 * n))
    out_blob = bytearray(len(blob))
    out_at = array("Q", bytes(8 * (n + 1)))
    _lib.slk_kv_sort(blob, _ffi.from_buffer("uint64_t[]", at), n,
                     _ffi.from_buffer("uint32_t[]", perm), _ffi.new("uint8_t[]", 32 * n),
                     _ffi.from_buffer(out_blob), _ffi.from_buffer("uint64_t[]", out_at))
    order = perm.tolist()
    return order, list(map(keys.__getitem__, order)), (bytes(out_blob), out_at)


def make_batch(keys: Sequence[bytes], payloads: Sequence[bytes], kinds: bytes,
               xids: Iterable[int], olds: Iterable[int],
               joined: tuple[bytes, array] | None = None) -> LeafBatch:
    """The batch of sorted, distinct ``keys`` with their payloads, kinds, xids and old
    xmins (one per key each), joined once (C-level iteration only); ``joined``: the
    caller's ``join_keys(keys)`` made already (a commit's validation makes it). ValueError
    when the columns differ in length."""
    keys = list(keys)
    payloads = list(payloads)
    xids = array("Q", xids)
    olds = list(olds)
    try:  # OLD_LOOKUP (-1) as a u64 is LOOKUP_U64: the same bytes
        olds_u64 = array("Q", array("q", olds).tobytes())
    except OverflowError:  # an xmin of 2**63 or more
        olds_u64 = array("Q", [LOOKUP_U64 if o == OLD_LOOKUP else o for o in olds])
    n = len(keys)
    if not (len(payloads) == len(kinds) == len(xids) == len(olds) == n):
        raise ValueError(f"batch columns of different lengths: keys {n}, payloads "
                         f"{len(payloads)}, kinds {len(kinds)}, xids {len(xids)}, "
                         f"olds {len(olds)}")
    key_blob, key_at = join_keys(keys) if joined is None else joined
    if len(key_at) != n + 1:
        raise ValueError(f"joined keys with {len(key_at) - 1} offsets for {n} keys")
    return LeafBatch(keys, payloads, bytes(kinds), xids, olds_u64, key_blob, key_at,
                     b"".join(payloads), array("Q", itertools.accumulate(map(len, payloads),
                                                                         initial=0)))


def single_batch(key: bytes, payload: bytes, kind: int, xid: int, old: int) -> LeafBatch:
    """``make_batch`` of one write (an autocommit put), without its joins and sums."""
    return LeafBatch([key], [payload], bytes((kind,)), array("Q", (xid,)),
                     array("Q", (LOOKUP_U64 if old == OLD_LOOKUP else old,)), key,
                     array("Q", (0, len(key))), payload, array("Q", (0, len(payload))))


class LeafRunState:
    """One leaf's run being built: bytes free on the page, inserts so far, the set-xmax
    and insert actions (payload bytes), and the old xmin each OLD_LOOKUP write resolved
    to (by batch index; a write absent from ``resolved`` found no version to replace)."""

    __slots__ = ("room", "inserted", "xmax_actions", "insert_actions", "resolved", "index")

    def __init__(self, room: int, index: int = 0) -> None:
        self.room = room
        self.index = index  # the block index the actions name (the record's block list)
        self.inserted = 0
        self.xmax_actions = bytearray()
        self.insert_actions = bytearray()
        self.resolved: dict[int, int] = {}

    def payload(self) -> bytes:
        """The record's payload: the set-xmaxes first, then the inserts."""
        return bytes(self.xmax_actions + self.insert_actions)

    def nactions(self) -> int:
        return len(self.xmax_actions) // _XMAX_ACTION_BYTES + self.inserted


def _step_py(page, count: int, high: bytes | None, batch: LeafBatch, j: int,
             st: LeafRunState, committed: Callable[[int], bool] | None) -> int:
    """Write ``j`` onto the run (STOP_END) or why not (nothing added)."""
    key = batch.keys[j]
    if high is not None and key >= high:
        return STOP_HIGH
    xid = batch.xids[j]
    old = batch.olds[j]
    mark = len(st.xmax_actions)
    if old == LOOKUP_U64:  # the newest committed version, all on this page
        if committed is None:
            raise ValueError("old_xmin=OLD_LOOKUP needs the committed() test")
        old = 0
        off = search_page(page, key, XMIN_MAX, False)
        while off <= count:
            e = unpack_entry(bt_item(page, off))
            if e.key != key:
                break
            if committed(e.xmin):
                if not (e.xmax and committed(e.xmax)):
                    old = e.xmin
                break
            off += 1
        if old:
            st.xmax_actions += _ACTION.pack(st.index, A_SET_XMAX, _SET_XMAX.size) + \
                _SET_XMAX.pack(off, xid)
        resolved = old
    elif old:
        off = search_page(page, key, old, False)
        if off > count or entry_key(bt_item(page, off)) != (key, old):
            return STOP_NO_OLD
        st.xmax_actions += _ACTION.pack(st.index, A_SET_XMAX, _SET_XMAX.size) + \
            _SET_XMAX.pack(off, xid)
        resolved = None
    else:
        resolved = None
    kind = batch.kinds[j]
    if kind != KIND_NONE:
        off = search_page(page, key, xid, False)
        if off <= count and entry_key(bt_item(page, off)) == (key, xid):
            del st.xmax_actions[mark:]
            return STOP_EXISTS
        item = pack_entry(key, xid, 0, ENTRY_OVERFLOW if kind == KIND_OVERFLOW else 0,
                          batch.payloads[j])
        cost = item_cost(len(item))
        if cost > st.room:
            del st.xmax_actions[mark:]
            return STOP_NO_ROOM
        st.room -= cost
        st.insert_actions += _ACTION.pack(st.index, A_INSERT, _U16.size + len(item)) + \
            _U16.pack(off + st.inserted) + item
        st.inserted += 1
    if resolved:
        st.resolved[j] = resolved
    return STOP_END


def leaf_run_py(page, high: bytes | None, batch: LeafBatch, start: int, st: LeafRunState,
                committed: Callable[[int], bool] | None, limit: int | None = None
                ) -> tuple[int, int]:
    """(writes done from ``start``, STOP_* reason) for the run on ``page`` (a leaf whose
    high key is ``high``, None when rightmost), its actions added to ``st``; at most
    ``limit`` writes. Raises BTreePageError for a damaged page."""
    count = bt_item_count(page)
    n = len(batch.keys) if limit is None else min(len(batch.keys), start + limit)
    j = start
    while j < n:
        stop = _step_py(page, count, high, batch, j, st, committed)
        if stop != STOP_END:
            return j - start, stop
        j += 1
    return j - start, STOP_END


class LeafRunner:
    """One batch's C side: the batch's arrays as cdata (made once) and the output arrays
    of the C call (a batch is applied by one thread, under its tree's write lock)."""

    __slots__ = ("args", "state", "xout", "iout")

    def __init__(self, batch: LeafBatch) -> None:
        self.args = (batch.key_blob, _ffi.from_buffer("uint64_t[]", batch.key_at),
                     batch.payload_blob, _ffi.from_buffer("uint64_t[]", batch.payload_at),
                     batch.kinds, _ffi.from_buffer("uint64_t[]", batch.xids),
                     _ffi.from_buffer("uint64_t[]", batch.olds))
        self.state = _ffi.new("int64_t[6]")  # room, inserted, lengths, stop, block index
        self.xout = _ffi.new("uint8_t[]", _XMAX_OUT_BYTES)
        self.iout = _ffi.new("uint8_t[]", _INSERT_OUT_BYTES)


def new_runner(batch: LeafBatch) -> LeafRunner | None:
    """The C side of ``leaf_run`` for ``batch`` (None without the C module)."""
    return None if _lib is None else LeafRunner(batch)


def leaf_run(page, high: bytes | None, batch: LeafBatch, start: int, st: LeafRunState,
             committed: Callable[[int], bool] | None, runner: LeafRunner | None
             ) -> tuple[int, int]:
    """``leaf_run_py``'s answer (invariant 1), the writes with known old versions in one
    C call per stretch; ``runner``: ``new_runner(batch)`` (None: the reference)."""
    if runner is None:
        return leaf_run_py(page, high, batch, start, st, committed)
    n = len(batch.keys)
    state = runner.state
    args = runner.args
    hlen = -1 if high is None else len(high)
    j = start
    while True:
        state[0] = st.room
        state[1] = st.inserted
        state[5] = st.index
        got = _hot.slk_bt_leaf_run(
            _ffi.from_buffer(page), _ffi.NULL if high is None else high, hlen, *args,
            j, n, state, runner.xout, _XMAX_OUT_BYTES, runner.iout, _INSERT_OUT_BYTES)
        if got < 0:  # a page C cannot read safely: the reference decides (or raises)
            done, stop = leaf_run_py(page, high, batch, j, st, committed)
            return j + done - start, stop
        st.room = state[0]
        st.inserted = state[1]
        if state[2]:
            st.xmax_actions += _ffi.buffer(runner.xout, state[2])
        if state[3]:
            st.insert_actions += _ffi.buffer(runner.iout, state[3])
        j += got
        stop = state[4]
        if stop != _STOP_LOOKUP and stop != _STOP_FULL:
            return j - start, stop
        done, stop = leaf_run_py(page, high, batch, j, st, committed, limit=1)
        j += done
        if stop != STOP_END:
            return j - start, stop
        if j >= n:
            return j - start, STOP_END



# The largest actions of one put: a SET_XMAX action (16 bytes), an A_INSERT action header
# (8 bytes with the offnum) and an entry of at most a page (put_new's output buffer; a
# larger one is no fast-path put).
PUT_NEW_ACTION_MAX_BYTES = _XMAX_ACTION_BYTES + 8 + 8192
_LOWER_UPPER = struct.Struct("<HH")   # pd_lower, pd_upper (storage/page.py's header)
_LOWER_AT = 14


def put_new_py(page, key: bytes, value: bytes, xid: int, old=None) -> bytes | None:
    """The INSERT record payload of an autocommit put of ``key`` (xid ``xid``, ``value``
    inline) on ``page``, when it takes the fast path: a live leaf (level 0, BTP_LEAF, not
    BTP_DELETED), ``key`` below its high key (or the leaf is rightmost), room for the entry,
    and either no version of ``key`` on it with ``old`` (a mutable [offset, xmin, xmax]; None
    is [0, 0, 0]) naming none, or ``key``'s first (newest) version at offset ``old[0]`` with
    xmin ``old[1]`` and no xmax, which the caller found committed: the put supersedes it.
    Then the payload is the general path's (``leaf_run_py`` of the write with OLD_LOOKUP,
    block index 0) byte for byte; else None, and when ``key``'s first version is not the one
    ``old`` names, ``old`` becomes its [offset, xmin, xmax] (for the caller to judge and ask
    again). The page is not changed. BTreePageError for a damaged page."""
    special = bt_special(page)
    if special.level != 0 or not special.flags & BTP_LEAF or special.flags & BTP_DELETED:
        return None
    high = None if special.next == P_NONE else unpack_pivot(bt_item(page, 1)).key
    if high is not None and key >= high:
        return None
    want_off, want_xmin = (0, 0) if old is None else (old[0], old[1])
    off = search_page(page, key, XMIN_MAX, False)
    if off <= bt_item_count(page) and entry_key(bt_item(page, off))[0] == key:
        e = unpack_entry(bt_item(page, off))
        if off != want_off or e.xmin != want_xmin or e.xmax:
            if old is not None:
                old[0], old[1], old[2] = off, e.xmin, e.xmax
            return None
        superseded = e.xmin   # as OLD_LOOKUP resolves it, the xmin being committed
    elif want_off:
        return None   # the version ``old`` names is gone
    else:
        superseded = 0   # no version of the key here: OLD_LOOKUP resolves to none
    lower, upper = _LOWER_UPPER.unpack_from(page, _LOWER_AT)
    st = LeafRunState(upper - lower)
    done, _stop = leaf_run_py(page, high, single_batch(key, value, KIND_INLINE, xid,
                                                       superseded), 0, st, None)
    return st.payload() if done else None


class PutScratch:
    """``put_new``'s buffers for one caller that serialises its calls (a tree's, used under
    its write lock): the C call's output (None without the C module) and the page's
    bytes from before the put (``pre``: to put the page back if logging fails)."""

    __slots__ = ("out", "pre", "old", "_pre_c")

    def __init__(self) -> None:
        self.pre = bytearray(BLCKSZ)
        self.out = _ffi.new("uint8_t[]", PUT_NEW_ACTION_MAX_BYTES) if C_PUT_NEW else None
        self._pre_c = _ffi.from_buffer(self.pre) if C_PUT_NEW else None
        # the version a put supersedes, [offset, xmin, xmax] (``put_new_py``'s ``old``)
        self.old = _ffi.new("uint64_t[3]") if C_PUT_NEW else [0, 0, 0]


def put_new(page, key: bytes, value: bytes, xid: int, scratch: PutScratch) -> bytes | None:
    """``put_new_py``'s payload (its ``old``: ``scratch.old``), applied to ``page`` as redo
    applies it (``apply_payload_actions``' bytes) once the page's bytes are copied to
    ``scratch.pre``: one C call (``slk_bt_put_new``; the reference without the C module).
    None, the page unchanged, when the fast path does not apply or the page is damaged (the
    general path then names the flaw)."""
    out = scratch.out
    if out is None:
        try:
            payload = put_new_py(page, key, value, xid, scratch.old)
        except BTreePageError:
            return None
        if payload is not None:
            scratch.pre[:] = page
            apply_payload_actions(page, payload, 0, 1)
        return payload
    n = _hot.slk_bt_put_new(_ffi.from_buffer(page), key, len(key), value, len(value), xid,
                            scratch.old, out, PUT_NEW_ACTION_MAX_BYTES, scratch._pre_c)
    return _ffi.buffer(out, n)[:] if n > 0 else None


def put_new_c(page, key: bytes, value: bytes, xid: int, scratch: PutScratch) -> bytes | None:
    """The C call's payload alone (its ``old``: ``scratch.old``), the page not changed
    (tests compare it with ``put_new_py``); needs the C module."""
    n = _hot.slk_bt_put_new(_ffi.from_buffer(page), key, len(key), value, len(value), xid,
                            scratch.old, scratch.out, PUT_NEW_ACTION_MAX_BYTES, _ffi.NULL)
    return _ffi.buffer(scratch.out, n)[:] if n > 0 else None
