"""The C B+tree page helpers in storage/_pagecheck (slk_bt_search, slk_bt_locate,
slk_bt_visible) agree with their Python references in engine/access/btree_page.py on
arbitrary pages, targets and snapshots; damaged pages make C hand over to the reference,
which raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_page as bp
from slonik.engine.access.btree import XidSnapshot
from slonik.storage.page import BLCKSZ

needs_c = pytest.mark.skipif(not bp.C_SEARCH,
                             reason="storage._pagecheck not built (no C compiler at install)")

keys = st.binary(min_size=0, max_size=12)
xids = st.integers(1, 40)


def leaf_page(entries, rightmost: bool) -> bytearray:
    """A leaf holding ``entries`` [(key, xmin, xmax)] in tree order, with a high key above
    them unless rightmost."""
    ordered = sorted(set((k, xmin) for k, xmin, _ in entries), key=lambda e: (e[0], -e[1]))
    xmax_of = {(k, xmin): xmax for k, xmin, xmax in entries}
    items = [bp.pack_entry(k, xmin, xmax_of[(k, xmin)], 0, b"v" * (xmin % 5))
             for k, xmin in ordered]
    if not rightmost:
        items.insert(0, bp.pack_pivot(b"\xff" * 13, 0, 0))
    page = bytearray(BLCKSZ)
    bp.bt_rebuild(page, bp.Special(0, 0 if rightmost else 7, 0, bp.BTP_LEAF), items)
    return page


def internal_page(seps, rightmost: bool) -> bytearray:
    ordered = sorted(set(seps), key=lambda e: (e[0], -e[1]))
    items = [bp.minus_inf_pivot(3)] + [bp.pack_pivot(k, x, 4 + i) for i, (k, x) in enumerate(ordered)]
    if not rightmost:
        items.insert(0, bp.pack_pivot(b"\xff" * 13, 0, 0))
    page = bytearray(BLCKSZ)
    bp.bt_rebuild(page, bp.Special(0, 0 if rightmost else 9, 1, 0), items)
    return page


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 40)), max_size=60),
       rightmost=st.booleans(), key=keys, xmin=st.integers(0, bp.XMIN_MAX),
       upper=st.booleans())
def test_c_leaf_search_equals_reference(entries, rightmost, key, xmin, upper):
    """For random leaves (with or without a high key) and random (key, xmin) targets,
    lower- and upper-bound searches in C return the reference's offnum, and that offnum
    really is the bound (items before it are below the target, the rest not)."""
    page = leaf_page(entries, rightmost)
    got = bp.search_page(page, key, xmin, upper)
    assert got == bp.search_page_py(page, key, xmin, upper)
    first = bp.bt_first_data(bp.bt_special(page))
    target = (1, key, -xmin)
    for off in range(first, bp.bt_item_count(page) + 1):
        sk = bp.item_sort_key(bytes(bp.bt_items(page)[off - 1]), True)
        assert (sk < target or (upper and sk == target)) == (off < got)


@needs_c
@settings(max_examples=200, deadline=None)
@given(seps=st.lists(st.tuples(keys, xids), max_size=60), rightmost=st.booleans(),
       key=keys, xmin=st.integers(0, bp.XMIN_MAX), upper=st.booleans())
def test_c_internal_search_equals_reference(seps, rightmost, key, xmin, upper):
    """On internal pages (minus-infinity first pivot) C and Python agree, and the
    minus-infinity pivot is always below the target."""
    page = internal_page(seps, rightmost)
    got = bp.search_page(page, key, xmin, upper)
    assert got == bp.search_page_py(page, key, xmin, upper)
    assert got > bp.bt_first_data(bp.bt_special(page))


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 40)), max_size=60),
       seps=st.lists(st.tuples(keys, xids), max_size=60), leaf=st.booleans(),
       rightmost=st.booleans(), high=keys, high_xmin=st.integers(0, bp.XMIN_MAX),
       key=keys, xmin=st.integers(0, bp.XMIN_MAX))
def test_c_locate_equals_reference(entries, seps, leaf, rightmost, high, high_xmin, key,
                                   xmin):
    """slk_bt_locate (one descent step) equals locate_py on leaves and internal pages with
    an arbitrary high key: MOVE_RIGHT exactly when the target is >= the high key, else the
    leaf's lower bound or the child block of the last pivot <= the target."""
    page = leaf_page(entries, rightmost) if leaf else internal_page(seps, rightmost)
    if not rightmost:  # replace the fixed high key with the drawn one
        items = bp.bt_items(page)
        items[0] = bp.pack_pivot(high, high_xmin, 0)
        bp.bt_rebuild(page, bp.bt_special(page), items)
    got = bp.locate(page, key, xmin)
    assert got == bp.locate_py(page, key, xmin)
    assert (got == bp.MOVE_RIGHT) == (not rightmost and (key, -xmin) >= (high, -high_xmin))
    if got != bp.MOVE_RIGHT and leaf:
        assert got == bp.search_page_py(page, key, xmin, False)


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 40)), max_size=60),
       rightmost=st.booleans(), snap_xmax=st.integers(1, 45), own=st.integers(0, 45),
       excluded=st.sets(xids, max_size=10))
