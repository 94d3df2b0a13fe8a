"""The fused unique-key point read (``TableIndex.point_tuple``: the index leaf and the
heap tuple in one call) against the two calls it fuses (``point_tids``, then
``heap_fetch.fetch_tuple``), on every io method."""

from __future__ import annotations

import pytest
from slonik.engine import index as ix
from slonik.engine.access.heap_fetch import fetch_tuple

from tests.engine.test_table_index_c import point_table

needs_c = pytest.mark.skipif(ix._lib is None,
                             reason="storage._pagecheck not built (no C compiler at install)")


@needs_c
def test_point_tuple_agrees_with_point_tids_then_fetch_tuple(db):
    """On a primary key over several leaves with updated rows (two entries for one key),
    deleted rows (an entry whose tuple has an xmax), keys never inserted and a
    non-unique index: point_tuple answers exactly what point_tids followed by fetch_tuple
    of the one entry answers (None for no entry), and hands every other case (several
    entries, a key that is a prefix of a wider one) to the general path (POINT_OTHER).
    It answers for the great majority of the primary keys."""
    t, rows = point_table(db)
    for i in range(0, 6000, 11):
        t.update((i, rows[i][1], "updated"))
    for i in range(5, 6000, 13):
        t.delete(id=i)
    heap = t.heap
    pk, by_g, by_gs = t._pk_index(), t._index("by_g"), t._index("by_gs")
    fused = 0
    for i in [*range(0, 6200, 3), -1, 1 << 40]:
        key = pk.encode((i,))
        got = pk.point_tuple(key, heap)
        tids = pk.point_tids(key)
        if tids == []:
            assert got is None
        elif tids is not None and len(tids) == 2:
            fused += 1
            assert got == fetch_tuple(heap, tids[0], tids[1])
        else:
            assert got is ix.POINT_OTHER
    assert fused > 6000 // 3 * 8 // 10
    assert by_g.point_tuple(by_g.encode((3,)), heap) is ix.POINT_OTHER   # ~430 entries
    assert by_gs.point_tuple(by_gs.encode((4000,)), heap) is ix.POINT_OTHER  # a prefix
    for i in range(0, 6000, 3):   # and get(id=) through it
        want = None if i % 13 == 5 else \
            (i, rows[i][1], "updated") if i % 11 == 0 else rows[i]
        assert t.get(id=i) == want


def test_point_tuple_without_the_c_module(db, monkeypatch):
    """With the C helper absent, point_tuple hands every key to the general path, and
    get(id=) still finds every row and nothing for a missing key."""
    monkeypatch.setattr(ix, "_lib", None)
    t = db.create_table("t", [("id", "int8"), ("s", "text")], primary_key="id")
    rows = [(i, f"s{i}") for i in range(300)]
    t.insert_many(rows)
    pk = t._pk_index()
    assert pk.point_tuple(pk.encode((7,)), t.heap) is ix.POINT_OTHER
    for i in range(0, 300, 7):
        assert t.get(id=i) == rows[i]
    assert t.get(id=300) is None
