"""The B+tree access method over real files, a real buffer manager and a real WAL, on
every io method.

Redo is checked byte for byte as the heap's is: before an operation every page is copied,
after it the records it wrote are read back from the WAL files and replayed with
``btree_redo`` on the copies (through a stand-in redo context that always asks for redo,
so the redo code runs even where a full-page image would have been restored); the result
must equal the pages the operation left in the buffer pool, and each full-page image
must equal the page redo produced. ``BTree.check()`` (amcheck-like) runs after the steps.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import threading
import time
from dataclasses import dataclass

import pytest
from slonik.engine.access import btree as btree_module
from slonik.engine.access import btree_page as bp
from slonik.engine.access.btree import (
    INNER_CACHE_PAGES_MAX,
    OVERFLOW_EXTENTS_MAX,
    VALUE_INLINE_MAX_BYTES,
    VALUE_MAX_BYTES,
    BTree,
    VersionWrite,
    XidSnapshot,
    _check_value,
    check_tree,
    unpack_overflow_ref,
)
from slonik.engine.access.btree_page import KEY_MAX_BYTES, OVERFLOW_CHUNK_BYTES
from slonik.engine.access.btree_wal import (
    BTREE_RMGR,
    XLOG_BTREE_FREE,
    XLOG_BTREE_INSERT,
    XLOG_BTREE_NEWTREE,
    XLOG_BTREE_OPMASK,
    XLOG_BTREE_OVERFLOW,
    XLOG_BTREE_SET_XMAX,
    XLOG_BTREE_SPLIT,
    XLOG_BTREE_UNLINK,
    XLOG_BTREE_VACUUM,
    btree_describe,
    btree_redo,
)
from slonik.engine.recovery import RedoAction, RedoContext
from slonik.storage.bufmgr import BufferManager
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ, CHECKSUM_OFFSET, page_check
from slonik.storage.smgr import Fork, Smgr
from slonik.wal.reader import WalReader
from slonik.wal.rmgr import RM_BTREE, get_rmgr, install_rmgrs
from slonik.wal.xlog import Wal

from tests.support.redo import StandInRedoContext, no_pins

REL = 16384
SEGMENT_BLOCKS = 64               # small data segments: big trees span files
WAL_SEGMENT_BYTES = 1 << 22
SHARED_BUFFERS = 64               # small pool: evictions (and WAL flushes) during tests

install_rmgrs([BTREE_RMGR])


@dataclass
class Env:
    path: str
    aio: object
    smgr: Smgr
    wal: Wal
    bm: BufferManager
    tree: BTree
    start_lsn: int  # where the tree's first record (NEWTREE) starts

    def nblocks(self) -> int:
        return self.smgr.nblocks(REL, Fork.MAIN) if self.smgr.exists(REL, Fork.MAIN) else 0

    def pages(self, bm: BufferManager | None = None) -> dict[int, bytes]:
        """Every block's page as it is in the pool, checksum field zeroed."""
        bm = bm or self.bm
        out = {}
        for block in range(self.nblocks()):
            buf = bm.read_buffer(REL, Fork.MAIN, block)
            bm.lock_shared(buf)
            page = bytearray(bm.page(buf))
            bm.unlock_shared(buf)
            bm.unpin(buf)
            page[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 4] = bytes(4)
            out[block] = bytes(page)
        return out

    def records(self, start_lsn: int) -> list:
        self.wal.flush()
        return list(WalReader(os.path.join(self.path, "wal"), WAL_SEGMENT_BYTES, start_lsn))

    def close(self) -> None:
        self.bm.flush_all()
        self.wal.close()
        self.smgr.close()


def make_env(path: str, aio, *, shared_buffers: int = SHARED_BUFFERS) -> Env:
    os.makedirs(os.path.join(path, "wal"), exist_ok=True)
    smgr = Smgr(path, segment_size=SEGMENT_BLOCKS, max_files=8, aio=aio)
    wal = Wal(os.path.join(path, "wal"), aio, wal_segment_size=WAL_SEGMENT_BYTES)
    bm = BufferManager(smgr, aio, shared_buffers=shared_buffers, io_combine_limit=8,
                       flush_wal=wal.flush)
    start = wal.insert_lsn
    return Env(path, aio, smgr, wal, bm, BTree.create(REL, bm, wal), start)


@pytest.fixture
def env(tmp_path, aio):
    e = make_env(str(tmp_path), aio)
    yield e
    e.close()


def redo_reproduces(env: Env, before: dict[int, bytes], start_lsn: int) -> list:
    """Replay the records from ``start_lsn`` on copies of ``before``: every page must come
    out equal to the pool's, and every full-page image equal to redo's page. Returns the
    records."""
    after = env.pages()
    records = env.records(start_lsn)
    ctx = StandInRedoContext({b: bytearray(p) for b, p in before.items()}, REL)
    for rr in records:
        assert rr.record.rmgr == RM_BTREE
        btree_redo(ctx, rr)
        for ref in rr.record.blocks:
            if ref.image is not None:
                assert bytes(ctx.pages[ref.block][12:]) == ref.image[12:], \
                    f"image of block {ref.block} differs from redo's page"
        assert "\n" not in btree_describe(rr.record)
    for block, page in after.items():
        if block not in ctx.pages:  # extended, never initialised (a failed change)
            assert page == bytes(BLCKSZ)
            continue
        got = ctx.pages[block]
        got[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 4] = bytes(4)
        assert bytes(got) == page, f"redo of block {block} differs from the original"
        page_check(page)
    return records


def ops_of(records) -> list[int]:
    return [rr.record.info & XLOG_BTREE_OPMASK for rr in records]


def big_key(i: int, width: int = 900) -> bytes:
    """Wide keys make small fan-out: a few hundred keys give a three-level tree."""
    return b"%08d" % i + bytes([i % 251]) * (width - 8)


# ---------------------------------------------------------------------------- basics


def test_versions_get_and_redo_of_each_record(env):
    """A key's life: insert, set_xmax + a newer version (put), delete; versions are listed
    newest first, get answers per snapshot, and each operation's redo reproduces its
    pages with the expected record kind."""
    t = env.tree
    start, before = env.wal.insert_lsn, env.pages()
    t.insert(b"k", b"v1", 5)
    [rr] = redo_reproduces(env, before, start)
    assert ops_of([rr]) == [XLOG_BTREE_INSERT]
    start, before = env.wal.insert_lsn, env.pages()
    t.put(b"k", b"v2", 6)
    assert ops_of(redo_reproduces(env, before, start)) == [XLOG_BTREE_SET_XMAX, XLOG_BTREE_INSERT]
    assert [(e.xmin, e.xmax, e.payload) for e in t.versions(b"k")] == [(6, 0, b"v2"), (5, 6, b"v1")]
    assert t.get(b"k") == b"v2"
    old_snapshot = XidSnapshot(xmax=6, own=0, excluded=())
    assert t.get(b"k", old_snapshot) == b"v1"
    assert t.get(b"k", XidSnapshot(xmax=5, own=0, excluded=())) is None
    assert t.delete(b"k", 7) and t.get(b"k") is None and not t.delete(b"k", 8)
    assert t.get(b"k", XidSnapshot(xmax=100, own=0, excluded=(7,))) == b"v2"
    assert list(t.items(snapshot=old_snapshot)) == [(b"k", b"v1")]
    with pytest.raises(ValueError, match="already has a version with xmin 5"):
        t.insert(b"k", b"again", 5)
    assert t.set_xmax(b"k", 6, 0) and t.get(b"k") == b"v2"
    assert not t.set_xmax(b"nope", 6, 7)
    assert t.check().entries == 2 and no_pins(env.bm)


