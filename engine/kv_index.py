"""A KV store's versions in its B+tree, and the commit-time steps on them.

The store *is* a clustered B+tree (``engine.access.btree``): leaf entries hold the key,
the version's xmin/xmax and the value (or an overflow reference for values over
``VALUE_INLINE_MAX_BYTES``), ordered by key with the versions of one key adjacent, newest
first. Nothing about the store is kept in memory: opening it reads the metapage only.

The transaction layer (``engine.transaction``) calls, under the engine's commit lock:
``validate`` (first committer wins, decided against the tree), ``apply`` (one
``BTree.apply_trusted_columns`` batch: xmax on the version replaced or deleted, a new
version per put, one WAL record per leaf run; it returns how many versions it replaced)
and ``publish`` (nothing left to publish: the versions are in the tree, invisible until
the xid is committed; it returns how many versions became dead, for autovacuum). Vacuum calls ``vacuum``. The user-facing ``KVStore``
(``engine.kv``) reads through ``read``/``get_many``/``scan``.

Visibility: a reader with a snapshot sees what ``Snapshot.visible`` sees (scans hand the
tree an ``XidSnapshot``, so a leaf's visible entries are found in one C call); a read
outside any snapshot sees the latest committed version. Versions written by an xid that
then aborted stay in the tree, invisible, until vacuum removes them.

Invariants:
1. Every xmin in the tree is committed, aborted, or the xid committing right now (KV
   versions are written only at commit, under the commit lock).
2. The newest committed version of a key is the one with the largest committed xmin
   (KV xids are assigned at commit, in commit order, or before a snapshot that then
   conflicts with any later committer).
3. Work is counted: ``operations`` counts keys looked up, written or scanned
   (``RelationStats.index_operations``; tests bound it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

from slonik.engine.access.btree import (
    OLD_LOOKUP,
    BTree,
    CheckResult,
    VacuumResult,
    XidSnapshot,
)
from slonik.engine.access.btree_leafrun import sorted_joined
from slonik.engine.errors import ConflictError
from slonik.engine.xact import Snapshot, TransactionManager
from slonik.storage.errors import DataCorruptionError

__all__ = ["KVIndex", "TOMBSTONE"]

TOMBSTONE = None             # a buffered delete in a transaction's write set
_NO_VERSION = (0, 0)         # BTree.latest_versions: the key has no committed version


class KVIndex:
    """The versions of one KV store, in its B+tree; see the module docstring."""

    def __init__(self, name: str, rel: int, tree: BTree | None, xacts: TransactionManager, *,
                 error: DataCorruptionError | None = None) -> None:
        assert (tree is None) != (error is None)
        self.name = name
        self.rel = rel
        self.tree = tree
        self._xacts = xacts
        self._is_committed = xacts.is_committed  # bound once: a point read's visibility
        self.error = error      # the metapage failed verification: the store is unusable
        self.operations = 0     # invariant 3 (not under a lock: a statistic)
        # validate's answer for apply: (writes, the keys sorted and their old xmins as a
        # list) or, for a blind write set, (writes, None, old xmin by key)
        self._validated: tuple | None = None
        if tree is not None:
            # a full leaf first drops the versions no snapshot can see (BTree._prune_leaf)
            tree.prune_test = xacts.dead_test

    # --- visibility -----------------------------------------------------------------------------
    def _latest(self, xmin: int, xmax: int) -> bool:
        committed = self._is_committed
        return committed(xmin) and not (xmax and committed(xmax))

    def _scan_snapshot(self, snap: Snapshot) -> XidSnapshot:
        """``snap`` as data, for the tree's C helper: xids it excludes below its xmax."""
        xacts = self._xacts
        with xacts.lock:
            aborted = [x for x in xacts.aborted if x < snap.xmax]
        excluded = {x for x in snap.running if x != snap.own}
        excluded.update(aborted)
        return XidSnapshot(snap.xmax, snap.own, tuple(sorted(excluded)))

    # --- reads ------------------------------------------------------------------------------
    def read(self, key: bytes, snap: Snapshot | None,
             is_committed: Callable[[int], bool] | None = None) -> bytes:
        """The value ``snap`` sees (None: the latest committed one); KeyError if none.
        ``key`` is bytes of at most ``KEY_MAX_BYTES`` (the store checked it).

        Without a snapshot each version's xids are judged committed or not when the tree
        asks, newest version first. A commit landing between two of those questions can
        hide every version — the newer one judged before its xid committed, the older one
        after, as deleted by it — but can never make a wrong version visible; so a miss
        is asked again under a registered snapshot, which sees one consistent state."""
        self.operations += 1
        if snap is not None:
            value = self.tree.get_point(key, snap.visible)
        else:
            value = self.tree.get_point(key, self._latest)
            if value is None:
                xacts = self._xacts
                snap = xacts.snapshot()
                try:
                    value = self.tree.get_trusted(key, snap.visible)
                finally:
                    xacts.release(snap)
        if value is None:
            raise KeyError(key)
        return value

    def get_many(self, keys: list[bytes], snap: Snapshot) -> list[bytes | None]:
        """The values ``snap`` sees of ``keys`` (None when missing): the tree's batch read
        (a leaf holding several of the keys: one C call, ``snap`` as data). Every key is
        bytes of at most ``KEY_MAX_BYTES`` (the store checked them)."""
        self.operations += len(keys)
        return self.tree.get_many_trusted(keys, snap.visible,
                                          lambda: self._scan_snapshot(snap))

    def scan(self, start: bytes | None, stop: bytes | None, reverse: bool, snap: Snapshot,
             values: bool) -> Iterator[tuple[bytes, bytes | None]]:
        """(key, value) visible to ``snap``, ``start <= key < stop``, in order, walking the
        leaf level; with values=False the value is None and no overflow page is read."""
        return itertools.chain.from_iterable(
            self.scan_batches(start, stop, reverse, snap, values))

    def scan_batches(self, start: bytes | None, stop: bytes | None, reverse: bool,
                     snap: Snapshot, values: bool) -> Iterator[Iterable[tuple[bytes, bytes | None]]]:
        """``scan`` a leaf or a run of leaves at a time (non-empty iterables of pairs, in
        order: lists, or lazy iterators over bytes copied out already), so a caller without
        per-pair work of its own adds no interpreted step per pair; each pair is counted in
        ``operations`` as its batch is handed over."""
        self.operations += 1
        for count, pairs in self.tree.item_runs(start, stop,
                                                snapshot=self._scan_snapshot(snap),
                                                reverse=reverse, values=values):
            self.operations += count
            yield pairs

    # --- commit (under the engine's commit lock) ----------------------------------------------
    def validate(self, writes: dict, snap: Snapshot | None, *, blind: bool) -> None:
        """ConflictError if a key written has a newest version created or deleted by a
        transaction ``snap`` does not see (first committer wins); KeyError for a blind
        delete of a missing key. Looks the keys up in one ordered pass over the tree
        (``BTree.latest_versions``) and remembers the versions found for ``apply``."""
        joined = order = values = None
        if blind:
            keys = [k for k, data in writes.items() if data is TOMBSTONE]
        else:
            # sorted and joined once (the tree's probe and apply take them so), in C; the
            # values follow the keys' order of the write set's own order (no dict lookups)
            order, keys, joined = sorted_joined(list(writes))
            values = list(writes.values())
        self.operations += len(keys)
        found = self.tree.latest_versions(keys, self._xacts.is_committed, ordered=not blind,
                                          joined=joined) if keys else []
        if blind:
            olds: dict[bytes, int] = {}
            for key, (xmin, xmax) in zip(keys, found, strict=True):
                if not xmin or xmax:
                    raise KeyError(key)
                olds[key] = xmin
            self._validated = (writes, None, olds, None, None)
        else:
            # Keys without a committed version (found (0, 0)) have nothing to judge: only
            # the others take an interpreted step. Old xmins by position in ``keys``.
            old_xmins = [0] * len(keys)
            for i in itertools.compress(range(len(keys)), map(_NO_VERSION.__ne__, found)):
                key = keys[i]
                xmin, xmax = found[i]
                if not snap.sees(xmin) or (xmax and not snap.sees(xmax)):
                    raise ConflictError(
                        f"KV store {self.name!r}: key {key!r:.60} was changed by transaction "
                        f"{xmax or xmin}, which committed after this transaction started "
                        f"(first committer wins); retry the transaction")
                old_xmins[i] = 0 if xmax else xmin
            self._validated = (writes, keys, old_xmins, joined,
                               list(map(values.__getitem__, order)))

    def apply(self, xid: int, writes: dict) -> int:
        """Write ``writes`` into the tree as ``xid`` (one batch: one WAL record per leaf run);
        returns how many old versions it replaced or deleted, for ``publish``. A key
        ``validate`` did not look up (a blind put) replaces its newest committed version,
        found by the tree on the leaf it writes (``OLD_LOOKUP``: one descent per leaf run,
        not two). The batch goes to the tree as columns: no object per write."""
        olds: dict[bytes, int] = {}
        keys = old_xmins = joined = values = None
        if self._validated is not None and self._validated[0] is writes:
            _writes, vkeys, vold, vjoined, vvalues = self._validated
            if vkeys is None:
                olds = vold
            elif len(vkeys) == len(writes):
                keys, old_xmins, joined, values = vkeys, vold, vjoined, vvalues
        self._validated = None
        if keys is None:
            keys = sorted(writes)
            old_xmins = list(map(olds.get, keys, itertools.repeat(OLD_LOOKUP)))
        if values is None:
            values = list(map(writes.__getitem__, keys))
        if TOMBSTONE in values:  # a delete of a key without a version writes nothing
            self.operations += sum(1 for v, o in zip(values, old_xmins, strict=True)
                                   if v is not TOMBSTONE or o)
        else:
            self.operations += len(keys)
        # The store checked every key and value when it was written (KVStore), the dict
        # holds each key once and xid comes from the transaction manager.
        return self.tree.apply_trusted_columns(keys, values, xid, old_xmins,
                                               self._xacts.is_committed, joined)

    def put_new(self, xid: int, key: bytes, value: bytes, then: tuple[int, int, bytes]
                ) -> tuple[int, int] | None:
        """An autocommit put of a checked ``key`` and ``value`` (not a delete) as ``xid``,
        with the commit's record ``then`` logged right after it (``BTree.put_new``): (its
        end LSN, the versions it made dead for ``publish``'s count: 0 or 1), or None,
        nothing written, when the key's newest version on its leaf is not a committed live
        one or the write needs more than one leaf's insert (``apply`` then takes it)."""
        got = self.tree.put_new(key, value, xid, then, self._xacts.is_committed)
        if got is not None:
            self.operations += 1
        return got

    def publish(self, xid: int, replaced: int) -> int:
        """The versions are in the tree already; returns how many versions became dead
        (``apply``'s count)."""
        return replaced

    # --- vacuum and checks --------------------------------------------------------------------
    def vacuum(self, is_dead: Callable[[int, int], bool]) -> VacuumResult:
        """Remove the versions ``is_dead(xmin, xmax)`` names, free their overflow pages."""
        return self.tree.vacuum(is_dead)

    def live_keys(self) -> int:
        """Keys with a committed live version (a count over the leaf level: statistics):
        the keys a snapshot taken now sees, counted a leaf at a time (the C extraction,
        no Python step per entry)."""
        xacts = self._xacts
        snap = xacts.snapshot()
        try:
            batches = self.tree.item_batches(snapshot=self._scan_snapshot(snap), values=False)
            return sum(map(len, batches))
        finally:
            xacts.release(snap)

    def nblocks(self) -> int:
        """Blocks in the tree's relation (metapage, tree, overflow and free pages)."""
        return self.tree.bufmgr.smgr.nblocks(self.rel, self.tree.fork)

    def check(self) -> CheckResult:
        """The tree's whole-structure check (``BTree.check``): DataCorruptionError naming
        relation and block at the first violation."""
        return self.tree.check()
