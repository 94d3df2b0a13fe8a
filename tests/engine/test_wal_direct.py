"""``io_direct="auto"`` (the default): WAL segments opened O_DIRECT — each flush still
followed by fdatasync — on ext4 and xfs only; ``"none"`` and tmpfs keep them buffered;
``"wal"`` adds O_DSYNC and drops the sync. Real files, real open flags (read back from
/proc/self/fdinfo), on every io method."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from slonik.engine.database import Database
from slonik.wal import xlog
from slonik.wal.xlog import direct_wal_writes_ok, file_system_type

SHM = "/dev/shm"


def wal_fd_flags(db: Database) -> list[int]:
    """The open flags of the Wal's segment fds, as the kernel reports them."""
    flags = []
    for fd in db._wal._fds.values():
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    flags.append(int(line.split()[1], 8))
    assert flags, "no WAL segment open"
    return flags


def put_and_reopen(path: str, io_method: str, **settings) -> list[int]:
    with Database.open(path, io_method=io_method, **settings) as db:
        kv = db.kv("t")
        for i in range(50):
            kv[b"%03d" % i] = b"v" * 300
        flags = wal_fd_flags(db)
        flushes = db._wal.stats().flushes
        assert flushes >= 50
    with Database.open(path, io_method=io_method, **settings) as db:
        assert len(db.kv("t")) == 50
    return flags


def test_default_wal_is_o_direct_and_synced_on_ext4_or_xfs(io_method, tmp_path):
    """On ext4/xfs the default opens WAL segments O_DIRECT without O_DSYNC (fdatasync after
    each write, as buffered); elsewhere buffered. Every commit is there after a reopen."""
    flags = put_and_reopen(str(tmp_path / "db"), io_method)
    direct = direct_wal_writes_ok(str(tmp_path))
    assert all(bool(f & os.O_DIRECT) == direct for f in flags), (flags, direct)
    assert not any(f & os.O_DSYNC for f in flags)


def test_io_direct_none_keeps_the_wal_buffered(io_method, tmp_path):
    flags = put_and_reopen(str(tmp_path / "db"), io_method, io_direct="none")
    assert not any(f & (os.O_DIRECT | os.O_DSYNC) for f in flags)


def test_io_direct_wal_writes_o_dsync_without_fdatasync(io_method, tmp_path):
    if not direct_wal_writes_ok(str(tmp_path)):
        pytest.skip("the test directory's file system takes no O_DIRECT here")
    flags = put_and_reopen(str(tmp_path / "db"), io_method, io_direct="wal")
    assert all(f & os.O_DIRECT and f & os.O_DSYNC for f in flags)


@pytest.fixture
def shm_dir():
    """A fresh directory on tmpfs (/dev/shm), removed afterwards."""
    if not os.path.isdir(SHM):
        pytest.skip("no /dev/shm")
    d = tempfile.mkdtemp(dir=SHM)
    yield d
    shutil.rmtree(d)


def test_tmpfs_keeps_the_wal_buffered_by_default(io_method, shm_dir):
    """tmpfs refuses O_DIRECT: the default leaves its WAL buffered and works."""
    assert file_system_type(shm_dir) == "tmpfs" and not direct_wal_writes_ok(shm_dir)
    flags = put_and_reopen(os.path.join(shm_dir, "db"), io_method)
    assert not any(f & os.O_DIRECT for f in flags)


def test_a_wal_directory_linked_to_tmpfs_stays_buffered(io_method, tmp_path, shm_dir):
    """The file system that decides is the WAL directory's own: a data directory on ext4
    whose wal/ is a symlink to tmpfs keeps its WAL buffered (O_DIRECT there would fail)."""
    if not direct_wal_writes_ok(str(tmp_path)):
        pytest.skip("the test directory's file system takes no O_DIRECT here")
    path = str(tmp_path / "db")
    Database.open(path, io_method=io_method).close()
    wal = os.path.join(path, "wal")
    for name in os.listdir(wal):
        shutil.move(os.path.join(wal, name), shm_dir)
    os.rmdir(wal)
    os.symlink(shm_dir, wal)
    flags = put_and_reopen(path, io_method)
    assert not any(f & os.O_DIRECT for f in flags)
    assert os.listdir(shm_dir) and os.path.islink(wal)


def test_file_system_type_takes_the_longest_mount_above_a_path(tmp_path, monkeypatch):
    """/proc/self/mountinfo: the mount point nearest above the path wins, octal-escaped
    spaces are read, and a file that cannot be read gives None."""
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        "30 22 0:26 / /data rw shared:2 - xfs /dev/vdb rw\n"
        "31 30 0:27 / /data/my\\040dir rw shared:3 - btrfs /dev/vdc rw\n"
        "32 22 0:28 / /dataset rw shared:4 - tmpfs tmpfs rw\n")
    monkeypatch.setattr(xlog, "MOUNTINFO", str(info))
    assert file_system_type("/data/x") == "xfs"
    assert file_system_type("/data/my dir/wal") == "btrfs"
    assert file_system_type("/dataset/wal") == "tmpfs"
    assert file_system_type("/srv") == "ext4"
    assert not direct_wal_writes_ok("/data/my dir/wal")
    assert direct_wal_writes_ok("/data")
    monkeypatch.setattr(xlog, "MOUNTINFO", str(tmp_path / "missing"))
    assert file_system_type("/data") is None and not direct_wal_writes_ok("/data")
