"""The autocommit put's leaf step (slk_bt_put_new through btree_leafrun.put_new) agrees with
its Python reference put_new_py on arbitrary leaves, and both give the general path's
record payload (leaf_run of the one OLD_LOOKUP write) byte for byte whenever they take the
put; they refuse exactly when the general path would have to look further (a version of
the key on the leaf, the key at or past the high key, no room, an inner or deleted page)."""

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


def general(page, high, key, value, xid):
    """The general path's payload for the put: leaf_run_py of the one write (OLD_LOOKUP),
    with room the page's hole; None when it does not do the write, or the key has any
    version on the leaf (the fast path leaves superseding to the general path)."""
    lower, upper = bp.struct.unpack_from("<HH", page, 14)
    st_ = lr.LeafRunState(upper - lower)
    batch = lr.single_batch(key, value, lr.KIND_INLINE, xid, lr.OLD_LOOKUP)
    done, _stop = lr.leaf_run_py(page, high, batch, 0, st_, lambda x: True)
    off = bp.search_page(page, key, bp.XMIN_MAX, False)
    has_version = off <= bp.bt_item_count(page) and \
        bp.entry_key(bp.bt_item(page, off))[0] == key
    return st_.payload() if done and not has_version else None


@needs_c
@settings(max_examples=500, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 30)), max_size=60),
       high=st.one_of(st.none(), keys), value_len=st.integers(0, 120),
       key=keys, value=st.binary(max_size=200), xid=st.integers(31, 2 ** 64 - 2),
       flags=st.sampled_from([bp.BTP_LEAF, bp.BTP_LEAF, bp.BTP_LEAF | bp.BTP_ROOT,
                              bp.BTP_LEAF | bp.BTP_DELETED]))
def test_c_put_new_equals_reference_and_general_path(entries, high, value_len, key, value,
                                                     xid, flags):
    """Random leaves (high key or rightmost, some deleted, some nearly full) and random
    puts: C and reference return the same payload or both None, neither changing the
    page; a payload equals the general path's leaf-run payload; put_new (C, applying)
    returns it too, keeps the old bytes in the scratch and leaves the page as redo leaves
    it action by action (and as apply_payload_actions does), with (key, xid, value) on it
    and xmax 0; None leaves the page alone. None exactly when the general path would not
    do it as a lone insert (a version of the key on the leaf, key >= high key, no room)
    or the page is deleted."""
    page = leaf(entries, high, value_len, flags)
    before = bytes(page)
    scratch = lr.PutScratch()
    c = lr.put_new_c(page, key, value, xid, scratch)
    py = lr.put_new_py(page, key, value, xid)
    assert bytes(page) == before
    assert c == py
    want = None if flags & bp.BTP_DELETED else general(page, high, key, value, xid)
    assert c == want
    slow = applied_as_redo(page, key, value, xid, scratch, c)   # C, applying
    if slow is None:
        return
    fast = bytearray(page)
    apply_payload_actions(fast, c, 0, 1)
    assert fast == slow
    off = bp.search_page(fast, key, xid, False)
    e = bp.unpack_entry(bp.bt_item(fast, off))
    assert (e.key, e.xmin, e.xmax, e.payload) == (key, xid, 0, value)


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
        assert lr.put_new_c(page, key, value, 40, scratch) is None, key
        assert lr.put_new_py(page, key, value, 40) is None, key
    assert lr.put_new_c(page, b"c", b"x", 40, scratch) is not None
    inner = leaf([], None, 0, flags=0, level=1)
    assert lr.put_new_c(inner, b"c", b"x", 40, scratch) is None
    assert lr.put_new_py(inner, b"c", b"x", 40) is None
    bad = bytearray(page)
    bad[BLCKSZ - 2:] = b"\xff\xff"
    assert lr.put_new_c(bad, b"c", b"x", 40, scratch) is None
    assert lr.put_new(bad, b"c", b"x", 40, scratch) is None
    with pytest.raises(bp.BTreePageError):
        lr.put_new_py(bad, b"c", b"x", 40)


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
    scratch = lr.PutScratch()
    scratch.out = None
    applied_as_redo(page, key, value, xid, scratch, lr.put_new_py(page, key, value, xid))
