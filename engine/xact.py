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
- A COMMIT record's payload lists the relfilenumbers the transaction dropped (as
  PostgreSQL's xl_xact_relfilelocators). Their files are *pending unlink* from then on:
  the set is carried in every checkpoint until the engine has unlinked them at a quiet
  moment (close, or the next open), so a crash at any instant leaves no orphan file.
- Recovery: redo collects the xids of COMMIT and ABORT records in ``ctx.state``. Every xid
  that was running at the last checkpoint or wrote WAL after its redo point and has no
  COMMIT record is aborted: transactions cut off by a crash are invisible afterwards.
- The aborted set is carried from checkpoint to checkpoint in the checkpoint record's
  ``extra`` bytes (with the running set and the pending unlinks at that moment), the
  aborted set encoded as ranges.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slonik.aio.errors import SlonikError
from slonik.wal.record import WalRecord
from slonik.wal.rmgr import RM_XACT, ResourceManager

if TYPE_CHECKING:
    from slonik.engine.access.heap import HeapRun

__all__ = [
    "XLOG_XACT_COMMIT", "XLOG_XACT_ABORT", "Snapshot", "TransactionManager", "XactStats",
    "TransactionStateError", "encode_xact_extra", "decode_xact_extra", "decode_pending_unlinks",
    "encode_commit_payload", "decode_commit_payload", "XACT_RMGR", "DeadTest",
]

XLOG_XACT_COMMIT = 0x00
XLOG_XACT_ABORT = 0x20
_COMMIT_RECORD = (RM_XACT, XLOG_XACT_COMMIT, b"")   # log_commit of no drops

_EXTRA_HEADER = struct.Struct("<BII")   # version, aborted ranges, running xids
_UNLINKS_HEADER = struct.Struct("<I")   # version 2: pending unlinks (after the running xids)
_RANGE = struct.Struct("<QQ")           # first xid, count
_XID = struct.Struct("<Q")
_REL = struct.Struct("<I")              # a relfilenumber
_EXTRA_VERSION = 2                      # 1: no pending unlinks (still read)
_COMMIT_HEADER = struct.Struct("<I")    # COMMIT payload: dropped relfilenumbers, then each
COMMIT_DROPPED_RELATIONS_MAX = 1 << 16  # relations one transaction may drop (one record)


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

    @property
    def registered(self) -> bool:
        """Whether vacuum keeps what this snapshot sees (until it is released)."""
        return self._key != 0

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
        self.pending_unlinks: set[int] = set()  # dropped relfilenumbers whose files remain
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

    def note_conflict(self) -> None:
        """Count a write-write conflict (``XactStats.conflicts``)."""
        with self.lock:
            self.conflicts += 1

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
            return self._horizon_locked()

    def _horizon_locked(self) -> int:
        h = self.next_xid
        if self.running:
            h = min(h, min(self.running))
        for s in self._snapshots.values():
            if s.xmin < h:
                h = s.xmin
        return h

    def dead_test(self) -> DeadTest:
        """Vacuum's test as of now (``DeadTest``): the horizon and the aborted xids, read in
        one lock section; its ``referenced`` starts empty. Vacuum judges a relation by it,
        and a KV tree a full leaf before it splits (``BTree.prune_test``)."""
        with self.lock:
            return DeadTest(self._horizon_locked(), set(self.aborted), set())

    # --- ending -------------------------------------------------------------------------------
    def log_commit(self, xid: int, dropped: tuple[int, ...] = ()) -> int:
        """Insert the COMMIT record of ``xid`` (listing the relfilenumbers it drops);
        returns its end LSN (to flush)."""
        payload = encode_commit_payload(dropped) if dropped else b""
        _start, end = self.wal.insert(RM_XACT, XLOG_XACT_COMMIT, xid, payload)
        return end

    @staticmethod
    def commit_record(xid: int) -> tuple[int, int, bytes]:
        """The (rmgr, info, payload) of ``xid``'s COMMIT record when it drops nothing, as
        ``log_commit`` inserts it: for a writer that inserts it itself, right after its own
        record (an autocommit put's fast path, ``BTree.put_new``)."""
        return _COMMIT_RECORD

    def add_pending_unlinks(self, rels) -> None:
        """Dropped relations whose files are still on disk (carried in checkpoints)."""
        with self.lock:
            self.pending_unlinks.update(rels)

    def forget_pending_unlinks(self, rels) -> None:
        """These files are gone (their unlink was fsynced)."""
        with self.lock:
            self.pending_unlinks.difference_update(rels)

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
            return self.next_xid, encode_xact_extra(self.aborted, self.running,
                                                    self.pending_unlinks)

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
        manager = cls(next_xid, aborted, wal)
        manager.pending_unlinks = decode_pending_unlinks(extra) | state.get("xact_dropped", set())
        return manager

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


