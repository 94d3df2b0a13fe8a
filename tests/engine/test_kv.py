"""The KV store: mapping behaviour, ordered ranges, transactions, snapshot isolation,
conflicts, group commit and damaged pages (every io method)."""

from __future__ import annotations

import mmap
import os
import threading
import warnings

import pytest
from slonik.engine.access.tuple import MAX_TUPLE_DATA_BYTES
from slonik.engine.kv import KEY_MAX_BYTES, VALUE_MAX_BYTES
from slonik.storage.page import BLCKSZ

from slonik import (
    ConflictError,
    DataCorruptionError,
    RelationDroppedError,
    TransactionStateError,
)
from tests.engine.dbutil import open_db


@pytest.fixture
def db(tmp_path, io_method):
    d = open_db(tmp_path / "db", io_method)
    yield d
    d.close()


def test_mapping_basics(db):
    """Set, get, overwrite, delete, contains, len, get(default), KeyError for missing."""
    kv = db.kv("m")
    kv[b"a"] = b"1"
    kv[b"b"] = b"2"
    kv[b"a"] = b"3"
    assert kv[b"a"] == b"3" and kv[b"b"] == b"2"
    assert len(kv) == 2 and b"a" in kv and b"zz" not in kv
    del kv[b"a"]
    assert b"a" not in kv and kv.get(b"a") is None and kv.get(b"a", b"d") == b"d"
    with pytest.raises(KeyError):
        kv[b"a"]
    with pytest.raises(KeyError):
        del kv[b"a"]
    kv[b"a"] = b""
    assert kv[b"a"] == b""
    kv.update({b"x": b"1", b"y": b"2"})
    assert dict(kv) == {b"a": b"", b"b": b"2", b"x": b"1", b"y": b"2"}
    assert kv.pop(b"x") == b"1" and b"x" not in kv


def test_wrong_types_are_named(db):
    """Non-bytes keys or values raise TypeError naming which; nothing is written."""
    kv = db.kv("t")
    with pytest.raises(TypeError, match="key"):
        kv["str"] = b"v"
    with pytest.raises(TypeError, match="value"):
        kv[b"k"] = "str"
    with pytest.raises(TypeError, match="key"):
        kv[1]
    with pytest.raises(TypeError, match="key"):
        del kv[None]
    with pytest.raises(TypeError, match="start"):
        list(kv.items(start="a"))
    kv[bytearray(b"ba")] = memoryview(b"mv")
    assert kv[b"ba"] == b"mv"
    assert len(kv) == 1


def test_get_many_and_get_agree_on_every_kind_of_key(db):
    """get_many equals one get per key for a batch mixing present and missing keys,
    duplicates, bytearray/memoryview keys and keys longer than KEY_MAX_BYTES (no such key
    can be stored: None), outside a transaction and inside one with buffered writes and
    deletes; a non-bytes key is a TypeError naming its position. Checked by comparing the
    two answers key by key."""
    kv = db.kv("gm")
    kv.update({b"k%03d" % i: b"v%d" % i for i in range(0, 300, 2)})
    long_key = b"k" * (KEY_MAX_BYTES + 1)
    batch = [b"k%03d" % i for i in range(0, 300, 7)] + [b"k000", b"k000", long_key,
                                                       bytearray(b"k004"), memoryview(b"k006")]

    def one_by_one():
        return [kv.get(bytes(k)) for k in batch]

    assert kv.get_many(batch) == one_by_one()
    assert kv.get_many(b for b in batch if isinstance(b, bytes)) == \
        [v for b, v in zip(batch, one_by_one(), strict=True) if isinstance(b, bytes)]
    with db.transaction():
        kv[b"k007"] = b"own"
        del kv[b"k014"]
        got = kv.get_many(batch)
        assert got == one_by_one()
        assert b"own" in got and got[2] is None
    with pytest.raises(TypeError, match=r"keys\[1\]"):
        kv.get_many([b"k000", "k002"])


