"""The background writer (PostgreSQL's bgwriter): cleans dirty buffers ahead of the clock
sweep, so that a backend's miss finds a clean victim instead of writing one first.

One daemon thread per buffer manager (``BufferManager.start_bgwriter`` /
``stop_bgwriter``; the buffer manager owns it and its writes). Every ``bgwriter_delay``
milliseconds it runs one round:

- the window it looks at: the whole pool when at least ``1/BGWRITER_DIRTY_SHARE_DIVISOR``
  of the buffers in use are dirty ("many dirty": right after a bulk load, or while
  autocommit writers keep dirtying the pool), else the buffers the sweep will reach next,
  ``BGWRITER_LRU_MULTIPLIER`` times the victims taken since the last round
  (PostgreSQL's ``bgwriter_lru_multiplier`` estimate);
- in that window, in clock order from the hand (the next victims first), up to
  ``bgwriter_lru_maxpages`` dirty buffers that nobody pins are written
  (``BufferManager.clean_dirty``: WAL flushed up to each run's newest page LSN, checksums
  set, pages verified, adjacent blocks combined into one pwritev, the pages share-locked
  only for that write), ``BGWRITER_BATCH_PAGES`` at a time (and at most
  ``1/BGWRITER_PIN_POOL_DIVISOR`` of the pool: the batch is pinned while it is written,
  and a small pool's backends need their buffers), with the stop flag looked at between
  batches.

``bgwriter_lru_maxpages = 0`` turns the writer off (no thread), as in PostgreSQL.

Bounds: a round writes at most ``bgwriter_lru_maxpages`` pages (the default 1,000 pages
every 200 ms caps it at ~40 MiB/s), so the writer holds the GIL for a bounded share of
each delay and foreground work keeps running between its batches (its pwritev calls
release the GIL).

Failure: a round that raises (a WAL flush or a data write failed) ends the thread in
state FAILED with the exception in ``error``, and ``on_failure(exc)`` is called from the
thread (the engine makes it fatal, as a failed WAL write); without a callback the error is
raised by ``stop``. The buffers of the failed write stay dirty (WRITE_FAILED, or DIRTY when
the write never ran) for the next checkpoint or eviction to retry.

Races (storage/README.md invariants 17 and 22): the writer pins every buffer it writes, so
no backend retags or drops it; it only *tries* content locks (a buffer held exclusively is
skipped until the next round); it claims WRITING under the descriptor lock, so an
evicting thread or a checkpoint never writes the same buffer at once (a checkpoint's
``flush_all`` waits for the writer's write in progress before it fsyncs).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

BGWRITER_DELAY_DEFAULT_MS = 200           # PostgreSQL's bgwriter_delay default
BGWRITER_DELAY_RANGE_MS = (10, 10_000)    # PostgreSQL's range
BGWRITER_LRU_MAXPAGES_DEFAULT = 1000      # pages per round (PostgreSQL's default is 100;
#                                           its maximum is 1,000 pages per round as well)
BGWRITER_LRU_MAXPAGES_RANGE = (0, 1 << 20)  # 0 turns the writer off
BGWRITER_LRU_MULTIPLIER = 2               # PostgreSQL's bgwriter_lru_multiplier default
BGWRITER_DIRTY_SHARE_DIVISOR = 4          # "many dirty": a quarter of the buffers in use
BGWRITER_BATCH_PAGES = 128                # pages written between looks at the stop flag
BGWRITER_PIN_POOL_DIVISOR = 16            # and pinned at once: at most 1/16 of the pool
THREAD_NAME = "slonik-bgwriter"


class BgWriterState(IntEnum):
    CREATED = 0
    RUNNING = 1
    STOPPING = 2
    STOPPED = 3
    FAILED = 4


S = BgWriterState
LEGAL_TRANSITIONS: dict[BgWriterState, frozenset[BgWriterState]] = {
    S.CREATED: frozenset({S.RUNNING, S.STOPPED}),
    S.RUNNING: frozenset({S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset(),
    S.FAILED: frozenset(),
}


def _check_int(name: str, value: object, bounds: tuple[int, int], unit: str) -> int:
    lo, hi = bounds
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int in {lo}..{hi} {unit}, not "
                        f"{type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi} {unit}, got {value}")
    return value


def check_bgwriter_delay(value: object) -> int:
    """Validate ``bgwriter_delay`` (milliseconds between rounds)."""
    return _check_int("bgwriter_delay", value, BGWRITER_DELAY_RANGE_MS, "ms")


def check_bgwriter_lru_maxpages(value: object) -> int:
    """Validate ``bgwriter_lru_maxpages`` (pages written per round; 0 turns it off)."""
    return _check_int("bgwriter_lru_maxpages", value, BGWRITER_LRU_MAXPAGES_RANGE,
                      "pages per round")


class Cleanable(Protocol):
    """What the writer needs of the buffer manager (which owns it)."""

    def dirty_in_clock_order(self) -> tuple[list[int], int, int] | None: ...

    def clean_dirty(self, buf_ids: list[int]) -> int: ...

    @property
    def victims_taken(self) -> int: ...


@dataclass(frozen=True)
class BgWriterStats:
    state: str
    bgwriter_delay_ms: int
    bgwriter_lru_maxpages: int
    rounds: int          # rounds run (wake-ups that looked at the pool)
    busy_rounds: int     # rounds that found buffers to write
    written: int         # pages written
    error: str           # the failure that stopped the writer, if any


class BgWriter:
    """See the module docstring."""

    def __init__(self, bufmgr: Cleanable, *, bgwriter_delay_ms: int = BGWRITER_DELAY_DEFAULT_MS,
                 bgwriter_lru_maxpages: int = BGWRITER_LRU_MAXPAGES_DEFAULT,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.bufmgr = bufmgr
        self.delay_ms = check_bgwriter_delay(bgwriter_delay_ms)
        self.maxpages = check_bgwriter_lru_maxpages(bgwriter_lru_maxpages)
        self.on_failure = on_failure
        self.error: BaseException | None = None
        self._reported = False   # the error went to on_failure (stop does not raise it)
        self._cond = threading.Condition()   # guards state; stop() notifies through it
        self.state = S.CREATED
        self._thread: threading.Thread | None = None
        self._rounds = self._busy = self._written = 0
        self._victims_seen = 0

    def _set_state(self, new: BgWriterState) -> None:
        assert new in LEGAL_TRANSITIONS[self.state], \
            f"illegal background writer transition {self.state.name} -> {new.name}"
        self.state = new

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            self._set_state(S.RUNNING)
            self._victims_seen = self.bufmgr.victims_taken
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread (a round in progress finishes its current batch, whose
        writes complete before this returns). Raises the failure that stopped the writer
        when no ``on_failure`` callback took it."""
        with self._cond:
            if self.state is S.CREATED:
                self._set_state(S.STOPPED)
                return
            if self.state is S.RUNNING:
                self._set_state(S.STOPPING)
                self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            if self.state is S.STOPPING:
                self._set_state(S.STOPPED)
            error, reported = self.error, self._reported
        if error is not None and not reported:
            self._reported = True
            raise error

    @property
    def running(self) -> bool:
        return self.state is S.RUNNING

    # --- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay_s = self.delay_ms / 1000
        while True:
            with self._cond:
                if self.state is not S.RUNNING:
                    return
                self._cond.wait(delay_s)
                if self.state is not S.RUNNING:
                    return
            try:
                self.round()
            except BaseException as exc:  # recorded and reported, never retried
                self._fail(exc)
                return

    def round(self) -> int:
        """One round (the thread's; tests call it directly on a writer not started):
        returns how many pages it wrote."""
        bm = self.bufmgr
        taken = bm.victims_taken
        window = BGWRITER_LRU_MULTIPLIER * max(taken - self._victims_seen, 0)
        self._victims_seen = taken
        self._rounds += 1
        got = bm.dirty_in_clock_order()
        if got is None:  # never-used buffers left: no victim needs cleaning yet
            return 0
        dirty, hand, nbuffers = got
        if len(dirty) * BGWRITER_DIRTY_SHARE_DIVISOR >= nbuffers:  # many dirty: any of them
            buf_ids = dirty[:self.maxpages]
        else:  # the ones the sweep reaches before the next round, by the recent rate
            buf_ids = list(itertools.takewhile(lambda b: (b - hand) % nbuffers < window,
                                               dirty[:self.maxpages]))
        if not buf_ids:
            return 0
        self._busy += 1
        written = 0
        batch = max(1, min(BGWRITER_BATCH_PAGES, nbuffers // BGWRITER_PIN_POOL_DIVISOR))
        for start in range(0, len(buf_ids), batch):
            if start and self.state is S.STOPPING:
                break
            written += bm.clean_dirty(buf_ids[start:start + batch])
        self._written += written
        return written

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self.error = exc
            self._set_state(S.FAILED)
            callback = self.on_failure
            self._reported = callback is not None
        if callback is not None:
            callback(exc)

    # --- introspection -------------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stats(self) -> BgWriterStats:
        return BgWriterStats(self.state.name.lower(), self.delay_ms, self.maxpages,
                             self._rounds, self._busy, self._written,
                             "" if self.error is None else str(self.error))
