"""Resource managers: who owns a WAL record, how to redo it and how to describe it.

Upper layers register one ``ResourceManager`` per id at import time (the engine's heap
registers ``RM_HEAP``); recovery calls ``get_rmgr(rec.rmgr).redo(ctx, read_record)`` and
waldump calls ``describe(record)``. The registry is process-wide and only grows: an id is
bound to one object for the life of the process, so a redo function cannot change under a
running recovery.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slonik.wal.errors import WalError

from .record import WalRecord

__all__ = [
    "RM_XLOG", "RM_XACT", "RM_SMGR", "RM_HEAP", "RM_TEST", "RM_MAX_ID", "ResourceManager",
    "register_rmgr", "get_rmgr", "find_rmgr", "registered_rmgrs", "rmgr_name",
]

RM_XLOG = 0     # checkpoint, switch/noop
RM_XACT = 1     # commit/abort
RM_SMGR = 2     # relation file create/truncate/unlink
RM_HEAP = 10
RM_TEST = 127   # tests only
RM_MAX_ID = 255  # the id is a u8 in the record header

# Names for ids whose manager may not be registered in this process (waldump on a bare wal/).
_BUILTIN_NAMES = {RM_XLOG: "xlog", RM_XACT: "xact", RM_SMGR: "smgr", RM_HEAP: "heap",
                  RM_TEST: "test"}


@dataclass(frozen=True)
class ResourceManager:
    """``redo(ctx, read_record)`` applies a record during recovery (ctx is built by the
    engine's recovery driver); ``describe(record)`` is one line of text for waldump."""

    id: int
    name: str
    redo: Callable[[Any, Any], None]
    describe: Callable[[WalRecord], str]


_registry: dict[int, ResourceManager] = {}
_lock = threading.Lock()


def register_rmgr(rm: ResourceManager) -> None:
    """Bind ``rm.id`` to ``rm``. Registering the same object again is harmless; another
    object for a taken id, or a name another id already has, is a ValueError."""
    if not isinstance(rm, ResourceManager):
        raise TypeError(f"register_rmgr needs a ResourceManager, not {type(rm).__name__}")
    if not isinstance(rm.id, int) or isinstance(rm.id, bool) or not 0 <= rm.id <= RM_MAX_ID:
        raise ValueError(f"rmgr id must be an int in 0..{RM_MAX_ID}, got {rm.id!r}")
    if not isinstance(rm.name, str) or not rm.name:
        raise ValueError(f"rmgr name must be a non-empty str, got {rm.name!r}")
    if not callable(rm.redo) or not callable(rm.describe):
        raise TypeError(f"rmgr {rm.name!r}: redo and describe must be callable")
    with _lock:
        existing = _registry.get(rm.id)
        if existing is rm:
            return
        if existing is not None:
            raise ValueError(f"rmgr id {rm.id} is already registered as {existing.name!r}")
        for other in _registry.values():
            if other.name == rm.name:
                raise ValueError(f"rmgr name {rm.name!r} is already used by id {other.id}")
        _registry[rm.id] = rm


def get_rmgr(rmgr_id: int) -> ResourceManager:
    """The manager of ``rmgr_id``; WalError naming the id when none is registered."""
    rm = _registry.get(rmgr_id)
    if rm is None:
        raise WalError(f"no resource manager registered for rmgr id {rmgr_id!r} "
                       f"({rmgr_name(rmgr_id)})")
    return rm


def find_rmgr(rmgr_id: int) -> ResourceManager | None:
    """The manager of ``rmgr_id``, or None."""
    return _registry.get(rmgr_id)


def registered_rmgrs() -> list[ResourceManager]:
    """Every registered manager, by id."""
    with _lock:
        return [_registry[k] for k in sorted(_registry)]


def rmgr_name(rmgr_id: int) -> str:
    """A name for display: the registered name, a built-in one, or ``"rmgr<id>"``."""
    rm = _registry.get(rmgr_id)
    if rm is not None:
        return rm.name
    return _BUILTIN_NAMES.get(rmgr_id, f"rmgr{rmgr_id}")
