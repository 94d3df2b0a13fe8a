"""B+tree vacuum's leaf judgement in one C call (slk_bt_leaf_vacuum through
btree.leaf_vacuum) against its Python reference (leaf_vacuum_py: unpack_entry and the
test per entry): the same dead offnums and the same out-of-line ones, for a KV store's
test on (xmin, xmax) and for a table index's dead heap TIDs; a leaf with a damaged entry
goes to the reference, which names it. Also vacuum's A_DELETE in C (slk_bt_apply_delete
through apply_action) against bt_delete_items."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree as btree_module
from slonik.engine.access.btree import DeadTids, leaf_vacuum, leaf_vacuum_py
from slonik.engine.access.btree_page import (
    BTP_LEAF,
    ENTRY_OVERFLOW,
    HEADER_SIZE,
    BTreePageError,
    Special,
    bt_build,
    bt_delete_items,
    pack_entry,
)
from slonik.engine.access.btree_wal import A_DELETE, apply_action, delete_data
from slonik.engine.database import DeadTest
from slonik.storage.page import BLCKSZ

needs_c = pytest.mark.skipif(not btree_module.C_LEAF_VACUUM,
                             reason="storage._pagecheck not built (no C compiler at install)")

# (key body, heap tid (block, offnum), xmin, xmax, out of line?)
ENTRIES = st.lists(st.tuples(st.binary(max_size=12), st.integers(0, 5), st.integers(1, 6),
                             st.integers(1, 40), st.integers(0, 40), st.booleans()),
                   max_size=60)


def build_leaf(entries, rightmost: bool) -> bytearray:
    """A leaf of ``entries`` (each key ends with its heap TID, big-endian, as a table
    index's does), behind a high key unless ``rightmost``."""
    items = [] if rightmost else [pack_entry(b"\xff" * 8, 0, 0, 0, b"")]
    for body, block, offnum, xmin, xmax, overflow in entries:
        key = body + struct.pack(">IH", block, offnum)
        items.append(pack_entry(key, xmin, xmax, ENTRY_OVERFLOW if overflow else 0,
                                bytes(16) if overflow else b"v"))
    page = bytearray(BLCKSZ)
    bt_build(page, Special(0, 0 if rightmost else 9, 0, BTP_LEAF), items)
    return page


@needs_c
@settings(max_examples=300, deadline=None)
@given(ENTRIES, st.booleans(), st.integers(0, 45), st.sets(st.integers(1, 40), max_size=3))
def test_kv_test_matches_the_reference(entries, rightmost, horizon, aborted):
    page = build_leaf(entries, rightmost)
    first = 1 if rightmost else 2
    test = DeadTest(horizon, set(aborted), set())
    ref_test = DeadTest(horizon, set(aborted), set())
    assert leaf_vacuum(memoryview(page), first, test, False) == \
        leaf_vacuum_py(memoryview(page), first, ref_test, False)
    assert test.referenced == ref_test.referenced


@needs_c
@settings(max_examples=300, deadline=None)
@given(ENTRIES, st.booleans(), st.sets(st.tuples(st.integers(0, 5), st.integers(1, 6)),
                                       max_size=12))
def test_table_index_tids_match_the_reference(entries, rightmost, dead):
    page = build_leaf(entries, rightmost)
    first = 1 if rightmost else 2
    got = leaf_vacuum(memoryview(page), first, DeadTids(dead), True)
    assert got == leaf_vacuum_py(memoryview(page), first, DeadTids(dead), True)
    want = [first + i for i, e in enumerate(entries) if (e[1], e[2]) in dead]
    assert got[0] == want


@needs_c
def test_a_damaged_entry_is_left_to_the_reference_which_names_it():
    page = build_leaf([(b"k", 1, 1, 5, 0, False), (b"m", 1, 2, 5, 0, False)], True)
    # entry 2's key length now runs past its item
    lp = int.from_bytes(page[HEADER_SIZE + 4:HEADER_SIZE + 8], "little")
    off = lp & 0x7FFF
    page[off + 17:off + 19] = (200).to_bytes(2, "little")
    flags = btree_module._ffi.new("uint8_t[]", 2)
    offs = btree_module._ffi.new("uint16_t[]", 2)
    assert btree_module._lib.slk_bt_leaf_vacuum(
        btree_module._ffi.from_buffer(page), 1, [1 << 16 | 1], 1, btree_module._ffi.NULL,
        btree_module._ffi.NULL, flags, offs) == -1
    with pytest.raises(BTreePageError, match="key length 200"):
        leaf_vacuum(memoryview(page), 1, DeadTids({(1, 1)}), True)


@settings(max_examples=200, deadline=None)
@given(ENTRIES, st.booleans(), st.data())
def test_vacuum_delete_in_c_matches_bt_delete_items(entries, rightmost, data):
    page = build_leaf(entries, rightmost)
    first = 1 if rightmost else 2
    offnums = data.draw(st.lists(st.integers(first, first + len(entries) - 1), unique=True)
                        if entries else st.just([]))
    c_page, py_page = bytearray(page), bytearray(page)
    apply_action(memoryview(c_page), A_DELETE, delete_data(offnums))
    bt_delete_items(memoryview(py_page), offnums)
    assert c_page == py_page