def test_splits_to_three_levels_redo_byte_for_byte(env):
    """Wide keys inserted in random order split leaves, internal pages and the root twice;
    replaying the whole WAL from the empty relation rebuilds every page byte for byte
    (split records are single records from leaf to root), check() passes and scans in
    both directions return the model's order."""
    t = env.tree
    start = env.start_lsn
    assert ops_of(env.records(start)) == [XLOG_BTREE_NEWTREE]
    keys = [big_key(i) for i in range(400)]
    random.Random(7).shuffle(keys)
    for i, k in enumerate(keys):
        t.insert(k, b"v%d" % i, i + 1)
    assert t.height >= 3
    records = redo_reproduces(env, {}, start)
    assert XLOG_BTREE_SPLIT in ops_of(records)
    result = t.check()
    assert result.levels == t.height and result.entries == 400 and result.pages_per_level[0] == 1
    expected = sorted((k, b"v%d" % i) for i, k in enumerate(keys))
    assert list(t.items()) == expected
    assert list(t.items(reverse=True)) == expected[::-1]
    assert result.unreached_pages == 0 and t.stats().height == t.height
    assert no_pins(env.bm)


def test_ascending_inserts_fill_leaves_to_the_fillfactor(env):
    """Ascending inserts split the rightmost leaf 90/10, so leaves end up ~90% full
    rather than half full (nbtree's rightmost-split rule)."""
    t = env.tree
    for i in range(3000):
        t.insert(b"%08d" % i, bytes(100), i + 1)
    result = t.check()
    leaves = result.pages_per_level[-1]
    per_leaf = 8152 // (bp.item_cost(bp.LEAF_HEADER_SIZE + 8 + 100))
    assert leaves <= 3000 / (per_leaf * 0.85), (leaves, per_leaf)


def test_range_scans_forward_and_reverse(env):
    """items(start, stop, reverse) returns exactly the model's keys in [start, stop), in
    order or reversed, for bounds on, between and outside the stored keys; values=False
    yields None values."""
    t = env.tree
    rnd = random.Random(3)
    model = {}
    for i in range(1500):
        k = rnd.randbytes(rnd.randrange(1, 40))
        if k not in model:
            model[k] = rnd.randbytes(rnd.randrange(0, 150))
            t.insert(k, model[k], i + 1)
    ks = sorted(model)
    bounds = [None, b"", ks[0], ks[10], ks[700], ks[700] + b"\x00", ks[-1], b"\xff" * 41]
    for start in bounds:
        for stop in bounds:
            want = [(k, model[k]) for k in ks
                    if (start is None or k >= start) and (stop is None or k < stop)]
            assert list(t.items(start, stop)) == want, (start, stop)
            assert list(t.items(start, stop, reverse=True)) == want[::-1], (start, stop)
    assert [v for _k, v in t.items(values=False)] == [None] * len(ks)
    assert no_pins(env.bm)


def test_abandoned_scans_release_their_pins(env):
    """A scan (forward or reverse) stopped after a few items and dropped leaves no buffer
    pinned: the read stream's look-ahead pins and the held-back buffer are released.
    Before the forward scan the leaves are dropped from the pool (written, then forgotten),
    so its stream has reads in flight ahead of it (a forward scan copies the leaves it was
    handed and unpins them at once: a stream with no reads in flight pins nothing between
    runs)."""
    t = env.tree
    for i in range(3000):
        t.insert(b"%06d" % i, bytes(60), 2)
    for reverse in (True, False):
        if not reverse:
            env.bm.flush_all()
            env.bm.drop_relation_buffers(REL)
        it = t.items(reverse=reverse, values=False)
        got = [next(it)[0] for _ in range(500)]
        assert got == sorted(got, reverse=reverse)
        if reverse or env.aio.method.name != "sync":
            # the stream is reading ahead (with sync on buffered files it only advises the
            # kernel, and a forward scan unpins each run it was handed at once)
            assert not no_pins(env.bm)
        it.close()
        assert no_pins(env.bm)


def test_bad_keys_and_values_are_refused_and_nothing_written(env):
    """Non-bytes keys/values are TypeErrors; a key over KEY_MAX_BYTES and xids out of range
    are ValueErrors naming the limit; no WAL is written and no page changes. A key of
    exactly KEY_MAX_BYTES is stored."""
    t = env.tree
    t.insert(b"keep", b"x", 1)
    env.wal.flush()
    lsn, before = env.wal.insert_lsn, env.pages()
    with pytest.raises(TypeError, match="key must be bytes"):
        t.insert("text", b"v", 2)
    with pytest.raises(TypeError, match="value must be bytes"):
        t.insert(b"k", 5, 2)
    with pytest.raises(ValueError, match=f"over the limit of {KEY_MAX_BYTES} bytes"):
        t.insert(b"k" * (KEY_MAX_BYTES + 1), b"v", 2)
    with pytest.raises(ValueError, match=f"over the limit of {KEY_MAX_BYTES} bytes"):
        t.get(b"k" * (KEY_MAX_BYTES + 1))
    with pytest.raises(ValueError, match="xmin must be in 1.."):
        t.insert(b"k", b"v", 0)
    with pytest.raises(TypeError, match="xid must be an int"):
        t.put(b"k", b"v", "2")
    assert env.wal.insert_lsn == lsn and env.pages() == before
    with pytest.raises(ValueError, match=f"over the limit of {VALUE_MAX_BYTES} bytes"):
        _check_value(_Huge(b""))
    t.insert(b"m" * KEY_MAX_BYTES, b"v" * 100, 3)
    assert t.get(b"m" * KEY_MAX_BYTES) == b"v" * 100
    t.check()


class _Huge(bytes):
    """Claims to be one byte over 1 GiB without allocating it."""

    def __len__(self) -> int:
        return VALUE_MAX_BYTES + 1


def test_open_reads_only_the_metapage(env, aio):
    """BTree.open over a cold buffer pool reads one block (the metapage), whatever the
    tree's size, and finds the same root and height."""
    t = env.tree
    for i in range(300):
        t.insert(big_key(i, 300), b"v", i + 1)
    env.bm.flush_all()
    bm2 = BufferManager(env.smgr, aio, shared_buffers=32, flush_wal=env.wal.flush)
    t2 = BTree.open(REL, bm2, env.wal)
    assert bm2.stats().reads == 1
    assert (t2.root, t2.height) == (t.root, t.height) and t.height >= 2
    assert t2.get(big_key(17, 300)) == b"v"
    assert bm2.stats().reads == t.height + 1


