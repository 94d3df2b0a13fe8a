"""Runs of leaves read in one C call: a forward ordered scan's look at several leaves.

``extract_run`` takes copies of consecutive leaves of a scan (a read-stream run, copied
out of the pool) and gives the (key, value) pairs the snapshot sees in ``[start, stop)``
of as many of them as form an unbroken right-link chain of live leaves with every value
inline, in one C call (``slk_bt_extract_run`` in ``storage/_pagecheck_build.py``), with no
Python step per leaf or per entry: the keys and values are copied back to back and cut by
one struct call; when every key has one length and every value another (the common case)
the pairs come from ``Struct.iter_unpack`` over the bytes, lazily, each pair a fresh tuple.
A page it does not take (DELETED, not linked from the page before, an out-of-line value,
malformed) is left to the caller's one-page path, which judges it (and names a flaw).

``extract_run_py`` is the reference (``tests/storage/test_btree_scanrun.py`` compares the
two on random runs).

Invariants:
1. The pages taken are a prefix of the run; each is a live leaf whose block is the
   right-link of the one before (the first: ``expect``, or any when ``expect`` is None).
2. The run ends after a page that ends the scan (``done``: an entry or the high key
   reaches ``stop``; or its right-link is ``P_NONE``), or before a page not taken.
3. Pairs are copies: nothing refers to the pages once ``extract_run`` returns.
"""

from __future__ import annotations

import itertools
import operator
import struct
import threading
from collections.abc import Iterable, Sequence

from slonik.engine.access.btree_page import (
    BTP_DELETED,
    BTP_LEAF,
    BTP_VALID_FLAGS,
    ENTRY_OVERFLOW,
    EXTRACT_DONE,
    LEAF_HEADER_SIZE,
    P_NONE,
    BTreePageError,
    bt_special,
    extract_leaf_py,
    gather_leaf_py,
)
from slonik.storage.page import BLCKSZ, HEADER_SIZE, LINE_POINTER_SIZE

try:
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_bt_extract_run"):  # an older build of the module
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None

__all__ = ["RUN_PAGES_MAX", "C_EXTRACT_RUN", "extract_run", "extract_run_py"]

C_EXTRACT_RUN = _lib is not None
# Leaves per call: a read stream's combined read (io_combine_limit's default of 16 blocks).
RUN_PAGES_MAX = 16
_RUN_UNIFORM = 8          # slk_bt_extract_run's flag: one key length, one value length
# Entries a well-formed leaf can hold (an empty key and value still take a header and a
# line pointer; the special space takes 16 bytes), and the format characters they need
# (10 an entry at most): a page with more (only a malformed one) is left to the caller.
_ENTRIES_PER_PAGE_MAX = (BLCKSZ - HEADER_SIZE - 16) // (LEAF_HEADER_SIZE + LINE_POINTER_SIZE)
_FMT_BYTES_PER_PAGE = 10 * _ENTRIES_PER_PAGE_MAX + 1
_STRUCTS_MAX = 64         # cached Struct objects of (key length, value length)
_FIRST = operator.itemgetter(0)
_tls = threading.local()
_structs: dict[tuple[int, int, bool], struct.Struct] = {}

RunResult = tuple[int, bool, int, int, Iterable[tuple]]


def extract_run_py(pages, blocks: Sequence[int], expect: int | None, start: bytes | None,
                   stop: bytes | None, snap_xmax: int, own: int, excluded: Sequence[int],
                   values: bool) -> tuple[int, bool, int, int, list[tuple]]:
    """Reference: (pages taken, done, the last one's right-link (-1: none taken), pairs
    count, pairs) of the run ``pages`` (``len(blocks)`` page copies back to back) as the
    module docstring says; a pair is (key, value), or (key, None) without ``values``."""
    data = bytes(pages)
    pairs: list[tuple] = []
    taken, done, nxt = 0, False, -1
    want = expect
    for k, block in enumerate(blocks):
        page = data[k * BLCKSZ:(k + 1) * BLCKSZ]
        if want is not None and block != want:
            break
        try:
            special = bt_special(page)
            if not special.flags & BTP_LEAF or special.flags & BTP_DELETED or \
                    special.flags & ~BTP_VALID_FLAGS:
                break
            flags, flat = extract_leaf_py(page, start, stop, snap_xmax, own, excluded)
            if any(f & ENTRY_OVERFLOW for f in flat[3::4]):
                break
            cut = gather_leaf_py(page, flat, values)
        except (BTreePageError, ValueError, struct.error):
            break
        it = iter(cut)
        pairs += zip(it, it, strict=True) if values else zip(cut, itertools.repeat(None))
        taken += 1
        nxt = want = special.next
        if flags & EXTRACT_DONE or special.next == P_NONE:
            done = bool(flags & EXTRACT_DONE)
            break
    return taken, done, nxt, len(pairs), pairs


