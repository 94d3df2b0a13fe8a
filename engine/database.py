"""The Database: open/recover/close, transactions, the catalog, KV stores, tables, vacuum.

``Database.open(path, **settings)``:
1. validates the settings (``engine.settings``), naming any bad one;
2. creates the directory when missing; an existing non-empty directory without
   ``slonik_control`` is refused (``NotADatabaseError``) with nothing on disk changed;
3. takes ``slonik.lock`` (flock, exclusive, non-blocking; the file holds the owner's
   pid): a second opener, in this or another process, gets ``DatabaseLockedError``;
4. bootstraps a new database (``engine.recovery.bootstrap``);
5. builds Aio, Smgr and the buffer manager, replays WAL (``engine.recovery.startup``),
   writes an end-of-recovery checkpoint after a crash, starts the background checkpointer;
6. unlinks the files of relations dropped before a crash or the last close (the set
   pending unlink comes from the checkpoint and the COMMIT records replayed);
7. loads the catalog and opens every KV store's B+tree (its metapage only: constant
   time, whatever the store holds).

``Database`` builds and owns the parts: the AIO subsystem, smgr, buffer manager, WAL,
checkpointer, the transaction manager (``engine.xact``) and the transaction layer
(``engine.transaction``), and one ``Relation`` (``engine.relation``) per KV store or
table, which it hands with the layer to the ``KVStore``/``Table`` object users get.
Commits happen in the transaction layer; this module keeps open/close, the catalog,
drops, vacuum and statistics.

Drop (``drop``): the catalog row is deleted (WAL-logged) by the dropping transaction and
the relation is DROP_PENDING; its COMMIT record lists the relfilenumber, and at commit the
relation is DROPPED and its files *pending unlink*. The files are unlinked when nothing
can touch them any more — at ``close()`` after the shutdown checkpoint, or at the next
open after recovery — so no pinned buffer, read stream or checkpoint write ever meets a
missing file. The pending set travels in every checkpoint; a crash at any instant leaves
the files for the next open to remove (an abort or a crash before the COMMIT leaves the
relation as it was).

Failure policy (DESIGN §7): a failed WAL write or fsync (here or in the checkpointer)
makes the Database refuse all further work with an error saying to reopen it; ``close()``
then releases resources without a shutdown checkpoint, and the next open recovers.

Invariants:
1. Every heap change is made by an xid in ``running``; KV changes and COMMIT records are
   made under the commit lock, which is also the checkpointer's redo lock.
2. Lock order: commit lock → a table's write lock or a KV store's tree write lock → xact lock.
3. A transaction belongs to the thread that began it (``threading.local``).
4. No module outside this one touches a ``Database``'s private attributes: stores get the
   transaction layer and their ``Relation``.
5. A dropped relation's relfilenumber is never reused (``next_relfilenumber`` only grows),
   and its files are removed only after its COMMIT record is durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from slonik.aio import osfile
from slonik.aio.core import Aio, AioStats
from slonik.aio.errors import IOFailure, SlonikError
from slonik.aio.method_io_uring import io_uring_available
from slonik.engine import smgr_wal
from slonik.engine.access.btree import BTree
from slonik.engine.access.heap import Heap
from slonik.engine.access.tuple import RowCodec
from slonik.engine.catalog import (
    CATALOG_RELFILENUMBER,
    Catalog,
    IndexEntry,
    RelationEntry,
    check_name,
)
from slonik.engine.checkpointer import Checkpointer, CheckpointStats
from slonik.engine.errors import ConflictError, RelationDroppedError
from slonik.engine.index import TableIndex, prune_with_indexes
from slonik.engine.kv import KVStore
from slonik.engine.kv_index import KVIndex
from slonik.engine.recovery import FIRST_RELFILENUMBER, WAL_DIR, RecoveryInfo, bootstrap, startup
from slonik.engine.relation import Relation, RelationState
from slonik.engine.settings import (
    DEFAULT_SEGMENT_SIZE_BLOCKS,
    DEFAULT_WAL_SEGMENT_SIZE,
    Settings,
    parse_settings,
)
from slonik.engine.table import Table
from slonik.engine.transaction import Transaction, TransactionLayer
from slonik.engine.xact import DeadTest, TransactionManager, XactStats
from slonik.storage.bufmgr import BufferManager, BufferStats
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, Smgr
from slonik.wal.control import CONTROL_FILE_NAME, read_control
from slonik.wal.errors import WalError
from slonik.wal.placement import commit_cpus
from slonik.wal.walwriter import WalWriter
from slonik.wal.xlog import WalStats, direct_wal_writes_ok

__all__ = ["Database", "Transaction", "DatabaseStats", "RelationStats", "NotADatabaseError",
           "DatabaseLockedError", "DatabaseClosedError", "LOCK_FILE_NAME"]

LOCK_FILE_NAME = "slonik.lock"
LOCK_FILE_MAX_BYTES = 64                 # "<pid>\n" and then some
AUTOVACUUM_THRESHOLD_VERSIONS = 500      # dead versions before a relation is vacuumed ...
AUTOVACUUM_SCALE_FACTOR = 0.2            # ... plus this share of its live rows (PostgreSQL's)
TABLE_ROWS_PER_PAGE_ESTIMATE = 40        # for the autovacuum threshold of tables
KV_KEYS_PER_PAGE_ESTIMATE = 40           # ... and of KV stores (no count is kept in memory)

_SLONIK_ENTRIES = {LOCK_FILE_NAME}       # what a failed first open may have left behind
_log = logging.getLogger("slonik")
_fallbacks_reported: set[str] = set()    # io_method=auto fallback reasons already logged
_fallbacks_lock = threading.Lock()


def _resolve_io_method(io_method: str) -> tuple[str, str | None]:
    """(the method to use, why ``auto`` fell back from io_uring or None). The first
    fallback for a reason in this process is logged once (logger ``slonik``, WARNING)."""
    if io_method != "auto":
        return io_method, None
    ok, reason = io_uring_available()
    if ok:
        return "io_uring", None
    with _fallbacks_lock:
        first = reason not in _fallbacks_reported
        _fallbacks_reported.add(reason)
    if first:
        _log.warning("io_method=auto: io_uring is not available (%s); using worker", reason)
    return "worker", reason


class NotADatabaseError(SlonikError, ValueError):
    """The path exists but is not a Slonik database (and is not empty)."""


class DatabaseLockedError(SlonikError):
    """Another process (or another Database object) has the database open."""


class DatabaseClosedError(SlonikError, ValueError):
    """The Database was closed (or failed fatally and must be reopened)."""


@dataclass(frozen=True)
class RelationStats:
    """One relation's line of ``db.stats().relations``."""

    name: str
    kind: str
    relfilenumber: int
    nblocks: int
    bytes: int
    live_keys: int | None        # KV stores: keys with a committed value, counted by a scan
                                 # of the leaf level when stats() runs (None for tables)
    dead_versions: int           # made dead since the last vacuum
    index_operations: int | None = None  # KV stores: index entries looked up/scanned/replaced


