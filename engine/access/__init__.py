"""Access methods (``slonik.engine.access``): how tuples sit on pages, and their redo.

- heap.py    heap relations: insert/fetch/update/delete/prune, WAL-logged (rmgr heap)
- tuple.py   the tuple header, typed row codec and KV entry codec (pure)
"""
