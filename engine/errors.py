"""The engine's transaction-level errors (under ``slonik.aio.errors.SlonikError``)."""

from __future__ import annotations

from slonik.aio.errors import SlonikError


class ConflictError(SlonikError):
    """A write-write conflict: another transaction committed a change to the same item first."""


class RelationDroppedError(SlonikError, LookupError):
    """The KV store or table was dropped (``db.drop``), by a committed transaction or by
    the calling thread's own transaction: it cannot be read or written any more."""


class UniqueViolation(SlonikError):
    """A write would give a unique index (or primary key) a second live row with the same
    key; the message names the index and the key. The transaction is aborted."""
