"""The content-lock words in C (``slk_cl_*``, GIL kept) against their Python reference
(``LockWords.py_*``): the same answers, words and change counters for any sequence of
operations, refusals included; and real threads waiting on locks of either kind."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.storage import bufmgr as bufmgr_module
from slonik.storage.bufmgr import CL_EXCL, ContentLock, LockWords

N = 6
WAIT_S = 5.0

needs_c = pytest.mark.skipif(
    bufmgr_module._lib is None or bufmgr_module.hot_for(bufmgr_module._lib) is bufmgr_module._lib,
    reason="the GIL-keeping C build (storage._pagehot) is not built")

_OPS = ("try_shared", "try_exclusive", "release_shared", "release_exclusive",
        "try_exclusive_many", "release_exclusive_many", "waiter_in", "waiter_out")


def _pair():
    ffi = bufmgr_module._ffi
    seq_c, seq_py = ffi.new("uint32_t[]", N), ffi.new("uint32_t[]", N)
    c = LockWords(N, seq_c)
    py = LockWords(N, seq_py, use_c=False)
    assert c.c is not None and py.c is None
    return c, py, seq_c, seq_py


def _apply(words: LockWords, op: str, ids: list[int]):
    """One operation's outcome: its result, or the type of what it raised."""
    try:
        if op == "waiter_in":
            words.waiters[ids[0]] += 1
            return None
        if op == "waiter_out":
            if words.waiters[ids[0]]:
                words.waiters[ids[0]] -= 1
            return None
        if op.endswith("_many"):   # (a repeated id in an exclusive run is refused)
            return getattr(words, op)(ids)
        return getattr(words, op)(ids[0])
    except (AssertionError, IndexError) as exc:
        return type(exc)


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_OPS),
                          st.lists(st.integers(0, N), min_size=1, max_size=5)),
                max_size=60))
def test_c_words_match_the_python_reference(steps):
    """Every operation, on ids that include one beyond the words and repeated ones
    (an exclusive run refuses a repeat: nothing changed): both give the same result, and
    the words, waiter counts and change counters stay equal after each step."""
    c, py, seq_c, seq_py = _pair()
    for op, ids in steps:
        if not op.endswith("_many") and ids[0] >= N:
            continue   # (a single operation's id is the pool's own buffer id: in range)
        assert _apply(c, op, ids) == _apply(py, op, ids), (op, ids)
        assert list(c.words) == list(py.words), (op, ids)
        assert list(c.waiters) == list(py.waiters)
        assert list(seq_c) == list(seq_py), (op, ids)


