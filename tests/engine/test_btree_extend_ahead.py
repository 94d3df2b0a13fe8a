"""A batch's splits extend the relation ahead (BTree._extend: 1, 2, 4, ... pages at once),
on every io method: the pages a batch did not use go on the free list, so after the batch
the tree checks clean with no unreached page, redo reproduces every page byte for byte,
and the next batch takes the freed pages first. A refused batch gives its spares back too.
"""

from __future__ import annotations

import random

import pytest
from slonik.engine.access import btree as btree_module
from slonik.engine.access.btree import VersionWrite
from slonik.engine.access.btree_wal import XLOG_BTREE_FREE, XLOG_BTREE_SPLIT

from tests.engine.test_btree import make_env, ops_of, redo_reproduces
from tests.support.redo import no_pins

POOL = 1024   # buffers: extension ahead reaches EXTEND_AHEAD_PAGES_MAX (POOL / divisor)


@pytest.fixture
def big_env(tmp_path, aio):
    e = make_env(str(tmp_path), aio, shared_buffers=POOL)
    yield e
    e.close()


def puts(keys, xid: int, value: bytes = b"v" * 100) -> list[VersionWrite]:
    return [VersionWrite(k, xid, value) for k in keys]


def test_batch_extends_ahead_and_frees_what_it_did_not_use(big_env):
    """3,000 random puts in one batch split many leaves: the relation grows in steps of
    more than one page (fewer extensions than new pages), yet after the batch every
    block is reached (tree or free list), the freed spares are logged (FREE records),
    redo gives the pool's bytes, every key reads back, and no buffer stays pinned."""
    env = big_env
    t = env.tree
    assert POOL // btree_module.EXTEND_AHEAD_POOL_DIVISOR >= btree_module.EXTEND_AHEAD_PAGES_MAX
    calls = []
    extend = env.bm.extend

    def counting_extend(rel, fork, n=1):
        calls.append(n)
        return extend(rel, fork, n)

    env.bm.extend = counting_extend
    before = env.pages()
    start = env.wal.insert_lsn
    keys = [b"key%08d" % i for i in range(3000)]
    random.Random(3).shuffle(keys)
    done = t.apply(puts(keys, 5))
    assert len(done) == 3000
    assert max(calls) == btree_module.EXTEND_AHEAD_PAGES_MAX
    records = redo_reproduces(env, before, start)
    ops = ops_of(records)
    assert XLOG_BTREE_SPLIT in ops
    result = t.check()
    assert result.unreached_pages == 0
    assert result.entries == 3000
    assert result.free_pages == t.stats().free_pages < btree_module.EXTEND_AHEAD_PAGES_MAX
    assert env.nblocks() == 1 + sum(result.pages_per_level) + result.free_pages
    if result.free_pages:
        assert XLOG_BTREE_FREE in ops
    assert [k for k, _v in t.items()] == sorted(keys)
    assert no_pins(env.bm)
    # the next batch takes the freed pages before extending again, and checks clean too
    calls.clear()
    free_before, nblocks = result.free_pages, env.nblocks()
    t.apply(puts([b"more%08d" % i for i in range(1000)], 6))
    after = t.check()
    assert after.unreached_pages == 0 and after.entries == 4000
    grown = sum(after.pages_per_level) - sum(result.pages_per_level)
    assert env.nblocks() - nblocks == sum(calls) == grown - free_before + after.free_pages


def test_refused_batch_gives_its_spares_back(big_env):
    """A batch that fails part way (an old version that is not there: ValueError) after
    extending ahead leaves no unreached page: its spares are on the free list."""
    t = big_env.tree
    keys = [b"key%08d" % i for i in range(2000)]
    writes = puts(keys, 5) + [VersionWrite(b"zzz-missing", 5, b"x", old_xmin=3)]
    with pytest.raises(ValueError, match="has no version"):
        t.apply(writes)
    result = t.check()
    assert result.unreached_pages == 0 and result.entries == 2000
    assert no_pins(big_env.bm)
