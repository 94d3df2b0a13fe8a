"""A sorted run past the rightmost leaf's last key is appended bottom-up
(BTree._append_leaves, as nbtsort builds): new leaves filled to the fill factor, logged
with their pivots in one SPLIT record (block 0 the old rightmost leaf: A_SPLIT_LEFT only;
block 1 the parent: A_INSERTs only; then each new leaf: A_INIT first). On every io
method: redo reproduces every page byte for byte (pages replayed from before the batch
equal the pool's), the tree checks clean with no unreached page, every key reads back,
no pin stays, and a failed record leaves every page as before it.
"""

from __future__ import annotations

import os
import random

import pytest
from slonik.engine.access import btree
from slonik.engine.access.btree import META_BLOCK, OLD_LOOKUP, BTree, VersionWrite
from slonik.engine.access.btree_wal import (
    A_INIT,
    A_INSERT,
    A_SPLIT_LEFT,
    XLOG_BTREE_OPMASK,
    XLOG_BTREE_SPLIT,
    decode_actions,
)
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Smgr
from slonik.wal.xlog import WAL_BUFFERS_MIN_PAGES, Wal

from tests.engine.test_btree import (
    REL,
    SEGMENT_BLOCKS,
    WAL_SEGMENT_BYTES,
    Env,
    big_key,
    make_env,
    redo_reproduces,
)
from tests.support.redo import no_pins

POOL = 2048   # buffers: the whole tree stays in the pool


@pytest.fixture
def big_env(tmp_path, aio):
    e = make_env(str(tmp_path), aio, shared_buffers=POOL)
    yield e
    e.close()


def appends(records) -> list[tuple[int, list[int]]]:
    """For each append record (a SPLIT whose block 0 has one A_SPLIT_LEFT and nothing
    else and whose block 1 only A_INSERTs): (new leaves, blocks of the record). Checks
    every block after the parent starts with A_INIT."""
    out = []
    for rr in records:
        if rr.record.info & XLOG_BTREE_OPMASK != XLOG_BTREE_SPLIT:
            continue
        by: dict[int, list[int]] = {}
        for index, code, _d in decode_actions(rr.record.payload):
            by.setdefault(index, []).append(code)
        if by.get(0) != [A_SPLIT_LEFT] or set(by.get(1, [])) != {A_INSERT}:
            continue
        blocks = [ref.block for ref in rr.record.blocks]
        assert all(by[k][0] == A_INIT for k in range(2, len(blocks))), by
        leaves = len(blocks) - 2 - (blocks[-1] == META_BLOCK)
        assert len(by[1]) == leaves  # one pivot per new leaf
        out.append((leaves, blocks))
    return out


def test_load_into_an_empty_tree_appends_leaves(big_env):
    """20,000 random puts into an empty tree in one batch: after the root's first split
    the leaves are appended several to a record (most records carry more than one new
    leaf); redo replayed from the empty tree gives the pool's bytes, the tree checks
    clean with every entry, the keys read back in order, no pin stays, and every leaf
    but the rightmost holds at least the fill factor's share less one entry."""
    env = big_env
    t = env.tree
    before = env.pages()
    start = env.wal.insert_lsn
    keys = [b"key%08d" % i for i in range(20000)]
    random.Random(3).shuffle(keys)
    t.apply([VersionWrite(k, 7, b"v%d" % i * 20) for i, k in enumerate(keys)])
    records = redo_reproduces(env, before, start)
    got = appends(records)
    assert sum(n for n, _b in got) > 100
    assert sum(1 for n, _b in got if n > 1) > len(got) // 2
    result = t.check()
    assert result.entries == 20000 and result.unreached_pages == 0
    want = sorted((k, b"v%d" % i * 20) for i, k in enumerate(keys))
    assert list(t.items()) == want
    assert no_pins(env.bm)


