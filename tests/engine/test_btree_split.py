"""The B+tree's split point choice: the bounded search (``_choose_split``) picks exactly
the split the full scan (``_choose_split_scan``, every candidate sized) picks."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from slonik.engine.access.btree import _choose_split, _choose_split_scan
from slonik.engine.access.btree_page import (
    KEY_MAX_BYTES,
    PAGE_CAPACITY_BYTES,
    item_cost,
    pack_entry,
    pack_pivot,
)

# Key lengths from tiny to the limit (high keys cost anything in between), values small to
# inline-large; a page holds a few to a few hundred of them.
_entries = st.lists(st.tuples(st.one_of(st.integers(0, 40), st.integers(0, KEY_MAX_BYTES)),
                              st.one_of(st.integers(0, 200), st.integers(0, 2000))),
                    min_size=1, max_size=60)


def _overfull(shapes: list[tuple[int, int]]) -> list[bytes]:
    """Leaf entries in key order, shaped by ``shapes`` taken round and round, whose total
    just passes a page (what a split sees)."""
    items, used = [], 0
    while used <= PAGE_CAPACITY_BYTES:
        klen, vlen = shapes[len(items) % len(shapes)]
        key = len(items).to_bytes(4, "big") + b"k" * max(0, klen - 4)
        item = pack_entry(key, 5, 0, 0, b"v" * vlen)
        items.append(item)
        used += item_cost(len(item))
    return items


@settings(max_examples=400, deadline=None)
@given(shapes=_entries, has_high=st.booleans(), high_len=st.integers(0, KEY_MAX_BYTES),
       at_end=st.booleans(), new_pos=st.integers(0, 1000))
def test_bounded_split_choice_equals_the_full_scan(shapes, has_high, high_len, at_end,
                                                   new_pos):
    """Random overfull leaves (key lengths 0..KEY_MAX_BYTES, so high keys of every cost),
    with or without an old high key, the new item at the end (fillfactor rule) or
    anywhere: both functions return the same index, whenever the scan finds a legal one."""
    items = _overfull(shapes)
    old_hk = pack_pivot(b"\xff" * high_len, 1, 0) if has_high else None
    new_index = len(items) - 1 if at_end else new_pos % len(items)
    try:
        expected = _choose_split_scan(items, True, old_hk, new_index)
    except AssertionError:  # no legal split for this made-up page: not a case to compare
        assume(False)
    assert _choose_split(items, True, old_hk, new_index) == expected
