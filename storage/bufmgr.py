"""The shared buffer manager over AIO.

``shared_buffers`` pages live in one page-aligned private anonymous mapping advised for huge
pages (O_DIRECT-ready). Each buffer has a descriptor: tag (relation, fork, block), state
flags, a pin count, a usage count for clock-sweep replacement, the wait reference of the I/O
in progress, and a content lock (shared/exclusive).

Reads are two-step, as PostgreSQL 18's: ``start_read_buffers`` pins the blocks, claims
IO_IN_PROGRESS for the misses and issues one vectored read per run of adjacent misses;
``wait_read_buffers`` waits, re-issues the remainder of a short read and raises on failure.
The completion callback — in whichever thread completes the I/O — verifies every page's
header and checksum, sets VALID or IO_ERROR, clears IO_IN_PROGRESS, drops the I/O's own pin
and wakes waiters. A thread that finds a block whose read another thread started waits on
that I/O's wait reference: one physical read per block however many threads want it.
A point read's miss (``read_buffer``), and under the sync method every read, runs inline
in the issuer without an AIO handle and is completed by the same code (README invariant
21); a thread that finds such a read in progress waits on the buffer.

A dirty victim is written before reuse, in the evicting thread; the background writer
(``start_bgwriter``, storage/bgwriter.py, README invariant 22) writes dirty buffers ahead
of the clock sweep in combined runs so that victims are mostly clean. ``flush_all``
(checkpoints) sorts dirty buffers by tag, combines adjacent blocks into vectored writes and
keeps many in flight. Before any page is written, WAL is flushed up to its LSN through the
injected ``flush_wal(lsn)`` (WAL before data).

Invariants:
1. A buffer's content is touched only while it is pinned (or, for ``read_cached``'s one
   short read, while the descriptor lock is held); a pinned buffer is never evicted.
2. IO_IN_PROGRESS has one owner; an I/O's own pin (taken at stage, dropped at completion)
   keeps the buffer from reuse while the kernel may still write into it.
3. A buffer becomes VALID only after its page verified (or was zeroed/ignored by the
   options captured when the read was issued).
4. A page is written only after ``flush_wal(page_lsn)`` returned, with its checksum set,
   while its content lock is held shared (no change can race the write).
5. The descriptor lock (``_lock``) is never held while I/O is started or waited for: the
   sync method completes inside ``start``, and completion takes ``_lock``.
6. A descriptor's flags are always one of the ``BufferState`` combinations and change only
   through ``_set_state_locked``, which asserts the edge against ``LEGAL_TRANSITIONS``;
   I/O goes through one pair, ``_start_buffer_io_locked`` / ``_terminate_buffer_io_locked``
   (PostgreSQL's StartBufferIO / TerminateBufferIO). README.md draws the same diagram.
7. A page is verified (header rules, checksum just set) before it is written, as after it
   is read: a malformed page in the pool is a broken invariant, never written to disk.
8. Optimistic reads (seqlock). Every change to the bytes of a VALID buffer's page is made
   under its exclusive content lock, except the checksum field (pd_checksum, bytes 8-9)
   that a write sets under the shared lock, which no optimistic reader uses. ``seq[b]``
   (a C uint32 array, with the C helper built) is bumped by the call that takes buffer
   b's exclusive content lock (``lock_exclusive``, ``extend``, ``zero_buffer``: odd, the
   page may change) and by the one that gives it back (``unlock_exclusive``: even again),
   in C with full fences (``LockWords``). A reader that holds a pin on a VALID buffer (never evicted, never
   read into; or the descriptor lock for the read: ``read_cached``, ``read_hit``) but no
   content lock may read the page in C: counter even before, page
   read, counter unchanged after, or it discards what it read and takes the share lock
   (``storage/_pagecheck_build.py``, "optimistic (seqlock) reads"). Reads into a buffer
   happen only while it is not VALID, where no optimistic reader looks.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import threading
import time
import warnings
from array import array
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import compress, filterfalse, repeat

from slonik.aio.callbacks import IoCallbacks
from slonik.aio.core import Aio
from slonik.aio.errors import StorageError
from slonik.aio.handle import (
    AioResult,
    AioReturn,
    Handle,
    HandleState,
    IoOp,
    ResultStatus,
    WaitRef,
    new_tuple,
)
from slonik.aio.ids import CallbackId, TargetId
from slonik.aio.memory import aligned_buffer
from slonik.aio.transfer import SHORT_TRANSFER_RETRIES_MAX, short_transfer_error
from slonik.storage.bgwriter import (
    BGWRITER_DELAY_DEFAULT_MS,
    BGWRITER_LRU_MAXPAGES_DEFAULT,
    BgWriter,
    BgWriterStats,
    check_bgwriter_delay,
    check_bgwriter_lru_maxpages,
)
from slonik.storage.errors import DataCorruptionError
from slonik.storage.hotlib import hot_for
from slonik.storage.page import (
    BLCKSZ,
    ZERO_PAGE,
    PageRunVerifier,
    PageStatus,
    page_get_lsn,
    page_set_checksum,
)
from slonik.storage.prefault import Prefaulter
from slonik.storage.smgr import Fork, Smgr, describe
from sortedcontainers import SortedList

try:  # the optional C helper: the change counters of optimistic reads (invariant 8)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
    if not hasattr(_lib, "slk_seq_copy_pages"):  # an older build of the module
        _ffi = _lib = None
except ImportError:
    _ffi = _lib = None

BM_VALID = 1
BM_DIRTY = 2
BM_IO_IN_PROGRESS = 4
BM_IO_ERROR = 8
BM_TAG_VALID = 16


class BufferState(IntEnum):
    """The flag combinations a descriptor may hold (the value is the flags word)."""

    FREE = 0                                                          # no tag
    EMPTY = BM_TAG_VALID                                              # tagged, no contents
    READ_FAILED = BM_TAG_VALID | BM_IO_ERROR                          # last read failed
    READING = BM_TAG_VALID | BM_IO_IN_PROGRESS                        # being read / zero-filled
    VALID = BM_TAG_VALID | BM_VALID                                   # clean page
    DIRTY = BM_TAG_VALID | BM_VALID | BM_DIRTY                        # changed since written
    WRITING = BM_TAG_VALID | BM_VALID | BM_DIRTY | BM_IO_IN_PROGRESS  # being written
    WRITE_FAILED = BM_TAG_VALID | BM_VALID | BM_DIRTY | BM_IO_ERROR   # last write failed


B = BufferState

# The one table of legal transitions (README.md draws the same diagram). Retagging a clean
# victim (-> EMPTY, or -> READING when the read is claimed at once) and dropping a
# relation's buffers (-> FREE) are the only edges that are not buffer I/O.
LEGAL_TRANSITIONS: dict[BufferState, frozenset[BufferState]] = {
    B.FREE: frozenset({B.EMPTY, B.READING}),
    B.EMPTY: frozenset({B.READING, B.EMPTY, B.FREE}),
    B.READ_FAILED: frozenset({B.READING, B.EMPTY, B.FREE}),
    B.READING: frozenset({B.VALID, B.READ_FAILED, B.EMPTY}),
    B.VALID: frozenset({B.DIRTY, B.READING, B.EMPTY, B.FREE}),
    B.DIRTY: frozenset({B.WRITING, B.FREE}),
    B.WRITING: frozenset({B.VALID, B.WRITE_FAILED, B.DIRTY}),
    B.WRITE_FAILED: frozenset({B.WRITING, B.FREE}),
}
assert set(LEGAL_TRANSITIONS) == set(BufferState), "every state has its row"
assert all(B.FREE in LEGAL_TRANSITIONS[s] for s in BufferState
           if s not in (B.FREE, B.READING, B.WRITING)), "any buffer without I/O can be dropped"
_STATE_VALUES = frozenset(int(state) for state in BufferState)
_READING = int(B.READING)
_DIRTY = int(B.DIRTY)
_VALID_STATE = int(B.VALID)
# States a clean, unpinned victim may be claimed for reading from (asserted below).
_CLAIMABLE_VICTIM = frozenset(int(s) for s in (B.FREE, B.EMPTY, B.READ_FAILED, B.VALID))
_READ_FAILED = int(B.READ_FAILED)
# The same table as (old, new) flag pairs: one set lookup per change on the hot paths.
_LEGAL_EDGES = frozenset((int(old), int(new)) for old, news in LEGAL_TRANSITIONS.items()
                         for new in news)
assert all((s, _READING) in _LEGAL_EDGES for s in _CLAIMABLE_VICTIM)

_FLAGS = operator.attrgetter("flags")          # of a descriptor, in C-level loops
_USAGE_COUNT = operator.attrgetter("usage_count")
# The states whose page is readable (BM_VALID set): read_cached's test, one set operation.
_VALID_FLAGS = frozenset(int(s) for s in BufferState if s & BM_VALID)


def seq_copy_pages_py(pool: memoryview, seq: Sequence[int], nbuffers: int,
                      bufs: Sequence[int], out: bytearray | memoryview) -> int:
    """Python reference of ``slk_seq_copy_pages`` (``_pagecheck_build.py``), without its
    fences (single-threaded): copies page ``bufs[k]`` of ``pool`` to ``out[k]`` while its
    counter ``seq[b]`` is even and unchanged by the copy; returns how many leading pages
    were copied (it stops at an odd counter or a buffer id not below ``nbuffers``)."""
    for k, b in enumerate(bufs):
        if b >= nbuffers:
            return k
        seen = seq[b]
        if seen & 1:
            return k
        out[k * BLCKSZ:(k + 1) * BLCKSZ] = pool[b * BLCKSZ:(b + 1) * BLCKSZ]
        if seq[b] != seen:
            return k
    return len(bufs)


BM_MAX_USAGE_COUNT = 5        # as PostgreSQL: how many sweeps a popular buffer survives
SHARED_BUFFERS_MIN = 16       # a pool smaller than this cannot hold one combined read
SHARED_BUFFERS_MAX = 1 << 22  # 32 GiB of pages; beyond that this design is the wrong tool
IO_COMBINE_LIMIT_MAX = 128    # blocks per I/O (1 MiB), as PostgreSQL's io_max_combine_limit

ERROR, PARTIAL, OK, WARNING = (ResultStatus.ERROR, ResultStatus.PARTIAL, ResultStatus.OK,
                               ResultStatus.WARNING)


_VALID, _FOREIGN, _CLAIMED = object(), object(), object()  # outcomes of _claim_read


FLUSH_CHUNK_BUFFERS = 256  # pinned at once by flush_all: 16 combined writes of 16 blocks


POOL_GROW_BUFFERS = 256    # descriptors and page views made at a time as the pool fills
CONTENT_LOCK_STRIPES = 64  # mutexes shared by the buffers' content locks (see ContentLock)


class NoFreeBuffersError(StorageError):
    """Every buffer is pinned: the pool is too small for the work in flight."""


class DamagedPageWarning(UserWarning):
    """A damaged page was zeroed (zero_damaged_pages) or accepted (ignore_checksum_failure)."""


CL_EXCL = 0x80000000         # a content-lock word held exclusively (else: shared holders)
CL_SHARED_MAX = 0x3FFFFFFF   # a word at or above this takes no more shared holders


class LockWords:
    """The content-lock words of a pool's buffers (or of one lone ``ContentLock``):
    ``words[i]`` is ``CL_EXCL`` while lock i is held exclusively, else how many hold it
    shared; ``waiters[i]`` counts the threads waiting for it (changed only under the lock's
    stripe mutex, read by a release). With the GIL-keeping C build (storage/hotlib.py)
    every operation is one C call, ``slk_cl_*``: one indivisible step for every other
    Python thread, so a word needs no mutex of its own. Without it the ``py_*`` methods,
    the reference the C calls are tested against, do the same under one mutex.

    The exclusive operations move the buffer's change counter (``seq``, invariant 8) with
    the word: odd as the lock is taken, even as it is given back. The single operations
    return 1 / 0 (taken or not; a release: someone waits, to be notified, or not), -1 for
    a release of a lock not held that way (nothing changes); the run operations are in
    their docstrings."""

    __slots__ = ("n", "words", "waiters", "seq", "c", "_pymutex", "_bump", "try_shared",
                 "try_exclusive", "release_shared", "release_exclusive")

    def __init__(self, n: int, seq=None, *, use_c: bool = True) -> None:
        """``use_c=False``: the Python reference even where the C build exists (tests)."""
        self.n = n
        self.words = array("I", bytes(4 * n))
        self.waiters = array("I", bytes(4 * n))
        self.seq = seq   # a cffi uint32_t[] of change counters, or None
        hot = hot_for(_lib)
        self.c = None
        if use_c and _lib is not None and hot is not _lib and hasattr(hot, "slk_cl_try_shared"):
            w = _ffi.from_buffer("uint32_t[]", self.words)
            wt = _ffi.from_buffer("uint32_t[]", self.waiters)
            sq = _ffi.NULL if seq is None else seq
            self.c = (hot, w, wt, sq)
            self.try_shared = functools.partial(hot.slk_cl_try_shared, w)
            self.try_exclusive = functools.partial(hot.slk_cl_try_exclusive, w, sq)
            self.release_shared = functools.partial(hot.slk_cl_release_shared, w, wt)
            self.release_exclusive = functools.partial(hot.slk_cl_release_exclusive, w, sq, wt)
        else:
            self._pymutex = threading.Lock()
            self._bump = None if seq is None else functools.partial(_lib.slk_seq_bump, seq)
            self.try_shared = self.py_try_shared
            self.try_exclusive = self.py_try_exclusive
            self.release_shared = self.py_release_shared
            self.release_exclusive = self.py_release_exclusive

    # --- the runs: one C call each ---------------------------------------------------------
    def try_exclusive_many(self, ids: Sequence[int]) -> list[int]:
        """``try_exclusive`` of each of the distinct ``ids``: those held by someone (not
        taken), in order. IndexError for an id beyond the words, AssertionError for a
        repeated one (nothing taken: a lock taken twice would wait for itself)."""
        if self.c is None:
            return self.py_try_exclusive_many(ids)
        hot, w, _wt, sq = self.c
        n = len(ids)
        busy = _ffi.new("uint32_t[]", n)
        k = hot.slk_cl_try_exclusive_many(w, sq, self.n, _ffi.new("uint32_t[]", ids), n, busy)
        if k < 0:
            if not 0 <= ids[-k - 1] < self.n:
                raise IndexError(f"content lock {ids[-k - 1]} of {self.n}")
            raise AssertionError(f"content lock {ids[-k - 1]} repeated in a run")
        return _ffi.unpack(busy, n - k) if k < n else []

    def release_exclusive_many(self, ids: Sequence[int]) -> list[int]:
        """``release_exclusive`` of each of the distinct ``ids``, every one held
        exclusively (checked first: AssertionError naming one that is not, or is repeated,
        nothing released): those someone waits for, to notify."""
        if self.c is None:
            return self.py_release_exclusive_many(ids)
        hot, w, wt, sq = self.c
        n = len(ids)
        notify = _ffi.new("uint32_t[]", n)
        k = hot.slk_cl_release_exclusive_many(w, sq, wt, self.n, _ffi.new("uint32_t[]", ids),
                                              n, notify)
        if k < 0:
            raise AssertionError(f"content lock {ids[-k - 1]} released exclusive but not held "
                                 f"(or repeated in the run)")
        return _ffi.unpack(notify, k) if k else []

    # --- the Python reference ------------------------------------------------------------------
    def py_try_shared(self, i: int) -> int:
        with self._pymutex:
            v = self.words[i]
            if v >= CL_SHARED_MAX:
                return 0
            self.words[i] = v + 1
            return 1

    def py_try_exclusive(self, i: int) -> int:
        with self._pymutex:
            if self.words[i]:
                return 0
            self.words[i] = CL_EXCL
            if self._bump is not None:
                self._bump(i)
            return 1

    def py_release_shared(self, i: int) -> int:
        with self._pymutex:
            v = self.words[i]
            if not 0 < v < CL_EXCL:
                return -1
            self.words[i] = v - 1
            return int(v == 1 and self.waiters[i] != 0)

    def py_release_exclusive(self, i: int) -> int:
        with self._pymutex:
            if self.words[i] != CL_EXCL:
                return -1
            if self._bump is not None:
                self._bump(i)
            self.words[i] = 0
            return int(self.waiters[i] != 0)

    def py_try_exclusive_many(self, ids: Sequence[int]) -> list[int]:
        if any(not 0 <= i < self.n for i in ids):
            raise IndexError(f"a content lock of {list(ids)} beyond {self.n}")
        if len(set(ids)) != len(ids):
            raise AssertionError(f"a content lock repeated in {list(ids)}")
        return [i for i in ids if not self.py_try_exclusive(i)]

    def py_release_exclusive_many(self, ids: Sequence[int]) -> list[int]:
        if len(set(ids)) != len(ids):
            raise AssertionError(f"a content lock repeated in {list(ids)}")
        for i in ids:
            if not 0 <= i < self.n or self.words[i] != CL_EXCL:
                raise AssertionError(f"content lock {i} released exclusive but not held")
        return [i for i in ids if self.py_release_exclusive(i)]


class ContentLock:
    """Shared/exclusive lock; not owner-tracked, so an I/O completion may release the
    shared hold its issuer took for a write.

    The lock is word ``index`` of a ``LockWords`` (a pool's, or its own): taking and
    giving it back is one call on the word, no mutex. A thread that must wait takes the
    lock's mutex, counts itself in the word's waiters, tries again and sleeps on a
    condition made when someone first has to wait; a release that finds waiters counted
    notifies it under the mutex. The mutex may be shared by several locks (the pool
    stripes ``CONTENT_LOCK_STRIPES`` of them over its buffers): it is held only to wait
    and to notify."""

    __slots__ = ("_mutex", "_cond", "_words", "_i")

    def __init__(self, mutex: threading.Lock | None = None, words: LockWords | None = None,
                 index: int = 0) -> None:
        self._mutex = threading.Lock() if mutex is None else mutex
        self._cond: threading.Condition | None = None
        self._words = LockWords(1) if words is None else words
        self._i = index

    def _wait(self) -> None:
        """Sleep until a release notifies (called with the mutex held, counted waiting)."""
        self._cond.wait()

    def _wait_until(self, attempt: Callable[[int], int]) -> None:
        """Wait until ``attempt`` (a try of this word) takes the lock."""
        words, i = self._words, self._i
        with self._mutex:
            if self._cond is None:   # (made before the count: a release finds it)
                self._cond = threading.Condition(self._mutex)
            words.waiters[i] += 1
            try:
                while not attempt(i):
                    self._wait()
            finally:
                words.waiters[i] -= 1

    def _notify(self) -> None:
        with self._mutex:
            self._cond.notify_all()

    def _released(self, r: int, mode: str) -> None:
        """After a release call that answered ``r`` != 0: notify the waiters counted, or
        raise for a lock that was not held that way (the word unchanged)."""
        if r < 0:
            raise AssertionError(f"content lock released {mode} but not held")
        self._notify()

    def acquire_shared(self) -> None:
        attempt = self._words.try_shared
        if not attempt(self._i):
            self._wait_until(attempt)

    def acquire_exclusive(self) -> None:
        attempt = self._words.try_exclusive
        if not attempt(self._i):
            self._wait_until(attempt)

    def try_shared(self) -> bool:
        """Take it shared if nobody holds it exclusively; never waits."""
        return self._words.try_shared(self._i) == 1

    def try_exclusive(self) -> bool:
        return self._words.try_exclusive(self._i) == 1

    def release_shared(self) -> None:
        r = self._words.release_shared(self._i)
        if r:   # (someone waits, or it was not held: rare, a call only then)
            self._released(r, "shared")

    def release_exclusive(self) -> None:
        r = self._words.release_exclusive(self._i)
        if r:
            self._released(r, "exclusive")

    @staticmethod
    def acquire_shared_all(locks: Sequence[ContentLock]) -> None:
        """``acquire_shared`` of every lock of ``locks`` in order (a run of pages copied at
        once, ``copy_release``); a lock held exclusively is waited for as
        ``acquire_shared`` waits. On an exception (an interrupt while waiting) the locks
        already taken are released again."""
        k = 0
        try:
            for lock in locks:
                lock.acquire_shared()
                k += 1
        except BaseException:
            ContentLock.release_shared_all(locks[:k])
            raise

    @staticmethod
    def release_shared_all(locks: Sequence[ContentLock]) -> None:
        """``release_shared`` of every lock of ``locks``."""
        for lock in locks:
            lock.release_shared()

    @property
    def held_exclusive(self) -> bool:
        return self._words.words[self._i] == CL_EXCL

    @property
    def held(self) -> bool:
        """Held in either mode (``check()`` looks for locks left behind)."""
        return self._words.words[self._i] != 0

    @property
    def _waiters(self) -> int:
        """Threads waiting for the lock now."""
        return self._words.waiters[self._i]


class BufferDesc(ContentLock):
    """One buffer's state. The descriptor is its own content lock (``lock`` is the
    descriptor itself): one object per buffer rather than two, which is most of what
    opening a pool of 16,384 buffers costs."""

    __slots__ = ("buf_id", "tag", "flags", "refcount", "usage_count", "io_wref", "lock",
                 "error")

    def __init__(self, buf_id: int, mutex: threading.Lock, words: LockWords) -> None:
        ContentLock.__init__(self, mutex, words, buf_id)   # the pool's word buf_id
        self.buf_id = buf_id
        self.tag: tuple[int, int, int] | None = None
        self.flags = 0
        self.refcount = 0
        self.usage_count = 0
        self.io_wref: WaitRef | None = None
        self.lock: ContentLock = self
        self.error = ""  # reason of the last failed read (for a later report)


@dataclass(frozen=True)
class BufferStats:
    """pg_stat_io-like counters of the buffer manager."""

    io_method: str
    shared_buffers: int
    hits: int
    reads: int
    read_bytes: int
    read_ios: int
    writes: int
    write_bytes: int
    write_ios: int
    evictions: int
    io_wait_ns: int
    zeroed_pages: int
    ignored_checksum_failures: int


@dataclass
class _ReadIo(IoCallbacks):
    """One in-flight read of consecutive buffers: the data of callback BUFMGR_READV,
    whose phases are the buffer manager's."""

    callback_id = CallbackId.BUFMGR_READV

    bufmgr: BufferManager
    rel: int
    fork: int
    block: int
    buf_ids: list[int]
    zero_damaged_pages: bool
    ignore_checksum_failure: bool
    ref: WaitRef | None = None
    ret: AioReturn | None = None
    inline: bool = False  # run in the issuer without a handle (``_read_io_inline``)

    def stage(self, h: Handle) -> None:
        self.bufmgr._read_stage(h, self)

    def complete_shared(self, h: Handle, prior: AioResult) -> AioResult:
        return self.bufmgr._read_complete(h, prior, self)

    def report(self, ret: AioReturn) -> None:
        BufferManager._read_report(ret, self)


