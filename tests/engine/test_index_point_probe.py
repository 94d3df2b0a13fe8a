"""The point probe that moves right (storage/_pagecheck_build.py, "point probe" block):
``slk_ix_point_right`` against its Python reference ``point_right_py`` and the rule it
stands for, ``slk_ix_point_step_opt`` against ``slk_ix_point`` on the same page, and the
table's point reads (``point_tids``, ``point_tuple``, ``get(id=)``) answering every key of
a primary key whose leaves split exactly at a key, on every io method."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine import index as ix
from slonik.engine.access import btree_page as bp
from slonik.engine.access.heap_fetch import fetch_tuple
from slonik.storage.page import BLCKSZ

from tests.engine.test_table_index_c import entry_lists, highs, index_leaf, prefixes

needs_c = pytest.mark.skipif(ix._lib is None or ix._point_step is None,
                             reason="storage._pagecheck not built (no C compiler at install)")
RIGHT_LINK = 7    # the right sibling index_leaf gives a page with a high key
RETRY = -3        # SLK_OPT_RETRY


@needs_c
@settings(max_examples=400, deadline=None)
@given(entries=entry_lists, high=highs, deleted=st.booleans(), prefix=prefixes)
def test_c_point_right_equals_reference_and_rule(entries, high, deleted, prefix):
    """slk_ix_point_right equals point_right_py on random index leaves (shared prefixes,
    0xFF prefixes, the empty prefix, high keys at, above or below the prefix, DELETED
    pages, rightmost pages); when it names the right sibling, the page is a live leaf
    with a right sibling, no entry on it starts with ``prefix``, its high key does, and
    slk_ix_point on the page answered -2 (walk the leaves)."""
    ffi, lib = ix._ffi, ix._lib
    page = index_leaf(entries, high, bp.BTP_LEAF | (bp.BTP_DELETED if deleted else 0),
                      0 if high is None else RIGHT_LINK)
    got = lib.slk_ix_point_right(ffi.from_buffer(page), prefix, len(prefix))
    assert got == ix.point_right_py(page, prefix)
    if got == bp.P_NONE:
        return
    assert got == RIGHT_LINK and not deleted and high.startswith(prefix)
    items = bp.bt_items(page)
    assert not any(bp.unpack_entry(i).key.startswith(prefix) for i in items[1:])
    ents = ffi.new("uint32_t[]", BLCKSZ)
    out = ffi.new("uint32_t[]", 3 * ix.POINT_ENTRIES_MAX)
    assert lib.slk_ix_point(ffi.from_buffer(page), prefix, len(prefix),
                            ix.POINT_ENTRIES_MAX, ents, out) == -2


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=entry_lists, high=highs, deleted=st.booleans(), prefix=prefixes,
       maxn=st.integers(0, ix.POINT_ENTRIES_MAX), garble=st.lists(
           st.tuples(st.integers(0, BLCKSZ - 1), st.binary(min_size=1, max_size=4)),
           max_size=2))
def test_c_point_step_opt_equals_point_then_right(entries, high, deleted, prefix, maxn,
                                                  garble):
    """slk_ix_point_step_opt on a pool buffer with an even change counter answers what
    slk_ix_point answers on the page (code and entries), except SLK_IX_POINT_RIGHT with
    the right-link in out[0] exactly where that answer is -2 and slk_ix_point_right names
    a sibling; pages are random index leaves, some garbled (random bytes anywhere). With
    the counter odd it retries."""
    ffi, lib = ix._ffi, ix._lib
    page = index_leaf(entries, high, bp.BTP_LEAF | (bp.BTP_DELETED if deleted else 0),
                      0 if high is None else RIGHT_LINK)
    for at, chunk in garble:
        page[at:at + len(chunk)] = chunk[:BLCKSZ - at]
    pool = ffi.new("uint8_t[]", BLCKSZ)
    ffi.memmove(pool, bytes(page), BLCKSZ)
    seq = ffi.new("uint32_t[]", [4])
    ents = ffi.new("uint32_t[]", BLCKSZ)
    out_a = ffi.new("uint32_t[]", 3 * ix.POINT_ENTRIES_MAX)
    out_b = ffi.new("uint32_t[]", 3 * ix.POINT_ENTRIES_MAX)
    want = lib.slk_ix_point(ffi.from_buffer(page), prefix, len(prefix), maxn, ents, out_a)
    right = lib.slk_ix_point_right(ffi.from_buffer(page), prefix, len(prefix))
    got = lib.slk_ix_point_step_opt(pool, seq, 0, prefix, len(prefix), maxn, ents, out_b)
    if want == -2 and right > 0:
        assert got == lib.SLK_IX_POINT_RIGHT and out_b[0] == right
    else:
        assert got == want
        if got > 0:
            assert list(out_b[0:3 * got]) == list(out_a[0:3 * got])
    seq[0] += 1
    assert lib.slk_ix_point_step_opt(pool, seq, 0, prefix, len(prefix), maxn, ents,
                                     out_b) == RETRY


@needs_c
def test_every_unique_key_is_answered_by_the_point_read(db):
    """A primary key of 20,000 rows spans many leaves, and some leaves split exactly at a
    key (the key's one entry begins the right sibling, so the leaf the descent reaches
    has a high key starting with it): the probe moves right there, so point_tids answers
    every key with exactly matching()'s TIDs, point_tuple answers every key with the
    tuple fetch_tuple reads there, and get(id=) returns every row. Checked by asking
    each key."""
    t = db.create_table("t", [("id", "int8"), ("s", "text")], primary_key="id")
    rows = [(i, f"row {i}") for i in range(20_000)]
    with db.transaction():
        t.insert_many(rows)
    pk, heap = t._pk_index(), t.heap
    assert pk.tree.height >= 2
    split_at_key = 0
    for i, row in enumerate(rows):
        key = pk.encode((i,))
        want = [x for _k, tid in pk.matching(key) for x in tid]
        assert pk.point_tids(key) == want
        assert pk.point_tuple(key, heap) == fetch_tuple(heap, want[0], want[1])
        assert t.get(id=i) == row
        leaf = pk.tree._leaf_for(key)
        buf = pk.tree._read(leaf)
        try:
            page = bytes(pk.tree.bufmgr.page(buf))
        finally:
            pk.tree._release(buf)
        split_at_key += ix.point_right_py(page, key) != bp.P_NONE
    assert split_at_key > 0   # the case the probe moves right for did occur