@dataclass(frozen=True)
class VacuumStats:
    """Vacuum runs (manual and automatic), tuples pruned, aborted xids forgotten."""

    runs: int
    automatic: int
    pruned: int
    forgotten_aborted_xids: int


@dataclass(frozen=True)
class DatabaseStats:
    """``db.stats()``: pg_stat_io-like AIO counters and the other subsystems' stats."""

    io_method: str
    aio: AioStats
    buffers: BufferStats
    wal: WalStats
    checkpointer: CheckpointStats
    transactions: XactStats
    vacuum: VacuumStats
    relations: tuple[RelationStats, ...]
    recovery_crashed: bool
    recovery_replayed: int
    recovery_seconds: float
    io_method_fallback: str | None = None   # why io_method=auto did not use io_uring
    pending_unlinks: int = 0                # dropped relations whose files remain until close


def _make_directories(path: str) -> None:
    missing = []
    p = os.path.abspath(path)
    while not osfile.exists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        osfile.mkdir(d)
        osfile.fsync_directory(os.path.dirname(d))


def _acquire_lock_file(path: str) -> int:
    lock_path = os.path.join(path, LOCK_FILE_NAME)
    fd = osfile.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            osfile.close(fd)
            raise IOFailure(exc.errno or errno.EIO, f"could not lock {lock_path}") from exc
        buf = bytearray(LOCK_FILE_MAX_BYTES)
        try:
            n = osfile.preadv(fd, [buf], 0)
        finally:
            osfile.close(fd)
        owner = bytes(buf[:n]).decode("ascii", "replace").strip() or "unknown"
        raise DatabaseLockedError(
            f"database {path} is already open (lock file {lock_path} is held by process "
            f"{owner}); close it there first") from None
    return fd


def _write_lock_owner(fd: int) -> None:
    """Record this process in the lock file, once open: a refused open changes no file."""
    osfile.ftruncate(fd, 0)
    osfile.pwritev(fd, [f"{os.getpid()}\n".encode()], 0)