def test_apply_batches_writes_per_leaf(env):
    """apply() of transactions' write sets (new keys, updates of existing versions,
    deletes, big values, a leaf that overflows mid-batch) gives the same contents as
    the model, ends old versions with the writer's xid, writes far fewer records than
    writes, reproduces its pages at redo and leaves a tree that checks clean. Bad batches
    (a key twice, a non-bytes key) are refused before anything is written."""
    t = env.tree
    rnd = random.Random(9)
    model: dict[bytes, tuple[int, bytes]] = {}
    xid = 10
    for _round in range(6):
        xid += 1
        start, before = env.wal.insert_lsn, env.pages()
        writes = []
        keys = {rnd.randbytes(rnd.randrange(1, 12)) for _ in range(300)}
        keys |= set(rnd.sample(sorted(model), min(len(model), 100)))
        for k in sorted(keys):
            old = model.get(k)
            if old is not None and rnd.random() < 0.2:
                writes.append(VersionWrite(k, xid, None, old[0]))
                del model[k]
                continue
            value = rnd.randbytes(rnd.choice([5, 50, 300, 3000]))
            writes.append(VersionWrite(k, xid, value, old[0] if old else 0))
            model[k] = (xid, value)
        rnd.shuffle(writes)
        t.apply(writes)
        records = redo_reproduces(env, before, start)
        assert len(records) < len(writes) / 2, (len(records), len(writes))
        t.check()
        assert list(t.items()) == sorted((k, v) for k, (_x, v) in model.items())
    some = next(iter(model))
    assert [e.xmax for e in t.versions(some)][0] == 0
    lsn = env.wal.insert_lsn
    with pytest.raises(ValueError, match="appears twice in one batch"):
        t.apply([VersionWrite(b"a", 99, b"1"), VersionWrite(b"a", 99, b"2")])
    with pytest.raises(TypeError, match="key must be bytes"):
        t.apply([VersionWrite(b"a", 99, b"1"), VersionWrite("b", 99, b"2")])
    assert env.wal.insert_lsn == lsn
    assert no_pins(env.bm)


def test_get_many_reads_the_leaves_in_one_stream(env):
    """get_many over a cold pool returns what get returns for each key (in input order,
    duplicates and missing keys included, the default for missing ones, a snapshot
    respected) and reads each needed leaf once, with fewer read I/Os than leaves because
    adjacent leaves are combined."""
    t = env.tree
    for i in range(6000):  # ascending: leaves sit in physical order
        t.insert(b"%06d" % i, b"v%d" % i, 2)
    t.put(b"%06d" % 5, b"newer", 3)
    env.bm.flush_all()
    env.bm.drop_relation_buffers(REL)
    wanted = [b"%06d" % i for i in range(0, 6000, 7)] + [b"nope", b"%06d" % 7, b"%06d" % 5]
    before = env.bm.stats()
    got = t.get_many(wanted, default=b"-")
    after = env.bm.stats()
    assert got == [t.get(k) if t.get(k) is not None else b"-" for k in wanted]
    assert got[-1] == b"newer" and got[-3] == b"-"
    leaves = t.check().pages_per_level[-1]
    assert after.reads - before.reads <= leaves + t.height + 2
    assert after.read_ios - before.read_ios < leaves / 2
    old = XidSnapshot(xmax=3, own=0, excluded=())
    assert t.get_many([b"%06d" % 5, b"%06d" % 6], old) == [b"v5", b"v6"]
    assert t.get_many([]) == []
    assert no_pins(env.bm)


def test_get_many_reads_lone_leaves_as_point_reads(env, monkeypatch):
    """get_many over a cold pool of a buffered relation whose needed leaves have no needed
    neighbour: those leaves are advised to the kernel in one call (WILLNEED, one block
    each) and read as a point read's miss (in the calling thread, no AIO submission, no
    read stream), each once; the answers are get's. A batch whose leaves are adjacent
    still goes to the read stream (test_get_many_reads_the_leaves_in_one_stream)."""
    t = env.tree
    pad = bytes(200)  # ~35 entries a leaf: keys 150 apart sit on leaves 4 apart
    for i in range(3000):
        t.insert(b"k%05d" % i, b"v%d" % i + pad, 2)
    env.bm.flush_all()
    env.bm.drop_relation_buffers(REL)
    wanted = [b"k%05d" % i for i in range(0, 3000, 150)] + [b"nope", b"k00150"]
    leaves = sorted({t._leaf_for(k) for k in wanted})
    assert all(b - a > 1 for a, b in itertools.pairwise(leaves))
    env.bm.drop_relation_buffers(REL)   # (the descents above read inner pages only)
    advised = []
    real = env.smgr.prefetch_runs

    def spy(rel, fork, runs):
        runs = list(runs)
        advised.append(runs)
        return real(rel, fork, runs)

    monkeypatch.setattr(env.smgr, "prefetch_runs", spy)
    streams = []
    real_stream = btree_module.ReadStream

    def stream_spy(bm, rel, fork, blocks, *args, **kwargs):
        streams.append(list(blocks))
        return real_stream(bm, rel, fork, blocks, *args, **kwargs)

    monkeypatch.setattr(btree_module, "ReadStream", stream_spy)
    before_reads, before_subs = env.bm.stats().reads, env.aio.stats().submissions
    got = t.get_many(wanted, default=b"-")
    assert env.aio.stats().submissions == before_subs
    assert env.bm.stats().reads - before_reads == len(leaves)
    assert advised == [[(b, 1) for b in leaves]]
    assert streams == [[]]
    monkeypatch.undo()
    assert got == [t.get(k) or b"-" for k in wanted]
    assert got[-2] == b"-" and got[-1] == b"v150" + pad
    assert no_pins(env.bm)


def test_cold_scan_combines_adjacent_leaves(env):
    """A full scan of a cold pool walks the leaves through the parent-fed read stream:
    every leaf is read once, in fewer read I/Os than leaves (adjacent leaves combined),
    and the keys come back in order. A reverse range scan of a cold pool reads each
    leaf once too (descending blocks are not combined: the stream only gives
    concurrency there)."""
    t = env.tree
    for i in range(3000):
        t.insert(b"%06d" % i, bytes(60), 2)
    env.bm.flush_all()
    env.bm.drop_relation_buffers(REL)
    before = env.bm.stats()
    keys = [k for k, _v in t.items(values=False)]
    after = env.bm.stats()
    assert keys == [b"%06d" % i for i in range(3000)]
    leaves = t.check().pages_per_level[-1]
    assert leaves > 20
    assert after.reads - before.reads <= leaves + 2 * t.height
    assert after.read_ios - before.read_ios < leaves / 2
    env.bm.flush_all()
    env.bm.drop_relation_buffers(REL)
    before = env.bm.stats()
    keys = [k for k, _v in t.items(b"000100", b"002900", reverse=True, values=False)]
    after = env.bm.stats()
    assert keys == [b"%06d" % i for i in range(2899, 99, -1)]
    assert after.reads - before.reads <= leaves + 2 * t.height  # each leaf read once
    assert no_pins(env.bm)


