"""PageRunVerifier.verify keeps one C status array per thread between calls (no ffi.new per
call): a call's answer never carries a status left over from an earlier, longer or
failing call, in one thread or with threads verifying different pages at once."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.storage import page as page_module
from slonik.storage.page import BLCKSZ, PageRunVerifier

from tests.storage.test_pagecheck import pool_of, python_problems, valid_page

needs_c = pytest.mark.skipif(not page_module.C_VERIFIER,
                             reason="storage._pagecheck not built (no C compiler at install)")

REL, FORK, FIRST_BLOCK = 16384, 0, 100
NPAGES = 16


def _pool(bad: set[int]) -> memoryview:
    """NPAGES pages, page i checksummed as block FIRST_BLOCK + i; those in ``bad`` have a
    flipped bit (a BAD_CHECKSUM read at their own block)."""
    pages = []
    for i in range(NPAGES):
        page = valid_page(REL, FORK, FIRST_BLOCK + i, i)
        if i in bad:
            page[6000] ^= 0x10
        pages.append(bytes(page))
    return pool_of(pages)


run = st.tuples(st.integers(0, NPAGES - 1), st.integers(1, NPAGES), st.booleans())


@needs_c
@settings(max_examples=150, deadline=None)
@given(bad=st.sets(st.integers(0, NPAGES - 1), max_size=6), runs=st.lists(run, max_size=12))
def test_status_array_reused_across_calls_equals_verify_page(bad, runs):
    """A sequence of verify calls of random lengths (growing and shrinking the thread's
    array), contiguous or reversed (the scattered path), over a pool with some bad pages:
    each answer equals verify_page's on the same pages and blocks. Fails if a status from
    an earlier call leaks into a later one."""
    pool = _pool(bad)
    verifier = PageRunVerifier(pool)
    for first, length, reverse in runs:
        ids = list(range(first, min(NPAGES, first + length)))
        if reverse:
            ids.reverse()
        block = FIRST_BLOCK + first
        assert verifier.verify(ids, REL, FORK, block) == \
            python_problems(pool, ids, REL, FORK, block)


@needs_c
def test_status_arrays_are_per_thread():
    """Two threads verify at once, one a run with bad pages, the other runs of good pages
    only, 2,000 calls each: the good runs never report a problem and the bad runs always
    report exactly their bad pages (a shared array would mix the two)."""
    bad = {1, 3, 5, 7}
    pool = _pool(bad)
    verifier = PageRunVerifier(pool)
    good_ids = [8, 9, 10, 11, 12, 13, 14, 15]
    bad_ids = list(range(8))
    expected = python_problems(pool, bad_ids, REL, FORK, FIRST_BLOCK)
    assert [k for k, _ in expected] == [1, 3, 5, 7]
    errors: list[str] = []
    start = threading.Barrier(2)

    def work(ids, block, want):
        start.wait()
        for _ in range(2000):
            try:
                got = verifier.verify(ids, REL, FORK, block)
            except AssertionError as exc:  # verify's own C-vs-Python status check
                errors.append(f"{ids}: {exc}")
                return
            if got != want:
                errors.append(f"{ids}: {got}")
                return

    threads = [threading.Thread(target=work, args=(good_ids, FIRST_BLOCK + 8, [])),
               threading.Thread(target=work, args=(bad_ids, FIRST_BLOCK, expected))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(pool) == NPAGES * BLCKSZ
