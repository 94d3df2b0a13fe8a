"""The one short-transfer policy, for synchronous loops and asynchronous results alike.

A kernel returns fewer bytes than asked only when interrupted, at end of file, or when the
disk fills. So:

1. A transfer that made progress is continued from where it stopped (``advance``), at most
   ``SHORT_TRANSFER_RETRIES_MAX`` times in a row; more means something is badly wrong
   (``IOFailure`` EIO).
2. A write that transferred nothing (no error) counts as a full disk: ``DiskFullError``.
3. A read that transferred nothing is end of file: the loop stops and the caller decides
   (for a relation that is reading past its end: ``DataCorruptionError``).
4. An asynchronous I/O that came back short is a PARTIAL result; if nobody re-issues the
   rest, reporting it raises ``short_transfer_error`` (rule 2 for writes, EIO for reads).

``transfer_all`` is the synchronous loop (smgr's reads and writes); the AIO core's report
and the smgr callbacks' report raise ``short_transfer_error``; the buffer manager re-issues
the rest of a short read through AIO under the same bound.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

import slonik.aio.osfile as osfile
from slonik.aio.errors import DiskFullError, IOFailure, io_error

# Short transfers in a row for one request before giving up (rule 1): each pass made
# progress, so a healthy kernel needs one or two; a hundred means a broken file system.
SHORT_TRANSFER_RETRIES_MAX = 100


def advance(iov: Sequence, nbytes: int) -> list:
    """The part of ``iov`` left after its first ``nbytes`` bytes (buffers of any length)."""
    rest = list(iov)
    i = 0
    while nbytes and i < len(rest):
        size = len(rest[i])
        if nbytes < size:
            rest[i] = memoryview(rest[i])[nbytes:]
            break
        nbytes -= size
        i += 1
    return rest[i:]


def short_transfer_error(write: bool, done: int, wanted: int, what: str) -> IOFailure:
    """The exception for a transfer that ended short and is not continued (rules 2, 4)."""
    if write:
        return DiskFullError(f"could not write {what}: wrote only {done} of {wanted} bytes "
                             "(no progress; counted as a full disk)")
    return IOFailure(errno.EIO, f"could not read {what}: read only {done} of {wanted} bytes")


def transfer_all(fd: int, iov: Sequence, offset: int, *, write: bool,
                 what: Callable[[], str]) -> tuple[int, int]:
    """pwritev/preadv ``iov`` at ``offset`` through the OS boundary until all of it is
    transferred (rule 1). Returns ``(bytes done, system calls)``; a read stops early at end
    of file (rule 3). An OS error raises ``IOFailure``/``DiskFullError`` naming ``what()``."""
    want = sum(map(len, iov))
    done = calls = 0
    rest = iov
    call = osfile.pwritev if write else osfile.preadv
    while True:
        try:
            got = call(fd, rest, offset + done)
        except OSError as e:
            raise io_error(e.errno, f"could not {'write' if write else 'read'} {what()}") from e
        calls += 1
        done += got
        if done == want or (got == 0 and not write):
            return done, calls
        if got == 0:
            raise short_transfer_error(True, done, want, what())
        if calls > SHORT_TRANSFER_RETRIES_MAX:
            verb = "write" if write else "read"
            raise IOFailure(errno.EIO, f"could not {verb} {what()}: {calls} short {verb}s "
                                       "in a row")
        rest = advance(iov, done)