def test_c_visible_equals_reference_and_rule(entries, rightmost, snap_xmax, own, excluded):
    """slk_bt_visible lists exactly the reference's offnums, and those are the entries
    Snapshot.visible's rule accepts (xmin seen and xmax zero or unseen)."""
    page = leaf_page(entries, rightmost)
    ex = sorted(excluded)
    got = bp.visible_offnums(page, snap_xmax, own, ex)
    assert got == bp.visible_offnums_py(page, snap_xmax, own, ex)

    def sees(x):
        return x == own or (x < snap_xmax and x not in excluded)

    items = bp.bt_items(page)
    expect = []
    for off in range(bp.bt_first_data(bp.bt_special(page)), len(items) + 1):
        e = bp.unpack_entry(items[off - 1])
        if sees(e.xmin) and not (e.xmax and sees(e.xmax)):
            expect.append(off)
    assert got == expect


@needs_c
def test_c_hands_damaged_page_to_reference():
    """A line pointer pointing outside the page makes the C search give up (-1) and the
    wrapper raise the reference's BTreePageError instead of reading out of bounds."""
    page = leaf_page([(b"a", 1, 0), (b"b", 2, 0), (b"c", 3, 0)], True)
    page[24:28] = (0x7FF0 | (1 << 15) | (300 << 17)).to_bytes(4, "little")
    assert bp._lib.slk_bt_search(bp._ffi.from_buffer(page), b"b", 1, 2, 0) == -1
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.search_page(page, b"b", 2, False)
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.visible_offnums(page, 10, 0, [])
    assert bp._lib.slk_bt_locate(bp._ffi.from_buffer(page), b"b", 1, 2) == -1
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.locate(page, b"b", 2)


# --- point-read probe and scan extraction (slk_bt_probe, slk_bt_extract) -------------------

few_keys = st.sampled_from([b"", b"a", b"ab", b"b", b"ba", b"\xff"])
# A live leaf (0), one flagged both leaf and DELETED (1), and one as vacuum's unlink writes
# it (2: BTP_DELETED alone, its BTP_LEAF bit cleared).
deleted_forms = st.sampled_from([0, 1, 2])


def leaf_flags(deleted: int) -> int:
    """The page flags of a ``deleted_forms`` draw."""
    return (bp.BTP_LEAF, bp.BTP_LEAF | bp.BTP_DELETED, bp.BTP_DELETED)[deleted]


def rich_leaf(entries, high, page_flags: int) -> bytearray:
    """A leaf of ``entries`` [(key, xmin, xmax, out_of_line)] in tree order (payload length
    varies with xmin), with high key ``high`` = (key, xmin) or none (rightmost)."""
    seen = {}
    for k, xmin, xmax, ool in entries:
        seen.setdefault((k, xmin), (xmax, ool))
    items = [bp.pack_entry(k, xmin, seen[(k, xmin)][0],
                           bp.ENTRY_OVERFLOW if seen[(k, xmin)][1] else 0, b"p" * (xmin % 7))
             for k, xmin in sorted(seen, key=lambda e: (e[0], -e[1]))]
    if high is not None:
        items.insert(0, bp.pack_pivot(high[0], high[1], 0))
    page = bytearray(BLCKSZ)
    bp.bt_rebuild(page, bp.Special(0, 0 if high is None else 7, 0, page_flags), items)
    return page


entry_lists = st.lists(st.tuples(few_keys, xids, st.integers(0, 40), st.booleans()),
                       max_size=80)
