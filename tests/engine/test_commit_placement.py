"""Commit placement (setting ``commit_placement``, wal/placement.py and the C group
commit's "commit placement" block): committers that wait in the group commit are bound to
one CPU and the flusher to another, the masks they had come back when the database
closes (or in a forked child), a thread the caller bound itself is left alone, and "off"
binds nothing. Real threads, real affinity masks, a real fork, on every io method."""

from __future__ import annotations

import os
import threading
import time

import pytest
from slonik.engine.database import Database
from slonik.engine.wal_build import C_GROUP_FLUSH_FOR, thread_bound_by_placement
from slonik.wal.placement import (
    _irq_counts,
    check_commit_placement,
    commit_cpus,
    device_irq_cpu,
    parse_cpu_list,
)

ALLOWED = os.sched_getaffinity(0)
needs_placement = pytest.mark.skipif(
    C_GROUP_FLUSH_FOR is None or len(ALLOWED) < 2,
    reason="commit placement needs the C group commit and two CPUs")
THREADS = 6
BIND_DEADLINE_S = 20.0
FLUSHER_NAME = "slonik-walflush"


def flusher_tids() -> list[int]:
    tids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == FLUSHER_NAME:
                    tids.append(int(tid))
        except FileNotFoundError:   # (a thread that ended while listed)
            continue
    return tids


class Committers:
    """``THREADS`` threads of autocommit puts into ``db`` until each has been bound (or
    the deadline passed), then each waits on ``release`` before reporting its mask."""

    def __init__(self, db: Database, stop_when_bound: bool = True, then=None) -> None:
        self.kv = db.kv("t")
        self.release = threading.Event()
        self.bound = [False] * THREADS
        self.masks: list[set[int] | None] = [None] * THREADS
        self.after: list[set[int] | None] = [None] * THREADS
        self.puts = [0] * THREADS
        self.errors: list[BaseException] = []
        self.stop_when_bound = stop_when_bound
        self.then = then   # what thread 0 does once all are bound, before it reports
        self.threads = [threading.Thread(target=self.run, args=(t,)) for t in range(THREADS)]

    def run(self, t: int) -> None:
        try:
            deadline = time.monotonic() + BIND_DEADLINE_S
            n = 0
            while time.monotonic() < deadline:   # (until all are bound: a lone one waits
                self.kv[b"%d:%06d" % (t, n)] = b"v" * 100   # for nobody)
                n += 1
                self.bound[t] = thread_bound_by_placement()
                if self.stop_when_bound and all(self.bound):
                    break
                if not self.stop_when_bound and n >= 300:
                    break
            self.puts[t] = n
            if t == 0 and self.then is not None:
                self.then()
            self.masks[t] = os.sched_getaffinity(0)
            self.release.wait(60)
            self.after[t] = os.sched_getaffinity(0)
        except BaseException as exc:   # reported by the test
            self.errors.append(exc)

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def wait_reported(self) -> None:
        deadline = time.monotonic() + BIND_DEADLINE_S + 30
        while any(m is None for m in self.masks) and not self.errors:
            assert time.monotonic() < deadline, "committers did not report"
            time.sleep(0.01)

    def finish(self) -> None:
        self.release.set()
        for th in self.threads:
            th.join()
        assert not self.errors, self.errors


@needs_placement
def test_waiting_committers_and_the_flusher_are_bound_and_get_their_masks_back(
        io_method, tmp_path):
    """Six committing threads: each is bound to the commit CPU once it has waited, the
    flusher runs on the other CPU, every put is durable, and closing the database gives
    each thread (still alive) its own mask back."""
    path = str(tmp_path / "db")
    db = Database.open(path, io_method=io_method)
    commit_cpu, flush_cpu = db._wal.commit_placement
    assert commit_cpu != flush_cpu and {commit_cpu, flush_cpu} <= ALLOWED
    work = Committers(db)
    work.start()
    work.wait_reported()
    try:
        assert all(work.bound), work.bound
        assert all(m == {commit_cpu} for m in work.masks), work.masks
        tids = flusher_tids()
        assert tids, "no flusher thread under contention"
        assert all(os.sched_getaffinity(tid) == {flush_cpu} for tid in tids)
        db.close()
    finally:
        work.finish()
    assert work.after == [ALLOWED] * THREADS
    assert not thread_bound_by_placement()
    with Database.open(path, io_method=io_method) as db2:
        assert len(db2.kv("t")) == sum(work.puts)


