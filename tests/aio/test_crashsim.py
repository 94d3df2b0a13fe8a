"""The crash-simulating OS layer (aio/crashsim.py) against real files in tmp_path."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.aio.errors import IOFailure, SlonikError
from slonik.aio.handle import AioReturn
from slonik.aio.ids import TargetId
from slonik.aio.memory import aligned_buffer

from tests.support.crashsim import CrashReport, CrashSimLayer, SimulatedCrash

SEEDS = 200
SECTOR = 512


def some_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def read_or_none(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def crash_run(root: Path, workload, seed: int) -> CrashReport:
    """Install a fresh layer on ``root``, run ``workload(root)``, crash, apply the crash."""
    layer = CrashSimLayer(str(root), seed=seed)
    with osfile.installed(layer):
        workload(root)
        layer.crash_now()
    return layer.apply_crash()


def write(path: Path, data: bytes, offset: int = 0, *, sync: str | None = None,
          flags: int = os.O_RDWR) -> None:
    fd = osfile.open(str(path), flags)
    try:
        assert osfile.pwritev(fd, [data], offset) == len(data)
        if sync == "fsync":
            osfile.fsync(fd)
        elif sync == "fdatasync":
            osfile.fdatasync(fd)
    finally:
        osfile.close(fd)


def assert_chunk_mix(result: bytes, old: bytes, new: bytes, granularity: int, report) -> None:
    """Every ``granularity``-aligned chunk of ``result`` is wholly ``old`` or wholly ``new``."""
    assert len(result) == len(old) == len(new), report
    for start in range(0, len(result), granularity):
        piece = result[start:start + granularity]
        assert piece in (old[start:start + granularity], new[start:start + granularity]), \
            f"chunk at {start} is neither old nor new at {granularity} B\n{report}"


def test_simulated_crash_is_no_error_the_engine_could_handle():
    """SimulatedCrash derives from BaseException only: no `except Exception`, `except
    OSError` or `except SlonikError` in the engine can swallow it (checked by issubclass)."""
    assert issubclass(SimulatedCrash, BaseException)
    for cls in (Exception, OSError, SlonikError):
        assert not issubclass(SimulatedCrash, cls)


def test_the_process_sees_its_own_unsynced_writes(tmp_path):
    """Before the crash the layer passes writes through to the real file (the page cache):
    reading the file with plain Python after an unsynced write shows the new bytes, and a
    read through the layer shows them too."""
    path = tmp_path / "f"
    make_file(path, b"o" * 4096)
    with osfile.installed(CrashSimLayer(str(tmp_path))):
        write(path, b"n" * 1000, 100)
        assert path.read_bytes() == b"o" * 100 + b"n" * 1000 + b"o" * 2996
        fd = osfile.open(str(path), os.O_RDONLY)
        buf = bytearray(4096)
        assert osfile.preadv(fd, [buf], 0) == 4096
        osfile.close(fd)
    assert bytes(buf) == path.read_bytes()


@pytest.mark.parametrize("sync", ["fsync", "fdatasync"])
def test_synced_bytes_always_survive(tmp_path, sync):
    """fsync and fdatasync both make a file's writes durable: over 200 seeds, an existing
    file written then synced, and a new file written, synced and its directory synced, come
    back byte for byte, while a later unsynced write elsewhere in the file takes whatever
    fate it gets (the synced region is compared exactly; the rest only by length)."""
    outcomes = set()
    for seed in range(SEEDS):
        root = tmp_path / str(seed)
        old = some_bytes(16 * 4096, seed)
        synced = some_bytes(8 * 4096, seed + 10_000)
        fresh = some_bytes(3 * 4096 + 100, seed + 20_000)
        make_file(root / "old", old)

        def workload(root, synced=synced, fresh=fresh):
            write(root / "old", synced, 0, sync=sync)
            write(root / "old", b"x" * 4096, 12 * 4096)  # never synced
            write(root / "new", fresh, 0, sync=sync, flags=os.O_RDWR | os.O_CREAT)
            osfile.fsync_directory(str(root))

        report = crash_run(root, workload, seed)
        result = (root / "old").read_bytes()
        assert result[:len(synced)] == synced, report
        assert len(result) == len(old), report
        assert (root / "new").read_bytes() == fresh, report
        outcomes.add(result[12 * 4096:13 * 4096] == b"x" * 4096)
    assert outcomes == {True, False}


def test_unsynced_write_is_kept_dropped_or_torn(tmp_path):
    """An unsynced 16 KiB write over old data comes back, over 200 seeds, as all of it, none
    of it, or torn; all three occur. A torn result is checked chunk by chunk against the old
    and new bytes at the granularity the report names (512 B or 4 KiB, both seen), is a
    proper mix, and bytes outside the write are untouched."""
    seen, granularities = set(), set()
    for seed in range(SEEDS):
        root = tmp_path / str(seed)
        old = some_bytes(32 * 1024, seed)
        new_part = some_bytes(16 * 1024 + 1000, seed + 1)
        offset = 3 * 4096 + 512  # not 4 KiB aligned: the first chunk at 4 KiB is partial
        new = old[:offset] + new_part + old[offset + len(new_part):]
        make_file(root / "f", old)
        report = crash_run(root, lambda root, new_part=new_part, offset=offset:
                           write(root / "f", new_part, offset), seed)
        result = (root / "f").read_bytes()
        (fate,) = report.file(str(root / "f")).changes
        if result == old:
            kind = "dropped"
        elif result == new:
            kind = "kept"
        else:
            kind = "torn"
            assert_chunk_mix(result, old, new, fate.granularity, report)
            assert result[:offset] == old[:offset], report
            granularities.add(fate.granularity)
        assert fate.fate == kind, report
        seen.add(kind)
    assert seen == {"kept", "dropped", "torn"}
    assert granularities == {512, 4096}


def test_unsynced_append_tears_into_a_prefix_with_holes(tmp_path):
    """A write past the end of a file, unsynced: the file comes back as the old bytes
    followed by some of the new chunks, with zeros where a dropped chunk precedes a kept
    one (a hole), never longer than the full write; checked chunk by chunk at 512 B."""
    lengths = set()
    for seed in range(SEEDS // 2):
        root = tmp_path / str(seed)
        old = some_bytes(4096, seed)
        tail = some_bytes(8 * 4096, seed + 1)
        make_file(root / "f", old)
        report = crash_run(root, lambda root, tail=tail: write(root / "f", tail, 4096), seed)
        result = (root / "f").read_bytes()
        assert result[:4096] == old and len(result) % SECTOR == 0, report
        assert len(result) <= 4096 + len(tail), report
        for start in range(4096, len(result), SECTOR):
            piece = result[start:start + SECTOR]
            assert piece in (tail[start - 4096:start - 4096 + SECTOR], bytes(SECTOR)), report
        lengths.add(len(result))
    assert 4096 in lengths and 4096 + 8 * 4096 in lengths and len(lengths) > 2


def test_writes_keep_their_order_within_a_file(tmp_path):
    """Two unsynced writes to the same 512-byte sector resolve in order: the result is the
    old, first or second version, never the first over the second (three versions are
    compared exactly over 100 seeds; all three occur)."""
    seen = set()
    for seed in range(100):
        root = tmp_path / str(seed)
        make_file(root / "f", b"0" * SECTOR)

        def workload(root):
            write(root / "f", b"1" * SECTOR)
            write(root / "f", b"2" * SECTOR)

        report = crash_run(root, workload, seed)
        result = (root / "f").read_bytes()
        assert result in (b"0" * SECTOR, b"1" * SECTOR, b"2" * SECTOR), report
        if result == b"1" * SECTOR:
            assert [c.fate for c in report.file(str(root / "f")).changes] == ["kept", "dropped"]
        seen.add(result[:1])
    assert seen == {b"0", b"1", b"2"}


@pytest.mark.parametrize("directory_synced", [False, True])
def test_created_file_survives_only_if_its_directory_was_synced(tmp_path, directory_synced):
    """A new file, written and fsynced: without an fsync of its directory it vanishes on some
    of 100 seeds (and when it survives it has its synced bytes); with the directory fsync
    it is there with its bytes on every seed."""
    survived = set()
    data = some_bytes(5000, 1)
    for seed in range(100):
        root = tmp_path / str(seed)
        root.mkdir()

        def workload(root):
            write(root / "new", data, sync="fsync", flags=os.O_RDWR | os.O_CREAT | os.O_EXCL)
            if directory_synced:
                osfile.fsync_directory(str(root))

        report = crash_run(root, workload, seed)
        result = read_or_none(root / "new")
        assert result in (None, data), report
        survived.add(result is not None)
    assert survived == ({True} if directory_synced else {True, False})


@pytest.mark.parametrize("directory_synced", [False, True])
def test_rename_gives_old_or_new_and_only_new_after_a_directory_sync(tmp_path,
                                                                      directory_synced):
    """The atomic-replace pattern (write tmp, fsync it, fsync the directory, rename tmp over
    the target): without the final directory fsync the target is the old or the new content
    (both occur over 100 seeds) and tmp exists exactly when the target is old; with it the
    target is always new and tmp is gone."""
    seen = set()
    old, new = b"old" * 1000, b"new" * 1000
    for seed in range(100):
        root = tmp_path / str(seed)
        make_file(root / "target", old)

        def workload(root):
            write(root / "tmp", new, sync="fsync", flags=os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            osfile.fsync_directory(str(root))
            osfile.rename(str(root / "tmp"), str(root / "target"))
            if directory_synced:
                osfile.fsync_directory(str(root))

        report = crash_run(root, workload, seed)
        target, tmp = read_or_none(root / "target"), read_or_none(root / "tmp")
        assert target in (old, new), report
        assert tmp == (new if target == old else None), report
        seen.add(target)
    assert seen == ({new} if directory_synced else {old, new})


def test_rename_across_directories_needs_both_synced(tmp_path):
    """A rename from a/ to b/ is durable only once both directories are synced: with only
    b/ synced the file is found under one name or the other (never both, never neither)
    over 100 seeds, and after syncing a/ too it is always under the new name."""
    seen = set()
    for both in (False, True):
        for seed in range(100):
            root = tmp_path / f"{both}-{seed}"
            make_file(root / "a" / "f", b"data")
            (root / "b").mkdir()

            def workload(root, both=both):
                osfile.rename(str(root / "a" / "f"), str(root / "b" / "f"))
                osfile.fsync_directory(str(root / "b"))
                if both:
                    osfile.fsync_directory(str(root / "a"))

            report = crash_run(root, workload, seed)
            where = ((root / "a" / "f").exists(), (root / "b" / "f").exists())
            assert where in ((True, False), (False, True)), report
            if both:
                assert where == (False, True), report
            seen.add((both, where))
    assert seen == {(False, (True, False)), (False, (False, True)), (True, (False, True))}


@pytest.mark.parametrize("directory_synced", [False, True])
def test_unlink_is_pending_until_the_directory_sync(tmp_path, directory_synced):
    """An unlinked file comes back with its content on some of 100 seeds when the directory
    was not synced, and never once it was."""
    seen = set()
    for seed in range(100):
        root = tmp_path / str(seed)
        make_file(root / "f", b"content")

        def workload(root):
            osfile.unlink(str(root / "f"))
            if directory_synced:
                osfile.fsync_directory(str(root))

        report = crash_run(root, workload, seed)
        result = read_or_none(root / "f")
        assert result in (None, b"content"), report
        seen.add(result)
    assert seen == ({None} if directory_synced else {None, b"content"})


def test_entries_of_an_unsynced_new_directory_vanish_with_it(tmp_path):
    """mkdir sub, create sub/f (fsynced, sub fsynced) but never fsync the parent: over 100
    seeds sub is either gone with everything in it or there with f and its bytes (both
    occur); after a parent fsync it is always there."""
    seen = set()
    for parent_synced in (False, True):
        for seed in range(100):
            root = tmp_path / f"{parent_synced}-{seed}"
            root.mkdir()

            def workload(root, parent_synced=parent_synced):
                osfile.mkdir(str(root / "sub"))
                write(root / "sub" / "f", b"abc", sync="fsync", flags=os.O_RDWR | os.O_CREAT)
                osfile.fsync_directory(str(root / "sub"))
                if parent_synced:
                    osfile.fsync_directory(str(root))

            report = crash_run(root, workload, seed)
            if (root / "sub").exists():
                assert (root / "sub" / "f").read_bytes() == b"abc", report
                seen.add((parent_synced, True))
            else:
                assert not parent_synced, report
                seen.add((parent_synced, False))
    assert seen == {(False, True), (False, False), (True, True)}


def test_truncation_is_modelled(tmp_path):
    """ftruncate: unsynced, a shrink comes back as the full old file or its prefix (both
    over 100 seeds); synced, always the prefix; a synced grow always adds zeros; an O_TRUNC
    open counts as an unsynced truncation to zero; a write after an unsynced truncation is
    applied after it in order (the result is one of the four combinations)."""
    old = some_bytes(16 * 1024, 7)
    seen: dict[str, set] = {"shrink": set(), "otrunc": set(), "order": set()}
    for seed in range(100):
        root = tmp_path / str(seed)
        for name in ("shrink", "synced", "grow", "otrunc", "order"):
            make_file(root / name, old)

        def workload(root):
            fd = osfile.open(str(root / "shrink"), os.O_RDWR)
            osfile.ftruncate(fd, 4096)
            osfile.close(fd)
            fd = osfile.open(str(root / "synced"), os.O_RDWR)
            osfile.ftruncate(fd, 4096)
            osfile.fsync(fd)
            osfile.close(fd)
            fd = osfile.open(str(root / "grow"), os.O_RDWR)
            osfile.ftruncate(fd, 20 * 1024)
            osfile.fdatasync(fd)
            osfile.close(fd)
            osfile.close(osfile.open(str(root / "otrunc"), os.O_RDWR | os.O_TRUNC))
            fd = osfile.open(str(root / "order"), os.O_RDWR)
            osfile.ftruncate(fd, 0)
            osfile.pwritev(fd, [b"z" * SECTOR], 0)
            osfile.close(fd)

        report = crash_run(root, workload, seed)
        shrink = (root / "shrink").read_bytes()
        assert shrink in (old, old[:4096]), report
        seen["shrink"].add(len(shrink))
        assert (root / "synced").read_bytes() == old[:4096], report
        assert (root / "grow").read_bytes() == old + bytes(4096), report
        otrunc = (root / "otrunc").read_bytes()
        assert otrunc in (old, b""), report
        seen["otrunc"].add(len(otrunc))
        order = (root / "order").read_bytes()
        assert order in (old, b"", b"z" * SECTOR, b"z" * SECTOR + old[SECTOR:]), report
        seen["order"].add(order[:SECTOR] + bytes([len(order) > SECTOR]))
    assert seen["shrink"] == {len(old), 4096}
    assert seen["otrunc"] == {len(old), 0}
    assert len(seen["order"]) == 4


def count_ops(root: Path, workload) -> int:
    layer = CrashSimLayer(str(root))
    with osfile.installed(layer):
        workload(root)
    return layer.ops


def test_crash_after_ops_stops_at_exactly_the_nth_mutating_call(tmp_path):
    """A single-threaded workload of 24 writes and syncs is counted first (ops); then for
    every N in 1..24 a fresh run with crash_after_ops=N raises SimulatedCrash from the N-th
    mutating call, which is not performed: before apply_crash the real file holds exactly
    the writes among the first N-1 calls, layer.ops == N-1, and a later read, write and
    sync also raise."""
    def workload(root, done=None):
        fd = osfile.open(str(root / "f"), os.O_RDWR)
        try:
            for i in range(12):
                osfile.pwritev(fd, [bytes([i + 1]) * SECTOR], i * SECTOR)
                if done is not None:
                    done.append(i)
                osfile.fdatasync(fd)
        finally:
            osfile.close(fd)

    counting = tmp_path / "count"
    make_file(counting / "f", bytes(12 * SECTOR))
    total = count_ops(counting, workload)
    assert total == 24
    for n in range(1, total + 1):
        root = tmp_path / str(n)
        make_file(root / "f", bytes(12 * SECTOR))
        layer = CrashSimLayer(str(root), crash_after_ops=n)
        done: list[int] = []
        with osfile.installed(layer):
            with pytest.raises(SimulatedCrash, match=f"mutating call {n}$"):
                workload(root, done)
            assert layer.crashed and layer.ops == n - 1
            assert len(done) == n // 2  # call 2i+1 is write i, call 2i+2 its sync
            real = (root / "f").read_bytes()
            assert real == b"".join(bytes([i + 1]) * SECTOR for i in done) + \
                bytes((12 - len(done)) * SECTOR)
            fd = os.open(root / "f", os.O_RDWR)
            try:
                with pytest.raises(SimulatedCrash):
                    osfile.preadv(fd, [bytearray(SECTOR)], 0)
                with pytest.raises(SimulatedCrash):
                    osfile.pwritev(fd, [b"x"], 0)
                with pytest.raises(SimulatedCrash):
                    osfile.fsync(fd)
                with pytest.raises(SimulatedCrash):
                    osfile.exists(str(root))
            finally:
                os.close(fd)
            assert (root / "f").read_bytes() == real
        layer.apply_crash()
        # Every fdatasync'd write survives whatever the seed.
        survived = (root / "f").read_bytes()
        synced = (n - 1) // 2
        assert survived[:synced * SECTOR] == real[:synced * SECTOR]


def test_crash_after_ops_from_many_threads(tmp_path):
    """Four threads write their own sectors (a sync every third write) through the layer.
    For 20 random N the crash comes at the N-th mutating call whichever thread makes it:
    the calls that returned add up to N-1 (layer.ops), every thread that had calls
    left ends with SimulatedCrash, and the real file holds exactly the writes that returned."""
    threads_n, per_thread = 4, 30
    rng = random.Random(5)

    def run(root: Path, layer: CrashSimLayer) -> tuple[list[int], list[int]]:
        returned = [0] * threads_n
        written: list[int] = []
        crashes = [0] * threads_n
        lock = threading.Lock()
        fd = osfile.open(str(root / "f"), os.O_RDWR)

        def worker(t: int) -> None:
            try:
                for i in range(per_thread):
                    sector = t * per_thread + i
                    osfile.pwritev(fd, [bytes([t + 1]) * SECTOR], sector * SECTOR)
                    with lock:
                        written.append(sector)
                    returned[t] += 1
                    if i % 3 == 2:
                        osfile.fsync(fd)
                        returned[t] += 1
            except SimulatedCrash:
                crashes[t] += 1

        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if layer.crashed:
            with pytest.raises(SimulatedCrash):
                osfile.file_size(fd)
        osfile.close(fd)
        return returned, crashes, written

    counting = tmp_path / "count"
    make_file(counting / "f", bytes(threads_n * per_thread * SECTOR))
    layer = CrashSimLayer(str(counting))
    with osfile.installed(layer):
        returned, crashes, _ = run(counting, layer)
    total = layer.ops
    assert total == sum(returned) == threads_n * (per_thread + per_thread // 3)
    for n in sorted(rng.sample(range(1, total + 1), 20)):
        root = tmp_path / str(n)
        make_file(root / "f", bytes(threads_n * per_thread * SECTOR))
        layer = CrashSimLayer(str(root), crash_after_ops=n)
        with osfile.installed(layer):
            returned, crashes, written = run(root, layer)
        assert layer.ops == n - 1 == sum(returned)
        calls_per_thread = per_thread + per_thread // 3
        assert all(c == 1 or r == calls_per_thread for c, r in zip(crashes, returned, strict=True))
        assert sum(crashes) >= 1
        real = (root / "f").read_bytes()
        assert sorted(s for s in range(threads_n * per_thread)
                      if real[s * SECTOR] != 0) == sorted(written)
        layer.apply_crash()


@pytest.mark.parametrize("io_method", ["sync", "worker"])
def test_writes_through_the_aio_layer(tmp_path, io_method):
    """Blocks written through Aio handles (TargetId.FILE; the worker method reopens the
    file by path in its own threads) and then fsynced through a handle always survive;
    blocks written after the last sync come back per 512-byte chunk old or new; checked
    over 20 seeds for the sync and worker methods."""
    block, nblocks = 8192, 16
    for seed in range(20):
        root = tmp_path / str(seed)
        old = some_bytes(nblocks * block, seed)
        new = some_bytes(nblocks * block, seed + 1)
        make_file(root / "data", old)
        path = str(root / "data")
        layer = CrashSimLayer(str(root), seed=seed)
        with osfile.installed(layer):
            aio = Aio(io_method, io_max_concurrency=16)
            fd = osfile.open(path, os.O_RDWR)
            mem = aligned_buffer(nblocks * block)
            mem[:] = new

            def write_blocks(blocks, fd=fd, mem=mem, path=path, aio=aio):
                refs = []
                with aio.batch():
                    for b in blocks:
                        h = aio.acquire()
                        h.set_target(TargetId.FILE, (path, os.O_RDWR, b * block))
                        refs.append(h.wait_ref())
                        h.start_writev(fd, [memoryview(mem)[b * block:(b + 1) * block]],
                                       b * block)
                for ref in refs:
                    aio.wait(ref)

            write_blocks(range(nblocks // 2))
            h = aio.acquire()
            h.set_target(TargetId.FILE, (path, os.O_RDWR, 0))
            ref = h.wait_ref()
            h.start_fsync(fd, datasync=seed % 2 == 0)
            aio.wait(ref)
            write_blocks(range(nblocks // 2, nblocks))
            layer.crash_now()
            aio.shutdown()  # nothing is in flight: it waits for nothing and does no I/O
            osfile.close(fd)
        report = layer.apply_crash()
        result = (root / "data").read_bytes()
        half = nblocks // 2 * block
        assert result[:half] == new[:half], report
        assert_chunk_mix(result[half:], old[half:], new[half:], SECTOR, report)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_crash_in_an_io_worker_and_the_teardown_that_follows(tmp_path):
    """With the worker method the crash point can fall in a worker thread: that worker dies
    with SimulatedCrash but first completes its I/O as a failure (EIO), so no waiter sleeps
    forever; the issuer's next OS call raises SimulatedCrash too, and
    ``aio.method.shutdown()`` stops the workers without any I/O. Checked by waiting on the
    handle (it completes, failed), then apply_crash and a reopen with a plain OsLayer."""
    path = tmp_path / "data"
    make_file(path, bytes(8192))
    layer = CrashSimLayer(str(tmp_path), crash_after_ops=1)
    with osfile.installed(layer):
        aio = Aio("worker", io_workers=2)
        fd = os.open(path, os.O_RDWR)  # an fd from outside the layer is found by its path
        ret = AioReturn()
        h = aio.acquire(ret)
        h.set_target(TargetId.FILE, (str(path), os.O_RDWR, 0))
        ref = h.wait_ref()
        h.start_writev(fd, [b"w" * 8192], 0)
        for _ in range(200):
            if layer.crashed:
                break
            threading.Event().wait(0.01)
        assert layer.crashed and layer.ops == 0
        aio.wait(ref)
        with pytest.raises(IOFailure):
            ret.raise_if_failed()
        with pytest.raises(SimulatedCrash):
            osfile.pwritev(fd, [b"x"], 0)
        aio.method.shutdown()
        os.close(fd)
    layer.apply_crash()
    with osfile.installed(osfile.OsLayer()):
        assert osfile.exists(str(path))
    assert path.read_bytes() == bytes(8192)


def test_fd_opened_outside_the_layer_is_tracked_by_path(tmp_path):
    """A descriptor from os.open (before install) is mapped to its file through
    /proc/self/fd: its unsynced write is dropped on some of 50 seeds, its synced write never."""
    seen = set()
    for seed in range(50):
        root = tmp_path / str(seed)
        make_file(root / "f", bytes(2 * SECTOR))
        fd = os.open(root / "f", os.O_RDWR)
        layer = CrashSimLayer(str(root), seed=seed)
        with osfile.installed(layer):
            osfile.pwritev(fd, [b"s" * SECTOR], 0)
            osfile.fsync(fd)
            osfile.pwritev(fd, [b"u" * SECTOR], SECTOR)
            layer.crash_now()
        os.close(fd)
        report = layer.apply_crash()
        result = (root / "f").read_bytes()
        assert result[:SECTOR] == b"s" * SECTOR, report
        seen.add(result[SECTOR:])
    assert seen == {bytes(SECTOR), b"u" * SECTOR}


def test_files_outside_root_pass_through(tmp_path):
    """Files outside root are not tracked: an unsynced write to one is still there after
    apply_crash on every one of 20 seeds, while the tracked file's write is dropped on some."""
    outside_dropped, inside_dropped = set(), set()
    for seed in range(20):
        root, other = tmp_path / str(seed) / "db", tmp_path / str(seed) / "other"
        make_file(root / "f", bytes(SECTOR))
        make_file(other, bytes(SECTOR))

        def workload(root, other=other):
            write(root / "f", b"i" * SECTOR)
            write(other, b"o" * SECTOR)

        crash_run(root, workload, seed)
        outside_dropped.add(other.read_bytes() != b"o" * SECTOR)
        inside_dropped.add((root / "f").read_bytes() == bytes(SECTOR))
    assert outside_dropped == {False}
    assert inside_dropped == {True, False}


