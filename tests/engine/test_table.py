"""Tables: typed rows with NULLs, insert/get/update/delete/scan, transactions, conflicts
and reopen (every io method)."""

from __future__ import annotations

import threading

import pytest
from slonik.engine.access.heap import SCAN_RUN_PAGES
from slonik.storage.page import BLCKSZ

from slonik import ConflictError, RelationDroppedError, Tid, TupleTooLargeError
from tests.engine.dbutil import open_db

COLUMNS = [("id", "int8"), ("score", "float8"), ("name", "text"), ("blob", "bytea"),
           ("ok", "bool")]


@pytest.fixture
def db(tmp_path, io_method):
    d = open_db(tmp_path / "db", io_method)
    yield d
    d.close()


def test_types_and_nulls(db):
    """Every column type round-trips, each may be NULL (None)."""
    t = db.create_table("all", COLUMNS)
    rows = [(1, 1.5, "héllo", b"\x00\xff", True),
            (None, None, None, None, None),
            (-(2**63), float("inf"), "", b"", False),
            (2**63 - 1, -0.0, "x" * 1000, b"y" * 1000, None)]
    tids = [t.insert(r) for r in rows]
    assert [t.get(tid) for tid in tids] == rows
    assert list(t.scan()) == rows
    assert t.columns == tuple(COLUMNS)


def test_wrong_types_are_rejected(db):
    """Wrong types, wrong arity, out-of-range ints, unknown column types and oversized
    rows are clear errors naming the column; nothing is written."""
    t = db.create_table("w", COLUMNS)
    with pytest.raises(TypeError, match="'id'"):
        t.insert(("1", 1.0, "a", b"b", True))
    with pytest.raises(TypeError, match="'name'"):
        t.insert((1, 1.0, b"bytes", b"b", True))
    with pytest.raises(TypeError, match="'ok'"):
        t.insert((1, 1.0, "a", b"b", 1))
    with pytest.raises(ValueError, match="'id'"):
        t.insert((2**63, 1.0, "a", b"b", True))
    with pytest.raises(ValueError, match="5 columns"):
        t.insert((1, 2.0))
    with pytest.raises(TupleTooLargeError):
        t.insert((1, 1.0, "a", b"b" * 9000, True))
    with pytest.raises(ValueError, match="unknown type"):
        db.create_table("bad", [("a", "int4")])
    with pytest.raises(TypeError):
        t.get("not a tid")
    assert list(t.scan()) == []


def test_update_delete_and_reopen(tmp_path, io_method):
    """update returns the new version's tid (the old one is gone), delete hides the row,
    and everything is found again after reopen by name."""
    path = tmp_path / "db"
    with open_db(path, io_method) as db:
        t = db.create_table("events", [("id", "int8"), ("name", "text")])
        a = t.insert((1, "boot"))
        b = t.insert((2, "run"))
        c = t.insert((3, "halt"))
        b2 = t.update(b, (2, "running"))
        assert t.get(b) is None and t.get(b2) == (2, "running")
        t.delete(c)
        assert t.get(c) is None
        with pytest.raises(KeyError):
            t.delete(c)
        with pytest.raises(KeyError):
            t.update(b, (2, "stale tid"))
        assert t.get(Tid(999, 1)) is None
        assert sorted(t.scan()) == [(1, "boot"), (2, "running")]
    with open_db(path, io_method) as db:
        t = db.table("events")
        assert t.get(a) == (1, "boot") and t.get(b2) == (2, "running") and t.get(c) is None
        assert sorted(t.scan()) == [(1, "boot"), (2, "running")]


def test_transactions_and_visibility(db):
    """Rows written in a transaction are visible to it at once, to others only after
    commit; an abort hides its inserts and undoes its updates and deletes."""
    t = db.create_table("v", [("n", "int8")])
    keep = t.insert((0,))
    seen = []
    with db.transaction():
        tid = t.insert((1,))
        assert t.get(tid) == (1,)
        assert sorted(t.scan()) == [(0,), (1,)]
        th = threading.Thread(target=lambda: seen.append(sorted(t.scan())))
        th.start()
        th.join()
    assert seen == [[(0,)]]
    assert sorted(t.scan()) == [(0,), (1,)]
    with pytest.raises(RuntimeError), db.transaction():
        t.insert((2,))
        t.update(keep, (100,))
        t.delete(tid)
        assert sorted(t.scan()) == [(2,), (100,)]
        raise RuntimeError("abort")
    assert sorted(t.scan()) == [(0,), (1,)]
    assert t.get(keep) == (0,) and t.get(tid) == (1,)
    # The rows the aborted transaction touched can be changed again.
    t.update(keep, (5,))
    assert sorted(t.scan()) == [(1,), (5,)]