def test_oversized_is_refused_with_the_limit(db):
    """A key of KEY_MAX_BYTES and a value larger than a page are stored; a key one byte
    longer, and a value one byte over VALUE_MAX_BYTES (1 GiB: an untouched anonymous
    mapping, so no GiB is allocated), are refused with a ValueError naming the limit and
    nothing written; non-bytes keys and values are TypeErrors."""
    kv = db.kv("big")
    kv[b"k" * KEY_MAX_BYTES] = b"v" * (2 * BLCKSZ)
    kv[b"k"] = b"v" * (MAX_TUPLE_DATA_BYTES + 1)  # over the old one-page limit
    with pytest.raises(ValueError, match=f"limit of {KEY_MAX_BYTES} bytes"):
        kv[b"k" * (KEY_MAX_BYTES + 1)] = b"v"
    huge = mmap.mmap(-1, VALUE_MAX_BYTES + 1)
    try:
        with pytest.raises(ValueError, match=f"limit of {VALUE_MAX_BYTES} bytes"):
            kv[b"k2"] = memoryview(huge)
    finally:
        huge.close()
    with pytest.raises(TypeError, match="value must be bytes"):
        kv[b"k3"] = "text"
    with pytest.raises(TypeError, match="key must be bytes"):
        kv["k3"] = b"v"
    assert b"k2" not in kv and b"k3" not in kv and b"k" * (KEY_MAX_BYTES + 1) not in kv
    assert len(kv[b"k"]) == MAX_TUPLE_DATA_BYTES + 1
    assert kv[b"k" * KEY_MAX_BYTES] == b"v" * (2 * BLCKSZ)
    assert len(kv) == 2


def test_ordered_ranges(db):
    """items/keys/values are ordered, honour start (inclusive), stop (exclusive) and
    reverse, across many index chunks."""
    kv = db.kv("r")
    keys = [b"%05d" % i for i in range(0, 2000, 3)]
    kv.update({k: k[::-1] for k in keys})
    assert list(kv.keys()) == keys
    assert list(kv) == keys
    assert list(kv.values()) == [k[::-1] for k in keys]
    assert list(kv.keys(reverse=True)) == keys[::-1]
    sub = [k for k in keys if b"00100" <= k < b"01000"]
    assert list(kv.keys(start=b"00100", stop=b"01000")) == sub
    assert list(kv.keys(start=b"00100", stop=b"01000", reverse=True)) == sub[::-1]
    assert list(kv.items(start=b"01990")) == [(k, k[::-1]) for k in keys if k >= b"01990"]
    assert list(kv.items(stop=b"00004")) == [(b"00000", b"00000"), (b"00003", b"30000")]
    assert list(kv.items(start=b"5", stop=b"6")) == []


def test_transaction_commit_and_abort(db):
    """A transaction's writes appear together at commit; an exception aborts them all;
    inside, reads see the transaction's own writes, merged in order."""
    kv = db.kv("x")
    kv[b"carol"] = b"c"
    with db.transaction():
        kv[b"bob"] = b"b"
        del kv[b"carol"]
        kv[b"alice"] = b"a"
        assert kv[b"bob"] == b"b" and b"carol" not in kv
        assert list(kv.items()) == [(b"alice", b"a"), (b"bob", b"b")]
        assert list(kv.keys(reverse=True)) == [b"bob", b"alice"]
    assert dict(kv) == {b"alice": b"a", b"bob": b"b"}
    with pytest.raises(RuntimeError, match="boom"), db.transaction():
        kv[b"alice"] = b"changed"
        kv[b"dave"] = b"d"
        del kv[b"bob"]
        raise RuntimeError("boom")
    assert dict(kv) == {b"alice": b"a", b"bob": b"b"}
    with db.transaction() as tx:
        kv[b"eve"] = b"e"
        tx.rollback()
    assert b"eve" not in kv


def test_nested_transaction_is_refused(db):
    with db.transaction(), pytest.raises(TransactionStateError, match="nest"), db.transaction():
        pass


def test_transaction_is_thread_bound(db):
    """Another thread does not see (or join) this thread's transaction."""
    kv = db.kv("tb")
    seen = []
    with db.transaction():
        kv[b"k"] = b"mine"

        def other():
            seen.append(kv.get(b"k"))
            kv[b"other"] = b"x"  # autocommit in its own thread
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen == [None]
        assert b"other" not in kv  # committed after our snapshot
    assert kv[b"other"] == b"x" and kv[b"k"] == b"mine"


def test_snapshot_isolation_repeatable_reads(db):
    """Inside a transaction, reads keep seeing the snapshot taken at its start while
    other threads commit."""
    kv = db.kv("si")
    kv[b"k"] = b"v1"
    with db.transaction():
        assert kv[b"k"] == b"v1"
        t = threading.Thread(target=lambda: kv.__setitem__(b"k", b"v2"))
        t.start()
        t.join()
        t = threading.Thread(target=lambda: kv.__setitem__(b"new", b"n"))
        t.start()
        t.join()
        assert kv[b"k"] == b"v1" and b"new" not in kv
        assert list(kv.items()) == [(b"k", b"v1")]
    assert kv[b"k"] == b"v2" and kv[b"new"] == b"n"


