"""Tables: typed rows in a heap relation, read by TID or by a sequential scan.

``db.create_table(name, [(column, type), ...])`` with types int8, float8, text, bytea,
bool (every column may be NULL = None). Rows are tuples; ``insert`` returns the row's Tid,
``get(tid)`` returns the row or None, ``update(tid, row)`` returns the new version's Tid,
``delete(tid)``; ``scan()`` reads every page through a read stream and yields the rows
the snapshot sees.

With a primary key (``db.create_table(..., primary_key="id")``) or indexes
(``t.create_index(name, columns, unique=False)``) every row version also gets an entry in
each B+tree index (``engine.index``), in the same transaction: ``get(id=...)``,
``lookup(index, key)`` and ``range(index, start, stop, reverse=False)`` find rows through
them (visibility and the key are re-checked on the heap tuple), ``update(row)`` and
``delete(id=...)`` address a row by its primary key. A primary key's columns are NOT
NULL; in a unique index a key with a NULL never conflicts (NULLs are distinct, as in
PostgreSQL). A second live row for a unique key raises ``UniqueViolation`` before
anything is written and aborts the transaction (``rollback()``: a ``with
db.transaction()`` block that catches it still ends in an abort). A row being inserted
or deleted under the same key by another running transaction is a ``ConflictError``
(PostgreSQL would wait for it). A TID is a physical address, valid within a snapshot
(vacuum frees the slots of dead versions for reuse); the primary key is a row's stable
identity.

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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import chain, compress
from operator import eq

from slonik.engine.access.btree import KEY_MAX_BYTES, XidSnapshot
from slonik.engine.access.heap import Heap, HeapTuple, RowRun, collector_paused
from slonik.engine.access.heap_fetch import VISIBLE, fetch_tuple
from slonik.engine.access.tuple import RowCodec, Tid
from slonik.engine.errors import ConflictError, UniqueViolation
from slonik.engine.index import (
    POINT_OTHER,
    TID_SUFFIX_BYTES,
    IndexCheckResult,
    TableIndex,
    check_index,
    fetch_batched,
    range_rows,
    split_entry_key,
)
from slonik.engine.relation import Relation, RelationState
from slonik.engine.transaction import TransactionLayer, TxnState
from slonik.engine.xact import Snapshot

__all__ = ["Table"]

_LIVE = RelationState.LIVE   # get(id=)'s state test, as a module constant

# An exact index read (a primary key, a unique key) with at most this many entries fetches
# each heap tuple directly; more (a key shared by many rows) go through fetch_batched.
POINT_READ_ENTRIES_MAX = 4


def _check_tid(tid: object) -> Tid:
    if not isinstance(tid, tuple) or len(tid) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in tid):
        raise TypeError(f"tid must be a Tid(block, offnum) as returned by insert, not {tid!r}")
    return Tid(*tid)


class Table:
    """A table of typed rows (a heap relation); see the ``slonik.engine.table`` module.

    Obtain one with ``db.create_table(name, columns)`` or ``db.table(name)``. Rows are
    tuples in column order; a row is addressed by its ``Tid`` (block, offnum)."""

    def __init__(self, layer: TransactionLayer, relation: Relation, *,
                 create_index: Callable[..., None] | None = None) -> None:
        """Built by ``Database`` (use ``db.create_table`` / ``db.table``);
        ``create_index(table, name, columns, unique)`` is the database's DDL step."""
        self._layer = layer
        self._relation = relation
        self._codec = RowCodec(relation.columns)
        self._heap = relation.heap
        self._create_index = create_index
        # get(id=)'s (column, primary key index) of a one-column primary key, remembered
        # by its first call (the primary key never changes)
        self._pk_point: tuple[str, TableIndex] | None = None
        # Check-and-set of a version's xmax, and a write's uniqueness checks with the
        # index entries they guard.
        self._write_lock = threading.Lock()

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
        self._layer.check_usable(self._relation, f"table {self._relation.name!r}")

    # --- indexes ----------------------------------------------------------------------------
    @property
    def primary_key(self) -> tuple[str, ...]:
        """The primary key's columns (empty: none)."""
        pk = self._pk_index()
        return pk.entry.columns if pk is not None else ()

    @property
    def indexes(self) -> dict[str, tuple[tuple[str, ...], bool]]:
        """name -> (columns, unique) of every index, the primary key's included."""
        return {i.name: (i.entry.columns, i.unique) for i in self._relation.table_indexes}

    def create_index(self, name: str, columns: Sequence[str], unique: bool = False) -> None:
        """Build a B+tree index ``name`` over ``columns`` from the rows already stored
        (one transaction of its own, durable on return). ValueError for an unknown column,
        an index name in use or a column named twice; UniqueViolation when ``unique`` and
        two live rows share a key."""
        if isinstance(columns, str):
            columns = [columns]
        columns = tuple(columns)
        known = [n for n, _t in self.columns]
        if not columns:
            raise ValueError(f"index {name!r} needs at least one column")
        for c in columns:
            if not isinstance(c, str):
                raise TypeError(f"index {name!r}: column names must be str, not {c!r}")
            if c not in known:
                raise ValueError(f"index {name!r}: table {self.name!r} has no column {c!r} "
                                 f"(its columns are {', '.join(known)})")
        if len(set(columns)) != len(columns):
            raise ValueError(f"index {name!r} names a column twice: {list(columns)}")
        if not isinstance(unique, bool):
            raise TypeError(f"unique must be a bool, not {type(unique).__name__}")
        self._check()
        if self._create_index is None:
            raise ValueError(f"table {self.name!r} cannot be given indexes here")
        self._create_index(self, name, columns, unique)

    def attach_index(self, index: TableIndex, xid: int) -> None:
        """Fill ``index`` from every heap tuple not written by an aborted transaction,
        then maintain it with every later write (for ``Database``'s create_index, under
        its commit lock). UniqueViolation / ConflictError leave the table unchanged."""
        xacts = self._layer.xacts
        decode = self._codec.decode
        with self._write_lock:
            entries = []
            live: dict[bytes, Tid] = {}
            for t in self._heap.scan():
                if t.xmin in xacts.aborted:
                    continue
                row = decode(t.data)
                key = index.key_of_row(row)
                entries.append((key, t.tid))
                if index.unique and None not in index.values_of(row) \
                        and self._live_for_unique(t, xid, index):
                    if key in live:
                        raise UniqueViolation(self._duplicate(index, index.values_of(row)))
                    live[key] = t.tid
            index.build(xid, entries)
            self._relation.table_indexes.append(index)

    def check_indexes(self) -> list[IndexCheckResult]:
        """amcheck-like verification of every index against the heap (under the write
        lock, one snapshot): every entry points at a heap tuple with the entry's key, and
        every tuple the latest committed state sees has an entry in each index."""
        self._check()
        decode = self._codec.decode
        with self._write_lock, self._layer.read_snapshot() as snap:
            heap = {t.tid: t for t in self._heap.scan()}
            rows = {tid: decode(t.data) for tid, t in heap.items()}
            return [check_index(index, rows,
                                lambda tid: snap.visible(heap[tid].xmin, heap[tid].xmax))
                    for index in self._relation.table_indexes]

    def _pk_index(self) -> TableIndex | None:
        for i in self._relation.table_indexes:
            if i.primary:
                return i
        return None

    def _index(self, name: object) -> TableIndex:
        if not isinstance(name, str):
            raise TypeError(f"an index name must be a str, not {type(name).__name__}")
        for i in self._relation.table_indexes:
            if i.name == name:
                return i
        raise KeyError(f"table {self.name!r} has no index {name!r} (it has "
                       f"{', '.join(sorted(self.indexes)) or 'none'})")

    def _pk_values(self, key: dict) -> tuple[TableIndex, tuple]:
        pk = self._pk_index()
        if pk is None:
            raise ValueError(f"table {self.name!r} has no primary key: address rows by Tid")
        cols = pk.entry.columns
        if len(cols) == 1 and len(key) == 1 and cols[0] in key:  # the usual case, fast
            return pk, (key[cols[0]],)
        if set(key) != set(cols):
            raise ValueError(f"table {self.name!r}: the primary key is ({', '.join(cols)}); "
                             f"got {', '.join(sorted(key)) or 'no columns'}")
        return pk, tuple(key[c] for c in cols)

    def _row_keys(self, row: Sequence, indexes: list[TableIndex] | None = None
                  ) -> list[tuple[TableIndex, bytes, bool]]:
        """(index, encoded key, whether it can conflict) of ``row`` for every index (of
        ``indexes``: default, the table's)."""
        out = []
        for index in self._relation.table_indexes if indexes is None else indexes:
            values = index.values_of(row)
            if index.primary:
                for c, v in zip(index.entry.columns, values, strict=True):
                    if v is None:
                        raise ValueError(f"table {self.name!r}: primary key column {c!r} "
                                         f"cannot be NULL")
            out.append((index, index.encode(values),
                        index.unique and None not in values))
        return out

    def _batch_keys(self, rows: list[Sequence], indexes: list[TableIndex]
                    ) -> list[tuple[list[bytes], list[bool] | bool]]:
        """Per index of ``indexes`` (the table's): the rows' encoded keys, and whether each
        can conflict (a list; or one bool for all). Column-wise
        (``TableIndex.encode_rows``) when no key column holds a NULL or an unusual value,
        else ``_row_keys`` row by row, which raises naming the first row's bad value."""
        out: list[tuple[list[bytes], list[bool] | bool]] = []
        for index in indexes:
            got = index.encode_rows(rows)
            if got is None:
                break
            out.append((got, index.unique))   # (no NULL: a unique index's keys conflict)
        else:
            return out
        per_row = [self._row_keys(r, indexes) for r in rows]
        return [([rk[n][1] for rk in per_row], [rk[n][2] for rk in per_row])
                for n in range(len(indexes))]

    def _check_unique_many(self, txn: TxnState, rows: list[Sequence],
                           indexes: list[TableIndex],
                           keys: list[tuple[list[bytes], list[bool] | bool]]) -> None:
        """``_check_unique`` of a bulk insert's rows (keys from ``_batch_keys``), with its
        outcome: the first (row, index) that fails, in that order, raises as it would
        there. The keys a row repeats are found with one set per index, the entries
        already holding a key with ``TableIndex.holders`` (a walk of the leaves the batch
        spans, for a batch as large as the index); only rows found so are looked at one
        by one."""
        found = []   # (row, index position, index, key, tids: None for a repeat)
        for pos, (index, (ks, conflicts)) in enumerate(zip(indexes, keys, strict=True)):
            if not index.unique or conflicts is False:
                continue
            first: dict[bytes, int] | None = None
            if conflicts is True:
                distinct: Collection[bytes] = set(ks)
                if len(distinct) < len(ks):
                    first = {}
            else:
                first = {}
            if first is not None:   # a key repeated, or rows that cannot conflict
                rows_of = range(len(ks)) if conflicts is True else \
                    compress(range(len(ks)), conflicts)
                for i in rows_of:
                    if ks[i] in first:
                        found.append((i, pos, index, ks[i], None))
                    else:
                        first[ks[i]] = i
                distinct = first.keys()
            held = index.holders(distinct)
            if held and first is None:
                first = dict(zip(ks, range(len(ks)), strict=True))   # (no key repeated)
            for key, tids in held.items():
                found.append((first[key], pos, index, key, tids))
        if not found:
            return
        try:
            for i, _pos, index, key, tids in sorted(found, key=lambda f: f[:2]):
                if tids is None or self._held_by_live_row(txn, index, key, tids):
                    raise UniqueViolation(self._duplicate(index, index.values_of(rows[i])))
        except (UniqueViolation, ConflictError):
            txn.rollback_only = True
            raise

    def _held_by_live_row(self, txn: TxnState, index: TableIndex, key: bytes,
                          tids: Iterable[Tid]) -> bool:
        """Whether a row at one of ``tids`` (``index``'s entries for ``key``) still has
        ``key`` and holds it against ``txn``'s new row (``_live_for_unique``, which raises
        ConflictError for a running writer)."""
        decode = self._codec.decode
        for tid in tids:
            t = self._fetch(tid)
            if t is not None and index.key_of_row(decode(t.data)) == key and \
                    self._live_for_unique(t, txn.xid, index):
                return True
        return False

    @staticmethod
    def _duplicate(index: TableIndex, values: tuple) -> str:
        cols = ", ".join(index.entry.columns)
        vals = ", ".join(repr(v) for v in values)
        return (f"duplicate key value violates unique constraint {index.name!r}: "
                f"({cols})=({vals}) already exists")

    def _live_for_unique(self, t: HeapTuple, xid: int, index: TableIndex) -> bool:
        """Whether ``t`` holds its key against a new row of ``xid`` (PostgreSQL's dirty
        snapshot: committed or own, not deleted by a committed or own transaction). A
        running inserter or deleter is a ConflictError."""
        xacts = self._layer.xacts
        xmin, xmax = t.xmin, t.xmax
        if xmin != xid:
            if xmin in xacts.aborted:
                return False
            if xacts.is_running(xmin):
                xacts.note_conflict()
                raise ConflictError(f"index {index.name!r}: a row with this key is being "
                                    f"inserted by transaction {xmin}; retry the transaction")
        if not xmax or xmax in xacts.aborted:
            return True
        if xmax == xid:
            return False
        if xacts.is_running(xmax):
            xacts.note_conflict()
            raise ConflictError(f"index {index.name!r}: a row with this key is being "
                                f"deleted by transaction {xmax}; retry the transaction")
        return False

    def _check_unique(self, txn: TxnState, rows: list[Sequence],
                      keys: list[list[tuple[TableIndex, bytes, bool]]],
                      replacing: Tid | None = None) -> None:
        """UniqueViolation (the transaction marked rollback-only) unless every unique
        key of ``rows`` is free: not held by a live row other than ``replacing``, nor
        twice among ``rows``. Called under the write lock."""
        batch: set[tuple[str, bytes]] = set()
        try:
            for row, row_keys in zip(rows, keys, strict=True):
                for index, key, can_conflict in row_keys:
                    if not can_conflict:
                        continue
                    if (index.name, key) in batch:
                        raise UniqueViolation(self._duplicate(index, index.values_of(row)))
                    batch.add((index.name, key))
                    tids = [tid for _k, tid in index.matching(key) if tid != replacing]
                    if self._held_by_live_row(txn, index, key, tids):
                        raise UniqueViolation(self._duplicate(index, index.values_of(row)))
        except (UniqueViolation, ConflictError):
            txn.rollback_only = True
            raise

    def _add_entries(self, txn: TxnState, xid: int,
                     keys: list[tuple[TableIndex, bytes, bool]], tid: Tid) -> None:
        try:
            for index, key, _c in keys:
                index.insert(xid, key, tid)
        except BaseException:
            txn.rollback_only = True   # the heap tuple is written: never commit it alone
            raise

    # --- writes -----------------------------------------------------------------------------
    def insert(self, row: Sequence) -> Tid:
        """Insert ``row``; returns its Tid. UniqueViolation for a key a live row has."""
        data = self._codec.encode(row)   # TypeError/ValueError naming the column
        self._check()
        if not self._relation.table_indexes:
            with self._layer.write(self._relation) as txn:
                return self._heap.insert(txn.xid, data)
        keys = self._row_keys(row)
        with self._layer.write(self._relation) as txn, self._write_lock:
            self._check_unique(txn, [row], [keys])
            tid = self._heap.insert(txn.xid, data)
            self._add_entries(txn, txn.xid, keys, tid)
            return tid

    def insert_many(self, rows: Iterable[Sequence]) -> list[Tid]:
        """Insert several rows at once (one WAL record per page filled); their Tids."""
        rows = list(rows)
        codec = self._codec
        # Laid out column by column in one buffer when the rows allow (no NULL, exact
        # types), else encoded row by row, which names a bad value.
        datas = codec.pack_many(rows) or codec.encode_many(rows)
        if not datas:
            return []
        self._check()
        indexes = self._relation.table_indexes
        if not indexes:
            with self._layer.write(self._relation) as txn:
                return self._heap.insert_many(txn.xid, datas)
        # (the collector paused: a key, a tuple and a Tid per row, no cycles; see heap.py)
        with collector_paused():
            indexes = list(indexes)
            keys = self._batch_keys(rows, indexes)   # (bad input raises before any write)
            return self._insert_indexed(rows, datas, indexes, keys)

    def _insert_indexed(self, rows: list[Sequence], datas, indexes: list[TableIndex],
                        keys: list) -> list[Tid]:
        with self._layer.write(self._relation) as txn, self._write_lock:
            if self._relation.table_indexes != indexes:   # an index made meanwhile
                indexes = list(self._relation.table_indexes)
                keys = self._batch_keys(rows, indexes)
            self._check_unique_many(txn, rows, indexes, keys)
            tids = self._heap.insert_many(txn.xid, datas)
            try:
                for index, (index_keys, _conflicts) in zip(indexes, keys, strict=True):
                    # One sorted batch per index: runs that land on one leaf are one record.
                    index.build_columns(txn.xid, index_keys, tids)
            except BaseException:
                txn.rollback_only = True   # the heap tuples are written: never commit alone
                raise
            return tids

    def update(self, tid: Tid | Sequence, row: Sequence | None = None) -> Tid:
        """``update(row)``: replace the row with ``row``'s primary key; ``update(tid,
        row)``: the row at ``tid``. Returns the new version's Tid. KeyError if this
        transaction sees no such row; ConflictError if another transaction changed it
        first; UniqueViolation if ``row`` takes a key a live row has."""
        by_key = row is None
        if by_key:
            row = tid
        else:
            tid = _check_tid(tid)
        data = self._codec.encode(row)
        pk = self._pk_index()
        if by_key and pk is None:
            raise ValueError(f"table {self.name!r} has no primary key: use update(tid, row)")
        self._check()
        keys = self._row_keys(row)
        with self._layer.write(self._relation) as txn, self._write_lock:
            if by_key:
                tid, old_row = self._writable_by_key(pk, pk.values_of(row), txn.snapshot)
            else:
                old, old_row = self._check_writable(tid, txn.snapshot), None
            if any(c for _i, _k, c in keys):
                # A unique key the row keeps needs no check: the version replaced holds it
                # and, the indexes being unique, no other live row can (the primary key of
                # an update by key, always).
                if old_row is None:
                    old_row = self._codec.decode(old.data)
                checks = [(i, k, c and i.key_of_row(old_row) != k) for i, k, c in keys]
                self._check_unique(txn, [row], [checks], replacing=tid)
            new = self._heap.update(tid, txn.xid, data)
            self._add_entries(txn, txn.xid, keys, new)
            return new

    def delete(self, tid: Tid | None = None, **key: object) -> None:
        """``delete(tid)``, or ``delete(id=...)`` by primary key (errors as for
        ``update``)."""
        if tid is not None and key:
            raise TypeError("delete takes a Tid or primary key columns, not both")
        if tid is not None:
            tid = _check_tid(tid)
        elif not key:
            raise TypeError("delete needs a Tid or the primary key's columns (e.g. id=1)")
        else:
            pk, values = self._pk_values(key)
            pk.encode(values)   # TypeError naming the column before anything starts
        self._check()
        with self._layer.write(self._relation) as txn, self._write_lock:
            if tid is None:
                tid, _row = self._writable_by_key(pk, values, txn.snapshot)
            else:
                self._check_writable(tid, txn.snapshot)
            self._heap.delete(tid, txn.xid)

    def _visible_tid(self, pk: TableIndex, values: tuple, snap: Snapshot) -> Tid:
        for tid, _row in self._index_rows(pk, pk.encode(values), snap):
            return Tid(*tid)
        raise self._no_row(pk, values)

    def _no_row(self, pk: TableIndex, values: tuple) -> KeyError:
        cols = ", ".join(f"{c}={v!r}" for c, v in zip(pk.entry.columns, values, strict=True))
        return KeyError(f"table {self.name!r} has no row with {cols} visible to this "
                        f"transaction")

    def _writable_by_key(self, pk: TableIndex, values: tuple, snap: Snapshot
                         ) -> tuple[Tid, tuple]:
        """(tid, row) of the row with primary key ``values`` that this transaction sees
        and may change (errors as ``_visible_tid`` and ``_check_writable``): the usual
        key, whose entries sit on one leaf, costs one fetch and one decode of each entry's
        tuple (judged by ``snap`` and re-checked against the key), not a visibility fetch
        and then a writability fetch."""
        key = pk.encode(values)
        tids = pk.point_tids(key)
        if tids is None:   # entries over several leaves: the general path
            tid = self._visible_tid(pk, values, snap)
            return tid, self._codec.decode(self._check_writable(tid, snap).data)
        for i in range(0, len(tids), 2):
            found = self._point_tuple(pk, key, tids[i], tids[i + 1], snap)
            if found is not None:
                tid = Tid(tids[i], tids[i + 1])
                self._check_xmax(tid, found[0][1], snap)
                return tid, found[1]
        raise self._no_row(pk, values)

    def _check_writable(self, tid: Tid, snap: Snapshot) -> HeapTuple:
        """The tuple at ``tid`` when this transaction may change it: KeyError when it
        sees no row there (or sees it deleted), ConflictError when another transaction
        changed it and has not aborted."""
        t = self._fetch(tid)
        if t is None or not snap.sees(t.xmin):
            raise KeyError(f"table {self.name!r} has no row at {tuple(tid)} visible to this "
                           f"transaction")
        self._check_xmax(tid, t.xmax, snap)
        return t

    def _check_xmax(self, tid: Tid, xmax: int, snap: Snapshot) -> None:
        """``_check_writable``'s test of the deleter of the version at ``tid``."""
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

    def _index_rows(self, index: TableIndex, prefix: bytes, snap: Snapshot,
                    stop: bytes | None = None, *, exact: bool = True,
                    reverse: bool = False) -> Iterator[tuple[tuple[int, int], tuple]]:
        """((block, offnum), row) of the visible rows whose ``index`` key starts with
        ``prefix`` (``exact``) or lies in [prefix, stop), in index order. A few exact
        entries are fetched one by one; otherwise a batch of entries at a time, each heap
        page of a batch pinned once (through a read stream when not cached), the batch's
        visibility, decoding and key re-checks done in C-level iteration."""
        if exact:
            tids = index.point_tids(prefix)
            if tids is not None:   # a whole key, its entries on one leaf: each fetched
                for i in range(0, len(tids), 2):
                    found = self._point_tid_row(index, prefix, tids[i], tids[i + 1], snap)
                    if found is not None:
                        yield (tids[i], tids[i + 1]), found
                return
            ks = index.matching_keys(prefix)
            if len(ks) <= POINT_READ_ENTRIES_MAX:
                for k in ks:
                    found = self._point_row(index, k, snap)
                    if found is not None:
                        yield found
                return
            batches = [ks]
        else:
            batches = index.entry_key_batches(prefix, stop, reverse=reverse)
        for tids, rows in self._row_batches(index, batches, snap):
            yield from zip(tids, rows, strict=True)

    def _row_batches(self, index: TableIndex, batches: Iterable[list[bytes]],
                     snap: Snapshot) -> Iterator[tuple[list[tuple[int, int]], list[tuple]]]:
        """(tids, rows) of the visible rows of each batch of ``index`` entry keys, a
        batch at a time: the heap side in one call (``fetch_batched``), the rows decoded
        in one call (``RowCodec.decode_run``) and re-checked against the entries' keys
        column-wise (a slot reused since the entry was read holds another key)."""
        decode_run = self._codec.decode_run
        keys_of_rows = index.keys_of_rows
        for b in fetch_batched(self._heap, batches, self._xid_snapshot(snap)):
            if b.status.count(VISIBLE) == len(b.status):   # the usual batch: no selection
                rows = decode_run(b.data, b.starts, b.ends)
                same = list(map(eq, keys_of_rows(rows), b.keys))
                if all(same):
                    yield b.tids, rows
                else:
                    yield list(compress(b.tids, same)), list(compress(rows, same))
                continue
            sel = [i for i, st in enumerate(b.status) if st == VISIBLE]
            if not sel:
                continue
            rows = decode_run(b.data, list(map(b.starts.__getitem__, sel)),
                              list(map(b.ends.__getitem__, sel)))
            same = list(map(eq, keys_of_rows(rows), map(b.keys.__getitem__, sel)))
            if all(same):
                yield list(map(b.tids.__getitem__, sel)), rows
            else:
                yield (list(compress(map(b.tids.__getitem__, sel), same)),
                       list(compress(rows, same)))

    def _point_row(self, index: TableIndex, entry_key: bytes,
                   snap: Snapshot) -> tuple[tuple[int, int], tuple] | None:
        """((block, offnum), row) of the index entry ``entry_key`` (TID suffix included)
        when its heap tuple is visible to ``snap`` and still has the entry's key, else
        None: one pin and lock of one heap page."""
        key, tid = split_entry_key(entry_key)
        t = fetch_tuple(self._heap, tid.block, tid.offnum)
        if t is None or not snap.visible(t[0], t[1]):
            return None
        row = self._codec.decode(t[2])
        return (tid, row) if index.key_of_row(row) == key else None

    def _point_tuple(self, index: TableIndex, key: bytes, block: int, offnum: int,
                     snap: Snapshot) -> tuple[tuple[int, int, bytes], tuple] | None:
        """((xmin, xmax, data), row) of the tuple at (``block``, ``offnum``) when an entry
        of ``index`` with the encoded key ``key`` points there, the tuple is visible to
        ``snap`` and still has that key, else None: one pin and lock of one heap page."""
        t = fetch_tuple(self._heap, block, offnum)
        if t is None or not snap.visible(t[0], t[1]):
            return None
        row = self._codec.decode(t[2])
        return (t, row) if index.key_of_row(row) == key else None

    def _point_tid_row(self, index: TableIndex, key: bytes, block: int, offnum: int,
                       snap: Snapshot) -> tuple | None:
        """The row of ``_point_tuple``, or None."""
        found = self._point_tuple(index, key, block, offnum, snap)
        return None if found is None else found[1]

    def _key_tuple(self, index: TableIndex, key: object, what: str) -> tuple:
        if not isinstance(key, (tuple, list)):
            key = (key,)
        if len(key) > len(index.key_columns):
            raise ValueError(f"index {index.name!r} has {len(index.key_columns)} columns "
                             f"({', '.join(index.entry.columns)}); {what} {tuple(key)!r} has "
                             f"{len(key)} values")
        return tuple(key)

    def lookup(self, index: str, key: object) -> list[tuple]:
        """The visible rows whose ``index`` key is ``key`` (a tuple of values, or a
        prefix of the index's columns; one value for a one-column index), in index
        order. KeyError naming an unknown index; TypeError naming a column for a value of
        the wrong type."""
        idx = self._index(index)
        prefix = idx.encode(self._key_tuple(idx, key, "key"))
        self._check()
        with self._layer.read_snapshot() as snap:
            return [row for _tid, row in self._index_rows(idx, prefix, snap)]

    def range(self, index: str, start: object = None, stop: object = None, *,
              reverse: bool = False) -> Iterator[tuple]:
        """The visible rows with ``start <= key < stop`` on ``index`` (tuples of values or
        prefixes of the index's columns; None: unbounded; a stop prefix excludes every row
        that starts with it), in index order or ``reverse``d; one snapshot."""
        idx = self._index(index)
        lo = None if start is None else idx.encode(self._key_tuple(idx, start, "start"))
        hi = None if stop is None else idx.encode(self._key_tuple(idx, stop, "stop"))
        if not isinstance(reverse, bool):
            raise TypeError(f"reverse must be a bool, not {type(reverse).__name__}")
        self._check()
        return self._range(idx, lo, hi, reverse)

    def _range(self, idx: TableIndex, lo: bytes | None, hi: bytes | None,
               reverse: bool) -> Iterator[tuple]:
        """``range``'s rows in one snapshot, checked as ``_guarded`` checks them: the
        entries a leaf (or a few) at a time, each batch's rows fetched, decoded and
        re-checked by ``index.range_rows`` (no TIDs: a range returns rows only)."""
        heap, codec, xid_snapshot = self._heap, self._codec, self._xid_snapshot
        return self._guarded(lambda snap: range_rows(heap, codec, idx, lo, hi,
                                                     xid_snapshot(snap), reverse))

    def _guarded(self, batches: Callable[[Snapshot], Iterator[Sequence[tuple]]]
                 ) -> Iterator[tuple]:
        """The rows of ``batches(snapshot)`` (one read snapshot), checked as
        ``TransactionLayer.guard`` checks an iterator: the full check (open, no fatal WAL
        error) before every batch, and before every row two attribute tests (database
        closed, relation not live) that send the next ``next()`` after a close or drop to
        the error at once; an error underneath reports a close or drop first."""
        check, layer = self._check, self._layer
        check_open = layer.check_open
        relation, live = self._relation, RelationState.LIVE
        try:
            # read_snapshot() inlined (a short range pays for every call layer): the
            # transaction's snapshot, or a registered one released after
            txn = layer.current()
            if txn is not None and txn.snapshot is not None:
                snap, xacts = txn.snapshot, None
            else:
                xacts = layer.xacts
                snap = xacts.snapshot()
            try:
                for rows in batches(snap):
                    check_open()
                    for row in rows:
                        if layer.closed or relation.state is not live:
                            check()
                        yield row
            finally:
                if xacts is not None:
                    xacts.release(snap)
        except Exception:
            check()  # closed or dropped underneath: that is the error to report
            raise
        check()

    def get(self, tid: Tid | None = None, **key: object) -> tuple | None:
        """``get(tid)``: the row at ``tid``; ``get(id=...)``: the row with that primary
        key; as this transaction (or, outside one, the latest committed state) sees it.
        None if there is none."""
        if key:
            if tid is not None:
                raise TypeError("get takes a Tid or primary key columns, not both")
            point = self._pk_point
            if point is not None and len(key) == 1 and point[0] in key:
                pk, values = point[1], (key[point[0]],)   # _pk_values' usual answer
            else:
                pk, values = self._pk_values(key)
                if pk.encode_value is not None:   # a one-column primary key: remember it
                    self._pk_point = (pk.entry.columns[0], pk)
            enc = pk.encode_value
            prefix = enc(values[0]) if enc is not None else pk.encode(values)
            if enc is not None and len(prefix) + TID_SUFFIX_BYTES > KEY_MAX_BYTES:
                pk.encode(values)   # raises naming the index
            layer = self._layer
            if self._relation.state is not _LIVE:
                self._check()   # _check inlined: the usual case is one test and one call
            layer.check_open()
            txn = layer.current()
            if txn is not None and txn.snapshot is not None:
                return self._first_row(pk, prefix, txn.snapshot)
            xacts = layer.xacts
            if enc is not None:
                # _first_row's usual case fused: one entry of a one-column key, its leaf
                # and heap tuple read by one call (point_tuple), judged as the latest
                # committed state (get(tid)'s rule, no snapshot to register and release).
                # Only a visible row with the key is answered so: between the leaf read
                # and the judgement a commit may end the version and vacuum may prune it
                # and reuse its slot, which no registered snapshot holds back here, so
                # anything else (no tuple, not visible, another key) is asked again below
                # under a registered snapshot, which sees one consistent state.
                t = pk.point_tuple(prefix, self._heap)
                if t is not POINT_OTHER and t is not None:
                    committed = xacts.is_committed
                    if committed(t[0]) and not (t[1] and committed(t[1])):
                        row = self._codec.decode(t[2])
                        v = row[pk.positions[0]]
                        # the key re-check; two ints are equal exactly when their
                        # encodings are (int8), so compared without encoding again
                        if (v == values[0] if type(v) is int and type(values[0]) is int
                                else enc(v) == prefix):
                            return row
            # read_snapshot() inlined (a point read pays for every call layer): a
            # registered snapshot of the latest committed state, released after.
            snap = xacts.snapshot()
            try:
                return self._first_row(pk, prefix, snap)
            finally:
                xacts.release(snap)
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

    def _first_row(self, index: TableIndex, prefix: bytes, snap: Snapshot,
                   tids: list[int] | None | bool = False) -> tuple | None:
        """The first visible row whose ``index`` key is ``prefix`` (a primary key's: the
        only one), or None. ``tids``: ``index.point_tids(prefix)`` if the caller has it."""
        if tids is False:
            tids = index.point_tids(prefix)
        if tids is not None:   # the usual case: _point_tid_row inlined (a frame less)
            heap, decode, visible = self._heap, self._codec.decode, snap.visible
            for i in range(0, len(tids), 2):
                t = fetch_tuple(heap, tids[i], tids[i + 1])
                if t is not None and visible(t[0], t[1]):
                    row = decode(t[2])
                    if index.key_of_row(row) == prefix:
                        return row
            return None
        ks = index.matching_keys(prefix)
        if len(ks) <= POINT_READ_ENTRIES_MAX:  # _index_rows' first path, without a generator
            for k in ks:
                found = self._point_row(index, k, snap)
                if found is not None:
                    return found[1]
            return None
        for _tid, row in self._index_rows(index, prefix, snap):
            return row
        return None

    def scan(self) -> Iterator[tuple]:
        """Every visible row, in physical order, through a read stream (one snapshot).
        A run of pages at a time: its visible tuples found in one C call, its rows decoded
        column-wise (``RowCodec.decode_run``)."""
        self._check()
        return self._rows()

    def items(self) -> Iterator[tuple[Tid, tuple]]:
        """(tid, row) of every visible row, in physical order (one snapshot)."""
        self._check()
        return self._layer.guard(self._items(), self._check)

    def _xid_snapshot(self, snap: Snapshot) -> XidSnapshot:
        """``snap`` as data for the heap's C visibility check: the xids it excludes below
        its xmax (running when it was taken, or aborted), sorted."""
        xacts = self._layer.xacts
        if not xacts.aborted and (not snap.running or snap.running == {snap.own}):
            return XidSnapshot(snap.xmax, snap.own, ())   # nothing excluded (the usual)
        with xacts.lock:
            aborted = [x for x in xacts.aborted if x < snap.xmax]
        excluded = {x for x in snap.running if x != snap.own}
        excluded.update(aborted)
        return XidSnapshot(snap.xmax, snap.own, tuple(sorted(excluded)))

    def _runs(self, snap: Snapshot, *, tids: bool = True) -> Iterator[RowRun]:
        """The scan's runs of pages in ``snap``, their visible rows decoded (one C call
        per run: ``Heap.scan_rows``); ``tids=False``: rows alone."""
        return self._heap.scan_rows(self._xid_snapshot(snap), self._codec, tids=tids)

    def _rows(self) -> Iterator[tuple]:
        """``scan``'s rows in one snapshot: one C-level chain over ``_scan_batches`` (the
        rows of a run of pages each, checked per batch), no generator step per row. After
        a close or drop the iterator hands out at most the rest of its current batch (a
        private copy: rows of at most ``SCAN_RUN_PAGES`` pages), then raises."""
        return chain.from_iterable(self._scan_batches())

    def _scan_batches(self) -> Iterator[list[tuple]]:
        """The decoded rows of each run of pages of a scan in one read snapshot (the
        transaction's, or a registered one released after), each batch handed out after
        the full check (open, relation live, no fatal WAL error); an error underneath
        reports a close or drop first, and the end of the scan checks once more."""
        check = self._check
        try:
            with self._layer.read_snapshot() as snap:  # once per scan: no need to inline it
                for run in self._runs(snap, tids=False):
                    check()
                    yield run.rows
        except Exception:
            check()  # closed or dropped underneath: that is the error to report
            raise
        check()

    def _items(self) -> Iterator[tuple[Tid, tuple]]:
        with self._layer.read_snapshot() as snap:
            for run in self._runs(snap):
                tids = map(Tid, map(run.first_block.__add__, run.pages), run.offnums)
                yield from zip(tids, run.rows, strict=True)

    def __iter__(self) -> Iterator[tuple]:
        """Every visible row (``scan()``)."""
        return self.scan()

    def count(self) -> int:
        """How many rows are visible (one scan; every row decoded, so a damaged one
        raises as it would in ``scan``)."""
        self._check()
        with self._layer.read_snapshot() as snap:
            return sum(len(run.rows) for run in self._runs(snap, tids=False))
