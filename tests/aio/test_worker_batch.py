"""A worker's batch of queued I/Os run in one call through the OS boundary
(``osfile.run_many``, the C module ``slonik.aio._osio``), against the OS layer's own
calls one by one, its reference."""

from __future__ import annotations

import errno
import os
import threading
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.aio.errors import IOFailure
from slonik.aio.handle import IoOp
from slonik.aio.method import execute

from tests.support.fileio import start_read, start_write

pytestmark = pytest.mark.skipif(not osfile.RUN_OPS, reason="slonik.aio._osio is not built")

PAGE = 4096
FILE_PAGES = 6


def one_by_one(op: int, fd: int, buffers: list, offset: int) -> int:
    """What a worker runs for one I/O, through the OS layer: ``method.execute``."""
    return execute(SimpleNamespace(op=op, buffers=buffers, offset=offset), fd)


io_strategy = st.one_of(
    st.tuples(st.just(IoOp.WRITEV), st.integers(0, FILE_PAGES * PAGE),
              st.lists(st.integers(1, 2 * PAGE), min_size=1, max_size=3), st.integers(0, 255)),
    st.tuples(st.just(IoOp.READV), st.integers(0, (FILE_PAGES + 2) * PAGE),
              st.lists(st.integers(1, 2 * PAGE), min_size=1, max_size=3), st.just(0)),
    st.tuples(st.sampled_from([IoOp.FSYNC, IoOp.FDATASYNC]), st.just(0), st.just([]),
              st.just(0)))


def buffers_for(op: int, sizes: list[int], fill: int) -> list[bytearray]:
    return [bytearray([fill]) * n if op == IoOp.WRITEV else bytearray(n) for n in sizes]


