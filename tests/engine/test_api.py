"""The API a Python user expects (issue #10, DESIGN §6): clean ``help()``, errors after
close, mapping views with ranges and prefixes, a linear one-transaction ``clear()``,
``get_many``/``pop``, ``db.drop``/``db.relations`` (crash-safe), and what ``io_method=auto``
says when it falls back (every I/O path on every io method)."""

from __future__ import annotations

import inspect
import itertools
import os
import pydoc
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.engine.access.heap import SCAN_RUN_PAGES
from slonik.storage.page import BLCKSZ

import slonik
from slonik import (
    ConflictError,
    Database,
    DatabaseClosedError,
    KVStore,
    RelationDroppedError,
    Table,
    Transaction,
    UniqueViolation,
)
from tests.conftest import require_method
from tests.engine.dbutil import SMALL, open_db

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTERNAL_NAMES = ("apply", "publish", "validate", "rebuild", "trim", "live_keys_estimate",
                  "kv_write", "write_transaction", "implicit_transaction", "bufmgr")


@pytest.fixture
def db(tmp_path, io_method):
    d = open_db(tmp_path / "db", io_method)
    yield d
    d.close()


def _relation_files(path, rel: int) -> list[str]:
    base = os.path.join(path, "base")
    if not os.path.isdir(base):
        return []
    return sorted(n for n in os.listdir(base) if re.fullmatch(rf"{rel}(_\w+)?(\.\d+)?", n))


# --- help() -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [KVStore, Table, Database, Transaction])
def test_help_shows_only_documented_public_api(cls):
    """pydoc's rendering of each public class names none of the engine's commit/vacuum
    helpers, and every public method and property it shows has a docstring (checked with
    inspect.getdoc on every name pydoc considers visible)."""
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for name in INTERNAL_NAMES:
        assert not re.search(rf"\b{name}\b", text), f"{cls.__name__} help mentions {name}"
    assert inspect.getdoc(cls)
    undocumented = []
    for name, _kind, _owner, obj in inspect.classify_class_attrs(cls):
        if not pydoc.visiblename(name, obj=obj) or name.startswith("__"):
            continue
        target = obj.fget if isinstance(obj, property) else obj
        if isinstance(target, staticmethod | classmethod):
            target = target.__func__
        if callable(target) and not inspect.getdoc(getattr(cls, name)):
            undocumented.append(name)
    assert not undocumented, f"{cls.__name__}: no docstring for {undocumented}"


def test_public_names_export():
    """Every name in slonik.__all__ imports and has a docstring."""
    for name in slonik.__all__:
        obj = getattr(slonik, name)
        assert inspect.getdoc(obj), name


# --- after close ------------------------------------------------------------------------------

