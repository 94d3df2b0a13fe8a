"""The C batch checker of WAL records for ``wal.reader.WalReader`` (recovery's scanner),
and the C batch reader of the fields recovery's redo needs.

``C_SCANNER`` is ``slk_wal_scan`` of the optional cffi module (storage/_pagecheck_build.py,
block "wal decode") behind ``wal.reader.scan_records_py``'s contract, or None when the
module is not built: the reader then checks and decodes record at a time. It lives in the
engine because wal/ may not import storage/ (the C module's home).

``wal_fields(batch, fast_rmgr)`` reads a ``RawBatch``'s records in one C call
(``slk_wal_fields``): every record's xid, and for each "fast" record (of ``fast_rmgr``, one
block reference without an image, not will_init: most of a B+tree WAL) its block, its end
LSN and its payload, copied into one arena in slk_bt_redo_run's layout. Recovery redoes
those without a Python object per record. ``wal_fields_py`` is the reference (decoding
each record), and what ``wal_fields`` is without the C module.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from slonik.wal.reader import RawBatch, RecordScanner, ScanResult

try:  # the optional C helpers (storage/_pagecheck_build.py); pure Python without them
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    _lib.slk_pagecheck_init()
except ImportError:  # not built (no C compiler at install time)
    _ffi = _lib = None

__all__ = ["C_SCANNER", "C_FIELDS", "scan_records_c", "WalFields", "wal_fields",
           "wal_fields_c", "wal_fields_py", "new_buffer_ids"]


def scan_records_c(chunk, chunk_lsn: int, pos: int, wal_segment_size: int,
                   prev: int | None, cap: int) -> ScanResult:
    """``scan_records_py`` in one C call (same arguments, same result)."""
    n_max = min(cap, (len(chunk) - pos) // 32 + 1)
    # None of these is cleared: only what the C call writes is ever read (the first n
    # entries of the three arrays, each 32 KiB for a whole chunk; the records it copies
    # into ``gathered``, where a bytearray would zero 256 KiB a call; a fresh mapping is
    # not even touched until then).
    at = _new_raw("uint32_t[]", n_max)
    length = _new_raw("uint32_t[]", n_max)
    end = _new_raw("uint32_t[]", n_max)
    gathered = _new_raw("uint8_t[]", len(chunk))
    stop = _ffi.new("uint32_t *")
    n = _lib.slk_wal_scan(_ffi.from_buffer(chunk), len(chunk), chunk_lsn, pos,
                          wal_segment_size, 0 if prev is None else prev, prev is not None,
                          at, length, end, gathered, n_max, stop)
    if not n:
        return [], [], [], stop[0], None
    return (memoryview(_ffi.buffer(at, 4 * n)).cast("I").tolist(),
            memoryview(_ffi.buffer(length, 4 * n)).cast("I").tolist(),
            memoryview(_ffi.buffer(end, 4 * n)).cast("I").tolist(), stop[0],
            _ffi.buffer(gathered))


C_SCANNER: RecordScanner | None = scan_records_c if _lib is not None else None


class WalFields(NamedTuple):
    """What ``wal_fields`` reads of a batch. ``xids``: per record. Per fast record, in order:
    ``fast`` (its index in the batch), ``rels``, ``blocks``, ``forks``, ``end_lsns`` (a list,
    or the C array slk_bt_redo_run reads), its payload at ``arena[offs[k]:offs[k + 1]]``
    (``arena``: bytes, or a C array; ``offs``: a list, or a C array)."""

    xids: list[int]
    fast: list[int]
    rels: list[int]
    blocks: list[int]
    forks: list[int]
    end_lsns: Any
    arena: Any
    offs: Any


def wal_fields_py(batch: RawBatch, fast_rmgr: int) -> WalFields:
    """The reference of ``wal_fields``: each record decoded (module doc)."""
    xids: list[int] = []
    fast: list[int] = []
    rels: list[int] = []
    blocks: list[int] = []
    forks: list[int] = []
    ends: list[int] = []
    parts: list[bytes] = []
    offs = [0]
    for i in range(len(batch.ats)):
        rr = batch.record(i)
        rec = rr.record
        xids.append(rec.xid)
        if rec.rmgr != fast_rmgr or len(rec.blocks) != 1:
            continue
        ref = rec.blocks[0]
        if ref.image is not None or ref.will_init:
            continue
        fast.append(i)
        rels.append(ref.rel)
        blocks.append(ref.block)
        forks.append(ref.fork)
        ends.append(rr.end_lsn)
        parts.append(rec.payload)
        offs.append(offs[-1] + len(rec.payload))
    return WalFields(xids, fast, rels, blocks, forks, ends, b"".join(parts), offs)


def _u32_list(arr, n: int) -> list[int]:
    return memoryview(_ffi.buffer(arr, 4 * n)).cast("I").tolist() if n else []


def wal_fields_c(batch: RawBatch, fast_rmgr: int) -> WalFields:
    """``wal_fields_py`` in one C call: ``end_lsns``, ``arena`` and ``offs`` are C arrays."""
    n = len(batch.ats)
    gathered = batch.gathered if batch.gathered is not None else batch.chunk
    xids = _ffi.new("uint64_t[]", n)
    fast = _ffi.new("uint32_t[]", n)
    rels = _ffi.new("uint32_t[]", n)
    blocks = _ffi.new("uint32_t[]", n)
    forks = _ffi.new("uint8_t[]", n)
    ends = _ffi.new("uint64_t[]", n)
    arena = _new_raw("uint8_t[]", max(1, sum(batch.lens)))
    offs = _ffi.new("uint32_t[]", n + 1)
    k = _lib.slk_wal_fields(_ffi.from_buffer(batch.chunk), _ffi.from_buffer(gathered),
                            batch.base, _ffi.new("uint32_t[]", batch.ats),
                            _ffi.new("uint32_t[]", batch.lens),
                            _ffi.new("uint32_t[]", batch.ends), n, fast_rmgr, xids, fast,
                            rels, blocks, forks, ends, arena, offs)
    return WalFields(memoryview(_ffi.buffer(xids, 8 * n)).cast("Q").tolist() if n else [],
                     _u32_list(fast, k), _u32_list(rels, k), _u32_list(blocks, k),
                     list(bytes(_ffi.buffer(forks, k))), ends, arena, offs)


C_FIELDS = _lib is not None      # wal_fields is the C one
if _lib is not None:
    _new_raw = _ffi.new_allocator(should_clear_after_alloc=False)
    wal_fields = wal_fields_c
else:
    wal_fields = wal_fields_py


def new_buffer_ids(n: int):
    """A C ``int32_t[n]`` (at least 1) for the buffer ids of a batch's fast records."""
    return _ffi.new("int32_t[]", max(1, n))
