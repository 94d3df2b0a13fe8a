"""The background WAL writer (wal/walwriter.py) in the engine: it bounds what asynchronous
commits lose to a SIGKILL, it is validated like every setting, and close() stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from slonik.wal.errors import WalError
from slonik.wal.walwriter import THREAD_NAME, WAL_WRITER_DELAY_RANGE_MS

from slonik import Database, DatabaseClosedError
from tests.wal.writer_child import STORE_NAME, key_of, value_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAL_WRITER_DELAY_MS = 200                   # PostgreSQL's default, the bound
RUN_AFTER_OPEN_SECONDS = 2.0                # puts before the kill: ten delays' worth
OPEN_TIMEOUT_SECONDS = 60
ACKED_AT_LEAST = 200                        # a run that wrote less proves nothing
SETTINGS = dict(wal_segment_size=1 << 20, checkpoint_timeout=86400)


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def run_async_child(path: str, io_method: str) -> tuple[list[tuple[int, float]], float]:
    """Start the async writer (tests/wal/writer_child.py), SIGKILL it after a while; return
    the acknowledged (key index, CLOCK_MONOTONIC time) pairs and the moment of the kill."""
    args = [sys.executable, "-m", "tests.wal.writer_child", path, io_method, "async", "0",
            f"wal_writer_delay={WAL_WRITER_DELAY_MS}",
            *(f"{k}={v}" for k, v in SETTINGS.items())]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    opened = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line == "OPEN\n":
                opened.set()
        opened.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert opened.wait(OPEN_TIMEOUT_SECONDS), "the writer did not open the database"
        time.sleep(RUN_AFTER_OPEN_SECONDS)
        alive = proc.poll() is None
        killed_at = time.monotonic()        # taken before the kill: conservative
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t.join(10)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert alive and proc.returncode == -signal.SIGKILL, f"the writer died by itself:\n{stderr}"
    acked = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "A" and line.endswith("\n"):
            acked.append((int(parts[1]), float(parts[2])))
    return acked, killed_at


def test_async_commits_older_than_three_delays_survive_sigkill(tmp_path, io_method):
    """A child does autocommit puts with synchronous_commit=False, printing each key with
    the CLOCK_MONOTONIC time its put returned; the parent SIGKILLs it after two seconds.
    After reopening, every key acknowledged more than 3 × wal_writer_delay before the kill
    is present with its value: the WAL writer flushed it (without it nothing but the
    catalog is durable and every key is lost)."""
    path = str(tmp_path / "db")
    acked, killed_at = run_async_child(path, io_method)
    bound = killed_at - 3 * WAL_WRITER_DELAY_MS / 1000
    old = [i for i, when in acked if when < bound]
    assert len(old) >= ACKED_AT_LEAST, f"only {len(old)} puts before the bound"
    with Database.open(path, io_method=io_method) as db:
        store = db.kv(STORE_NAME)
        lost = [i for i in old if store.get(key_of(i)) != value_of(i)]
    assert not lost, (f"{len(lost)} of {len(old)} puts acknowledged more than "
                      f"{3 * WAL_WRITER_DELAY_MS} ms before the kill were lost, first {lost[:5]}")


@pytest.mark.parametrize("value, error", [
    (0, ValueError), (WAL_WRITER_DELAY_RANGE_MS[1] + 1, ValueError), (-5, ValueError),
    (0.2, TypeError), ("200ms", TypeError), (True, TypeError), (None, TypeError),
])
def test_wal_writer_delay_is_validated(tmp_path, value, error):
    """A bad wal_writer_delay is refused at open with an error naming the setting and its
    range in ms, before anything is created on disk."""
    path = tmp_path / "db"
    lo, hi = WAL_WRITER_DELAY_RANGE_MS
    with pytest.raises(error) as ei:
        Database.open(str(path), wal_writer_delay=value)
    assert "wal_writer_delay" in str(ei.value) and f"{lo}..{hi} ms" in str(ei.value)
    assert not path.exists()


def test_close_stops_the_wal_writer_thread(tmp_path, io_method):
    """The WAL writer is a daemon thread while the database is open (threading.enumerate)
    and is gone once close() returns; asynchronously committed puts made just before
    close() are durable (close's final flush) and read back after reopening."""
    before = writer_threads()
    path = str(tmp_path / "db")
    db = Database.open(path, io_method=io_method, synchronous_commit=False,
                       wal_writer_delay=WAL_WRITER_DELAY_RANGE_MS[1], **SETTINGS)
    try:
        mine = [t for t in writer_threads() if t not in before]
        assert len(mine) == 1 and mine[0].daemon and mine[0].is_alive()
        store = db.kv(STORE_NAME)
        for i in range(50):
            store[key_of(i)] = value_of(i)
    finally:
        db.close()
    assert not mine[0].is_alive() and mine[0] not in threading.enumerate()
    db.close()                                   # twice is harmless
    with Database.open(path, io_method=io_method) as db:
        store = db.kv(STORE_NAME)
        assert all(store.get(key_of(i)) == value_of(i) for i in range(50))


def test_failed_background_flush_stops_the_database(tmp_path, io_method):
    """A real failure in the WAL writer's own flush (the next WAL segment's path is taken
    by a directory, so opening it fails with EISDIR in the writer thread; puts are
    asynchronous and the 8 MiB WAL buffers never fill, so no put flushes): the Database
    records it and the next operation raises DatabaseClosedError caused by that WalError (a
    put racing with the failure may see the WalError itself, then the next one is refused);
    the writer thread is gone, close() still releases everything, and once the directory
    is removed the database reopens (crash recovery) with what was flushed before."""
    path = str(tmp_path / "db")
    before = writer_threads()
    db = Database.open(path, io_method=io_method, synchronous_commit=False, wal_buffers=1024,
                       wal_writer_delay=10, wal_segment_size=64 * 1024, max_wal_size=1 << 30,
                       checkpoint_timeout=86400)
    try:
        mine = [t for t in writer_threads() if t not in before]
        store = db.kv(STORE_NAME)
        for i in range(20):
            store[key_of(i)] = value_of(i)
        db.checkpoint()                                   # those 20 are durable now
        wal = os.path.join(path, "wal")
        last = max(int(n, 16) for n in os.listdir(wal) if len(n) == 16)
        os.mkdir(os.path.join(wal, "%016X" % (last + 1)))   # where the WAL goes next
        deadline = time.monotonic() + 60
        i = 20
        stopped: DatabaseClosedError | None = None
        while stopped is None and time.monotonic() < deadline:   # liveness, not timing
            try:
                store[key_of(i)] = value_of(i)
            except DatabaseClosedError as exc:
                stopped = exc
            except WalError:      # the one put racing with the failure sees it directly
                pass
            i += 1
            if i % 50 == 0:
                time.sleep(0.005)
        assert stopped is not None, "the Database kept accepting puts"
        cause = stopped.__cause__
        assert isinstance(cause, WalError), repr(cause)
        assert "IsADirectoryError" in repr(cause.__cause__) or "directory" in str(cause)
        for t in mine:
            t.join(10)
            assert not t.is_alive()
        with pytest.raises(DatabaseClosedError):
            store.get(key_of(0))
    finally:
        db.close()
    os.rmdir(os.path.join(path, "wal", "%016X" % (last + 1)))
    with Database.open(path, io_method=io_method) as db:
        store = db.kv(STORE_NAME)
        assert all(store.get(key_of(i)) == value_of(i) for i in range(20))
