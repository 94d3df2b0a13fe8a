"""Read a data directory without opening a ``Database``: the read-only tools' only door.

``slonik check``, ``waldump`` and ``controldata`` must leave every byte, every file name and
every mtime of the directory as they found them (DESIGN §7): no recovery, no checkpoint, no
lock file, no file created. ``Database.open`` does all of those, so these tools never call
it. What they need instead lives here:

- ``require_database(path)``: the directory holds a control file, or ``NotADatabaseError``
  (nothing is created, not even the directory).
- ``lock_holder(path)``: the process id holding ``slonik.lock``, read from
  ``/proc/locks`` (the kernel's list of flock locks, matched by device and inode), so the
  question is asked without taking the lock or opening the file for writing. A database
  open elsewhere is one whose files are changing: ``check`` refuses it, ``controldata``
  and ``waldump`` show the files as they are and say so.
- ``relation_forks(path)``: every (relfilenumber, fork) with a segment 0 under ``base/``.
- ``RelationFileReader``: the md segment rule of ``Smgr.nblocks`` and vectored block reads,
  every file opened ``O_RDONLY`` through ``aio.osfile`` and every read issued through an
  ``Aio`` of the chosen io method (a ``FILE_TARGET_ID`` target, so a worker reopens the file
  read-only by path too).
- ``catalog_rows(pages)``: relation names from the catalog heap's pages, decoded with the
  catalog's own codec; ``RecoveryImages``: the blocks that WAL replay from the redo point
  would restore from a full-page image or re-initialise, found by reading the WAL.
- What a cleanly shut down database holds, for ``slonik dump``: ``shutdown_visibility``
  reads the shutdown checkpoint record (the aborted and running xids recovery would start
  from) into a ``Visibility``; ``fork_pages`` yields a fork's verified pages;
  ``visible_relations`` the catalog as the engine would load it; ``table_rows`` a table's
  visible rows (heap pages, ``RowCodec``); ``kv_pairs`` a KV store's visible pairs in key
  order — the one function that knows a KV store's page format: it walks the B+tree's
  leaf level and reads out-of-line values from their overflow pages.
- ``OfflinePages``: a read-only stand-in for the buffer manager over ``RelationFileReader``
  (each block read and verified when asked for, nothing cached or written), enough for
  ``BTree.open`` and ``BTree.check``, so ``slonik check`` runs the tree's own amcheck-like
  check on each KV store.

Invariants:
1. Every file this module opens is opened ``O_RDONLY``; it never calls an ``osfile``
   function that writes, syncs, creates, renames, truncates or removes.
2. A block is read whole or reported unreadable; nothing is retried in a loop without a
   bound (one whole-run read, then at most one read per block of a failed run).
3. Rows are read only from a database whose control file says ``SHUTDOWNED``: then every
   page on disk is the checkpoint's, no transaction is running, and a version is visible
   exactly when its xmin committed and its xmax (if any) did not. Anything else is
   ``RecoveryNeededError``; a page that fails verification is ``DataCorruptionError``
   naming relation and block, never skipped.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from slonik.aio import callbacks as cb
from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.aio.errors import IOFailure, SlonikError
from slonik.aio.handle import AioReturn
from slonik.engine.access.btree import BTree, unpack_overflow_ref
from slonik.engine.access.btree_page import (
    BTP_DELETED,
    BTP_LEAF,
    BTP_OVERFLOW,
    ENTRY_OVERFLOW,
    P_NONE,
    BTreePageError,
    Special,
    bt_first_data,
    bt_item,
    bt_item_count,
    bt_special,
    unpack_entry,
    unpack_pivot,
)
from slonik.engine.access.tuple import RowCodec, Tid, unpack_tuple
from slonik.engine.catalog import CATALOG_RELFILENUMBER, RelationEntry, decode_entry
from slonik.engine.database import LOCK_FILE_NAME, NotADatabaseError
from slonik.engine.recovery import WAL_DIR
from slonik.engine.xact import decode_xact_extra
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import (
    BLCKSZ,
    LpFlag,
    PageCorruptError,
    PageRunVerifier,
    page_check,
    page_get_item,
    page_get_special,
    page_is_new,
    page_item_count,
    page_item_flags,
)
from slonik.storage.smgr import Fork
from slonik.wal.checkpoint import decode_checkpoint, is_checkpoint
from slonik.wal.control import CONTROL_FILE_NAME, ControlData, DbState
from slonik.wal.errors import WalError
from slonik.wal.lsn import format_lsn
from slonik.wal.reader import WalReader, read_record_at

__all__ = ["require_database", "lock_holder", "relation_forks", "RelationFileReader",
           "catalog_rows", "RecoveryImages", "recovery_images", "PROC_LOCKS_PATH",
           "READ_RUN_BLOCKS", "RecoveryNeededError", "Visibility", "shutdown_visibility",
           "fork_pages", "verified_pages", "visible_relations", "table_rows", "kv_pairs",
           "OfflinePages"]

PROC_LOCKS_PATH = "/proc/locks"
LOCK_FILE_PID_BYTES = 64     # the lock file holds "<pid>\n"; more is not a pid
# Blocks per read (512 KiB): big sequential reads, a small buffer. A run never crosses a
# segment file, so one read is one preadv/io_uring read of one file.
READ_RUN_BLOCKS = 64
_FILE_RE = re.compile(r"^(\d+)(_fsm|_vm)?(?:\.(\d+))?$")
_SUFFIX_FORK = {None: Fork.MAIN, "_fsm": Fork.FSM, "_vm": Fork.VM}
_FORK_SUFFIX = {fork: suffix or "" for suffix, fork in _SUFFIX_FORK.items()}


# --- the directory --------------------------------------------------------------------------

def require_database(path: str | os.PathLike) -> str:
    """``path`` made absolute; ``NotADatabaseError`` unless it holds a control file."""
    path = os.path.abspath(os.fspath(path))
    if not osfile.exists(os.path.join(path, CONTROL_FILE_NAME)):
        raise NotADatabaseError(f"{path} is not a Slonik database (no {CONTROL_FILE_NAME}); "
                                f"nothing was changed")
    return path


def lock_holder(path: str, *, proc_locks: str = PROC_LOCKS_PATH) -> int | None:
    """The pid holding the flock of ``path``'s lock file, or None when nobody does (or the
    lock file does not exist). Reads the kernel's lock table, taking no lock itself; where
    that table cannot be read, probes with a shared, non-blocking flock on a read-only
    descriptor, released at once (a ``Database.open`` racing that instant is refused with
    its clear "already open" error, and nothing is written either way)."""
    lock_path = os.path.join(path, LOCK_FILE_NAME)
    try:
        st = os.stat(lock_path)
    except FileNotFoundError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as f:
            table = f.read().splitlines()
    except OSError:
        return _probe_lock(lock_path)
    for line in table:
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF" (a "->" marks a waiter)
        fields = line.split()
        if len(fields) >= 6 and "->" not in fields and fields[1] == "FLOCK" \
                and fields[5] == wanted:
            return int(fields[4])
    return None


def _probe_lock(lock_path: str) -> int | None:
    fd = osfile.open(lock_path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            buf = bytearray(LOCK_FILE_PID_BYTES)
            n = osfile.preadv(fd, [buf], 0)
            text = bytes(buf[:n]).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        osfile.close(fd)


def relation_forks(path: str) -> list[tuple[int, Fork]]:
    """(relfilenumber, fork) of every fork with a segment 0 under ``base/``, sorted."""
    base = os.path.join(path, "base")
    if not osfile.exists(base):
        return []
    forks = set()
    for name in osfile.listdir(base):
        m = _FILE_RE.match(name)
        if m and m.group(3) is None:
            forks.add((int(m.group(1)), _SUFFIX_FORK[m.group(2)]))
    return sorted(forks)


# --- relation files -------------------------------------------------------------------------

class RelationFileReader:
    """Blocks of relation forks read ``O_RDONLY`` through an ``Aio`` (see the module
    docstring). ``segment_size`` is in blocks, as in the control file."""

    def __init__(self, path: str, aio: Aio, segment_size: int) -> None:
        if not isinstance(segment_size, int) or segment_size < 1:
            raise ValueError(f"segment_size must be a positive number of blocks, "
                             f"got {segment_size!r}")
        self.base_dir = os.path.join(path, "base")
        self.aio = aio
        self.segment_size = segment_size

    def segment_path(self, rel: int, fork: Fork, segno: int) -> str:
        name = f"{rel}{_FORK_SUFFIX[fork]}"
        return os.path.join(self.base_dir, f"{name}.{segno}" if segno else name)

    def _size(self, path: str) -> int:
        fd = osfile.open(path, os.O_RDONLY)
        try:
            return osfile.file_size(fd)
        finally:
            osfile.close(fd)

    def nblocks(self, rel: int, fork: Fork) -> int:
        """Blocks in the fork by the md rule (it ends at the first segment that is not
        full; a trailing partial block does not count). ``DataCorruptionError`` for a segment
        larger than ``segment_size`` blocks."""
        segno = 0
        while True:
            path = self.segment_path(rel, fork, segno)
            try:
                size = self._size(path)
            except FileNotFoundError:
                if segno == 0:
                    raise
                return segno * self.segment_size   # the previous segment was full
            blocks = size // BLCKSZ
            if blocks > self.segment_size:
                raise DataCorruptionError(f"file {path} holds {blocks} blocks, more than the "
                                       f"segment size {self.segment_size}", relation=rel,
                                       fork=int(fork), block=segno * self.segment_size)
            if blocks < self.segment_size:
                return segno * self.segment_size + blocks
            segno += 1

    def runs(self, nblocks: int) -> Iterator[tuple[int, int]]:
        """(first block, count) runs of at most READ_RUN_BLOCKS inside one segment."""
        block = 0
        while block < nblocks:
            n = min(READ_RUN_BLOCKS, nblocks - block,
                    self.segment_size - block % self.segment_size)
            yield block, n
            block += n

    def _read(self, fd: int, path: str, views: list[memoryview], offset: int) -> None:
        """One vectored read through the aio; IOFailure unless every byte arrived."""
        ret = AioReturn()
        handle = self.aio.acquire(ret)
        handle.set_target(cb.FILE_TARGET_ID, (path, os.O_RDONLY, offset))
        ref = handle.wait_ref()
        handle.start_readv(fd, views, offset)
        self.aio.wait(ref)
        result = ret.raise_if_failed(allow_partial=True)
        wanted = len(views) * BLCKSZ
        if result.result != wanted:
            raise IOFailure(errno.EIO, f"short read of {path} at offset {offset}: "
                                       f"{result.result} of {wanted} bytes")

    def read_run(self, rel: int, fork: Fork, first: int, views: list[memoryview]) -> dict[int, str]:
        """Read ``len(views)`` blocks from ``first`` (one segment) into ``views``. Returns
        {index in views: reason} for blocks that could not be read (their view is zeroed);
        after a failed whole-run read, each block is read once on its own."""
        segno, in_segment = divmod(first, self.segment_size)
        assert in_segment + len(views) <= self.segment_size, "a run stays in one segment"
        path = self.segment_path(rel, fork, segno)
        unreadable: dict[int, str] = {}
        fd = osfile.open(path, os.O_RDONLY)
        try:
            try:
                self._read(fd, path, views, in_segment * BLCKSZ)
            except OSError:
                for k, view in enumerate(views):
                    try:
                        self._read(fd, path, [view], (in_segment + k) * BLCKSZ)
                    except OSError as exc:
                        unreadable[k] = f"read failed: {exc}"
                        view[:] = bytes(BLCKSZ)
        finally:
            self.aio.closing_fd(fd)
            osfile.close(fd)
        return unreadable


# --- the catalog ------------------------------------------------------------------------------

def catalog_rows(page, block: int) -> list[RelationEntry]:
    """The catalog rows on one (verified) page of the catalog heap, committed or not: a
    tool naming files wants every name a row gives, and never writes one. ValueError /
    TupleFormatError (a DataCorruptionError) for a row that does not decode."""
    if page_is_new(page):
        return []
    rows = []
    for offnum in range(1, page_item_count(page) + 1):
        if page_item_flags(page, offnum) != LpFlag.NORMAL:
            continue
        _xmin, _xmax, _flags, data = unpack_tuple(page_get_item(page, offnum))
        rows.append(decode_entry(data, Tid(block, offnum)))
    return rows


# --- what recovery would restore ----------------------------------------------------------------

@dataclass(frozen=True)
class RecoveryImages:
    """What replay from ``redo_lsn`` would do to whole pages: ``images`` maps (rel, fork,
    block) to the LSN of the first record that restores the page from a full-page image
    or re-initialises it. ``end_lsn``/``stop_reason``: where readable WAL ends and why;
    ``error``: why the WAL could not be read to its end (then ``images`` is partial)."""

    redo_lsn: int
    images: dict[tuple[int, int, int], int]
    records: int
    end_lsn: int
    stop_reason: str
    error: str | None

    def restores(self, rel: int, fork: int, block: int) -> int | None:
        """The LSN of the record that rewrites this block whole at replay, or None."""
        return self.images.get((rel, fork, block))


def recovery_images(path: str, control: ControlData, *,
                    on_record: Callable[[], None] | None = None) -> RecoveryImages:
    """Read the WAL (read-only) from the control file's redo point, as recovery would, and
    note every block a record restores whole; see ``RecoveryImages``."""
    images: dict[tuple[int, int, int], int] = {}
    reader = WalReader(os.path.join(path, WAL_DIR), control.wal_segment_size,
                       control.redo_lsn, check_middle_corruption=True)
    error = None
    try:
        for rr in reader:
            for b in rr.record.blocks:
                if b.image is not None or b.will_init:
                    images.setdefault((b.rel, b.fork, b.block), rr.lsn)
            if on_record is not None:
                on_record()
    except (SlonikError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return RecoveryImages(control.redo_lsn, images, reader.records_read, reader.end_lsn,
                          reader.stop_reason, error)



# --- what a cleanly shut down database holds ----------------------------------------------------

class RecoveryNeededError(SlonikError):
    """The database was not shut down cleanly: its pages may be torn or stale until WAL
    replay, so no row read from them now would be trustworthy."""


@dataclass(frozen=True)
class Visibility:
    """Which versions a cleanly shut down database shows: every xid below ``next_xid``
    ended, and those in ``uncommitted`` (aborted, or running when the shutdown checkpoint
    was taken, which recovery would abort) did not commit. The same rule as the engine's
    ``TransactionManager.is_committed`` with no transaction running."""

    next_xid: int
    uncommitted: frozenset[int] = field(default_factory=frozenset)

    def committed(self, xid: int) -> bool:
        return 0 < xid < self.next_xid and xid not in self.uncommitted

    def visible(self, xmin: int, xmax: int) -> bool:
        """A version created by ``xmin`` and deleted by ``xmax`` (0: never) is live."""
        return self.committed(xmin) and not (xmax and self.committed(xmax))


def shutdown_visibility(path: str, control: ControlData) -> Visibility:
    """The visibility a database shut down cleanly leaves: read (read-only) from the
    checkpoint record the control file names. ``RecoveryNeededError`` unless the control
    file says ``SHUTDOWNED``; ``WalError`` when that record cannot be read."""
    if control.state != DbState.SHUTDOWNED:
        raise RecoveryNeededError(
            f"database {path} was not shut down cleanly (state {control.state.name}) and "
            f"needs recovery; nothing was read or changed. Recover it first with "
            f"'slonik check --recover {path}' (or by opening it), then run this again")
    wal_dir = os.path.join(path, WAL_DIR)
    rr = read_record_at(wal_dir, control.wal_segment_size, control.checkpoint_lsn)
    if not is_checkpoint(rr.record):
        raise WalError(f"the record at {format_lsn(control.checkpoint_lsn)} named by the "
                       f"control file is not a checkpoint record")
    cp = decode_checkpoint(rr.record.payload)
    try:
        aborted, running = decode_xact_extra(cp.extra)
    except ValueError as exc:
        raise WalError(f"the checkpoint record at {format_lsn(control.checkpoint_lsn)}: "
                       f"{exc}") from exc
    return Visibility(max(cp.next_xid, control.next_xid), frozenset(aborted | running))


def verified_pages(reader: RelationFileReader, rel: int, fork: Fork, nblocks: int, *,
                   progress: Callable[[int], None] | None = None
                   ) -> Iterator[tuple[int, memoryview, str | None]]:
    """(block, page, reason) of the fork's first ``nblocks`` blocks, in order, read a run at
    a time: ``reason`` is None when the page verified (checksum and header, then structure:
    line pointers, item extents, free space), else why it did not (or could not be read).
    The page is a view into a buffer reused by the next run: copy what must outlive the
    next iteration. ``progress(n)`` is called after each run of ``n`` blocks."""
    pool = bytearray(READ_RUN_BLOCKS * BLCKSZ)
    views = [memoryview(pool)[i * BLCKSZ:(i + 1) * BLCKSZ] for i in range(READ_RUN_BLOCKS)]
    verifier = PageRunVerifier(pool)
    for first, n in reader.runs(nblocks):
        unreadable = reader.read_run(rel, fork, first, views[:n])
        failed = {k: v.reason for k, v in verifier.verify(range(n), rel, fork, first)}
        failed.update(unreadable)
        for k in range(n):
            reason = failed.get(k)
            if reason is None:
                try:
                    page_check(views[k])
                except PageCorruptError as exc:
                    reason = f"page structure: {exc}"
            yield first + k, views[k], reason
        if progress is not None:
            progress(n)


def fork_pages(reader: RelationFileReader, rel: int, fork: Fork = Fork.MAIN, *,
               progress: Callable[[int], None] | None = None
               ) -> Iterator[tuple[int, memoryview]]:
    """(block, page) of every block of the fork, each verified before it is yielded (see
    ``verified_pages``). ``DataCorruptionError`` naming the relation, fork and block at
    the first page that cannot be read or does not verify."""
    for block, page, reason in verified_pages(reader, rel, fork, reader.nblocks(rel, fork),
                                              progress=progress):
        if reason is not None:
            raise DataCorruptionError(
                f"block {block} of relation {rel} ({fork.label} fork) is damaged: {reason}",
                relation=rel, fork=int(fork), block=block)
        yield block, page


def _visible_data(page: memoryview, visibility: Visibility, rel: int,
                  block: int) -> Iterator[tuple[int, bytes]]:
    """(offnum, data) of each heap tuple on ``page`` that ``visibility`` shows.
    ``DataCorruptionError`` for a page that is not a heap page (heap pages have no
    special space; a B+tree page has its links there)."""
    if page_is_new(page):
        return
    special = len(page_get_special(page))
    if special:
        raise DataCorruptionError(
            f"block {block} of relation {rel} is not a heap page (it has {special} bytes "
            f"of special space): the relation is not stored the way this reader expects",
            relation=rel, fork=int(Fork.MAIN), block=block)
    for offnum in range(1, page_item_count(page) + 1):
        if page_item_flags(page, offnum) != LpFlag.NORMAL:
            continue
        xmin, xmax, _flags, data = unpack_tuple(page_get_item(page, offnum))
        if visibility.visible(xmin, xmax):
            yield offnum, data


def visible_relations(reader: RelationFileReader, visibility: Visibility
                      ) -> dict[str, RelationEntry]:
    """name → catalog entry of every relation the engine would load at open (the catalog
    heap's visible rows), sorted by name."""
    entries: dict[str, RelationEntry] = {}
    for block, page in fork_pages(reader, CATALOG_RELFILENUMBER):
        for offnum, data in _visible_data(page, visibility, CATALOG_RELFILENUMBER, block):
            entry = decode_entry(data, Tid(block, offnum))
            if entry.name in entries:
                raise DataCorruptionError(
                    f"the catalog holds two live rows named {entry.name!r}",
                    relation=CATALOG_RELFILENUMBER, fork=int(Fork.MAIN), block=block)
            entries[entry.name] = entry
    return dict(sorted(entries.items()))


def table_rows(reader: RelationFileReader, entry: RelationEntry, visibility: Visibility, *,
               progress: Callable[[int], None] | None = None) -> Iterator[tuple]:
    """The visible rows of table ``entry`` in physical order, decoded with its schema."""
    assert entry.kind == "table", entry
    decode = RowCodec(entry.columns).decode
    rel = entry.relfilenumber
    for block, page in fork_pages(reader, rel, progress=progress):
        for _offnum, data in _visible_data(page, visibility, rel, block):
            yield decode(data)


class OfflinePages:
    """The buffer-manager calls ``BTree.open``/``BTree.check`` make (``pin_if_valid``,
    ``read_buffer``, ``page``, share locks, ``unpin``, ``smgr.nblocks``), answered read-only from the files:
    each ``read_buffer`` reads the block (``O_RDONLY``, through the reader's Aio) and
    verifies it (checksum, header, structure) or raises ``DataCorruptionError`` naming
    relation, fork and block. Nothing is cached beyond the pins held; nothing is written."""

    def __init__(self, reader: RelationFileReader) -> None:
        self.reader = reader
        self.smgr = self
        self._pool = bytearray(BLCKSZ)
        self._views = [memoryview(self._pool)]
        self._verifier = PageRunVerifier(self._pool)
        self._pinned: dict[int, bytes] = {}
        self._next_buf = 1

    def nblocks(self, rel: int, fork: Fork) -> int:
        return self.reader.nblocks(rel, Fork(fork))

    def read_block(self, rel: int, fork: Fork, block: int) -> bytes:
        """A copy of ``block``, verified."""
        fork = Fork(fork)
        failed = self.reader.read_run(rel, fork, block, self._views)
        failed.update((k, v.reason) for k, v in self._verifier.verify(range(1), rel, fork, block))
        reason = failed.get(0)
        if reason is None:
            try:
                page_check(self._views[0])
            except PageCorruptError as exc:
                reason = f"page structure: {exc}"
        if reason is not None:
            raise DataCorruptionError(
                f"block {block} of relation {rel} ({fork.label} fork) is damaged: {reason}",
                relation=rel, fork=int(fork), block=block)
        return bytes(self._pool)

    def pin_if_valid(self, rel: int, fork: int, block: int) -> int:
        """No pool to hit: always -1 (``read_buffer`` reads the file)."""
        return -1

    def read_buffer(self, rel: int, fork: Fork, block: int) -> int:
        buf = self._next_buf
        self._next_buf += 1
        self._pinned[buf] = self.read_block(rel, fork, block)
        return buf

    def page(self, buf: int) -> bytes:
        return self._pinned[buf]

    def lock_shared(self, buf: int) -> None:
        """Nothing else changes the files (check and dump read a closed database)."""

    unlock_shared = lock_shared

    def unpin(self, buf: int) -> None:
        del self._pinned[buf]


def _tree_page(pages: OfflinePages, rel: int, nblocks: int, block: int
               ) -> tuple[bytes, Special]:
    """(page, special) of B+tree block ``block``; DataCorruptionError naming relation and
    block when it is outside the relation, unreadable, or no B+tree page."""
    def bad(why: str) -> DataCorruptionError:
        return DataCorruptionError(f"B+tree relation {rel} block {block}: {why}",
                                   relation=rel, fork=int(Fork.MAIN), block=block)
    if not 0 < block < nblocks:
        raise bad(f"linked to, but outside the relation's {nblocks} blocks")
    page = pages.read_block(rel, Fork.MAIN, block)
    if page_is_new(page):
        raise bad("page is all zero (never initialised) inside the tree")
    try:
        return page, bt_special(page)
    except BTreePageError as exc:
        raise bad(str(exc)) from None


def kv_pairs(reader: RelationFileReader, entry: RelationEntry, visibility: Visibility, *,
             progress: Callable[[int], None] | None = None) -> Iterator[tuple[bytes, bytes]]:
    """The visible (key, value) pairs of KV store ``entry``, in key order.

    The one place that knows how a KV store lies on disk: a B+tree (``engine.access.btree``)
    whose metapage names the root; this descends the leftmost downlinks to the leaf level
    and walks it by right-links (already in key order), keeping the versions
    ``visibility`` shows and reading out-of-line values from their overflow pages, one
    block at a time, each verified. ``DataCorruptionError`` naming relation and block when
    a page is damaged, a link leads nowhere, or two live versions of one key are found.
    ``progress(1)`` after each leaf."""
    assert entry.kind == "kv", entry
    rel = entry.relfilenumber
    pages = OfflinePages(reader)
    nblocks = reader.nblocks(rel, Fork.MAIN)
    tree = BTree.open(rel, pages, None)  # the metapage: DataCorruptionError naming block 0
    block = tree.root
    page, special = _tree_page(pages, rel, nblocks, block)
    for _ in range(tree.height - 1):
        try:
            child = unpack_pivot(bt_item(page, bt_first_data(special))).child
        except BTreePageError as exc:
            raise DataCorruptionError(f"B+tree relation {rel} block {block}: {exc}",
                                      relation=rel, fork=int(Fork.MAIN), block=block) from None
        block = child
        page, special = _tree_page(pages, rel, nblocks, block)
    last: bytes | None = None
    seen = set()
    while True:
        if block in seen or not special.flags & BTP_LEAF or special.flags & BTP_DELETED:
            raise DataCorruptionError(
                f"B+tree relation {rel} block {block}: on the leaf level's right-link chain "
                f"but flags {special.flags:#x}{' (reached twice)' if block in seen else ''}",
                relation=rel, fork=int(Fork.MAIN), block=block)
        seen.add(block)
        try:
            found = [e for e in (unpack_entry(bt_item(page, off)) for off in
                                 range(bt_first_data(special), bt_item_count(page) + 1))
                     if visibility.visible(e.xmin, e.xmax)]
        except BTreePageError as exc:
            raise DataCorruptionError(f"B+tree relation {rel} block {block}: {exc}",
                                      relation=rel, fork=int(Fork.MAIN), block=block) from None
        for e in found:
            if last is not None and e.key <= last:
                raise DataCorruptionError(
                    f"KV store {entry.name!r} holds two live versions of key {e.key!r}"
                    if e.key == last else f"KV store {entry.name!r}: key {e.key!r} after "
                    f"{last!r} on the leaf level", relation=rel, fork=int(Fork.MAIN),
                    block=block)
            last = e.key
            value = e.payload
            if e.flags & ENTRY_OVERFLOW:
                value = _overflow_value(pages, rel, nblocks, block, e.payload)
            yield e.key, bytes(value)
        if progress is not None:
            progress(1)
        if special.next == P_NONE:
            return
        block = special.next
        page, special = _tree_page(pages, rel, nblocks, block)


def _overflow_value(pages: OfflinePages, rel: int, nblocks: int, leaf: int,
                    payload: bytes) -> bytes:
    """The out-of-line value ``payload`` (an overflow reference on leaf ``leaf``) names."""
    try:
        ref = unpack_overflow_ref(bytes(payload))
    except BTreePageError as exc:
        raise DataCorruptionError(f"B+tree relation {rel} block {leaf}: {exc}",
                                  relation=rel, fork=int(Fork.MAIN), block=leaf) from None
    out = bytearray()
    for seq, block in enumerate(ref.blocks()):
        page, special = _tree_page(pages, rel, nblocks, block)
        if not special.flags & BTP_OVERFLOW or special.prev != seq or bt_item_count(page) != 1:
            raise DataCorruptionError(
                f"B+tree relation {rel} block {block}: expected overflow chunk {seq} of a "
                f"value on leaf {leaf}, found flags {special.flags:#x} chunk {special.prev}",
                relation=rel, fork=int(Fork.MAIN), block=block)
        out += bt_item(page, 1)
    if len(out) != ref.length:
        raise DataCorruptionError(
            f"B+tree relation {rel} block {leaf}: an overflow value of {len(out)} bytes, "
            f"its reference says {ref.length}", relation=rel, fork=int(Fork.MAIN), block=leaf)
    return bytes(out)
