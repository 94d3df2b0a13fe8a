"""The storage layer's errors (under ``slonik.aio.errors.StorageError``)."""

from __future__ import annotations

from slonik.aio.errors import StorageError


class DataCorruptionError(StorageError):
    """A page that failed verification. Names the relation, fork and block."""

    def __init__(self, message: str, *, relation: int | None = None, fork: int | None = None,
                 block: int | None = None) -> None:
        super().__init__(message)
        self.relation = relation
        self.fork = fork
        self.block = block
