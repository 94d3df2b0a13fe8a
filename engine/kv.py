"""The KV store users see: an ordered ``MutableMapping[bytes, bytes]``.

``db.kv(name)`` returns one. Its versions live in a clustered B+tree (``engine.kv_index``
over ``engine.access.btree``): keys up to ``KEY_MAX_BYTES`` (2,000), values up to
``VALUE_MAX_BYTES`` (1 GiB; those over 2,000 bytes out of line in overflow pages); its
transactions come from the transaction layer (``engine.transaction``) that ``Database``
hands it. Writes are
buffered in the thread's transaction and applied at commit; outside a transaction each
write (``kv[k] = v``, ``del``, ``update()``, ``clear()``, ``pop()``) is one durable
transaction of its own.

``keys()``, ``values()`` and ``items()`` return views, as a dict's do — with optional
range arguments: ``start`` (inclusive), ``stop`` (exclusive), ``prefix`` (keys starting
with it; with start/stop the intersection) and ``reverse``. Each iteration over a view
reads one consistent snapshot taken at its first ``next()`` (inside a transaction: the
transaction's snapshot plus its own writes); iterating again takes a fresh one. ``len()``
and ``in`` work on every view.

A store (or an iterator over it) used after ``db.close()`` raises
``DatabaseClosedError``; after ``db.drop()`` of the store, ``RelationDroppedError`` (an
iterator at its next batch at the latest: it first hands out the rest of the batch it had
copied out before: a leaf's pairs, or a run of up to 16 leaves' pairs).

Invariants:
1. A read never returns a version its snapshot does not see; an iteration yields keys in
   strictly increasing (decreasing with ``reverse``) order, each once.
2. ``clear()`` is one transaction whose cost is linear in the number of keys: one index
   scan, one buffered delete per key.
"""

from __future__ import annotations

import collections
import itertools
import operator
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)

from slonik.engine.access.btree import KEY_MAX_BYTES, VALUE_MAX_BYTES
from slonik.engine.errors import ConflictError
from slonik.engine.kv_index import TOMBSTONE
from slonik.engine.relation import Relation, RelationState
from slonik.engine.transaction import TransactionLayer

__all__ = ["KVStore", "KVKeysView", "KVValuesView", "KVItemsView", "prefix_stop",
           "KEY_MAX_BYTES", "VALUE_MAX_BYTES"]

CLEAR_CONFLICT_RETRIES_MAX = 8   # an autocommit clear() racing writers retries this often


class _Missing:
    """The default of ``pop``'s ``default``: none given (KeyError for a missing key)."""

    def __repr__(self) -> str:
        return "<no default>"


_MISSING = _Missing()
_LIVE = RelationState.LIVE
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
# (lo, hi, reverse, values) -> (key, value or None) pairs in one snapshot
_Scan = Callable[[bytes | None, bytes | None, bool, bool], Iterator[tuple[bytes, bytes | None]]]


def _check_key(key: object, what: str = "key") -> bytes:
    if type(key) is bytes:
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"{what} must be bytes, not {type(key).__name__}")


def _check_put(key: object, value: object) -> tuple[bytes, bytes]:
    """(key, value) of a put, checked before anything is written: TypeError for non-bytes,
    ValueError naming the limit for an oversized key or value."""
    key = _check_key(key)
    if len(key) > KEY_MAX_BYTES:
        raise ValueError(f"key of {len(key)} bytes is over the limit of {KEY_MAX_BYTES} bytes")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    if isinstance(value, memoryview):
        size = value.nbytes
    else:
        size = len(value)
    if size > VALUE_MAX_BYTES:
        raise ValueError(f"value of {size} bytes is over the limit of {VALUE_MAX_BYTES} bytes "
                         f"(1 GiB)")
    return key, bytes(value)


