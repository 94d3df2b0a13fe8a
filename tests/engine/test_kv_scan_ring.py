"""A KV ordered scan of a tree larger than a quarter of the pool reads through a BULKREAD
ring (BTree._walk_leaves, BULK_SCAN_POOL_DIVISOR): its misses reuse the ring's buffers, so
right after a load it does not write out the pool's dirty buffers one victim at a time."""

import random

from slonik.engine.access.btree import BULK_SCAN_POOL_DIVISOR
from slonik.storage.bufmgr import BM_DIRTY, BULK_READ_RING_MIN
from slonik.storage.smgr import Fork

from slonik import Database

POOL = "2MB"  # 256 buffers: the loaded tree below is about twice that
KEYS = 20_000


def _load(db, n: int) -> dict[bytes, bytes]:
    kv = db.kv("k")
    order = list(range(n))
    random.Random(7).shuffle(order)
    model = {}
    with db.transaction():
        for i in order:
            k, v = b"key:%012d" % i, b"v%05d" % i * 17
            kv[k] = v
            model[k] = v
    return model


def test_large_scan_after_load_writes_at_most_a_ring(tmp_path, io_method):
    """Load a tree about twice the pool in one transaction (the pool ends full of dirty
    leaves, counted from the descriptors), then scan it in key order: the pairs equal the
    model, and the scan wrote at most two rings' worth of buffers (the ring's clock-sweep
    victims as it fills and the slots it replaces; the ring is BULK_READ_RING_MIN = 32
    here), under half the dirty buffers a scan through the whole pool would evict and
    write. A second scan sees the same pairs. The background writer is off
    (bgwriter_lru_maxpages=0): the test counts the ring's own writes, and a writer cleaning
    the pool between the load and the dirty count would make that count race."""
    with Database.open(tmp_path / "db", io_method=io_method, shared_buffers=POOL,
                       bgwriter_lru_maxpages=0) as db:
        model = _load(db, KEYS)
        kv = db.kv("k")
        bm = db._bufmgr
        assert bm.nbuffers == 256
        tree_blocks = bm.smgr.nblocks(kv.rel, Fork.MAIN)
        assert tree_blocks > bm.nbuffers // BULK_SCAN_POOL_DIVISOR
        dirty = sum(1 for d in bm.descs if d.flags & BM_DIRTY)
        assert dirty > bm.nbuffers // 2  # what a scan through the whole pool writes
        before = bm.stats()
        got = list(kv.items())
        after = bm.stats()
        assert got == sorted(model.items())
        assert after.writes - before.writes <= 2 * BULK_READ_RING_MIN < dirty // 2
        assert list(kv.items()) == got


def test_small_tree_scan_keeps_its_leaves_in_the_pool(tmp_path, io_method):
    """A tree under a quarter of the pool is scanned through the pool itself (no ring):
    after a first scan, a second one reads nothing (every leaf a hit)."""
    with Database.open(tmp_path / "db", io_method=io_method, shared_buffers=POOL) as db:
        model = _load(db, 500)
        kv = db.kv("k")
        assert list(kv.items()) == sorted(model.items())
        reads = db.stats().buffers.reads
        assert list(kv.items()) == sorted(model.items())
        assert db.stats().buffers.reads == reads
