"""Tables with primary keys and secondary B+tree indexes (engine/index.py, engine/table.py):
lookups, ranges, uniqueness, maintenance by every write, vacuum and TID reuse, reopen,
drop, bad input — on every io method, each test checking the indexes against the heap
(``check_indexes``) where the structure could have gone wrong."""

from __future__ import annotations

import contextlib
import os
import random
import threading

import pytest
from slonik.engine.tools.check import check_database
from slonik.engine.tools.dump import dump_database, load_database

from slonik import ConflictError, SlonikError, UniqueViolation
from tests.engine.dbutil import open_db

COLUMNS = [("id", "int8"), ("name", "text"), ("score", "float8"), ("blob", "bytea"),
           ("ok", "bool")]


@pytest.fixture
def db(tmp_path, io_method):
    d = open_db(tmp_path / "db", io_method)
    yield d
    d.close()


def _assert_indexes_ok(t) -> None:
    for result in t.check_indexes():
        assert result.ok, result.problems


def _pg_order(v):
    return (v is None, v)


def test_primary_key_get_update_delete(db):
    """get(id=) finds a row by primary key (None when absent); update(row) and
    delete(id=) address it by key; the old TID API still works; the index matches the
    heap after each step."""
    t = db.create_table("users", COLUMNS, primary_key="id")
    assert t.primary_key == ("id",)
    tid = t.insert((1, "alice", 1.5, b"a", True))
    t.insert((2, "bob", None, None, None))
    assert t.get(id=1) == (1, "alice", 1.5, b"a", True)
    assert t.get(id=3) is None
    assert t.get(tid) == (1, "alice", 1.5, b"a", True)
    new = t.update((1, "alicia", 2.0, b"", False))
    assert new != tid
    assert t.get(id=1) == (1, "alicia", 2.0, b"", False)
    t.update(new, (1, "al", 2.0, b"", False))          # by TID
    assert t.get(id=1)[1] == "al"
    t.delete(id=2)
    assert t.get(id=2) is None
    with pytest.raises(KeyError, match="id=2"):
        t.delete(id=2)
    with pytest.raises(KeyError, match="id=9"):
        t.update((9, "nobody", None, None, None))
    assert sorted(t.scan()) == [(1, "al", 2.0, b"", False)]
    _assert_indexes_ok(t)


def test_unique_violation_aborts_with_nothing_written(db):
    """A duplicate primary key raises UniqueViolation naming the index and the key; in a
    transaction the whole transaction is aborted (its earlier insert is gone too); in
    autocommit nothing is written. Deleting a key frees it for a later insert in the same
    transaction; a unique secondary index behaves alike, and NULLs never conflict."""
    t = db.create_table("u", COLUMNS, primary_key="id")
    t.insert((1, "a", None, None, None))
    with pytest.raises(UniqueViolation, match=r"'u_pkey'.*\(id\)=\(1\)"):
        t.insert((1, "dup", None, None, None))
    assert isinstance(UniqueViolation("x"), SlonikError)
    with pytest.raises(UniqueViolation), db.transaction():
        t.insert((2, "b", None, None, None))
        t.insert((1, "dup", None, None, None))
    assert t.get(id=2) is None
    with db.transaction():
        try:
            t.insert((3, "c", None, None, None))
            t.insert((1, "dup", None, None, None))
        except UniqueViolation:
            pass
    assert t.get(id=3) is None      # caught or not, the transaction was aborted
    with db.transaction():
        t.delete(id=1)
        t.insert((1, "again", None, None, None))
    assert t.get(id=1)[1] == "again"
    with pytest.raises(UniqueViolation, match="duplicate"):
        t.insert_many([(5, "x", None, None, None), (5, "y", None, None, None)])
    assert t.get(id=5) is None
    t.create_index("by_name", ["name"], unique=True)
    t.insert((6, None, None, None, None))
    t.insert((7, None, None, None, None))           # NULLs are distinct
    with pytest.raises(UniqueViolation, match=r"'by_name'.*\(name\)=\('again'\)"):
        t.insert((8, "again", None, None, None))
    with pytest.raises(UniqueViolation, match="by_name"):
        t.update((6, "again", None, None, None))
    assert sorted(r[0] for r in t.scan()) == [1, 6, 7]
    with pytest.raises(UniqueViolation, match="by_score"):
        t.insert((9, "z", 1.0, None, None))
        t.insert((10, "w", 1.0, None, None))
        t.create_index("by_score", ["score"], unique=True)
    assert "by_score" not in t.indexes
    _assert_indexes_ok(t)


