"""The B+tree against a dict model, as a hypothesis state machine, on every io method.

Steps: committed puts and deletes, batches through apply() (committed or aborted; with
explicit old versions, or OLD_LOOKUP ones the tree resolves, checked against
latest_versions() and a per-key reference),
aborted puts, snapshots taken and released, vacuum up to the oldest held snapshot,
reopening the tree, evicting the relation from the pool, checkpoints, and crashes (the
pool is thrown away unwritten and the WAL since the last checkpoint is replayed through
engine.recovery's RedoContext into a new pool). After every step ``check()`` verifies
the whole structure (order, high keys, links, parent bounds, overflow references, free
list), a full ordered scan (forward and reverse) equals the model, and every held
snapshot still reads exactly what the model held when it was taken.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from slonik.aio.core import Aio
from slonik.engine.access import btree, btree_page
from slonik.engine.access.btree import OLD_LOOKUP, BTree, VersionWrite, XidSnapshot
from slonik.engine.access.btree_wal import BTREE_RMGR, btree_redo
from slonik.engine.recovery import RedoContext
from slonik.storage.bufmgr import BufferManager
from slonik.storage.smgr import Smgr
from slonik.wal.reader import WalReader
from slonik.wal.rmgr import RM_BTREE, install_rmgrs
from slonik.wal.xlog import Wal

from tests.conftest import require_method

REL = 16384
WAL_SEGMENT_BYTES = 1 << 22

install_rmgrs([BTREE_RMGR])

# A pool of keys of very different widths, so a few dozen inserts split pages.
_rnd = random.Random(12)
KEYS = sorted({_rnd.randbytes(n) for n in
               [0, 1, 1, 2, 3, 5, 8, 13, 30, 60, 100, 200, 400, 700, 900, 1200, 1500, 1800,
                2000] + [_rnd.randrange(1, 50) for _ in range(20)]})
VALUE_SIZES = [0, 7, 300, 1800, 2001, 9000, 20000]


def make_machine(io_method: str):
    class BTreeMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.path = tempfile.mkdtemp(prefix="btree-sm-")
            os.makedirs(os.path.join(self.path, "wal"))
            self.aio = Aio(io_method, io_max_concurrency=16)
            self.smgr = Smgr(self.path, segment_size=32, max_files=8, aio=self.aio)
            self.wal = Wal(os.path.join(self.path, "wal"), self.aio,
                           wal_segment_size=WAL_SEGMENT_BYTES)
            self.bm = self._pool()
            self.redo_from = self.wal.insert_lsn
            self.tree = BTree.create(REL, self.bm, self.wal)
            self.model: dict[bytes, bytes] = {}
            self.next_xid = 1
            self.aborted: set[int] = set()
            self.held: list[tuple[XidSnapshot, dict[bytes, bytes]]] = []

        def _pool(self) -> BufferManager:
            return BufferManager(self.smgr, self.aio, shared_buffers=48, io_combine_limit=8,
                                 flush_wal=self.wal.flush)

        def _xid(self) -> int:
            self.next_xid += 1
            return self.next_xid - 1

        def _snapshot(self) -> XidSnapshot:
            return XidSnapshot(self.next_xid, 0, tuple(sorted(self.aborted)))

        @initialize()
        def start(self) -> None:
            pass

        @rule(writes=st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUE_SIZES),
                                        st.integers(0, 255)), min_size=1, max_size=12))
        def put(self, writes):
            for k, size, fill in writes:  # one committed transaction per write
                snap = self._snapshot()
                value = bytes([fill]) * size
                self.tree.put(k, value, self._xid(), snap)
                self.model[k] = value

        @rule(writes=st.dictionaries(st.sampled_from(KEYS), st.one_of(
            st.none(), st.tuples(st.sampled_from(VALUE_SIZES), st.integers(0, 255))),
            min_size=1, max_size=20), aborted=st.booleans())
        def commit_batch(self, writes, aborted):
            """One transaction's write set through apply() (None: delete)."""
            snap = self._snapshot()
            xid = self._xid()
            batch = []
            for k, w in writes.items():
                old = next((e.xmin for e in self.tree.versions(k) if snap(e.xmin, e.xmax)), 0)
                if w is None and not old:
                    continue
                value = None if w is None else bytes([w[1]]) * w[0]
                batch.append(VersionWrite(k, xid, value, old))
            self.tree.apply(batch)
            if aborted:
                self.aborted.add(xid)
                return
            for w in batch:
                if w.value is None:
                    self.model.pop(w.key, None)
                else:
                    self.model[w.key] = w.value

        def _committed(self, xid: int) -> bool:
            return xid < self.next_xid and xid not in self.aborted

        @rule(writes=st.dictionaries(st.sampled_from(KEYS), st.one_of(
            st.none(), st.tuples(st.sampled_from(VALUE_SIZES), st.integers(0, 255))),
            min_size=1, max_size=20), aborted=st.booleans())
        def commit_batch_lookup(self, writes, aborted):
            """A write set whose old versions the tree finds itself (OLD_LOOKUP, as a blind
            autocommit put): latest_versions() agrees with a per-key walk of versions(),
            and apply() replaces exactly those versions (the writes it returns say which)."""
            committed = self._committed
            keys = list(writes)
            expected = []
            for k in keys:
                e = next((e for e in self.tree.versions(k) if committed(e.xmin)), None)
                expected.append((0, 0) if e is None else
                                (e.xmin, e.xmax if e.xmax and committed(e.xmax) else 0))
            assert self.tree.latest_versions(keys, committed) == expected
            olds = {k: (0 if xmax else xmin)
                    for k, (xmin, xmax) in zip(keys, expected, strict=True)}
            xid = self._xid()
            batch = [VersionWrite(k, xid, None if w is None else bytes([w[1]]) * w[0],
                                  OLD_LOOKUP) for k, w in writes.items()]
            done = self.tree.apply(batch, committed)
            assert [(w.key, w.old_xmin) for w in done] == sorted(
                (k, olds[k]) for k, w in writes.items() if w is not None or olds[k])
            if aborted:
                self.aborted.add(xid)
                return
            for w in done:
                if w.value is None:
                    self.model.pop(w.key, None)
                else:
                    self.model[w.key] = w.value

        @rule(a=st.sampled_from(KEYS), b=st.sampled_from(KEYS))
        def delete_range(self, a, b):
            """One transaction deleting every key in [a, b): leaves empty out, so the
            next vacuum unlinks and recycles them."""
            snap = self._snapshot()
            xid = self._xid()
            batch = []
            for k in [k for k in sorted(self.model) if a <= k < b]:
                old = next(e.xmin for e in self.tree.versions(k) if snap(e.xmin, e.xmax))
                batch.append(VersionWrite(k, xid, None, old))
                del self.model[k]
            self.tree.apply(batch)

        @rule(k=st.sampled_from(KEYS), size=st.sampled_from(VALUE_SIZES))
        def aborted_put(self, k, size):
            snap = self._snapshot()
            xid = self._xid()
            self.tree.put(k, b"\xee" * size, xid, snap)
            self.aborted.add(xid)

        @rule(k=st.sampled_from(KEYS))
        def delete(self, k):
            found = self.tree.delete(k, self._xid(), self._snapshot())
            assert found == (k in self.model)
            self.model.pop(k, None)

        @rule()
        def take_snapshot(self):
            self.held.append((self._snapshot(), dict(self.model)))

        @precondition(lambda self: self.held)
        @rule()
        def release_snapshot(self):
            self.held.pop(0)

        @rule()
        def vacuum(self):
            horizon = min([s.xmax for s, _m in self.held] + [self.next_xid])
            aborted = self.aborted

            def is_dead(xmin, xmax):
                return xmin in aborted or (xmax != 0 and xmax not in aborted
                                           and xmax < horizon)

            self.tree.vacuum(is_dead)

        @rule()
        def reopen(self):
            self.tree = BTree.open(REL, self.bm, self.wal)

        @rule()
        def evict(self):
            self.bm.flush_all()
            self.bm.drop_relation_buffers(REL)

        @rule()
        def checkpoint(self):
            self.bm.flush_all()
            self.redo_from = self.wal.begin_checkpoint()

        @rule()
        def crash(self):
            self.wal.flush()
            bm = self._pool()  # the old pool is lost, never written again
            ctx = RedoContext(bm, self.smgr)
            for rr in WalReader(os.path.join(self.path, "wal"), WAL_SEGMENT_BYTES,
                                self.redo_from):
                if rr.record.rmgr == RM_BTREE:
                    btree_redo(ctx, rr)
            self.bm = bm
            self.tree = BTree.open(REL, bm, self.wal)

        @invariant()
        def matches_model(self):
            self.tree.check()
            snap = self._snapshot()
            expected = sorted(self.model.items())
            assert list(self.tree.items(snapshot=snap)) == expected
            assert list(self.tree.items(snapshot=snap, reverse=True)) == expected[::-1]
            for s, m in self.held:
                assert list(self.tree.items(snapshot=s)) == sorted(m.items())
            for k in KEYS[::7]:
                assert self.tree.get(k, snap) == self.model.get(k)

        def teardown(self):
            try:
                self.bm.flush_all()
                self.wal.close()
                self.smgr.close()
            finally:
                self.aio.shutdown()
                shutil.rmtree(self.path, ignore_errors=True)

    return BTreeMachine


@pytest.mark.parametrize("method", ["sync", "worker", "io_uring"])
def test_btree_against_dict_model_with_check_after_every_step(method):
    """Hypothesis state machine (see the module docstring): the tree, reopened, evicted,
    vacuumed and crashed at arbitrary points, always agrees with the dict model and its
    held snapshots and always passes check()."""
    require_method(method)
    run_state_machine_as_test(make_machine(method), settings=settings(
        max_examples=25, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


def test_btree_against_dict_model_without_the_c_helpers(monkeypatch):
    """The same state machine with the C page helpers switched off (as on a machine with
    no C compiler): the Python references alone keep the tree right."""
    monkeypatch.setattr(btree_page, "_lib", None)
    monkeypatch.setattr(btree_page, "_ffi", None)
    monkeypatch.setattr(btree, "C_EXTRACT_RUN", False)   # scans walk a leaf at a time
    run_state_machine_as_test(make_machine("sync"), settings=settings(
        max_examples=10, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
