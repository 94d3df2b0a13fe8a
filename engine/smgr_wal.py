"""WAL-logged relation file operations (resource manager ``smgr``).

Creating a relation's file is logged so that recovery re-creates it before any heap
record refers to its pages; a truncation is logged and the WAL flushed before the file
shrinks (a crash must never find WAL that refers to blocks the file no longer has without
also finding the truncation).
"""

from __future__ import annotations

import struct

from slonik.storage.bufmgr import BufferManager
from slonik.storage.smgr import Smgr
from slonik.wal.record import WalRecord
from slonik.wal.rmgr import RM_SMGR, ResourceManager
from slonik.wal.xlog import Wal

SMGR_CREATE = 0x10
SMGR_TRUNCATE = 0x20

_CREATE = struct.Struct("<IB")
_TRUNCATE = struct.Struct("<IBI")


def create_relation(wal: Wal, smgr: Smgr, rel: int, fork: int, xid: int = 0) -> int:
    """Log and create the file of ``rel``/``fork``; returns the record's end LSN."""
    _start, end = wal.insert(RM_SMGR, SMGR_CREATE, xid, _CREATE.pack(rel, fork))
    smgr.create(rel, fork, exist_ok=True)
    return end


def truncate_relation(wal: Wal, smgr: Smgr, bufmgr: BufferManager, rel: int, fork: int,
                      nblocks: int) -> None:
    """Log (durably) and truncate ``rel``/``fork`` to ``nblocks`` blocks."""
    _start, end = wal.insert(RM_SMGR, SMGR_TRUNCATE, 0, _TRUNCATE.pack(rel, fork, nblocks))
    wal.flush(end)
    bufmgr.drop_relation_buffers(rel, fork, nblocks)
    smgr.truncate(rel, fork, nblocks)


def _redo(ctx, rr) -> None:
    rec = rr.record
    if rec.info == SMGR_CREATE:
        rel, fork = _CREATE.unpack(rec.payload)
        ctx.smgr.create(rel, fork, exist_ok=True)
        ctx.state["max_relfilenumber"] = max(rel, ctx.state.get("max_relfilenumber", 0))
    elif rec.info == SMGR_TRUNCATE:
        rel, fork, nblocks = _TRUNCATE.unpack(rec.payload)
        ctx.smgr.create(rel, fork, exist_ok=True)
        if ctx.smgr.nblocks(rel, fork) > nblocks:
            ctx.bufmgr.drop_relation_buffers(rel, fork, nblocks)
            ctx.smgr.truncate(rel, fork, nblocks)
        ctx.forget_relation(rel)
    else:
        raise ValueError(f"unknown smgr WAL record info 0x{rec.info:02X}")


def _describe(rec: WalRecord) -> str:
    if rec.info == SMGR_CREATE:
        rel, fork = _CREATE.unpack(rec.payload)
        return f"create relation {rel} fork {fork}"
    if rec.info == SMGR_TRUNCATE:
        rel, fork, nblocks = _TRUNCATE.unpack(rec.payload)
        return f"truncate relation {rel} fork {fork} to {nblocks} blocks"
    return f"smgr info 0x{rec.info:02X}"


# Bound by the engine's rmgr table (engine/rmgrlist.py), not at import.
SMGR_RMGR = ResourceManager(RM_SMGR, "smgr", _redo, _describe)  # engine/rmgrlist.py
