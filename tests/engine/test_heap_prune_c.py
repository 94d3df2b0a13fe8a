"""The C heap page prune (slk_heap_prune through heap.prune_items) against its Python
reference (prune_items_py: page_delete_item of each offnum, then page_compact): the same
offnums pruned and the same page bytes, for vacuum's call (only NORMAL tuples whose
header is what was judged) and for a PRUNE record's redo; a page the C call will not
change safely is left as it was and the reference raises naming the flaw."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import heap as heap_module
from slonik.engine.access.heap import prune_items, prune_items_py
from slonik.engine.access.tuple import pack_tuple
from slonik.storage.page import (
    BLCKSZ,
    HEADER_SIZE,
    LpFlag,
    PageCorruptError,
    init_page,
    page_add_item,
    page_item_count,
    page_item_flags,
    page_set_item_flags,
)

needs_c = pytest.mark.skipif(not heap_module.C_PRUNE,
                             reason="storage._pagecheck not built (no C compiler at install)")

# one tuple: (xmin, xmax, flags, data length); what happens to its line pointer after
TUPLES = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40), st.integers(0, 3),
                            st.integers(0, 300), st.sampled_from(["keep", "dead", "unused"])),
                  min_size=1, max_size=40)


def build_page(tuples) -> tuple[bytearray, dict[int, tuple[int, int, int]]]:
    """A heap page of ``tuples`` (those that fit), some line pointers then made DEAD or
    UNUSED; the header (xmin, xmax, flags) of each offnum added."""
    page = bytearray(BLCKSZ)
    init_page(page)
    heads = {}
    fates = {}
    for xmin, xmax, flags, n, fate in tuples:
        item = pack_tuple(xmin, xmax, flags, bytes([xmin % 251]) * n)
        try:
            off = page_add_item(page, item)
        except Exception:  # full: the rest stay out
            break
        heads[off] = (xmin, xmax, flags)
        fates[off] = fate
    for off, fate in fates.items():  # (after all adds: an UNUSED pointer is not reused)
        if fate == "dead":
            page_set_item_flags(page, off, LpFlag.DEAD)
        elif fate == "unused":
            page_set_item_flags(page, off, LpFlag.UNUSED)
    return page, heads


@needs_c
@settings(max_examples=300, deadline=None)
@given(TUPLES, st.data())
def test_vacuum_prune_matches_the_reference(tuples, data):
    page, heads = build_page(tuples)
    count = page_item_count(page)
    offnums = data.draw(st.lists(st.integers(1, count + 3), max_size=12))
    expect = ([], [], [])
    for off in offnums:
        head = heads.get(off, (1, 0, 0))
        if data.draw(st.booleans()):  # judged on a header that changed since
            head = (head[0], head[1] + 1, head[2])
        for column, value in zip(expect, head, strict=True):
            column.append(value)
    c_page, py_page = bytearray(page), bytearray(page)
    got = prune_items(memoryview(c_page), offnums, expect)
    want = prune_items_py(memoryview(py_page), offnums, expect)
    assert got == want
    assert c_page == py_page
    for off in got:
        assert off > page_item_count(c_page) or page_item_flags(c_page, off) == LpFlag.UNUSED


@needs_c
@settings(max_examples=300, deadline=None)
@given(TUPLES, st.data())
def test_redo_prune_matches_the_reference(tuples, data):
    page, _heads = build_page(tuples)
    live = [off for off in range(1, page_item_count(page) + 1)
            if page_item_flags(page, off) != LpFlag.UNUSED]
    offnums = data.draw(st.lists(st.sampled_from(live), unique=True) if live else st.just([]))
    c_page, py_page = bytearray(page), bytearray(page)
    assert prune_items(memoryview(c_page), offnums, None) == \
        prune_items_py(memoryview(py_page), offnums, None) == offnums
    assert c_page == py_page


@needs_c
def test_a_redo_of_an_unused_pointer_raises_as_the_reference_does():
    page, _heads = build_page([(5, 0, 0, 10, "unused"), (6, 0, 0, 10, "keep")])
    before = bytes(page)
    assert heap_module._lib.slk_heap_prune(heap_module._ffi.from_buffer(page), 1, [1],
                                           heap_module._ffi.NULL, heap_module._ffi.NULL,
                                           heap_module._ffi.NULL,
                                           heap_module._ffi.new("uint16_t[]", 1)) == -1
    assert bytes(page) == before    # refused: nothing changed
    with pytest.raises(ValueError, match="cannot go from UNUSED to UNUSED"):
        prune_items(memoryview(page), [1], None)


@needs_c
def test_a_corrupt_line_pointer_is_left_to_the_reference_which_names_it():
    page, heads = build_page([(5, 7, 0, 10, "keep"), (6, 7, 0, 10, "keep")])
    # line pointer 2 now points past special
    lp = int.from_bytes(page[HEADER_SIZE + 4:HEADER_SIZE + 8], "little")
    lp = (lp & ~0x7FFF) | (BLCKSZ - 8)
    page[HEADER_SIZE + 4:HEADER_SIZE + 8] = lp.to_bytes(4, "little")
    before = bytes(page)
    out = heap_module._ffi.new("uint16_t[]", 1)
    assert heap_module._lib.slk_heap_prune(heap_module._ffi.from_buffer(page), 1, [1],
                                           [5], [7], [0], out) == -1
    assert bytes(page) == before
    with pytest.raises(PageCorruptError, match="line pointer 2"):
        prune_items(memoryview(page), [1], ([5], [7], [0]))
