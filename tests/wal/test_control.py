"""Control file: codec round trip, every kind of damage named, atomic replacement."""

from __future__ import annotations

import dataclasses
import errno
import os
import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.aio import osfile
from slonik.aio.errors import IOFailure
from slonik.wal.control import (
    CONTROL_FILE_NAME,
    CONTROL_FILE_SIZE,
    CONTROL_MAGIC,
    CONTROL_VERSION,
    ControlData,
    ControlFileError,
    ControlFileMissingError,
    DbState,
    decode_control,
    encode_control,
    read_control,
    write_control,
)
from slonik.wal.errors import WalError

U64 = 0xFFFFFFFFFFFFFFFF


def sample(**kw) -> ControlData:
    base = dict(system_identifier=0x1234_5678_9ABC_DEF0, state=DbState.IN_PRODUCTION,
                checkpoint_lsn=0x1002F28, redo_lsn=0x1002E00, next_xid=42,
                next_relfilenumber=16390, wal_segment_size=16 << 20, segment_size=131072,
                blcksz=8192, time=1_700_000_000.25)
    base.update(kw)
    return ControlData(**base)


def recrc(data: bytes) -> bytes:
    d = bytearray(data)
    d[8:12] = bytes(4)
    struct.pack_into("<I", d, 8, crc32c.crc32c(bytes(d)))
    return bytes(d)


@settings(max_examples=200, deadline=None)
@given(st.builds(
    ControlData, system_identifier=st.integers(0, U64), state=st.sampled_from(DbState),
    checkpoint_lsn=st.integers(0, U64), redo_lsn=st.integers(0, U64),
    next_xid=st.integers(0, U64), next_relfilenumber=st.integers(0, U64),
    wal_segment_size=st.sampled_from([1 << k for k in range(16, 31)]),
    segment_size=st.sampled_from([1 << k for k in range(0, 20)]),
    blcksz=st.just(8192), time=st.floats(allow_nan=False, allow_infinity=False)))
def test_codec_round_trip(c):
    """decode(encode(c)) == c for arbitrary field values; the encoding is 512 bytes."""
    data = encode_control(c)
    assert len(data) == CONTROL_FILE_SIZE
    assert decode_control(data, "x") == c


def test_file_round_trip(tmp_path):
    """write_control then read_control gives the same data; no temp file is left."""
    c = sample()
    write_control(str(tmp_path), c)
    assert read_control(str(tmp_path)) == c
    assert sorted(os.listdir(tmp_path)) == [CONTROL_FILE_NAME]
    c2 = dataclasses.replace(c, state=DbState.SHUTDOWNED, next_xid=43)
    write_control(str(tmp_path), c2)
    assert read_control(str(tmp_path)) == c2


