"""Read streams: the way to read many blocks, after PostgreSQL 18's read_stream.c.

The caller gives a source of block numbers (an iterable, or a callable returning the next
block or None), optionally with per-block data, and takes pinned buffers back in the same
order. A callable source without per-block data may also have ``next_run(limit)``: the
next blocks while they continue one run of consecutive block numbers (at most ``limit``,
an empty list at the end); the stream then takes a run per call instead of a block per
call. Behind that the stream keeps a look-ahead window of reads in flight:

- adjacent blocks are combined into one read of up to ``io_combine_limit`` blocks (never
  across a segment file);
- the look-ahead ``distance`` (in pinned blocks) starts at 1, doubles each time the
  consumer had to wait for a read, and decays by one for each run that was all hits, capped
  by ``max_pinned_buffers``; at most ``max_ios`` reads are in flight;
- the look-ahead runs once the window has room for ``LOOK_AHEAD_BATCH_IOS`` full combined
  reads (or half the window, when smaller) and ``max_ios`` room for that many reads (or
  half of ``max_ios``: a scattered source, one block per read, is bounded by reads in
  flight, not pins), and the reads it starts are submitted together (``aio.batch()``:
  one io_uring_enter, one worker wake-up); ``next_buffers`` hands out, after the read
  it waited for, every following one that completed meanwhile;
  a ``range`` source is followed by a cursor, a whole run at a time, and once the window
  holds four such batches it starts a batch (up to ``LOOK_AHEAD_BATCH_IOS`` combined
  reads) with one ``start_read_buffers`` call, which splits its reads at
  ``io_combine_limit``;
- an all-cached stream falls into a fast path that pins one block at a time with no
  look-ahead machinery;
- ``bulk_read=True`` (a large sequential scan) gives the stream a BULKREAD ring
  (``BufferRing``): its misses reuse the ring's buffers, so the scan does not evict the
  pool and pays no clock sweep per page;
- with the sync method on buffered files there is no concurrency to be had, so the stream
  issues ``posix_fadvise(WILLNEED)`` for the runs ahead and reads each run when it is
  consumed (PostgreSQL's advice mode); with worker or io_uring on buffered files a range
  source advises the window beyond its reads in flight (``readahead``), half a window at a
  time, so their concurrent reads keep the kernel's read-ahead going; there a look-ahead
  read whose pages the page cache already holds completes as it starts, in this thread
  (``Aio.nowait_reads_inline``), and is consumed like any other finished read.

Invariants:
1. Buffers are returned in source order, each pinned once for the caller (the caller
   unpins); repeated blocks are returned (and pinned) again.
2. The stream never holds more than ``max_pinned_buffers`` pins of its own.
3. Per-block data travels with its block.
4. ``reset``/``close`` unpin everything queued; an error leaves the queue as it was, so
   ``close`` after an error releases every pin.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any

from slonik.storage.bufmgr import BufferManager, ReadBuffersOperation

EFFECTIVE_IO_CONCURRENCY_DEFAULT = 16   # PostgreSQL 18's default
EFFECTIVE_IO_CONCURRENCY_MAX = 1000     # as PostgreSQL's range
# The look-ahead waits until the window has room for this many combined reads (or half the
# window, when that is less) and starts them together, submitted as one batch (one
# io_uring_enter, one worker wake-up): per-I/O submission cost in the kernel (a virtio kick
# here) was the largest single item of a cold O_DIRECT scan's profile. With 1 a steady
# scan submitted each read alone (one io_uring_enter per 128 KiB read); 4 cut the main
# thread's CPU per 16-block run of a cold io_uring scan by ~17% (A/B in one process).
LOOK_AHEAD_BATCH_IOS = 4


@dataclass(frozen=True)
class ReadStreamStats:
    ios: int
    blocks_read: int
    hits: int
    max_distance: int
    max_pinned_seen: int
    fast_path_blocks: int
    advice_calls: int


_BUF = itemgetter(0)           # of a queue entry: its buffer
_BUF_DATA = itemgetter(0, 1)   # its buffer and per-buffer data


class _Run:
    """One started (or, in advice mode, deferred) read of consecutive blocks; ``left``: how
    many of its queue entries are still queued (they are adjacent: a run's entries go in
    together and leave from the head, or come back to it in order)."""

    __slots__ = ("op", "block", "n", "waited", "error", "left")

    def __init__(self, op: ReadBuffersOperation | None, block: int, n: int) -> None:
        self.op = op
        self.block = block
        self.n = n
        self.left = n
        self.waited = op is not None and not op.needs_wait
        self.error: BaseException | None = None  # the run failed: its blocks are never handed out


class ReadStream:
    """See the module docstring."""

    def __init__(self, bufmgr: BufferManager, rel: int, fork: int,
                 blocks: Iterable[Any] | Callable[[], Any], *, per_buffer_data: bool = False,
                 max_ios: int | None = None, max_pinned: int | None = None,
                 bulk_read: bool = False) -> None:
        if max_ios is None:
            max_ios = getattr(bufmgr, "effective_io_concurrency", EFFECTIVE_IO_CONCURRENCY_DEFAULT)
        if not isinstance(max_ios, int) or not 0 <= max_ios <= EFFECTIVE_IO_CONCURRENCY_MAX:
            raise ValueError(f"max_ios (effective_io_concurrency) must be an int in "
                             f"0..{EFFECTIVE_IO_CONCURRENCY_MAX}, got {max_ios!r}")
        self.bufmgr = bufmgr
        self.rel = rel
        self.fork = int(fork)
        self.per_buffer_data = per_buffer_data
        self.synchronous = max_ios == 0
        self.max_ios = max(1, max_ios)
        self.combine = bufmgr.io_combine_limit
        self._batch_blocks = LOOK_AHEAD_BATCH_IOS * self.combine
        # ... and has that many reads' room under max_ios (or half of it, when smaller):
        # a scattered source (an aged tree's leaves, one block per read) is limited by
        # reads in flight, not by pins, and would otherwise start one read per block
        # consumed, each its own io_uring_enter.
        self._batch_ios = min(LOOK_AHEAD_BATCH_IOS, (self.max_ios + 1) // 2)
        default_pins = min((max_ios + 1) * self.combine, max(1, bufmgr.nbuffers // 4))
        if max_pinned is None:
            max_pinned = default_pins
        if not isinstance(max_pinned, int) or max_pinned < 1:
            raise ValueError(f"max_pinned must be a positive int, got {max_pinned!r}")
        self.max_pinned_buffers = min(max_pinned, bufmgr.nbuffers)
        # bulk_read: a large scan's misses reuse a BULKREAD ring sized for the stream's pins
        # (plus a batch handed out) instead of sweeping, and evicting, the whole pool.
        # The stream then pins at most half the ring, so the buffers it reuses were let go.
        self.strategy = bufmgr.bulk_read_ring(self.max_pinned_buffers) if bulk_read else None
        if self.strategy is not None:
            self.max_pinned_buffers = max(1, min(self.max_pinned_buffers,
                                                 self.strategy.size // 2))
        # A range of block numbers (a sequential scan) is followed by a cursor, so the
        # look-ahead takes a whole run of blocks at once instead of one call per block.
        self._seq_next = self._seq_stop = 0
        self._sequential = False
        if (type(blocks) is range and blocks.step == 1 and blocks.start >= 0
                and not per_buffer_data):
            self._seq_next, self._seq_stop = blocks.start, max(blocks.start, blocks.stop)
            self._sequential = True
            self._next_source: Callable[[], Any] = self._next_in_range
        elif callable(blocks):
            self._next_source = blocks
        else:
            it = iter(blocks)
            self._next_source = lambda: next(it, None)
        method = bufmgr.aio.method.name
        self.advice = method == "sync" and not bufmgr.smgr.io_direct and not self.synchronous
        # Buffered files with a method that reads ahead itself (worker, io_uring): a range
        # source also advises (WILLNEED) the kernel of the window beyond the reads in
        # flight, so concurrent out-of-order reads do not defeat its read-ahead.
        self.readahead = (not self.advice and not bufmgr.smgr.io_direct and self._sequential
                          and not self.synchronous)
        self._readahead_to = 0  # readahead: blocks below this were advised
        # queue entries: [buf_id or None (advice mode, not yet read), data, run]
        self._queue: deque[list] = deque()
        self.pinned = 0
        self.distance = 1
        self._ios_in_progress = 0
        self._pending_block = -1
        self._pending_n = 0
        self._pending_data: list[Any] = []
        self._unget: Any = None
        # A source with next_run (and no per-block data): runs taken from it, and the blocks
        # of the last one not queued yet (a block at a time for _next_block).
        self._run_source: Callable[[int], list[int]] | None = None
        if callable(blocks) and not per_buffer_data and not self._sequential:
            self._run_source = getattr(blocks, "next_run", None)
        self._run_ahead: list[int] = []
        self._ended = False
        self._closed = False
        self._fast_path = False
        self._ios = self._blocks_read = self._hits = self._fast = self._advice_calls = 0
        self._max_distance = 1
        self._max_pinned_seen = 0
        self._advised_next = -1  # advice mode: the block after the last advised run

    # --- the source -------------------------------------------------------------------------
    def _next_block(self) -> tuple[int, Any] | None:
        if self._unget is not None:
            item, self._unget = self._unget, None
            return item
        if self._run_ahead:
            return self._run_ahead.pop(0), None
        if self._ended:
            return None
        item = self._next_source()
        if item is None:
            self._ended = True
            return None
        if self.per_buffer_data:
            block, data = item
        else:
            block, data = item, None
        if not isinstance(block, int) or block < 0:
            raise ValueError(f"a read stream source produced an invalid block number {block!r}")
        return block, data

    def _next_in_range(self) -> int | None:
        block = self._seq_next
        if block >= self._seq_stop:
            return None
        self._seq_next = block + 1
        return block

    def _fill_run(self, limit: int) -> bool:
        """A run source: have the blocks of its next run at hand (taking a run of at most
        ``limit`` when none is); False at the end. ValueError for a run that is not one of
        consecutive non-negative block numbers."""
        if not self._run_ahead:
            if self._ended:
                return False
            run = self._run_source(limit)
            if not run:
                self._ended = True
                return False
            first = run[0]
            if not isinstance(first, int) or first < 0 or \
                    run != list(range(first, first + len(run))):
                raise ValueError(f"a read stream source's next_run gave {run!r}, not a run of "
                                 f"consecutive block numbers")
            self._run_ahead = run
        return True

    def _take_run(self, limit: int) -> list[int]:
        """Up to ``limit`` blocks of a run source's next run (an empty list at the end)."""
        if not self._fill_run(limit):
            return []
        run = self._run_ahead
        if len(run) > limit:
            self._run_ahead = run[limit:]
            return run[:limit]
        self._run_ahead = []
        return run

    # --- look-ahead ---------------------------------------------------------------------------
    def _start_pending(self) -> None:
        block, n = self._pending_block, self._pending_n
        data = self._pending_data
        self._pending_n = 0
        self._pending_data = []
        if self.advice and not self.bufmgr.cached(self.rel, self.fork, block, n):
            if block != self._advised_next:  # sequential runs are left to kernel read-ahead
                self.bufmgr.smgr.prefetch(self.rel, self.fork, block, n)
                self._advice_calls += 1
            self._advised_next = block + n
            run = _Run(None, block, n)
            run.waited = False
            for k in range(n):
                self._queue.append([None, data[k], run])
            self.pinned += n  # reserved: pinned when consumed
            return
        op = self.bufmgr.start_read_buffers(self.rel, self.fork, block, n,
                                            strategy=self.strategy)
        run = _Run(op, block, n)
        if n == 1:  # a scattered source's usual run
            self._queue.append((op.buffers[0], data[0], run))
        else:  # (tuples: only an advised run's entries, lists, get their buffer later)
            self._queue.extend(zip(op.buffers, data, repeat(run, n), strict=True))
        self.pinned += n
        if self.pinned > self._max_pinned_seen:
            self._max_pinned_seen = self.pinned
        ios = op.ios
        reading = len(ios[0].buf_ids) if len(ios) == 1 else sum(len(io.buf_ids) for io in ios)
        self._blocks_read += reading
        self._hits += n - reading
        if ios or op.foreign:  # op.needs_wait
            self._ios += len(ios)
            self._ios_in_progress += 1
            if self.synchronous:
                self._wait_run(run)
            elif self.readahead:
                self._advise_ahead(block + n)
        elif self.distance > 1:
            self.distance -= 1

    def _advise_ahead(self, after: int) -> None:
        """readahead: WILLNEED for up to one pin window beyond block ``after``, given half
        a window at a time (so the advice costs one call per half window of reads)."""
        window = self.max_pinned_buffers
        start = max(self._readahead_to, after)
        stop = min(self._seq_stop, after + window)
        if stop - start >= max(1, window // 2) or (stop == self._seq_stop and stop > start):
            self.bufmgr.smgr.prefetch(self.rel, self.fork, start, stop - start)
            self._advice_calls += 1
            self._readahead_to = stop

    def _look_ahead(self) -> None:
        aio = self.bufmgr.aio
        ctx = aio.enter_batch()  # the reads started here go to the kernel together
        try:
            self._look_ahead_batched()
        finally:
            aio.exit_batch(ctx)

    def _look_ahead_batched(self) -> None:
        combine, maxcombine = self.combine, self.bufmgr.smgr.maxcombine
        if self._sequential:
            # A range source starts up to LOOK_AHEAD_BATCH_IOS combined reads with one
            # start_read_buffers call (the buffer manager splits its reads at
            # io_combine_limit), while the window holds four such calls: a call's fixed
            # cost (the operation, a descriptor-lock section, a wait) is paid per few reads.
            combine = max(combine, min(self._batch_blocks,
                                       self.distance // 4 // combine * combine))
        while self._ios_in_progress < self.max_ios and self.pinned + self._pending_n < self.distance:
            if self._pending_n and self._pending_n >= min(combine, maxcombine(self._pending_block)):
                self._start_pending()
                continue
            if self._sequential and self._unget is None:
                # Sequential source: as many blocks as the window and the combine limit take.
                first, stop = self._seq_next, self._seq_stop
                if first >= stop:
                    self._ended = True
                    self.distance = 0
                    break
                if self._pending_n and first != self._pending_block + self._pending_n:
                    self._start_pending()  # (only after a reset: the cursor moved on)
                    continue
                if not self._pending_n:
                    self._pending_block = first
                have = self._pending_n
                take = min(self.distance - self.pinned - have, stop - first,
                           min(combine, maxcombine(self._pending_block)) - have)
                self._seq_next = first + take
                self._pending_n = have + take
                self._pending_data.extend([None] * take)
                continue
            if self._run_source is not None and self._unget is None:
                # A run source: a run of blocks per call, into (or after) the pending read.
                if not self._fill_run(combine):
                    self.distance = 0
                    break
                first = self._run_ahead[0]
                if self._pending_n:
                    if first != self._pending_block + self._pending_n:
                        if self._ios_in_progress >= self.max_ios:
                            return  # (the run stays at hand)
                        self._start_pending()
                        continue
                    room = min(combine, maxcombine(self._pending_block)) - self._pending_n
                else:
                    room = min(combine, maxcombine(first))
                run = self._take_run(min(room, self.distance - self.pinned - self._pending_n))
                if not self._pending_n:
                    self._pending_block = first
                self._pending_n += len(run)
                self._pending_data.extend(repeat(None, len(run)))
                continue
            item = self._next_block()
            if item is None:
                self.distance = 0
                break
            block, data = item
            if self._pending_n and block == self._pending_block + self._pending_n:
                self._pending_n += 1
                self._pending_data.append(data)
                continue
            if self._pending_n:
                if self._ios_in_progress >= self.max_ios:
                    self._unget = item
                    return
                self._start_pending()
            self._pending_block = block
            self._pending_n = 1
            self._pending_data = [data]
        if self._pending_n and self._ios_in_progress < self.max_ios and (
                self._pending_n >= min(combine, maxcombine(self._pending_block))
                or self.distance == 0
                or (self.pinned == 0 and self.distance <= self._pending_n)):
            self._start_pending()

    def _wait_run(self, run: _Run, *, counted: bool = True) -> None:
        """Wait for the reads of ``run`` (``counted``: one of ``_ios_in_progress``); a
        failure stays with the run (its blocks are never handed out) and is raised."""
        if counted:
            self._ios_in_progress -= 1
        try:
            self.bufmgr.wait_read_buffers(run.op)
        except BaseException as exc:
            run.error = exc
            raise
        finally:
            run.waited = True

    def _grow_distance(self) -> None:
        """A consumer had to wait for I/O: look further ahead (up to the pin limit)."""
        self.distance = min(2 * self.distance, self.max_pinned_buffers)
        if self.distance > self._max_distance:
            self._max_distance = self.distance

    # --- consuming ------------------------------------------------------------------------------
    def next_buffer(self) -> Any:
        """The next pinned buffer (``(buf, data)`` with per-block data), None at the end."""
        if self._closed:
            raise ValueError("this read stream is closed")
        if self._fast_path:
            return self._next_fast()
        if not self._queue:
            if self.distance == 0:
                return None
            self._look_ahead()
            if not self._queue:
                return None
        entry = self._queue[0]
        run = entry[2]
        if run.error is not None:
            raise run.error  # a failed read's blocks are never handed out
        if not run.waited:
            if run.op is None:
                self._read_advised(run)
            else:
                self._wait_run(run)
                self._grow_distance()
        self._queue.popleft()
        run.left -= 1
        self.pinned -= 1
        distance = self.distance
        # Look ahead once the window has room for LOOK_AHEAD_BATCH_IOS combined reads (or
        # half the window, when that is smaller), not after every block.
        if distance and (not self._queue or (
                distance - self.pinned - self._pending_n >= min(self._batch_blocks, (distance + 1) // 2)
                and self.max_ios - self._ios_in_progress >= self._batch_ios)):
            try:
                self._look_ahead()
            except BaseException:
                self._queue.appendleft(entry)  # not handed out: close() unpins it
                run.left += 1
                self.pinned += 1
                raise
        if (self.distance == 1 and len(self._queue) == 1 and self._queue[0][2].waited
                and not self._pending_n and self._ios_in_progress == 0
                and not self.per_buffer_data):
            self._fast_path = True
        buf = entry[0]
        return (buf, entry[1]) if self.per_buffer_data else buf

    def next_buffers(self, limit: int) -> list[Any]:
        """Up to ``limit`` next pinned buffers (as ``next_buffer`` gives them) in one call:
        those whose reads are complete, at least one unless the stream is at its end (an
        empty list). A run of pages costs one call, not one per page; on the all-cached
        fast path up to ``min(limit, io_combine_limit)`` consecutive blocks of any source
        (of a range source ``LOOK_AHEAD_BATCH_IOS`` times as many) are pinned with one
        ``start_read_buffers``."""
        if self._closed:
            raise ValueError("this read stream is closed")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        if self._fast_path:
            return self._next_fast_run(limit)
        queue = self._queue
        popleft = queue.popleft
        read_done = self.bufmgr.read_done
        out: list[Any] = []
        taken: list[list] = []
        try:
            while len(out) < limit:
                if not queue:
                    if out or self.distance == 0:
                        break
                    self._look_ahead()
                    if not queue:
                        break
                entry = queue[0]
                run = entry[2]
                if run.error is not None:
                    if out:
                        break
                    raise run.error  # a failed read's blocks are never handed out
                if not run.waited:
                    if run.op is None:
                        if out:
                            break  # hand out what is ready; the next call reads
                        self._read_advised(run)
                    elif not out:
                        self._wait_run(run)
                        self._grow_distance()
                    elif read_done(run.op):
                        # Completed meanwhile (reaped with the one waited for): taken in
                        # this call, so a scattered source's reads, one block each, are
                        # consumed a batch at a time, not one per call.
                        self._wait_run(run)
                    else:
                        break  # hand out what is ready; the next call waits
                # the run's queued entries (adjacent, from the head), as many as the limit takes
                k = min(run.left, limit - len(out))
                run.left -= k
                self.pinned -= k
                got = [popleft() for _ in range(k)] if k > 1 else [popleft()]
                taken += got
                out += map(_BUF_DATA, got) if self.per_buffer_data else map(_BUF, got)
            distance = self.distance
            if distance and (not queue or (
                    distance - self.pinned - self._pending_n
                    >= min(self._batch_blocks, (distance + 1) // 2)
                    and self.max_ios - self._ios_in_progress >= self._batch_ios)):
                self._look_ahead()
        except BaseException:
            for entry in reversed(taken):  # not handed out: close() unpins them
                queue.appendleft(entry)
                entry[2].left += 1
            self.pinned += len(taken)
            raise
        if (self.distance == 1 and len(queue) == 1 and queue[0][2].waited
                and not self._pending_n and self._ios_in_progress == 0
                and not self.per_buffer_data):
            self._fast_path = True
        return out

    def _next_fast_run(self, limit: int) -> list[Any]:
        """``next_buffers`` on the fast path: the queued (cached) buffer, then the next
        blocks pinned together (a sequential source's, or a run of consecutive blocks of
        any other source); a miss among them leaves the fast path (the normal path waits
        for the read)."""
        queue = self._queue
        out = [e[0] for e in queue]
        self.pinned -= len(out)
        queue.clear()
        if len(out) >= limit:
            return out
        if self._sequential and self._unget is None:
            block = self._seq_next
            # Up to LOOK_AHEAD_BATCH_IOS combined reads' worth of cached blocks pinned in one
            # call (a table scan asks for 64 pages per step; start_read_buffers splits its
            # reads at io_combine_limit and at segment ends itself).
            k = min(limit - len(out), self._batch_blocks, self.max_pinned_buffers,
                    self._seq_stop - block)
            if k > 0:
                self._seq_next = block + k
        else:
            # Any other source: the next block and those right after it that continue it
            # (a leaf walk's adjacent leaves), as many as the limit, the combine limit and
            # the pin limit take; the first block that does not continue the run waits
            # for the next call.
            room = min(limit - len(out), self.combine, self.max_pinned_buffers)
            if self._run_source is not None and self._unget is None:
                run = self._take_run(room)
                k = len(run)
                block = run[0] if k else -1
                room = 0
            else:
                item = self._next_block()
                k = 0 if item is None else 1
                block = -1 if item is None else item[0]
            if k:
                while k < room:
                    item = self._next_block()
                    if item is None:
                        break
                    if item[0] != block + k:
                        self._unget = item
                        break
                    k += 1
        if k <= 0:
            self._ended = True
            self._fast_path = False
            self.distance = 0
            return out
        op = self.bufmgr.start_read_buffers(self.rel, self.fork, block, k, strategy=self.strategy)
        if not op.needs_wait:
            self._fast += k
            self._hits += k
            out.extend(op.buffers)
            return out
        self._fast_path = False
        run = _Run(op, block, k)
        queue.extend(zip(op.buffers, repeat(None, k), repeat(run, k), strict=True))
        self.pinned += k
        reading = sum(len(io.buf_ids) for io in op.ios)
        self._ios += len(op.ios)
        self._blocks_read += reading
        self._hits += k - reading
        self._ios_in_progress += 1
        if out:
            return out
        return self.next_buffers(limit)

    def _read_advised(self, run: _Run) -> None:
        """Advice mode: the run was only advised; read it now, as it is consumed."""
        op = self.bufmgr.start_read_buffers(self.rel, self.fork, run.block, run.n,
                                            strategy=self.strategy)
        run.op = op
        k = 0
        for e in self._queue:
            if e[2] is run:
                e[0] = op.buffers[k]
                k += 1
                if k == run.n:
                    break
        reading = sum(len(io.buf_ids) for io in op.ios)
        self._blocks_read += reading
        self._hits += run.n - reading
        if op.needs_wait:
            self._ios += len(op.ios)
            self._wait_run(run, counted=False)
            self._grow_distance()
        else:
            run.waited = True
            if self.distance > 1:
                self.distance -= 1
        if self.pinned > self._max_pinned_seen:
            self._max_pinned_seen = self.pinned

    def _next_fast(self) -> Any:
        """All cached lately: hand out the one pinned buffer and pin the next block alone,
        skipping the look-ahead machinery. A miss leaves the fast path."""
        if not self._queue:
            # A fast run (``_next_fast_run``) handed out every buffer it pinned, its reads
            # done at once (all hits, or read inline): go the normal way for the next one.
            self._fast_path = False
            return self.next_buffer()
        entry = self._queue.popleft()
        entry[2].left -= 1
        item = self._next_block()
        if item is None:
            self._fast_path = False
            self.distance = 0
            self.pinned -= 1
            return entry[0]
        block, _ = item
        op = self.bufmgr.start_read_buffers(self.rel, self.fork, block, 1, strategy=self.strategy)
        run = _Run(op, block, 1)
        self._queue.append((op.buffers[0], None, run))
        if op.needs_wait:
            self._fast_path = False
            self._ios += len(op.ios)
            self._blocks_read += sum(len(io.buf_ids) for io in op.ios)
            self._ios_in_progress += 1
        else:
            self._fast += 1
            self._hits += 1
        return entry[0]

    def __iter__(self) -> Iterator[Any]:
        while True:
            out = self.next_buffer()
            if out is None:
                return
            yield out

    # --- reset and close --------------------------------------------------------------------------
    def reset(self) -> None:
        """Unpin everything queued and go back to distance 1; the source is not rewound."""
        # Reads still in flight hold pins of their own: wait for them to complete (their
        # outcome stays in the buffer state, where a later reader finds it), so nothing of
        # this stream is pinned once reset returns.
        aio = self.bufmgr.aio
        seen = set()
        to_unpin = []
        for buf, _, run in self._queue:
            if buf is not None:
                to_unpin.append(buf)
            if run.op is not None and not run.waited and id(run) not in seen:
                seen.add(id(run))
                for io in run.op.ios:
                    if io.ref is not None:  # None: read inline, complete already
                        aio.wait(io.ref)
        self._queue.clear()
        if to_unpin:
            self.bufmgr.unpin_many(to_unpin)
        self.pinned = 0
        self._ios_in_progress = 0
        self._pending_n = 0
        self._pending_data = []
        self._unget = None
        self._run_ahead = []
        self._fast_path = False
        self._ended = False  # a callable source may produce more blocks
        self.distance = 1

    def close(self) -> None:
        if self._closed:
            return
        self.reset()
        self._closed = True

    def __enter__(self) -> ReadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> ReadStreamStats:
        return ReadStreamStats(self._ios, self._blocks_read, self._hits, self._max_distance,
                               self._max_pinned_seen, self._fast, self._advice_calls)

