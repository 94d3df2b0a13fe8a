"""Transactions: snapshot visibility rules, the checkpoint state codec, recovery of the
xact state, and a SIGKILLed writer whose acknowledged commits all survive while its
cut-off transactions stay invisible (every io method)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from slonik.engine.xact import (
    Snapshot,
    TransactionManager,
    decode_commit_payload,
    decode_pending_unlinks,
    decode_xact_extra,
    encode_commit_payload,
    encode_xact_extra,
)

from tests.engine.dbutil import SMALL, open_db

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _NoWal:
    failed = False

    def insert(self, *a, **k):
        return 0, 0


def test_snapshot_visibility_rules():
    """sees(x) ⇔ own, or x < xmax and not running and not aborted; a version is visible iff
    its creator is seen and its deleter (if any) is not."""
    aborted = {4}
    s = Snapshot(10, frozenset({6, 8}), aborted)
    assert s.sees(5) and not s.sees(6) and not s.sees(4) and not s.sees(10)
    s.own = 8
    assert s.sees(8)
    assert s.visible(5, 0) and not s.visible(5, 7) and s.visible(5, 6) and s.visible(5, 4)
    assert not s.visible(6, 0) and s.xmin == 6
    aborted.add(5)  # an abort after the snapshot was taken is seen at once
    assert not s.sees(5)


def test_manager_horizon_and_lifecycle():
    """The horizon is the oldest xid any registered snapshot or running transaction still
    needs; commit and abort move xids out of running."""
    m = TransactionManager(1, set(), _NoWal())
    a, b = m.assign_xid(), m.assign_xid()
    assert (a, b) == (1, 2) and m.horizon() == 1
    snap = m.snapshot()
    assert snap.running == {1, 2}
    m.finish_commit(a)
    m.abort(b)
    assert m.is_committed(a) and not m.is_committed(b) and b in m.aborted
    assert m.horizon() == 1  # the snapshot still needs xid 1's world
    m.release(snap)
    assert m.horizon() == 3
    assert m.stats().commits == 1 and m.stats().aborts == 1


def test_extra_codec_round_trip():
    aborted = {3, 4, 5, 9, 100, 101, 2**40}
    running = {7, 8}
    assert decode_xact_extra(encode_xact_extra(aborted, running)) == (aborted, running)
    assert decode_xact_extra(b"") == (set(), set())
    with pytest.raises(ValueError):
        decode_xact_extra(encode_xact_extra(aborted, running)[:-1])


def test_pending_unlinks_and_commit_payload_codecs():
    """The checkpoint state carries pending unlinks (version 2) and still reads version 1
    (no pending unlinks); a COMMIT payload round-trips its dropped relfilenumbers and a
    truncated one is refused; recovery unions both sources of pending unlinks."""
    extra = encode_xact_extra({3}, {7}, {16384, 16390})
    assert decode_xact_extra(extra) == ({3}, {7})
    assert decode_pending_unlinks(extra) == {16384, 16390}
    v1 = bytes([1]) + encode_xact_extra({3}, {7})[1:-4]  # the old layout: no unlink count
    assert decode_xact_extra(v1) == ({3}, {7}) and decode_pending_unlinks(v1) == set()
    with pytest.raises(ValueError):
        decode_pending_unlinks(extra[:-1])
    assert decode_commit_payload(encode_commit_payload([16390, 16384])) == (16384, 16390)
    assert decode_commit_payload(b"") == ()
    with pytest.raises(ValueError, match="COMMIT payload"):
        decode_commit_payload(encode_commit_payload([16384])[:-1])
    m = TransactionManager.after_recovery(_NoWal(), checkpoint_next_xid=8, extra=extra,
                                          state={"xact_dropped": {16400}})
    assert m.pending_unlinks == {16384, 16390, 16400}
    assert decode_pending_unlinks(m.checkpoint_state()[1]) == {16384, 16390, 16400}
    m.forget_pending_unlinks({16384, 16390})
    assert decode_pending_unlinks(m.checkpoint_state()[1]) == {16400}


def test_after_recovery_aborts_cut_off_xids():
    """Running at the checkpoint or wrote WAL, without a COMMIT: aborted. next_xid passes
    every xid seen."""
    extra = encode_xact_extra({2}, {5, 6})
    state = {"xact_committed": {6, 9}, "xact_aborted": {7}, "xids": {6, 7, 9, 11}}
    m = TransactionManager.after_recovery(_NoWal(), checkpoint_next_xid=8, extra=extra,
                                          state=state)
    assert m.aborted == {2, 5, 7, 11}
    assert m.next_xid == 12
    assert m.is_committed(6) and m.is_committed(9) and m.is_committed(1)


CHILD = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {root!r})
    from slonik import Database
    db = Database.open({path!r}, io_method={method!r}, **{settings!r})
    kv = db.kv("d")
    t = db.table("t")
    out_lock = threading.Lock()
    def say(*words):  # one write per line: two threads print
        with out_lock:
            sys.stdout.write(" ".join(map(str, words)) + "\\n")
            sys.stdout.flush()
    # A transaction that writes table rows eagerly and never commits.
    def never_commits():
        with db.transaction():
            for i in range(50):
                t.insert((-1, "uncommitted"))
            say("OPEN")
            time.sleep(3600)
    threading.Thread(target=never_commits, daemon=True).start()
    i = 0
    while True:
        kv[b"k%06d" % i] = b"v%d" % i
        say("ACK", i)
        if i % 7 == 0:
            with db.transaction():
                for j in range(4):
                    kv[b"tx%06d-%d" % (i, j)] = b"x"
                t.insert((i, "committed"))
            say("TX", i)
        i += 1
""")


