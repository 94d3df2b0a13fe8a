"""The io method interface: what ``sync``, ``worker`` and ``io_uring`` implement, the
per-thread issuer context they are handed, and ``execute`` (one I/O through the OS
boundary).

The core (``core.Aio``) owns handles and control flow; a method only moves I/O:

- ``needs_synchronous_execution(handle)``: run this one inline at staging time;
- ``submit(ctx, handles)``: start a batch of at most ``SUBMIT_BATCH_SIZE`` staged I/Os;
- ``wait_one(handle, generation)``: help complete ``handle`` (io_uring reaps its ring);
- ``attach``/``init_issuer``/``release_issuer``/``shutdown``: lifecycle hooks.

A method reports each finished I/O through the ``complete(handle, raw_result)`` function
``attach`` gave it (``raw_result``: bytes transferred or -errno), in whichever thread it
finished in.
"""

from __future__ import annotations

import errno
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import slonik.aio.osfile as osfile
from slonik.aio.handle import Handle, IoOp

SUBMIT_BATCH_SIZE = 32  # most staged-but-unsubmitted I/Os per thread (PostgreSQL's value)


class IssuerContext:
    """Per-thread state: the handle pool, the staged list, the in-flight list. ``aio`` is
    the ``core.Aio`` that owns it."""

    def __init__(self, aio: Any, slot: int, thread: threading.Thread) -> None:
        self.aio = aio
        self.slot = slot
        self.thread_ref = weakref.ref(thread)
        self.thread_name = thread.name
        self.thread_ident = thread.ident
        self.handles: list[Handle] = []
        self.idle: list[Handle] = []
        self.staged: list[Handle] = []
        self.inflight: OrderedDict[int, Handle] = OrderedDict()  # submission order
        self.handed_out: Handle | None = None
        self.batch_depth = 0
        self.submissions = 0  # calls of the method's submit (AioStats.submissions)
        self.counters: dict[tuple[int, IoOp], Any] = {}
        self.method_state: object = None  # the method's per-thread data (a ring)

    def alive(self) -> bool:
        thread = self.thread_ref()
        return thread is not None and thread.is_alive()


class IoMethod:
    """What every method implements. The core picks one by name (``core.IO_METHOD_TABLE``)."""

    name = "abstract"
    wait_on_fd_before_close = False
    # True when the method finishes every submitted I/O on its own (workers, inline);
    # False when a waiter must drive completion through wait_one (io_uring).
    completes_without_waiters = True
    # True when a submission honours HandleFlag.LINK_NEXT (io_uring's IOSQE_IO_LINK) and
    # HandleFlag.ISSUER_WAITS; elsewhere both flags are ignored.
    links_submissions = False

    def attach(self, aio: Any, complete: Callable[[Handle, int], None]) -> None:
        """Called once; ``complete(handle, raw_result)`` runs the shared completion."""
        self.aio = aio
        self.complete = complete

    def init_issuer(self, ctx: IssuerContext) -> None:
        pass

    def release_issuer(self, ctx: IssuerContext) -> None:
        pass

    def needs_synchronous_execution(self, handle: Handle) -> bool:
        return False

    def submit(self, ctx: IssuerContext, handles: list[Handle]) -> None:
        raise NotImplementedError

    def execute_inline(self, handle: Handle) -> None:
        """Run the I/O now, in the issuer, and complete it."""
        self.complete(handle, execute(handle, handle.fd))

    def wait_one(self, handle: Handle, generation: int) -> bool:
        """Make progress towards completing ``handle``. Return False if this method has no
        way to help (the caller then sleeps on the handle's condition)."""
        return False

    def shutdown(self) -> None:
        pass


# run_many's op codes are IoOp's values (both name the same four operations)
assert osfile.RUN_OPS in ((), (IoOp.READV, IoOp.WRITEV, IoOp.FSYNC, IoOp.FDATASYNC)), \
    f"aio/_osio's op codes {osfile.RUN_OPS} are not IoOp's"


def execute_many(handles: list[Handle], fds: list[int]) -> list[int] | None:
    """``execute`` of each handle on its ``fds`` entry, in order, through the OS boundary in
    one call (``osfile.run_many``: the GIL released once for all of them); the raw
    results in order. None, having run nothing, where that call cannot take them (a
    test's OS layer, no C module): the caller then runs each with ``execute``."""
    return osfile.run_many([h.op for h in handles], fds, [h.buffers for h in handles],
                           [h.offset for h in handles])


def execute(handle: Handle, fd: int) -> int:
    """Run one I/O through the OS boundary, once; returns bytes transferred or -errno. A
    short count is the caller's to judge (``transfer.py``), never retried here."""
    try:
        op = handle.op
        if op == IoOp.READV:
            return osfile.preadv(fd, handle.buffers, handle.offset)
        if op == IoOp.WRITEV:
            return osfile.pwritev(fd, handle.buffers, handle.offset)
        if op == IoOp.FSYNC:
            osfile.fsync(fd)
            return 0
        if op == IoOp.FDATASYNC:
            osfile.fdatasync(fd)
            return 0
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    raise AssertionError(f"cannot execute op {handle.op!r}")
