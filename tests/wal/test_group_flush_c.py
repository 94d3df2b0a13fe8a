"""The WAL group commit in C (``GroupFlush``, engine/wal_build.py) against its Python
reference (``Wal.flush``'s leader/waiter queue), on every io method: the same bytes on
disk, every committer durable when it returns, and a failed write or sync fatal for the
Wal, named, never retried. Real files, a real full tmpfs, real kernel refusals."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import signal
import threading
import time

import pytest
from slonik.aio import osfile
from slonik.aio.errors import DiskFullError
from slonik.engine.wal_build import C_GROUP_FLUSH_FOR, C_RECORD_WRITER_FOR
from slonik.storage import hotlib
from slonik.wal.errors import WalError
from slonik.wal.reader import WalReader
from slonik.wal.xlog import GF_FLUSHES, GF_SYNCS, Wal

from tests.wal import test_commit_path
from tests.wal.test_commit_path import (
    FIRST,
    FREE_BYTES,
    RECORD_PAYLOAD,
    SEG,
    assert_short_write_is_fatal,
    fill_leaving,
    sparse_segment,
)

pytestmark = pytest.mark.skipif(C_GROUP_FLUSH_FOR is None,
                                reason="the C helpers module is not built")
small_fs = test_commit_path.small_fs   # the fixture: a real 512 KiB tmpfs
SEEDS = 4
THREADS = 8
COMMITS_PER_THREAD = 150


def c_wal(path: str, aio, **kw) -> Wal:
    return Wal(path, aio, wal_segment_size=SEG, record_writer_for=C_RECORD_WRITER_FOR,
               group_flush_for=C_GROUP_FLUSH_FOR, **kw)


def segment_bytes(path: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.mark.parametrize("seed", range(SEEDS))
def test_c_and_python_flushes_write_the_same_segments(aio, tmp_path, seed):
    """One drawn sequence of inserts (records within a page and across pages) and flushes,
    through a Wal flushing in C and one flushing in Python, with a ring of 8 pages (it
    wraps) and 64 KiB segments (flushes cross them): the segment files are equal byte
    for byte, and so are the flush, write, sync and stamp counts. Both paths ran: the C
    path wrote flushes itself and handed the ones across segments back."""
    rng = random.Random(seed)
    ops = []
    for _ in range(400):
        ops.append(("insert", rng.choice([8, 100, 900, 3000, 9000])))
        if rng.random() < 0.3:
            ops.append(("flush", None))
    ops.append(("flush", None))
    dirs = {kind: tmp_path / kind for kind in ("c", "py")}
    stats = {}
    for kind, d in dirs.items():
        d.mkdir()
        w = Wal(str(d), aio, wal_segment_size=SEG, wal_buffers=8,
                record_writer_for=C_RECORD_WRITER_FOR,
                group_flush_for=C_GROUP_FLUSH_FOR if kind == "c" else None)
        xid = 0
        for op, size in ops:
            if op == "insert":
                xid += 1
                w.insert(10, 0, xid, bytes([xid % 251]) * size)
            else:
                w.flush()
        stats[kind] = w.stats()
        if kind == "c":
            c_counts = w._group.stats()
            py_flushes = w._flushes
        w.close()
    assert segment_bytes(str(dirs["c"])) == segment_bytes(str(dirs["py"]))
    for field in ("flush_lsn", "flushes", "writes", "syncs", "pages_stamped", "write_bytes"):
        assert getattr(stats["c"], field) == getattr(stats["py"], field), field
    assert c_counts[GF_FLUSHES] > 0 and py_flushes > 0
    assert len(list(WalReader(str(dirs["c"]), SEG, FIRST))) == xid


def test_concurrent_committers_are_durable_when_they_return(aio, tmp_path):
    """THREADS committers, each inserting and flushing its own records, with
    commit_delay making leaders wait for company: every flush returns with the WAL
    durable past its record, some commits joined another's flush, and every record reads
    back once."""
    w = c_wal(str(tmp_path), aio, wal_buffers=64)
    w.prepare_segments()
    w.set_commit_delay(300, 2, active_transactions=lambda: THREADS)
    late: list[tuple[int, int]] = []

    def committer(t: int) -> None:
        for i in range(COMMITS_PER_THREAD):
            _s, end = w.insert(10, 0, t * 100_000 + i + 1, b"c" * 120)
            w.flush(end)
            if w.flush_lsn < end:
                late.append((end, w.flush_lsn))

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(committer, range(THREADS)))   # (a committer's exception re-raised)
    st = w.stats()
    w.close()
    assert not late
    assert st.group_joins > 0 and st.commit_delays > 0
    # every request led its own flush or joined another's (the flusher thread's flushes
    # lead none), and every flush covered at least one request
    assert st.group_joins <= st.flush_requests and st.flushes <= st.flush_requests
    xids = sorted(rr.record.xid for rr in WalReader(str(tmp_path), SEG, FIRST))
    assert xids == sorted(t * 100_000 + i + 1 for t in range(THREADS)
                          for i in range(COMMITS_PER_THREAD))


FLUSHER_NAME = "slonik-walflush"
FLUSHER_ROUNDS_MAX = 20    # rounds of concurrent commits before a flusher must have started
CHILD_SECONDS_MAX = 60     # a forked child's commits end well within this, or it hangs


def flusher_threads() -> int:
    """Threads of this process named as the C group commit's flusher."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:   # (a thread that ended meanwhile)
            continue
    return names.count(FLUSHER_NAME)


