"""The control file ``slonik_control``: where recovery starts, and whether it must.

A fixed ``CONTROL_FILE_SIZE`` (512) bytes, small enough that one sector holds it, CRC-32C
protected, replaced atomically: written whole to ``slonik_control.tmp``, fsynced, renamed
over ``slonik_control``, then the directory fsynced, all through ``aio.osfile``. After a crash
at any instant the name holds either the old or the new contents, never a mix.

Layout (little-endian, struct "<IIIIQQQQQQQIId", then zeros up to 512 bytes)::

      0  magic u32               CONTROL_MAGIC
      4  version u32             CONTROL_VERSION (3; 2 had heap KV stores, 1 WAL page format 1)
      8  crc u32                 CRC-32C of all 512 bytes with this field read as zero
     12  state u32               DbState
     16  system_identifier u64
     24  checkpoint_lsn u64      LSN of the last checkpoint record
     32  redo_lsn u64            its redo point: where replay starts
     40  next_xid u64
     48  next_relfilenumber u64
     56  wal_segment_size u64    bytes
     64  segment_size u64        blocks per relation segment file
     72  blcksz u32
     76  reserved u32            zero
     80  time f64                seconds since the epoch when written
     88  zeros up to 512

A damaged file is never reset quietly: every check names the file and the field
(``ControlFileError``), and a missing file is ``ControlFileMissingError``, which is also a
``FileNotFoundError``.
"""

from __future__ import annotations

import errno
import math
import os
import struct
from dataclasses import dataclass
from enum import IntEnum

import crc32c as _crc32c
from slonik.aio import osfile
from slonik.aio.errors import DiskFullError, IOFailure
from slonik.wal.errors import WalError

__all__ = [
    "CONTROL_FILE_NAME", "CONTROL_FILE_SIZE", "CONTROL_MAGIC", "CONTROL_VERSION", "DbState",
    "ControlData", "ControlFileError", "ControlFileMissingError", "encode_control",
    "decode_control", "read_control", "write_control", "control_path",
]

CONTROL_FILE_NAME = "slonik_control"
CONTROL_FILE_SIZE = 512        # bytes; one sector, so the rename is the only atomicity needed
CONTROL_MAGIC = 0x534C4E43     # "CNLS" little-endian: "SLNC"
CONTROL_VERSION = 3            # 3: KV stores are B+trees; 2: WAL page format 2 (flush stamps)
_OLD_VERSIONS = {1: "its WAL pages carry no flush stamps (WAL page format 1)",
                 2: "its KV stores are heaps, not B+trees"}
_TEMP_SUFFIX = ".tmp"

_LAYOUT = struct.Struct("<IIIIQQQQQQQIId")
_CRC_OFFSET = 8
_ZERO_CRC = bytes(4)
_U32, _U64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
assert _LAYOUT.size == 88 and _LAYOUT.size <= CONTROL_FILE_SIZE


class DbState(IntEnum):
    SHUTDOWNED = 1
    IN_PRODUCTION = 2
    IN_CRASH_RECOVERY = 3


@dataclass(frozen=True)
class ControlData:
    system_identifier: int
    state: DbState
    checkpoint_lsn: int
    redo_lsn: int
    next_xid: int
    next_relfilenumber: int
    wal_segment_size: int
    segment_size: int
    blcksz: int
    time: float
    version: int = CONTROL_VERSION


class ControlFileError(WalError):
    """A control file that cannot be used; names the file and what is wrong with it."""

    def __init__(self, path: str, field: str, message: str) -> None:
        WalError.__init__(self, f"control file {path}: {message}")
        self.path = path
        self.field = field

    def __str__(self) -> str:
        return str(self.args[0])


class ControlFileMissingError(ControlFileError, FileNotFoundError):
    """There is no control file: not a Slonik database (or not one yet)."""

    def __init__(self, path: str) -> None:
        FileNotFoundError.__init__(self, errno.ENOENT, f"control file {path}: does not exist "
                                                       f"(not a Slonik data directory?)", path)
        self.path = path
        self.field = "file"

    def __str__(self) -> str:
        return str(self.strerror)


