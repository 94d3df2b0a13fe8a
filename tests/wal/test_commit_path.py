"""The durable-commit path of the WAL (wal/xlog.py) on every io method: how a flush reaches
the kernel, and what a failed or short write in it means.

A real small tmpfs (mounted here, root only) gives a real full disk: no fault injection
where the kernel can produce the failure itself.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest
from slonik.aio import osfile
from slonik.aio.errors import DiskFullError, IOFailure
from slonik.aio.handle import AioReturn, HandleFlag, IoOp
from slonik.aio.ids import TargetId
from slonik.aio.method_io_uring import io_uring_available
from slonik.wal.errors import WalDiskFullError, WalError
from slonik.wal.reader import WalReader
from slonik.wal.walpage import PAGE_HEADER_SIZE, segment_file_name
from slonik.wal.walwriter import WalWriter
from slonik.wal.xlog import (
    FLUSH_AIO,
    FLUSH_RING,
    FLUSH_RING_ENTRIES,
    FLUSH_SYSCALLS,
    WAL_SEGMENTS_PREPARED_AHEAD,
    Wal,
    flush_path_for,
)

from tests.support.method_faulty import FaultRule

SEG = 64 * 1024
FIRST = SEG + PAGE_HEADER_SIZE
TMPFS_BYTES = 512 * 1024
FREE_BYTES = 16 * 1024            # room left on the tmpfs when the short write is issued
RECORD_PAYLOAD = b"r" * 1000
PREPARE_WAIT_MAX_S = 30           # bound on waiting for the WAL writer's round


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill_leaving(fs: str, free: int) -> None:
    """Fill ``fs`` to ENOSPC with a file, then give back exactly ``free`` bytes."""
    path = os.path.join(fs, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"f" * 4096
        while True:
            try:
                if os.write(fd, chunk) < len(chunk):
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        os.ftruncate(fd, os.fstat(fd).st_size // 4096 * 4096 - free)
    finally:
        os.close(fd)


def sparse_segment(wal_dir: str, segno: int) -> None:
    """A segment file that exists at full length but holds no blocks (so writing into it
    needs space: what a file system without preallocation would do)."""
    fd = os.open(os.path.join(wal_dir, segment_file_name(segno)), os.O_RDWR | os.O_CREAT,
                 0o600)
    try:
        os.ftruncate(fd, SEG)
    finally:
        os.close(fd)


def test_flush_goes_to_the_kernel_as_one_linked_submission_on_io_uring(aio, tmp_path):
    """With the ring flush path (chosen explicitly on io_uring) every commit's flush is one
    linked write+fdatasync chain (counted in ``linked_flushes``); on the default path none
    is, and the syncs still happen. Checked by committing 50 records one by one and
    reading them back."""
    ring = aio.method.links_submissions
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG, flush_path=FLUSH_RING if ring else None)
    for i in range(50):
        _s, e = w.insert(10, 0, i + 1, b"c" * 300)
        w.flush(e)
    st = w.stats()
    w.close()
    assert st.flushes == 50 and st.syncs == 50
    if ring:
        assert st.linked_flushes == st.flushes
    else:
        assert st.linked_flushes == 0
    got = list(WalReader(str(tmp_path), SEG, FIRST))
    assert [rr.record.xid for rr in got] == list(range(1, 51))


def test_linked_write_that_comes_back_short_cancels_its_sync(aio, small_fs):
    """A write linked to an fdatasync that ends short on a really full tmpfs: the write is
    reported as a full disk (DiskFullError naming the bytes written); on io_uring the
    kernel cancels the linked sync (ECANCELED), elsewhere the flags are ignored and the
    sync runs. Checked through the AIO layer's returns."""
    path = os.path.join(small_fs, "data")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fill_leaving(small_fs, FREE_BYTES)
        buf = bytearray(b"w" * (4 * FREE_BYTES))
        wret, sret = AioReturn(), AioReturn()
        with aio.batch():
            h = aio.acquire(wret)
            h.set_target(TargetId.WAL, (path, os.O_RDWR, 0))
            h.set_flag(HandleFlag.LINK_NEXT | HandleFlag.ISSUER_WAITS)
            wref = h.wait_ref()
            h.start_writev(fd, [memoryview(buf)], 0)
            h = aio.acquire(sret)
            h.set_target(TargetId.WAL, (path, os.O_RDWR, 0))
            h.set_flag(HandleFlag.ISSUER_WAITS)
            sref = h.wait_ref()
            h.start_fsync(fd, datasync=True)
        aio.wait(wref)
        aio.wait(sref)
        with pytest.raises(DiskFullError, match=f"wrote only {FREE_BYTES} of {len(buf)}"):
            wret.raise_if_failed()
        if aio.method.links_submissions:
            with pytest.raises(IOFailure) as info:
                sret.raise_if_failed()
            assert info.value.errno == errno.ECANCELED
        else:
            sret.raise_if_failed()
    finally:
        aio.closing_fd(fd)
        os.close(fd)


