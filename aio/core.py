"""The AIO subsystem instance: issuer contexts, acquire/start/submit/wait, batch mode.

Each issuing thread gets an ``IssuerContext`` with its own fixed pool of
``io_max_concurrency`` handles (and, for io_uring, its own ring). Handles live in one list
owned by the ``Aio`` instance, so a ``WaitRef``'s index names a handle for every thread.

Rules kept from PostgreSQL 18 (shared/reference/pg18-aio.md F5, F10, F11):
1. One handle per thread may be HANDED_OUT at a time, so waiting for in-flight I/O always
   frees a handle: acquiring never deadlocks.
2. Acquire from an empty pool: reclaim what others completed, submit what is staged,
   then wait for the oldest in-flight I/O.
3. At most ``SUBMIT_BATCH_SIZE`` I/Os are staged; more are submitted at once.
4. A thread with staged I/O submits it before it blocks on anything (``wait`` does so),
   so two threads cannot each wait for I/O the other has only staged.
5. An I/O may complete before ``start_*`` returns; take the ``WaitRef`` first.
6. Only the owner recycles a handle; completion in another thread leaves it
   COMPLETED_SHARED until the owner looks.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import slonik.aio.callbacks as cb
from slonik.aio.errors import IoMethodUnavailable
from slonik.aio.handle import (
    AioReturn,
    Handle,
    HandleFlag,
    HandleState,
    IoOp,
    ResultStatus,
    WaitRef,
)
from slonik.aio.ids import TARGETS
from slonik.aio.method import SUBMIT_BATCH_SIZE, IoMethod, IssuerContext
from slonik.aio.method_io_uring import IoUringMethod, io_uring_available
from slonik.aio.method_sync import SyncMethod
from slonik.aio.method_worker import WorkerMethod

S = HandleState
# A direct-count source's rows (Aio.add_direct_source): ((target, op), ios, bytes, wait_ns).
DirectRows = list[tuple[tuple[int, IoOp], int, int, int]]

# The hot path reads these per I/O: a module global costs ~10 ns, an Enum class attribute
# ~50 ns (CPython 3.11).
_HANDED_OUT, _DEFINED, _STAGED, _SUBMITTED = S.HANDED_OUT, S.DEFINED, S.STAGED, S.SUBMITTED
_COMPLETED_IO, _COMPLETED_SHARED = S.COMPLETED_IO, S.COMPLETED_SHARED
_COMPLETED_LOCAL, _IDLE = S.COMPLETED_LOCAL, S.IDLE
_SYNCHRONOUS = HandleFlag.SYNCHRONOUS
_OK = ResultStatus.OK

__all__ = ["SUBMIT_BATCH_SIZE", "Aio", "AioStats", "DirectRows", "InflightIo", "IoMethod",
           "IssuerContext", "IO_METHODS", "IO_METHOD_TABLE", "IO_MAX_CONCURRENCY_LIMIT",
           "make_method"]

IO_MAX_CONCURRENCY_LIMIT = 1024  # upper bound of the setting, as PostgreSQL
MAX_ISSUERS = 256               # issuing threads alive at once per Aio instance
# The one table of io methods by setting value; "auto" is io_uring when a ring can be set
# up here, else worker (make_method).
IO_METHOD_TABLE: dict[str, type[IoMethod]] = {
    "io_uring": IoUringMethod,
    "worker": WorkerMethod,
    "sync": SyncMethod,
}
IO_METHODS = ("auto", *IO_METHOD_TABLE)
# Methods whose synchronous execution of a read is a plain preadv in the issuer, so a read
# the issuer waits for at once may skip the handle (``Aio.synchronous_reads_inline``).
_INLINE_READ_METHODS = frozenset(IO_METHOD_TABLE.values())
# Methods that hand a read to someone else (a worker, the kernel's ring), so a read whose
# pages are all in the page cache is cheaper done in the issuer (``Aio.nowait_reads_inline``).
_NOWAIT_READ_METHODS = frozenset((WorkerMethod, IoUringMethod))

_instances: weakref.WeakSet = weakref.WeakSet()  # every Aio, for the fork hook


def _after_fork_in_child() -> None:
    for aio in list(_instances):
        aio._forked = True
        # Reads take the handle path, which refuses to run in the child with a clear error.
        aio.synchronous_reads_inline = aio.every_read_inline = False
        aio.nowait_reads_inline = False


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class OpCounters:
    ios: int = 0
    nbytes: int = 0
    wait_ns: int = 0


@dataclass(frozen=True)
class AioStats:
    """pg_stat_io-like counters, summed over threads: (target, op) -> counters."""

    io_method: str
    io_max_concurrency: int
    issuers: int
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    # Non-blocking inline read attempts (``Aio.nowait_reads_inline``) that found some page
    # not cached (or could not try) and went to the method after all.
    nowait_fallbacks: int = 0
    # Batches handed to the method's submit (one io_uring_enter, one worker hand-off each;
    # I/O executed inline is not submitted): ios / submissions is the batching achieved.
    submissions: int = 0

    def total(self, op: str, what: str = "ios") -> int:
        return sum(c.get(what, 0) for key, c in self.counters.items() if key.endswith("/" + op))


@dataclass(frozen=True)
class InflightIo:
    """One row of ``inflight()``, like pg_aios."""

    thread: str
    index: int
    generation: int
    state: HandleState
    op: IoOp
    offset: int
    length: int
    target: str
    raw_result: int | None


class Aio:
    """One AIO subsystem (a Database owns one). Thread-safe; per-thread pools."""

    def __init__(self, io_method: str = "auto", *, io_workers: int = 3,
                 io_max_concurrency: int = 64, method: IoMethod | None = None) -> None:
        if not isinstance(io_max_concurrency, int) or not 1 <= io_max_concurrency <= IO_MAX_CONCURRENCY_LIMIT:
            raise ValueError(f"io_max_concurrency must be an int in 1..{IO_MAX_CONCURRENCY_LIMIT}, "
                             f"got {io_max_concurrency!r}")
        self.io_max_concurrency = io_max_concurrency
        self.method = method if method is not None else make_method(io_method, io_workers=io_workers)
        # A single-block read its issuer waits for at once (a pool miss of a point read)
        # may run as a plain preadv in the issuer, without a handle (PostgreSQL executes
        # such reads synchronously in the issuer under every method, PGAIO_HF_SYNCHRONOUS;
        # without the handle it costs a fraction of the dispatch). True for the three public
        # methods; a method from elsewhere (a test method that wraps another to inject faults
        # at completion) keeps every read on a handle, so it sees them all.
        self.synchronous_reads_inline = type(self.method) in _INLINE_READ_METHODS
        # The sync method executes every I/O in its issuer at staging anyway: there a read
        # a caller will only wait for later (a read stream's) may run inline too, its
        # result kept for the wait (BufferManager._read_io_inline).
        self.every_read_inline = type(self.method) is SyncMethod
        # Worker and io_uring: a read of a buffered (not O_DIRECT) file may first try a
        # non-blocking preadv (RWF_NOWAIT) in its issuer; when the page cache holds every
        # byte, the read completes there with no handle, no worker hand-off and no ring
        # (io_uring's own first step inside the kernel; BufferManager._start_read_io).
        # Anything less and the read goes to the method as usual. Never for O_DIRECT
        # files: a NOWAIT direct read would still wait for the device in the issuer.
        self.nowait_reads_inline = type(self.method) in _NOWAIT_READ_METHODS
        self._lock = threading.Lock()
        self._handles: list[Handle] = []
        # Threads sleeping on each handle's condition (changed under that condition), so a
        # completion notifies only when someone sleeps: most completions have no waiter.
        self._sleepers: list[int] = []
        self._contexts: dict[int, IssuerContext] = {}  # slot -> context
        self._free_slots: list[int] = []
        self._local = threading.local()
        self._forked = False  # set in a forked child (the fork hook above)
        self._closed = False
        # I/O done in the issuer without a handle (inline reads, the WAL flush's system
        # calls): (target, op) -> counters, so stats() still shows every I/O, as
        # pg_stat_io counts reads whatever executed them.
        self._direct: dict[tuple[int, IoOp], OpCounters] = {}
        self._direct_lock = threading.Lock()
        self._nowait_fallbacks = 0  # under _direct_lock
        # Counters kept elsewhere (the C group commit's WAL writes and syncs), read when
        # stats() is: a flush then counts nothing in Python (add_direct_source).
        self._direct_sources: list[Callable[[], DirectRows]] = []  # under _direct_lock
        _instances.add(self)
        self.method.attach(self, self._complete)

    # --- contexts ---------------------------------------------------------------------------
    def _context(self) -> IssuerContext:
        ctx = getattr(self._local, "ctx", None)
        if ctx is not None:
            return ctx
        if self._closed:
            raise RuntimeError("the AIO subsystem is shut down")
        thread = threading.current_thread()
        with self._lock:
            if not self._free_slots and len(self._contexts) >= MAX_ISSUERS:
                self._reap_dead_contexts_locked()
            if self._free_slots:
                slot = self._free_slots.pop()
                ctx = IssuerContext(self, slot, thread)
                base = slot * self.io_max_concurrency
                ctx.handles = self._handles[base:base + self.io_max_concurrency]
                for h in ctx.handles:
                    h.owner = ctx
            elif len(self._contexts) < MAX_ISSUERS:
                slot = len(self._contexts)
                ctx = IssuerContext(self, slot, thread)
                base = slot * self.io_max_concurrency
                ctx.handles = [Handle(base + i, ctx) for i in range(self.io_max_concurrency)]
                self._sleepers.extend([0] * self.io_max_concurrency)
                self._handles.extend(ctx.handles)
            else:
                raise RuntimeError(f"more than {MAX_ISSUERS} threads are issuing I/O at once")
            self._contexts[slot] = ctx
        ctx.idle = list(reversed(ctx.handles))
        self.method.init_issuer(ctx)
        self._local.ctx = ctx
        return ctx

    def _reap_dead_contexts_locked(self) -> None:
        for slot, ctx in list(self._contexts.items()):
            if not ctx.alive() and not ctx.inflight and not ctx.staged:
                self.method.release_issuer(ctx)
                del self._contexts[slot]
                self._free_slots.append(slot)

    # --- acquire / release ------------------------------------------------------------------
    def acquire(self, ret: AioReturn | None = None) -> Handle:
        """A handle for one I/O. Blocks (completing older I/O) when the pool is empty."""
        ctx = self._context()
        if self._forked:
            raise IoMethodUnavailable("this AIO subsystem was created before fork(); "
                                      "open the database again in the child")
        if ctx.handed_out is not None:
            raise RuntimeError("AIO API violation: only one I/O handle may be handed out per thread")
        if len(ctx.staged) >= SUBMIT_BATCH_SIZE:
            self._submit_staged(ctx)
        if not ctx.idle:
            self._wait_for_free(ctx)
        h = ctx.idle.pop()
        h._set_state(_HANDED_OUT)
        h.report_return = ret
        ctx.handed_out = h
        return h

    def _release_unused(self, h: Handle) -> None:
        ctx = h.owner
        if ctx.handed_out is not h or h.state != _HANDED_OUT:
            raise RuntimeError(f"AIO handle released in unexpected state {h.state.name}")
        ctx.handed_out = None
        with h.cond:
            h.generation += 1
            h._set_state(_IDLE)
            h._reset()
        ctx.idle.append(h)

    def _wait_for_free(self, ctx: IssuerContext) -> None:
        for h in list(ctx.inflight.values()):
            if h.state == _COMPLETED_SHARED:
                self._reclaim(h)
        if ctx.idle:
            return
        self._submit_staged(ctx)
        if ctx.idle:
            return
        if not ctx.inflight:
            raise AssertionError("no free AIO handles despite no in-flight I/O")
        oldest = next(iter(ctx.inflight.values()))
        self.wait(WaitRef(oldest.index, oldest.generation))
        assert ctx.idle, "waiting for the oldest in-flight I/O freed no handle"

    # --- staging and submission -------------------------------------------------------------
    def _start(self, h: Handle, op: IoOp, fd: int, buffers: list, offset: int) -> None:
        ctx = h.owner
        assert ctx is getattr(self._local, "ctx", None), "an I/O is started by its owner thread"
        assert ctx.handed_out is h
        h.op = op
        h.fd = fd
        h.buffers = buffers
        h.offset = offset
        h.nbytes = nbytes = len(buffers[0]) if len(buffers) == 1 else sum(len(b) for b in buffers)
        h._set_state(_DEFINED)
        ctx.handed_out = None
        if h.callbacks:
            cb.run_stage(h)
        h._set_state(_STAGED)
        key = (h.target_id, op)
        counters = ctx.counters.get(key)
        if counters is None:
            counters = ctx.counters[key] = OpCounters()
        counters.ios += 1
        counters.nbytes += nbytes
        if h.flags & _SYNCHRONOUS or self.method.needs_synchronous_execution(h):
            self._execute_inline(ctx, h)
            return
        staged = ctx.staged
        staged.append(h)
        if ctx.batch_depth == 0 or len(staged) >= SUBMIT_BATCH_SIZE:
            self._submit_staged(ctx)

    def _execute_inline(self, ctx: IssuerContext, h: Handle) -> None:
        h._set_state(_SUBMITTED)
        ctx.inflight[h.index] = h
        self.method.execute_inline(h)

    def _submit_staged(self, ctx: IssuerContext) -> None:
        if not ctx.staged:
            return
        staged, ctx.staged = ctx.staged, []
        ctx.submissions += 1
        inflight = ctx.inflight
        for h in staged:
            h._set_state(_SUBMITTED)
            inflight[h.index] = h
        self.method.submit(ctx, staged)

    def submit_staged(self) -> None:
        self._submit_staged(self._context())

    def can_submit_together(self, n: int) -> bool:
        """Whether ``n`` more I/Os started by this thread inside one ``batch()`` reach the
        method in one submission: that many handles are idle (acquire would not submit
        early to free one) and the staged list has room for them (rule 3). A linked chain
        (``HandleFlag.LINK_NEXT``) is only correct when this holds."""
        ctx = self._context()
        return len(ctx.idle) >= n and len(ctx.staged) + n <= SUBMIT_BATCH_SIZE

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Defer submission of this thread's I/O until the outermost batch exits."""
        ctx = self.enter_batch()
        try:
            yield
        finally:
            self.exit_batch(ctx)

    def enter_batch(self) -> IssuerContext:
        """``batch()`` without the context manager, for a caller that enters a batch per
        few I/Os (a read stream's look-ahead): pair with ``exit_batch(context)`` in a
        ``finally``."""
        ctx = self._context()
        ctx.batch_depth += 1
        return ctx

    def exit_batch(self, ctx: IssuerContext) -> None:
        """Leave a batch ``enter_batch`` entered; the outermost one submits."""
        ctx.batch_depth -= 1
        if ctx.batch_depth == 0:
            self._submit_staged(ctx)

    # --- completion ---------------------------------------------------------------------------
    def _complete(self, h: Handle, raw: int) -> None:
        """Shared completion, in whichever thread completes the I/O."""
        cond = h.cond
        if not h.callbacks:  # nothing runs between the two states: one critical section
            cond.acquire()  # (the bound lock method: cheaper than the Python-level __enter__)
            try:
                h.raw_result = raw
                h._set_state(_COMPLETED_IO)
                h.distilled = cb.initial_result(h)
                h._set_state(_COMPLETED_SHARED)
                if self._sleepers[h.index]:
                    cond.notify_all()
            finally:
                cond.release()
        else:
            cond.acquire()
            try:
                h.raw_result = raw
                h._set_state(_COMPLETED_IO)
            finally:
                cond.release()
            result = cb.run_complete_shared(h)
            cond.acquire()
            try:
                h.distilled = result
                h._set_state(_COMPLETED_SHARED)
                if self._sleepers[h.index]:
                    cond.notify_all()
            finally:
                cond.release()
        if h.owner is getattr(self._local, "ctx", None):
            self._reclaim(h)

    def _reclaim(self, h: Handle) -> None:
        """Owner only: local callbacks, fill the issuer's return, recycle."""
        ctx = h.owner
        assert ctx is getattr(self._local, "ctx", None), "only the owner reclaims a handle"
        if h.state != _COMPLETED_SHARED:
            return  # already reclaimed (e.g. by a nested wait)
        callbacks = h.callbacks
        result = cb.run_complete_local(h, h.distilled) if h.has_local else h.distilled
        h._set_state(_COMPLETED_LOCAL)
        ret = h.report_return
        if ret is not None:
            ret.result = result
            ret.callbacks = tuple(callbacks) if callbacks else ()
            # The description only names the target in an error: a commit's two I/Os
            # succeed and skip formatting it (a few µs each).
            ret.target_desc = h.describe() if result.status != _OK else ""
            ret.op = h.op
            ret.nbytes = h.nbytes
            ret.filled = True
        del ctx.inflight[h.index]
        cond = h.cond
        cond.acquire()
        try:
            h.generation += 1
            h._set_state(_IDLE)
            h._reset()
            if self._sleepers[h.index]:
                cond.notify_all()
        finally:
            cond.release()
        ctx.idle.append(h)

    # --- waiting --------------------------------------------------------------------------------
    def done(self, ref: WaitRef) -> bool:
        """True once the I/O's shared completion has run (or its handle was recycled)."""
        h = self._handles[ref.index]
        if h.generation != ref.generation:
            return True
        if h.state >= _COMPLETED_SHARED:
            if h.owner is getattr(self._local, "ctx", None):
                self._reclaim(h)
            return True
        return False

    def wait(self, ref: WaitRef) -> None:
        """Block until the I/O named by ``ref`` has completed (shared callbacks have run)."""
        h = self._handles[ref.index]
        if h.generation != ref.generation:
            return
        ctx = getattr(self._local, "ctx", None)
        if ctx is not None and ctx.staged:
            self._submit_staged(ctx)  # rule 4: never block with staged I/O
        own = h.owner is ctx
        if own:
            assert h.state not in (_HANDED_OUT, _DEFINED, _STAGED), \
                f"waiting on an own I/O that was never submitted ({h.state.name})"
        start = time.perf_counter_ns()
        gen = ref.generation
        key = (h.target_id, h.op)
        while h.generation == gen and h.state < _COMPLETED_SHARED:
            state = h.state
            if state == _SUBMITTED and not (h.flags & _SYNCHRONOUS) \
                    and self.method.wait_one(h, gen):
                continue
            with h.cond:
                if h.generation != gen or h.state >= _COMPLETED_SHARED:
                    break
                self._sleepers[ref.index] += 1
                try:
                    if h.state < _SUBMITTED:
                        # Another thread staged it and has not submitted yet: poll until it does.
                        h.cond.wait(0.005)
                    elif h.state == _SUBMITTED and not self.method.completes_without_waiters \
                            and not h.reaped:
                        h.cond.wait(0.005)  # raced with a reaper; let wait_one try again
                    else:
                        h.cond.wait()  # whoever completes it notifies under this lock
                finally:
                    self._sleepers[ref.index] -= 1
        if own and h.generation == gen:
            self._reclaim(h)
        if ctx is not None and key in ctx.counters:
            ctx.counters[key].wait_ns += time.perf_counter_ns() - start

    def wait_all(self) -> None:
        """Wait for every I/O this thread has staged or in flight."""
        ctx = self._context()
        self._submit_staged(ctx)
        while ctx.inflight:
            h = next(iter(ctx.inflight.values()))
            self.wait(WaitRef(h.index, h.generation))

    def forget_files(self) -> None:
        """Files were unlinked or replaced: methods that cache descriptors drop them."""
        forget = getattr(self.method, "forget_files", None)
        if forget is not None:
            forget()

    def closing_fd(self, fd: int) -> None:
        """Called before a kernel fd is closed: nothing staged or in flight may use it."""
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            return
        self._submit_staged(ctx)
        if self.method.wait_on_fd_before_close:
            for h in [h for h in ctx.inflight.values() if h.fd == fd]:
                self.wait(WaitRef(h.index, h.generation))

    # --- introspection --------------------------------------------------------------------------
    def count_direct(self, target_id: int, op: IoOp, nbytes: int, wait_ns: int) -> None:
        """Count one I/O its issuer made without a handle (``stats`` shows it with the
        handles' I/O of the same target and op; ``wait_ns``: the time it took)."""
        key = (target_id, op)
        c = self._direct.get(key)  # (entries are never removed: a read outside the lock)
        with self._direct_lock:
            if c is None:
                c = self._direct.setdefault(key, OpCounters())
            c.ios += 1
            c.nbytes += nbytes
            c.wait_ns += wait_ns

    def add_direct_source(self, source: Callable[[], DirectRows]) -> None:
        """Count I/O that another component keeps counters of: ``stats`` adds
        ``source()``'s rows ((target, op), ios, bytes, wait_ns), running totals, to the
        direct counts (as if each I/O had been passed to ``count_direct``)."""
        with self._direct_lock:
            self._direct_sources.append(source)

    def remove_direct_source(self, source: Callable[[], DirectRows]) -> None:
        """Stop reading ``source``; its last totals stay in the direct counts."""
        rows = source()
        with self._direct_lock:
            self._direct_sources.remove(source)
            self._add_rows_locked(rows)

    def _add_rows_locked(self, rows: DirectRows) -> None:
        for key, ios, nbytes, wait_ns in rows:
            c = self._direct.get(key)
            if c is None:
                c = self._direct[key] = OpCounters()
            c.ios += ios
            c.nbytes += nbytes
            c.wait_ns += wait_ns

    def count_nowait_fallback(self) -> None:
        """Count one non-blocking inline read attempt that went to the method after all."""
        with self._direct_lock:
            self._nowait_fallbacks += 1

    def stats(self) -> AioStats:
        totals: dict[str, dict[str, int]] = {}
        with self._lock:
            contexts = list(self._contexts.values())
        with self._direct_lock:
            direct = [(key, OpCounters(c.ios, c.nbytes, c.wait_ns))
                      for key, c in self._direct.items()]
            fallbacks = self._nowait_fallbacks
            sources = list(self._direct_sources)
        for source in sources:
            direct.extend((key, OpCounters(ios, nbytes, wait_ns))
                          for key, ios, nbytes, wait_ns in source())
        for counters in [list(ctx.counters.items()) for ctx in contexts] + [direct]:
            for (target_id, op), c in counters:
                target = TARGETS[target_id].name if target_id else "raw"
                row = totals.setdefault(f"{target}/{op.name.lower()}",
                                        {"ios": 0, "bytes": 0, "wait_ns": 0})
                row["ios"] += c.ios
                row["bytes"] += c.nbytes
                row["wait_ns"] += c.wait_ns
        return AioStats(self.method.name, self.io_max_concurrency, len(contexts), totals,
                        fallbacks, sum(ctx.submissions for ctx in contexts))

    def inflight(self) -> list[InflightIo]:
        rows = []
        with self._lock:
            contexts = list(self._contexts.values())
        for ctx in contexts:
            for h in ctx.handles:
                state, gen = h.state, h.generation
                if state == _IDLE:
                    continue
                try:
                    desc = h.describe() if h.target_id else f"fd {h.fd}"
                except Exception as exc:  # a racing recycle; show what was seen
                    desc = f"<{exc}>"
                if h.generation != gen:
                    continue
                rows.append(InflightIo(ctx.thread_name, h.index, gen, state, h.op,
                                       h.offset, h.nbytes, desc,
                                       h.raw_result if state >= _COMPLETED_IO else None))
        return rows

    # --- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Wait for all in-flight I/O of every thread, stop workers, close rings. Idempotent."""
        if self._closed:
            return
        ctx = getattr(self._local, "ctx", None)
        if ctx is not None:
            self.wait_all()
        with self._lock:
            contexts = list(self._contexts.values())
        for other in contexts:
            for h in list(other.handles):
                gen = h.generation
                if h.state in (_SUBMITTED, _COMPLETED_IO):
                    self.wait(WaitRef(h.index, gen))
        self._closed = True
        for other in contexts:
            self.method.release_issuer(other)
        self.method.shutdown()

    close = shutdown

    def __enter__(self) -> Aio:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def make_method(io_method: str, *, io_workers: int = 3) -> IoMethod:
    """The method object for a setting value (``IO_METHOD_TABLE``); ``auto`` prefers
    io_uring, else worker."""
    if io_method not in IO_METHODS:
        raise ValueError(f"io_method must be one of {', '.join(IO_METHODS)}; got {io_method!r}")
    if io_method == "auto":
        ok, _reason = io_uring_available()
        io_method = "io_uring" if ok else "worker"
    method_class = IO_METHOD_TABLE[io_method]
    if method_class is WorkerMethod:
        return WorkerMethod(io_workers)
    return method_class()