def control_path(data_dir: str) -> str:
    return os.path.join(data_dir, CONTROL_FILE_NAME)


# --- codec -----------------------------------------------------------------------------------

def _check_int(name: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit}, got {value}")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def encode_control(c: ControlData) -> bytes:
    """The 512 bytes of ``c``; ValueError/TypeError naming the field that cannot be stored."""
    if not isinstance(c, ControlData):
        raise TypeError(f"encode_control needs a ControlData, not {type(c).__name__}")
    if not isinstance(c.state, int) or c.state not in DbState.__members__.values():
        raise ValueError(f"state must be a DbState, got {c.state!r}")
    if c.version != CONTROL_VERSION:
        raise ValueError(f"version must be {CONTROL_VERSION}, got {c.version!r}")
    for name in ("system_identifier", "checkpoint_lsn", "redo_lsn", "next_xid",
                 "next_relfilenumber", "wal_segment_size", "segment_size"):
        _check_int(name, getattr(c, name), _U64)
    _check_int("blcksz", c.blcksz, _U32)
    for name in ("wal_segment_size", "segment_size", "blcksz"):
        if not _is_power_of_two(getattr(c, name)):
            raise ValueError(f"{name} must be a power of two, got {getattr(c, name)}")
    if not isinstance(c.time, int | float) or not math.isfinite(c.time):
        raise ValueError(f"time must be a finite number of seconds, got {c.time!r}")
    fields = (int(c.state), c.system_identifier, c.checkpoint_lsn, c.redo_lsn, c.next_xid,
              c.next_relfilenumber, c.wal_segment_size, c.segment_size, c.blcksz, 0,
              float(c.time))
    pad = bytes(CONTROL_FILE_SIZE - _LAYOUT.size)
    unsigned = _LAYOUT.pack(CONTROL_MAGIC, CONTROL_VERSION, 0, *fields) + pad
    crc = _crc32c.crc32c(unsigned)
    return _LAYOUT.pack(CONTROL_MAGIC, CONTROL_VERSION, crc, *fields) + pad


def decode_control(data, path: str) -> ControlData:
    """The control data in ``data`` read from ``path``; ControlFileError naming the file and
    the field. Checks run size, magic, version, CRC, then each field's range."""
    n = len(data)
    if n != CONTROL_FILE_SIZE:
        raise ControlFileError(path, "size", f"is {n} bytes, expected {CONTROL_FILE_SIZE} "
                                             f"(torn or truncated?)")
    (magic, version, crc, state, sysid, checkpoint_lsn, redo_lsn, next_xid, next_rel,
     wal_seg, seg, blcksz, reserved, when) = _LAYOUT.unpack_from(data, 0)
    if magic != CONTROL_MAGIC:
        raise ControlFileError(path, "magic", f"bad magic 0x{magic:08X}, expected "
                                              f"0x{CONTROL_MAGIC:08X}: not a Slonik control file")
    if version != CONTROL_VERSION:
        why = f" ({_OLD_VERSIONS[version]}: written by an older Slonik)" \
            if version in _OLD_VERSIONS else ""
        raise ControlFileError(path, "version", f"version {version}{why}; this build reads "
                                                f"version {CONTROL_VERSION} only")
    mv = memoryview(data)
    computed = _crc32c.crc32c(mv[_CRC_OFFSET + 4:],
                              _crc32c.crc32c(_ZERO_CRC, _crc32c.crc32c(mv[:_CRC_OFFSET])))
    if computed != crc:
        raise ControlFileError(path, "crc", f"CRC-32C is 0x{crc:08X}, computed "
                                            f"0x{computed:08X}: the file is damaged")
    # Past the CRC the bytes are what some writer wrote; the checks below catch a writer bug.
    if state not in DbState.__members__.values():
        raise ControlFileError(path, "state", f"unknown state {state}")
    for name, value in (("wal_segment_size", wal_seg), ("segment_size", seg),
                        ("blcksz", blcksz)):
        if not _is_power_of_two(value):
            raise ControlFileError(path, name, f"{name} {value} is not a power of two")
    if reserved or any(mv[_LAYOUT.size:]):
        raise ControlFileError(path, "reserved", "reserved bytes are not zero")
    if not math.isfinite(when):
        raise ControlFileError(path, "time", f"time {when!r} is not a finite number")
    return ControlData(sysid, DbState(state), checkpoint_lsn, redo_lsn, next_xid, next_rel,
                       wal_seg, seg, blcksz, when, version)


