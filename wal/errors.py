"""The WAL layer's errors (under ``slonik.aio.errors.StorageError``)."""

from __future__ import annotations

from slonik.aio.errors import StorageError


class WalError(StorageError):
    """The write-ahead log cannot be written, synced or decoded."""
