"""A KV get's open check without calls (KVStore.__getitem__ reads TransactionLayer.stopped
and Wal.failed instead of calling check_open): every way the database stops taking calls
still makes a get raise the same error as before."""

from __future__ import annotations

import errno

import pytest
from slonik.aio import osfile

from slonik import DatabaseClosedError, RelationDroppedError, WalError
from tests.engine.dbutil import open_db


def _loaded(path, io_method, **settings):
    db = open_db(path, io_method, **settings)
    kv = db.kv("s")
    kv.update({b"k%d" % i: b"v%d" % i for i in range(50)})
    assert kv[b"k7"] == b"v7" and kv.get(b"k8") == b"v8"
    return db, kv


def test_get_after_close_raises(tmp_path, io_method):
    """After close(), get/[]/in on a store opened before raise DatabaseClosedError
    ("is closed"), not a value read from a released pool."""
    db, kv = _loaded(tmp_path / "db", io_method)
    db.close()
    with pytest.raises(DatabaseClosedError, match="is closed"):
        kv[b"k7"]
    with pytest.raises(DatabaseClosedError, match="is closed"):
        kv.get(b"k7")
    with pytest.raises(DatabaseClosedError, match="is closed"):
        b"k7" in kv  # noqa: B015 (the check is the point)


def test_get_after_a_recorded_fatal_error_raises(tmp_path, io_method):
    """A background failure recorded through Database._on_fatal (how the checkpointer and
    the background writer report one) makes the next get raise DatabaseClosedError caused
    by that failure, though the WAL itself is fine."""
    db, kv = _loaded(tmp_path / "db", io_method)
    try:
        failure = OSError(errno.EIO, "injected background write failure")
        db._on_fatal(failure)
        assert not db._wal.failed
        with pytest.raises(DatabaseClosedError, match="open it again") as info:
            kv[b"k7"]
        assert info.value.__cause__ is failure
        with pytest.raises(DatabaseClosedError, match="injected background"):
            kv.get(b"k9")
    finally:
        db.close()


def test_get_after_a_wal_failure_only_the_wal_saw_raises(tmp_path, io_method):
    """A WAL flush failing where no Database code records it (the buffer manager's WAL
    flush before a page write, Database._flush_wal_for_buffer): the Database's fatal state
    is still empty, yet the next get raises DatabaseClosedError caused by a WalError, as
    the open check did before it was inlined."""
    db, kv = _loaded(tmp_path / "db", io_method, synchronous_commit=False)
    try:
        db._walwriter.stop()  # nothing flushes the WAL behind the test's back
        kv[b"late"] = b"x"    # asynchronous commit: its WAL is not flushed yet

        class Broken(osfile.OsLayer):   # (the C flush hands a flush to this layer)
            def pwritev(self, fd, buffers, offset):
                raise OSError(errno.EIO, "injected WAL write failure")

        with osfile.installed(Broken()), pytest.raises(WalError):
            db._flush_wal_for_buffer(db._wal.insert_lsn)
        assert db._wal.failed and db._fatal is None and not db._txns.stopped
        with pytest.raises(DatabaseClosedError, match="open it again") as info:
            kv[b"k7"]
        assert isinstance(info.value.__cause__, WalError)
        with pytest.raises(DatabaseClosedError):
            kv.get(b"k7")
    finally:
        db.close()


def test_get_on_a_dropped_store_raises(tmp_path, io_method):
    """A store dropped (committed) raises RelationDroppedError on get/[] while the database
    stays open and another store still reads."""
    db, kv = _loaded(tmp_path / "db", io_method)
    try:
        other = db.kv("t")
        other[b"a"] = b"1"
        db.drop("s")
        with pytest.raises(RelationDroppedError, match="dropped"):
            kv[b"k7"]
        with pytest.raises(RelationDroppedError, match="dropped"):
            kv.get(b"k7")
        assert other[b"a"] == b"1"
    finally:
        db.close()