def test_multicolumn_index_ranges_follow_natural_order(db):
    """An index over (score, name, ok) built over existing rows, then maintained by
    inserts, updates and deletes, returns exactly the rows Python's sort of the same
    keys (NULLs last) puts in [start, stop), forwards and reversed, for random bounds
    and prefixes; lookup returns the rows of one key."""
    rng = random.Random(7)
    t = db.create_table("m", COLUMNS, primary_key="id")
    names = ["", "a", "ab", "b", "é", "z\x00", None]
    scores = [-1e300, -1.5, -0.0, 0.0, 2.5, float("inf"), None]

    def row(i):
        return (i, rng.choice(names), rng.choice(scores), bytes([i % 7]), rng.choice(
            [True, False, None]))

    model = {i: row(i) for i in range(300)}
    t.insert_many(list(model.values())[:150])
    t.create_index("by_sno", ["score", "name", "ok"])
    t.insert_many(list(model.values())[150:])
    for i in rng.sample(range(300), 60):
        model[i] = (i, *row(i)[1:])
        t.update(model[i])
    for i in rng.sample(range(300), 40):
        del model[i]
        t.delete(id=i)

    def key(r):
        return (_pg_order(r[2]), _pg_order(r[1]), _pg_order(r[4]))

    def same(got, want):
        """Same rows, in the same key order (rows of equal keys in any order: TIDs)."""
        assert [key(r) for r in got] == [key(r) for r in want]
        assert sorted(got) == sorted(want)

    ordered = sorted(model.values(), key=key)
    same(list(t.range("by_sno")), ordered)
    same(list(t.range("by_sno", reverse=True)), ordered[::-1])
    assert list(t.range("m_pkey")) == sorted(model.values())
    for _ in range(40):
        a, b = sorted(rng.sample(ordered, 2), key=key)
        k = rng.randrange(1, 4)
        start = (a[2], a[1], a[4])[:k]
        stop = (b[2], b[1], b[4])[:k]

        def prefix(r, k=k):
            return key(r)[:k]
        lo = tuple(_pg_order(v) for v in start)
        hi = tuple(_pg_order(v) for v in stop)
        want = [r for r in ordered if lo <= prefix(r) < hi]
        same(list(t.range("by_sno", start=start, stop=stop)), want)
        same(list(t.range("by_sno", start=start, stop=stop, reverse=True)), want[::-1])
        same(t.lookup("by_sno", start), [r for r in ordered if prefix(r) == lo])
    _assert_indexes_ok(t)


def test_tid_reuse_after_vacuum_never_reaches_a_stranger(db):
    """The issue's scenario: alice is deleted and vacuumed, bob's insert reuses her slot
    (the same TID); no index leads to bob through alice's key, and alice's primary key
    finds nothing."""
    t = db.create_table("p", [("id", "int8"), ("name", "text")], primary_key="id")
    t.create_index("by_name", ["name"])
    alice = t.insert((1, "alice"))
    t.delete(id=1)
    assert db.vacuum("p") == 1
    bob = t.insert((2, "bob"))
    assert bob == alice                      # the slot was reused ...
    assert t.get(id=1) is None               # ... but not through alice's keys
    assert t.lookup("by_name", "alice") == []
    assert t.lookup("by_name", ("bob",)) == [(2, "bob")]
    assert t.get(id=2) == (2, "bob")
    results = t.check_indexes()
    assert [r.entries for r in results] == [1, 1]
    _assert_indexes_ok(t)