highs = st.one_of(st.none(), st.tuples(few_keys, st.sampled_from([1, 7, 40, bp.XMIN_MAX])))


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=entry_lists, high=highs, deleted=deleted_forms, key=few_keys)
def test_c_probe_equals_reference_and_lists_every_version(entries, high, deleted, key):
    """slk_bt_probe equals probe_leaf_py on random leaves (many versions of few keys, so
    the second call with more room runs too; high keys of any xmin; DELETED pages); when
    it does not move right, its versions decode to exactly the page's entries of ``key``
    newest first, and it moves right exactly for a DELETED page or (key, XMIN_MAX) >= the
    high key."""
    page = rich_leaf(entries, high, leaf_flags(deleted))
    got = bp.probe_leaf(page, key)
    assert got == bp.probe_leaf_py(page, key)
    nxt, status, versions = got
    assert bp.probe_leaf_flat(page, key) == [nxt, status, *versions]
    assert nxt == (0 if high is None else 7)
    right = bool(deleted) or (high is not None and (key, -bp.XMIN_MAX) >= (high[0], -high[1]))
    assert bool(status & bp.PROBE_MOVE_RIGHT) == right
    if right:
        assert versions == []
        return
    rows = list(zip(*[iter(versions)] * 5, strict=True))
    decoded = [bp.unpack_entry(bytes(page[off:off + n])) for off, n, _a, _b, _c in rows]
    items = bp.bt_items(page)[0 if high is None else 1:]
    expect = [e for e in map(bp.unpack_entry, items) if e.key == key]
    assert decoded == expect
    assert [(v[2], v[3], v[4]) for v in rows] == [(e.xmin, e.xmax, e.flags) for e in expect]
    runs_to_end = bool(expect) and bp.unpack_entry(items[-1]).key == key
    assert bool(status & bp.PROBE_CONTINUES) == (high is not None and high[0] == key and
                                                 (runs_to_end or not expect and not any(
                                                     bp.unpack_entry(i).key > key
                                                     for i in items)))


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=entry_lists, high=highs, start=st.one_of(st.none(), few_keys),
       stop=st.one_of(st.none(), few_keys), snap_xmax=st.integers(1, 45),
       own=st.integers(0, 45), excluded=st.sets(xids, max_size=10))
def test_c_extract_equals_reference_and_rule(entries, high, start, stop, snap_xmax, own,
                                             excluded):
    """slk_bt_extract equals extract_leaf_py on random leaves, bounds and snapshots, and
    its offsets slice out exactly the (key, payload) of the entries in [start, stop) the
    snapshot's rule accepts, in page order, with the flags the range implies (done: an
    entry from ``start`` on, or the high key, reaches ``stop``)."""
    page = rich_leaf(entries, high, bp.BTP_LEAF)
    ex = tuple(sorted(excluded))
    got = bp.extract_leaf(page, start, stop, snap_xmax, own, ex)
    assert got == bp.extract_leaf_py(page, start, stop, snap_xmax, own, ex)
    flags, flat = got

    def sees(x):
        return x == own or (x < snap_xmax and x not in excluded)

    entries_ = [bp.unpack_entry(i) for i in bp.bt_items(page)[0 if high is None else 1:]]
    in_range = [e for e in entries_ if (start is None or e.key >= start)
                and (stop is None or e.key < stop)]
    expect = [e for e in in_range if sees(e.xmin) and not (e.xmax and sees(e.xmax))]
    pb = bytes(page)
    assert [(pb[a:b], pb[b:c], f) for a, b, c, f in zip(*[iter(flat)] * 4, strict=True)] == \
        [(e.key, e.payload, e.flags) for e in expect]
    assert bool(flags & bp.EXTRACT_OVERFLOW) == any(e.flags for e in expect)
    assert bool(flags & bp.EXTRACT_BELOW_START) == (
        start is not None and any(e.key < start for e in entries_))
    reaches_stop = stop is not None and (any(e.key >= stop for e in entries_
                                             if start is None or e.key >= start) or
                                         (high is not None and high[0] >= stop))
    assert bool(flags & bp.EXTRACT_DONE) == reaches_stop


@needs_c
@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=entry_lists, high=highs, deleted=deleted_forms,
       keys=st.lists(few_keys, unique=True, max_size=6).map(sorted), data=st.data())
