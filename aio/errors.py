"""The error hierarchy of every layer, kept at the bottom so that every layer can raise it.

SlonikError
├── StorageError              environment and data failures below the engine
│   ├── IOFailure (+OSError)  a read, write or sync the OS refused; keeps errno
│   │   └── DiskFullError     ENOSPC, or a short write that made no progress
│   ├── DataCorruptionError   a page or record that fails verification
│   └── WalError              WAL cannot be written, synced or read
├── IoMethodUnavailable       an io_method that cannot run here (with the reason)
└── ConflictError             first committer wins (engine)

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


class DataCorruptionError(StorageError):
    """A page that failed verification. Names the relation, fork and block."""

    def __init__(self, message: str, *, relation: int | None = None, fork: int | None = None,
                 block: int | None = None) -> None:
        super().__init__(message)
        self.relation = relation
        self.fork = fork
        self.block = block


class WalError(StorageError):
    """The write-ahead log cannot be written, synced or decoded."""


class IoMethodUnavailable(SlonikError):
    """The requested io_method cannot run on this machine; the message says why."""


class ConflictError(SlonikError):
    """A write-write conflict: another transaction committed a change to the same item first."""
