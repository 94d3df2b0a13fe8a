"""Durability under SIGKILL (DESIGN §7: nothing acknowledged is lost, no partial
transaction is ever visible), on every io method.

A child process (``tests/engine/durability_child.py``) writes autocommit puts and
transactional batches to one KV store and prints an intent line before each operation and
an acknowledgement after its put or commit returned. The parent kills it with SIGKILL at
a random moment, reopens the database (crash recovery) and compares the whole store with
a dict model: the model holds every acknowledged operation, and the one operation the
child had announced but not acknowledged may be there entirely or not at all — nothing
else, nothing in between. The next round runs the child again on the same directory.

With ``synchronous_commit=False`` acknowledged operations may be lost, but the recovered
store must equal the model after some prefix of the operations (no hole, no partial
batch), and the database must always reopen.

A kill -9 keeps what the child handed to the kernel; power-failure-like crashes (unsynced
writes dropped or torn) are covered by the crash simulator tests in ``tests/wal/``.
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

import pytest

from slonik import Database
from tests.engine.durability_child import BATCH_MEMBERS, STORE_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small everything, so that rounds cross WAL segments, data-file segments, buffer
# evictions and (timed and size-triggered) checkpoints.
SETTINGS = dict(shared_buffers=256, wal_segment_size=256 * 1024, segment_size=16,
                wal_buffers=16, checkpoint_timeout=1, max_wal_size=2 * 1024 * 1024)
KILL_AFTER_OPEN_SECONDS = (0.05, 0.6)   # the kill comes this long after the child opened
KILL_DURING_OPEN_SHARE = 0.15           # rounds killed while the child opens (recovers)
OPEN_TIMEOUT_SECONDS = 30               # a child that does not open in time fails the test
DEFAULT_KILLS = 20
TORTURE_KILLS = 200
TORTURE_SECONDS = 300


class Model:
    """The store as the acknowledged operations left it, plus the announced one."""

    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.ops: list[dict] = []          # operations of this round, in order

    @staticmethod
    def apply(state: dict[bytes, bytes], op: dict) -> None:
        for k, v in op["puts"].items():
            state[bytes.fromhex(k)] = bytes.fromhex(v)
        for k in op["deletes"]:
            state.pop(bytes.fromhex(k), None)


def parse_lines(lines: list[str]) -> tuple[list[dict], dict | None, bool]:
    """(acknowledged ops, the announced unacknowledged op or None, whether OPEN was seen)."""
    acked: list[dict] = []
    pending: dict | None = None
    opened = False
    for line in lines:
        if not line.endswith("\n"):
            break  # the kill cut the line: nothing after it was printed
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind == "OPEN":
            opened = True
        elif kind == "I":
            assert pending is None, f"intent without ack before {line!r}"
            pending = json.loads(rest)
        elif kind == "A":
            assert pending is not None and pending["seq"] == int(rest), line
            acked.append(pending)
            pending = None
        else:
            raise AssertionError(f"unexpected child output {line!r}")
    return acked, pending, opened


def run_child(path: str, io_method: str, rng: random.Random, round_no: int,
              synchronous_commit: bool = True) -> list[str]:
    """Start the writer, SIGKILL it at a random moment, return every line it printed."""
    args = [sys.executable, "-m", "tests.engine.durability_child", path, io_method,
            str(rng.randrange(1 << 30)), str(round_no), "1" if synchronous_commit else "0",
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
        opened.set()  # EOF: the child died (or was killed)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if rng.random() < KILL_DURING_OPEN_SHARE:
            time.sleep(rng.uniform(0.0, 0.25))  # python start-up, open, recovery
        else:
            assert opened.wait(OPEN_TIMEOUT_SECONDS), "the child did not open the database"
            time.sleep(rng.uniform(*KILL_AFTER_OPEN_SECONDS))
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t.join(10)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert alive and proc.returncode == -signal.SIGKILL, \
        f"the child ended by itself (rc {proc.returncode}) before the kill:\n{stderr}"
    return lines


def reopen_and_read(path: str, io_method: str) -> dict[bytes, bytes]:
    """Recover, read the whole store (and check its structure), close cleanly."""
    with Database.open(path, io_method=io_method, **SETTINGS) as db:
        store = db.kv(STORE_NAME)
        store.check()
        items = dict(store.items())
        assert list(items) == sorted(items), "items() is not in key order"
        assert len(store) == len(items)
        for k in list(items)[:: max(1, len(items) // 50)]:
            assert store[k] == items[k]
    return items


def assert_no_partial_batch(state: dict[bytes, bytes]) -> None:
    """Every batch marker B/<seq> has all its members M/<seq>/<i>, and every member its
    marker."""
    markers = {k[2:] for k in state if k.startswith(b"B/")}
    members: dict[bytes, int] = {}
    for k in state:
        if k.startswith(b"M/"):
            seq = k[2:].rsplit(b"/", 1)[0]
            members[seq] = members.get(seq, 0) + 1
    for seq in markers | set(members):
        assert seq in markers and members.get(seq, 0) == BATCH_MEMBERS, \
            f"partial transaction {seq.decode()}: marker {seq in markers}, " \
            f"{members.get(seq, 0)} of {BATCH_MEMBERS} members"


def describe_difference(actual: dict, expected: dict) -> str:
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    wrong = [k for k in expected if k in actual and actual[k] != expected[k]]
    return (f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected "
            f"(e.g. {extra[:3]}), {len(wrong)} with another value (e.g. {wrong[:3]})")


def kill_rounds(path: str, io_method: str, seed: int, kills: int,
                deadline: float | None = None) -> dict[str, int]:
    """``kills`` rounds of write/SIGKILL/recover/verify on one directory (synchronous
    commit). Returns counters for the caller's sanity checks."""
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    counts = dict(rounds=0, acked=0, in_flight_applied=0, in_flight_absent=0,
                  killed_before_open=0)
    for round_no in range(1, kills + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        lines = run_child(path, io_method, rng, round_no)
        acked, pending, opened = parse_lines(lines)
        counts["killed_before_open"] += not opened
        for op in acked:
            Model.apply(model, op)
        counts["acked"] += len(acked)
        actual = reopen_and_read(path, io_method)
        assert_no_partial_batch(actual)
        if actual != model:
            with_pending = dict(model)
            if pending is not None:
                Model.apply(with_pending, pending)
            assert actual == with_pending, (
                f"seed {seed} round {round_no}: the recovered store is neither the "
                f"acknowledged state nor that plus the in-flight operation "
                f"{pending and pending['seq']}: {describe_difference(actual, model)}")
            model = with_pending
            counts["in_flight_applied"] += 1
        elif pending is not None:
            counts["in_flight_absent"] += 1
        counts["rounds"] += 1
    return counts


@pytest.mark.parametrize("seed", [61])
def test_acknowledged_writes_survive_sigkill(tmp_path, io_method, seed):
    """DEFAULT_KILLS rounds of SIGKILL at random moments (now and then during open and
    recovery itself): after each recovery the store equals the acknowledged operations,
    plus at most the one announced operation as a whole; no partial batch."""
    seed += {"sync": 0, "worker": 1000, "io_uring": 2000}[io_method]
    counts = kill_rounds(str(tmp_path / "db"), io_method, seed, DEFAULT_KILLS)
    assert counts["rounds"] == DEFAULT_KILLS
    assert counts["acked"] >= DEFAULT_KILLS, counts  # the child did real work
    assert counts["in_flight_applied"] + counts["in_flight_absent"] > 0, counts


@pytest.mark.torture
def test_acknowledged_writes_survive_sigkill_torture(tmp_path, io_method):
    """As above, TORTURE_KILLS rounds per method (at most TORTURE_SECONDS)."""
    deadline = time.monotonic() + TORTURE_SECONDS
    seed = 7_000 + {"sync": 0, "worker": 1, "io_uring": 2}[io_method]
    counts = kill_rounds(str(tmp_path / "db"), io_method, seed, TORTURE_KILLS, deadline)
    assert counts["rounds"] >= min(DEFAULT_KILLS, TORTURE_KILLS), counts


def test_asynchronous_commit_loses_only_a_suffix(tmp_path, io_method):
    """With synchronous_commit=False an acknowledged commit may be lost in a crash (its WAL
    was still in the child's buffers), but recovery gives the state after some prefix of
    the operations — never a hole, never a partial batch — and the database always
    reopens. The parent's clean close then makes that state durable for the next round."""
    path = str(tmp_path / "db")
    rng = random.Random(83 + {"sync": 0, "worker": 1, "io_uring": 2}[io_method])
    model: dict[bytes, bytes] = {}
    lost_total = 0
    for round_no in range(1, 9):
        lines = run_child(path, io_method, rng, round_no, synchronous_commit=False)
        acked, pending, _opened = parse_lines(lines)
        ops = acked + ([pending] if pending is not None else [])
        actual = reopen_and_read(path, io_method)
        assert_no_partial_batch(actual)
        state = dict(model)
        prefix = 0 if state == actual else None
        for i, op in enumerate(ops, 1):
            Model.apply(state, op)
            if state == actual:
                prefix = i
        assert prefix is not None, (
            f"round {round_no}: the recovered store is not the state after any prefix of "
            f"the {len(ops)} operations: {describe_difference(actual, model)}")
        lost_total += max(0, len(acked) - prefix)
        model = actual
    # Informational: how many acknowledged operations asynchronous commit lost.
    print(f"asynchronous commit: {lost_total} acknowledged operations lost over 8 kills")


def test_page_full_to_the_byte_is_logged_and_recovered(tmp_path, io_method):
    """Regression (found by the SIGKILL test): the first change after a checkpoint to a
    page that the change fills to the last byte (lower == upper, no hole) is logged with a
    full-page image; the WAL writer once passed hole (32, 32) to the record codec, which
    rejects a hole offset without a length, and the commit failed with ValueError. Here
    two heap tuples of 4080 bytes (rows of a one-column table: KV stores are B+trees now)
    fill one page exactly; the database is then crashed (dropped without close) and
    recovered from that image."""
    from slonik.engine.access.tuple import TUPLE_HEADER_SIZE, RowCodec

    columns = [("v", "bytea")]
    vlen = 4080 - TUPLE_HEADER_SIZE - len(RowCodec(columns).encode((b"",)))
    path = str(tmp_path / "db")
    db = Database.open(path, io_method=io_method, **SETTINGS)
    s = db.create_table("s", columns)
    s.insert((b"x" * vlen,))
    db.checkpoint()
    s.insert((b"y" * vlen,))
    assert db.stats().relations[0].nblocks == 1
    db._release_resources()  # a crash: no shutdown checkpoint
    with Database.open(path, io_method=io_method, **SETTINGS) as db:
        assert sorted(db.table("s").scan()) == [(b"x" * vlen,), (b"y" * vlen,)]


def test_checkpoints_during_writes_do_not_exhaust_the_buffer_pool(tmp_path, io_method):
    """Found by the SIGKILL torture run (the child died by itself with NoFreeBuffersError
    in an autovacuum's read stream): a checkpoint pins every dirty buffer for the whole of
    its flush (``BufferManager.flush_all``), and the clock sweep raises instead of waiting
    for a pin to go, so a foreground read or write that needs a buffer while a checkpoint
    runs fails when most of the pool is dirty. Here a thread checkpoints in a loop while
    the main thread rewrites 400 keys (~15 pages more than a 32-buffer pool holds) and
    reads them back; no operation may fail. (PostgreSQL's checkpointer pins one buffer at
    a time, and a backend waits for a free buffer rather than erroring while pins are
    only transient.)"""
    with Database.open(str(tmp_path / "db"), io_method=io_method, shared_buffers=32,
                       checkpoint_timeout=3600) as db:
        store = db.kv("d")
        stop = threading.Event()
        errors: list[BaseException] = []

        def checkpoints() -> None:
            try:
                while not stop.is_set():
                    db.checkpoint()
            except BaseException as exc:  # reported below
                errors.append(exc)

        th = threading.Thread(target=checkpoints)
        th.start()
        try:
            deadline = time.monotonic() + 5
            r = 0
            while time.monotonic() < deadline and not errors:
                r += 1
                with db.transaction():
                    for i in range(400):
                        store[b"k%04d" % i] = b"%d" % r * 100
                assert len(dict(store.items())) == 400
        finally:
            stop.set()
            th.join()
        assert not errors, errors
