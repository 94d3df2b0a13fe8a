"""SIGKILL crash test of tables with a primary key and a secondary index, on every io
method.

A child process (``CHILD``, run with ``python -c``) opens a database with a small buffer
pool (evictions write pages while it runs) and loops over autocommit operations on a
table with a primary key and an index on (v, id): inserts of new keys, updates and
deletes by key, and now and then a vacuum (index entries removed, heap slots freed and
reused) or a checkpoint. It prints an intent line before each operation and an
acknowledgement once it returned (its commit is durable). The parent kills it with SIGKILL
at a random moment after enough acknowledgements, reopens the database (crash recovery)
and checks: the rows are exactly the acknowledged operations' result, give or take the
one unacknowledged operation; every row is found by its primary key and the index range
scan returns the rows in (v, id) order; ``check_indexes`` finds every entry pointing at a
tuple with its key and every visible tuple indexed.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import pytest

from tests.engine.dbutil import open_db

CHILD = r'''
import random, sys
from slonik import Database
path, method, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = Database.open(path, io_method=method, shared_buffers=32, wal_segment_size=1 << 20,
                   segment_size=64, checkpoint_timeout=3600)
t = db.create_table("c", [("id", "int8"), ("v", "text"), ("pad", "bytea")],
                    primary_key="id")
t.create_index("c_v", ["v", "id"])
print("READY", flush=True)
rng = random.Random(seed)
live = set()
seq = 0
while True:
    seq += 1
    r = rng.random()
    if r < 0.02:
        print("I", seq, "vacuum", flush=True); db.vacuum()
    elif r < 0.03:
        print("I", seq, "checkpoint", flush=True); db.checkpoint()
    elif r < 0.55 or not live:
        k = seq
        v = "v%03d" % rng.randrange(100)
        print("I", seq, "insert", k, v, flush=True)
        t.insert((k, v, bytes(rng.randrange(0, 300))))
        live.add(k)
    elif r < 0.8:
        k = rng.choice(sorted(live))
        v = "v%03d" % rng.randrange(100)
        print("I", seq, "update", k, v, flush=True)
        t.update((k, v, b"u"))
    else:
        k = rng.choice(sorted(live))
        print("I", seq, "delete", k, flush=True)
        t.delete(id=k)
        live.discard(k)
    print("A", seq, flush=True)
'''


def _apply(model: dict, op: list[str]) -> None:
    if op[0] in ("insert", "update"):
        model[int(op[1])] = op[2]
    elif op[0] == "delete":
        del model[int(op[1])]


def _take(line: str, model: dict, pending: list[str] | None) -> tuple[list[str] | None, bool]:
    """One line of the child's: an intent ("I") becomes the pending operation, an
    acknowledgement ("A") applies it to the model. (pending, whether acknowledged)."""
    parts = line.split()
    if parts[0] == "I":
        return parts[2:], False
    if parts[0] == "A":
        _apply(model, pending)
        return None, True
    return pending, False


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_keeps_acknowledged_rows_and_consistent_indexes(tmp_path, io_method, seed):
    """See the module docstring: after SIGKILL and recovery, rows == acknowledged model
    (± the one operation in flight), lookups and index order agree, indexes verified."""
    path = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), io_method, str(seed)],
                            stdout=subprocess.PIPE, text=True)
    model: dict[int, str] = {}
    pending: list[str] | None = None
    acks = 0
    target = random.Random(seed).randrange(150, 400)
    try:
        for line in proc.stdout:
            pending, acked = _take(line, model, pending)
            acks += acked
            if acks >= target:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert acks >= target, "the child stopped early"
    # What the child printed before it died counts too; the operation whose intent was
    # printed last without an acknowledgement may or may not have committed.
    for line in proc.stdout:
        if not line.endswith("\n"):
            break  # the kill cut this line short: its operation had not started
        pending, _acked = _take(line, model, pending)
    with open_db(path, io_method) as db:
        t = db.table("c")
        got = {r[0]: r[1] for r in t.scan()}
        candidates = [model]
        if pending is not None:
            after = dict(model)
            _apply(after, pending)
            candidates.append(after)
        assert got in candidates, (pending, len(got), len(model))
        for k, v in got.items():
            assert t.get(id=k)[1] == v
        assert [(r[1], r[0]) for r in t.range("c_v")] == sorted((v, k) for k, v in got.items())
        for result in t.check_indexes():
            assert result.ok, result.problems
        db.vacuum()
        for result in t.check_indexes():
            assert result.ok, result.problems
