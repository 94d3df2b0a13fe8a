"""Bootstrap and crash recovery: from the control file to an open, consistent WAL.

``bootstrap`` makes a new database's WAL and control file. ``startup`` reads the control
file, finds the end of valid WAL, replays WAL from the last checkpoint's redo point through
the registered resource managers (always: after a clean shutdown that is just the shutdown
checkpoint record), makes the replayed WAL durable, truncates the torn tail and returns a
``Wal`` positioned at the end of valid WAL.

Read first, write after (DESIGN §7): before anything is written — control file state, a
data page, a relation file, the WAL tail — a first pass reads the WAL from the redo point
to its end and decides whether the stop is a torn tail or corruption in the middle (the
flush stamp, ``wal.reader``). Corruption raises ``WalCorruptMiddleError`` naming the LSN and
leaves every file byte for byte as it was: no replay, no tail truncation, no end-of-recovery
checkpoint. Only then is the control file marked "in crash recovery" and WAL replayed, by a
second pass that must end exactly where the first did.

Redo rules (as PostgreSQL's XLogReadBufferForRedo):
1. A block with a full-page image is restored from it without reading the old page (a torn
   data page is never read), and its page LSN set to the record's end.
2. A block marked will_init is zeroed (not read) and handed to the redo routine.
3. Otherwise the page is read; if its LSN is at or past the record's end the change is
   already there (redo is idempotent) and the block is skipped.
4. Blocks beyond the end of a relation are created (zero-extended) first: WAL may refer to
   pages that never reached disk.
Recovery prefetch: while replaying record N it starts reads for the blocks of the records
up to ``RECOVERY_PREFETCH_RECORDS`` ahead (PostgreSQL's recovery_prefetch), through the
buffer manager's asynchronous two-step read (with io_method=sync, whose reads run inline,
a posix_fadvise WILLNEED per block instead).

Speed: both passes read WAL with the C batch scanner (engine/wal_decode.py) when it is
built; the first pass only checks. Redo knows each fork's size after asking smgr once,
pins blocks already in the pool in one call, gets image and will_init blocks zeroed
without a read (rules 1 and 2), and writes the pool's dirty buffers in combined runs once
``RECOVERY_FLUSH_DIRTY_FRACTION`` of it has been dirtied (a background writer's job).
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import IntEnum
from itertools import chain, compress, filterfalse
from operator import attrgetter, itemgetter
from typing import Any

from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.engine.access.btree_wal import C_REDO_RUN, redo_leaf_run_at
from slonik.engine.rmgrlist import install as install_rmgrs
from slonik.engine.wal_build import C_GROUP_FLUSH_FOR, C_RECORD_WRITER_FOR
from slonik.engine.wal_decode import C_FIELDS, C_SCANNER, new_buffer_ids, wal_fields
from slonik.storage.bufmgr import BufferManager
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ, LSN_OFFSET, ZERO_PAGE, page_set_lsn
from slonik.storage.smgr import Smgr
from slonik.wal.checkpoint import (
    XLOG_CHECKPOINT_SHUTDOWN,
    CheckpointData,
    decode_checkpoint,
    encode_checkpoint,
    is_checkpoint,
)
from slonik.wal.control import (
    ControlData,
    DbState,
    read_control,
    write_control,
)
from slonik.wal.errors import WalError
from slonik.wal.lsn import format_lsn
from slonik.wal.reader import RawBatch, ReadRecord, WalReader, read_record_at
from slonik.wal.rmgr import RM_BTREE, RM_XLOG, get_rmgr
from slonik.wal.walpage import parse_segment_file_name
from slonik.wal.xlog import Wal, sync_segments, truncate_tail

RECOVERY_PREFETCH_RECORDS = 64     # records looked ahead for blocks to prefetch
RECOVERY_PREFETCH_PINS = 64        # buffers prefetch may hold pinned at once
RECOVERY_FLUSH_DIRTY_FRACTION = 0.5  # of shared_buffers dirtied by redo: write them all out
RECOVERY_REDO_RUN_RECORDS = 64     # single-block B+tree records redone per C call at most
FIRST_RELFILENUMBER = 16384        # as PostgreSQL's FirstNormalObjectId
WAL_DIR = "wal"
_PAGE_LSN = struct.Struct("<Q")    # storage.page's page LSN field, at LSN_OFFSET
_RECORD = attrgetter("record")
_BLOCKS = attrgetter("blocks")
_SECOND = itemgetter(1)
_REF_TAG = attrgetter("rel", "fork", "block")


class RedoAction(IntEnum):
    NEEDS_REDO = 1   # the buffer is pinned and exclusive-locked: apply, then finish_redo_buffer
    DONE = 2         # the page already has this change
    RESTORED = 3     # restored from the full-page image


@dataclass(frozen=True)
class RecoveryInfo:
    crashed: bool            # the control file said the database was not shut down cleanly
    replayed: int            # records replayed (the checkpoint record included)
    start_lsn: int           # redo point
    end_lsn: int             # end of valid WAL
    stop_reason: str
    checkpoint: CheckpointData
    checkpoint_extra: bytes
    state: dict[str, Any]    # what the resource managers' redo routines collected
    seconds: float
    replay_bytes: int
    scan_seconds: float = 0.0     # the read-only first pass (find the end of WAL)
    replay_seconds: float = 0.0   # the second pass: read, decode, redo
    fast_records: int = 0         # records redone in C runs without being decoded
    fast_cuts: int = 0            # fast records sent to their rmgr (page not yet known)


@dataclass
class RedoContext:
    """What redo routines get: the buffer manager and smgr, and a dict for their own state.
    ``dirtied`` counts buffers redo turned from clean to dirty (replay resets it when it
    writes them out)."""

    bufmgr: BufferManager
    smgr: Smgr
    state: dict[str, Any] = field(default_factory=dict)
    dirtied: int = 0
    fast: int = 0     # records redo_btree_fast redid in C runs
    cuts: int = 0     # and sent to their rmgr instead
    _sizes: dict[tuple[int, int], int] = field(default_factory=dict)

    def ensure_relation(self, rel: int, fork: int) -> None:
        key = (rel, fork)
        if key not in self._sizes:
            self.smgr.create(rel, fork, exist_ok=True)
            self._sizes[key] = 0  # exists; no block known yet

    def forget_relation(self, rel: int) -> None:
        for key in [k for k in self._sizes if k[0] == rel]:
            del self._sizes[key]

    def known_nblocks(self, rel: int, fork: int) -> int:
        """A lower bound of the fork's size in blocks (0 when it does not exist), asked of
        smgr once and then kept: during redo a fork only grows (extension here, or a torn
        extension's partial segment completing, md's size rule) until a truncation, whose
        redo calls ``forget_relation``. Blocks below it exist; at or past it, ask smgr."""
        key = (rel, fork)
        n = self._sizes.get(key)
        if n is None:
            if not self.smgr.exists(rel, fork):
                return 0
            n = self._sizes[key] = self.smgr.nblocks(rel, fork)
        return n

    def _extend_to(self, rel: int, fork: int, block: int) -> int | None:
        """Make sure ``block`` exists: a pinned, exclusive-locked new buffer when the fork had
        to be zero-extended up to it, else None (the block exists; the known size is kept)."""
        self.ensure_relation(rel, fork)
        bm = self.bufmgr
        key = (rel, fork)
        while True:
            # Asked of smgr: completing a partial segment (a torn extension) can make
            # blocks of the next segment file visible again (md's size rule).
            nblocks = self.smgr.nblocks(rel, fork)
            if block < nblocks:
                self._sizes[key] = nblocks
                return None
            new = bm.extend(rel, fork, block + 1 - nblocks)
            for buf in new:
                bm.mark_dirty(buf)
            if bm.block_of(new[-1])[2] == block:
                for buf in new[:-1]:
                    bm.unlock_exclusive(buf)
                bm.unpin_many(new[:-1])
                self._sizes[key] = block + 1
                return new[-1]
            for buf in new:  # the relation turned out longer: read the block instead
                bm.unlock_exclusive(buf)
            bm.unpin_many(new)

    def _buffer_for(self, rel: int, fork: int, block: int, *, read: bool,
                    image: bytes | None = None) -> int:
        """A pinned, exclusive-locked buffer for the block; zero-extends the relation up
        to it when needed. ``read=False``: the page's old content is not needed; its bytes
        are then ``image`` (a full-page image: BLCKSZ bytes) when given, else undefined."""
        if block >= self._sizes.get((rel, fork), 0):
            buf = self._extend_to(rel, fork, block)
            if buf is not None:
                if image is not None:
                    self.bufmgr.page(buf)[:] = image
                return buf
        bm = self.bufmgr
        if read:
            return bm.read_buffer_exclusive(rel, fork, block)
        buf = bm.pin_if_valid(rel, fork, block)   # the usual case: in the pool already
        if buf >= 0:
            bm.lock_exclusive(buf)
            if image is not None:
                bm.page(buf)[:] = image
            return buf
        # The old content is overwritten: it is not read at all (a torn page on disk must
        # not stop redo), as PostgreSQL's RBM_ZERO_AND_LOCK; an image is written in its
        # place at once.
        return bm.zero_buffer(rel, fork, block, image)

    def read_buffer_for_redo(self, rr: ReadRecord, block_index: int) -> tuple[RedoAction, int | None]:
        ref = rr.record.blocks[block_index]
        bm = self.bufmgr
        if ref.image is not None:
            buf = self._buffer_for(ref.rel, ref.fork, ref.block, read=False, image=ref.image)
            page_set_lsn(bm.page(buf), rr.end_lsn)
            self.dirtied += bm.release_dirty(buf)
            return RedoAction.RESTORED, None
        if ref.will_init:
            buf = self._buffer_for(ref.rel, ref.fork, ref.block, read=False, image=ZERO_PAGE)
            return RedoAction.NEEDS_REDO, buf
        buf = self._buffer_for(ref.rel, ref.fork, ref.block, read=True)
        if _PAGE_LSN.unpack_from(bm.page(buf), LSN_OFFSET)[0] >= rr.end_lsn:
            bm.unlock_exclusive(buf)
            bm.unpin(buf)
            return RedoAction.DONE, None
        return RedoAction.NEEDS_REDO, buf

    def redo_btree_fast(self, batch: RedoBatch, a: int, b: int,
                        one: Callable[[ReadRecord], None]) -> None:
        """Redo fast records ``a``..``b - 1`` of a batch (single-block B+tree records without
        an image, not will_init, read by ``wal_decode.wal_fields``): each distinct page
        pinned and exclusive-locked once for the range (a run of records for one page
        keeps its buffer, as PostgreSQL's redo would with the buffer kept), the records
        applied in order by one C call (``btree_wal.redo_leaf_run_at``: rule 3's LSN test,
        the actions and the LSN stamp per record), then each changed page dirtied once.
        The pages are independent (btree_wal invariant 1), so the records keep their
        order per page. A page neither in the pool nor below the fork's known size (rule
        4: it may have to be created) cuts the range: its first record goes through
        ``one`` (its resource manager), the records around it through here."""
        bm = self.bufmgr
        f = batch.fields
        tags = batch.tags[a:b]
        # Every page in the pool (the usual case, prefetched): locked, changed, dirtied and
        # released in one section; else those in the pool are pinned and locked in one
        # section, the rest read and locked one by one, all released in one section.
        cbufs = batch.cbufs

        def apply(bufs: list[int]) -> set[int]:
            cbufs[a:b] = bufs
            changed = redo_leaf_run_at(bm.c_pool, bm.pages, cbufs, f.end_lsns, f.arena,
                                       f.offs, a, b)
            return set(compress(bufs, changed))

        turned = bm.apply_held(tags, apply)
        if turned is not None:
            self.fast += b - a
            self.dirtied += turned
            return
        distinct = list(dict.fromkeys(tags))
        pinned = bm.pin_exclusive_if_valid_many(distinct)
        cut = -1
        try:
            if -1 in pinned:
                sizes = self._sizes
                for i, buf in enumerate(pinned):
                    if buf < 0:
                        rel, fork, block = distinct[i]
                        if block >= sizes.get((rel, fork), 0):
                            cut = a + tags.index(distinct[i])
                            break
                        pinned[i] = bm.read_buffer_exclusive(rel, fork, block)
        except BaseException:
            bm.release_many([buf for buf in pinned if buf >= 0], ())
            raise
        if cut >= 0:
            bm.release_many([buf for buf in pinned if buf >= 0], ())
            if cut > a:
                self.redo_btree_fast(batch, a, cut, one)
            self.cuts += 1
            one(batch.raw.record(f.fast[cut]))
            if cut + 1 < b:
                self.redo_btree_fast(batch, cut + 1, b, one)
            return
        changed_bufs: set[int] | tuple = ()
        try:
            changed_bufs = apply(list(map(dict(zip(distinct, pinned, strict=True)).__getitem__,
                                          tags)))
            self.fast += b - a
        finally:
            self.dirtied += bm.release_many(pinned, changed_bufs)

    def finish_redo_buffer(self, rr: ReadRecord, buf: int) -> None:
        bm = self.bufmgr
        _PAGE_LSN.pack_into(bm.page(buf), LSN_OFFSET, rr.end_lsn)  # a WAL LSN: in range
        self.dirtied += bm.release_dirty(buf)


# --- bootstrap ----------------------------------------------------------------------------------

def bootstrap(data_dir: str, aio: Aio, *, wal_segment_size: int, segment_size: int,
              wal_buffers: int, io_direct_wal: bool = False, o_direct_wal: bool = False,
              extra: bytes = b"") -> ControlData:
    """Create the WAL directory, the first (shutdown) checkpoint and the control file of a
    new database in the existing, empty-of-Slonik-files ``data_dir``."""
    wal_dir = os.path.join(data_dir, WAL_DIR)
    if not osfile.exists(wal_dir):
        osfile.mkdir(wal_dir)
        osfile.fsync_directory(data_dir)
    wal = Wal(wal_dir, aio, wal_segment_size=wal_segment_size, wal_buffers=wal_buffers,
              io_direct=io_direct_wal, o_direct=o_direct_wal,
              record_writer_for=C_RECORD_WRITER_FOR,
              group_flush_for=C_GROUP_FLUSH_FOR)
    try:
        redo = wal.insert_lsn
        cp = CheckpointData(redo, 1, FIRST_RELFILENUMBER, time.time(), extra)
        start, end = wal.insert(RM_XLOG, XLOG_CHECKPOINT_SHUTDOWN, 0, encode_checkpoint(cp))
        wal.flush(end)
    finally:
        wal.close()
    control = ControlData(
        system_identifier=random.getrandbits(63) | 1, state=DbState.SHUTDOWNED,
        checkpoint_lsn=start, redo_lsn=redo, next_xid=cp.next_xid,
        next_relfilenumber=cp.next_relfilenumber, wal_segment_size=wal_segment_size,
        segment_size=segment_size, blcksz=BLCKSZ, time=cp.time)
    write_control(data_dir, control)
    return control


# --- startup ----------------------------------------------------------------------------------

def startup(*, data_dir: str, aio: Aio, smgr: Smgr, bufmgr: BufferManager, wal_buffers: int,
            io_direct_wal: bool = False, o_direct_wal: bool = False,
            full_page_writes: bool = True, on_segment_switch=None) -> tuple[Wal, ControlData, RecoveryInfo]:
    """Read the control file, replay WAL from the redo point, return an open Wal at the end.

    Every resource manager of the engine's table is bound first (``engine/rmgrlist.py``);
    the caller writes a checkpoint after a crash recovery (end-of-recovery checkpoint)."""
    install_rmgrs()
    t0 = time.perf_counter()
    control = read_control(data_dir)
    wal_dir = os.path.join(data_dir, WAL_DIR)
    seg = control.wal_segment_size
    try:
        cp_rr = read_record_at(wal_dir, seg, control.checkpoint_lsn)
    except WalError as exc:
        raise WalError(f"could not read the checkpoint record at "
                       f"{format_lsn(control.checkpoint_lsn)} named by the control file: "
                       f"{exc}") from exc
    if not is_checkpoint(cp_rr.record):
        raise WalError(f"the record at {format_lsn(control.checkpoint_lsn)} named by the "
                       f"control file is not a checkpoint record")
    cp = decode_checkpoint(cp_rr.record.payload)
    if cp.redo_lsn != control.redo_lsn:
        raise WalError(f"the control file's redo point {format_lsn(control.redo_lsn)} "
                       f"disagrees with its checkpoint record's {format_lsn(cp.redo_lsn)}")
    crashed = control.state != DbState.SHUTDOWNED
    # Read-only pass: after a crash an invalid record may be a torn tail or damage in the
    # middle of the log; the flush stamps past it tell which. Raises before any write.
    t_scan = time.perf_counter()
    end, last, stop_reason = find_wal_end(wal_dir, seg, cp.redo_lsn,
                                          check_middle_corruption=crashed)
    t_scan = time.perf_counter() - t_scan
    if end < cp_rr.end_lsn:
        raise WalError(f"WAL ends at {format_lsn(end)}, before the checkpoint record at "
                       f"{format_lsn(control.checkpoint_lsn)} ({stop_reason})")
    if crashed:
        write_control(data_dir, replace(control, state=DbState.IN_CRASH_RECOVERY,
                                        time=time.time()))
    ctx = RedoContext(bufmgr, smgr)
    reader = WalReader(wal_dir, seg, cp.redo_lsn, scanner=C_SCANNER)
    replayed = 0
    xids: set[int] = ctx.state.setdefault("xids", set())  # every xid that wrote WAL
    # WAL found after a crash may sit only in the page cache. Make all of it durable before
    # replay can write any data page (WAL before data holds during recovery too); then the
    # buffer manager's WAL flush has nothing left to do until the Wal is open.
    sync_segments(wal_dir, seg, cp.redo_lsn, _last_segment_lsn(wal_dir, seg))
    saved_flush_wal = bufmgr.flush_wal
    bufmgr.flush_wal = _wal_already_durable
    t_replay = time.perf_counter()
    try:
        redo_of: dict[int, Any] = {}     # rmgr id -> its redo routine, bound once
        # A background writer's job: with half the pool dirtied, write the dirty buffers in
        # combined runs, many in flight, rather than one victim at a time as reads need them.
        flush_at = max(1, int(bufmgr.nbuffers * RECOVERY_FLUSH_DIRTY_FRACTION))
        # Single-block B+tree records without an image (most of a KV or indexed-table WAL)
        # are read in one C call per batch and redone in runs (RedoContext.redo_btree_fast);
        # the rest are decoded and go one at a time through their resource manager, in
        # order between the runs.
        run_max = max(1, min(RECOVERY_REDO_RUN_RECORDS, bufmgr.nbuffers // 4)) \
            if C_REDO_RUN and C_FIELDS and bufmgr.c_pool is not None else 0

        def redo_one(rr: ReadRecord) -> None:
            rmgr = rr.record.rmgr
            redo = redo_of.get(rmgr)
            if redo is None:
                redo = redo_of[rmgr] = get_rmgr(rmgr).redo
            redo(ctx, rr)
            if ctx.dirtied >= flush_at:
                bufmgr.flush_all()
                ctx.dirtied = 0

        def redo_fast(batch: RedoBatch, a: int, b: int) -> None:
            for s in range(a, b, run_max):
                ctx.redo_btree_fast(batch, s, min(b, s + run_max), redo_one)
                if ctx.dirtied >= flush_at:
                    bufmgr.flush_all()
                    ctx.dirtied = 0

        for batch in _prefetching(reader, ctx, fast=run_max > 0):
            xids.update(batch.xids)
            replayed += batch.n
            done = 0          # fast records redone
            for j, (i, rr) in enumerate(batch.slow):
                if i - j > done:          # the fast records before this one
                    redo_fast(batch, done, i - j)
                    done = i - j
                redo_one(rr)
            if batch.nfast > done:
                redo_fast(batch, done, batch.nfast)
        xids.discard(0)
    finally:
        bufmgr.flush_wal = saved_flush_wal
    t_replay = time.perf_counter() - t_replay
    if (reader.end_lsn, reader.last_lsn) != (end, last):
        raise WalError(f"WAL changed during recovery: the first pass found its end at "
                       f"{format_lsn(end)}, replay at {format_lsn(reader.end_lsn)} "
                       f"({reader.stop_reason})")
    if crashed or end != cp_rr.end_lsn:
        truncate_tail(wal_dir, seg, end)
    wal = Wal(wal_dir, aio, wal_segment_size=seg, wal_buffers=wal_buffers,
              io_direct=io_direct_wal, o_direct=o_direct_wal,
              full_page_writes=full_page_writes, start_lsn=end,
              prev_lsn=last, redo_lsn=cp.redo_lsn, on_segment_switch=on_segment_switch,
              record_writer_for=C_RECORD_WRITER_FOR, group_flush_for=C_GROUP_FLUSH_FOR)
    info = RecoveryInfo(crashed or end != cp_rr.end_lsn, replayed, cp.redo_lsn, end,
                        reader.stop_reason, ctx.state.get("last_checkpoint", cp), cp.extra,
                        ctx.state, time.perf_counter() - t0, max(0, end - cp.redo_lsn),
                        t_scan, t_replay, ctx.fast, ctx.cuts)
    return wal, control, info


def find_wal_end(wal_dir: str, wal_segment_size: int, redo_lsn: int, *,
                 check_middle_corruption: bool) -> tuple[int, int, str]:
    """(end, last record start, stop reason) of the valid WAL from ``redo_lsn``, reading
    only; ``WalCorruptMiddleError`` when the check is asked for and a flush stamp proves the
    first invalid record durable."""
    reader = WalReader(wal_dir, wal_segment_size, redo_lsn,
                       check_middle_corruption=check_middle_corruption, scanner=C_SCANNER)
    reader.scan_to_end()
    return reader.end_lsn, reader.last_lsn, reader.stop_reason


def _wal_already_durable(lsn: int) -> None:
    """The buffer manager's WAL flush during replay: every WAL segment was synced first."""