@pytest.mark.parametrize("flush_path", [None, FLUSH_RING])
def test_short_wal_write_is_a_full_disk_and_fatal(aio, small_fs, flush_path):
    """A flush whose write comes back short (a real full tmpfs under a WAL segment without
    preallocated blocks) raises WalDiskFullError naming the short write — never success,
    never the cancelled sync — and the Wal refuses everything after it. On the default
    flush path and on the ring path."""
    need_ring(flush_path)
    sparse_segment(small_fs, 1)
    fill_leaving(small_fs, FREE_BYTES)
    w = Wal(small_fs, aio, wal_segment_size=SEG, wal_buffers=64, flush_path=flush_path)
    end = 0
    while end < SEG + 5 * FREE_BYTES // 2:  # several pages more than the free room
        _s, end = w.insert(10, 0, 1, RECORD_PAYLOAD)
    assert_short_write_is_fatal(w, end)
    w.close()


def assert_short_write_is_fatal(w: Wal, end: int) -> None:
    """Flushing ``w`` to ``end`` raises WalDiskFullError naming the short write, and the
    Wal refuses everything after it, with the full disk as the cause."""
    with pytest.raises(WalDiskFullError) as info:
        w.flush(end)
    assert isinstance(info.value, WalError) and isinstance(info.value, DiskFullError)
    assert "wrote only" in str(info.value.__cause__)
    assert w.failed and w.flush_lsn < end
    with pytest.raises(WalError, match="unusable") as later:
        w.insert(10, 0, 2, b"after")
    # a later caller (another thread's commit) sees the failure as its cause: the full disk
    assert later.value.__cause__ is info.value.__cause__


def test_failed_linked_sync_is_fatal_and_never_retried(faulty_aio, tmp_path):
    """An fdatasync that fails inside the linked flush (EIO injected at its completion,
    after the real I/O) is fatal: the flush raises WalError, not a full disk, the Wal stays
    failed, and exactly one sync was attempted however often flush is called again."""
    aio, method = faulty_aio
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    _s, e = w.insert(10, 0, 1, b"ok")
    w.flush(e)
    rule = method.add(FaultRule("syncfail", op=IoOp.FDATASYNC, errno=errno.EIO, times=None))
    _s, e = w.insert(10, 0, 2, b"lost")
    with pytest.raises(WalError, match="crash recovery") as info:
        w.flush(e)
    assert not isinstance(info.value, DiskFullError)
    for _ in range(3):
        with pytest.raises(WalError, match="unusable"):
            w.flush(e)
    assert rule.fired == 1 and w.failed
    if aio.method.links_submissions:
        assert w.stats().linked_flushes == 2
    w.close()


def fill_segment(w: Wal, segno: int) -> int:
    """Insert and flush 1 KiB records until the insert position is inside ``segno``."""
    end = 0
    while end < segno * SEG + PAGE_HEADER_SIZE:
        _s, end = w.insert(10, 0, 1, RECORD_PAYLOAD)
        w.flush(end)
    return end


