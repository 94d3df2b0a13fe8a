"""The catalog: which relations exist, stored in a heap relation of its own.

The catalog is the heap at relfilenumber ``CATALOG_RELFILENUMBER`` (1; user relations
start at 16384). Each row is (name text, kind text, relfilenumber int8, schema text) with
``kind`` "kv" or "table" and ``schema`` the table's columns as JSON (empty for a KV
store): a list of ``[name, type]``, or, for a table with a primary key or indexes, an
object ``{"columns": [...], "primary_key": [...], "indexes": [{"name", "columns",
"unique", "relfilenumber", "primary"}, ...]}`` (the primary key is also listed, as the
unique index ``<table>_pkey`` with ``primary`` true). An index is a B+tree relation of its own, created and dropped
with its table; ``create_index`` replaces the table's row (delete + insert) in the
transaction that builds the index. Rows are written through the transaction machinery like any heap change (xmin =
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
from dataclasses import dataclass, replace

from slonik.engine.access.heap import Heap
from slonik.engine.access.tuple import COLUMN_TYPES, RowCodec, Tid

__all__ = ["CATALOG_RELFILENUMBER", "RelationEntry", "IndexEntry", "Catalog", "check_name",
           "NAME_MAX_CHARS"]

CATALOG_RELFILENUMBER = 1
NAME_MAX_CHARS = 63        # PostgreSQL's NAMEDATALEN - 1
KINDS = ("kv", "table")
_CODEC = RowCodec([("name", "text"), ("kind", "text"), ("relfilenumber", "int8"),
                   ("schema", "text")])
_NAME_RE = re.compile(r"^[^\x00-\x1f]+$")


@dataclass(frozen=True)
class IndexEntry:
    """A table's B+tree index as the catalog records it."""

    name: str
    columns: tuple[str, ...]
    unique: bool
    relfilenumber: int
    primary: bool = False   # the table's primary key (unique, its columns NOT NULL)


@dataclass(frozen=True)
class RelationEntry:
    name: str
    kind: str
    relfilenumber: int
    columns: tuple[tuple[str, str], ...] = ()
    tid: Tid | None = None
    primary_key: tuple[str, ...] = ()
    indexes: tuple[IndexEntry, ...] = ()

    def relfilenumbers(self) -> tuple[int, ...]:
        """The relation's own relfilenumber and those of its indexes."""
        return (self.relfilenumber, *(i.relfilenumber for i in self.indexes))


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a relation name must be a str, not {type(name).__name__}")
    if not name or len(name) > NAME_MAX_CHARS or not _NAME_RE.match(name):
        raise ValueError(f"a relation name must be 1..{NAME_MAX_CHARS} printable characters, "
                         f"got {name!r}")
    return name


def encode_entry(e: RelationEntry) -> bytes:
    schema = json.dumps([list(c) for c in e.columns]) if e.columns else ""
    if e.primary_key or e.indexes:
        schema = json.dumps({
            "columns": [list(c) for c in e.columns], "primary_key": list(e.primary_key),
            "indexes": [{"name": i.name, "columns": list(i.columns), "unique": i.unique,
                         "relfilenumber": i.relfilenumber, "primary": i.primary}
                        for i in e.indexes]})
    return _CODEC.encode((e.name, e.kind, e.relfilenumber, schema))


def decode_entry(data: bytes, tid: Tid) -> RelationEntry:
    name, kind, rel, schema = _CODEC.decode(data)
    if kind not in KINDS:
        raise ValueError(f"catalog row at {tuple(tid)} has unknown kind {kind!r}")
    parsed = json.loads(schema) if schema else []
    pk: tuple[str, ...] = ()
    indexes: tuple[IndexEntry, ...] = ()
    if isinstance(parsed, dict):
        try:
            pk = tuple(str(c) for c in parsed["primary_key"])
            indexes = tuple(IndexEntry(str(i["name"]), tuple(str(c) for c in i["columns"]),
                                       bool(i["unique"]), int(i["relfilenumber"]),
                                       bool(i.get("primary", False)))
                            for i in parsed["indexes"])
            parsed = parsed["columns"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"catalog row at {tuple(tid)}: malformed table schema "
                             f"({exc!r})") from None
    cols = tuple((str(n), str(t)) for n, t in parsed)
    for _n, t in cols:
        if t not in COLUMN_TYPES:
            raise ValueError(f"catalog row at {tuple(tid)}: unknown column type {t!r}")
    return RelationEntry(name, kind, rel, cols, tid, pk, indexes)


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
        return replace(entry, tid=tid)

    def delete(self, xid: int, entry: RelationEntry) -> None:
        """Delete ``entry``'s row as ``xid`` (a drop; WAL-logged by the heap)."""
        assert entry.tid is not None, entry
        self.heap.delete(entry.tid, xid)