def prefix_stop(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound,
    for an empty prefix or one of 0xff bytes only)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def _bounds(start: object, stop: object, prefix: object,
            reverse: object) -> tuple[bytes | None, bytes | None]:
    """The [lo, hi) range of start/stop/prefix (checked: TypeError naming the argument)."""
    lo = None if start is None else _check_key(start, "start")
    hi = None if stop is None else _check_key(stop, "stop")
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, not {type(reverse).__name__}")
    if prefix is not None:
        p = _check_key(prefix, "prefix")
        lo = p if lo is None else max(lo, p)
        end = prefix_stop(p)
        if end is not None:
            hi = end if hi is None else min(hi, end)
    return lo, hi


def _tree_range(scan_batches, lo: bytes | None, hi: bytes | None, reverse: bool, snap,
                values: bool) -> Iterator[Iterable[tuple[bytes, bytes | None]]]:
    """``scan_batches`` over [lo, hi) where a bound may be longer than any stored key: the
    tree gets a bound it accepts (``lo`` cut to ``KEY_MAX_BYTES``, a long ``hi`` none) and
    the pairs are filtered by the real bounds (a stored key < a long ``lo`` is at most its
    cut prefix; one past a long ``hi`` ends an ascending scan). Batches of pairs, as the
    tree's leaves give them."""
    long_lo = lo is not None and len(lo) > KEY_MAX_BYTES
    long_hi = hi is not None and len(hi) > KEY_MAX_BYTES
    if not (long_lo or long_hi):
        yield from scan_batches(lo, hi, reverse, snap, values)
        return
    t_lo = lo[:KEY_MAX_BYTES] if long_lo else lo
    t_hi = None if long_hi else hi
    for batch in scan_batches(t_lo, t_hi, reverse, snap, values):
        out = []
        for key, value in batch:
            if lo is not None and key < lo:
                if reverse:
                    if out:
                        yield out
                    return
                continue
            if hi is not None and key >= hi:
                if reverse:
                    continue
                if out:
                    yield out
                return
            out.append((key, value))
        if out:
            yield out


def _checked_pairs(batches: Iterator[Iterable[tuple]]) -> Iterator[tuple]:
    """The pairs of ``batches`` (the layer's ``guard``, which runs the store's full usability
    check before each batch) in one C-level iterator: no interpreted step per pair. An
    iterator used after ``db.close()`` or a drop raises that error at its next batch at the
    latest: the pairs of the batch in hand were copied out of the pages before, so handing
    them out reads nothing."""
    return itertools.chain.from_iterable(batches)


class _RangeView:
    """What the three views share: the store, the range and the direction."""

    __slots__ = ()

    def _setup(self, store: KVStore, scan: _Scan, start, stop, prefix, reverse) -> None:
        self._store = store
        self._scan = scan
        self._lo, self._hi = _bounds(start, stop, prefix, reverse)
        self._reverse = reverse
        self._args = (start, stop, prefix, reverse)

    def _in_range(self, key: bytes) -> bool:
        return (self._lo is None or key >= self._lo) and (self._hi is None or key < self._hi)

    def _pairs(self, values: bool, reverse: bool | None = None) -> Iterator[tuple[bytes, bytes | None]]:
        return self._scan(self._lo, self._hi, self._reverse if reverse is None else reverse,
                          values)

    def __len__(self) -> int:
        """Keys in the range, counted in one snapshot (C-level: the pairs are numbered by a
        counter and dropped, no interpreted step per key)."""
        counter = itertools.count()
        collections.deque(zip(self._pairs(False), counter, strict=False), maxlen=0)
        return next(counter)

    def __repr__(self) -> str:
        start, stop, prefix, reverse = self._args
        args = ", ".join(f"{n}={v!r}" for n, v in (("start", start), ("stop", stop),
                                                   ("prefix", prefix), ("reverse", reverse))
                         if v not in (None, False))
        return f"<{type(self).__name__} of {self._store!r}{' ' + args if args else ''}>"


