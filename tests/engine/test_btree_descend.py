"""A point read's descent in one C call (``slk_bt_descend`` over the descent table,
``BTree._leaf_for_point``) against its reference, the Python descent ``BTree._leaf_for``:
on a three-level tree for random keys (hypothesis), with copies missing from the table
(the C call declines), and on every io method while writers split pages under the
readers (a stale table is never used; reads stay right)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree as bt

from tests.engine.dbutil import open_db

needs_c = pytest.mark.skipif(bt._c_descend is None,
                             reason="storage._pagecheck not built (no C compiler at install)")
KEYS = 30_000


def _key(i: int) -> bytes:
    return b"%08d" % i


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A KV store's B+tree of KEYS keys with 300-byte values (three levels), warm: every
    internal page in the inner-page cache."""
    db = open_db(tmp_path_factory.mktemp("descend") / "db", "sync", shared_buffers=4096)
    kv = db.kv("d")
    with db.transaction():
        for i in range(KEYS):
            kv[_key(i)] = b"v" * 300
    t = kv._index.tree
    for i in range(0, KEYS, 7):
        t._leaf_for(_key(i))
    assert t.height >= 3
    yield t
    db.close()


@needs_c
@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.integers(-5, KEYS + 5).map(_key), st.binary(max_size=12)),
       xmin=st.sampled_from([bt.XMIN_MAX, 0, 1, 7]))
def test_c_descend_equals_leaf_for(tree, key, xmin):
    """slk_bt_descend over a table of the cached internal pages gives _leaf_for's leaf for
    keys inside, between and outside the stored ones, and odd byte strings, at several
    xmins; _leaf_for_point gives the same for the key."""
    table = tree._descent_table()
    assert table is not None
    got = bt._c_descend(table[0], table[1], tree._root, key, len(key), xmin)
    assert got == tree._leaf_for(key, xmin)
    assert tree._leaf_for_point(key) == tree._leaf_for(key)


@needs_c
@settings(max_examples=100, deadline=None)
@given(key=st.integers(0, KEYS - 1).map(_key), drop=st.integers(0, 1 << 16))
def test_c_descend_declines_without_a_copy(tree, key, drop):
    """With one page on the key's path missing from the table (the root, or the parent
    of its leaf), slk_bt_descend returns -1 (the Python descent decides) instead of a
    block; with the root past the table's end likewise."""
    table = tree._descent_table()
    path, block = [], tree._root
    inner = dict(tree._inner)
    while block in inner:
        path.append(block)
        page, special, locator = inner[block]
        block = tree._leaf_for(key) if special.level == 1 else locator(key, len(key),
                                                                        bt.XMIN_MAX)
        if block < 0:   # moved right: no simple path to cut
            return
    missing = path[drop % len(path)]
    pointers = bt._ffi.new("uint8_t *[]", table[1])
    for b in range(table[1]):
        if b != missing:
            pointers[b] = table[0][b]
    assert bt._c_descend(pointers, table[1], tree._root, key, len(key), bt.XMIN_MAX) == -1
    assert bt._c_descend(table[0], tree._root, tree._root, key, len(key), bt.XMIN_MAX) == -1


@needs_c
def test_point_reads_stay_right_while_writers_split(tmp_path, io_method):
    """Rounds of puts (new keys between old ones: leaf and internal splits, each making
    the descent table stale) alternate with rounds of point reads; every read returns the
    model's value, _leaf_for_point agrees with _leaf_for for sampled keys after each
    round, and the table was rebuilt (used) along the way."""
    rng = random.Random(5)
    with open_db(tmp_path / "db", io_method, shared_buffers=2048) as db:
        kv = db.kv("d")
        model = {}
        tree = kv._index.tree
        tables = []   # the tables seen (kept alive, so each is a distinct object)
        for rnd in range(6):
            with db.transaction():
                for _ in range(3000):
                    k = _key(rng.randrange(10 ** 7))
                    model[k] = b"%d" % rnd * 300
                    kv[k] = model[k]
            keys = list(model)
            for k in rng.sample(keys, 1500):
                assert kv[k] == model[k]
            for _ in range(200):
                k = _key(rng.randrange(10 ** 7))
                assert tree._leaf_for_point(k) == tree._leaf_for(k)
                assert kv.get(k) == model.get(k)
            if tree._descent is not None and all(t is not tree._descent for t in tables):
                tables.append(tree._descent)
        assert tree.height >= 3 and len(tables) >= 2