@settings(max_examples=60, deadline=None)
@given(ios=st.lists(io_strategy, min_size=1, max_size=8))
def test_run_many_matches_the_os_layer_call_by_call(tmp_path_factory, ios):
    """Random batches of writes (of several buffers, at any offset, past the end too),
    reads (past the end: short or empty) and syncs, run by ``run_many`` on one file and
    one call at a time through the OS layer on a copy: the same results in the same
    order, the same bytes read and the same file afterwards."""
    root = tmp_path_factory.mktemp("many")
    start = bytes(range(256)) * (FILE_PAGES * PAGE // 256)
    files = []
    for name in ("many", "each"):
        (root / name).write_bytes(start)
        files.append(os.open(root / name, os.O_RDWR))
    try:
        batch = [(op, off, buffers_for(op, sizes, fill)) for op, off, sizes, fill in ios]
        each = [(op, off, buffers_for(op, sizes, fill)) for op, off, sizes, fill in ios]
        got = osfile.run_many([op for op, _o, _b in batch], [files[0]] * len(batch),
                              [b for _op, _o, b in batch], [o for _op, o, _b in batch])
        want = [one_by_one(op, files[1], b, o) for op, o, b in each]
        assert got == want
        assert [b for _op, _o, b in batch] == [b for _op, _o, b in each]
    finally:
        for fd in files:
            os.close(fd)
    assert (root / "many").read_bytes() == (root / "each").read_bytes()


def test_run_many_reports_each_failure_in_its_own_slot(tmp_path):
    """A bad descriptor fails its own I/O (-EBADF), and the I/Os after it still run."""
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    fd = os.open(path, os.O_RDWR)
    closed = os.open(path, os.O_RDONLY)
    os.close(closed)
    try:
        out = bytearray(PAGE)
        got = osfile.run_many([IoOp.WRITEV, IoOp.READV, IoOp.READV],
                              [fd, closed, fd], [[b"a" * PAGE], [bytearray(8)], [out]],
                              [0, 0, 0])
    finally:
        os.close(fd)
    assert got == [PAGE, -errno.EBADF, PAGE]
    assert out == b"a" * PAGE


def test_run_many_leaves_a_test_layer_and_oversized_gathers_to_the_caller(tmp_path):
    """``run_many`` runs nothing and answers None under an OS layer of a test (which must
    see every call), when an I/O gathers more buffers than it takes, or when a read's
    buffer is read-only (bytes): the file is unchanged by all three."""
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    fd = os.open(path, os.O_RDWR)
    try:
        with osfile.installed(type("Seeing", (osfile.OsLayer,), {})()):
            assert osfile.run_many([IoOp.WRITEV], [fd], [[b"x" * PAGE]], [0]) is None
        many = [b"y"] * (osfile.RUN_MAX_IOV + 1)
        assert osfile.run_many([IoOp.WRITEV], [fd], [many], [0]) is None
        # a read into bytes would write into an immutable object: os.preadv refuses it
        assert osfile.run_many([IoOp.WRITEV, IoOp.READV], [fd, fd],
                               [[b"z" * PAGE], [bytes(PAGE)]], [0, 0]) is None
        assert osfile.run_many([IoOp.WRITEV], [fd], [many[:-1]], [0]) == [osfile.RUN_MAX_IOV]
    finally:
        os.close(fd)
    assert path.read_bytes() == b"y" * osfile.RUN_MAX_IOV + bytes(PAGE - osfile.RUN_MAX_IOV)


def test_a_worker_runs_queued_ios_together(tmp_path):
    """Eight writes, then eight reads, each submitted together to one worker: the worker
    takes them four at a time (every one of the 16 ran in a batch) and each completes with
    its own data."""
    path = str(tmp_path / "data")
    with open(path, "wb") as f:
        f.write(bytes(8 * PAGE))
    fd = os.open(path, os.O_RDWR)
    aio = Aio("worker", io_workers=1)
    try:
        with aio.batch():
            writes = [start_write(aio, path, fd, [bytes([i + 1]) * PAGE], i * PAGE)
                      for i in range(8)]
        for ref, ret in writes:
            aio.wait(ref)
            ret.raise_if_failed()
        outs = [bytearray(PAGE) for _ in range(8)]
        with aio.batch():
            reads = [start_read(aio, path, fd, [outs[i]], i * PAGE) for i in range(8)]
        for ref, ret in reads:
            aio.wait(ref)
            ret.raise_if_failed()
        assert aio.method.batched_ios == 16
    finally:
        aio.shutdown()
        os.close(fd)
    assert outs == [bytearray([i + 1]) * PAGE for i in range(8)]


class Crash(BaseException):
    """A simulated crash of the worker thread (no OS error)."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_crash_inside_a_batch_completes_every_io_of_it(tmp_path):
    """Under a test's OS layer a worker still takes four queued reads together but runs
    them one by one through the layer; when the layer's second read raises something that
    is no OS error, the worker dies with it, and first completes that read and the two
    after it as failures: the first read has its data, no waiter sleeps forever."""
    path = str(tmp_path / "data")
    with open(path, "wb") as f:
        f.write(b"d" * 4 * PAGE)
    fd = os.open(path, os.O_RDWR)
    calls = []
    lock = threading.Lock()

    class CrashOnSecondRead(osfile.OsLayer):
        def preadv(self, fd, buffers, offset):
            with lock:
                calls.append(offset)
                if len(calls) == 2:
                    raise Crash("simulated crash")
            return super().preadv(fd, buffers, offset)

    outs = [bytearray(PAGE) for _ in range(4)]
    with osfile.installed(CrashOnSecondRead()):
        aio = Aio("worker", io_workers=1)
        try:
            with aio.batch():
                reads = [start_read(aio, path, fd, [outs[i]], i * PAGE)
                         for i in range(4)]
            # (waited for in a thread: a read left queued behind the dead worker fails
            # the test instead of hanging it)
            waiter = threading.Thread(target=lambda: [aio.wait(ref) for ref, _r in reads],
                                      daemon=True)
            waiter.start()
            waiter.join(60)
            assert not waiter.is_alive(), "a read of the batch never completed"
            for ref, _ret in reads:
                aio.wait(ref)   # (the owner's wait reclaims: each return is filled)
        finally:
            aio.method.shutdown()
            os.close(fd)
    reads[0][1].raise_if_failed()
    assert outs[0] == b"d" * PAGE
    for _ref, ret in reads[1:]:
        with pytest.raises(IOFailure):
            ret.raise_if_failed()
    assert calls == [0, PAGE]
    assert aio.method.batched_ios == 0
