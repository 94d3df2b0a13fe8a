"""The C batch checker of WAL records for ``wal.reader.WalReader`` (recovery's scanner).

``C_SCANNER`` is ``slk_wal_scan`` of the optional cffi module (storage/_pagecheck_build.py,
block "wal decode") behind ``wal.reader.scan_records_py``'s contract, or None when the
module is not built: the reader then checks and decodes record at a time. It lives in the
engine because wal/ may not import storage/ (the C module's home).
"""

from __future__ import annotations

from slonik.wal.reader import RecordScanner, ScanResult

try:  # the optional C helpers (storage/_pagecheck_build.py); pure Python without them
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    _lib.slk_pagecheck_init()
except ImportError:  # not built (no C compiler at install time)
    _ffi = _lib = None

__all__ = ["C_SCANNER", "scan_records_c"]


def scan_records_c(chunk, chunk_lsn: int, pos: int, wal_segment_size: int,
                   prev: int | None, cap: int) -> ScanResult:
    """``scan_records_py`` in one C call (same arguments, same result)."""
    n_max = min(cap, (len(chunk) - pos) // 32 + 1)
    at = _ffi.new("uint32_t[]", n_max)
    length = _ffi.new("uint32_t[]", n_max)
    end = _ffi.new("uint32_t[]", n_max)
    gathered = bytearray(len(chunk))
    stop = _ffi.new("uint32_t *")
    n = _lib.slk_wal_scan(_ffi.from_buffer(chunk), len(chunk), chunk_lsn, pos,
                          wal_segment_size, 0 if prev is None else prev, prev is not None,
                          at, length, end, _ffi.from_buffer(gathered), n_max, stop)
    if not n:
        return [], [], [], stop[0], gathered
    return (memoryview(_ffi.buffer(at, 4 * n)).cast("I").tolist(),
            memoryview(_ffi.buffer(length, 4 * n)).cast("I").tolist(),
            memoryview(_ffi.buffer(end, 4 * n)).cast("I").tolist(), stop[0], gathered)


C_SCANNER: RecordScanner | None = scan_records_c if _lib is not None else None