@contextlib.contextmanager
def transaction_held_in_thread(db, change):
    """``change()`` made in a transaction of another thread, which stays open (neither
    committed nor aborted) for the with block and commits after it."""
    holding, release = threading.Event(), threading.Event()
    errors = []

    def hold():
        try:
            with db.transaction():
                change()
                holding.set()
                release.wait(30)
        except BaseException as exc:  # raised in the test's thread below
            errors.append(exc)
            holding.set()
    th = threading.Thread(target=hold)
    th.start()
    assert holding.wait(30)
    try:
        yield
    finally:
        release.set()
        th.join()
    if errors:
        raise errors[0]


def test_snapshot_isolation_and_write_conflicts(db):
    """A reader's range scan and get(id=) see its snapshot while a writer commits an
    update; two transactions inserting one key: the second gets ConflictError while the
    first runs, UniqueViolation once it committed."""
    t = db.create_table("s", [("id", "int8"), ("v", "text")], primary_key="id")
    t.create_index("by_v", ["v"])
    t.insert((1, "old"))
    with db.transaction():
        assert t.get(id=1) == (1, "old")
        done = threading.Event()

        def writer():
            t.update((1, "new"))
            done.set()
        th = threading.Thread(target=writer)
        th.start()
        th.join()
        assert done.is_set()
        assert t.get(id=1) == (1, "old")
        assert list(t.range("by_v")) == [(1, "old")]
        assert t.lookup("by_v", "new") == []
    assert list(t.range("by_v")) == [(1, "new")]
    with transaction_held_in_thread(db, lambda: t.insert((2, "x"))), \
            pytest.raises(ConflictError, match="being inserted"):
        t.insert((2, "y"))
    with pytest.raises(UniqueViolation):
        t.insert((2, "y"))
    assert t.get(id=2) == (2, "x")
    _assert_indexes_ok(t)


def test_bad_input_names_the_thing(db):
    """Unknown columns and index names, wrong key types, NULL primary keys, a key too
    long for the tree, misuse of get/delete: clear errors naming what was wrong, and
    nothing written."""
    with pytest.raises(ValueError, match="'nope'"):
        db.create_table("b", [("id", "int8")], primary_key="nope")
    t = db.create_table("b", [("id", "int8"), ("name", "text")], primary_key=("id",))
    with pytest.raises(ValueError, match="no column 'nope'"):
        t.create_index("i", ["nope"])
    with pytest.raises(KeyError, match="no index 'missing'"):
        t.lookup("missing", 1)
    with pytest.raises(KeyError, match="no index 'missing'"):
        t.range("missing")
    with pytest.raises(TypeError, match="'id' is int8"):
        t.get(id="1")
    with pytest.raises(TypeError, match="'id' is int8"):
        list(t.range("b_pkey", start=("x",)))
    with pytest.raises(ValueError, match="primary key is \\(id\\)"):
        t.get(name="x")
    with pytest.raises(ValueError, match="'id' cannot be NULL"):
        t.insert((None, "x"))
    t.create_index("by_name", ["name"])
    with pytest.raises(ValueError, match="already used"):
        t.create_index("by_name", ["id"])
    with pytest.raises(ValueError, match="'by_name' is already used by an index"):
        db.create_table("by_name", [("id", "int8")])
    with pytest.raises(ValueError, match="'b_pkey' is already used by an index"):
        db.kv("b_pkey")
    with pytest.raises(ValueError, match="'by_name'.*over the limit"):
        t.insert((1, "x" * 3000))
    with pytest.raises(ValueError, match="has 1 columns"):
        t.lookup("by_name", ("a", "b"))
    plain = db.create_table("plain", [("id", "int8")])
    with pytest.raises(ValueError, match="no primary key"):
        plain.get(id=1)
    with pytest.raises(ValueError, match="no primary key"):
        plain.update((1,))
    assert list(t.scan()) == [] and list(plain.scan()) == []