def test_prepared_segments_exist_ahead_and_commits_never_create_one(aio, tmp_path):
    """With ``prepare_segments`` called between commits (as the WAL writer does every
    round) the segment after the insert position always exists, zero-filled to full
    length, and no flush creates a segment itself (segments_created_inline stays 0)
    across four segment switches. Without it, flushes do create them inline: the counter
    can fail."""
    d = str(tmp_path / "prepared")
    os.mkdir(d)
    w = Wal(d, aio, wal_segment_size=SEG)
    assert w.prepare_segments() == 1 + WAL_SEGMENTS_PREPARED_AHEAD
    for segno in range(2, 6):
        nxt = os.path.join(d, segment_file_name(segno))
        assert os.path.getsize(nxt) == SEG
        with open(nxt, "rb") as f:
            assert f.read() == bytes(SEG)
        fill_segment(w, segno)
        w.prepare_segments()
        assert os.path.exists(os.path.join(d, segment_file_name(segno + 1)))
    st = w.stats()
    w.close()
    assert st.segments_created_inline == 0 and st.segments_prepared >= 5
    assert len(list(WalReader(d, SEG, FIRST))) == st.records

    d2 = str(tmp_path / "inline")
    os.mkdir(d2)
    w = Wal(d2, aio, wal_segment_size=SEG)
    fill_segment(w, 3)
    st = w.stats()
    w.close()
    assert st.segments_created_inline == 3 and st.segments_prepared == 0


def test_preparing_while_inserts_run_ahead_of_the_flush_leaves_no_segment_missing(aio,
                                                                                   tmp_path):
    """Inserts may run more than a segment ahead of the last flush (they wait only for
    room in the WAL buffers). A preparation in that moment must make every segment from
    the flush position on ready, not only those from the insert position: the flush that
    follows then finds each file it writes. (It once prepared from the insert position and
    declared the skipped segment ready, and the next flush failed, fatally, opening it.)"""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG, wal_buffers=64)   # 512 KiB of room
    end = fill_segment(w, 2)                # flushed into segment 2
    while end < 4 * SEG + PAGE_HEADER_SIZE:  # inserts reach segment 4, unflushed
        _s, end = w.insert(10, 0, 1, RECORD_PAYLOAD)
    assert w.stats().flush_lsn < 3 * SEG
    w.prepare_segments()
    w.flush(end)                            # writes segments 2, 3 and 4
    st = w.stats()
    w.close()
    assert st.flush_lsn >= end
    assert len(list(WalReader(str(tmp_path), SEG, FIRST))) == st.records


