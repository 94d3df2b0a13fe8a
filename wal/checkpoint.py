"""Checkpoint records (resource manager ``xlog``): what a checkpoint leaves in the WAL.

A checkpoint record says where redo must start (``redo_lsn``) and carries the counters the
engine needs back after a crash (next transaction id, next relfilenumber) plus an opaque
``extra`` blob the engine fills (for example transaction ids cut off by earlier crashes).
The control file points at the latest one. Redo of a checkpoint record changes no page.

Payload layout (little-endian)::

    redo_lsn u64 | next_xid u64 | next_relfilenumber u64 | time f64 | extra_len u32 | extra
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slonik.wal.lsn import format_lsn
from slonik.wal.record import WalRecord, WalRecordError
from slonik.wal.rmgr import RM_XLOG, ResourceManager

XLOG_CHECKPOINT_SHUTDOWN = 0x00
XLOG_CHECKPOINT_ONLINE = 0x10
XLOG_END_OF_RECOVERY = 0x20
CHECKPOINT_INFOS = (XLOG_CHECKPOINT_SHUTDOWN, XLOG_CHECKPOINT_ONLINE)

_FIXED = struct.Struct("<QQQdI")
CHECKPOINT_EXTRA_MAX_BYTES = 1 << 20  # the engine's state must stay small


@dataclass(frozen=True)
class CheckpointData:
    redo_lsn: int
    next_xid: int
    next_relfilenumber: int
    time: float
    extra: bytes = b""


def encode_checkpoint(cp: CheckpointData) -> bytes:
    if len(cp.extra) > CHECKPOINT_EXTRA_MAX_BYTES:
        raise ValueError(f"checkpoint extra data is {len(cp.extra)} bytes, more than "
                         f"{CHECKPOINT_EXTRA_MAX_BYTES}")
    return _FIXED.pack(cp.redo_lsn, cp.next_xid, cp.next_relfilenumber, cp.time,
                       len(cp.extra)) + bytes(cp.extra)


def decode_checkpoint(payload: bytes) -> CheckpointData:
    if len(payload) < _FIXED.size:
        raise WalRecordError("payload", f"checkpoint payload is {len(payload)} bytes, "
                                        f"shorter than {_FIXED.size}")
    redo, next_xid, next_rel, when, n = _FIXED.unpack_from(payload, 0)
    if len(payload) != _FIXED.size + n:
        raise WalRecordError("payload", f"checkpoint extra length {n} disagrees with the "
                                        f"payload's {len(payload) - _FIXED.size} bytes")
    return CheckpointData(redo, next_xid, next_rel, when, bytes(payload[_FIXED.size:]))


def is_checkpoint(rec: WalRecord) -> bool:
    return rec.rmgr == RM_XLOG and rec.info in CHECKPOINT_INFOS


def _redo(ctx, rr) -> None:
    """Checkpoint records change no page; recovery reads them for their counters."""
    if is_checkpoint(rr.record):
        cp = decode_checkpoint(rr.record.payload)
        state = getattr(ctx, "state", None)
        if state is not None:
            state["last_checkpoint"] = cp


def _describe(rec: WalRecord) -> str:
    if is_checkpoint(rec):
        cp = decode_checkpoint(rec.payload)
        kind = "shutdown" if rec.info == XLOG_CHECKPOINT_SHUTDOWN else "online"
        return (f"checkpoint ({kind}): redo {format_lsn(cp.redo_lsn)}; next xid {cp.next_xid}; "
                f"next relfilenumber {cp.next_relfilenumber}; extra {len(cp.extra)} bytes")
    if rec.info == XLOG_END_OF_RECOVERY:
        return "end of recovery"
    return f"xlog info 0x{rec.info:02X}"


# Bound by the engine's rmgr table (engine/rmgrlist.py), not at import.
XLOG_RMGR = ResourceManager(RM_XLOG, "xlog", _redo, _describe)
