"""The buffer pool makes its buffers as they are first needed: a new pool holds no
descriptors, never-used buffers are handed out before the clock sweep evicts anything,
and a pool that has filled behaves as before (eviction by clock sweep)."""

from slonik.storage.bufmgr import POOL_GROW_BUFFERS, BufferManager
from slonik.storage.smgr import Fork, Smgr

from tests.storage.test_bufmgr import REL, SEGMENT, item, make_page

NBUFFERS = POOL_GROW_BUFFERS + 44   # two growth steps


def test_pool_grows_on_demand_and_uses_fresh_buffers_before_evicting(tmp_path, aio):
    """No descriptors after construction; reading block k of a relation larger than one
    growth step makes descriptors a step at a time; NBUFFERS distinct blocks evict
    nothing; one more block evicts exactly one buffer; every page read is right."""
    smgr = Smgr(str(tmp_path), segment_size=SEGMENT * 64, max_files=3, aio=aio)
    smgr.create(REL, Fork.MAIN)
    nblocks = NBUFFERS + 1
    smgr.writev(REL, Fork.MAIN, 0, [make_page(REL, b) for b in range(nblocks)])
    bm = BufferManager(smgr, aio, shared_buffers=NBUFFERS, io_combine_limit=4)
    try:
        assert bm.descs == [] and bm.pages == []
        first = bm.read_buffer(REL, Fork.MAIN, 0)
        assert len(bm.descs) == len(bm.pages) == POOL_GROW_BUFFERS
        bm.unpin(first)
        for block in range(1, NBUFFERS):
            b = bm.read_buffer(REL, Fork.MAIN, block)
            assert item(bm, b) == f"rel {REL} block {block}".encode()
            bm.unpin(b)
        assert len(bm.descs) == NBUFFERS
        assert bm.stats().evictions == 0
        assert sorted(d.buf_id for d in bm.descs if d.tag is not None) == list(range(NBUFFERS))
        b = bm.read_buffer(REL, Fork.MAIN, NBUFFERS)
        assert item(bm, b) == f"rel {REL} block {NBUFFERS}".encode()
        bm.unpin(b)
        assert bm.stats().evictions == 1 and len(bm.descs) == NBUFFERS
        bm.check()
    finally:
        aio.wait_all()
        smgr.close()