def test_c_probe_many_equals_reference_and_finds_the_visible_version(entries, high, deleted,
                                                                     keys, data):
    """slk_bt_probe_many equals probe_many_py on random leaves, key ranges and snapshots
    (own xid, xmax, excluded xids drawn from the page's xids); for every key it judged, the
    version it found is the first of probe_leaf_py's versions (newest first) that
    XidSnapshot.__call__ sees, with that entry's value bounds, and none when no version is
    seen; the status keeps probe_leaf's bits."""
    page = rich_leaf(entries, high, leaf_flags(deleted))
    page_xids = sorted({x for _k, xmin, xmax, _o in entries for x in (xmin, xmax) if x})
    snap_xmax = data.draw(st.integers(0, 45))
    own = data.draw(st.sampled_from([0, *page_xids]))
    excluded = tuple(sorted(set(data.draw(st.lists(st.sampled_from(page_xids or [3]),
                                                   max_size=6)))))
    lo = data.draw(st.integers(0, len(keys)))
    hi = data.draw(st.integers(lo, len(keys)))
    batch = bp.ProbeKeys(keys, snap_xmax, own, excluded)
    got = bp.probe_many(page, batch, lo, hi)
    assert got == bp.probe_many_py(page, batch, lo, hi)
    snap = XidSnapshot(snap_xmax, own, excluded)
    for j, key in enumerate(keys[lo:hi]):
        status, start, end, eflags = got[4 * j:4 * j + 4]
        _nxt, pstatus, v = bp.probe_leaf_py(page, key)
        assert status & 3 == pstatus
        if status & bp.PROBE_TOO_MANY:
            assert len(v) > 5 * bp.PROBE_MANY_VERSIONS_MAX
            continue
        want = next((i for i in range(0, len(v), 5) if snap(v[i + 2], v[i + 3])), None)
        assert bool(status & bp.PROBE_FOUND) == (want is not None)
        if want is not None:
            assert (start, end, eflags) == (v[want] + bp.LEAF_HEADER_SIZE + len(key),
                                            v[want] + v[want + 1], v[want + 4])
        else:
            assert (start, end, eflags) == (0, 0, 0)


@needs_c
def test_c_probe_many_leaves_a_key_with_too_many_versions_to_the_one_key_probe():
    """A key with more versions than PROBE_MANY_VERSIONS_MAX gets PROBE_TOO_MANY from both
    implementations (nothing judged), while its neighbours in the batch are judged."""
    n = bp.PROBE_MANY_VERSIONS_MAX + 6
    page = rich_leaf([(b"a", 1, 0, False)] + [(b"b", x, 0, False) for x in range(1, n + 1)]
                     + [(b"c", 2, 0, False)], None, bp.BTP_LEAF)
    batch = bp.ProbeKeys([b"a", b"b", b"c"], 1000, 0, ())
    got = bp.probe_many(page, batch, 0, 3)
    assert got == bp.probe_many_py(page, batch, 0, 3)
    assert [got[0], got[4], got[8]] == [bp.PROBE_FOUND, bp.PROBE_TOO_MANY, bp.PROBE_FOUND]


def test_c_probe_and_extract_hand_damaged_page_to_reference():
    """A line pointer outside the page, or an internal page where a leaf is expected,
    makes slk_bt_probe / slk_bt_extract give up (-1) and the wrappers raise the
    reference's BTreePageError."""
    page = rich_leaf([(b"a", 1, 0, False), (b"b", 2, 0, False), (b"c", 3, 0, False)], None,
                     bp.BTP_LEAF)
    page[24 + 4:28 + 4] = (0x7FF0 | (1 << 15) | (300 << 17)).to_bytes(4, "little")
    out = bp._ffi.new("uint64_t[]", 50)
    assert bp._lib.slk_bt_probe(bp._ffi.from_buffer(page), b"b", 1, out, 8) == -1
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.probe_leaf(page, b"b")
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.probe_leaf_flat(page, b"b")
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.probe_many(page, bp.ProbeKeys([b"a", b"b"], 10, 0, ()), 0, 2)
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.extract_leaf(page, None, None, 10, 0, ())
    inner = internal_page([(b"a", 1)], True)
    with pytest.raises(bp.BTreePageError, match="expected a leaf"):
        bp.probe_leaf(inner, b"a")
    with pytest.raises(bp.BTreePageError, match="expected a leaf"):
        bp.extract_leaf(inner, None, None, 10, 0, ())


@needs_c
@settings(max_examples=200, deadline=None)
@given(entries=entry_lists, high=highs, start=st.one_of(st.none(), few_keys),
       snap_xmax=st.integers(1, 45), values=st.booleans())
def test_c_gather_equals_reference_and_slices(entries, high, start, snap_xmax, values):
    """slk_bt_gather (bytes copied back to back, cut by one struct format) gives the same
    flat tuple as gather_leaf_py for extract_leaf's output on random leaves: each entry's
    key, then its payload when ``values``, exactly the bytes at its offsets."""
    page = rich_leaf(entries, high, bp.BTP_LEAF)
    _flags, flat = bp.extract_leaf(page, start, None, snap_xmax, 0, ())
    got = bp.gather_leaf(page, flat, values)
    assert got == bp.gather_leaf_py(page, flat, values)
    pb = bytes(page)
    rows = list(zip(*[iter(flat)] * 4, strict=True))
    expect = [pb[a:b] for a, b, _c, _f in rows] if not values else \
        [x for a, b, c, _f in rows for x in (pb[a:b], pb[b:c])]
    assert list(got) == expect


