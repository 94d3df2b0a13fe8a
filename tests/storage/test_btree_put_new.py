"""The autocommit put's leaf step (slk_bt_put_new through btree_leafrun.put_new) agrees with
its Python reference put_new_py on arbitrary leaves, and both give the general path's
record payload (leaf_run of the one OLD_LOOKUP write) byte for byte whenever they take the
put: a key new to the leaf, or (asked again once the caller has judged it committed) one
whose newest version on the leaf is live, which the put supersedes. They refuse exactly
when the general path would have to look further (a deleted newest version, the key at or
past the high key, no room, an inner or deleted page) and report the version they found."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_leafrun as lr
from slonik.engine.access import btree_page as bp
from slonik.engine.access.btree_wal import apply_action, apply_payload_actions, decode_actions
from slonik.storage.page import BLCKSZ

from tests.storage.test_btree_leafrun import leaf

needs_c = pytest.mark.skipif(not lr.C_PUT_NEW,
                             reason="storage._pagecheck not built (no C compiler at install)")

keys = st.binary(min_size=0, max_size=6)
xids = st.integers(1, 30)


def general(page, high, key, value, xid) -> tuple[bytes | None, tuple | None]:
    """The general path's payload for the put, every xid taken as committed (leaf_run_py of
    the one OLD_LOOKUP write, with room the page's hole; None when it does not do the
    write), and the key's first (newest) version on the leaf as (offset, xmin, xmax), or
    None when the leaf holds none."""
    lower, upper = bp.struct.unpack_from("<HH", page, 14)
    st_ = lr.LeafRunState(upper - lower)
    batch = lr.single_batch(key, value, lr.KIND_INLINE, xid, lr.OLD_LOOKUP)
    done, _stop = lr.leaf_run_py(page, high, batch, 0, st_, lambda x: True)
    off = bp.search_page(page, key, bp.XMIN_MAX, False)
    first = None
    if off <= bp.bt_item_count(page) and bp.entry_key(bp.bt_item(page, off))[0] == key:
        e = bp.unpack_entry(bp.bt_item(page, off))
        first = (off, e.xmin, e.xmax)
    return st_.payload() if done else None, first


def fresh(scratch: lr.PutScratch) -> lr.PutScratch:
    """``scratch`` with its ``old`` naming no version (a first try)."""
    scratch.old[0] = scratch.old[1] = scratch.old[2] = 0
    return scratch


@needs_c
@settings(max_examples=500, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 30)), max_size=60),
       high=st.one_of(st.none(), keys), value_len=st.integers(0, 120),
       key=keys, value=st.binary(max_size=200), xid=st.integers(31, 2 ** 64 - 2),
       flags=st.sampled_from([bp.BTP_LEAF, bp.BTP_LEAF, bp.BTP_LEAF | bp.BTP_ROOT,
                              bp.BTP_LEAF | bp.BTP_DELETED]),
       supersede=st.booleans())
def test_c_put_new_equals_reference_and_general_path(entries, high, value_len, key, value,
                                                     xid, flags, supersede):
    """Random leaves (high key or rightmost, some deleted, some nearly full) and random
    puts, a found version asked again with (``supersede``: the caller found it committed)
    or not: C and reference return the same payload or both None and report the same
    version, neither changing the page; a payload equals the general path's leaf-run
    payload; put_new (C, applying) returns it too, keeps the old bytes in the scratch and
    leaves the page as redo leaves it action by action (and as apply_payload_actions
    does), with (key, xid, value) on it, xmax 0, and the superseded version's xmax xid.
    None leaves the page alone; None exactly when the general path would not do it as one
    insert (superseding the newest version when that is live and the caller asks again),
    or the page is deleted."""
    page = leaf(entries, high, value_len, flags)
    before = bytes(page)
    scratch = fresh(lr.PutScratch())
    old = [0, 0, 0]
    c = lr.put_new_c(page, key, value, xid, scratch)
    py = lr.put_new_py(page, key, value, xid, old)
    assert bytes(page) == before
    assert c == py
    assert list(scratch.old) == old
    payload, first = general(page, high, key, value, xid)
    if flags & bp.BTP_DELETED:
        assert c is None
        return
    if first is not None and (high is None or key < high):
        assert c is None and tuple(old) == first   # reported, for the caller to judge
        if not supersede:
            return
        c = lr.put_new_c(page, key, value, xid, scratch)   # asked again with it
        py = lr.put_new_py(page, key, value, xid, old)
        assert bytes(page) == before
        assert c == py
        assert list(scratch.old) == old and tuple(old) == first
        assert c == (payload if first[2] == 0 else None)
    else:
        assert c == payload
    slow = applied_as_redo(page, key, value, xid, scratch, c)   # C, applying
    if slow is None:
        return
    fast = bytearray(page)
    apply_payload_actions(fast, c, 0, 1 + (first is not None))
    assert fast == slow
    off = bp.search_page(fast, key, xid, False)
    e = bp.unpack_entry(bp.bt_item(fast, off))
    assert (e.key, e.xmin, e.xmax, e.payload) == (key, xid, 0, value)
    if first is not None:
        e = bp.unpack_entry(bp.bt_item(fast, off + 1))
        assert (e.key, e.xmin, e.xmax) == (key, first[1], xid)


def applied_as_redo(page: bytearray, key: bytes, value: bytes, xid: int,
                    scratch: lr.PutScratch, want: bytes | None) -> bytearray | None:
    """put_new on a copy of ``page`` returns ``want`` (the payload, or None); with a
    payload it keeps the old bytes in the scratch and leaves the page as apply_action
    leaves it action by action (returned), with None the page unchanged (None)."""
    applied = bytearray(page)
    assert lr.put_new(applied, key, value, xid, scratch) == want
    if want is None:
        assert applied == page
        return None
    assert scratch.pre == page
    slow = bytearray(page)
    for _i, code, data in decode_actions(want):
        apply_action(slow, code, data)
    assert applied == slow
    return slow


@needs_c
def test_put_new_refuses_what_the_general_path_must_take():
    """Hand-made refusals, C and reference alike: a key with a version on the leaf, a key
    equal to or past the high key, an entry that does not fit, an inner page; a damaged
    page (special space overwritten) is refused by both wrappers, and the reference alone
    raises BTreePageError naming it."""
    page = leaf([(b"b", 5, 0), (b"d", 3, 7)], b"m", 10)
    scratch = lr.PutScratch()
    for key, value in ((b"b", b"x"), (b"d", b"x"), (b"m", b"x"), (b"z", b"x"),
                       (b"c", b"x" * 8140)):
        assert lr.put_new_c(page, key, value, 40, fresh(scratch)) is None, key
        assert lr.put_new_py(page, key, value, 40) is None, key
    assert lr.put_new_c(page, b"c", b"x", 40, fresh(scratch)) is not None
    inner = leaf([], None, 0, flags=0, level=1)
    assert lr.put_new_c(inner, b"c", b"x", 40, fresh(scratch)) is None
    assert lr.put_new_py(inner, b"c", b"x", 40) is None
    bad = bytearray(page)
    bad[BLCKSZ - 2:] = b"\xff\xff"
    assert lr.put_new_c(bad, b"c", b"x", 40, fresh(scratch)) is None
    assert lr.put_new(bad, b"c", b"x", 40, fresh(scratch)) is None
    with pytest.raises(bp.BTreePageError):
        lr.put_new_py(bad, b"c", b"x", 40)


@needs_c
def test_put_new_supersedes_only_the_version_it_was_asked_to():
    """A key with versions on the leaf: the first try reports the newest (offset, xmin,
    xmax) and takes nothing; asked again with it the put supersedes it (SET_XMAX of that
    offset, then the INSERT: the general path's payload); asked with another xmin, or
    with a version the page does not hold first, or for a newest version already deleted,
    it refuses and reports what it found; a key without a version refuses an ``old``
    naming one. C and reference alike."""
    page = leaf([(b"b", 9, 0), (b"b", 5, 9), (b"d", 3, 7)], b"m", 10)
    scratch = lr.PutScratch()
    for old_in, key, want_old, takes in (
            ([0, 0, 0], b"b", None, False),     # first try: report the newest version
            (None, b"b", None, True),           # asked again with what it reported
            (None, b"b", "xmin+1", False),      # another xmin at that offset
            ([0, 0, 0], b"d", None, False),     # newest version deleted: reported ...
            (None, b"d", None, False),          # ... and refused when asked again
            ([2, 9, 0], b"c", None, False)):    # no version of c, old names one
        if old_in is not None:
            scratch.old[0:3] = old_in
        if want_old == "xmin+1":
            scratch.old[1] += 1
        old = list(scratch.old)
        c = lr.put_new_c(page, key, b"x", 40, scratch)
        py = lr.put_new_py(page, key, b"x", 40, old)
        assert c == py and list(scratch.old) == old, (key, old_in)
        assert (c is not None) == takes, (key, old_in)
        _payload, first = general(page, b"m", key, b"x", 40)
        if first is not None:
            assert tuple(old) == first
        if takes:
            assert c == general(page, b"m", key, b"x", 40)[0]
            assert [code for _i, code, _d in decode_actions(c)] == [3, 2]  # SET_XMAX, INSERT


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 30)), max_size=60),
       high=st.one_of(st.none(), keys), value_len=st.integers(0, 120),
       key=keys, value=st.binary(max_size=200), xid=st.integers(31, 2 ** 64 - 2))
def test_put_new_without_the_c_module_applies_what_redo_applies(entries, high, value_len,
                                                                key, value, xid):
    """put_new on a scratch without the C output (as when the module is not built) takes
    the reference: the same payload as put_new_py, the old bytes in the scratch and the
    page as apply_action leaves it action by action; None leaves the page alone."""
    page = leaf(entries, high, value_len)
    scratch = fresh(lr.PutScratch())
    scratch.out = None
    applied_as_redo(page, key, value, xid, scratch, lr.put_new_py(page, key, value, xid))
