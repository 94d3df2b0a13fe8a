"""The storage manager: relation forks stored as md-style segment files.

A relation is named by its relfilenumber and has up to three forks (main, free space map,
visibility map). Fork ``F`` of relation ``R`` is a series of segment files of
``segment_size`` blocks each::

    <data_dir>/base/R<suffix>        segment 0 (always present once created)
    <data_dir>/base/R<suffix>.1      segment 1
    <data_dir>/base/R<suffix>.N      segment N

md invariant: every segment before the last is exactly ``segment_size`` blocks long. The
relation's size is therefore decided by the first segment that is not full, as in
PostgreSQL's md.c; growth that skips blocks pads the earlier segments to full size first
(the skipped blocks read back as zeros, a valid new page).

I/O is vectored: a run of consecutive blocks becomes one ``preadv``/``pwritev`` per
segment it touches (at most ``IOV_MAX`` buffers each), never one call per block. File
descriptors come from an ``FdCache`` bounded by ``max_files``. Every OS call goes through
``aio.osfile``. OS errors become ``IOFailure`` (errno kept) whose message names the
operation, the file, the relation, the fork and the blocks.

With ``io_direct=True`` data files are opened with ``O_DIRECT``: every buffer passed in
must then be page-aligned (``aio.memory.aligned_buffer``, or slices of the buffer pool's
mmap at multiples of ``BLCKSZ``), or the kernel refuses the I/O with EINVAL.

One ``Smgr`` manages a data directory. It remembers which leading segments it has seen
full (like md.c's open segment array); files removed behind its back, other than through
it, are only noticed when an I/O reaches them.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import partial

import slonik.aio.osfile as osfile
from slonik.aio.callbacks import IoCallbacks
from slonik.aio.errors import IOFailure, io_error
from slonik.aio.handle import AioResult, AioReturn, Handle, HandleFlag, ResultStatus, new_tuple
from slonik.aio.ids import CallbackId, TargetId
from slonik.aio.memory import aligned_buffer
from slonik.aio.transfer import short_transfer_error, transfer_all
from slonik.storage.errors import DataCorruptionError
from slonik.storage.fdcache import FdCache, FdCacheStats
from slonik.storage.page import BLCKSZ

# Largest valid block number: block numbers are 32-bit and 0xFFFFFFFF means "invalid",
# as PostgreSQL's InvalidBlockNumber.
MAX_BLOCK_NUMBER = 0xFFFFFFFE
# relfilenumbers are 32-bit object ids; 0 is InvalidOid.
MAX_RELFILENUMBER = 0xFFFFFFFF
# Linux refuses preadv/pwritev with more iovecs than this (UIO_MAXIOV), so longer runs are
# issued in chunks of at most IOV_MAX blocks.
IOV_MAX = 1024

_OK = ResultStatus.OK


class Fork(IntEnum):
    """The forks of a relation, numbered as PostgreSQL's ForkNumber."""

    MAIN = 0
    FSM = 1
    VM = 2

    @property
    def suffix(self) -> str:
        """File name suffix: "" for main, "_fsm", "_vm"."""
        return _FORK_SUFFIX[self]

    @property
    def label(self) -> str:
        """The name used in messages: "main", "fsm", "vm"."""
        return self.name.lower()


_FORK_SUFFIX = {Fork.MAIN: "", Fork.FSM: "_fsm", Fork.VM: "_vm"}
_FORK_BY_NUMBER = {int(f): f for f in Fork}  # read_block's check: a dict probe, not Fork()
_FORK_TYPES = (int, Fork)                    # not bool, which _check_relation refuses
SEGMENT_PATH_CACHE_MAX = 4096  # segment paths remembered (then forgotten all at once)


