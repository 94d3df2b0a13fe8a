"""Slonik's engine: the public API of DESIGN §6 (Database, transactions, KV store, tables)
and the ``slonik`` command.

Module map:
- database.py     Database: open/recover/close, commit, catalog use, vacuum, stats
- settings.py     the settings of Database.open, validated (PostgreSQL's names)
- xact.py         xids, snapshots, commit/abort records (rmgr xact), recovery of xact state
- kv.py           KVStore: heap of (key, value) versions + ordered in-memory index
- table.py        Table: typed rows, eager writes, sequential scans
- catalog.py      the relation catalog, itself a heap relation
- heap.py         heap access and its redo (rmgr heap); tuple.py: tuple/row codecs
- recovery.py     bootstrap and crash recovery; checkpointer.py: checkpoints
- smgr_wal.py     WAL-logged relation file create/truncate (rmgr smgr)
- cli.py          the ``slonik`` command
"""

from aio.errors import (
    ConflictError,
    DataCorruptionError,
    DiskFullError,
    IOFailure,
    IoMethodUnavailable,
    SlonikError,
    StorageError,
    WalError,
)
from engine.database import (
    Database,
    DatabaseClosedError,
    DatabaseLockedError,
    DatabaseStats,
    NotADatabaseError,
    Transaction,
)
from engine.kv import KVStore
from engine.table import Table
from engine.tuple import Tid, TupleTooLargeError
from engine.xact import TransactionStateError
from wal.control import ControlFileError

__all__ = [
    "Database", "Transaction", "KVStore", "Table", "Tid", "DatabaseStats",
    "SlonikError", "StorageError", "ConflictError", "DataCorruptionError", "WalError",
    "IOFailure", "DiskFullError", "IoMethodUnavailable", "NotADatabaseError",
    "DatabaseLockedError", "DatabaseClosedError", "TransactionStateError",
    "TupleTooLargeError", "ControlFileError",
]
