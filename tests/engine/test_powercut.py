"""Power cuts on a real ext4 (DESIGN §7: nothing acknowledged is lost, no partial
transaction is visible), on every io method.

The harness (``tests/support/loopdev.py``): an ext4 made with mkfs.ext4 on a loop device
(mounted ``commit=60,noauto_da_alloc``, so ext4 writes nothing to the device on its own
during a round). A writer process (``tests/engine/powercut_child.py``) does autocommit
puts, table inserts, transactional batches (KV puts, a delete and a table row) and
checkpoints on a database there, printing an intent before and an acknowledgement after
each operation. The parent SIGKILLs it at a random moment (now and then while it opens and
recovers), copies the loop device's backing image at once — data still dirty in the upper
ext4's page cache is not in it, so the copy is the disk a power cut would leave — unmounts
and detaches the original, mounts the copy (ext4 replays its journal), opens the database
(Slonik's recovery) and compares the KV store and the table with a model: every
acknowledged operation with its last acknowledged value, plus the one announced but
unacknowledged operation entirely or not at all, and no partial batch. The next round runs
the writer again on the recovered copy.

Why this catches a writer that skips its fsync, where a kill -9 test cannot: after a kill -9
the kernel still holds the dead process's writes in the page cache and writes them back
later, so every acknowledged write "survives" whether or not it was synced. The copied
image holds only what reached the device. ``test_harness_catches_a_writer_that_skips_fsync``
proves it: the same writer, run with ``NoSyncLayer`` (an OS layer whose fsync, fdatasync
and directory fsync do nothing), acknowledges its writes; after the cut the harness reports
those acknowledged writes lost, while the original image — unmounted cleanly after the same
kill -9, i.e. what a kill -9 test would look at — still holds every one of them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

from slonik import Database
from tests.engine.powercut_child import BATCH_MEMBERS, STORE_NAME, TABLE_COLUMNS, TABLE_NAME
from tests.support.loopdev import LoopMount, PowerCutDisk, dirty_expire_seconds, unavailable_reason

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small everything, so that rounds cross WAL segments, data-file segments, buffer
# evictions and (timed, size-triggered and explicit) checkpoints.
SETTINGS = dict(shared_buffers=256, wal_segment_size=256 * 1024, segment_size=16,
                wal_buffers=16, checkpoint_timeout=1, max_wal_size=2 * 1024 * 1024)
KILL_AFTER_OPEN_SECONDS = (0.05, 0.8)   # the kill comes this long after the child opened
KILL_DURING_OPEN_SHARE = 0.15           # rounds killed while the child opens (recovers) ...
KILL_DURING_OPEN_SECONDS = (0.0, 0.15)  # ... this long after it started Database.open
OPEN_TIMEOUT_SECONDS = 30               # a child that does not open in time fails the test
DEFAULT_ROUNDS = 8                      # per io method: ~0.7 s each on 2 cores
TORTURE_ROUNDS = 150
TORTURE_SECONDS = 300
NOSYNC_ACKS = 100                       # writes the lying writer acknowledges before the cut
NOSYNC_ACK_TIMEOUT_SECONDS = 10         # ... which it must do within this time
# The negative control relies on the kernel not writing dirty pages back before the copy:
# it skips (saying so) when vm.dirty_expire_centisecs leaves too short a window for that.
NOSYNC_MIN_DIRTY_EXPIRE_SECONDS = 2 * NOSYNC_ACK_TIMEOUT_SECONDS


@pytest.fixture
def disk(tmp_path):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"power-cut harness needs loop devices: {reason}")
    with PowerCutDisk(tmp_path) as d:
        yield d


@dataclass
class State:
    """What the database holds: the KV store and the table's rows (seq → payload)."""
    kv: dict[bytes, bytes] = field(default_factory=dict)
    rows: dict[int, bytes] = field(default_factory=dict)

    def copy(self) -> State:
        return State(dict(self.kv), dict(self.rows))

    def apply(self, op: dict) -> None:
        for k, v in op["puts"].items():
            self.kv[bytes.fromhex(k)] = bytes.fromhex(v)
        for k in op["deletes"]:
            self.kv.pop(bytes.fromhex(k), None)
        for seq, payload in op["rows"]:
            self.rows[seq] = bytes.fromhex(payload)