class KVKeysView(_RangeView, KeysView):
    """The keys of a KV store (in a range), in order; see ``KVStore.keys``."""

    __slots__ = ("_store", "_scan", "_lo", "_hi", "_reverse", "_args")

    def __init__(self, store: KVStore, scan: _Scan, start=None, stop=None, prefix=None,
                 reverse: bool = False) -> None:
        """Built by ``KVStore.keys/values/items``, which hand over their range scan."""
        self._setup(store, scan, start, stop, prefix, reverse)

    def __iter__(self) -> Iterator[bytes]:
        return map(_FIRST, self._pairs(False))   # (C-level: no interpreted step per key)

    def __reversed__(self) -> Iterator[bytes]:
        return map(_FIRST, self._pairs(False, not self._reverse))

    def __contains__(self, key: object) -> bool:
        key = _check_key(key)
        return self._in_range(key) and key in self._store


class KVValuesView(_RangeView, ValuesView):
    """The values of a KV store (in a range), in key order; see ``KVStore.values``."""

    __slots__ = ("_store", "_scan", "_lo", "_hi", "_reverse", "_args")

    def __init__(self, store: KVStore, scan: _Scan, start=None, stop=None, prefix=None,
                 reverse: bool = False) -> None:
        """Built by ``KVStore.keys/values/items``, which hand over their range scan."""
        self._setup(store, scan, start, stop, prefix, reverse)

    def __iter__(self) -> Iterator[bytes]:
        return map(_SECOND, self._pairs(True))   # (C-level: no interpreted step per value)

    def __reversed__(self) -> Iterator[bytes]:
        return map(_SECOND, self._pairs(True, not self._reverse))

    def __contains__(self, value: object) -> bool:
        return any(v == value for v in self)


class KVItemsView(_RangeView, ItemsView):
    """The (key, value) pairs of a KV store (in a range), in key order; see
    ``KVStore.items``."""

    __slots__ = ("_store", "_scan", "_lo", "_hi", "_reverse", "_args")

    def __init__(self, store: KVStore, scan: _Scan, start=None, stop=None, prefix=None,
                 reverse: bool = False) -> None:
        """Built by ``KVStore.keys/values/items``, which hand over their range scan."""
        self._setup(store, scan, start, stop, prefix, reverse)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self._pairs(True)  # type: ignore[return-value]

    def __reversed__(self) -> Iterator[tuple[bytes, bytes]]:
        return self._pairs(True, not self._reverse)  # type: ignore[return-value]

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key = _check_key(item[0])
        return self._in_range(key) and self._store.get(key, _MISSING) == item[1]


