"""INSERT_MULTI redo in C (slk_heap_redo_multi, through engine.access.heap.redo_insert_multi)
does to a page exactly what its Python reference (page_add_item per item) does: the same
bytes, and the same error for an item that cannot be added, after the same items."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import heap
from slonik.storage.page import (
    BLCKSZ,
    PageFullError,
    init_page,
    page_add_item,
    page_delete_item,
    page_item_count,
)

needs_c = pytest.mark.skipif(not heap.C_REDO_MULTI,
                             reason="storage._pagecheck not built (no C compiler at install)")

_MULTI = struct.Struct("<HH")
_ITEM = struct.Struct("<HH")


def start_page(sizes: list[int], deleted: list[int], special: int) -> bytearray:
    """A page with items of ``sizes`` bytes (as many as fit: the rest are left out), the
    ones at the ``deleted`` indexes made UNUSED (their line pointers stay, free for
    reuse)."""
    page = bytearray(BLCKSZ)
    init_page(page, special)
    for i, n in enumerate(sizes):
        try:
            page_add_item(page, bytes([i % 251 + 1]) * n)
        except PageFullError:
            break
    for d in sorted(set(deleted)):
        if d < page_item_count(page):
            page_delete_item(page, d + 1)
    return page


def outcome(fn, page: bytearray, payload: bytes):
    try:
        fn(page, payload)
        err = None
    except (ValueError, AssertionError, struct.error) as e:
        err = (type(e).__name__, str(e))
    return bytes(page), err


def reference(page, payload: bytes) -> None:
    count = _MULTI.unpack_from(payload)[0]
    heap.redo_insert_multi_py(page, payload, _MULTI.size, count)


item_offnums = st.one_of(st.integers(0, 3), st.integers(1, 300), st.just(-1))  # -1: next new


@needs_c
@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(1, 600), max_size=30),
       deleted=st.lists(st.integers(0, 29), max_size=6),
       special=st.sampled_from([0, 16]),
       items=st.lists(st.tuples(item_offnums, st.integers(0, 2500)), min_size=1, max_size=40),
       cut=st.one_of(st.none(), st.integers(0, 200)),
       count_delta=st.sampled_from([0, 0, 0, 1, -1]))
def test_c_insert_multi_redo_matches_page_add_item(sizes, deleted, special, items, cut,
                                                   count_delta):
    """For pages with used and UNUSED line pointers and payloads whose items are valid
    (the next new line pointer, a reused UNUSED one) or not (in use, out of range, empty,
    too big for the room left), with a count that may disagree with the items and a
    payload that may be cut short: the C path and the reference leave identical page
    bytes and raise the same error (type and message)."""
    page = start_page(sizes, deleted, special)
    nlp = page_item_count(page)
    parts, n = [], nlp
    for offnum, length in items:
        if offnum == -1:
            offnum = n + 1
        n = max(n, offnum)
        parts.append(_ITEM.pack(offnum, length) + bytes([length % 253 + 1]) * length)
    body = b"".join(parts)
    if cut is not None:
        body = body[:max(0, len(body) - cut)]
    payload = _MULTI.pack(max(0, len(items) + count_delta), 0) + body
    want = outcome(reference, bytearray(page), payload)
    got = outcome(heap.redo_insert_multi, bytearray(page), payload)
    assert got == want


@needs_c
def test_c_insert_multi_redo_fills_a_page_like_the_reference():
    """A whole page's worth of 100-byte tuples (the WAL of insert_many) is added by the C
    path in one call to the same bytes as item by item."""
    page = start_page([], [], 0)
    items = [_ITEM.pack(i + 1, 124) + bytes([i]) * 124 for i in range(60)]
    payload = _MULTI.pack(60, 0) + b"".join(items)
    want = outcome(reference, bytearray(page), payload)
    got = outcome(heap.redo_insert_multi, bytearray(page), payload)
    assert got == want and want[1] is None and page_item_count(bytearray(want[0])) == 60