@needs_c
def test_exclusive_holds_move_the_counter_and_refusals_change_nothing():
    """An exclusive hold makes the counter odd and its release even again; a run with one
    lock held shared by someone takes the others, reports that one busy and leaves its
    counter alone; releasing a run with one lock not held exclusively releases none."""
    c, _py, seq, _ = _pair()
    assert c.try_exclusive(0) == 1 and seq[0] == 1 and c.words[0] == CL_EXCL
    assert c.try_shared(0) == 0 and c.try_exclusive(0) == 0 and seq[0] == 1
    assert c.release_exclusive(0) == 0 and seq[0] == 2 and c.words[0] == 0
    assert c.release_exclusive(0) == -1 and seq[0] == 2
    assert c.try_shared(2) == 1
    assert c.try_exclusive_many([1, 2, 3]) == [2]
    assert [seq[i] for i in (1, 2, 3)] == [1, 0, 1]
    with pytest.raises(AssertionError, match="content lock 2 released exclusive"):
        c.release_exclusive_many([1, 2, 3])
    assert c.words[1] == CL_EXCL and c.words[3] == CL_EXCL and seq[1] == 1
    with pytest.raises(AssertionError, match="repeated"):
        c.release_exclusive_many([1, 3, 1])   # (its counter would move twice)
    assert c.words[1] == c.words[3] == CL_EXCL and seq[1] == 1 and seq[3] == 1
    with pytest.raises(AssertionError, match="repeated"):
        c.try_exclusive_many([4, 5, 4])       # (the second would wait for the first)
    assert c.words[4] == c.words[5] == 0 and seq[4] == seq[5] == 0
    c.waiters[3] = 1
    assert c.release_exclusive_many([1, 3]) == [3]
    assert seq[1] == 2 and seq[3] == 2 and c.words[1] == c.words[3] == 0
    assert c.release_shared(2) == 0 and c.release_shared(2) == -1


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "python"])
def test_waiters_wake_on_either_kind_of_words(use_c):
    """Real threads: an exclusive waiter wakes when the last shared holder goes, and two
    shared waiters wake when the exclusive hold ends, whichever implementation holds the
    words (the C one needs the GIL-keeping build)."""
    if use_c and (bufmgr_module._lib is None or
                  bufmgr_module.hot_for(bufmgr_module._lib) is bufmgr_module._lib):
        pytest.skip("the GIL-keeping C build (storage._pagehot) is not built")
    words = LockWords(2, use_c=use_c)
    mutex = threading.Lock()
    a, b = ContentLock(mutex, words, 0), ContentLock(mutex, words, 1)
    a.acquire_shared()
    got = threading.Event()
    t = threading.Thread(target=lambda: (a.acquire_exclusive(), got.set()), daemon=True)
    t.start()
    deadline = time.monotonic() + WAIT_S
    while not a._waiters:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    b.acquire_exclusive()   # another word under the same mutex: not blocked
    b.release_exclusive()
    assert not got.is_set()
    a.release_shared()
    assert got.wait(WAIT_S)
    t.join(WAIT_S)
    assert a.held_exclusive and a._waiters == 0
    done = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=lambda e=e: (a.acquire_shared(), e.set()), daemon=True)
               for e in done]
    for th in threads:
        th.start()
    while a._waiters < 2:
        assert time.monotonic() < deadline + WAIT_S
        time.sleep(0.001)
    a.release_exclusive()
    assert all(e.wait(WAIT_S) for e in done)
    assert words.words[0] == 2 and not a.held_exclusive


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "python"])
def test_threads_racing_on_few_locks_never_share_an_exclusive_hold(use_c):
    """Six threads take and give back three locks (shared, exclusive, and runs of two
    taken exclusively all or nothing) as fast as they can for a bounded time, each hold
    checked against a count of
    the holders kept under a separate mutex: an exclusive holder is alone, a shared
    holder sees no exclusive one; every wait ends (the joins are bounded) and the words
    end free with nobody counted waiting."""
    if use_c and (bufmgr_module._lib is None or
                  bufmgr_module.hot_for(bufmgr_module._lib) is bufmgr_module._lib):
        pytest.skip("the GIL-keeping C build (storage._pagehot) is not built")
    words = LockWords(3, use_c=use_c)
    stripe = threading.Lock()   # one mutex for the three, as the pool's stripes share them
    locks = [ContentLock(stripe, words, i) for i in range(3)]
    holders = [[0, 0] for _ in locks]   # [shared, exclusive] per lock, under `count`
    count = threading.Lock()
    errors: list[str] = []
    deadline = time.monotonic() + 1.0

    def hold(i: int, exclusive: bool) -> None:
        with count:
            holders[i][exclusive] += 1
            s, x = holders[i]
            if x > 1 or (x and s):
                errors.append(f"lock {i}: {s} shared and {x} exclusive holders at once")
        time.sleep(0)
        with count:
            holders[i][exclusive] -= 1

    def run(seed: int) -> None:
        import random
        rng = random.Random(seed)
        while time.monotonic() < deadline and not errors:
            i = rng.randrange(3)
            kind = rng.randrange(3)
            if kind == 0:
                locks[i].acquire_shared()
                hold(i, False)
                locks[i].release_shared()
            elif kind == 1:
                locks[i].acquire_exclusive()
                hold(i, True)
                locks[i].release_exclusive()
            else:   # a run of two, all or nothing (waiting while holding part of a run
                ids = [i, (i + 1) % 3]   # in another order than other threads deadlocks)
                busy = words.try_exclusive_many(ids)
                taken = [b for b in ids if b not in busy]
                if not busy:
                    for b in ids:
                        hold(b, True)
                for b in words.release_exclusive_many(taken) if taken else ():
                    locks[b]._notify()

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S + 5)
        assert not t.is_alive(), "a thread never got its lock"
    assert not errors, errors[0]
    assert list(words.words) == [0, 0, 0] and list(words.waiters) == [0, 0, 0]