def test_run_past_keys_below_it_mixed_writes(big_env):
    """A tree of 3,000 keys, then one batch of 20,000 new keys above them mixed with
    overflow values, OLD_LOOKUP writes of new keys, replacements and deletes of old keys:
    the part past the last leaf is appended (records with new leaves), redo gives the
    pool's bytes, the tree checks clean, each key's newest live version is the batch's."""
    env = big_env
    t = env.tree
    base = [b"a%06d" % i for i in range(3000)]
    t.apply([VersionWrite(k, 3, b"old" * 20) for k in base])
    want: dict[bytes, bytes | None] = {k: b"old" * 20 for k in base}
    before = env.pages()
    start = env.wal.insert_lsn
    rng = random.Random(12)
    writes = []
    for i in range(0, 3000, 7):
        k = base[i]
        if i % 2:
            writes.append(VersionWrite(k, 9, None, 3))
            want[k] = None
        else:
            writes.append(VersionWrite(k, 9, b"r%d" % i, 3))
            want[k] = b"r%d" % i
    for i in range(20000):
        k = b"b%06d" % i
        r = rng.random()
        v = (b"big%d" % i) * 900 if r < 0.01 else b"n%d" % i * 12
        writes.append(VersionWrite(k, 9, v, OLD_LOOKUP if r > 0.9 else 0))
        want[k] = v
    rng.shuffle(writes)
    t.apply(writes, committed=lambda xid: xid in (3, 9))
    records = redo_reproduces(env, before, start)
    assert sum(n for n, _b in appends(records)) > 50
    result = t.check()
    assert result.unreached_pages == 0
    for k, v in want.items():
        assert t.get(k) == v, k
    assert no_pins(env.bm)


def test_wide_keys_append_under_a_splitting_parent(big_env):
    """2,000 random puts of 900-byte keys (fan-out ~8: the parent fills after a few
    appended leaves and splits the usual way, then appends go on under the new one): redo
    gives the pool's bytes, the tree checks clean with three levels or more, the keys
    read back in order."""
    env = big_env
    t = env.tree
    before = env.pages()
    start = env.wal.insert_lsn
    keys = [big_key(i) for i in range(2000)]
    random.Random(4).shuffle(keys)
    t.apply([VersionWrite(k, 7, k[:8] * 4) for k in keys])
    records = redo_reproduces(env, before, start)
    assert appends(records)
    result = t.check()
    assert result.entries == 2000 and result.unreached_pages == 0
    assert len(result.pages_per_level) >= 3
    assert [k for k, _v in t.items()] == sorted(keys)
    assert no_pins(env.bm)


def test_append_takes_free_list_pages_and_logs_the_metapage(big_env):
    """Leaves emptied by deletes and vacuumed go on the free list; a run appended past
    the last key then takes them first, so its records carry the metapage (free list
    head moved): redo gives the pool's bytes, the tree checks clean (no unreached page),
    and the new keys read back."""
    env = big_env
    t = env.tree
    t.apply([VersionWrite(b"a%06d" % i, 3, b"x" * 100) for i in range(3000)])
    t.apply([VersionWrite(b"a%06d" % i, 5, None, 3) for i in range(3000)])
    t.vacuum(lambda xmin, xmax: xmax != 0)
    t.vacuum(lambda xmin, xmax: xmax != 0)  # the second pass recycles unlinked leaves
    free_before = t._free_count
    before = env.pages()
    start = env.wal.insert_lsn
    t.apply([VersionWrite(b"b%06d" % i, 7, b"y" * 100) for i in range(6000)])
    records = redo_reproduces(env, before, start)
    got = appends(records)
    assert free_before > 0 and t._free_count < free_before
    assert any(blocks[-1] == META_BLOCK for _n, blocks in got)
    result = t.check()
    assert result.unreached_pages == 0
    assert [k for k, _v in t.items()] == [b"b%06d" % i for i in range(6000)]
    assert no_pins(env.bm)


