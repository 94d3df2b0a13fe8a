"""A batch's split carries the leaf run after it (BTree._insert_run): when a run stops
because its leaf is full, the next new version splits the leaf and the writes after it
that fit on the page that took it go into the split's own record (their inserts and
set-xmaxes as block 0's actions after the split's), with no descent or record of their
own; the next split starts from that leaf and the last descent's stack (L&Y). On every io method: redo reproduces every page byte for byte, the tree checks
clean, every version reads back, and a failed split record leaves no change behind.
"""

from __future__ import annotations

import random

import pytest
from slonik.engine.access import btree
from slonik.engine.access.btree import OLD_LOOKUP, VersionWrite
from slonik.engine.access.btree_wal import (
    A_INIT,
    A_INSERT,
    A_SET_XMAX,
    A_SPLIT_LEFT,
    XLOG_BTREE_INSERT,
    XLOG_BTREE_OPMASK,
    XLOG_BTREE_SPLIT,
    decode_actions,
)
from slonik.storage.page import BLCKSZ

from tests.engine.test_btree import make_env, ops_of, redo_reproduces
from tests.support.redo import no_pins

POOL = 1024   # buffers: the whole tree stays in the pool


@pytest.fixture
def big_env(tmp_path, aio):
    e = make_env(str(tmp_path), aio, shared_buffers=POOL)
    yield e
    e.close()


def split_runs(records) -> list[tuple[bool, int]]:
    """For each SPLIT record carrying a run: (block 0 is the new right page, the run's
    actions on block 0 after its split action)."""
    out = []
    for rr in records:
        if rr.record.info & XLOG_BTREE_OPMASK != XLOG_BTREE_SPLIT:
            continue
        codes = [code for index, code, _d in decode_actions(rr.record.payload) if index == 0]
        assert codes[0] in (A_INIT, A_SPLIT_LEFT), codes
        assert set(codes[1:]) <= {A_INSERT, A_SET_XMAX}, codes
        if len(codes) > 1:
            out.append((codes[0] == A_INIT, len(codes) - 1))
    return out


def test_fresh_batch_splits_carry_the_runs(big_env, monkeypatch):
    """3,000 random puts into an empty tree in one batch, the bottom-up append switched
    off (APPEND_LEAVES_MAX = 0: test_btree_append covers it): after the first leaf's run,
    every split record carries the run that follows on its new right page, so the batch
    logs one INSERT record in all; redo gives the pool's bytes, the tree checks clean,
    the keys read back in order with their values, and no buffer stays pinned."""
    monkeypatch.setattr(btree, "APPEND_LEAVES_MAX", 0)
    env = big_env
    t = env.tree
    descents = count_descents(t)
    before = env.pages()
    start = env.wal.insert_lsn
    keys = [b"key%08d" % i for i in range(3000)]
    random.Random(5).shuffle(keys)
    done = t.apply([VersionWrite(k, 7, b"v%d" % i * 30) for i, k in enumerate(keys)])
    assert len(done) == 3000
    records = redo_reproduces(env, before, start)
    ops = ops_of(records)
    runs = split_runs(records)
    assert ops.count(XLOG_BTREE_INSERT) == 1
    assert len(runs) >= ops.count(XLOG_BTREE_SPLIT) - 1 > 10
    assert all(right for right, _n in runs)
    # each split after the first starts from the leaf the last run filled: no descent
    assert len(descents) <= 3
    result = t.check()
    assert result.entries == 3000 and result.unreached_pages == 0
    want = {k: b"v%d" % i * 30 for i, k in enumerate(keys)}
    assert [(k, v) for k, v in t.items()] == sorted(want.items())
    assert no_pins(env.bm)


def count_descents(tree) -> list[int]:
    """Wraps the tree's own ``_descend`` (the real one runs) to record each call."""
    calls: list[int] = []
    real = tree._descend

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    tree._descend = counting
    return calls