@dataclass
class ChildOutput:
    acked: list[dict]            # acknowledged operations, in order
    pending: dict | None         # the announced, unacknowledged one
    opened: bool                 # Database.open returned
    checkpoints: int             # explicit checkpoints that returned


def parse_lines(lines: list[str]) -> ChildOutput:
    out = ChildOutput([], None, False, 0)
    for line in lines:
        if not line.endswith("\n"):
            break  # the kill cut the line: nothing after it was printed
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind == "OPENING":
            pass
        elif kind == "OPEN":
            out.opened = True
        elif kind == "C":
            out.checkpoints += 1
        elif kind == "I":
            assert out.pending is None, f"intent without ack before {line!r}"
            out.pending = json.loads(rest)
        elif kind == "A":
            assert out.pending is not None and out.pending["seq"] == int(rest), line
            out.acked.append(out.pending)
            out.pending = None
        else:
            raise AssertionError(f"unexpected child output {line!r}")
    return out


class Child:
    """The writer process and a thread collecting its lines."""

    def __init__(self, path: str, io_method: str, seed: int, round_no: int, layer: str) -> None:
        args = [sys.executable, "-m", "tests.engine.powercut_child", path, io_method,
                str(seed), str(round_no), layer, *(f"{k}={v}" for k, v in SETTINGS.items())]
        self.lines: list[str] = []
        self.acks = 0
        self.changed = threading.Condition()
        self.eof = False
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.acks += line.startswith("A ")
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until predicate(self) holds or the child's output ended; True if it held."""
        with self.changed:
            self.changed.wait_for(lambda: predicate(self) or self.eof, timeout)
            return predicate(self)

    def kill(self) -> list[str]:
        """SIGKILL (the child must still be running), reap, return every line printed."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(10)
        stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert alive and self.proc.returncode == -signal.SIGKILL, \
            f"the child ended by itself (rc {self.proc.returncode}) before the kill:\n{stderr}"
        return self.lines

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def run_and_kill(path: str, io_method: str, rng: random.Random, round_no: int) -> ChildOutput:
    """Start the writer, SIGKILL it at a random moment (now and then inside open/recovery)."""
    child = Child(path, io_method, rng.randrange(1 << 30), round_no, "real")
    try:
        if rng.random() < KILL_DURING_OPEN_SHARE:
            assert child.wait_for(lambda c: "OPENING\n" in c.lines, OPEN_TIMEOUT_SECONDS), \
                "the child did not start opening the database"
            time.sleep(rng.uniform(*KILL_DURING_OPEN_SECONDS))
        else:
            assert child.wait_for(lambda c: "OPEN\n" in c.lines, OPEN_TIMEOUT_SECONDS), \
                f"the child did not open the database: {child.lines[-3:]}"
            time.sleep(rng.uniform(*KILL_AFTER_OPEN_SECONDS))
        return parse_lines(child.kill())
    finally:
        child.ensure_dead()


def read_database(path: str, io_method: str) -> State:
    """Open (recover) the database, read the KV store (checking its structure) and the
    table, close cleanly."""
    state = State()
    with Database.open(path, io_method=io_method, **SETTINGS) as db:
        relations = db.relations()
        if STORE_NAME in relations:
            store = db.kv(STORE_NAME)
            store.check()
            state.kv = dict(store.items())
            assert list(state.kv) == sorted(state.kv), "items() is not in key order"
            assert len(store) == len(state.kv)
        if TABLE_NAME in relations:
            table = db.table(TABLE_NAME)
            assert [tuple(c) for c in table.columns] == [tuple(c) for c in TABLE_COLUMNS]
            for seq, payload in table.scan():
                assert seq not in state.rows, f"row {seq} is in the table twice"
                state.rows[seq] = payload
    return state


def partial_batches(state: State) -> list[str]:
    """Batches of which some but not all parts are visible: marker B/<seq>, its
    BATCH_MEMBERS members M/<seq>/<i> and its table row."""
    markers = {int(k[2:]) for k in state.kv if k.startswith(b"B/")}
    members: dict[int, int] = {}
    for k in state.kv:
        if k.startswith(b"M/"):
            seq = int(k[2:].rsplit(b"/", 1)[0])
            members[seq] = members.get(seq, 0) + 1
    problems = []
    for seq in sorted(markers | set(members)):
        if seq not in markers or members.get(seq, 0) != BATCH_MEMBERS or seq not in state.rows:
            problems.append(f"partial transaction {seq}: marker {seq in markers}, "
                            f"{members.get(seq, 0)} of {BATCH_MEMBERS} members, "
                            f"row {seq in state.rows}")
    return problems


def lost_writes(actual: State, expected: State) -> list[str]:
    """Acknowledged writes missing or with an older value, and unexpected ones."""
    problems = []
    for what, a, e in (("key", actual.kv, expected.kv), ("row", actual.rows, expected.rows)):
        missing = [k for k in e if k not in a]
        wrong = [k for k in e if k in a and a[k] != e[k]]
        extra = [k for k in a if k not in e]
        if missing:
            problems.append(f"lost acknowledged write: {len(missing)} {what}s missing "
                            f"(e.g. {missing[:3]})")
        if wrong:
            problems.append(f"lost acknowledged write: {len(wrong)} {what}s with another "
                            f"value (e.g. {wrong[:3]})")
        if extra:
            problems.append(f"{len(extra)} unexpected {what}s (e.g. {extra[:3]})")
    return problems


def judge(actual: State, model: State, pending: dict | None) -> tuple[list[str], bool]:
    """(problems, whether the pending operation is applied). The recovered state must be
    the acknowledged state, or that plus the pending operation as a whole."""
    problems = partial_batches(actual)
    if actual == model:
        return problems, False
    if pending is not None:
        with_pending = model.copy()
        with_pending.apply(pending)
        if actual == with_pending:
            return problems, True
    return problems + lost_writes(actual, model), False


def power_cut_rounds(disk: PowerCutDisk, io_method: str, seed: int, rounds: int,
                     deadline: float | None = None) -> dict[str, int]:
    """``rounds`` rounds of write / SIGKILL / power cut / recover / verify. Returns
    counters for the caller's sanity checks."""
    path = os.path.join(disk.mountpoint, "db")
    rng = random.Random(seed)
    model = State()
    counts = dict(rounds=0, acked=0, checkpoints=0, pending_applied=0, pending_absent=0,
                  killed_before_open=0)
    for round_no in range(1, rounds + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        out = run_and_kill(path, io_method, rng, round_no)
        disk.power_cut()
        for op in out.acked:
            model.apply(op)
        actual = read_database(path, io_method)
        problems, applied = judge(actual, model, out.pending)
        assert not problems, (f"seed {seed} round {round_no} ({len(out.acked)} acknowledged, "
                              f"pending {out.pending and out.pending['seq']}): "
                              + "; ".join(problems))
        if applied:
            model.apply(out.pending)
        counts["rounds"] += 1
        counts["acked"] += len(out.acked)
        counts["checkpoints"] += out.checkpoints
        counts["killed_before_open"] += not out.opened
        counts["pending_applied"] += applied
        counts["pending_absent"] += out.pending is not None and not applied
    return counts


@pytest.mark.parametrize("seed", [97])
def test_acknowledged_writes_survive_power_cuts(disk, io_method, seed):
    """DEFAULT_ROUNDS power cuts (SIGKILL + image copy) at random moments, now and then
    during open and recovery: after each, recovery on the cut disk gives every
    acknowledged put, row and batch with its last acknowledged value, plus at most the one
    announced operation as a whole; no partial batch; the store's structure checks."""
    seed += {"sync": 0, "worker": 1000, "io_uring": 2000}[io_method]
    counts = power_cut_rounds(disk, io_method, seed, DEFAULT_ROUNDS)
    assert counts["rounds"] == DEFAULT_ROUNDS
    assert counts["acked"] >= DEFAULT_ROUNDS, counts  # the writer did real work
    print(f"power cuts on {io_method}: {counts}, image copies "
          f"{[round(c.seconds, 3) for c in disk.copies]} s")


@pytest.mark.torture
def test_acknowledged_writes_survive_power_cuts_torture(disk, io_method):
    """As above, TORTURE_ROUNDS power cuts per method (at most TORTURE_SECONDS); the
    explicit checkpoints must have run too, so cuts landed around them."""
    deadline = time.monotonic() + TORTURE_SECONDS
    seed = 9_000 + {"sync": 0, "worker": 1, "io_uring": 2}[io_method]
    counts = power_cut_rounds(disk, io_method, seed, TORTURE_ROUNDS, deadline)
    assert counts["rounds"] >= DEFAULT_ROUNDS, counts
    assert counts["checkpoints"] > 0, counts
    print(f"power cuts on {io_method}: {counts}")


@pytest.mark.parametrize("io_method", ["sync", "worker"])  # io_uring fsyncs bypass the layer
def test_harness_catches_a_writer_that_skips_fsync(disk, io_method, tmp_path):
    """Negative control: the writer runs with NoSyncLayer (fsync, fdatasync and directory
    fsync do nothing) on a database the parent created and closed durably. After
    NOSYNC_ACKS acknowledged writes it is SIGKILLed and the disk power-cut: the harness must
    report lost acknowledged writes (nothing the writer did reached the device: no sync,
    no ext4 commit within commit=60, no write-back before vm.dirty_expire). The original
    image, unmounted cleanly after the same kill -9 (the kill -9-only view), must hold
    every acknowledged write: a kill -9 test alone cannot see the missing fsyncs.
    Only sync and worker: io_uring issues its fsyncs through the ring, past the OS layer,
    so the lying layer cannot make an io_uring writer skip them."""
    if dirty_expire_seconds() < NOSYNC_MIN_DIRTY_EXPIRE_SECONDS:
        pytest.skip(f"vm.dirty_expire_centisecs is {dirty_expire_seconds():.0f} s: the kernel "
                    f"may write back unsynced pages within a round, so the loss is not certain")
    path = os.path.join(disk.mountpoint, "db")
    with Database.open(path, io_method=io_method, **SETTINGS) as db:
        db.kv(STORE_NAME)[b"K/000"] = b"before the writer"
        db.create_table(TABLE_NAME, TABLE_COLUMNS)
    model = read_database(path, io_method)
    started = time.monotonic()
    child = Child(path, io_method, 5, 1, "nosync")
    try:
        assert child.wait_for(lambda c: c.acks >= NOSYNC_ACKS, NOSYNC_ACK_TIMEOUT_SECONDS), \
            f"the writer acknowledged only {child.acks} writes: {child.lines[-3:]}"
        out = parse_lines(child.kill())
    finally:
        child.ensure_dead()
    original = disk.power_cut(keep_original=True)
    assert time.monotonic() - started < dirty_expire_seconds()
    for op in out.acked:
        model.apply(op)

    problems, _applied = judge(read_database(path, io_method), model, out.pending)
    lost = [p for p in problems if p.startswith("lost acknowledged write")]
    assert lost, f"the power cut did not lose the unsynced writes: {problems}"

    with LoopMount(original, str(tmp_path / "original")) as kill9_view:
        state = read_database(os.path.join(kill9_view.mountpoint, "db"), io_method)
    problems, _applied = judge(state, model, out.pending)
    assert not problems, f"after a plain kill -9 the writes should all be there: {problems}"
