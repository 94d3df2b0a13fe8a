"""The WAL writer thread (wal/walwriter.py) on a real Wal, on every io method: it flushes
what was inserted, stops with a final flush, and a failed flush is fatal, reported once and
never retried. Waits are liveness bounds (generous deadlines), never timing assertions."""

from __future__ import annotations

import errno
import threading
import time

import pytest
from slonik.aio.handle import IoOp
from slonik.wal.errors import WalError
from slonik.wal.walwriter import (
    LEGAL_TRANSITIONS,
    THREAD_NAME,
    WalWriter,
    WalWriterState,
    check_wal_writer_delay,
)
from slonik.wal.xlog import Wal

from tests.support.method_faulty import FaultRule
from tests.wal.test_xlog import SEG, read_all

DEADLINE_SECONDS = 60      # a writer that has not flushed by then is stuck, not slow
DELAY_MS = 10


def wait_for(pred, what: str) -> None:
    end = time.monotonic() + DEADLINE_SECONDS
    while not pred():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.005)


def test_flushes_what_was_inserted_without_being_asked(aio, tmp_path):
    """Records inserted and never flushed by their inserter become durable by themselves:
    the writer's flush position reaches the insert position, and the records read back."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    ww = WalWriter(w, wal_writer_delay_ms=DELAY_MS)
    ww.start()
    try:
        for round_no in range(3):
            for i in range(20):
                w.insert(10, 0, 100 * round_no + i + 1, b"a" * 300)
            target = w.insert_lsn
            wait_for(lambda t=target: w.flush_lsn >= t - 8, "the background flush")
        st = ww.stats()
        assert st.flushes >= 3 and st.wakeups >= st.flushes and st.state == "running"
        assert ww.thread is not None and ww.thread.daemon and ww.thread.name == THREAD_NAME
    finally:
        ww.stop()
        w.close()
    got, _r = read_all(str(tmp_path))
    assert len(got) == 60


def test_stop_joins_and_flushes_the_rest(aio, tmp_path):
    """stop() wakes the thread even with a long delay, joins it and flushes what was
    inserted before it; stop() twice is harmless; a writer never started just stops."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    ww = WalWriter(w, wal_writer_delay_ms=10000)
    ww.start()
    _s, e = w.insert(10, 0, 1, b"last words")
    ww.stop()
    assert w.flush_lsn >= e and ww.state is WalWriterState.STOPPED
    assert not ww.thread.is_alive()
    ww.stop()
    idle = WalWriter(w)
    idle.stop()
    assert idle.state is WalWriterState.STOPPED and idle.thread is None
    w.close()


def test_failed_flush_is_fatal_reported_once_never_retried(faulty_aio, tmp_path):
    """An EIO on the WAL's fdatasync in the writer thread: the Wal becomes unusable, the
    writer records the error, calls on_fatal exactly once with it and ends FAILED; the sync
    is attempted exactly once however many delays pass; stop() then returns quietly (the
    failure was reported) and does not try again."""
    aio, method = faulty_aio
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    rule = method.add(FaultRule("syncfail", op=IoOp.FDATASYNC, errno=errno.EIO, times=None))
    reported: list[BaseException] = []
    ww = WalWriter(w, wal_writer_delay_ms=DELAY_MS, on_fatal=reported.append)
    ww.start()
    w.insert(10, 0, 1, b"doomed")
    wait_for(lambda: ww.state is WalWriterState.FAILED, "the writer to fail")
    ww.thread.join(DEADLINE_SECONDS)
    assert not ww.thread.is_alive()
    assert len(reported) == 1 and reported[0] is ww.error and isinstance(ww.error, WalError)
    assert w.failed and rule.fired == 1
    with pytest.raises(WalError, match="unusable"):
        w.insert(10, 0, 2, b"after")
    ww.stop()
    assert rule.fired == 1 and ww.state is WalWriterState.FAILED
    w.close()


def test_final_flush_failure_is_raised_by_stop(faulty_aio, tmp_path):
    """A failure of stop()'s own final flush is raised to the caller (close), not dropped."""
    aio, method = faulty_aio
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    ww = WalWriter(w, wal_writer_delay_ms=10000)
    ww.start()
    method.add(FaultRule("eio", op=IoOp.WRITEV, match="WAL segment", errno=errno.EIO))
    w.insert(10, 0, 1, b"x")
    with pytest.raises(WalError, match="crash recovery"):
        ww.stop()
    assert ww.state is WalWriterState.FAILED and w.failed
    w.close()


def test_state_table_and_delay_bounds():
    """Every state is in the transition table, the end states lead nowhere, and the delay
    is checked with errors naming the setting and its range."""
    assert set(LEGAL_TRANSITIONS) == set(WalWriterState)
    assert not LEGAL_TRANSITIONS[WalWriterState.STOPPED]
    assert not LEGAL_TRANSITIONS[WalWriterState.FAILED]
    assert check_wal_writer_delay(200) == 200
    for bad, err in ((0, ValueError), (10001, ValueError), (1.5, TypeError), (False, TypeError)):
        with pytest.raises(err, match=r"wal_writer_delay .*1\.\.10000 ms"):
            check_wal_writer_delay(bad)


def test_concurrent_inserters_and_the_writer(aio, tmp_path):
    """Eight threads insert while the writer flushes under them: every record reads back
    in LSN order and the WAL ends where the last insert did."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG, wal_buffers=16)
    ww = WalWriter(w, wal_writer_delay_ms=1)
    ww.start()

    def worker(k: int) -> None:
        for i in range(200):
            w.insert(10, 0, 1000 * k + i, bytes([k]) * (1 + (i * 53) % 700))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ww.stop()
    end = w.insert_lsn
    w.close()
    got, r = read_all(str(tmp_path))
    assert len(got) == 1600 and [rr.lsn for rr in got] == sorted(rr.lsn for rr in got)
    assert r.end_lsn <= end and end - r.end_lsn < 8 + 32
