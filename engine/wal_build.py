"""The C record writers and the C group commit for ``wal.xlog.Wal`` (its
``record_writer_for`` and ``group_flush_for`` arguments).

``C_RECORD_WRITER_FOR`` and ``C_GROUP_FLUSH_FOR`` are None when the optional cffi module
(storage/_pagecheck_build.py, blocks "wal record build" and "wal group flush") is not
built; ``Wal`` then encodes every record with ``wal.record.encode_fields``, copies it in
with ``wal.xlog.copy_in`` and flushes with its Python leader/waiter queue. It lives in
the engine because wal/ may not import storage/ (the C module's home).
"""

from __future__ import annotations

import functools
import os

from slonik.engine.access.btree_leafrun import PUT_NEW_ACTION_MAX_BYTES
from slonik.storage.hotlib import hot_for
from slonik.storage.page import BLCKSZ
from slonik.wal.walpage import WAL_PAGE_SIZE
from slonik.wal.xlog import GF_FLUSHED, GroupFlush, RecordWriters

try:  # the optional C helpers (storage/_pagecheck_build.py); pure Python without them
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    _lib.slk_pagecheck_init()
except ImportError:  # not built (no C compiler at install time)
    _ffi = _lib = None
_hot = hot_for(_lib)   # its page-sized helpers, the GIL kept (storage/hotlib.py)

__all__ = ["C_GROUP_FLUSH_FOR", "C_RECORD_WRITER_FOR", "c_group_flush_for",
           "c_record_writer_for", "thread_bound_by_placement"]


def c_record_writer_for(ring, npages: int, wal_segment_size: int) -> RecordWriters:
    """The writers of image-less records into the WAL buffers ``ring`` (a writable buffer
    of ``npages`` WAL pages that outlives the writers, which keep a pointer to it) of a
    stream with segments of ``wal_segment_size`` bytes; see ``RecordWriters``.

    ``in_page(at, xid, prev_lsn, rmgr, info, block_headers, nblocks, payload,
    len(payload))`` writes at byte ``at`` of ``ring`` what ``encode_fields`` would return
    for those fields and blocks whose ``plain_block_header``s are joined in
    ``block_headers``, and returns its length. ``crossing(cur, ...same fields)`` writes that
    record at stream position ``cur`` across as many pages as it takes, page headers
    included, as ``wal.xlog.copy_in`` does, and returns the position after it.
    OverflowError/TypeError (nothing written) for a field they cannot take."""
    ptr = _ring_pointer(ring, npages)
    return RecordWriters(functools.partial(_hot.slk_wal_build, ptr),
                         functools.partial(_hot.slk_wal_build_span, ptr, npages,
                                           wal_segment_size),
                         _put_pair_writer(ptr))


def _put_pair_writer(ring_ptr):
    """``RecordWriters.put_pair`` writing into the WAL buffers at ``ring_ptr``: one C call
    (``slk_bt_put_logged``) with its scratch bound (the action, the page's bytes before
    it; the partial keeps them alive), used under the Wal's insert lock only. None with a
    C module built before it."""
    if not hasattr(_hot, "slk_bt_put_logged"):
        return None
    return functools.partial(_hot.slk_bt_put_logged,
                             _ffi.new("uint8_t[]", PUT_NEW_ACTION_MAX_BYTES),
                             PUT_NEW_ACTION_MAX_BYTES, _ffi.new("uint8_t[]", BLCKSZ), ring_ptr)


C_RECORD_WRITER_FOR = c_record_writer_for if _lib is not None else None


def _ring_pointer(ring, npages: int):
    """A C pointer to the WAL buffers ``ring``, checked to hold ``npages`` pages."""
    if npages < 1 or len(ring) < npages * WAL_PAGE_SIZE:
        raise ValueError(f"WAL buffers of {len(ring)} bytes do not hold {npages} pages "
                         f"of {WAL_PAGE_SIZE} bytes")
    return _ffi.from_buffer(ring)


def c_group_flush_for(ring, npages: int, wal_segment_size: int, flush_lsn: int,
                      o_dsync: bool) -> GroupFlush:
    """The C group commit (``GroupFlush``) over the WAL buffers ``ring`` of ``npages``
    pages (kept alive by the caller, as for the record writers) of a stream with segments
    of ``wal_segment_size`` bytes, durable up to ``flush_lsn``; ``o_dsync``: segments are
    opened O_DIRECT|O_DSYNC, a write is durable when it returns (no fdatasync)."""
    raw = _lib.slk_wf_new(_ring_pointer(ring, npages), npages, wal_segment_size, flush_lsn,
                          int(bool(o_dsync)))
    if raw == _ffi.NULL:
        raise MemoryError("could not allocate the WAL group commit state")
    st = _ffi.gc(raw, _lib.slk_wf_free)   # freed with the last reference (no call in C)

    def stats() -> list[int]:
        out = _ffi.new("int64_t[]", GF_FLUSHED + 1)
        _lib.slk_wf_stats(st, out)
        return list(out)

    return GroupFlush(functools.partial(_lib.slk_wf_flush, st),
                      functools.partial(_lib.slk_wf_done, st),
                      functools.partial(_lib.slk_wf_close, st),
                      functools.partial(_lib.slk_wf_set_delay, st),
                      stats, functools.partial(_ffi.new, "uint64_t[6]"),
                      functools.partial(_lib.slk_wf_set_placement, st))


# (None with a build of the module from before the block, as the other C helpers)
C_GROUP_FLUSH_FOR = c_group_flush_for if _lib is not None and hasattr(_lib, "slk_wf_new") \
    and hasattr(_lib, "slk_wf_set_placement") else None

if C_GROUP_FLUSH_FOR is not None:
    # a forked child's forking thread gets back the mask commit placement took from it
    # (a child of a bound thread would otherwise run on one CPU, as would its children)
    os.register_at_fork(after_in_child=_lib.slk_wf_placement_forked)


def thread_bound_by_placement() -> bool:
    """Whether commit placement has bound the calling thread to its CPU."""
    return C_GROUP_FLUSH_FOR is not None and bool(_lib.slk_wf_pinned())
