"""The root of Slonik's errors and the I/O errors of this layer.

Each layer defines its own errors under this root (one module per layer):

SlonikError                       (here)
├── StorageError                  (here) environment and data failures below the engine
│   ├── IOFailure (+OSError)      (here) a read, write or sync the OS refused; keeps errno
│   │   └── DiskFullError         (here) ENOSPC, or a short write that made no progress
│   ├── DataCorruptionError       (storage/errors.py) a page that fails verification
│   └── WalError                  (wal/errors.py) WAL cannot be written, synced or read
├── IoMethodUnavailable           (here) an io_method that cannot run here (with the reason)
└── ConflictError, ...            (engine/errors.py) transaction-level errors

Caller misuse is TypeError/ValueError naming the argument; broken invariants are
AssertionError and are never caught.
"""

from __future__ import annotations

import errno as _errno
import os


class SlonikError(Exception):
    """Root of every error Slonik raises on purpose."""


class StorageError(SlonikError):
    """A failure of the environment or the data below the engine."""


class IOFailure(StorageError, OSError):
    """An I/O the OS refused. ``errno`` is kept; ``str()`` names what was being done."""

    def __init__(self, err: int, what: str) -> None:
        OSError.__init__(self, err, f"{what}: {os.strerror(err) if err else 'failed'}")
        self.what = what

    def __str__(self) -> str:
        return self.strerror or self.what


class DiskFullError(IOFailure):
    """ENOSPC, or a write that transferred nothing (counted as a full disk)."""

    def __init__(self, what: str, err: int = _errno.ENOSPC) -> None:
        super().__init__(err, what)


class IoMethodUnavailable(SlonikError):
    """The requested io_method cannot run on this machine; the message says why."""


def io_error(err: int | None, what: str) -> IOFailure:
    """The exception for an OS error: ENOSPC is a full disk, the rest keep their errno
    (EIO when the OS gave none)."""
    if err == _errno.ENOSPC:
        return DiskFullError(what)
    return IOFailure(err or _errno.EIO, what)