def encode_xact_extra(aborted: set[int], running: set[int],
                      pending_unlinks: set[int] = frozenset()) -> bytes:
    ranges = _ranges(aborted)
    parts = [_EXTRA_HEADER.pack(_EXTRA_VERSION, len(ranges), len(running))]
    parts += [_RANGE.pack(a, n) for a, n in ranges]
    parts += [_XID.pack(x) for x in sorted(running)]
    parts.append(_UNLINKS_HEADER.pack(len(pending_unlinks)))
    parts += [_REL.pack(r) for r in sorted(pending_unlinks)]
    return b"".join(parts)


def _decode_extra(data: bytes) -> tuple[set[int], set[int], set[int]]:
    if not data:
        return set(), set(), set()
    if len(data) < _EXTRA_HEADER.size:
        raise ValueError(f"checkpoint transaction state of {len(data)} bytes is too short")
    version, nranges, nrunning = _EXTRA_HEADER.unpack_from(data)
    if version not in (1, _EXTRA_VERSION):
        raise ValueError(f"checkpoint transaction state version {version}, expected 1 or "
                         f"{_EXTRA_VERSION}")
    need = _EXTRA_HEADER.size + nranges * _RANGE.size + nrunning * _XID.size
    nunlinks = 0
    if version >= 2:
        if len(data) < need + _UNLINKS_HEADER.size:
            raise ValueError(f"checkpoint transaction state is {len(data)} bytes, its counts "
                             f"say at least {need + _UNLINKS_HEADER.size}")
        (nunlinks,) = _UNLINKS_HEADER.unpack_from(data, need)
        need += _UNLINKS_HEADER.size + nunlinks * _REL.size
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
    pos += nrunning * _XID.size + (_UNLINKS_HEADER.size if version >= 2 else 0)
    unlinks = {_REL.unpack_from(data, pos + i * _REL.size)[0] for i in range(nunlinks)}
    return aborted, running, unlinks


def decode_xact_extra(data: bytes) -> tuple[set[int], set[int]]:
    """(aborted, running); empty sets for empty data (a database's first checkpoint)."""
    aborted, running, _unlinks = _decode_extra(data)
    return aborted, running


def decode_pending_unlinks(data: bytes) -> set[int]:
    """The relfilenumbers dropped and not yet unlinked when the checkpoint was taken."""
    return _decode_extra(data)[2]


def encode_commit_payload(dropped) -> bytes:
    """A COMMIT record's payload: the relfilenumbers the transaction drops."""
    rels = sorted(set(dropped))
    if len(rels) > COMMIT_DROPPED_RELATIONS_MAX:
        raise ValueError(f"a transaction may drop at most {COMMIT_DROPPED_RELATIONS_MAX} "
                         f"relations, got {len(rels)}")
    return _COMMIT_HEADER.pack(len(rels)) + b"".join(_REL.pack(r) for r in rels)


