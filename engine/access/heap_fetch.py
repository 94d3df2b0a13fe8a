"""The tuples at chosen slots of heap pages: an index scan's heap fetch, one C call per
batch of pages instead of one interpreted step per line pointer.

``gather_heap(heap, blocks, page_of, offnums, snapshot)`` is what index scans use: it
pins the batch's heap pages (the cached ones in one buffer-manager call, the others
through a read stream) and, in one C call over the pool's pages, judges the tuple at each
(``blocks[page_of[k]]``, ``offnums[k]``) against the reader's snapshot (as data: xmax,
own xid, sorted excluded xids) and gathers the visible ones' data into one buffer for
``RowCodec.decode_run``. That call takes no content lock (``gather_pool``, invariant 4);
when a writer held one of the pages meanwhile, the pages are share-locked in ascending
block order and gathered again (``gather``, which does the same over any list of pages).
``fetch_pages`` copies pages (one lock at a time: the fallback without C) and
``fetch_tuple`` reads one tuple (a point read; a pool hit without the lock too).

Index range scans go one step further (``gather_heap_rows``): when every page of a batch
is in the pool, one C call (``slk_ix_range_rows``) made under the buffer manager's
descriptor lock instead of pins (``BufferManager.read_cached``) judges the tuples, copies
the visible ones under the change counters, re-checks each row's key against its index
entry (``KeyCheck``) and lays the rows out as columns for ``RowCodec.rows_from_layout``;
``gather_rows_py`` is its reference. Anything else takes ``gather_heap``.

C when ``storage._pagecheck`` is built (``slk_heap_gather``); ``gather_py`` (over
``tuples_at_py``) is the pure-Python reference (``tests/engine/test_heap_fetch.py``
compares them), and the fallback without the module. A line pointer or tuple header that is not a heap tuple raises
``TupleFormatError`` naming the relation, block and offnum (C hands such a page to the
reference, which raises).

Invariants:
1. ``gather == gather_py`` for every page list, request list and snapshot the reference
   accepts; where the reference raises, so does the C path (the same error).
2. The checks per slot are ``Heap._tuple_at``'s: a NORMAL line pointer inside
   [upper, BLCKSZ) at least a header long, whose header's data_len matches its length.
3. ``fetch_pages`` and ``gather_heap`` hold at most ``PIN_BATCH_PAGES`` pins (at most an
   eighth of the pool); ``gather_heap`` share-locks a chunk's pages together in ascending
   block order (heap writers lock two pages only in block order, or first a page they
   just extended, which no index entry points into yet: no wait cycle); every lock and
   pin is released before they return, errors included.
4. Optimistic reads (``storage/bufmgr.py`` invariant 8): ``gather_pool`` and
   ``fetch_tuple``'s hit path read pinned VALID pool pages with no content lock, in C
   (``slk_heap_gather_opt``, ``slk_heap_fetch_opt``): the buffers' change counters are
   read before (odd: a writer holds the page, take the lock) and after (changed: discard,
   take the lock), every offset checked against the page before use, the results copied
   out before the re-check. So every answer is one a share-locked read could have given
   at some instant between the two counter reads; on a stable page it is the locked
   path's answer (property tests: ``tests/engine/test_optimistic_reads.py``), and a
   flawed slot always goes to the locked path, which raises naming it.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from operator import eq
from typing import NamedTuple

from slonik.engine.access.tuple import layout_scratch, slot_tuple
from slonik.storage.hotlib import hot_for
from slonik.storage.page import BLCKSZ
from slonik.storage.read_stream import ReadStream

try:  # the optional C helper (storage/_pagecheck_build.py, "table index" and
    # "optimistic (seqlock) reads" blocks)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_heap_fetch_opt"):  # an older build of the module
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None
_hot = hot_for(_lib)   # its page-sized helpers, the GIL kept (storage/hotlib.py)

__all__ = ["tuples_at_py", "gather", "gather_py", "gather_heap", "gather_pool", "Gathered",
           "fetch_pages", "fetch_tuple", "C_GATHER", "PIN_BATCH_PAGES", "GatheredRows",
           "C_RANGE_ROWS", "gather_rows_py", "KeyCheck", "key_check", "recheck", "rows_of", "gather_rows_pool", "gather_heap_rows",
           "NO_TUPLE", "INVISIBLE", "VISIBLE", "OPT_RETRY"]

C_GATHER = _lib is not None  # whether gather runs in C
# whether an index range scan's batch is judged, gathered and laid out in one C call
# (gather_rows_pool; an older build of the module lacks it)
C_RANGE_ROWS = C_GATHER and hasattr(_lib, "slk_ix_range_rows")
# what an optimistic C read returns when a writer held a page meanwhile (take the lock)
OPT_RETRY = _lib.SLK_OPT_RETRY if _lib is not None else -3
# gather's per-thread output buffer, grown when a batch needs more (bytes).
GATHER_BUFFER_BYTES = 1 << 20
# gather's per-thread C arrays are made for at least this many requests and pages (an
# index scan's batch: index.INDEX_SCAN_BATCH_ENTRIES, PIN_BATCH_PAGES), grown if needed.
SCRATCH_REQUESTS = 256
SCRATCH_PAGES = 256
_tls = threading.local()
# fetch_pages pins the cached pages of at most this many blocks at once (one buffer-manager
# call), and at most an eighth of the pool: pins held together must leave victims for others.
# As many as an index scan's batch of entries (index.INDEX_SCAN_BATCH_ENTRIES), so with a
# pool of 2048 buffers or more a batch's pages go in one chunk: splitting costs Python work
# per entry (a 100-row range over scattered heap pages: ~11% more rows/s than with 64).
PIN_BATCH_PAGES = 256

Found = tuple[list[int], list[int], list[int], list[int]]  # xmins, xmaxs, starts, ends

# gather's status per request
NO_TUPLE = 0     # the slot holds no NORMAL tuple
INVISIBLE = 1    # a tuple the snapshot does not see
VISIBLE = 2      # a tuple it sees: its data is in the gathered buffer


class Gathered(NamedTuple):
    """``gather``'s answer: per request a status, and [start, end) of its data in ``data``
    (empty unless VISIBLE); the visible tuples' data one after another, in request
    order."""

    status: list[int]
    starts: list[int]
    ends: list[int]
    data: bytes


def tuples_at_py(pages: Sequence[bytes], page_of: Sequence[int], offnums: Sequence[int],
                 *, rel: int = 0, fork: int = 0, blocks: Sequence[int] = ()) -> Found:
    """(xmins, xmaxs, starts, ends), one entry per request, of the tuples at
    (``page_of[k]``, ``offnums[k]``) of ``pages``: xmin, xmax and the bounds of the data
    in its page, all 0 when the slot holds no NORMAL tuple (``gather_py``'s first step).
    ``rel``, ``fork`` and ``blocks`` (the block number of each page) name a bad slot."""
    npages = len(pages)
    xmins, xmaxs, starts, ends = [], [], [], []
    for p, offnum in zip(page_of, offnums, strict=True):
        if not 0 <= p < npages:
            raise ValueError(f"request for page {p} of a list of {npages} pages")
        page = pages[p]
        if len(page) != BLCKSZ:
            raise ValueError(f"page {p} is {len(page)} bytes, not {BLCKSZ}")
        block = blocks[p] if p < len(blocks) else p
        got = slot_tuple(page, offnum, rel, fork, block)
        xmin, xmax, _flags, start, end = (0, 0, 0, 0, 0) if got is None else got
        xmins.append(xmin)
        xmaxs.append(xmax)
        starts.append(start)
        ends.append(end)
    return xmins, xmaxs, starts, ends


def _sees(xid: int, snap_xmax: int, own: int, excluded: Sequence[int]) -> bool:
    if xid == own:
        return True
    if xid >= snap_xmax:
        return False
    i = bisect_left(excluded, xid)
    return not (i < len(excluded) and excluded[i] == xid)


def gather_py(pages: Sequence[bytes], page_of: Sequence[int], offnums: Sequence[int],
              snapshot: tuple[int, int, Sequence[int]], *, rel: int = 0, fork: int = 0,
              blocks: Sequence[int] = ()) -> Gathered:
    """Reference of ``gather``: ``tuples_at_py`` with ``snapshot`` (xmax, own, sorted
    excluded xids: an ``XidSnapshot``) applied to each tuple, the visible ones' data
    joined."""
    snap_xmax, own, excluded = snapshot
    xmins, xmaxs, starts, ends = tuples_at_py(pages, page_of, offnums, rel=rel, fork=fork,
                                              blocks=blocks)
    status, out_starts, out_ends, parts = [], [], [], []
    pos = 0
    for p, xmin, xmax, s, e in zip(page_of, xmins, xmaxs, starts, ends, strict=True):
        out_starts.append(pos)
        if not e:
            status.append(NO_TUPLE)
        elif not _sees(xmin, snap_xmax, own, excluded) or \
                (xmax and _sees(xmax, snap_xmax, own, excluded)):
            status.append(INVISIBLE)
        else:
            status.append(VISIBLE)
            parts.append(pages[p][s:e])
            pos += e - s
        out_ends.append(pos)
    return Gathered(status, out_starts, out_ends, b"".join(parts))


def _scratch(n: int, npages: int):
    """This thread's C arrays for ``gather`` and its optimistic form: per request status,
    bounds, page index and offnum (at least ``n``), per page a buffer id, page pointer and
    counter seen (at least ``npages``). Made once and grown on demand, not per call; a
    C call copies its results out before it returns, so reuse is safe."""
    tls = _tls
    if getattr(tls, "req_cap", 0) < n:
        cap = max(n, SCRATCH_REQUESTS)
        tls.status = _ffi.new("uint8_t[]", cap)
        tls.start = _ffi.new("uint32_t[]", cap)
        tls.end = _ffi.new("uint32_t[]", cap)
        tls.page_of = _ffi.new("uint32_t[]", cap)
        tls.offnums = _ffi.new("uint16_t[]", cap)
        tls.req_cap = cap
    if getattr(tls, "page_cap", 0) < npages:
        cap = max(npages, SCRATCH_PAGES)
        tls.bufs = _ffi.new("uint32_t[]", cap)
        tls.seen = _ffi.new("uint32_t[]", cap)
        tls.ptrs = _ffi.new("uint8_t *[]", cap)
        tls.page_cap = cap
    return tls


def _prepare(tls, page_of: Sequence[int], offnums: Sequence[int], npages: int,
             excluded: Sequence[int]):
    """Fill ``tls``'s request arrays; the output buffer (room for ``npages`` pages of data:
    the data of distinct slots cannot exceed their pages) and the excluded xids as C
    arrays (the last snapshot's kept while the same object comes again)."""
    n = len(offnums)
    tls.page_of[0:n] = page_of
    tls.offnums[0:n] = offnums
    cap = npages * BLCKSZ
    out = getattr(tls, "gather_out", None)
    if out is None or len(out) < cap:
        out = tls.gather_out = _ffi.new("uint8_t[]", max(cap, GATHER_BUFFER_BYTES))
    _excluded_array(tls, excluded)
    return out


def _excluded_array(tls, excluded: Sequence[int]) -> None:
    """``tls.excluded``: the snapshot's excluded xids as a C array (the last one's kept
    while the same object comes again)."""
    if getattr(tls, "excluded_of", None) is not excluded:
        tls.excluded = _ffi.new("uint64_t[]", list(excluded)) if excluded else _ffi.NULL
        tls.excluded_of = excluded


def _gathered(tls, n: int, out, got: int) -> Gathered:
    """The answer of a successful gather C call (``got`` bytes of data in ``out``)."""
    return Gathered(memoryview(_ffi.buffer(tls.status, n)).cast("B").tolist(),
                    memoryview(_ffi.buffer(tls.start, 4 * n)).cast("I").tolist(),
                    memoryview(_ffi.buffer(tls.end, 4 * n)).cast("I").tolist(),
                    _ffi.buffer(out, got)[:])


def gather(pages: Sequence[bytes], page_of: Sequence[int], offnums: Sequence[int],
           snapshot: tuple[int, int, Sequence[int]], *, rel: int = 0, fork: int = 0,
           blocks: Sequence[int] = ()) -> Gathered:
    """The tuples at (``page_of[k]``, ``offnums[k]``) of ``pages`` as ``snapshot`` (xmax,
    own, sorted excluded xids) sees them: per request NO_TUPLE, INVISIBLE or VISIBLE, and
    the visible tuples' data gathered into one buffer (``data[starts[k]:ends[k]]``),
    ready for ``RowCodec.decode_run``. One C call when built."""
    n = len(offnums)
    npages = len(pages)
    if _lib is None or n == 0 or set(map(len, pages)) != {BLCKSZ}:
        return gather_py(pages, page_of, offnums, snapshot, rel=rel, fork=fork,
                         blocks=blocks)
    snap_xmax, own, excluded = snapshot
    tls = _scratch(n, npages)
    out = _prepare(tls, page_of, offnums, npages, excluded)
    ptrs = tls.ptrs
    ptrs[0:npages] = list(map(_ffi.from_buffer, repeat("uint8_t[]"), pages))
    got = _lib.slk_heap_gather(ptrs, npages, tls.page_of, tls.offnums, n, snap_xmax, own,
                               tls.excluded, len(excluded), out, len(out), tls.status,
                               tls.start, tls.end)
    if got < 0:  # a flawed slot (the reference raises naming it), or no room (never)
        return gather_py(pages, page_of, offnums, snapshot, rel=rel, fork=fork,
                         blocks=blocks)
    return _gathered(tls, n, out, got)


def gather_pool(bm, bufs: Sequence[int], page_of: Sequence[int], offnums: Sequence[int],
                snapshot: tuple[int, int, Sequence[int]]) -> Gathered | None:
    """``gather`` over the pool pages of ``bufs`` (pinned, VALID, NOT content-locked) in
    one C call that takes no lock (``slk_heap_gather_opt``, see the module docstring's
    invariant 4): the answer, or None when a writer held one of the pages meanwhile (or
    a slot is flawed, or the C helper or the counters are absent): then share-lock the
    pages and ``gather`` them."""
    seq = getattr(bm, "seq", None)
    n = len(offnums)
    if _lib is None or seq is None or n == 0:
        return None
    npages = len(bufs)
    snap_xmax, own, excluded = snapshot
    tls = _scratch(n, npages)
    out = _prepare(tls, page_of, offnums, npages, excluded)
    tls.bufs[0:npages] = bufs
    got = _lib.slk_heap_gather_opt(bm.c_pool, seq, tls.bufs, npages, tls.seen, tls.page_of,
                                   tls.offnums, n, snap_xmax, own, tls.excluded,
                                   len(excluded), out, len(out), tls.status, tls.start,
                                   tls.end)
    if got < 0:
        return None
    return _gathered(tls, n, out, got)


class GatheredRows(NamedTuple):
    """``gather_rows``' answer: the kept requests' indices in request order (None: every
    request) and their rows, decoded; ``checked``: whether the rows were re-checked
    against their entries' keys (a ``KeyCheck`` was given and applied)."""

    sel: list[int] | None
    rows: list[tuple]
    checked: bool = False


# slk_ix_range_rows' kinds of key column (its RK_* codes): text and bytea encode alike.
_KEY_KINDS = {"int8": 0, "float8": 1, "bool": 2, "text": 3, "bytea": 3}


class KeyCheck(NamedTuple):
    """An index's key columns as ``slk_ix_range_rows`` re-checks them against entry keys,
    as C arrays (``key_check``); ``codec`` is the row codec they were made for."""

    codec: object
    nkey: int
    kinds: object
    cols: object
    at: object
    var_text: object


# gather_rows_pool's arguments when no key re-check is asked for (nkey 0: never read)
_NO_KEY_CHECK = None if not C_RANGE_ROWS else KeyCheck(None, 0, _ffi.NULL, _ffi.NULL,
                                                        _ffi.NULL, _ffi.NULL)


def key_check(codec, positions: Sequence[int]) -> KeyCheck:
    """The ``KeyCheck`` of an index on the schema columns ``positions`` of rows of
    ``codec`` (a ``RowCodec``); made once per index and codec, not per scan."""
    kinds = [_KEY_KINDS[codec.types[p]] for p in positions]
    return KeyCheck(codec, len(positions), _ffi.new("uint8_t[]", kinds),
                    _ffi.new("uint16_t[]", list(positions)),
                    _ffi.new("uint32_t[]", [codec.field_at(p) for p in positions]),
                    _ffi.new("uint8_t[]", list(codec.var_text) or [0]))


def gather_rows_py(pages: Sequence[bytes], page_of: Sequence[int], offnums: Sequence[int],
                   snapshot: tuple[int, int, Sequence[int]], codec, *, rel: int = 0,
                   fork: int = 0, blocks: Sequence[int] = (),
                   entry_keys: Sequence[bytes] | None = None,
                   keys_of_rows: Callable[[list], list[bytes]] | None = None) -> GatheredRows:
    """Reference of ``gather_rows_pool`` (and what a batch falls back to): ``gather_py``,
    then the visible tuples' rows decoded by ``codec`` (a ``RowCodec``) one by one; with
    ``entry_keys`` (request k's entry key, TID suffix cut) only the rows whose key
    (``keys_of_rows``) is their entry's are kept."""
    g = gather_py(pages, page_of, offnums, snapshot, rel=rel, fork=fork, blocks=blocks)
    got = rows_of(g, codec.decode_run_py)
    return got if entry_keys is None else recheck(got, entry_keys, keys_of_rows)


def recheck(got: GatheredRows, entry_keys: Sequence[bytes],
            keys_of_rows: Callable[[list], list[bytes]]) -> GatheredRows:
    """``got`` less the rows whose key (``keys_of_rows``, column-wise) is not their
    request's entry key (``entry_keys[k]``, TID suffix cut): an index scan's re-check (a
    slot reused since the entry was read holds another key)."""
    sel = range(len(entry_keys)) if got.sel is None else got.sel
    same = list(map(eq, keys_of_rows(got.rows), map(entry_keys.__getitem__, sel)))
    if all(same):
        return GatheredRows(got.sel, got.rows, True)
    return GatheredRows(list(compress(sel, same)), list(compress(got.rows, same)), True)


def rows_of(g: Gathered, decode_run) -> GatheredRows:
    """The visible tuples of ``g`` decoded by ``decode_run``."""
    if g.status.count(VISIBLE) == len(g.status):
        return GatheredRows(None, decode_run(g.data, g.starts, g.ends))
    sel = [k for k, st in enumerate(g.status) if st == VISIBLE]
    return GatheredRows(sel, decode_run(g.data, list(map(g.starts.__getitem__, sel)),
                                        list(map(g.ends.__getitem__, sel))))


def gather_rows_pool(bm, bufs: Sequence[int], page_of, offnums, n: int,
                     snapshot: tuple[int, int, Sequence[int]], codec,
                     keys: tuple[bytes, object, KeyCheck] | None = None
                     ) -> GatheredRows | None:
    """``gather_rows_py``'s answer for the pool pages of ``bufs`` (VALID, kept so by pins
    or the descriptor lock, not content-locked) in one C call (``slk_ix_range_rows``:
    ``gather_pool``'s lock-free judgement and copy under the change counters, the key
    re-check, then the row layout of the copy), the rows built by
    ``RowCodec.rows_from_layout``. ``page_of`` and ``offnums`` are C ``uint32_t`` arrays
    of ``n`` requests (``index.batch_tids``' own output: no list round trip). ``keys``:
    (the requests' whole entry keys joined, a C ``uint32_t`` array of their ends, the
    index's ``KeyCheck``), for the re-check in C (``gather_rows_py``'s ``entry_keys``).
    None when a writer held a page meanwhile or a slot is flawed (take the locks), or the
    C helper or the counters are absent."""
    seq = getattr(bm, "seq", None)
    if not C_RANGE_ROWS or seq is None or n == 0:
        return None
    npages = len(bufs)
    snap_xmax, own, excluded = snapshot
    tls = _scratch(n, npages)
    nb, nfixed, fixed_sizes, nvar = codec.layout_args
    sc = layout_scratch(n, npages * BLCKSZ, nvar, codec.fixed_size)
    _excluded_array(tls, excluded)
    # the buffer ids as a C array without a conversion per element into the thread's
    # cffi array (an array.array made from the list in C, exported)
    cbufs = _ffi.from_buffer("uint32_t[]", array("I", bufs))
    if keys is None:
        joined, ends, kc, nkey = _ffi.NULL, _ffi.NULL, _NO_KEY_CHECK, 0
    else:
        joined, ends, kc = keys
        nkey = kc.nkey
    m = _lib.slk_ix_range_rows(bm.c_pool, seq, cbufs, npages, tls.seen, page_of, offnums,
                               n, snap_xmax, own, tls.excluded, len(excluded), sc.out,
                               sc.nbytes, sc.sel, sc.starts, sc.ends, nb, nfixed,
                               fixed_sizes, nvar, sc.fixed_out, sc.var_out, sc.joined,
                               sc.joined_len, sc.joined_ok, sc.layout, joined, ends, nkey,
                               kc.kinds, kc.cols, kc.at, kc.var_text)
    if m < 0:
        return None
    checked = keys is not None
    sel = None if m == n else memoryview(_ffi.buffer(sc.sel, 4 * m)).cast("I").tolist()
    if m == 0:
        return GatheredRows(sel, [], checked)
    rows = codec.rows_from_layout(_ffi.buffer(sc.out), m, sc) if sc.layout[0] == 0 else None
    if rows is None:   # a NULL, or a row that does not decode: row by row (raises naming it)
        end = memoryview(_ffi.buffer(sc.ends, 4 * m)).cast("I").tolist()
        rows = codec.decode_run_py(_ffi.buffer(sc.out, end[-1])[:],
                                   memoryview(_ffi.buffer(sc.starts, 4 * m)).cast("I").tolist(),
                                   end)
    return GatheredRows(sel, rows, checked)


def gather_heap_rows(heap, blocks: Sequence[int], page_of, offnums, n: int,
                     snapshot: tuple[int, int, Sequence[int]], codec,
                     keys: tuple[bytes, object, KeyCheck] | None = None) -> GatheredRows:
    """The visible rows of the tuples at (``blocks[page_of[k]]``, ``offnums[k]``), k < n,
    of ``heap`` (``blocks`` distinct and below ``nblocks()``; ``page_of``/``offnums`` C
    ``uint32_t`` arrays, as ``gather_rows_pool`` takes them) as ``snapshot`` sees them,
    decoded by ``codec``. An index range scan's batch: when every page is in the pool, one
    C call under the descriptor lock and no pins (``BufferManager.read_cached`` around
    ``gather_rows_pool``, with ``keys``' re-check); otherwise, or when a writer held a
    page meanwhile, ``gather_heap`` (pins, a read stream for the pages not cached, share
    locks when needed) and ``RowCodec.decode_run``, not re-checked (``checked`` False).
    Needs the C helper (``C_RANGE_ROWS``): without it an index scan takes ``gather_heap``
    itself."""
    bm = heap.bufmgr
    if C_RANGE_ROWS and blocks and bm.seq is not None and \
            len(blocks) <= max(1, min(PIN_BATCH_PAGES, bm.nbuffers // 8)):
        got = bm.read_cached(heap.rel, heap.fork, blocks,
                             lambda bufs: gather_rows_pool(bm, bufs, page_of, offnums, n,
                                                           snapshot, codec, keys))
        if got is not None:
            return got
    g = gather_heap(heap, blocks, _ffi.unpack(page_of, n), _ffi.unpack(offnums, n), snapshot)
    return rows_of(g, codec.decode_run)


def fetch_pages(heap, blocks: Sequence[int]) -> list[bytes]:
    """Copies of the pages ``blocks`` of ``heap`` (an ``engine.access.heap.Heap``; each
    block below its ``nblocks()``), in order, each copied under its share lock: one pin
    and lock per page however many TIDs of an index scan it holds. The cached pages of
    up to ``PIN_BATCH_PAGES`` blocks are pinned in one buffer-manager call; the others
    come through a read stream (their reads in flight together). ValueError naming the
    block for one past the end."""
    bm = heap.bufmgr
    rel, fork = heap.rel, heap.fork
    n = heap.nblocks()
    for block in blocks:
        if not 0 <= block < n:
            raise ValueError(f"block {block} is past the end of relation {rel} ({n} blocks)")
    pages: list = [None] * len(blocks)
    page, lock, unlock = bm.page, bm.lock_shared, bm.unlock_shared
    step = max(1, min(PIN_BATCH_PAGES, bm.nbuffers // 8))
    missing: list[int] = []
    for first in range(0, len(blocks), step):
        bufs = bm.pin_cached(rel, fork, blocks[first:first + step])
        try:
            for i, buf in enumerate(bufs, first):
                if buf < 0:
                    missing.append(i)
                    continue
                lock(buf)
                try:
                    pages[i] = bytes(page(buf))
                finally:
                    unlock(buf)
        finally:
            bm.unpin_many([b for b in bufs if b >= 0])
    if missing:
        with ReadStream(bm, rel, fork, [blocks[i] for i in missing]) as stream:
            for i, buf in zip(missing, stream, strict=True):
                with bm.locked(buf):
                    pages[i] = bytes(page(buf))
    return pages


def gather_heap(heap, blocks: Sequence[int], page_of: Sequence[int], offnums: Sequence[int],
                snapshot: tuple[int, int, Sequence[int]]) -> Gathered:
    """``gather`` over the heap's pages themselves: the tuples at (``blocks[page_of[k]]``,
    ``offnums[k]``) of ``heap`` (``blocks`` distinct, each below ``nblocks()``) as
    ``snapshot`` sees them, with no copy of whole pages (copying 8 KiB per page of a
    scattered index scan cost more than all the rest of its fetch).

    The pages go in chunks of ``PIN_BATCH_PAGES`` (at most an eighth of the pool): the
    cached ones pinned in one buffer-manager call, the others read through a read stream;
    then the chunk's pages are share-locked in ascending block order, one C call judges
    and gathers the chunk's tuples from the pool, and the locks and pins are released.
    Ascending order cannot deadlock with heap writers: they lock two pages only in block
    order, or a page they just extended first, which no index entry points into yet.
    Without the C helper: ``fetch_pages`` copies and ``gather_py``."""
    n = len(offnums)
    if _lib is None or n == 0 or not blocks:
        return gather_py(fetch_pages(heap, blocks), page_of, offnums, snapshot, rel=heap.rel,
                         fork=int(heap.fork), blocks=blocks)
    bm = heap.bufmgr
    nb = heap.nblocks()
    if min(blocks) < 0 or max(blocks) >= nb:   # checked in C-level passes, named below
        block = next(b for b in blocks if not 0 <= b < nb)
        raise ValueError(f"block {block} is past the end of relation {heap.rel} "
                         f"({nb} blocks)")
    step = max(1, min(PIN_BATCH_PAGES, bm.nbuffers // 8))
    if len(blocks) <= step:
        return _gather_chunk(heap, blocks, page_of, offnums, snapshot)
    status, starts, ends = [NO_TUPLE] * n, [0] * n, [0] * n
    parts: list[bytes] = []
    base = 0
    for first in range(0, len(blocks), step):
        chunk = blocks[first:first + step]
        sub = [k for k in range(n) if first <= page_of[k] < first + step]
        if not sub:
            continue
        got = _gather_chunk(heap, chunk, [page_of[k] - first for k in sub],
                            [offnums[k] for k in sub], snapshot)
        for j, k in enumerate(sub):
            status[k] = got.status[j]
            starts[k] = got.starts[j] + base
            ends[k] = got.ends[j] + base
        parts.append(got.data)
        base += len(got.data)
    # a request's bounds are empty unless VISIBLE: make them point at its chunk's end,
    # as a single call would (the data of earlier requests comes before it)
    return Gathered(status, starts, ends, b"".join(parts))


def _gather_chunk(heap, blocks: Sequence[int], page_of: Sequence[int],
                  offnums: Sequence[int], snapshot: tuple[int, int, Sequence[int]]) -> Gathered:
    """``gather_heap`` for at most a chunk of pages, all pinned together, then read in one
    C call without content locks (``gather_pool``), or, when a writer held one of them
    meanwhile, share-locked together and gathered."""
    bm = heap.bufmgr
    rel, fork = heap.rel, heap.fork
    bufs = bm.pin_cached(rel, fork, blocks)
    locked: list[int] = []
    try:
        if min(bufs) < 0:   # some not cached (min: a C-level pass in the usual case)
            missing = [i for i, b in enumerate(bufs) if b < 0]
            with ReadStream(bm, rel, fork, [blocks[i] for i in missing]) as stream:
                for i, buf in zip(missing, stream, strict=True):
                    bufs[i] = buf
        got = gather_pool(bm, bufs, page_of, offnums, snapshot)
        if got is not None:
            return got
        lock = bm.lock_shared
        for i in sorted(range(len(blocks)), key=blocks.__getitem__):
            lock(bufs[i])
            locked.append(bufs[i])
        page = bm.page
        return gather(list(map(page, bufs)), page_of, offnums, snapshot, rel=rel,
                      fork=int(fork), blocks=blocks)
    finally:
        unlock = bm.unlock_shared
        for b in locked:
            unlock(b)
        bm.unpin_many(bufs if min(bufs) >= 0 else [b for b in bufs if b >= 0])


def _fetch_arrays():
    """This thread's output arrays of ``fetch_tuple``'s C read (made on first use)."""
    tls = _tls
    tls.fetch_out = _ffi.new("uint8_t[]", BLCKSZ)
    tls.fetch_meta = _ffi.new("uint64_t[]", 3)
    return tls


def fetch_tuple(heap, block: int, offnum: int) -> tuple[int, int, bytes] | None:
    """(xmin, xmax, data copy) of the tuple at (``block``, ``offnum``) of ``heap``, or
    None when the slot holds none or the block is past the end: a point read's one pin,
    the slot checked as ``tuple.slot_tuple`` checks it (TupleFormatError for a line
    pointer or header that is not a heap tuple). A pool hit is read in one C call without
    the share lock (``slk_heap_fetch_opt``, invariant 4); when a writer held the page
    meanwhile (or the slot is flawed), and on a miss, under the share lock."""
    bm = heap.bufmgr
    buf = bm.pin_if_valid(heap.rel, int(heap.fork), block)   # a hit: the block exists
    if buf >= 0 and _lib is not None and bm.seq is not None:
        # a hit, read without the share lock (invariant 4)
        tls = _tls
        out = getattr(tls, "fetch_out", None)
        if out is None:
            out = _fetch_arrays().fetch_out
        try:
            n = _hot.slk_heap_fetch_opt(bm.c_pool, bm.seq, buf, offnum, out, BLCKSZ,
                                        tls.fetch_meta)
        except BaseException:   # an offnum that is no u32
            bm.unpin(buf)
            raise
        if n != OPT_RETRY:
            bm.unpin(buf)
            if n < 0:
                return None
            meta = tls.fetch_meta
            return meta[0], meta[1], _ffi.buffer(out, n)[:]
        # else a writer held the page meanwhile, or a flawed slot: the share lock decides
    if buf < 0:
        if not 0 <= block < heap.nblocks():
            return None
        buf = bm.read_buffer(heap.rel, heap.fork, block)
    try:
        bm.lock_shared(buf)
        try:
            page = bm.page(buf)
            got = slot_tuple(page, offnum, heap.rel, int(heap.fork), block)
            if got is None:
                return None
            xmin, xmax, _flags, start, end = got
            return xmin, xmax, bytes(page[start:end])
        finally:
            bm.unlock_shared(buf)
    finally:
        bm.unpin(buf)
