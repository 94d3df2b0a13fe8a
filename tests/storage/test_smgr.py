"""smgr over md-style segment files, on real files, with tiny segments and a tiny fd cache.

Every Smgr here has segment_size=4 and max_files=3, so segment boundaries and fd recycling
are crossed by nearly every operation.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import tempfile

import pytest
import slonik.storage.smgr as smgr_module
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from slonik.aio import osfile
from slonik.aio.errors import DiskFullError, IOFailure, StorageError
from slonik.aio.memory import aligned_buffer
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, RelationExistsError, Smgr

SEG = 4  # blocks per segment
MAX_FILES = 3
REL = 16384
ZERO = bytes(BLCKSZ)


def pattern(rel: int, block: int, fork: int = 0, version: int = 0) -> bytes:
    """A block's worth of bytes that differs for every (rel, block, fork, version)."""
    digest = hashlib.blake2b(f"{rel}/{fork}/{block}/{version}".encode()).digest()  # 64 bytes
    return digest * (BLCKSZ // len(digest))


def make_smgr(data_dir, **kwargs) -> Smgr:
    return Smgr(str(data_dir), segment_size=SEG, max_files=MAX_FILES, **kwargs)


@pytest.fixture
def smgr(tmp_path):
    s = make_smgr(tmp_path)
    yield s
    s.close()


def pages(n: int) -> list[bytearray]:
    return [bytearray(BLCKSZ) for _ in range(n)]


def disk_layout(data_dir, rel: int = REL, fork: Fork = Fork.MAIN) -> dict[str, int]:
    """{file name: size in bytes} of every segment file of the fork on disk."""
    base = os.path.join(str(data_dir), "base")
    stem = f"{rel}{fork.suffix}"
    if not os.path.isdir(base):
        return {}
    return {name: os.path.getsize(os.path.join(base, name)) for name in os.listdir(base)
            if name == stem or (name.startswith(stem + ".") and name[len(stem) + 1:].isdigit())}


def expected_layout(nblocks: int, rel: int = REL, fork: Fork = Fork.MAIN) -> dict[str, int]:
    """md rule: ceil(n / SEG) files (at least one), all full except the last."""
    segments = max(1, -(-nblocks // SEG))
    layout = {}
    for s in range(segments):
        name = f"{rel}{fork.suffix}" + (f".{s}" if s else "")
        layout[name] = min(SEG, nblocks - s * SEG) * BLCKSZ
    return layout


class CountingLayer(osfile.OsLayer):
    """The real OS, counting calls by name and remembering some of their arguments."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.directory_fsyncs: list[str] = []
        self.writebacks: list[tuple[int, int]] = []
        self.iov_lengths: list[tuple[str, int]] = []
        self.advised: list[tuple[str, int, int]] = []   # (file name, offset, length)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def fadvise_willneed(self, fd, offset, length):
        self._count("fadvise")
        self.advised.append((os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[1], offset,
                             length))
        return super().fadvise_willneed(fd, offset, length)

    def preadv(self, fd, buffers, offset):
        self._count("preadv")
        self.iov_lengths.append(("preadv", len(buffers)))
        return super().preadv(fd, buffers, offset)

    def pwritev(self, fd, buffers, offset):
        self._count("pwritev")
        self.iov_lengths.append(("pwritev", len(buffers)))
        return super().pwritev(fd, buffers, offset)

    def fsync_directory(self, path):
        self._count("fsync_directory")
        self.directory_fsyncs.append(path)
        super().fsync_directory(path)

    def unlink(self, path):
        self._count("unlink")
        super().unlink(path)

    def fsync(self, fd):
        self._count("fsync")
        super().fsync(fd)

    def writeback(self, fd, offset, length):
        self.writebacks.append((offset, length))
        super().writeback(fd, offset, length)


# -- layout and round trips ---------------------------------------------------------------


def test_patterned_blocks_round_trip_across_segments(smgr, tmp_path):
    """Blocks written in uneven vectored runs (through writev and extend) across many
    segments, in two forks, read back intact in 200 random vectored runs that cross segment
    boundaries; nblocks is right and the segment files have exactly the md names and
    sizes."""
    rng = random.Random(7)
    total = 23  # 5 full segments and 3 blocks in the sixth
    for fork in (Fork.MAIN, Fork.FSM):
        smgr.create(REL, fork)
        block = 0
        while block < total:
            n = min(rng.randint(1, 7), total - block)
            if n == 1:
                smgr.extend(REL, fork, block, pattern(REL, block, fork))
            else:
                smgr.writev(REL, fork, block,
                            [pattern(REL, b, fork) for b in range(block, block + n)])
            block += n
    for fork in (Fork.MAIN, Fork.FSM):
        assert smgr.nblocks(REL, fork) == total
        assert disk_layout(tmp_path, REL, fork) == expected_layout(total, REL, fork)
    assert set(os.listdir(tmp_path / "base")) == (
        set(expected_layout(total)) | set(expected_layout(total, REL, Fork.FSM)))
    for _ in range(200):
        fork = rng.choice((Fork.MAIN, Fork.FSM))
        start = rng.randrange(total)
        n = rng.randint(1, total - start)
        bufs = pages(n)
        smgr.readv(REL, fork, start, bufs)
        for i, buf in enumerate(bufs):
            assert buf == pattern(REL, start + i, fork), f"block {start + i} fork {fork.label}"
    assert smgr.stats().fd_cache.open_now <= MAX_FILES


def test_one_vectored_call_per_segment_piece(smgr):
    """Reads and writes issue exactly one preadv/pwritev per segment piece, carrying every
    buffer of the piece (no per-block system calls); checked by counting calls through an
    OsLayer."""
    smgr.create(REL, Fork.MAIN)
    layer = CountingLayer()
    with osfile.installed(layer):
        smgr.zeroextend(REL, Fork.MAIN, 0, 10)  # pieces 0..3, 4..7, 8..9
        assert layer.calls["pwritev"] == 3
        assert [n for op, n in layer.iov_lengths] == [4, 4, 2]
        layer.iov_lengths.clear()
        smgr.readv(REL, Fork.MAIN, 2, pages(7))  # pieces 2..3, 4..7, 8
        assert layer.calls["preadv"] == 3
        assert [n for op, n in layer.iov_lengths] == [2, 4, 1]
    stats = smgr.stats()
    assert (stats.reads, stats.read_bytes) == (3, 7 * BLCKSZ)
    assert (stats.writes, stats.write_bytes) == (3, 10 * BLCKSZ)


def test_long_runs_are_chunked_at_iov_max(smgr, monkeypatch):
    """A piece longer than IOV_MAX buffers is issued in chunks of at most IOV_MAX iovecs.
    IOV_MAX (1024 on Linux) is lowered to 3 so that 4-block segments exercise it."""
    monkeypatch.setattr(smgr_module, "IOV_MAX", 3)
    smgr.create(REL, Fork.MAIN)
    layer = CountingLayer()
    with osfile.installed(layer):
        smgr.writev(REL, Fork.MAIN, 0, [pattern(REL, b) for b in range(9)])
        bufs = pages(9)
        smgr.readv(REL, Fork.MAIN, 0, bufs)
    assert [n for op, n in layer.iov_lengths] == [3, 1, 3, 1, 1] * 2
    assert [bytes(b) for b in bufs] == [pattern(REL, b) for b in range(9)]


def test_nblocks_ignores_a_trailing_partial_block(smgr, tmp_path):
    """A torn extension leaves a partial block at the end of the last segment: nblocks
    counts whole blocks only, and the next extend overwrites the fragment."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 6)
    with open(tmp_path / "base" / f"{REL}.1", "ab") as f:
        f.write(b"x" * 100)
    assert smgr.nblocks(REL, Fork.MAIN) == 6
    smgr.extend(REL, Fork.MAIN, 6, pattern(REL, 6))
    assert smgr.nblocks(REL, Fork.MAIN) == 7
    buf = pages(1)
    smgr.readv(REL, Fork.MAIN, 6, buf)
    assert buf[0] == pattern(REL, 6)


def test_growth_past_the_end_pads_earlier_segments(smgr, tmp_path):
    """Writing block 13 of an empty fork leaves segments 0..2 full and zero-filled (the md
    rule) and nblocks 14; zeroextend and extend beyond the end do the same; asking for
    segment 5 with acquire_fd(create=True) pads the rest."""
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 13, [pattern(REL, 13)])
    assert smgr.nblocks(REL, Fork.MAIN) == 14
    assert disk_layout(tmp_path) == expected_layout(14)
    bufs = pages(14)
    smgr.readv(REL, Fork.MAIN, 0, bufs)
    assert all(b == ZERO for b in bufs[:13]) and bufs[13] == pattern(REL, 13)
    smgr.zeroextend(REL, Fork.MAIN, 17, 2)
    assert smgr.nblocks(REL, Fork.MAIN) == 19
    smgr.extend(REL, Fork.MAIN, 22, pattern(REL, 22))
    assert smgr.nblocks(REL, Fork.MAIN) == 23
    assert disk_layout(tmp_path) == expected_layout(23)
    with smgr.fd_for(REL, Fork.MAIN, 7, create=True) as fd:
        assert os.fstat(fd).st_size == 0
    assert smgr.nblocks(REL, Fork.MAIN) == 28
    layout = expected_layout(28)
    layout[f"{REL}.7"] = 0
    assert disk_layout(tmp_path) == layout


# -- a stateful model -----------------------------------------------------------------------


RELS = (REL, REL + 1)
FORKS = (Fork.MAIN, Fork.VM)


class SmgrMachine(RuleBasedStateMachine):
    """Random extend/zeroextend/writev/truncate/readv/reopen against a dict model of
    (rel, fork) -> {block: bytes} and sizes; after every step the whole structure is
    checked: nblocks, every block's contents (one vectored read per fork) and the exact
    names and sizes of the segment files."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="smgr-model-")
        self.smgr = make_smgr(self.dir)
        self.sizes: dict[tuple[int, Fork], int] = {}
        self.blocks: dict[tuple[int, Fork], dict[int, bytes]] = {}
        self.version = 0

    @initialize()
    def create_forks(self) -> None:
        for rel in RELS:
            for fork in FORKS:
                self.smgr.create(rel, fork)
                self.sizes[rel, fork] = 0
                self.blocks[rel, fork] = {}

    def _data(self, rel, fork, block) -> bytes:
        self.version += 1
        return pattern(rel, block, fork, self.version)

    @rule(rel=st.sampled_from(RELS), fork=st.sampled_from(FORKS), gap=st.integers(0, 5))
    def extend(self, rel, fork, gap) -> None:
        block = self.sizes[rel, fork] + gap
        data = self._data(rel, fork, block)
        self.smgr.extend(rel, fork, block, data)
        self.blocks[rel, fork][block] = data
        self.sizes[rel, fork] = block + 1

    @rule(rel=st.sampled_from(RELS), fork=st.sampled_from(FORKS), gap=st.integers(0, 3),
          n=st.integers(0, 9))
    def zeroextend(self, rel, fork, gap, n) -> None:
        block = self.sizes[rel, fork] + gap
        self.smgr.zeroextend(rel, fork, block, n)
        for b in range(block, block + n):
            self.blocks[rel, fork].pop(b, None)
        if n:
            self.sizes[rel, fork] = block + n

    @rule(rel=st.sampled_from(RELS), fork=st.sampled_from(FORKS), start=st.integers(0, 30),
          n=st.integers(1, 10))
    def writev(self, rel, fork, start, n) -> None:
        data = [self._data(rel, fork, b) for b in range(start, start + n)]
        self.smgr.writev(rel, fork, start, data)
        self.blocks[rel, fork].update(zip(range(start, start + n), data, strict=True))
        self.sizes[rel, fork] = max(self.sizes[rel, fork], start + n)

    @rule(rel=st.sampled_from(RELS), fork=st.sampled_from(FORKS), to=st.integers(0, 40))
    def truncate(self, rel, fork, to) -> None:
        to = min(to, self.sizes[rel, fork])
        self.smgr.truncate(rel, fork, to)
        self.sizes[rel, fork] = to
        self.blocks[rel, fork] = {b: d for b, d in self.blocks[rel, fork].items() if b < to}

    @rule(rel=st.sampled_from(RELS), fork=st.sampled_from(FORKS), start=st.integers(0, 40),
          n=st.integers(1, 12))
    def readv(self, rel, fork, start, n) -> None:
        size = self.sizes[rel, fork]
        if size == 0:
            return
        start %= size
        n = min(n, size - start)
        bufs = pages(n)
        self.smgr.readv(rel, fork, start, bufs)
        for i, buf in enumerate(bufs):
            assert buf == self.blocks[rel, fork].get(start + i, ZERO), f"block {start + i}"

    @rule()
    def reopen(self) -> None:
        """A fresh Smgr knows nothing of which segments are full."""
        self.smgr.close()
        self.smgr = make_smgr(self.dir)

    @invariant()
    def whole_structure(self) -> None:
        if not self.sizes:
            return
        for (rel, fork), size in self.sizes.items():
            assert self.smgr.nblocks(rel, fork) == size
            assert disk_layout(self.dir, rel, fork) == expected_layout(size, rel, fork)
            if size:
                bufs = pages(size)
                self.smgr.readv(rel, fork, 0, bufs)
                model = self.blocks[rel, fork]
                for b, buf in enumerate(bufs):
                    assert buf == model.get(b, ZERO), f"rel {rel} fork {fork.label} block {b}"
        assert self.smgr.stats().fd_cache.open_now <= MAX_FILES

    def teardown(self) -> None:
        self.smgr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


SmgrMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                         deadline=None)
test_smgr_matches_dict_model = SmgrMachine.TestCase


# -- the fd cache under smgr ------------------------------------------------------------------


def test_fd_cache_bound_holds_and_reopens_transparently(smgr):
    """Across 4 relations of 3 segments each, the cache never holds more than max_files=3
    fds (by its stats and by the /proc/self/fd count), evicts, and reopens evicted
    segments transparently (every read sees the right data)."""
    before = len(os.listdir("/proc/self/fd"))
    rels = [REL + i for i in range(4)]
    for rel in rels:
        smgr.create(rel, Fork.MAIN)
        smgr.writev(rel, Fork.MAIN, 0, [pattern(rel, b) for b in range(12)])
        assert len(os.listdir("/proc/self/fd")) - before <= MAX_FILES
    rng = random.Random(3)
    for _ in range(100):
        rel, block = rng.choice(rels), rng.randrange(12)
        buf = pages(1)
        smgr.readv(rel, Fork.MAIN, block, buf)
        assert buf[0] == pattern(rel, block)
        assert smgr.stats().fd_cache.open_now <= MAX_FILES
        assert len(os.listdir("/proc/self/fd")) - before <= MAX_FILES
    fd_stats = smgr.stats().fd_cache
    assert fd_stats.evictions > 20 and fd_stats.max_files == MAX_FILES
    smgr.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_fd_in_use_survives_churn_and_unlink(smgr):
    """An fd held with fd_for() is never evicted while other segments churn through the
    cache, and unlink() while it is held removes the files but leaves the fd open on the
    old inode until released; a relation recreated under the same number is then read
    through a fresh fd, never the stale one."""
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [pattern(REL, b) for b in range(8)])
    smgr.create(REL + 1, Fork.MAIN)
    smgr.writev(REL + 1, Fork.MAIN, 0, [pattern(REL + 1, b) for b in range(12)])
    with smgr.fd_for(REL, Fork.MAIN, 1) as fd:
        for block in range(12):
            smgr.readv(REL + 1, Fork.MAIN, block, pages(1))
            assert smgr.stats().fd_cache.open_now <= MAX_FILES + 1
        assert os.pread(fd, BLCKSZ, 0) == pattern(REL, 4)
        smgr.unlink(REL)
        assert not smgr.exists(REL, Fork.MAIN)
        assert os.pread(fd, BLCKSZ, 0) == pattern(REL, 4)  # still the old file
        smgr.create(REL, Fork.MAIN)
        smgr.writev(REL, Fork.MAIN, 0, [pattern(REL, b, version=1) for b in range(8)])
    buf = pages(1)
    smgr.readv(REL, Fork.MAIN, 4, buf)
    assert buf[0] == pattern(REL, 4, version=1)
    assert smgr.stats().fd_cache.in_use == 0


# -- truncate, unlink, create, directory fsyncs ---------------------------------------------


def test_truncate_across_segments_removes_later_files(smgr, tmp_path):
    """truncate keeps only the segments up to the new end (shortening the last one),
    unlinks later ones highest first, and fsyncs base/ after removing; truncating to 0
    leaves an empty segment 0; data below the new end is untouched."""
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [pattern(REL, b) for b in range(19)])
    layer = CountingLayer()
    base = str(tmp_path / "base")
    with osfile.installed(layer):
        smgr.truncate(REL, Fork.MAIN, 6)
        assert disk_layout(tmp_path) == expected_layout(6)
        assert layer.calls["unlink"] == 3 and layer.directory_fsyncs == [base]
        smgr.truncate(REL, Fork.MAIN, 4)  # exactly one full segment: segment 1 goes
        assert disk_layout(tmp_path) == expected_layout(4) == {str(REL): 4 * BLCKSZ}
        smgr.truncate(REL, Fork.MAIN, 3)  # no file removed: no directory fsync
        assert layer.directory_fsyncs == [base, base]
        smgr.truncate(REL, Fork.MAIN, 3)  # no-op
    assert smgr.nblocks(REL, Fork.MAIN) == 3
    bufs = pages(3)
    smgr.readv(REL, Fork.MAIN, 0, bufs)
    assert [bytes(b) for b in bufs] == [pattern(REL, b) for b in range(3)]
    smgr.truncate(REL, Fork.MAIN, 0)
    assert disk_layout(tmp_path) == {str(REL): 0} and smgr.nblocks(REL, Fork.MAIN) == 0
    with pytest.raises(ValueError, match="has only 0"):
        smgr.truncate(REL, Fork.MAIN, 1)


def test_unlink_removes_every_segment_of_every_fork(smgr, tmp_path):
    """unlink(rel) removes all segments of all forks (segment 0 last) and fsyncs base/
    once; unlink(rel, fork) removes only that fork; unlinking again is harmless."""
    for fork in Fork:
        smgr.create(REL, fork)
        smgr.zeroextend(REL, fork, 0, 9)
    smgr.create(REL + 1, Fork.MAIN)
    layer = CountingLayer()
    with osfile.installed(layer):
        smgr.unlink(REL, Fork.VM)
        assert not smgr.exists(REL, Fork.VM) and smgr.exists(REL, Fork.FSM)
        smgr.unlink(REL)
        assert layer.calls["unlink"] == 9 and layer.calls["fsync_directory"] == 2
        smgr.unlink(REL)
        assert layer.calls["fsync_directory"] == 2
    assert os.listdir(tmp_path / "base") == [str(REL + 1)]
    assert not any(smgr.exists(REL, fork) for fork in Fork)


def test_create_makes_base_and_fsyncs_directories(tmp_path):
    """create() makes base/ when missing and fsyncs the data directory and base/; creating
    an existing fork raises RelationExistsError (a StorageError and FileExistsError)
    naming the file, unless exist_ok."""
    smgr = make_smgr(tmp_path)
    layer = CountingLayer()
    with osfile.installed(layer):
        assert not smgr.exists(REL, Fork.MAIN)
        smgr.create(REL, Fork.MAIN)
        assert layer.directory_fsyncs == [str(tmp_path), str(tmp_path / "base")]
        smgr.create(REL, Fork.FSM)
        assert layer.directory_fsyncs[2:] == [str(tmp_path / "base")]
    assert smgr.exists(REL, Fork.MAIN) and smgr.nblocks(REL, Fork.MAIN) == 0
    with pytest.raises(RelationExistsError) as info:
        smgr.create(REL, Fork.MAIN)
    assert isinstance(info.value, StorageError) and isinstance(info.value, FileExistsError)
    assert info.value.errno == errno.EEXIST
    assert str(tmp_path / "base" / str(REL)) in str(info.value)
    smgr.zeroextend(REL, Fork.MAIN, 0, 2)
    smgr.create(REL, Fork.MAIN, exist_ok=True)
    assert smgr.nblocks(REL, Fork.MAIN) == 2  # exist_ok does not truncate
    smgr.close()


def test_new_segments_fsync_the_directory_and_immedsync_every_segment(smgr, tmp_path):
    """A write that creates segment files fsyncs base/ once; immedsync fsyncs each of the
    fork's segment files."""
    smgr.create(REL, Fork.MAIN)
    layer = CountingLayer()
    with osfile.installed(layer):
        smgr.zeroextend(REL, Fork.MAIN, 0, 10)  # creates .1 and .2
        assert layer.calls["fsync_directory"] == 2  # one per new segment
        smgr.immedsync(REL, Fork.MAIN)
        assert layer.calls["fsync"] == 3
    assert smgr.stats().fsyncs == 3 and smgr.stats().directory_fsyncs >= 4


def test_writeback_covers_the_requested_ranges(smgr):
    """writeback(block, n) hints each segment piece once with its offset and length in
    that segment, and skips segments that do not exist."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 6)
    layer = CountingLayer()
    with osfile.installed(layer):
        smgr.writeback(REL, Fork.MAIN, 2, 11)  # blocks 2..12: segments 0, 1, (2), (3)
    assert layer.writebacks == [(2 * BLCKSZ, 2 * BLCKSZ), (0, 4 * BLCKSZ)]


def test_prefetch_runs_advises_each_run_per_segment_piece(smgr):
    """prefetch_runs advises (WILLNEED) each run's piece in each segment once, with its
    offset and length in that segment's file, skipping segments that do not exist and
    empty runs; prefetch is the same for one run."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 6)     # segments 0 (blocks 0-3) and 1 (4, 5)
    layer = CountingLayer()
    with osfile.installed(layer):
        smgr.prefetch_runs(REL, Fork.MAIN, [(1, 1), (3, 2), (5, 0), (9, 1), (0, 1)])
        smgr.prefetch(REL, Fork.MAIN, 2, 1)
    seg0, seg1 = f"{REL}", f"{REL}.1"
    assert layer.advised == [(seg0, BLCKSZ, BLCKSZ), (seg0, 3 * BLCKSZ, BLCKSZ),
                             (seg1, 0, BLCKSZ), (seg0, 0, BLCKSZ), (seg0, 2 * BLCKSZ, BLCKSZ)]


def test_prefetch_runs_does_nothing_with_o_direct(tmp_path):
    """With io_direct no advice is given (the OS page cache is not used)."""
    s = make_smgr(tmp_path, io_direct=True)
    try:
        s.create(REL, Fork.MAIN)
        s.zeroextend(REL, Fork.MAIN, 0, 2)
        layer = CountingLayer()
        with osfile.installed(layer):
            s.prefetch_runs(REL, Fork.MAIN, [(0, 2)])
        assert layer.advised == []
    finally:
        s.close()


# -- O_DIRECT --------------------------------------------------------------------------------


def test_io_direct_with_aligned_buffers(tmp_path):
    """With io_direct=True (O_DIRECT) page-aligned buffers from aligned_buffer() round-trip
    across segments, zeroextend works (its zero block is aligned), and a misaligned buffer
    is refused with EINVAL as an IOFailure. Skipped only where the filesystem refuses
    O_DIRECT on open."""
    probe = str(tmp_path / "probe")
    try:
        os.close(os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT))
    except OSError as e:
        if e.errno == errno.EINVAL:
            pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT (EINVAL on open)")
        raise
    os.unlink(probe)
    smgr = make_smgr(tmp_path, io_direct=True)
    assert smgr.file_flags & os.O_DIRECT
    smgr.create(REL, Fork.MAIN)
    n = 10
    out = aligned_buffer(n * BLCKSZ)
    out_pages = [memoryview(out)[i * BLCKSZ:(i + 1) * BLCKSZ] for i in range(n)]
    for i, page in enumerate(out_pages):
        page[:] = pattern(REL, i)
    smgr.writev(REL, Fork.MAIN, 0, out_pages)
    smgr.zeroextend(REL, Fork.MAIN, n, 3)
    back = aligned_buffer((n + 3) * BLCKSZ)
    back_pages = [memoryview(back)[i * BLCKSZ:(i + 1) * BLCKSZ] for i in range(n + 3)]
    smgr.readv(REL, Fork.MAIN, 0, back_pages)
    assert [bytes(p) for p in back_pages] == [pattern(REL, i) for i in range(n)] + [ZERO] * 3
    misaligned = memoryview(aligned_buffer(2 * BLCKSZ))[1:BLCKSZ + 1]
    with pytest.raises(IOFailure) as info:
        smgr.readv(REL, Fork.MAIN, 0, [misaligned])
    assert info.value.errno == errno.EINVAL
    smgr.close()


# -- errors ----------------------------------------------------------------------------------


def test_missing_segment_in_the_middle_names_path_and_blocks(smgr, tmp_path):
    """When a middle segment file is gone, a read reaching it raises IOFailure (ENOENT)
    naming that file and the blocks asked of it."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 20)
    missing = str(tmp_path / "base" / f"{REL}.2")
    os.unlink(missing)
    with pytest.raises(IOFailure) as info:
        smgr.readv(REL, Fork.MAIN, 7, pages(4))
    assert isinstance(info.value, StorageError) and info.value.errno == errno.ENOENT
    message = str(info.value)
    assert missing in message and "blocks 8..10 of relation 16384 fork main" in message


def test_read_past_the_end_says_how_much_was_read(smgr, tmp_path):
    """Reading past the end of the last segment raises DataCorruptionError "could not read
    blocks A..B of relation R fork F in file PATH: read only K of M bytes", naming the
    piece in that segment; the relation/fork/block attributes are set."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 6)
    path = str(tmp_path / "base" / f"{REL}.1")
    with pytest.raises(DataCorruptionError) as info:
        smgr.readv(REL, Fork.MAIN, 3, pages(4))
    assert str(info.value) == (f"could not read blocks 4..6 of relation 16384 fork main in "
                               f"file {path}: read only 16384 of 24576 bytes")
    assert (info.value.relation, info.value.fork, info.value.block) == (REL, Fork.MAIN, 4)
    with pytest.raises(DataCorruptionError, match="block 6 of .* read only 0 of 8192 bytes"):
        smgr.readv(REL, Fork.MAIN, 6, pages(1))


class FaultLayer(osfile.OsLayer):
    """Injects one kind of fault into data-file I/O: named injection points."""

    def __init__(self, point: str, err: int | None = None) -> None:
        self.point = point
        self.err = err

    def _maybe_fail(self, point: str) -> None:
        if self.point == point and self.err is not None:
            raise OSError(self.err, os.strerror(self.err))

    def preadv(self, fd, buffers, offset):
        self._maybe_fail("preadv")
        if self.point == "short_transfers":
            return super().preadv(fd, [memoryview(buffers[0])[:3000]], offset)
        return super().preadv(fd, buffers, offset)

    def pwritev(self, fd, buffers, offset):
        self._maybe_fail("pwritev")
        if self.point == "write_no_progress":
            return 0
        if self.point == "short_transfers":
            return super().pwritev(fd, [memoryview(buffers[0])[:3000]], offset)
        return super().pwritev(fd, buffers, offset)

    def fsync(self, fd):
        self._maybe_fail("fsync")
        super().fsync(fd)

    def writeback(self, fd, offset, length):
        self._maybe_fail("writeback")
        super().writeback(fd, offset, length)

    def ftruncate(self, fd, length):
        self._maybe_fail("ftruncate")
        super().ftruncate(fd, length)


@pytest.mark.parametrize(("point", "call", "what"), [
    ("preadv", lambda s: s.readv(REL, Fork.MAIN, 4, pages(2)),
     "could not read blocks 4..5 of relation 16384 fork main"),
    ("pwritev", lambda s: s.writev(REL, Fork.MAIN, 5, [ZERO]),
     "could not write block 5 of relation 16384 fork main"),
    ("fsync", lambda s: s.immedsync(REL, Fork.MAIN),
     "could not fsync file"),
    ("writeback", lambda s: s.writeback(REL, Fork.MAIN, 4, 2),
     "could not write back blocks 4..5 of relation 16384 fork main"),
    ("ftruncate", lambda s: s.truncate(REL, Fork.MAIN, 1),
     "could not truncate file"),
])
def test_injected_eio_becomes_io_failure(smgr, tmp_path, point, call, what):
    """An EIO injected at each OS call surfaces as IOFailure with errno EIO whose message
    names the operation, the file and (for data I/O) the relation, fork and blocks."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 6)
    with osfile.installed(FaultLayer(point, errno.EIO)), pytest.raises(IOFailure) as info:
        call(smgr)
    assert info.value.errno == errno.EIO and not isinstance(info.value, DiskFullError)
    message = str(info.value)
    assert what in message and str(tmp_path / "base" / str(REL)) in message
    assert message.endswith(os.strerror(errno.EIO))


def test_write_without_progress_is_a_full_disk(smgr, tmp_path):
    """A pwritev that transfers nothing raises DiskFullError (errno ENOSPC) naming the file
    and block; an ENOSPC error from the OS is a DiskFullError too."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 6)
    with osfile.installed(FaultLayer("write_no_progress")), \
            pytest.raises(DiskFullError) as info:
        smgr.writev(REL, Fork.MAIN, 5, [ZERO])
    assert info.value.errno == errno.ENOSPC
    assert "block 5 of relation 16384 fork main" in str(info.value)
    assert str(tmp_path / "base" / f"{REL}.1") in str(info.value)
    assert "wrote only 0 of 8192 bytes" in str(info.value)
    with osfile.installed(FaultLayer("pwritev", errno.ENOSPC)), pytest.raises(DiskFullError):
        smgr.extend(REL, Fork.MAIN, 6, ZERO)


def test_short_transfers_are_continued(smgr):
    """Reads and writes that transfer at most 3000 bytes per call (a partial block each
    time) are continued until complete, and the data round-trips."""
    smgr.create(REL, Fork.MAIN)
    data = [pattern(REL, b) for b in range(9)]
    with osfile.installed(FaultLayer("short_transfers")):
        smgr.writev(REL, Fork.MAIN, 0, data)
        bufs = pages(9)
        smgr.readv(REL, Fork.MAIN, 0, bufs)
    assert [bytes(b) for b in bufs] == data
    assert smgr.stats().writes > 3 and smgr.stats().read_bytes == 9 * BLCKSZ


def test_bad_arguments_are_rejected(smgr):
    """Caller misuse raises TypeError/ValueError naming the argument, before any I/O."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 2)
    cases = [
        (TypeError, "rel", lambda: smgr.nblocks("16384", Fork.MAIN)),
        (TypeError, "rel", lambda: smgr.nblocks(True, Fork.MAIN)),
        (ValueError, "rel", lambda: smgr.nblocks(0, Fork.MAIN)),
        (ValueError, "fork", lambda: smgr.nblocks(REL, 7)),
        (TypeError, "fork", lambda: smgr.nblocks(REL, "main")),
        (ValueError, "block", lambda: smgr.readv(REL, Fork.MAIN, -1, pages(1))),
        (TypeError, "block", lambda: smgr.readv(REL, Fork.MAIN, 1.0, pages(1))),
        (ValueError, "exactly 8192", lambda: smgr.readv(REL, Fork.MAIN, 0, [bytearray(100)])),
        (TypeError, "single bytearray", lambda: smgr.readv(REL, Fork.MAIN, 0, bytearray(BLCKSZ))),
        (ValueError, "exactly 8192", lambda: smgr.writev(REL, Fork.MAIN, 0, [ZERO, b"x"])),
        (ValueError, "data", lambda: smgr.extend(REL, Fork.MAIN, 2, b"short")),
        (ValueError, "not beyond the end", lambda: smgr.extend(REL, Fork.MAIN, 1, ZERO)),
        (ValueError, "not beyond the end", lambda: smgr.zeroextend(REL, Fork.MAIN, 0, 1)),
        (ValueError, "n must not be negative", lambda: smgr.zeroextend(REL, Fork.MAIN, 2, -1)),
        (ValueError, "nblocks", lambda: smgr.truncate(REL, Fork.MAIN, -1)),
        (ValueError, "has only 2", lambda: smgr.truncate(REL, Fork.MAIN, 3)),
        (ValueError, "largest block", lambda: smgr.zeroextend(REL, Fork.MAIN, 0xFFFFFFFE, 2)),
        (ValueError, "segment_size", lambda: Smgr("/nonexistent", segment_size=0)),
        (ValueError, "max_files", lambda: Smgr("/nonexistent", max_files=0)),
        (TypeError, "data_dir", lambda: Smgr(b"/nonexistent")),
    ]
    for exc, words, call in cases:
        with pytest.raises(exc, match=words):
            call()
    assert smgr.nblocks(REL, Fork.MAIN) == 2


def test_close_is_idempotent_and_final(smgr):
    """close() twice is harmless and closes every fd; using a closed Smgr is a ValueError."""
    smgr.create(REL, Fork.MAIN)
    smgr.zeroextend(REL, Fork.MAIN, 0, 9)
    smgr.close()
    smgr.close()
    assert smgr.stats().fd_cache.open_now == 0
    with pytest.raises(ValueError, match="closed"):
        smgr.nblocks(REL, Fork.MAIN)


# -- pure helpers ----------------------------------------------------------------------------


def test_segment_runs_paths_and_descriptions(smgr, tmp_path):
    """segment_runs splits a block range at segment boundaries into (segno, block in
    segment, first buffer index, count) pieces; segment_path and describe name things the
    way messages and the AIO layer expect."""
    assert smgr.segment_runs(2, 9) == [(0, 2, 0, 2), (1, 0, 2, 4), (2, 0, 6, 3)]
    assert smgr.segment_runs(4, 4) == [(1, 0, 0, 4)]
    assert smgr.segment_runs(7, 0) == []
    for block, n in [(0, 1), (3, 13), (5, 7), (11, 1)]:
        runs = smgr.segment_runs(block, n)
        assert sum(r[3] for r in runs) == n
        assert all(r[1] + r[3] <= SEG for r in runs)
        assert [r[0] * SEG + r[1] for r in runs] == [block + r[2] for r in runs]
    base = tmp_path / "base"
    assert smgr.segment_path(REL, Fork.MAIN, 0) == str(base / "16384")
    assert smgr.segment_path(REL, Fork.FSM, 0) == str(base / "16384_fsm")
    assert smgr.segment_path(REL, Fork.VM, 3) == str(base / "16384_vm.3")
    assert smgr.describe(REL, Fork.MAIN, 5) == "block 5 of relation 16384 fork main"
    assert smgr.describe(REL, Fork.FSM, 4, 4) == "blocks 4..7 of relation 16384 fork fsm"