def test_same_seed_same_crash_and_the_report_says_what_happened(tmp_path):
    """apply_crash is a function of the seed: two identical runs with seed 3 give identical
    files and reports; the report names the file and each change's fate (checked on its
    text)."""
    results = []
    for run in range(2):
        root = tmp_path / str(run)
        make_file(root / "f", bytes(8 * 4096))

        def workload(root):
            write(root / "f", b"a" * 8 * 4096)
            write(root / "f", b"b" * 4096, 4096)
            fd = osfile.open(str(root / "f"), os.O_RDWR)
            osfile.ftruncate(fd, 6 * 4096)
            osfile.close(fd)

        report = crash_run(root, workload, 3)
        results.append(((root / "f").read_bytes(), [f.changes for f in report.files]))
        text = str(report)
        assert str(root / "f") in text and "seed 3" in text and "truncate to 24576" in text
        assert text.count("write [") == 2
    assert results[0] == results[1]


def test_the_layer_is_spent_after_apply_crash(tmp_path):
    """After apply_crash every call but close raises RuntimeError (a second apply_crash and
    crash_now too): the test must install a plain OsLayer to reopen."""
    make_file(tmp_path / "f", b"x")
    layer = CrashSimLayer(str(tmp_path), seed=1)
    with osfile.installed(layer):
        fd = osfile.open(str(tmp_path / "f"), os.O_RDWR)
    layer.apply_crash()  # crashes first when the crash has not happened yet
    assert layer.crashed
    for call in (lambda: layer.pwritev(fd, [b"y"], 0), lambda: layer.preadv(fd, [bytearray(1)], 0),
                 lambda: layer.open(str(tmp_path / "f"), os.O_RDONLY), layer.apply_crash,
                 layer.crash_now, lambda: layer.fsync_directory(str(tmp_path))):
        with pytest.raises(RuntimeError, match="spent"):
            call()
    layer.close(fd)


def test_arguments_are_checked():
    """Misuse is a TypeError/ValueError naming the argument."""
    with pytest.raises(TypeError, match="root"):
        CrashSimLayer(3)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="crash_after_ops"):
            CrashSimLayer("/tmp", crash_after_ops=bad)
