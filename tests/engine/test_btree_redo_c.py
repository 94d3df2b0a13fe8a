"""B+tree redo in C (slk_bt_redo_actions, through engine.access.btree_wal.apply_block_actions)
does to a page exactly what apply_action does action by action: the same bytes, and the
same error for an action that cannot be applied, after the same actions."""

from __future__ import annotations

import struct
import subprocess
import sys

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


block_action = st.one_of(
    action,
    st.tuples(st.just(bw.A_DELETE), st.integers(0, 45), st.integers(0, 2**16 - 1)),
    st.tuples(st.just(bw.A_SET_NEXT), st.integers(0, 9), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(bw.A_SET_CHILD), st.integers(0, 45), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(bw.A_INIT), st.integers(0, 30), st.integers(0, 300)),
    st.tuples(st.just(bw.A_SPLIT_LEFT), st.integers(0, 45), st.integers(-1, 45)),
)


def block_action_data(code: int, a: int, b: int) -> bytes:
    """``action_data``, and: a set-next to ``b``; a set-child of offnum ``a``; an A_INIT of
    ``a`` items of ``b`` bytes (a leaf, or with b > 250 an item too big for the page); a
    split-left keeping ``a`` items, the new item at ``b`` (-1: none)."""
    if code == bw.A_SET_NEXT:
        return bw.set_next_data(b)
    if code == bw.A_SET_CHILD:
        return bw.set_child_data(a, b)
    if code == bw.A_INIT:
        items = [bp.pack_entry(b"n%05d" % i, i + 1, 0, 0, b"w" * b) for i in range(a)]
        return bw.init_data(bp.Special(3, 0, 0, bp.BTP_LEAF), items)
    if code == bw.A_SPLIT_LEFT:
        return bw.split_left_data(a, b, bp.Special(0, 9, 0, bp.BTP_LEAF),
                                  bp.pack_entry(b"k99999", 0, 0, 0, b""),
                                  bp.pack_entry(b"k00000x", 7, 0, 0, b"new"))
    return action_data(code, a, b)


@needs_c
@settings(max_examples=400, deadline=None)
@given(nitems=st.integers(0, 40), size=st.integers(0, 120),
       acts=st.lists(st.tuples(st.integers(0, 1), block_action), min_size=1, max_size=12),
       truncate=st.integers(0, 7))
def test_c_redo_block_matches_apply_action_py(nitems, size, acts, truncate):
    """A block's actions applied by ``apply_payload_actions`` (one C call as far as C
    goes: slk_bt_redo_block; then apply_action from the one it stopped at) leave the page
    as ``apply_action_py`` one by one does, and raise the same error after the same
    actions: inserts, set-xmaxes, deletes, set-prev/next/child (good and bad offnums),
    page rebuilds that fit and that do not, for blocks 0 and 1 interleaved; with the last
    action's data cut short by ``truncate`` bytes or not. ``block_action_counts`` counts
    each block's actions and names the first's code as decoding does."""
    encoded = [(index, code, block_action_data(code, a, b)) for index, (code, a, b) in acts]
    if truncate:
        index, code, data = encoded[-1]
        encoded[-1] = (index, code, data[:max(0, len(data) - truncate)])
    payload = bw.encode_actions(encoded)
    decoded = bw.decode_actions(payload)
    counts = bw.block_action_counts(payload, 2)
    for index in (0, 1):
        mine = [(code, data) for i, code, data in decoded if i == index]
        assert counts[index] == (len(mine), mine[0][0] if mine else 0)

        def reference(p, mine=mine):
            for code, data in mine:
                bw.apply_action_py(p, code, data)

        def c_path(p, index=index, mine=mine):
            bw.apply_payload_actions(p, payload, index, len(mine))

        assert outcome(c_path, leaf(nitems, size)) == outcome(reference, leaf(nitems, size))


@needs_c
def test_block_action_counts_reject_a_bad_layout_as_decoding_does():
    """A payload whose last action's length runs past its end, or with an unknown code:
    ``block_action_counts`` raises decode_actions' ValueError."""
    good = bw.encode_actions([(0, bw.A_SET_PREV, bw.set_prev_data(5))])
    for bad in (good[:-1], bytes([0, 9, 0, 0, 0, 0])):
        with pytest.raises(ValueError, match="btree action at 0"):
            bw.block_action_counts(bad, 1)


_GC_AFTER_A_REFUSED_ACTION = r'''
import gc
from slonik.aio.memory import aligned_buffer
from slonik.engine.access import btree_page as bp
from slonik.engine.access import btree_wal as bw

def run():
    mem = aligned_buffer(4 * 8192)                 # as the buffer pool's memory
    page = memoryview(mem)[8192:16384]
    items = [bp.pack_entry(b"k%05d" % i, i + 1, 0, 0, b"v" * 10) for i in range(5)]
    bp.bt_build(page, bp.Special(0, 0, 0, bp.BTP_LEAF), items)
    payload = bw.encode_actions([(0, bw.A_INSERT, bw.insert_data(2, b"x" * 5)),
                                 (0, bw.A_INSERT, bw.insert_data(999, b"y"))])
    actions = [(c, d) for i, c, d in bw.decode_actions(payload) if i == 0]
    keep = []
    try:
        bw._apply_from(page, payload, 0, actions, 0)
    except ValueError as e:
        keep.append(e)
        keep.append(keep)                          # the error's traceback in a cycle

for _ in range(50):
    run()
    gc.collect()
print("survived")
'''


@needs_c
def test_a_refused_action_leaves_no_page_export_for_the_collector():
    """An action C refuses and apply_action raises for (an insert at offnum 999), applied
    to a page of pool-like memory by ``_apply_from``, its error kept in a reference cycle,
    then the cyclic collector: the process survives. A page's C export kept in the
    raising frame made CPython 3.11's collector crash (SIGSEGV) clearing the view; run in
    a subprocess so that a crash fails the test instead of ending the run."""
    proc = subprocess.run([sys.executable, "-c", _GC_AFTER_A_REFUSED_ACTION],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr)
