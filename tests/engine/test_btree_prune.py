"""In-page pruning of a full KV leaf before it splits (BTree._prune_leaf, nbtree's simple
deletion): overwrite-heavy stores stay smaller than without it, a version a live snapshot
can still see is never pruned, and the VACUUM records it writes replay after a crash
(every io method)."""

from __future__ import annotations

import threading

from tests.engine.dbutil import open_db

KEYS = 2000


def overwrite_rounds(kv, rounds: int, tag: bytes) -> dict[bytes, bytes]:
    """``rounds`` autocommit overwrites of every key, in key order; the last values."""
    want = {}
    for r in range(rounds):
        for i in range(KEYS):
            key = b"key%05d" % i
            want[key] = tag + b"%d:" % r + b"v" * 100
            kv[key] = want[key]
    return want


def test_full_leaves_are_pruned_instead_of_split(tmp_path, io_method):
    """Five rounds of autocommit overwrites of 2,000 keys: with pruning the store ends
    clearly smaller than the same run with pruning switched off (its full leaves split
    instead), entries were pruned, the contents are the last values and the tree's
    whole-structure check passes; after a crash (no shutdown checkpoint, pages not
    written) recovery replays the pruning records to the same contents."""
    sizes = {}
    for prune in (True, False):
        path = tmp_path / ("on" if prune else "off")
        db = open_db(path, io_method)
        kv = db.kv("s")
        tree = kv._relation.index.tree
        if not prune:
            tree.prune_test = None
        want = overwrite_rounds(kv, 5, b"")
        sizes[prune] = kv.nblocks()
        assert dict(kv.items()) == want
        kv.check()
        if not prune:
            assert tree.pruned == 0
            db.close()
            continue
        assert tree.pruned > KEYS, tree.pruned
        db._release_resources()   # a crash: recovery replays the VACUUM records
        with open_db(path, io_method) as db2:
            kv2 = db2.kv("s")
            assert dict(kv2.items()) == want
            kv2.check()
    assert sizes[True] < 0.85 * sizes[False], sizes


def test_pruning_keeps_what_a_live_snapshot_sees(tmp_path, io_method):
    """While a transaction holds its snapshot, another thread's overwrites of every key
    (enough to fill leaves many times over) prune nothing it can see: it still reads
    every first value, and nothing was pruned meanwhile (every superseded version was
    deleted after its snapshot began). Once it ends, pruning resumes."""
    db = open_db(tmp_path / "db", io_method)
    try:
        kv = db.kv("s")
        first = overwrite_rounds(kv, 1, b"first")
        tree = kv._relation.index.tree
        errors = []

        def writer():
            try:
                overwrite_rounds(kv, 4, b"later")
            except BaseException as exc:  # raised in the test's thread below
                errors.append(exc)

        with db.transaction():
            assert kv[b"key00000"] == first[b"key00000"]   # the snapshot is taken
            pruned_before = tree.pruned
            th = threading.Thread(target=writer)
            th.start()
            th.join()
            assert not errors, errors
            assert tree.pruned == pruned_before
            assert dict(kv.items()) == first
        last = overwrite_rounds(kv, 2, b"after")
        assert tree.pruned > pruned_before
        assert dict(kv.items()) == last
        kv.check()
    finally:
        db.close()