def test_iterators_after_a_drop_raise_by_their_next_leaf(db):
    """keys(), values() and items() iterators half consumed when their store is dropped:
    each hands out at most the rest of the batch it had copied out, here the first leaf (a
    scan's first batch; in order, intact: a 200-byte value's entry takes over 220 bytes,
    so fewer than BLCKSZ // 220 of them), then raises RelationDroppedError; a fresh
    iteration raises it at once."""
    kv = db.kv("dropme")
    keys = [b"%04d" % i for i in range(2000)]
    kv.update({k: k * 50 for k in keys})
    its = [iter(kv.keys()), iter(kv.values()), iter(kv.items())]
    expect = [keys, [k * 50 for k in keys], [(k, k * 50) for k in keys]]
    for it, want in zip(its, expect, strict=True):
        assert [next(it) for _ in range(10)] == want[:10]
    db.drop("dropme")
    for it, want in zip(its, expect, strict=True):
        late = []
        with pytest.raises(RelationDroppedError):
            for _ in range(len(keys)):
                late.append(next(it))
        assert len(late) < BLCKSZ // 220
        assert late == want[10:10 + len(late)]
    with pytest.raises(RelationDroppedError):
        list(kv.items())


def test_long_scan_sees_one_state(db):
    """A scan running while other threads commit transfers between keys always sees the
    same total (one consistent state), scan after scan."""
    kv = db.kv("bank")
    n = 200
    kv.update({b"acct%04d" % i: b"100" for i in range(n)})
    stop = threading.Event()
    errors = []

    def transfer(seed):
        import random
        rnd = random.Random(seed)
        while not stop.is_set():
            a, b = rnd.sample(range(n), 2)
            try:
                with db.transaction():
                    ka, kb = b"acct%04d" % a, b"acct%04d" % b
                    va, vb = int(kv[ka]), int(kv[kb])
                    kv[ka] = b"%d" % (va - 1)
                    kv[kb] = b"%d" % (vb + 1)
            except ConflictError:
                continue
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=transfer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(15):
            total = sum(int(v) for v in kv.values())
            assert total == 100 * n
            with db.transaction():
                assert sum(int(v) for _k, v in kv.items()) == 100 * n
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert sum(int(v) for v in kv.values()) == 100 * n


def test_conflicting_writers(db):
    """Two transactions writing the same key: the second to commit gets ConflictError and
    none of its writes appear; disjoint keys both commit."""
    kv = db.kv("c")
    kv[b"k"] = b"0"
    ready, go = threading.Event(), threading.Event()
    result = {}

    def writer():
        with db.transaction():
            kv[b"k"] = b"from thread"
            kv[b"t-only"] = b"1"
            ready.set()
            go.wait()
        result["done"] = True

    with pytest.raises(ConflictError, match="first committer wins"), db.transaction():
        assert kv[b"k"] == b"0"
        t = threading.Thread(target=writer)
        t.start()
        ready.wait()
        kv[b"k"] = b"from main"
        kv[b"main-only"] = b"1"
        go.set()
        t.join()
    assert result == {"done": True}
    assert kv[b"k"] == b"from thread" and b"main-only" not in kv
    # Deleting a key someone else changed after our snapshot also conflicts.
    with pytest.raises(ConflictError), db.transaction():
        assert kv[b"k"] == b"from thread"
        th = threading.Thread(target=lambda: kv.__setitem__(b"k", b"x"))
        th.start()
        th.join()
        del kv[b"k"]
    assert kv[b"k"] == b"x"
    # Disjoint write sets do not conflict.
    with db.transaction():
        kv[b"a"] = b"1"
        th = threading.Thread(target=lambda: kv.__setitem__(b"b", b"2"))
        th.start()
        th.join()
    assert kv[b"a"] == b"1" and kv[b"b"] == b"2"
    assert db.stats().transactions.conflicts >= 2


def test_group_commit(db):
    """8 threads doing durable autocommit puts share WAL syncs: fewer syncs than commits."""
    kv = db.kv("g")
    before = db.stats()
    per_thread = 60

    def work(t):
        for i in range(per_thread):
            kv[b"%d-%d" % (t, i)] = b"v"

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = db.stats()
    commits = after.transactions.commits - before.transactions.commits
    flushes = after.wal.flushes - before.wal.flushes
    assert commits == 8 * per_thread
    assert len(kv) == 8 * per_thread
    assert flushes < commits, (flushes, commits)
    assert after.wal.group_joins > before.wal.group_joins


