"""The C record writer for ``wal.xlog.Wal`` (its ``record_writer_for`` argument).

``C_RECORD_WRITER_FOR`` is None when the optional cffi module (storage/_pagecheck_build.py,
block "wal record build") is not built; ``Wal`` then encodes every record with
``wal.record.encode_fields`` and copies it in. It lives in the engine because wal/ may not
import storage/ (the C module's home).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

try:  # the optional C helpers (storage/_pagecheck_build.py); pure Python without them
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    _lib.slk_pagecheck_init()
except ImportError:  # not built (no C compiler at install time)
    _ffi = _lib = None

__all__ = ["C_RECORD_WRITER_FOR", "c_record_writer_for"]


def c_record_writer_for(ring) -> Callable[..., int]:
    """The writer of records into the WAL buffers ``ring`` (a writable buffer that outlives
    the writer, which keeps a pointer to it): ``writer(at, xid, prev_lsn, rmgr, info,
    block_headers, nblocks, payload, len(payload))`` writes at byte ``at`` of ``ring`` what
    ``encode_fields`` would return for those fields and image-less blocks whose
    ``plain_block_header``s are joined in ``block_headers``, and returns its length.
    OverflowError/TypeError (nothing written) for a field it cannot take."""
    return functools.partial(_lib.slk_wal_build, _ffi.from_buffer(ring))


C_RECORD_WRITER_FOR = c_record_writer_for if _lib is not None else None
