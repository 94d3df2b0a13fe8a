"""One relation as the engine holds it: the parts ``Database`` builds for a KV store or a
table and hands to the store object and to the transaction layer.

A ``Relation`` carries the relfilenumber, the heap (tables; built by ``Database`` over its
buffer manager and WAL) or the KV index over the store's B+tree (KV stores), the
autovacuum counter and the drop state. The user-facing ``KVStore``/``Table`` hold one; nothing else of the ``Database``.

Drop states (``RelationState``), changed only under the engine's commit lock:

    LIVE --drop()--> DROP_PENDING --commit--> DROPPED
                          |
                          +--abort--> LIVE

DROP_PENDING records the dropping xid: another transaction's drop of the same relation is
a ``ConflictError``; the dropping transaction itself can no longer use it.
"""

from __future__ import annotations

from enum import IntEnum

from slonik.engine.access.heap import Heap
from slonik.engine.kv_index import KVIndex

__all__ = ["Relation", "RelationState"]


class RelationState(IntEnum):
    LIVE = 1
    DROP_PENDING = 2
    DROPPED = 3


_TRANSITIONS = {
    (RelationState.LIVE, RelationState.DROP_PENDING),
    (RelationState.DROP_PENDING, RelationState.LIVE),
    (RelationState.DROP_PENDING, RelationState.DROPPED),
}


class Relation:
    """A KV store's or table's engine-side parts; see the module docstring."""

    __slots__ = ("name", "kind", "rel", "heap", "index", "columns", "dead_versions",
                 "vacuum_check_at", "state", "dropping_xid", "table_indexes")

    def __init__(self, name: str, kind: str, rel: int, heap: Heap | None, *,
                 index: KVIndex | None = None, columns: tuple = ()) -> None:
        assert (kind == "kv") == (index is not None) == (heap is None), (kind, index)
        self.name = name
        self.kind = kind
        self.rel = rel
        self.heap = heap
        self.index = index
        self.columns = columns
        self.dead_versions = 0        # versions made dead since the last vacuum (autovacuum)
        # dead_versions at which autovacuum next weighs the relation (its size is read
        # then, not at every commit); Database._autovacuum moves it
        self.vacuum_check_at = 0
        self.state = RelationState.LIVE
        self.dropping_xid = 0         # the xid of a DROP_PENDING
        self.table_indexes: list = []  # a table's engine.index.TableIndex objects

    def relfilenumbers(self) -> tuple[int, ...]:
        """The relation's relfilenumber and its indexes' (dropped together)."""
        return (self.rel, *(i.rel for i in self.table_indexes))

    def set_state(self, new: RelationState, xid: int = 0) -> None:
        """Move along the drop state diagram (asserted); ``xid`` names the dropper."""
        assert (self.state, new) in _TRANSITIONS, f"relation {self.name!r}: {self.state!r} -> {new!r}"
        self.state = new
        self.dropping_xid = xid if new is RelationState.DROP_PENDING else 0

    @property
    def dropped(self) -> bool:
        return self.state is RelationState.DROPPED

    def nblocks(self) -> int:
        """Blocks in the relation's main fork (heap, or B+tree with its overflow pages)."""
        if self.index is not None:
            return self.index.nblocks() if self.index.error is None else 0
        return self.heap.nblocks()

    def __repr__(self) -> str:
        return f"<Relation {self.name!r} {self.kind} {self.rel} {self.state.name}>"