def test_cold_scans_find_each_next_parent_page_read_already(env, monkeypatch):
    """A cold scan (forward, and reverse) over a tree with several parent pages reads each
    next parent page ahead (its read started when the feed took the page before it): when
    the feed gets to it, the page is in the pool already (checked with ``cached`` at every
    step of ``_visit_parent``) instead of being read synchronously behind the leaf reads
    in flight; the keys come back in order and nothing stays pinned."""
    t = env.tree
    keys = [big_key(i, 900) for i in range(400)]
    for k in keys:
        t.insert(k, b"v", 2)
    assert t.check().pages_per_level[-2] >= 4  # parent pages to step through
    seen: list[bool] = []
    visit_parent = btree_module._visit_parent

    def checked(tree, block, link, take):
        seen.append(env.bm.cached(REL, Fork.MAIN, block, 1))
        return visit_parent(tree, block, link, take)

    monkeypatch.setattr(btree_module, "_visit_parent", checked)
    for reverse in (False, True):
        seen.clear()
        env.bm.flush_all()
        env.bm.drop_relation_buffers(REL)
        got = [k for k, _v in t.items(values=False, reverse=reverse)]
        assert got == (keys[::-1] if reverse else keys)
        assert len(seen) >= 3 and all(seen), seen
    assert no_pins(env.bm)


# ---------------------------------------------------------------------------- overflow


