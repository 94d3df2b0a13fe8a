"""Leaves behind localized ascending inserts: keys ascending into the middle of a tree,
each put by a transaction of its own (an autocommit put's pattern, one writer or several
interleaved), leave leaves nearly as full as the tree's right edge does (fillfactor), not
half full at every split (``_localized_ascending``). Every io method (the env fixture)."""

from __future__ import annotations

from slonik.engine.access.btree import LEAF_FILLFACTOR_PERCENT

from tests.engine.test_btree import env  # noqa: F401 - the fixture

VALUE = b"v" * 100


def _leaf_counts(t, prefix: bytes) -> list[int]:
    """Per leaf, in key order, how many of its keys start with ``prefix`` (leaves with
    none left out); each key's leaf found by a descent."""
    counts: dict[int, int] = {}
    for k, _v in t.items(values=False):
        if k.startswith(prefix):
            leaf = t._leaf_for(k)
            counts[leaf] = counts.get(leaf, 0) + 1
    return list(counts.values())


def _runs_into_the_middle(t, writers: int, per_writer: int) -> list[int]:
    """3,000 keys "m…" loaded at the right edge, then ``writers`` ascending sequences
    "a<w>:…" put round-robin (each key by the next xid) left of them."""
    xid = 1
    for i in range(3000):
        t.insert(b"m%06d" % i, VALUE, xid)
        xid += 1
    for i in range(per_writer):
        for w in range(writers):
            t.insert(b"a%d:%06d" % (w, i), VALUE, xid)
            xid += 1
    return _leaf_counts(t, b"a")


def test_one_ascending_writer_fills_its_leaves(env):  # noqa: F811
    """One writer's 3,000 ascending keys: their leaves (but the last, still filling) hold
    at least 0.8 x the entries of the right edge's fillfactor-full leaves (a split in the
    middle of the page would leave about 0.55)."""
    t = env.tree
    counts = _runs_into_the_middle(t, 1, 3000)
    edge = _leaf_counts(t, b"m")
    full = max(edge)   # a right-edge leaf: filled to the fillfactor
    assert LEAF_FILLFACTOR_PERCENT >= 80
    body = counts[:-1]
    assert sum(counts) == 3000
    assert sum(body) / len(body) >= 0.8 * full, (counts, full)
    assert t.check().entries == 6000


def test_interleaved_ascending_writers_fill_their_leaves(env):  # noqa: F811
    """Four writers' sequences put round-robin: once the sequences part ways, their
    leaves too average at least 0.75 x a fillfactor-full leaf."""
    t = env.tree
    counts = _runs_into_the_middle(t, 4, 1000)
    full = max(_leaf_counts(t, b"m"))
    assert sum(counts) == 4000
    assert sum(counts) / len(counts) >= 0.75 * full, (counts, full)
    assert t.check().entries == 7000
