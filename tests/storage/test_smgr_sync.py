"""``Smgr.sync_written`` / ``forget_written`` (checkpoints): every segment that received a
write since the last call is fsynced exactly once, on every io method.

Checked through an OS layer that records which file each fsync reached (by resolving the
fd through /proc/self/fd) and can fail the fsync of one file."""

from __future__ import annotations

import errno
import os

import pytest
from slonik.aio import osfile
from slonik.aio.errors import IOFailure
from slonik.aio.handle import AioReturn
from slonik.aio.memory import aligned_buffer
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, Smgr

SEGMENT = 4
REL = 16384
OTHER = 16385


class FsyncRecorder(osfile.OsLayer):
    """The real OS; records the file name of every fsync, fails those named in ``fail``."""

    def __init__(self) -> None:
        self.synced: list[str] = []
        self.fail: set[str] = set()

    def fsync(self, fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        self.synced.append(name)
        if name in self.fail:
            raise OSError(errno.EIO, "injected fsync failure")
        super().fsync(fd)


@pytest.fixture
def recorder():
    layer = FsyncRecorder()
    with osfile.installed(layer):
        yield layer


@pytest.fixture
def smgr(tmp_path, aio, recorder):
    s = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    s.create(REL, Fork.MAIN)
    s.create(OTHER, Fork.MAIN)
    yield s
    aio.wait_all()
    s.close()


def block_data(n: int) -> list[bytes]:
    return [bytes([k + 1]) * BLCKSZ for k in range(n)]


def test_writev_segments_synced_once_then_forgotten(smgr, recorder):
    """writev over three segments: sync_written fsyncs each of the three files once and
    returns 3; a second call syncs nothing; a later write to one segment syncs only it."""
    smgr.writev(REL, Fork.MAIN, 0, block_data(10))  # segments 0, 1, 2
    assert smgr.sync_written() == 3
    assert sorted(recorder.synced) == ["16384", "16384.1", "16384.2"]
    recorder.synced.clear()
    assert smgr.sync_written() == 0
    assert recorder.synced == []
    smgr.writev(REL, Fork.MAIN, 5, block_data(1))
    smgr.writev(REL, Fork.MAIN, 6, block_data(1))  # same segment twice: one fsync
    assert smgr.sync_written() == 1
    assert recorder.synced == ["16384.1"]


def test_extend_zeroextend_and_padding_are_recorded(smgr, recorder):
    """extend and zeroextend count as writes; a segment padded to full size on the way
    (growth that skips blocks) is synced too, since its size changed."""
    smgr.extend(REL, Fork.MAIN, 0, bytes(BLCKSZ))
    smgr.zeroextend(OTHER, Fork.MAIN, 0, 2)
    assert smgr.sync_written() == 2
    assert sorted(recorder.synced) == ["16384", "16385"]
    recorder.synced.clear()
    smgr.extend(REL, Fork.MAIN, 9, bytes(BLCKSZ))  # pads segments 0 and 1, writes segment 2
    assert smgr.sync_written() == 3
    assert sorted(recorder.synced) == ["16384", "16384.1", "16384.2"]


def test_start_writev_is_recorded_at_staging(smgr, recorder, aio):
    """An AIO write is recorded when it is staged: after it completes, sync_written
    covers its segment (on sync, worker and io_uring alike)."""
    mv = memoryview(aligned_buffer(2 * BLCKSZ))
    mv[:] = b"\x07" * (2 * BLCKSZ)
    ret = AioReturn()
    h = aio.acquire(ret)
    ref = h.wait_ref()
    smgr.start_writev(h, REL, Fork.MAIN, 4, [mv[:BLCKSZ], mv[BLCKSZ:]])
    aio.wait(ref)
    ret.raise_if_failed()
    assert smgr.sync_written() == 2  # segment 0 padded to full size, segment 1 written
    assert sorted(recorder.synced) == ["16384", "16384.1"]


def test_forget_written_and_unlink(smgr, recorder):
    """forget_written(rel) drops that relation's pending syncs only; unlink and truncate
    drop the segments they remove (no fsync of a missing file)."""
    smgr.writev(REL, Fork.MAIN, 0, block_data(2))
    smgr.writev(OTHER, Fork.MAIN, 0, block_data(6))  # segments 0 and 1
    smgr.forget_written(REL)
    smgr.truncate(OTHER, Fork.MAIN, 3)  # segment 1 of OTHER removed
    assert smgr.sync_written() == 1
    assert recorder.synced == ["16385"]
    recorder.synced.clear()
    smgr.writev(REL, Fork.MAIN, 0, block_data(5))
    smgr.unlink(REL)
    assert smgr.sync_written() == 0
    assert recorder.synced == []


def test_fsync_failure_names_the_file_and_is_not_retried(smgr, recorder):
    """A failed fsync raises IOFailure (errno kept) naming the file; that file is not
    kept for the next call (never retried), the files not reached yet are."""
    smgr.writev(REL, Fork.MAIN, 0, block_data(12))  # 16384, 16384.1, 16384.2
    recorder.fail.add("16384.1")
    with pytest.raises(IOFailure) as info:
        smgr.sync_written()
    assert info.value.errno == errno.EIO
    assert "16384.1" in str(info.value) and "relation 16384 fork main" in str(info.value)
    assert recorder.synced == ["16384", "16384.1"]
    recorder.synced.clear()
    recorder.fail.clear()
    assert smgr.sync_written() == 1
    assert recorder.synced == ["16384.2"]
