"""Table.insert_many on tables with indexes: the batch's keys encoded column by column
(``TableIndex.encode_rows``), its uniqueness checked by ``_check_unique_many`` (one set per
index for repeated keys, ``TableIndex.holders`` for keys already held) and its entries
added by ``TableIndex.build_columns`` — against their references, the row-by-row
``_row_keys`` / ``_check_unique`` and ``apply`` of one VersionWrite per entry; on every
io method."""

from __future__ import annotations

import random
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.engine.access.btree import VersionWrite
from slonik.engine.index import TableIndex

from slonik import ConflictError, UniqueViolation
from tests.engine.dbutil import open_db

COLUMNS = [("id", "int8"), ("name", "text"), ("score", "float8")]


@pytest.fixture
def db(tmp_path, io_method):
    d = open_db(tmp_path / "db", io_method)
    yield d
    d.close()


def outcome(f, *args) -> tuple[str, str] | None:
    try:
        f(*args)
    except (UniqueViolation, ConflictError) as exc:
        return type(exc).__name__, str(exc)
    return None


def both_checks(db, t, rows) -> tuple:
    """The row-by-row check's outcome and the batched one's, each in a transaction of its
    own that is rolled back (nothing is written)."""
    got = []
    for batched in (False, True):
        try:
            with db.transaction():
                txn = db._txns.current()
                txn.xid = txn.xid or db._txns.xacts.assign_xid()
                with t._write_lock:
                    if batched:
                        indexes = t._relation.table_indexes
                        got.append(outcome(t._check_unique_many, txn, rows, indexes,
                                           t._batch_keys(rows, indexes)))
                    else:
                        got.append(outcome(t._check_unique, txn, rows,
                                           [t._row_keys(r) for r in rows]))
                raise _Rollback
        except _Rollback:
            pass
    return tuple(got)


class _Rollback(Exception):
    pass


def test_batched_unique_check_agrees_with_the_row_check(db):
    """Random batches against a table holding live, deleted and re-inserted keys, with a
    unique secondary index that allows NULLs: the batched check raises exactly what the
    row-by-row check raises (the first (row, index) in that order), or nothing; both
    through the walk over the index (batch as large as the index) and the descent per
    key (a small batch)."""
    t = db.create_table("u", COLUMNS, primary_key="id")
    t.create_index("by_name", ["name"], unique=True)
    rng = random.Random(7)
    t.insert_many([(i, f"n{i}", i / 2) for i in range(0, 400, 2)])   # even ids live
    with db.transaction():
        for i in range(0, 400, 10):
            t.delete(id=i)                                            # some freed again
    kinds = set()
    for _round in range(60):
        size = rng.choice([3, 40, 600])
        rows = []
        for _ in range(size):
            i = rng.randrange(0, 800)
            name = None if rng.random() < 0.2 else f"n{rng.randrange(0, 900)}"
            rows.append((i, name, float(i)))
        if rng.random() < 0.5:   # mostly fresh keys, so that some batches pass
            rows = [(1000 + k * 3 + 1, None if k % 4 else f"x{k}", 0.0)
                    for k in range(size)] + rows[:rng.randrange(0, 3)]
        ref, batched = both_checks(db, t, rows)
        assert batched == ref, rows[:5]
        kinds.add(None if ref is None else ref[1].split("'")[1])
    assert {None, "u_pkey", "by_name"} <= kinds   # passes, and failures of each index


def test_holders_walk_and_descents_agree(db):
    """``holders`` of a set of keys is the same by the leaf walk and by a descent per key,
    and both equal ``matching`` of each key."""
    t = db.create_table("h", COLUMNS, primary_key="id")
    t.insert_many([(i, f"n{i % 50}", 0.0) for i in range(3000)])
    t.create_index("by_name", ["name"])
    for index in t._relation.table_indexes:
        values = [5, 17, 2999, 4000, 12] if index.primary else ["n3", "n49", "zz", "n0"]
        keys = {index.encode((v,)) for v in values}
        want = {k: [tid for _k, tid in index.matching(k)] for k in keys}
        want = {k: v for k, v in want.items() if v}
        assert len(want) == len(keys) - 1            # 4000 and "zz" are not there
        nblocks = index.tree.bufmgr.smgr.nblocks(index.tree.rel, index.tree.fork)
        assert len(keys) < nblocks                   # the descents
        assert index.holders(keys) == want
        pad = [10**6 + k for k in range(nblocks)] if index.primary else \
            [f"pad{k}" for k in range(nblocks)]
        padded = keys | {index.encode((v,)) for v in pad}
        assert index.holders(padded) == want         # the walk
        if not index.primary:
            assert len(want[index.encode(("n3",))]) == 60


def _build_by_apply(index, xid, entries):
    """The reference build: one VersionWrite per entry, checked and applied by ``apply``."""
    writes = sorted(VersionWrite(k + struct.pack(">IH", *tid), xid, b"") for k, tid in entries)
    if writes:
        index.tree.apply(writes)


def test_build_columns_adds_what_apply_adds(db, monkeypatch):
    """An index created over existing rows (``build`` -> ``build_columns``) holds the
    same entries as one built by ``apply`` of one VersionWrite per entry; a key over the
    limit is refused by ``apply``'s check, naming the size."""
    rng = random.Random(3)
    rows = [(i, f"k{rng.randrange(500)}", rng.random()) for i in range(2000)]
    fast, ref = db.create_table("fast", COLUMNS), db.create_table("ref", COLUMNS)
    assert fast.insert_many(rows) == ref.insert_many(rows)
    fast.create_index("fast_name", ["name"])
    fast.create_index("fast_score", ["score"])
    monkeypatch.setattr(TableIndex, "build", _build_by_apply)
    ref.create_index("ref_name", ["name"])
    ref.create_index("ref_score", ["score"])
    monkeypatch.undo()
    for a, b in zip(fast._relation.table_indexes, ref._relation.table_indexes, strict=True):
        assert list(a.tids(None, None)) == list(b.tids(None, None))
    for t in (fast, ref):
        for result in t.check_indexes():
            assert result.ok, result.problems
    index = fast._relation.table_indexes[0]
    with pytest.raises(ValueError, match="over the limit"):
        index.build_columns(1, [b"x" * 5000], [(0, 1)])