@needs_placement
def test_threads_a_bound_thread_starts_get_the_mask_back_too(io_method, tmp_path):
    """A thread started by a bound committer inherits its one CPU (Linux copies the mask);
    closing the database gives it the mask the opening thread had; a lone committer
    (one thread, nobody to queue behind) is never bound."""
    child_masks: list[set[int]] = []
    child_release = threading.Event()
    children: list[threading.Thread] = []

    def child() -> None:
        child_masks.append(os.sched_getaffinity(0))
        child_release.wait(60)
        child_masks.append(os.sched_getaffinity(0))

    def start_a_child() -> None:
        children.append(threading.Thread(target=child))
        children[0].start()

    db = Database.open(str(tmp_path / "db"), io_method=io_method)
    commit_cpu, _ = db._wal.commit_placement
    work = Committers(db, then=start_a_child)
    work.start()
    work.wait_reported()
    work.finish()
    try:
        assert all(work.bound)
        kv = db.kv("alone")
        for i in range(300):
            kv[b"%06d" % i] = b"v"
        assert not thread_bound_by_placement()
        assert os.sched_getaffinity(0) == ALLOWED
        db.close()
    finally:
        child_release.set()
        children[0].join()
    assert child_masks == [{commit_cpu}, ALLOWED]


@needs_placement
def test_commit_placement_off_binds_nothing(io_method, tmp_path):
    """With ``commit_placement="off"`` the same contention binds no thread."""
    with Database.open(str(tmp_path / "db"), io_method=io_method,
                       commit_placement="off") as db:
        assert db._wal.commit_placement is None
        work = Committers(db, stop_when_bound=False)
        work.start()
        work.wait_reported()
        work.finish()
        assert db._wal.stats().flushes < sum(work.puts)   # (they did share flushes)
    assert not any(work.bound)
    assert work.masks == [ALLOWED] * THREADS


@needs_placement
def test_a_thread_the_caller_bound_is_left_alone_and_placement_ends_with_the_last_database(
        io_method, tmp_path):
    """A committer whose mask names one CPU keeps it; with two databases open the bound
    threads stay bound until the second one closes."""
    db1 = Database.open(str(tmp_path / "db1"), io_method=io_method)
    db2 = Database.open(str(tmp_path / "db2"), io_method=io_method)
    commit_cpu, flush_cpu = db1._wal.commit_placement
    own: list[object] = []

    def pinned_by_caller() -> None:
        os.sched_setaffinity(0, {flush_cpu})
        kv = db1.kv("own")
        for i in range(200):
            kv[b"%06d" % i] = b"w"
        own.append((os.sched_getaffinity(0), thread_bound_by_placement()))

    work = Committers(db1)
    mine = threading.Thread(target=pinned_by_caller)
    work.start()
    mine.start()
    mine.join()
    work.wait_reported()
    try:
        assert own == [({flush_cpu}, False)]
        assert all(work.bound)
        db1.close()
        assert all(os.sched_getaffinity(th.native_id) == {commit_cpu}
                   for th in work.threads)
        db2.close()
        assert all(os.sched_getaffinity(th.native_id) == ALLOWED for th in work.threads)
    finally:
        work.finish()
        db1.close()
        db2.close()


@needs_placement
def test_a_thread_the_caller_bound_to_the_commit_cpu_keeps_that_binding(io_method, tmp_path):
    """A thread there before the database opened, which its caller bound to the commit CPU
    alone, is not taken for a bound thread's child: placement records nothing for it and
    closing the database leaves its one CPU as the caller set it."""
    path = str(tmp_path / "db")
    cpus = commit_cpus(str(tmp_path))
    assert cpus is not None
    opened = threading.Event()
    seen: list[object] = []
    box: list[Database] = []

    def caller_bound() -> None:
        os.sched_setaffinity(0, {cpus[0]})
        opened.wait(60)
        kv = box[0].kv("own")
        for i in range(300):
            kv[b"%06d" % i] = b"w"
        seen.append(thread_bound_by_placement())
        put_done.set()
        closed.wait(60)   # (alive until its mask has been read after the close)

    put_done, closed = threading.Event(), threading.Event()
    mine = threading.Thread(target=caller_bound)
    mine.start()   # (before the open: a thread of the process when placement began)
    db = Database.open(path, io_method=io_method)
    try:
        assert db._wal.commit_placement[0] == cpus[0]
        box.append(db)
        work = Committers(db, stop_when_bound=False)   # (300 puts each, beside its own)
        work.start()
        opened.set()
        assert put_done.wait(60), "the caller's thread did not finish its puts"
        work.wait_reported()
        work_bound = list(work.bound)
        db.close()
        mine_after = os.sched_getaffinity(mine.native_id)
        work.finish()
    finally:
        opened.set()
        closed.set()
        mine.join()
        db.close()
    assert any(work_bound), work_bound   # (contention: placement was binding)
    assert seen == [False]
    assert mine_after == {cpus[0]}


