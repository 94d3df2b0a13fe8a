"""The WAL layer's errors (under ``slonik.aio.errors.StorageError``)."""

from __future__ import annotations

from slonik.aio.errors import DiskFullError, StorageError


class WalError(StorageError):
    """The write-ahead log cannot be written, synced or decoded."""


class WalDiskFullError(WalError, DiskFullError):
    """A WAL write (or the creation of a WAL segment) found the disk full: the
    ``DiskFullError`` DESIGN §7 promises the commit that hit it, and a ``WalError``, fatal
    like every failed WAL write (the Wal refuses all further work)."""

    def __init__(self, what: str) -> None:
        DiskFullError.__init__(self, what)
