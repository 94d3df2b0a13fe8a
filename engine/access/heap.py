"""Heap access: tuples in slotted pages of one relation fork, every change WAL-logged.

A ``Heap`` stores tuples (``engine.tuple``: xmin, xmax, flags, data) in the pages of one
relation fork through the shared buffer manager, and logs each page change as one RM_HEAP
record before anyone can write the page (the buffer manager flushes WAL up to the page LSN
first). The redo routines beside it replay those records byte for byte.

Worked example::

    heap = Heap(16384, bufmgr, wal)
    tid = heap.insert(xid=7, data=b"hello")          # Tid(block=0, offnum=1)
    heap.fetch(tid)                                  # HeapTuple(tid, 7, 0, 0, b"hello")
    new = heap.update(tid, 8, b"hello again")        # old gets xmax 8, new xmin 8
    heap.delete(new, 9)
    heap.prune(lambda t: t.xmax != 0)                # both versions dead: slots freed
    for t in heap.scan(): ...                        # through a read stream

WAL records (rmgr ``RM_HEAP``; ``info & XLOG_HEAP_OPMASK`` is the operation; all integers
little-endian; ``item`` is a whole tuple, header + data; ``pflags`` is the page header's
flags after the change, so redo reproduces hint-bit changes exactly):

    INSERT        block 0 = the page     "<HH" offnum, pflags | item
    INSERT_MULTI  block 0 = the page     "<HH" count, pflags | count x ("<HH" offnum, len | item)
    DELETE        block 0 = the page     "<HQH" offnum, xmax, tuple flags after
    UPDATE        block 0 = new page,    "<HHQHH" old offnum, new offnum, old xmax,
                  block 1 = old page       old tuple flags after, new page pflags | new item
                  (absent: same page)
    PRUNE         block 0 = the page     "<HH" count, pflags | count x "<H" offnum

A block reference has ``will_init`` when the operation initialised the page (fresh
extension, or an all-zero page); its redo then starts from ``init_page``.

Invariants:
1. Every page change is made under the buffer's exclusive content lock, logged with the
   page's pre-change LSN and its free hole, and then gets page LSN = the record's end LSN
   and is marked dirty before the lock is released. If logging fails the page is put back
   byte for byte, so no unlogged change is ever visible.
2. Redo of a record applied to the page as it was before the change gives the page after
   it, byte for byte (same offnums, same item positions, same header flags).
3. An offnum never changes while its tuple lives; ``prune`` makes dead slots UNUSED, after
   which the offnum may be reused by a later insert on that page.
4. The free-space map is a hint: an insert re-checks the page under its lock and corrects
   the map when it was wrong. It is built from the pages (a scan) before the first insert.
5. Locks on two pages (update) are taken in block order, except that a freshly extended
   page, which nobody else can be waiting for, is locked before the older one.
6. Buffers are unpinned before a tuple is handed to the caller; tuples are copies.
7. Reads (scan, fetch, prune, the map's build) stay below ``nblocks()``, which counts a
   block this Heap extended only once its buffer is pinned and locked: a read of the block
   then finds that buffer instead of starting a disk read that would race the extension.
"""

from __future__ import annotations

import contextlib
import gc
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, repeat
from typing import NamedTuple, NoReturn

from slonik.engine.access.btree import XidSnapshot
from slonik.engine.access.tuple import (
    HEAP_UPDATED,
    HEAP_XMAX_UPDATE,
    MAX_TUPLE_DATA_BYTES,
    SCAN_SLICE_MIN_VALUE_BYTES,
    TUPLE_HEADER_SIZE,
    HeapTuple,
    PackedRows,
    RowCodec,
    Tid,
    TupleFormatError,
    TupleTooLargeError,
    layout_scratch,
    pack_tuple,
    slot_tuple,
    unpack_tuple_header,
)
from slonik.storage.page import (
    BLCKSZ,
    FLAGS_OFFSET,
    HEADER_SIZE,
    LINE_POINTER_SIZE,
    LOWER_OFFSET,
    MAXIMUM_ALIGNOF,
    LpFlag,
    PageFullError,
    init_page,
    max_item_size,
    maxalign,
    page_add_item,
    page_compact,
    page_delete_item,
    page_free_space,
    page_get_item,
    page_get_lsn,
    page_is_new,
    page_item_count,
    page_item_flags,
    page_set_flags,
    page_set_lsn,
)
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork
from slonik.wal.rmgr import RM_HEAP, ResourceManager
from slonik.wal.xlog import BlockSpec
from sortedcontainers import SortedList

try:  # the optional C heap-page helpers (storage/_pagecheck_build.py, "heap page" block)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_heap_run_free"):  # an older build of the module
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None
C_HEAP = _lib is not None  # whether runs of pages are read (and new pages filled) in C
# scan output arrays and run copies: every entry read back is written first, no zero-fill
_new_unzeroed = None if _ffi is None else _ffi.new_allocator(should_clear_after_alloc=False)

__all__ = [
    "Heap", "Tid", "HeapTuple", "HeapRun", "FreeSpaceMap", "TupleTooLargeError",
    "run_items", "run_items_py", "fill_page", "fill_page_py", "SCAN_RUN_PAGES",
    "RowRun", "scan_rows_py", "collector_paused", "DeadOf", "prune_items", "prune_items_py",
    "C_PRUNE",
    "XLOG_HEAP_INSERT", "XLOG_HEAP_INSERT_MULTI", "XLOG_HEAP_DELETE", "XLOG_HEAP_UPDATE",
    "XLOG_HEAP_PRUNE", "XLOG_HEAP_OPMASK", "HEAP_RMGR", "heap_redo", "heap_describe",
]

XLOG_HEAP_INSERT = 0x00
XLOG_HEAP_INSERT_MULTI = 0x10
XLOG_HEAP_DELETE = 0x20
XLOG_HEAP_UPDATE = 0x30
XLOG_HEAP_PRUNE = 0x40
XLOG_HEAP_OPMASK = 0x70
_OP_NAMES = {XLOG_HEAP_INSERT: "INSERT", XLOG_HEAP_INSERT_MULTI: "INSERT_MULTI",
             XLOG_HEAP_DELETE: "DELETE", XLOG_HEAP_UPDATE: "UPDATE", XLOG_HEAP_PRUNE: "PRUNE"}

_INSERT = struct.Struct("<HH")         # offnum, page flags after
_MULTI = struct.Struct("<HH")          # count, page flags after
_MULTI_ITEM = struct.Struct("<HH")     # offnum, item length
_DELETE = struct.Struct("<HQH")        # offnum, xmax, tuple flags after
_UPDATE = struct.Struct("<HHQHH")      # old offnum, new offnum, old xmax, old tuple flags,
                                       #   new page flags after
_PRUNE = struct.Struct("<HH")          # count, page flags after
_OFFNUMS = struct.Struct("<H")
_U16 = struct.Struct("<H")
_LOWER_UPPER = struct.Struct("<HH")
_LP = struct.Struct("<I")
_TUPLE_XMAX_FLAGS = struct.Struct("<QH")  # at offset 8 of a tuple: xmax, flags
_TUPLE_HEAD = struct.Struct("<QQHI")

_EMPTY_PAGE_FREE = max_item_size()  # what page_free_space says of a fresh page


def _fresh_page_room() -> int:
    page = bytearray(BLCKSZ)
    init_page(page)
    lower, upper = _LOWER_UPPER.unpack_from(page, LOWER_OFFSET)
    return upper - lower


_EMPTY_PAGE_ROOM = _fresh_page_room()  # bytes for items and line pointers on a new page
_TUPLE_MIN_COST = TUPLE_HEADER_SIZE + LINE_POINTER_SIZE  # page bytes of a tuple beyond its data
# Pages a scan takes from its read stream per step (512 KiB: the LOOK_AHEAD_BATCH_IOS
# combined reads a range stream starts per call, by default): one copy/unpin call, one C
# call for the tuples, one row decode per run. 64 instead of 16: ~5-10% less CPU per cold
# 1,000-byte-row table scan (A/B in one process, io_uring and worker).
SCAN_RUN_PAGES = 64
# Pages of a table scan's run decoded per C call and handed out per batch (Heap.scan_rows):
# a 64-page run decoded at once works on ~2 MiB (pages, joined text, its decoded text, the
# values), more than a core's L2; 16 pages at a time: 1,000-byte rows 5.2 -> 4.0 us per
# page (timeit over the same copied runs, /tmp/s8 runsize).
SCAN_DECODE_PAGES = 16
# Rows of the layout scratch a table scan's run asks for first (``_RunReader.rows``): 64
# pages of 1,000-byte rows hold ~500; a run of more rows retries once with room for every
# line pointer of its pages, and the thread's scratch keeps that size.
SCAN_ROWS_SCRATCH = 1024
_PAGE_LPS_MAX = (BLCKSZ - HEADER_SIZE) // LINE_POINTER_SIZE  # line pointers a page can hold
_U32_MAX = (1 << 32) - 1
# Pages a bulk insert adds to the relation at once (one zero-extension write, one pin and
# lock section); bounded further by an eighth of the pool.
BULK_EXTEND_PAGES = 32
_XID_MAX = (1 << 64) - 1
_LP_NORMAL = int(LpFlag.NORMAL)


