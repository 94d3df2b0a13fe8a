"""The B+tree page edits (engine/access/btree_page.py) against storage.page: building a
page in one pass and inserting an item in the middle give exactly the bytes of
``init_page`` + ``page_add_item`` (+ rotating the new line pointer into place), and the
results pass ``page_check``; the redo action codec round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_page as bp
from slonik.engine.access.btree_wal import (
    A_DELETE,
    A_INIT,
    A_INSERT,
    A_SET_XMAX,
    apply_action,
    decode_actions,
    delete_data,
    encode_actions,
    init_data,
    insert_data,
    set_xmax_data,
)
from slonik.storage.page import (
    BLCKSZ,
    HEADER_SIZE,
    LINE_POINTER_SIZE,
    init_page,
    page_add_item,
    page_check,
)

items_st = st.lists(st.binary(min_size=1, max_size=300), max_size=40)
special_st = st.builds(bp.Special, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                       st.integers(0, 5), st.sampled_from([0, bp.BTP_LEAF, bp.BTP_ROOT]))


def reference_build(special: bp.Special, items) -> bytearray:
    page = bytearray(BLCKSZ)
    init_page(page, bp.SPECIAL_SIZE)
    bp.bt_set_special(page, special)
    for item in items:
        page_add_item(page, item)
    return page


@settings(max_examples=200, deadline=None)
@given(special=special_st, items=items_st, lsn=st.binary(min_size=8, max_size=8))
def test_build_equals_init_and_add_item(special, items, lsn):
    """bt_build writes the same bytes as init_page + page_add_item per item (LSN aside),
    and the page is well formed."""
    page = bytearray(BLCKSZ)
    bp.bt_build(page, special, items, lsn)
    ref = reference_build(special, items)
    assert page[8:] == ref[8:] and page[:8] == lsn
    page_check(page)
    assert bp.bt_items(page) == items and bp.bt_special(page) == special


@settings(max_examples=200, deadline=None)
@given(special=special_st, items=items_st, new=st.binary(min_size=1, max_size=300),
       where=st.integers(0, 40))
def test_insert_item_equals_add_item_and_rotate(special, items, new, where):
    """bt_insert_item equals page_add_item of the item followed by moving its line
    pointer to offnum ``where``; the items read back in the new order."""
    offnum = where % (len(items) + 1) + 1
    page = reference_build(special, items)
    ref = bytearray(page)
    bp.bt_insert_item(page, offnum, new)
    page_add_item(ref, new)
    at = HEADER_SIZE + (offnum - 1) * LINE_POINTER_SIZE
    end = HEADER_SIZE + len(items) * LINE_POINTER_SIZE
    ref[at:end + LINE_POINTER_SIZE] = ref[end:end + LINE_POINTER_SIZE] + ref[at:end]
    assert page == ref
    page_check(page)
    assert bp.bt_items(page) == items[:offnum - 1] + [new] + items[offnum - 1:]


def test_insert_item_refuses_what_does_not_fit():
    """A full page refuses one more item with a ValueError and stays unchanged."""
    page = bytearray(BLCKSZ)
    bp.bt_build(page, bp.Special(0, 0, 0, bp.BTP_LEAF), [b"x" * 4000, b"y" * 4000])
    before = bytes(page)
    with pytest.raises(ValueError, match="does not fit"):
        bp.bt_insert_item(page, 1, b"z" * 200)
    assert bytes(page) == before
    with pytest.raises(ValueError, match="do not fit"):
        bp.bt_build(page, bp.Special(0, 0, 0, 0), [b"x" * 4100, b"y" * 4100])


@settings(max_examples=100, deadline=None)
@given(special=special_st, items=items_st, data=st.data())
def test_actions_round_trip_and_apply(special, items, data):
    """Encoded actions decode to themselves; INIT then INSERT/SET_XMAX/DELETE applied to a
    page give the page the equivalent direct edits give."""
    entries = [bp.pack_entry(i, 1, 0, 0, b"") for i in items]
    new = bp.pack_entry(b"new", 2, 0, 0, b"v")
    pos = data.draw(st.integers(1, len(entries) + 1))
    actions = [(0, A_INIT, init_data(special, entries)), (0, A_INSERT, insert_data(pos, new))]
    if entries:
        actions.append((0, A_SET_XMAX, set_xmax_data(1, 77)))
        actions.append((0, A_DELETE, delete_data([len(entries) + 1])))
    payload = encode_actions(actions)
    assert decode_actions(payload) == actions
    page = bytearray(BLCKSZ)
    for _i, code, blob in decode_actions(payload):
        apply_action(page, code, blob)
    expect = entries[:pos - 1] + [new] + entries[pos - 1:]
    if entries:
        first = bytearray(expect[0])
        first[8:16] = (77).to_bytes(8, "little")
        expect = [bytes(first)] + expect[1:-1]
    assert bp.bt_items(page) == expect
    page_check(page)