def test_reopen_drop_and_read_stream(tmp_path, io_method):
    """Indexes survive a clean reopen (the catalog lists them) and are used at once; a
    cold index range scan over rows stored in key order reads the heap through a read
    stream (fewer reads than heap blocks: adjacent blocks combined); dropping the table
    removes the index files with the heap's."""
    path = tmp_path / "db"
    with open_db(path, io_method) as db:
        t = db.create_table("r", [("id", "int8"), ("pad", "text")], primary_key="id")
        t.insert_many([(i, "p" * 200) for i in range(2000)])
        t.create_index("by_pad", ["pad", "id"])
        rels = [db.stats().relations[0].relfilenumber]
    with open_db(path, io_method) as db:
        t = db.table("r")
        assert t.indexes == {"r_pkey": (("id",), True), "by_pad": (("pad", "id"), False)}
        heap_blocks = t.heap.nblocks()
        before = db.stats().aio.total("read")
        rows = list(t.range("r_pkey", start=(100,), stop=(1900,)))
        reads = db.stats().aio.total("read") - before
        assert [r[0] for r in rows] == list(range(100, 1900))
        assert heap_blocks > 20 and reads < heap_blocks * 0.9 * 0.5, (reads, heap_blocks)
        assert t.get(id=1999) == (1999, "p" * 200)
        _assert_indexes_ok(t)
        db.drop("r")
    files = set(os.listdir(path / "base"))
    assert not any(f.split(".")[0] == str(rels[0]) for f in files)
    assert not any(f.split(".")[0] in {str(rels[0] + 1), str(rels[0] + 2)} for f in files)


def test_dump_load_round_trip_keeps_keys_and_indexes(tmp_path, io_method):
    """dump writes the primary key (``ADD PRIMARY KEY``, not a second index) and each
    index; load into an empty database creates them: the same rows, the same index
    definitions, indexes consistent with the heap, uniqueness enforced again."""
    src, dst, script = tmp_path / "src", tmp_path / "dst", tmp_path / "dump.sql"
    rows = [(i % 7, f"k{i}", None if i % 5 == 0 else i * 0.5, bool(i % 2)) for i in range(200)]
    with open_db(src, io_method) as db:
        t = db.create_table("ev", [("a", "int8"), ("b", "text"), ("x", "float8"),
                                   ("f", "bool")], primary_key=("a", "b"))
        t.insert_many(rows)
        t.create_index("ev_x", ["x", "f"])
        t.create_index("ev_b", ["b"], unique=True)
        db.create_table("plain", [("id", "int8")]).insert((1,))
    dump_database(src, script, io_method=io_method)
    text = script.read_text()
    assert 'ADD PRIMARY KEY ("a", "b");' in text
    assert 'CREATE INDEX "ev_x" ON public."ev" USING btree ("x", "f");' in text
    assert 'CREATE UNIQUE INDEX "ev_b" ON public."ev" USING btree ("b");' in text
    assert "ev_pkey" not in text
    open_db(dst, io_method).close()   # load reads into an existing, empty database
    load_database(dst, script, io_method=io_method)
    with open_db(dst, io_method) as db:
        t = db.table("ev")
        assert sorted(t.scan()) == sorted(rows)
        assert t.indexes == {"ev_pkey": (("a", "b"), True), "ev_x": (("x", "f"), False),
                             "ev_b": (("b",), True)}
        assert t.get(a=3, b="k3") == (3, "k3", 1.5, True)
        assert [r[1] for r in t.range("ev_x", stop=(2.0,))] == ["k1", "k2", "k3"]
        with pytest.raises(UniqueViolation, match="ev_b"):
            t.insert((99, "k4", None, None))
        _assert_indexes_ok(t)
        assert list(db.table("plain").scan()) == [(1,)]