def _arrays(npages: int):
    """This thread's arrays for runs of up to ``npages`` pages (grown on demand)."""
    tls = _tls
    if getattr(tls, "npages", 0) < npages:
        tls.npages = npages
        tls.blocks = _ffi.new("uint32_t[]", npages)
        tls.ents = _ffi.new("uint32_t[]", 4 * (BLCKSZ // LINE_POINTER_SIZE))
        tls.dst_cap = npages * BLCKSZ
        tls.dst = _ffi.new("uint8_t[]", tls.dst_cap)
        tls.fmt_cap = npages * _FMT_BYTES_PER_PAGE
        tls.fmt = _ffi.new("char[]", tls.fmt_cap)
        tls.res = _ffi.new("int64_t[]", 6)
        tls.excluded_of = None
        tls.excluded = _ffi.NULL
    return tls


def _struct(klen: int, vlen: int, values: bool) -> struct.Struct:
    """The Struct of one entry: key and value (``values``), or key alone."""
    got = _structs.get((klen, vlen, values))
    if got is None:
        if len(_structs) >= _STRUCTS_MAX:
            _structs.clear()
        got = _structs[(klen, vlen, values)] = struct.Struct(
            f"{klen}s{vlen}s" if values else f"{klen}s")
    return got


def extract_run(pages, first: int, blocks: Sequence[int], expect: int | None,
                start: bytes | None, stop: bytes | None, snap_xmax: int, own: int,
                excluded: Sequence[int], values: bool) -> RunResult:
    """``extract_run_py`` of pages ``first`` .. ``len(blocks) - 1`` of ``pages`` (a buffer
    of ``len(blocks)`` page copies, or a cffi ``uint8_t *`` to them), in one C call when
    the helper module is built. The pairs are an iterable of fresh tuples (lazy over a
    private copy of the bytes when every key, and every value, has one length)."""
    n = len(blocks) - first
    if _lib is None:
        view = memoryview(pages)[first * BLCKSZ:] if first else pages
        return extract_run_py(view, blocks[first:], expect, start, stop, snap_xmax, own,
                              excluded, values)
    tls = _arrays(len(blocks))
    if tls.excluded_of is not excluded:
        tls.excluded = _ffi.new("uint64_t[]", list(excluded)) if excluded else _ffi.NULL
        tls.excluded_of = excluded
    cblocks = tls.blocks
    cblocks[0:n] = blocks[first:] if first else blocks
    cpages = pages if isinstance(pages, _ffi.CData) else _ffi.from_buffer("uint8_t[]", pages)
    res = tls.res
    count = _lib.slk_bt_extract_run(
        cpages + first * BLCKSZ, n, cblocks, -1 if expect is None else expect,
        _ffi.NULL if start is None else start, -1 if start is None else len(start),
        _ffi.NULL if stop is None else stop, -1 if stop is None else len(stop),
        snap_xmax, own, tls.excluded, len(excluded), 1 if values else 0, tls.ents, tls.dst,
        tls.dst_cap, tls.fmt, tls.fmt_cap, res)
    taken, nbytes, flags, klen, vlen, nxt = res[0], res[1], res[2], res[3], res[4], res[5]
    done = bool(flags & EXTRACT_DONE)
    if not count:
        return taken, done, nxt, 0, ()
    if flags & _RUN_UNIFORM and klen + vlen:
        pairs = _struct(klen, vlen, values).iter_unpack(_ffi.buffer(tls.dst, nbytes)[:])
        if not values:
            pairs = zip(map(_FIRST, pairs), itertools.repeat(None))
        return taken, done, nxt, count, pairs
    cut = struct.unpack_from(_ffi.string(tls.fmt), _ffi.buffer(tls.dst, nbytes))
    if values:
        it = iter(cut)
        return taken, done, nxt, count, zip(it, it, strict=True)
    return taken, done, nxt, count, zip(cut, itertools.repeat(None))
