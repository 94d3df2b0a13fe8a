"""Combined autocommit KV writes (engine/transaction.py invariant 4): while one thread
applies its write under the commit lock, the writes of other threads queue, and that
thread (the combiner) applies them too, flushes once past all of them and wakes their
threads. Each write stays a transaction of its own: its own xid and COMMIT, its own
error raised in its own thread, applied exactly once, durable when its call returns,
also when the combiner is interrupted mid-queue. Real threads and files, every io method
(the ``db`` fixture)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from slonik.aio import osfile
from slonik.engine.database import Database, DatabaseClosedError
from slonik.engine.transaction import TransactionLayer
from slonik.wal.errors import WalError

from tests.wal.test_group_flush_c import _OpenSegmentsOnDevNull

WRITERS = 7        # threads that queue behind the gated combiner
VALUE = b"v" * 100


class _Interrupt(BaseException):
    """What a KeyboardInterrupt is to the combiner: not a write's own error."""


def _gated(monkeypatch, on_apply=None):
    """Patch ``_commit_one_locked`` so the first write of key b"gate" blocks until
    ``release`` is set (its thread is then the combiner, holding the combine lock, and
    the other writers queue behind it). Returns (release, applied): ``applied`` lists
    (key, applying thread) for every write that committed; ``on_apply(key)`` runs first
    for every write, and may raise."""
    release = threading.Event()
    applied: list[tuple[bytes, int]] = []
    orig = TransactionLayer._commit_one_locked

    def commit_one_locked(self, relation, key, data):
        if key == b"gate":
            assert release.wait(30), "the test never released the combiner"
        if on_apply is not None:
            on_apply(key)
        end = orig(self, relation, key, data)
        applied.append((key, threading.get_ident()))
        return end

    monkeypatch.setattr(TransactionLayer, "_commit_one_locked", commit_one_locked)
    return release, applied


def _queue_behind_gate(db, kv, release, writes):
    """Start the gate's write, then one thread per ``writes`` entry (a callable); wait
    until all of them are queued behind the gate, release it. Returns the futures
    (the gate's first)."""
    pool = ThreadPoolExecutor(len(writes) + 1)
    gate = pool.submit(kv.__setitem__, b"gate", VALUE)
    deadline = time.monotonic() + 30
    while not db._txns._combine_lock.locked():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    futures = [gate] + [pool.submit(w) for w in writes]
    while len(db._txns._queued) < len(writes):
        assert time.monotonic() < deadline, "the writers did not queue behind the combiner"
        time.sleep(0.001)
    release.set()
    pool.shutdown(wait=True)
    return futures


def test_queued_writes_are_applied_by_the_combiner_each_its_own_transaction(
        db, monkeypatch, tmp_path, io_method):
    """Seven writers queue behind a combiner (puts, and deletes of absent keys): the
    combiner's thread applies every one of them; each put returns once durable, each
    delete raises KeyError in its own thread; every put committed as a transaction of
    its own; after a reopen every put is there."""
    release, applied = _gated(monkeypatch)
    kv = db.kv("c")
    commits_before = db._txns.xacts.commits

    def put(i):
        return lambda: kv.__setitem__(b"k%d" % i, VALUE + b"%d" % i)

    def delete(i):
        return lambda: kv.__delitem__(b"absent%d" % i)

    writes = [put(i) if i % 3 else delete(i) for i in range(WRITERS)]
    futures = _queue_behind_gate(db, kv, release, writes)
    gate_thread = applied[0][1]
    assert applied[0][0] == b"gate"
    for i, f in enumerate(futures[1:]):
        if i % 3:
            assert f.result() is None
        else:
            with pytest.raises(KeyError):
                f.result()
    puts = [b"k%d" % i for i in range(WRITERS) if i % 3]
    assert sorted(k for k, _t in applied) == sorted([b"gate", *puts])
    assert all(t == gate_thread for _k, t in applied), "a queued write was not combined"
    assert db._txns.xacts.commits - commits_before == 1 + len(puts)  # one COMMIT each
    assert db._wal.flush_lsn >= db._wal.insert_lsn   # every commit durable on return
    db.close()
    with Database.open(str(tmp_path / "db"), io_method=io_method) as again:
        kv2 = again.kv("c")
        assert kv2[b"gate"] == VALUE
        for i in range(WRITERS):
            assert kv2.get(b"k%d" % i) == (VALUE + b"%d" % i if i % 3 else None)


