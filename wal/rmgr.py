"""Resource managers: who owns a WAL record, how to redo it and how to describe it.

``RMGR_TABLE`` below is the one table of resource manager ids (PostgreSQL's rmgrlist.h):
id, name, and the module whose ``ResourceManager`` supplies redo and describe. wal/ cannot
import the engine, so the binding is explicit and happens once, not as an import's side
effect: the engine lists its managers in one table (``engine/rmgrlist.py``) and binds them
with ``install_rmgrs`` before anything replays or describes WAL (Database open, recovery,
waldump). Recovery then calls ``get_rmgr(rec.rmgr).redo(ctx, read_record)`` and waldump
``describe(record)``.

Ids below ``RM_CUSTOM_MIN`` are built in: binding one checks it against the table (same
name). Ids from ``RM_CUSTOM_MIN`` up are custom, as PostgreSQL's RegisterCustomRmgr range:
tests and extensions bind them with ``register_rmgr``. A binding is for the life of the
process: an id is bound to one object, so a redo function cannot change under a running
recovery.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from slonik.wal.errors import WalError

from .record import WalRecord

__all__ = [
    "RM_XLOG", "RM_XACT", "RM_SMGR", "RM_HEAP", "RM_BTREE", "RM_TEST", "RM_MAX_ID", "ResourceManager",
    "RM_CUSTOM_MIN", "RMGR_TABLE", "RmgrEntry", "install_rmgrs", "register_rmgr", "get_rmgr",
    "find_rmgr", "registered_rmgrs", "rmgr_name",
]

RM_XLOG = 0     # checkpoint, switch/noop
RM_XACT = 1     # commit/abort
RM_SMGR = 2     # relation file create/truncate/unlink
RM_HEAP = 10
RM_BTREE = 11  # engine/access/btree_wal.py
RM_TEST = 127   # tests only
RM_CUSTOM_MIN = 128  # ids from here up are custom (tests, extensions), as PostgreSQL's
RM_MAX_ID = 255  # the id is a u8 in the record header


class RmgrEntry(NamedTuple):
    """One row of ``RMGR_TABLE``: the name waldump shows, and the module whose
    ``ResourceManager`` supplies redo and describe."""

    name: str
    owner: str


# The one table of built-in resource managers (rmgrlist.h). Names show even for ids whose
# manager is not bound in this process (waldump on a bare wal/).
RMGR_TABLE: dict[int, RmgrEntry] = {
    RM_XLOG: RmgrEntry("xlog", "slonik.wal.checkpoint"),
    RM_XACT: RmgrEntry("xact", "slonik.engine.xact"),
    RM_SMGR: RmgrEntry("smgr", "slonik.engine.smgr_wal"),
    RM_HEAP: RmgrEntry("heap", "slonik.engine.access.heap"),
    RM_BTREE: RmgrEntry("btree", "slonik.engine.access.btree_wal"),
    RM_TEST: RmgrEntry("test", "the test suite that binds it"),
}
assert all(0 <= i < RM_CUSTOM_MIN for i in RMGR_TABLE), "built-in ids are below RM_CUSTOM_MIN"
assert len({e.name for e in RMGR_TABLE.values()}) == len(RMGR_TABLE), "names are unique"


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


def install_rmgrs(managers: Iterable[ResourceManager]) -> None:
    """Bind each of ``managers`` (an engine's one table of them); each must be a built-in
    id of ``RMGR_TABLE`` under its name. Installing the same objects again is harmless."""
    for rm in managers:
        if not isinstance(rm, ResourceManager):
            raise TypeError(f"install_rmgrs needs ResourceManagers, not {type(rm).__name__}")
        if rm.id not in RMGR_TABLE:
            raise ValueError(f"rmgr id {rm.id!r} ({rm.name!r}) is not in RMGR_TABLE; custom "
                             f"ids ({RM_CUSTOM_MIN}..{RM_MAX_ID}) use register_rmgr")
        register_rmgr(rm)


def register_rmgr(rm: ResourceManager) -> None:
    """Bind ``rm.id`` to ``rm``. A built-in id must carry its ``RMGR_TABLE`` name; a
    custom id (``RM_CUSTOM_MIN`` up) any name no other id has. Registering the same object
    again is harmless; another object for a taken id, or a name another id already has, is
    a ValueError."""
    if not isinstance(rm, ResourceManager):
        raise TypeError(f"register_rmgr needs a ResourceManager, not {type(rm).__name__}")
    if not isinstance(rm.id, int) or isinstance(rm.id, bool) or not 0 <= rm.id <= RM_MAX_ID:
        raise ValueError(f"rmgr id must be an int in 0..{RM_MAX_ID}, got {rm.id!r}")
    if not isinstance(rm.name, str) or not rm.name:
        raise ValueError(f"rmgr name must be a non-empty str, got {rm.name!r}")
    if not callable(rm.redo) or not callable(rm.describe):
        raise TypeError(f"rmgr {rm.name!r}: redo and describe must be callable")
    if rm.id < RM_CUSTOM_MIN:
        entry = RMGR_TABLE.get(rm.id)
        if entry is None:
            raise ValueError(f"rmgr id {rm.id} is below {RM_CUSTOM_MIN} but not in RMGR_TABLE "
                             "(add it there, or use a custom id)")
        if entry.name != rm.name:
            raise ValueError(f"rmgr id {rm.id} is {entry.name!r} in RMGR_TABLE, not {rm.name!r}")
    elif any(e.name == rm.name for e in RMGR_TABLE.values()):
        raise ValueError(f"rmgr name {rm.name!r} is a built-in one (RMGR_TABLE)")
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
    entry = RMGR_TABLE.get(rmgr_id)
    return entry.name if entry is not None else f"rmgr{rmgr_id}"
