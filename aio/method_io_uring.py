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


def _create_ring(entries: int, max_iov: int):
    """A new ring (``struct slk_ring *``) of ``entries`` SQEs, ``max_iov`` buffers per
    I/O; IoMethodUnavailable naming the size and the errno when the kernel refuses."""
    out = _ffi.new("struct slk_ring **")
    rc = _lib.slk_ring_create(entries, max_iov, out)
    if rc < 0:
        raise IoMethodUnavailable(f"could not set up an io_uring of {entries} entries: "
                                  f"{os.strerror(-rc)} (errno {-rc})")
    return out[0]


class Ring:
    """One io_uring of one issuing thread, with its completion lock and C-side arrays."""

    def __init__(self, entries: int) -> None:
        self.ptr = _create_ring(entries, MAX_IOV_PER_IO)
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


# --- durable writes in one submission (the WAL flush) -----------------------------------------
FLUSH_RING_ENTRIES = 16   # I/Os one chain may hold: a flush's writes and syncs (a few)
FLUSH_RING_MAX_IOV = 4    # buffers one write may gather (a WAL piece wraps the ring once)


class FlushRing:
    """A small io_uring of its own for a chain of writes and syncs that one caller waits
    for at once (the WAL flush). ``run`` links every I/O of the chain to the next (a
    write that fails or comes back short cancels the rest: no sync ever runs after a
    failed write), submits the chain and waits for all of it in one io_uring_enter, and
    reads the completions from the shared completion ring without another system call.

    No handles, no issuer context: the ring is separate from the AIO subsystem's rings,
    so its completions can never be mistaken for another I/O's. The caller serialises
    calls (the WAL's flush lock); any thread may make them."""

    def __init__(self) -> None:
        ok, reason = io_uring_available()
        if not ok:
            raise IoMethodUnavailable(f"io_uring is not available here: {reason}")
        self.ptr = _create_ring(FLUSH_RING_ENTRIES, FLUSH_RING_MAX_IOV)
        self.forked = False
        self.broken = ""
        n = FLUSH_RING_ENTRIES
        self._op = _ffi.new("int[]", n)
        self._fd = _ffi.new("int[]", n)
        self._slot = _ffi.new("unsigned[]", list(range(n)))
        self._iovcnt = _ffi.new("int[]", n)
        self._offset = _ffi.new("int64_t[]", n)
        self._user_data = _ffi.new("uint64_t[]", list(range(n)))
        self._link = _ffi.new("uint8_t[]", [1] * n)  # the last one's link is ignored
        self._addr = _ffi.new("uint64_t[]", n * FLUSH_RING_MAX_IOV)
        self._len = _ffi.new("uint64_t[]", n * FLUSH_RING_MAX_IOV)
        self._ud_out = _ffi.new("uint64_t[]", n)
        self._res_out = _ffi.new("int32_t[]", n)
        _rings.add(self)

    def run(self, chain: list[tuple[int, int, int, list[tuple[int, int]]]]) -> list[int]:
        """Run ``chain``, a list of ``(op, fd, offset, [(address, length), ...])`` (op an
        ``IoOp`` value: WRITEV with its buffers, FDATASYNC/FSYNC with none), in order, each
        starting after the previous one completed in full. Returns each I/O's raw result
        in chain order (bytes or -errno; -ECANCELED after a failed or short one). At most
        ``FLUSH_RING_ENTRIES`` I/Os of at most ``FLUSH_RING_MAX_IOV`` buffers. The
        addresses must stay valid until it returns. A failed submission raises OSError and
        leaves the ring refusing further chains."""
        if self.forked:
            raise IoMethodUnavailable("an io_uring ring cannot be used after fork(); "
                                      "open the database again in the child")
        if self.broken:
            raise OSError(errno.EIO, self.broken)
        if self.ptr is None:
            raise OSError(errno.EBADF, "the flush ring is closed")
        n = len(chain)
        if not 0 < n <= FLUSH_RING_ENTRIES:
            raise ValueError(f"a flush chain holds 1..{FLUSH_RING_ENTRIES} I/Os, got {n}")
        op, fd, iovcnt, offset = self._op, self._fd, self._iovcnt, self._offset
        addr, length = self._addr, self._len
        k = 0  # slk_submit reads request i's buffers right after request i-1's
        for i, (o, f, off, iovs) in enumerate(chain):
            if len(iovs) > FLUSH_RING_MAX_IOV:
                raise ValueError(f"a flush write gathers at most {FLUSH_RING_MAX_IOV} "
                                 f"buffers, got {len(iovs)}")
            op[i] = o
            fd[i] = f
            offset[i] = off
            iovcnt[i] = len(iovs)
            for a, ln in iovs:
                addr[k] = a
                length[k] = ln
                k += 1
        rc = _lib.slk_submit(self.ptr, n, op, fd, self._slot, iovcnt, addr, length, offset,
                             self._user_data, self._link, n)
        if rc < 0:
            self.broken = f"an io_uring flush submission failed: {os.strerror(-rc)} (errno {-rc})"
            raise OSError(-rc, self.broken)
        got = _lib.slk_reap(self.ptr, n, n, self._ud_out, self._res_out)
        if got != n:
            self.broken = (f"an io_uring flush reaped {got} of {n} completions"
                           + (f": {os.strerror(-got)}" if got < 0 else ""))
            raise OSError(errno.EIO if got >= 0 else -got, self.broken)
        results = [0] * n
        for ud, res in zip(_ffi.unpack(self._ud_out, n), _ffi.unpack(self._res_out, n),
                           strict=True):
            results[ud] = res
        return results

    @staticmethod
    def address_of(buffer) -> int:
        """The address of a writable buffer's first byte, for ``run``'s chains (the caller
        keeps the buffer alive and unmoved while it uses the address: a mapping)."""
        return int(_ffi.cast("uintptr_t", _ffi.from_buffer(buffer)))

    def close(self) -> None:
        if self.ptr is not None:
            _lib.slk_ring_destroy(self.ptr)
            self.ptr = None