def test_wal_writer_prepares_the_next_segment(aio, tmp_path):
    """The WAL writer thread prepares the segment after the insert position without any
    commit asking: after inserts reach segment 3, segment 4 appears (waited for with a
    generous bound, no timing asserted), and the commits that then cross into it create
    no segment (the inline counter does not move)."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    writer = WalWriter(w, wal_writer_delay_ms=1)
    writer.start()
    try:
        end = 0
        while end < 3 * SEG + PAGE_HEADER_SIZE:
            _s, end = w.insert(10, 0, 1, RECORD_PAYLOAD)
        w.flush(end)
        nxt = os.path.join(str(tmp_path), segment_file_name(4))
        deadline = time.monotonic() + PREPARE_WAIT_MAX_S
        while not os.path.exists(nxt) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.path.exists(nxt) and os.path.getsize(nxt) == SEG
        inline_before = w.stats().segments_created_inline
        fill_segment(w, 4)
        assert w.stats().segments_created_inline == inline_before
    finally:
        writer.stop()
    wst = writer.stats()
    w.close()
    assert wst.segments_prepared >= 1 and wst.prepare_error == ""


def _wait_for_waiters(w: Wal, n: int) -> None:
    """Poll (bounded by PREPARE_WAIT_MAX_S) until ``n`` committers wait on the flush in
    progress; assert they do."""
    deadline = time.monotonic() + PREPARE_WAIT_MAX_S
    while len(w._waiters) < n and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(w._waiters) == n


def _committer(w: Wal, ends: list[int], errors: list[BaseException]):
    """A thread target committing one 200-byte record (insert + flush) as xid ``i + 1``:
    its end LSN goes to ``ends``, an exception to ``errors``."""
    def committer(i: int) -> None:
        try:
            _s, end = w.insert(10, 0, i + 1, b"g" * 200)
            w.flush(end)
            ends.append(end)
        except BaseException as exc:
            errors.append(exc)
    return committer


def test_one_flush_carries_every_commit_queued_behind_it(aio, tmp_path):
    """Seven committers (insert + flush each) while the first leader is held before it
    takes its target (the test holds the flush lock): the six others queue, and when the
    lock is released one write+sync carries all seven commits — one flush, six group
    joins — and every committer returns with its record durable."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    ends: list[int] = []
    errors: list[BaseException] = []
    committer = _committer(w, ends, errors)
    threads = [threading.Thread(target=committer, args=(i,)) for i in range(7)]
    with w._flush_lock:   # whoever leads first blocks right here, before its target
        for t in threads:
            t.start()
        _wait_for_waiters(w, 6)
    for t in threads:
        t.join(PREPARE_WAIT_MAX_S)
        assert not t.is_alive()
    st = w.stats()
    w.close()
    assert not errors and len(ends) == 7
    assert st.flushes == 1 and st.group_joins == 6 and st.flush_lsn >= max(ends)
    assert sorted(rr.record.xid for rr in WalReader(str(tmp_path), SEG, FIRST)) == \
        list(range(1, 8))