def test_insert_many_uniqueness_on_indexed_tables(db):
    """insert_many into a table with a primary key and a unique index: a key repeated in
    the batch, a key a live row holds and a key of the unique index are refused whole,
    naming the key, and leave the table unchanged; a key whose row was deleted is free
    again; NULLs in the unique index never conflict; a row with a NULL primary key is
    refused naming the column; the indexes match the heap."""
    t = db.create_table("t", COLUMNS, primary_key="id")
    t.create_index("by_name", ["name"], unique=True)
    t.insert_many([(i, f"n{i}", 0.0) for i in range(500)])
    with pytest.raises(UniqueViolation, match=r"'t_pkey'.*\(id\)=\(600\)"):
        t.insert_many([(i, None, 0.0) for i in range(500, 700)] + [(600, None, 1.0)])
    with pytest.raises(UniqueViolation, match=r"'t_pkey'.*\(id\)=\(650\)"):   # no NULL
        t.insert_many([(i, f"m{i}", 0.0) for i in range(500, 700)] + [(650, "o", 1.0)])
    with pytest.raises(UniqueViolation, match=r"'by_name'.*\(name\)=\('n9'\)"):
        t.insert_many([(i, f"m{i}", 0.0) for i in range(500, 700)] + [(950, "n9", 1.0)])
    with pytest.raises(UniqueViolation, match=r"'by_name'.*\(name\)=\('m510'\)"):
        t.insert_many([(i, f"m{i}", 0.0) for i in range(500, 700)] + [(951, "m510", 1.0)])
    with pytest.raises(UniqueViolation, match=r"'t_pkey'.*\(id\)=\(42\)"):
        t.insert_many([(i, None, 0.0) for i in range(700, 800)] + [(42, None, 0.0)])
    with pytest.raises(UniqueViolation, match=r"'by_name'.*\(name\)=\('n7'\)"):
        t.insert_many([(i, None, 0.0) for i in range(800, 900)] + [(901, "n7", 0.0)])
    with pytest.raises(ValueError, match="primary key column 'id' cannot be NULL"):
        t.insert_many([(i, None, 0.0) for i in range(900, 950)] + [(None, "z", 0.0)])
    assert sum(1 for _ in t.scan()) == 500
    t.delete(id=42)
    t.insert_many([(42, "again", 1.0)] + [(i, None, 0.0) for i in range(1000, 1100)])
    assert t.get(id=42) == (42, "again", 1.0)
    assert sum(1 for _ in t.scan()) == 600
    for result in t.check_indexes():
        assert result.ok, result.problems


def test_insert_many_waits_for_no_one_but_refuses_a_running_inserter(db):
    """A key another transaction has inserted and not committed yet: insert_many raises
    ConflictError (as insert does), and succeeds once that transaction rolled back."""
    t = db.create_table("c", COLUMNS, primary_key="id")
    inserted, release = threading.Event(), threading.Event()

    def other():
        with pytest.raises(RuntimeError), db.transaction():
            t.insert((77, "other", 0.0))
            inserted.set()
            release.wait(30)
            raise RuntimeError("roll back")

    th = threading.Thread(target=other)
    th.start()
    assert inserted.wait(30)
    try:
        with pytest.raises(ConflictError, match="being inserted"):
            t.insert_many([(i, None, 0.0) for i in range(40, 120)])
    finally:
        release.set()
        th.join()
    t.insert_many([(i, None, 0.0) for i in range(40, 120)])
    assert t.get(id=77) == (77, None, 0.0)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 60), min_size=1, max_size=80),
       names=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
                      min_size=80, max_size=80))
def test_batched_check_property(tmp_path_factory, ids, names):
    """Hypothesis: for any batch of ids and names (repeats, NULL names) against a table
    holding ids 0..29 (names 'a' on even ids), the two checks agree."""
    d = open_db(tmp_path_factory.mktemp("p") / "db", "sync")
    try:
        t = d.create_table("p", COLUMNS, primary_key="id")
        t.create_index("by_name", ["name"], unique=True)
        t.insert_many([(i, "a" if i == 0 else None, 0.0) for i in range(30)])
        rows = [(i, names[k], 0.0) for k, i in enumerate(ids)]
        ref, batched = both_checks(d, t, rows)
        assert batched == ref
    finally:
        d.close()


def test_an_index_made_while_a_batch_is_encoded_gets_its_entries(db):
    """An index created between a batch's key encoding and its write (another thread's
    create_index, simulated in the encoding step): the write re-encodes under the lock,
    so the new index gets the batch's entries too and matches the heap."""
    t = db.create_table("r", COLUMNS, primary_key="id")
    real = t._batch_keys
    made = []

    def encode_then_index(rows, indexes):
        got = real(rows, indexes)
        if not made:
            made.append(t.create_index("r_name", ["name"]))
        return got

    t._batch_keys = encode_then_index
    t.insert_many([(i, f"n{i}", 0.0) for i in range(300)])
    assert len(t._relation.table_indexes) == 2
    assert [r[0] for r in t.range("r_name", ("n1",), ("n2",))] == \
        sorted((i for i in range(300) if f"n{i}".startswith("n1")), key=lambda i: f"n{i}")
    for result in t.check_indexes():
        assert result.ok, result.problems
