"""The AIO core against real files, for every io method."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest
import slonik.aio.callbacks as cb
from slonik.aio.core import Aio, make_method
from slonik.aio.errors import DiskFullError, IOFailure, IoMethodUnavailable
from slonik.aio.handle import AioResult, AioReturn, HandleState, IoOp, ResultStatus
from slonik.aio.ids import CALLBACK_NAMES, TARGETS, CallbackId, TargetId
from slonik.aio.memory import aligned_buffer

from tests.support.fileio import start_read, start_write
from tests.support.method_faulty import FaultRule

BLOCK = 8192
NBLOCKS = 256


def pattern(block: int, version: int = 0) -> bytes:
    """A block's expected bytes: its number and a version, repeated."""
    return (block.to_bytes(4, "little") + version.to_bytes(4, "little")) * (BLOCK // 8)


@pytest.fixture
def datafile(tmp_path):
    path = str(tmp_path / "data")
    with open(path, "wb") as f:
        for b in range(NBLOCKS):
            f.write(pattern(b))
    fd = os.open(path, os.O_RDWR)
    yield path, fd
    os.close(fd)


def test_random_reads_and_writes_from_threads(aio, datafile):
    """10,000 random vectored reads and writes from 4 threads, each thread owning a disjoint
    set of blocks so the expected content is known; every read is checked against the
    pattern of the last version written, and the file is checked at the end."""
    path, fd = datafile
    nthreads, per_thread = 4, 2500
    errors: list[BaseException] = []
    final_versions: dict[int, int] = {}

    def run(tid: int) -> None:
        try:
            rng = random.Random(tid)
            mine = [b for b in range(NBLOCKS) if b % nthreads == tid]
            version = dict.fromkeys(mine, 0)
            mem = aligned_buffer(8 * BLOCK)
            mv = memoryview(mem)
            inflight = []
            for _ in range(per_thread):
                block = rng.choice(mine)
                writing = rng.random() < 0.4
                # Concurrent I/Os to one block are unordered: drain reads before a write.
                if len(inflight) >= 7 or (writing and any(it[2] == block for it in inflight)):
                    for item in inflight:
                        aio.wait(item[0])
                        item[1].raise_if_failed()
                        if item[2] is not None:
                            assert bytes(item[3]) == pattern(item[2], item[4]), f"block {item[2]}"
                    inflight = []
                if writing:
                    slot = mv[7 * BLOCK:]  # writes use the last slot; reads the first seven
                    version[block] += 1
                    slot[:] = pattern(block, version[block])
                    ref, ret = start_write(aio, path, fd, [slot], block * BLOCK)
                    # a write must finish before the slot or block is reused
                    aio.wait(ref)
                    ret.raise_if_failed()
                else:
                    slot = mv[len(inflight) * BLOCK:(len(inflight) + 1) * BLOCK]
                    ref, ret = start_read(aio, path, fd, [slot], block * BLOCK)
                    inflight.append((ref, ret, block, slot, version[block]))
            for item in inflight:
                aio.wait(item[0])
                item[1].raise_if_failed()
                assert bytes(item[3]) == pattern(item[2], item[4])
            final_versions.update(version)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    with open(path, "rb") as f:
        data = f.read()
    for block, version in final_versions.items():
        assert data[block * BLOCK:(block + 1) * BLOCK] == pattern(block, version)
    stats = aio.stats()
    assert stats.total("readv") + stats.total("writev") == nthreads * per_thread


def test_vectored_read_fills_every_buffer(aio, datafile):
    """One readv of 16 blocks into 16 separate buffers lands each block in its buffer."""
    path, fd = datafile
    mem = aligned_buffer(16 * BLOCK)
    mv = memoryview(mem)
    bufs = [mv[i * BLOCK:(i + 1) * BLOCK] for i in range(16)]
    ref, ret = start_read(aio, path, fd, bufs[::-1], 32 * BLOCK)
    aio.wait(ref)
    assert ret.raise_if_failed().result == 16 * BLOCK
    for i, b in enumerate(bufs[::-1]):
        assert bytes(b) == pattern(32 + i)


def test_pool_exhaustion_in_batch_mode(io_method, datafile):
    """With io_max_concurrency=2, staging 50 reads inside one batch must not deadlock:
    acquire submits what is staged and waits for the oldest I/O; all reads succeed."""
    path, fd = datafile
    with Aio(io_method, io_max_concurrency=2) as aio:
        mem = aligned_buffer(50 * BLOCK)
        mv = memoryview(mem)
        pending = []
        with aio.batch():
            for i in range(50):
                pending.append(start_read(aio, path, fd, [mv[i * BLOCK:(i + 1) * BLOCK]],
                                          (i * 3 % NBLOCKS) * BLOCK))
        for ref, ret in pending:
            aio.wait(ref)
            ret.raise_if_failed()
        for i in range(50):
            assert bytes(mv[i * BLOCK:(i + 1) * BLOCK]) == pattern(i * 3 % NBLOCKS)


def test_batch_defers_submission(aio, io_method, datafile):
    """Inside a batch, I/O stays STAGED (listed by inflight()) until the batch exits; the
    sync method executes at staging time instead."""
    path, fd = datafile
    mem = aligned_buffer(4 * BLOCK)
    mv = memoryview(mem)
    with aio.batch():
        refs = [start_read(aio, path, fd, [mv[i * BLOCK:(i + 1) * BLOCK]], i * BLOCK)
                for i in range(4)]
        states = {row.state for row in aio.inflight()}
        if io_method == "sync":
            assert HandleState.STAGED not in states
        else:
            assert states == {HandleState.STAGED}
    for ref, ret in refs:
        aio.wait(ref)
        ret.raise_if_failed()
    assert aio.inflight() == []


def test_wait_on_recycled_reference(aio, datafile):
    """A wait reference whose handle was recycled (generation bumped) answers done at once,
    and never confuses a newer I/O on the same handle with the old one."""
    path, fd = datafile
    mem = aligned_buffer(BLOCK)
    ref, ret = start_read(aio, path, fd, [memoryview(mem)], 0)
    aio.wait(ref)
    assert aio.done(ref)
    for i in range(40):  # cycle through every handle of the pool, several times
        r2, _ = start_read(aio, path, fd, [memoryview(mem)], i * BLOCK)
        aio.wait(r2)
    assert aio.done(ref)
    aio.wait(ref)  # returns at once


def test_cross_thread_completion(aio, datafile):
    """Thread A issues reads and never waits; thread B waits on A's wait references and
    sees them complete (on io_uring, B reaps A's ring under its completion lock)."""
    path, fd = datafile
    mem = aligned_buffer(8 * BLOCK)
    mv = memoryview(mem)
    refs = []
    issued = threading.Event()
    release = threading.Event()

    def issuer() -> None:
        for i in range(8):
            refs.append(start_read(aio, path, fd, [mv[i * BLOCK:(i + 1) * BLOCK]], i * BLOCK)[0])
        issued.set()
        release.wait(30)

    a = threading.Thread(target=issuer)
    a.start()
    assert issued.wait(30)
    completed = []

    def waiter() -> None:
        for ref in refs:
            aio.wait(ref)
            completed.append(aio.done(ref))

    b = threading.Thread(target=waiter)
    b.start()
    b.join(30)
    release.set()
    a.join(30)
    assert completed == [True] * 8
    for i in range(8):
        assert bytes(mv[i * BLOCK:(i + 1) * BLOCK]) == pattern(i)


@pytest.mark.parametrize("cut", [0, 1, 511, 4096, BLOCK, BLOCK + 17, 3 * BLOCK - 1])
def test_short_read_surfaces(faulty_aio, datafile, cut):
    """A read cut short at any byte boundary is PARTIAL with the bytes done; reporting it
    raises IOFailure naming the file and the counts; the unread tail is not passed off
    as data (it was zeroed by the injector)."""
    aio, method = faulty_aio
    path, fd = datafile
    method.add(FaultRule("short", op=IoOp.READV, short=cut))
    mem = aligned_buffer(4 * BLOCK)
    mv = memoryview(mem)
    ref, ret = start_read(aio, path, fd, [mv[i * BLOCK:(i + 1) * BLOCK] for i in range(4)], 0)
    aio.wait(ref)
    assert ret.result.status == ResultStatus.PARTIAL
    assert ret.result.result == cut
    with pytest.raises(IOFailure, match=rf"read only {cut} of {4 * BLOCK} bytes") as info:
        ret.raise_if_failed()
    assert path in str(info.value)
    assert bytes(mv[cut:]) == bytes(4 * BLOCK - cut)


@pytest.mark.parametrize("err,exc_type", [(errno.EIO, IOFailure), (errno.ENOSPC, DiskFullError),
                                          (errno.EROFS, IOFailure)])
def test_injected_errno_surfaces(faulty_aio, datafile, err, exc_type):
    """An injected errno becomes an ERROR result, and the issuer's exception keeps the errno
    and names the target; the next I/O (rule spent) succeeds."""
    aio, method = faulty_aio
    path, fd = datafile
    method.add(FaultRule("err", errno=err))
    mem = aligned_buffer(BLOCK)
    ref, ret = start_write(aio, path, fd, [memoryview(mem)], 0)
    aio.wait(ref)
    assert ret.result.status == ResultStatus.ERROR and ret.result.error_data == err
    with pytest.raises(exc_type) as info:
        ret.raise_if_failed()
    assert info.value.errno == err
    assert path in str(info.value)
    ref, ret = start_read(aio, path, fd, [memoryview(mem)], BLOCK)
    aio.wait(ref)
    ret.raise_if_failed()
    assert bytes(mem[:BLOCK]) == pattern(1)


def test_short_write_is_disk_full(faulty_aio, datafile):
    """A write that transfers fewer bytes than asked, without an error, is reported as a
    full disk (DESIGN §7)."""
    aio, method = faulty_aio
    path, fd = datafile
    method.add(FaultRule("short write", op=IoOp.WRITEV, short=100))
    mem = aligned_buffer(BLOCK)
    ref, ret = start_write(aio, path, fd, [memoryview(mem)], 0)
    aio.wait(ref)
    with pytest.raises(DiskFullError, match="wrote only 100 of 8192 bytes"):
        ret.raise_if_failed()


def test_delayed_reordered_completions_and_shutdown(faulty_aio, datafile):
    """Completions delayed by different amounts arrive out of order; waiting on each still
    returns the right data, and shutdown with I/O still in flight waits for all of it."""
    aio, method = faulty_aio
    path, fd = datafile
    method.add(FaultRule("slow first", op=IoOp.READV, delay=0.2, times=1))
    method.add(FaultRule("slow later", op=IoOp.READV, delay=0.05, skip=1, times=3))
    mem = aligned_buffer(6 * BLOCK)
    mv = memoryview(mem)
    with aio.batch():
        pending = [start_read(aio, path, fd, [mv[i * BLOCK:(i + 1) * BLOCK]], (10 + i) * BLOCK)
                   for i in range(6)]
    aio.shutdown()  # must wait for the delayed completions
    for ref, _ in pending:
        assert aio.done(ref)
    for i in range(6):
        assert bytes(mv[i * BLOCK:(i + 1) * BLOCK]) == pattern(10 + i)


def test_callbacks_run_in_order_and_phases(aio, io_method, datafile):
    """Callbacks run last-added first for stage and both completion phases; shared
    completion runs in the completing thread (a worker under the worker method), local
    completion in the issuer; each sees the previous callback's result."""
    path, fd = datafile
    log: list[tuple[str, str, str]] = []

    class Logged(cb.IoCallbacks):
        def __init__(self, name: str, callback_id: CallbackId) -> None:
            self.name = name
            self.callback_id = callback_id

        def stage(self, h):
            log.append(("stage", self.name, threading.current_thread().name))

        def complete_shared(self, h, prior):
            log.append(("shared", self.name, threading.current_thread().name))
            return prior._replace(result=prior.result + 1)

        def complete_local(self, h, prior):
            log.append(("local", self.name, threading.current_thread().name))
            return prior

    ret = AioReturn()
    h = aio.acquire(ret)
    h.set_target(TargetId.FILE, (path, os.O_RDWR, 0))
    h.add_callback(CallbackId.TEST_1, Logged("upper", CallbackId.TEST_1))
    h.add_callback(CallbackId.TEST_2, Logged("lower", CallbackId.TEST_2))
    ref = h.wait_ref()
    h.start_readv(fd, [memoryview(aligned_buffer(BLOCK))], 0)
    aio.wait(ref)
    me = threading.current_thread().name
    assert [(p, n) for p, n, _ in log] == [("stage", "lower"), ("stage", "upper"),
                                          ("shared", "lower"), ("shared", "upper"),
                                          ("local", "lower"), ("local", "upper")]
    shared_threads = {t for p, _, t in log if p == "shared"}
    if io_method == "worker":
        assert all(t.startswith("slonik-io-worker") for t in shared_threads)
    else:
        assert shared_threads == {me}
    assert {t for p, _, t in log if p in ("stage", "local")} == {me}
    assert ret.result.result == BLOCK + 2


def test_raising_callback_is_reported_not_swallowed(aio, datafile):
    """A complete_shared callback that raises (a bug) does not kill the completing thread:
    the exception is recorded and re-raised by the issuer."""
    path, fd = datafile

    class Boom(cb.IoCallbacks):
        callback_id = CallbackId.TEST_3

        def complete_shared(self, h, prior):
            raise RuntimeError("callback bug")

    ret = AioReturn()
    h = aio.acquire(ret)
    h.set_target(TargetId.FILE, (path, os.O_RDWR, 0))
    h.add_callback(CallbackId.TEST_3, Boom())
    ref = h.wait_ref()
    h.start_readv(fd, [memoryview(aligned_buffer(BLOCK))], 0)
    aio.wait(ref)
    with pytest.raises(RuntimeError, match="callback bug"):
        ret.raise_if_failed()
    ref, ret = start_read(aio, path, fd, [memoryview(aligned_buffer(BLOCK))], 0)
    aio.wait(ref)
    assert ret.raise_if_failed().status == ResultStatus.OK


def test_api_misuse_is_refused(aio, datafile):
    """Two handles handed out at once, releasing twice, illegal state transitions and a
    bad setting each raise a clear error."""
    h = aio.acquire()
    with pytest.raises(RuntimeError, match="only one I/O handle"):
        aio.acquire()
    h.release()
    with pytest.raises(RuntimeError, match="unexpected state"):
        h.release()
    with pytest.raises(AssertionError, match="illegal AIO handle transition"):
        h._set_state(HandleState.COMPLETED_SHARED)
    with pytest.raises(ValueError, match="io_max_concurrency"):
        Aio("sync", io_max_concurrency=0)
    with pytest.raises(ValueError, match="io_method must be one of"):
        make_method("posix_aio")
    with pytest.raises(ValueError, match="io_workers"):
        make_method("worker", io_workers=33)
    with pytest.raises(ValueError, match="no AIO callback"):
        aio.acquire().add_callback(59)


def test_stats_and_inflight(aio, datafile):
    """Counters count I/Os and bytes at issue time per target and op; inflight() lists
    nothing once everything completed."""
    path, fd = datafile
    mem = aligned_buffer(2 * BLOCK)
    mv = memoryview(mem)
    for i in range(3):
        ref, ret = start_read(aio, path, fd, [mv[:BLOCK], mv[BLOCK:]], i * BLOCK)
        aio.wait(ref)
    ref, ret = start_write(aio, path, fd, [mv[:BLOCK]], 0)
    aio.wait(ref)
    stats = aio.stats()
    assert stats.counters["file/readv"]["ios"] == 3
    assert stats.counters["file/readv"]["bytes"] == 6 * BLOCK
    assert stats.counters["file/writev"]["ios"] == 1
    assert aio.inflight() == []


def test_fsync_through_aio(aio, datafile):
    """fsync and fdatasync go through the method and complete OK."""
    path, fd = datafile
    for datasync in (False, True):
        ret = AioReturn()
        h = aio.acquire(ret)
        h.set_target(TargetId.FILE, (path, os.O_RDWR, 0))
        ref = h.wait_ref()
        h.start_fsync(fd, datasync=datasync)
        aio.wait(ref)
        assert ret.raise_if_failed().status == ResultStatus.OK
    assert aio.stats().counters["file/fsync"]["ios"] == 1


def test_io_uring_refused_after_fork(datafile):
    """An io_uring Aio created in the parent refuses to run in a forked child with a clear
    error (checked in the child, reported through its exit code)."""
    from slonik.aio.method_io_uring import io_uring_available

    if not io_uring_available()[0]:
        pytest.skip("io_uring unavailable")
    path, fd = datafile
    aio = Aio("io_uring")
    start_read(aio, path, fd, [memoryview(aligned_buffer(BLOCK))], 0)
    aio.wait_all()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            start_read(aio, path, fd, [memoryview(aligned_buffer(BLOCK))], 0)
        except IoMethodUnavailable as exc:
            code = 0 if "fork" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    aio.shutdown()
    assert os.WEXITSTATUS(status) == 0


def test_result_tuple_is_small_and_typed():
    """AioResult carries status, result, errno and the reporting callback id."""
    r = AioResult(ResultStatus.PARTIAL, 3, 0, 7)
    assert r.status == ResultStatus.PARTIAL and r.result == 3 and r.callback_id == 7


def test_ids_are_one_table_and_nothing_else_is_accepted(aio, datafile):
    """Every target id has its row in ids.TARGETS and every callback id a name; there is no
    registration API left to add ids at import time; set_target/add_callback refuse an id
    outside the table, and callback data of another id, with a ValueError naming it."""
    assert set(TARGETS) == set(TargetId) and set(CALLBACK_NAMES) == set(CallbackId)
    assert not any(name.startswith("register") for name in dir(cb))
    path, _fd = datafile

    class Mine(cb.IoCallbacks):
        callback_id = CallbackId.TEST_2

    h = aio.acquire()
    try:
        with pytest.raises(ValueError, match="no AIO target with id 99"):
            h.set_target(99, (path, os.O_RDWR, 0))
        with pytest.raises(ValueError, match="TEST_1 must be an IoCallbacks"):
            h.add_callback(CallbackId.TEST_1, Mine())
        h.add_callback(CallbackId.TEST_2, Mine())
        assert h.callbacks == [(CallbackId.TEST_2, h.callbacks[0][1])]
    finally:
        h.release()