class KVStore(MutableMapping):
    """An ordered, transactional ``MutableMapping[bytes, bytes]`` stored in the database.

    Obtain one with ``db.kv(name)``. Reads see the calling thread's transaction (its
    snapshot plus its own writes) or, outside one, the latest committed state. Writes
    outside a transaction commit at once, durably. See the ``slonik.engine.kv`` module
    for views, ranges and errors."""

    def __init__(self, layer: TransactionLayer, relation: Relation) -> None:
        """Built by ``Database`` (use ``db.kv(name)``)."""
        assert relation.index is not None
        self._layer = layer
        self._relation = relation
        self._index = relation.index

    def __repr__(self) -> str:
        return f"<KVStore {self.name!r} relfilenumber {self.rel}>"

    # A store is one object per relation: equal only to itself (Mapping's content
    # comparison would read the whole store), and hashable.
    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    @property
    def name(self) -> str:
        """The store's name in the catalog."""
        return self._relation.name

    @property
    def rel(self) -> int:
        """The relfilenumber of the B+tree relation holding the store's versions."""
        return self._relation.rel

    def nblocks(self) -> int:
        """Blocks in the store's relation: tree, overflow and free pages (tools, tests)."""
        self._check()
        return self._relation.nblocks()

    def _check(self) -> None:
        relation = self._relation
        if relation.state is RelationState.LIVE:  # check_usable's answer without its name
            self._layer.check_open()
        else:
            self._layer.check_usable(relation, f"KV store {relation.name!r}")
        if self._index.error is not None:
            raise self._index.error

    # --- reads ------------------------------------------------------------------------------
    def _read(self, key: bytes) -> bytes:
        """The value the caller sees (its own write first); KeyError if none."""
        txn = self._layer.current()
        if txn is not None:
            own = txn.kv_writes.get(self._relation)
            if own is not None and key in own:
                data = own[key]
                if data is TOMBSTONE:
                    raise KeyError(key)
                return data
        if len(key) > KEY_MAX_BYTES:
            raise KeyError(key)  # no such key can be stored
        return self._index.read(key, txn.snapshot if txn is not None else None)

    def __getitem__(self, key: bytes) -> bytes:
        """The value of ``key``; KeyError if it has none."""
        if type(key) is not bytes:
            key = _check_key(key)
        layer = self._layer
        if (self._relation.state is not _LIVE or self._index.error is not None
                or layer.stopped or layer.wal.failed):
            self._check()  # (otherwise _check would pass: live, readable store, open database)
        if layer.slot.txn is None and len(key) <= KEY_MAX_BYTES:
            return self._index.read(key, None)  # no transaction: the latest committed
        return self._read(key)

    def get(self, key: bytes, default=None):
        """The value of ``key``, or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def get_many(self, keys: Iterable[bytes]) -> list[bytes | None]:
        """The values of ``keys`` in order, None for a missing key, all read in one
        snapshot: the leaves holding them are read in one batch of I/Os."""
        wanted = keys if type(keys) is list else list(keys)
        if {*map(type, wanted)} != {bytes}:  # (one C-level pass for the common case)
            wanted = [_check_key(k, f"keys[{i}]") for i, k in enumerate(wanted)]
        self._check()
        layer = self._layer
        own = layer.own_writes(self._relation)
        if not own and wanted and max(map(len, wanted)) <= KEY_MAX_BYTES:
            # Every key goes to the tree, which answers in input order.
            with layer.read_snapshot() as snap:
                return self._index.get_many(wanted, snap)
        own = own or {}
        with layer.read_snapshot() as snap:
            tree_keys = [k for k in wanted if k not in own and len(k) <= KEY_MAX_BYTES]
            got = dict(zip(tree_keys, self._index.get_many(tree_keys, snap), strict=True))
        return [own[k] if k in own else got.get(k) for k in wanted]

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a value."""
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        """The number of keys (counted in one snapshot)."""
        return len(self.keys())

    def __iter__(self) -> Iterator[bytes]:
        """The keys in order, in one snapshot."""
        return iter(self.keys())

    def keys(self, start: bytes | None = None, stop: bytes | None = None,  # type: ignore[override]
             reverse: bool = False, *, prefix: bytes | None = None) -> KVKeysView:
        """A view of the keys with ``start <= key < stop`` and starting with ``prefix``,
        ascending (descending with ``reverse``)."""
        return KVKeysView(self, self._scan, start, stop, prefix, reverse)

    def values(self, start: bytes | None = None, stop: bytes | None = None,  # type: ignore[override]
               reverse: bool = False, *, prefix: bytes | None = None) -> KVValuesView:
        """A view of the values of the keys in the range (see ``keys``), in key order."""
        return KVValuesView(self, self._scan, start, stop, prefix, reverse)

    def items(self, start: bytes | None = None, stop: bytes | None = None,  # type: ignore[override]
              reverse: bool = False, *, prefix: bytes | None = None) -> KVItemsView:
        """A view of the (key, value) pairs with ``start <= key < stop`` and starting
        with ``prefix``, in key order (descending with ``reverse``); each iteration reads
        one snapshot, taken at its first ``next()``."""
        return KVItemsView(self, self._scan, start, stop, prefix, reverse)

    def _scan(self, lo: bytes | None, hi: bytes | None, reverse: bool,
              values: bool) -> Iterator[tuple[bytes, bytes | None]]:
        self._check()
        return _checked_pairs(self._layer.guard(self._merged(lo, hi, reverse, values),
                                                self._check))

    def _merged(self, lo, hi, reverse: bool, values: bool):
        """The index's pairs in [lo, hi) merged with the thread's own buffered writes, in
        batches (a leaf's pairs at a time: without own writes they pass through as the
        tree gives them, no step per pair)."""
        layer = self._layer
        own = layer.own_writes(self._relation)
        with layer.read_snapshot() as snap:
            batches = _tree_range(self._index.scan_batches, lo, hi, reverse, snap, values)
            if not own:
                yield from batches
                return
            # popped from the end: ascending order needs the list descending
            pending = sorted((k for k in own if (lo is None or k >= lo)
                              and (hi is None or k < hi)), reverse=not reverse)
            for batch in batches:
                out = []
                for key, value in batch:
                    while pending and (pending[-1] > key if reverse else pending[-1] < key):
                        k = pending.pop()
                        if own[k] is not TOMBSTONE:
                            out.append((k, own[k] if values else None))
                    if pending and pending[-1] == key:
                        pending.pop()
                        if own[key] is not TOMBSTONE:
                            out.append((key, own[key] if values else None))
                        continue
                    out.append((key, value))
                if out:
                    yield out
            rest = [(k, own[k] if values else None) for k in reversed(pending)
                    if own[k] is not TOMBSTONE]
            if rest:
                yield rest

    # --- writes -----------------------------------------------------------------------------
    def __setitem__(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` (both bytes; the key up to ``KEY_MAX_BYTES``, the value
        up to ``VALUE_MAX_BYTES``: ValueError naming the limit above them)."""
        if type(key) is bytes and type(value) is bytes and len(key) <= KEY_MAX_BYTES \
                and len(value) <= VALUE_MAX_BYTES:
            data = value  # the common case, checked without _check_put's conversions
        else:
            key, data = _check_put(key, value)
        if self._relation.state is _LIVE and self._index.error is None:
            # _check's answer for a live store: only the database's open state to check
            self._layer.kv_write(self._relation, key, data, check_open=True)
            return
        self._check()
        self._layer.kv_write(self._relation, key, data)

    def __delitem__(self, key: bytes) -> None:
        """Delete ``key``; KeyError if it has no value (outside a transaction: raised by
        the commit)."""
        key = _check_key(key)
        self._check()
        if self._layer.current() is not None and key not in self:
            raise KeyError(key)
        self._layer.kv_write(self._relation, key, TOMBSTONE)

    def pop(self, key: bytes, default=_MISSING):
        """Delete ``key`` and return its value; ``default`` (or KeyError without one) when
        it has none. Outside a transaction the read and the delete are one transaction."""
        key = _check_key(key)
        self._check()
        with self._layer.implicit(snapshot=True):
            try:
                value = self._read(key)
            except KeyError:
                if default is _MISSING:
                    raise
                return default
            self._layer.kv_write(self._relation, key, TOMBSTONE)
            return value

    def update(self, other=(), /, **kwargs) -> None:
        """Several puts; outside a transaction they commit together as one."""
        if kwargs:
            raise TypeError("KV keys are bytes: keyword arguments cannot be keys")
        pairs = other.items() if isinstance(other, Mapping) else other
        self._check()
        with self._layer.implicit():
            for k, v in pairs:
                self[k] = v

    def clear(self) -> None:
        """Delete every key, as one transaction (the caller's, or one of its own that is
        retried if a concurrent writer wins a key first). Linear in the number of keys."""
        self._check()
        layer = self._layer
        inside = layer.current() is not None
        for attempt in range(CLEAR_CONFLICT_RETRIES_MAX):
            try:
                with layer.implicit(snapshot=True):
                    keys = [k for k, _v in self._scan(None, None, False, False)]
                    for key in keys:
                        layer.kv_write(self._relation, key, TOMBSTONE)
                return
            except ConflictError:
                if inside or attempt == CLEAR_CONFLICT_RETRIES_MAX - 1:
                    raise

    # --- checks -----------------------------------------------------------------------------
    def check(self) -> None:
        """Whole-structure check (for tests and tools): the B+tree's invariants hold
        (``BTree.check``; DataCorruptionError naming relation and block otherwise)."""
        self._check()
        self._index.check()
