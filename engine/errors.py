"""The engine's transaction-level errors (under ``slonik.aio.errors.SlonikError``)."""

from __future__ import annotations

from slonik.aio.errors import SlonikError


class ConflictError(SlonikError):
    """A write-write conflict: another transaction committed a change to the same item first."""
