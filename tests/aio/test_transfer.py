"""The one short-transfer policy (aio/transfer.py): the synchronous loop on real files
through a short-changing OS layer, and the asynchronous report over every io method."""

from __future__ import annotations

import errno
import os

import pytest
from slonik.aio import osfile
from slonik.aio.errors import DiskFullError, IOFailure
from slonik.aio.handle import AioReturn, IoOp, ResultStatus
from slonik.aio.ids import TargetId
from slonik.aio.memory import aligned_buffer
from slonik.aio.transfer import SHORT_TRANSFER_RETRIES_MAX, advance, transfer_all

from tests.support.method_faulty import FaultRule

BLOCK = 8192


class ShortLayer(osfile.OsLayer):
    """Transfers at most ``cap`` bytes per preadv/pwritev (0: nothing, without an error),
    and counts the calls; everything else is the real OS."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.calls = 0

    def _cut(self, buffers) -> list:
        out, room = [], self.cap
        for b in buffers:
            if room <= 0:
                break
            view = memoryview(b)[:room]
            out.append(view)
            room -= len(view)
        return out

    def preadv(self, fd, buffers, offset) -> int:
        self.calls += 1
        cut = self._cut(buffers)
        return os.preadv(fd, cut, offset) if cut else 0

    def pwritev(self, fd, buffers, offset) -> int:
        self.calls += 1
        cut = self._cut(buffers)
        return os.pwritev(fd, cut, offset) if cut else 0


@pytest.fixture
def datafile(tmp_path):
    path = str(tmp_path / "data")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    yield path, fd
    os.close(fd)


def test_advance_skips_whole_and_partial_buffers():
    """advance() drops the buffers a transfer finished and cuts into the one it stopped in,
    for buffers of mixed sizes."""
    iov = [bytearray(b"a" * 3), bytearray(b"b" * 5), bytearray(b"c" * 2)]
    assert [bytes(v) for v in advance(iov, 0)] == [b"aaa", b"bbbbb", b"cc"]
    assert [bytes(v) for v in advance(iov, 4)] == [b"bbbb", b"cc"]
    assert [bytes(v) for v in advance(iov, 8)] == [b"cc"]
    assert advance(iov, 10) == []


def test_short_transfers_that_progress_are_continued(datafile):
    """A write and a read cut to 1000 bytes per call still move all 3 blocks (each call
    continues where the last stopped); the file holds exactly what was written and the read
    returns it."""
    path, fd = datafile
    data = bytes(range(256)) * (3 * BLOCK // 256)
    with osfile.installed(ShortLayer(1000)) as layer:
        done, calls = transfer_all(fd, [data[:BLOCK], data[BLOCK:]], 0, write=True,
                                   what=lambda: "the test file")
        assert (done, calls) == (len(data), layer.calls) and calls == -(-len(data) // 1000)
        out = [bytearray(BLOCK), bytearray(2 * BLOCK)]
        done, _ = transfer_all(fd, out, 0, write=False, what=lambda: "the test file")
    assert done == len(data) and bytes(out[0]) + bytes(out[1]) == data
    with open(path, "rb") as f:
        assert f.read() == data


def test_a_write_without_progress_is_a_full_disk(datafile):
    """A pwritev that returns 0 without an error raises DiskFullError (ENOSPC) naming the
    target and the bytes written."""
    _path, fd = datafile
    with osfile.installed(ShortLayer(0)), \
            pytest.raises(DiskFullError, match="could not write the test file: wrote only 0 of 8192"):
        transfer_all(fd, [bytes(BLOCK)], 0, write=True, what=lambda: "the test file")


def test_a_read_stops_at_end_of_file(datafile):
    """A read past the end returns what there was (the caller judges it), no exception."""
    _path, fd = datafile
    os.pwrite(fd, b"x" * 100, 0)
    buf = bytearray(BLOCK)
    assert transfer_all(fd, [buf], 0, write=False, what=lambda: "f") == (100, 2)
    assert bytes(buf[:100]) == b"x" * 100


def test_endless_short_transfers_are_an_eio(datafile):
    """Progress one byte at a time past SHORT_TRANSFER_RETRIES_MAX calls is refused with
    IOFailure EIO (a broken file system), not looped on forever."""
    _path, fd = datafile
    with osfile.installed(ShortLayer(1)), pytest.raises(IOFailure, match="short writes in a row") as info:
        transfer_all(fd, [bytes(BLOCK)], 0, write=True, what=lambda: "f")
    assert info.value.errno == errno.EIO
    assert SHORT_TRANSFER_RETRIES_MAX < BLOCK


@pytest.mark.parametrize("op", [IoOp.WRITEV, IoOp.READV])
def test_an_unhandled_partial_aio_result_is_reported_by_the_same_policy(faulty_aio, tmp_path, op):
    """An AIO read or write cut short (the fault-injecting method over each io method)
    completes PARTIAL; raise_if_failed turns it into the policy's exception: a full disk for
    a write, EIO naming the bytes for a read; allow_partial returns the result instead."""
    aio, method = faulty_aio
    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.write(bytes(2 * BLOCK))
    fd = os.open(path, os.O_RDWR)
    try:
        method.add(FaultRule("short", op=op, short=BLOCK, times=2))
        buf = memoryview(aligned_buffer(2 * BLOCK))
        for allow in (False, True):
            ret = AioReturn()
            h = aio.acquire(ret)
            h.set_target(TargetId.FILE, (path, os.O_RDWR, 0))
            ref = h.wait_ref()
            (h.start_writev if op == IoOp.WRITEV else h.start_readv)(fd, [buf], 0)
            aio.wait(ref)
            assert ret.result.status == ResultStatus.PARTIAL
            if allow:
                assert ret.raise_if_failed(allow_partial=True).result == BLOCK
            elif op == IoOp.WRITEV:
                with pytest.raises(DiskFullError, match=f"wrote only {BLOCK} of {2 * BLOCK}"):
                    ret.raise_if_failed()
            else:
                with pytest.raises(IOFailure, match=f"read only {BLOCK} of {2 * BLOCK}"):
                    ret.raise_if_failed()
    finally:
        os.close(fd)