def test_covered_waiters_return_without_the_state_lock_and_leave_no_count(aio, tmp_path):
    """Two rounds of seven committers queued behind a held leader: the leader releases
    each waiter its flush covered with the waiter's bookkeeping done (the waiter returns
    without taking the flush state lock again), so after each round no waiter entry and
    no queued count is left (a count dropped twice or never would show), the joins count
    the six covered waiters, and each round is one flush."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    for round_no in range(2):
        ends: list[int] = []
        errors: list[BaseException] = []
        committer = _committer(w, ends, errors)
        threads = [threading.Thread(target=committer, args=(7 * round_no + i,))
                   for i in range(7)]
        before = w.stats()
        with w._flush_lock:
            for t in threads:
                t.start()
            _wait_for_waiters(w, 6)
            assert w._queued == 6
        for t in threads:
            t.join(PREPARE_WAIT_MAX_S)
            assert not t.is_alive()
        st = w.stats()
        assert not errors and len(ends) == 7
        assert w._waiters == [] and w._queued == 0
        assert st.flushes - before.flushes == 1 and st.group_joins - before.group_joins == 6
        assert st.flush_lsn >= max(ends)
    w.close()


def test_commit_delay_applies_only_with_enough_siblings(aio, tmp_path):
    """commit_delay (PostgreSQL's meaning): a leader sleeps before its flush only when at
    least commit_siblings other transactions are active; off by default. Counted in
    commit_delays; the commits are durable either way. Bad values are refused naming the
    setting and its range."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    active = [0]
    _s, e = w.insert(10, 0, 1, b"a")
    w.flush(e)
    assert w.stats().commit_delays == 0          # off by default
    w.set_commit_delay(200, 3, active_transactions=lambda: active[0])
    active[0] = 2
    _s, e = w.insert(10, 0, 2, b"b")
    w.flush(e)
    assert w.stats().commit_delays == 0          # too few siblings
    active[0] = 3
    _s, e = w.insert(10, 0, 3, b"c")
    w.flush(e)
    st = w.stats()
    assert st.commit_delays == 1 and st.flush_lsn >= e
    with pytest.raises(ValueError, match=r"commit_delay must be in 0\.\.100000"):
        w.set_commit_delay(100001)
    with pytest.raises(ValueError, match=r"commit_siblings must be in 1\.\.1000"):
        w.set_commit_delay(10, 0)
    with pytest.raises(TypeError, match="commit_delay must be an int"):
        w.set_commit_delay(1.5)
    w.close()


class _SegmentsOnDevNull(osfile.OsLayer):
    """Opens every existing WAL segment of ``wal_dir`` as /dev/null (writes succeed, the
    kernel refuses fdatasync with EINVAL) and counts the syncs asked of the OS layer."""

    def __init__(self, wal_dir: str) -> None:
        self.wal_dir = wal_dir
        self.syncs = 0

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if (os.path.dirname(path) == self.wal_dir and not path.endswith(".tmp")
                and not flags & os.O_CREAT):
            return super().open(os.devnull, os.O_RDWR, mode)
        return super().open(path, flags, mode)

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        super().fdatasync(fd)


def need_ring(flush_path: str | None) -> None:
    if flush_path == FLUSH_RING and not io_uring_available()[0]:
        pytest.skip(f"no io_uring here: {io_uring_available()[1]}")


def test_flush_path_follows_the_io_method(aio, faulty_aio, tmp_path):
    """Every real method flushes with plain system calls in the flushing thread by
    default; any other method object (the fault-injecting wrapper) through AIO handles,
    so that its hooks see every WAL I/O. A flush path that does not exist is refused,
    naming the choices."""
    assert flush_path_for(aio.method) == FLUSH_SYSCALLS
    assert flush_path_for(faulty_aio[1]) == FLUSH_AIO
    with pytest.raises(ValueError, match="flush_path must be one of syscalls, ring, aio"):
        Wal(str(tmp_path), aio, wal_segment_size=SEG, flush_path="fast")


@pytest.mark.parametrize("flush_path", [None, FLUSH_RING])
def test_a_commit_is_one_write_and_one_sync_through_the_os_layer(aio, tmp_path, flush_path):
    """Counted at the OS boundary over 20 single-record commits: on the default path each
    flush is exactly one pwritev and one fdatasync through osfile, on every method; on
    the ring path none goes through osfile (the kernel does both from one linked
    submission); either way aio.stats() counts each write and sync."""
    need_ring(flush_path)
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG, flush_path=flush_path)
    _s, e = w.insert(10, 0, 1, b"first")
    w.flush(e)                          # opens the segment: not counted below
    calls = {"pwritev": 0, "fdatasync": 0}

    class Counting(osfile.OsLayer):
        def pwritev(self, fd, buffers, offset):
            calls["pwritev"] += 1
            return super().pwritev(fd, buffers, offset)

        def fdatasync(self, fd):
            calls["fdatasync"] += 1
            super().fdatasync(fd)

    with osfile.installed(Counting()):
        for i in range(20):
            _s, e = w.insert(10, 0, i + 2, b"c" * 100)
            w.flush(e)
    st = w.stats()
    io = aio.stats().counters
    w.close()
    assert st.flushes == 21 and st.syncs == 21 and st.writes == 21
    per_commit = 0 if flush_path == FLUSH_RING else 20
    assert calls == {"pwritev": per_commit, "fdatasync": per_commit}
    # made without AIO handles, the flush's I/O still shows in aio.stats() (pg_stat_io's
    # wal rows): one write and one sync per flush
    assert io["wal/writev"]["ios"] == 21 and io["wal/fdatasync"]["ios"] == 21
    assert io["wal/writev"]["bytes"] >= 21 * 100
    assert len(list(WalReader(str(tmp_path), SEG, FIRST))) == 21


