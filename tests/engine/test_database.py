"""Database open/close/reopen, settings, the lock file and bad directories (every io method)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from slonik.aio import osfile
from slonik.wal.control import CONTROL_FILE_NAME, read_control

from slonik import (
    ConflictError,
    Database,
    DatabaseClosedError,
    DatabaseLockedError,
    DataCorruptionError,
    DiskFullError,
    NotADatabaseError,
    SlonikError,
    WalError,
)
from tests.engine.dbutil import open_db
from tests.support.dirstate import dir_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_public_names():
    """The names of DESIGN §6 import from ``engine``; ConflictError and
    DataCorruptionError are SlonikErrors."""
    assert issubclass(ConflictError, SlonikError)
    assert issubclass(DataCorruptionError, SlonikError)
    assert callable(Database.open)


def test_create_reopen_finds_everything(tmp_path, io_method):
    """A new directory is created (with parents); KV stores and tables written in one
    session are found, with their contents, after close and reopen."""
    path = tmp_path / "a" / "b" / "db"
    with open_db(path, io_method) as db:
        assert db.io_method == io_method
        users = db.kv("users")
        users[b"alice"] = b"1"
        t = db.create_table("events", [("id", "int8"), ("name", "text")])
        tid = t.insert((1, "boot"))
    assert (path / "slonik_control").exists()
    with open_db(path, io_method) as db:
        assert db.relations() == {"events": "table", "users": "kv"}
        assert dict(db.kv("users").items()) == {b"alice": b"1"}
        assert db.table("events").get(tid) == (1, "boot")
        assert list(db.table("events").scan()) == [(1, "boot")]


def test_close_twice_and_use_after_close(tmp_path, io_method):
    """close() twice is harmless; any use after close raises a clear error."""
    db = open_db(tmp_path / "db", io_method)
    kv = db.kv("k")
    db.close()
    db.close()
    assert db.closed
    with pytest.raises(DatabaseClosedError, match="closed"):
        kv[b"a"] = b"b"
    with pytest.raises(DatabaseClosedError):
        db.kv("k")
    with pytest.raises(DatabaseClosedError):
        db.stats()
    with pytest.raises(DatabaseClosedError), db.transaction():
        pass


@pytest.mark.parametrize("setting,value,fragment", [
    ("io_method", "posix_aio", "io_method"),
    ("io_workers", 0, "io_workers"),
    ("io_workers", 33, "io_workers"),
    ("io_max_concurrency", 0, "io_max_concurrency"),
    ("io_combine_limit", 129, "io_combine_limit"),
    ("effective_io_concurrency", -1, "effective_io_concurrency"),
    ("io_direct", "everything", "io_direct"),
    ("shared_buffers", 1, "shared_buffers"),
    ("shared_buffers", "12 parsecs", "shared_buffers"),
    ("wal_segment_size", 1000, "wal_segment_size"),
    ("wal_buffers", 1, "wal_buffers"),
    ("full_page_writes", "maybe", "full_page_writes"),
    ("synchronous_commit", 2, "synchronous_commit"),
    ("checkpoint_timeout", 0, "checkpoint_timeout"),
    ("max_wal_size", 10, "max_wal_size"),
    ("segment_size", 3, "segment_size"),
    ("max_files", 0, "max_files"),
    ("zero_damaged_pages", None, "zero_damaged_pages"),
    ("ignore_checksum_failure", "yes please", "ignore_checksum_failure"),
    ("no_such_setting", 1, "no_such_setting"),
])
def test_bad_settings_are_named(tmp_path, setting, value, fragment):
    """Each bad setting is rejected at open with a message naming it (and nothing is
    created on disk)."""
    path = tmp_path / "db"
    with pytest.raises((TypeError, ValueError), match=fragment):
        Database.open(path, **{setting: value})
    assert not path.exists()


def test_settings_accept_units(tmp_path):
    """shared_buffers accepts a size string; io_direct accepts either order."""
    with Database.open(tmp_path / "db", io_method="sync", shared_buffers="2MB",
                       wal_segment_size="1MB", segment_size=64) as db:
        assert db.settings.shared_buffers == 256
        assert db.settings.wal_segment_size == 1 << 20


def test_fixed_sizes_cannot_change(tmp_path, io_method):
    """wal_segment_size and segment_size are fixed at creation: a different value later is
    a clear error; leaving them out uses the stored ones."""
    path = tmp_path / "db"
    with open_db(path, io_method, wal_segment_size=1 << 20, segment_size=64):
        pass
    with pytest.raises(ValueError, match="wal_segment_size is fixed"):
        open_db(path, io_method, wal_segment_size=2 << 20)
    with pytest.raises(ValueError, match="segment_size is fixed"):
        open_db(path, io_method, segment_size=128)
    with Database.open(path, io_method=io_method, shared_buffers=64) as db:
        assert db.settings.wal_segment_size == 1 << 20
        assert db.settings.segment_size == 64


def test_not_a_database_is_left_alone(tmp_path, io_method):
    """A non-empty directory without slonik_control is refused with a clear error and
    nothing in it changes (no lock file, no WAL directory)."""
    path = tmp_path / "notes"
    path.mkdir()
    (path / "todo.txt").write_text("buy milk")
    (path / "sub").mkdir()
    before = dir_state(path)
    with pytest.raises(NotADatabaseError, match="not a Slonik database"):
        open_db(path, io_method)
    assert dir_state(path) == before
    file_path = tmp_path / "plain"
    file_path.write_bytes(b"x")
    with pytest.raises(NotADatabaseError, match="not a directory"):
        open_db(file_path, io_method)
    assert file_path.read_bytes() == b"x"


def test_empty_directory_becomes_a_database(tmp_path, io_method):
    """An existing empty directory is initialised."""
    path = tmp_path / "empty"
    path.mkdir()
    with open_db(path, io_method) as db:
        db.kv("x")[b"k"] = b"v"
    with open_db(path, io_method) as db:
        assert db.kv("x")[b"k"] == b"v"


def test_second_open_in_same_process_is_refused(tmp_path, io_method):
    """The lock file stops a second Database on the same directory, naming the pid."""
    path = tmp_path / "db"
    with open_db(path, io_method), pytest.raises(DatabaseLockedError, match=str(os.getpid())):
        open_db(path, io_method)
    with open_db(path, io_method):  # released at close
        pass


def test_second_process_gets_lock_error(tmp_path, io_method):
    """A second process opening a database this process has open gets an error naming
    this process's pid."""
    path = tmp_path / "db"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from slonik import Database, DatabaseLockedError
        try:
            Database.open({str(path)!r}, io_method="sync", shared_buffers=64)
        except DatabaseLockedError as e:
            print("LOCKED", e)
            sys.exit(0)
        print("OPENED")
        sys.exit(1)
    """)
    with open_db(path, io_method):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "LOCKED" in out.stdout and str(os.getpid()) in out.stdout


def test_damaged_control_file_is_reported(tmp_path, io_method):
    """A control file with garbage gets a clear error and is not rewritten."""
    path = tmp_path / "db"
    with open_db(path, io_method):
        pass
    control = path / "slonik_control"
    data = bytearray(control.read_bytes())
    data[40] ^= 0xFF
    control.write_bytes(bytes(data))
    with pytest.raises(SlonikError, match="slonik_control"):
        open_db(path, io_method)
    assert control.read_bytes() == bytes(data)


def test_names_and_kinds(tmp_path, io_method):
    """Relation names are checked; a KV store is not a table and vice versa; a table is
    created once."""
    with open_db(tmp_path / "db", io_method) as db:
        db.kv("k")
        db.create_table("t", [("a", "int8")])
        with pytest.raises(ValueError, match="is a table"):
            db.kv("t")
        with pytest.raises(ValueError, match="is a KV store"):
            db.table("k")
        with pytest.raises(KeyError):
            db.table("missing")
        with pytest.raises(ValueError, match="already exists"):
            db.create_table("t", [("a", "int8")])
        with pytest.raises(TypeError):
            db.kv(b"bytes-name")
        with pytest.raises(ValueError):
            db.kv("")
        assert db.kv("k") is db.kv("k")


def test_stats_shape(tmp_path, io_method):
    """stats() is a frozen dataclass with the io method, AIO, buffer, WAL, checkpointer,
    transaction and per-relation numbers."""
    with open_db(tmp_path / "db", io_method) as db:
        kv = db.kv("k")
        for i in range(50):
            kv[b"%03d" % i] = b"v" * 100
        db.checkpoint()
        s = db.stats()
        assert s.io_method == io_method
        assert s.wal.flushes >= 1 and s.wal.records > 50
        assert s.checkpointer.checkpoints >= 1
        assert s.transactions.commits >= 50
        (rel,) = [r for r in s.relations if r.name == "k"]
        assert rel.kind == "kv" and rel.nblocks >= 1 and rel.live_keys == 50
        assert s.aio.io_method == io_method
        with pytest.raises(AttributeError):
            s.io_method = "x"


def test_stats_live_keys_counts_committed_live_keys_only(tmp_path, io_method):
    """stats().relations' live_keys for a KV store counts each key with a committed live
    version once: not deleted keys, not an aborted transaction's puts, not an open
    transaction's puts (from another thread), and an overwritten key once; enough keys
    for several leaves and a value stored out of line."""
    with open_db(tmp_path / "db", io_method) as db:
        kv = db.kv("k")
        with db.transaction():
            for i in range(3000):
                kv[b"key%05d" % i] = b"v" * 100
        kv[b"big"] = b"x" * 100_000
        for i in range(0, 3000, 3):
            del kv[b"key%05d" % i]
        for i in range(1, 3000, 3):
            kv[b"key%05d" % i] = b"w"
        with pytest.raises(RuntimeError), db.transaction():
            kv[b"aborted"] = b"a"
            raise RuntimeError("abort")
        started, finish = threading.Event(), threading.Event()

        def open_txn() -> None:
            with db.transaction():
                kv[b"uncommitted"] = b"u"
                del kv[b"key00001"]
                started.set()
                finish.wait(30)

        t = threading.Thread(target=open_txn)
        t.start()
        try:
            assert started.wait(30)
            (rel,) = [r for r in db.stats().relations if r.name == "k"]
            assert rel.live_keys == 2000 + 1
        finally:
            finish.set()
            t.join()
        (rel,) = [r for r in db.stats().relations if r.name == "k"]
        assert rel.live_keys == 2000 + 1 - 1 + 1


def test_checkpoint_then_reopen_replays_little(tmp_path, io_method):
    """After a clean close the next open replays only the shutdown checkpoint."""
    path = tmp_path / "db"
    with open_db(path, io_method) as db:
        kv = db.kv("k")
        for i in range(20):
            kv[b"%d" % i] = b"x"
    with open_db(path, io_method) as db:
        s = db.stats()
        assert not s.recovery_crashed
        assert s.recovery_replayed == 1
        assert len(db.kv("k")) == 20


class _FailWalSync(osfile.OsLayer):
    """Fails every fdatasync/fsync of a WAL segment once armed."""

    def __init__(self) -> None:
        self.armed = False
        self.wal_fds: set[int] = set()

    def open(self, path, flags, mode=0o644):
        fd = super().open(path, flags, mode)
        if os.sep + "wal" + os.sep in path:
            self.wal_fds.add(fd)
        return fd

    def fdatasync(self, fd):
        if self.armed and fd in self.wal_fds:
            raise OSError(errno.EIO, "injected WAL fdatasync failure")
        super().fdatasync(fd)

    def fsync(self, fd):
        if self.armed and fd in self.wal_fds:
            raise OSError(errno.EIO, "injected WAL fsync failure")
        super().fsync(fd)


@pytest.mark.parametrize("method", ["sync", "worker"])  # io_uring syncs bypass the OS layer
def test_failed_wal_sync_is_fatal(tmp_path, method):
    """A failed WAL sync fails that commit, then every later operation says to reopen;
    close() still releases everything, and reopening recovers the acknowledged writes."""
    path = tmp_path / "db"
    layer = _FailWalSync()
    with osfile.installed(layer):
        db = open_db(path, method)
        kv = db.kv("k")
        kv[b"before"] = b"1"
        layer.armed = True
        with pytest.raises(WalError):
            kv[b"during"] = b"2"
        with pytest.raises(DatabaseClosedError, match="open it again"):
            kv[b"after"] = b"3"
        with pytest.raises(DatabaseClosedError, match="open it again"):
            kv[b"before"]
        db.close()
        db.close()
        layer.armed = False
    with open_db(path, method) as db:
        assert db.stats().recovery_crashed
        assert db.kv("k")[b"before"] == b"1"
        assert b"after" not in db.kv("k")


def test_io_direct(tmp_path, io_method):
    """io_direct=data,wal works end to end (skipped where the file system refuses O_DIRECT)."""
    probe = tmp_path / "probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_RDWR | os.O_DIRECT)
        os.close(fd)
    except OSError as exc:
        pytest.skip(f"O_DIRECT unsupported here: {exc}")
    path = tmp_path / "db"
    with open_db(path, io_method, io_direct="data,wal") as db:
        db.kv("x").update({b"%d" % i: b"v" * 100 for i in range(500)})
    with open_db(path, io_method, io_direct="data,wal") as db:
        assert len(db.kv("x")) == 500


class _ControlFileDiskFull(osfile.OsLayer):
    """Every write to the control file's temp file finds the disk full."""

    def __init__(self) -> None:
        super().__init__()
        self.temp_fds: set[int] = set()
        self.refused = 0

    def open(self, path, flags, mode=0o644):
        fd = super().open(path, flags, mode)
        if path.endswith(CONTROL_FILE_NAME + ".tmp"):
            self.temp_fds.add(fd)
        return fd

    def close(self, fd):
        self.temp_fds.discard(fd)
        super().close(fd)

    def pwritev(self, fd, buffers, offset):
        if fd in self.temp_fds:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().pwritev(fd, buffers, offset)


