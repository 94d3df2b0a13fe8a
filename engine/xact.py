"""Transactions: 64-bit xids, snapshots, commit/abort records (resource manager ``xact``).

PostgreSQL's model, simplified for one process:

- An xid is assigned at a transaction's first heap write (tables write eagerly), or at
  commit for a transaction that only buffered KV writes. Xids are 64-bit and never wrap.
- A snapshot is ``(xmax, running)`` taken under the xact lock: ``xmax`` = the next xid to be
  assigned, ``running`` = the xids assigned and not yet ended. ``sees(x)`` ⇔ ``x`` is the
  snapshot's own xid, or ``x < xmax`` and ``x ∉ running`` and ``x`` did not abort.
- A tuple version is visible iff ``sees(xmin)`` and not (``xmax ≠ 0`` and ``sees(xmax)``).
- Commit inserts an RM_XACT COMMIT record and removes the xid from ``running`` (the engine
  does both under its commit lock); abort inserts an ABORT record (never flushed: a crash
  before it reaches disk makes the same outcome) and puts the xid in the aborted set.
- Recovery: redo collects the xids of COMMIT and ABORT records in ``ctx.state``. Every xid
  that was running at the last checkpoint or wrote WAL after its redo point and has no
  COMMIT record is aborted: transactions cut off by a crash are invisible afterwards.
- The aborted set is carried from checkpoint to checkpoint in the checkpoint record's
  ``extra`` bytes (with the running set at that moment), encoded as ranges.

Invariants:
1. ``next_xid`` only grows; an xid is in at most one of running / aborted; an xid below
   ``next_xid`` in neither is committed (or never wrote anything, which is the same).
2. A registered snapshot keeps every version it may see from being pruned: the vacuum
   horizon is the smallest ``xmin`` (oldest xid still running at snapshot time) of all
   registered snapshots, the running xids and ``next_xid``.
3. An xid leaves ``running`` only under the xact lock, after its COMMIT/ABORT record is
   in the WAL buffers.
"""

from __future__ import annotations

import itertools
import struct
import threading
from dataclasses import dataclass

from slonik.aio.errors import SlonikError
from slonik.wal.record import WalRecord
from slonik.wal.rmgr import RM_XACT, ResourceManager

__all__ = [
    "XLOG_XACT_COMMIT", "XLOG_XACT_ABORT", "Snapshot", "TransactionManager", "XactStats",
    "TransactionStateError", "encode_xact_extra", "decode_xact_extra", "XACT_RMGR",
]

XLOG_XACT_COMMIT = 0x00
XLOG_XACT_ABORT = 0x20

_EXTRA_HEADER = struct.Struct("<BII")   # version, aborted ranges, running xids
_RANGE = struct.Struct("<QQ")           # first xid, count
_XID = struct.Struct("<Q")
_EXTRA_VERSION = 1


class TransactionStateError(SlonikError, RuntimeError):
    """A transaction used in the wrong state: nested, finished, or from another thread."""


class Snapshot:
    """What a reader may see; see the module docstring. ``own`` is the reading
    transaction's xid once it has one (it always sees its own writes)."""

    __slots__ = ("xmax", "running", "xmin", "own", "_aborted", "_key")

    def __init__(self, xmax: int, running: frozenset[int], aborted: set[int]) -> None:
        self.xmax = xmax
        self.running = running
        self.xmin = min(running) if running else xmax
        self.own = 0
        self._aborted = aborted  # the manager's live set: abort is final, so reading it late is safe
        self._key = 0

    def sees(self, xid: int) -> bool:
        if xid == self.own:
            return True
        return xid < self.xmax and xid not in self.running and xid not in self._aborted

    def visible(self, xmin: int, xmax: int) -> bool:
        """Whether a version created by ``xmin`` and deleted by ``xmax`` (0: not) is visible."""
        if not self.sees(xmin):
            return False
        return not (xmax and self.sees(xmax))

    def __repr__(self) -> str:
        return f"Snapshot(xmax={self.xmax}, running={sorted(self.running)}, own={self.own})"


@dataclass(frozen=True)
class XactStats:
    next_xid: int
    running: int
    aborted_xids: int
    snapshots: int
    commits: int
    aborts: int
    conflicts: int
    horizon: int


