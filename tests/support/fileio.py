"""Starting an AIO read or write of a plain file (``TargetId.FILE``), for the aio tests."""

from __future__ import annotations

import os

from slonik.aio.core import Aio
from slonik.aio.handle import AioReturn
from slonik.aio.ids import TargetId


def start_read(aio: Aio, path: str, fd: int, buffers: list, offset: int):
    """Start a vectored read of ``path`` (open as ``fd``) at ``offset``: (wait ref, return)."""
    return _start(aio, path, fd, buffers, offset, write=False)


def start_write(aio: Aio, path: str, fd: int, buffers: list, offset: int):
    """Start a vectored write of ``path`` (open as ``fd``) at ``offset``: (wait ref, return)."""
    return _start(aio, path, fd, buffers, offset, write=True)


def _start(aio: Aio, path: str, fd: int, buffers: list, offset: int, *, write: bool):
    ret = AioReturn()
    h = aio.acquire(ret)
    h.set_target(TargetId.FILE, (path, os.O_RDWR, offset))
    ref = h.wait_ref()
    (h.start_writev if write else h.start_readv)(fd, buffers, offset)
    return ref, ret
