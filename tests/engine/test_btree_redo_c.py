"""B+tree redo in C (slk_bt_redo_actions, through engine.access.btree_wal.apply_block_actions)
does to a page exactly what apply_action does action by action: the same bytes, and the
same error for an action that cannot be applied, after the same actions."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_page as bp
from slonik.engine.access import btree_wal as bw
from slonik.storage.page import BLCKSZ, PageCorruptError

needs_c = pytest.mark.skipif(not bw.C_REDO_ACTIONS,
                             reason="storage._pagecheck not built (no C compiler at install)")


def leaf(nitems: int, size: int) -> bytearray:
    page = bytearray(BLCKSZ)
    items = [bp.pack_entry(b"k%05d" % i, i + 1, 0, 0, b"v" * size) for i in range(nitems)]
    bp.bt_build(page, bp.Special(0, 0, 0, bp.BTP_LEAF), items)
    return page


def outcome(fn, page: bytearray):
    try:
        fn(page)
        err = None
    except (ValueError, AssertionError, struct.error, bp.BTreePageError, PageCorruptError) as e:
        err = (type(e).__name__, str(e))
    return bytes(page), err


action = st.one_of(
    st.tuples(st.just(bw.A_INSERT), st.integers(0, 60), st.integers(0, 3000)),
    st.tuples(st.just(bw.A_SET_XMAX), st.integers(0, 60), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(bw.A_SET_PREV), st.integers(0, 9), st.integers(0, 2**32 - 1)),
)


@needs_c


def action_data(code: int, a: int, b: int) -> bytes:
    """The data of a drawn action (code, a, b): an insert at offnum ``a`` of an item of
    ``b`` bytes, a set-xmax of offnum ``a`` to ``b``, a delete of offnums a, a + 3, ...
    (``b``'s bits pick some), else a set-prev to ``b``."""
    if code == bw.A_INSERT:
        return bw.insert_data(a, bytes([a % 250 + 1]) * b)
    if code == bw.A_SET_XMAX:
        return bw.set_xmax_data(a, b)
    if code == bw.A_DELETE:
        return bw.delete_data([a + 3 * j for j in range(16) if b >> j & 1])
    return bw.set_prev_data(b)


@settings(max_examples=300, deadline=None)
@given(nitems=st.integers(0, 40), size=st.integers(0, 120),
       acts=st.lists(st.tuples(st.integers(0, 1), action), min_size=1, max_size=30),
       damage=st.one_of(st.none(), st.tuples(st.sampled_from([14, 16, 18, 20]),
                                             st.integers(0, 0xFFFF))))
def test_c_btree_redo_matches_apply_action(nitems, size, acts, damage):
    """For leaves of 0..40 entries, a record's actions for blocks 0 and 1 interleaved —
    inserts (valid and out-of-range offnums, empty and too-big items), set-xmaxes (valid
    and bad offnums), set-prevs (left to Python) — and pages with a damaged header field
    or not: applying block 0's actions through the C path leaves the same bytes and raises
    the same error as apply_action one by one."""
    page = leaf(nitems, size)
    if damage is not None:
        struct.pack_into("<H", page, damage[0], damage[1])
    encoded = [(index, code, action_data(code, a, b)) for index, (code, a, b) in acts]
    payload = bw.encode_actions(encoded)
    mine = [(code, data) for index, code, data in bw.decode_actions(payload) if index == 0]

    def reference(p):
        for code, data in mine:
            bw.apply_action(p, code, data)

    want = outcome(reference, bytearray(page))
    got = outcome(lambda p: bw.apply_block_actions(p, payload, 0, mine), bytearray(page))
    assert got == want


@needs_c
def test_c_btree_redo_applies_a_run_of_inserts_and_xmaxes():
    """A run of valid inserts and set-xmaxes (what most KV writes log) is applied by the C
    path to the bytes apply_action gives, and no action is left over."""
    page = leaf(10, 50)
    acts = [(0, bw.A_INSERT, bw.insert_data(i + 1, bp.pack_entry(b"a%03d" % i, 5, 0, 0, b"x")))
            for i in range(20)] + [(0, bw.A_SET_XMAX, bw.set_xmax_data(3, 77))]
    payload = bw.encode_actions(acts)
    mine = [(code, data) for _i, code, data in acts]
    assert bw._lib.slk_bt_redo_actions(bw._ffi.from_buffer(bytearray(page)),
                                       bw._ffi.from_buffer(payload), len(payload), 0) == 21
    want = bytearray(page)
    for code, data in mine:
        bw.apply_action(want, code, data)
    got = bytearray(page)
    bw.apply_block_actions(got, payload, 0, mine)
    assert got == want and got != page
