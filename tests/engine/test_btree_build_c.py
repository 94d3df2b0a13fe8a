"""The C page rebuild of B+tree actions (slk_bt_apply_build, through btree_wal.apply_action)
does to a page exactly what apply_action_py does for A_INIT and A_SPLIT_LEFT: the same
bytes, or the same error (the C call refuses and the reference raises), on arbitrary
pages and actions, damaged ones included."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_page as bp
from slonik.engine.access import btree_wal as bw
from slonik.storage.page import BLCKSZ

needs_c = pytest.mark.skipif(not bw.C_APPLY_BUILD,
                             reason="storage._pagecheck not built (no C compiler at install)")


def page_of(nitems: int, size: int, high: bool, lsn: int) -> bytearray:
    page = bytearray(BLCKSZ)
    nitems = min(nitems, 7900 // (size + 40))  # what fits
    items = [bp.pack_entry(b"k%05d" % i, i + 1, 0, 0, b"v" * size) for i in range(nitems)]
    if high:
        items.insert(0, bp.pack_pivot(b"k99999", bp.XMIN_MAX, 0))
    bp.bt_build(page, bp.Special(3, 7 if high else 0, 0, bp.BTP_LEAF), items,
                struct.pack("<Q", lsn))
    return page


def outcome(fn, page: bytearray):
    """(page bytes after ``fn``, the error it raised or None)."""
    try:
        fn(page)
        err = None
    except (ValueError, AssertionError, struct.error, bp.BTreePageError, IndexError) as e:
        err = (type(e).__name__, str(e))
    return bytes(page), err


def both(page: bytearray, code: int, data: bytes) -> None:
    c = outcome(lambda p: bw.apply_action(p, code, data), bytearray(page))
    py = outcome(lambda p: bw.apply_action_py(p, code, data), bytearray(page))
    assert c == py


items = st.lists(st.binary(min_size=0, max_size=900), max_size=30)
special = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                    st.integers(0, 3), st.integers(0, 0xffff), st.integers(0, 0xffff))


@needs_c
@settings(max_examples=300, deadline=None)
@given(nitems=st.integers(0, 40), size=st.integers(0, 200), high=st.booleans(),
       spec=special, its=items, cut=st.integers(0, 40), extra=st.binary(max_size=3))
def test_c_init_equals_reference(nitems, size, high, spec, its, cut, extra):
    """A_INIT of random items (empty ones, ones that do not fit, a truncated or padded
    payload) over a random page: C and reference agree on bytes or error."""
    data = bw.init_data(bp.Special(*spec[:4]), its)
    data = data[:max(0, len(data) - cut)] + extra if cut or extra else data
    both(page_of(nitems, size, high, 77), bw.A_INIT, data)


@needs_c
@settings(max_examples=400, deadline=None)
@given(nitems=st.integers(0, 60), size=st.integers(0, 120), high=st.booleans(),
       keep=st.integers(0, 70), new_index=st.integers(-3, 70), spec=special,
       hk=st.binary(max_size=40), new_item=st.binary(max_size=300),
       damage=st.one_of(st.none(), st.tuples(st.integers(0, BLCKSZ - 1),
                                             st.integers(0, 255))),
       short=st.integers(0, 3))
def test_c_split_left_equals_reference(nitems, size, high, keep, new_index, spec, hk,
                                       new_item, damage, short):
    """A_SPLIT_LEFT with random keep / new index / high key / new item over random leaves
    (a byte of the page damaged, or the high key length past the payload, sometimes): C
    and reference agree on bytes or error, LSN kept."""
    page = page_of(nitems, size, high, 1234)
    if damage is not None:
        page[damage[0]] = damage[1]
    data = bw.split_left_data(keep, new_index, bp.Special(*spec[:4]), hk, new_item)
    if short:
        data = data[:20] + b"x" * short  # high key length past the end of the payload
    both(page, bw.A_SPLIT_LEFT, data)


@needs_c
def test_c_split_left_of_a_full_leaf_rebuilds_its_left_half():
    """A real split's left half: the high key first, the kept items, the new item in
    place, LSN kept, byte for byte the reference's."""
    page = page_of(50, 100, True, 99)
    data = bw.split_left_data(20, 5, bp.Special(3, 8, 0, bp.BTP_LEAF),
                              bp.pack_pivot(b"k00020", 21, 0),
                              bp.pack_entry(b"k00004x", 9, 0, 0, b"new"))
    c, py = bytearray(page), bytearray(page)
    bw.apply_action(c, bw.A_SPLIT_LEFT, data)
    bw.apply_action_py(py, bw.A_SPLIT_LEFT, data)
    assert c == py
    got = bp.bt_items(c)
    assert len(got) == 22 and bp.entry_key(got[6]) == (b"k00004x", 9)
    assert c[:8] == struct.pack("<Q", 99)


@given(lengths=st.lists(st.integers(0, 9000), max_size=50))
def test_item_costs_equal_item_cost(lengths):
    """item_costs (C-level maps) gives item_cost of every length."""
    assert list(bp.item_costs(lengths)) == [bp.item_cost(n) for n in lengths]
