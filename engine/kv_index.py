"""A KV store's ordered in-memory index over its heap, and the commit-time steps on it.

The heap holds every version of every key (``engine.access.tuple`` KV codec); the index
(``sortedcontainers.SortedDict``) maps key → its versions, newest first, as one flat tuple
``(xmin, xmax, block, offnum, ...)``, four ints per version. Values are not kept in
memory: a read picks the version its snapshot sees and fetches the tuple through the
buffer manager (so a damaged page gives ``DataCorruptionError`` when it is read).

The transaction layer (``engine.transaction``) calls, under the engine's commit lock:
``validate`` (first committer wins), ``apply`` (heap insert / update / delete with the
committing xid), ``publish`` (index). Vacuum calls ``trim``; open calls ``rebuild``. The
user-facing ``KVStore`` (``engine.kv``) only reads through ``read``/``scan``.

At open the index is rebuilt by a read-stream scan of the heap keeping the one live
version of each key. A page that fails verification during that scan leaves the store
unusable (``error``): every operation raises ``DataCorruptionError`` naming the block.

Invariants:
1. An index entry's versions are newest first; only the newest may have xmax 0. Every
   xmin in the index is committed, or is the xid committing right now (published before it
   leaves ``running``, so no snapshot sees a version the index does not yet hold); every
   xmax is 0, committed, or the committing xid.
2. A version leaves the index only when no snapshot can see it (xmax committed below the
   vacuum horizon), before vacuum prunes its tuple.
3. The index is changed only under ``_lock``, by replacing whole entry tuples, so a reader
   holding an entry holds a consistent one.
4. Index work is linear in the keys touched: ``operations`` counts entries looked up,
   scanned or replaced (tests bound it; ``RelationStats.index_operations``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from itertools import islice

from slonik.engine.access.heap import Heap
from slonik.engine.access.tuple import Tid, decode_kv
from slonik.engine.errors import ConflictError
from slonik.engine.xact import Snapshot
from slonik.storage.errors import DataCorruptionError
from sortedcontainers import SortedDict

__all__ = ["KVIndex", "INDEX_CHUNK_KEYS", "TOMBSTONE"]

INDEX_CHUNK_KEYS = 256       # keys taken from the index per lock hold while iterating
READ_RETRIES_MAX = 16        # a read without a registered snapshot whose version was pruned
                             # under it looks again; a vacuum per retry is already unlikely
TOMBSTONE = None             # a buffered delete in a transaction's write set


def _pick(entry: tuple, sees: Callable[[int], bool]) -> int:
    """Offset in ``entry`` of the version ``sees`` makes visible, or -1."""
    for i in range(0, len(entry), 4):
        if sees(entry[i]):
            xmax = entry[i + 1]
            return -1 if xmax and sees(xmax) else i
    return -1


def _trim(entry: tuple, horizon: int) -> tuple:
    """``entry`` without versions deleted by a committed xid below ``horizon`` (in-memory
    xmax values are always committed ones or the xid committing now)."""
    if not entry:
        return entry
    keep = []
    for i in range(0, len(entry), 4):
        xmax = entry[i + 1]
        if xmax and xmax < horizon:
            break  # this and every older version are dead for every snapshot
        keep.append(entry[i:i + 4])
    if len(keep) * 4 == len(entry):
        return entry
    return tuple(x for v in keep for x in v)


class KVIndex:
    """The index of one KV store; see the module docstring."""

    def __init__(self, name: str, rel: int, heap: Heap) -> None:
        self.name = name
        self.rel = rel
        self.heap = heap
        self._index: SortedDict = SortedDict()
        self._lock = threading.Lock()
        self.error: DataCorruptionError | None = None
        self.operations = 0     # invariant 4 (not under a lock: a statistic)

    # --- open -------------------------------------------------------------------------------
    def rebuild(self, aborted: set[int]) -> int:
        """Build the index from the heap (at open: no snapshot is active). Returns how many
        dead versions the heap holds (the autovacuum counter's start)."""
        index: dict[bytes, tuple] = {}
        dead = 0
        try:
            for t in self.heap.scan():
                if t.xmin in aborted or (t.xmax and t.xmax not in aborted):
                    dead += 1
                    continue
                key, _value = decode_kv(t.data)
                if key in index:
                    raise DataCorruptionError(
                        f"KV store {self.name!r} (relation {self.rel}) has two live versions "
                        f"of key {key!r:.60}: at block {index[key][2]} offnum {index[key][3]} "
                        f"and at {tuple(t.tid)}", relation=self.rel, fork=0, block=t.tid.block)
                index[key] = (t.xmin, 0, t.tid.block, t.tid.offnum)
        except DataCorruptionError as exc:
            block = exc.block
            where = f" at block {block}" if block is not None else ""
            err = DataCorruptionError(
                f"KV store {self.name!r} (relation {self.rel}) cannot be used: a page failed "
                f"verification{where} while its index was rebuilt: {exc}",
                relation=self.rel, fork=exc.fork, block=block)
            err.__cause__ = exc
            self.error = err
            index = {}
        self._index = SortedDict(index)
        self.operations += len(index)
        return dead

    # --- reads ------------------------------------------------------------------------------
    def _fetch(self, key: bytes, entry: tuple, i: int) -> bytes | None:
        """The value of the version at offset ``i``; None if its slot no longer holds it."""
        t = self.heap.fetch(Tid(entry[i + 2], entry[i + 3]))
        if t is None or t.xmin != entry[i]:
            return None
        k, value = decode_kv(t.data)
        if k != key:
            return None
        return value

    def read(self, key: bytes, snap: Snapshot | None,
             is_committed: Callable[[int], bool]) -> bytes:
        """The value ``snap`` sees (None: the latest committed one); KeyError if none."""
        for _ in range(READ_RETRIES_MAX):
            self.operations += 1
            entry = self._index.get(key)
            if entry is None:
                raise KeyError(key)
            i = _pick(entry, snap.sees if snap is not None else is_committed)
            if i < 0:
                raise KeyError(key)
            value = self._fetch(key, entry, i)
            if value is not None:
                return value
            if snap is not None and snap.registered:
                raise AssertionError(f"KV store {self.name!r}: the version of {key!r:.60} a "
                                     f"registered snapshot sees is gone from the heap")
        raise RuntimeError(f"KV store {self.name!r}: key {key!r:.60} kept moving under "
                           f"{READ_RETRIES_MAX} reads")

    def scan(self, start: bytes | None, stop: bytes | None, reverse: bool, snap: Snapshot,
             values: bool) -> Iterator[tuple[bytes, bytes | None]]:
        """(key, value) visible to ``snap``, ``start <= key < stop``, in order. With
        values=False the value is None and no tuple is read."""
        lo, hi = start, stop
        lo_incl, hi_incl = True, False
        sees = snap.sees
        while True:
            with self._lock:
                it = self._index.irange(lo, hi, (lo_incl, hi_incl), reverse)
                chunk = list(islice(it, INDEX_CHUNK_KEYS))
                index = self._index
                entries = [index[k] for k in chunk]
            self.operations += len(chunk) + 1
            if not chunk:
                return
            for key, entry in zip(chunk, entries, strict=True):
                i = _pick(entry, sees)
                if i < 0:
                    continue
                if not values:
                    yield key, None
                    continue
                value = self._fetch(key, entry, i)
                if value is None:
                    raise AssertionError(f"KV store {self.name!r}: the version of "
                                         f"{key!r:.60} a registered snapshot sees is gone")
                yield key, value
            if reverse:
                hi, hi_incl = chunk[-1], False
            else:
                lo, lo_incl = chunk[-1], False

    # --- commit (under the engine's commit lock) ----------------------------------------------
    def validate(self, writes: dict, snap: Snapshot, *, blind: bool) -> None:
        """ConflictError if a key written has a newest version created or deleted by a
        transaction ``snap`` does not see (first committer wins); KeyError for a blind
        delete of a missing key."""
        index = self._index
        self.operations += len(writes)
        for key, data in writes.items():
            entry = index.get(key)
            if blind:
                if data is TOMBSTONE and (entry is None or entry[1]):
                    raise KeyError(key)
                continue
            if entry is None:
                continue
            xmin, xmax = entry[0], entry[1]
            if not snap.sees(xmin) or (xmax and not snap.sees(xmax)):
                raise ConflictError(
                    f"KV store {self.name!r}: key {key!r:.60} was changed by transaction "
                    f"{xmax or xmin}, which committed after this transaction started "
                    f"(first committer wins); retry the transaction")

    def apply(self, xid: int, writes: dict) -> list:
        """Write the heap changes of ``writes`` as ``xid``; returns what ``publish`` needs."""
        heap = self.heap
        index = self._index
        changes = []
        inserts: list[bytes] = []
        insert_keys: list[bytes] = []
        self.operations += len(writes)
        for key, data in writes.items():
            entry = index.get(key)
            live = entry is not None and entry[1] == 0
            if data is TOMBSTONE:
                if live:
                    heap.delete(Tid(entry[2], entry[3]), xid)
                    changes.append((key, None))
            elif live:
                tid = heap.update(Tid(entry[2], entry[3]), xid, data)
                changes.append((key, tid))
            else:
                inserts.append(data)
                insert_keys.append(key)
        if inserts:
            tids = heap.insert_many(xid, inserts)
            changes.extend(zip(insert_keys, tids, strict=True))
        return changes

    def publish(self, xid: int, changes: list, horizon: int) -> int:
        """Put the versions ``apply`` wrote into the index (xid still running); returns
        how many versions became dead."""
        dead = 0
        with self._lock:
            index = self._index
            get = index.get
            new = {}
            for key, tid in changes:
                entry = get(key)
                if entry is None:
                    entry = ()
                elif entry[1] == 0:  # the version we replaced or deleted
                    entry = (entry[0], xid, entry[2], entry[3]) + _trim(entry[4:], horizon)
                    dead += 1
                else:
                    entry = _trim(entry, horizon)
                if tid is not None:
                    entry = (xid, 0, tid.block, tid.offnum) + entry
                new[key] = entry
            index.update(new)  # one bulk sort when the change is large
        self.operations += 2 * len(changes)
        return dead

    # --- vacuum -----------------------------------------------------------------------------
    def trim(self, horizon: int) -> None:
        """Drop index versions no snapshot can see; keys whose every version is dead go."""
        with self._lock:
            keys = list(self._index.keys())
        for start in range(0, len(keys), INDEX_CHUNK_KEYS):
            with self._lock:
                index = self._index
                for key in keys[start:start + INDEX_CHUNK_KEYS]:
                    entry = index.get(key)
                    if entry is None:
                        continue
                    new = _trim(entry, horizon)
                    if not new:
                        del index[key]
                    elif len(new) != len(entry):
                        index[key] = new

    def items(self) -> list[tuple[bytes, tuple]]:
        """(key, entry) of every key, in order: a copy taken under the lock (tools, tests)."""
        with self._lock:
            return list(self._index.items())

    def live_keys(self) -> int:
        """Keys in the index (some may have only versions deleted but not yet trimmed)."""
        return len(self._index)

    def check(self, aborted: set[int]) -> None:
        """Whole-structure check (tests): invariant 1, and every version a snapshot could
        see is in the heap under its key with its xmin and xmax."""
        for key, entry in self.items():
            assert entry and len(entry) % 4 == 0, (key, entry)
            for i in range(0, len(entry), 4):
                xmin, xmax, block, offnum = entry[i:i + 4]
                assert xmin and xmin not in aborted, (key, entry)
                assert i == 0 or xmax, f"an older version of {key!r} without xmax: {entry}"
                if i:
                    assert xmax == entry[i - 4], f"version chain of {key!r} broken: {entry}"
                t = self.heap.fetch(Tid(block, offnum))
                assert t is not None and t.xmin == xmin, (key, entry, t)
                assert xmax == 0 or t.xmax == xmax, (key, entry, t)
                assert decode_kv(t.data)[0] == key, (key, entry, t)