def test_wide_keys_split_inner_pages_and_the_root_under_hints(big_env, monkeypatch):
    """1,500 random puts of 900-byte keys into an empty tree in one batch (fan-out ~8:
    leaves, inner pages and the root split again and again while each split starts from
    the leaf and the stack the last one left), the bottom-up append switched off
    (test_btree_append covers it with wide keys): the tree checks clean with four levels
    or more, redo gives the pool's bytes, the keys read back in order, and descents
    happen only after a split above the leaves (far fewer than the splits)."""
    monkeypatch.setattr(btree, "APPEND_LEAVES_MAX", 0)
    env = big_env
    t = env.tree
    descents = count_descents(t)
    before = env.pages()
    start = env.wal.insert_lsn
    keys = [b"%08d" % i + bytes([i % 251]) * 892 for i in range(1500)]
    random.Random(8).shuffle(keys)
    t.apply([VersionWrite(k, 7, k[:8] * 4) for k in keys])
    records = redo_reproduces(env, before, start)
    result = t.check()
    assert result.entries == 1500 and result.unreached_pages == 0
    assert len(result.pages_per_level) >= 4
    assert [(k, v) for k, v in t.items()] == sorted((k, k[:8] * 4) for k in keys)
    splits = ops_of(records).count(XLOG_BTREE_SPLIT)
    assert 0 < len(descents) < splits // 2
    assert no_pins(env.bm)


def test_mixed_batch_into_a_tree_redoes_byte_for_byte(big_env):
    """A tree of 2,000 keys (every other key of a range), then one batch mixing new keys
    between them (splits in mid-leaf, runs on the left or the right page), replacements
    of known old versions, OLD_LOOKUP replacements, deletes and overflow values: some
    split records carry a run on their left page and some on their right; redo gives
    the pool's bytes, the tree checks clean and each key's newest live version is the
    batch's (deleted keys read None)."""
    env = big_env
    t = env.tree
    base = [b"k%07d" % i for i in range(0, 4000, 2)]
    t.apply([VersionWrite(k, 3, b"old" * 20) for k in base])
    before = env.pages()
    start = env.wal.insert_lsn
    rng = random.Random(11)
    writes = []
    want: dict[bytes, bytes | None] = {k: b"old" * 20 for k in base}
    for i in range(4000):
        k = b"k%07d" % i
        r = rng.random()
        if i % 2:  # a new key
            if r < 0.7:
                v = (b"big%d" % i) * 800 if r < 0.02 else b"n%d" % i * 15
                writes.append(VersionWrite(k, 9, v))
                want[k] = v
        elif r < 0.2:
            writes.append(VersionWrite(k, 9, b"r%d" % i * 10, 3))
            want[k] = b"r%d" % i * 10
        elif r < 0.3:
            writes.append(VersionWrite(k, 9, b"l%d" % i * 10, OLD_LOOKUP))
            want[k] = b"l%d" % i * 10
        elif r < 0.35:
            writes.append(VersionWrite(k, 9, None, 3))
            want[k] = None
    rng.shuffle(writes)
    t.apply(writes, committed=lambda xid: xid in (3, 9))
    records = redo_reproduces(env, before, start)
    runs = split_runs(records)
    assert any(right for right, _n in runs) and any(not right for right, _n in runs)
    result = t.check()
    assert result.unreached_pages == 0
    for k, v in want.items():
        assert t.get(k) == v, k
    assert no_pins(env.bm)


def test_failed_split_record_with_a_run_puts_the_pages_back(big_env):
    """If logging a split that carries a run fails (injected at the first SPLIT record of
    a batch), every page is as the last logged change left it (the run applied to the
    split page before the failure is undone too), the extended pages stay all zero, and
    the tree checks clean with every earlier key."""
    env = big_env
    t = env.tree
    t.apply([VersionWrite(b"a%05d" % i, 2, b"x" * 100) for i in range(40)])
    before = env.pages()
    real = env.wal.insert

    def failing(rmgr, info, *a, **kw):
        if info & XLOG_BTREE_OPMASK == XLOG_BTREE_SPLIT:
            raise OSError(5, "injected WAL failure")
        return real(rmgr, info, *a, **kw)

    env.wal.insert = failing
    try:
        with pytest.raises(OSError, match="injected"):
            t.apply([VersionWrite(b"b%05d" % i, 4, b"y" * 100) for i in range(400)])
    finally:
        env.wal.insert = real
    after = env.pages()
    changed = [b for b, p in before.items() if after[b] != p]
    # the batch's first run (one INSERT record, logged) is the only change that stays
    assert len(changed) == 1
    assert all(p == bytes(BLCKSZ) for b, p in after.items() if b not in before)
    result = t.check()
    assert result.entries == 40 + sum(1 for k, _v in t.items() if k.startswith(b"b"))
    assert [k for k, _v in t.items()][:40] == [b"a%05d" % i for i in range(40)]
    assert no_pins(env.bm)
