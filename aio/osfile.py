"""The one OS boundary: every file-system call that reads, writes, syncs, creates, renames,
truncates or removes goes through here, and nothing else in Slonik calls those ``os``
functions (like SQLite's VFS).

The module-level functions delegate to the installed ``OsLayer``. Tests install a subclass
that injects faults or simulates a crash (``install()``); production code never does.
io_uring's kernel-side I/O bypasses this layer by nature; crash simulation therefore runs
through the sync and worker methods.

Short transfers are returned, not hidden: ``preadv``/``pwritev`` return the byte count and
the caller decides whether a short count is end-of-file, a retry, or a full disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator, Sequence

Buffer = memoryview | bytearray | bytes


class OsLayer:
    """The real operating system. Subclasses override methods to inject faults."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def preadv(self, fd: int, buffers: Sequence[Buffer], offset: int) -> int:
        return os.preadv(fd, buffers, offset)

    def pwritev(self, fd: int, buffers: Sequence[Buffer], offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    def preadv_nowait(self, fd: int, buffers: Sequence[Buffer], offset: int) -> int:
        """``preadv`` with ``RWF_NOWAIT``: only what the page cache holds, never waiting for
        the device (``BlockingIOError`` when the first page is not cached; a short count
        when a later one is not). ``EOPNOTSUPP`` where the platform or file system cannot.
        A layer that overrides ``preadv`` but not this one declines every call (EAGAIN),
        so each read it should see still reaches its ``preadv``."""
        if type(self).preadv is not OsLayer.preadv:
            raise BlockingIOError(errno.EAGAIN, "this OS layer sees every read through preadv")
        if _RWF_NOWAIT is None:
            raise OSError(errno.EOPNOTSUPP, "preadv RWF_NOWAIT is not available here")
        return os.preadv(fd, buffers, offset, _RWF_NOWAIT)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def file_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def fsync_directory(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fadvise_willneed(self, fd: int, offset: int, length: int) -> None:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)

    def writeback(self, fd: int, offset: int, length: int) -> None:
        """Start write-back of a range without waiting (sync_file_range WRITE; a hint)."""
        if _sync_file_range is None:
            return
        if _sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length),
                            _SYNC_FILE_RANGE_WRITE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


_SYNC_FILE_RANGE_WRITE = 2
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+, Python 3.7+


def _load_sync_file_range():  # Linux only; elsewhere writeback() is a no-op hint
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_layer: OsLayer = OsLayer()

try:  # a batch of I/Os in one C call (aio/_osio_build.py); optional
    from slonik.aio._osio import ffi as _osio_ffi
    from slonik.aio._osio import lib as _osio_lib
except ImportError:
    _osio_ffi = _osio_lib = None
# run_many's op codes (READV, WRITEV, FSYNC, FDATASYNC) and the most buffers an I/O gathers
RUN_OPS: tuple[int, ...] = () if _osio_lib is None else (
    _osio_lib.SLK_RUN_READV, _osio_lib.SLK_RUN_WRITEV, _osio_lib.SLK_RUN_FSYNC,
    _osio_lib.SLK_RUN_FDATASYNC)
RUN_MAX_IOV = 0 if _osio_lib is None else _osio_lib.SLK_RUN_MAX_IOV


def layer() -> OsLayer:
    """The OS layer in force."""
    return _layer


def install(new: OsLayer) -> OsLayer:
    """Put ``new`` in force and return the previous layer (tests only)."""
    global _layer
    if not isinstance(new, OsLayer):
        raise TypeError(f"install() needs an OsLayer, not {type(new).__name__}")
    previous, _layer = _layer, new
    return previous


@contextlib.contextmanager
def installed(new: OsLayer) -> Iterator[OsLayer]:
    """Context manager form of ``install()``."""
    previous = install(new)
    try:
        yield new
    finally:
        install(previous)


# Thin module-level entry points, so call sites read ``osfile.preadv(...)``.
def open(path: str, flags: int, mode: int = 0o644) -> int:  # noqa: A001 - mirrors os.open
    return _layer.open(path, flags, mode)


def close(fd: int) -> None:
    _layer.close(fd)


def preadv(fd: int, buffers: Sequence[Buffer], offset: int) -> int:
    return _layer.preadv(fd, buffers, offset)


def pwritev(fd: int, buffers: Sequence[Buffer], offset: int) -> int:
    return _layer.pwritev(fd, buffers, offset)


def run_many(ops: Sequence[int], fds: Sequence[int], buffers: Sequence[Sequence[Buffer]],
             offsets: Sequence[int]) -> list[int] | None:
    """Run I/O ``i`` = ``ops[i]`` (a ``RUN_OPS`` code: a vectored read or write of
    ``buffers[i]`` at ``offsets[i]``, or a sync with no buffers) on ``fds[i]``, one after
    another in one C call that releases the GIL once; each I/O's raw result in order:
    bytes transferred (a short count is the caller's to judge), 0 for a sync, or -errno.
    Each runs once, whatever the others gave. None, having run nothing, when the real OS
    layer is not the one in force (a test's layer must see every call), the C module is
    not built, an I/O gathers more than ``RUN_MAX_IOV`` buffers or a read's buffer is
    read-only: the caller then runs each through this module's functions."""
    if _osio_lib is None or type(_layer) is not OsLayer:
        return None
    n = len(ops)
    if any(len(b) > RUN_MAX_IOV for b in buffers):
        return None
    cast, from_buffer = _osio_ffi.cast, _osio_ffi.from_buffer
    addrs: list[int] = []
    lens: list[int] = []
    try:
        for op, bufs in zip(ops, buffers, strict=True):
            for b in bufs:
                view = from_buffer(b, require_writable=op == RUN_OPS[0])  # (a read fills it)
                addrs.append(int(cast("uintptr_t", view)))
                lens.append(len(view))   # (bytes, whatever the buffer's item size)
    except (BufferError, TypeError):   # a read into a read-only buffer, or no buffer at
        return None                    # all: the OS layer's own call raises for it
    res = _osio_ffi.new("int64_t[]", n)
    if _osio_lib.slk_run_many(n, ops, fds, [len(b) for b in buffers], addrs or [0],
                              lens or [0], offsets, res) != n:
        raise ValueError(f"run_many: an op not in {RUN_OPS} among {list(ops)}")
    return list(res)


def preadv_nowait(fd: int, buffers: Sequence[Buffer], offset: int) -> int:
    return _layer.preadv_nowait(fd, buffers, offset)


def fsync(fd: int) -> None:
    _layer.fsync(fd)


def fdatasync(fd: int) -> None:
    _layer.fdatasync(fd)


def ftruncate(fd: int, length: int) -> None:
    _layer.ftruncate(fd, length)


def file_size(fd: int) -> int:
    return _layer.file_size(fd)


def rename(src: str, dst: str) -> None:
    _layer.rename(src, dst)


def unlink(path: str) -> None:
    _layer.unlink(path)


def mkdir(path: str) -> None:
    _layer.mkdir(path)


def rmdir(path: str) -> None:
    _layer.rmdir(path)


def exists(path: str) -> bool:
    return _layer.exists(path)


def listdir(path: str) -> list[str]:
    return _layer.listdir(path)


def fsync_directory(path: str) -> None:
    _layer.fsync_directory(path)


def fadvise_willneed(fd: int, offset: int, length: int) -> None:
    _layer.fadvise_willneed(fd, offset, length)


def writeback(fd: int, offset: int, length: int) -> None:
    _layer.writeback(fd, offset, length)