def _check_xid(xid: object, name: str = "xid") -> int:
    if not isinstance(xid, int) or isinstance(xid, bool):
        raise TypeError(f"{name} must be an int, not {type(xid).__name__}")
    if not 1 <= xid <= _XID_MAX:
        raise ValueError(f"{name} must be in 1..{_XID_MAX}, got {xid}")
    return xid


def _check_tid(tid: object) -> Tid:
    if not isinstance(tid, tuple) or len(tid) != 2:
        raise TypeError(f"tid must be a Tid(block, offnum), not {tid!r}")
    block, offnum = tid
    if not isinstance(block, int) or not isinstance(offnum, int) or block < 0 or offnum < 1:
        raise ValueError(f"tid must be a Tid(block >= 0, offnum >= 1), got {tid!r}")
    return Tid(block, offnum)


def _hole(page: memoryview) -> tuple[int, int]:
    """(lower, upper): the page's free hole, which full-page images leave out."""
    return _LOWER_UPPER.unpack_from(page, LOWER_OFFSET)


def _page_flags(page: memoryview) -> int:
    return _U16.unpack_from(page, FLAGS_OFFSET)[0]


class FreeSpaceMap:
    """In-memory map block -> free bytes (``page_free_space``) of a heap's pages.

    ``find(need)`` answers the page with the most free space when that is enough, so a run
    of inserts keeps filling one page. Not thread-safe; the Heap guards it with a lock.
    """

    def __init__(self, free: Iterable[int] = ()) -> None:
        self._free: list[int] = list(free)
        # (free, block) in order, sorted on first use (a full scan that builds the map
        # does not pay for the sort: ~3 ms per 16k pages)
        self._sorted: SortedList | None = None

    @property
    def _order(self) -> SortedList:
        if self._sorted is None:
            self._sorted = SortedList(zip(self._free, range(len(self._free)), strict=True))
        return self._sorted

    def __len__(self) -> int:
        return len(self._free)

    def get(self, block: int) -> int:
        return self._free[block]

    def set(self, block: int, free: int) -> None:
        assert 0 <= free <= _EMPTY_PAGE_FREE and block >= 0, (block, free)
        order = self._order  # (sorted before _free changes)
        while block > len(self._free):  # blocks nobody told us about: assume full
            order.add((0, len(self._free)))
            self._free.append(0)
        if block == len(self._free):
            self._free.append(free)
        else:
            old = self._free[block]
            if old == free:
                return
            order.remove((old, block))
            self._free[block] = free
        order.add((free, block))

    def find(self, need: int, exclude: int = -1) -> int | None:
        """A block with at least ``need`` free bytes (the one with the most), not ``exclude``."""
        order = self._order
        for k in (-1, -2):
            if len(order) < -k:
                return None
            free, block = order[k]
            if free < need:
                return None
            if block != exclude:
                return block
        return None

    def total_free(self) -> int:
        return sum(self._free)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off (when it was on) for a bulk step that allocates
    one small tuple (a Tid) per row and no cycles: the generation collections those
    allocations trigger traverse every tracked object of the process, the caller's rows
    included (~40% of a 300,000-row insert_many here). Its state is put back on the
    way out, errors included. Pauses of several threads nest: the first one in turns the
    collector off (if it was on) and the last one out turns it back on, so one thread's
    end never switches it back on under another's bulk step, nor leaves it off."""
    global _gc_pauses, _gc_was_enabled
    with _gc_pause_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            if _gc_was_enabled:
                gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


_gc_pause_lock = threading.Lock()
_gc_pauses = 0              # bulk steps in flight with the collector paused (all threads)
_gc_was_enabled = False     # the collector's state when the first of them began


class HeapRun(NamedTuple):
    """The tuples of a run of consecutive pages (a scan's step), as a copy: ``data`` holds
    the pages' bytes; tuple ``i`` is on block ``first_block + pages[i]`` at ``offnums[i]``
    and its data is ``data[starts[i]:ends[i]]``. With a snapshot only visible tuples.
    A scan that asked for less (``scan_runs(tids=False)`` / ``headers=False``) gets empty
    ``pages``/``offnums`` / ``xmins``/``xmaxs``/``flags``."""

    first_block: int
    npages: int
    data: bytes
    pages: list[int]
    offnums: list[int]
    starts: list[int]
    ends: list[int]
    xmins: list[int]
    xmaxs: list[int]
    flags: list[int]

    def tuples(self) -> Iterator[HeapTuple]:
        """The run's tuples as HeapTuples (copies), in block then offnum order."""
        assert len(self.offnums) == len(self.xmins) == len(self.starts), "a partial run"
        data = self.data
        tids = map(Tid, map(self.first_block.__add__, self.pages), self.offnums)
        return map(HeapTuple, tids, self.xmins, self.xmaxs, self.flags,
                   map(data.__getitem__, map(slice, self.starts, self.ends)))


def run_items_py(data: bytes, npages: int, snapshot: XidSnapshot | None, rel: int,
                 fork: int, first_block: int) -> tuple[list[int], ...]:
    """Reference of ``run_items``: (pages, offnums, starts, ends, xmins, xmaxs, flags) of
    the NORMAL tuples (the visible ones, with ``snapshot``) of the ``npages`` pages in
    ``data``; TupleFormatError naming relation, block and offnum for a line pointer that
    is not a heap tuple inside the page's items area, or a tuple whose data_len
    disagrees with it."""
    out: tuple[list[int], ...] = ([], [], [], [], [], [], [])
    pages, offnums, starts, ends, xmins, xmaxs, flags = out
    head = _TUPLE_HEAD.unpack_from
    for k in range(npages):
        base = k * BLCKSZ
        block = first_block + k
        lower, upper = _LOWER_UPPER.unpack_from(data, base + LOWER_OFFSET)
        if lower == 0:  # a new, all-zero page (verified as such when read)
            continue
        if lower < HEADER_SIZE or lower > BLCKSZ or (lower - HEADER_SIZE) % LINE_POINTER_SIZE:
            raise TupleFormatError(
                f"relation {rel} block {block}: lower {lower} does not end a line pointer "
                f"array inside the page", relation=rel, fork=fork, block=block)
        for offnum, (lp,) in enumerate(_LP.iter_unpack(data[base + HEADER_SIZE:base + lower]), 1):
            if (lp >> 15) & 3 != _LP_NORMAL:
                continue
            offset = lp & 0x7FFF
            length = lp >> 17
            if offset < upper or offset + length > BLCKSZ or length < TUPLE_HEADER_SIZE:
                raise TupleFormatError(
                    f"relation {rel} block {block} offnum {offnum}: line pointer "
                    f"(offset {offset}, length {length}) is not a heap tuple inside "
                    f"[{upper}, {BLCKSZ})", relation=rel, fork=fork, block=block)
            xmin, xmax, tflags, data_len = head(data, base + offset)
            if data_len != length - TUPLE_HEADER_SIZE:
                raise TupleFormatError(
                    f"relation {rel} block {block} offnum {offnum}: tuple data_len "
                    f"{data_len} does not match its item length {length}",
                    relation=rel, fork=fork, block=block)
            if snapshot is not None and not snapshot(xmin, xmax):
                continue
            pages.append(k)
            offnums.append(offnum)
            starts.append(base + offset + TUPLE_HEADER_SIZE)
            ends.append(base + offset + length)
            xmins.append(xmin)
            xmaxs.append(xmax)
            flags.append(tflags)
    return out


class RowRun(NamedTuple):
    """The visible rows of a run of consecutive pages (``Heap.scan_rows``' step): row ``i``
    is on block ``first_block + pages[i]`` at ``offnums[i]``. ``pages`` and ``offnums``
    are empty when the scan asked for rows alone (``tids=False``)."""

    first_block: int
    npages: int
    pages: list[int]
    offnums: list[int]
    rows: list[tuple]