def test_a_full_disk_while_staging_the_control_file_fails_only_that_checkpoint(
        tmp_path, io_method):
    """The control file is replaced by staging a temp file and renaming it. When staging
    hits a full disk the old control file is untouched and names the previous checkpoint
    (whose WAL is all kept), so the checkpoint raises DiskFullError and the database goes
    on: writes commit, the next checkpoint succeeds once space is back, and a reopen sees
    everything. (It used to be treated as fatal, stopping the database.)"""
    path = str(tmp_path / "db")
    with Database.open(path, io_method=io_method, checkpoint_timeout=3600) as db:
        kv = db.kv("s")
        kv[b"before"] = b"1"
        db.checkpoint()
        control_before = read_control(path)
        layer = _ControlFileDiskFull()
        with osfile.installed(layer), pytest.raises(DiskFullError) as info:
            db.checkpoint()
        assert layer.refused == 1 and "slonik_control.tmp" in str(info.value)
        assert read_control(path) == control_before
        assert not os.path.exists(os.path.join(path, CONTROL_FILE_NAME + ".tmp"))
        kv[b"after"] = b"2"                      # still accepting durable writes
        assert db.checkpoint() > control_before.checkpoint_lsn
    with Database.open(path, io_method=io_method) as db:
        assert dict(db.kv("s").items()) == {b"before": b"1", b"after": b"2"}
