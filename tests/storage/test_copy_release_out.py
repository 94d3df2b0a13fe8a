"""copy_release(bufs, out): a run copied into the caller's reusable buffer (a table scan's
one cffi buffer per scan) holds the same bytes as the copy copy_release returns new,
through the change counters, through the fall back to share locks mid-run, and without
the C helper; nothing past the run is written; a buffer too small is refused and the pins
are still released."""

from __future__ import annotations

import pytest
from slonik.storage import bufmgr as bm_mod
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork

from tests.storage.test_bufmgr import REL, make_page
from tests.storage.test_seq_copy import copy_past_a_holder, pool  # noqa: F401  (pool: the fixture)

JUNK = 0xA5


def reusable(pages: int):
    """A cffi buffer as a scan keeps one (unzeroed memory), filled with junk."""
    if bm_mod._ffi is None:
        return bytearray([JUNK]) * (pages * BLCKSZ)
    mem = bm_mod._ffi.new("uint8_t[]", pages * BLCKSZ)
    buf = bm_mod._ffi.buffer(mem)
    buf[:] = bytes([JUNK]) * (pages * BLCKSZ)
    return buf


def test_copy_release_into_a_reused_buffer(pool):  # noqa: F811
    """Blocks 2..7, then 0..2, copied into one 8-page buffer: each time its first pages
    equal the on-disk pages (as copy_release without ``out`` gives them), the pages past
    the run keep what was there, and ``out`` itself is returned; the same with block 4
    held exclusively by another thread (share-lock fall back from block 4 on: waits for
    the holder, then holds its change) and with the helper switched off (seq None). No
    pin or lock is left."""
    bm = pool
    out = reusable(8)
    want = b"".join(make_page(REL, b) for b in range(2, 8))
    assert bm.copy_release(bm.read_buffers(REL, Fork.MAIN, 2, 6), out) is out
    assert bytes(out[:6 * BLCKSZ]) == want
    assert set(bytes(out[6 * BLCKSZ:])) == {JUNK}
    assert bytes(out[:6 * BLCKSZ]) == bm.copy_release(bm.read_buffers(REL, Fork.MAIN, 2, 6))
    bm.copy_release(bm.read_buffers(REL, Fork.MAIN, 0, 3), out)
    assert bytes(out[:3 * BLCKSZ]) == b"".join(make_page(REL, b) for b in range(3))
    assert bytes(out[3 * BLCKSZ:6 * BLCKSZ]) == want[3 * BLCKSZ:]   # left as it was
    bm.check()

    changed = copy_past_a_holder(bm, 4, 7000, lambda bufs: bm.copy_release(bufs, out))
    assert bytes(out[:8 * BLCKSZ]) == changed
    bm.check()

    bm.seq = None
    out2 = reusable(8)
    assert bm.copy_release(bm.read_buffers(REL, Fork.MAIN, 1, 5), out2) is out2
    assert bytes(out2[:5 * BLCKSZ]) == bytes(changed[BLCKSZ:6 * BLCKSZ])
    assert set(bytes(out2[5 * BLCKSZ:])) == {JUNK}
    bm.check()


def test_copy_release_refuses_a_buffer_too_small(pool):  # noqa: F811
    """A run of 3 pages into a 2-page buffer: ValueError naming the sizes, nothing
    written, and the 3 pins released all the same."""
    bm = pool
    out = reusable(2)
    bufs = bm.read_buffers(REL, Fork.MAIN, 0, 3)
    with pytest.raises(ValueError, match="3 pages need"):
        bm.copy_release(bufs, out)
    assert [bm.descs[b].refcount for b in bufs] == [0, 0, 0]
    assert set(bytes(out[:])) == {JUNK}
    bm.check()
