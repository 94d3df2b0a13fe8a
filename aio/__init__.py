"""Slonik's asynchronous I/O subsystem, after PostgreSQL 18's AIO (see README.md).

Module map (imports point down this list's dependencies only; no cycles):
- errors.py           the root SlonikError and this layer's I/O errors
- osfile.py           the one OS boundary: every read/write/sync/create/rename/unlink
- transfer.py         the one short-transfer policy (continue, full disk, end of file)
- ids.py              the one table of target ids and callback ids (aio.h)
- handle.py           handle states and their legal transitions, results, wait references
- callbacks.py        IoCallbacks (a callback id's phases) and the phase runners
- method.py           the io method interface: IoMethod, IssuerContext, execute
- method_sync.py      inline execution: the reference method
- method_worker.py    I/O worker threads sharing a bounded queue
- method_io_uring.py  io_uring over the cffi binding (_uring_build.py builds it);
                      io_uring_available() tells whether a ring can be set up here
- core.py             Aio: issuer contexts, acquire/stage/submit/wait, batch, stats,
                      the method table (IO_METHOD_TABLE)
- memory.py           page-aligned (huge-page advised) I/O memory

This package re-exports only the errors; import everything else from its module.
"""

from slonik.aio.errors import (
    DiskFullError,
    IOFailure,
    IoMethodUnavailable,
    SlonikError,
    StorageError,
)

__all__ = [
    "DiskFullError",
    "IOFailure",
    "IoMethodUnavailable",
    "SlonikError",
    "StorageError",
]