def decode_commit_payload(payload: bytes) -> tuple[int, ...]:
    """The dropped relfilenumbers of a COMMIT record (empty payload: none)."""
    if not payload:
        return ()
    if len(payload) < _COMMIT_HEADER.size:
        raise ValueError(f"COMMIT payload of {len(payload)} bytes is too short")
    (n,) = _COMMIT_HEADER.unpack_from(payload)
    if len(payload) != _COMMIT_HEADER.size + n * _REL.size:
        raise ValueError(f"COMMIT payload is {len(payload)} bytes, its count of {n} "
                         f"dropped relations says {_COMMIT_HEADER.size + n * _REL.size}")
    return tuple(_REL.unpack_from(payload, _COMMIT_HEADER.size + i * _REL.size)[0]
                 for i in range(n))


# --- redo -------------------------------------------------------------------------------------

def _redo(ctx, rr) -> None:
    rec = rr.record
    if rec.info == XLOG_XACT_COMMIT:
        ctx.state.setdefault("xact_committed", set()).add(rec.xid)
        dropped = decode_commit_payload(rec.payload)
        if dropped:  # unlinked by the engine once recovery is over
            ctx.state.setdefault("xact_dropped", set()).update(dropped)
    elif rec.info == XLOG_XACT_ABORT:
        ctx.state.setdefault("xact_aborted", set()).add(rec.xid)
    else:
        raise ValueError(f"unknown xact WAL record info 0x{rec.info:02X}")


def _describe(rec: WalRecord) -> str:
    if rec.info == XLOG_XACT_COMMIT:
        dropped = decode_commit_payload(rec.payload)
        if dropped:
            return f"COMMIT xid {rec.xid}; drop relations {', '.join(map(str, dropped))}"
        return f"COMMIT xid {rec.xid}"
    if rec.info == XLOG_XACT_ABORT:
        return f"ABORT xid {rec.xid}"
    return f"xact info 0x{rec.info:02X}"


# Bound by the engine's rmgr table (engine/rmgrlist.py), not at import.
XACT_RMGR = ResourceManager(RM_XACT, "xact", _redo, _describe)  # engine/rmgrlist.py


class DeadTest:
    """Vacuum's test: no snapshot, present or future, sees a version whose creator
    aborted or whose deleter committed below ``horizon``; aborted deleters still named
    by a live version go to ``referenced`` (so their xids are remembered). ``is_dead(xmin,
    xmax)`` for one version (the KV tree's vacuum), ``of_run(run)`` for a heap run's
    tuples at once (``Heap.prune``'s ``dead_of``)."""

    __slots__ = ("horizon", "aborted", "referenced")

    def __init__(self, horizon: int, aborted: set[int], referenced: set[int]) -> None:
        self.horizon = horizon
        self.aborted = aborted
        self.referenced = referenced

    def __call__(self, xmin: int, xmax: int) -> bool:
        aborted = self.aborted
        if xmin in aborted:
            return True
        if xmax:
            if xmax in aborted:
                self.referenced.add(xmax)
                return False
            return xmax < self.horizon
        return False

    def of_run(self, run: HeapRun) -> list[int]:
        """The indexes (ascending) of the dead tuples of a heap run (``of_pairs``)."""
        return self.of_pairs(run.xmins, run.xmaxs)

    def of_pairs(self, xmins: Sequence[int], xmaxs: Sequence[int]) -> list[int]:
        """The indexes (ascending) of the dead versions among (xmins[i], xmaxs[i]): with no
        aborted xid (the usual case) those whose deleter is below the horizon, found by
        one comprehension over the xmaxs, none at all when nothing was deleted (one
        C-level ``any``)."""
        if not self.aborted:
            if not any(xmaxs):
                return []
            horizon = self.horizon
            return [i for i, x in enumerate(xmaxs) if 0 < x < horizon]
        return [i for i, (xmin, xmax) in enumerate(zip(xmins, xmaxs, strict=True))
                if self(xmin, xmax)]
