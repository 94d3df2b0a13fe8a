"""Vacuum: overwrite-heavy workloads stay bounded in size (autovacuum), versions a live
snapshot can still see are kept, aborted versions go, and pruned pages recover after a
crash-free reopen (every io method)."""

from __future__ import annotations

import threading

import pytest

from tests.engine.dbutil import open_db


def in_thread(fn) -> None:
    """Run ``fn`` in a thread of its own (a transaction of its own) and wait for it."""
    errors = []

    def run():
        try:
            fn()
        except BaseException as exc:  # raised in the test's thread below
            errors.append(exc)
    th = threading.Thread(target=run)
    th.start()
    th.join()
    if errors:
        raise errors[0]


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


def test_autovacuum_reads_a_relation_size_only_when_its_threshold_may_be_reached(db):
    """Once a store has enough dead versions to be weighed (AUTOVACUUM_THRESHOLD_VERSIONS),
    its size is read (a system call) again only when the dead versions reach the
    threshold that size gave, not at every commit: 3,000 autocommit overwrites of a store
    of 2,000 keys read it at most 30 times, and autovacuum runs."""
    kv = db.kv("big")
    with db.transaction():
        for i in range(2000):
            kv[b"key%05d" % i] = b"v" * 100
    relation = kv._relation
    calls = []
    real = relation.index.nblocks

    def counting():
        calls.append(1)
        return real()

    relation.index.nblocks = counting
    for i in range(3000):
        kv[b"key%05d" % (i % 2000)] = b"w" * 100
    runs = db.stats().vacuum.automatic
    assert runs >= 1
    # (a relation that grows meanwhile raises its threshold a little at each look, so a
    # few looks per run; at every commit it would be ~2,500)
    assert 1 <= len(calls) <= 30, (len(calls), runs)
    assert dict(kv.items()) == {b"key%05d" % i: b"w" * 100 for i in range(2000)}


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


def test_vacuum_of_an_indexed_table_takes_exactly_the_dead_versions(db):
    """A table with a primary key and an index: after deletes and updates, vacuum (a run
    of pages judged at a time, each changed page pruned by one C call, the index entries
    of exactly those tuples removed first) prunes the deleted rows and the replaced
    versions, no others; every index answers for the live rows only and checks clean; a
    second vacuum finds nothing; the freed slots take new rows without the heap growing."""
    t = db.create_table("people", [("id", "int8"), ("name", "text")], primary_key="id")
    t.create_index("by_name", ["name"])
    with db.transaction():
        t.insert_many([(i, f"n{i:05d}") for i in range(3000)])
    blocks = t.heap.nblocks()

    def change():
        with db.transaction():
            for i in range(0, 3000, 3):
                t.delete(id=i)
            for i in range(1, 3000, 30):
                t.update((i, f"u{i:05d}"))
    with db.transaction():   # a snapshot that keeps autovacuum off the dead versions
        assert t.get(id=0) == (0, "n00000")
        in_thread(change)
    live = {i: f"n{i:05d}" for i in range(3000) if i % 3}
    live.update({i: f"u{i:05d}" for i in range(1, 3000, 30)})
    assert db.vacuum("people") == 1000 + 100
    assert db.vacuum("people") == 0
    assert sorted(t.scan()) == sorted(live.items())
    assert t.get(id=3) is None and t.get(id=31) == (31, "u00031")
    assert list(t.range("by_name", start=("n00003",), stop=("n00004",))) == []
    assert list(t.range("by_name", start=("u00031",), stop=("u00032",))) == [(31, "u00031")]
    assert all(r.ok for r in t.check_indexes()), t.check_indexes()
    with db.transaction():
        t.insert_many([(10_000 + i, f"m{i:05d}") for i in range(1000)])
    assert t.heap.nblocks() <= blocks + 1, (blocks, t.heap.nblocks())
    assert t.count() == len(live) + 1000


def test_vacuum_of_a_kv_store_frees_out_of_line_values(db):
    """KV vacuum judges each leaf's entries with one C call: deleted keys with values
    stored out of line give their overflow pages back (new big values reuse them), and
    the store checks clean."""
    kv = db.kv("big")
    kv.update({b"k%03d" % i: bytes([i]) * 5000 for i in range(40)})
    kv.update({b"s%03d" % i: b"small" for i in range(200)})

    def delete():
        with db.transaction():
            for i in range(0, 40, 2):
                del kv[b"k%03d" % i]
            for i in range(0, 200, 2):
                del kv[b"s%03d" % i]
    with db.transaction():   # a snapshot that keeps autovacuum off the dead versions
        assert kv[b"k000"]
        in_thread(delete)
    assert db.vacuum("big") == 120
    blocks = kv.nblocks()
    kv.update({b"n%03d" % i: bytes([i]) * 5000 for i in range(20)})
    assert kv.nblocks() <= blocks + 2, (blocks, kv.nblocks())
    assert kv[b"k001"] == bytes([1]) * 5000 and b"k000" not in kv
    assert len(kv) == 20 + 100 + 20
    kv.check()
