"""The buffers' content locks (storage.bufmgr.ContentLock): shared/exclusive exclusion
with real threads, including locks that share one striped mutex."""

import threading
import time

from slonik.storage.bufmgr import ContentLock

WAIT_S = 5.0  # bound on any wait in these tests (they finish in milliseconds)


def _blocked(target) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        target()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


def test_exclusive_waits_for_every_shared_holder_and_wakes_on_the_last_release():
    """Two shared holders; an exclusive request stays blocked after the first release
    (checked after giving it time to run) and gets the lock after the second."""
    lock = ContentLock()
    lock.acquire_shared()
    lock.acquire_shared()
    t, done = _blocked(lock.acquire_exclusive)
    lock.release_shared()
    time.sleep(0.05)
    assert not done.is_set()
    lock.release_shared()
    assert done.wait(WAIT_S)
    t.join(WAIT_S)
    assert lock.held_exclusive and not lock.try_exclusive()
    lock.release_exclusive()
    assert not lock.held


def test_shared_waits_for_exclusive_and_all_waiters_wake():
    """Three threads asking for shared while one holds exclusive all get it once the
    exclusive hold is released (notify reaches every waiter)."""
    lock = ContentLock()
    lock.acquire_exclusive()
    waiters = [_blocked(lock.acquire_shared) for _ in range(3)]
    time.sleep(0.05)
    assert not any(done.is_set() for _, done in waiters)
    lock.release_exclusive()
    for t, done in waiters:
        assert done.wait(WAIT_S)
        t.join(WAIT_S)
    assert lock.held and not lock.held_exclusive
    for _ in waiters:
        lock.release_shared()
    assert not lock.held


def test_locks_sharing_one_mutex_are_independent():
    """Locks striped over one mutex: holding one exclusively neither blocks the other nor
    is released by it; a waiter on the first wakes only when the first is released."""
    mutex = threading.Lock()
    a, b = ContentLock(mutex), ContentLock(mutex)
    a.acquire_exclusive()
    t, done = _blocked(a.acquire_shared)
    b.acquire_exclusive()   # not blocked by a
    b.release_exclusive()
    time.sleep(0.05)
    assert not done.is_set() and a.held_exclusive
    a.release_exclusive()
    assert done.wait(WAIT_S)
    t.join(WAIT_S)
    assert a.held and not b.held
