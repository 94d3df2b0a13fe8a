"""The C page verifier (storage/_pagecheck, optional) and ``PageRunVerifier`` agree with
page.py's ``page_checksum``/``verify_page`` exactly, and the buffer manager's wide-view
reads (one iovec for adjacent pool buffers) return the right pages."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.aio.memory import aligned_buffer
from slonik.storage import page as page_module
from slonik.storage.page import (
    BLCKSZ,
    PageRunVerifier,
    PageStatus,
    init_page,
    page_add_item,
    page_checksum,
    page_set_checksum,
    verify_page,
)

needs_c = pytest.mark.skipif(not page_module.C_VERIFIER,
                             reason="storage._pagecheck not built (no C compiler at install)")


def valid_page(rel: int, fork: int, block: int, seed: int) -> bytearray:
    rnd = random.Random(seed)
    buf = bytearray(BLCKSZ)
    init_page(buf, special_size=rnd.choice([0, 8, 16]))
    for _ in range(rnd.randrange(0, 30)):
        page_add_item(buf, rnd.randbytes(rnd.randrange(1, 200)))
    page_set_checksum(buf, rel, fork, block)
    return buf


u32 = st.integers(0, 0xFFFFFFFF)


@needs_c
@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**64), head=st.binary(max_size=64), rel=u32,
       fork=st.integers(0, 255), block=u32)
def test_c_checksum_equals_page_checksum_both_paths(seed, head, rel, fork, block):
    """For arbitrary page bytes (random, with an arbitrary prefix over the header) and
    tags, the SSE4.2 (when the CPU has it) and the portable table-driven C checksums both
    equal page.py's page_checksum (crc32c package)."""
    data = bytearray(random.Random(seed).randbytes(BLCKSZ))
    data[:len(head)] = head
    data = bytes(data)
    ffi, lib = page_module._ffi, page_module._lib
    ptr = ffi.from_buffer(data)
    expected = page_checksum(data, rel, fork, block)
    assert lib.slk_page_checksum(ptr, rel, fork, block) == expected
    assert lib.slk_page_checksum_portable(ptr, rel, fork, block) == expected


@needs_c
def test_c_checksum_on_random_pages():
    """Random and structured pages, zero and random tags: C == Python every time."""
    ffi, lib = page_module._ffi, page_module._lib
    for i in range(300):
        data = os.urandom(BLCKSZ) if i % 2 else bytes(valid_page(i, i % 3, i * 7, i))
        rel, fork, block = random.getrandbits(32), random.randrange(256), random.getrandbits(32)
        ptr = ffi.from_buffer(data)
        assert lib.slk_page_checksum(ptr, rel, fork, block) == page_checksum(data, rel, fork, block)
        assert lib.slk_page_checksum_portable(ptr, rel, fork, block) == \
            page_checksum(data, rel, fork, block)


def pool_of(pages: list[bytes]) -> memoryview:
    mv = memoryview(aligned_buffer(len(pages) * BLCKSZ))
    for i, p in enumerate(pages):
        mv[i * BLCKSZ:(i + 1) * BLCKSZ] = p
    return mv


def python_problems(pool: memoryview, ids, rel, fork, block):
    out = []
    for k, i in enumerate(ids):
        v = verify_page(pool[i * BLCKSZ:(i + 1) * BLCKSZ], rel, fork, block + k)
        if v.status not in (PageStatus.VALID, PageStatus.NEW):
            out.append((k, v))
    return out


def test_run_verifier_agrees_on_valid_flipped_wrong_block_and_zero_pages():
    """A pool holding valid pages, all-zero pages, a page with one flipped bit, a page
    checksummed for another block, a zero header over a stray byte and a bad header:
    PageRunVerifier reports exactly the pages and reasons verify_page reports, for a
    contiguous run, a scattered run and a single page (C or pure Python alike)."""
    rel, fork = 16384, 0
    pages = [bytes(valid_page(rel, fork, 100 + k, k)) for k in range(12)]
    pages[2] = bytes(BLCKSZ)                                  # new page: fine
    flipped = bytearray(pages[4])
    flipped[5000] ^= 0x08
    pages[4] = bytes(flipped)                                 # bad checksum
    pages[6] = bytes(valid_page(rel, fork, 999, 6))           # written to the wrong block
    stray = bytearray(BLCKSZ)
    stray[7000] = 1
    pages[8] = bytes(stray)                                   # zero header, stray byte
    bad_header = bytearray(pages[10])
    bad_header[20] = 9                                        # layout version 9
    pages[10] = bytes(bad_header)
    pool = pool_of(pages)
    verifier = PageRunVerifier(pool)
    ids = list(range(12))
    got = verifier.verify(ids, rel, fork, 100)
    assert got == python_problems(pool, ids, rel, fork, 100)
    assert [k for k, _ in got] == [4, 6, 8, 10]
    assert [v.status for _, v in got] == [PageStatus.BAD_CHECKSUM, PageStatus.BAD_CHECKSUM,
                                          PageStatus.BAD_HEADER, PageStatus.BAD_HEADER]
    scattered = [11, 0, 4, 2, 6]  # page 11 read as block 100, page 0 as 101, ...
    assert verifier.verify(scattered, rel, fork, 100) == \
        python_problems(pool, scattered, rel, fork, 100)
    assert verifier.verify([0], rel, fork, 100) == []
    assert verifier.verify([0], rel, fork, 101)[0][1].status == PageStatus.BAD_CHECKSUM
    assert verifier.verify(range(3), rel, fork, 100) == []
    assert verifier.verify([], rel, fork, 100) == []


@pytest.mark.parametrize("c", [True, False])
def test_run_verifier_every_page_bit_flip_sampled(c, monkeypatch):
    """Flipping any one of 400 sampled bits of a valid page (header bits included) is
    reported, and as verify_page reports it, with and without the C module."""
    if c and not page_module.C_VERIFIER:
        pytest.skip("storage._pagecheck not built")
    rel, fork, block = 77, 1, 5
    good = bytes(valid_page(rel, fork, block, 3))
    pool = pool_of([good])
    verifier = PageRunVerifier(pool)
    if not c:
        monkeypatch.setattr(verifier, "_ptr", None)
    for bit in random.Random(1).sample(range(BLCKSZ * 8), 400):
        pool[:] = good
        pool[bit // 8] ^= 1 << (bit % 8)
        got = verifier.verify([0], rel, fork, block)
        assert got == python_problems(pool, [0], rel, fork, block)
        assert len(got) == 1


def test_run_verifier_rejects_misuse():
    """A pool that is not whole pages, or page ids outside the pool, is a ValueError."""
    with pytest.raises(ValueError, match="whole pages"):
        PageRunVerifier(bytearray(BLCKSZ + 1))
    verifier = PageRunVerifier(pool_of([bytes(BLCKSZ)] * 2))
    if page_module.C_VERIFIER:
        with pytest.raises(ValueError, match="page_ids"):
            verifier.verify([1, 2], 1, 0, 0)
        with pytest.raises(ValueError, match="page_ids"):
            verifier.verify([1, 0, 5], 1, 0, 0)
