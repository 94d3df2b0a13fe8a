"""The io_uring method, through the compiled cffi binding ``aio._uring``.

This module is the only user of the binding. ``io_uring_available()`` really opens and
closes a ring, because only that tells whether the kernel, sandbox (seccomp,
``kernel.io_uring_disabled``) and memlock limits allow io_uring here.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
import weakref

from slonik.aio.errors import IoMethodUnavailable
from slonik.aio.handle import Handle, HandleFlag, HandleState
from slonik.aio.method import SUBMIT_BATCH_SIZE, IoMethod, IssuerContext

try:
    from slonik.aio._uring import ffi as _ffi
    from slonik.aio._uring import lib as _lib

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # built without liburing, or not built at all
    _ffi = _lib = None
    _IMPORT_ERROR = (f"the io_uring binding slonik.aio._uring is not built ({exc}); install "
                     "liburing-dev and reinstall (pip install -e .)")

# user_data = handle index | generation << 20: a completion names the exact I/O, so one
# that arrives for a recycled handle is recognised. 2**20 > MAX_ISSUERS * 1024 handles.
_GENERATION_SHIFT = 20
_INDEX_MASK = (1 << _GENERATION_SHIFT) - 1

MAX_IOV_PER_IO = 128  # io_combine_limit's upper bound (1 MiB of 8 KiB blocks); larger runs inline
# Completions one wait_one call drains (one lock hold, one crossing into C). Small, so that a
# waiter whose I/O is among the first completions gets control back soon and can issue more
# I/O while the rest are still queued: the virtio disk measured here completes a whole
# submitted batch at once, and draining all 32 before returning left it idle (random 8 KiB
# reads at depth 32 from one thread: ~44k IOPS draining up to 64, ~57k by 8, ~59k by 4).
REAP_BATCH = 4

_LINK_NEXT = HandleFlag.LINK_NEXT
_ISSUER_WAITS = HandleFlag.ISSUER_WAITS

_rings: weakref.WeakSet = weakref.WeakSet()


@functools.cache
def io_uring_available() -> tuple[bool, str]:
    """(True, description) when a ring can be set up here, else (False, the reason)."""
    if _lib is None:
        return False, _IMPORT_ERROR or "the io_uring binding is missing"
    out = _ffi.new("struct slk_ring **")
    rc = _lib.slk_ring_create(8, 1, out)
    if rc < 0:
        return False, f"io_uring_queue_init failed: {os.strerror(-rc)} (errno {-rc})"
    _lib.slk_ring_destroy(out[0])
    return True, "io_uring ring set up and torn down successfully"


def _after_fork_in_child() -> None:
    for ring in list(_rings):
        ring.forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class Ring:
    """One io_uring of one issuing thread, with its completion lock and C-side arrays."""

    def __init__(self, entries: int) -> None:
        out = _ffi.new("struct slk_ring **")
        rc = _lib.slk_ring_create(entries, MAX_IOV_PER_IO, out)
        if rc < 0:
            raise IoMethodUnavailable(f"could not set up an io_uring of {entries} entries: "
                                      f"{os.strerror(-rc)} (errno {-rc})")
        self.ptr = out[0]
        self.entries = entries
        self.lock = threading.Lock()  # every reaper takes it, the owner too
        self.forked = False
        self.broken = ""  # why the ring takes no more submissions
        self.stale_completions = 0
        n = SUBMIT_BATCH_SIZE
        self.op = _ffi.new("int[]", n)
        self.fd = _ffi.new("int[]", n)
        self.slot = _ffi.new("unsigned[]", n)
        self.iovcnt = _ffi.new("int[]", n)
        self.offset = _ffi.new("int64_t[]", n)
        self.user_data = _ffi.new("uint64_t[]", n)
        self.link = _ffi.new("uint8_t[]", n)
        self.addr = _ffi.new("uint64_t[]", n * MAX_IOV_PER_IO)
        self.len = _ffi.new("uint64_t[]", n * MAX_IOV_PER_IO)
        self.reap_max = min(REAP_BATCH, 2 * entries)
        self.ud_out = _ffi.new("uint64_t[]", self.reap_max)
        self.res_out = _ffi.new("int32_t[]", self.reap_max)
        _rings.add(self)

    def destroy(self) -> None:
        if self.ptr is not None:
            _lib.slk_ring_destroy(self.ptr)
            self.ptr = None


class IoUringMethod(IoMethod):
    name = "io_uring"
    wait_on_fd_before_close = True
    completes_without_waiters = False
    links_submissions = True

    def __init__(self) -> None:
        ok, reason = io_uring_available()
        if not ok:
            raise IoMethodUnavailable(f"io_method=io_uring is not available here: {reason}")

    def init_issuer(self, ctx: IssuerContext) -> None:
        if ctx.method_state is None:
            ctx.method_state = Ring(len(ctx.handles))

    def release_issuer(self, ctx: IssuerContext) -> None:
        ring = ctx.method_state
        if isinstance(ring, Ring):
            ring.destroy()
            ctx.method_state = None

    def needs_synchronous_execution(self, handle: Handle) -> bool:
        return len(handle.buffers) > MAX_IOV_PER_IO

    def submit(self, ctx: IssuerContext, handles: list[Handle]) -> None:
        ring: Ring = ctx.method_state
        if ring.forked:
            raise IoMethodUnavailable("an io_uring ring cannot be used after fork(); "
                                      "open the database again in the child")
        if ring.broken:
            for h in handles:  # fail loudly, never hang and never submit twice
                h.reaped = True
                self.complete(h, -errno.EIO)
            return
        base = ctx.handles[0].index
        from_buffer, cast = _ffi.from_buffer, _ffi.cast
        addr, length = ring.addr, ring.len
        if len(handles) == 1:  # one request: no array packing (slk_submit_one)
            h = handles[0]
            k = 0
            for b in h.buffers:
                addr[k] = int(cast("uintptr_t", from_buffer(b)))
                length[k] = len(b)
                k += 1
            rc = _lib.slk_submit_one(ring.ptr, h.op, h.fd, h.index - base, k, addr, length,
                                     h.offset, h.index | (h.generation << _GENERATION_SHIFT),
                                     1 if h.flags & _ISSUER_WAITS else 0)
            if rc < 0:
                self._submit_failed(ring, handles, rc)
            return
        op, fd, slot, iovcnt = ring.op, ring.fd, ring.slot, ring.iovcnt
        offset, user_data, link = ring.offset, ring.user_data, ring.link
        k = 0
        wait_nr = 0
        for i, h in enumerate(handles):
            flags = h.flags
            link[i] = 1 if flags & _LINK_NEXT else 0
            if flags & _ISSUER_WAITS:
                wait_nr += 1
            op[i] = h.op
            fd[i] = h.fd
            slot[i] = h.index - base
            iovcnt[i] = len(h.buffers)
            offset[i] = h.offset
            user_data[i] = h.index | (h.generation << _GENERATION_SHIFT)
            for b in h.buffers:
                addr[k] = int(cast("uintptr_t", from_buffer(b)))
                length[k] = len(b)
                k += 1
        # Linked I/Os (a WAL write and its fdatasync) reach the kernel in this one
        # io_uring_enter, which also waits for the ones the issuer waits for at once.
        rc = _lib.slk_submit(ring.ptr, len(handles), op, fd, slot, iovcnt, addr, length,
                             offset, user_data, link, wait_nr)
        if rc < 0:
            self._submit_failed(ring, handles, rc)

    def _submit_failed(self, ring: Ring, handles: list[Handle], rc: int) -> None:
        """Some of the batch may have reached the kernel and some SQEs may stay prepared:
        the ring takes no more submissions (its later I/O fails with the reason), and the
        batch completes with the error here. A CQE that still arrives for one of these
        handles is recognised as stale by its generation and dropped."""
        ring.broken = f"an io_uring submission failed: {os.strerror(-rc)} (errno {-rc})"
        for h in handles:
            if h.state == HandleState.SUBMITTED and not h.reaped:
                h.reaped = True
                self.complete(h, rc)

    def wait_one(self, handle: Handle, generation: int) -> bool:
        ring: Ring | None = handle.owner.method_state
        if ring is None or handle.reaped:
            return False
        with ring.lock:
            if handle.generation != generation or handle.reaped or ring.ptr is None:
                return True
            n = _lib.slk_reap(ring.ptr, ring.reap_max, 1, ring.ud_out, ring.res_out)
            if n < 0:
                raise OSError(-n, f"io_uring wait failed: {os.strerror(-n)}")
            handles = self.aio._handles
            done = []
            for ud, res in zip(_ffi.unpack(ring.ud_out, n), _ffi.unpack(ring.res_out, n),
                               strict=True):
                h = handles[ud & _INDEX_MASK]
                if h.generation != ud >> _GENERATION_SHIFT or h.reaped:
                    ring.stale_completions += 1  # after a failed submission: already failed
                    continue
                h.reaped = True
                done.append((h, res))
            complete = self.complete
            for h, res in done:
                complete(h, res)
        return True