def test_big_values_round_trip_through_vectored_reads(env):
    """Values of several MiB go out of line, come back equal from a cold pool through a
    read stream whose reads combine adjacent overflow pages (fewer read I/Os than pages),
    and their OVERFLOW records reproduce the pages at redo."""
    t = env.tree
    rnd = random.Random(5)
    big = rnd.randbytes(5 * 1024 * 1024 + 123)
    start, before = env.wal.insert_lsn, env.pages()
    t.insert(b"big", big, 1)
    t.insert(b"edge", b"e" * (VALUE_INLINE_MAX_BYTES + 1), 2)
    t.insert(b"inline", b"i" * VALUE_INLINE_MAX_BYTES, 3)
    records = redo_reproduces(env, before, start)
    assert XLOG_BTREE_OVERFLOW in ops_of(records)
    [entry] = t.versions(b"big")
    ref = unpack_overflow_ref(entry.payload)
    assert ref.npages() == -(-len(big) // OVERFLOW_CHUNK_BYTES) and len(ref.extents) == 1
    assert not t.versions(b"inline")[0].flags & bp.ENTRY_OVERFLOW
    env.bm.flush_all()
    env.bm.drop_relation_buffers(REL)
    reads_before = env.bm.stats()
    assert t.get(b"big") == big
    stats = env.bm.stats()
    assert stats.reads - reads_before.reads >= ref.npages()
    assert stats.read_ios - reads_before.read_ios < ref.npages() / 2
    assert t.get(b"edge") == b"e" * (VALUE_INLINE_MAX_BYTES + 1)
    assert t.check().overflow_pages == ref.npages() + 1
    assert no_pins(env.bm)


def test_overwrites_with_vacuum_keep_the_file_bounded(env):
    """Overwrite-heavy workload: 6 keys with 40 KiB values rewritten 12 times, vacuum
    after each round. Freed overflow pages go on the free list and are reused, so the
    relation stops growing after the first rounds; check() passes (free list and
    references consistent) and vacuum's redo reproduces its pages."""
    t = env.tree
    xid = 1
    sizes = []
    for rnd_ in range(12):
        for k in range(6):
            xid += 1
            t.put(b"key%d" % k, bytes([rnd_ + k]) * 40_000, xid)
        start, before = env.wal.insert_lsn, env.pages()
        result = t.vacuum(lambda xmin, xmax: xmax != 0)
        if rnd_ == 0:
            assert result.entries_removed == 0
        else:
            assert result.entries_removed == 6 and result.overflow_pages_freed == 6 * 5
        if rnd_ in (1, 5):
            assert {XLOG_BTREE_VACUUM, XLOG_BTREE_FREE} <= set(ops_of(
                redo_reproduces(env, before, start)))
        result = t.check()
        assert result.unreached_pages == 0 and result.free_pages == t.stats().free_pages
        sizes.append(env.nblocks())
    assert max(sizes[2:]) == sizes[1], sizes
    assert all(t.get(b"key%d" % k) == bytes([11 + k]) * 40_000 for k in range(6))


def test_queue_workload_unlinks_and_recycles_empty_leaves(env):
    """A queue: each round appends 400 ascending keys and deletes the 400 oldest, then
    vacuums. Leaves left empty are unlinked (UNLINK records that redo reproduces) and,
    with no reader about, recycled onto the free list, from which later splits take
    their pages: the relation stops growing, check() stays clean, and scans both ways
    see exactly the live window."""
    t = env.tree
    xid = 1
    head = 0
    sizes = []
    for round_ in range(12):
        for i in range(round_ * 400, round_ * 400 + 400):
            xid += 1
            t.insert(b"%08d" % i, bytes(40), xid)
        if round_:
            for i in range(head, head + 400):
                xid += 1
                assert t.delete(b"%08d" % i, xid)
            head += 400
        start, before = env.wal.insert_lsn, env.pages()
        result = t.vacuum(lambda xmin, xmax: xmax != 0)
        if round_ in (2, 7):
            records = redo_reproduces(env, before, start)
            assert {XLOG_BTREE_VACUUM, XLOG_BTREE_UNLINK, XLOG_BTREE_FREE} <= set(ops_of(records))
        if round_:
            assert result.leaves_unlinked > 0 and result.pages_recycled > 0
        check = t.check()
        assert check.unreached_pages == 0
        sizes.append(env.nblocks())
    live = [b"%08d" % i for i in range(head, 12 * 400)]
    assert [k for k, _v in t.items(values=False)] == live
    assert [k for k, _v in t.items(values=False, reverse=True)] == live[::-1]
    assert max(sizes[4:]) <= sizes[3] + 1, sizes
    assert no_pins(env.bm)


def test_unlinked_leaves_wait_for_older_readers(env):
    """A leaf unlinked while a reader that started earlier is still running is not
    recycled by that vacuum (the reader may still reach it); the next vacuum after the
    reader finished recycles it."""
    t = env.tree
    for i in range(600):
        t.insert(b"%06d" % i, bytes(40), 2)
    for i in range(300):
        t.delete(b"%06d" % i, 3)
    scan = t.items(values=False)
    assert next(scan)[0] == b"000300"  # a reader registered before the vacuum
    result = t.vacuum(lambda xmin, xmax: xmax != 0)
    assert result.leaves_unlinked > 0 and result.pages_recycled == 0
    rest = [k for k, _v in scan]  # the reader still finishes correctly
    assert rest == [b"%06d" % i for i in range(301, 600)]
    again = t.vacuum(lambda xmin, xmax: xmax != 0)
    assert again.pages_recycled == result.leaves_unlinked
    assert t.check().free_pages == again.pages_recycled
    assert no_pins(env.bm)


def test_fragmented_free_list_bounds_the_extent_count(env):
    """Free pages scattered through the relation are reused for a new value only while its
    reference stays under OVERFLOW_EXTENTS_MAX extents; the rest comes from one new
    extent at the end. The value reads back whole and check() passes."""
    t = env.tree
    for i in range(80):
        t.insert(b"s%03d" % i, bytes([i]) * (OVERFLOW_CHUNK_BYTES + 1), i + 1)  # 2 pages each
    for i in range(0, 80, 2):
        t.set_xmax(b"s%03d" % i, i + 1, 1000)
    t.vacuum(lambda xmin, xmax: xmax == 1000)
    value = random.Random(1).randbytes(OVERFLOW_CHUNK_BYTES * 70)
    t.insert(b"frag", value, 2000)
    ref = unpack_overflow_ref(t.versions(b"frag")[0].payload)
    assert len(ref.extents) <= OVERFLOW_EXTENTS_MAX
    assert t.get(b"frag") == value
    assert t.check().free_pages < 80


# ---------------------------------------------------------------------------- corruption


def _damage_block(env: Env, block: int) -> None:
    """Flip bytes of ``block`` on disk (after writing and forgetting every buffer)."""
    env.bm.flush_all()
    env.bm.drop_relation_buffers(REL)
    seg, at = divmod(block, SEGMENT_BLOCKS)
    path = os.path.join(env.path, "base", str(REL) + (f".{seg}" if seg else ""))
    with open(path, "r+b") as f:
        f.seek(at * BLCKSZ + 4000)
        data = f.read(16)
        f.seek(at * BLCKSZ + 4000)
        f.write(bytes(b ^ 0x5A for b in data))


def test_damaged_leaf_fails_only_its_keys(env):
    """A leaf page damaged on disk: get of a key on it raises DataCorruptionError naming
    relation and block; keys on other leaves stay readable (descent never touches the bad
    leaf); check() reports the same block."""
    t = env.tree
    keys = [big_key(i, 200) for i in range(300)]
    for i, k in enumerate(keys):
        t.insert(k, b"v%d" % i, i + 1)
    assert t.height >= 2
    victim_key = keys[150]
    home = _leaf_blocks(t)
    block = home[victim_key]
    _damage_block(env, block)
    with pytest.raises(DataCorruptionError, match=f"block {block} of relation {REL}") as ei:
        t.get(victim_key)
    assert ei.value.relation == REL and ei.value.block == block
    healthy = [k for k in keys if home[k] != block]
    assert len(healthy) > 200
    for k in healthy:
        assert t.get(k) == b"v%d" % keys.index(k)
    with pytest.raises(DataCorruptionError) as ei:
        check_tree(t)
    assert ei.value.block == block and ei.value.relation == REL
    assert no_pins(env.bm)


def test_damaged_overflow_page_names_its_block(env):
    """A damaged overflow page fails the read of that value (naming relation and block)
    and of nothing else."""
    t = env.tree
    t.insert(b"big", bytes(range(256)) * 200, 1)
    t.insert(b"small", b"fine", 2)
    ref = unpack_overflow_ref(t.versions(b"big")[0].payload)
    block = list(ref.blocks())[3]
    _damage_block(env, block)
    with pytest.raises(DataCorruptionError, match=f"block {block} of relation {REL}"):
        t.get(b"big")
    assert t.get(b"small") == b"fine"
    assert [k for k, _v in t.items(values=False)] == [b"big", b"small"]
    assert no_pins(env.bm)


def _leaf_of(t: BTree, key: bytes) -> int:
    return _leaf_blocks(t)[key]


def _leaf_blocks(t: BTree) -> dict[bytes, int]:
    """key -> the leaf block holding its (first) version, walking the leaf level."""
    out: dict[bytes, int] = {}
    block, buf = t._descend(b"", bp.XMIN_MAX)
    while True:
        page = t.bufmgr.page(buf)
        special = bp.bt_special(page)
        items = bp.bt_items(page)[bp.bt_first_data(special) - 1:]
        t._release(buf)
        for item in items:
            out.setdefault(bp.unpack_entry(item).key, block)
        if special.next == bp.P_NONE:
            return out
        block, buf = special.next, t._read(special.next)


def _edit_page(env: Env, block: int, edit) -> None:
    buf = env.bm.read_buffer(REL, Fork.MAIN, block)
    env.bm.lock_exclusive(buf)
    try:
        edit(env.bm.page(buf))
    finally:
        env.bm.unlock_exclusive(buf)
        env.bm.unpin(buf)


@pytest.mark.parametrize("flaw", ["order", "high_key", "right_link", "overflow", "free_list"])
def test_check_reports_the_first_violation(env, flaw):
    """Each invariant broken by hand in the pool (items out of order, a high key that is
    not the parent's bound, a wrong left-link, an overflow reference to a non-overflow
    page, a free-list count that lies) makes check() raise DataCorruptionError naming the
    relation and the page concerned."""
    t = env.tree
    for i in range(120):
        t.insert(big_key(i, 400), b"v", i + 1)
    t.insert(b"zbig", bytes(30_000), 500)
    t.set_xmax(b"zbig", 500, 501)
    t.insert(b"zbig2", bytes(30_000), 502)
    t.vacuum(lambda xmin, xmax: xmax == 501)
    t.check()
    leaf = _leaf_of(t, big_key(60, 400))

    if flaw == "order":
        def edit(page):
            items = bp.bt_items(page)
            first = bp.bt_first_data(bp.bt_special(page))
            data = items[first - 1:]
            data[0], data[1] = data[1], data[0]
            bp.bt_rebuild(page, bp.bt_special(page), items[:first - 1] + data)
        block, match = leaf, "out of order"
    elif flaw == "high_key":
        def edit(page):
            items = bp.bt_items(page)
            items[0] = bp.pack_pivot(b"\xff" * 5, 0, 0)
            bp.bt_rebuild(page, bp.bt_special(page), items)
        block, match = leaf, "high key"
    elif flaw == "right_link":
        def edit(page):
            bp.bt_set_prev(page, 999)
        block, match = leaf, "left-link 999"
    elif flaw == "overflow":
        ref = unpack_overflow_ref(t.versions(b"zbig2")[0].payload)
        block = list(ref.blocks())[1]

        def edit(page):
            s = bp.bt_special(page)
            bp.bt_set_special(page, bp.Special(s.prev, s.next, s.level, bp.BTP_FREE))
        match = "overflow chunk 1"
    else:
        block = 0

        def edit(page):
            item = bytearray(bp.bt_items(page)[0])
            item[20:24] = (99).to_bytes(4, "little")
            bp.bt_rebuild(page, bp.bt_special(page), [bytes(item)])
        match = "free list holds"
    _edit_page(env, block, edit)
    with pytest.raises(DataCorruptionError, match=match) as ei:
        t.check()
    assert ei.value.relation == REL and ei.value.block == block
    assert f"relation {REL} block {block}" in str(ei.value)


def test_open_refuses_a_relation_that_is_not_a_btree(env, aio):
    """open() of a relation whose block 0 is no B+tree metapage raises
    DataCorruptionError naming relation and block 0; create() over an existing relation
    is a ValueError."""
    _edit_page(env, 0, lambda page: bp.bt_set_special(page, bp.Special(0, 0, 0, bp.BTP_LEAF)))
    with pytest.raises(DataCorruptionError, match=f"relation {REL} block 0: block 0 is not a"):
        BTree.open(REL, env.bm, env.wal)
    with pytest.raises(ValueError, match="already has blocks"):
        BTree.create(REL, env.bm, env.wal)


# ---------------------------------------------------------------------------- recovery


def test_crash_recovery_through_redo_context(tmp_path, aio):
    """Crash: the pool's dirty pages are lost, then every record after a checkpoint is
    replayed through engine.recovery's RedoContext (full-page images restored, will_init
    pages rebuilt, pages already newer skipped). The pages equal the pre-crash pool's, and
    the recovered tree passes check() and returns every value."""
    env = make_env(str(tmp_path), aio)
    t = env.tree
    keys = [big_key(i, 300) for i in range(200)]
    for i, k in enumerate(keys[:100]):
        t.insert(k, b"a%d" % i, i + 1)
    env.bm.flush_all()
    redo_from = env.wal.begin_checkpoint()
    for i, k in enumerate(keys[100:], 100):
        t.insert(k, b"b%d" % i, i + 1)
    for i in range(0, 200, 3):
        t.put(keys[i], b"c%d" % i, 1000 + i)
    t.insert(b"big", bytes(range(256)) * 100, 5000)
    t.vacuum(lambda xmin, xmax: xmax != 0 and xmin % 2 == 0)
    expected_pages = env.pages()
    expected = list(t.items())
    env.wal.flush()

    bm2 = BufferManager(env.smgr, aio, shared_buffers=64, flush_wal=env.wal.flush)
    ctx = RedoContext(bm2, env.smgr)
    actions = []
    real = ctx.read_buffer_for_redo

    def spy(rr, i):
        action, buf = real(rr, i)
        actions.append(action)
        return action, buf

    ctx.read_buffer_for_redo = spy
    for rr in WalReader(os.path.join(env.path, "wal"), WAL_SEGMENT_BYTES, redo_from):
        if rr.record.rmgr == RM_BTREE:
            get_rmgr(rr.record.rmgr).redo(ctx, rr)
    assert RedoAction.RESTORED in actions and RedoAction.NEEDS_REDO in actions
    env.bm = bm2  # the old pool is the "crashed" one: never written
    assert env.pages(bm2) == expected_pages
    t2 = BTree.open(REL, bm2, env.wal)
    assert list(t2.items()) == expected
    t2.check()
    bm2.flush_all()
    env.wal.close()
    env.smgr.close()


def test_failed_wal_insert_puts_the_pages_back(env):
    """If logging a split fails (injected at the first SPLIT record), every page it had
    changed is restored byte for byte, the page it extended stays all zero (reported as
    unreached by check()), and the tree still checks clean: no unlogged change is ever
    visible."""
    t = env.tree
    for i in range(40):
        t.insert(big_key(i, 700), b"v", i + 1)
    real = env.wal.insert

    def failing(rmgr, info, *a, **kw):
        if info & XLOG_BTREE_OPMASK == XLOG_BTREE_SPLIT:
            raise OSError(5, "injected WAL failure")
        return real(rmgr, info, *a, **kw)

    env.wal.insert = failing
    try:
        with pytest.raises(OSError, match="injected"):
            for i in range(40, 200):
                before = env.pages()  # as the last logged change left them
                t.insert(big_key(i, 700), b"v", i + 1)
    finally:
        env.wal.insert = real
    after = env.pages()
    for block, page in before.items():
        assert after[block] == page
    assert all(p == bytes(BLCKSZ) for b, p in after.items() if b not in before)
    assert t.check().unreached_pages == len(after) - len(before) > 0
    assert no_pins(env.bm)


# ---------------------------------------------------------------------------- concurrency


def test_readers_see_consistent_order_during_splits(env):
    """Readers scanning (forward and backward) and probing while a writer splits pages
    (one writer, L&Y move-right for readers, left steps re-checked against right-links)
    always see keys in strictly monotonic order without duplicates, every key inserted
    before their scan started, and never an error."""
    t = env.tree
    for i in range(0, 400, 2):
        t.insert(big_key(i, 250), b"v", i + 1)
    done = threading.Event()
    errors: list[BaseException] = []
    inserted_upto = [0]

    def reader():
        try:
            while not done.is_set():
                floor = inserted_upto[0]
                got = [k for k, _v in t.items(values=False)]
                assert got == sorted(got) and len(set(got)) == len(got)
                back = [k for k, _v in t.items(values=False, reverse=True)]
                assert back == sorted(back, reverse=True) and len(set(back)) == len(back)
                assert set(got) <= set(back)
                s = set(got)
                assert all(big_key(i, 250) in s for i in range(0, 400, 2))
                assert all(big_key(i, 250) in s for i in range(1, floor, 2))
                assert t.get(big_key(200, 250)) == b"v"
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    for i in range(1, 400, 2):
        t.insert(big_key(i, 250), b"w", 1000 + i)
        inserted_upto[0] = i + 1
    done.set()
    for th in threads:
        th.join()
    assert not errors, errors
    assert t.check().entries == 400 and no_pins(env.bm)


def test_readers_during_vacuum_unlinking_and_recycling(env):
    """Readers scanning both ways and probing while one writer appends keys, deletes old
    ones and vacuums (unlinking empty leaves, recycling them into new splits) never fail,
    always see strictly ordered keys, and always see the keys that are never deleted
    (every 500th, so whole leaves empty out). Afterwards check() is clean and some leaves were recycled."""
    t = env.tree
    keep = [b"%06d" % i for i in range(0, 2500, 500)]
    for k in keep:
        t.insert(k, b"keep", 1)
    done = threading.Event()
    errors: list[BaseException] = []

    def reader():
        try:
            while not done.is_set():
                got = [k for k, _v in t.items(values=False)]
                assert got == sorted(set(got))
                assert set(keep) <= set(got)
                back = [k for k, _v in t.items(values=False, reverse=True)]
                assert back == sorted(set(back), reverse=True)
                assert set(keep) <= set(back)
                assert t.get_many(keep) == [b"keep"] * len(keep)
                time.sleep(0.005)  # leave the writer some of the GIL
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader)]
    for th in threads:
        th.start()
    xid = 2
    recycled = 0
    for round_ in range(5):
        for i in range(round_ * 500, round_ * 500 + 500):
            if i % 500:
                xid += 1
                t.insert(b"%06d" % i, b"tmp", xid)
        for i in range(round_ * 500, round_ * 500 + 500):
            if i % 500:
                xid += 1
                t.delete(b"%06d" % i, xid)
        recycled += t.vacuum(lambda xmin, xmax: xmax != 0).pages_recycled
    done.set()
    for th in threads:
        th.join()
    assert not errors, errors
    recycled += t.vacuum(lambda xmin, xmax: xmax != 0).pages_recycled
    assert recycled > 0
    assert t.check().entries == len(keep) and no_pins(env.bm)


