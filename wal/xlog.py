"""The WAL writer: insert records into WAL buffers, flush them durably with group commit.

Insertion encodes a record, reserves its place in the stream and copies it into the WAL
buffers (a ring of ``wal_buffers`` pages in one page-aligned mapping) under one short lock.
(In CPython a separate copy phase outside the lock would add a second lock hop costing more
than the memcpy it could overlap, so reservation and copy share the lock.)

A flush writes every complete or partial page between the flushed position and the insert
position (one vectored write per segment piece) and makes them durable with fdatasync — or
by opening segments O_DIRECT|O_DSYNC when ``io_direct`` includes wal (``o_direct``: segments
opened O_DIRECT, each write still followed by fdatasync — the engine's default on ext4 and
xfs, ``direct_wal_writes_ok``). How the I/O reaches
the kernel is the flush path (``flush_path_for``): by default the flushing thread makes
the system calls itself on every real io method (no AIO handles: the flusher waits at
once, as PostgreSQL 18 writes WAL synchronously on every method); ``FLUSH_RING`` sends
the writes linked to the syncs as one chain on a small io_uring of the Wal's own,
submitted and waited for in one io_uring_enter; any other method object goes through AIO
handles (target "wal"). One
flush at a time: threads asking for a flush that another thread's flush already covers
return without I/O (group commit, counted).

Invariants:
1. Bytes in [flush_lsn, insert_lsn) are only in the WAL buffers; the ring never holds more
   than ``wal_buffers`` pages, so an inserter that would overrun it flushes first. Every
   write is followed by a sync before the flush position moves, and one flush runs at a
   time: a flush starts only after the previous one's sync returned. A flush ends at a
   record boundary (the insert position when it began).
2. A full-page image is taken for every block whose page LSN is at or before the redo
   point; the redo point only moves under the insert lock.
3. A failed WAL write or sync makes this Wal unusable: every later insert or flush raises
   WalError. An fsync is never retried (the kernel may have dropped the dirty pages). The
   flush that failed raises WalDiskFullError (a WalError and a DiskFullError) when the disk
   was full (ENOSPC, or a write that made no progress), WalError otherwise; so do the
   later calls refused for it (whichever thread's flush, the WAL writer's say, met the
   full disk first, a commit failing for it gets a DiskFullError).
4. New segment files are zero-filled and their directory synced before WAL is written
   into them; old segments are recycled by renaming them to future names. So a WAL
   fdatasync never has to change file metadata. ``prepare_segments`` (the WAL writer
   thread calls it every round) makes the ``WAL_SEGMENTS_PREPARED_AHEAD`` segments after
   the insert position ready off the commit path; a flush that reaches a segment that is
   not ready yet creates it inline (bounded: one segment's zero-fill and a directory
   fsync), counted in ``segments_created_inline``. Segment files are created, recycled and
   renamed only under ``_segment_lock`` (taken after ``_flush_lock`` where both are held).
6. Group commit: one flush (the leader's) carries everything inserted before it started;
   requesters arriving meanwhile queue with the LSN they need. When a flush ends, the
   leader wakes exactly the queued requesters it covered, plus at most one that it did
   not (the next leader, who flushes everything inserted during the previous write): no
   thundering herd. With ``commit_delay`` > 0 and at least ``commit_siblings`` other
   transactions active (PostgreSQL's settings and meaning, off by default: transactions in
   progress plus committers waiting for their flush, as a PostgreSQL backend stays active
   until its commit record is flushed) a leader sleeps ``commit_delay`` µs before taking
   its target, so more commits share the sync. Where the C helpers are built, the
   syscalls path runs this protocol in C (``GroupFlush``: leader, queue and write+sync
   without the GIL); there a requester passes the insert position it saw, and a leader's
   target is the highest one shown so far (a record inserted but not yet asked for may
   wait for the next flush). A flush the C path cannot take (across segments; any flush
   while a test's OS layer is installed) is handed to the requester as a Python leader.
5. The flush stamp (walpage invariant 4): a flush stamps every page it writes with
   ``flush_lsn`` as it was when the flush began — the durable end of the previous flush —
   just before writing it. Everything below a stamp found on disk was therefore durable;
   recovery uses this to tell a torn tail (only the last flush's bytes can be torn) from
   corruption in the middle of the log, whatever the size of the WAL.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from slonik.aio import osfile
from slonik.aio.core import Aio, DirectRows
from slonik.aio.errors import DiskFullError, IoMethodUnavailable, io_error
from slonik.aio.handle import AioReturn, HandleFlag, IoOp
from slonik.aio.ids import TargetId
from slonik.aio.memory import aligned_buffer
from slonik.aio.method import IoMethod
from slonik.aio.method_io_uring import FLUSH_RING_ENTRIES, FlushRing, IoUringMethod
from slonik.aio.method_sync import SyncMethod
from slonik.aio.method_worker import WorkerMethod
from slonik.aio.osfile import OsLayer
from slonik.aio.transfer import short_transfer_error
from slonik.wal.errors import WalDiskFullError, WalError
from slonik.wal.record import (
    MAX_BLOCK_REFS,
    MAX_RECORD_SIZE_BYTES,
    RECORD_HEADER_SIZE,
    BlockRef,
    encode_fields,
    plain_block_header,
)
from slonik.wal.walpage import (
    PAGE_HEADER_SIZE,
    WAL_PAGE_SIZE,
    align_lsn,
    check_segment_size,
    encode_page_header,
    format_lsn,
    parse_segment_file_name,
    segment_file_name,
    stamp_page_header,
    usable_lsn,
)

WAL_TARGET_ID = TargetId.WAL  # data (path, open_flags, offset); see aio/ids.py
WAL_BUFFERS_MIN_PAGES = 8            # 64 KiB: two full-page images plus slack; bigger
                                     # records than the ring can hold are refused
WAL_BUFFERS_MAX_PAGES = 65536        # 512 MiB of buffers: more buys nothing here
WAL_BUFFERS_DEFAULT_PAGES = 512      # 4 MiB: PostgreSQL's 1/32 of the default shared_buffers
ZERO_FILL_CHUNK_BYTES = 1 << 20      # segment pre-allocation writes this much per call
RECYCLED_SEGMENTS_MAX = 4            # spare segments kept for reuse instead of unlinking
ERROR_CHAIN_MAX_LINKS = 8            # causes looked through for ENOSPC (they nest 2-3 deep)
WAL_SEGMENTS_PREPARED_AHEAD = 1      # segments kept ready after the one being inserted into
COMMIT_DELAY_RANGE_US = (0, 100000)  # PostgreSQL's commit_delay range; 0 = off (default)
COMMIT_SIBLINGS_RANGE = (1, 1000)    # PostgreSQL's commit_siblings range
COMMIT_SIBLINGS_DEFAULT = 5          # PostgreSQL's default
SEGMENT_PATHS_CACHED = 64            # segment file paths kept (a few are in use at a time)
PLAIN_BLOCK_REFS_CACHED = 4096       # image-less block references kept for reuse (a frozen
                                     # dataclass costs ~1 us to build; two per B+tree write)
_ZERO_PAGE = bytes(WAL_PAGE_SIZE)

# How a flush reaches the kernel (Wal._write_and_sync): Wal(flush_path=...), by default
# chosen by the io method's exact type (flush_path_for).
FLUSH_SYSCALLS = "syscalls"  # pwritev + fdatasync in the flushing thread, through osfile
FLUSH_RING = "ring"          # one linked write+fdatasync chain on the Wal's own io_uring
FLUSH_AIO = "aio"            # AIO handles through the io method
FLUSH_PATHS = (FLUSH_SYSCALLS, FLUSH_RING, FLUSH_AIO)


# File systems whose O_DIRECT writes of WAL pages are safe while inserters may still be
# appending past the flush target on the page being written (no data checksums computed
# before the device reads the buffer), as /proc/self/mountinfo names them.
DIRECT_WAL_FILE_SYSTEMS = ("ext4", "xfs")
MOUNTINFO = "/proc/self/mountinfo"


def file_system_type(path: str) -> str | None:
    """The type of the file system ``path`` is on (the mount with the longest mount point
    above it, /proc/self/mountinfo), or None where that cannot be read."""
    real = os.path.realpath(path)
    best, kind = -1, None
    try:
        with open(MOUNTINFO) as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, PermissionError):   # no procfs here: nothing to go by
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = fields[4].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), right.split()[0]
    return kind


def direct_wal_writes_ok(wal_dir: str) -> bool:
    """Whether the default ``io_direct="auto"`` opens ``wal_dir``'s segments O_DIRECT: on
    the file systems of ``DIRECT_WAL_FILE_SYSTEMS`` only (tmpfs refuses O_DIRECT; btrfs
    checksums a buffer the device then reads, and an inserter may change bytes of it
    past the flush target)."""
    return file_system_type(wal_dir) in DIRECT_WAL_FILE_SYSTEMS


def flush_path_for(method: IoMethod) -> str:
    """The default flush path for ``method``: system calls in the flushing thread for the
    three real methods, AIO handles for any other method object (a test's fault-injecting
    wrapper, so that its hooks see every WAL I/O).

    The flusher waits for its I/O at once, so nothing is gained by handing it to a worker
    or a ring (PostgreSQL 18, too, writes WAL synchronously on every io_method); the AIO
    handle bookkeeping cost ~40 us of Python per commit. io_uring included: its fdatasync
    always runs in a kernel io-wq worker, and the hop measured slower than the system call
    here (one thread, A/B in one process: flush 204 vs 186 us; eight threads on two busy
    cores: 1,024 vs 573 us, 3,372 vs 5,458 puts/s). FLUSH_RING stays available, chosen
    explicitly (``Wal(flush_path=FLUSH_RING)``), for machines where the ring wins."""
    kind = type(method)
    if kind is SyncMethod or kind is WorkerMethod or kind is IoUringMethod:
        return FLUSH_SYSCALLS
    return FLUSH_AIO


class BlockSpec(NamedTuple):
    """What an inserter says about a block its record changes (a NamedTuple: one is made
    per logged block, an autocommit put's among them, and a tuple's construction is one
    C call where a dataclass __init__ runs a line per field)."""

    rel: int
    fork: int
    block: int
    page: memoryview | None = None    # the buffer's page, exclusive-locked by the caller
    page_lsn: int = 0                 # the page's LSN before this change
    will_init: bool = False           # redo re-initialises the page: never an image
    hole: tuple[int, int] = (0, 0)    # (offset, end) of the page's free hole, not logged


class RecordWriters(NamedTuple):
    """What ``Wal(record_writer_for=f)`` gets from ``f(ring, npages, wal_segment_size)``:
    writers of image-less records straight into the WAL buffers ``ring`` (engine/
    wal_build.py's C ones; without them every record takes encode_fields + copy_in).

    ``in_page(at, xid, prev_lsn, rmgr, info, block_headers, nblocks, payload, plen)``
    writes encode_fields' record at byte ``at`` of the ring (it fits in its page) and
    returns its length. ``crossing(cur, xid, prev_lsn, rmgr, info, block_headers,
    nblocks, payload, plen)`` writes what ``copy_in(ring, npages, wal_segment_size, cur,
    encode_fields(...))`` would and returns the stream position after the record. Both
    raise OverflowError/TypeError, writing nothing, for a field they cannot take.

    ``put_pair(page, key, keylen, value, vlen, xid, at, room, cur, prev, redo,
    block_header, rmgr, info, rmgr2, info2, payload2, plen2)`` (None: not built) is
    ``Wal.insert_put_pair``'s writer: an autocommit put of a new key made on its B+tree
    leaf ``page`` and logged in one call, what ``insert_pair`` logs after the leaf's own
    ``put_new`` (storage/_pagecheck_build.py ``slk_bt_put_logged``). It returns the first
    record's length + (the second's << 16), or 0 or -1 having changed and written nothing."""

    in_page: Callable[..., int]
    crossing: Callable[..., int] | None
    put_pair: Callable[..., int] | None = None


class GroupFlush(NamedTuple):
    """What ``Wal(group_flush_for=f)`` gets from ``f(ring, npages, wal_segment_size,
    flush_lsn, o_dsync)``: group commit with the whole flush of the syscalls path in C
    (engine/wal_build.py), so that neither the leader nor a waiting committer holds the
    GIL between asking for a flush and learning it is durable; under contention a flusher
    thread of the C state writes the flushes that follow one another (none for a lone
    committer). ``Wal.flush``'s Python leader/waiter queue is its reference; the two write
    the same bytes.

    ``flush(lsn, insert_lsn, active, handback, out)``: 0, durable up to ``lsn``
    (``out[0]``: the flush position; ``out[1]``: 1 if this call's own flush wrote it,
    ``out[2..5]``: its bytes, pages, write ns and sync ns); 1, the caller leads a flush of
    ``[out[0], out[1])`` itself (one the C path does not take: across segments, into a
    segment it has no fd for, or any with ``handback``) and ends it with ``done``; -1,
    the WAL failed (``out[1]``: 1 if this call's flush failed, ``out[0]`` its target;
    ``stats()`` names the failure); -2, closed. ``done(target, ok, fd, segno)``;
    ``close()`` waits for a flush in progress and takes no more; ``set_delay(us,
    siblings)``; ``stats()``: the counters, ``GF_*`` indexes; ``new_out()``: a fresh
    ``out``; ``set_placement(commit_cpu, flush_cpu)``: commit placement (wal/placement.py)
    on, or off with -1s (close turns it off); 1 if it is on."""

    flush: Callable[..., int]
    done: Callable[..., None]
    close: Callable[[], None]
    set_delay: Callable[[int, int], None]
    stats: Callable[[], list[int]]
    new_out: Callable[[], object]
    set_placement: Callable[[int, int], int]


# GroupFlush.stats() indexes (the C state's counters and its failure)
(GF_REQUESTS, GF_FLUSHES, GF_JOINS, GF_WRITES, GF_WRITE_BYTES, GF_SYNCS, GF_STAMPED,
 GF_FLUSH_NS, GF_WRITE_NS, GF_SYNC_NS, GF_DELAYS, GF_FAIL_KIND, GF_FAIL_ERRNO, GF_FAIL_SEGNO,
 GF_FAIL_OFFSET, GF_FAIL_GOT, GF_FAIL_WANT, GF_FLUSHED) = range(18)
GF_FAIL_WRITE, GF_FAIL_SHORT, GF_FAIL_SYNC, GF_FAIL_CALLER = 1, 2, 3, 4


def copy_in(ring, npages: int, wal_segment_size: int, cur: int,
            data: bytes) -> tuple[int, int]:
    """Copy the record ``data`` into the WAL buffers ``ring`` (a writable buffer of
    ``npages`` WAL pages) at stream position ``cur``, initialising each page it enters:
    zeroed, with its page header (stamped 0: it proves nothing until the flush that writes
    the page stamps it; the record's remaining length on a continuation page). Returns the
    record's (start, end) LSN. The reference of the C writer's crossing path."""
    n = len(data)
    off = cur % WAL_PAGE_SIZE
    if off and n <= WAL_PAGE_SIZE - off:  # the usual record: inside the current page
        at = ((cur // WAL_PAGE_SIZE) % npages) * WAL_PAGE_SIZE + off
        ring[at:at + n] = data
        return cur, cur + n
    pos = cur
    i = 0
    start = usable_lsn(cur)
    while True:
        off = pos % WAL_PAGE_SIZE
        slot = ((pos // WAL_PAGE_SIZE) % npages) * WAL_PAGE_SIZE
        if off == 0:
            ring[slot:slot + WAL_PAGE_SIZE] = _ZERO_PAGE
            ring[slot:slot + PAGE_HEADER_SIZE] = encode_page_header(
                pos, n - i if i else 0, wal_segment_size, 0)
            off = PAGE_HEADER_SIZE
            pos += PAGE_HEADER_SIZE
        take = min(WAL_PAGE_SIZE - off, n - i)
        ring[slot + off:slot + off + take] = data[i:i + take]
        i += take
        pos += take
        if i == n:
            return start, pos


@dataclass(frozen=True)
class WalStats:
    insert_lsn: int
    flush_lsn: int
    redo_lsn: int
    records: int
    record_bytes: int
    full_page_images: int
    flush_requests: int     # flush() calls that had to wait for WAL to become durable
    flushes: int            # write + sync cycles actually done
    group_joins: int        # requests satisfied by another thread's flush (group commit)
    writes: int             # vectored WAL writes issued
    write_bytes: int
    syncs: int              # fdatasync calls (0 with O_DSYNC)
    buffer_full_flushes: int  # flushes forced because the ring was full
    segments_created: int
    segments_recycled: int
    sync_ns: int            # time spent writing and syncing
    pages_stamped: int = 0  # page headers stamped with the previous flush's end
    linked_flushes: int = 0  # flushes sent as one linked submission (io_uring)
    segments_prepared: int = 0        # segments made ready ahead, off the commit path
    segments_created_inline: int = 0  # segments a flush had to create itself
    commit_delays: int = 0            # leader flushes that slept commit_delay first


def check_int_setting(name: str, value: object, bounds: tuple[int, int], unit: str = "") -> int:
    """Validate an int setting of this layer: TypeError for a non-int (bools included),
    ValueError outside ``bounds`` (inclusive); both name the setting, range and unit."""
    lo, hi = bounds
    unit = f" {unit}" if unit else ""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int in {lo}..{hi}{unit}, not "
                        f"{type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}{unit}, got {value}")
    return value


def check_commit_delay(value: object) -> int:
    """Validate ``commit_delay`` (microseconds; 0 turns it off)."""
    return check_int_setting("commit_delay", value, COMMIT_DELAY_RANGE_US, "microseconds")


def check_commit_siblings(value: object) -> int:
    """Validate ``commit_siblings`` (other active transactions needed for the delay)."""
    return check_int_setting("commit_siblings", value, COMMIT_SIBLINGS_RANGE)


def _check_wal_buffers(pages: object) -> int:
    need = WAL_BUFFERS_MIN_PAGES
    if (not isinstance(pages, int) or isinstance(pages, bool)
            or not need <= pages <= WAL_BUFFERS_MAX_PAGES):
        raise ValueError(f"wal_buffers must be an int in {need}..{WAL_BUFFERS_MAX_PAGES} "
                         f"(pages of {WAL_PAGE_SIZE} bytes), got {pages!r}")
    return pages


class Wal:
    """See the module docstring. Thread-safe."""

    def __init__(self, wal_dir: str, aio: Aio, *, wal_segment_size: int,
                 wal_buffers: int = WAL_BUFFERS_DEFAULT_PAGES, io_direct: bool = False,
                 o_direct: bool = False,
                 full_page_writes: bool = True, start_lsn: int | None = None,
                 prev_lsn: int = 0, redo_lsn: int = 0,
                 on_segment_switch: Callable[[], None] | None = None,
                 flush_path: str | None = None,
                 record_writer_for: Callable[[object, int, int], RecordWriters] | None = None,
                 group_flush_for: Callable[..., GroupFlush] | None = None,
                 ) -> None:
        self.wal_dir = wal_dir
        self.aio = aio
        self.wal_segment_size = check_segment_size(wal_segment_size)
        self.npages = _check_wal_buffers(wal_buffers)
        self.wal_buffers_bytes = self.npages * WAL_PAGE_SIZE
        self.io_direct = bool(io_direct)
        self.o_direct = bool(io_direct or o_direct)   # segments opened O_DIRECT
        self.full_page_writes = bool(full_page_writes)
        self.on_segment_switch = on_segment_switch
        if start_lsn is None:
            start_lsn = self.wal_segment_size  # a fresh stream starts at segment 1
        if start_lsn < self.wal_segment_size:
            raise ValueError(f"start_lsn {format_lsn(start_lsn)} lies before the WAL stream")
        self._ring = aligned_buffer(self.wal_buffers_bytes)
        self._ringv = memoryview(self._ring)
        self._insert_lock = threading.Lock()
        self._flush_lock = threading.Lock()       # held while WAL is written and synced
        self._flush_state = threading.Lock()  # guards _flushing and _waiters
        self._flushing = False
        # (LSN needed, its wake-up): a thread's wake-up is a plain lock it holds while not
        # woken; the leader wakes it by releasing it (no Condition, no per-wait allocation).
        self._waiters: list[list] = []    # [lsn, wake-up lock, released as covered]
        self._wake = threading.local()     # each thread's reusable wake-up lock
        self._commit_delay_us = 0
        self._commit_siblings = COMMIT_SIBLINGS_DEFAULT
        self._active_transactions: Callable[[], int] | None = None
        self._delays = 0
        self._queued = 0                   # requesters waiting for another's flush
        self._paths: dict[int, str] = {}   # segno -> segment file path
        self._plain_refs: dict[tuple, BlockRef] = {}  # see PLAIN_BLOCK_REFS_CACHED
        self._plain_hdrs: dict[tuple, bytes] = {}     # the same, packed (record writer)
        # Write an image-less record straight into the ring (C), or None: one that fits in
        # its page (_writer), one that crosses pages (_spanner).
        writers = (record_writer_for(self._ring, self.npages, self.wal_segment_size)
                   if record_writer_for else None)
        self._writer = writers.in_page if writers is not None else None
        self._put_pair = writers.put_pair if writers is not None else None
        # insert_put_pair's ring bound: insert_pair's (the ring's bytes from the flushed
        # page's start, less two page headers)
        self._ring_room = self.wal_buffers_bytes - 2 * PAGE_HEADER_SIZE
        self._spanner = writers.crossing if writers is not None else None
        self._cur = align_lsn(start_lsn)   # next insert position (may be a page start)
        self._prev = prev_lsn              # start of the last inserted record
        self._flushed = start_lsn          # durable up to here
        self._redo = redo_lsn
        self._failed: BaseException | None = None
        self._fail_lock = threading.Lock()   # records _failed once (_record_failure)
        # Whether a WAL write or sync failed (set with _failed, never cleared): a plain
        # attribute, not a property, since every store call reads it (Database's open check).
        self.failed = False
        self._fds: dict[int, int] = {}     # segno -> fd of segment files in use
        self._closed = False
        self._flags = os.O_RDWR | (os.O_DIRECT if self.o_direct else 0) \
            | (os.O_DSYNC if self.io_direct else 0)
        if flush_path is None:
            flush_path = flush_path_for(aio.method)
        elif flush_path not in FLUSH_PATHS:
            raise ValueError(f"flush_path must be one of {', '.join(FLUSH_PATHS)}, "
                             f"got {flush_path!r}")
        self._flush_path = flush_path
        self._flush_ring: FlushRing | None = None  # made by the first ring flush
        self._ring_addr = 0                        # address of the WAL buffers (ring path)
        self._records = self._record_bytes = self._fpis = 0
        self._flush_requests = self._flushes = self._joins = self._writes = 0
        self._write_bytes = self._syncs = self._full_flushes = 0
        self._created = self._recycled = self._sync_ns = 0
        self._stamped = 0                  # page headers stamped by flushes
        self._linked = 0                   # flushes sent as one linked submission
        self._segment_lock = threading.Lock()  # creating, recycling, renaming segment files
        self._prepared = self._inline = 0
        self._ready_through = 0            # segments up to here are known to exist
        self._last_seg = self._cur // self.wal_segment_size
        if start_lsn % WAL_PAGE_SIZE:
            self._load_partial_page(start_lsn)
        # The flush in C (GroupFlush) where the flush is system calls in the flusher
        self._group: GroupFlush | None = None
        self._placement: tuple[int, int] | None = None
        if group_flush_for is not None and flush_path == FLUSH_SYSCALLS:
            self._group = group_flush_for(self._ring, self.npages, self.wal_segment_size,
                                          start_lsn, self.io_direct)
            aio.add_direct_source(self._group_io)

    def _group_io(self) -> DirectRows:
        """The C group commit's writes and syncs as aio.stats() rows (its running totals:
        a flush in C counts nothing in Python)."""
        c = self._group.stats()
        rows = [((TargetId.WAL, IoOp.WRITEV), c[GF_WRITES], c[GF_WRITE_BYTES], c[GF_WRITE_NS])]
        if c[GF_SYNCS]:
            rows.append(((TargetId.WAL, IoOp.FDATASYNC), c[GF_SYNCS], 0, c[GF_SYNC_NS]))
        return rows

    # --- positions ------------------------------------------------------------------------------
    @property
    def insert_lsn(self) -> int:
        """Where the next record will start (a page start counts as its first usable byte)."""
        return usable_lsn(self._cur)

    @property
    def flush_lsn(self) -> int:
        return self._flushed

    @property
    def redo_lsn(self) -> int:
        return self._redo

    def set_commit_delay(self, commit_delay_us: int, commit_siblings: int = COMMIT_SIBLINGS_DEFAULT,
                         active_transactions: Callable[[], int] | None = None) -> None:
        """PostgreSQL's ``commit_delay``/``commit_siblings`` (invariant 6):
        ``active_transactions()`` counts the transactions in progress (a committer
        waiting for its flush has ended its transaction; the Wal adds those itself);
        without it only waiting committers count."""
        self._commit_delay_us = check_commit_delay(commit_delay_us)
        self._commit_siblings = check_commit_siblings(commit_siblings)
        self._active_transactions = active_transactions
        if self._group is not None:
            self._group.set_delay(self._commit_delay_us, self._commit_siblings)

    def set_commit_placement(self, cpus: tuple[int, int] | None) -> None:
        """Commit placement (wal/placement.py): ``(commit_cpu, flush_cpu)`` binds the
        committers that wait in the group commit to ``commit_cpu`` and its flusher to
        ``flush_cpu``; None turns it off. Only the flush in C places threads (without it
        placement stays off), and all its states share one commit CPU: another Wal of
        the process that placed its committers elsewhere stays off (``commit_placement``
        says which)."""
        if cpus is not None and (len(cpus) != 2 or cpus[0] == cpus[1]
                                 or min(cpus) < 0):
            raise ValueError(f"commit placement must be two different CPUs, got {cpus!r}")
        on = self._group is not None and bool(
            self._group.set_placement(*(cpus if cpus is not None else (-1, -1))))
        self._placement = cpus if on else None

    @property
    def commit_placement(self) -> tuple[int, int] | None:
        """``(commit_cpu, flush_cpu)`` while commit placement is on, else None."""
        return self._placement

    def begin_checkpoint(self) -> int:
        """Move the redo point to the current insert position and return it. Pages first
        changed after this get a full-page image again."""
        with self._insert_lock:
            self._redo = usable_lsn(self._cur)
            return self._redo

    # --- insertion -------------------------------------------------------------------------------
    def insert(self, rmgr: int, info: int, xid: int, payload: bytes = b"",
               blocks: Sequence[BlockSpec] = ()) -> tuple[int, int]:
        """Append one record; returns its (start, end) LSN. The caller sets the LSN of every
        page it changed to ``end`` and marks those buffers dirty."""
        if self._failed is not None or self._closed:
            self._check_usable()
        writer = self._writer
        if writer is not None and len(blocks) <= MAX_BLOCK_REFS and type(payload) is bytes:
            with self._insert_lock:
                cur = self._cur
                off = cur % WAL_PAGE_SIZE
                hdrs = self._plain_headers(blocks, self._redo) if blocks else b""
                n = RECORD_HEADER_SIZE + len(payload) + (WAL_PAGE_SIZE if hdrs is None
                                                         else len(hdrs))
                # A record that fits in the current page, image-less, with room in the
                # ring (the general path's bound for a record that crosses no page).
                if (off and n <= WAL_PAGE_SIZE - off
                        and cur + n + 2 * PAGE_HEADER_SIZE
                        <= self._flushed - self._flushed % WAL_PAGE_SIZE
                        + self.wal_buffers_bytes):
                    try:
                        writer(((cur // WAL_PAGE_SIZE) % self.npages) * WAL_PAGE_SIZE + off,
                               xid, self._prev, rmgr, info, hdrs, len(blocks), payload,
                               len(payload))
                    except (OverflowError, TypeError):
                        hdrs = None   # a field out of range: the general path names it
                    else:
                        self._prev = cur
                        end = cur + n
                        self._cur = align_lsn(end)
                        self._records += 1
                        self._record_bytes += n
                        return cur, end
                got: tuple | None = ()
                if hdrs is not None and self._spanner is not None:
                    got = self._cross_locked(rmgr, info, xid, payload, hdrs, len(blocks))
            if got:
                start, end, seg_switch = got
                if seg_switch and self.on_segment_switch is not None:
                    self.on_segment_switch()
                return start, end
            if got is None:   # the ring is full
                done = self._insert_crossing(rmgr, info, xid, payload, blocks)
                if done is not None:
                    return done
        while True:
            with self._insert_lock:
                redo = self._redo
                refs = tuple([self._block_ref(b, redo) for b in blocks]) if blocks else ()
                data = encode_fields(rmgr, info, xid, payload, refs, self._prev)
                if len(data) > self.wal_buffers_bytes - 3 * WAL_PAGE_SIZE:
                    raise ValueError(f"a WAL record of {len(data)} bytes does not fit in "
                                     f"wal_buffers ({self.npages} pages); raise wal_buffers")
                cur = self._cur
                end_bound = cur + len(data) + (len(data) // (WAL_PAGE_SIZE - PAGE_HEADER_SIZE) + 2) \
                    * PAGE_HEADER_SIZE
                # The slot of the page holding the flush position is still being written.
                if end_bound <= self._flushed - self._flushed % WAL_PAGE_SIZE + self.wal_buffers_bytes:
                    start, end = self._copy_in(cur, data)
                    self._prev = start
                    self._cur = align_lsn(end)
                    self._records += 1
                    self._record_bytes += len(data)
                    if refs:
                        self._fpis += sum(1 for r in refs if r.image is not None)
                    seg_switch = end // self.wal_segment_size != self._last_seg
                    if seg_switch:
                        self._last_seg = end // self.wal_segment_size
                    break
            # The ring is full of unflushed WAL: flush (write + sync) what is there, retry.
            with self._flush_state:
                self._full_flushes += 1
            self.flush(usable_lsn(self._cur))
        if seg_switch and self.on_segment_switch is not None:
            self.on_segment_switch()
        return start, end

    def insert_pair(self, rmgr: int, info: int, xid: int, payload: bytes,
                    blocks: Sequence[BlockSpec], rmgr2: int, info2: int, payload2: bytes
                    ) -> tuple[int, int] | None:
        """``insert`` of two records of ``xid`` one right after the other (the second
        without blocks) in one insertion: one lock section and no Python frame per record,
        the same bytes as two ``insert`` calls with nothing between them (an autocommit
        put's leaf record and its COMMIT). Returns (end of the first, end of the second);
        None, having written nothing, unless both fit image-less in the current page with
        room in the ring: the caller then makes the two ``insert`` calls."""
        writer = self._writer
        if writer is None or self._failed is not None or self._closed or \
                len(blocks) > MAX_BLOCK_REFS or type(payload) is not bytes or \
                type(payload2) is not bytes or not (0 <= rmgr2 <= 255 and 0 <= info2 <= 255):
            return None   # (the second record's fields checked first: it cannot be refused
            #              once the first is written)
        with self._insert_lock:
            cur = self._cur
            off = cur % WAL_PAGE_SIZE
            if len(blocks) == 1:  # _plain_headers' cached header, looked up inline
                b = blocks[0]
                hdrs = self._plain_hdrs.get((b.rel, b.fork, b.block, b.will_init))
                if hdrs is None or (self.full_page_writes and not b.will_init and
                                    b.page is not None and b.page_lsn <= self._redo):
                    hdrs = self._plain_headers(blocks, self._redo)
            else:
                hdrs = self._plain_headers(blocks, self._redo) if blocks else b""
            if hdrs is None or not off:
                return None
            n1 = RECORD_HEADER_SIZE + len(hdrs) + len(payload)
            start2 = align_lsn(cur + n1)
            n2 = RECORD_HEADER_SIZE + len(payload2)
            end2 = start2 + n2
            # Both in the current page, with room in the ring (insert's bound for each).
            if (off + (end2 - cur) > WAL_PAGE_SIZE
                    or end2 + 2 * PAGE_HEADER_SIZE
                    > self._flushed - self._flushed % WAL_PAGE_SIZE + self.wal_buffers_bytes):
                return None
            at = ((cur // WAL_PAGE_SIZE) % self.npages) * WAL_PAGE_SIZE + off
            try:
                writer(at, xid, self._prev, rmgr, info, hdrs, len(blocks), payload,
                       len(payload))
                writer(at + (start2 - cur), xid, cur, rmgr2, info2, b"", 0, payload2,
                       len(payload2))
            except (OverflowError, TypeError):
                return None   # the first record's field out of range: insert names it
            self._prev = start2
            self._cur = align_lsn(end2)
            self._records += 2
            self._record_bytes += n1 + n2
            return cur + n1, end2

    def insert_put_pair(self, rel: int, fork: int, block: int, page, key: bytes,
                        value: bytes, xid: int, old, rmgr: int, info: int,
                        then: tuple[int, int, bytes]) -> tuple[int, int] | None:
        """An autocommit put of ``key`` made on its B+tree leaf and logged, in one C call
        under the insert lock (``RecordWriters.put_pair``): ``page`` is a C pointer to the
        leaf's 8 KiB (block ``block`` of ``rel``/``fork``, pinned and exclusive-locked by
        the caller); ``old`` the version it supersedes (``btree_leafrun.put_new_py``'s, a
        C ``uint64_t[3]``). The INSERT record (``rmgr``, ``info``) the leaf's ``put_new``
        makes, then the record ``then`` (rmgr, info, payload) of ``xid``: the same page and
        WAL bytes as ``put_new`` followed by ``insert_pair``, the page's LSN set. Returns
        (end of the first, end of the second); None, with nothing changed or written (but
        ``old``, as ``put_new`` sets it), when the put or its records need the two-step
        path (no room in the current page, a full-page image, a leaf the fast path does
        not take, a version to judge)."""
        build = self._put_pair
        if build is None or self._failed is not None or self._closed:
            return None
        payload2 = then[2]
        with self._insert_lock:
            cur = self._cur
            off = cur % WAL_PAGE_SIZE
            hdr = self._plain_hdrs.get((rel, fork, block, False))
            if hdr is None:
                hdr = self._plain_header(rel, fork, block, False)
            if not off or hdr is None:
                return None
            flushed = self._flushed
            got = build(page, key, len(key), value, len(value), xid, old,
                        ((cur // WAL_PAGE_SIZE) % self.npages) * WAL_PAGE_SIZE + off,
                        # room: insert_pair's bounds, the current page and the ring's
                        min(WAL_PAGE_SIZE - off,
                            flushed - flushed % WAL_PAGE_SIZE + self._ring_room - cur),
                        cur, self._prev, self._redo if self.full_page_writes else 0, hdr,
                        rmgr, info, then[0], then[1], payload2, len(payload2))
            if got <= 0:
                return None
            n1 = got & 0xFFFF
            start2 = cur + ((n1 + 7) & ~7)
            end2 = start2 + (got >> 16)
            self._prev = start2
            self._cur = (end2 + 7) & ~7   # (align_lsn)
            self._records += 2
            self._record_bytes += n1 + (got >> 16)
        return cur + n1, end2

    def _cross_locked(self, rmgr: int, info: int, xid: int, payload: bytes, hdrs: bytes,
                      nblocks: int) -> tuple:
        """Write an image-less record (``hdrs``: its joined block headers) with the C
        crossing writer at the insert position, under the general path's ring bound.
        Returns (start, end, segment switched); None, having written nothing, when the
        ring has no room for it yet; () when the general path must take it (the record is
        larger than the ring or MAX_RECORD_SIZE: that path names the error; a field out
        of range). Caller holds the insert lock."""
        plen = len(payload)
        n = RECORD_HEADER_SIZE + len(hdrs) + plen
        if n > self.wal_buffers_bytes - 3 * WAL_PAGE_SIZE or n > MAX_RECORD_SIZE_BYTES:
            return ()
        cur = self._cur
        end_bound = cur + n + (n // (WAL_PAGE_SIZE - PAGE_HEADER_SIZE) + 2) * PAGE_HEADER_SIZE
        # The slot of the page holding the flush position is still being written.
        if end_bound > self._flushed - self._flushed % WAL_PAGE_SIZE + self.wal_buffers_bytes:
            return None
        try:
            end = self._spanner(cur, xid, self._prev, rmgr, info, hdrs, nblocks, payload, plen)
        except (OverflowError, TypeError):
            return ()
        start = usable_lsn(cur)
        self._prev = start
        self._cur = align_lsn(end)
        self._records += 1
        self._record_bytes += n
        seg_switch = end // self.wal_segment_size != self._last_seg
        if seg_switch:
            self._last_seg = end // self.wal_segment_size
        return start, end, seg_switch

    def _insert_crossing(self, rmgr: int, info: int, xid: int, payload: bytes,
                         blocks: Sequence[BlockSpec]) -> tuple[int, int] | None:
        """``insert`` of an image-less record that found the ring full: flush (write +
        sync) and retry with ``_cross_locked`` until it has room, as the general path
        does. None, having written nothing, when the general path must take it (see
        ``_cross_locked``; or a block now takes an image: the redo point moved)."""
        while True:
            with self._insert_lock:
                hdrs = self._plain_headers(blocks, self._redo) if blocks else b""
                if hdrs is None:
                    return None
                got = self._cross_locked(rmgr, info, xid, payload, hdrs, len(blocks))
            if got:
                break
            if got is not None:
                return None
            # The ring is full of unflushed WAL: flush (write + sync) what is there, retry.
            with self._flush_state:
                self._full_flushes += 1
            self.flush(usable_lsn(self._cur))
        start, end, seg_switch = got
        if seg_switch and self.on_segment_switch is not None:
            self.on_segment_switch()
        return start, end

    def _block_ref(self, b: BlockSpec, redo: int) -> BlockRef:
        if (self.full_page_writes and not b.will_init and b.page is not None
                and b.page_lsn <= redo):
            lo, hi = b.hole
            if not 0 <= lo <= hi <= WAL_PAGE_SIZE:
                raise ValueError(f"block {b.block}: bad hole {b.hole!r}")
            if lo == hi:  # a page full to the byte has no hole; the codec wants (0, 0)
                lo = hi = 0
            return BlockRef(b.rel, b.fork, b.block, image=bytes(b.page), will_init=False,
                            hole_offset=lo, hole_length=hi - lo)
        key = (b.rel, b.fork, b.block, b.will_init)  # (caller holds the insert lock)
        ref = self._plain_refs.get(key)
        if ref is None:
            if len(self._plain_refs) >= PLAIN_BLOCK_REFS_CACHED:
                self._plain_refs.clear()
            ref = self._plain_refs[key] = BlockRef(b.rel, b.fork, b.block,
                                                   will_init=b.will_init)
        return ref

    def _plain_headers(self, blocks: Sequence[BlockSpec], redo: int) -> bytes | None:
        """The joined block reference headers of ``blocks`` when none of them takes a
        full-page image (else None); None too for a field out of range (the general path
        names it). Caller holds the insert lock."""
        hdrs = self._plain_hdrs
        out = []
        for b in blocks:
            if (self.full_page_writes and not b.will_init and b.page is not None
                    and b.page_lsn <= redo):
                return None
            h = hdrs.get((b.rel, b.fork, b.block, b.will_init))
            if h is None:
                h = self._plain_header(b.rel, b.fork, b.block, b.will_init)
                if h is None:
                    return None
            out.append(h)
        return out[0] if len(out) == 1 else b"".join(out)

    def _plain_header(self, rel: int, fork: int, block: int, will_init: bool) -> bytes | None:
        """A block's image-less reference header, made and cached (None for a field out
        of range). Caller holds the insert lock."""
        try:
            h = plain_block_header(rel, fork, block, will_init)
        except (struct.error, TypeError):
            return None
        hdrs = self._plain_hdrs
        if len(hdrs) >= PLAIN_BLOCK_REFS_CACHED:
            hdrs.clear()
        hdrs[(rel, fork, block, will_init)] = h
        return h

    def _copy_in(self, cur: int, data: bytes) -> tuple[int, int]:
        """Copy ``data`` into the ring from ``cur`` (``copy_in``)."""
        return copy_in(self._ringv, self.npages, self.wal_segment_size, cur, data)

    # --- flushing --------------------------------------------------------------------------------
    def flush(self, lsn: int | None = None) -> None:
        """Return once WAL up to ``lsn`` (default: everything inserted) is durable.

        Group commit (invariant 6): one thread at a time (the leader) writes and syncs
        everything inserted so far; the others queue with the LSN they need and are woken
        when a flush covered them, or one at a time to lead the next flush."""
        if self._failed is not None or self._closed:
            self._check_usable()
        if lsn is None:
            lsn = self._cur
        if lsn <= self._flushed:
            return
        if self._group is not None:
            self._flush_group(self._group, lsn)
            return
        state = self._flush_state
        state.acquire()
        held = True
        try:
            self._flush_requests += 1
            waited = False
            while self._flushing and lsn > self._flushed and self._failed is None:
                waited = True
                wake = getattr(self._wake, "lock", None)
                if wake is None:
                    wake = self._wake.lock = threading.Lock()
                    wake.acquire()
                # [lsn, wake-up, released as covered]: a leader that releases the entry
                # because its flush covered it (or failed) marks it and does its
                # bookkeeping, so the woken waiter returns without taking the state lock
                # again (one lock hand-off per waiter, not two)
                entry = [lsn, wake, False]
                self._waiters.append(entry)
                self._queued += 1
                state.release()
                held = False
                try:
                    wake.acquire()  # returns once a leader released it
                except BaseException:  # (an interrupt): leave no entry behind, and never
                    state.acquire()    # reuse this wake-up, which a leader may already
                    held = True        # have released (a stale release would end a later
                    if not entry[2]:   # wait early with its entry still queued, and a
                        self._queued -= 1  # second entry would be released twice)
                    self._waiters = [e for e in self._waiters if e is not entry]
                    self._wake.lock = None
                    raise
                if entry[2]:
                    self._check_usable()  # (released by a failed flush: raises)
                    return
                state.acquire()  # woken to lead the next flush
                held = True
                self._queued -= 1
            self._check_usable()
            if lsn <= self._flushed:
                self._joins += waited
                return
            self._flushing = True
        finally:
            if held:
                state.release()
        try:
            self._lead_flush()
        finally:
            with state:
                self._flushing = False
                self._wake_waiters()

    def _siblings(self) -> int:
        """Other transactions active now (invariant 6)."""
        active = self._active_transactions
        return self._queued + (active() if active is not None else 0)

    def _wake_waiters(self) -> None:
        """Under ``_flush_state`` after a flush: wake the waiters it covered and at most one
        it did not (the next leader); after a failure, all of them."""
        flushed, failed = self._flushed, self._failed is not None
        keep = []
        leader_woken = False
        covered = 0
        for entry in self._waiters:
            if entry[0] <= flushed or failed:
                entry[2] = True   # done: the waiter returns as soon as it wakes
                entry[1].release()
                covered += 1
            elif not leader_woken:
                entry[1].release()
                leader_woken = True
            else:
                keep.append(entry)
        self._waiters = keep
        self._queued -= covered
        if not failed:
            self._joins += covered

    def _lead_flush(self) -> None:
        with self._flush_lock:
            if self._commit_delay_us and self._siblings() >= self._commit_siblings:
                time.sleep(self._commit_delay_us / 1e6)   # let more commits join this flush
                self._delays += 1
            with self._insert_lock:
                target = self._cur
            if target <= self._flushed:
                return
            self._write_and_sync_timed(self._flushed, target)
            self._flushed = target

    def _write_and_sync_timed(self, flushed: int, target: int) -> None:
        """``_write_and_sync``, timed and counted as one flush; a failure makes the Wal
        unusable and raises (``_fail``). Caller holds ``_flush_lock``."""
        t0 = time.perf_counter_ns()
        try:
            self._write_and_sync(flushed, target)
        except BaseException as exc:
            self._fail(exc, target)
        finally:
            self._sync_ns += time.perf_counter_ns() - t0
        self._flushes += 1

    def _record_failure(self, exc: BaseException) -> BaseException:
        """Make the Wal unusable for ``exc`` unless a failure is recorded already; the one
        recorded (threads that fail together all name the same cause)."""
        with self._fail_lock:
            if self._failed is None:
                self._failed = exc
            self.failed = True
            return self._failed

    def _fail(self, exc: BaseException, target: int) -> None:
        """Make the Wal unusable after the flush up to ``target`` failed with ``exc`` and
        raise what the flusher sees (invariant 3)."""
        exc = self._record_failure(exc)
        what = (f"could not write or sync WAL up to {format_lsn(target)}: {exc}; "
                "the database must be reopened (crash recovery) and nothing after "
                "this point may be trusted as durable")
        if _disk_full(exc):
            raise WalDiskFullError(what) from exc
        raise WalError(what) from exc

    def _flush_group(self, group: GroupFlush, lsn: int) -> None:
        """``flush`` through the C group commit (``GroupFlush``)."""
        out = group.new_out()
        active = 0
        if self._commit_delay_us and self._active_transactions is not None:
            active = self._active_transactions()
        # A test's OS layer (a simulated disk) must see every WAL write and sync: the C
        # path then hands every flush back to the Python leader (which calls osfile).
        rc = group.flush(lsn, self._cur, active, osfile.layer().__class__ is not OsLayer,
                         out)
        if rc == 0:   # (aio.stats() reads the C path's write and sync counts: _group_io)
            if out[0] > self._flushed:
                self._flushed = out[0]
            return
        if rc == 1:
            self._lead_for_group(group, out[0], out[1])
            return
        if rc == -2:
            raise WalError("the WAL is closed")
        exc = self._group_failure(group)
        if out[1]:
            self._fail(exc, out[0])
        self._check_usable()

    def _lead_for_group(self, group: GroupFlush, flushed: int, target: int) -> None:
        """Lead a flush the C group commit handed back (across segments, or into a
        segment it has no fd for): the Python flush, then hand the C path the fd of the
        segment where the flush ended."""
        try:
            with self._flush_lock:
                self._write_and_sync_timed(flushed, target)
        except BaseException:
            group.done(target, 0, -1, 0)
            raise
        segno = (target - 1) // self.wal_segment_size
        group.done(target, 1, self._fds.get(segno, -1), segno)
        if target > self._flushed:
            self._flushed = target

    def _group_failure(self, group: GroupFlush) -> BaseException:
        """The exception a failed C flush stands for (DESIGN §7: never retried), also
        recorded as the Wal's failure (one exception for it, whichever thread asks first:
        every thread's error names the same cause); the Python leader's own when it was
        its flush."""
        if self._failed is not None:
            return self._failed
        st = group.stats()
        kind, segno, offset = st[GF_FAIL_KIND], st[GF_FAIL_SEGNO], st[GF_FAIL_OFFSET]
        if kind == GF_FAIL_WRITE:
            exc: BaseException = io_error(st[GF_FAIL_ERRNO],
                                          f"could not write {self._describe(segno, offset)}")
        elif kind == GF_FAIL_SHORT:
            exc = short_transfer_error(True, st[GF_FAIL_GOT], st[GF_FAIL_WANT],
                                       self._describe(segno, offset))
        elif kind == GF_FAIL_SYNC:
            exc = io_error(st[GF_FAIL_ERRNO], f"could not sync {self._describe(segno, 0)}")
        else:   # the Python leader's flush failed: it recorded its own exception
            exc = self._failed or WalError("a WAL flush failed in another thread")
        return self._record_failure(exc)

    def _write_and_sync(self, flushed: int, target: int) -> None:
        seg = self.wal_segment_size
        npages = self.npages
        first_page = flushed - flushed % WAL_PAGE_SIZE
        last_page = target - 1 - (target - 1) % WAL_PAGE_SIZE  # page holding the last byte
        # Pieces: (segno, file offset, [(ring offset, bytes)]) contiguous in file and ring.
        pieces: list[tuple[int, int, list[tuple[int, int]]]] = []
        page = first_page
        ring = self._ringv
        slot0 = (first_page // WAL_PAGE_SIZE) % npages
        count = (last_page - first_page) // WAL_PAGE_SIZE + 1
        self._stamped += count
        # Stamp before any write: the stamp is a claim of this flush.
        if slot0 + count <= npages:
            for at in range(slot0 * WAL_PAGE_SIZE, (slot0 + count) * WAL_PAGE_SIZE,
                            WAL_PAGE_SIZE):
                stamp_page_header(ring[at:at + PAGE_HEADER_SIZE], flushed)
        else:
            while page <= last_page:
                at = ((page // WAL_PAGE_SIZE) % npages) * WAL_PAGE_SIZE
                stamp_page_header(ring[at:at + PAGE_HEADER_SIZE], flushed)
                page += WAL_PAGE_SIZE
            page = first_page
        segno = first_page // seg
        if segno == last_page // seg and slot0 + count <= npages:
            if self._flush_path == FLUSH_SYSCALLS:
                # The usual flush by system calls: one write of one run, one sync, no
                # piece lists (the general path below makes the same calls).
                fd = self._fds.get(segno)
                if fd is None:
                    fd = self._segment_fd(segno)
                at = slot0 * WAL_PAGE_SIZE
                self._write_run(fd, segno, first_page % seg, ring[at:at + count * WAL_PAGE_SIZE])
                if not self.io_direct:
                    self._sync_segment(fd, segno)
                if len(self._fds) > 1:
                    for old in [s for s in self._fds if s < segno]:  # no I/O in flight on them
                        self._close_fd(old)
                return
            # The usual flush: one segment, no wrap of the ring: one piece, one run.
            pieces.append((first_page // seg, first_page % seg,
                           [(slot0 * WAL_PAGE_SIZE, count * WAL_PAGE_SIZE)]))
            page = last_page + WAL_PAGE_SIZE
        while page <= last_page:
            segno = page // seg
            seg_end = (segno + 1) * seg
            stop = min(last_page + WAL_PAGE_SIZE, seg_end)
            slot = (page // WAL_PAGE_SIZE) % npages
            run_pages = min((stop - page) // WAL_PAGE_SIZE, npages - slot)
            run = (slot * WAL_PAGE_SIZE, run_pages * WAL_PAGE_SIZE)
            if pieces and pieces[-1][0] == segno and \
                    pieces[-1][1] + sum(n for _o, n in pieces[-1][2]) == page % seg:
                pieces[-1][2].append(run)
            else:
                pieces.append((segno, page % seg, [run]))
            page += run_pages * WAL_PAGE_SIZE
        fds = [self._segment_fd(segno) for segno, _offset, _runs in pieces]
        sync_segnos = [] if self.io_direct else sorted({p[0] for p in pieces})
        path = self._flush_path
        if path == FLUSH_RING:
            flush_ring = self._flush_ring or self._open_flush_ring()
            if flush_ring is not None:
                self._flush_by_ring(flush_ring, pieces, fds, sync_segnos)
            else:
                self._flush_by_syscalls(pieces, fds, sync_segnos)
        elif path == FLUSH_SYSCALLS:
            self._flush_by_syscalls(pieces, fds, sync_segnos)
        else:
            self._flush_through_aio(pieces, fds, sync_segnos)
        last = pieces[-1][0]
        for old in [s for s in self._fds if s < last]:  # no I/O in flight on them now
            self._close_fd(old)

    @staticmethod
    def _describe(segno: int, offset: int) -> str:
        return f"WAL segment {segment_file_name(segno)} at offset {offset}"

    def _flush_by_syscalls(self, pieces: list, fds: list[int], sync_segnos: list[int]) -> None:
        """Each piece in one pwritev, then one fdatasync per segment, in this thread. A
        write that comes back short is a full disk (DESIGN §7), never continued."""
        ring = self._ringv
        for (segno, offset, runs), fd in zip(pieces, fds, strict=True):
            self._write_run(fd, segno, offset, *[ring[o:o + n] for o, n in runs])
        for segno in sync_segnos:
            self._sync_segment(self._fds[segno], segno)

    def _write_run(self, fd: int, segno: int, offset: int, *views: memoryview) -> None:
        """One pwritev of ``views`` (contiguous in the file) at ``offset`` of segment
        ``segno``, counted; a short write raises (a full disk), never continued."""
        want = sum(map(len, views)) if len(views) > 1 else len(views[0])
        self._writes += 1
        self._write_bytes += want
        t0 = time.perf_counter_ns()
        try:
            got = osfile.pwritev(fd, views, offset)
        except OSError as exc:
            raise io_error(exc.errno, f"could not write {self._describe(segno, offset)}") \
                from exc
        self.aio.count_direct(TargetId.WAL, IoOp.WRITEV, want, time.perf_counter_ns() - t0)
        if got != want:
            raise short_transfer_error(True, got, want, self._describe(segno, offset))

    def _sync_segment(self, fd: int, segno: int) -> None:
        """One fdatasync of segment ``segno`` (open as ``fd``), counted."""
        self._syncs += 1
        t0 = time.perf_counter_ns()
        try:
            osfile.fdatasync(fd)
        except OSError as exc:
            raise io_error(exc.errno, f"could not sync {self._describe(segno, 0)}") from exc
        self.aio.count_direct(TargetId.WAL, IoOp.FDATASYNC, 0, time.perf_counter_ns() - t0)

    def _open_flush_ring(self) -> FlushRing | None:
        """The Wal's own io_uring for flushes; None (flush by system calls from now on)
        where no ring can be set up, e.g. under a tight memlock limit."""
        try:
            self._flush_ring = FlushRing()
        except IoMethodUnavailable:
            self._flush_path = FLUSH_SYSCALLS
            return None
        self._ring_addr = FlushRing.address_of(self._ring)
        return self._flush_ring

    def _flush_by_ring(self, flush_ring: FlushRing, pieces: list, fds: list[int],
                       sync_segnos: list[int]) -> None:
        """One linked chain per submission: each segment's writes, then its fdatasync (with
        O_DSYNC the writes alone), submitted and waited for in one io_uring_enter. A sync
        starts only after the writes before it completed in full; a failed or short write
        cancels the rest. A flush longer than one chain (many small segments) is sent as
        several chains one after another, cut between segments."""
        base = self._ring_addr
        sync = [] if self.io_direct else sync_segnos
        groups: list[list[tuple]] = []
        for (segno, offset, runs), fd in zip(pieces, fds, strict=True):
            item = (IoOp.WRITEV, fd, offset, [(base + o, n) for o, n in runs], segno,
                    sum(n for _o, n in runs))
            if groups and groups[-1][0][4] == segno:
                groups[-1].append(item)
            else:
                groups.append([item])
        if sync:
            for group in groups:
                segno = group[0][4]
                group.append((IoOp.FDATASYNC, self._fds[segno], 0, [], segno, 0))
        chain: list[tuple] = []
        for group in groups:
            if chain and len(chain) + len(group) > FLUSH_RING_ENTRIES:
                self._run_chain(flush_ring, chain)
                chain = []
            chain.extend(group)
        self._run_chain(flush_ring, chain)
        self._linked += 1

    def _run_chain(self, flush_ring: FlushRing, chain: list[tuple]) -> None:
        """Run one chain and raise the first failure in chain order (what failed first;
        the I/Os it cancelled are never what is reported)."""
        for op, _fd, _offset, _iovs, _segno, want in chain:
            if op == IoOp.WRITEV:
                self._writes += 1
                self._write_bytes += want
            else:
                self._syncs += 1
        t0 = time.perf_counter_ns()
        results = flush_ring.run([c[:4] for c in chain])
        waited = time.perf_counter_ns() - t0
        count = self.aio.count_direct   # aio.stats() rows: the chain's wait on its first I/O
        for i, (op, _fd, _offset, _iovs, _segno, want) in enumerate(chain):
            count(TargetId.WAL, op, want, 0 if i else waited)
        for (op, _fd, offset, _iovs, segno, want), res in zip(chain, results, strict=True):
            if op == IoOp.WRITEV:
                if res < 0:
                    raise io_error(-res, f"could not write {self._describe(segno, offset)}")
                if res != want:
                    raise short_transfer_error(True, res, want, self._describe(segno, offset))
            elif res < 0:
                raise io_error(-res, f"could not sync {self._describe(segno, 0)}")

    def _flush_through_aio(self, pieces: list, fds: list[int], sync_segnos: list[int]) -> None:
        """The flush as AIO handles through the method (FLUSH_AIO)."""
        aio = self.aio
        ring = self._ringv
        linked = (aio.method.links_submissions
                  and aio.can_submit_together(len(pieces) + len(sync_segnos)))
        if linked:
            # One submission: every write linked to the next I/O, the fdatasyncs last, so
            # a sync starts only after every write completed in full (a failed or short
            # write cancels the rest of the chain) and the issuer waits in the same
            # system call. With O_DSYNC each write is durable when it completes.
            write_flags = HandleFlag.LINK_NEXT | HandleFlag.ISSUER_WAITS
        else:
            # Writes first, then the syncs once all of them completed, in the issuer.
            write_flags = HandleFlag.SYNCHRONOUS
        issued = []
        with aio.batch():
            for (segno, offset, runs), fd in zip(pieces, fds, strict=True):
                views = [ring[o:o + n] for o, n in runs]
                ret = AioReturn()
                h = aio.acquire(ret)
                h.set_target(WAL_TARGET_ID, (self._segment_path(segno), self._flags, offset))
                h.set_flag(write_flags)
                ref = h.wait_ref()
                h.start_writev(fd, views, offset)
                issued.append((ref, ret))
                self._writes += 1
                self._write_bytes += sum(len(v) for v in views)
            if linked:
                self._start_syncs(sync_segnos, issued, linked=True)
                self._linked += 1
        if not linked:
            self._wait_all(issued)
            issued = []
            with aio.batch():
                self._start_syncs(sync_segnos, issued, linked=False)
        self._wait_all(issued)

    def _start_syncs(self, segnos: list[int], issued: list, *, linked: bool) -> None:
        """Start an fdatasync of each segment in ``segnos`` (inside the caller's batch),
        chained after the I/O before it when ``linked``."""
        aio = self.aio
        last = len(segnos) - 1
        for i, segno in enumerate(segnos):
            ret = AioReturn()
            h = aio.acquire(ret)
            h.set_target(WAL_TARGET_ID, (self._segment_path(segno), self._flags, 0))
            if linked:
                h.set_flag(HandleFlag.ISSUER_WAITS | (HandleFlag.LINK_NEXT if i < last else 0))
            else:
                h.set_flag(HandleFlag.SYNCHRONOUS)
            ref = h.wait_ref()
            h.start_fsync(self._fds[segno], datasync=True)
            issued.append((ref, ret))
            self._syncs += 1

    def _wait_all(self, issued: list) -> None:
        """Wait for every I/O of ``issued``, then raise the first failure in issue order:
        writes come before syncs, so a short or failed write (which cancels the syncs
        linked after it) is what is reported, never the cancelled sync."""
        first: BaseException | None = None
        for ref, _ret in issued:  # wait for every I/O even after a failure: none may linger
            self.aio.wait(ref)
        for _ref, ret in issued:
            try:
                ret.raise_if_failed()
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first

    # --- segment files -------------------------------------------------------------------------
    def _segment_path(self, segno: int) -> str:
        path = self._paths.get(segno)   # every WAL I/O names its file: built once per segment
        if path is None:
            if len(self._paths) >= SEGMENT_PATHS_CACHED:
                self._paths.clear()
            path = self._paths[segno] = os.path.join(self.wal_dir, segment_file_name(segno))
        return path

    def _segment_fd(self, segno: int) -> int:
        fd = self._fds.get(segno)
        if fd is not None:
            return fd
        path = self._segment_path(segno)
        if segno > self._ready_through and not osfile.exists(path):
            with self._segment_lock:
                if not osfile.exists(path):   # (prepare_segments may have just made it)
                    self._create_segment(segno, max(segno, self._ready_through))
                    self._inline += 1
        fd = osfile.open(path, self._flags)
        self._fds[segno] = fd
        return fd

    def _close_fd(self, segno: int) -> None:
        fd = self._fds.pop(segno)
        self.aio.closing_fd(fd)
        osfile.close(fd)

    def _create_segment(self, segno: int, keep_through: int) -> None:
        """A new segment: recycle a spare old one if there is one, else zero-fill a file.
        Segments up to ``keep_through`` are in use or prepared, never spares. Caller holds
        ``_segment_lock``."""
        path = self._segment_path(segno)
        spare = self._spare_segment(keep_through)
        if spare is not None:
            osfile.rename(spare, path)
        else:
            tmp = path + ".tmp"
            fd = osfile.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                zeros = memoryview(aligned_buffer(ZERO_FILL_CHUNK_BYTES))
                done = 0
                while done < self.wal_segment_size:
                    n = min(ZERO_FILL_CHUNK_BYTES, self.wal_segment_size - done)
                    wrote = osfile.pwritev(fd, [zeros[:n]], done)
                    if wrote <= 0:
                        raise OSError(28, f"no space to create WAL segment {path}")
                    done += wrote
                osfile.fdatasync(fd)
            finally:
                osfile.close(fd)
            osfile.rename(tmp, path)
            self._created += 1
        osfile.fsync_directory(self.wal_dir)
        self.aio.forget_files()

    def prepare_segments(self) -> int:
        """Make the ``WAL_SEGMENTS_PREPARED_AHEAD`` segments after the insert position ready
        (recycled or zero-filled, directory synced), so commits never create one. Called
        off the commit path (the WAL writer thread); cheap when they are ready. Returns how
        many were made."""
        if self._failed is not None or self._closed:
            return 0
        current = self._cur // self.wal_segment_size
        want = current + WAL_SEGMENTS_PREPARED_AHEAD
        if self._ready_through >= want:
            return 0
        made = 0
        # From the flush position on, not the insert position: inserts may be a segment or
        # more ahead of the last flush, and every segment marked ready below must exist
        # (a flush opens a segment at or below _ready_through without looking).
        first = min(current, self._flushed // self.wal_segment_size)
        with self._segment_lock:
            for segno in range(first, want + 1):
                if not osfile.exists(self._segment_path(segno)):
                    self._create_segment(segno, max(want, self._ready_through))
                    made += 1
            self._ready_through = max(self._ready_through, want)
        self._prepared += made
        return made

    def _spare_segment(self, segno: int) -> str | None:
        """A recycled segment file (named beyond ``segno``) that may be reused."""
        for name in sorted(osfile.listdir(self.wal_dir)):
            n = parse_segment_file_name(name)
            if n is not None and n > segno and n not in self._fds:
                return os.path.join(self.wal_dir, name)
        return None

    def segments(self) -> list[int]:
        return sorted(n for n in (parse_segment_file_name(x) for x in osfile.listdir(self.wal_dir))
                      if n is not None)

    def remove_segments_before(self, lsn: int) -> int:
        """Recycle or remove segment files wholly before ``lsn`` (the redo point of the last
        completed checkpoint). Returns how many were dealt with."""
        keep_from = lsn // self.wal_segment_size
        with self._flush_lock, self._segment_lock:
            current = self._cur // self.wal_segment_size
            segs = self.segments()
            old = [s for s in segs if s < keep_from and s not in self._fds]
            spares = sum(1 for s in segs if s > current)
            next_name = max(segs + [current]) + 1
            for s in old:
                path = self._segment_path(s)
                if spares < RECYCLED_SEGMENTS_MAX:
                    osfile.rename(path, self._segment_path(next_name))
                    next_name += 1
                    spares += 1
                    self._recycled += 1
                else:
                    osfile.unlink(path)
            if old:
                osfile.fsync_directory(self.wal_dir)
                self.aio.forget_files()
        return len(old)

    def _load_partial_page(self, end: int) -> None:
        """Startup after recovery: put the valid head of the page holding ``end`` in the ring,
        zeroes after it, so the next flush rewrites that page cleanly."""
        page = end - end % WAL_PAGE_SIZE
        segno = page // self.wal_segment_size
        slot = ((page // WAL_PAGE_SIZE) % self.npages) * WAL_PAGE_SIZE
        buf = self._ringv[slot:slot + WAL_PAGE_SIZE]
        fd = osfile.open(self._segment_path(segno), os.O_RDONLY)
        try:
            got = osfile.preadv(fd, [buf], page % self.wal_segment_size)
        finally:
            osfile.close(fd)
        if got != WAL_PAGE_SIZE:
            raise WalError(f"could not read WAL page {format_lsn(page)} to continue after it")
        buf[end % WAL_PAGE_SIZE:] = bytes(WAL_PAGE_SIZE - end % WAL_PAGE_SIZE)

    # --- life cycle ------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._failed is not None:
            # chained to the failure, so a caller that did not hit it itself (another
            # thread's flush, the background writer's) still sees its cause (ENOSPC...);
            # after a full disk it is the DiskFullError DESIGN §7 promises a commit that
            # fails for one, whichever thread's write met it first
            what = ("WAL is unusable after a failed write or sync "
                    f"({self._failed}); reopen the database to run crash recovery")
            if _disk_full(self._failed):
                raise WalDiskFullError(what) from self._failed
            raise WalError(what) from self._failed
        if self._closed:
            raise WalError("the WAL is closed")

    def close(self) -> None:
        """Close segment files. Does not flush: the caller decides what must be durable."""
        if self._closed:
            return
        if self._group is not None:
            self._group.close()   # waits for a flush in C, which may be writing an fd below
            self._placement = None  # (close turned it off: bound threads got their masks)
            self.aio.remove_direct_source(self._group_io)   # (its totals stay counted)
        with self._flush_lock:
            for segno in list(self._fds):
                self._close_fd(segno)
            if self._flush_ring is not None:
                self._flush_ring.close()
                self._flush_ring = None
            self._closed = True

    def stats(self) -> WalStats:
        c = self._group.stats() if self._group is not None else [0] * (GF_FLUSHED + 1)
        return WalStats(usable_lsn(self._cur), max(self._flushed, c[GF_FLUSHED]), self._redo,
                        self._records, self._record_bytes, self._fpis,
                        self._flush_requests + c[GF_REQUESTS], self._flushes + c[GF_FLUSHES],
                        self._joins + c[GF_JOINS], self._writes + c[GF_WRITES],
                        self._write_bytes + c[GF_WRITE_BYTES], self._syncs + c[GF_SYNCS],
                        self._full_flushes, self._created, self._recycled,
                        self._sync_ns + c[GF_FLUSH_NS], self._stamped + c[GF_STAMPED],
                        self._linked, self._prepared, self._inline,
                        self._delays + c[GF_DELAYS])


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: ENOSPC, or a write that made no
    progress (``DiskFullError``)."""
    seen = 0
    while exc is not None and seen < ERROR_CHAIN_MAX_LINKS:
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError)
                                              and exc.errno == errno.ENOSPC):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def truncate_tail(wal_dir: str, wal_segment_size: int, end_lsn: int) -> int:
    """After recovery found valid WAL ending at ``end_lsn``: zero the rest of that segment
    from the next page on, remove later segment files, and sync — so no torn leftovers can
    ever be read as WAL once new records are written after ``end_lsn``. (The page holding
    ``end_lsn`` is rewritten by the next flush, see ``Wal._load_partial_page``.) Returns
    the number of files removed."""
    segno = end_lsn // wal_segment_size
    path = os.path.join(wal_dir, segment_file_name(segno))
    removed = 0
    for name in osfile.listdir(wal_dir):
        n = parse_segment_file_name(name)
        if (n is not None and n > segno) or name.endswith(".tmp"):
            osfile.unlink(os.path.join(wal_dir, name))
            removed += 1
    if osfile.exists(path):
        fd = osfile.open(path, os.O_RDWR)
        try:
            start = (end_lsn - end_lsn % WAL_PAGE_SIZE) % wal_segment_size
            if end_lsn % WAL_PAGE_SIZE:
                start += WAL_PAGE_SIZE
            zeros = memoryview(aligned_buffer(ZERO_FILL_CHUNK_BYTES))
            pos = start
            while pos < wal_segment_size:
                n = min(ZERO_FILL_CHUNK_BYTES, wal_segment_size - pos)
                if osfile.pwritev(fd, [zeros[:n]], pos) <= 0:
                    raise WalError(f"could not zero the torn WAL tail in {path}")
                pos += n
            osfile.fdatasync(fd)
        finally:
            osfile.close(fd)
    osfile.fsync_directory(wal_dir)
    return removed


def sync_segments(wal_dir: str, wal_segment_size: int, from_lsn: int, to_lsn: int) -> None:
    """fdatasync the segment files covering [from_lsn, to_lsn]: WAL found after a crash may
    still sit only in the page cache; it must be durable before anything builds on it."""
    for segno in range(from_lsn // wal_segment_size, to_lsn // wal_segment_size + 1):
        path = os.path.join(wal_dir, segment_file_name(segno))
        if not osfile.exists(path):
            continue
        fd = osfile.open(path, os.O_RDWR)
        try:
            osfile.fdatasync(fd)
        finally:
            osfile.close(fd)
