"""The TIDs of a batch of index entry keys (``engine.index.batch_tids``: C
``slk_ix_batch_tids``) against its pure-Python reference and against the rule it stands
for, and an index range scan's heap fetch (``fetch_batched``) over entries that point
past the heap's end."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine import index as ix
from slonik.engine.database import Database

needs_c = pytest.mark.skipif(ix._lib is None,
                             reason="storage._pagecheck not built (no C compiler at install)")

_TID = struct.Struct(">IH")
# Few blocks (so entries share them), the u32 extremes, and keys of a few shapes.
blocks = st.one_of(st.integers(0, 12), st.sampled_from([(1 << 32) - 1, 1 << 31]))
entry_keys = st.builds(lambda k, b, o: k + _TID.pack(b, o),
                       st.binary(max_size=12), blocks, st.integers(0, (1 << 16) - 1))
short_keys = st.binary(max_size=ix.TID_SUFFIX_BYTES - 1)


def c_batch_tids(ks, nblocks):
    """batch_tids with its C call taken for every batch size (small batches otherwise go
    to the reference)."""
    keep = ix.BATCH_TIDS_C_MIN
    ix.BATCH_TIDS_C_MIN = 0
    try:
        return ix.batch_tids(ks, nblocks)
    finally:
        ix.BATCH_TIDS_C_MIN = keep


@needs_c
@settings(max_examples=400, deadline=None)
@given(ks=st.lists(entry_keys, max_size=ix.BATCH_TIDS_MAX),
       nblocks=st.one_of(st.integers(0, 14), st.just((1 << 32) - 1)))
def test_c_batch_tids_equals_reference_and_rule(ks, nblocks):
    """slk_ix_batch_tids equals batch_tids_py on random batches (shared blocks, blocks at
    and past nblocks, u32 extremes, empty key prefixes, up to the size bound); and the
    answer is the rule: each key's TID is its last 6 bytes, the distinct in-range blocks in
    order of first appearance, every in-range request names its own block and offnum,
    every other one page 0 and offnum 0."""
    got = c_batch_tids(ks, nblocks)
    assert got == ix.batch_tids_py(ks, nblocks)
    in_range = [b for b in (_TID.unpack(k[-6:])[0] for k in ks) if b < nblocks]
    assert got.distinct == list(dict.fromkeys(in_range))
    assert got.past == len(ks) - len(in_range)
    for k, cut, b, o, p, r in zip(ks, got.cut, got.block, got.offnum, got.page_of,
                                  got.req_offnums, strict=True):
        assert cut == len(k) - 6 and (b, o) == _TID.unpack(k[-6:])
        if b < nblocks:
            assert (got.distinct[p], r) == (b, o)
        else:
            assert (p, r) == (0, 0)


@needs_c
@settings(max_examples=100, deadline=None)
@given(before=st.lists(entry_keys, max_size=5), bad=short_keys,
       after=st.lists(entry_keys, max_size=5))
def test_batch_tids_names_a_key_too_short(before, bad, after):
    """A key shorter than the TID suffix anywhere in a batch raises ValueError naming its
    length, in C as in the reference."""
    ks = before + [bad] + after
    for f in (c_batch_tids, ix.batch_tids, ix.batch_tids_py):
        with pytest.raises(ValueError, match=f"of {len(bad)} bytes has no heap TID"):
            f(ks, 100)


def test_batch_tids_over_the_bound_uses_the_reference():
    """A batch over BATCH_TIDS_MAX keys (the C call's bound) still gets the whole answer:
    every key's TID and the distinct blocks."""
    ks = [b"k" + _TID.pack(i % 700, i % 5 + 1) for i in range(ix.BATCH_TIDS_MAX + 200)]
    got = ix.batch_tids(ks, 650)
    assert got == ix.batch_tids_py(ks, 650)
    assert len(got.cut) == len(ks) and len(got.distinct) == 650


def test_fetch_batched_entries_past_the_heap_end(tmp_path, io_method):
    """fetch_batched over entry keys of real rows mixed with entries pointing at blocks
    past the heap's end: the real ones come back VISIBLE with their rows' data, the others
    NO_TUPLE, each with its own key and TID, in the order given."""
    db = Database.open(tmp_path / "db", io_method=io_method)
    try:
        t = db.create_table("t", [("id", "int8"), ("name", "text")], primary_key="id")
        for i in range(300):
            t.insert((i, f"name-{i:04d}-" + "x" * 40))
        idx = t._pk_index()
        real = list(idx.entry_keys(None, None))
        far = [idx.encode((10_000 + j,)) + _TID.pack(1_000_000 + j, 1) for j in range(3)]
        ks = real[:50] + far[:1] + real[50:120] + far[1:]
        snap = _xid_snapshot_of(t)
        batches = list(ix.fetch_batched(t._heap, [ks], snap))
        assert len(batches) == 1
        b = batches[0]
        assert b.keys == [k[:-6] for k in ks]
        assert b.tids == [_TID.unpack(k[-6:]) for k in ks]
        status = [ix.NO_TUPLE if k in far else 2 for k in ks]
        assert b.status == status
        rows = [t._codec.decode(b.data[s:e])
                for s, e, st_ in zip(b.starts, b.ends, b.status, strict=True) if st_ == 2]
        assert [idx.key_of_row(r) for r in rows] == [k[:-6] for k in ks if k not in far]
    finally:
        db.close()


def _xid_snapshot_of(t):
    """The XidSnapshot of the latest committed state of table ``t``'s database."""
    xacts = t._layer.xacts
    snap = xacts.snapshot()
    try:
        return t._xid_snapshot(snap)
    finally:
        xacts.release(snap)


entries = st.lists(st.tuples(st.integers(0, ix.BLCKSZ + 2), st.integers(0, 40),
                             st.integers(0, 40), st.integers(0, 3)), max_size=60)


@needs_c
@settings(max_examples=300, deadline=None)
@given(page=st.builds(lambda p: (p * ix.BLCKSZ)[:ix.BLCKSZ], st.binary(min_size=1,
                                                                      max_size=97)),
       ents=entries,
       at=st.integers(0, ix.BLCKSZ), data=st.data())
def test_c_leaf_keys_equals_reference(page, ents, at, data):
    """slk_ix_leaf_keys against leaf_keys_py on a page (a random pattern) and random entries (key
    start, key length, value length, flags; some past the page's end): when every entry's
    offsets are ordered inside the page both give the same joined keys (written at ``at``
    of the output) and the same ends counted from ``at``; otherwise C answers -1 and the
    reference raises ValueError."""
    flat = []
    for ks, klen, vlen, flags in ents:
        flat += [ks, ks + klen, ks + klen + vlen, flags]
    if data.draw(st.booleans()) and ents:   # one entry out of order
        k = data.draw(st.integers(0, len(ents) - 1))
        flat[4 * k], flat[4 * k + 1] = flat[4 * k] + 1, flat[4 * k]
    ffi, lib = ix._ffi, ix._lib
    n = len(ents)
    dst = ffi.new("uint8_t[]", at + ix.BLCKSZ * 2)
    ends = ffi.new("uint32_t[]", max(n, 1))
    got = lib.slk_ix_leaf_keys(page, ffi.new("uint32_t[]", flat or [0]), n, dst, at, ends)
    try:
        joined, want_ends = ix.leaf_keys_py(page, flat, at)
    except ValueError:
        assert got == -1
        return
    assert got == at + len(joined)
    assert ffi.buffer(dst, got)[at:] == joined
    assert ffi.unpack(ends, n) == want_ends


def test_joined_leaf_walk_equals_the_list_walk(tmp_path, io_method):
    """On a real index of three levels' worth of keys (every io method), a joined leaf
    walk (walk_leaves(joined=True): keys back to back, ends in a C array) gives exactly the
    keys and the done flag of the list walk, for ranges inside a leaf, across leaves,
    unbounded at either end and empty; a joined walk over more leaves than it has room
    for is refused with a ValueError naming the bound."""
    db = Database.open(str(tmp_path / "db"), io_method=io_method)
    try:
        t = db.create_table("w", [("id", "int8"), ("name", "text")], primary_key="id")
        t.create_index("w_name", ["name"])
        with db.transaction():
            t.insert_many([(i, f"name-{(i * 7919) % 5000:06d}" * 3) for i in range(5000)])
        idx = t._index("w_name")
        bounds = [None] + [idx.encode((f"name-{k:06d}",)) for k in (0, 17, 18, 900, 2500,
                                                                   4999, 6000)]
        for lo in bounds:
            for hi in bounds:
                for leaves in (1, ix.RANGE_WALK_LEAVES):
                    keys, done = ix.walk_leaves(idx.tree, lo, hi, leaves)
                    jk, jdone = ix.walk_leaves(idx.tree, lo, hi, leaves, joined=True)
                    assert jdone == done
                    assert ix._split_keys(jk.dst, jk.at, jk.ends, jk.n) == keys
        with pytest.raises(ValueError, match=str(ix.RANGE_WALK_LEAVES)):
            ix.walk_leaves(idx.tree, None, None, ix.RANGE_WALK_LEAVES + 1, joined=True)
    finally:
        db.close()