def test_every_byte_corruption_is_reported():
    """Any bits flipped in any of the 512 bytes: ControlFileError naming the file; the
    field is magic, version or crc (those are checked first)."""
    data = encode_control(sample())
    for i in range(CONTROL_FILE_SIZE):
        for mask in (0x01, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            with pytest.raises(ControlFileError) as ei:
                decode_control(bytes(bad), "/db/slonik_control")
            assert ei.value.field in ("magic", "version", "crc")
            assert "/db/slonik_control" in str(ei.value)
            assert ei.value.path == "/db/slonik_control"


def test_old_version_is_refused_naming_it():
    """A version 1 control file (its WAL has no flush stamps) is refused with a message that
    names the version found, why it cannot be used, and the version this build reads."""
    d = bytearray(encode_control(sample()))
    struct.pack_into("<I", d, 4, 1)
    with pytest.raises(ControlFileError) as ei:
        decode_control(recrc(bytes(d)), "/p/slonik_control")
    msg = str(ei.value)
    assert ei.value.field == "version"
    assert "version 1 " in msg and "flush stamps" in msg and f"version {CONTROL_VERSION} only" in msg


@pytest.mark.parametrize("offset, fmt, value, field", [
    (0, "<I", 0x12345678, "magic"),
    (4, "<I", CONTROL_VERSION + 1, "version"),
    (12, "<I", 9, "state"),
    (56, "<Q", 3 << 16, "wal_segment_size"),
    (64, "<Q", 0, "segment_size"),
    (72, "<I", 8000, "blcksz"),
    (76, "<I", 1, "reserved"),
    (80, "<d", float("nan"), "time"),
    (300, "<B", 1, "reserved"),
])
def test_field_checks_behind_the_crc(offset, fmt, value, field):
    """Bytes with a valid CRC but an impossible field (a writer bug): the field is named."""
    d = bytearray(encode_control(sample()))
    struct.pack_into(fmt, d, offset, value)
    with pytest.raises(ControlFileError) as ei:
        decode_control(recrc(bytes(d)) if field not in ("magic", "version") else bytes(d),
                       "/p/slonik_control")
    assert ei.value.field == field
    assert "/p/slonik_control" in str(ei.value)


def test_wrong_magic_says_not_a_control_file():
    d = b"\0" * CONTROL_FILE_SIZE
    with pytest.raises(ControlFileError, match="not a Slonik control file"):
        decode_control(d, "f")
    assert struct.unpack_from("<I", encode_control(sample()))[0] == CONTROL_MAGIC


@pytest.mark.parametrize("size", [0, 1, 88, 511, 513, 4096])
def test_short_or_long_file(tmp_path, size):
    """A torn or truncated (or padded) file is a ControlFileError naming the size, never a
    reset."""
    data = encode_control(sample())
    data = data[:size] if size <= len(data) else data + bytes(size - len(data))
    (tmp_path / CONTROL_FILE_NAME).write_bytes(data)
    with pytest.raises(ControlFileError) as ei:
        read_control(str(tmp_path))
    assert ei.value.field == "size"
    assert str(tmp_path / CONTROL_FILE_NAME) in str(ei.value)
    assert (tmp_path / CONTROL_FILE_NAME).read_bytes() == data    # untouched


def test_damaged_file_on_disk(tmp_path):
    data = bytearray(encode_control(sample()))
    data[40] ^= 0x10
    (tmp_path / CONTROL_FILE_NAME).write_bytes(bytes(data))
    with pytest.raises(ControlFileError, match="crc|CRC"):
        read_control(str(tmp_path))


def test_missing_file(tmp_path):
    """No control file: ControlFileMissingError, which is both a ControlFileError and a
    FileNotFoundError (errno ENOENT), and names the path."""
    with pytest.raises(FileNotFoundError) as ei:
        read_control(str(tmp_path))
    e = ei.value
    assert isinstance(e, ControlFileMissingError) and isinstance(e, ControlFileError)
    assert isinstance(e, WalError) and e.errno == errno.ENOENT
    assert str(tmp_path / CONTROL_FILE_NAME) in str(e)


@pytest.mark.parametrize("c, words", [
    (sample(state=7), "state"),
    (sample(next_xid=-1), "next_xid"),
    (sample(checkpoint_lsn=U64 + 1), "checkpoint_lsn"),
    (sample(wal_segment_size=100000), "wal_segment_size"),
    (sample(blcksz=0), "blcksz"),
    (sample(time=float("inf")), "time"),
    (sample(version=CONTROL_VERSION + 1), "version"),
    (sample(version=1), "version"),
    (sample(redo_lsn="0/1"), "redo_lsn"),
])
def test_encode_rejects_bad_fields(c, words):
    with pytest.raises((ValueError, TypeError), match=words):
        encode_control(c)


class StepLayer(osfile.OsLayer):
    """Records the OS calls write_control makes; fails the ``fail_at``-th one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            raise OSError(errno.EIO, f"injected failure in {name}")

    def open(self, path, flags, mode=0o644):
        self._step("open")
        return super().open(path, flags, mode)

    def pwritev(self, fd, buffers, offset):
        self._step("pwritev")
        return super().pwritev(fd, buffers, offset)

    def fsync(self, fd):
        self._step("fsync")
        super().fsync(fd)

    def rename(self, src, dst):
        self._step("rename")
        super().rename(src, dst)

    def fsync_directory(self, path):
        self._step("fsync_directory")
        super().fsync_directory(path)


def test_write_goes_through_osfile_in_order(tmp_path):
    """write temp, fsync it, rename, fsync the directory: all through the OS boundary."""
    layer = StepLayer()
    with osfile.installed(layer):
        write_control(str(tmp_path), sample())
    assert layer.calls == ["open", "pwritev", "fsync", "rename", "fsync_directory"]


def test_atomic_replace_leaves_old_or_new(tmp_path):
    """A failure at each step of the replacement leaves a readable control file holding
    either the old or the new contents (old before the rename, new after), and the error is
    an IOFailure keeping the errno."""
    old, new = sample(next_xid=1), sample(next_xid=2)
    for step in range(5):
        write_control(str(tmp_path), old)
        with osfile.installed(StepLayer(fail_at=step)), pytest.raises(IOFailure) as ei:
            write_control(str(tmp_path), new)
        assert ei.value.errno == errno.EIO
        got = read_control(str(tmp_path))
        assert got == (old if step < 4 else new), step


def test_full_disk_on_write(tmp_path):
    """A write that transfers nothing counts as a full disk; the old file survives."""
    class NoSpace(osfile.OsLayer):
        def pwritev(self, fd, buffers, offset):
            return 0
    write_control(str(tmp_path), sample(next_xid=5))
    with osfile.installed(NoSpace()), pytest.raises(IOFailure) as ei:
        write_control(str(tmp_path), sample(next_xid=6))
    assert ei.value.errno == errno.ENOSPC
    assert read_control(str(tmp_path)).next_xid == 5