def test_update_conflicts(db):
    """Updating a row another transaction is changing, or changed after our snapshot,
    raises ConflictError at once; the other transaction's change wins."""
    t = db.create_table("c", [("n", "int8")])
    tid = t.insert((0,))
    holding, release = threading.Event(), threading.Event()

    def other():
        with db.transaction():
            t.update(tid, (1,))
            holding.set()
            release.wait()

    th = threading.Thread(target=other)
    th.start()
    holding.wait()
    try:
        with pytest.raises(ConflictError, match="being changed"):
            t.update(tid, (2,))
        with pytest.raises(ConflictError):
            t.delete(tid)
    finally:
        release.set()
        th.join()
    (new_tid, row), = list(t.items())
    assert row == (1,)
    with pytest.raises(ConflictError, match="after this transaction started"), db.transaction():
        assert t.get(new_tid) == (1,)
        th = threading.Thread(target=lambda: t.update(new_tid, (3,)))
        th.start()
        th.join()
        t.update(new_tid, (4,))
    assert [r for r in t.scan()] == [(3,)]


def test_large_scan(db):
    """A table of many pages scans completely, in insertion order, through a read stream."""
    t = db.create_table("big", [("n", "int8"), ("pad", "text")])
    with db.transaction():
        t.insert_many([(i, "p" * 200) for i in range(3000)])
    assert t.heap.nblocks() > 50
    assert [r[0] for r in t.scan()] == list(range(3000))
    assert t.count() == 3000


def test_scan_of_long_rows(db):
    """Rows of ~1,000-byte values (the long-value decode, sliced at the values' bounds)
    scan back exactly as inserted: ASCII and non-ASCII text, bytea with NUL bytes, runs
    with and without NULLs; compared (by id: the scan is in physical order) with the list
    inserted, and with items() and get() of their tids."""
    t = db.create_table("long", [("id", "int8"), ("t", "text"), ("b", "bytea")])
    rows = [(i, ("é" if i % 7 == 0 else "a") * (900 + i % 50) + str(i),
             bytes([i % 256, 0]) * 480) for i in range(600)]
    rows[300] = (300, None, b"")       # one run with a NULL: decoded row by row
    with db.transaction():
        tids = t.insert_many(rows)
    assert t.heap.nblocks() > 40
    scanned = list(t.scan())
    assert sorted(scanned, key=lambda r: r[0]) == rows   # (physical order: insert_many
    items = list(t.items())                                # packs the short row's page)
    assert [row for _tid, row in items] == scanned
    assert [t.get(tid) for tid, _row in items[::37]] == [row for _tid, row in items[::37]]
    assert sorted(t.get(tid)[0] for tid in tids) == list(range(600))


def test_scan_after_drop_ends_with_its_batch(db):
    """A table scan half consumed when its table is dropped hands out at most the rest of
    the batch it had decoded (its first run of up to SCAN_RUN_PAGES pages; in order,
    intact: a 200-byte row takes over 220 bytes of a page), then raises
    RelationDroppedError; a fresh scan raises it at once."""
    t = db.create_table("gone", [("id", "int8"), ("pad", "text")])
    with db.transaction():
        t.insert_many([(i, "x" * 200) for i in range(6000)])  # ~180 pages: several runs
    rows = t.scan()
    assert [next(rows) for _ in range(10)] == [(i, "x" * 200) for i in range(10)]
    db.drop("gone")
    late = []
    with pytest.raises(RelationDroppedError):
        for _ in range(6000):
            late.append(next(rows))
    assert len(late) < SCAN_RUN_PAGES * (BLCKSZ // 220)
    assert late == [(i, "x" * 200) for i in range(10, 10 + len(late))]
    with pytest.raises(RelationDroppedError):
        t.scan()