def _mirrors_cache(tree) -> bool:
    """Whether the descent table holds exactly the cached copies: a pointer to each
    cached page's bytes, NULL for every other block."""
    table = tree._descent
    inner = dict(tree._inner)
    for b in range(table[1]):
        ptr = table[0][b]
        if b in inner:
            want = bt._ffi.from_buffer(inner[b][0])
            if ptr == bt._ffi.NULL or bt._ffi.buffer(ptr, 8192)[:] != bytes(inner[b][0]) \
                    or int(bt._ffi.cast("uintptr_t", ptr)) != \
                    int(bt._ffi.cast("uintptr_t", want)):
                return False
        elif ptr != bt._ffi.NULL:
            return False
    return True


def _three_levels(db, kv):
    """Fill ``kv`` with KEYS even keys of 300-byte values in one transaction (three
    levels) and warm its inner-page cache; its tree."""
    with db.transaction():
        for i in range(0, 2 * KEYS, 2):
            kv[_key(i)] = b"v" * 300
    tree = kv._index.tree
    for i in range(0, 2 * KEYS, 97):
        tree._leaf_for(_key(i))
    return tree


@needs_c
def test_the_table_follows_the_cache_through_autocommit_splits(tmp_path, io_method,
                                                               monkeypatch):
    """Autocommit puts (the C descent of ``put_new``) of ascending keys into the middle of
    a three-level tree split leaves and, now and then, internal pages: the cache drops
    and re-installs copies all along. The descent table built once stays current
    through all of it (no rebuild: the same object, its generation and installs those
    of the cache) and mirrors the cache exactly (a pointer to each cached copy, NULL
    elsewhere); the C descent and the Python one agree on every key, and every key
    reads back. (The retired copies' bound is raised here: the next test covers it.)"""
    monkeypatch.setattr(bt, "DESCENT_RETIRED_MAX", 1 << 20)
    with open_db(tmp_path / "db", io_method, shared_buffers=4096) as db:
        kv = db.kv("d")
        tree = _three_levels(db, kv)
        table = tree._descent_table()
        gen0, splits = tree._inner_gen, 0
        for i in range(3001, 3001 + 6000):   # between the even keys, ascending
            kv[b"%08d" % i + b"x"] = b"w" * 300
            if tree._inner_gen != gen0:
                splits += 1
                gen0 = tree._inner_gen
        assert splits >= 20 and tree.height >= 3
        assert tree._descent is table
        assert (table[2], table[3]) == (tree._inner_gen, tree._inner_installs)
        assert _mirrors_cache(tree)
        for i in range(0, KEYS, 211):
            k = _key(2 * i)
            assert tree._leaf_for_point(k) == tree._leaf_for(k)
            assert kv[k] == b"v" * 300
        for i in range(3001, 3001 + 6000, 37):
            assert kv[b"%08d" % i + b"x"] == b"w" * 300
        tree.check()


@needs_c
def test_retired_copies_are_bounded_and_the_table_rebuilt(tmp_path, io_method, monkeypatch):
    """With room for 8 retired copies, autocommit puts that make the cache drop many
    more: the live table never holds more than 8 (it was replaced, freeing them), a
    replaced table is rebuilt by later descents and mirrors the cache again, and the C
    and Python descents still agree."""
    monkeypatch.setattr(bt, "DESCENT_RETIRED_MAX", 8)
    with open_db(tmp_path / "db", io_method, shared_buffers=4096) as db:
        kv = db.kv("d")
        tree = _three_levels(db, kv)
        first = tree._descent_table()
        seen = {id(first)}
        for i in range(3001, 3001 + 6000):
            kv[b"%08d" % i + b"x"] = b"w" * 300
            table = tree._descent
            if table is not None:
                seen.add(id(table))
                assert len(table[5]) <= 8
        assert len(seen) >= 3
        for i in range(0, KEYS, 101):
            k = _key(2 * i)
            assert tree._leaf_for_point(k) == tree._leaf_for(k)
        for _ in range(2 * bt.DESCENT_REBUILD_READS):
            tree._leaf_for_point(_key(2))
        assert tree._descent is not None and _mirrors_cache(tree)