@needs_c
def test_c_gather_refuses_offsets_outside_the_page():
    """Offsets out of order or past the page make slk_bt_gather give up (-1) and the
    wrapper raise the reference's ValueError naming the entry, instead of copying out of
    bounds."""
    page = rich_leaf([(b"a", 1, 0, False)], None, bp.BTP_LEAF)
    _flags, flat = bp.extract_leaf(page, None, None, 10, 0, ())
    assert bp.gather_leaf(page, flat, True) == (b"a", b"p")
    for bad in ([10, 5, 20, 0], [8000, 8100, 9000, 0]):
        with pytest.raises(ValueError, match="entry 0"):
            bp.gather_leaf(page, bad, True)


@needs_c
@settings(max_examples=200, deadline=None)
@given(entries=entry_lists, high=highs, start=st.one_of(st.none(), few_keys),
       stop=st.one_of(st.none(), few_keys), snap_xmax=st.integers(1, 45),
       own=st.integers(0, 45), excluded=st.sets(xids, max_size=10), values=st.booleans())
def test_c_extract_cut_equals_composed_references(entries, high, start, stop, snap_xmax, own,
                                                  excluded, values):
    """extract_cut (extract and gather in C on one array) equals extract_cut_py, which is
    extract_leaf_py then gather_leaf_py: same flags, the offsets only when an entry is out
    of line, and the same cut bytes."""
    page = rich_leaf(entries, high, bp.BTP_LEAF)
    ex = tuple(sorted(excluded))
    got = bp.extract_cut(page, start, stop, snap_xmax, own, ex, values)
    assert got == bp.extract_cut_py(page, start, stop, snap_xmax, own, ex, values)
    flags, flat = bp.extract_leaf_py(page, start, stop, snap_xmax, own, ex)
    assert got[0] == flags and got[2] == bp.gather_leaf_py(page, flat, values)
    assert (got[1] is None) == (not flags & bp.EXTRACT_OVERFLOW)


@needs_c
@settings(max_examples=200, deadline=None)
@given(seps=st.lists(st.tuples(keys, xids), max_size=60), rightmost=st.booleans(),
       key=keys, xmin=st.integers(0, bp.XMIN_MAX))
def test_page_locator_equals_locate(seps, rightmost, key, xmin):
    """page_locator(copy) called as (key, len(key), xmin) answers exactly as locate() on
    internal pages, and with -1 (where locate raises) on a page whose line pointers all
    point outside it."""
    page = bytes(internal_page(seps, rightmost))
    assert bp.page_locator(page)(key, len(key), xmin) == bp.locate(page, key, xmin)
    bad = bytearray(page)
    for at in range(24, 24 + 4 * bp.bt_item_count(page), 4):
        bad[at:at + 4] = (0x7FF0 | (1 << 15) | (300 << 17)).to_bytes(4, "little")
    assert bp.page_locator(bytes(bad))(key, len(key), xmin) == -1
    with pytest.raises(bp.BTreePageError, match="line pointer"):
        bp.locate(bytes(bad), key, xmin)


@needs_c
@settings(max_examples=200, deadline=None)
@given(seps=st.lists(st.tuples(keys, xids), max_size=60), rightmost=st.booleans(),
       first=st.integers(1, 70))
def test_c_children_equals_reference(seps, rightmost, first):
    """slk_bt_children lists the same child blocks as children_py (every pivot's child
    from offnum ``first`` on, the minus-infinity pivot's included) on random internal
    pages; a line pointer outside the page makes both raise the reference's error."""
    page = internal_page(seps, rightmost)
    got = bp.children(page, first)
    assert got == bp.children_py(page, first)
    items = bp.bt_items(page)
    assert got == [bp.unpack_pivot(i).child for i in items[first - 1:]]
    if first <= len(items):
        bad = bytearray(page)
        at = 24 + 4 * (len(items) - 1)  # the last line pointer: every call reads it
        bad[at:at + 4] = (0x7FF0 | (1 << 15) | (300 << 17)).to_bytes(4, "little")
        with pytest.raises(bp.BTreePageError, match="line pointer"):
            bp.children(bad, first)
