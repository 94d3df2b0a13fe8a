"""Crash recovery redoes single-block B+tree records in C runs without decoding them
(engine.recovery: RedoContext.redo_btree_fast over engine.wal_decode.wal_fields), in order
with the records redone one at a time. After a real crash (a forked child that ends with
os._exit, every commit durable, data pages partly written) the recovered KV store and the
indexed table hold exactly what was committed, on every io method: with prefetch (fast
runs), and with prefetch and full-page writes off, where the first record of each
relation finds its page neither in the pool nor below a known size (no image record came
first to read the relation's size) and is cut out of its run to its resource manager,
which extends or reads the relation first (rule 4)."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from slonik.engine import recovery, wal_decode

from tests.engine.dbutil import open_db

needs_c = pytest.mark.skipif(not wal_decode.C_FIELDS,
                             reason="storage._pagecheck not built (no C compiler at install)")

KEYS = 3000
ROWS = 1500


def crash_after_workload(path: str, fpw: bool) -> None:
    """In a forked child: load, checkpoint, then commit more (random KV puts, table rows
    with a primary key, deletes), and die without closing."""
    pid = os.fork()
    if pid == 0:
        try:
            rng = random.Random(5)
            db = open_db(path, "sync", shared_buffers=2048, full_page_writes=fpw)
            kv = db.kv("kv")
            t = db.create_table("t", [("id", "int8"), ("v", "text")], primary_key="id")
            with db.transaction():
                for i in range(KEYS):
                    kv[b"k%06d" % i] = b"a" * 40
            db.checkpoint()
            for step in range(6):
                with db.transaction():
                    for _ in range(400):
                        kv[b"k%06d" % rng.randrange(KEYS)] = b"v%d" % step * 20
                    t.insert_many([(step * ROWS + i, f"r{i}") for i in range(ROWS)])
                    del kv[b"k%06d" % step]
            os._exit(0)
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def expected() -> tuple[dict[bytes, bytes], int]:
    rng = random.Random(5)
    kv = {b"k%06d" % i: b"a" * 40 for i in range(KEYS)}
    for step in range(6):
        for _ in range(400):
            kv[b"k%06d" % rng.randrange(KEYS)] = b"v%d" % step * 20
        del kv[b"k%06d" % step]
    return kv, 6 * ROWS


@needs_c
@pytest.mark.parametrize("prefetch, fpw", [(True, True), (False, False), (True, False)],
                         ids=["prefetch", "no-prefetch-no-fpw", "prefetch-no-fpw"])
def test_fast_redo_recovers_every_commit(tmp_path, io_method, monkeypatch, prefetch, fpw):
    """(Without full-page writes redo reads the pages it changes, and prefetch reads them
    ahead except those a will_init record in its window initialises.)"""
    path = str(tmp_path / "db")
    crash_after_workload(path, fpw=fpw)
    if not prefetch:
        monkeypatch.setattr(recovery, "RECOVERY_PREFETCH_PINS", 0)
    db = open_db(path, io_method, shared_buffers=2048, full_page_writes=fpw)
    try:
        info = db._recovery
        assert info.crashed
        assert info.fast_records > info.replayed // 2   # most records went the fast way
        if fpw:
            assert info.fast_cuts < 10
        elif not prefetch:
            assert info.fast_cuts >= 2                   # at least the KV's and the index's
        want_kv, nrows = expected()
        assert dict(db.kv("kv").items()) == want_kv
        t = db.table("t")
        assert sorted(r[0] for r in t.scan()) == list(range(nrows))
        assert t.get(id=4 * ROWS + 7) == (4 * ROWS + 7, "r7")    # through the index
        db.kv("kv").check()                  # the B+tree's invariants
        results = t.check_indexes()          # every entry points at its row and back
        assert results and all(r.ok for r in results), results
    finally:
        db.close()


@needs_c
def test_prefetch_reads_no_block_the_window_writes_whole(tmp_path, io_method):
    """With full-page writes every page the WAL after the checkpoint touches is first
    restored from its image, so redo reads no block; prefetch must not read one either (a
    block an image restores or a will_init record initializes, named again by the records
    after it in the look-ahead window, is in no buffer when prefetch looks). The sync
    method's prefetch only advises the kernel, so its reads are what redo itself asked
    for: the io method's must be no more. Fails with such blocks read ahead (75 wasted
    reads here before they were skipped)."""
    crashed = str(tmp_path / "crashed")
    crash_after_workload(crashed, fpw=True)
    reads = {}
    for method in dict.fromkeys(("sync", io_method)):
        path = str(tmp_path / method)
        shutil.copytree(crashed, path)
        db = open_db(path, method, shared_buffers=2048)
        try:
            assert db._recovery.crashed and db._recovery.fast_records > 0
            reads[method] = db.stats().buffers.reads
        finally:
            db.close()
    assert reads[io_method] == reads["sync"], reads