def scan_rows_py(data: bytes, npages: int, snapshot: XidSnapshot | None, rel: int, fork: int,
                 first_block: int, codec: RowCodec) -> tuple[list[int], list[int], list[tuple]]:
    """Reference of ``_RunReader.rows``: (pages, offnums, rows) of the NORMAL tuples (with
    ``snapshot``: the visible ones) of the ``npages`` pages in ``data``, each tuple's data
    decoded alone by ``codec`` (``run_items_py`` then ``RowCodec.decode_run_py``: the same
    errors, TupleFormatError for a page and the codec's for a row)."""
    pages, offnums, starts, ends, _xmins, _xmaxs, _flags = run_items_py(
        data, npages, snapshot, rel, fork, first_block)
    return pages, offnums, codec.decode_run_py(data, starts, ends)


def _run_free(data: bytes, npages: int) -> list[int]:
    """``Heap._page_free`` of each page of a run of verified pages (header rules
    checked when read: lower 0 means a new, all-zero page), from two header fields: every
    page's lower and upper read with one strided memoryview each."""
    halves = memoryview(data)[:npages * BLCKSZ].cast("H")
    at, step = LOWER_OFFSET // 2, BLCKSZ // 2
    return list(map(_free_of, halves[at::step].tolist(), halves[at + 1::step].tolist()))


def _free_of(lower: int, upper: int) -> int:
    """A verified page's free space from its lower and upper (``Heap._page_free``)."""
    if lower == 0:  # a new, all-zero page
        return _EMPTY_PAGE_FREE
    room = upper - lower - LINE_POINTER_SIZE
    return room - room % MAXIMUM_ALIGNOF if room > 0 else 0


_DATA_ONLY = (False, False, True, True, False, False, False)  # run_items' starts, ends alone


class _RunReader:
    """``run_items`` in C with output arrays allocated once (per scan) for runs of up to
    ``max_pages`` pages."""

    def __init__(self, max_pages: int, snapshot: XidSnapshot | None) -> None:
        cap = max_pages * _PAGE_LPS_MAX
        self.max_pages = max_pages
        # a table scan's copy of each run (copy_release(out=)): reused run after run, so
        # no allocation or zero-fill per run; nothing handed out points into it
        self._pages = _new_unzeroed("uint8_t[]", max_pages * BLCKSZ)
        self.pages_buffer = _ffi.buffer(self._pages)
        self._free = _ffi.new("uint32_t[]", max_pages)
        self.cap = cap
        self.snapshot = snapshot
        new = _new_unzeroed  # (the C call writes every entry it reports; ~4.7 MB for 64 pages)
        self.arrays = (new("uint32_t[]", cap), new("uint16_t[]", cap), new("uint32_t[]", cap),
                       new("uint32_t[]", cap), new("uint64_t[]", cap), new("uint64_t[]", cap),
                       new("uint16_t[]", cap))
        if snapshot is None:
            self.snap_args = (0, 0, 0, _ffi.NULL, 0)
        else:
            ex = snapshot.excluded
            self._excluded = _ffi.new("uint64_t[]", list(ex)) if ex else _ffi.NULL
            self.snap_args = (1, snapshot.xmax, snapshot.own, self._excluded, len(ex))

    def free(self, data, npages: int) -> list[int]:
        """``_run_free`` (each page's free space) in one C call (``slk_heap_run_free``)."""
        assert npages <= self.max_pages and len(data) >= npages * BLCKSZ
        _lib.slk_heap_run_free(_ffi.from_buffer(data), npages, _EMPTY_PAGE_FREE,
                               LINE_POINTER_SIZE, MAXIMUM_ALIGNOF, self._free)
        return memoryview(_ffi.buffer(self._free, 4 * npages)).cast("I").tolist()

    def part(self, at: int, npages: int):
        """Pages ``at .. at + npages - 1`` of ``pages_buffer`` as a buffer of their own
        (slices of it are bytes)."""
        assert at >= 0 and at + npages <= self.max_pages
        return _ffi.buffer(self._pages + at * BLCKSZ, npages * BLCKSZ)

    def items(self, data: bytes, npages: int, rel: int, fork: int, first_block: int,
              wanted: tuple[bool, ...] = (True,) * 7) -> tuple[list[int], ...]:
        assert npages <= self.max_pages and len(data) >= npages * BLCKSZ
        arrays = self.arrays
        n = _lib.slk_heap_run_items(_ffi.from_buffer(data), npages, *self.snap_args, self.cap,
                                    *arrays)
        if n < 0:
            self._refuse(data, n, npages, rel, fork, first_block)
        buffer = _ffi.buffer
        if wanted == _DATA_ONLY:  # a table scan's: the tuples' bounds alone
            return ([], [], memoryview(buffer(arrays[2], 4 * n)).cast("I").tolist(),
                    memoryview(buffer(arrays[3], 4 * n)).cast("I").tolist(), [], [], [])
        return tuple(memoryview(buffer(a, n * size)).cast(code).tolist() if want else []
                     for a, code, size, want in zip(arrays, "IHIIQQH", (4, 2, 4, 4, 8, 8, 2),
                                                    wanted, strict=True))

    def _refuse(self, data: bytes, n: int, npages: int, rel: int, fork: int,
                first_block: int) -> NoReturn:
        """A C call's negative answer ``n`` (-(k + 1): page k cannot be read safely): the
        reference reads that page, which raises naming the flaw."""
        assert n != -(npages + 1), "line pointer capacity exceeded"
        k = -n - 1
        run_items_py(data[k * BLCKSZ:(k + 1) * BLCKSZ], 1, self.snapshot, rel, fork,
                     first_block + k)  # raises naming the flaw
        raise AssertionError(f"C and Python disagree on block {first_block + k} of "
                             f"relation {rel}")

    def rows(self, data: bytes, npages: int, rel: int, fork: int, first_block: int,
             codec: RowCodec, tids: bool, slice_min: int = SCAN_SLICE_MIN_VALUE_BYTES
             ) -> tuple[list[int], list[int], list[tuple]]:
        """``scan_rows_py`` (pages and offnums only with ``tids``) with one C call
        (``slk_heap_scan_rows``: tuples, visibility, row layout and the text/bytea
        columns joined: split at a separator when their values average fewer than
        ``slice_min`` bytes, else text sliced by character bounds) into this thread's
        layout scratch, then ``RowCodec.rows_from_layout``; rows with a NULL, or that do
        not decode, go row by row (which raises naming the flaw), a page that cannot be
        read safely through the reference (which raises)."""
        assert npages <= self.max_pages and len(data) >= npages * BLCKSZ
        arrays = self.arrays
        nb, nfixed, fixed_sizes, nvar = codec.layout_args
        src = _ffi.from_buffer(data)
        sc = layout_scratch(SCAN_ROWS_SCRATCH, len(data), nvar, codec.fixed_size)
        while True:  # the scratch holds the usual run; one more try with room for all
            cap = min(self.cap, sc.rows)
            n = _lib.slk_heap_scan_rows(
                src, npages, *self.snap_args, cap, *arrays, nb, nfixed, fixed_sizes, nvar,
                codec.c_var_text, slice_min, sc.fixed_out, sc.var_out, sc.joined, sc.joined_len,
                sc.joined_ok, sc.chars, sc.layout)
            if n != -(npages + 1) or cap == self.cap:
                break
            sc = layout_scratch(self.cap, len(data), nvar, codec.fixed_size)
        if n < 0:
            self._refuse(data, n, npages, rel, fork, first_block)
        buffer = _ffi.buffer
        if tids:
            pages = memoryview(buffer(arrays[0], 4 * n)).cast("I").tolist()
            offnums = memoryview(buffer(arrays[1], 2 * n)).cast("H").tolist()
        else:
            pages = offnums = []
        if n == 0:  # (nothing laid out: the scratch holds an earlier run's layout)
            return pages, offnums, []
        rows = codec.rows_from_scan(data, n, sc) if sc.layout[0] == 0 else None
        if rows is None:
            rows = codec.decode_run_py(data, memoryview(buffer(arrays[2], 4 * n)).cast("I").tolist(),
                                       memoryview(buffer(arrays[3], 4 * n)).cast("I").tolist())
        return pages, offnums, rows


def run_items(data: bytes, npages: int, snapshot: XidSnapshot | None, rel: int, fork: int,
              first_block: int) -> tuple[list[int], ...]:
    """(pages, offnums, starts, ends, xmins, xmaxs, flags) of the NORMAL tuples of the
    ``npages`` pages in ``data`` (with ``snapshot``: those it sees): one C call when
    ``storage._pagecheck`` is built, else ``run_items_py``; the same errors either way."""
    if _lib is None:
        return run_items_py(data, npages, snapshot, rel, fork, first_block)
    return _RunReader(npages, snapshot).items(data, npages, rel, fork, first_block)