def test_rmgr_describe_is_one_line():
    """RM_BTREE is "btree" with btree_redo/btree_describe; a malformed payload is
    described, not raised."""
    rm = get_rmgr(RM_BTREE)
    assert rm.name == "btree" and rm.redo is btree_redo and rm.describe is btree_describe
    from slonik.wal.record import BlockRef, WalRecord
    text = btree_describe(WalRecord(RM_BTREE, XLOG_BTREE_SPLIT, 5, b"\x00\x09\xff\xff",
                                    (BlockRef(REL, 0, 3),)))
    assert "malformed" in text and "\n" not in text


# ---------------------------------------------------------------------------- read paths


def _pool_page(env: Env, block: int) -> bytes:
    buf = env.bm.read_buffer(REL, Fork.MAIN, block)
    env.bm.lock_shared(buf)
    try:
        return bytes(env.bm.page(buf))
    finally:
        env.bm.unlock_shared(buf)
        env.bm.unpin(buf)


def _assert_inner_cache_current(env: Env) -> int:
    """Every cached internal page equals the page in the pool (apart from the checksum
    field, which is set when a page is written out) and is an internal page; returns how
    many are cached."""
    t = env.tree
    for block, (copy, special, _locator) in list(t._inner.items()):
        now = bytearray(_pool_page(env, block))
        mine = bytearray(copy)
        for p in (now, mine):
            p[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 4] = bytes(4)
        assert mine == now, f"cached copy of block {block} is stale"
        assert special.level > 0 and special == bp.bt_special(copy)
    return len(t._inner)


