"""The transaction layer: what KV stores and tables use instead of ``Database``'s insides.

``Database`` builds one ``TransactionLayer`` (over its ``TransactionManager``, its commit
lock and callbacks for "is the database usable", "flush WAL to here", "a commit changed
these relations", "these relations are dropped") and hands it to every store it creates.
A store reaches the transaction machinery only through the layer's public methods:

- ``check_open()``                 the database is open and not stopped by a fatal error
- ``current()``                    the calling thread's transaction state, or None
- ``read_snapshot()``              the snapshot a read uses (the transaction's, or a fresh
                                   registered one released at the end of the block)
- ``own_writes(relation)``         the calling thread's buffered KV writes to a relation
- ``kv_write(relation, key, data)`` buffer a KV write, or commit it at once (autocommit)
- ``implicit(snapshot=)``          the thread's transaction, or an autocommit one for a block
- ``write(relation)``              (xid, snapshot) for an eager heap write (tables, drops)
- ``guard(iterator, check)``       an iterator that re-checks the store before every step

``transaction()`` is ``db.transaction()``. Commit (``_commit``), under the commit lock:
refuse writes to relations dropped meanwhile, validate KV write sets (first committer
wins), assign the xid if the transaction has none yet, apply the buffered KV writes to the
heaps, insert the COMMIT record (with the relations it drops), publish the new versions in
the KV indexes, mark dropped relations, mark the xid committed; then, outside the lock,
flush WAL up to the COMMIT record (unless ``synchronous_commit`` is off): threads
committing at the same time share one fsync.

Invariants:
1. A transaction belongs to the thread that began it (``threading.local``); an autocommit
   write is a transaction of its own, never bound to the thread across user code.
2. Every COMMIT record is inserted, and every xid leaves ``running``, under the commit
   lock (also the checkpointer's redo lock): a checkpoint never splits a commit.
3. A relation's drop state changes only under the commit lock.
4. Autocommit KV writes are combined: one thread at a time (holding the combine lock)
   applies its own write and every queued one; it releases the lock and then looks at
   the queue again, so a write is never left queued with no combiner to serve it. Each
   write is still its own transaction (own xid, own COMMIT record, own error); the
   combiner's one flush covers them all before their threads are woken.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from slonik.aio.errors import SlonikError
from slonik.engine.errors import ConflictError, RelationDroppedError
from slonik.engine.relation import Relation, RelationState
from slonik.engine.xact import Snapshot, TransactionManager, TransactionStateError

__all__ = ["Transaction", "TransactionLayer", "TxnState"]

T = TypeVar("T")
_DROPPED = RelationState.DROPPED   # (read per autocommit write: a global, not an Enum lookup)


class TxnState:
    """One transaction's state, as the layer keeps it: snapshot (None for blind
    autocommit writes), xid (0 until assigned), buffered KV writes, eager table writes
    (per relation: how many versions they made dead if it commits), relations dropped."""

    __slots__ = ("snapshot", "xid", "kv_writes", "table_writes", "drops", "blind",
                 "rollback_only", "thread_id")

    def __init__(self, snapshot: Snapshot | None, *, blind: bool = False) -> None:
        self.snapshot = snapshot
        self.xid = 0
        self.kv_writes: dict[Relation, dict[bytes, bytes | None]] = {}
        self.table_writes: dict[Relation, int] = {}
        self.drops: list[Relation] = []
        self.blind = blind          # autocommit writes: no snapshot, validated at commit
        self.rollback_only = False
        self.thread_id = threading.get_ident()


class Transaction:
    """A transaction begun by ``with db.transaction() as txn:``.

    It commits at the end of the block and aborts if the block raises or ``rollback()``
    was called. It belongs to the thread that began it; reads in it see one snapshot
    plus its own writes."""

    __slots__ = ("_state",)

    def __init__(self, state: TxnState) -> None:
        self._state = state

    @property
    def xid(self) -> int | None:
        """The transaction id, once the transaction has written (None before)."""
        return self._state.xid or None

    def rollback(self) -> None:
        """Abort at the end of the ``with`` block instead of committing."""
        self._state.rollback_only = True

    def __repr__(self) -> str:
        return f"<Transaction xid={self._state.xid or 'none'}>"


class _QueuedPut:
    """An autocommit KV write as ``_commit_one`` combines it: what to write, and what the
    combiner that applied it found (its COMMIT's end, or its error; ``retry``: not
    applied, the thread tries again); ``done`` (None for the combiner's own write) is
    held until then."""

    __slots__ = ("relation", "key", "data", "done", "end", "error", "retry")

    def __init__(self, relation: Relation, key: bytes, data: bytes | None, *,
                 own: bool = False) -> None:
        self.relation = relation
        self.key = key
        self.data = data
        self.done: threading.Lock | None = None
        if not own:
            self.done = threading.Lock()
            self.done.acquire()
        self.end = 0
        self.error: Exception | None = None
        self.retry = False


class _ThreadTxn(threading.local):
    """A thread's transaction slot: ``txn`` is None until the thread begins one (a class
    default, so reading it in a thread that never did is a plain attribute read instead
    of a caught AttributeError: ~50 ns instead of ~440 on every KV read)."""

    txn: TxnState | None = None


class TransactionLayer:
    """Transactions for the stores of one ``Database``; see the module docstring."""

    def __init__(self, xacts: TransactionManager, commit_lock: threading.Lock, *,
                 check_open: Callable[[], None], flush: Callable[[int], None],
                 note_wal_error: Callable[[BaseException], None], synchronous_commit: bool,
                 after_commit: Callable[[list[Relation]], None],
                 on_dropped: Callable[[list[Relation]], None],
                 after_commit_min_dead: int = 0) -> None:
        self.xacts = xacts
        self._commit_lock = commit_lock
        self._check_open = check_open
        self._flush = flush
        self._note_wal_error = note_wal_error
        self._synchronous_commit = synchronous_commit
        self._after_commit = after_commit
        # An autocommit write's relation goes to after_commit (autovacuum) only with at
        # least this many dead versions (below it the hook has nothing to do).
        self._after_commit_min_dead = after_commit_min_dead
        self._on_dropped = on_dropped
        self._local = _ThreadTxn()
        # Autocommit KV writes waiting for a combiner (invariant 4), and the lock that
        # makes a thread the combiner.
        self._queued: collections.deque[_QueuedPut] = collections.deque()
        self._combine_lock = threading.Lock()
        # An autocommit put of a key new to its leaf, or superseding its committed version
        # there, takes KVIndex.put_new (one C call for the leaf, its record and the COMMIT
        # in one WAL insertion; an overwrite asks twice); False: always the
        # general path, the reference its records and pages are compared with in tests.
        self.put_fast_path = True
        # The calling thread's slot: ``slot.txn`` is ``current()`` (a store's hot path reads
        # it without the call).
        self.slot = self._local
        # Set by Database.close (under the commit lock): a scan's per-pair check reads this
        # attribute instead of calling check_open (the full check runs per leaf batch).
        self.closed = False
        # The open check without a call, for a store's hot path: ``check_open()`` can only
        # raise once ``stopped`` (set by Database.close and by a fatal error) or
        # ``wal.failed`` (a failed WAL write or sync, noticed by the next check) is set; a
        # hot path reads both and calls ``check_open()`` when either is.
        self.stopped = False
        self.wal = xacts.wal

    # --- for the stores -----------------------------------------------------------------------
    def check_open(self) -> None:
        """Raise ``DatabaseClosedError`` unless the database is open and usable."""
        self._check_open()

    def is_usable(self) -> bool:
        """Whether ``check_open()`` would pass."""
        try:
            self._check_open()
        except SlonikError:
            return False
        return True

    def check_usable(self, relation: Relation, what: str) -> None:
        """Raise unless the database is open and ``relation`` (a store named ``what``, e.g.
        "KV store 'users'") is usable by the calling thread: ``RelationDroppedError`` once a
        drop committed, or when this thread's own transaction is dropping it."""
        self._check_open()
        if relation.state is not RelationState.LIVE:
            if relation.dropped:
                raise RelationDroppedError(f"{what} was dropped")
            txn = self.current()
            if txn is not None and txn.xid == relation.dropping_xid:
                raise RelationDroppedError(f"{what} was dropped by this transaction")

    def current(self) -> TxnState | None:
        """The calling thread's transaction, or None."""
        return self._local.txn

    def own_writes(self, relation: Relation) -> dict[bytes, bytes | None] | None:
        """The calling thread's buffered writes to ``relation`` (None: none, or no
        transaction)."""
        txn = self.current()
        return None if txn is None else txn.kv_writes.get(relation)

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[Snapshot]:
        """The snapshot a read sees: the thread's transaction's, or a registered one of its
        own (released at the end of the block, so vacuum keeps what it sees meanwhile)."""
        txn = self.current()
        if txn is not None and txn.snapshot is not None:
            yield txn.snapshot
            return
        snap = self.xacts.snapshot()
        try:
            yield snap
        finally:
            self.xacts.release(snap)

    def kv_write(self, relation: Relation, key: bytes, data: bytes | None, *,
                 check_open: bool = False) -> None:
        """Buffer a KV write (``data`` None: a delete) in the thread's transaction, or
        commit it at once as a transaction of its own; with ``check_open``, after
        ``check_open()`` (a put to a store known live: one call instead of three)."""
        txn = self._local.txn  # (self.current(), inline: once per put; a class default)
        if txn is not None:
            if check_open:
                self._check_open()
            writes = txn.kv_writes.get(relation)
            if writes is None:
                writes = txn.kv_writes[relation] = {}
            writes[key] = data
            return
        self._commit_one(relation, key, data)  # (checks the open state under the commit lock)

    def _commit_one(self, relation: Relation, key: bytes, data: bytes | None) -> None:
        """``_commit`` of an autocommit write to one KV store (a blind write set: no
        snapshot, drops or table writes), without the general case's bookkeeping: the
        same checks, order and failure handling, one relation.

        Concurrent autocommit writes are combined (invariant 4): a thread that finds
        another combining queues its write and sleeps; the combiner applies every queued
        write under one hold of the commit lock, flushes once past all of them and wakes
        their threads, which return (or raise their own error) as if they had committed
        alone. One thread at a time runs the interpreted apply, so the GIL and the commit
        lock are not handed around once per write. Uncontended (the combine lock free),
        the write is applied at once, without a queue entry, as a combiner of one."""
        combine = self._combine_lock
        if combine.acquire(False):   # no other writer applying: this write alone, at once
            try:
                with self._commit_lock:
                    end = self._commit_one_locked(relation, key, data)
            finally:
                combine.release()
                if self._queued:   # (invariant 4: writers queued meanwhile are served)
                    self._serve_queue()
            self._after_write(relation, end)
            return
        while not combine.acquire(False):
            put = _QueuedPut(relation, key, data)
            self._queued.append(put)
            if combine.acquire(False):  # the combiner left meanwhile: serve the queue
                self._combine(put)
                return
            put.done.acquire()  # (released by the combiner that served it)
            if put.retry:  # its combiner was interrupted before applying it
                continue
            self._finish_put(put)
            return
        self._combine(_QueuedPut(relation, key, data, own=True))

    def _serve_queue(self) -> None:
        """Combine the queued writes, unless another thread holds the combine lock (it
        serves them)."""
        if self._combine_lock.acquire(False):
            self._combine(None)

    def _combine(self, own: _QueuedPut | None) -> None:
        """Serve ``own`` (None: none) and every queued write, holding the combine lock
        (released here); then flush past them all, wake their threads and finish
        ``own``."""
        queued = self._queued
        served: list[_QueuedPut] = []
        end = 0
        own_first = own is not None and (own.done is None or own.retry)
        if own is not None:
            own.retry = False
        current = None
        holding = True
        try:
            while True:
                with self._commit_lock:
                    if own_first:
                        own_first = False
                        end = self._apply_put(own)
                    while queued:
                        current = queued.popleft()
                        served.append(current)
                        end = max(end, self._apply_put(current))
                        current = None
                # Invariant 4: release, then look again; a write queued after the last
                # look found the lock held and sleeps until a combiner serves it.
                holding = False
                self._combine_lock.release()
                if not queued or not self._combine_lock.acquire(False):
                    break
                holding = True
        except BaseException:
            if current is not None and not current.end:  # (applied: it stays served)
                current.retry = True
            if holding:
                self._combine_lock.release()
            while queued and self._combine_lock.acquire(False):
                while queued:
                    put = queued.popleft()
                    put.retry = True
                    served.append(put)
                self._combine_lock.release()
            for put in served:
                if put is not own:
                    put.done.release()
            raise
        failure = None
        if self._synchronous_commit and end:
            try:
                self._flush(end)
            except BaseException as exc:
                failure = exc  # raised here once the served threads are woken; theirs
                # raise from their own flush call (the WAL has failed)
        for put in served:
            if put is not own:
                put.done.release()
        if failure is not None:
            raise failure
        if own is not None:
            self._finish_put(own)

    def _finish_put(self, put: _QueuedPut) -> None:
        """Return from an autocommit write once served: raise its error, or flush to its
        COMMIT (already durable unless the combiner's flush failed, when this raises the
        WAL's error in this thread) and run the after-commit hook."""
        if put.error is not None:
            raise put.error
        self._after_write(put.relation, put.end)

    def _after_write(self, relation: Relation, end: int) -> None:
        """What follows an autocommit write's apply, applied alone or combined: flush to
        its COMMIT's ``end`` (synchronous_commit), then the after-commit hook when the
        relation has enough dead versions for it to act."""
        if self._synchronous_commit:
            self._flush(end)
        dead = relation.dead_versions
        if dead >= self._after_commit_min_dead and dead >= relation.vacuum_check_at:
            self._after_commit([relation])

    def _apply_put(self, put: _QueuedPut) -> int:
        """Apply and commit one autocommit write under the commit lock; returns its COMMIT
        record's end, or 0 with the write's error kept in ``put.error`` (an interrupt
        propagates)."""
        try:
            put.end = self._commit_one_locked(put.relation, put.key, put.data)
        except Exception as exc:
            put.error = exc
        return put.end

    def _commit_one_locked(self, relation: Relation, key: bytes, data: bytes | None) -> int:
        xacts = self.xacts
        index = relation.index
        writes = None
        self._check_open()
        if relation.state is _DROPPED:
            raise RelationDroppedError(f"{relation.kind} {relation.name!r} was dropped by "
                                       f"another transaction before this one committed")
        if data is None:  # a delete (a blind put is never refused)
            writes = {key: data}
            index.validate(writes, None, blind=True)  # KeyError: nothing written
        xid = xacts.assign_xid()
        try:
            # A put of a key new to its leaf, or superseding its committed version there:
            # its record and the COMMIT in one WAL insertion (the same records as apply +
            # log_commit); else the general path.
            got = None if writes is not None or not self.put_fast_path else \
                index.put_new(xid, key, data, xacts.commit_record(xid))
            if got is None:
                changes = index.apply(xid, writes or {key: data})
                end = xacts.log_commit(xid)
            else:
                end, changes = got   # (publish's count: the version it superseded)
        except BaseException as exc:
            self._note_wal_error(exc)
            xacts.abort(xid)
            raise
        if changes:
            relation.dead_versions += index.publish(xid, changes)
        xacts.finish_commit(xid)
        return end

    @contextlib.contextmanager
    def implicit(self, *, snapshot: bool = False) -> Iterator[TxnState]:
        """The thread's transaction, or an autocommit one bound to the thread for the
        block: blind writes (validated at commit only), or with ``snapshot`` a snapshot
        transaction whose reads and writes commit together (first committer wins)."""
        txn = self.current()
        if txn is not None:
            yield txn
            return
        state = TxnState(self.xacts.snapshot()) if snapshot else TxnState(None, blind=True)
        with self._bound(state) as txn:
            yield txn

    @contextlib.contextmanager
    def write(self, relation: Relation | None = None) -> Iterator[TxnState]:
        """The transaction of an eager heap write, with its xid assigned and a snapshot:
        the thread's transaction, or an autocommit one committed at the end of the block
        (aborted if it raises). A table ``relation`` counts one version made dead."""
        self._check_open()
        xacts = self.xacts
        txn = self.current()
        if txn is not None:
            if txn.snapshot is None:  # a blind (autocommit batch) transaction
                txn.snapshot = xacts.snapshot()
            if not txn.xid:
                txn.xid = txn.snapshot.own = xacts.assign_xid()
            if relation is not None:
                txn.table_writes[relation] = txn.table_writes.get(relation, 0) + 1
            yield txn
            return
        txn = TxnState(xacts.snapshot())
        txn.xid = txn.snapshot.own = xacts.assign_xid()
        if relation is not None:
            txn.table_writes[relation] = 1
        try:
            yield txn
        except BaseException:
            self._abort(txn)
            raise
        self._commit(txn)

    def guard(self, it: Iterator[T], check: Callable[[], None]) -> Iterator[T]:
        """``it`` with ``check()`` (the store's usability check) before every step, so an
        iterator used after ``db.close()`` or a drop raises that error instead of reading
        on; ``it`` is closed when the guard ends."""
        try:
            while True:
                check()
                try:
                    item = next(it)
                except StopIteration:
                    return
                except Exception:
                    check()  # closed or dropped underneath: that is the error to report
                    raise
                yield item
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    # Cleanup of a closed database has nothing left to release; an
                    # open database's cleanup failure is real.
                    if self.is_usable():
                        raise

    # --- db.transaction() ----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``with db.transaction():`` — see ``Transaction``. Not nestable."""
        self._check_open()
        if self.current() is not None:
            raise TransactionStateError("a transaction is already open in this thread; "
                                        "Slonik transactions do not nest")
        with self._bound(TxnState(self.xacts.snapshot())) as state:
            yield Transaction(state)

    @contextlib.contextmanager
    def _bound(self, txn: TxnState) -> Iterator[TxnState]:
        """Bind ``txn`` to this thread for the block; commit at its end, abort if it
        raises or ``rollback()`` was called."""
        self._local.txn = txn
        try:
            yield txn
        except BaseException:
            self._local.txn = None
            self._abort(txn)
            raise
        self._local.txn = None
        if txn.rollback_only:
            self._abort(txn)
        else:
            self._commit(txn)

    # --- commit and abort -------------------------------------------------------------------
    def _commit(self, txn: TxnState) -> None:
        drops = txn.drops
        kv = {r: w for r, w in txn.kv_writes.items() if w and r not in drops}
        xacts = self.xacts
        if not kv and not txn.xid:
            self._end(txn)
            return
        try:
            with self._commit_lock:
                self._check_open()
                snap = txn.snapshot
                if snap is None and not txn.blind:  # (a blind write set needs none)
                    snap = xacts.snapshot(register=False)
                try:
                    for relation in (*kv, *txn.table_writes):
                        if relation.dropped:
                            raise RelationDroppedError(
                                f"{relation.kind} {relation.name!r} was dropped by another "
                                f"transaction before this one committed")
                    for relation, writes in kv.items():
                        relation.index.validate(writes, snap, blind=txn.blind)
                except (ConflictError, KeyError, RelationDroppedError) as exc:
                    if isinstance(exc, ConflictError):
                        xacts.note_conflict()
                    if txn.xid:
                        xacts.abort(txn.xid)
                    self._undo_drops_locked(txn)
                    raise
                xid = txn.xid
                if not xid:
                    xid = txn.xid = xacts.assign_xid()
                try:
                    changes = [(r, r.index.apply(xid, writes)) for r, writes in kv.items()]
                    end = xacts.log_commit(xid, tuple(n for r in drops
                                                      for n in r.relfilenumbers()))
                except BaseException as exc:
                    self._note_wal_error(exc)
                    xacts.abort(xid)
                    self._undo_drops_locked(txn)
                    raise
                for relation, ch in changes:
                    relation.dead_versions += relation.index.publish(xid, ch)
                if drops:
                    for relation in drops:
                        relation.set_state(RelationState.DROPPED)
                    xacts.add_pending_unlinks(n for r in drops for n in r.relfilenumbers())
                    self._on_dropped(list(drops))
                xacts.finish_commit(xid)
        finally:
            self._end(txn)
        for relation, n in txn.table_writes.items():
            relation.dead_versions += n
        if self._synchronous_commit:
            self._flush(end)
        self._after_commit([*kv, *txn.table_writes])

    def _abort(self, txn: TxnState) -> None:
        try:
            if txn.xid:
                self.xacts.abort(txn.xid)
                for relation, n in txn.table_writes.items():
                    relation.dead_versions += n
        finally:
            if txn.drops:
                with self._commit_lock:
                    self._undo_drops_locked(txn)
            self._end(txn)

    def _undo_drops_locked(self, txn: TxnState) -> None:
        for relation in txn.drops:
            if relation.state is RelationState.DROP_PENDING and relation.dropping_xid == txn.xid:
                relation.set_state(RelationState.LIVE)
        txn.drops = []

    def _end(self, txn: TxnState) -> None:
        if txn.snapshot is not None:
            self.xacts.release(txn.snapshot)
        txn.kv_writes = {}
