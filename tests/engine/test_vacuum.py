"""Vacuum: overwrite-heavy workloads stay bounded in size (autovacuum), versions a live
snapshot can still see are kept, aborted versions go, and pruned pages recover after a
crash-free reopen (every io method)."""

from __future__ import annotations

import threading

import pytest

from tests.engine.dbutil import open_db


@pytest.fixture
def db(tmp_path, io_method):
    d = open_db(tmp_path / "db", io_method)
    yield d
    d.close()


def test_kv_overwrites_stay_bounded(db):
    """100 keys overwritten 60 times each with autocommit puts: autovacuum keeps the
    relation within a small multiple of one version's size, and every value is the last."""
    kv = db.kv("hot")
    value = b"v" * 150
    for i in range(100):
        kv[b"key%03d" % i] = value
    one_version_blocks = kv.nblocks()
    for rnd in range(60):
        for i in range(100):
            kv[b"key%03d" % i] = b"%d" % rnd + value
    nblocks = kv.nblocks()
    # Without vacuum: 6000 versions of ~190 bytes ≈ 140 blocks.
    assert nblocks <= one_version_blocks * 3 + 20, (one_version_blocks, nblocks)
    assert db.stats().vacuum.automatic >= 1
    assert dict(kv.items()) == {b"key%03d" % i: b"59" + value for i in range(100)}
    kv.check()


def test_table_updates_stay_bounded(db):
    """Rows of a table updated over and over: autovacuum reclaims the old versions."""
    t = db.create_table("counters", [("id", "int8"), ("n", "int8"), ("pad", "text")])
    tids = [t.insert((i, 0, "p" * 100)) for i in range(50)]
    for n in range(1, 80):
        tids = [t.update(tid, (i, n, "p" * 100)) for i, tid in enumerate(tids)]
    assert t.heap.nblocks() < 40, t.heap.nblocks()  # 4000 versions unpruned ≈ 70 blocks
    assert sorted(t.scan()) == [(i, 79, "p" * 100) for i in range(50)]


def test_explicit_vacuum_reuses_space(db):
    """After deleting everything and vacuuming, new inserts reuse the freed pages."""
    kv = db.kv("reuse")
    kv.update({b"%05d" % i: b"x" * 300 for i in range(500)})
    blocks = kv.nblocks()
    with db.transaction():
        for k in list(kv.keys()):
            del kv[k]
    assert db.vacuum() >= 500
    kv.update({b"n%05d" % i: b"y" * 300 for i in range(500)})
    assert kv.nblocks() <= blocks + 1
    assert len(kv) == 500


def test_vacuum_keeps_what_a_snapshot_sees(db):
    """A transaction's snapshot keeps old versions alive through vacuum; once it ends,
    vacuum removes them."""
    kv = db.kv("snap")
    kv.update({b"%03d" % i: b"old" for i in range(100)})
    with db.transaction():
        assert kv[b"000"] == b"old"

        def overwrite():
            for rnd in range(3):
                kv.update({b"%03d" % i: b"new%d" % rnd for i in range(100)})
            db.vacuum()
        th = threading.Thread(target=overwrite)
        th.start()
        th.join()
        assert dict(kv.items()) == {b"%03d" % i: b"old" for i in range(100)}
        assert all(kv[b"%03d" % i] == b"old" for i in range(100))
    assert dict(kv.items()) == {b"%03d" % i: b"new2" for i in range(100)}
    pruned = db.vacuum()
    assert pruned >= 300  # the old and the two intermediate versions of every key
    kv.check()


def test_aborted_versions_go_and_their_xids_are_forgotten(db):
    """Rows of aborted transactions are pruned, and once no tuple names an aborted xid the
    engine stops remembering it."""
    t = db.create_table("ab", [("n", "int8")])
    for _k in range(5):
        with pytest.raises(RuntimeError), db.transaction():
            for i in range(20):
                t.insert((i,))
            raise RuntimeError("abort")
    assert db.stats().transactions.aborted_xids == 5
    assert db.vacuum() >= 100
    s = db.stats()
    assert s.transactions.aborted_xids == 0 and s.vacuum.forgotten_aborted_xids == 5
    assert list(t.scan()) == []
    t.insert((1,))
    assert list(t.scan()) == [(1,)]


def test_vacuum_then_reopen(tmp_path, io_method):
    """Pruned pages (PRUNE records) come back identical after reopen, with or without a
    checkpoint in between."""
    path = tmp_path / "db"
    with open_db(path, io_method) as db:
        kv = db.kv("p")
        for rnd in range(5):
            kv.update({b"%04d" % i: b"r%d" % rnd * 20 for i in range(400)})
        for i in range(0, 400, 3):
            del kv[b"%04d" % i]
        db.vacuum()
        expect = dict(kv.items())
    with open_db(path, io_method) as db:
        assert dict(db.kv("p").items()) == expect
        db.kv("p").check()