def test_inner_page_cache_stays_current_through_splits_and_vacuum(env):
    """Point reads fill the cache of internal pages (only level > 0 pages, at most
    INNER_CACHE_PAGES_MAX); after interleaved inserts that split leaves and internal pages
    (a root split included), after deletes + vacuum that unlink and recycle leaves, and
    after reopening the tree object, every cached copy equals the page in the buffer pool
    and every key reads back its value with get, get_many and a scan."""
    t = env.tree
    model = {}
    for i in range(0, 600, 3):
        k = big_key(i, 900)
        t.insert(k, b"a%d" % i, 2)
        model[k] = b"a%d" % i
    assert all(t.get(k) == v for k, v in model.items())
    height = t.height
    assert height >= 3 and _assert_inner_cache_current(env) > 0
    xid = 3
    for i in range(600):
        if i % 3:
            k = big_key(i, 900)
            t.insert(k, b"b%d" % i, xid)
            model[k] = b"b%d" % i
            xid += 1
            if i % 50 == 1:  # reads between the splits keep the cache in use
                assert t.get(k) == model[k]
                _assert_inner_cache_current(env)
    assert t.height > height  # the root split too
    _assert_inner_cache_current(env)
    assert all(t.get(k) == v for k, v in model.items())
    for i in range(100, 500):
        k = big_key(i, 900)
        t.delete(k, xid)
        del model[k]
    xid += 1
    result = t.vacuum(lambda xmin, xmax: xmax != 0)
    assert result.leaves_unlinked > 0
    n = _assert_inner_cache_current(env)
    assert 0 < n <= min(INNER_CACHE_PAGES_MAX, sum(t.check().pages_per_level[:-1]))
    for i in range(100, 500, 2):  # splits take the recycled pages
        k = big_key(i, 900)
        t.insert(k, b"c%d" % i, xid)
        model[k] = b"c%d" % i
    _assert_inner_cache_current(env)
    keys = sorted(model)
    assert [t.get(k) for k in keys] == [model[k] for k in keys]
    assert t.get_many(keys[::-1]) == [model[k] for k in keys[::-1]]
    assert list(t.items()) == [(k, model[k]) for k in keys]
    _assert_inner_cache_current(env)
    fresh = BTree.open(REL, env.bm, env.wal)
    assert [fresh.get(k) for k in keys] == [model[k] for k in keys]
    assert t.check().entries == len(model) and no_pins(env.bm)


def test_versions_of_one_key_across_leaves_under_every_snapshot(env):
    """A key with enough versions (large inline values) to span several leaves, between
    neighbours: get, get_many and scans (both directions, data and callable snapshots)
    return, for every snapshot, the newest version it sees, found by moving right across
    the leaves the versions continue on; a snapshot that sees none gets None."""
    t = env.tree
    for i in range(40):
        t.insert(b"a%03d" % i, b"left", 1)
        t.insert(b"z%03d" % i, b"right", 1)
    key = b"m-key"
    nversions = 30
    for xid in range(2, 2 + nversions):
        if xid > 2:
            t.set_xmax(key, xid - 1, xid)
        t.insert(key, bytes([xid]) * 1500, xid)
    leaves = {b for b in _leaf_blocks_of_key(t, key)}
    assert len(leaves) >= 3
    for snap_xmax in range(1, 3 + nversions):
        snap = XidSnapshot(snap_xmax, 0, ())
        want = None if snap_xmax <= 2 else bytes([snap_xmax - 1]) * 1500
        assert t.get(key, snap) == want
        assert t.get(key, lambda a, b, s=snap: s(a, b)) == want
        assert t.get_many([b"a000", key, b"z039"], snap)[1] == want
        for reverse in (False, True):
            for s in (snap, lambda a, b, s=snap: s(a, b)):
                got = dict(t.items(b"l", b"n", snapshot=s, reverse=reverse))
                assert got == ({} if want is None else {key: want})
    assert t.get(key) == bytes([1 + nversions]) * 1500  # the default: the live version
    assert no_pins(env.bm)


def test_get_many_with_several_keys_per_leaf_equals_get(env):
    """get_many of dense batches (many keys per leaf: one probe_many C call per leaf with a
    data snapshot) equals get per key with the same snapshot given as a callable, for
    snapshots that exclude running and aborted xids: keys with several versions, deleted
    keys, out-of-line values, a key whose versions continue on the next leaf, duplicates
    and missing keys in the batch. Checked key by key against get."""
    t = env.tree
    for i in range(400):
        t.insert(b"k%04d" % i, b"one%d" % i, 2)
    for i in range(0, 400, 3):  # a newer version by xid 5 (excluded by some snapshots)
        t.set_xmax(b"k%04d" % i, 2, 5)
        t.insert(b"k%04d" % i, b"five%d" % i, 5)
    for i in range(1, 400, 10):  # deleted by xid 6
        t.set_xmax(b"k%04d" % i, 2, 6)
    big = b"B" * 5000  # out of line
    t.set_xmax(b"k0100", 5, 7)
    t.insert(b"k0100", big, 7)
    for xid in range(8, 20):  # many large versions: they continue over the next leaves
        t.set_xmax(b"k0200", xid - 1 if xid > 8 else 5, xid)
        t.insert(b"k0200", bytes([xid]) * 1500, xid)
    batch = [b"k%04d" % i for i in range(0, 400, 2)] + [b"k0100", b"k0200", b"k0201",
                                                        b"none", b"k0100"]
    for snap in (XidSnapshot(30, 0, ()), XidSnapshot(30, 0, (5,)), XidSnapshot(6, 0, ()),
                 XidSnapshot(12, 0, (7, 9, 11)), XidSnapshot(30, 0, (6, 8))):
        want = [t.get(k, lambda a, b, s=snap: s(a, b)) for k in batch]
        assert t.get_many(batch, snap) == want
        assert t.get_many_trusted(batch, lambda a, b, s=snap: s(a, b), lambda s=snap: s) == want
    assert t.get_many(batch, XidSnapshot(30, 0, ()))[-5] == big
    assert no_pins(env.bm)



