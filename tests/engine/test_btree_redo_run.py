"""Runs of single-block B+tree records redone in one C call (slk_bt_redo_run, through
engine.access.btree_wal.redo_leaf_run, what recovery uses for most KV and index records)
leave the pages exactly as the Python reference redo_leaf_run_py does record by record:
the same bytes on every page, the same changed flags, the same error for a bad action."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_page as bp
from slonik.engine.access import btree_wal as bw
from slonik.storage.page import BLCKSZ, PageCorruptError

from tests.engine.test_btree_redo_c import action_data

needs_c = pytest.mark.skipif(not bw.C_REDO_RUN,
                             reason="storage._pagecheck not built (no C compiler at install)")

BASE_LSN = 1 << 20


def leaf_into(page, nitems: int, size: int, lsn: int) -> None:
    items = [bp.pack_entry(b"k%05d" % i, i + 1, 0, 0, b"v" * size) for i in range(nitems)]
    bp.bt_build(page, bp.Special(0, 0, 0, bp.BTP_LEAF), items)
    struct.pack_into("<Q", page, 0, lsn)


def outcome(fn):
    try:
        return fn(), None
    except (ValueError, AssertionError, struct.error, bp.BTreePageError,
            PageCorruptError) as e:
        return None, (type(e).__name__, str(e))


action = st.one_of(
    st.tuples(st.just(bw.A_INSERT), st.integers(0, 45), st.integers(0, 300)),
    st.tuples(st.just(bw.A_SET_XMAX), st.integers(0, 45), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(bw.A_SET_PREV), st.integers(0, 9), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(bw.A_DELETE), st.integers(0, 45), st.integers(0, 2**16 - 1)),
)
record = st.tuples(st.integers(0, 3),                        # the page (buffer) it changes
                   st.lists(st.tuples(st.integers(0, 1), action), max_size=6),
                   st.booleans())                            # a truncated payload


@needs_c
@settings(max_examples=300, deadline=None)
@given(pages=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60), st.integers(0, 8)),
                      min_size=4, max_size=4),
       records=st.lists(record, min_size=1, max_size=12))
def test_c_redo_run_equals_reference(pages, records):
    """Four leaves (0..40 entries, page LSNs below, inside and past the run's record ends)
    and a run of 1..12 records on them (pages repeating: a run of records for one page),
    each with 0..6 actions for block 0 and block 1 interleaved: inserts with valid and
    out-of-range offnums and empty or too-big items, set-xmaxes on good and bad offnums,
    deletes of valid and out-of-range offnums (C's slk_bt_apply_delete), set-prevs
    (refused by C, applied by Python), now and then a payload cut short: the C
    run gives the same page bytes, the same changed flags and the same error as the
    reference applying record by record."""
    pool = bytearray(4 * BLCKSZ)
    for i, (nitems, size, lsn_step) in enumerate(pages):
        leaf_into(memoryview(pool)[i * BLCKSZ:(i + 1) * BLCKSZ], nitems, size,
                  BASE_LSN + lsn_step * 100)
    bufs, payloads, ends = [], [], []
    for k, (buf, acts, cut) in enumerate(records):
        payload = bw.encode_actions([(index, code, action_data(code, a, b))
                                     for index, (code, a, b) in acts])
        if cut and payload:
            payload = payload[:-1]
        bufs.append(buf)
        payloads.append(payload)
        ends.append(BASE_LSN + 100 * (k + 1))

    ref_pool = bytearray(pool)
    ref_mv = memoryview(ref_pool)
    want = outcome(lambda: bw.redo_leaf_run_py(
        [ref_mv[b * BLCKSZ:(b + 1) * BLCKSZ] for b in bufs], payloads, ends))
    mv = memoryview(pool)
    views = [mv[b * BLCKSZ:(b + 1) * BLCKSZ] for b in range(4)]
    got = outcome(lambda: list(bw.redo_leaf_run(bw._ffi.from_buffer(pool), views, bufs,
                                                payloads, ends)))
    assert got == want
    assert pool == ref_pool


@needs_c
def test_c_redo_run_applies_inserts_once():
    """A run of valid inserts on one leaf, given twice (replay after a crash in the middle
    of recovery): the first pass changes the page per record and stamps the last record's
    end; the second finds every record done (changed all 0) and leaves the bytes alone."""
    pool = bytearray(BLCKSZ)
    leaf_into(memoryview(pool), 5, 20, BASE_LSN)
    payloads = [bw.encode_actions([(0, bw.A_INSERT, bw.insert_data(
        1, bp.pack_entry(b"a%03d" % i, 9, 0, 0, b"x" * 30)))]) for i in range(10)]
    ends = [BASE_LSN + 64 * (i + 1) for i in range(10)]
    views = [memoryview(pool)]
    first = list(bw.redo_leaf_run(bw._ffi.from_buffer(pool), views, [0] * 10, payloads, ends))
    after = bytes(pool)
    again = list(bw.redo_leaf_run(bw._ffi.from_buffer(pool), views, [0] * 10, payloads, ends))
    assert first == [1] * 10 and again == [0] * 10
    assert bytes(pool) == after
    assert struct.unpack_from("<Q", pool, 0)[0] == ends[-1]
    assert len(bp.bt_items(pool)) == 15