@pytest.mark.parametrize("flush_path", [None, FLUSH_RING])
def test_failed_sync_from_the_kernel_is_fatal_and_never_retried(aio, tmp_path, flush_path):
    """A real kernel refusal of the flush's sync (the segment opened as /dev/null: the
    write succeeds, fdatasync fails with EINVAL; on the default and the ring flush path)
    raises WalError naming the sync, not a full disk; the Wal stays failed and exactly
    one sync was attempted however often flush is called again."""
    need_ring(flush_path)
    d = str(tmp_path)
    w = Wal(d, aio, wal_segment_size=SEG, flush_path=flush_path)
    w.prepare_segments()                  # the files exist: the layer opens them as null
    layer = _SegmentsOnDevNull(d)
    with osfile.installed(layer):
        _s, e = w.insert(10, 0, 1, b"lost")
        with pytest.raises(WalError, match="crash recovery") as info:
            w.flush(e)
        assert not isinstance(info.value, DiskFullError)
        assert info.value.__cause__.errno == errno.EINVAL
        assert "could not sync WAL segment" in str(info.value.__cause__)
        for _ in range(3):
            with pytest.raises(WalError, match="unusable"):
                w.flush(e)
        assert w.failed and w.stats().syncs == 1
        assert layer.syncs == (0 if flush_path == FLUSH_RING else 1)
        w.close()


@pytest.mark.parametrize("flush_path", [None, FLUSH_RING])
def test_a_flush_across_many_segments_is_cut_between_segments(aio, tmp_path, flush_path):
    """A flush spanning more segments than one io_uring chain holds (each segment's write
    and sync: FLUSH_RING_ENTRIES // 2 segments) is sent as several chains cut between
    segments on the ring path; on both paths all of it is durable and reads back in
    order, and each segment was synced once."""
    need_ring(flush_path)
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG, wal_buffers=256,  # 2 MiB of room
            flush_path=flush_path)
    nseg = FLUSH_RING_ENTRIES // 2 + 3
    end, n = 0, 0
    while end < (1 + nseg) * SEG + PAGE_HEADER_SIZE:
        n += 1
        _s, end = w.insert(10, 0, n, RECORD_PAYLOAD)
    assert w.stats().flushes == 0
    w.flush(end)
    st = w.stats()
    w.close()
    assert st.flushes == 1 and st.syncs == nseg + 1
    assert [rr.record.xid for rr in WalReader(str(tmp_path), SEG, FIRST)] == \
        list(range(1, n + 1))


def test_commits_arriving_during_a_write_share_the_next_flush(aio, tmp_path):
    """Six committers arrive while the first leader's write is held inside the kernel
    boundary (an OS layer that blocks that pwritev until released): they queue, and once
    the first flush ends exactly one of them leads a second flush that carries all six —
    two flushes in all, five group joins — and every committer returns with its record
    durable (read back)."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    w.prepare_segments()
    _s, e = w.insert(10, 0, 100, b"open")
    w.flush(e)                        # the segment is open: only commit writes below
    entered, release = threading.Event(), threading.Event()

    class HoldFirstWrite(osfile.OsLayer):
        held = False

        def pwritev(self, fd, buffers, offset):
            if not HoldFirstWrite.held:
                HoldFirstWrite.held = True
                entered.set()
                assert release.wait(PREPARE_WAIT_MAX_S)
            return super().pwritev(fd, buffers, offset)

    errors: list[BaseException] = []
    ends: list[int] = []
    committer = _committer(w, ends, errors)
    before = w.stats()
    with osfile.installed(HoldFirstWrite()):
        first = threading.Thread(target=committer, args=(0,))
        first.start()
        assert entered.wait(PREPARE_WAIT_MAX_S)
        others = [threading.Thread(target=committer, args=(i,)) for i in range(1, 7)]
        for t in others:
            t.start()
        _wait_for_waiters(w, 6)
        release.set()
        for t in [first, *others]:
            t.join(PREPARE_WAIT_MAX_S)
            assert not t.is_alive()
    st = w.stats()
    w.close()
    assert not errors and len(ends) == 7 and st.flush_lsn >= max(ends)
    assert st.flushes - before.flushes == 2 and st.group_joins - before.group_joins == 5
    assert sorted(rr.record.xid for rr in WalReader(str(tmp_path), SEG, FIRST)) == \
        list(range(1, 8)) + [100]
