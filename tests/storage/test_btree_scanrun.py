"""slk_bt_extract_run (engine/access/btree_scanrun.py: extract_run) agrees with its Python
reference extract_run_py on random runs of leaves (chains broken or not, DELETED pages,
out-of-line entries, high keys reaching stop, uniform and mixed lengths, damaged pages),
and the reference agrees with the rule it implements: one-leaf extraction page by page
along the right-link chain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_page as bp
from slonik.engine.access import btree_scanrun as sr
from slonik.storage.page import BLCKSZ

needs_c = pytest.mark.skipif(not sr.C_EXTRACT_RUN,
                             reason="storage._pagecheck not built (no C compiler at install)")

few_keys = st.sampled_from([b"", b"a", b"ab", b"b", b"ba", b"bb", b"c", b"\xff"])
xids = st.integers(1, 40)


def leaf(entries, high, nxt: int, flags: int, uniform: int | None) -> bytes:
    """A leaf of ``entries`` [(key, xmin, xmax, out_of_line)] in tree order, high key
    ``high`` (key) or none, right-link ``nxt``; payloads of ``uniform`` bytes (keys then
    padded to 2 bytes), or with None of a length that varies with xmin."""
    seen = {}
    for k, xmin, xmax, ool in entries:
        key = k if uniform is None else k.ljust(2, b"_")
        seen.setdefault((key, xmin), (xmax, ool))
    items = [bp.pack_entry(k, xmin, seen[(k, xmin)][0],
                           bp.ENTRY_OVERFLOW if seen[(k, xmin)][1] else 0,
                           b"p" * (xmin % 7 if uniform is None else uniform))
             for k, xmin in sorted(seen, key=lambda e: (e[0], -e[1]))]
    if high is not None:
        items.insert(0, bp.pack_pivot(high, 3, 0))
    page = bytearray(BLCKSZ)
    bp.bt_rebuild(page, bp.Special(0, nxt, 0, flags), items)
    return bytes(page)


pages_st = st.lists(
    st.tuples(st.lists(st.tuples(few_keys, xids, st.integers(0, 40),
                                 st.integers(0, 9).map(lambda r: r == 0)), max_size=40),
              st.one_of(st.none(), few_keys),            # high key (none: \xff\xff)
              st.integers(0, 9),                          # 0: a broken link, 1: DELETED
              st.booleans()),                             # rightmost if last
    min_size=1, max_size=5)


def build_run(spec, uniform: int | None):
    blocks = [10 + 3 * k for k in range(len(spec))]
    pages = []
    for k, (entries, high, kind, rightmost) in enumerate(spec):
        last = k == len(spec) - 1
        nxt = 0 if last and rightmost else (blocks[k + 1] if not last else 99)
        if kind == 0:
            nxt = 7  # a link that breaks the chain
        flags = bp.BTP_LEAF | (bp.BTP_DELETED if kind == 1 else 0)
        high = None if nxt == 0 else (b"\xff\xff" if high is None else high)
        pages.append(leaf(entries, high, nxt, flags, uniform))
    return b"".join(pages), blocks


@needs_c
@settings(max_examples=300, deadline=None)
@given(spec=pages_st, uniform=st.sampled_from([None, 0, 5]), start=st.one_of(st.none(), few_keys),
       stop=st.one_of(st.none(), few_keys), snap_xmax=st.integers(1, 45),
       own=st.integers(0, 45), excluded=st.sets(xids, max_size=8), values=st.booleans(),
       expect_first=st.booleans(), first=st.integers(0, 2))
def test_c_extract_run_equals_reference(spec, uniform, start, stop, snap_xmax, own, excluded,
                                        values, expect_first, first):
    """extract_run (one C call) gives what extract_run_py gives: pages taken, done, the
    last right-link, the count and the same pairs, from any first page of the run."""
    pages, blocks = build_run(spec, uniform)
    first = min(first, len(blocks) - 1)
    ex = tuple(sorted(excluded))
    expect = blocks[first] if expect_first else None
    got = sr.extract_run(pages, first, blocks, expect, start, stop, snap_xmax, own, ex, values)
    ref = sr.extract_run_py(pages[first * BLCKSZ:], blocks[first:], expect, start, stop,
                            snap_xmax, own, ex, values)
    assert got[:4] == ref[:4]
    assert list(got[4]) == ref[4]


@settings(max_examples=200, deadline=None)
@given(spec=pages_st, uniform=st.sampled_from([None, 0, 5]), start=st.one_of(st.none(), few_keys),
       stop=st.one_of(st.none(), few_keys), snap_xmax=st.integers(1, 45),
       values=st.booleans())
def test_reference_is_one_leaf_extraction_along_the_chain(spec, uniform, start, stop,
                                                          snap_xmax, values):
    """extract_run_py takes the longest prefix of live leaves linked by right-links whose
    visible entries are inline, ending after a page that reaches ``stop`` or has no
    right-link; its pairs are extract_cut_py's of those pages, concatenated."""
    pages, blocks = build_run(spec, uniform)
    taken, done, nxt, count, pairs = sr.extract_run_py(pages, blocks, None, start, stop,
                                                       snap_xmax, 0, (), values)
    want, expect_done, k, link = [], False, 0, None
    while k < len(blocks):
        page = pages[k * BLCKSZ:(k + 1) * BLCKSZ]
        special = bp.bt_special(page)
        if (link is not None and blocks[k] != link) or special.flags & bp.BTP_DELETED:
            break
        flags, flat, cut = bp.extract_cut_py(page, start, stop, snap_xmax, 0, (), values)
        if flags & bp.EXTRACT_OVERFLOW:
            break
        it = iter(cut)
        want += list(zip(it, it, strict=True)) if values else [(c, None) for c in cut]
        k += 1
        link = special.next
        if flags & bp.EXTRACT_DONE or special.next == bp.P_NONE:
            expect_done = bool(flags & bp.EXTRACT_DONE)
            break
    assert (taken, done, count, pairs) == (k, expect_done, len(want), want)
    assert nxt == (-1 if k == 0 else link)


