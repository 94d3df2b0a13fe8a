"""Fixtures shared by the storage tests."""

from __future__ import annotations

import pytest
from slonik.storage.bufmgr import BufferManager
from slonik.storage.smgr import Fork, Smgr

from tests.support.pages import make_page

FIXTURE_REL = 16384   # the relation these fixtures create


@pytest.fixture
def relation_files(tmp_path, aio):
    """``make(segment_size, nblocks, max_files=3)``: an Smgr over ``tmp_path`` holding
    relation FIXTURE_REL's blocks 0..nblocks-1, each written with ``make_page``. At the
    end the I/O is waited for and every Smgr made is closed."""
    made: list[Smgr] = []

    def make(segment_size: int, nblocks: int, max_files: int = 3) -> Smgr:
        smgr = Smgr(str(tmp_path), segment_size=segment_size, max_files=max_files, aio=aio)
        made.append(smgr)
        smgr.create(FIXTURE_REL, Fork.MAIN)
        smgr.writev(FIXTURE_REL, Fork.MAIN, 0, [make_page(b) for b in range(nblocks)])
        return smgr

    yield make
    aio.wait_all()
    for smgr in made:
        smgr.close()


@pytest.fixture
def small_pool(relation_files, aio):
    """(BufferManager of 16 buffers, Smgr) over FIXTURE_REL's blocks 0..7 (one 8-block
    segment)."""
    smgr = relation_files(8, 8, max_files=8)
    return BufferManager(smgr, aio, shared_buffers=16, io_combine_limit=4), smgr