def commit_concurrently(w: Wal, first_xid: int) -> None:
    """THREADS committers, COMMITS_PER_THREAD records each (xids from ``first_xid``),
    each flush checked durable when it returns (a failure is re-raised here)."""
    def committer(t: int) -> None:
        for i in range(COMMITS_PER_THREAD):
            _s, end = w.insert(10, 0, first_xid + t * COMMITS_PER_THREAD + i, b"c" * 120)
            w.flush(end)
            assert w.flush_lsn >= end, (end, w.flush_lsn)

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(committer, range(THREADS)))


def commit_until_flusher_starts(w: Wal, before: int, first_round: int = 1) -> int:
    """Rounds of ``commit_concurrently`` (xids from ``round * 100_000``) until a flusher
    thread runs beside the ``before`` there were, at most FLUSHER_ROUNDS_MAX; how many.
    (A round's flushes may each happen to cover every queued committer: then none is
    left for a flusher, and the next round tries again.)"""
    rounds = 0
    while flusher_threads() == before and rounds < FLUSHER_ROUNDS_MAX:
        commit_concurrently(w, (first_round + rounds) * 100_000)
        rounds += 1
    return rounds


def test_flusher_starts_only_for_concurrent_committers_and_ends_with_close(aio, tmp_path):
    """One committing thread leads every flush itself: no flusher thread starts. Committers
    that queue behind a flush start it (it writes the flushes that follow, while they wait),
    every one of them durable when it returns; close() ends it."""
    before = flusher_threads()
    w = c_wal(str(tmp_path), aio, wal_buffers=64)
    w.prepare_segments()
    for xid in range(1, 101):
        _s, end = w.insert(10, 0, xid, b"alone")
        w.flush(end)
        assert w.flush_lsn >= end
    assert flusher_threads() == before
    w.set_commit_delay(300, 2, active_transactions=lambda: THREADS)
    rounds = commit_until_flusher_starts(w, before)
    assert flusher_threads() == before + 1
    w.close()
    assert flusher_threads() == before
    assert len(list(WalReader(str(tmp_path), SEG, FIRST))) == \
        100 + rounds * THREADS * COMMITS_PER_THREAD