def fill_page_py(page, xmin: int, flags: int, datas: Sequence[bytes]) -> tuple[int, bytes]:
    """Reference of ``fill_page``: ``page_add_item(page, pack_tuple(xmin, 0, flags, d))``
    for each data in turn until one does not fit. Returns (how many went in, their
    INSERT_MULTI record items: ``"<HH"`` offnum, item length | item, each)."""
    parts = []
    for data in datas:
        item = pack_tuple(xmin, 0, flags, data)
        try:
            offnum = page_add_item(page, item)
        except PageFullError:
            break
        parts += [_MULTI_ITEM.pack(offnum, len(item)), item]
    return len(parts) // 2, b"".join(parts)


class _PageFiller:
    """``fill_page`` in C over one batch of tuple data (bytes each, none too large,
    joined once; or rows ``RowCodec.pack_many`` laid out back to back already); each new
    page takes the next tuples with one call. ``pages_at_least`` says how many new pages
    the tuples from an index need at the least."""

    def __init__(self, xmin: int, flags: int, datas: list[bytes] | PackedRows) -> None:
        self.xmin, self.flags = xmin, flags
        self.n = len(datas)
        if isinstance(datas, PackedRows):
            self.blob = datas.blob
            self._blob_ptr = datas.blob
            self._total = datas.total
            self.lens, self.data_at = datas.lens, datas.at
        else:
            lens = list(map(len, datas))
            self.blob = b"".join(datas)
            self._blob_ptr = _ffi.from_buffer(self.blob)
            at = list(accumulate(lens, initial=0))  # data offsets; [n] = all the data
            self._total = at[-1]
            self.lens = _ffi.new("uint32_t[]", lens)
            self.data_at = _ffi.new("uint32_t[]", at[:-1] or [0])
        self._record = _ffi.new("uint8_t[]", BLCKSZ + 8 * _PAGE_LPS_MAX)
        self._record_len = _ffi.new("uint32_t *")

    def pages_at_least(self, first: int, room: int) -> int:
        """A lower bound of the new pages (``room`` bytes each) the tuples from ``first``
        fill: each takes at least its data, a header and a line pointer."""
        need = self._total - self.data_at[first] + (self.n - first) * _TUPLE_MIN_COST
        return max(1, -(-need // room))

    def fill(self, page, first: int) -> tuple[int, bytes]:
        count = _lib.slk_heap_fill_page(_ffi.from_buffer(page), self._blob_ptr,
                                        self.data_at + first, self.lens + first,
                                        self.n - first, self.xmin, self.flags, self._record,
                                        self._record_len)
        return count, _ffi.buffer(self._record, self._record_len[0])[:]


def fill_page(page, xmin: int, flags: int, datas: list[bytes]) -> tuple[int, bytes]:
    """Add tuples (``xmin``, xmax 0, ``flags``, each of ``datas``) in order to an
    initialised page with no line pointers yet (``init_page``), as ``page_add_item`` one
    at a time would, byte for byte, until one does not fit. Returns (how many went in,
    at offnums 1..count; their INSERT_MULTI record items). C when built and every data
    is bytes small enough for a page; else ``fill_page_py``."""
    lower, upper = _hole(memoryview(page))
    if (_lib is None or not datas or lower != HEADER_SIZE or _page_flags(memoryview(page)) & 1
            or upper > BLCKSZ or set(map(type, datas)) != {bytes}
            or max(map(len, datas)) > MAX_TUPLE_DATA_BYTES):
        return fill_page_py(page, xmin, flags, datas)
    pack_tuple(xmin, 0, flags, b"")  # the header's own checks
    return _PageFiller(xmin, flags, datas).fill(page, 0)


class Heap:
    """Tuples of relation ``rel`` (fork ``fork``) through ``bufmgr``, logged to ``wal``.

    One Heap object per relation fork in a process (it owns the free-space map and is the
    only code that extends the fork). Changes are expected under the engine's commit lock,
    but are safe against each other anyway (page locks, a lock on the map); reads (fetch,
    scan) may run concurrently with changes.
    """

    def __init__(self, rel: int, bufmgr, wal, *, fork: int = Fork.MAIN) -> None:
        if not isinstance(rel, int) or isinstance(rel, bool) or rel < 0:
            raise ValueError(f"rel must be a relfilenumber (non-negative int), got {rel!r}")
        self.rel = rel
        self.fork = Fork(fork)
        self.bufmgr = bufmgr
        self.wal = wal
        self._fsm: FreeSpaceMap | None = None
        self._fsm_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._nblocks: int | None = None  # see nblocks(); only grows: nothing truncates

    # --- size and the free-space map -------------------------------------------------------
    def nblocks(self) -> int:
        """Blocks of the relation this Heap reads: the file's size when first asked, then
        grown by this Heap's own extensions once each new page is pinned and locked.

        Readers never look past it, so they never start a disk read of a block whose
        extension is still under way (invariant 7)."""
        n = self._nblocks
        if n is None:
            smgr = self.bufmgr.smgr
            size = smgr.nblocks(self.rel, self.fork) if smgr.exists(self.rel, self.fork) else 0
            with self._fsm_lock:
                if self._nblocks is None:
                    self._nblocks = size
                n = self._nblocks
        return n

    def _extended(self, block: int) -> None:
        with self._fsm_lock:
            if self._nblocks is None or block + 1 > self._nblocks:
                self._nblocks = block + 1

    def _check_block(self, tid: Tid) -> None:
        n = self.nblocks()
        if tid.block >= n:
            raise ValueError(f"tid {tuple(tid)} is past the end of relation {self.rel} "
                             f"({n} blocks)")

    def free_space_map(self) -> FreeSpaceMap:
        """The free-space map, built by reading every page the first time it is needed."""
        fsm = self._fsm
        if fsm is not None:
            return fsm
        with self._build_lock:
            if self._fsm is None:
                # A scan's runs without their tuples: each run's free space is read from
                # its pages' headers in one call, and the map installed at the end.
                runs = self._copied_runs(SCAN_RUN_PAGES, None, reuse=True)
                try:
                    next(runs)
                    for _run in runs:
                        pass
                finally:
                    runs.close()
            assert self._fsm is not None
            return self._fsm

    def _install_fsm(self, free: list[int]) -> None:
        """Adopt ``free`` (one entry per block from 0) unless a map exists already (built
        meanwhile by another path; either is only a hint, invariant 4)."""
        with self._fsm_lock:
            if self._fsm is None:
                self._fsm = FreeSpaceMap(free)

    @staticmethod
    def _page_free(page: memoryview) -> int:
        return _EMPTY_PAGE_FREE if page_is_new(page) else page_free_space(page)

    def _fsm_set(self, block: int, free: int) -> None:
        with self._fsm_lock:
            if self._fsm is not None:
                self._fsm.set(block, free)

    def _buffer_with_room(self, need: int, other: int | None = None,
                          other_block: int = -1) -> tuple[int, int, bool]:
        """A buffer whose page has ``need`` bytes free for an item: (buf, block, fresh).

        It comes pinned and exclusive-locked; ``fresh`` says the page was just initialised
        (extended, or found all zero). With ``other`` (a pinned, unlocked buffer of block
        ``other_block``) that buffer is exclusive-locked too, in block order, and never
        chosen itself.
        """
        bm, rel, fork = self.bufmgr, self.rel, self.fork
        fsm = self.free_space_map()
        while True:
            with self._fsm_lock:
                block = fsm.find(need, other_block)
            if block is None:
                (buf,) = bm.extend(rel, fork, 1)  # pinned, exclusive-locked, all zero
                block = bm.block_of(buf)[2]
                init_page(bm.page(buf))
                self._extended(block)
                self._fsm_set(block, _EMPTY_PAGE_FREE)
                if other is not None:
                    bm.lock_exclusive(other)  # nobody can be waiting for the new page
                return buf, block, True
            buf = bm.read_buffer(rel, fork, block)
            if other is not None and other_block < block:
                bm.lock_exclusive(other)
                bm.lock_exclusive(buf)
            else:
                bm.lock_exclusive(buf)
                if other is not None:
                    bm.lock_exclusive(other)
            page = bm.page(buf)
            if page_is_new(page):
                init_page(page)
                return buf, block, True
            free = page_free_space(page)
            if free >= need:
                return buf, block, False
            self._fsm_set(block, free)  # the map was stale: correct it and look again
            if other is not None:
                bm.unlock_exclusive(other)
            bm.unlock_release(buf)

    # --- logging ---------------------------------------------------------------------------
    def _log(self, xid: int, info: int, payload: bytes,
             changed: Sequence[tuple[int, bytes, bool]]) -> int:
        """WAL-log a change already made to the pages of ``changed`` ((buf, pre-image,
        will_init) each, exclusive-locked), then stamp them with the record's end LSN and
        dirty them. On failure the pages are put back from their pre-images."""
        bm = self.bufmgr
        specs = []
        for buf, _pre, will_init in changed:
            page = bm.page(buf)
            specs.append(BlockSpec(self.rel, int(self.fork), bm.block_of(buf)[2], page,
                                   page_get_lsn(page), will_init, _hole(page)))
        try:
            _start, end = self.wal.insert(RM_HEAP, info, xid, payload, specs)
        except BaseException:
            for buf, pre, _will_init in changed:
                bm.page(buf)[:] = pre
            raise
        for buf, _pre, _will_init in changed:
            page_set_lsn(bm.page(buf), end)
            bm.mark_dirty(buf)
        return end

    # --- changes ---------------------------------------------------------------------------
    def insert(self, xid: int, data, *, flags: int = 0) -> Tid:
        """Store a new tuple (xmin = ``xid``) and return its Tid. TupleTooLargeError (nothing
        changed) when it cannot fit in a page."""
        _check_xid(xid)
        item = pack_tuple(xid, 0, flags, data)
        bm = self.bufmgr
        buf, block, fresh = self._buffer_with_room(maxalign(len(item)))
        try:
            page = bm.page(buf)
            pre = bytes(BLCKSZ) if fresh else bytes(page)
            offnum = page_add_item(page, item)
            payload = _INSERT.pack(offnum, _page_flags(page)) + item
            self._log(xid, XLOG_HEAP_INSERT, payload, [(buf, pre, fresh)])
            free = page_free_space(page)
        finally:
            bm.unlock_release(buf)
        self._fsm_set(block, free)
        return Tid(block, offnum)

    def insert_many(self, xid: int, datas: Iterable, *, flags: int = 0) -> list[Tid]:
        """Store many tuples (bulk load): one INSERT_MULTI record per page filled. Every
        tuple is checked first, so an oversized one raises before anything changed.

        When the free-space map has no page with room, the relation is extended by as
        many pages as the remaining tuples need (up to ``BULK_EXTEND_PAGES`` at once) and
        each new page is filled, and its record built, by one ``fill_page`` call (C when
        built). A page that already holds tuples takes them one at a time."""
        _check_xid(xid)
        if not isinstance(datas, list | tuple | PackedRows):
            datas = list(datas)
        items = None
        filler = None
        if isinstance(datas, PackedRows) or (
                _lib is not None and datas and set(map(type, datas)) == {bytes}
                and max(map(len, datas)) <= MAX_TUPLE_DATA_BYTES
                and sum(map(len, datas)) <= _U32_MAX):
            # (PackedRows: made by the C helper, each row checked against the limit)
            pack_tuple(xid, 0, flags, b"")  # the header's own checks, once
            filler = _PageFiller(xid, flags, datas)
        else:
            items = [pack_tuple(xid, 0, flags, d) for d in datas]
        n = len(datas)
        tids: list[Tid] = []
        i = 0
        with collector_paused():
            while i < n:
                if filler is not None:
                    need = maxalign(TUPLE_HEADER_SIZE + filler.lens[i])
                    fsm = self.free_space_map()
                    with self._fsm_lock:
                        room = fsm.find(need)
                    if room is None:
                        i = self._fill_new_pages(filler, i, tids)
                        continue
                    items = datas  # this page: one tuple at a time
                i = self._add_to_page(xid, flags, datas if filler is not None else items,
                                      i, filler is not None, tids)
        return tids

    def _add_to_page(self, xid: int, flags: int, items: Sequence, i: int, raw: bool,
                     tids: list[Tid]) -> int:
        """Tuples from ``items[i]`` on (``raw``: tuple data, else packed items) added one at
        a time to a page with room, logged as one INSERT_MULTI; returns the next index."""
        bm = self.bufmgr
        n = len(items)
        first_item = pack_tuple(xid, 0, flags, items[i]) if raw else items[i]
        buf, block, fresh = self._buffer_with_room(maxalign(len(first_item)))
        try:
            page = bm.page(buf)
            pre = bytes(BLCKSZ) if fresh else bytes(page)
            parts = []
            first = i
            while i < n:
                item = first_item if i == first else (
                    pack_tuple(xid, 0, flags, items[i]) if raw else items[i])
                try:
                    offnum = page_add_item(page, item)
                except PageFullError:
                    break
                parts += [_MULTI_ITEM.pack(offnum, len(item)), item]
                tids.append(Tid(block, offnum))
                i += 1
            assert i > first, "a page with room took no tuple"
            payload = _MULTI.pack(i - first, _page_flags(page)) + b"".join(parts)
            self._log(xid, XLOG_HEAP_INSERT_MULTI, payload, [(buf, pre, fresh)])
            free = page_free_space(page)
        finally:
            bm.unlock_release(buf)
        self._fsm_set(block, free)
        return i

    def _fill_new_pages(self, filler: _PageFiller, i: int, tids: list[Tid]) -> int:
        """Extend the relation by the pages the tuples from ``i`` need (at most
        ``BULK_EXTEND_PAGES``, and an eighth of the pool), fill each with one C call and
        log it as one INSERT_MULTI record (will_init); returns the next index."""
        bm = self.bufmgr
        limit = max(1, min(BULK_EXTEND_PAGES, bm.nbuffers // 8))
        # Never more pages than the tuples fill: each new page takes at least one.
        npages = min(limit, filler.pages_at_least(i, _EMPTY_PAGE_ROOM), filler.n - i)
        bufs = bm.extend(self.rel, self.fork, npages)  # pinned, exclusive, all zero
        done = 0  # buffers released
        logged = False
        try:
            for buf in bufs:
                block = bm.block_of(buf)[2]
                page = bm.page(buf)
                logged = False
                init_page(page)
                self._extended(block)
                count, items = filler.fill(page, i)
                assert count > 0, "a new page took no tuple"
                payload = _MULTI.pack(count, _page_flags(page)) + items
                self._log(filler.xmin, XLOG_HEAP_INSERT_MULTI, payload,
                          [(buf, bytes(BLCKSZ), True)])
                logged = True
                tids.extend(map(tuple.__new__, repeat(Tid, count),
                                zip(repeat(block, count), range(1, count + 1), strict=True)))
                i += count
                free = page_free_space(page)
                done += 1
                bm.unlock_release(buf)
                self._fsm_set(block, free)
        except BaseException:
            for k in range(done, len(bufs)):
                buf = bufs[k]
                block = bm.block_of(buf)[2]
                self._extended(block)
                if not (k == done and logged):  # never logged: back to a new, all-zero page
                    bm.page(buf)[:] = bytes(BLCKSZ)
                    self._fsm_set(block, _EMPTY_PAGE_FREE)
                bm.unlock_release(buf)
            raise
        return i

    def _normal_item(self, page: memoryview, tid: Tid) -> memoryview:
        """The tuple item at ``tid`` on a locked page; ValueError if there is none."""
        if page_is_new(page) or tid.offnum > page_item_count(page) \
                or page_item_flags(page, tid.offnum) != LpFlag.NORMAL:
            raise ValueError(f"no tuple at tid {tuple(tid)} of relation {self.rel}")
        item = page_get_item(page, tid.offnum)
        self._check_item(item, tid)
        return item

    def _check_item(self, item, tid: Tid) -> None:
        try:
            unpack_tuple_header(item)
        except TupleFormatError as e:
            raise TupleFormatError(f"{e} (tid {tuple(tid)})", relation=self.rel,
                                   fork=int(self.fork), block=tid.block) from None

    def delete(self, tid: Tid, xid: int) -> None:
        """Set the tuple's xmax to ``xid`` (and clear HEAP_XMAX_UPDATE). ValueError if no
        tuple lives at ``tid``. The old xmax, if any, is overwritten: deciding whether that
        is allowed (visibility, conflicts) is the transaction layer's job."""
        tid = _check_tid(tid)
        _check_xid(xid)
        self._check_block(tid)
        bm = self.bufmgr
        with bm.buffer_locked(self.rel, self.fork, tid.block, exclusive=True) as buf:
            page = bm.page(buf)
            item = self._normal_item(page, tid)
            flags = _TUPLE_XMAX_FLAGS.unpack_from(item, 8)[1] & ~HEAP_XMAX_UPDATE
            pre = bytes(page)
            _TUPLE_XMAX_FLAGS.pack_into(item, 8, xid, flags)
            self._log(xid, XLOG_HEAP_DELETE, _DELETE.pack(tid.offnum, xid, flags),
                      [(buf, pre, False)])

    def update(self, tid: Tid, xid: int, data, *, flags: int = 0) -> Tid:
        """Store a new version (xmin = ``xid``, flags | HEAP_UPDATED) and set the old one's
        xmax = ``xid`` with HEAP_XMAX_UPDATE, in one UPDATE record. The new version goes on
        the old page when it fits there. Returns the new Tid."""
        tid = _check_tid(tid)
        _check_xid(xid)
        item = pack_tuple(xid, 0, flags | HEAP_UPDATED, data)
        need = maxalign(len(item))
        self._check_block(tid)
        bm = self.bufmgr
        old_buf = bm.read_buffer(self.rel, self.fork, tid.block)
        new_buf = None
        locked = []
        try:
            bm.lock_exclusive(old_buf)
            locked.append(old_buf)
            old_page = bm.page(old_buf)
            self._normal_item(old_page, tid)
            fresh = False
            if page_free_space(old_page) >= need:
                new_block, new_page = tid.block, old_page
            else:
                bm.unlock_exclusive(old_buf)
                locked.clear()
                new_buf, new_block, fresh = self._buffer_with_room(need, old_buf, tid.block)
                locked += [new_buf, old_buf]
                new_page = bm.page(new_buf)
                self._normal_item(old_page, tid)  # still there (we let go of its lock)
            pre_old = bytes(old_page)
            pre_new = None if new_buf is None else bytes(BLCKSZ) if fresh else bytes(new_page)
            old_item = page_get_item(old_page, tid.offnum)
            old_flags = (_TUPLE_XMAX_FLAGS.unpack_from(old_item, 8)[1]) | HEAP_XMAX_UPDATE
            _TUPLE_XMAX_FLAGS.pack_into(old_item, 8, xid, old_flags)
            new_offnum = page_add_item(new_page, item)
            payload = _UPDATE.pack(tid.offnum, new_offnum, xid, old_flags,
                                   _page_flags(new_page)) + item
            if new_buf is None:
                changed = [(old_buf, pre_old, False)]
            else:
                changed = [(new_buf, pre_new, fresh), (old_buf, pre_old, False)]
            self._log(xid, XLOG_HEAP_UPDATE, payload, changed)
            new_free = page_free_space(new_page)
        finally:
            for b in locked:
                bm.unlock_exclusive(b)
            bm.unpin(old_buf)
            if new_buf is not None:
                bm.unpin(new_buf)
        self._fsm_set(new_block, new_free)
        return Tid(new_block, new_offnum)

    def prune(self, is_dead: Callable[[HeapTuple], bool] | None = None, *,
              dead_of: DeadOf | None = None) -> int:
        """Vacuum: every tuple that ``is_dead`` (a HeapTuple predicate) or ``dead_of`` (the
        indexes of a run's tuples, judged from the run's arrays: no object per tuple)
        condemns loses its slot (UNUSED) and its page is compacted, one PRUNE record per
        page changed; the free-space map learns the space. The heap is read a run of pages
        at a time (``scan_runs``) and judged with no page locked; a page with a tuple to
        prune is then held exclusively and changed by one C call (``prune_items``), which
        takes only tuples whose header is what was judged. Returns how many tuples went."""
        pruned = 0
        for run, _idx, by_page in self._judged_runs(is_dead, dead_of):
            for k, ids in by_page.items():
                pruned += self._prune_block(run.first_block + k, *_expected(run, ids))
        return pruned

    def dead_tuples(self, is_dead: Callable[[HeapTuple], bool] | None = None, *,
                    dead_of: DeadOf | None = None) -> dict[Tid, tuple[int, int, int]]:
        """``prune``'s judgement alone: tid -> (xmin, xmax, flags) of every tuple it would
        condemn (vacuum with indexes removes their entries first, then ``prune_tids``)."""
        dead: dict[Tid, tuple[int, int, int]] = {}
        for run, idx, _by_page in self._judged_runs(is_dead, dead_of):
            first, pages, offnums = run.first_block, run.pages, run.offnums
            xmins, xmaxs, flags = run.xmins, run.xmaxs, run.flags
            for i in idx:
                dead[Tid(first + pages[i], offnums[i])] = (xmins[i], xmaxs[i], flags[i])
        return dead

    def prune_tids(self, dead: dict[Tid, tuple[int, int, int]]) -> int:
        """Prune the tuples of ``dead`` (``dead_tuples``' answer) whose header is still what
        it names, a page at a time in block order (``_prune_block``); how many went."""
        by_block: dict[int, list[Tid]] = {}
        for tid in dead:
            by_block.setdefault(tid.block, []).append(tid)
        pruned = 0
        for block in sorted(by_block):
            tids = by_block[block]
            heads = [dead[t] for t in tids]
            pruned += self._prune_block(block, [t.offnum for t in tids],
                                        ([h[0] for h in heads], [h[1] for h in heads],
                                         [h[2] for h in heads]))
        return pruned

    def _judged_runs(self, is_dead: Callable[[HeapTuple], bool] | None,
                     dead_of: DeadOf | None) -> Iterator[tuple[HeapRun, list, dict]]:
        """Vacuum's pass: each run of the heap with the indexes of its tuples to prune and
        those by page in the run; the free space of pages past the map noted on the way."""
        dead_of = _dead_judge(is_dead, dead_of)
        fsm = self.free_space_map()
        for run in self.scan_runs():
            idx = dead_of(run)
            by_page = _group_by_page(run, idx)
            self._note_free(run, fsm, by_page)
            yield run, idx, by_page

    def _note_free(self, run: HeapRun, fsm: FreeSpaceMap, changing: dict) -> None:
        """The free space of the run's pages past the free-space map (the relation grew
        while the map was built), except those about to be pruned (``_prune_block`` notes
        theirs)."""
        first = run.first_block
        if first + run.npages <= len(fsm):
            return
        for k, free in enumerate(_run_free(run.data, run.npages)):
            if first + k >= len(fsm) and k not in changing:
                self._fsm_set(first + k, free)

    def _prune_block(self, block: int, offnums: list[int],
                     expect: tuple[list[int], list[int], list[int]]) -> int:
        """Prune ``offnums`` of ``block`` whose tuple headers still read ``expect``
        (xmins, xmaxs, flags), held exclusively: one ``prune_items`` call, one PRUNE record
        when any went (the page put back from its pre-image if logging fails)."""
        bm = self.bufmgr
        buf = bm.read_buffer(self.rel, self.fork, block)
        try:
            bm.lock_exclusive(buf)
            try:
                page = bm.page(buf)
                pre = bytes(page)
                try:
                    gone = prune_items(page, offnums, expect)
                except BaseException:
                    page[:] = pre   # (the reference raised part way: nothing changed)
                    raise
                if gone:
                    payload = (_PRUNE.pack(len(gone), _page_flags(page))
                               + struct.pack(f"<{len(gone)}H", *gone))
                    self._log(0, XLOG_HEAP_PRUNE, payload, [(buf, pre, False)])
                free = page_free_space(page)
            finally:
                bm.unlock_exclusive(buf)
        finally:
            bm.unpin(buf)
        self._fsm_set(block, free)
        return len(gone)

    # --- reads -----------------------------------------------------------------------------
    def fetch(self, tid: Tid) -> HeapTuple | None:
        """The tuple at ``tid`` (a copy), or None when the slot is unused (or past the
        page's line pointers). ValueError for a block past the end of the relation."""
        tid = _check_tid(tid)
        self._check_block(tid)
        bm = self.bufmgr
        with bm.buffer_locked(self.rel, self.fork, tid.block) as buf:
            page = bm.page(buf)
            if page_is_new(page) or tid.offnum > page_item_count(page) \
                    or page_item_flags(page, tid.offnum) != LpFlag.NORMAL:
                return None
            item = page_get_item(page, tid.offnum)
            self._check_item(item, tid)
            xmin, xmax, flags, _n = _TUPLE_HEAD.unpack_from(item)
            return HeapTuple(tid, xmin, xmax, flags, bytes(item[TUPLE_HEADER_SIZE:]))

    def fetch_stream(self, tids: Iterable[Tid]) -> Iterator[tuple[Tid, HeapTuple | None]]:
        """(tid, the tuple at it or None) for each of ``tids`` in order (an index scan's
        heap fetches). When a block is not in shared buffers the pages are read through a
        read stream: the blocks of the tids ahead are in flight while earlier ones are
        returned; when every block is cached each is pinned directly (no look-ahead to
        gain, as a read stream's own fast path). Tids past the end are skipped."""
        bm = self.bufmgr
        n = self.nblocks()
        rel, fork = self.rel, self.fork
        tids = [t for t in tids if t.block < n]
        if all(bm.cached(rel, fork, t.block, 1) for t in tids):
            for tid in tids:
                with bm.buffer_locked(rel, fork, tid.block) as buf:
                    t = self._tuple_at(bm.page(buf), tid)
                yield tid, t
            return
        with ReadStream(bm, rel, fork, [(t.block, t) for t in tids],
                        per_buffer_data=True) as stream:
            for buf, tid in stream:
                with bm.locked(buf) as locked:
                    t = self._tuple_at(bm.page(locked), tid)
                yield tid, t

    def _tuple_at(self, page: memoryview, tid: Tid) -> HeapTuple | None:
        """A copy of the NORMAL tuple at ``tid`` of a (locked, verified) page, or None;
        the checks of ``run_items`` for that one line pointer (``slot_tuple``)."""
        got = slot_tuple(page, tid.offnum, self.rel, int(self.fork), tid.block)
        if got is None:
            return None
        xmin, xmax, flags, start, end = got
        return HeapTuple(tid, xmin, xmax, flags, bytes(page[start:end]))

    def scan(self) -> Iterator[HeapTuple]:
        """Every tuple on every page (block order, then offnum), whatever its xmin/xmax,
        read through a read stream; each page is unpinned before its tuples are yielded.
        Blocks added after the scan started are not visited. A full scan also builds the
        free-space map when there is none yet."""
        for run in self.scan_runs():
            yield from run.tuples()

    def scan_runs(self, snapshot: XidSnapshot | None = None, *,
                  run_pages: int = SCAN_RUN_PAGES, tids: bool = True,
                  headers: bool = True) -> Iterator[HeapRun]:
        """The scan a run of up to ``run_pages`` pages at a time: each run is pinned,
        copied under shared locks and unpinned with one call (``copy_release``), and its
        tuples found (with ``snapshot``: only those it sees) by one ``run_items`` call,
        before it is yielded. Same order, extent and free-space-map side effect as
        ``scan``. ``tids=False`` / ``headers=False`` leave the runs' pages and offnums /
        xmins, xmaxs and flags empty (less to build for a reader that needs only data)."""
        rel, fork = self.rel, int(self.fork)
        wanted = (tids, tids, True, True, headers, headers, headers)
        runs = self._copied_runs(run_pages, snapshot)
        try:
            reader = next(runs)
            for block, k, data in runs:
                if reader is None:
                    found = run_items_py(data, k, snapshot, rel, fork, block)
                else:
                    found = reader.items(data, k, rel, fork, block, wanted)
                yield HeapRun(block, k, data, *found)
        finally:
            runs.close()  # the read stream ends with the scan, also when left early

    def scan_rows(self, snapshot: XidSnapshot | None, codec: RowCodec, *,
                  run_pages: int = SCAN_RUN_PAGES, tids: bool = True) -> Iterator[RowRun]:
        """``scan_runs`` with each tuple's data decoded by ``codec``: the visible rows of a
        run of up to ``run_pages`` pages at a time, found, laid out and their text joined
        by one C call per run (``_RunReader.rows``; ``scan_rows_py`` without the C module),
        with the same errors, order, extent and free-space-map side effect."""
        rel, fork = self.rel, int(self.fork)
        runs = self._copied_runs(run_pages, snapshot, reuse=True)
        try:
            reader = next(runs)
            for block, k, data in runs:
                if reader is None:
                    pages, offnums, rows = scan_rows_py(data, k, snapshot, rel, fork, block,
                                                        codec)
                    if not tids:
                        pages = offnums = []
                    yield RowRun(block, k, pages, offnums, rows)
                    continue
                # (data is the reader's buffer: its parts are cffi buffers, slices bytes)
                for at in range(0, k, SCAN_DECODE_PAGES):
                    part = min(SCAN_DECODE_PAGES, k - at)
                    pages, offnums, rows = reader.rows(reader.part(at, part), part, rel, fork,
                                                       block + at, codec, tids)
                    yield RowRun(block + at, part, pages, offnums, rows)
        finally:
            runs.close()  # the read stream ends with the scan, also when left early

    def _copied_runs(self, run_pages: int, snapshot: XidSnapshot | None, *,
                     reuse: bool = False):
        """A scan's runs of pages as (first block, page count, copy of the pages), after
        first yielding the C reader for them (None without the C module). Each run is
        pinned, copied under the change counters or shared locks and unpinned with one
        call (``copy_release``); a full scan installs the free-space map at its end.
        ``reuse`` (with the C reader): every run is copied into the reader's one buffer
        (``_RunReader.pages_buffer``), valid until the next run is asked for; else each
        run is new bytes."""
        if not isinstance(run_pages, int) or run_pages < 1:
            raise ValueError(f"run_pages must be a positive int, got {run_pages!r}")
        bm = self.bufmgr
        n = self.nblocks()
        free = [] if self._fsm is None else None
        # (output arrays for the runs this scan can have: a small table's scan allocates
        # for its own pages, not for a whole run)
        reader = None if _lib is None else _RunReader(max(1, min(run_pages, n)), snapshot)
        yield reader
        out = reader.pages_buffer if reuse and reader is not None else None
        block = 0
        # A scan larger than the pool (it cannot stay cached anyway) reads through a
        # BULKREAD ring instead of evicting the whole pool. (PostgreSQL rings from a
        # quarter of the pool; a scan that fits is left to cache here, so a second scan
        # of it is all hits.)
        with ReadStream(bm, self.rel, self.fork, range(n),
                        bulk_read=n > bm.nbuffers) as stream:
            while bufs := stream.next_buffers(run_pages):
                k = len(bufs)
                data = bm.copy_release(bufs, out)
                if free is not None:
                    free += _run_free(data, k) if reader is None else reader.free(data, k)
                yield block, k, data
                block += k
        if free is not None:
            self._install_fsm(free)


# ------------------------------------------------------------------------------ prune
# A run's judge for vacuum: the indexes (ascending) of the run's tuples to prune.
DeadOf = Callable[[HeapRun], list[int]]
# Whether the C page prune is built (an older module lacks it).
C_PRUNE = _lib is not None and hasattr(_lib, "slk_heap_prune")


def _dead_judge(is_dead: Callable[[HeapTuple], bool] | None, dead_of: DeadOf | None) -> DeadOf:
    """``dead_of``, or a run judge asking ``is_dead`` of each of the run's tuples."""
    if (is_dead is None) == (dead_of is None):
        raise TypeError("prune needs exactly one of is_dead and dead_of")
    if dead_of is not None:
        return dead_of
    return lambda run: [i for i, t in enumerate(run.tuples()) if is_dead(t)]


def _group_by_page(run: HeapRun, idx: list[int]) -> dict[int, list[int]]:
    """The indexes ``idx`` of the run's tuples by their page in the run."""
    by_page: dict[int, list[int]] = {}
    pages = run.pages
    for i in idx:
        by_page.setdefault(pages[i], []).append(i)
    return by_page


def _expected(run: HeapRun, ids: list[int]) -> tuple[list[int], tuple[list[int], ...]]:
    """(offnums, (xmins, xmaxs, flags)) of the run's tuples ``ids``: ``_prune_block``'s."""
    return ([run.offnums[i] for i in ids],
            ([run.xmins[i] for i in ids], [run.xmaxs[i] for i in ids],
             [run.flags[i] for i in ids]))


def prune_items_py(page, offnums: Sequence[int],
                   expect: tuple[Sequence[int], Sequence[int], Sequence[int]] | None
                   ) -> list[int]:
    """Reference of ``prune_items``: each of ``offnums`` whose line pointer is NORMAL and
    whose tuple header reads (xmin, xmax, flags) of ``expect`` goes UNUSED, then the page
    is compacted if any went (``expect`` None, a PRUNE record's redo: every offnum goes and
    the page is compacted). The offnums that went, in input order."""
    if expect is None:
        for off in offnums:
            page_delete_item(page, off)
        page_compact(page)
        return list(offnums)
    count = page_item_count(page)
    gone = []
    for off, xmin, xmax, flags in zip(offnums, *expect, strict=True):
        if (off <= count and page_item_flags(page, off) == LpFlag.NORMAL
                and unpack_tuple_header(page_get_item(page, off))[:3] == (xmin, xmax, flags)):
            page_delete_item(page, off)
            gone.append(off)
    if gone:
        page_compact(page)
    return gone


def prune_items(page, offnums: Sequence[int],
                expect: tuple[Sequence[int], Sequence[int], Sequence[int]] | None
                ) -> list[int]:
    """``prune_items_py`` in one C call (``slk_heap_prune``); a page the C call will not
    change safely goes through the reference, which raises naming the flaw."""
    n = len(offnums)
    if not C_PRUNE or n == 0:
        return prune_items_py(page, offnums, expect)
    out = _ffi.new("uint16_t[]", n)
    null = _ffi.NULL
    xmins, xmaxs, flags = (null, null, null) if expect is None else expect
    got = _lib.slk_heap_prune(_ffi.from_buffer(page, require_writable=True), n, offnums,
                              xmins, xmaxs, flags, out)
    if got < 0:
        return prune_items_py(page, offnums, expect)
    return _ffi.unpack(out, got)


# ------------------------------------------------------------------------------- redo


def _redo_block(ctx, rr, index: int):
    """The page of block ``index`` if it needs redo, as (buf, page), else None."""
    action, buf = ctx.read_buffer_for_redo(rr, index)
    if buf is None:
        return None
    assert getattr(action, "name", "NEEDS_REDO") == "NEEDS_REDO", (action, buf)
    page = ctx.bufmgr.page(buf)
    if rr.record.blocks[index].will_init:
        init_page(page)
    return buf, page


def _redo_add(page, item, offnum: int) -> None:
    got = page_add_item(page, item, offnum)
    assert got == offnum, (got, offnum)


# Whether INSERT_MULTI redo adds its items in C (a module built before the helper lacks it).
C_REDO_MULTI = _lib is not None and hasattr(_lib, "slk_heap_redo_multi")


def redo_insert_multi(page, payload) -> None:
    """Add the items of an INSERT_MULTI payload to ``page`` at their offnums: the run of
    items the C helper (slk_heap_redo_multi) accepts in one call, the rest one at a time
    (``redo_insert_multi_py``, also the whole job without the C module)."""
    count = _MULTI.unpack_from(payload)[0]
    if not C_REDO_MULTI:
        redo_insert_multi_py(page, payload, _MULTI.size, count)
        return
    pos = _ffi.new("uint32_t *")
    done = _lib.slk_heap_redo_multi(_ffi.from_buffer(page), _ffi.from_buffer(payload),
                                    len(payload), pos)
    if done == count:
        assert pos[0] == len(payload), (pos[0], len(payload))
        return
    if done < 0:  # no count in the payload: the reference names the problem
        done, pos[0] = 0, _MULTI.size
    redo_insert_multi_py(page, payload, pos[0], count - done)


def redo_insert_multi_py(page, payload, pos: int, count: int) -> None:
    """The reference: ``count`` items of an INSERT_MULTI payload from offset ``pos`` added
    with page_add_item, which names what is wrong with one that cannot be added."""
    for _ in range(count):
        offnum, length = _MULTI_ITEM.unpack_from(payload, pos)
        pos += _MULTI_ITEM.size
        _redo_add(page, payload[pos:pos + length], offnum)
        pos += length
    assert pos == len(payload), (pos, len(payload))


def heap_redo(ctx, rr) -> None:
    """Replay one RM_HEAP record (see the module docstring for the layouts)."""
    rec = rr.record
    op = rec.info & XLOG_HEAP_OPMASK
    payload = rec.payload
    if op == XLOG_HEAP_INSERT:
        offnum, pflags = _INSERT.unpack_from(payload)
        got = _redo_block(ctx, rr, 0)
        if got is not None:
            buf, page = got
            _redo_add(page, payload[_INSERT.size:], offnum)
            page_set_flags(page, pflags)
            ctx.finish_redo_buffer(rr, buf)
    elif op == XLOG_HEAP_INSERT_MULTI:
        count, pflags = _MULTI.unpack_from(payload)
        got = _redo_block(ctx, rr, 0)
        if got is not None:
            buf, page = got
            redo_insert_multi(page, payload)
            page_set_flags(page, pflags)
            ctx.finish_redo_buffer(rr, buf)
    elif op == XLOG_HEAP_DELETE:
        offnum, xmax, tflags = _DELETE.unpack_from(payload)
        got = _redo_block(ctx, rr, 0)
        if got is not None:
            buf, page = got
            _TUPLE_XMAX_FLAGS.pack_into(page_get_item(page, offnum), 8, xmax, tflags)
            ctx.finish_redo_buffer(rr, buf)
    elif op == XLOG_HEAP_UPDATE:
        old_off, new_off, xmax, old_tflags, pflags = _UPDATE.unpack_from(payload)
        item = payload[_UPDATE.size:]
        same_page = len(rec.blocks) == 1
        # Old page first when it is a separate block: the order the change was made in
        # does not matter for the bytes (disjoint regions), only the final page flags.
        if not same_page:
            got = _redo_block(ctx, rr, 1)
            if got is not None:
                buf, page = got
                _TUPLE_XMAX_FLAGS.pack_into(page_get_item(page, old_off), 8, xmax, old_tflags)
                ctx.finish_redo_buffer(rr, buf)
        got = _redo_block(ctx, rr, 0)
        if got is not None:
            buf, page = got
            if same_page:
                _TUPLE_XMAX_FLAGS.pack_into(page_get_item(page, old_off), 8, xmax, old_tflags)
            _redo_add(page, item, new_off)
            page_set_flags(page, pflags)
            ctx.finish_redo_buffer(rr, buf)
    elif op == XLOG_HEAP_PRUNE:
        count, pflags = _PRUNE.unpack_from(payload)
        offnums = struct.unpack_from(f"<{count}H", payload, _PRUNE.size)
        got = _redo_block(ctx, rr, 0)
        if got is not None:
            buf, page = got
            prune_items(page, offnums, None)
            page_set_flags(page, pflags)
            ctx.finish_redo_buffer(rr, buf)
    else:
        raise AssertionError(f"unknown heap record info {rec.info:#04x}")


def heap_describe(rec) -> str:
    """One line for waldump, e.g. ``INSERT rel 16384 blk 3 off 7 len 40 xmin 12``."""
    op = rec.info & XLOG_HEAP_OPMASK
    name = _OP_NAMES.get(op, f"UNKNOWN({rec.info:#04x})")
    p = rec.payload
    blocks = rec.blocks
    where = (f"rel {blocks[0].rel} blk {blocks[0].block}" if blocks else "no block")
    init = " (init page)" if blocks and blocks[0].will_init else ""
    try:
        if op == XLOG_HEAP_INSERT:
            off, _ = _INSERT.unpack_from(p)
            xmin = struct.unpack_from("<Q", p, _INSERT.size)[0]
            return (f"{name} {where} off {off} len {len(p) - _INSERT.size - TUPLE_HEADER_SIZE} "
                    f"xmin {xmin}{init}")
        if op == XLOG_HEAP_INSERT_MULTI:
            count, _ = _MULTI.unpack_from(p)
            return f"{name} {where} {count} tuples{init}"
        if op == XLOG_HEAP_DELETE:
            off, xmax, _ = _DELETE.unpack_from(p)
            return f"{name} {where} off {off} xmax {xmax}"
        if op == XLOG_HEAP_UPDATE:
            old_off, new_off, xmax, _, _ = _UPDATE.unpack_from(p)
            if len(blocks) == 1:
                return f"{name} {where} off {old_off} -> off {new_off} (same page) xmax {xmax}"
            return (f"{name} rel {blocks[1].rel} blk {blocks[1].block} off {old_off} -> "
                    f"blk {blocks[0].block} off {new_off}{init} xmax {xmax}")
        if op == XLOG_HEAP_PRUNE:
            count, _ = _PRUNE.unpack_from(p)
            offs = struct.unpack_from(f"<{count}H", p, _PRUNE.size)
            shown = ",".join(map(str, offs[:8])) + ("..." if count > 8 else "")
            return f"{name} {where} {count} unused ({shown})"
    except struct.error:
        return f"{name} {where} (malformed payload of {len(p)} bytes)"
    return f"{name} {where}"


HEAP_RMGR = ResourceManager(RM_HEAP, "heap", heap_redo, heap_describe)  # engine/rmgrlist.py

assert MAX_TUPLE_DATA_BYTES + TUPLE_HEADER_SIZE + LINE_POINTER_SIZE + HEADER_SIZE <= BLCKSZ
