"""The point read of an index leaf (``engine.index.point_entries``: C ``slk_ix_point``)
against its pure-Python reference and against the rule it stands for, and the table's
point-read path (``TableIndex.point_tids``) against the general leaf walk."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine import index as ix
from slonik.engine.access import btree_page as bp
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ

needs_c = pytest.mark.skipif(ix._lib is None,
                             reason="storage._pagecheck not built (no C compiler at install)")

_TID = struct.Struct(">IH")
# Few, short key prefixes (0xFF included: prefix_end's edge), so entries share them.
prefixes = st.sampled_from([b"", b"a", b"ab", b"b", b"\xff", b"a\xff", b"\xff\xff"])
tails = st.sampled_from([b"", b"", b"", b"x", b"\x00"])
tids = st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 16) - 1))


def index_leaf(entries, high, page_flags: int, nxt: int) -> bytearray:
    """A leaf of index entries [(key, tail, (block, offnum), xmin, xmax)] (entry key =
    key + tail + TID suffix; a tail of b"\\x00" with no TID: an entry too short), tree
    order, high key ``high`` or none, right link ``nxt``."""
    seen = {}
    for key, tail, tid, xmin, xmax in entries:
        whole = key + tail + (_TID.pack(*tid) if tail != b"\x00" else b"")
        if high is None or whole < high:   # a leaf's entries are below its high key
            seen.setdefault((whole, xmin), xmax)
    items = [bp.pack_entry(k, xmin, seen[(k, xmin)], 0, b"")
             for k, xmin in sorted(seen, key=lambda e: (e[0], -e[1]))]
    if high is not None:
        items.insert(0, bp.pack_pivot(high, 1, 0))
    page = bytearray(BLCKSZ)
    bp.bt_rebuild(page, bp.Special(0, nxt, 0, page_flags), items)
    return page


entry_lists = st.lists(st.tuples(prefixes, tails, tids, st.integers(1, 9),
                                 st.sampled_from([0, 0, 0, 5])), max_size=40)
highs = st.one_of(st.none(), prefixes.map(lambda p: p + b"\x00"), prefixes)


@needs_c
@settings(max_examples=400, deadline=None)
@given(entries=entry_lists, high=highs, deleted=st.booleans(), prefix=prefixes,
       entries_max=st.integers(0, ix.POINT_ENTRIES_MAX))
def test_c_point_entries_equals_reference_and_rule(entries, high, deleted, prefix,
                                                    entries_max):
    """slk_ix_point equals point_entries_py on random index leaves (shared prefixes, 0xFF
    prefixes, entries with an xmax, entries too short for a TID, DELETED pages, high keys
    at, above or below the prefix); when it answers (not None), the answer is exactly the
    (key length, block, offnum) of the page's entries starting with ``prefix`` and without
    an xmax, in page order, and it answers only when nothing right of the page can start
    with ``prefix``."""
    rightmost = high is None
    page = index_leaf(entries, high, bp.BTP_LEAF | (bp.BTP_DELETED if deleted else 0),
                      0 if rightmost else 7)
    got = ix.point_entries(page, prefix, entries_max)
    assert got == ix.point_entries_py(page, prefix, entries_max)
    if got is None:
        return
    assert not deleted and prefix and prefix.rstrip(b"\xff")
    items = [bp.unpack_entry(i) for i in bp.bt_items(page)[0 if rightmost else 1:]]
    expect = []
    for e in items:
        if e.key.startswith(prefix) and not e.xmax:
            expect += (len(e.key) - 6, *_TID.unpack_from(e.key, len(e.key) - 6))
    assert got == expect
    assert len(got) <= 3 * entries_max
    assert rightmost or not high.startswith(prefix) and high > prefix


@needs_c
def test_c_point_entries_hands_damaged_page_to_reference():
    """A line pointer outside the page makes slk_ix_point give up (-1) and point_entries
    raise the reference's BTreePageError; an internal page or a DELETED leaf is left to
    the leaf walk (None)."""
    page = index_leaf([(b"a", b"", (1, 2), 1, 0), (b"b", b"", (3, 4), 1, 0)], None,
                      bp.BTP_LEAF, 0)
    assert ix.point_entries(page, b"b", 4) == [1, 3, 4]
    page[24 + 4:28 + 4] = (0x7FF0 | (1 << 15) | (300 << 17)).to_bytes(4, "little")
    ents = ix._ffi.new("uint32_t[]", BLCKSZ)
    out = ix._ffi.new("uint32_t[]", 12)
    assert ix._lib.slk_ix_point(ix._ffi.from_buffer(page), b"b", 1, 4, ents, out) == -1
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        ix.point_entries(page, b"b", 4)
    inner = bytearray(BLCKSZ)
    bp.bt_rebuild(inner, bp.Special(0, 0, 1, 0), [bp.pack_pivot(b"", 5, 1)])
    assert ix.point_entries(inner, b"b", 4) is None
    deleted = index_leaf([(b"b", b"", (3, 4), 1, 0)], None, bp.BTP_LEAF | bp.BTP_DELETED, 0)
    assert ix.point_entries(deleted, b"b", 4) is None
    with pytest.raises(ValueError, match="entries_max"):
        ix.point_entries(page, b"b", ix.POINT_ENTRIES_MAX + 1)


def point_table(db):
    """(table, rows): table t with a primary key over several leaves, a non-unique index
    by_g (3000 rows over 7 values, 3000 unique) and a two-column by_gs, 6000 rows loaded."""
    t = db.create_table("t", [("id", "int8"), ("g", "int8"), ("s", "text")],
                        primary_key="id")
    t.create_index("by_g", ["g"])
    t.create_index("by_gs", ["g", "s"])
    rows = [(i, i % 7 if i < 3000 else i, "x" * (i % 50)) for i in range(6000)]
    with db.transaction():
        t.insert_many(rows)
    return t, rows


def test_point_tids_agree_with_the_leaf_walk(db):
    """On a table with a primary key over several leaves and a non-unique index, every
    key's point_tids (when it answers) equals the TIDs of matching() in order, answers
    for most primary keys, and declines (None) for a prefix of a wider key and for a key
    with more entries than POINT_ENTRIES_MAX; get(id=) finds every row either way."""
    t, rows = point_table(db)
    pk, by_g, by_gs = t._pk_index(), t._index("by_g"), t._index("by_gs")
    answered = 0
    for i in range(0, 6000, 7):
        key = pk.encode((i,))
        got = pk.point_tids(key)
        want = [x for _k, tid in pk.matching(key) for x in tid]
        if got is not None:
            answered += 1
            assert got == want
        assert t.get(id=i) == rows[i]
    assert answered > 6000 // 7 * 9 // 10
    assert by_g.point_tids(by_g.encode((3,))) is None        # ~430 entries share it
    assert by_gs.point_tids(by_gs.encode((4000,))) is None   # a prefix of (g, s)
    assert t.lookup("by_gs", (4000,)) == [rows[4000]]
    key = by_g.encode((4000,))
    assert by_g.point_tids(key) == [x for _k, tid in by_g.matching(key) for x in tid]


def test_point_read_names_a_damaged_index_leaf(db):
    """A primary-key leaf whose line pointer is damaged in the pool makes get(id=) raise
    DataCorruptionError naming the index relation and the block (not a wrong answer)."""
    t = db.create_table("t", [("id", "int8")], primary_key="id")
    t.insert_many([(i,) for i in range(10)])
    pk = t._pk_index()
    tree = pk.tree
    leaf = tree._leaf_for(pk.encode((5,)))
    buf = tree._read(leaf, exclusive=True)
    try:
        page = tree.bufmgr.page(buf)
        for at in range(24, 24 + 4 * 10, 4):   # every entry's line pointer
            page[at:at + 4] = (0x7FF0 | (1 << 15) | (300 << 17)).to_bytes(4, "little")
    finally:
        tree._release(buf, exclusive=True)
    with pytest.raises(DataCorruptionError) as e:
        t.get(id=5)
    assert e.value.relation == pk.rel and e.value.block == leaf


def test_point_reads_without_the_c_module(db, monkeypatch):
    """With the C helper absent (``engine.index._lib`` None), point_entries runs the
    reference: get(id=) and lookup() find every row, and point_tids answers as the leaf
    walk does."""
    monkeypatch.setattr(ix, "_lib", None)
    t = db.create_table("t", [("id", "int8"), ("s", "text")], primary_key="id")
    rows = [(i, f"s{i}") for i in range(500)]
    t.insert_many(rows)
    pk = t._pk_index()
    for i in range(0, 500, 3):
        assert t.get(id=i) == rows[i]
        assert t.lookup(pk.name, i) == [rows[i]]
        key = pk.encode((i,))
        got = pk.point_tids(key)
        assert got is None or got == [x for _k, tid in pk.matching(key) for x in tid]
    assert t.get(id=500) is None


def test_get_by_key_edges(db):
    """get(id=)'s inlined one-entry path and what it hands on: a text key over the size
    limit raises ValueError naming the index and a value of the wrong type TypeError
    naming the column (as encode does); an updated row (two entries, one version
    visible) and a deleted one (an entry, no visible version) read right outside and
    inside a transaction; a missing key is None."""
    t = db.create_table("t", [("id", "text"), ("v", "int8")], primary_key="id")
    t.insert_many([("a", 1), ("b", 2), ("c", 3)])
    with pytest.raises(ValueError, match="index .*limit"):
        t.get(id="x" * 10_000)
    with pytest.raises(TypeError, match="'id'"):
        t.get(id=5)
    t.update(("b", 20))
    t.delete(id="c")
    assert t.get(id="b") == ("b", 20)
    assert t.get(id="c") is None and t.get(id="zz") is None
    with db.transaction():
        assert t.get(id="b") == ("b", 20)
        t.update(("a", 10))
        assert t.get(id="a") == ("a", 10)
    assert t.get(id="a") == ("a", 10)