@dataclass
class _WriteIo(IoCallbacks):
    """One in-flight write of consecutive buffers: the data of callback BUFMGR_WRITEV."""

    callback_id = CallbackId.BUFMGR_WRITEV
    bufmgr: BufferManager
    rel: int
    fork: int
    block: int
    buf_ids: list[int]
    ref: WaitRef | None = None
    ret: AioReturn | None = None

    def stage(self, h: Handle) -> None:
        self.bufmgr._write_stage(h, self)

    def complete_shared(self, h: Handle, prior: AioResult) -> AioResult:
        return self.bufmgr._write_complete(h, prior, self)


class ReadBuffersOperation:
    """What ``start_read_buffers`` started: the pinned buffers (in block order), our own
    I/Os, and reads of other threads we must wait for."""

    __slots__ = ("rel", "fork", "first_block", "buffers", "ios", "foreign", "zero_damaged_pages",
                 "ignore_checksum_failure")

    def __init__(self, rel: int, fork: int, first_block: int, zero: bool, ignore: bool) -> None:
        self.rel = rel
        self.fork = fork
        self.first_block = first_block
        self.buffers: list[int] = []
        self.ios: list[_ReadIo] = []
        self.foreign: list[tuple[int, WaitRef]] = []  # (index into buffers, wref)
        self.zero_damaged_pages = zero
        self.ignore_checksum_failure = ignore

    @property
    def needs_wait(self) -> bool:
        return bool(self.ios or self.foreign)


class BufferRing:
    """A BULKREAD buffer access strategy (PostgreSQL's ring): a large scan's misses reuse
    up to ``size`` buffers in turn instead of sweeping the whole pool, so the scan neither
    evicts the pool's working set nor pays a clock sweep per page. A ring buffer someone
    else pinned or used (usage count > 1), or that is dirty, is left to the pool and
    replaced in the ring by a clock-sweep victim. Used under the descriptor lock."""

    __slots__ = ("size", "buffers", "_next")

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"a buffer ring holds at least one buffer, got {size!r}")
        self.size = size
        self.buffers: list[int] = []
        self._next = 0  # slot the next miss tries

    def reusable_locked(self, descs: list[BufferDesc]) -> BufferDesc | None:
        """The ring's next buffer, pinned, if it can be reused; None (the caller sweeps
        and ``add_locked``s the victim into that slot) while the ring is filling or when
        the buffer is busy elsewhere."""
        if len(self.buffers) < self.size:
            return None
        d = descs[self.buffers[self._next]]
        if d.refcount or d.usage_count > 1 or d.flags & BM_DIRTY:
            return None
        d.refcount = 1
        self._next = (self._next + 1) % self.size
        return d

    def add_locked(self, buf_id: int) -> None:
        """A clock-sweep victim joins the ring (replacing the busy buffer of this slot)."""
        if len(self.buffers) < self.size:
            self.buffers.append(buf_id)
            return
        self.buffers[self._next] = buf_id
        self._next = (self._next + 1) % self.size


BULK_READ_RING_MIN = 32  # buffers: PostgreSQL's 256 KiB BULKREAD ring
BULK_READ_RING_MAX = 2048  # buffers: 16 MiB