class RelationExistsError(IOFailure, FileExistsError):
    """``create()`` of a fork whose segment 0 already exists (errno EEXIST)."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EEXIST, what)


@dataclass(frozen=True)
class SmgrStats:
    """Counters of one Smgr. ``reads``/``writes`` count system calls (each vectored)."""

    reads: int
    read_bytes: int
    writes: int
    write_bytes: int
    fsyncs: int
    directory_fsyncs: int
    fd_cache: FdCacheStats


def describe(rel: int, fork: int, block: int, nblocks: int = 1) -> str:
    """"block 5 of relation 16384 fork main" or "blocks 4..7 of relation 16384 fork main"."""
    if nblocks < 1:
        raise ValueError(f"nblocks must be at least 1, got {nblocks}")
    label = Fork(fork).label
    if nblocks == 1:
        return f"block {block} of relation {rel} fork {label}"
    return f"blocks {block}..{block + nblocks - 1} of relation {rel} fork {label}"


# (read per I/O: an Enum class attribute costs a metaclass __getattr__ hook, a global not)
_TARGET_SMGR, _FLAG_BUFFERED = TargetId.SMGR, HandleFlag.BUFFERED


def _purpose(verb: str, rel: int, fork: int, block: int, nblocks: int) -> str:
    """What an I/O was for, for an error message ("read blocks 4..7 of relation ...")."""
    return f"{verb} {describe(rel, fork, block, nblocks)}"


def _in_file(rel: int, fork: int, block: int, nblocks: int, path: str) -> str:
    """The blocks of an I/O and their file, for an error message. (Every read and write
    path gives these two as ``partial``s: a lambda would make its variables cells on every
    call.)"""
    return f"{describe(rel, fork, block, nblocks)} in file {path}"


class Smgr:
    """Relation forks as segment files under ``<data_dir>/base``; see the module docstring.

    ``segment_size`` is in blocks; the default 131072 makes 1 GiB files, PostgreSQL's
    RELSEG_SIZE (tests use tiny segments). ``max_files`` bounds the open data-file fds;
    1000 is PostgreSQL's max_files_per_process default, well under a usual 1024+ fd limit
    once WAL and sockets are counted.
    """

    def __init__(self, data_dir: str, *, segment_size: int = 131072, max_files: int = 1000,
                 io_direct: bool = False, aio=None) -> None:
        if not isinstance(data_dir, str):
            raise TypeError(f"data_dir must be a str, not {type(data_dir).__name__}")
        for name, value in (("segment_size", segment_size), ("max_files", max_files)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if io_direct and not hasattr(os, "O_DIRECT"):
            raise ValueError("io_direct needs O_DIRECT, which this platform does not have")
        self._data_dir = data_dir
        self._base_dir = os.path.join(data_dir, "base")
        # (rel, fork, segno) -> path: a path never changes, and building one is two string
        # formats and a join on every I/O's staging (bounded by SEGMENT_PATH_CACHE_MAX).
        self._paths: dict[tuple[int, int, int], str] = {}
        self._segment_size = segment_size
        self._segment_bytes = segment_size * BLCKSZ
        self._io_direct = bool(io_direct)
        self._files = FdCache(max_files, os.O_DIRECT if io_direct else 0)
        # Set when preadv RWF_NOWAIT came back EOPNOTSUPP (a kernel or file system without
        # non-blocking buffered reads): read_into_nowait then declines at once.
        self._nowait_unsupported = False
        # (rel, fork) -> number of leading segments known to be full. Only this Smgr's
        # truncate/unlink shrink files, and they lower it. Guarded by _segments_lock, which
        # also serializes adding segments.
        self._full_segments: dict[tuple[int, Fork], int] = {}
        self._segments_lock = threading.Lock()
        self._zero_block: memoryview | None = None
        self._stats_lock = threading.Lock()
        self._reads = self._read_bytes = self._writes = self._write_bytes = 0
        self._fsyncs = self._directory_fsyncs = 0
        # Segments written since the last sync_written(), as (rel, fork, segno); recorded
        # when a write is issued (for AIO: staged), guarded by _written_lock.
        self._written: set[tuple[int, Fork, int]] = set()
        self._written_lock = threading.Lock()
        self._closed = False
        # The AIO subsystem asynchronous I/O goes through (``start_readv``/``start_writev``);
        # told when files are removed so I/O workers drop descriptors they cached.
        self.aio = aio

    # -- naming -----------------------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return self._data_dir

    @property
    def segment_size(self) -> int:
        """Blocks per segment file."""
        return self._segment_size

    @property
    def io_direct(self) -> bool:
        return self._io_direct

    @property
    def file_flags(self) -> int:
        """Extra open flags of data files (``O_DIRECT`` or 0), for a worker's own FdCache."""
        return self._files.flags

    describe = staticmethod(describe)

    def segment_path(self, rel: int, fork: int, segno: int) -> str:
        """The path of segment ``segno`` of ``fork`` of relation ``rel``."""
        fork = self._check_relation(rel, fork)
        self._check_count(segno, "segno")
        return self._segment_path(rel, fork, segno)

    def _segment_path(self, rel: int, fork: Fork, segno: int) -> str:
        key = (rel, fork, segno)
        path = self._paths.get(key)
        if path is None:
            name = f"{rel}{_FORK_SUFFIX[fork]}"
            if segno:
                name = f"{name}.{segno}"
            path = os.path.join(self._base_dir, name)
            if len(self._paths) >= SEGMENT_PATH_CACHE_MAX:
                self._paths.clear()
            self._paths[key] = path
        return path

    def segment_runs(self, block: int, nblocks: int) -> list[tuple[int, int, int, int]]:
        """Split blocks ``block .. block+nblocks-1`` at segment boundaries.

        Returns ``(segno, block_in_segment, first_index, count)`` pieces in block order;
        ``first_index`` indexes the caller's buffer list and no piece crosses a segment.
        """
        self._check_block(block, "block")
        self._check_count(nblocks, "nblocks")
        runs = []
        first = 0
        while first < nblocks:
            segno, in_segment = divmod(block + first, self._segment_size)
            count = min(self._segment_size - in_segment, nblocks - first)
            runs.append((segno, in_segment, first, count))
            first += count
        return runs

    # -- file descriptors -------------------------------------------------------------------

    def acquire_fd(self, rel: int, fork: int, segno: int, *, create: bool = False) -> int:
        """An fd of segment ``segno`` held in use (never closed) until ``release_fd()``.

        ``create=True`` makes a missing segment the md way: earlier segments are padded to
        full size, the file is created and its directory fsynced. An asynchronous I/O
        acquires before it is submitted and releases when it completes.
        """
        fork = self._check_relation(rel, fork)
        self._check_count(segno, "segno")
        self._check_open()
        return self._acquire_segment(
            rel, fork, segno, create,
            lambda: f"use segment {segno} of relation {rel} fork {fork.label}")

    def release_fd(self, rel: int, fork: int, segno: int, fd: int) -> None:
        """Undo one ``acquire_fd()``."""
        fork = self._check_relation(rel, fork)
        self._files.release(self._segment_path(rel, fork, segno), fd)

    @contextlib.contextmanager
    def fd_for(self, rel: int, fork: int, segno: int, *, create: bool = False) -> Iterator[int]:
        """``with smgr.fd_for(rel, fork, segno) as fd:`` — the fd is in use inside the block."""
        fd = self.acquire_fd(rel, fork, segno, create=create)
        try:
            yield fd
        finally:
            self.release_fd(rel, fork, segno, fd)

    def _acquire_segment(self, rel: int, fork: Fork, segno: int, create: bool,
                         purpose: Callable[[], str], path: str | None = None) -> int:
        """Acquire segment ``segno``'s fd (at ``path`` when the caller has it already); an
        open failure names ``purpose()``."""
        if path is None:
            path = self._segment_path(rel, fork, segno)
        try:
            return self._files.acquire(path)
        except IOFailure as e:
            if not (create and e.errno == errno.ENOENT):
                raise io_error(e.errno, f"could not open file {path} to {purpose()}") from e
        if segno == 0:
            self.create(rel, fork, exist_ok=True)
        else:
            self._add_segment(rel, fork, segno)
        try:
            return self._files.acquire(path)
        except IOFailure as e:
            raise io_error(e.errno, f"could not open file {path} to {purpose()}") from e

    # -- existence ---------------------------------------------------------------------------

    def exists(self, rel: int, fork: int) -> bool:
        """Whether segment 0 of the fork exists."""
        fork = self._check_relation(rel, fork)
        self._check_open()
        return osfile.exists(self._segment_path(rel, fork, 0))

    def create(self, rel: int, fork: int, *, exist_ok: bool = False) -> None:
        """Create an empty fork (segment 0), creating ``base/`` when missing.

        The directory is fsynced afterwards. An existing fork raises ``RelationExistsError``
        (a ``StorageError`` and a ``FileExistsError``) unless ``exist_ok``.
        """
        fork = self._check_relation(rel, fork)
        self._check_open()
        self._ensure_base_dir()
        path = self._segment_path(rel, fork, 0)
        flags = os.O_RDWR | os.O_CREAT | (0 if exist_ok else os.O_EXCL)
        with self._segments_lock:
            self._full_segments.pop((rel, fork), None)
            try:
                fd = osfile.open(path, flags)
            except OSError as e:
                what = f"could not create file {path} of relation {rel} fork {fork.label}"
                if e.errno == errno.EEXIST:
                    raise RelationExistsError(what) from e
                raise io_error(e.errno, what) from e
            try:
                osfile.close(fd)
            except OSError as e:
                raise io_error(e.errno, f"could not close file {path}") from e
            self._fsync_directory(self._base_dir)

    def _ensure_base_dir(self) -> None:
        if osfile.exists(self._base_dir):
            return
        try:
            osfile.mkdir(self._base_dir)
        except FileExistsError:
            return  # another thread made it; it fsyncs the parent
        except OSError as e:
            raise io_error(e.errno, f"could not create directory {self._base_dir}") from e
        self._fsync_directory(self._data_dir)

    # -- size --------------------------------------------------------------------------------

    def nblocks(self, rel: int, fork: int) -> int:
        """The number of blocks in the fork (md rule: it ends at the first segment that is
        not full; a trailing partial block does not count)."""
        fork = self._check_relation(rel, fork)
        self._check_open()
        return self._nblocks(rel, fork)

    def _nblocks(self, rel: int, fork: Fork) -> int:
        key = (rel, fork)
        segno = self._full_segments.get(key, 0)
        while True:
            path = self._segment_path(rel, fork, segno)
            fd = self._acquire_if_exists(rel, fork, segno, "count the blocks of")
            if fd is None:
                return segno * self._segment_size  # the previous segment was full
            try:
                size = osfile.file_size(fd)
            except OSError as e:
                raise io_error(e.errno, f"could not get the size of file {path} of "
                                         f"relation {rel} fork {fork.label}") from e
            finally:
                self._files.release(path, fd)
            blocks = size // BLCKSZ
            if blocks < self._segment_size:
                return segno * self._segment_size + blocks
            if blocks > self._segment_size:
                raise DataCorruptionError(
                    f"file {path} holds {blocks} blocks, more than the segment size "
                    f"{self._segment_size}", relation=rel, fork=fork,
                    block=segno * self._segment_size)
            segno += 1
            with self._segments_lock:
                if self._full_segments.get(key, 0) < segno:
                    self._full_segments[key] = segno

    # -- reading -----------------------------------------------------------------------------

    def maxcombine(self, block: int) -> int:
        """How many blocks from ``block`` one I/O may cover: up to the segment's end."""
        return self._segment_size - block % self._segment_size

    def prefetch(self, rel: int, fork: int, block: int, nblocks: int) -> None:
        """Advise the kernel that blocks ``block..+nblocks-1`` will be read soon
        (posix_fadvise WILLNEED); a hint, so missing segments are skipped."""
        self.prefetch_runs(rel, fork, ((block, nblocks),))

    def prefetch_runs(self, rel: int, fork: int, runs: Iterable[tuple[int, int]]) -> None:
        """``prefetch`` of each (block, nblocks) of ``runs``, in one call: a segment's file
        is looked up once for all the runs in it (a batch of scattered blocks)."""
        fork = self._check_relation(rel, fork)
        self._check_open()
        if self._io_direct:
            return
        fds: dict[str, int | None] = {}
        try:
            for block, nblocks in runs:
                if nblocks <= 0:
                    continue
                for segno, in_segment, _, count in self.segment_runs(block, nblocks):
                    path = self._segment_path(rel, fork, segno)
                    if path not in fds:
                        try:
                            fds[path] = self._files.acquire(path)
                        except IOFailure:
                            fds[path] = None
                    fd = fds[path]
                    if fd is not None:
                        osfile.fadvise_willneed(fd, in_segment * BLCKSZ, count * BLCKSZ)
        finally:
            for path, fd in fds.items():
                if fd is not None:
                    self._files.release(path, fd)

    def start_readv(self, handle: Handle, rel: int, fork: int, block: int,
                    buffers: Sequence) -> None:
        """Stage an asynchronous read of ``len(buffers)`` blocks (within one segment, see
        ``maxcombine``) on an acquired AIO handle. Completion reports whole blocks read:
        OK, PARTIAL (fewer) or ERROR; see ``SmgrIo``."""
        self._start_io(handle, False, rel, fork, block, buffers)

    def start_writev(self, handle: Handle, rel: int, fork: int, block: int,
                     buffers: Sequence) -> None:
        """Stage an asynchronous write of ``len(buffers)`` blocks within one segment; a
        missing segment is created the md way first."""
        self._start_io(handle, True, rel, fork, block, buffers)

    def _start_io(self, handle: Handle, write: bool, rel: int, fork: int, block: int,
                  buffers: Sequence) -> None:
        """Stage one vectored read or write of the blocks ``buffers`` cover on ``handle``
        (the caller may have attached its own callbacks first, e.g. the buffer manager's)."""
        f = _FORK_BY_NUMBER.get(fork) if type(fork) in _FORK_TYPES else None
        if (f is None or type(rel) is not int or not 0 < rel <= MAX_RELFILENUMBER
                or type(block) is not int or not 0 <= block <= MAX_BLOCK_NUMBER):
            f = self._check_relation(rel, fork)  # raises naming the bad argument
            self._check_block(block, "block")
        fork = f
        # The buffer manager's usual request: one wide view of whole blocks (checked here
        # with one len); anything else takes the full check, which names what is wrong.
        if (type(buffers) is list and len(buffers) == 1 and type(buffers[0]) is memoryview
                and (nbytes := len(buffers[0])) and not nbytes % BLCKSZ
                and block + nbytes // BLCKSZ - 1 <= MAX_BLOCK_NUMBER):
            n = nbytes // BLCKSZ
        else:
            n = self._check_buffers(buffers, block, wide=True)
        if self._closed:
            self._check_open()
        if n == 0:
            raise ValueError("an smgr I/O needs at least one buffer")
        segno, in_segment = divmod(block, self._segment_size)
        if in_segment + n > self._segment_size:
            raise ValueError(f"{describe(rel, fork, block, n)} cross a segment boundary; "
                             f"split with maxcombine() (at most {self._segment_size - in_segment})")
        verb = "write" if write else "read"
        path = self._segment_path(rel, fork, segno)
        try:
            fd = self._files.acquire(path)  # the usual case: the segment is open
        except IOFailure:  # missing (create it when writing), or the open failed: say why
            fd = self._acquire_segment(rel, fork, segno, write,
                                       partial(_purpose, verb, rel, fork, block, n), path)
        io = (SmgrWriteIo if write else SmgrReadIo)(self, rel, fork, block, n, path, fd,
                                                      os.O_RDWR | self.file_flags)
        try:
            handle.set_target(_TARGET_SMGR, io)
            handle.add_callback(io.callback_id, io)
            if not self._io_direct:
                handle.set_flag(_FLAG_BUFFERED)
        except BaseException:
            self._files.release(path, fd)
            raise
        offset = in_segment * BLCKSZ
        if write:
            self._note_written(rel, fork, segno)  # at staging: sync_written() covers it
            self._count_writes(1, n * BLCKSZ)
            handle.start_writev(fd, buffers, offset)
        else:
            with self._stats_lock:  # (_count_reads, inline: once per read)
                self._reads += 1
                self._read_bytes += n * BLCKSZ
            handle.start_readv(fd, buffers, offset)

    def readv(self, rel: int, fork: int, block: int, buffers: Sequence) -> None:
        """Read blocks ``block .. block+len(buffers)-1`` into ``buffers``.

        Each buffer is a writable byte buffer of exactly ``BLCKSZ`` bytes (page-aligned
        with ``io_direct``). One ``preadv`` per segment piece. Reading past the end raises
        ``DataCorruptionError`` ("... read only K of M bytes", as PostgreSQL's
        ERRCODE_DATA_CORRUPTED); a missing segment file or an OS error raises ``IOFailure``.
        """
        fork = self._check_relation(rel, fork)
        self._check_buffers(buffers, block)
        self._check_open()
        self._in_pieces(self._read_piece, rel, fork, block, buffers)

    def read_block(self, rel: int, fork: int, block: int, page) -> None:
        """``readv`` of exactly one block into one ``BLCKSZ`` buffer: a buffer-pool miss
        its issuer reads inline (``BufferManager.read_buffer``). The same checks, errors
        (``DataCorruptionError`` past the end, ``IOFailure`` naming file, relation, fork
        and block), short-read policy and counters as ``readv``, in one frame: the
        arguments checked as ``_read_target`` does, the path from the segment-path cache,
        one fd-cache round trip and one preadv; only a short read goes on through
        ``transfer_all`` (the rest of the page, ``aio.transfer``'s policy)."""
        f = _FORK_BY_NUMBER.get(fork) if type(fork) in _FORK_TYPES else None
        if (f is None or type(rel) is not int or not 0 < rel <= MAX_RELFILENUMBER
                or type(block) is not int or not 0 <= block <= MAX_BLOCK_NUMBER):
            f = self._check_relation(rel, fork)  # raises naming the bad argument
            self._check_block(block, "block")
        if len(page) != BLCKSZ:
            self._check_buffers((page,), block)  # raises naming the size
        if self._closed:
            self._check_open()
        segno, in_segment = divmod(block, self._segment_size)
        path = self._paths.get((rel, f, segno)) or self._segment_path(rel, f, segno)
        offset = in_segment * BLCKSZ
        files = self._files
        try:
            fd = files.acquire(path)
        except IOFailure as e:
            raise io_error(e.errno, f"could not open file {path} to read "
                                     f"{describe(rel, f, block, 1)}") from e
        try:
            try:
                done = osfile.preadv(fd, (page,), offset)
            except OSError as e:
                raise io_error(e.errno, f"could not read {describe(rel, f, block, 1)} in "
                                        f"file {path}") from e
            calls = 1
            if 0 < done < BLCKSZ:  # a short read: the rest as transfer_all reads it
                more, calls = transfer_all(
                    fd, (memoryview(page)[done:],), offset + done, write=False,
                    what=partial(_in_file, rel, f, block, 1, path))
                done += more
                calls += 1
        finally:
            files.release(path, fd)
        with self._stats_lock:  # (_count_reads, inline: once per pool miss)
            self._reads += calls
            self._read_bytes += done
        if done < BLCKSZ:  # end of file: reading past the relation's end
            raise DataCorruptionError(
                f"could not read {describe(rel, f, block, 1)} in file {path}: "
                f"read only {done} of {BLCKSZ} bytes", relation=rel, fork=f, block=block)

    def read_into(self, rel: int, fork: int, block: int, buffers: Sequence) -> int:
        """Read blocks from ``block`` into ``buffers`` (each a whole number of blocks, as an
        AIO read's, together within one segment: see ``maxcombine``) in this thread: one
        preadv through the OS boundary, continued after short reads (``aio.transfer``'s
        policy). Returns the bytes read, fewer than asked only at the end of the file (the
        caller judges). An OS error raises ``IOFailure`` naming file, relation, fork and
        blocks; bad arguments raise as ``readv``'s do."""
        f, n, offset, path = self._read_target(rel, fork, block, buffers)
        try:
            fd = self._files.acquire(path)
        except IOFailure as e:
            raise io_error(e.errno, f"could not open file {path} to read "
                                     f"{describe(rel, f, block, n)}") from e
        try:
            done, calls = transfer_all(fd, buffers, offset, write=False,
                                       what=partial(_in_file, rel, f, block, n, path))
        finally:
            self._files.release(path, fd)
        self._count_reads(calls, done)
        return done

    def read_into_nowait(self, rel: int, fork: int, block: int, buffers: Sequence) -> bool:
        """``read_into`` only if the OS page cache holds every byte: one preadv with
        RWF_NOWAIT in this thread, which never waits for the device. True when all of
        ``buffers`` was filled (counted as one read); False when it could not be done
        without blocking or in full (a page not cached, end of file, ``io_direct``, an OS
        error, no RWF_NOWAIT here): then the buffers' contents are undefined and the
        caller reads them the usual way, which reports any error. Bad arguments raise as
        ``read_into``'s do."""
        if self._io_direct or self._nowait_unsupported:
            return False
        _f, n, offset, path = self._read_target(rel, fork, block, buffers)
        try:
            fd = self._files.acquire(path)
        except IOFailure:
            return False  # the usual read opens it again and names the failure
        try:
            got = osfile.preadv_nowait(fd, buffers, offset)
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                self._nowait_unsupported = True  # this file system or kernel: never again
            return False
        finally:
            self._files.release(path, fd)
        if got != n * BLCKSZ:
            return False
        self._count_reads(1, got)
        return True

    def _read_target(self, rel: int, fork: int, block: int, buffers: Sequence
                     ) -> tuple[Fork, int, int, str]:
        """``read_into``'s checks of one in-thread read: (fork, blocks, byte offset in the
        segment file, its path). Bad arguments raise as ``readv``'s do; a read crossing
        a segment boundary is a ValueError."""
        f = _FORK_BY_NUMBER.get(fork) if type(fork) in _FORK_TYPES else None
        if (f is None or type(rel) is not int or not 0 < rel <= MAX_RELFILENUMBER
                or type(block) is not int or not 0 <= block <= MAX_BLOCK_NUMBER):
            f = self._check_relation(rel, fork)  # raises naming the bad argument
            self._check_block(block, "block")
        if len(buffers) == 1 and (size := len(buffers[0])) and not size % BLCKSZ:
            n = size // BLCKSZ  # the usual: one (wide) view of adjacent pool buffers
        else:
            n = self._check_buffers(buffers, block, wide=True)  # raises naming the size
            if n == 0:
                raise ValueError("a read needs at least one buffer")
        self._check_open()
        segno, in_segment = divmod(block, self._segment_size)
        if in_segment + n > self._segment_size:
            raise ValueError(f"{describe(rel, f, block, n)} cross a segment boundary; "
                             f"split with maxcombine() (at most {self._segment_size - in_segment})")
        return f, n, in_segment * BLCKSZ, self._segment_path(rel, f, segno)

    def _in_pieces(self, piece: Callable[[int, Fork, int, Sequence], None], rel: int,
                   fork: Fork, block: int, buffers: Sequence) -> None:
        """Call ``piece`` for each run of blocks within one segment and IOV_MAX buffers."""
        count = len(buffers)
        if count == 0:
            return
        if count <= IOV_MAX and (block % self._segment_size) + count <= self._segment_size:
            piece(rel, fork, block, buffers)  # the common case: one piece
            return
        buffers = list(buffers)
        for _, _, first, run in self.segment_runs(block, count):
            for start in range(first, first + run, IOV_MAX):
                end = min(start + IOV_MAX, first + run)
                piece(rel, fork, block + start, buffers[start:end])

    def _read_piece(self, rel: int, fork: Fork, block: int, iov: Sequence) -> None:
        """One preadv (more only for short reads) of blocks within one segment."""
        want = len(iov) * BLCKSZ
        done = self._transfer_piece(False, rel, fork, block, iov)
        if done < want:  # end of file: reading past the relation's end
            path = self._segment_path(rel, fork, block // self._segment_size)
            raise DataCorruptionError(
                f"could not read {describe(rel, fork, block, len(iov))} in file {path}: "
                f"read only {done} of {want} bytes", relation=rel, fork=fork, block=block)

    def _transfer_piece(self, write: bool, rel: int, fork: Fork, block: int,
                        iov: Sequence) -> int:
        """One pwritev/preadv of blocks within one segment, continued after short
        transfers by ``aio.transfer``'s policy; returns the bytes transferred (a read stops
        short at end of file). A write to a missing segment other than 0 creates it."""
        segno, in_segment = divmod(block, self._segment_size)
        if write:
            self._note_written(rel, fork, segno)
        path = self._segment_path(rel, fork, segno)
        nblocks = len(iov)
        verb = "write" if write else "read"
        fd = self._acquire_segment(rel, fork, segno, write and segno > 0,
                                   partial(_purpose, verb, rel, fork, block, nblocks))
        try:
            done, calls = transfer_all(
                fd, iov, in_segment * BLCKSZ, write=write,
                what=partial(_in_file, rel, fork, block, nblocks, path))
        finally:
            self._files.release(path, fd)
        (self._count_writes if write else self._count_reads)(calls, done)
        return done

    # -- writing -----------------------------------------------------------------------------

    def writev(self, rel: int, fork: int, block: int, buffers: Sequence) -> None:
        """Write ``buffers`` (each exactly ``BLCKSZ`` bytes) to blocks ``block`` onwards.

        One ``pwritev`` per segment piece; short writes that made progress are continued,
        a write that transfers nothing raises ``DiskFullError``. Writing into a segment that
        does not exist yet creates it (padding earlier segments to full size first). The
        fork itself must exist.
        """
        fork = self._check_relation(rel, fork)
        self._check_buffers(buffers, block)
        self._check_open()
        self._writev(rel, fork, block, buffers)

    def _writev(self, rel: int, fork: Fork, block: int, buffers: Sequence) -> None:
        self._in_pieces(self._write_piece, rel, fork, block, buffers)

    def _write_piece(self, rel: int, fork: Fork, block: int, iov: Sequence) -> None:
        """One pwritev (more only for short writes) of blocks within one segment."""
        self._transfer_piece(True, rel, fork, block, iov)

    def extend(self, rel: int, fork: int, block: int, data) -> None:
        """Add block ``block`` (at or beyond ``nblocks``) holding ``data`` (``BLCKSZ`` bytes).

        Blocks skipped between the old end and ``block`` read as zeros.
        """
        fork = self._check_relation(rel, fork)
        self._check_block(block, "block")
        try:
            size = len(data)
        except TypeError:
            raise TypeError(f"data must be a {BLCKSZ}-byte buffer, "
                            f"not {type(data).__name__}") from None
        if size != BLCKSZ:
            raise ValueError(f"data must be exactly {BLCKSZ} bytes, got {size}")
        self._check_open()
        self._check_extension(rel, fork, block)
        self._writev(rel, fork, block, (data,))

    def zeroextend(self, rel: int, fork: int, block: int, n: int) -> None:
        """Add ``n`` zero blocks at ``block .. block+n-1`` (``block`` at or beyond nblocks).

        Vectored writes of one shared zero block, one per segment piece.
        """
        fork = self._check_relation(rel, fork)
        self._check_block(block, "block")
        self._check_count(n, "n")
        self._check_range(block, n)
        self._check_open()
        self._check_extension(rel, fork, block)
        if n:
            self._writev(rel, fork, block, [self._zeros()] * n)

    def _check_extension(self, rel: int, fork: Fork, block: int) -> None:
        current = self._nblocks(rel, fork)
        if block < current:
            raise ValueError(f"block {block} is not beyond the end of relation {rel} fork "
                             f"{fork.label} ({current} blocks); use writev to overwrite")

    def _zeros(self) -> memoryview:
        if self._zero_block is None:  # a race only makes one spare page
            self._zero_block = memoryview(aligned_buffer(BLCKSZ, huge_pages=False))[:BLCKSZ].toreadonly()
        return self._zero_block

    def _add_segment(self, rel: int, fork: Fork, segno: int) -> None:
        """Make segment ``segno`` exist with every earlier segment full (md invariant).

        Earlier short segments are padded by extending their size with ftruncate (the hole
        reads as zeros); missing ones are created the same way. Directory fsynced after.
        Padding writes no data, so it cannot overwrite an asynchronous write of the same
        blocks still in flight (writing a zero block there lost data under io_uring).
        """
        assert segno > 0
        key = (rel, fork)
        created = False
        with self._segments_lock:
            for s in range(self._full_segments.get(key, 0), segno + 1):
                path = self._segment_path(rel, fork, s)
                try:
                    fd = self._files.acquire(path)
                except IOFailure as e:
                    if e.errno != errno.ENOENT or s == 0:
                        raise
                    fd = self._files.acquire(path, create=True)
                    created = True
                try:
                    if s == segno:
                        break
                    try:
                        size = osfile.file_size(fd)
                    except OSError as e:
                        raise io_error(e.errno, f"could not get the size of file {path}") from e
                    if size < self._segment_bytes:
                        self._note_written(rel, fork, s)  # its new size must be synced too
                        try:
                            osfile.ftruncate(fd, self._segment_bytes)
                        except OSError as e:
                            raise io_error(e.errno, f"could not extend file {path} of relation "
                                                     f"{rel} fork {fork.label} to "
                                                     f"{self._segment_bytes} bytes") from e
                    elif size > self._segment_bytes:
                        raise DataCorruptionError(
                            f"file {path} is {size} bytes, more than the segment size "
                            f"{self._segment_bytes}", relation=rel, fork=fork,
                            block=s * self._segment_size)
                finally:
                    self._files.release(path, fd)
            self._full_segments[key] = max(self._full_segments.get(key, 0), segno)
            if created:
                self._fsync_directory(self._base_dir)

    def writeback(self, rel: int, fork: int, block: int, n: int) -> None:
        """Ask the kernel to start writing blocks ``block .. block+n-1`` back (a hint).

        Segments that do not exist are skipped.
        """
        fork = self._check_relation(rel, fork)
        self._check_block(block, "block")
        self._check_count(n, "n")
        self._check_range(block, n)
        self._check_open()
        for segno, in_segment, first, count in self.segment_runs(block, n):
            path = self._segment_path(rel, fork, segno)
            try:
                fd = self._files.acquire(path)
            except IOFailure as e:
                if e.errno == errno.ENOENT:
                    continue
                raise
            try:
                osfile.writeback(fd, in_segment * BLCKSZ, count * BLCKSZ)
            except OSError as e:
                raise io_error(e.errno, f"could not write back "
                                         f"{describe(rel, fork, block + first, count)} "
                                         f"in file {path}") from e
            finally:
                self._files.release(path, fd)

    # -- truncating, syncing, removing -------------------------------------------------------

    def truncate(self, rel: int, fork: int, nblocks: int) -> None:
        """Shrink the fork to ``nblocks`` blocks.

        Later segment files are unlinked (last first, so the md invariant holds at every
        instant), the segment holding the new end is shortened (segment 0 to zero bytes
        when ``nblocks`` is 0), and the directory is fsynced when a file was removed. The
        shortened file is not fsynced (``immedsync`` or WAL replay make it durable).
        """
        fork = self._check_relation(rel, fork)
        self._check_count(nblocks, "nblocks")
        self._check_open()
        current = self._nblocks(rel, fork)
        if nblocks > current:
            raise ValueError(f"cannot truncate relation {rel} fork {fork.label} to {nblocks} "
                             f"blocks: it has only {current}")
        if nblocks == current:
            return
        keep = (nblocks - 1) // self._segment_size if nblocks else 0
        key = (rel, fork)
        with self._segments_lock:
            self._full_segments[key] = min(self._full_segments.get(key, 0), keep)
            removed = self._unlink_segments(rel, fork, keep + 1)
            path = self._segment_path(rel, fork, keep)
            length = (nblocks - keep * self._segment_size) * BLCKSZ
            with self._files.using(path) as fd:
                try:
                    osfile.ftruncate(fd, length)
                except OSError as e:
                    raise io_error(e.errno, f"could not truncate file {path} of relation "
                                             f"{rel} fork {fork.label} to {length} bytes") from e
            if removed:
                self._fsync_directory(self._base_dir)

    def _unlink_segments(self, rel: int, fork: Fork, first: int) -> int:
        """Unlink segments ``first`` onwards, highest first; returns how many went."""
        last = first
        while osfile.exists(self._segment_path(rel, fork, last)):
            last += 1
        if last > first:
            with self._written_lock:  # removed files have nothing left to sync
                self._written = {k for k in self._written
                                 if not (k[0] == rel and k[1] == fork and k[2] >= first)}
        for segno in range(last - 1, first - 1, -1):
            path = self._segment_path(rel, fork, segno)
            self._files.forget(path)
            try:
                osfile.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise io_error(e.errno, f"could not remove file {path} of relation {rel} "
                                         f"fork {fork.label}") from e
        if last > first and self.aio is not None:
            self.aio.forget_files()
        return last - first

    def immedsync(self, rel: int, fork: int) -> None:
        """fsync every segment file of the fork (segment 0 must exist)."""
        fork = self._check_relation(rel, fork)
        self._check_open()
        segno = 0
        while True:
            fd = self._acquire_if_exists(rel, fork, segno, "fsync")
            if fd is None:
                return
            self._fsync_segment(self._segment_path(rel, fork, segno), fd, rel, fork)
            segno += 1

    def _acquire_if_exists(self, rel: int, fork: Fork, segno: int, purpose: str) -> int | None:
        """Segment ``segno``'s fd, held in use; None when that segment does not exist (the
        end of the fork; segment 0 must exist). Other failures name ``purpose``."""
        path = self._segment_path(rel, fork, segno)
        try:
            return self._files.acquire(path)
        except IOFailure as e:
            if e.errno == errno.ENOENT and segno > 0:
                return None
            raise io_error(e.errno, f"could not open file {path} to {purpose} relation "
                                    f"{rel} fork {fork.label}") from e

    def _fsync_segment(self, path: str, fd: int, rel: int, fork: Fork) -> None:
        """fsync an acquired segment fd, then release it; IOFailure names the file."""
        try:
            osfile.fsync(fd)
        except OSError as e:
            raise io_error(e.errno, f"could not fsync file {path} of relation {rel} "
                                     f"fork {fork.label}") from e
        finally:
            self._files.release(path, fd)
            with self._stats_lock:
                self._fsyncs += 1

    def _note_written(self, rel: int, fork: Fork, segno: int) -> None:
        """Remember that a write to this segment was issued (for ``sync_written``)."""
        key = (rel, fork, segno)
        if key not in self._written:  # racy read; the add below is under the lock
            with self._written_lock:
                self._written.add(key)

    def sync_written(self) -> int:
        """fsync every segment file that received a write (``writev``, ``extend``,
        ``zeroextend``, ``start_writev``) since the previous call, then forget them.

        For checkpoints: call it after the writes it must cover have completed. Returns
        how many files were synced. A write issued while this runs is kept for the next
        call. An fsync failure raises ``IOFailure`` naming the file; the caller treats it
        as fatal and must not retry (after a failed fsync the kernel may have dropped the
        dirty pages and a second fsync can report success), so the failed file is not
        kept; the files not reached yet are.
        """
        self._check_open()
        with self._written_lock:
            pending, self._written = sorted(self._written), set()
        synced = 0
        try:
            for rel, fork, segno in pending:
                path = self._segment_path(rel, fork, segno)
                try:
                    fd = self._files.acquire(path)
                except IOFailure as e:
                    synced += 1  # attempted: not kept
                    raise io_error(e.errno, f"could not open file {path} to fsync relation "
                                             f"{rel} fork {fork.label}") from e
                synced += 1
                self._fsync_segment(path, fd, rel, fork)
        except BaseException:
            with self._written_lock:
                self._written.update(pending[synced:])
            raise
        return synced

    def forget_written(self, rel: int) -> None:
        """Drop every fork's pending ``sync_written`` entries of ``rel`` (it is being
        unlinked: its files will not be there to sync)."""
        self._check_relation(rel, Fork.MAIN)
        with self._written_lock:
            self._written = {key for key in self._written if key[0] != rel}

    def unlink(self, rel: int, fork: int | None = None) -> None:
        """Remove every segment of ``fork`` (of every fork when None), then fsync ``base/``.

        Segment 0 goes last, so a crash midway never leaves orphans behind a missing
        segment 0. Removing what does not exist is harmless (redo may repeat a drop).
        """
        checked = self._check_relation(rel, Fork.MAIN if fork is None else fork)
        forks = list(Fork) if fork is None else [checked]
        self._check_open()
        removed = 0
        with self._segments_lock:
            for f in forks:
                self._full_segments.pop((rel, f), None)
                removed += self._unlink_segments(rel, f, 1)
                removed += self._unlink_segments(rel, f, 0)
        if removed:
            self._fsync_directory(self._base_dir)

    def _fsync_directory(self, path: str) -> None:
        try:
            osfile.fsync_directory(path)
        except OSError as e:
            raise io_error(e.errno, f"could not fsync directory {path}") from e
        with self._stats_lock:
            self._directory_fsyncs += 1

    # -- lifecycle and introspection ---------------------------------------------------------

    def close(self) -> None:
        """Close every cached fd (fds in use close when released). Twice is harmless."""
        self._closed = True
        self._files.close_all()

    def __enter__(self) -> Smgr:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> SmgrStats:
        with self._stats_lock:
            return SmgrStats(reads=self._reads, read_bytes=self._read_bytes,
                             writes=self._writes, write_bytes=self._write_bytes,
                             fsyncs=self._fsyncs, directory_fsyncs=self._directory_fsyncs,
                             fd_cache=self._files.stats())

    def _count_reads(self, calls: int, nbytes: int) -> None:
        with self._stats_lock:
            self._reads += calls
            self._read_bytes += nbytes

    def _count_writes(self, calls: int, nbytes: int) -> None:
        with self._stats_lock:
            self._writes += calls
            self._write_bytes += nbytes

    # -- argument checks ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this Smgr is closed")

    @staticmethod
    def _check_relation(rel: int, fork: int) -> Fork:
        if not isinstance(rel, int) or isinstance(rel, bool):
            raise TypeError(f"rel must be an int relfilenumber, not {type(rel).__name__}")
        if not 0 < rel <= MAX_RELFILENUMBER:
            raise ValueError(f"rel must be in 1..{MAX_RELFILENUMBER}, got {rel}")
        if type(fork) is Fork:
            return fork
        if not isinstance(fork, int) or isinstance(fork, bool):
            raise TypeError(f"fork must be a Fork, not {type(fork).__name__}")
        try:
            return Fork(fork)
        except ValueError:
            raise ValueError(f"fork must be one of {[int(f) for f in Fork]}, got {fork}") from None

    @staticmethod
    def _check_block(block: int, name: str) -> None:
        if not isinstance(block, int) or isinstance(block, bool):
            raise TypeError(f"{name} must be an int, not {type(block).__name__}")
        if not 0 <= block <= MAX_BLOCK_NUMBER:
            raise ValueError(f"{name} must be in 0..{MAX_BLOCK_NUMBER}, got {block}")

    @staticmethod
    def _check_count(n: int, name: str) -> None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"{name} must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"{name} must not be negative, got {n}")

    @staticmethod
    def _check_range(block: int, n: int) -> None:
        if block + n - 1 > MAX_BLOCK_NUMBER:
            raise ValueError(f"blocks {block}..{block + n - 1} go past the largest block "
                             f"number {MAX_BLOCK_NUMBER}")

    def _check_buffers(self, buffers: Sequence, block: int, *, wide: bool = False) -> int:
        """Check a buffer list; returns how many blocks it covers. Each buffer is exactly
        ``BLCKSZ`` bytes, or with ``wide`` (asynchronous I/O) a whole number of blocks, so
        adjacent pool buffers can travel as one view (one iovec)."""
        self._check_block(block, "block")
        if isinstance(buffers, (bytes, bytearray, memoryview, mmap.mmap, str)):
            raise TypeError(f"buffers must be a sequence of {BLCKSZ}-byte buffers, "
                            f"not a single {type(buffers).__name__}")
        try:
            sizes = set(map(len, buffers))  # C-level loop, no per-block Python code
        except TypeError:
            raise TypeError(f"buffers must be a sequence of {BLCKSZ}-byte buffers") from None
        if wide and sizes - {BLCKSZ}:
            if min(sizes) <= 0 or (max(sizes) % BLCKSZ if len(sizes) == 1
                                   else any(size % BLCKSZ for size in sizes)):
                raise ValueError(f"every buffer must be a positive multiple of {BLCKSZ} bytes, "
                                 f"got sizes {sorted(sizes)}")
            n = (len(buffers[0]) if len(buffers) == 1 else sum(map(len, buffers))) // BLCKSZ
        elif sizes - {BLCKSZ}:
            raise ValueError(f"every buffer must be exactly {BLCKSZ} bytes, "
                             f"got sizes {sorted(sizes)}")
        else:
            n = len(buffers)
        self._check_range(block, n)
        return n


# -- asynchronous I/O: the smgr target and the smgr completion callbacks ---------------------

class SmgrIo(IoCallbacks):
    """Target and callback data of one smgr I/O (one segment, consecutive blocks).

    The segment's fd is acquired from the fd cache *in use* before the I/O is staged and
    released by ``complete_shared``, so the fd cache never closes it under the kernel. The
    target reopens by path and open flags (a worker's own fd) and describes the block range.
    ``complete_shared`` runs first (the smgr callback is attached last) and turns bytes into
    whole blocks: ``-errno`` -> ERROR, no whole block -> ERROR, fewer blocks than asked ->
    PARTIAL with the blocks done, else OK. ``report`` names file, relation, fork and blocks.
    """

    __slots__ = ("smgr", "rel", "fork", "block", "nblocks", "path", "fd", "open_flags")
    verb = "read"

    def __init__(self, smgr: Smgr, rel: int, fork: Fork, block: int, nblocks: int, path: str,
                 fd: int, open_flags: int) -> None:
        self.smgr = smgr
        self.rel = rel
        self.fork = fork
        self.block = block
        self.nblocks = nblocks
        self.path = path
        self.fd = fd
        self.open_flags = open_flags

    def describe(self) -> str:
        return f"{describe(self.rel, self.fork, self.block, self.nblocks)} in file {self.path}"

    def reopen(self) -> tuple[str, int]:
        return self.path, self.open_flags

    def complete_shared(self, h: Handle, prior: AioResult) -> AioResult:
        self.smgr._files.release(self.path, self.fd)
        raw = h.raw_result
        if raw < 0:
            return AioResult(ResultStatus.ERROR, 0, -raw, self.callback_id)
        blocks = raw // BLCKSZ
        if blocks == 0 and self.nblocks > 0:
            return AioResult(ResultStatus.ERROR, 0, 0, self.callback_id, raw)
        if blocks < self.nblocks:
            return AioResult(ResultStatus.PARTIAL, blocks, 0, self.callback_id, raw)
        return new_tuple(AioResult, (_OK, blocks, 0, 0, None))  # once per I/O: no Python __new__

    def report(self, ret: AioReturn) -> None:
        r = ret.result
        if r.status == ResultStatus.ERROR and r.error_data:
            raise io_error(r.error_data, f"could not {self.verb} {self.describe()}")
        done = r.detail if isinstance(r.detail, int) else r.result * BLCKSZ
        error = short_transfer_error(self.verb == "write", done, self.nblocks * BLCKSZ,
                                     self.describe())
        if self.verb == "write":
            raise error
        # A relation read that ends short reads past the relation's end (ERRCODE_DATA_CORRUPTED).
        raise DataCorruptionError(str(error), relation=self.rel, fork=int(self.fork),
                                  block=self.block + r.result)


class SmgrReadIo(SmgrIo):
    __slots__ = ()
    callback_id = CallbackId.SMGR_READV


class SmgrWriteIo(SmgrIo):
    __slots__ = ()
    callback_id = CallbackId.SMGR_WRITEV
    verb = "write"
