"""Access methods (``slonik.engine.access``): how tuples sit on pages, and their redo.

- heap.py    heap relations: insert/fetch/update/delete/prune, WAL-logged (rmgr heap)
- tuple.py   the tuple header, typed row codec and KV entry codec (pure)
- btree.py       the B+tree access method: MVCC entries, L&Y descent, splits, overflow
                 values, scans/get_many through read streams, vacuum, check()
- btree_page.py  B+tree pages and items, in-page search (C helpers + references; pure)
- btree_wal.py   B+tree WAL records as page-action lists, their redo (rmgr btree)
- keycodec.py    order-preserving byte encoding of index keys (pure)
- heap_fetch.py  index scans' heap side: a batch of TIDs' visible rows gathered from the
                 pool's pages in one C call per chunk of heap pages
"""
