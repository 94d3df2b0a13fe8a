"""Slonik's asynchronous I/O subsystem, after PostgreSQL 18's AIO.

Module map:
- errors.py           the error hierarchy of every layer (kept at the bottom)
- osfile.py           the one OS boundary: every read/write/sync/create/rename/unlink
- memory.py           page-aligned (huge-page advised) I/O memory
- method_io_uring.py  the io_uring method over the cffi binding (_uring_build.py builds it)
"""

from aio.errors import (
    ConflictError,
    DataCorruptionError,
    DiskFullError,
    IOFailure,
    IoMethodUnavailable,
    SlonikError,
    StorageError,
    WalError,
)
from aio.method_io_uring import io_uring_available

__all__ = [
    "ConflictError",
    "DataCorruptionError",
    "DiskFullError",
    "IOFailure",
    "IoMethodUnavailable",
    "SlonikError",
    "StorageError",
    "WalError",
    "io_uring_available",
]