def test_an_interrupted_combiner_hands_the_queue_back(db, monkeypatch):
    """The combiner is interrupted (a BaseException, as KeyboardInterrupt) while applying
    the second queued write: the interrupt reaches the combiner's thread only; the
    interrupted write and every write still queued go back to their threads, which
    apply them themselves; every write is applied exactly once and reads back."""
    fired = []

    def on_apply(key):
        if key == b"k1" and not fired:
            fired.append(threading.get_ident())
            raise _Interrupt

    release, applied = _gated(monkeypatch, on_apply)
    kv = db.kv("c")
    order = []

    def put(i):
        def w():
            kv[b"k%d" % i] = VALUE
            order.append(i)
        return w

    futures = _queue_behind_gate(db, kv, release, [put(i) for i in range(WRITERS)])
    with pytest.raises(_Interrupt):
        futures[0].result()
    for f in futures[1:]:
        assert f.result() is None
    assert fired and fired[0] == applied[0][1]   # it fired in the combiner's thread
    keys = [k for k, _t in applied]
    assert sorted(keys) == sorted([b"gate", *(b"k%d" % i for i in range(WRITERS))])
    assert len(set(keys)) == len(keys), "a write was applied twice"
    # The writes the combiner did not reach were applied by other threads.
    assert any(t != applied[0][1] for _k, t in applied)
    assert sorted(order) == list(range(WRITERS))
    assert kv[b"gate"] == VALUE and all(kv[b"k%d" % i] == VALUE for i in range(WRITERS))


def test_many_threads_of_autocommit_puts_and_deletes(db):
    """Eight threads, each 200 puts of its own keys and every tenth write a delete of an
    absent key: each thread sees exactly its own KeyErrors; every put reads back."""
    kv = db.kv("c")

    def worker(t):
        errors = 0
        for i in range(200):
            if i % 10 == 9:
                try:
                    del kv[b"none:%d:%d" % (t, i)]
                except KeyError:
                    errors += 1
            else:
                kv[b"t%d:%04d" % (t, i)] = b"%d" % i
        return errors

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(worker, range(8))) == [20] * 8
    for t in range(8):
        for i in range(200):
            want = None if i % 10 == 9 else b"%d" % i
            assert kv.get(b"t%d:%04d" % (t, i)) == want



def test_a_failed_combined_flush_fails_every_queued_write(tmp_path, io_method, monkeypatch):
    """The combiner's one flush fails for real (the WAL segment's fd is /dev/null, whose
    fdatasync the kernel refuses with EINVAL): the combiner and all seven writers queued
    behind it raise WalError (none returns as if durable, none hangs), and the database
    then refuses writes."""
    path = str(tmp_path / "db")
    with Database.open(path, io_method=io_method) as first:
        first.kv("c")
    # Opened with the WAL segments on /dev/null; one write under the layer opens the
    # segment (its fdatasync pretended), then the real kernel answers.
    with osfile.installed(_OpenSegmentsOnDevNull(os.path.join(path, "wal"))):
        db = Database.open(path, io_method=io_method)
        kv = db.kv("c")
        kv[b"opens"] = VALUE
    try:
        release, applied = _gated(monkeypatch)
        writes = [lambda i=i: kv.__setitem__(b"k%d" % i, VALUE) for i in range(WRITERS)]
        futures = _queue_behind_gate(db, kv, release, writes)
        for f in futures:
            with pytest.raises(WalError):
                f.result()
        assert len(applied) == 1 + WRITERS   # all applied, none made durable
        with pytest.raises(DatabaseClosedError):
            kv[b"after"] = VALUE
    finally:
        db.close()