@needs_c
def test_c_extract_run_leaves_a_damaged_page_to_the_caller():
    """A page the C reader cannot read safely (pd_lower past the special space) is not
    taken: the run stops before it, with the pages before it extracted."""
    good = leaf([(b"a", 1, 0, False)], b"b", 11, bp.BTP_LEAF, 5)
    bad = bytearray(leaf([(b"c", 1, 0, False)], None, 0, bp.BTP_LEAF, 5))
    bad[14:16] = (BLCKSZ).to_bytes(2, "little")
    got = sr.extract_run(good + bytes(bad), 0, [10, 11], None, None, None, 5, 0, (), True)
    assert got[:4] == (1, False, 11, 1)
    assert list(got[4]) == [(b"a_", b"ppppp")]


@needs_c
def test_c_extract_run_takes_full_pages_of_tiny_entries():
    """Three leaves packed full with 272 entries each (2- and 3-byte keys, empty values:
    near the most entries a page holds, for which the format room per page is sized) are
    all taken in one call, with exactly the reference's pairs."""
    pages = []
    for p in range(3):
        items = [bp.pack_entry(bytes([p, i]), 1, 0, 0, b"") for i in range(256)]
        items += [bp.pack_entry(bytes([p, 255, i]), 1, 0, 0, b"") for i in range(16)]
        items.sort(key=bp.entry_key)
        items.insert(0, bp.pack_pivot(bytes([p + 1]), 3, 0))
        page = bytearray(BLCKSZ)
        bp.bt_rebuild(page, bp.Special(0, 11 + p, 0, bp.BTP_LEAF), items)
        pages.append(bytes(page))
    run, blocks = b"".join(pages), [10, 11, 12]
    got = sr.extract_run(run, 0, blocks, None, None, None, 5, 0, (), True)
    ref = sr.extract_run_py(run, blocks, None, None, None, 5, 0, (), True)
    assert got[:4] == ref[:4] == (3, False, 13, 3 * 272)
    assert list(got[4]) == ref[4]