class TransactionManager:
    """Xid assignment, running/aborted sets, registered snapshots. Thread-safe."""

    def __init__(self, next_xid: int, aborted: set[int], wal) -> None:
        assert next_xid >= 1
        self.lock = threading.Lock()        # the xact lock: short critical sections only
        self.next_xid = next_xid
        self.running: set[int] = set()
        self.aborted: set[int] = set(aborted)
        self.wal = wal
        self._snapshots: dict[int, Snapshot] = {}
        self._keys = itertools.count(1)
        self.commits = self.aborts = self.conflicts = 0

    # --- xids ---------------------------------------------------------------------------------
    def assign_xid(self) -> int:
        with self.lock:
            xid = self.next_xid
            self.next_xid += 1
            self.running.add(xid)
            return xid

    def is_committed(self, xid: int) -> bool:
        """Ended and not aborted (a read of three sets: call it where the answer cannot
        change underneath, or where a stale answer is harmless)."""
        return xid < self.next_xid and xid not in self.running and xid not in self.aborted

    def is_running(self, xid: int) -> bool:
        return xid in self.running

    # --- snapshots ----------------------------------------------------------------------------
    def snapshot(self, *, register: bool = True) -> Snapshot:
        with self.lock:
            snap = Snapshot(self.next_xid, frozenset(self.running), self.aborted)
            if register:
                snap._key = next(self._keys)
                self._snapshots[snap._key] = snap
        return snap

    def release(self, snap: Snapshot) -> None:
        if snap._key:
            with self.lock:
                self._snapshots.pop(snap._key, None)
            snap._key = 0

    def horizon(self) -> int:
        """Versions deleted by a committed xid below this are invisible to every snapshot,
        present and future (invariant 2)."""
        with self.lock:
            h = self.next_xid
            if self.running:
                h = min(h, min(self.running))
            for s in self._snapshots.values():
                if s.xmin < h:
                    h = s.xmin
            return h

    # --- ending -------------------------------------------------------------------------------
    def log_commit(self, xid: int) -> int:
        """Insert the COMMIT record of ``xid``; returns its end LSN (to flush)."""
        _start, end = self.wal.insert(RM_XACT, XLOG_XACT_COMMIT, xid)
        return end

    def finish_commit(self, xid: int) -> None:
        with self.lock:
            self.running.discard(xid)
            self.commits += 1

    def abort(self, xid: int) -> None:
        """Log ABORT (not flushed) and make ``xid`` aborted. If the record cannot be written
        the xid still counts as aborted here, and recovery will find it without a COMMIT."""
        try:
            if not self.wal.failed:
                self.wal.insert(RM_XACT, XLOG_XACT_ABORT, xid)
        finally:
            with self.lock:
                self.aborted.add(xid)
                self.running.discard(xid)
                self.aborts += 1

    def forget_aborted(self, xids: set[int]) -> None:
        """Vacuum found no tuple left that names these aborted xids."""
        with self.lock:
            self.aborted.difference_update(xids)

    # --- checkpoints and recovery -------------------------------------------------------------
    def checkpoint_state(self) -> tuple[int, bytes]:
        with self.lock:
            return self.next_xid, encode_xact_extra(self.aborted, self.running)

    @classmethod
    def after_recovery(cls, wal, *, checkpoint_next_xid: int, extra: bytes,
                       state: dict) -> TransactionManager:
        aborted, running = decode_xact_extra(extra)
        committed: set[int] = state.get("xact_committed", set())
        aborted |= state.get("xact_aborted", set())
        wrote: set[int] = state.get("xids", set())
        aborted |= (running | wrote) - committed
        seen = committed | aborted | wrote
        next_xid = max(checkpoint_next_xid, max(seen) + 1 if seen else 1, 1)
        return cls(next_xid, aborted, wal)

    def stats(self) -> XactStats:
        h = self.horizon()
        with self.lock:
            return XactStats(self.next_xid, len(self.running), len(self.aborted),
                             len(self._snapshots), self.commits, self.aborts, self.conflicts, h)


# --- checkpoint extra codec (pure) ------------------------------------------------------------

def _ranges(xids: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for x in sorted(xids):
        if out and out[-1][0] + out[-1][1] == x:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((x, 1))
    return out


def encode_xact_extra(aborted: set[int], running: set[int]) -> bytes:
    ranges = _ranges(aborted)
    parts = [_EXTRA_HEADER.pack(_EXTRA_VERSION, len(ranges), len(running))]
    parts += [_RANGE.pack(a, n) for a, n in ranges]
    parts += [_XID.pack(x) for x in sorted(running)]
    return b"".join(parts)


def decode_xact_extra(data: bytes) -> tuple[set[int], set[int]]:
    """(aborted, running); empty sets for empty data (a database's first checkpoint)."""
    if not data:
        return set(), set()
    if len(data) < _EXTRA_HEADER.size:
        raise ValueError(f"checkpoint transaction state of {len(data)} bytes is too short")
    version, nranges, nrunning = _EXTRA_HEADER.unpack_from(data)
    if version != _EXTRA_VERSION:
        raise ValueError(f"checkpoint transaction state version {version}, expected "
                         f"{_EXTRA_VERSION}")
    need = _EXTRA_HEADER.size + nranges * _RANGE.size + nrunning * _XID.size
    if len(data) != need:
        raise ValueError(f"checkpoint transaction state is {len(data)} bytes, its counts "
                         f"say {need}")
    aborted: set[int] = set()
    pos = _EXTRA_HEADER.size
    for _ in range(nranges):
        first, n = _RANGE.unpack_from(data, pos)
        aborted.update(range(first, first + n))
        pos += _RANGE.size
    running = {_XID.unpack_from(data, pos + i * _XID.size)[0] for i in range(nrunning)}
    return aborted, running


# --- redo -------------------------------------------------------------------------------------

def _redo(ctx, rr) -> None:
    rec = rr.record
    if rec.info == XLOG_XACT_COMMIT:
        ctx.state.setdefault("xact_committed", set()).add(rec.xid)
    elif rec.info == XLOG_XACT_ABORT:
        ctx.state.setdefault("xact_aborted", set()).add(rec.xid)
    else:
        raise ValueError(f"unknown xact WAL record info 0x{rec.info:02X}")


def _describe(rec: WalRecord) -> str:
    if rec.info == XLOG_XACT_COMMIT:
        return f"COMMIT xid {rec.xid}"
    if rec.info == XLOG_XACT_ABORT:
        return f"ABORT xid {rec.xid}"
    return f"xact info 0x{rec.info:02X}"


XACT_RMGR = ResourceManager(RM_XACT, "xact", _redo, _describe)  # engine/rmgrlist.py