# --- file ------------------------------------------------------------------------------------

def read_control(data_dir: str) -> ControlData:
    """Read and check ``data_dir/slonik_control``."""
    path = control_path(data_dir)
    try:
        fd = osfile.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ControlFileMissingError(path) from None
    except OSError as e:
        raise IOFailure(e.errno or errno.EIO, f"could not open control file {path}") from e
    try:
        size = osfile.file_size(fd)
        if size != CONTROL_FILE_SIZE:
            raise ControlFileError(path, "size", f"is {size} bytes, expected "
                                                 f"{CONTROL_FILE_SIZE} (torn or truncated?)")
        buf = bytearray(CONTROL_FILE_SIZE)
        done = 0
        while done < CONTROL_FILE_SIZE:
            n = osfile.preadv(fd, [memoryview(buf)[done:]], done)
            if n == 0:
                raise ControlFileError(path, "size", f"ends after {done} bytes, expected "
                                                     f"{CONTROL_FILE_SIZE}")
            done += n
    except OSError as e:
        if isinstance(e, IOFailure):
            raise
        raise IOFailure(e.errno or errno.EIO, f"could not read control file {path}") from e
    finally:
        osfile.close(fd)
    return decode_control(bytes(buf), path)


def write_control(data_dir: str, c: ControlData) -> None:
    """Replace ``data_dir/slonik_control`` with ``c`` atomically: ``stage_control`` (write a
    temp file and fsync it) then ``install_control`` (rename it over the old one, fsync the
    directory). An OS failure is ``IOFailure`` (``DiskFullError`` for ENOSPC or no
    progress); a failure while staging leaves the old file in place, untouched."""
    stage_control(data_dir, c)
    install_control(data_dir)


def stage_control(data_dir: str, c: ControlData) -> None:
    """Write ``c`` to the control file's temp file and fsync it. The control file itself
    is not touched: when this raises, the database's state on disk is what it was, and the
    temp file is removed again where the OS lets us (a full disk gets its block back)."""
    data = encode_control(c)
    temp = control_path(data_dir) + _TEMP_SUFFIX
    try:
        fd = osfile.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise _io_error(e, f"could not create {temp}") from e
    try:
        try:
            done = 0
            while done < CONTROL_FILE_SIZE:
                try:
                    n = osfile.pwritev(fd, [memoryview(data)[done:]], done)
                except OSError as e:
                    raise _io_error(e, f"could not write {temp}") from e
                if n <= 0:
                    raise DiskFullError(f"could not write {temp}: wrote only {done} of "
                                        f"{CONTROL_FILE_SIZE} bytes")
                done += n
            try:
                osfile.fsync(fd)
            except OSError as e:
                raise _io_error(e, f"could not fsync {temp}") from e
        finally:
            osfile.close(fd)
    except IOFailure as failure:
        try:
            osfile.unlink(temp)
        except OSError as e:
            failure.add_note(f"the temp file {temp} could not be removed either: {e}")
        raise


def install_control(data_dir: str) -> None:
    """Rename the staged temp file over the control file and fsync the directory. A failure
    here may leave either file in place: the caller must treat it as fatal."""
    path = control_path(data_dir)
    temp = path + _TEMP_SUFFIX
    try:
        osfile.rename(temp, path)
    except OSError as e:
        raise _io_error(e, f"could not rename {temp} to {path}") from e
    try:
        osfile.fsync_directory(data_dir)
    except OSError as e:
        raise _io_error(e, f"could not fsync directory {data_dir}") from e


def _io_error(e: OSError, what: str) -> IOFailure:
    if e.errno == errno.ENOSPC:
        return DiskFullError(what)
    return IOFailure(e.errno or errno.EIO, what)