def test_synchronous_commit_off(tmp_path, io_method):
    """With synchronous_commit off commits do not wait for a WAL sync each."""
    with open_db(tmp_path / "db", io_method, synchronous_commit=False) as db:
        kv = db.kv("s")
        before = db.stats().wal.flushes
        for i in range(100):
            kv[b"%d" % i] = b"v"
        assert db.stats().wal.flushes - before < 10
    with open_db(tmp_path / "db", io_method) as db:
        assert len(db.kv("s")) == 100


def test_bulk_transaction_and_reopen(tmp_path, io_method):
    """Many puts in one transaction (bulk insert path), overwrites and deletes survive a
    reopen with the index rebuilt from the heap."""
    path = tmp_path / "db"
    model = {}
    with open_db(path, io_method) as db:
        kv = db.kv("bulk")
        with db.transaction():
            for i in range(3000):
                k = b"key%06d" % i
                kv[k] = b"v" * (i % 50)
                model[k] = b"v" * (i % 50)
        for i in range(0, 3000, 7):
            k = b"key%06d" % i
            kv[k] = b"new"
            model[k] = b"new"
        for i in range(0, 3000, 11):
            k = b"key%06d" % i
            del kv[k]
            del model[k]
        assert dict(kv.items()) == model
    with open_db(path, io_method) as db:
        kv = db.kv("bulk")
        assert dict(kv.items()) == model
        assert list(kv.keys()) == sorted(model)


def _corrupt_block(path, rel, block, segment_size=64):
    seg, off = divmod(block, segment_size)
    name = f"{rel}" + (f".{seg}" if seg else "")
    fd = os.open(os.path.join(path, "base", name), os.O_RDWR)
    try:
        os.pwrite(fd, b"\xde\xad\xbe\xef" * 16, off * BLCKSZ + 4000)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_damaged_page_at_open_breaks_only_that_store(tmp_path, io_method):
    """A damaged leaf of a store's B+tree (block 1, the first leaf: the lowest keys) makes
    reads of its keys, and scans through it, raise DataCorruptionError naming relation and
    block; the store still opens (its open reads only the metapage), keys on other leaves
    stay readable, other stores work; with zero_damaged_pages the same holds (the zeroed
    leaf is no B+tree page, so its keys still fail, loudly)."""
    path = tmp_path / "db"
    with open_db(path, io_method) as db:
        bad, good = db.kv("bad"), db.kv("good")
        bad.update({b"%05d" % i: b"x" * 200 for i in range(300)})
        good.update({b"g%d" % i: b"y" for i in range(10)})
        rel = bad.rel
        assert bad.nblocks() >= 3
    _corrupt_block(path, rel, 1)
    with open_db(path, io_method) as db:
        with pytest.raises(DataCorruptionError, match="block 1") as info:
            db.kv("bad")[b"00000"]
        assert info.value.block == 1 and info.value.relation == rel
        assert f"relation {rel}" in str(info.value)
        with pytest.raises(DataCorruptionError):
            list(db.kv("bad").items())
        assert db.kv("bad")[b"00299"] == b"x" * 200
        assert len(db.kv("good")) == 10
        db.kv("good")[b"more"] = b"z"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_db(path, io_method, zero_damaged_pages=True) as db:
            with pytest.raises(DataCorruptionError, match="block 1"):
                db.kv("bad")[b"00000"]
            assert db.kv("bad")[b"00299"] == b"x" * 200


def test_damaged_page_on_access(tmp_path, io_method):
    """A page damaged on disk after the index was built gives DataCorruptionError when a
    key on it is read; keys on other pages stay readable."""
    path = tmp_path / "db"
    with open_db(path, io_method, shared_buffers=16) as db:
        kv = db.kv("d")
        kv.update({b"%05d" % i: b"x" * 500 for i in range(600)})
        nblocks = kv.nblocks()
        assert nblocks >= 40
        first_key = b"00000"  # in block 1: the first leaf (block 0 is the metapage)
    with open_db(path, io_method, shared_buffers=16) as db:
        kv = db.kv("d")
        assert kv[first_key] == b"x" * 500  # block 1 read (and evicted by the churn below)
        _corrupt_block(path, kv.rel, 1)
        db.kv("other").update({b"%d" % i: b"y" * 1000 for i in range(200)})  # churn the pool
        with pytest.raises(DataCorruptionError, match="block 1"):
            kv[first_key]
        assert kv[b"00599"] == b"x" * 500
