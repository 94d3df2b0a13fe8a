"""Fixtures shared by the storage tests."""

from __future__ import annotations

import pytest
from slonik.storage.bufmgr import BufferManager
from slonik.storage.smgr import Fork, Smgr

from tests.support.pages import make_page

SMALL_POOL_REL = 16384


@pytest.fixture
def small_pool(tmp_path, aio):
    """(BufferManager of 16 buffers, Smgr) over relation SMALL_POOL_REL's blocks 0..7 (one
    8-block segment), written with ``make_page``; waits for I/O and closes after."""
    smgr = Smgr(str(tmp_path), segment_size=8, max_files=8, aio=aio)
    smgr.create(SMALL_POOL_REL, Fork.MAIN)
    smgr.writev(SMALL_POOL_REL, Fork.MAIN, 0, [make_page(b) for b in range(8)])
    bm = BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4)
    yield bm, smgr
    aio.wait_all()
    smgr.close()