def test_failed_append_record_puts_the_pages_back(big_env):
    """If logging an append record fails (injected at every SPLIT record carrying new
    leaves, i.e. more than three blocks), the pages it changed are put back byte for byte:
    every page is as the last logged record left it, pages extended for it stay all zero
    (unreached, as after a failed split), and the tree checks clean with the keys logged
    before."""
    env = big_env
    t = env.tree
    t.apply([VersionWrite(b"a%05d" % i, 2, b"x" * 100) for i in range(2000)])
    real = env.wal.insert
    failed = []

    def failing(rmgr, info, payload, blocks, *a, **kw):
        if info & XLOG_BTREE_OPMASK == XLOG_BTREE_SPLIT and len(blocks) > 3:
            failed.append(1)
            raise OSError(5, "injected WAL failure")
        return real(rmgr, info, payload, blocks, *a, **kw)

    before = env.pages()
    env.wal.insert = failing
    try:
        with pytest.raises(OSError, match="injected"):
            t.apply([VersionWrite(b"b%05d" % i, 4, b"y" * 100) for i in range(4000)])
    finally:
        env.wal.insert = real
    assert failed
    after = env.pages()
    changed = [b for b, p in before.items() if after[b] != p]
    # only the batch's first run on the old rightmost leaf (one INSERT record) stays
    assert len(changed) <= 1
    assert all(p == bytes(BLCKSZ) for b, p in after.items() if b not in before)
    # the pages extended for it stay all zero and unreached, as after a failed split
    result = t.check()
    assert result.entries == 2000 + sum(1 for k, _v in t.items() if k.startswith(b"b"))
    assert [k for k, _v in t.items()][:2000] == [b"a%05d" % i for i in range(2000)]
    assert no_pins(env.bm)


def test_switched_off_append_logs_no_append_record(big_env, monkeypatch):
    """The same load with APPEND_LEAVES_MAX = 0 logs no append record (so the tests
    above see the new path, not the split-by-split one) and still checks clean."""
    monkeypatch.setattr(btree, "APPEND_LEAVES_MAX", 0)
    env = big_env
    t = env.tree
    before = env.pages()
    start = env.wal.insert_lsn
    t.apply([VersionWrite(b"key%08d" % i, 7, b"v" * 60) for i in range(5000)])
    records = redo_reproduces(env, before, start)
    assert appends(records) == []
    assert t.check().entries == 5000


def test_append_records_fit_the_smallest_wal_ring(tmp_path, aio):
    """With wal_buffers at its minimum (64 KiB) an append record carries fewer leaves
    (a quarter of the ring at most) and the load still goes through: every record fits
    the ring, redo gives the pool's bytes, the tree checks clean with every key."""
    path = str(tmp_path)
    os.makedirs(os.path.join(path, "wal"), exist_ok=True)
    smgr = Smgr(path, segment_size=SEGMENT_BLOCKS, max_files=8, aio=aio)
    wal = Wal(os.path.join(path, "wal"), aio, wal_segment_size=WAL_SEGMENT_BYTES,
              wal_buffers=WAL_BUFFERS_MIN_PAGES)
    bm = BufferManager(smgr, aio, shared_buffers=POOL, io_combine_limit=8,
                       flush_wal=wal.flush)
    env = Env(path, aio, smgr, wal, bm, BTree.create(REL, bm, wal), wal.insert_lsn)
    try:
        before = env.pages()
        start = env.wal.insert_lsn
        keys = [b"key%08d" % i for i in range(8000)]
        random.Random(6).shuffle(keys)
        env.tree.apply([VersionWrite(k, 7, b"w" * 90) for k in keys])
        records = redo_reproduces(env, before, start)
        got = appends(records)
        assert got and max(n for n, _b in got) * BLCKSZ <= wal.wal_buffers_bytes // 4
        assert env.tree.check().entries == 8000
        assert no_pins(env.bm)
    finally:
        env.close()