@needs_placement
def test_a_forked_child_of_a_bound_thread_gets_its_mask_back(io_method, tmp_path):
    """A bound committer forks: the child runs with the mask the thread had before it was
    bound (not on the commit CPU alone, as its own children would)."""
    seen: list[str] = []

    def fork_and_ask_the_child() -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: its mask, and whether it counts itself bound
            os.close(read)
            mask = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
            os.write(write, f"{mask};{int(thread_bound_by_placement())}".encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            seen.append(f.read().decode())
        os.waitpid(pid, 0)

    with Database.open(str(tmp_path / "db"), io_method=io_method) as db:
        commit_cpu, _ = db._wal.commit_placement
        work = Committers(db, then=fork_and_ask_the_child)
        work.start()
        work.wait_reported()
        work.finish()
    assert all(work.bound) and work.masks[0] == {commit_cpu}
    assert seen == [",".join(str(c) for c in sorted(ALLOWED)) + ";0"]


def test_bad_commit_placement_is_refused(tmp_path):
    """A value other than "auto"/"off" is refused at open, naming the setting, before
    anything is created on disk."""
    path = tmp_path / "db"
    with pytest.raises(ValueError, match=r"commit_placement must be one of auto \| off"):
        Database.open(str(path), io_method="sync", commit_placement="on")
    assert not path.exists()
    assert check_commit_placement("off") == "off"


def test_cpu_choice():
    """The flusher's CPU is the device's interrupt CPU where the process may run there,
    else its highest CPU; the committers' is the lowest other one; one CPU: off."""
    assert commit_cpus("/dev/shm", {3}) is None
    assert commit_cpus("/dev/shm", {2, 5, 7}) == (2, 7)   # tmpfs: no device, no interrupt
    irq = device_irq_cpu(os.getcwd())
    if irq is not None:
        others = {irq + 1, irq + 2}
        assert commit_cpus(os.getcwd(), others | {irq}) == (irq + 1, irq)
        assert commit_cpus(os.getcwd(), others) == (irq + 1, irq + 2)


def test_cpu_lists_and_interrupt_counts_parse():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("1") == {1}
    with pytest.raises(ValueError, match="not a CPU list: 'a-b'"):
        parse_cpu_list("a-b")
    text = ("           CPU0       CPU1\n"
            "  28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config\n"
            "  36:         12  122191174 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n"
            "NMI:          0          0   Non-maskable interrupts\n")
    assert _irq_counts(text) == {28: 0, 36: 122191186}


def test_no_procfs_to_read_means_no_interrupt_cpu(monkeypatch):
    """Where /proc/interrupts or /proc/irq cannot be read (a container without them), the
    answer is None (the caller falls back to the highest CPU), not an error at open."""
    from slonik.wal import placement
    monkeypatch.setattr(placement, "PROC_INTERRUPTS", "/proc/no-such-file")
    assert device_irq_cpu(os.getcwd()) is None
    assert commit_cpus(os.getcwd(), {0, 1}) == (0, 1)


def test_the_interrupt_cpu_of_a_real_block_device():
    """On a file system over a PCI block device the answer is a CPU the kernel names for
    the device's busiest interrupt; with no device behind it (tmpfs), None."""
    assert device_irq_cpu("/dev/shm") is None
    irq = device_irq_cpu(os.getcwd())
    if irq is not None:
        with open("/sys/devices/system/cpu/online") as f:
            assert irq in parse_cpu_list(f.read())
