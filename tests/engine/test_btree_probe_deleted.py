"""Point reads that reach a leaf vacuum unlinked after their descent chose it. An unlinked
leaf is written with flags BTP_DELETED alone (its BTP_LEAF bit cleared, as
``BTree._unlink_leaf`` inits it); a probe of it must answer "move right" (its keys now
live to its right), in C and in the Python reference alike, and a ``get`` or
``get_many`` whose descent still names it must find the keys on the sibling instead of
reporting a corrupt page. Every io method (the env fixture)."""

from __future__ import annotations

from slonik.engine.access import btree_page as bp
from slonik.engine.access.btree_page import BTP_DELETED, BTP_LEAF, PROBE_MOVE_RIGHT

from tests.engine.test_btree import env  # noqa: F401 - the fixture

VALUE = b"v" * 200   # ~40 entries a leaf: 600 keys make ~15 leaves


def _unlinked_leaf(t) -> tuple[int, bytes, list[bytes], object]:
    """Keys 0..599; every key of the leaf holding key 300 deleted and vacuumed away, so
    that leaf is unlinked (and, with a scan open, not yet recycled). (block, its page as
    it is now, the keys it held, the open scan)."""
    keys = [b"%06d" % i for i in range(600)]
    for i, k in enumerate(keys):
        t.insert(k, VALUE, 1 + i)
    leaf = t._leaf_for(b"%06d" % 300)
    held = [k for k in keys if t._leaf_for(k) == leaf]
    xid = 10_000
    for k in held:
        xid += 1
        assert t.delete(k, xid)
    scan = t.item_batches(values=False)   # a reader that may know the leaf: it is not
    next(scan)                            # recycled while the scan is open
    t.vacuum(lambda xmin, xmax: xmax != 0)
    buf = t._read(leaf)
    try:
        page = bytes(t.bufmgr.page(buf))
    finally:
        t._release(buf)
    return leaf, page, held, scan


def test_probe_of_an_unlinked_leaf_moves_right(env):  # noqa: F811
    """The unlinked leaf's flags are BTP_DELETED without BTP_LEAF; probe_leaf_flat (C),
    probe_leaf_py and probe_many (C and reference) all answer "move right" to its
    right-link for a key it held, instead of raising "expected a leaf"."""
    t = env.tree
    _leaf, page, held, scan = _unlinked_leaf(t)
    scan.close()
    special = bp.bt_special(page)
    assert special.flags == BTP_DELETED and not special.flags & BTP_LEAF
    key = held[len(held) // 2]
    assert bp.probe_leaf_flat(page, key)[:2] == [special.next, PROBE_MOVE_RIGHT]
    nxt, status, versions = bp.probe_leaf_py(page, key)
    assert (nxt, status, versions) == (special.next, PROBE_MOVE_RIGHT, [])
    batch = bp.ProbeKeys(held[:3], 1 << 40, 0, ())
    want = [PROBE_MOVE_RIGHT, 0, 0, 0] * 3
    assert bp.probe_many(page, batch, 0, 3) == want
    assert bp.probe_many_py(page, batch, 0, 3) == want


def test_reads_whose_descent_names_an_unlinked_leaf_find_the_keys(env, monkeypatch):  # noqa: F811
    """A get and a get_many whose descent returns the unlinked leaf (as one that chose it
    just before vacuum unlinked it would) find every key still there, and None for the
    deleted ones."""
    t = env.tree
    leaf, _page, held, scan = _unlinked_leaf(t)
    live = [b"%06d" % i for i in range(600) if b"%06d" % i not in held]
    right_of = [k for k in live if k > held[-1]][:5]
    assert right_of, "the unlinked leaf was the rightmost: pick another"
    monkeypatch.setattr(t, "_leaf_for_point", lambda key: leaf)
    monkeypatch.setattr(t, "_leaf_for", lambda key: leaf)
    for k in right_of:
        assert t.get(k) == VALUE
    assert t.get(held[0]) is None
    assert t.get_many(right_of + held[:3]) == [VALUE] * len(right_of) + [None] * 3
    scan.close()