def _last_segment_lsn(wal_dir: str, wal_segment_size: int) -> int:
    segnos = [n for n in (parse_segment_file_name(x) for x in osfile.listdir(wal_dir))
              if n is not None]
    return max(segnos, default=0) * wal_segment_size


class RedoBatch:
    """A batch of records read for redo (``_prefetching``): ``n`` records; ``xids`` of each;
    ``slow``: (index in the batch, decoded record) of those redone one at a time through
    their resource manager, in order; with the fast path on, ``fields`` of the rest, read
    from the ``raw`` batch by ``wal_decode.wal_fields`` (``nfast`` of them, their pages
    ``tags``; ``cbufs`` holds their buffer ids while a run is redone)."""

    __slots__ = ("raw", "n", "xids", "slow", "fields", "nfast", "tags", "cbufs")

    def __init__(self, item: RawBatch | list[ReadRecord], fast: bool) -> None:
        self.fields = None
        self.nfast = 0
        self.tags: list[tuple[int, int, int]] = []
        self.cbufs = None
        if not isinstance(item, RawBatch):          # a record read on its own
            self.raw = None
            self.n = len(item)
            self.slow = list(enumerate(item))
            self.xids = [rr.record.xid for rr in item]
            return
        self.raw = item
        self.n = n = len(item.ats)
        if not fast:
            self.slow = [(i, item.record(i)) for i in range(n)]
            self.xids = [rr.record.xid for _i, rr in self.slow]
            return
        f = self.fields = wal_fields(item, RM_BTREE)
        self.xids = f.xids
        self.nfast = len(f.fast)
        self.tags = list(zip(f.rels, f.forks, f.blocks, strict=True))
        self.cbufs = new_buffer_ids(self.nfast)
        slow = sorted(set(range(n)).difference(f.fast)) if self.nfast < n else ()
        self.slow = [(i, item.record(i)) for i in slow]

    def prefetch_tags(self) -> tuple[Iterator[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(the (rel, fork, block) of the blocks redo will read: no image, not will_init, a
        block as often as records name it; those of the blocks it writes whole: an image
        or will_init). Only the slow records have the latter (the fast ones have neither)."""
        read, whole = [], []
        for ref in chain.from_iterable(map(_BLOCKS, map(_RECORD, map(_SECOND, self.slow)))):
            if ref.image is None and not ref.will_init:
                read.append(_REF_TAG(ref))
            else:
                whole.append(_REF_TAG(ref))
        return chain(self.tags, read), whole


def _prefetching(reader: WalReader, ctx: RedoContext, *, fast: bool) -> Iterator[RedoBatch]:
    """Yield the reader's batches of records, prepared for redo (``RedoBatch``; ``fast``: read
    the fast records' fields in C), starting reads of the blocks of the records of the
    batches ahead, at least ``RECOVERY_PREFETCH_RECORDS`` records beyond the batch handed
    out (blocks below the redo context's known size only: the others do not exist yet);
    with the sync method, which cannot overlap reads, advising the kernel to read them
    ahead instead."""
    window: deque[tuple[RedoBatch, list]] = deque()
    ahead = 0                     # records in the window
    pinned = 0
    it = reader.raw_batches()
    exhausted = False
    bufmgr = ctx.bufmgr
    known_nblocks = ctx.known_nblocks
    # Prefetch may hold a quarter of the pool pinned at most: redo needs buffers too.
    max_pins = min(RECOVERY_PREFETCH_PINS, max(1, bufmgr.nbuffers // 4))
    sizes = ctx._sizes
    no_ops: list = []
    smgr = ctx.smgr
    advise_only = bufmgr.aio.method.name == "sync"
    # Blocks a record in the window restores from its image or initializes (will_init):
    # reading them would be wasted (redo overwrites the page whole; PostgreSQL's
    # prefetcher skips them too). A tag counts from its batch's entry into the window to
    # its redo, after which the page is in the pool. Any later reference in the window
    # is skipped with it; so is an earlier reference in the same batch (a block reused
    # after being freed: rare), which redo then reads itself.
    whole: dict[tuple[int, int, int], int] = {}

    def start_prefetch(batch: RedoBatch) -> tuple[list, list[tuple[int, int, int]]]:
        """(the reads started for ``batch``, the tags it writes whole, now counted in
        ``whole``)."""
        nonlocal pinned
        ops = no_ops
        tags, batch_whole = batch.prefetch_tags()
        for tag in batch_whole:
            whole[tag] = whole.get(tag, 0) + 1
        # Most blocks are in the pool: that filter first, on every tag; the others
        # (a few) are then deduplicated.
        uncached = bufmgr.uncached(tags)
        if whole:
            uncached = filterfalse(whole.__contains__, uncached)
        for rel, fork, block in dict.fromkeys(uncached):
            if pinned >= max_pins:
                break
            n = sizes.get((rel, fork))
            if block >= (known_nblocks(rel, fork) if n is None else n):
                continue
            if advise_only:
                # The sync method reads inline: a read started now would not overlap with
                # redo. Ask the kernel to read ahead instead (posix_fadvise WILLNEED), as
                # PostgreSQL's recovery prefetch does without AIO.
                smgr.prefetch(rel, fork, block, 1)
                continue
            if ops is no_ops:
                ops = []
            ops.append(bufmgr.start_read_buffers(rel, fork, block, 1))
            pinned += 1
        return ops, batch_whole

    try:
        while True:
            while not exhausted and (not window or
                                     ahead - window[0][0].n < RECOVERY_PREFETCH_RECORDS):
                item = next(it, None)
                if item is None:
                    exhausted = True
                    break
                batch = RedoBatch(item, fast)
                window.append((batch, *start_prefetch(batch)))
                ahead += batch.n
            if not window:
                return
            batch, ops, whole_tags = window.popleft()
            ahead -= batch.n
            for tag in whole_tags:   # redo writes them now: from here on, in the pool
                if whole[tag] == 1:
                    del whole[tag]
                else:
                    whole[tag] -= 1
            if ops:
                _finish_prefetch(bufmgr, ops)
                pinned -= len(ops)
            yield batch
    finally:
        for _batch, ops, _whole in window:
            _finish_prefetch(bufmgr, ops)


def _finish_prefetch(bufmgr: BufferManager, ops: list) -> None:
    """Complete prefetch reads and drop their pins. A page that fails verification here is
    not an error yet: redo reads it again (and raises) unless a full-page image replaces it."""
    for op in ops:
        try:
            bufs = bufmgr.wait_read_buffers(op)
        except DataCorruptionError:
            continue
        bufmgr.unpin_many(bufs)
