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

A table reaches transactions only through the transaction layer (``engine.transaction``)
that ``Database`` hands it with its ``Relation``. A table (or a scan over it) used after
``db.close()`` raises ``DatabaseClosedError``; after ``db.drop()``, ``RelationDroppedError``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from slonik.engine.access.heap import Heap, HeapTuple
from slonik.engine.access.tuple import RowCodec, Tid
from slonik.engine.errors import ConflictError, RelationDroppedError
from slonik.engine.relation import Relation, RelationState
from slonik.engine.transaction import TransactionLayer
from slonik.engine.xact import Snapshot

__all__ = ["Table"]


def _check_tid(tid: object) -> Tid:
    if not isinstance(tid, tuple) or len(tid) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in tid):
        raise TypeError(f"tid must be a Tid(block, offnum) as returned by insert, not {tid!r}")
    return Tid(*tid)


class Table:
    """A table of typed rows (a heap relation); see the ``slonik.engine.table`` module.

    Obtain one with ``db.create_table(name, columns)`` or ``db.table(name)``. Rows are
    tuples in column order; a row is addressed by its ``Tid`` (block, offnum)."""

    def __init__(self, layer: TransactionLayer, relation: Relation) -> None:
        """Built by ``Database`` (use ``db.create_table`` / ``db.table``)."""
        self._layer = layer
        self._relation = relation
        self._codec = RowCodec(relation.columns)
        self._heap = relation.heap
        self._write_lock = threading.Lock()   # check-and-set of a version's xmax

    def __repr__(self) -> str:
        return f"<Table {self.name!r} {list(self.columns)} relfilenumber {self.rel}>"

    @property
    def name(self) -> str:
        """The table's name in the catalog."""
        return self._relation.name

    @property
    def rel(self) -> int:
        """The relfilenumber of the table's heap relation."""
        return self._relation.rel

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """(name, type) of each column, in row order."""
        return self._codec.columns

    @property
    def heap(self) -> Heap:
        """The heap relation holding every row version (for tools and tests)."""
        return self._heap

    def _check(self) -> None:
        self._layer.check_open()
        relation = self._relation
        if relation.state is not RelationState.LIVE:
            if relation.dropped:
                raise RelationDroppedError(f"table {relation.name!r} was dropped")
            txn = self._layer.current()
            if txn is not None and txn.xid == relation.dropping_xid:
                raise RelationDroppedError(f"table {relation.name!r} was dropped by this "
                                           f"transaction")

    # --- writes -----------------------------------------------------------------------------
    def insert(self, row: Sequence) -> Tid:
        """Insert ``row``; returns its Tid."""
        data = self._codec.encode(row)   # TypeError/ValueError naming the column
        self._check()
        with self._layer.write(self._relation) as txn:
            return self._heap.insert(txn.xid, data)

    def insert_many(self, rows: Iterable[Sequence]) -> list[Tid]:
        """Insert several rows at once (one WAL record per page filled); their Tids."""
        datas = [self._codec.encode(r) for r in rows]
        if not datas:
            return []
        self._check()
        with self._layer.write(self._relation) as txn:
            return self._heap.insert_many(txn.xid, datas)

    def update(self, tid: Tid, row: Sequence) -> Tid:
        """Replace the row at ``tid`` with ``row``; returns the new version's Tid.
        KeyError if this transaction sees no row there; ConflictError if another
        transaction changed it first."""
        tid = _check_tid(tid)
        data = self._codec.encode(row)
        self._check()
        with self._layer.write(self._relation) as txn, self._write_lock:
            self._check_writable(tid, txn.snapshot)
            return self._heap.update(tid, txn.xid, data)

    def delete(self, tid: Tid) -> None:
        """Delete the row at ``tid`` (errors as for ``update``)."""
        tid = _check_tid(tid)
        self._check()
        with self._layer.write(self._relation) as txn, self._write_lock:
            self._check_writable(tid, txn.snapshot)
            self._heap.delete(tid, txn.xid)

    def _check_writable(self, tid: Tid, snap: Snapshot) -> None:
        t = self._fetch(tid)
        if t is None or not snap.sees(t.xmin):
            raise KeyError(f"table {self.name!r} has no row at {tuple(tid)} visible to this "
                           f"transaction")
        xmax = t.xmax
        xacts = self._layer.xacts
        if not xmax or xmax in xacts.aborted:
            return
        if snap.sees(xmax):
            raise KeyError(f"table {self.name!r}: the row at {tuple(tid)} was deleted or "
                           f"updated (by transaction {xmax})")
        xacts.note_conflict()
        state = "is being changed by" if xacts.is_running(xmax) else \
            "was changed after this transaction started by"
        raise ConflictError(f"table {self.name!r}: the row at {tuple(tid)} {state} "
                            f"transaction {xmax}; retry the transaction")

    # --- reads ------------------------------------------------------------------------------
    def _fetch(self, tid: Tid) -> HeapTuple | None:
        try:
            return self._heap.fetch(tid)
        except ValueError:  # past the end of the relation
            return None

    def get(self, tid: Tid) -> tuple | None:
        """The row at ``tid`` as this transaction (or, outside one, the latest committed
        state) sees it; None if there is none."""
        tid = _check_tid(tid)
        self._check()
        txn = self._layer.current()
        t = self._fetch(tid)
        if t is None:
            return None
        if txn is not None and txn.snapshot is not None:
            visible = txn.snapshot.visible(t.xmin, t.xmax)
        else:
            c = self._layer.xacts.is_committed
            visible = c(t.xmin) and not (t.xmax and c(t.xmax))
        return self._codec.decode(t.data) if visible else None

    def scan(self) -> Iterator[tuple]:
        """Every visible row, in physical order, through a read stream (one snapshot)."""
        return (row for _tid, row in self.items())

    def items(self) -> Iterator[tuple[Tid, tuple]]:
        """(tid, row) of every visible row, in physical order (one snapshot)."""
        self._check()
        return self._layer.guard(self._items(), self._check)

    def _items(self) -> Iterator[tuple[Tid, tuple]]:
        with self._layer.read_snapshot() as snap:
            visible = snap.visible
            decode = self._codec.decode
            for t in self._heap.scan():
                if visible(t.xmin, t.xmax):
                    yield t.tid, decode(t.data)

    def __iter__(self) -> Iterator[tuple]:
        """Every visible row (``scan()``)."""
        return self.scan()

    def count(self) -> int:
        """How many rows are visible (one scan)."""
        return sum(1 for _ in self.items())