class Database:
    """An open Slonik database: KV stores, tables, transactions, maintenance.

    Open one with ``Database.open(path, **settings)`` (a context manager: ``close()`` at
    the end of the ``with`` block). See the ``slonik.engine.database`` module for what
    open, commit and drop do, and DESIGN §6 for the API."""

    # --- open -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, **settings: object) -> Database:
        """Open (creating if missing, recovering if needed) the database at ``path``."""
        s = parse_settings(**settings)
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be a str or os.PathLike of str, not {type(path).__name__}")
        db = cls.__new__(cls)
        db._init(os.path.abspath(path), s)
        return db

    def _init(self, path: str, s: Settings) -> None:
        self.path = path
        self._closed = True  # until fully open
        self._fatal: BaseException | None = None
        self._lock_fd = -1
        self._aio: Aio | None = None
        self._smgr: Smgr | None = None
        self._bufmgr: BufferManager | None = None
        self._wal = None
        self._txns: TransactionLayer | None = None  # made once the WAL is up
        self._checkpointer: Checkpointer | None = None
        self._walwriter: WalWriter | None = None
        self._local = threading.local()
        self._commit_lock = threading.Lock()
        self._vacuum_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._relations: dict[str, Relation] = {}
        self._stores: dict[str, KVStore | Table] = {}
        self._io_method_fallback: str | None = None
        self._vacuum_runs = self._autovacuum_runs = self._pruned = self._forgotten = 0

        control_path = os.path.join(path, CONTROL_FILE_NAME)
        if osfile.exists(path):
            if not os.path.isdir(path):
                raise NotADatabaseError(f"{path} exists and is not a directory")
            is_new = not osfile.exists(control_path)
            if is_new:
                extra = sorted(set(osfile.listdir(path)) - _SLONIK_ENTRIES)
                if extra:
                    raise NotADatabaseError(
                        f"{path} is not a Slonik database: it has no {CONTROL_FILE_NAME} and "
                        f"is not empty (it holds {', '.join(extra[:5])}"
                        f"{', ...' if len(extra) > 5 else ''}); nothing was changed")
        else:
            is_new = True
            _make_directories(path)
        self._lock_fd = _acquire_lock_file(path)
        try:
            self._start(s, is_new)
            _write_lock_owner(self._lock_fd)
        except BaseException:
            self._release_resources()
            raise
        self._closed = False

    def _start(self, s: Settings, is_new: bool) -> None:
        if is_new:
            s = s.with_fixed(s.wal_segment_size or DEFAULT_WAL_SEGMENT_SIZE,
                             s.segment_size or DEFAULT_SEGMENT_SIZE_BLOCKS)
        else:
            control = read_control(self.path)
            for name, stored in (("wal_segment_size", control.wal_segment_size),
                                 ("segment_size", control.segment_size)):
                given = getattr(s, name)
                if given is not None and given != stored:
                    raise ValueError(f"{name} is fixed when a database is created: {self.path} "
                                     f"was created with {name}={stored}, got {given}")
            s = s.with_fixed(control.wal_segment_size, control.segment_size)
        self.settings = s
        method, self._io_method_fallback = _resolve_io_method(s.io_method)
        self._aio = Aio(method, io_workers=s.io_workers,
                        io_max_concurrency=s.io_max_concurrency)
        # io_direct="auto": WAL segments O_DIRECT (each flush still synced) where the file
        # system is one of DIRECT_WAL_FILE_SYSTEMS (wal/xlog.py); the WAL directory's own,
        # which may be a symlink to another file system
        o_direct_wal = (s.io_direct == "auto"
                        and direct_wal_writes_ok(os.path.join(self.path, WAL_DIR)))
        if is_new:
            bootstrap(self.path, self._aio, wal_segment_size=s.wal_segment_size,
                      segment_size=s.segment_size, wal_buffers=s.wal_buffers,
                      io_direct_wal=s.io_direct_wal, o_direct_wal=o_direct_wal)
        self._smgr = Smgr(self.path, segment_size=s.segment_size, max_files=s.max_files,
                          io_direct=s.io_direct_data, aio=self._aio)
        self._bufmgr = BufferManager(
            self._smgr, self._aio, shared_buffers=s.shared_buffers,
            io_combine_limit=s.io_combine_limit,
            effective_io_concurrency=s.effective_io_concurrency,
            zero_damaged_pages=s.zero_damaged_pages,
            ignore_checksum_failure=s.ignore_checksum_failure,
            flush_wal=self._flush_wal_for_buffer, bgwriter_delay=s.bgwriter_delay,
            bgwriter_lru_maxpages=s.bgwriter_lru_maxpages)
        wal, control, info = startup(
            data_dir=self.path, aio=self._aio, smgr=self._smgr, bufmgr=self._bufmgr,
            wal_buffers=s.wal_buffers, io_direct_wal=s.io_direct_wal, o_direct_wal=o_direct_wal,
            full_page_writes=s.full_page_writes, on_segment_switch=self._on_segment_switch)
        self._wal = wal
        wal.set_commit_delay(s.commit_delay, s.commit_siblings,
                             active_transactions=lambda: len(self._xacts.running))
        wal.set_commit_placement(commit_cpus(wal.wal_dir)
                                 if s.commit_placement == "auto" else None)
        self._recovery: RecoveryInfo = info
        cp = info.checkpoint
        self._xacts = TransactionManager.after_recovery(
            wal, checkpoint_next_xid=max(cp.next_xid, control.next_xid),
            extra=info.checkpoint_extra, state=info.state)
        self._txns = TransactionLayer(
            self._xacts, self._commit_lock, check_open=self._check_open, flush=self._flush,
            note_wal_error=self._note_wal_error, synchronous_commit=s.synchronous_commit,
            after_commit=self._autovacuum, on_dropped=self._forget_dropped,
            after_commit_min_dead=AUTOVACUUM_THRESHOLD_VERSIONS)
        self._next_rel = max(cp.next_relfilenumber, control.next_relfilenumber,
                             info.state.get("max_relfilenumber", 0) + 1, FIRST_RELFILENUMBER)
        self._checkpointer = Checkpointer(
            wal=wal, bufmgr=self._bufmgr, smgr=self._smgr, data_dir=self.path,
            control=control, state=self._checkpoint_state,
            checkpoint_timeout=s.checkpoint_timeout, max_wal_size=s.max_wal_size,
            on_fatal=self._on_fatal, redo_lock=self._commit_lock)
        if info.crashed:
            self._checkpointer.checkpoint()  # end-of-recovery checkpoint
        else:
            self._checkpointer.mark_in_production()
        self._unlink_dropped(drop_buffers=True)
        self._checkpointer.start()
        self._walwriter = WalWriter(wal, wal_writer_delay_ms=s.wal_writer_delay,
                                    on_fatal=self._on_fatal)
        self._walwriter.start()
        # After recovery (flush_wal needs the WAL open); a failed round is fatal, as a
        # failed WAL write: the next call raises DatabaseClosedError naming it.
        self._bufmgr.start_bgwriter(on_failure=self._on_fatal)
        self._load_catalog()

    def _load_catalog(self) -> None:
        smgr = self._smgr
        if not smgr.exists(CATALOG_RELFILENUMBER, Fork.MAIN):
            end = smgr_wal.create_relation(self._wal, smgr, CATALOG_RELFILENUMBER, Fork.MAIN)
            self._flush(end)
        self._catalog = Catalog(Heap(CATALOG_RELFILENUMBER, self._bufmgr, self._wal))
        committed = self._xacts.is_committed
        self._catalog.load(lambda xmin, xmax: committed(xmin) and not (xmax and committed(xmax)))
        for e in self._catalog.entries.values():
            self._add_relation(e)

    def _add_relation(self, e: RelationEntry, tree: BTree | None = None) -> KVStore | Table:
        """Build the parts of a catalogued relation and the object users get. A KV store's
        tree is opened by reading its metapage; a damaged metapage leaves that store
        unusable (every use raises the DataCorruptionError) and the database open."""
        if e.kind == "kv":
            error = None
            if tree is None:
                try:
                    tree = BTree.open(e.relfilenumber, self._bufmgr, self._wal)
                except DataCorruptionError as exc:
                    error = DataCorruptionError(
                        f"KV store {e.name!r} (relation {e.relfilenumber}) cannot be used: "
                        f"{exc}", relation=e.relfilenumber, fork=exc.fork, block=exc.block)
                    error.__cause__ = exc
            index = KVIndex(e.name, e.relfilenumber, tree, self._xacts, error=error)
            relation = Relation(e.name, "kv", e.relfilenumber, None, index=index)
            obj: KVStore | Table = KVStore(self._txns, relation)
        else:
            heap = Heap(e.relfilenumber, self._bufmgr, self._wal)
            relation = Relation(e.name, "table", e.relfilenumber, heap, columns=e.columns)
            relation.table_indexes = [
                TableIndex(i, e.columns, BTree.open(i.relfilenumber, self._bufmgr, self._wal))
                for i in e.indexes]
            obj = Table(self._txns, relation, create_index=self._create_index)
        self._relations[e.name] = relation
        self._stores[e.name] = obj
        return obj

    def _forget_dropped(self, relations: list[Relation]) -> None:
        """The transaction layer committed these drops (under the commit lock)."""
        for relation in relations:
            if self._relations.get(relation.name) is relation:
                del self._relations[relation.name]
                del self._stores[relation.name]
                self._catalog.entries.pop(relation.name, None)

    def _unlink_dropped(self, *, drop_buffers: bool) -> None:
        """Remove the files of dropped relations (their COMMIT records are durable) at a
        moment when nothing can pin, read or write them: at open before the checkpointer
        starts, or at close after it stopped. ``drop_buffers`` forgets their buffers first
        (at close the buffer pool is discarded anyway, and an abandoned iterator may still
        hold a pin)."""
        rels = sorted(self._xacts.pending_unlinks)
        for rel in rels:
            if drop_buffers:
                self._bufmgr.drop_relation_buffers(rel)
            self._smgr.forget_written(rel)
            self._smgr.unlink(rel)
        self._xacts.forget_pending_unlinks(rels)

    # --- callbacks from below ---------------------------------------------------------------
    def _flush_wal_for_buffer(self, lsn: int) -> None:
        self._wal.flush(lsn)

    def _on_segment_switch(self) -> None:
        cp = self._checkpointer
        if cp is not None:
            cp.request()

    def _on_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        if self._txns is not None:
            self._txns.stopped = True  # the stores' hot paths run the full check from now on

    def _checkpoint_state(self) -> tuple[int, int, bytes]:
        next_xid, extra = self._xacts.checkpoint_state()
        return next_xid, self._next_rel, extra

    # --- state checks ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosedError(f"database {self.path} is closed")
        if self._fatal is None and self._wal is not None and self._wal.failed:
            self._fatal = WalError("a WAL write or sync failed")
        if self._fatal is not None:
            raise DatabaseClosedError(
                f"database {self.path} stopped after a fatal error ({self._fatal}); nothing "
                f"after it can be trusted as durable: close it and open it again to run "
                f"crash recovery") from self._fatal

    def _flush(self, lsn: int) -> None:
        try:
            self._wal.flush(lsn)
        except WalError as exc:
            self._on_fatal(exc)
            raise

    # --- relations ------------------------------------------------------------------------
    def _own_drop(self, relation: Relation) -> bool:
        """Whether the calling thread's transaction dropped ``relation``."""
        txn = self._txns.current()
        return (relation.state is RelationState.DROP_PENDING and txn is not None
                and txn.xid == relation.dropping_xid)

    def kv(self, name: str) -> KVStore:
        """The KV store ``name``, created (durably, in a transaction of its own) if new."""
        check_name(name)
        self._check_open()
        relation = self._relations.get(name)
        if relation is None or self._own_drop(relation):
            obj = self._create_relation(name, "kv", ())
        else:
            obj = self._stores[name]
        if not isinstance(obj, KVStore):
            raise ValueError(f"{name!r} is a table, not a KV store")
        return obj

    def create_table(self, name: str, columns: Sequence[tuple[str, str]],
                     primary_key: str | Sequence[str] | None = None) -> Table:
        """A new table (durably, in a transaction of its own); ValueError if ``name`` exists.
        ``columns`` is a sequence of (name, type) with types int8, float8, text, bytea,
        bool; ``primary_key`` a column name or a sequence of them (a unique B+tree index
        named ``<name>_pkey``, its columns NOT NULL)."""
        check_name(name)
        cols = RowCodec(columns).columns  # TypeError/ValueError naming the bad column
        pk: tuple[str, ...] = ()
        if primary_key is not None:
            pk = (primary_key,) if isinstance(primary_key, str) else tuple(primary_key)
            known = [n for n, _t in cols]
            if not pk:
                raise ValueError(f"table {name!r}: primary_key names no column")
            for c in pk:
                if not isinstance(c, str):
                    raise TypeError(f"table {name!r}: primary_key columns must be str, "
                                    f"not {c!r}")
                if c not in known:
                    raise ValueError(f"table {name!r}: primary key column {c!r} is not one "
                                     f"of its columns ({', '.join(known)})")
            if len(set(pk)) != len(pk):
                raise ValueError(f"table {name!r}: primary key names a column twice: "
                                 f"{list(pk)}")
        self._check_open()
        return self._create_relation(name, "table", cols, must_be_new=True, primary_key=pk)

    def _index_name_taken(self, name: str) -> bool:
        return name in self._relations or any(
            i.name == name for e in self._catalog.entries.values() for i in e.indexes)

    def _create_index(self, table: Table, name: str, columns: tuple[str, ...],
                      unique: bool) -> None:
        """``table.create_index``: a new B+tree relation built from the table's rows and
        the table's catalog row replaced to list it, in one transaction of its own."""
        check_name(name)
        self._check_open()
        xacts = self._xacts
        with self._commit_lock:
            self._check_open()
            relation = self._relations.get(table.name)
            if relation is None or self._stores.get(table.name) is not table:
                raise RelationDroppedError(f"table {table.name!r} was dropped")
            if relation.state is not RelationState.LIVE:
                xacts.note_conflict()
                raise ConflictError(f"table {table.name!r} is being dropped by transaction "
                                    f"{relation.dropping_xid}")
            if self._index_name_taken(name):
                raise ValueError(f"the name {name!r} is already used by a relation or index")
            old = self._catalog.entries[table.name]
            rel = self._next_rel
            self._next_rel += 1
            xid = xacts.assign_xid()
            entry = IndexEntry(name, columns, unique, rel)
            index = None
            try:
                smgr_wal.create_relation(self._wal, self._smgr, rel, Fork.MAIN, xid)
                tree = BTree.create(rel, self._bufmgr, self._wal)
                index = TableIndex(entry, relation.columns, tree)
                try:
                    table.attach_index(index, xid)
                except BaseException:
                    xacts.add_pending_unlinks([rel])  # nothing refers to it: remove at close
                    raise
                new = RelationEntry(old.name, old.kind, old.relfilenumber, old.columns,
                                    primary_key=old.primary_key,
                                    indexes=(*old.indexes, entry))
                self._catalog.delete(xid, old)
                new = self._catalog.insert(xid, new)
                end = xacts.log_commit(xid)
            except BaseException as exc:
                self._note_wal_error(exc)
                xacts.abort(xid)
                if index is not None and index in relation.table_indexes:
                    relation.table_indexes.remove(index)
                raise
            self._catalog.entries[table.name] = new
            xacts.finish_commit(xid)
        self._flush(end)

    def table(self, name: str) -> Table:
        """The existing table ``name``; KeyError if there is none."""
        check_name(name)
        self._check_open()
        relation = self._relations.get(name)
        if relation is None or self._own_drop(relation):
            raise KeyError(f"no table named {name!r}")
        obj = self._stores[name]
        if not isinstance(obj, Table):
            raise ValueError(f"{name!r} is a KV store, not a table")
        return obj

    def relations(self) -> dict[str, str]:
        """name → kind ("kv" or "table") of every relation, sorted by name (without those
        the calling thread's transaction dropped)."""
        self._check_open()
        return {name: r.kind for name, r in sorted(self._relations.items())
                if not self._own_drop(r)}

    def drop(self, name: str) -> None:
        """Remove the KV store or table ``name``: in the thread's transaction (aborting it
        keeps the relation) or in one of its own. KeyError if there is none;
        ConflictError if another running transaction is dropping it. Its files are removed
        at ``close()`` (or the next open); the name can be used again once it committed."""
        check_name(name)
        self._check_open()
        with self._txns.write() as txn, self._commit_lock:
            self._check_open()
            relation = self._relations.get(name)
            if relation is None or self._own_drop(relation):
                raise KeyError(f"no relation named {name!r}")
            if relation.state is RelationState.DROP_PENDING:
                self._xacts.note_conflict()
                raise ConflictError(f"{relation.kind} {name!r} is being dropped by transaction "
                                    f"{relation.dropping_xid}; retry the transaction")
            entry = self._catalog.entries[name]
            try:
                self._catalog.delete(txn.xid, entry)
            except BaseException as exc:
                self._note_wal_error(exc)
                raise
            relation.set_state(RelationState.DROP_PENDING, txn.xid)
            txn.drops.append(relation)

    def _create_relation(self, name: str, kind: str, columns, *, must_be_new: bool = False,
                         primary_key: tuple[str, ...] = ()):
        xacts = self._xacts
        with self._commit_lock:
            self._check_open()
            relation = self._relations.get(name)
            if relation is not None:
                if self._own_drop(relation):
                    raise ValueError(f"{relation.kind} {name!r} was dropped by this transaction; "
                                     f"create it again after the transaction commits")
                if must_be_new:
                    raise ValueError(f"a relation named {name!r} already exists")
                return self._stores[name]
            if self._index_name_taken(name):
                raise ValueError(f"the name {name!r} is already used by an index")
            if primary_key and self._index_name_taken(f"{name}_pkey"):
                raise ValueError(f"the name {name + '_pkey'!r} of the primary key index is "
                                 f"already used by a relation or index")
            rel = self._next_rel
            self._next_rel += 1
            indexes: tuple[IndexEntry, ...] = ()
            if primary_key:
                indexes = (IndexEntry(f"{name}_pkey", primary_key, True, self._next_rel,
                                      primary=True),)
                self._next_rel += 1
            xid = xacts.assign_xid()
            try:
                smgr_wal.create_relation(self._wal, self._smgr, rel, Fork.MAIN, xid)
                tree = BTree.create(rel, self._bufmgr, self._wal) if kind == "kv" else None
                for i in indexes:
                    smgr_wal.create_relation(self._wal, self._smgr, i.relfilenumber,
                                             Fork.MAIN, xid)
                    BTree.create(i.relfilenumber, self._bufmgr, self._wal)
                entry = self._catalog.insert(xid, RelationEntry(
                    name, kind, rel, tuple(columns), primary_key=primary_key,
                    indexes=indexes))
                end = xacts.log_commit(xid)
            except BaseException as exc:
                self._note_wal_error(exc)
                xacts.abort(xid)
                raise
            self._catalog.entries[name] = entry
            obj = self._add_relation(entry, tree)
            xacts.finish_commit(xid)
        self._flush(end)
        return obj

    # --- transactions -----------------------------------------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """``with db.transaction() as txn:`` — commit at the end of the block, abort if it
        raises (or if ``txn.rollback()`` was called). Bound to this thread; not nestable."""
        self._check_open()
        return self._txns.transaction()

    def _note_wal_error(self, exc: BaseException) -> None:
        if isinstance(exc, WalError) or (self._wal is not None and self._wal.failed):
            self._on_fatal(exc)

    # --- maintenance ------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Run a checkpoint now; returns its record's LSN."""
        self._check_open()
        return self._checkpointer.checkpoint()

    def vacuum(self, name: str | None = None) -> int:
        """Remove versions no snapshot can see (all relations, or ``name``); returns how many
        tuples were pruned. Space goes to the free-space map and is reused by inserts."""
        self._check_open()
        with self._vacuum_lock:
            if name is None:
                return self._vacuum_all()
            relation = self._relations.get(check_name(name))
            if relation is None:
                raise KeyError(f"no relation named {name!r}")
            return self._vacuum_relation(relation)

    def _prune(self, relation: Relation, is_dead: DeadTest) -> int:
        """Vacuum one relation: the heap's prune (judged a run of pages at a time), or the
        KV store's tree vacuum (entries removed, overflow pages freed, empty leaves
        unlinked)."""
        relation.dead_versions = 0
        relation.vacuum_check_at = 0
        if relation.index is not None:
            return relation.index.vacuum(is_dead).entries_removed
        return prune_with_indexes(relation.heap, relation.table_indexes,
                                  dead_of=is_dead.of_run)

    def _vacuum_relation(self, relation: Relation, *, auto: bool = False) -> int:
        is_dead = self._xacts.dead_test()
        if relation.index is not None and relation.index.error is not None:
            return 0
        n = self._prune(relation, is_dead)
        self._pruned += n
        self._vacuum_runs += 1
        self._autovacuum_runs += auto
        return n

    def _vacuum_all(self) -> int:
        xacts = self._xacts
        is_dead = xacts.dead_test()
        total = self._catalog.heap.prune(dead_of=is_dead.of_run)
        complete = True
        for relation in list(self._relations.values()):
            if relation.index is not None and relation.index.error is not None:
                complete = False
                continue
            total += self._prune(relation, is_dead)
        if complete:
            # No tuple names these aborted xids any more: they need not be remembered.
            gone = is_dead.aborted - is_dead.referenced
            xacts.forget_aborted(gone)
            self._forgotten += len(gone)
        self._pruned += total
        self._vacuum_runs += 1
        return total

    def _autovacuum(self, relations: list[Relation]) -> None:
        for relation in relations:
            dead = relation.dead_versions
            if dead < AUTOVACUUM_THRESHOLD_VERSIONS or dead < relation.vacuum_check_at or \
                    relation.dropped:
                continue
            if relation.index is not None:
                live = relation.nblocks() * KV_KEYS_PER_PAGE_ESTIMATE
            else:
                live = relation.heap.nblocks() * TABLE_ROWS_PER_PAGE_ESTIMATE
            due = AUTOVACUUM_THRESHOLD_VERSIONS + AUTOVACUUM_SCALE_FACTOR * live
            if dead < due:
                # The size (a system call) is read again once dead versions reach today's
                # threshold, not at every commit: a relation only grows between vacuums,
                # so the threshold can only have risen meanwhile.
                relation.vacuum_check_at = math.ceil(due)
                continue
            if not self._vacuum_lock.acquire(blocking=False):
                return  # another thread vacuums; our counter stays for the next commit
            try:
                if not self._closed and self._fatal is None and not relation.dropped:
                    self._vacuum_relation(relation, auto=True)
            finally:
                self._vacuum_lock.release()

    # --- introspection ----------------------------------------------------------------------
    def stats(self) -> DatabaseStats:
        """pg_stat_io-like AIO counters, the io method in use, and the buffer manager's,
        WAL's, checkpointer's, transactions', vacuum's and each relation's statistics."""
        self._check_open()
        # I/O counters first: counting a KV store's keys below reads its leaves.
        aio, buffers = self._aio.stats(), self._bufmgr.stats()
        rels = []
        for name, r in sorted(self._relations.items()):
            nblocks = r.nblocks()
            index = r.index
            is_kv = index is not None
            live = None
            if is_kv:
                live = index.live_keys() if index.error is None else 0
            rels.append(RelationStats(name, r.kind, r.rel, nblocks, nblocks * BLCKSZ,
                                      live, r.dead_versions,
                                      index.operations if is_kv else None))
        info = self._recovery
        return DatabaseStats(
            self._aio.method.name, aio, buffers, self._wal.stats(),
            self._checkpointer.stats(), self._xacts.stats(),
            VacuumStats(self._vacuum_runs, self._autovacuum_runs, self._pruned,
                        self._forgotten),
            tuple(rels), info.crashed, info.replayed, info.seconds,
            self._io_method_fallback, len(self._xacts.pending_unlinks))

    @property
    def io_method(self) -> str:
        """The io method in use (what ``auto`` chose)."""
        return self._aio.method.name if self._aio is not None else self.settings.io_method

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (or the open failed)."""
        return self._closed

    # --- close ------------------------------------------------------------------------------
    def close(self) -> None:
        """Shutdown checkpoint, stop the checkpointer, unlink the files of dropped
        relations, close files, stop AIO, release the lock. Harmless when already closed.
        Transactions still open in other threads are aborted (recovery-style: their xids
        are remembered as aborted); stores and iterators used afterwards raise
        ``DatabaseClosedError``."""
        with self._close_lock:
            if self._closed:
                return
            with self._commit_lock:
                self._closed = True
                self._txns.closed = True  # the stores' per-item check sees it at once
                self._txns.stopped = True
            try:
                if self._walwriter is not None:
                    self._walwriter.stop()  # joins; flushes what async commits left
                if self._bufmgr is not None:
                    self._bufmgr.stop_bgwriter()  # joins; its writes finished
                cp = self._checkpointer
                if cp is not None:
                    cp.stop()
                    if self._fatal is None and not self._wal.failed:
                        cp.checkpoint(shutdown=True)
                        # The shutdown checkpoint lists them too: a crash from here on
                        # leaves them for the next open.
                        self._unlink_dropped(drop_buffers=False)
            finally:
                self._release_resources()

    def _release_resources(self) -> None:
        self._closed = True
        if self._txns is not None:
            self._txns.stopped = True
        errors = []
        for step in (lambda: self._walwriter and self._walwriter.stop(),
                     lambda: self._checkpointer and self._checkpointer.stop(),
                     lambda: self._bufmgr and self._bufmgr.stop_bgwriter(),
                     lambda: self._wal and self._wal.close(),
                     lambda: self._smgr and self._smgr.close(),
                     lambda: self._aio and self._aio.shutdown()):
            try:
                step()
            except BaseException as exc:  # finish releasing; report the first failure
                errors.append(exc)
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                osfile.close(fd)
        if errors:
            raise errors[0]

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A Database dropped without close(): release the lock, not the data (no checkpoint;
        # the next open recovers as after a crash).
        if getattr(self, "_lock_fd", -1) >= 0 and not getattr(self, "_closed", True):
            with contextlib.suppress(BaseException):
                self._release_resources()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.io_method
        return f"<Database {self.path!r} ({state})>"