def test_slonik_check_verifies_indexes_against_the_heap(tmp_path, io_method):
    """``slonik check`` (read-only, offline) reads each index's leaf pages and the heap:
    a consistent database passes with its indexes counted; an index missing the entries
    of visible rows, or holding an entry whose heap tuple has another key (made through
    the index's own tree, WAL-logged, so the pages stay sound), fails, naming the table,
    the index and the TID — and the online ``check_indexes`` agrees."""
    path = tmp_path / "db"
    with open_db(path, io_method) as db:
        t = db.create_table("c", [("id", "int8"), ("name", "text")], primary_key="id")
        t.insert_many([(i, f"n{i}") for i in range(50)])
        t.create_index("c_name", ["name"])
        t.delete(id=7)
    report = check_database(path, io_method=io_method)
    assert report.ok and report.indexes_checked == 2, report.index_problems
    assert {r.kind for r in report.relations} >= {"table", "index", "catalog"}
    with open_db(path, io_method) as db:
        t = db.table("c")
        by_name, pk = (next(i for i in t._relation.table_indexes if i.name == n)
                       for n in ("c_name", "c_pkey"))
        removed = by_name.tree.vacuum(lambda e: e.key.startswith(by_name.encode(("n3",))),
                                      by_entry=True)
        assert removed.entries_removed == 1
        tid = next(tid for tid, row in t.items() if row[0] == 5)
        pk.insert(999, pk.encode((12345,)), tid)
        online = {r.index: r.problems for r in t.check_indexes()}
        assert any("has no entry" in p for p in online["c_name"])
        assert any("another key" in p for p in online["c_pkey"])
    report = check_database(path, io_method=io_method)
    assert not report.ok
    text = "\n".join(report.index_problems)
    assert "table 'c': index 'c_name': the visible heap tuple at (0, 4) has no entry" in text
    assert "table 'c': index 'c_pkey'" in text and f"{tuple(tid)}, whose row has another key" \
        in text


