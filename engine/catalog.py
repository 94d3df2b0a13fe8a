"""The catalog: which relations exist, stored in a heap relation of its own.

The catalog is the heap at relfilenumber ``CATALOG_RELFILENUMBER`` (1; user relations
start at 16384). Each row is (name text, kind text, relfilenumber int8, schema text) with
``kind`` "kv" or "table" and ``schema`` the table's columns as JSON (empty for a KV
store). Rows are written through the transaction machinery like any heap change (xmin =
the creating transaction, WAL-logged), so a relation created by a transaction that a
crash cut off is invisible afterwards. The catalog is loaded at open by a scan applying
visibility.

A drop deletes the row (xmax = the dropping transaction) under the engine's commit lock;
vacuum prunes it once no snapshot can see it.

Invariants:
1. Names are unique among visible rows: creation checks and inserts under the engine's
   commit lock and commits at once; a name is free again once its drop committed.
2. A relation's file is created (WAL-logged, ``engine.smgr_wal``) before its catalog row,
   and removed only after the COMMIT of the row's deletion is durable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from slonik.engine.access.heap import Heap
from slonik.engine.access.tuple import COLUMN_TYPES, RowCodec, Tid

__all__ = ["CATALOG_RELFILENUMBER", "RelationEntry", "Catalog", "check_name", "NAME_MAX_CHARS"]

CATALOG_RELFILENUMBER = 1
NAME_MAX_CHARS = 63        # PostgreSQL's NAMEDATALEN - 1
KINDS = ("kv", "table")
_CODEC = RowCodec([("name", "text"), ("kind", "text"), ("relfilenumber", "int8"),
                   ("schema", "text")])
_NAME_RE = re.compile(r"^[^\x00-\x1f]+$")


@dataclass(frozen=True)
class RelationEntry:
    name: str
    kind: str
    relfilenumber: int
    columns: tuple[tuple[str, str], ...] = ()
    tid: Tid | None = None


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a relation name must be a str, not {type(name).__name__}")
    if not name or len(name) > NAME_MAX_CHARS or not _NAME_RE.match(name):
        raise ValueError(f"a relation name must be 1..{NAME_MAX_CHARS} printable characters, "
                         f"got {name!r}")
    return name


def encode_entry(e: RelationEntry) -> bytes:
    schema = json.dumps([list(c) for c in e.columns]) if e.columns else ""
    return _CODEC.encode((e.name, e.kind, e.relfilenumber, schema))


def decode_entry(data: bytes, tid: Tid) -> RelationEntry:
    name, kind, rel, schema = _CODEC.decode(data)
    if kind not in KINDS:
        raise ValueError(f"catalog row at {tuple(tid)} has unknown kind {kind!r}")
    cols = tuple((str(n), str(t)) for n, t in json.loads(schema)) if schema else ()
    for _n, t in cols:
        if t not in COLUMN_TYPES:
            raise ValueError(f"catalog row at {tuple(tid)}: unknown column type {t!r}")
    return RelationEntry(name, kind, rel, cols, tid)


class Catalog:
    """The visible catalog rows in memory, and the heap they live in."""

    def __init__(self, heap: Heap) -> None:
        self.heap = heap
        self.entries: dict[str, RelationEntry] = {}

    def load(self, sees_committed) -> None:
        """Read every row; keep those whose creator committed and that nobody deleted
        (``sees_committed(xmin, xmax)``)."""
        entries = {}
        for t in self.heap.scan():
            if sees_committed(t.xmin, t.xmax):
                e = decode_entry(t.data, t.tid)
                entries[e.name] = e
        self.entries = entries

    def insert(self, xid: int, entry: RelationEntry) -> RelationEntry:
        tid = self.heap.insert(xid, encode_entry(entry))
        return RelationEntry(entry.name, entry.kind, entry.relfilenumber, entry.columns, tid)

    def delete(self, xid: int, entry: RelationEntry) -> None:
        """Delete ``entry``'s row as ``xid`` (a drop; WAL-logged by the heap)."""
        assert entry.tid is not None, entry
        self.heap.delete(entry.tid, xid)
