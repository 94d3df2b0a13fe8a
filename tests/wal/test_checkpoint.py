"""Checkpoints (engine/checkpointer.py): order of effects, WAL recycling, background
triggers, and a failed data fsync being fatal."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from slonik.aio import osfile
from slonik.aio.errors import IOFailure
from slonik.storage.smgr import Fork
from slonik.wal.control import DbState, read_control
from slonik.wal.errors import WalError
from slonik.wal.reader import read_record_at

from tests.wal.test_recovery import REL, MiniDb


def _fill(db: MiniDb, n: int, size: int = 400) -> None:
    for i in range(n):
        block = min(db.nblocks(), i // 15)
        db.add(block, bytes([i % 251]) * size)


def test_checkpoint_writes_dirty_pages_and_points_the_control_file(tmp_path, io_method):
    """After checkpoint(): no dirty buffer is left, the control file names the checkpoint
    record (which reads back with the redo point), and WAL segments wholly before the redo
    point are gone or recycled."""
    d = str(tmp_path)
    db = MiniDb(d, io_method, create=True)
    _fill(db, 600)
    segs_before = set(os.listdir(os.path.join(d, "wal")))
    lsn = db.cp.checkpoint()
    assert not any(db.bm.is_dirty(b) for b in range(db.bm.nbuffers))
    control = read_control(d)
    assert control.checkpoint_lsn == lsn and control.state == DbState.IN_PRODUCTION
    rr = read_record_at(os.path.join(d, "wal"), control.wal_segment_size, lsn)
    assert rr.record.rmgr == 0
    redo_seg = control.redo_lsn // control.wal_segment_size
    live = [int(n, 16) for n in os.listdir(os.path.join(d, "wal")) if len(n) == 16]
    assert min(live) >= redo_seg or len(live) <= len(segs_before)
    assert db.cp.stats().segments_removed >= 1
    db.cp.checkpoint(shutdown=True)
    assert read_control(d).state == DbState.SHUTDOWNED
    db.aio.shutdown()


def test_background_checkpoint_on_wal_growth(tmp_path, io_method):
    """With max_wal_size of a few segments, writing more WAL than that wakes the background
    checkpointer (requested at a segment switch) and a checkpoint completes by itself.
    (The pool is large enough for the checkpoint's pins beside the writer's.)"""
    d = str(tmp_path)
    db = MiniDb(d, io_method, create=True, shared_buffers=256)
    db.cp.max_wal_size = 4 * 64 * 1024
    db.wal.on_segment_switch = db.cp.request
    db.cp.start()
    try:
        _fill(db, 1500)
        done = threading.Event()
        for _ in range(200):
            if db.cp.stats().checkpoints >= 1:
                done.set()
                break
            threading.Event().wait(0.05)
        assert done.is_set(), db.cp.stats()
        assert db.cp.stats().requested >= 1
        assert db.cp.error is None
    finally:
        db.cp.stop()
        db.aio.shutdown()


def test_background_checkpoint_on_timeout(tmp_path, io_method):
    """checkpoint_timeout=1 s: with WAL written since the last checkpoint, a timed
    checkpoint happens without being asked."""
    d = str(tmp_path)
    db = MiniDb(d, io_method, create=True, shared_buffers=256)
    db.cp.checkpoint_timeout = 1
    _fill(db, 50)
    db.cp.start()
    try:
        for _ in range(100):
            if db.cp.stats().checkpoints >= 1:
                break
            threading.Event().wait(0.05)
        assert db.cp.stats().checkpoints >= 1 and db.cp.stats().timed >= 1
    finally:
        db.cp.stop()
        db.aio.shutdown()


class _FailingDataFsync(osfile.OsLayer):
    """fsync of any relation segment fails with EIO (counted)."""

    def __init__(self) -> None:
        self.attempts = 0

    def fsync(self, fd: int) -> None:
        if "/base/" in os.readlink(f"/proc/self/fd/{fd}"):
            self.attempts += 1
            raise OSError(errno.EIO, "injected fsync failure")
        super().fsync(fd)


def test_failed_data_fsync_is_fatal(tmp_path):
    """A failed fsync of a data file during a checkpoint raises, is not retried, leaves the
    control file pointing at the previous checkpoint, and every later checkpoint refuses."""
    d = str(tmp_path)
    db = MiniDb(d, "sync", create=True)
    db.cp.checkpoint()
    before = read_control(d)
    _fill(db, 100)
    layer = _FailingDataFsync()
    with osfile.installed(layer), pytest.raises(IOFailure):
        db.cp.checkpoint()
    assert layer.attempts == 1
    assert db.cp.fatal is not None
    assert read_control(d).checkpoint_lsn == before.checkpoint_lsn
    with pytest.raises(WalError, match="fatal"):
        db.cp.checkpoint()
    assert db.smgr.exists(REL, Fork.MAIN)
    db.aio.shutdown()