def test_prefix_keys_equals_with_prefix_across_leaves(db):
    """index.prefix_keys (the point read of an index: the leaf from the tree's cached
    internal pages, then one C extraction per leaf) returns exactly the keys of
    BTree.with_prefix (the reference: a locked descent and an entry-by-entry walk), in
    the same order, for keys whose entries span many leaves, for prefixes that match
    nothing, part of a key or every entry, before and after the tree's vacuum removes the
    middle of a key's run (emptying and unlinking leaves); and lookup() agrees with a
    filtered scan while every row has its entry."""
    from slonik.engine.index import prefix_keys  # noqa: PLC0415 - the function under test

    t = db.create_table("g", [("id", "int8"), ("grp", "text"), ("pad", "bytea")],
                        primary_key="id")
    t.create_index("g_grp", ["grp"])
    t.insert_many([(i, f"k{i % 5}", bytes(40)) for i in range(3000)])
    idx = t._index("g_grp")
    prefixes = [idx.encode((f"k{j}",)) for j in range(6)] + [b"", b"\x01", b"\x01k",
                                                             idx.encode(("k",))]

    def agree(*, entries_complete: bool) -> None:
        for p in prefixes:
            want = [e.key for e in idx.tree.with_prefix(p)]
            assert prefix_keys(idx.tree, p) == want, p
        assert len(prefix_keys(idx.tree, idx.encode(("k1",)))) == \
            sum(1 for e in idx.tree.with_prefix(idx.encode(("k1",))))
        for j in range(6 if entries_complete else 0):
            assert sorted(t.lookup("g_grp", f"k{j}")) == \
                sorted(r for r in t.scan() if r[1] == f"k{j}")

    agree(entries_complete=True)
    assert idx.tree.height >= 2   # the runs span leaves
    k2 = idx.encode(("k2",))
    run = [e.key for e in idx.tree.with_prefix(k2)]
    doomed = set(run[len(run) // 4: 3 * len(run) // 4])   # the middle of k2's run
    t.delete(id=0)
    removed = idx.tree.vacuum(lambda e: e.key in doomed, by_entry=True)
    assert removed.entries_removed == len(doomed)
    agree(entries_complete=False)   # live rows lost entries here: lookup would miss them


def test_long_ranges_across_many_leaves_both_ways(db):
    """Index ranges that span many leaves (past the leaves a range reads itself before
    the tree's streamed leaf walk takes over) return exactly the rows of a filtered,
    sorted scan, forward and reversed, bounded and unbounded, with deleted rows left
    out; a second index on a text column with duplicates orders ties by TID."""
    t = db.create_table("r", [("id", "int8"), ("grp", "text"), ("pad", "bytea")],
                        primary_key="id")
    t.create_index("r_grp", ["grp"])
    t.insert_many([(i, f"g{i % 7}", bytes(30)) for i in range(4000)])
    for i in range(0, 4000, 9):
        t.delete(id=i)
    rows = sorted(t.scan())
    assert t._index("r_pkey").tree.height >= 2
    for lo, hi in [(None, None), (5, 3900), (100, 101), (3990, None), (None, 17), (7, 7)]:
        want = [r for r in rows if (lo is None or r[0] >= lo) and (hi is None or r[0] < hi)]
        assert list(t.range("r_pkey", lo, hi)) == want, (lo, hi)
        assert list(t.range("r_pkey", lo, hi, reverse=True)) == want[::-1], (lo, hi)
    by_grp = sorted(rows, key=lambda r: r[1])   # stable: ties stay in id (= TID) order
    assert list(t.range("r_grp", "g2", "g5")) == [r for r in by_grp if "g2" <= r[1] < "g5"]


def test_range_iterator_after_close_and_drop(tmp_path, io_method):
    """A half-consumed index range raises DatabaseClosedError on its next step after
    db.close(), and RelationDroppedError after the table is dropped (no rows from memory,
    no internal error)."""
    from slonik import DatabaseClosedError, RelationDroppedError  # noqa: PLC0415

    db = open_db(tmp_path / "db", io_method)
    t = db.create_table("c", [("id", "int8"), ("pad", "text")], primary_key="id")
    t.insert_many([(i, "x" * 100) for i in range(600)])
    dropped = db.create_table("d", [("id", "int8")], primary_key="id")
    dropped.insert_many([(i,) for i in range(600)])
    rows = t.range("c_pkey", 0, None)
    other = dropped.range("d_pkey", None, None)
    assert next(rows) == (0, "x" * 100) and next(other) == (0,)
    db.drop("d")
    with pytest.raises(RelationDroppedError):
        next(other)
    db.close()
    with pytest.raises(DatabaseClosedError):
        next(rows)


def test_range_scans_beside_writers_see_whole_snapshots(db):
    """Range scans (which hold the share locks of a batch's heap pages together, taken in
    block order) run in two threads while a writer updates rows into other pages (the
    heap's two-page updates, fresh pages extended) and inserts: every scan returns each
    id once, in index order, and exactly the row count of some committed state; nothing
    deadlocks (the threads finish; the 120 s join bound only keeps a hang from stalling
    the suite) and the indexes match the heap afterwards."""
    t = db.create_table("w", [("id", "int8"), ("v", "text"), ("pad", "bytea")],
                        primary_key="id")
    t.create_index("w_v", ["v"])
    t.insert_many([(i, f"v{i:05d}", bytes(20)) for i in range(400)])
    counts = {400}
    problems: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        rng = random.Random(5)
        try:
            for step in range(300):
                i = rng.randrange(400)
                t.update((i, f"v{rng.randrange(100000):05d}", bytes(20 + step % 300)))
                if step % 10 == 0:
                    counts.add(401 + step // 10)   # before the insert commits
                    t.insert((1000 + step, f"w{step:05d}", b""))
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            problems.append(f"writer: {e!r}")
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                rows = list(t.range("w_v"))
                keys = [r[1] for r in rows]
                ids = [r[0] for r in rows]
                if keys != sorted(keys) or len(set(ids)) != len(ids) or len(rows) not in counts:
                    problems.append(f"inconsistent scan of {len(rows)} rows")
                by_id = list(t.range("w_pkey", 100, 300))
                if [r[0] for r in by_id] != list(range(100, 300)):
                    problems.append("a pk range lost or repeated rows")
        except Exception as e:  # noqa: BLE001
            problems.append(f"reader: {e!r}")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                    for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads), "a thread hung (deadlock?)"
    assert problems == []
    _assert_indexes_ok(t)


def test_keys_of_rows_equals_key_of_row(db):
    """TableIndex.keys_of_rows (the column-wise re-check keys of an index scan) equals
    key_of_row row by row for a two-column index over rows with NULLs, negative and NaN
    floats, text with NUL characters and bools, and for rows without NULLs (the
    column-wise path); a range over that index returns the rows in key order."""
    t = db.create_table("k", COLUMNS, primary_key="id")
    t.create_index("k_sf", ["score", "name"])
    idx = t._index("k_sf")
    mixed = [(1, "a\x00b", -1.5, b"", True), (2, None, None, None, None),
             (3, "z", float("nan"), b"\x00", False), (4, "", -0.0, b"x", None)]
    plain = [(5, "p", 2.0, b"", True), (6, "q\x00", -3.25, b"y", False)]
    for rows in (mixed, plain, mixed + plain):
        assert idx.keys_of_rows(rows) == [idx.key_of_row(r) for r in rows]
    t.insert_many(mixed + plain)
    got = list(t.range("k_sf"))
    assert [idx.key_of_row(r) for r in got] == sorted(idx.key_of_row(r) for r in got)
    assert len(got) == 6


def test_index_entries_take_the_one_call_put(db, monkeypatch):
    """A row's index entries go in by the tree's one-C-call put of a new key
    (``BTree.put_new`` with no record after it) unless their leaf must split: the
    general insert runs for a few of 600 single-row inserts only; the entries, a reopen
    (shutdown) and ``check_indexes`` agree with the rows."""
    from slonik.engine.access.btree import BTree
    general = []
    real_insert = BTree.insert
    monkeypatch.setattr(BTree, "insert", lambda self, *a, **k: (general.append(a[0]),
                                                                 real_insert(self, *a, **k)))
    t = db.create_table("p", COLUMNS, primary_key="id")
    t.create_index("by_name", ["name"])
    rng = random.Random(5)
    ids = rng.sample(range(10**6), 600)
    with db.transaction():
        for i in ids:
            t.insert((i, f"n{i % 97}", None, None, None))
    assert 0 < len(general) < 60, len(general)     # splits only
    assert [r[0] for r in t.range("p_pkey")] == sorted(ids)
    assert [r[1] for r in t.range("by_name")] == sorted(f"n{i % 97}" for i in ids)
    assert sorted(r[0] for r in t.scan()) == sorted(ids)
    assert all(t.get(id=i)[0] == i for i in ids[:50])
    _assert_indexes_ok(t)


def test_update_and_delete_by_key_judge_writability_from_one_fetch(db):
    """Updates and deletes by primary key (one fetch per entry: visibility, key and
    writability judged together) raise as before: ConflictError while another
    transaction's change of the row runs and after it committed past this snapshot,
    KeyError for a row this transaction deleted or never saw; a kept unique key is not
    a violation, a taken one is."""
    t = db.create_table("w", [("id", "int8"), ("code", "text")], primary_key="id")
    t.create_index("by_code", ["code"], unique=True)
    t.insert_many([(1, "a"), (2, "b"), (3, "c")])
    t.update((1, "a"))                      # keeps both unique keys
    with pytest.raises(UniqueViolation):
        t.update((1, "b"))                  # takes row 2's code
    with transaction_held_in_thread(db, lambda: t.update((2, "bb"))):
        with pytest.raises(ConflictError, match="is being changed by"):
            t.update((2, "x"))
        with pytest.raises(ConflictError, match="is being changed by"):
            t.delete(id=2)
    with db.transaction():
        assert t.get(id=3) == (3, "c")      # the snapshot is taken here

        def later():
            t.update((3, "cc"))
        th = threading.Thread(target=later)
        th.start()
        th.join()
        with pytest.raises(ConflictError, match="was changed after this transaction"):
            t.delete(id=3)
    with db.transaction():
        t.delete(id=1)
        with pytest.raises(KeyError, match="no row with id=1"):
            t.update((1, "z"))
    with pytest.raises(KeyError, match="no row with id=9"):
        t.delete(id=9)
    assert sorted(t.scan()) == [(2, "bb"), (3, "cc")]
    _assert_indexes_ok(t)
