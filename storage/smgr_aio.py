"""smgr over AIO: the smgr target and the smgr read/write completion callbacks.

``Smgr.start_readv`` / ``Smgr.start_writev`` stage one vectored I/O of consecutive blocks
within one segment file on a handle the caller acquired (the caller may have added its own
callbacks first, e.g. the buffer manager's). Here:

- the segment's fd is acquired from the fd cache *in use* before the I/O is staged and
  released by the completion callback, so the fd cache never closes it under the kernel;
- the target records path and open flags (a worker reopens by path) and the block range
  (for error messages and ``inflight()``);
- the completion callback, which runs first (it is added last), turns bytes into whole
  blocks: ``-errno`` → ERROR, no whole block → ERROR, fewer blocks than asked → PARTIAL
  with the blocks done, else OK. The report names file, relation, fork and blocks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from slonik.aio import callbacks as cb
from slonik.aio.errors import DiskFullError
from slonik.aio.handle import AioResult, AioReturn, Handle, HandleFlag, ResultStatus
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, _io_error, describe

if TYPE_CHECKING:
    from slonik.storage.smgr import Smgr

SMGR_TARGET_ID = 2
SMGR_READV_CALLBACK_ID = 2
SMGR_WRITEV_CALLBACK_ID = 3

ERROR, PARTIAL, OK = ResultStatus.ERROR, ResultStatus.PARTIAL, ResultStatus.OK


class SmgrIo:
    """Target and callback data of one smgr I/O (one segment, consecutive blocks)."""

    __slots__ = ("smgr", "rel", "fork", "block", "nblocks", "path", "fd", "open_flags")

    def __init__(self, smgr: Smgr, rel: int, fork: Fork, block: int, nblocks: int, path: str,
                 fd: int, open_flags: int) -> None:
        self.smgr = smgr
        self.rel = rel
        self.fork = fork
        self.block = block
        self.nblocks = nblocks
        self.path = path
        self.fd = fd
        self.open_flags = open_flags

    def describe(self) -> str:
        return f"{describe(self.rel, self.fork, self.block, self.nblocks)} in file {self.path}"


def _reopen(io: SmgrIo) -> tuple[str, int]:
    return io.path, io.open_flags


def _complete(h: Handle, prior: AioResult, io: SmgrIo, callback_id: int) -> AioResult:
    io.smgr._files.release(io.path, io.fd)
    raw = h.raw_result
    if raw < 0:
        return AioResult(ERROR, 0, -raw, callback_id)
    blocks = raw // BLCKSZ
    if blocks == 0 and io.nblocks > 0:
        return AioResult(ERROR, 0, 0, callback_id, raw)
    if blocks < io.nblocks:
        return AioResult(PARTIAL, blocks, 0, callback_id, raw)
    return AioResult(OK, blocks, 0, 0)


def _readv_complete(h: Handle, prior: AioResult, io: SmgrIo) -> AioResult:
    return _complete(h, prior, io, SMGR_READV_CALLBACK_ID)


def _writev_complete(h: Handle, prior: AioResult, io: SmgrIo) -> AioResult:
    return _complete(h, prior, io, SMGR_WRITEV_CALLBACK_ID)


def _report(ret: AioReturn, io: SmgrIo, verb: str) -> None:
    r = ret.result
    what = f"could not {verb} {io.describe()}"
    if r.status == ERROR and r.error_data:
        raise _io_error(r.error_data, what)
    done = r.detail if isinstance(r.detail, int) else r.result * BLCKSZ
    wanted = io.nblocks * BLCKSZ
    if verb == "write":
        raise DiskFullError(f"{what}: wrote only {done} of {wanted} bytes")
    raise DataCorruptionError(f"{what}: read only {done} of {wanted} bytes",
                              relation=io.rel, fork=int(io.fork), block=io.block + r.result)


cb.register_target(SMGR_TARGET_ID, cb.TargetOps("relation", reopen=_reopen,
                                                describe=SmgrIo.describe))
cb.register_callback(SMGR_READV_CALLBACK_ID, cb.CallbackSet(
    "smgr_readv", complete_shared=_readv_complete,
    report=lambda ret, io: _report(ret, io, "read")))
cb.register_callback(SMGR_WRITEV_CALLBACK_ID, cb.CallbackSet(
    "smgr_writev", complete_shared=_writev_complete,
    report=lambda ret, io: _report(ret, io, "write")))


def start_io(smgr: Smgr, handle: Handle, write: bool, rel: int, fork: int, block: int,
             buffers: list[Any]) -> None:
    """Stage one vectored read or write of ``len(buffers)`` blocks on ``handle``."""
    fork = smgr._check_relation(rel, fork)
    n = smgr._check_buffers(buffers, block, wide=True)
    smgr._check_open()
    if n == 0:
        raise ValueError("an smgr I/O needs at least one buffer")
    segno, in_segment = divmod(block, smgr.segment_size)
    if in_segment + n > smgr.segment_size:
        raise ValueError(f"{describe(rel, fork, block, n)} cross a segment boundary; "
                         f"split with maxcombine() (at most {smgr.segment_size - in_segment})")
    verb = "write" if write else "read"
    fd = smgr._acquire_segment(rel, fork, segno, write,
                               lambda: f"{verb} {describe(rel, fork, block, n)}")
    path = smgr._segment_path(rel, fork, segno)
    io = SmgrIo(smgr, rel, fork, block, n, path, fd, os.O_RDWR | smgr.file_flags)
    try:
        handle.set_target(SMGR_TARGET_ID, io)
        handle.add_callback(SMGR_WRITEV_CALLBACK_ID if write else SMGR_READV_CALLBACK_ID, io)
        if not smgr.io_direct:
            handle.set_flag(HandleFlag.BUFFERED)
    except BaseException:
        smgr._files.release(path, fd)
        raise
    offset = in_segment * BLCKSZ
    if write:
        smgr._note_written(rel, fork, segno)  # at staging: sync_written() covers it
        smgr._count_writes(1, n * BLCKSZ)
        handle.start_writev(fd, buffers, offset)
    else:
        smgr._count_reads(1, n * BLCKSZ)
        handle.start_readv(fd, buffers, offset)
