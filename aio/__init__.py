"""Slonik's asynchronous I/O subsystem, after PostgreSQL 18's AIO.

Module map:
- errors.py           the root SlonikError and this layer's I/O errors
- osfile.py           the one OS boundary: every read/write/sync/create/rename/unlink
- memory.py           page-aligned (huge-page advised) I/O memory
- method_io_uring.py  the io_uring method over the cffi binding (_uring_build.py builds it)
"""

from slonik.aio.errors import (
    DiskFullError,
    IOFailure,
    IoMethodUnavailable,
    SlonikError,
    StorageError,
)
from slonik.aio.method_io_uring import io_uring_available

__all__ = [
    "DiskFullError",
    "IOFailure",
    "IoMethodUnavailable",
    "SlonikError",
    "StorageError",
    "io_uring_available",
]