def test_iterators_and_stores_after_close(tmp_path, io_method):
    """An items() iterator half consumed, a table scan half consumed, then close: each
    hands out at most the rest of the batch it had copied out (in order, intact; an
    items() scan's first batch is its first leaf, a table scan's its first run of up to
    SCAN_RUN_PAGES heap pages: a 200-byte row takes over 220 bytes of a page), then
    raises DatabaseClosedError (no internal ValueError); so do kv[...], get_many, views,
    table.scan() and table.get afterwards."""
    db = open_db(tmp_path / "db", io_method)
    kv = db.kv("k")
    kv.update({b"%04d" % i: b"v" * 200 for i in range(2000)})
    t = db.create_table("t", [("id", "int8"), ("pad", "text")])
    t.insert_many([(i, "x" * 200) for i in range(6000)])  # ~180 pages: several runs
    items = iter(kv.items())
    rows = t.scan()
    assert [next(items) for _ in range(10)][0] == (b"0000", b"v" * 200)
    assert [next(rows) for _ in range(10)][0] == (0, "x" * 200)
    view = kv.keys(prefix=b"01")
    db.close()
    late = []
    with pytest.raises(DatabaseClosedError):
        for _ in range(2000):
            late.append(next(items))
    # at most one leaf's worth (an entry of a 200-byte value takes over 220 bytes)
    assert len(late) < BLCKSZ // 220
    assert late == [(b"%04d" % i, b"v" * 200) for i in range(10, 10 + len(late))]
    late_rows = []
    with pytest.raises(DatabaseClosedError):
        for _ in range(6000):
            late_rows.append(next(rows))
    assert len(late_rows) < SCAN_RUN_PAGES * (BLCKSZ // 220)
    assert late_rows == [(i, "x" * 200) for i in range(10, 10 + len(late_rows))]
    with pytest.raises(DatabaseClosedError):
        kv[b"0001"]
    with pytest.raises(DatabaseClosedError):
        kv.get_many([b"0001"])
    with pytest.raises(DatabaseClosedError):
        list(view)
    with pytest.raises(DatabaseClosedError):
        len(kv)
    with pytest.raises(DatabaseClosedError):
        t.scan()
    with pytest.raises(DatabaseClosedError):
        t.get((0, 1))
    with pytest.raises(DatabaseClosedError):
        kv.clear()


# --- views, ranges, prefixes ------------------------------------------------------------------

def test_views_are_reiterable_snapshots(db):
    """keys()/values()/items() are views: len(), ``in``, and each iteration a fresh
    snapshot (a write between two iterations of the same view shows in the second)."""
    kv = db.kv("v")
    kv.update({b"a1": b"1", b"a2": b"2", b"b1": b"3"})
    keys, values, items = kv.keys(), kv.values(), kv.items(prefix=b"a")
    assert len(keys) == 3 and len(values) == 3 and len(items) == 2
    assert b"a1" in keys and b"zz" not in keys and b"2" in values
    assert (b"a2", b"2") in items and (b"b1", b"3") not in items and (b"a2", b"x") not in items
    assert list(items) == [(b"a1", b"1"), (b"a2", b"2")]
    kv[b"a3"] = b"4"
    del kv[b"a1"]
    assert list(items) == [(b"a2", b"2"), (b"a3", b"4")]
    assert list(reversed(keys)) == [b"b1", b"a3", b"a2"]
    assert len(keys) == 3 and b"a1" not in keys
    with pytest.raises(TypeError, match="prefix"):
        kv.keys(prefix="a")
    with pytest.raises(TypeError, match="reverse"):
        kv.items(reverse=1)


KEY = st.lists(st.sampled_from([0x00, 0x61, 0x62, 0xff]), max_size=3).map(bytes)
BOUND = st.none() | KEY


def test_views_match_dict_model(tmp_path, io_method):
    """Hypothesis: for random stores (keys over a small alphabet with 0xff bytes, some
    written inside an open transaction) and random start/stop/prefix/reverse, the view's
    list, len() and membership equal a sorted dict filtered the same way."""
    db = open_db(tmp_path / "db", io_method)
    names = itertools.count()
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(committed=st.dictionaries(KEY, st.binary(max_size=8), max_size=20),
               own=st.dictionaries(KEY, st.none() | st.binary(max_size=8), max_size=6),
               start=BOUND, stop=BOUND, prefix=BOUND, reverse=st.booleans())
        def check(committed, own, start, stop, prefix, reverse):
            kv = db.kv(f"m{next(names)}")
            kv.update(committed)
            model = dict(committed)

            def expect(m):
                ks = sorted(k for k in m if (start is None or k >= start)
                            and (stop is None or k < stop)
                            and (prefix is None or k.startswith(prefix)))
                return [(k, m[k]) for k in (reversed(ks) if reverse else ks)]

            view = kv.items(start=start, stop=stop, prefix=prefix, reverse=reverse)
            want = expect(model)
            assert list(view) == want
            assert list(kv.keys(start=start, stop=stop, prefix=prefix, reverse=reverse)) == \
                [k for k, _ in want]
            assert len(view) == len(want)
            for k in list(committed)[:3]:
                assert ((k, model[k]) in view) == ((k, model[k]) in want)
            with db.transaction() as tx:
                mine = dict(model)
                for k, v in own.items():
                    if v is None:
                        kv.pop(k, None)
                        mine.pop(k, None)
                    else:
                        kv[k] = v
                        mine[k] = v
                assert list(view) == expect(mine)
                assert len(view) == len(expect(mine))
                tx.rollback()
            assert list(view) == want
        check()
    finally:
        db.close()


def test_prefix_edge_cases(db):
    """prefix=b"" is every key; a prefix of 0xff bytes has no upper bound; start/stop
    intersect with the prefix; reverse works on the intersection."""
    kv = db.kv("p")
    keys = [b"", b"a", b"ab", b"ab\xff", b"ab\xff\xff", b"ac", b"b", b"\xff", b"\xff\xff\x00"]
    kv.update({k: b"v" for k in keys})
    assert list(kv.keys(prefix=b"")) == keys
    assert list(kv.keys(prefix=b"ab")) == [b"ab", b"ab\xff", b"ab\xff\xff"]
    assert list(kv.keys(prefix=b"ab\xff")) == [b"ab\xff", b"ab\xff\xff"]
    assert list(kv.keys(prefix=b"\xff")) == [b"\xff", b"\xff\xff\x00"]
    assert list(kv.keys(prefix=b"a", start=b"ab\x00", stop=b"ac")) == [b"ab\xff", b"ab\xff\xff"]
    assert list(kv.keys(prefix=b"a", reverse=True)) == [b"ac", b"ab\xff\xff", b"ab\xff", b"ab",
                                                        b"a"]
    assert list(kv.keys(prefix=b"a", start=b"b")) == []


# --- get_many, pop ----------------------------------------------------------------------------

def test_get_many_and_pop(db):
    """get_many returns values in the order asked, None for missing keys, and sees the
    transaction's own writes; pop returns and deletes, with a default for missing keys,
    and outside a transaction is one transaction."""
    kv = db.kv("g")
    kv.update({b"alice": b"1", b"bob": b"2"})
    assert kv.get_many([b"bob", b"zed", b"alice", b"bob"]) == [b"2", None, b"1", b"2"]
    assert kv.get_many([]) == []
    with pytest.raises(TypeError, match=r"keys\[1\]"):
        kv.get_many([b"a", "b"])
    with db.transaction():
        kv[b"zed"] = b"3"
        assert kv.pop(b"alice") == b"1"
        assert kv.get_many([b"alice", b"zed"]) == [None, b"3"]
        assert kv.pop(b"carol", None) is None
    assert kv.get_many([b"alice", b"zed"]) == [None, b"3"]
    assert kv.pop(b"bob") == b"2" and b"bob" not in kv
    with pytest.raises(KeyError):
        kv.pop(b"bob")
    assert kv.pop(b"bob", b"d") == b"d"


# --- clear ------------------------------------------------------------------------------------

def _clear_cost(db, name: str, n: int, *, inside: bool) -> tuple[int, int]:
    """(index operations, WAL records) of clearing a store of ``n`` keys."""
    kv = db.kv(name)
    kv.update({b"k%06d" % i: b"v" for i in range(n)})

    def ops() -> tuple[int, int]:
        st_ = db.stats()
        rel = next(r for r in st_.relations if r.name == name)
        return rel.index_operations, st_.wal.records

    before = ops()
    if inside:
        with db.transaction():
            kv[b"extra"] = b"x"
            kv.clear()
            assert len(kv) == 0
    else:
        kv.clear()
    # The clear may trigger autovacuum (2000 dead versions pass its threshold, 500 do not):
    # vacuum both sizes, so both costs include the vacuum's records (one or two per leaf).
    db.vacuum(name)
    after = ops()
    assert len(kv) == 0 and list(kv.items()) == []
    return after[0] - before[0], after[1] - before[1]


@pytest.mark.parametrize("inside", [False, True], ids=["autocommit", "in-transaction"])
def test_clear_is_linear(db, inside):
    """clear() of N and of 4N keys, in and outside a transaction: the store is empty after,
    and the index operations and WAL records it cost (with the vacuum after it) grow
    linearly (a 4x larger store
    costs at most 4.5x, and at most 8 index operations per key) — counted, not timed."""
    small_ops, small_wal = _clear_cost(db, "small", 500, inside=inside)
    big_ops, big_wal = _clear_cost(db, "big", 2000, inside=inside)
    assert big_ops <= 8 * 2000, big_ops
    assert big_ops <= 4.5 * small_ops, (small_ops, big_ops)
    assert big_wal <= 4.5 * small_wal + 10, (small_wal, big_wal)


def test_clear_is_atomic(db):
    """A reader thread counting keys (each count one snapshot) while clear() commits sees
    N or 0, never in between; a transaction whose snapshot predates the clear still sees
    all N afterwards."""
    n = 1500
    kv = db.kv("atomic")
    kv.update({b"k%05d" % i: b"v" for i in range(n)})
    seen: set[int] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def count():
        try:
            while not stop.is_set():
                seen.add(len(kv))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    old = threading.Event()
    release = threading.Event()
    old_counts: list[int] = []

    def old_snapshot():
        with db.transaction():
            old_counts.append(len(kv))
            old.set()
            release.wait(60)
            old_counts.append(len(kv))

    readers = [threading.Thread(target=count), threading.Thread(target=old_snapshot)]
    for r in readers:
        r.start()
    old.wait(60)
    kv.clear()
    release.set()
    stop.set()
    for r in readers:
        r.join()
    assert not errors
    assert seen <= {n, 0}, sorted(seen)
    assert old_counts == [n, n]
    assert len(kv) == 0


# --- drop and relations -----------------------------------------------------------------------

def test_drop_and_relations(tmp_path, io_method):
    """drop removes a KV store and a table: relations() stops listing them, the objects
    raise RelationDroppedError, the name is free for a new (empty) relation, and after a
    checkpoint and a restart the old files are gone and the new ones are there."""
    path = tmp_path / "db"
    db = open_db(path, io_method)
    kv = db.kv("old_store")
    kv.update({b"%d" % i: b"x" * 100 for i in range(500)})
    t = db.create_table("old_table", [("id", "int8")])
    t.insert_many([(i,) for i in range(500)])
    db.kv("keep")[b"k"] = b"v"
    assert db.relations() == {"keep": "kv", "old_store": "kv", "old_table": "table"}
    kv_rel, t_rel = kv.rel, t.rel
    db.checkpoint()
    db.drop("old_store")
    db.drop("old_table")
    assert db.relations() == {"keep": "kv"}
    with pytest.raises(RelationDroppedError):
        kv[b"1"]
    with pytest.raises(RelationDroppedError):
        list(t.scan())
    with pytest.raises(KeyError):
        db.drop("old_store")
    with pytest.raises(KeyError):
        db.table("old_table")
    assert db.stats().pending_unlinks == 2
    new = db.kv("old_store")
    assert new.rel != kv_rel and len(new) == 0
    new[b"fresh"] = b"1"
    db.checkpoint()
    db.close()
    assert _relation_files(path, kv_rel) == [] and _relation_files(path, t_rel) == []
    with open_db(path, io_method) as db:
        assert db.relations() == {"keep": "kv", "old_store": "kv"}
        assert dict(db.kv("old_store")) == {b"fresh": b"1"}
        assert db.stats().pending_unlinks == 0
        db.vacuum()  # prunes the dead catalog rows
    with open_db(path, io_method) as db:
        assert db.relations() == {"keep": "kv", "old_store": "kv"}


def test_drop_in_transactions(db):
    """Inside ``with db.transaction()``: an abort (exception or rollback) keeps the
    relation and its data; the dropping transaction itself no longer sees it; another
    transaction dropping it at the same time gets ConflictError; a writer whose store was
    dropped before it committed gets RelationDroppedError and nothing of it commits."""
    kv = db.kv("s")
    kv[b"a"] = b"1"
    with pytest.raises(RuntimeError), db.transaction():
        db.drop("s")
        raise RuntimeError("abort")
    with db.transaction() as tx:
        db.drop("s")
        assert "s" not in db.relations()
        with pytest.raises(RelationDroppedError):
            kv[b"a"]
        with pytest.raises(ValueError, match="dropped by this transaction"):
            db.kv("s")
        tx.rollback()
    assert db.relations() == {"s": "kv"} and kv[b"a"] == b"1"

    dropping = threading.Event()
    done = threading.Event()

    def other_drop():
        with db.transaction():
            db.drop("s")
            dropping.set()
            done.wait(60)

    th = threading.Thread(target=other_drop)
    th.start()
    dropping.wait(60)
    with pytest.raises(ConflictError, match="being dropped"):
        db.drop("s")
    assert kv[b"a"] == b"1"  # still live until that drop commits
    with pytest.raises(RelationDroppedError), db.transaction():
        kv[b"b"] = b"2"
        done.set()
        th.join()
    assert "s" not in db.relations()
    assert "b" not in [k.decode() for k in db.kv("s")]


def test_table_writer_loses_to_a_committed_drop(db):
    """A transaction that inserted rows into a table (eagerly) while another transaction
    dropped it and committed first fails at commit with RelationDroppedError; the rows
    never become visible under the name, and a new table of that name starts empty."""
    t = db.create_table("t", [("id", "int8")])
    t.insert((1,))
    with pytest.raises(RelationDroppedError), db.transaction():
        t.insert((2,))
        th = threading.Thread(target=db.drop, args=("t",))
        th.start()
        th.join()
    assert "t" not in db.relations()
    fresh = db.create_table("t", [("id", "int8")])
    assert list(fresh.scan()) == [] and fresh.rel != t.rel


DROP_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from slonik import Database
    db = Database.open({path!r}, io_method={method!r}, **{settings!r})
    kv = db.kv("victim")
    kv.update({{b"%05d" % i: b"v" * 100 for i in range(2000)}})
    t = db.create_table("victim_table", [("id", "int8")])
    t.insert_many([(i,) for i in range(2000)])
    db.kv("keep")[b"k"] = b"v"
    if {checkpoint_first!r}:
        db.checkpoint()
    print("RELS", kv.rel, t.rel, flush=True)
    if {mode!r} == "uncommitted":
        with db.transaction():
            db.drop("victim")
            db.drop("victim_table")
            print("DROPPED", flush=True)
            time.sleep(3600)
    db.drop("victim")
    with db.transaction():
        db.drop("victim_table")
    if {mode!r} == "checkpointed":
        db.checkpoint()
    print("DROPPED", flush=True)
    time.sleep(3600)
""")


@pytest.mark.parametrize("mode", ["committed", "checkpointed", "uncommitted"])
def test_drop_survives_sigkill(tmp_path, io_method, mode):
    """A child process drops a KV store and a table and is SIGKILLed: after a committed
    drop (with or without a checkpoint after it, before the files were unlinked) the
    reopened database lists neither and their files are gone (no orphans); when the drop
    had not committed, both are intact with all their rows."""
    path = str(tmp_path / "db")
    code = DROP_CHILD.format(root=ROOT, path=path, method=io_method, settings=SMALL,
                             checkpoint_first=mode != "checkpointed", mode=mode)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().split()
        assert line[:1] == ["RELS"], line
        kv_rel, t_rel = int(line[1]), int(line[2])
        assert child.stdout.readline().strip() == "DROPPED"
        assert _relation_files(path, kv_rel) and _relation_files(path, t_rel)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with open_db(path, io_method) as db:
        if mode == "uncommitted":
            assert db.relations() == {"keep": "kv", "victim": "kv", "victim_table": "table"}
            assert len(db.kv("victim")) == 2000 and db.table("victim_table").count() == 2000
        else:
            assert db.relations() == {"keep": "kv"}
            assert _relation_files(path, kv_rel) == [] and _relation_files(path, t_rel) == []
            db.kv("victim")[b"again"] = b"1"
        assert db.kv("keep")[b"k"] == b"v"
    if mode != "uncommitted":
        assert _relation_files(path, kv_rel) == [] and _relation_files(path, t_rel) == []


# --- io_method=auto ---------------------------------------------------------------------------

AUTO_CHILD = textwrap.dedent("""
    import logging, sys, warnings
    sys.path.insert(0, {root!r})
    sys.modules["slonik.aio._uring"] = None   # the io_uring binding cannot be imported
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
    logging.getLogger("slonik").addHandler(Keep())
    from slonik import Database
    for i in range(2):
        with Database.open({path!r} + str(i), io_method="auto") as db:
            st = db.stats()
            print("METHOD", db.io_method, st.io_method, flush=True)
            print("REASON", st.io_method_fallback, flush=True)
    print("RECORDS", len(records), flush=True)
    for r in records:
        print("MESSAGE", r.levelname, r.getMessage(), flush=True)
""")


def test_auto_fallback_is_reported_once(tmp_path):
    """With the io_uring binding unimportable (a child process that blocks it), two
    opens with io_method="auto" use worker; the logger "slonik" gets ONE warning naming
    the reason, and db.stats() names the method and the fallback reason."""
    out = subprocess.run([sys.executable, "-c", AUTO_CHILD.format(root=ROOT,
                                                                   path=str(tmp_path / "db"))],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.splitlines()
    assert lines.count("METHOD worker worker") == 2, out
    reasons = [x for x in lines if x.startswith("REASON ")]
    assert len(reasons) == 2 and all("slonik.aio._uring" in x for x in reasons), out
    assert "RECORDS 1" in lines, out
    message = next(x for x in lines if x.startswith("MESSAGE "))
    assert "WARNING" in message and "io_uring" in message and "worker" in message
    assert "slonik.aio._uring" in message


def test_auto_uses_io_uring_when_available(tmp_path):
    """Where io_uring works, io_method="auto" picks it, and stats() says so with no
    fallback reason."""
    require_method("io_uring")
    with Database.open(tmp_path / "db", io_method="auto", **SMALL) as db:
        st_ = db.stats()
        assert db.io_method == st_.io_method == "io_uring"
        assert st_.io_method_fallback is None


# --- DESIGN §6 --------------------------------------------------------------------------------

def test_design_example(tmp_path, io_method):
    """DESIGN §6's example as written: kv mapping with a multi-MiB value, a transaction
    with pop(k, None), ordered ranges with reverse and prefix, get_many, a table with a
    primary key (duplicate refused), an index, get/update/delete by key, an index range
    scan, a sequential scan, drop, relations, checkpoint, vacuum and stats."""
    big_bytes = os.urandom(3 << 20)
    with Database.open(tmp_path / "db", io_method=io_method, **SMALL) as db:
        users = db.kv("users")
        users[b"alice"] = b"a"
        users[b"photo"] = b"\x00" * 3000
        users[b"zphoto"] = big_bytes
        assert users[b"zphoto"] == big_bytes
        del users[b"zphoto"]
        with db.transaction():
            users[b"bob"] = b"b"
            users.pop(b"carol", None)
        assert list(users.items(start=b"a", stop=b"m", reverse=False)) == \
            [(b"alice", b"a"), (b"bob", b"b")]
        assert list(users.keys(start=b"a", stop=b"m", reverse=True)) == [b"bob", b"alice"]
        assert list(users.keys(prefix=b"ph")) == [b"photo"]
        assert users.get_many([b"alice", b"zed"]) == [b"a", None]
        t = db.create_table("events", [("id", "int8"), ("name", "text"), ("payload", "bytea")],
                            primary_key="id")
        t.insert((1, "boot", b"\x00"))
        with pytest.raises(UniqueViolation, match="events_pkey"):
            t.insert((1, "again", b""))
        t.create_index("by_name", ["name"])
        assert t.get(id=1) == (1, "boot", b"\x00") and t.get(id=2) is None
        t.update((1, "reboot", b""))
        assert list(t.range("by_name", start=("a",), stop=("s",))) == [(1, "reboot", b"")]
        t.insert((2, "halt", b"\x01"))
        t.delete(id=1)
        assert list(t.range("by_name", start=("a",), stop=("m",))) == [(2, "halt", b"\x01")]
        assert list(t.scan()) == [(2, "halt", b"\x01")]
        db.kv("old_store")[b"x"] = b"y"
        db.drop("old_store")
        assert db.relations() == {"events": "table", "users": "kv"}
        db.checkpoint()
        db.vacuum()
        st_ = db.stats()
        assert st_.io_method == io_method
        assert {r.name for r in st_.relations} == {"events", "users"}
