"""The KV store: a heap relation of (key, value) tuples plus an ordered in-memory index.

``db.kv(name)`` is a ``MutableMapping[bytes, bytes]``. The heap holds every version of
every key (``engine.tuple`` KV codec); the index (``sortedcontainers.SortedDict``) maps
key → its versions, newest first, as one flat tuple ``(xmin, xmax, block, offnum, ...)``
four ints per version. Values are not kept in memory: a read picks the version its
snapshot sees from the index and fetches the tuple through the buffer manager (so a
damaged page gives ``DataCorruptionError`` when it is read).

Writes are buffered in the transaction and applied at commit under the engine's commit
lock (``Database._commit``): ``validate`` (first committer wins), ``apply`` (heap insert /
update / delete with the committing xid), ``publish`` (index). Outside a transaction each
write is one durable transaction of its own.

At open the index is rebuilt by a read-stream scan of the heap (``Heap.scan``) keeping the
one live version of each key. A page that fails verification during that scan leaves the
store unusable: every operation raises ``DataCorruptionError`` naming the block (other
stores are not affected), unless ``zero_damaged_pages`` is on.

Invariants:
1. An index entry's versions are newest first; only the newest may have xmax 0. Every
   xmin in the index is committed, or is the xid committing right now (published before it
   leaves ``running``, so no snapshot sees a version the index does not yet hold); every
   xmax is 0, committed, or the committing xid.
2. A version leaves the index only when no snapshot can see it (xmax committed below the
   vacuum horizon), before vacuum prunes its tuple.
3. The index is changed only under ``_lock``, by replacing whole entry tuples, so a reader
   holding an entry holds a consistent one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from itertools import islice

from slonik.engine.access.heap import Heap
from slonik.engine.access.tuple import Tid, decode_kv, encode_kv
from slonik.engine.errors import ConflictError
from slonik.engine.xact import Snapshot
from slonik.storage.errors import DataCorruptionError
from sortedcontainers import SortedDict

__all__ = ["KVStore", "INDEX_CHUNK_KEYS"]

INDEX_CHUNK_KEYS = 256       # keys taken from the index per lock hold while iterating
READ_RETRIES_MAX = 16        # a read without a registered snapshot whose version was pruned
                             # under it looks again; a vacuum per retry is already unlikely
_TOMBSTONE = None


def _check_key(key: object, what: str = "key") -> bytes:
    if type(key) is bytes:
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"{what} must be bytes, not {type(key).__name__}")


def _pick(entry: tuple, sees) -> int:
    """Offset in ``entry`` of the version ``sees`` makes visible, or -1."""
    for i in range(0, len(entry), 4):
        if sees(entry[i]):
            xmax = entry[i + 1]
            return -1 if xmax and sees(xmax) else i
    return -1


class KVStore(MutableMapping):
    """See the module docstring. Obtain one with ``Database.kv(name)``."""

    def __init__(self, db, name: str, rel: int) -> None:
        self._db = db
        self.name = name
        self.rel = rel
        self._heap = Heap(rel, db._bufmgr, db._wal)
        self._index: SortedDict = SortedDict()
        self._lock = threading.Lock()
        self._error: DataCorruptionError | None = None
        self.dead_versions = 0      # versions made dead since the last vacuum (autovacuum)

    def __repr__(self) -> str:
        return f"<KVStore {self.name!r} relfilenumber {self.rel}>"

    # A store is one object per relation: equal only to itself (Mapping's content
    # comparison would read the whole store), and hashable.
    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    @property
    def heap(self) -> Heap:
        return self._heap

    # --- open -------------------------------------------------------------------------------
    def rebuild(self, xacts) -> None:
        """Build the index from the heap (at open: no snapshot is active)."""
        aborted = xacts.aborted
        index: dict[bytes, tuple] = {}
        dead = 0
        try:
            for t in self._heap.scan():
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
            self._error = err
            index = {}
        self._index = SortedDict(index)
        self.dead_versions = dead

    def _check(self) -> None:
        self._db._check_open()
        if self._error is not None:
            raise self._error

    # --- reads ------------------------------------------------------------------------------
    def _own_writes(self):
        """(transaction, its buffered writes to this store or None)."""
        txn = self._db._current_transaction()
        if txn is None:
            return None, None
        return txn, txn.kv_writes.get(self)

    def _fetch(self, key: bytes, entry: tuple, i: int) -> bytes | None:
        """The value of the version at offset ``i``; None if its slot no longer holds it."""
        t = self._heap.fetch(Tid(entry[i + 2], entry[i + 3]))
        if t is None or t.xmin != entry[i]:
            return None
        k, value = decode_kv(t.data)
        if k != key:
            return None
        return value

    def _read(self, key: bytes, snap: Snapshot | None) -> bytes:
        """The value ``snap`` sees (None: the latest committed one); KeyError if none."""
        xacts = self._db._xacts
        for _ in range(READ_RETRIES_MAX):
            entry = self._index.get(key)
            if entry is None:
                raise KeyError(key)
            i = _pick(entry, snap.sees if snap is not None else xacts.is_committed)
            if i < 0:
                raise KeyError(key)
            value = self._fetch(key, entry, i)
            if value is not None:
                return value
            if snap is not None and snap._key:
                raise AssertionError(f"KV store {self.name!r}: the version of {key!r:.60} a "
                                     f"registered snapshot sees is gone from the heap")
        raise RuntimeError(f"KV store {self.name!r}: key {key!r:.60} kept moving under "
                           f"{READ_RETRIES_MAX} reads")

    def __getitem__(self, key: bytes) -> bytes:
        key = _check_key(key)
        self._check()
        txn, own = self._own_writes()
        if own is not None and key in own:
            data = own[key]
            if data is _TOMBSTONE:
                raise KeyError(key)
            return decode_kv(data)[1]
        return self._read(key, txn.snapshot if txn is not None else None)

    def get(self, key: bytes, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def keys(self, start: bytes | None = None, stop: bytes | None = None,
             reverse: bool = False) -> Iterator[bytes]:  # type: ignore[override]
        return (k for k, _v in self._items(start, stop, reverse, values=False))

    def values(self, start: bytes | None = None, stop: bytes | None = None,
               reverse: bool = False) -> Iterator[bytes]:  # type: ignore[override]
        return (v for _k, v in self._items(start, stop, reverse))

    def items(self, start: bytes | None = None, stop: bytes | None = None,
              reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        """(key, value) pairs with ``start <= key < stop`` in key order (descending with
        ``reverse``), all as of one snapshot (taken at the first ``next()``); inside a
        transaction, its snapshot plus its own writes."""
        return self._items(start, stop, reverse)

    def _items(self, start, stop, reverse: bool, *, values: bool = True):
        start = None if start is None else _check_key(start, "start")
        stop = None if stop is None else _check_key(stop, "stop")
        if not isinstance(reverse, bool):
            raise TypeError(f"reverse must be a bool, not {type(reverse).__name__}")
        self._check()
        return self._iterate(start, stop, reverse, values)

    def _iterate(self, start, stop, reverse: bool, values: bool):
        self._check()
        db = self._db
        txn, own = self._own_writes()
        if txn is not None:
            snap, mine = txn.snapshot, None
        else:
            snap = mine = db._xacts.snapshot()
        try:
            pending = []
            if own:
                pending = sorted((k for k in own if (start is None or k >= start)
                                  and (stop is None or k < stop)), reverse=not reverse)
                # popped from the end: ascending order needs the list descending
            for key, value in self._iterate_index(start, stop, reverse, snap, values):
                while pending and (pending[-1] > key if reverse else pending[-1] < key):
                    k = pending.pop()
                    if own[k] is not _TOMBSTONE:
                        yield k, (decode_kv(own[k])[1] if values else None)
                if pending and pending[-1] == key:
                    pending.pop()
                    if own[key] is _TOMBSTONE:
                        continue
                    yield key, (decode_kv(own[key])[1] if values else None)
                    continue
                if value is not None or not values:
                    yield key, value
            while pending:
                k = pending.pop()
                if own[k] is not _TOMBSTONE:
                    yield k, (decode_kv(own[k])[1] if values else None)
        finally:
            if mine is not None:
                db._xacts.release(mine)

    def _iterate_index(self, start, stop, reverse: bool, snap: Snapshot, values: bool):
        """(key, value) visible to ``snap`` from the index, in order. With values=False the
        value is None and no tuple is read."""
        lo, hi = start, stop
        lo_incl, hi_incl = True, False
        sees = snap.sees
        while True:
            with self._lock:
                it = self._index.irange(lo, hi, (lo_incl, hi_incl), reverse)
                chunk = list(islice(it, INDEX_CHUNK_KEYS))
                index = self._index
                entries = [index[k] for k in chunk]
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

    # --- writes -----------------------------------------------------------------------------
    def __setitem__(self, key: bytes, value: bytes) -> None:
        data = encode_kv(key, value)  # TypeError naming key/value; TupleTooLargeError
        key = bytes(key)
        self._check()
        self._db._kv_write(self, key, data)

    def __delitem__(self, key: bytes) -> None:
        key = _check_key(key)
        self._check()
        txn, _own = self._own_writes()
        if txn is not None and key not in self:
            raise KeyError(key)
        self._db._kv_write(self, key, _TOMBSTONE)

    def update(self, other=(), /, **kwargs) -> None:
        """Several puts; outside a transaction they commit together as one."""
        if kwargs:
            raise TypeError("KV keys are bytes: keyword arguments cannot be keys")
        pairs = other.items() if isinstance(other, Mapping) else other
        self._check()
        with self._db._implicit_transaction():
            for k, v in pairs:
                self[k] = v

    # --- commit (the Database calls these under its commit lock) ------------------------------
    def validate(self, writes: dict, snap: Snapshot, *, blind: bool) -> None:
        """ConflictError if a key written has a newest version created or deleted by a
        transaction ``snap`` does not see (first committer wins); KeyError for a blind
        delete of a missing key."""
        index = self._index
        for key, data in writes.items():
            entry = index.get(key)
            if blind:
                if data is _TOMBSTONE and (entry is None or entry[1]):
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
        heap = self._heap
        index = self._index
        changes = []
        inserts: list[bytes] = []
        insert_keys: list[bytes] = []
        for key, data in writes.items():
            entry = index.get(key)
            live = entry is not None and entry[1] == 0
            if data is _TOMBSTONE:
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

    def publish(self, xid: int, changes: list, horizon: int) -> None:
        """Put the versions ``apply`` wrote into the index (xid still running)."""
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
        self.dead_versions += dead

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

    def live_keys_estimate(self) -> int:
        return len(self._index)

    def check(self) -> None:
        """Whole-structure check (tests): index invariants 1, and every version a
        snapshot could see is in the heap under its key with its xmin and xmax."""
        self._check()
        xacts = self._db._xacts
        with self._lock:
            items = list(self._index.items())
        for key, entry in items:
            assert entry and len(entry) % 4 == 0, (key, entry)
            for i in range(0, len(entry), 4):
                xmin, xmax, block, offnum = entry[i:i + 4]
                assert xmin and xmin not in xacts.aborted, (key, entry)
                assert i == 0 or xmax, f"an older version of {key!r} without xmax: {entry}"
                if i:
                    assert xmax == entry[i - 4], f"version chain of {key!r} broken: {entry}"
                t = self._heap.fetch(Tid(block, offnum))
                assert t is not None and t.xmin == xmin, (key, entry, t)
                assert xmax == 0 or t.xmax == xmax, (key, entry, t)
                assert decode_kv(t.data)[0] == key, (key, entry, t)


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