def test_get_many_with_one_key_per_leaf_equals_get(env, monkeypatch):
    """get_many of sparse batches (one key per leaf, every leaf in the pool: each probed
    by the point read's lockless C probe, no pin or content lock) equals get per key for
    snapshots that exclude running and aborted xids: keys with several versions, a deleted
    key, an out-of-line value, a key whose versions continue on the next leaves, missing
    keys and duplicates. None of those leaves goes to the locked per-leaf path
    (``_probe_leaf``, observed through a pass-through wrapper) except the ones whose key
    continues right, and nothing stays pinned."""
    t = env.tree
    pad = bytes(200)  # ~35 entries a leaf: keys 150 apart sit on different leaves
    for i in range(3000):
        t.insert(b"k%05d" % i, b"one%d" % i + pad, 2)
    for i in range(0, 3000, 150):  # a newer version by xid 5
        t.set_xmax(b"k%05d" % i, 2, 5)
        t.insert(b"k%05d" % i, b"five%d" % i, 5)
    t.set_xmax(b"k00300", 5, 6)  # deleted by xid 6
    t.set_xmax(b"k00450", 5, 7)
    t.insert(b"k00450", b"B" * 5000, 7)  # out of line
    for xid in range(8, 20):  # many large versions: they continue over the next leaves
        t.set_xmax(b"k02400", xid - 1 if xid > 8 else 5, xid)
        t.insert(b"k02400", bytes([xid]) * 1500, xid)
    batch = [b"k%05d" % i for i in range(0, 3000, 150)] + [b"nope", b"k00450", b"k02999"]
    leaf_of = {k: t._leaf_for(k) for k in set(batch)}
    per_leaf = collections.Counter(leaf_of.values())
    lone = {leaf for leaf, n in per_leaf.items() if n == 1}
    assert len(lone) >= len(leaf_of) - 2  # (nearly) one key per leaf
    locked: list[int] = []
    probe_leaf = BTree._probe_leaf

    def spy(self, block, *args):
        locked.append(block)
        return probe_leaf(self, block, *args)

    monkeypatch.setattr(BTree, "_probe_leaf", spy)
    for snap in (XidSnapshot(30, 0, ()), XidSnapshot(30, 0, (5,)), XidSnapshot(6, 0, ()),
                 XidSnapshot(12, 0, (7, 9, 11)), XidSnapshot(30, 0, (6, 8))):
        want = [t.get(k, lambda a, b, s=snap: s(a, b)) for k in batch]
        locked.clear()
        assert t.get_many(batch, snap) == want
        assert len(set(locked) & lone) <= 1  # at most k02400's, whose versions go on
    assert t.get_many(batch, XidSnapshot(30, 0, ()))[-2] == b"B" * 5000
    assert no_pins(env.bm)


def _leaf_blocks_of_key(t: BTree, key: bytes) -> list[int]:
    """The leaves holding versions of ``key`` (walked from the leftmost leaf)."""
    out = []
    block = t._leaf_for(b"")
    while block != bp.P_NONE:
        page = t._copy_page(block)
        items = bp.bt_items(page)
        first = bp.bt_first_data(bp.bt_special(page))
        if any(bp.unpack_entry(i).key == key for i in items[first - 1:]):
            out.append(block)
        block = bp.bt_special(page).next
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_scans_by_snapshot_data_equal_scans_by_callable(env, seed):
    """items() with an XidSnapshot (one C extraction per leaf, pairs sliced from a page
    copy) returns exactly what the same snapshot as a plain callable (the per-entry Python
    path) returns, for random ranges in both directions, with and without values, over
    versions written and deleted by committed, running and aborted xids and values both
    inline and out of line; item_batches() gives the same pairs in non-empty batches."""
    rng = random.Random(seed)
    t = env.tree
    xid = 1
    keys = [b"k%04d" % rng.randrange(3000) for _ in range(700)]
    for k in keys:
        xid += 1
        value = rng.randbytes(rng.choice([5, 60, VALUE_INLINE_MAX_BYTES + 10]))
        if any(True for _ in t.versions(k)):
            old = t.versions(k)[0]
            if not old.xmax:
                t.set_xmax(k, old.xmin, xid)
        if rng.random() < 0.9:
            t.insert(k, value, xid)
    for _ in range(40):
        snap = XidSnapshot(rng.randrange(2, xid + 2), rng.choice([0, rng.randrange(2, xid)]),
                           tuple(sorted(rng.sample(range(2, xid), 30))))
        a, b = sorted(rng.sample(sorted(set(keys)), 2))
        start = rng.choice([None, a, a + b"\x00"])
        stop = rng.choice([None, b, b[:-1]])
        for reverse in (False, True):
            for values in (False, True):
                fast = list(t.items(start, stop, snapshot=snap, reverse=reverse, values=values))
                slow = list(t.items(start, stop, snapshot=lambda x, y, s=snap: s(x, y),
                                    reverse=reverse, values=values))
                assert fast == slow
                batches = list(t.item_batches(start, stop, snapshot=snap, reverse=reverse,
                                              values=values))
                assert all(batches) and [p for b in batches for p in b] == fast
    assert no_pins(env.bm)


def test_forward_scan_follows_right_links_past_splits_and_unlinks_ahead(env, monkeypatch):
    """A forward scan paused after 100 keys, while leaves ahead of it split (keys its
    snapshot does not see go in between) and others are emptied and unlinked by vacuum
    (keys deleted before its snapshot), goes on to return exactly the keys its snapshot
    sees, in order, once each: the leaves its stream was fed by the parent level no longer
    form the right-link chain, and the scan reads the leaves in between directly (counted
    through ``_visit_read``) and steps over the unlinked ones."""
    t = env.tree
    for i in range(3000):
        t.insert(b"%06d" % i, bytes(60), 1)
    for i in range(2000, 2500):
        t.set_xmax(b"%06d" % i, 1, 2)
    snap = XidSnapshot(3, 0, ())   # sees xids 1 and 2
    want = [b"%06d" % i for i in range(3000) if not 2000 <= i < 2500]
    direct = []
    visit_read = btree_module.BTree._visit_read

    def counted(self, block, visit):
        direct.append(block)
        return visit_read(self, block, visit)

    monkeypatch.setattr(btree_module.BTree, "_visit_read", counted)
    it = t.items(snapshot=snap, values=False)
    got = [next(it)[0] for _ in range(100)]
    for i in range(1000, 1600):
        t.insert(b"%06d5" % i, bytes(60), 5)   # invisible to the scan: splits ahead of it
    assert t.vacuum(lambda xmin, xmax: xmax == 2).leaves_changed > 0
    got += [k for k, _v in it]
    assert got == want
    assert direct, "the scan never left the stream's order"
    assert t.check().entries == 3000 - 500 + 600 and no_pins(env.bm)


def test_inner_page_cache_is_bounded_and_evicts_oldest(env, monkeypatch):
    """With room for only two internal pages (INNER_CACHE_PAGES_MAX patched to 2) a tree
    with more internal pages than that still answers every get, get_many and scan right,
    the cache never holds more than two copies, and what it holds equals the pool's
    pages."""
    monkeypatch.setattr(btree_module, "INNER_CACHE_PAGES_MAX", 2)
    t = env.tree
    keys = [big_key(i, 900) for i in range(300)]
    for i, k in enumerate(keys):
        t.insert(k, b"v%d" % i, 2)
    assert sum(t.check().pages_per_level[:-1]) > 2
    for i, k in enumerate(keys):
        assert t.get(k) == b"v%d" % i
        assert len(t._inner) <= 2
    assert t.get_many(keys[::-1]) == [b"v%d" % i for i in range(299, -1, -1)]
    assert [k for k, _v in t.items(values=False)] == keys
    assert 0 < _assert_inner_cache_current(env) <= 2 and no_pins(env.bm)
