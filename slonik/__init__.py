"""Slonik: an embedded storage engine for Python, built the way PostgreSQL 18 builds its
storage stack (see README.md and DESIGN §6 for the contract).

    from slonik import Database

    with Database.open("mydb", io_method="auto") as db:
        users = db.kv("users")
        users[b"alice"] = b"1"             # one durable transaction

The repository keeps one folder per layer; the install maps each under this one name:

- ``slonik.engine``   (engine/)   Database, transactions, stores, recovery, checkpointer;
                                  ``engine.access`` holds the access methods,
                                  ``engine.tools`` the ``slonik`` command, check, benches
- ``slonik.wal``      (wal/)      WAL records, writer, reader, control file
- ``slonik.storage``  (storage/)  pages, smgr over segment files, buffer manager, read streams
- ``slonik.aio``      (aio/)      asynchronous I/O: handles, callbacks, io methods, OS boundary

Imports point down only: engine -> storage, wal -> aio. This module only re-exports the
public names.
"""

from slonik.aio.errors import (
    DiskFullError,
    IOFailure,
    IoMethodUnavailable,
    SlonikError,
    StorageError,
)
from slonik.engine.access.tuple import Tid, TupleTooLargeError
from slonik.engine.database import (
    Database,
    DatabaseClosedError,
    DatabaseLockedError,
    DatabaseStats,
    NotADatabaseError,
    RelationStats,
)
from slonik.engine.errors import ConflictError, RelationDroppedError, UniqueViolation
from slonik.engine.kv import KVItemsView, KVKeysView, KVStore, KVValuesView
from slonik.engine.table import Table
from slonik.engine.transaction import Transaction
from slonik.engine.xact import TransactionStateError
from slonik.storage.errors import DataCorruptionError
from slonik.wal.control import ControlFileError
from slonik.wal.errors import WalError

__all__ = [
    "Database", "Transaction", "KVStore", "Table", "Tid", "DatabaseStats", "RelationStats",
    "KVKeysView", "KVValuesView", "KVItemsView", "RelationDroppedError",
    "SlonikError", "StorageError", "ConflictError", "DataCorruptionError", "WalError",
    "IOFailure", "DiskFullError", "IoMethodUnavailable", "NotADatabaseError",
    "DatabaseLockedError", "DatabaseClosedError", "TransactionStateError",
    "TupleTooLargeError", "ControlFileError", "UniqueViolation",
]