def test_forked_child_flushes_without_the_parents_flusher(aio, tmp_path):
    """A child forked after the parent's flusher started (the thread stays in the parent)
    commits from concurrent threads of its own: a flusher of its own takes over, every
    commit returns durable, none waits for the parent's thread."""
    before = flusher_threads()
    w = c_wal(str(tmp_path), aio, wal_buffers=64)
    w.prepare_segments()
    w.set_commit_delay(300, 2, active_transactions=lambda: THREADS)
    commit_until_flusher_starts(w, before)
    assert flusher_threads() == before + 1
    pid = os.fork()
    if pid == 0:   # the child: only this thread, the parent's flusher left behind
        code = 1
        try:
            commit_until_flusher_starts(w, 0, first_round=50)
            code = 0 if flusher_threads() == 1 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + CHILD_SECONDS_MAX
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not done:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done and os.waitstatus_to_exitcode(status) == 0
    w.close()


def test_full_disk_under_concurrent_committers_is_one_failure(aio, small_fs):
    """Committers flushing concurrently onto a file system that fills up (a real tmpfs, a
    segment without preallocated blocks): every one ends with WalDiskFullError (DESIGN
    §7's DiskFullError for a commit failing on a full disk), exactly one of them naming
    the failed write as its own (the flush's leader, or a waiter of the flusher's flush),
    every other the WAL unusable, caused by the same short write; none returned from a
    flush past what is durable."""
    sparse_segment(small_fs, 1)
    w = c_wal(small_fs, aio, wal_buffers=64)
    _s, end = w.insert(10, 0, 1, b"first")
    w.flush(end)                        # hands the segment's fd to the C path
    fill_leaving(small_fs, FREE_BYTES)
    errors: list[WalError] = []
    returned: list[int] = []
    lock = threading.Lock()

    def committer(t: int) -> None:
        for i in range(1000):
            try:
                _s, end = w.insert(10, 0, (t + 1) * 100_000 + i, RECORD_PAYLOAD)
                w.flush(end)
            except WalError as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                returned.append(end)

    threads = [threading.Thread(target=committer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == THREADS and w.failed
    assert all(isinstance(e, DiskFullError) for e in errors)
    own = [e for e in errors if "unusable" not in str(e)]
    assert len(own) == 1 and "wrote only" in str(own[0].__cause__)
    assert all(e.__cause__ is own[0].__cause__ for e in errors)
    assert returned and max(returned) <= w.flush_lsn
    w.close()


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_dsync"])
def test_aio_stats_count_every_c_write_and_sync_also_after_close(aio, tmp_path, direct):
    """The flushes the C group commit makes count nothing in Python (no per-flush call);
    aio.stats() reads its totals (``Aio.add_direct_source``): its wal rows show as many
    writes, bytes and syncs as the Wal's own statistics (no sync with O_DSYNC), and they
    stay counted once the Wal is closed."""
    w = c_wal(str(tmp_path), aio, io_direct=direct)
    before = aio.stats().counters
    for i in range(25):
        _s, end = w.insert(10, 0, i + 1, b"s" * 300)
        w.flush(end)
    st = w.stats()
    c = w._group.stats()
    io = aio.stats().counters
    w.close()
    after_close = aio.stats().counters
    assert c[GF_FLUSHES] >= 20   # the C path made (nearly) every flush
    prior = before.get("wal/writev", {"ios": 0, "bytes": 0})
    assert io["wal/writev"]["ios"] - prior["ios"] == st.writes >= 25
    assert io["wal/writev"]["bytes"] - prior["bytes"] == st.write_bytes
    if direct:
        assert st.syncs == 0 and "wal/fdatasync" not in io
    else:
        assert io["wal/fdatasync"]["ios"] == st.syncs >= 25
        assert io["wal/fdatasync"]["wait_ns"] > 0
    for row in ("wal/writev", "wal/fdatasync"):
        assert after_close.get(row) == io.get(row), row


def test_short_write_in_c_is_a_full_disk_and_fatal(aio, small_fs):
    """The C path's own write coming back short (a real full tmpfs under a segment without
    preallocated blocks) raises WalDiskFullError naming the short write, and the Wal
    refuses everything after it with the full disk as the cause."""
    sparse_segment(small_fs, 1)
    w = c_wal(small_fs, aio, wal_buffers=64)
    _s, end = w.insert(10, 0, 1, b"first")
    w.flush(end)                        # hands the segment's fd to the C path
    fill_leaving(small_fs, FREE_BYTES)
    while end < FIRST + 5 * FREE_BYTES // 2:
        _s, end = w.insert(10, 0, 2, b"r" * 1000)
    assert_short_write_is_fatal(w, end)
    w.close()


class _OpenSegmentsOnDevNull(osfile.OsLayer):
    """Opens existing WAL segments for writing as /dev/null and pretends their fdatasync
    succeeded: only to hand the C path an fd whose real fdatasync the kernel refuses
    (EINVAL). Read-only opens (recovery, the WAL reader) get the real segments."""

    def __init__(self, wal_dir: str) -> None:
        self.wal_dir = wal_dir

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if os.path.dirname(path) == self.wal_dir and not flags & os.O_CREAT and \
                flags & (os.O_WRONLY | os.O_RDWR):
            return super().open(os.devnull, os.O_RDWR, mode)
        return super().open(path, flags, mode)

    def fdatasync(self, fd: int) -> None:
        pass


def test_failed_sync_in_c_is_fatal_for_every_waiter_and_never_retried(aio, tmp_path):
    """A real kernel refusal of the C path's fdatasync: the leader raises WalError naming
    the sync (not a full disk); committers queued behind it raise WalError too (none
    returns as if durable); exactly one sync was attempted however often flush is called
    again."""
    d = str(tmp_path)
    w = c_wal(d, aio)
    w.prepare_segments()
    with osfile.installed(_OpenSegmentsOnDevNull(d)):
        _s, e = w.insert(10, 0, 1, b"opens")
        w.flush(e)                      # the Python leader opens the segment as /dev/null
    # the leader waits 20 ms for company: the other committers queue behind it
    w.set_commit_delay(20_000, 1, active_transactions=lambda: 4)
    ends = [w.insert(10, 0, xid, b"lost")[1] for xid in range(2, 6)]
    outcomes: list[BaseException | None] = []

    def committer(end: int) -> None:
        try:
            w.flush(end)
        except WalError as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    threads = [threading.Thread(target=committer, args=(end,)) for end in ends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 4 and all(isinstance(o, WalError) for o in outcomes)
    leader = [o for o in outcomes if "crash recovery" in str(o) and "unusable" not in str(o)]
    assert len(leader) == 1
    cause = leader[0].__cause__
    assert cause.errno == errno.EINVAL and "could not sync WAL segment" in str(cause)
    assert not isinstance(leader[0], DiskFullError)
    for _ in range(3):
        with pytest.raises(WalError, match="unusable"):
            w.flush(w.insert_lsn)
    assert w.failed and w._group.stats()[GF_SYNCS] == 1
    w.close()


def test_flush_after_close_is_refused(aio, tmp_path):
    """close() ends the C path: a later flush raises WalError naming the closed WAL."""
    w = c_wal(str(tmp_path), aio)
    _s, e = w.insert(10, 0, 1, b"x")
    w.flush(e)
    w.close()
    with pytest.raises(WalError, match="closed"):
        w.flush(e + 1)


def test_hot_helpers_are_the_same_c_with_the_gil_kept():
    """hotlib's module offers every helper it names, built from the same C source as the
    releasing module: the same answer for the same page."""
    from slonik.storage._pagecheck import ffi, lib

    hot = hotlib.hot_for(lib)
    assert hot is not lib and hotlib.hot_for(None) is None
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "_pcb", os.path.join(os.path.dirname(hotlib.__file__), "_pagecheck_build.py"))
    build = importlib.util.module_from_spec(spec)
    sys.modules["_pcb"] = build
    spec.loader.exec_module(build)
    for name in build.HOT_NAMES:
        assert hasattr(hot, name), name
    rng = random.Random(5)
    for _ in range(50):
        page = bytes(rng.randrange(256) for _ in range(8192))
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        buf = bytearray(page)
        assert hot.slk_bt_search(ffi.from_buffer(buf), key, len(key), 7, 0) == \
            lib.slk_bt_search(ffi.from_buffer(buf), key, len(key), 7, 0)
