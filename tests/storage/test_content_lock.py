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


def test_acquire_shared_all_takes_a_run_in_order_and_waits_for_an_exclusive_holder():
    """acquire_shared_all over three locks while the middle one is held exclusively: the
    first is taken at once (an exclusive request on it fails), the call waits (checked
    after giving it time) and completes once the exclusive hold ends; release_shared_all
    then frees all three (each can be taken exclusively)."""
    locks = [ContentLock() for _ in range(3)]
    locks[1].acquire_exclusive()
    t, done = _blocked(lambda: ContentLock.acquire_shared_all(locks))
    time.sleep(0.05)
    assert not done.is_set()
    assert locks[0].held and not locks[0].try_exclusive()
    assert not locks[2].held
    locks[1].release_exclusive()
    assert done.wait(WAIT_S)
    t.join(WAIT_S)
    assert all(lock.held and not lock.held_exclusive for lock in locks)
    ContentLock.release_shared_all(locks)
    assert not any(lock.held for lock in locks)
    assert all(lock.try_exclusive() for lock in locks)


class _InterruptedWait(ContentLock):
    """A content lock whose wait is interrupted (as by KeyboardInterrupt in a waiter)."""

    __slots__ = ()

    def _wait(self) -> None:
        raise KeyboardInterrupt


def test_acquire_shared_all_gives_back_what_it_took_when_a_wait_is_interrupted():
    """The third lock of a run is held exclusively and waiting for it is interrupted: the
    interrupt propagates and the two locks already taken shared are released again (both
    can be taken exclusively); release_shared_all wakes an exclusive waiter."""
    locks = [ContentLock(), ContentLock(), _InterruptedWait()]
    locks[2].acquire_exclusive()
    try:
        ContentLock.acquire_shared_all(locks)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupted wait did not propagate")
    assert not locks[0].held and not locks[1].held
    assert locks[0].try_exclusive() and locks[1].try_exclusive()
    locks[0].release_exclusive()
    locks[1].release_exclusive()
    ContentLock.acquire_shared_all(locks[:2])
    t, done = _blocked(locks[1].acquire_exclusive)
    time.sleep(0.05)
    assert not done.is_set()
    ContentLock.release_shared_all(locks[:2])
    assert done.wait(WAIT_S)
    t.join(WAIT_S)
    assert locks[1].held_exclusive and not locks[0].held
