"""A backward leaf walk whose last visited leaf is unlinked before it steps left
(``BTree._step_left`` as nbtree's _bt_walk_left): it finds the live page that took over
the unlinked leaf's key range and continues from that page's left neighbour, instead of
reporting broken links. Every io method."""

from __future__ import annotations

from slonik.engine.access.btree_page import BTP_DELETED

from tests.engine.test_btree import env  # noqa: F401 - the fixture

VALUE = b"v" * 200   # ~40 entries a leaf: 600 keys make ~15 leaves


def test_backward_walk_continues_past_a_leaf_unlinked_behind_it(env):  # noqa: F811
    """Keys 0..599; a reverse scan below key 300 takes its first leaf's batch (the leaf
    holding key 299: not the rightmost) and pauses there. Every key of that leaf is then
    deleted and the tree vacuumed, which unlinks the leaf (DELETED, its left neighbour now
    linking past it). The scan then goes on: it returns exactly the keys below that leaf,
    in descending order, and the leaf really was unlinked; with the left neighbour's right
    link moved the old walk raised DataCorruptionError ("no page to the right of its
    left-link links back to it")."""
    t = env.tree
    keys = [b"%06d" % i for i in range(600)]
    for i, k in enumerate(keys):
        t.insert(k, VALUE, 1 + i)
    stop = b"%06d" % 300
    scan = t.item_batches(stop=stop, reverse=True, values=False)
    first = [k for k, _v in next(scan)]
    assert first and first == sorted(first, reverse=True) and first[0] == b"%06d" % 299
    leaf = t._leaf_for(first[0])
    lowest = first[-1]
    assert lowest > keys[0], "the first leaf reaches the start: pick a bigger tree"
    xid = 10_000
    for k in first:
        xid += 1
        assert t.delete(k, xid)
    t.vacuum(lambda xmin, xmax: xmax != 0)
    buf = t._read(leaf)
    try:
        assert t._special(t.bufmgr.page(buf), leaf).flags & BTP_DELETED
    finally:
        t._release(buf)
    rest = [k for batch in scan for k, _v in batch]
    assert rest == [k for k in reversed(keys) if k < lowest]
