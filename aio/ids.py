"""The one table of AIO target ids and callback ids.

PostgreSQL lists them in ``aio.h`` (``PgAioTargetID``, ``PgAioHandleCallbackID``) and binds
them in ``aio_target.c`` / ``aio_callback.c``. Here every id any layer uses is listed once,
with its name (the key in ``Aio.stats()``) and the module that implements it; nothing is
registered at import time, so no import order can change what an id means.

aio/ imports nothing above it, so the behaviour of an upper layer's id travels with the
I/O it is attached to:

- a **target** is what an I/O is against. The ``TARGETS`` table below says how to reopen
  and describe each target's data: a plain file or a WAL segment is ``(path, open_flags,
  offset)``; a relation segment is an object that reopens and describes itself
  (``storage.smgr.SmgrIo``).
- a **callback id** is attached with its callback data (``Handle.add_callback(id, data)``),
  an ``aio.callbacks.IoCallbacks`` whose ``callback_id`` must be that id: the data's class
  implements the phases (stage, complete_shared, complete_local, report).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple


class TargetId(IntEnum):
    """Every I/O target (PostgreSQL's PgAioTargetID). 0 is "no target" (cannot be
    offloaded to a worker: nothing to reopen)."""

    FILE = 1   # aio: a plain file at an offset (benchmarks, offline tools, tests)
    SMGR = 2   # storage.smgr: consecutive blocks of one relation segment file
    WAL = 3    # wal.xlog: a WAL segment file at an offset


class CallbackId(IntEnum):
    """Every completion-callback id (PostgreSQL's PgAioHandleCallbackID), in the order the
    layers attach them: the lowest layer's is attached last and so runs first."""

    SMGR_READV = 2      # storage.smgr: bytes -> whole blocks, release the segment fd
    SMGR_WRITEV = 3     # storage.smgr: the same for writes
    BUFMGR_READV = 4    # storage.bufmgr: pin at stage; verify pages, VALID / IO_ERROR
    BUFMGR_WRITEV = 5   # storage.bufmgr: pin at stage; clear DIRTY, release the content lock
    TEST_1 = 60         # tests/aio: ids the aio tests attach their own callbacks under
    TEST_2 = 61
    TEST_3 = 62
    TEST_4 = 63


class TargetInfo(NamedTuple):
    """One row of ``TARGETS``: ``reopen(data) -> (path, open_flags)`` lets a worker open
    the file itself; ``describe(data) -> str`` names it in errors and ``inflight()``."""

    name: str
    reopen: Callable[[Any], tuple[str, int]]
    describe: Callable[[Any], str]


def _file_reopen(data: tuple[str, int, int]) -> tuple[str, int]:
    return data[0], data[1]


def _file_describe(data: tuple[str, int, int]) -> str:
    path, _flags, offset = data
    return f"file {path!r} at offset {offset}"


def _wal_describe(data: tuple[str, int, int]) -> str:
    path, _flags, offset = data
    return f"WAL segment {os.path.basename(path)} at offset {offset}"


def _self_reopen(data: Any) -> tuple[str, int]:
    return data.reopen()


def _self_describe(data: Any) -> str:
    return data.describe()


# The one table of targets (aio_target.c's pgaio_target_info).
TARGETS: dict[TargetId, TargetInfo] = {
    TargetId.FILE: TargetInfo("file", _file_reopen, _file_describe),
    TargetId.SMGR: TargetInfo("relation", _self_reopen, _self_describe),
    TargetId.WAL: TargetInfo("wal", _file_reopen, _wal_describe),
}

# The one table of callbacks' names (aio_callback.c's aio_handle_cbs).
CALLBACK_NAMES: dict[CallbackId, str] = {cid: cid.name.lower() for cid in CallbackId}

assert set(TARGETS) == set(TargetId), "every target id has a row in TARGETS"


def target_id(value: int) -> TargetId:
    """``value`` as a ``TargetId``; ValueError naming it when no such target exists."""
    try:
        return TargetId(value)
    except ValueError:
        raise ValueError(f"no AIO target with id {value!r} (see aio/ids.py)") from None


def callback_id(value: int) -> CallbackId:
    """``value`` as a ``CallbackId``; ValueError naming it when no such callback exists."""
    try:
        return CallbackId(value)
    except ValueError:
        raise ValueError(f"no AIO callback with id {value!r} (see aio/ids.py)") from None
