"""The background WAL writer: bounds what an asynchronous commit can lose.

With ``synchronous_commit`` off a commit returns once its record is in the WAL buffers, and
nothing else would make it durable until a later synchronous commit, a buffer eviction or a
checkpoint. As PostgreSQL's walwriter, this thread wakes every ``wal_writer_delay`` ms and
flushes (writes and syncs) whatever was inserted but not yet flushed. Rounds start every
delay whatever a flush took (PostgreSQL sleeps a whole delay after each), so a commit
acknowledged at time t is durable by about t + delay + one flush: after a crash, everything
committed more than a few delays earlier is there (``tests/engine/test_walwriter.py``
checks 3 × delay with SIGKILL).

Every round also prepares the WAL segments after the insert position
(``Wal.prepare_segments``: recycled or zero-filled, directory synced), so a commit crossing
into a new segment finds it ready and its fdatasync never changes file metadata.

It never sleeps longer when idle: PostgreSQL's hibernation needs every asynchronous commit to
wake the writer, and an idle wake-up here costs one comparison of two LSNs (measured with the
rest of the writer in the package README).

States (one ``_set_state`` asserts every edge, under ``_lock``)::

    CREATED --start()--> RUNNING --stop()--> STOPPING --final flush--> STOPPED
       |                    |                   |
       +--stop()--> STOPPED +--flush failed--> FAILED <--final flush failed

Invariants:
1. A flush failure (a WAL write or fsync error) is never retried or swallowed: the Wal is
   already unusable (``xlog`` invariant 3), the writer records the error in ``error``,
   reports it through ``on_fatal`` (the Database then refuses every further operation) and
   ends in FAILED.
2. ``stop()`` wakes the thread, joins it, then flushes once more unless it (or any other
   flush of the Wal) failed, so what was inserted before ``stop()`` is durable when it
   returns; a failure of that last flush is raised to the caller. ``stop()`` twice is
   harmless.
3. The thread is a daemon: a process that exits (or dies) never waits for it.
4. A segment that cannot be prepared (an OSError: the disk is full, say) is not fatal here:
   the error is kept in ``prepare_error`` (and in stats), and the commit that needs the
   segment creates it inline and fails loudly if it still cannot (``xlog`` invariant 3).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from slonik.wal.walpage import usable_lsn
from slonik.wal.xlog import Wal, check_int_setting

__all__ = [
    "WAL_WRITER_DELAY_DEFAULT_MS", "WAL_WRITER_DELAY_RANGE_MS", "WalWriter", "WalWriterState",
    "WalWriterStats", "check_wal_writer_delay",
]

WAL_WRITER_DELAY_DEFAULT_MS = 200         # PostgreSQL's default wal_writer_delay
WAL_WRITER_DELAY_RANGE_MS = (1, 10000)    # PostgreSQL's range: 1 ms .. 10 s
THREAD_NAME = "slonik-walwriter"


class WalWriterState(IntEnum):
    CREATED = 0
    RUNNING = 1
    STOPPING = 2
    STOPPED = 3
    FAILED = 4


S = WalWriterState
LEGAL_TRANSITIONS: dict[WalWriterState, frozenset[WalWriterState]] = {
    S.CREATED: frozenset({S.RUNNING, S.STOPPED}),
    S.RUNNING: frozenset({S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset(),
    S.FAILED: frozenset(),
}


@dataclass(frozen=True)
class WalWriterStats:
    state: str
    wal_writer_delay_ms: int
    wakeups: int        # times the thread woke up (by its timer or by stop())
    flushes: int        # wake-ups that found unflushed WAL and flushed it
    segments_prepared: int = 0   # WAL segments made ready ahead of the insert position
    prepare_error: str = ""      # the last failure to prepare one (invariant 4)


def check_wal_writer_delay(value: object) -> int:
    """Validate ``wal_writer_delay`` (milliseconds)."""
    return check_int_setting("wal_writer_delay", value, WAL_WRITER_DELAY_RANGE_MS, "ms")


class WalWriter:
    """See the module docstring. ``on_fatal(exc)`` is called (from the writer thread) when a
    flush fails."""

    def __init__(self, wal: Wal, *, wal_writer_delay_ms: int = WAL_WRITER_DELAY_DEFAULT_MS,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.wal = wal
        self.wal_writer_delay_ms = check_wal_writer_delay(wal_writer_delay_ms)
        self.on_fatal = on_fatal
        self.error: BaseException | None = None
        self._lock = threading.Condition()   # guards state; stop() notifies through it
        self.state = WalWriterState.CREATED
        self._thread: threading.Thread | None = None
        self._wakeups = 0
        self._flushes = 0
        self._prepared = 0
        self.prepare_error: OSError | None = None

    def _set_state(self, new: WalWriterState) -> None:
        assert new in LEGAL_TRANSITIONS[self.state], \
            f"illegal WAL writer transition {self.state.name} -> {new.name}"
        self.state = new

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._set_state(S.RUNNING)
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread, then flush what is left (invariant 2)."""
        with self._lock:
            if self.state is S.CREATED:
                self._set_state(S.STOPPED)
                return
            if self.state is S.RUNNING:
                self._set_state(S.STOPPING)
                self._lock.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()       # (a stop from the writer itself, say a finalizer, cannot)
        with self._lock:
            if self.state is not S.STOPPING:
                return
            if self.wal.failed:      # reported already; nothing can be made durable now
                self._set_state(S.STOPPED)
                return
        try:
            self._flush()
        except BaseException:
            with self._lock:
                if self.state is S.STOPPING:   # (two stops at once: one sets the end)
                    self._set_state(S.FAILED)
            raise
        with self._lock:
            if self.state is S.STOPPING:
                self._set_state(S.STOPPED)

    # --- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay_s = self.wal_writer_delay_ms / 1000
        wake_at = time.monotonic() + delay_s
        try:
            self._prepare()   # the next segment is ready before the first delay ends
        except BaseException as exc:   # not an OSError: as a failed flush
            self._fail(exc)
            return
        while True:
            with self._lock:
                if self.state is not S.RUNNING:
                    return
                # Rounds start every delay, however long the flush took (a flush longer
                # than the delay is followed at once by the next): an asynchronous commit
                # waits at most one delay plus the flush that covers it.
                self._lock.wait(max(0.0, wake_at - time.monotonic()))
                wake_at = max(wake_at + delay_s, time.monotonic())
                self._wakeups += 1
                if self.state is not S.RUNNING:
                    return           # stop() flushes once more after joining
            try:
                self._flush()
                self._prepare()
            except BaseException as exc:   # reported, never retried (invariant 1)
                self._fail(exc)
                return

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self.error = exc
            self._set_state(S.FAILED)
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def _prepare(self) -> None:
        try:
            self._prepared += self.wal.prepare_segments()
        except OSError as exc:   # invariant 4: the commit path meets it again, loudly
            self.prepare_error = exc

    def _flush(self) -> None:
        wal = self.wal
        if usable_lsn(wal.flush_lsn) < wal.insert_lsn:   # something inserted, not flushed
            wal.flush()
            self._flushes += 1

    # --- introspection -------------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stats(self) -> WalWriterStats:
        return WalWriterStats(self.state.name.lower(), self.wal_writer_delay_ms, self._wakeups,
                              self._flushes, self._prepared,
                              "" if self.prepare_error is None else str(self.prepare_error))
