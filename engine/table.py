"""Tables: typed rows in a heap relation, read by TID or by a sequential scan.

``db.create_table(name, [(column, type), ...])`` with types int8, float8, text, bytea,
bool (every column may be NULL = None). Rows are tuples; ``insert`` returns the row's Tid,
``get(tid)`` returns the row or None, ``update(tid, row)`` returns the new version's Tid,
``delete(tid)``; ``scan()`` reads every page through a read stream and yields the rows
the snapshot sees.

Writes are eager: the first write of a transaction assigns its xid and every write goes
to the heap at once (an abort leaves versions with an aborted xmin, which nobody sees and
vacuum removes). An update or delete of a version that another transaction is changing
(xmax running) or changed after this transaction's snapshot (xmax committed, not seen)
raises ``ConflictError`` at once: first writer wins, as in PostgreSQL's repeatable read.
Outside a transaction each write is a durable transaction of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from slonik.engine.access.heap import Heap
from slonik.engine.access.tuple import RowCodec, Tid
from slonik.engine.errors import ConflictError
from slonik.engine.xact import Snapshot

__all__ = ["Table"]


def _check_tid(tid: object) -> Tid:
    if not isinstance(tid, tuple) or len(tid) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in tid):
        raise TypeError(f"tid must be a Tid(block, offnum) as returned by insert, not {tid!r}")
    return Tid(*tid)


class Table:
    """See the module docstring. Obtain one with ``Database.create_table``/``table``."""

    def __init__(self, db, name: str, rel: int, columns: Sequence[tuple[str, str]]) -> None:
        self._db = db
        self.name = name
        self.rel = rel
        self.codec = RowCodec(columns)
        self._heap = Heap(rel, db._bufmgr, db._wal)
        self._write_lock = threading.Lock()   # check-and-set of a version's xmax
        self.dead_versions = 0

    def __repr__(self) -> str:
        return f"<Table {self.name!r} {list(self.codec.columns)} relfilenumber {self.rel}>"

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        return self.codec.columns

    @property
    def heap(self) -> Heap:
        return self._heap

    # --- writes -----------------------------------------------------------------------------
    def insert(self, row: Sequence) -> Tid:
        data = self.codec.encode(row)   # TypeError/ValueError naming the column
        with self._db._write_transaction(self) as (xid, _snap):
            return self._heap.insert(xid, data)

    def insert_many(self, rows) -> list[Tid]:
        """Several rows at once (one WAL record per page filled)."""
        datas = [self.codec.encode(r) for r in rows]
        if not datas:
            return []
        with self._db._write_transaction(self) as (xid, _snap):
            return self._heap.insert_many(xid, datas)

    def update(self, tid: Tid, row: Sequence) -> Tid:
        tid = _check_tid(tid)
        data = self.codec.encode(row)
        with self._db._write_transaction(self) as (xid, snap), self._write_lock:
            self._check_writable(tid, snap)
            return self._heap.update(tid, xid, data)

    def delete(self, tid: Tid) -> None:
        tid = _check_tid(tid)
        with self._db._write_transaction(self) as (xid, snap), self._write_lock:
            self._check_writable(tid, snap)
            self._heap.delete(tid, xid)

    def _check_writable(self, tid: Tid, snap: Snapshot) -> None:
        t = self._fetch(tid)
        if t is None or not snap.sees(t.xmin):
            raise KeyError(f"table {self.name!r} has no row at {tuple(tid)} visible to this "
                           f"transaction")
        xmax = t.xmax
        if not xmax or xmax in self._db._xacts.aborted:
            return
        if snap.sees(xmax):
            raise KeyError(f"table {self.name!r}: the row at {tuple(tid)} was deleted or "
                           f"updated (by transaction {xmax})")
        self._db._xacts.conflicts += 1
        state = "is being changed by" if self._db._xacts.is_running(xmax) else \
            "was changed after this transaction started by"
        raise ConflictError(f"table {self.name!r}: the row at {tuple(tid)} {state} "
                            f"transaction {xmax}; retry the transaction")

    # --- reads ------------------------------------------------------------------------------
    def _fetch(self, tid: Tid):
        try:
            return self._heap.fetch(tid)
        except ValueError:  # past the end of the relation
            return None

    def get(self, tid: Tid) -> tuple | None:
        """The row at ``tid`` as this transaction (or, outside one, the latest committed
        state) sees it; None if there is none."""
        tid = _check_tid(tid)
        self._db._check_open()
        txn = self._db._current_transaction()
        t = self._fetch(tid)
        if t is None:
            return None
        if txn is not None:
            visible = txn.snapshot.visible(t.xmin, t.xmax)
        else:
            c = self._db._xacts.is_committed
            visible = c(t.xmin) and not (t.xmax and c(t.xmax))
        return self.codec.decode(t.data) if visible else None

    def scan(self) -> Iterator[tuple]:
        """Every visible row, in physical order, through a read stream."""
        return (row for _tid, row in self.items())

    def items(self) -> Iterator[tuple[Tid, tuple]]:
        """(tid, row) of every visible row, in physical order."""
        self._db._check_open()
        return self._items()

    def _items(self):
        db = self._db
        txn = db._current_transaction()
        if txn is not None:
            snap, mine = txn.snapshot, None
        else:
            snap = mine = db._xacts.snapshot()
        try:
            visible = snap.visible
            decode = self.codec.decode
            for t in self._heap.scan():
                if visible(t.xmin, t.xmax):
                    yield t.tid, decode(t.data)
        finally:
            if mine is not None:
                db._xacts.release(mine)

    def __iter__(self) -> Iterator[tuple]:
        return self.scan()

    def count(self) -> int:
        return sum(1 for _ in self.items())