@pytest.mark.parametrize("kill_after", [30, 120])
def test_sigkill_keeps_acknowledged_and_hides_cut_off(tmp_path, io_method, kill_after):
    """A child writes autocommit puts and transactions and reports each acknowledged one;
    it is SIGKILLed mid-stream. After reopening, every acknowledged write is there, every
    transaction is all-or-nothing, and the rows of a transaction that never committed are
    invisible."""
    path = str(tmp_path / "db")
    with open_db(path, io_method) as db:
        db.create_table("t", [("n", "int8"), ("what", "text")])
        db.kv("d")
    settings = dict(SMALL)
    script = CHILD.format(root=ROOT, path=path, method=io_method, settings=settings)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put("")],
                              daemon=True)
    reader.start()
    acked, txs, opened = [], [], False
    # Kill after kill_after acknowledgements, or sooner when fsyncs are slow on this machine.
    soft_deadline = time.monotonic() + 20
    hard_deadline = time.monotonic() + 180
    try:
        while not (opened and (len(acked) >= kill_after
                               or (acked and time.monotonic() > soft_deadline))):
            assert time.monotonic() < hard_deadline, "the child made no progress"
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if not line:
                pytest.fail(f"child ended early: {proc.stderr.read()}")
            word, *rest = line.split() or [""]
            if word == "ACK":
                acked.append(int(rest[0]))
            elif word == "TX":
                txs.append(int(rest[0]))
            elif word == "OPEN":
                opened = True
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
    # Lines already read but not yet taken are acknowledged too.
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        word, *rest = line.split() or [""]
        if word == "ACK":
            acked.append(int(rest[0]))
        elif word == "TX":
            txs.append(int(rest[0]))
    with open_db(path, io_method) as db:
        assert db.stats().recovery_crashed
        kv = db.kv("d")
        data = dict(kv.items())
        for i in acked:
            assert data.get(b"k%06d" % i) == b"v%d" % i
        rows = list(db.table("t").scan())
        committed_tx = {n for n, what in rows if what == "committed"}
        assert all(what == "committed" for _n, what in rows), "a cut-off row is visible"
        for i in txs:
            assert i in committed_tx
        for i in range(0, max(acked) + 8, 7):
            parts = [data.get(b"tx%06d-%d" % (i, j)) for j in range(4)]
            assert parts in ([None] * 4, [b"x"] * 4), f"transaction {i} is partial"
            assert (parts[0] is not None) == (i in committed_tx)
        kv.check()
        # The database works on: new writes, another reopen.
        kv[b"after"] = b"crash"
    with open_db(path, io_method) as db:
        assert db.kv("d")[b"after"] == b"crash"
        assert all(what == "committed" for _n, what in db.table("t").scan())
