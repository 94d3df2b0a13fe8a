"""SIGKILL crash test of the B+tree on every io method.

A child process (the code in ``CHILD`` below, run with ``python -c``) builds a tree in a
small buffer pool (so evictions write pages while it runs) and loops over operations —
batches through ``apply()`` with new keys, overwrites and deletes of shared keys, values
now and then big enough to go out of line, vacuum every few operations and checkpoints
— printing an intent line (``I seq``) before each and an acknowledgement (``A seq``) once
its WAL is flushed. The parent kills it with SIGKILL at a random moment, replays the WAL
from the tree's first record through engine.recovery's RedoContext into a new pool, and
checks: ``check()`` is clean, and the tree read with a snapshot that treats the one
unacknowledged operation's xid as aborted holds exactly the acknowledged operations'
results (the child prints enough to recompute every value).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest
from slonik.aio.core import Aio
from slonik.engine.access.btree import BTree, XidSnapshot
from slonik.engine.access.btree_wal import BTREE_RMGR, btree_redo
from slonik.engine.recovery import RedoContext
from slonik.storage.bufmgr import BufferManager
from slonik.storage.smgr import Smgr
from slonik.wal.reader import WalReader
from slonik.wal.rmgr import RM_BTREE, install_rmgrs

from tests.conftest import require_method

REL = 16384
WAL_SEGMENT_BYTES = 1 << 22
SHARED_KEYS = 40

install_rmgrs([BTREE_RMGR])

CHILD = r'''
import os, random, sys
from slonik.aio.core import Aio
from slonik.storage.bufmgr import BufferManager
from slonik.storage.smgr import Smgr
from slonik.wal.xlog import Wal
from slonik.engine.access.btree import BTree, VersionWrite
path, method, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
seg, rel, shared = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
os.makedirs(os.path.join(path, "wal"))
aio = Aio(method, io_max_concurrency=16)
smgr = Smgr(path, segment_size=64, max_files=8, aio=aio)
wal = Wal(os.path.join(path, "wal"), aio, wal_segment_size=seg)
bm = BufferManager(smgr, aio, shared_buffers=24, io_combine_limit=8, flush_wal=wal.flush)
print("START", wal.insert_lsn, flush=True)
tree = BTree.create(rel, bm, wal)
wal.flush()
rng = random.Random(seed)
live = {}  # key -> xmin of its live version
seq = 1
while True:
    seq += 1
    ops = []
    for i in range(rng.randrange(1, 12)):
        if rng.random() < 0.5:
            key = b"K%03d" % rng.randrange(shared)
        else:
            key = b"N%06d-%d" % (seq, i)
        size = 20000 if rng.random() < 0.05 else rng.randrange(1, 700)
        delete = key in live and rng.random() < 0.2
        ops.append((key, None if delete else size))
    ops = list(dict(ops).items())
    print("I", seq, " ".join(f"{k.decode()}={s}" for k, s in ops), flush=True)
    writes = []
    for key, size in ops:
        value = None if size is None else random.Random(f"{seq}/{key!r}").randbytes(size)
        writes.append(VersionWrite(key, seq, value, live.get(key, 0)))
    tree.apply(writes)
    wal.flush()
    for key, size in ops:
        if size is None:
            live.pop(key, None)
        else:
            live[key] = seq
    print("A", seq, flush=True)
    if seq % 13 == 0:
        tree.vacuum(lambda xmin, xmax: xmax != 0)
        wal.flush()
    if seq % 29 == 0:
        bm.flush_all()
        wal.begin_checkpoint()
'''


def _expected(lines: list[str]) -> tuple[int, dict[bytes, bytes], int | None]:
    """(start lsn, acknowledged contents, xid of the unacknowledged operation or None)."""
    start = 0
    model: dict[bytes, bytes] = {}
    pending: dict[int, list[tuple[bytes, int | None]]] = {}
    inflight = None
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "START":
            start = int(parts[1])
        elif parts[0] == "I":
            seq = int(parts[1])
            ops = []
            for op in parts[2:]:
                k, s = op.split("=")
                ops.append((k.encode(), None if s == "None" else int(s)))
            pending[seq] = ops
            inflight = seq
        elif parts[0] == "A":
            seq = int(parts[1])
            for key, size in pending.pop(seq):
                if size is None:
                    model.pop(key, None)
                else:
                    model[key] = random.Random(f"{seq}/{key!r}").randbytes(size)
            inflight = None
    return start, model, inflight


def _until_first_ack(child: subprocess.Popen, timeout: float = 120.0) -> str:
    """The child's output up to and including its first acknowledgement line (read from
    the pipe's fd directly, so the ``communicate()`` that follows loses nothing), or
    whatever it wrote before it ended or ``timeout`` passed."""
    fd = child.stdout.fileno()
    head = b""
    deadline = time.monotonic() + timeout
    # poll, not select: select refuses fds above FD_SETSIZE (1024), which a pytest process
    # that ran the torture tests before (thousands of crashed databases' files) reaches
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while b"\nA " not in head and time.monotonic() < deadline:
        if poller.poll(1000):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            head += chunk
    return head.decode()


@pytest.mark.parametrize("method", ["sync", "worker", "io_uring"])
def test_sigkill_mid_workload_recovers_every_acknowledged_write(tmp_path, method):
    """Three rounds per io method: SIGKILL the writer after a random 0.5-2.5 s, replay its
    WAL into a fresh pool; check() is clean and the tree equals the acknowledged
    operations (the unacknowledged one's xid read as aborted, so a half-logged batch or
    a half-done overwrite is invisible, as the transaction layer will make it)."""
    require_method(method)
    rng = random.Random(method)
    for round_ in range(3):
        path = str(tmp_path / f"r{round_}")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, method,
                                  str(rng.randrange(1 << 30)), str(WAL_SEGMENT_BYTES),
                                  str(REL), str(SHARED_KEYS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
        # The random 0.5-2.5 s run from the child's first acknowledged operation, not from
        # its start: on a loaded machine the imports alone may take longer than that.
        head = _until_first_ack(child)
        time.sleep(0.5 + 2 * rng.random())
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate()
        out = head + out
        assert child.returncode == -signal.SIGKILL, err
        # Only whole lines: the kill can cut the last one short (its operation then counts
        # as the unacknowledged one, whose xid replay reads as aborted).
        start, model, inflight = _expected(out.split("\n")[:-1])
        assert start and model, (out[-500:], err[-2000:])

        aio = Aio(method, io_max_concurrency=16)
        smgr = Smgr(path, segment_size=64, max_files=8, aio=aio)
        try:
            bm = BufferManager(smgr, aio, shared_buffers=64)
            ctx = RedoContext(bm, smgr)
            replayed = 0
            for rr in WalReader(os.path.join(path, "wal"), WAL_SEGMENT_BYTES, start):
                if rr.record.rmgr == RM_BTREE:
                    btree_redo(ctx, rr)
                    replayed += 1
            assert replayed > 0
            tree = BTree.open(REL, bm, None)
            tree.check()
            snap = XidSnapshot(1 << 62, 0, () if inflight is None else (inflight,))
            got = dict(tree.items(snapshot=snap))
            assert sorted(got) == sorted(model)
            assert all(got[k] == v for k, v in model.items())
            bm.flush_all()
        finally:
            smgr.close()
            aio.shutdown()