class BufferManager:
    """See the module docstring. ``flush_wal(lsn)`` is injected by the engine."""

    def __init__(self, smgr: Smgr, aio: Aio, *, shared_buffers: int = 16384,
                 io_combine_limit: int = 16, effective_io_concurrency: int = 16,
                 zero_damaged_pages: bool = False,
                 ignore_checksum_failure: bool = False,
                 flush_wal: Callable[[int], None] | None = None,
                 bgwriter_delay: int = BGWRITER_DELAY_DEFAULT_MS,
                 bgwriter_lru_maxpages: int = BGWRITER_LRU_MAXPAGES_DEFAULT) -> None:
        if not isinstance(shared_buffers, int) or not SHARED_BUFFERS_MIN <= shared_buffers <= SHARED_BUFFERS_MAX:
            raise ValueError(f"shared_buffers must be an int in {SHARED_BUFFERS_MIN}.."
                             f"{SHARED_BUFFERS_MAX} (pages of {BLCKSZ} bytes), got {shared_buffers!r}")
        if not isinstance(io_combine_limit, int) or not 1 <= io_combine_limit <= IO_COMBINE_LIMIT_MAX:
            raise ValueError(f"io_combine_limit must be an int in 1..{IO_COMBINE_LIMIT_MAX} "
                             f"(blocks), got {io_combine_limit!r}")
        if not isinstance(effective_io_concurrency, int) or not 0 <= effective_io_concurrency <= 1000:
            raise ValueError("effective_io_concurrency must be an int in 0..1000, got "
                             f"{effective_io_concurrency!r}")
        self.bgwriter_delay = check_bgwriter_delay(bgwriter_delay)
        self.bgwriter_lru_maxpages = check_bgwriter_lru_maxpages(bgwriter_lru_maxpages)
        self._bgwriter: BgWriter | None = None  # started by start_bgwriter
        self.smgr = smgr
        self.aio = aio
        self.nbuffers = shared_buffers
        self.effective_io_concurrency = effective_io_concurrency
        self.io_combine_limit = io_combine_limit
        self.zero_damaged_pages = zero_damaged_pages
        self.ignore_checksum_failure = ignore_checksum_failure
        self.flush_wal = flush_wal or (lambda lsn: None)
        self._mem = aligned_buffer(shared_buffers * BLCKSZ)
        self._prefault = Prefaulter(self._mem)  # first touches off the reading thread
        mv = memoryview(self._mem)
        self._mv = mv
        self._verifier = PageRunVerifier(mv)  # one call verifies a whole read (C if built)
        # Buffers come into being as they are first needed (``_fresh_locked``): the page
        # views and descriptors of a 16,384-buffer pool cost tens of milliseconds to make,
        # which an open that reads a few pages should not pay. Both lists only grow, in
        # step; a buffer id below len(descs) is valid for good.
        self.pages: list[memoryview] = []
        self.descs: list[BufferDesc] = []
        self._stripes = [threading.Lock() for _ in range(CONTENT_LOCK_STRIPES)]
        self._handed_out = 0   # buffers ever given to a block; the rest were never used
        self._table: dict[tuple[int, int, int], int] = {}
        self._lock = threading.Lock()
        self._io_done = threading.Condition(self._lock)  # buffer I/O finished (sync waits)
        # Threads waiting on _io_done now (under _lock): an inline read's completion
        # notifies only when some thread waits (a point read's miss skips notify_all).
        self._io_waiters = 0
        self._hand = 0
        self._extend_locks: dict[tuple[int, int], threading.Lock] = {}
        self._hits = self._reads = self._read_bytes = self._read_ios = 0
        self._writes = self._write_bytes = self._write_ios = self._evictions = 0
        self._io_wait_ns = self._zeroed = self._ignored = 0
        # Invariant 8: per buffer a change counter, odd while its exclusive content lock is
        # held (``LockWords``), and the pool's base address, for C readers that take no
        # content lock; both None without the C helper (readers then always lock).
        if _lib is not None:
            self.seq = _ffi.new("uint32_t[]", shared_buffers)
            # The pointer exports the mmap, not the view ``mv``: a memoryview with a live
            # export can be cleared by the cyclic collector and crash CPython 3.11 when
            # freed (btree_page._C_EXPORTS); an mmap has no such clear.
            self.c_pool = _ffi.from_buffer("uint8_t[]", self._mem)
        else:
            self.seq = self.c_pool = None
        # The buffers' content-lock words, moving the change counters with exclusive holds
        # (twice per hold, in the GIL-keeping build, storage/hotlib.py: a writer holding the
        # commit lock does not hand the GIL away for it).
        self._words = LockWords(shared_buffers, self.seq)

    # --- pinning and replacement --------------------------------------------------------------
    def page(self, buf_id: int) -> memoryview:
        return self.pages[buf_id]

    def pin(self, buf_id: int) -> None:
        with self._lock:
            d = self.descs[buf_id]
            assert d.refcount > 0, "pin() adds a pin to an already pinned buffer"
            d.refcount += 1

    def unpin(self, buf_id: int) -> None:
        with self._lock:
            d = self.descs[buf_id]
            assert d.refcount > 0, f"buffer {buf_id} unpinned but not pinned"
            d.refcount -= 1

    def unpin_many(self, buf_ids: Sequence[int], *, valid: bool = False) -> None:
        """Drop a pin of each buffer; with ``valid``, each must also be VALID (a copied
        run's, checked where its pin ends: a pinned VALID buffer stays VALID), else
        AssertionError once every pin is dropped."""
        invalid = -1
        with self._lock:
            descs = self.descs
            for b in buf_ids:
                d = descs[b]
                assert d.refcount > 0, f"buffer {b} unpinned but not pinned"
                if valid and not d.flags & BM_VALID:
                    invalid = b
                d.refcount -= 1
        assert invalid < 0, f"buffer {invalid} was not VALID (its pin is released)"

    def _pin_for_block_locked(self, tag: tuple[int, int, int]) -> tuple[int, bool]:
        """Pin the buffer of ``tag``, allocating a clean victim on a miss.
        Returns (buf_id, found); found means VALID. Caller holds ``_lock``. May return
        (-1, False) when the victim is dirty: the caller writes it and retries."""
        b = self._table.get(tag)
        if b is not None:
            d = self.descs[b]
            d.refcount += 1
            if d.usage_count < BM_MAX_USAGE_COUNT:
                d.usage_count += 1
            return b, bool(d.flags & BM_VALID)
        d = self._clock_sweep_locked()
        if d.flags & BM_DIRTY:
            return -d.buf_id - 2, False  # dirty victim, pinned: caller flushes it
        self._retag_locked(d, tag)
        return d.buf_id, False

    # --- the buffer state machine -------------------------------------------------------------
    @staticmethod
    def _set_state_locked(d: BufferDesc, new: int) -> None:
        """The one setter of a descriptor's flags: asserts the edge (``LEGAL_TRANSITIONS``).
        Caller holds ``_lock``."""
        assert (d.flags, new) in _LEGAL_EDGES, _illegal(d, new)
        d.flags = new

    def _start_buffer_io_locked(self, d: BufferDesc, *, for_input: bool,
                                overwrite: bool = False) -> bool:
        """StartBufferIO: claim IO_IN_PROGRESS for a read (``for_input``) or a write. False
        when there is nothing to claim: a read of a VALID buffer (unless ``overwrite``: the
        caller fills the page itself, as extend does), a write of a clean one, or an I/O
        already in progress (the caller waits for it). Caller holds ``_lock``."""
        flags = d.flags
        if flags & BM_IO_IN_PROGRESS:
            return False
        if for_input:
            if flags & BM_VALID and not overwrite:
                return False
            self._set_state_locked(d, B.READING)
        else:
            if not flags & BM_DIRTY:
                return False
            self._set_state_locked(d, B.WRITING)
        return True

    def _terminate_buffer_io_locked(self, d: BufferDesc, new: int, *, io_pin: bool) -> None:
        """TerminateBufferIO: end the I/O in progress with state ``new`` (VALID, or
        READ_FAILED/WRITE_FAILED, or back to EMPTY/DIRTY when it never ran); with ``io_pin``
        also drop the pin and wait reference the I/O took at stage. Caller holds ``_lock``
        and notifies ``_io_done`` once it has terminated a batch."""
        assert d.flags & BM_IO_IN_PROGRESS and not new & BM_IO_IN_PROGRESS, _illegal(d, new)
        self._set_state_locked(d, new)
        if io_pin:
            assert d.refcount > 0 and d.io_wref is not None, \
                f"buffer {d.buf_id}: I/O terminated without its own pin"
            d.refcount -= 1
            d.io_wref = None

    def _terminate_reads_locked(self, buf_ids: Sequence[int], new: int, *,
                                io_pin: bool) -> None:
        """``_terminate_buffer_io_locked`` of every buffer of a run of reads, in one loop
        without a call per buffer (a read's completion): each is READING (checked) and goes
        to ``new`` (VALID, READ_FAILED or EMPTY: edges of ``LEGAL_TRANSITIONS``, asserted
        once for the run); with ``io_pin`` its I/O pin and wait reference go too. A buffer
        not in that state takes ``_terminate_buffer_io_locked``, whose assertions name it.
        Caller holds ``_lock`` and notifies ``_io_done``."""
        assert (_READING, new) in _LEGAL_EDGES, f"no edge READING -> {new:#x}"
        descs = self.descs
        if io_pin:
            for b in buf_ids:
                d = descs[b]
                if d.flags != _READING or d.refcount <= 0 or d.io_wref is None:
                    self._terminate_buffer_io_locked(d, new, io_pin=True)
                    continue
                d.flags = new
                d.refcount -= 1
                d.io_wref = None
        else:
            for b in buf_ids:
                d = descs[b]
                if d.flags != _READING:
                    self._terminate_buffer_io_locked(d, new, io_pin=False)
                    continue
                d.flags = new

    def _retag_locked(self, d: BufferDesc, tag: tuple[int, int, int], *,
                      claim_read: bool = False) -> None:
        """Give a clean, pinned victim ``tag`` (EMPTY, or READING with ``claim_read``)."""
        if d.flags & BM_TAG_VALID:
            del self._table[d.tag]
            self._evictions += 1
        self._set_state_locked(d, B.READING if claim_read else B.EMPTY)
        d.tag = tag
        d.usage_count = 1
        d.error = ""
        self._table[tag] = d.buf_id

    def _fresh_locked(self) -> BufferDesc | None:
        """A never-used buffer, pinned, while there are any (PostgreSQL's free list: they
        go first, before the clock sweep evicts anything); its descriptor and page view
        are made ``POOL_GROW_BUFFERS`` at a time. None once every buffer has been used."""
        b = self._handed_out
        if b == self.nbuffers:
            return None
        descs = self.descs
        if b == len(descs):
            end = min(b + POOL_GROW_BUFFERS, self.nbuffers)
            self._prefault.ahead(end * BLCKSZ)
            mv, stripes = self._mv, self._stripes
            self.pages.extend([mv[i * BLCKSZ:(i + 1) * BLCKSZ] for i in range(b, end)])
            words = self._words
            descs.extend([BufferDesc(i, stripes[i % CONTENT_LOCK_STRIPES], words)
                          for i in range(b, end)])
        self._handed_out = b + 1
        d = descs[b]
        d.refcount = 1
        return d

    def _clock_sweep_locked(self) -> BufferDesc:
        """A victim with no pins, usage count decayed to zero; returned pinned (a
        never-used buffer while there are any)."""
        fresh = self._fresh_locked()
        if fresh is not None:
            return fresh
        descs, n = self.descs, self.nbuffers
        for _ in range(n * (BM_MAX_USAGE_COUNT + 1)):
            d = descs[self._hand]
            self._hand = (self._hand + 1) % n
            if d.refcount:
                continue
            if d.usage_count:
                d.usage_count -= 1
                continue
            d.refcount = 1
            return d
        raise NoFreeBuffersError(f"no unpinned buffers available: all {n} shared_buffers are "
                                 "pinned (raise shared_buffers or hold fewer pins)")

    def _pin_block(self, tag: tuple[int, int, int]) -> tuple[int, bool]:
        """Pin ``tag``'s buffer; writes dirty victims out first. Returns (buf_id, found)."""
        while True:
            with self._lock:
                b, found = self._pin_for_block_locked(tag)
            if b >= 0:
                return b, found
            b = self._take_dirty_victim(-b - 2, tag)
            if b is not None:
                return b, False

    def _take_dirty_victim(self, victim: int, tag: tuple[int, int, int]) -> int | None:
        """Write the dirty victim we hold pinned, then give it ``tag``; None (and the pin
        dropped) when meanwhile someone re-used or re-dirtied it or ``tag`` appeared."""
        try:
            self._write_victim(victim)  # we hold its pin; it stays unless re-dirtied
        except BaseException:
            self.unpin(victim)
            raise
        with self._lock:
            d = self.descs[victim]
            if self._table.get(tag) is None and not (d.flags & BM_DIRTY) and d.refcount == 1:
                self._retag_locked(d, tag)
                return victim
            d.refcount -= 1
            return None

    # --- reads -----------------------------------------------------------------------------------
    def start_read_buffers(self, rel: int, fork: int, first_block: int, nblocks: int, *,
                           zero_damaged_pages: bool | None = None,
                           ignore_checksum_failure: bool | None = None,
                           strategy: BufferRing | None = None) -> ReadBuffersOperation:
        """Pin blocks first_block..+nblocks-1 and start reads for those not in the pool.
        Options are captured now: the completion may run in another thread. With a
        ``strategy`` ring (``bulk_read_ring``) a miss reuses the ring's buffers."""
        op = ReadBuffersOperation(
            rel, int(fork), first_block,
            self.zero_damaged_pages if zero_damaged_pages is None else zero_damaged_pages,
            self.ignore_checksum_failure if ignore_checksum_failure is None else ignore_checksum_failure)
        missing: list[int] = []  # indexes into op.buffers whose read we own
        try:
            self._pin_and_claim(op, nblocks, missing, strategy)
            self._start_runs(op, missing)
        except BaseException:
            self._abandon(op, missing)
            raise
        return op

    def _pin_and_claim(self, op: ReadBuffersOperation, nblocks: int, missing: list[int],
                       ring: BufferRing | None = None) -> None:
        """Pin every block of ``op`` and decide who reads it (see ``_claim_read``), the whole
        run in one descriptor-lock section. Only a dirty victim leaves the section: it is
        written outside the lock (``_pin_block``) and the run continues after it. With a
        ``ring``, a miss takes the ring's next buffer when nobody else uses it (unpinned,
        usage count <= 1, clean), else a clock-sweep victim that joins the ring."""
        rel, fork, first_block = op.rel, op.fork, op.first_block
        buffers, foreign = op.buffers, op.foreign
        table, descs, nbuffers = self._table, self.descs, self.nbuffers
        set_state = self._set_state_locked
        ring_ids = None if ring is None else ring.buffers
        ring_size = 0 if ring is None else ring.size
        i = 0
        while i < nblocks:
            dirty = -1
            with self._lock:
                if ring_ids is not None and nblocks - i > 1:
                    # a cold scan's usual run: all of it (else a prefix) at once
                    claimed = self._claim_ring_run_locked(ring, rel, fork, first_block + i,
                                                          nblocks - i)
                    if claimed:
                        k = len(claimed)
                        buffers += claimed
                        missing += range(i, i + k)
                        i += k
                hits = evictions = 0
                while i < nblocks:
                    tag = (rel, fork, first_block + i)
                    b = table.get(tag)
                    if b is not None:
                        d = descs[b]
                        d.refcount += 1
                        if d.usage_count < BM_MAX_USAGE_COUNT:
                            d.usage_count += 1
                        flags = d.flags
                        if flags & BM_VALID:
                            hits += 1
                        elif flags & BM_IO_IN_PROGRESS:
                            foreign.append((i, d.io_wref))
                        else:
                            self._start_buffer_io_locked(d, for_input=True)
                            missing.append(i)
                    else:
                        d = None
                        if ring_ids is not None and len(ring_ids) == ring_size:
                            # ring.reusable_locked(descs), inline
                            d = descs[ring_ids[ring._next]]
                            if d.refcount or d.usage_count > 1 or d.flags & BM_DIRTY:
                                d = None
                            else:
                                d.refcount = 1
                                ring._next = (ring._next + 1) % ring_size
                        if d is None and self._handed_out < nbuffers:
                            d = self._fresh_locked()
                            if ring is not None:
                                ring.add_locked(d.buf_id)
                        elif d is None:
                            d = descs[self._hand]  # the clock sweep's usual first answer
                            if d.refcount or d.usage_count:
                                d = self._clock_sweep_locked()  # returned pinned
                            else:
                                d.refcount = 1
                                self._hand = (self._hand + 1) % nbuffers
                            if ring is not None:
                                ring.add_locked(d.buf_id)
                        flags = d.flags
                        if flags & BM_DIRTY:
                            dirty = d.buf_id  # pinned; written below, outside the lock
                            break
                        if flags & BM_TAG_VALID:  # _retag_locked(claim_read=True), inline
                            del table[d.tag]
                            evictions += 1
                        if flags in _CLAIMABLE_VICTIM:  # the edge to READING is legal
                            d.flags = _READING
                        else:
                            set_state(d, _READING)  # asserts, naming the edge
                        d.tag = tag
                        d.usage_count = 1
                        d.error = ""
                        b = table[tag] = d.buf_id
                        missing.append(i)
                    buffers.append(b)
                    i += 1
                self._hits += hits
                self._evictions += evictions
            if dirty >= 0:
                tag = (rel, fork, first_block + i)
                b = self._take_dirty_victim(dirty, tag)
                if b is None:
                    b, _found = self._pin_block(tag)
                buffers.append(b)
                if self._claim_read(op, i, count_hit=True) is _CLAIMED:
                    missing.append(i)
                i += 1

    def _claim_ring_run_locked(self, ring: BufferRing, rel: int, fork: int, first: int,
                               n: int) -> list[int]:
        """The longest prefix of blocks ``first .. first + n - 1`` that can be claimed for
        reading into the ring's next buffers, claimed: what ``_pin_and_claim``'s loop does
        block by block for a miss into a reusable ring buffer, in one pass without its
        branches. It stops (the loop goes on from there) at a block already in the pool or
        at a ring buffer that is not reusable (pinned, used more than once, not in a state
        a read may claim: ``_CLAIMABLE_VICTIM``, so never dirty; one this run claimed
        already is pinned). Empty unless the ring is full. Caller holds ``_lock``."""
        size = ring.size
        ids = ring.buffers
        if len(ids) != size:
            return []
        at = ring._next
        claim = ids[at:at + n]
        if len(claim) < n:  # round the ring to the slot it started at, not past it
            claim += ids[:min(n - len(claim), at)]
        table, descs = self._table, self.descs
        block = first
        evicted = 0
        for b in claim:
            tag = (rel, fork, block)
            if tag in table:
                break
            d = descs[b]
            flags = d.flags
            if d.refcount or d.usage_count > 1 or flags not in _CLAIMABLE_VICTIM:
                break
            if flags & BM_TAG_VALID:
                del table[d.tag]
                evicted += 1
            d.refcount = 1
            d.usage_count = 1
            d.flags = _READING
            d.tag = tag
            d.error = ""
            table[tag] = b
            block += 1
        k = block - first
        if k:
            ring._next = (at + k) % size
            self._evictions += evicted
        return claim[:k] if k < len(claim) else claim

    def _claim_read(self, op: ReadBuffersOperation, i: int, *, count_hit: bool) -> object:
        """Decide who reads ``op.buffers[i]``: already VALID (a hit), another thread's read
        in progress (wait on its wait reference), or claimed for our own read."""
        with self._lock:
            d = self.descs[op.buffers[i]]
            if d.flags & BM_VALID:
                if count_hit:
                    self._hits += 1
                return _VALID
            if not self._start_buffer_io_locked(d, for_input=True):
                op.foreign.append((i, d.io_wref))
                return _FOREIGN
            return _CLAIMED

    def _abandon(self, op: ReadBuffersOperation, claimed: list[int]) -> None:
        """Error before I/O started: give back claims that no I/O took, and all pins."""
        in_io = {b for io in op.ios for b in io.buf_ids}
        with self._lock:
            for i in claimed:
                if i < len(op.buffers):
                    b = op.buffers[i]
                    if b not in in_io:
                        self._terminate_buffer_io_locked(self.descs[b], B.EMPTY, io_pin=False)
            self._io_done.notify_all()
        self.unpin_many(op.buffers)

    def _start_runs(self, op: ReadBuffersOperation, missing: list[int]) -> None:
        """One vectored read per run of adjacent claimed blocks (within a segment and
        io_combine_limit)."""
        i = 0
        n = len(missing)
        limit = self.io_combine_limit
        buffers = op.buffers
        while i < n:
            start = missing[i]
            block = op.first_block + start
            cap = min(limit, self.smgr.maxcombine(block), n - i)
            if missing[i + cap - 1] == start + cap - 1:
                j = i + cap  # the usual case: the whole stretch is consecutive
            else:
                j = i + 1
                while j < n and missing[j] == missing[j - 1] + 1 and j - i < cap:
                    j += 1
            self._start_read_io(op, buffers[start:start + j - i], block)
            i = j

    def _io_views(self, buf_ids: list[int]) -> list[memoryview]:
        """The I/O's buffers: one wide view when the pool buffers are adjacent in order
        (one iovec for the kernel), else one view per block."""
        first, n = buf_ids[0], len(buf_ids)
        if n > 1 and buf_ids[-1] - first == n - 1 and (n == 2 or buf_ids == list(range(first, first + n))):
            return [self._mv[first * BLCKSZ:(first + n) * BLCKSZ]]
        pages = self.pages
        return [pages[b] for b in buf_ids]

    def _start_read_io(self, op: ReadBuffersOperation, buf_ids: list[int], block: int) -> None:
        io = _ReadIo(self, op.rel, op.fork, block, buf_ids, op.zero_damaged_pages,
                     op.ignore_checksum_failure)
        io.ret = AioReturn()
        views = self._io_views(buf_ids)
        if self.aio.every_read_inline:
            io.inline = True
            try:
                self._read_io_inline(io, views)
            finally:
                op.ios.append(io)  # completed (or its claims given back): never abandoned
            return
        if self.aio.nowait_reads_inline and not self.smgr.io_direct:
            # Worker / io_uring on a buffered file: pages the OS page cache holds need no
            # hand-off; a read it cannot finish without blocking goes to the method below.
            done = False
            try:
                done = self._read_io_inline(io, views, nowait=True)
            finally:
                if io.inline:
                    op.ios.append(io)  # read: completed (or failing) here, never abandoned
            if done:
                return
            self.aio.count_nowait_fallback()
        h = self.aio.acquire(io.ret)
        try:
            h.add_callback(CallbackId.BUFMGR_READV, io)
            io.ref = h.wait_ref()
            self.smgr.start_readv(h, op.rel, op.fork, block, views)
        except BaseException:
            if io.ref is not None and self.aio.done(io.ref):
                op.ios.append(io)  # it was started and completed: its callback ran
            elif h.state == HandleState.HANDED_OUT:
                h.release()
            raise
        op.ios.append(io)

    def read_done(self, op: ReadBuffersOperation) -> bool:
        """True when every read ``op`` started has completed, so ``wait_read_buffers``
        will not block for one (it may still re-issue a short read, or wait for another
        thread's read of one of its blocks)."""
        if op.foreign:
            return False
        done = self.aio.done
        return all(io.ref is None or done(io.ref) for io in op.ios)

    def wait_read_buffers(self, op: ReadBuffersOperation) -> list[int]:
        """Wait for the reads ``op`` started (and for other threads' reads of its blocks),
        re-issue the rest of short reads, raise on failure. Returns the pinned buffers."""
        t0 = time.perf_counter_ns()
        try:
            for _ in range(SHORT_TRANSFER_RETRIES_MAX):  # aio.transfer's policy, rule 1
                ios, op.ios = op.ios, []
                retry: list[int] = []
                for io in ios:
                    if io.ref is not None:  # else run inline, complete already
                        self.aio.wait(io.ref)
                    result = io.ret.result
                    if result.status == OK:
                        continue  # the usual case: nothing to report
                    if result.status == PARTIAL:
                        done = result.result
                        # The completion released the undone buffers' claims; claim again.
                        retry.extend(op.buffers.index(b) for b in io.buf_ids[done:])
                        continue
                    if io.ret.raise_if_failed().status == WARNING:
                        _, zeroed, ignored = io.ret.result.detail
                        _warn_damaged(io.rel, io.fork, zeroed, ignored)
                if not retry and not op.foreign:  # the usual case: every block is in
                    return op.buffers
                foreign = set()
                for i, ref in op.foreign:
                    if ref is not None:
                        self.aio.wait(ref)
                    self._wait_buffer_io(op.buffers[i])
                    foreign.add(i)
                op.foreign = []
                reclaim = []
                for i in sorted(foreign.union(retry)):
                    # A block another thread's read brought in counts as a hit.
                    if self._claim_read(op, i, count_hit=i in foreign) is _CLAIMED:
                        reclaim.append(i)
                if not reclaim and not op.foreign and not op.ios:
                    return op.buffers
                self._start_runs(op, reclaim)
            raise StorageError(f"reading {describe(op.rel, op.fork, op.first_block, len(op.buffers))} "
                               f"came back short {SHORT_TRANSFER_RETRIES_MAX} times")
        finally:
            self._io_wait_ns += time.perf_counter_ns() - t0

    def _wait_buffer_io(self, buf_id: int) -> None:
        """Wait until no I/O is in progress on the buffer (an I/O claimed without AIO)."""
        with self._lock:
            d = self.descs[buf_id]
            while d.flags & BM_IO_IN_PROGRESS:
                ref = d.io_wref
                if ref is not None:
                    self._lock.release()
                    try:
                        self.aio.wait(ref)
                    finally:
                        self._lock.acquire()
                    continue
                self._io_waiters += 1
                try:
                    self._io_done.wait(0.05)
                finally:
                    self._io_waiters -= 1

    def pin_cached(self, rel: int, fork: int, blocks: Sequence[int]) -> list[int]:
        """Pin the buffers of those of ``blocks`` that are VALID in the pool, all in one
        descriptor-lock section (an index scan's heap pages: scattered, usually cached):
        per block its buffer id, pinned (no content lock), or -1 when it is not in the pool
        or not valid yet (no pin taken; read it the usual way). No I/O, no victim."""
        out: list[int] = []
        fork = int(fork)
        table, descs = self._table, self.descs
        with self._lock:
            hits = 0
            for block in blocks:
                b = table.get((rel, fork, block))
                if b is not None:
                    d = descs[b]
                    if d.flags & BM_VALID:
                        d.refcount += 1
                        if d.usage_count < BM_MAX_USAGE_COUNT:
                            d.usage_count += 1
                        hits += 1
                        out.append(b)
                        continue
                out.append(-1)
            self._hits += hits
        return out

    def read_cached(self, rel: int, fork: int, blocks: Sequence[int],
                    read: Callable[[list[int]], object]) -> object:
        """``read(bufs)`` (per block its buffer id) when every one of ``blocks`` is VALID
        in the pool, called while the descriptor lock is held; None, without calling it,
        when some block is not (pin it the usual way: ``pin_cached``, a read stream).

        The held lock stands in for pins (invariant 1): no buffer is retagged, read into
        or dropped without it, so for the call every buffer stays VALID with its block,
        and ``read`` may read the pages without content locks under their change counters
        (invariant 8). It must be short and touch nothing that takes this lock: it is one
        C call (an index scan's batch: its heap tuples judged, gathered and laid out). So
        an all-hit batch takes no pin or unpin, and no interpreted step per block: the
        lookups, the state test and the usage counts (raised only below the maximum) go
        in C-level passes; the hits count as pin_cached's."""
        fork = int(fork)
        table, descs = self._table, self.descs
        tags = zip(repeat(rel), repeat(fork), blocks)
        with self._lock:
            bufs = list(map(table.get, tags))
            try:
                ds = list(map(descs.__getitem__, bufs))
            except TypeError:   # a block not in the pool (None): cheaper than a test
                return None
            if not _VALID_FLAGS.issuperset(map(_FLAGS, ds)):
                return None
            if min(map(_USAGE_COUNT, ds), default=BM_MAX_USAGE_COUNT) < BM_MAX_USAGE_COUNT:
                for d in compress(ds, map(operator.gt, repeat(BM_MAX_USAGE_COUNT),
                                          map(_USAGE_COUNT, ds))):
                    d.usage_count += 1
            self._hits += len(bufs)
            return read(bufs)

    def cached(self, rel: int, fork: int, block: int, n: int) -> bool:
        """Whether blocks block..+n-1 are all VALID in the pool (no pins taken)."""
        table, descs, fork = self._table, self.descs, int(fork)
        for k in range(n):
            b = table.get((rel, fork, block + k))
            if b is None or not descs[b].flags & BM_VALID:
                return False
        return True

    def uncached(self, tags: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """The (rel, fork, block) tags of ``tags`` that have no buffer in the pool, in order
        (no pins, no lock: a hint, as ``cached``; recovery's prefetch asks per batch). A
        block with a buffer counts as cached whatever its state: one being read needs no
        second read, and the rare one left EMPTY or READ_FAILED is read when it is used.
        One C-level filter over the mapping table, no descriptor touched: during replay a
        tag's descriptor check missed the CPU caches (~0.5 µs a tag with it)."""
        return list(filterfalse(self._table.__contains__, tags))

    def read_buffer(self, rel: int, fork: int, block: int) -> int:
        """One block, pinned (no content lock): a point read, which waits at once.

        A hit, or a miss whose victim is clean, is decided in one descriptor-lock section;
        the miss is then read inline (``_read_inline``: a plain preadv in this thread, no
        AIO handle) when the io method allows it (``Aio.synchronous_reads_inline``).
        Everything else (a block another thread is reading, a failed or empty buffer, a
        dirty victim, a method that wants every read on a handle) takes the two-step path
        (``read_buffers``)."""
        fork = int(fork)
        tag = (rel, fork, block)
        with self._lock:
            b = self._table.get(tag)
            if b is not None:
                d = self.descs[b]
                if d.flags & BM_VALID:
                    d.refcount += 1
                    if d.usage_count < BM_MAX_USAGE_COUNT:
                        d.usage_count += 1
                    self._hits += 1
                    return b
                d = None  # being read elsewhere, or failed: the two-step path decides
            elif self.aio.synchronous_reads_inline:
                d = self._claim_victim_locked(tag)
            else:
                d = None
        if d is None:
            return self.read_buffers(rel, fork, block, 1)[0]
        return self._read_inline(d, rel, fork, block)

    def read_buffer_exclusive(self, rel: int, fork: int, block: int) -> int:
        """``read_buffer`` then ``lock_exclusive``, in one call: a content lock that is
        free is taken without a wait-capable call (a writer's point access: an autocommit
        put's leaf). An interrupt while waiting for the lock unpins."""
        b = self.read_buffer(rel, fork, block)
        if self._words.try_exclusive(b):   # (its change counter goes odd: invariant 8)
            return b
        try:
            self.lock_exclusive(b)
        except BaseException:
            self.unpin(b)
            raise
        return b

    def release_dirty(self, buf_id: int) -> bool:
        """``mark_dirty``, ``unlock_exclusive`` and ``unpin`` of a buffer its caller
        changed, in one call (``release_many`` of it, dirty: the flag set before the
        content lock is released). Whether the buffer was clean before (recovery counts
        the buffers it dirtied). (``release_many``'s steps for one buffer, without its two
        passes and its run-sized bump: a commit releases its leaf this way.)"""
        d = self.descs[buf_id]
        with self._lock:
            assert d.refcount > 0 and self._words.words[buf_id] == CL_EXCL, \
                "a buffer is pinned and exclusively locked when it is released"
            turned = not d.flags & BM_DIRTY
            if turned:
                self._set_state_locked(d, _DIRTY)
            # invariant 8: the change counter goes even again with the release
            waited = self._words.release_exclusive(buf_id)
            if waited < 0:
                d._released(waited, "exclusive")
            d.refcount -= 1
        if waited:
            d._notify()
        return turned

    def _claim_victim_locked(self, tag: tuple[int, int, int]) -> BufferDesc | None:
        """A clean victim for ``tag`` (absent from the table), pinned, retagged and claimed
        for reading (READING, no wait reference: the read runs inline); None when the
        victim is dirty (unpinned again; the two-step path writes one). Caller holds
        ``_lock``. As ``_pin_and_claim``'s miss: a never-used buffer first, else the clock
        hand's buffer when it is free, else the sweep."""
        if self._handed_out < self.nbuffers:
            d = self._fresh_locked()
        else:
            d = self.descs[self._hand]
            if d.refcount or d.usage_count:
                d = self._clock_sweep_locked()  # returned pinned
            else:
                d.refcount = 1
                self._hand = (self._hand + 1) % self.nbuffers
        flags = d.flags
        if flags & BM_DIRTY:
            d.refcount -= 1
            return None
        if flags & BM_TAG_VALID:
            del self._table[d.tag]
            self._evictions += 1
        self._set_state_locked(d, _READING)
        d.tag = tag
        d.usage_count = 1
        d.error = ""
        self._table[tag] = d.buf_id
        return d

    def _read_inline(self, d: BufferDesc, rel: int, fork: int, block: int,
                     then: tuple[Callable, tuple] | None = None):
        """Read the block of ``d`` (pinned by us, READING, claimed by ``_claim_victim_locked``)
        in this thread and complete it as a read's completion callback would: verify the
        page (with this pool's ``zero_damaged_pages`` / ``ignore_checksum_failure``), set
        VALID or READ_FAILED, clear IO_IN_PROGRESS and wake threads that found the block
        being read (they wait in ``_wait_buffer_io``, counted in ``_io_waiters``: the
        descriptor has no wait reference).
        Returns the buffer pinned; on failure the pin is dropped and the error raised
        (``IOFailure`` / ``DataCorruptionError`` naming relation, fork and block). The
        preadv returns before anything can interrupt us, so no I/O pin is needed: nothing
        writes into the page after this call gives the buffer up.

        With ``then`` = (read, args) (``read_through``): once the page is VALID, still in
        the completion's descriptor-lock section, ``read(c_pool, seq, buf, *args)`` is
        called and our pin dropped (the held lock stands in for it, as in ``read_hit``);
        returns what ``read`` returned instead of the pinned buffer."""
        b = d.buf_id
        t0 = time.perf_counter_ns()
        try:
            self.smgr.read_block(rel, fork, block, self.pages[b])  # short reads continued
            problems = self._verifier.verify((b,), rel, fork, block)
        except BaseException:
            with self._lock:
                self._terminate_buffer_io_locked(d, B.READ_FAILED, io_pin=False)
                d.refcount -= 1
                self._io_done.notify_all()
            raise
        elapsed = time.perf_counter_ns() - t0
        self.aio.count_direct(TargetId.SMGR, IoOp.READV, BLCKSZ, elapsed)
        bad: list[tuple[int, str]] = []
        zeroed: list[int] = []
        ignored: list[int] = []
        if problems:
            self._judge_pages(problems, [b], block, self.zero_damaged_pages,
                              self.ignore_checksum_failure, bad, zeroed, ignored)
        result = b
        with self._lock:
            if bad:
                d.error = bad[0][1]
                self._terminate_buffer_io_locked(d, B.READ_FAILED, io_pin=False)
                d.refcount -= 1
            else:
                self._terminate_buffer_io_locked(d, B.VALID, io_pin=False)
                if then is not None:
                    try:
                        result = then[0](self.c_pool, self.seq, b, *then[1])
                    finally:
                        d.refcount -= 1
            self._reads += 1
            self._read_bytes += BLCKSZ
            self._read_ios += 1
            self._io_wait_ns += elapsed
            if problems:
                self._zeroed += len(zeroed)
                self._ignored += len(ignored)
            if self._io_waiters:
                self._io_done.notify_all()
        if bad:
            raise _bad_pages_error(rel, fork, block, 1, bad)
        if problems:
            _warn_damaged(rel, fork, zeroed, ignored)
        return result

    def read_through(self, rel: int, fork: int, block: int, read: Callable, *args):
        """``read_hit``, and on a miss ``read_buffer``'s inline read with ``read`` after it:
        the block is read in this thread (a clean victim claimed in the same
        descriptor-lock section as the lookup; ``_read_inline``) and ``read(c_pool, seq,
        buf, *args)`` is called in the completion's lock section, the pin dropped there.
        A point read's miss in two lock sections and no content lock, instead of a failed
        ``read_hit``, ``read_buffer``'s two, a share lock and an unpin. None, without
        calling ``read`` or reading anything, when the block is in the pool but not VALID
        (being read elsewhere, failed), when the victim is dirty, or when the io method
        wants every read on a handle: the caller reads it with ``read_buffer``. A failed
        read raises as ``read_buffer``'s (nothing stays pinned). Needs the C helper
        (``c_pool``/``seq``), as ``read_hit``'s readers do."""
        tag = (rel, fork, block)
        with self._lock:
            b = self._table.get(tag)
            if b is not None:
                d = self.descs[b]
                if not d.flags & BM_VALID:
                    return None
                if d.usage_count < BM_MAX_USAGE_COUNT:
                    d.usage_count += 1
                self._hits += 1
                return read(self.c_pool, self.seq, b, *args)
            if not self.aio.synchronous_reads_inline:
                return None
            d = self._claim_victim_locked((rel, int(fork), block))
            if d is None:
                return None
        return self._read_inline(d, rel, fork, block, (read, args))

    def pin_if_valid(self, rel: int, fork: int, block: int) -> int:
        """A hit's whole ``read_buffer`` in one short call (a B+tree point read's leaf):
        the block's buffer id, pinned (no content lock), when it is VALID in the pool;
        else -1 and no pin (read it with ``read_buffer``). No I/O, no victim."""
        with self._lock:
            b = self._table.get((rel, fork, block))
            if b is None:
                return -1
            d = self.descs[b]
            if not d.flags & BM_VALID:
                return -1
            d.refcount += 1
            if d.usage_count < BM_MAX_USAGE_COUNT:
                d.usage_count += 1
            self._hits += 1
        return b

    def pin_exclusive_if_valid_many(self, tags: Sequence[tuple[int, int, int]]) -> list[int]:
        """``pin_if_valid`` of each of distinct (rel, fork, block) tags, each pinned buffer
        also held exclusively (``lock_exclusive``), in one descriptor-lock section: the
        buffer ids, -1 for a block not VALID in the pool (no pin, no lock; no I/O, no
        victim). A content lock someone else holds is waited for after the section
        (``lock_exclusive_many``). Recovery's run of B+tree records takes its pages this
        way; ``release_many`` gives them back."""
        out: list[int] = []
        append = out.append
        with self._lock:
            table = self._table
            descs = self.descs
            for tag in tags:
                b = table.get(tag)
                if b is None or not descs[b].flags & BM_VALID:
                    append(-1)
                    continue
                d = descs[b]
                d.refcount += 1
                if d.usage_count < BM_MAX_USAGE_COUNT:
                    d.usage_count += 1
                append(b)
            pinned = [b for b in out if b >= 0] if -1 in out else out
            # Every free content lock taken in one call, each change counter odd before its
            # page may change (invariant 8; the pages change after the return).
            busy = self._words.try_exclusive_many(pinned)
            self._hits += len(pinned)
        if busy:
            try:
                self.lock_exclusive_many(busy)
            except BaseException:
                self.unlock_exclusive_many([b for b in pinned if b not in busy])
                self.unpin_many(pinned)
                raise
        return out

    def release_many(self, buf_ids: Sequence[int], dirty: Container[int]) -> int:
        """``unlock_exclusive`` and ``unpin`` of distinct buffers held exclusively, those in
        ``dirty`` marked dirty first, in one descriptor-lock section; how many of them
        were clean before."""
        turned = 0
        descs = self.descs
        with self._lock:
            for b in buf_ids:
                d = descs[b]
                assert d.refcount > 0, "a buffer is pinned when it is released"
                if b in dirty and not d.flags & BM_DIRTY:
                    self._set_state_locked(d, _DIRTY)
                    turned += 1
            # One call: every lock checked held exclusively, then each counter even again
            # (invariant 8) as its lock is given back.
            notify = self._words.release_exclusive_many(buf_ids)
            for b in buf_ids:
                descs[b].refcount -= 1
        for b in notify:
            descs[b]._notify()
        return turned

    def apply_held(self, tags: Sequence[tuple[int, int, int]],
                   apply: Callable[[list[int]], Iterable[int]]) -> int | None:
        """Change the pages of the (rel, fork, block) ``tags`` (a tag may repeat) in one
        descriptor-lock section, when each is VALID in the pool and its content lock free:
        the distinct ones locked exclusively in one call (each change counter odd:
        invariant 8), ``apply(buf_ids)`` (a buffer id per tag, in ``tags`` order; one short
        C call that touches nothing taking this lock) changes them and returns the ids it
        changed, those are marked dirty, and the locks go in one call. The held lock stands
        in for the pins, as in ``read_hit``: no buffer is retagged, read into or dropped
        without it. How many buffers turned dirty; None, with nothing taken or changed,
        when a block is not VALID in the pool or someone holds a lock (then
        ``pin_exclusive_if_valid_many``).
        Recovery's run of B+tree records: ``pin_exclusive_if_valid_many``, the change and
        ``release_many`` without a pin's two passes over the descriptors."""
        notify: list[int] = []
        descs = self.descs
        try:
            return self._apply_held(tags, apply, notify)
        finally:  # (a waiter is notified after the section, as release_many does)
            for b in notify:
                descs[b]._notify()

    def _apply_held(self, tags: Sequence[tuple[int, int, int]],
                    apply: Callable[[list[int]], Iterable[int]], notify: list[int]
                    ) -> int | None:
        """``apply_held``'s section; the ids to notify are put in ``notify``."""
        descs = self.descs
        with self._lock:
            bufs = list(map(self._table.get, tags))
            if None in bufs:
                return None
            # (buffer ids hash as themselves: deduplicated far cheaper than the tags)
            held = bufs if len(set(bufs)) == len(bufs) else list(dict.fromkeys(bufs))
            for d in map(descs.__getitem__, held):
                if not d.flags & BM_VALID:
                    return None
                if d.usage_count < BM_MAX_USAGE_COUNT:
                    d.usage_count += 1
            words = self._words
            busy = words.try_exclusive_many(held)
            if busy:
                taken = [b for b in held if b not in busy]
                if taken:
                    notify += words.release_exclusive_many(taken)
                return None
            self._hits += len(held)
            try:
                changed = apply(bufs)
            except BaseException:
                notify += words.release_exclusive_many(held)
                raise
            turned = 0
            for d in map(descs.__getitem__, changed):
                flags = d.flags
                if flags == _VALID_STATE:   # (the usual edge, VALID -> DIRTY)
                    d.flags = _DIRTY
                    turned += 1
                elif not flags & BM_DIRTY:
                    self._set_state_locked(d, _DIRTY)
                    turned += 1
            notify += words.release_exclusive_many(held)
        return turned

    def read_hit(self, rel: int, fork: int, block: int, read: Callable, *args):
        """``read(c_pool, seq, buf, *args)`` when the block is VALID in the pool (its
        buffer ``buf``), called while the descriptor lock is held; None, without calling
        it, when it is not (read it with ``read_buffer``). A point read's page in one
        lock section instead of ``pin_if_valid`` and ``unpin``'s two: the held lock
        stands in for the pin as in ``read_cached`` (no buffer is retagged, read into or
        dropped without it), so ``read`` (one short C call, e.g. ``slk_heap_fetch_opt``,
        touching nothing that takes this lock) reads the page under its change counter
        (invariant 8). Counted as a hit; the usage count is raised as a pin's is."""
        with self._lock:
            b = self._table.get((rel, fork, block))
            if b is None:
                return None
            d = self.descs[b]
            if not d.flags & BM_VALID:
                return None
            if d.usage_count < BM_MAX_USAGE_COUNT:
                d.usage_count += 1
            self._hits += 1
            return read(self.c_pool, self.seq, b, *args)

    def read_buffers(self, rel: int, fork: int, first_block: int, nblocks: int) -> list[int]:
        """Blocks ``first_block..+nblocks-1``, pinned (no content lock), in block order;
        on failure nothing stays pinned."""
        op = self.start_read_buffers(rel, fork, first_block, nblocks)
        if op.needs_wait:
            try:
                self.wait_read_buffers(op)
            except BaseException:
                self.unpin_many(op.buffers)
                raise
        return op.buffers

    # --- read completion (runs in whichever thread completes the I/O) ----------------------------
    def _read_stage(self, h: Handle, io: _ReadIo) -> None:
        ref = new_tuple(WaitRef, (h.index, h.generation))
        descs = self.descs
        with self._lock:
            for b in io.buf_ids:
                d = descs[b]
                assert d.flags == _READING, f"buffer {b} staged for read in state {d.flags:#x}"
                d.refcount += 1  # the I/O's own pin
                d.io_wref = ref
            self._reads += len(io.buf_ids)
            self._read_bytes += len(io.buf_ids) * BLCKSZ
            self._read_ios += 1

    def _read_complete(self, h: Handle, prior: AioResult, io: _ReadIo) -> AioResult:
        n = len(io.buf_ids)
        done = prior.result if prior.status in (OK, PARTIAL) else 0
        done = min(done, n)
        rel, fork, block = io.rel, io.fork, io.block
        descs = self.descs
        bad: list[tuple[int, str]] = []
        zeroed: list[int] = []
        ignored: list[int] = []
        buf_ids = io.buf_ids
        io_pin = not io.inline  # an inline read took no pin or wait reference of its own
        problems = self._verifier.verify(buf_ids[:done] if done < n else buf_ids, rel, fork, block)
        if problems:
            self._judge_pages(problems, buf_ids, block, io.zero_damaged_pages,
                              io.ignore_checksum_failure, bad, zeroed, ignored)
            for blk, reason in bad:
                descs[buf_ids[blk - block]].error = reason
        if bad:
            bad_ks = {blk - block for blk, _ in bad}
            ok_ids = [b for k, b in enumerate(buf_ids[:done]) if k not in bad_ks]
        else:
            ok_ids = buf_ids[:done]
        terminate = self._terminate_reads_locked
        with self._lock:
            if done == n and not bad:  # the usual case: one pass
                terminate(buf_ids, _VALID_STATE, io_pin=io_pin)
            else:
                terminate(ok_ids, _VALID_STATE, io_pin=io_pin)
                # Blocks not read: failed, or left for the issuer to read again (PARTIAL).
                unread = B.READ_FAILED if prior.status == ERROR else B.EMPTY
                terminate(buf_ids[done:], int(unread), io_pin=io_pin)
                terminate([buf_ids[blk - block] for blk, _ in bad], _READ_FAILED,
                          io_pin=io_pin)
            if not io_pin:  # counted here, not at stage
                self._reads += n
                self._read_bytes += n * BLCKSZ
                self._read_ios += 1
            self._zeroed += len(zeroed)
            self._ignored += len(ignored)
            if self._io_waiters:  # (a Condition's notify costs a few µs even with nobody)
                self._io_done.notify_all()
        if prior.status == ERROR:
            return prior
        if bad:
            return AioResult(ERROR, done, 0, CallbackId.BUFMGR_READV, ("bad", bad))
        if prior.status == PARTIAL:
            return prior
        if zeroed or ignored:
            return AioResult(WARNING, done, 0, CallbackId.BUFMGR_READV, ("warn", zeroed, ignored))
        return prior

    def _read_io_inline(self, io: _ReadIo, views: list, *, nowait: bool = False) -> bool:
        """Run the read ``io`` now, in this thread, without an AIO handle (the sync method
        executes every read in its issuer at staging anyway), and complete it as its two
        callbacks would: smgr's bytes-to-blocks judgement (OK, PARTIAL with the blocks
        read, ERROR past the end or on an OS error), then ``_read_complete``. The result
        waits in ``io.ret`` for ``wait_read_buffers`` to report, as a handle's would, so a
        read stream's failed read ahead still fails only when the stream reaches it. Only
        an exception that is no error (an interrupt) gives the claims back at once
        (READ_FAILED) and propagates.

        ``nowait`` (``Aio.nowait_reads_inline``): read only if the OS page cache holds
        every byte (``Smgr.read_into_nowait``: one non-blocking preadv), then set
        ``io.inline`` and complete the same way (an OK read of every block); otherwise
        do nothing (the claims stay READING, the buffers' bytes undefined) and return
        False, for the caller to start the read on a handle. An exception before the read
        (bad arguments, an interrupt) leaves the claims to the caller. Returns True when
        the read was completed here."""
        n = len(io.buf_ids)
        rel, fork, block = io.rel, io.fork, io.block
        t0 = time.perf_counter_ns()
        if nowait:
            if not self.smgr.read_into_nowait(rel, fork, block, views):
                return False
            io.inline = True
            prior = AioResult(OK, n)
        else:
            try:
                got = self.smgr.read_into(rel, fork, block, views)
            except Exception as exc:  # an OS error naming file and blocks: reported at the wait
                prior = AioResult(ERROR, 0, 0, CallbackId.SMGR_READV, exc)
            except BaseException:
                with self._lock:
                    for b in io.buf_ids:
                        self._terminate_buffer_io_locked(self.descs[b], B.READ_FAILED,
                                                         io_pin=False)
                    self._io_done.notify_all()
                raise
            else:
                blocks = got // BLCKSZ
                if blocks >= n:
                    prior = AioResult(OK, n)
                elif blocks:
                    prior = AioResult(PARTIAL, blocks, 0, CallbackId.SMGR_READV, got)
                else:  # past the relation's end, as SmgrIo.report words it
                    path = self.smgr.segment_path(rel, fork, block // self.smgr.segment_size)
                    error = short_transfer_error(
                        False, got, n * BLCKSZ, f"{describe(rel, fork, block, n)} in file {path}")
                    prior = AioResult(ERROR, 0, 0, CallbackId.SMGR_READV, DataCorruptionError(
                        str(error), relation=rel, fork=fork, block=block))
        result = self._read_complete(None, prior, io)
        elapsed = time.perf_counter_ns() - t0
        self._io_wait_ns += elapsed
        self.aio.count_direct(TargetId.SMGR, IoOp.READV, n * BLCKSZ, elapsed)
        ret = io.ret
        ret.result = result
        ret.callbacks = ((CallbackId.BUFMGR_READV, io),)
        ret.op = IoOp.READV
        ret.nbytes = n * BLCKSZ
        ret.filled = True
        return True

    def _judge_pages(self, problems: list, buf_ids: Sequence[int], block: int, zero: bool,
                     ignore: bool, bad: list[tuple[int, str]], zeroed: list[int],
                     ignored: list[int]) -> None:
        """The one policy for pages a read found damaged (``problems`` from the verifier,
        ``(k, PageVerify)`` for block ``block + k`` in ``buf_ids[k]``): a checksum failure
        is accepted under ``ignore`` (ignore_checksum_failure), else the page is zeroed in
        the pool under ``zero`` (zero_damaged_pages), else it is bad. Appends block numbers
        (and reasons) to the three lists."""
        pages = self.pages
        for k, v in problems:
            if ignore and v.status == PageStatus.BAD_CHECKSUM:
                ignored.append(block + k)
            elif zero:
                pages[buf_ids[k]][:] = ZERO_PAGE
                zeroed.append(block + k)
            else:
                bad.append((block + k, v.reason))

    @staticmethod
    def _read_report(ret: AioReturn, io: _ReadIo) -> None:
        _kind, bad = ret.result.detail
        raise _bad_pages_error(io.rel, io.fork, io.block, len(io.buf_ids), bad)

    # --- extension and dirtying ---------------------------------------------------------------------
    def extend(self, rel: int, fork: int, n: int = 1) -> list[int]:
        """Add ``n`` blocks to the fork: zero-filled on disk, returned as pinned, VALID,
        exclusively locked (all-zero, i.e. new) buffers in block order."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        fork = int(fork)
        key = (rel, fork)
        with self._lock:
            lock = self._extend_locks.get(key)
            if lock is None:
                lock = self._extend_locks[key] = threading.Lock()
        with lock:
            first = self.smgr.nblocks(rel, fork) if self.smgr.exists(rel, fork) else 0
            if first == 0 and not self.smgr.exists(rel, fork):
                self.smgr.create(rel, fork, exist_ok=True)
            self.smgr.zeroextend(rel, fork, first, n)
            out = []
            for k in range(n):
                b, _found = self._pin_block((rel, fork, first + k))
                d = self.descs[b]
                # Claim the buffer's "I/O" (we fill it with zeros) like a reader would: a
                # reader that saw the new size first and is reading this block finishes
                # before the page is initialised, and later readers wait for us, so no
                # read can land on the page after the caller wrote into it.
                while True:
                    with self._lock:
                        if self._start_buffer_io_locked(d, for_input=True, overwrite=True):
                            break
                    self._wait_buffer_io(b)
                self.lock_exclusive(b)   # pinned; its change counter goes odd (invariant 8)
                self.pages[b][:] = ZERO_PAGE
                with self._lock:
                    self._terminate_buffer_io_locked(d, B.VALID, io_pin=False)
                    self._io_done.notify_all()
                out.append(b)
            return out

    def zero_buffer(self, rel: int, fork: int, block: int, image: bytes | None = None) -> int:
        """The buffer of the existing block ``block``, pinned, VALID and exclusively locked,
        its page all zero, without reading the block (PostgreSQL's RBM_ZERO_AND_LOCK:
        recovery overwrites the whole page, from a full-page image or a will_init record,
        so a torn page on disk is never read). A block VALID in the pool is zeroed in its
        buffer; otherwise the buffer's "I/O" is claimed as ``extend`` claims it. With
        ``image`` (``BLCKSZ`` bytes, checked before anything is pinned) the page gets those
        bytes instead of zeros, written once (a full-page image's restore)."""
        if image is not None and len(image) != BLCKSZ:
            raise ValueError(f"zero_buffer: an image of {len(image)} bytes; a page is {BLCKSZ}")
        fork = int(fork)
        b, _found = self._pin_block((rel, fork, block))
        d = self.descs[b]
        words = self._words
        locked = False
        while True:
            with self._lock:
                if d.flags & BM_VALID and not d.flags & BM_IO_IN_PROGRESS:
                    claimed = False
                    break
                if self._start_buffer_io_locked(d, for_input=True, overwrite=True):
                    locked = bool(words.try_exclusive(b))
                    if locked:
                        # The usual miss: the "I/O" is only the page copy below, made under
                        # the exclusive lock (change counter odd: invariant 8) as any change
                        # of a VALID page, so the buffer is VALID at once - no one could
                        # have waited for an I/O claimed and ended in one section.
                        self._terminate_buffer_io_locked(d, B.VALID, io_pin=False)
                    claimed = not locked
                    break
            self._wait_buffer_io(b)
        if not locked and not words.try_exclusive(b):  # (pinned; its change counter goes
            self.lock_exclusive(b)                     # odd: invariant 8)
        self.pages[b][:] = ZERO_PAGE if image is None else image
        if claimed:
            with self._lock:
                self._terminate_buffer_io_locked(d, B.VALID, io_pin=False)
                if self._io_waiters:  # (a Condition's notify costs a few µs even with nobody)
                    self._io_done.notify_all()
        return b

    def block_of(self, buf_id: int) -> tuple[int, int, int]:
        tag = self.descs[buf_id].tag
        assert tag is not None
        return tag

    @contextlib.contextmanager
    def buffer_locked(self, rel: int, fork: int, block: int, *,
                      exclusive: bool = False) -> Iterator[int]:
        """``with bm.buffer_locked(rel, fork, block) as buf:`` the one pin / lock / unlock /
        unpin sequence: the block's buffer is pinned and content-locked (shared, or
        exclusive) inside the block, both released on the way out, errors included."""
        buf = self.read_buffer(rel, fork, block)
        with self.locked(buf, exclusive=exclusive):
            yield buf

    @contextlib.contextmanager
    def locked(self, buf_id: int, *, exclusive: bool = False) -> Iterator[int]:
        """``with bm.locked(buf):`` for a buffer the caller already pinned (a read stream's):
        content-lock it inside the block; on the way out, errors included, unlock it and
        release the caller's pin (the pin is handed over)."""
        try:
            (self.lock_exclusive if exclusive else self.lock_shared)(buf_id)
            try:
                yield buf_id
            finally:
                (self.unlock_exclusive if exclusive else self.unlock_shared)(buf_id)
        finally:
            self.unpin(buf_id)

    def bulk_read_ring(self, pins: int) -> BufferRing | None:
        """A BULKREAD ring for a scan that wants up to ``pins`` buffers pinned at once:
        twice that, at least 256 KiB, at most 16 MiB and an eighth of the pool (the scan
        then pins at most half the ring); None when the pool is too small for one."""
        size = min(max(2 * pins, BULK_READ_RING_MIN), BULK_READ_RING_MAX, self.nbuffers // 8)
        return BufferRing(size) if size >= 2 else None

    def copy_release(self, buf_ids: Sequence[int], out=None):
        """A copy of the pages of ``buf_ids`` (pinned and VALID, e.g. a read stream's run),
        concatenated in order; then every pin is released, errors included (the pins are
        handed over). One call per run of pages. With the C helper the run is copied in one
        call under the change counters (invariant 8: ``slk_seq_copy_pages``), no content
        lock taken; a page whose exclusive lock is held or changed hands meanwhile, and
        every page after it, is copied under shared content locks, taken in the given
        (block) order and held only for the copy (as without the helper).
        Returns new bytes; with ``out`` (a writable buffer of at least ``len(buf_ids) *
        BLCKSZ`` bytes, e.g. a scan's own cffi buffer reused run after run) the pages go
        to its start and ``out`` is returned: no allocation and no zero-fill per run."""
        try:
            n = len(buf_ids)
            if out is not None and len(out) < n * BLCKSZ:
                raise ValueError(f"copy_release: out holds {len(out)} bytes; {n} pages need "
                                 f"{n * BLCKSZ}")
            if self.seq is not None and n:
                fresh = out is None
                if fresh:
                    out = bytes(n * BLCKSZ)  # fresh, unshared, unhashed: filled before it is seen
                k = _lib.slk_seq_copy_pages(self.c_pool, self.seq, self.nbuffers,
                                            _ffi.new("uint32_t[]", buf_ids), n,
                                            _ffi.from_buffer("uint8_t[]", out))
                if k < n and fresh:
                    out = out[:k * BLCKSZ] + self._copy_locked(buf_ids[k:])
                elif k < n:
                    memoryview(out)[k * BLCKSZ:n * BLCKSZ] = self._copy_locked(buf_ids[k:])
            elif out is None:
                out = self._copy_locked(buf_ids)
            else:
                memoryview(out)[:n * BLCKSZ] = self._copy_locked(buf_ids)
        except BaseException:
            self.unpin_many(buf_ids)
            raise
        self.unpin_many(buf_ids, valid=True)  # (a copy of a buffer not VALID raises)
        return out

    def _copy_locked(self, buf_ids: Sequence[int]) -> bytes:
        """The pages of pinned ``buf_ids`` concatenated, each copied under its shared
        content lock (a descriptor is its own lock), all taken in one pass."""
        locks = list(map(self.descs.__getitem__, buf_ids))
        assert all(d.refcount > 0 for d in locks), "a buffer is pinned before it is locked"
        ContentLock.acquire_shared_all(locks)
        try:
            return b"".join(list(map(self.pages.__getitem__, buf_ids)))
        finally:
            ContentLock.release_shared_all(locks)

    def unlock_release(self, buf_id: int, *, exclusive: bool = True) -> None:
        """Unlock a content-locked buffer and drop its pin (PostgreSQL's
        UnlockReleaseBuffer): the end of every pin-and-lock the caller began itself."""
        (self.unlock_exclusive if exclusive else self.unlock_shared)(buf_id)
        self.unpin(buf_id)

    def lock_shared(self, buf_id: int) -> None:
        d = self.descs[buf_id]
        assert d.refcount > 0, "a buffer is pinned before it is locked"
        d.acquire_shared()

    def lock_exclusive(self, buf_id: int) -> None:
        """Its change counter goes odd with the lock, before the page may change
        (invariant 8)."""
        d = self.descs[buf_id]
        assert d.refcount > 0, "a buffer is pinned before it is locked"
        d.acquire_exclusive()

    def unlock_shared(self, buf_id: int) -> None:
        self.descs[buf_id].release_shared()

    def unlock_exclusive(self, buf_id: int) -> None:
        """Its change counter goes even again with the release (invariant 8)."""
        self.descs[buf_id].release_exclusive()

    def seq_of(self, buf_id: int) -> int | None:
        """Buffer ``buf_id``'s change counter (invariant 8; None without the C helper):
        even while nobody holds its exclusive content lock."""
        return None if self.seq is None else int(_lib.slk_seq_get(self.seq, buf_id))

    def mark_dirty(self, buf_id: int) -> None:
        d = self.descs[buf_id]
        assert d.refcount > 0 and d.lock.held_exclusive, \
            "a buffer is pinned and exclusively locked before it is dirtied"
        with self._lock:
            if not d.flags & BM_DIRTY:
                self._set_state_locked(d, B.DIRTY)

    def is_dirty(self, buf_id: int) -> bool:
        return bool(self.descs[buf_id].flags & BM_DIRTY)

    def lock_exclusive_many(self, buf_ids: Sequence[int]) -> None:
        """``lock_exclusive`` of each pinned buffer, in order (distinct buffers). When a
        lock raises (an interrupt), the ones this call took are released before it goes on."""
        descs = self.descs
        done = 0
        try:
            for b in buf_ids:
                d = descs[b]
                assert d.refcount > 0, "a buffer is pinned before it is locked"
                d.acquire_exclusive()
                done += 1
        except BaseException:
            self.unlock_exclusive_many(buf_ids[:done])
            raise

    def unlock_exclusive_many(self, buf_ids: Sequence[int]) -> None:
        """``unlock_exclusive`` of each of the distinct buffers, in one call on the lock
        words (all checked held first)."""
        descs = self.descs
        for b in self._words.release_exclusive_many(buf_ids):
            descs[b]._notify()

    # --- writes --------------------------------------------------------------------------------------
    def _write_victim(self, buf_id: int) -> None:
        """Write one dirty buffer we hold pinned (eviction), in this thread, as PostgreSQL's
        FlushBuffer does (``_write_run_now`` of that one buffer): share lock, claim the
        write (WRITING), WAL flushed up to the page's LSN, checksum set, page verified, one
        ``smgr.writev``, then VALID (or WRITE_FAILED when the write failed, DIRTY again when
        it never ran). A buffer that is clean by then, being written by someone else, or
        content-locked exclusively by someone else, is left alone (the caller re-checks
        it). No AIO handle, callback or wait: through the handles one victim write was
        ~100 us of Python (cProfile of a scan evicting a loaded pool), more than its
        pwritev; counted as a direct SMGR write."""
        self._write_run_now([buf_id])

    def _write_run_now(self, run: list[int]) -> int:
        """Write the dirty buffers of ``run`` (pinned by the caller, of adjacent blocks in
        block order) in this thread: each share lock only tried (as PostgreSQL's
        GetVictimBuffer: the writing thread may hold other content locks — a split's pages —
        that an exclusive holder of one of these waits for; not locked: left dirty), the
        write claimed (WRITING) for those still dirty and not being written elsewhere, all
        in one descriptor-lock section; then per piece of adjacent claimed blocks: WAL
        flushed up to its newest page LSN, checksums set, pages verified (one call), one
        ``smgr.writev``, VALID in one section. Each page is share-locked from its claim
        until its own piece is written. On a failure the failed piece goes to WRITE_FAILED
        (DIRTY when its write never ran), the pieces not yet written back to DIRTY, every
        lock is released and the error raised. Returns how many pages were written."""
        descs = self.descs
        locked = [b for b in run if descs[b].lock.try_shared()]
        if not locked:
            return 0
        claimed: list[int] = []
        try:
            with self._lock:
                start_io = self._start_buffer_io_locked
                for b in locked:
                    if start_io(descs[b], for_input=False):
                        claimed.append(b)
        finally:
            if len(claimed) < len(locked):
                for b in set(locked).difference(claimed):
                    descs[b].lock.release_shared()
        if not claimed:
            return 0
        pieces: list[list[int]] = []
        prev = -2
        for b in claimed:
            block = descs[b].tag[2]
            if block == prev + 1:
                pieces[-1].append(b)
            else:
                pieces.append([b])
            prev = block
        written = 0
        k = 0
        try:
            while k < len(pieces):
                written += self._write_piece_now(pieces[k])
                k += 1
        except BaseException:
            with self._lock:  # the pieces after the failed one never ran
                for piece in pieces[k + 1:]:
                    for b in piece:
                        self._terminate_buffer_io_locked(descs[b], B.DIRTY, io_pin=False)
                self._io_done.notify_all()
            raise
        finally:
            for b in claimed:
                descs[b].lock.release_shared()
        return written

    def _write_piece_now(self, piece: list[int]) -> int:
        """One claimed (WRITING, share-locked) piece of adjacent blocks, written as
        ``_write_run_now`` says; the caller releases the share locks."""
        descs = self.descs
        rel, fork, block = descs[piece[0]].tag
        pages = [self.pages[b] for b in piece]
        n = len(piece)
        ran = False
        t0 = time.perf_counter_ns()
        try:
            lsn = max(map(page_get_lsn, pages))
            if lsn:
                self.flush_wal(lsn)  # WAL before data
            for k, page in enumerate(pages):
                page_set_checksum(page, rel, fork, block + k)
            # Invariant 7: well-formed before written (one call checks the piece).
            malformed = self._verifier.verify(piece, rel, fork, block)
            assert not malformed, (
                f"refusing to write a malformed page: block {block + malformed[0][0]} of "
                f"relation {rel} fork {Fork(fork).label}: {malformed[0][1].reason}")
            ran = True
            self.smgr.writev(rel, fork, block, pages)
        except BaseException:
            with self._lock:
                for b in piece:
                    self._terminate_buffer_io_locked(descs[b], B.WRITE_FAILED if ran else B.DIRTY,
                                                     io_pin=False)
                self._io_done.notify_all()
            raise
        elapsed = time.perf_counter_ns() - t0
        self.aio.count_direct(TargetId.SMGR, IoOp.WRITEV, n * BLCKSZ, elapsed)
        with self._lock:
            for b in piece:
                self._terminate_buffer_io_locked(descs[b], B.VALID, io_pin=False)
            self._writes += n
            self._write_bytes += n * BLCKSZ
            self._write_ios += 1
            self._io_wait_ns += elapsed
            self._io_done.notify_all()
        return n

    # --- the background writer (storage/bgwriter.py) -----------------------------------------
    def start_bgwriter(self, on_failure: Callable[[BaseException], None] | None = None) -> None:
        """Start the background writer (unless ``bgwriter_lru_maxpages`` is 0, or it runs
        already). ``on_failure(exc)`` is called from its thread when a round fails (the
        writer then stops); without it the failure is raised by ``stop_bgwriter``. Start it
        once ``flush_wal`` works (after recovery)."""
        if self.bgwriter_lru_maxpages == 0 or self._bgwriter is not None:
            return
        writer = BgWriter(self, bgwriter_delay_ms=self.bgwriter_delay,
                          bgwriter_lru_maxpages=self.bgwriter_lru_maxpages,
                          on_failure=on_failure)
        writer.start()
        self._bgwriter = writer

    def stop_bgwriter(self) -> None:
        """Stop and join the background writer (its writes in progress complete first);
        raises a failure of its that no ``on_failure`` took. Harmless when not running."""
        writer = self._bgwriter
        if writer is not None:
            writer.stop()

    def bgwriter_stats(self) -> BgWriterStats | None:
        """The background writer's counters (None when it was never started)."""
        return None if self._bgwriter is None else self._bgwriter.stats()

    @property
    def victims_taken(self) -> int:
        """Buffers taken from one block for another so far (the sweep's pace)."""
        return self._evictions

    def dirty_in_clock_order(self) -> tuple[list[int], int, int] | None:
        """(the dirty buffers in the order the clock hand reaches them, the hand, the pool
        size) — the background writer's candidates, read without the descriptor lock (one
        C-level pass over the flags: a stale answer costs a skipped or a useless candidate,
        ``clean_dirty`` re-checks each under the lock); None while never-used buffers are
        left (no victim needs cleaning before the pool is full)."""
        if self._handed_out < self.nbuffers:
            return None
        descs = self.descs
        dirty = list(compress(range(len(descs)), map(BM_DIRTY.__and__, map(_FLAGS, descs))))
        hand = self._hand
        i = bisect_left(dirty, hand)
        return dirty[i:] + dirty[:i], hand, len(descs)

    def clean_dirty(self, buf_ids: Sequence[int]) -> int:
        """Write those of ``buf_ids`` that are dirty, not pinned and not being written (the
        background writer's batch): pinned in one descriptor-lock section, sorted by block,
        adjacent blocks combined (``_adjacent_runs``), each run written by
        ``_write_run_now`` (tried share locks, WAL first, one pwritev), then unpinned.
        Returns how many pages were written; a failure is raised after the pins are
        dropped (the failed pages stay dirty)."""
        descs = self.descs
        pinned: list[tuple[tuple[int, int, int], int]] = []
        with self._lock:
            for b in buf_ids:
                d = descs[b]
                if not d.refcount and d.flags & BM_DIRTY and not d.flags & BM_IO_IN_PROGRESS:
                    d.refcount = 1
                    pinned.append((d.tag, b))
        if not pinned:
            return 0
        pinned.sort()
        written = 0
        try:
            for run in self._adjacent_runs(pinned):
                written += self._write_run_now(run)
        finally:
            self.unpin_many([b for _, b in pinned])
        return written

    def _adjacent_runs(self, pinned: list[tuple[tuple[int, int, int], int]]) -> list[list[int]]:
        """The buffers of ``pinned`` ((tag, buffer) sorted by tag) as runs of adjacent
        blocks of one fork, at most ``io_combine_limit`` long, never across a segment
        boundary."""
        runs: list[list[int]] = []
        prev = None
        limit, segment = self.io_combine_limit, self.smgr.segment_size
        for tag, b in pinned:
            if (runs and prev is not None and tag[:2] == prev[:2] and tag[2] == prev[2] + 1
                    and len(runs[-1]) < limit and tag[2] % segment != 0):
                runs[-1].append(b)
            else:
                runs.append([b])
            prev = tag
        return runs

    def flush_buffer(self, buf_id: int) -> None:
        """Write one pinned buffer if it is dirty, and wait."""
        self._write_runs([[buf_id]], wait=True)

    def flush_all(self, rel: int | None = None) -> int:
        """Write every dirty buffer (of ``rel`` only, when given): sorted by tag, adjacent
        blocks combined into vectored writes up to io_combine_limit, many in flight at once.
        Buffers are pinned a bounded chunk at a time (``FLUSH_CHUNK_BUFFERS``, at most a
        quarter of the pool), so a checkpoint never starves concurrent readers of buffers.
        Returns how many buffers were written."""
        with self._lock:
            dirty = SortedList((d.tag, d.buf_id) for d in self.descs
                               if d.flags & BM_DIRTY and (rel is None or d.tag[0] == rel))
        chunk = max(1, min(FLUSH_CHUNK_BUFFERS, self.nbuffers // 4))
        written = 0
        for start in range(0, len(dirty), chunk):
            pinned = []
            with self._lock:
                for tag, b in dirty[start:start + chunk]:
                    d = self.descs[b]
                    if d.tag == tag and d.flags & BM_DIRTY:  # still that page, still dirty
                        d.refcount += 1
                        pinned.append((tag, b))
            runs = self._adjacent_runs(pinned)
            try:
                written += self._write_runs(runs, wait=True)
                written += self._finish_writes_elsewhere(pinned)
            finally:
                self.unpin_many([b for _, b in pinned])
        return written

    def _finish_writes_elsewhere(self, pinned: list[tuple[tuple[int, int, int], int]]) -> int:
        """``flush_all``'s second look at its pinned (tag, buffer) pairs: a buffer another
        thread was writing (an evicting thread's victim write, a flush_buffer) was skipped
        by the claim, or that write has failed since. Wait for that write — a checkpoint
        fsyncs the files next, and a write that lands after the fsync would not be
        durable at the checkpoint (PostgreSQL's FlushBuffer waits for the I/O in progress
        the same way) — and write the buffer here if it is still dirty (the write
        failed). Returns how many buffers this wrote."""
        busy = [(tag, b) for tag, b in pinned
                if self.descs[b].flags & (BM_IO_IN_PROGRESS | BM_IO_ERROR)]
        for _tag, b in busy:
            self._wait_buffer_io(b)
        again = [[b] for tag, b in busy
                 if self.descs[b].tag == tag and self.descs[b].flags & BM_DIRTY]
        return self._write_runs(again, wait=True) if again else 0

    def _write_runs(self, runs: list[list[int]], *, wait: bool = True) -> int:
        """Write runs of adjacent pinned buffers through AIO and wait; each buffer is
        content-locked shared from before the WAL flush until its write completes.

        Deadlock freedom: a share lock is waited for only while this call holds no other
        content lock (the first buffer of a pass); every later buffer of the pass is only
        tried, and one held exclusively by someone else defers the rest of its run to the
        next pass, which starts after this pass's writes completed (their locks released).
        Holding some buffers shared while waiting for another would deadlock with a writer
        that holds that one exclusively and waits for one of ours (a B+tree split locks
        its pages, then the metapage). Every pass writes at least one buffer or finds
        every remaining one clean, so the passes end."""
        assert wait, "writes are always waited for (a next pass must not wait holding locks)"
        written = 0
        pending = runs
        while pending:
            ios: list[_WriteIo] = []
            deferred: list[list[int]] = []
            held = False
            with self.aio.batch():
                for run in pending:
                    pieces, rest = self._claim_for_write(run, may_wait=not held)
                    for claimed in pieces:
                        ios.append(self._start_write_io(claimed))
                        written += len(claimed)
                        held = True
                    if rest:
                        deferred.append(rest)
            self._wait_writes(ios)
            pending = deferred
        return written

    def _wait_writes(self, ios: list[_WriteIo]) -> None:
        """Wait for every write of ``ios``; raise the first failure after all finished."""
        t0 = time.perf_counter_ns()
        first_error: BaseException | None = None
        for io in ios:
            self.aio.wait(io.ref)
            try:
                io.ret.raise_if_failed()
            except BaseException as exc:
                first_error = first_error or exc
        self._io_wait_ns += time.perf_counter_ns() - t0
        if first_error is not None:
            raise first_error

    def _claim_for_write(self, run: list[int], *, may_wait: bool
                         ) -> tuple[list[list[int]], list[int]]:
        """Content-lock (shared) and claim the write I/O of each dirty buffer in ``run``;
        one not dirty any more, or being written elsewhere, splits the run. Only the first
        buffer may be waited for, and only when ``may_wait`` (no lock held by the caller);
        a buffer held exclusively otherwise ends the claim: returns (claimed pieces, the
        run's unclaimed rest from that buffer on)."""
        pieces: list[list[int]] = [[]]
        for i, b in enumerate(run):
            d = self.descs[b]
            if may_wait and i == 0:
                d.lock.acquire_shared()
            elif not d.lock.try_shared():
                return [p for p in pieces if p], run[i:]
            with self._lock:
                claim = self._start_buffer_io_locked(d, for_input=False)
            if claim:
                pieces[-1].append(b)
            else:
                d.lock.release_shared()
                if pieces[-1]:
                    pieces.append([])
        return [p for p in pieces if p], []

    def _start_write_io(self, claimed: list[int]) -> _WriteIo:
        rel, fork, block = self.descs[claimed[0]].tag
        io = _WriteIo(self, rel, fork, block, claimed)
        io.ret = AioReturn()
        h = None
        try:
            lsn = max(page_get_lsn(self.pages[b]) for b in claimed)
            if lsn:
                self.flush_wal(lsn)  # WAL before data
            for k, b in enumerate(claimed):
                page_set_checksum(self.pages[b], rel, fork, block + k)
            # Invariant 7: well-formed before written (one C call checks the run).
            malformed = self._verifier.verify(claimed, rel, fork, block)
            assert not malformed, (
                f"refusing to write a malformed page: block {block + malformed[0][0]} of "
                f"relation {rel} fork {Fork(fork).label}: {malformed[0][1].reason}")
            views = [self.pages[b] for b in claimed]
            h = self.aio.acquire(io.ret)
            h.add_callback(CallbackId.BUFMGR_WRITEV, io)
            io.ref = h.wait_ref()
            self.smgr.start_writev(h, rel, fork, block, views)
        except BaseException:
            if io.ref is not None and self.aio.done(io.ref):
                raise  # started: the completion released the claims
            if h is not None and h.state == HandleState.HANDED_OUT:
                h.release()
            with self._lock:  # never started: give the claims and locks back
                for b in claimed:
                    self._terminate_buffer_io_locked(self.descs[b], B.DIRTY, io_pin=False)
                self._io_done.notify_all()
            for b in claimed:
                self.descs[b].lock.release_shared()
            raise
        return io

    def _write_stage(self, h: Handle, io: _WriteIo) -> None:
        ref = WaitRef(h.index, h.generation)
        with self._lock:
            for b in io.buf_ids:
                d = self.descs[b]
                d.refcount += 1
                d.io_wref = ref
            self._writes += len(io.buf_ids)
            self._write_bytes += len(io.buf_ids) * BLCKSZ
            self._write_ios += 1

    def _write_complete(self, h: Handle, prior: AioResult, io: _WriteIo) -> AioResult:
        done = prior.result if prior.status in (OK, PARTIAL) else 0
        with self._lock:
            for k, b in enumerate(io.buf_ids):
                self._terminate_buffer_io_locked(
                    self.descs[b], B.VALID if k < done else B.WRITE_FAILED, io_pin=True)
            self._io_done.notify_all()
        for b in io.buf_ids:
            self.descs[b].lock.release_shared()
        return prior

    # --- relation-level maintenance ------------------------------------------------------------------
    def drop_relation_buffers(self, rel: int, fork: int | None = None, from_block: int = 0) -> None:
        """Forget buffers of ``rel`` (``fork``, blocks >= from_block) without writing them
        (the relation is being truncated or dropped). They must not be pinned."""
        with self._lock:
            for d in self.descs:
                t = d.tag
                if t is None or t[0] != rel or (fork is not None and t[1] != fork) or t[2] < from_block:
                    continue
                assert d.refcount == 0, f"dropping pinned buffer of {describe(*t)}"
                del self._table[t]
                self._set_state_locked(d, B.FREE)
                d.tag = None
                d.usage_count = 0

    def stats(self) -> BufferStats:
        return BufferStats(self.aio.method.name, self.nbuffers, self._hits, self._reads,
                           self._read_bytes, self._read_ios, self._writes, self._write_bytes,
                           self._write_ios, self._evictions, self._io_wait_ns, self._zeroed,
                           self._ignored)

    def check(self, *, quiescent: bool = True) -> None:
        """Whole-structure check (tests, after each step): the table and the descriptors
        agree and every descriptor holds a legal ``BufferState``. With ``quiescent`` (no
        caller holds a buffer and no I/O is in flight, as at the end of a statement) it
        also finds leaked pins, buffers stuck in IO_IN_PROGRESS and content locks left
        held. Raises AssertionError listing every problem found."""
        problems = []
        with self._lock:
            for tag, b in self._table.items():
                d = self.descs[b]
                if d.tag != tag or not d.flags & BM_TAG_VALID:
                    problems.append(f"table entry {tag} -> buffer {b} is stale")
            tagged = sum(1 for d in self.descs if d.flags & BM_TAG_VALID)
            if tagged != len(self._table):
                problems.append(f"{tagged} descriptors have a tag, the table holds "
                                f"{len(self._table)}")
            for d in self.descs:
                where = f"buffer {d.buf_id} ({describe(*d.tag) if d.tag else 'no tag'})"
                if d.flags not in _STATE_VALUES:
                    problems.append(f"{where} has flags {d.flags:#x}, no BufferState")
                if d.refcount < 0:
                    problems.append(f"{where} has pin count {d.refcount}")
                if not quiescent:
                    continue
                if d.refcount:
                    problems.append(f"{where} is still pinned ({d.refcount} pins): leaked")
                if d.flags & BM_IO_IN_PROGRESS:
                    problems.append(f"{where} is stuck in IO_IN_PROGRESS "
                                    f"({'no I/O owns it' if d.io_wref is None else d.io_wref})")
                if d.lock.held:
                    problems.append(f"{where} still has its content lock held")
                if self.seq is not None and self.seq[d.buf_id] & 1:
                    problems.append(f"{where} has an odd change counter "
                                    f"({self.seq[d.buf_id]}) with no exclusive holder")
        assert not problems, "buffer manager check failed:\n" + "\n".join(problems)



def _bad_pages_error(rel: int, fork: int, block: int, nblocks: int,
                     bad: list[tuple[int, str]]) -> DataCorruptionError:
    """The error of a read of blocks ``block..+nblocks-1`` that found the ``bad`` pages
    ((block, reason), in block order), naming relation, fork and the first bad block."""
    first_block, reason = bad[0]
    rel_desc = f"relation {rel} fork {Fork(fork).label}"
    if len(bad) == 1:
        msg = f"invalid page in block {first_block} of {rel_desc}: {reason}"
    else:
        msg = (f"{len(bad)} invalid pages among blocks {block}..{block + nblocks - 1} "
               f"of {rel_desc}; block {first_block} held the first: {reason}")
    return DataCorruptionError(msg, relation=rel, fork=fork, block=first_block)


def _warn_damaged(rel: int, fork: int, zeroed: list[int], ignored: list[int]) -> None:
    """The warnings of a read whose damaged pages were zeroed or accepted."""
    rel_desc = f"relation {rel} fork {Fork(fork).label}"
    if zeroed:
        warnings.warn(f"invalid page in block(s) {zeroed} of {rel_desc}; "
                      "zeroing out page (zero_damaged_pages)", DamagedPageWarning, stacklevel=3)
    if ignored:
        warnings.warn(f"ignoring checksum failure in block(s) {ignored} of "
                      f"{rel_desc} (ignore_checksum_failure)", DamagedPageWarning, stacklevel=3)


def _illegal(d: BufferDesc, new: int) -> str:
    """The assertion message for a transition ``LEGAL_TRANSITIONS`` does not allow."""
    try:
        old_name = BufferState(d.flags).name
    except ValueError:
        old_name = f"flags {d.flags:#x} (no BufferState)"
    return (f"illegal buffer state transition {old_name} -> {BufferState(new).name} "
            f"(buffer {d.buf_id}, {describe(*d.tag) if d.tag else 'no tag'})")
