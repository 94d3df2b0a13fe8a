"""The engine's resource managers: one table binding each built-in rmgr id of
``wal/rmgr.py``'s ``RMGR_TABLE`` to the ``ResourceManager`` whose redo and describe live
with the code that owns the records (heap redo beside the heap, and so on).

``install()`` binds them all; Database open, recovery and waldump call it (once is enough,
again is harmless). Nothing registers a resource manager as a side effect of an import.
"""

from __future__ import annotations

from slonik.engine.access.btree_wal import BTREE_RMGR
from slonik.engine.access.heap import HEAP_RMGR
from slonik.engine.smgr_wal import SMGR_RMGR
from slonik.engine.xact import XACT_RMGR
from slonik.wal.checkpoint import XLOG_RMGR
from slonik.wal.rmgr import ResourceManager, install_rmgrs

# The one table (rmgrlist.h's PG_RMGR lines, engine side), in id order.
ENGINE_RMGRS: tuple[ResourceManager, ...] = (XLOG_RMGR, XACT_RMGR, SMGR_RMGR, HEAP_RMGR,
                                               BTREE_RMGR)


def install() -> None:
    """Bind every manager of ``ENGINE_RMGRS`` (see ``wal.rmgr.install_rmgrs``)."""
    install_rmgrs(ENGINE_RMGRS)
