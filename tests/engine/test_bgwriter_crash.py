"""The background writer under the engine (storage/bgwriter.py): with it writing all the
time (bgwriter_delay 10 ms, a pool far smaller than the store), the store's pages are
written without a checkpoint, the content is the same after a crash (no shutdown
checkpoint) or a clean close, and SIGKILLs during its writes lose nothing acknowledged.
Every io method."""

from __future__ import annotations

import random
import time

import pytest
from slonik.engine.database import DatabaseClosedError

from tests.engine import test_durability as durability
from tests.engine.dbutil import open_db

BUSY_WRITER = dict(bgwriter_delay=10, bgwriter_lru_maxpages=100)
POOL = 32              # buffers: the store outgrows it at once
KILLS = 8
WAIT_SECONDS = 30      # a generous bound for the thread to get to work


def _fill(db, model: dict, rng: random.Random, n: int, tag: str) -> None:
    kv = db.kv("s")
    for start in range(0, n, 200):
        with db.transaction():
            for _ in range(start, min(start + 200, n)):
                k = b"%s-%06d" % (tag.encode(), rng.randrange(10 * n))
                v = rng.randbytes(rng.randrange(1, 300))
                kv[k] = v
                model[k] = v


@pytest.mark.parametrize("crash", [True, False])
def test_background_writes_keep_the_content_across_a_crash_and_a_close(tmp_path, io_method,
                                                                         crash):
    """A store of ~6,000 keys in a 32-buffer pool with the writer busy: the writer wrote
    pages (its counter) while no checkpoint ran (checkpoint_timeout is an hour); more
    writes follow. After a
    crash (resources released, no shutdown checkpoint) or a clean close, the reopened
    store equals the dict of every committed write, and check() is clean."""
    path = str(tmp_path / "db")
    rng = random.Random(7)
    model: dict[bytes, bytes] = {}
    db = open_db(path, io_method, shared_buffers=POOL, **BUSY_WRITER)
    try:
        checkpoints = db.stats().checkpointer.checkpoints
        _fill(db, model, rng, 4000, "a")
        deadline = time.monotonic() + WAIT_SECONDS
        while db._bufmgr.bgwriter_stats().written == 0:
            assert time.monotonic() < deadline, "the background writer wrote nothing"
            time.sleep(0.01)
        assert db.stats().checkpointer.checkpoints == checkpoints
        _fill(db, model, rng, 2000, "b")
        assert db._bufmgr.bgwriter_stats().state == "running"
    finally:
        if crash:
            db._release_resources()  # a crash: no shutdown checkpoint
        else:
            db.close()
    with open_db(path, io_method, shared_buffers=POOL, **BUSY_WRITER) as db:
        kv = db.kv("s")
        kv.check()
        assert dict(kv.items()) == model


def test_acknowledged_writes_survive_sigkill_during_background_writes(tmp_path, io_method,
                                                                      monkeypatch):
    """The durability test's SIGKILL rounds (tests/engine/test_durability.py: a child
    writing autocommit puts and batches, killed at a random moment, recovered and compared
    with the acknowledged operations) with a 32-buffer pool and the writer running every
    10 ms, so kills land during its writes: after each recovery the store equals the
    acknowledged operations plus at most the announced one, no partial batch."""
    monkeypatch.setattr(durability, "SETTINGS",
                        {**durability.SETTINGS, "shared_buffers": POOL, **BUSY_WRITER})
    seed = 71 + {"sync": 0, "worker": 1000, "io_uring": 2000}[io_method]
    counts = durability.kill_rounds(str(tmp_path / "db"), io_method, seed, KILLS)
    assert counts["rounds"] == KILLS
    assert counts["acked"] >= KILLS, counts


def test_bgwriter_settings_are_validated_and_zero_turns_it_off(tmp_path, io_method):
    """Database.open checks bgwriter_delay (ms, 10..10000) and bgwriter_lru_maxpages
    (0..) before touching anything, naming the setting; bgwriter_lru_maxpages=0 opens a
    database with no background writer, the default one with it running."""
    path = str(tmp_path / "db")
    with pytest.raises(ValueError, match="bgwriter_delay must be in 10..10000 ms"):
        open_db(path, io_method, bgwriter_delay=5)
    with pytest.raises(TypeError, match="bgwriter_lru_maxpages must be an int"):
        open_db(path, io_method, bgwriter_lru_maxpages="many")
    with open_db(path, io_method, bgwriter_lru_maxpages=0) as db:
        assert db._bufmgr.bgwriter_stats() is None
    with open_db(path, io_method) as db:
        assert db._bufmgr.bgwriter_stats().state == "running"
        writer = db._bufmgr._bgwriter
    assert writer.state.name == "STOPPED" and not writer.thread.is_alive()


def test_a_failed_background_write_stops_the_database_and_recovery_keeps_the_data(
        tmp_path, io_method):
    """The data files' writes start failing (ENOSPC) while the pool holds dirty pages and
    nothing else runs: the background writer's failure is not swallowed — the next
    operation raises DatabaseClosedError naming it (the writer's error is its cause) and
    the writer is FAILED. Reopened (crash recovery from the WAL), the store holds every
    committed write."""
    path = str(tmp_path / "db")
    rng = random.Random(11)
    model: dict[bytes, bytes] = {}
    db = open_db(path, io_method, shared_buffers=POOL, bgwriter_delay=10,
                 bgwriter_lru_maxpages=0)
    try:
        _fill(db, model, rng, 3000, "a")
        assert any(d.flags & 2 for d in db._bufmgr.descs)  # dirty pages in the pool

        def broken_writev(*args, **kwargs):
            raise OSError(28, "no space left on the data device")

        db._smgr.writev = broken_writev
        db._bufmgr.bgwriter_lru_maxpages = 100
        db._bufmgr.start_bgwriter(on_failure=db._on_fatal)
        deadline = time.monotonic() + WAIT_SECONDS
        while db._bufmgr.bgwriter_stats().state != "failed":
            assert time.monotonic() < deadline, "the background writer did not fail"
            time.sleep(0.01)
        with pytest.raises(DatabaseClosedError, match="no space left") as info:
            db.kv("s")[next(iter(model))]
        assert isinstance(info.value.__cause__, OSError)
    finally:
        db.close()
    with open_db(path, io_method, shared_buffers=POOL) as db:
        kv = db.kv("s")
        kv.check()
        assert dict(kv.items()) == model
