"""Slonik's engine (``slonik.engine``): the layer behind the public API of DESIGN §6.
The public names are re-exported by ``slonik`` itself; import them from there.

Module map:
- errors.py       ConflictError and the engine's other transaction-level errors
- database.py     Database: open/recover/close, catalog use, drop, vacuum, stats
- settings.py     the settings of Database.open, validated (PostgreSQL's names)
- xact.py         xids, snapshots, commit/abort records (rmgr xact), recovery of xact state
- transaction.py  the transaction layer stores use (Transaction, commit/abort)
- relation.py     Relation: a store's parts (heap, KV index) and drop state
- kv.py           KVStore: the MutableMapping users see, and its views
- kv_index.py     KVIndex: a KV store's ordered index and commit-time steps
- table.py        Table: typed rows, eager writes, sequential scans, keyed lookups/ranges
- index.py        TableIndex: a table's B+tree index (key | TID entries), vacuum, checks
- catalog.py      the relation catalog, itself a heap relation
- recovery.py     bootstrap and crash recovery; checkpointer.py: checkpoints
- wal_decode.py   the C batch checker of WAL records recovery's reader uses
- smgr_wal.py     WAL-logged relation file create/truncate (rmgr smgr)
- rmgrlist.py     the engine's resource managers in one table; install() binds them
- access/         access methods and their redo: heap.py, tuple.py (tuple and row codecs)
- tools/          the ``slonik`` command, check, waldump/controldata, demo, benchmarks
"""
