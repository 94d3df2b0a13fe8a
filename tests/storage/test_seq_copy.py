"""copy_release's run copy under the change counters: the C helper slk_seq_copy_pages
agrees with its Python reference (bufmgr.seq_copy_pages_py) on random pools, counters and
buffer lists; copy_release gives the same bytes through the C copy, through a fall back to
share locks mid-run (a buffer held exclusively), and without the helper."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.storage import bufmgr as bm_mod
from slonik.storage.bufmgr import BufferManager, seq_copy_pages_py
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, Smgr

from tests.storage.test_bufmgr import REL, make_page

needs_c = pytest.mark.skipif(bm_mod._lib is None,
                             reason="storage._pagecheck not built (no C compiler at install)")
POOL_PAGES = 8


@needs_c
@settings(max_examples=300, deadline=None)
@given(fill=st.binary(min_size=POOL_PAGES, max_size=POOL_PAGES),
       seq=st.lists(st.integers(0, 7), min_size=POOL_PAGES, max_size=POOL_PAGES),
       bufs=st.lists(st.integers(0, POOL_PAGES + 2), min_size=1, max_size=12),
       nbuffers=st.integers(1, POOL_PAGES))
def test_c_seq_copy_equals_reference(fill, seq, bufs, nbuffers):
    """Random pool pages (each filled with its own byte and stamped with its number),
    random counters (odd ones stop the copy), buffer lists with repeats and ids past
    nbuffers: C and reference return the same count k, the same first k pages copied
    (each the pool page asked for), and C writes nothing past page k."""
    ffi, lib = bm_mod._ffi, bm_mod._lib
    pool = bytearray()
    for i, byte in enumerate(fill):
        page = bytearray([byte]) * BLCKSZ
        page[:4] = i.to_bytes(4, "little")
        pool += page
    c_seq = ffi.new("uint32_t[]", seq)
    out_c = bytearray(b"\xaa" * (len(bufs) * BLCKSZ))
    out_py = bytearray(b"\xaa" * (len(bufs) * BLCKSZ))
    k = lib.slk_seq_copy_pages(ffi.from_buffer("uint8_t[]", pool), c_seq, nbuffers,
                               ffi.new("uint32_t[]", bufs), len(bufs),
                               ffi.from_buffer("uint8_t[]", out_c))
    assert k == seq_copy_pages_py(memoryview(pool), seq, nbuffers, bufs, out_py)
    assert out_c == out_py
    for j in range(k):
        b = bufs[j]
        assert out_c[j * BLCKSZ:(j + 1) * BLCKSZ] == pool[b * BLCKSZ:(b + 1) * BLCKSZ]
    assert set(out_c[k * BLCKSZ:]) <= {0xAA}
    expected = next((j for j, b in enumerate(bufs) if b >= nbuffers or seq[b] & 1), len(bufs))
    assert k == expected


@pytest.fixture
def pool(tmp_path, aio):
    smgr = Smgr(str(tmp_path), segment_size=64, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [make_page(REL, b) for b in range(12)])
    bm = BufferManager(smgr, aio, shared_buffers=32, io_combine_limit=4)
    yield bm
    aio.wait_all()
    smgr.close()


def copy_past_a_holder(bm, block: int, at: int, copy) -> bytes:
    """Run ``copy(bufs)`` over blocks 0..7 in another thread while this one holds
    ``block`` exclusively: the copy must wait (still running after 0.2 s), and ends once
    the holder writes b"WXYZ" at offset ``at`` of its page and releases. Returns the
    pages as they are then (the on-disk pages with that change)."""
    holder = bm.read_buffer(REL, Fork.MAIN, block)
    bm.lock_exclusive(holder)
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 8)
    reader = threading.Thread(target=lambda: copy(bufs))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()
    bm.page(holder)[at:at + 4] = b"WXYZ"
    bm.unlock_release(holder)
    reader.join()
    changed = bytearray(b"".join(make_page(REL, b) for b in range(8)))
    changed[block * BLCKSZ + at:block * BLCKSZ + at + 4] = b"WXYZ"
    return bytes(changed)


def test_copy_release_same_bytes_by_seqlock_by_locks_and_without_the_helper(pool):
    """The pages of blocks 0..7 copied by copy_release equal the on-disk pages: through
    the counters (C helper), with block 5 held exclusively by another thread (the copy
    falls back to share locks from block 5 on, so it waits: still running after 0.2 s,
    done once the holder releases, and holds the holder's change), and with the helper
    switched off on the pool (seq None: share locks only). No pin or lock is left."""
    bm = pool
    expected = b"".join(make_page(REL, b) for b in range(8))
    assert bm.copy_release(bm.read_buffers(REL, Fork.MAIN, 0, 8)) == expected
    bm.check()
    got: list[bytes] = []
    changed = copy_past_a_holder(bm, 5, 6000, lambda bufs: got.append(bm.copy_release(bufs)))
    assert got[0] == changed
    bm.check()
    bm.seq = None
    assert bm.copy_release(bm.read_buffers(REL, Fork.MAIN, 0, 8)) == changed
    bm.check()


def test_copy_release_refuses_a_buffer_that_is_not_valid(pool):
    """A buffer claimed for reading (READING: not VALID, a read may be landing in it) is
    refused by copy_release's assertion, and the pins are released all the same."""
    bm = pool
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 2)
    d = bm.descs[bufs[1]]
    with bm._lock:
        bm._set_state_locked(d, int(bm_mod.BufferState.EMPTY))
        assert bm._start_buffer_io_locked(d, for_input=True)
    if bm.seq is None:
        pytest.skip("the VALID check belongs to the seqlock copy")
    with pytest.raises(AssertionError, match="not VALID"):
        bm.copy_release(bufs)
    assert [bm.descs[b].refcount for b in bufs] == [0, 0]
    with bm._lock:
        bm._terminate_reads_locked([bufs[1]], int(bm_mod.BufferState.EMPTY), io_pin=False)
    bm.check()
