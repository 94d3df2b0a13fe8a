"""A hypothesis state machine drives a KV store against a dict model: puts, deletes,
pops, clears, prefix scans, transactions that commit or abort, a concurrent writer's conflicting commit, vacuum,
checkpoints, close/reopen and crashes (the database dropped without close, with or
without a transaction open, then recovered) — on every io method; values are small or big
enough to go out of line into overflow pages. After every step the store equals the model
(point reads and ordered ranges: a crash loses exactly the open transaction) and
``KVStore.check()`` verifies the B+tree's structure."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from slonik import ConflictError
from tests.conftest import require_method
from tests.engine.dbutil import open_db

KEYS = st.sampled_from([b"", b"a", b"ab", b"b", b"ba", b"c", b"d\x00", b"e" * 40, b"\xff"])
BIG_VALUES = st.integers(2001, 20_000).map(lambda n: bytes([n % 251]) * n)  # out of line
VALUES = st.binary(max_size=300) | BIG_VALUES


def make_machine(io_method: str):
    class KVMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.dir = tempfile.mkdtemp(prefix="slonik-kv-stateful-")
            self.path = f"{self.dir}/db"
            self.db = open_db(self.path, io_method, shared_buffers=32)
            self.kv = self.db.kv("s")
            self.model: dict[bytes, bytes] = {}
            self.tx = None          # the open transaction's context manager
            self.pending: dict[bytes, bytes | None] = {}

        def teardown(self) -> None:
            try:
                if self.tx is not None:
                    self.tx.__exit__(RuntimeError, RuntimeError("teardown"), None)
                self.db.close()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

        def view(self) -> dict[bytes, bytes]:
            v = dict(self.model)
            for k, val in self.pending.items():
                if val is None:
                    v.pop(k, None)
                else:
                    v[k] = val
            return v

        @rule(k=KEYS, v=VALUES)
        def put(self, k, v):
            self.kv[k] = v
            if self.tx is None:
                self.model[k] = v
            else:
                self.pending[k] = v

        @rule(k=KEYS)
        def delete(self, k):
            present = k in self.view()
            if present:
                del self.kv[k]
            else:
                with pytest.raises(KeyError):
                    del self.kv[k]
                return
            if self.tx is None:
                del self.model[k]
            else:
                self.pending[k] = None

        @rule(k=KEYS)
        def pop(self, k):
            expect = self.view().get(k)
            assert self.kv.pop(k, None) == expect
            if expect is None:
                return
            if self.tx is None:
                del self.model[k]
            else:
                self.pending[k] = None

        @rule()
        def clear(self):
            keys = list(self.view())
            self.kv.clear()
            if self.tx is None:
                self.model = {}
            else:
                self.pending.update({k: None for k in keys})
            assert len(self.kv) == 0

        @rule(prefix=KEYS, reverse=st.booleans())
        def prefix_scan(self, prefix, reverse):
            expect = sorted((k, v) for k, v in self.view().items() if k.startswith(prefix))
            if reverse:
                expect.reverse()
            view = self.kv.items(prefix=prefix, reverse=reverse)
            assert list(view) == expect
            assert len(view) == len(expect)

        @rule(ks=st.lists(KEYS, max_size=5))
        def get_many(self, ks):
            view = self.view()
            assert self.kv.get_many(ks) == [view.get(k) for k in ks]

        @rule(k=KEYS)
        def get(self, k):
            assert self.kv.get(k) == self.view().get(k)

        @rule(start=st.none() | KEYS, stop=st.none() | KEYS, reverse=st.booleans())
        def scan(self, start, stop, reverse):
            expect = sorted((k, v) for k, v in self.view().items()
                            if (start is None or k >= start) and (stop is None or k < stop))
            if reverse:
                expect.reverse()
            assert list(self.kv.items(start, stop, reverse)) == expect

        @precondition(lambda self: self.tx is None)
        @rule()
        def begin(self):
            self.tx = self.db.transaction()
            self.tx.__enter__()
            self.pending = {}

        @precondition(lambda self: self.tx is not None)
        @rule()
        def commit(self):
            tx, self.tx = self.tx, None
            tx.__exit__(None, None, None)
            self.model = self.view()
            self.pending = {}

        @precondition(lambda self: self.tx is not None)
        @rule()
        def abort(self):
            tx, self.tx = self.tx, None
            assert not tx.__exit__(RuntimeError, RuntimeError("abort"), None)  # re-raised
            self.pending = {}

        @precondition(lambda self: self.tx is not None)
        @rule(k=KEYS, v=VALUES)
        def concurrent_write(self, k, v):
            """Another thread commits k while our transaction is open: if we wrote k too,
            our commit must fail (first committer wins)."""
            t = threading.Thread(target=self.kv.__setitem__, args=(k, v))
            t.start()
            t.join()
            self.model[k] = v
            if k in self.pending:
                tx, self.tx = self.tx, None
                with pytest.raises(ConflictError):
                    tx.__exit__(None, None, None)
                self.pending = {}
            else:
                # Our snapshot still shows the old state: keep reads consistent with it by
                # ending the transaction here (the model's "view" is per snapshot).
                tx, self.tx = self.tx, None
                tx.__exit__(None, None, None)
                self.model.update({k2: v2 for k2, v2 in self.pending.items() if v2 is not None})
                for k2, v2 in self.pending.items():
                    if v2 is None:
                        self.model.pop(k2, None)
                self.pending = {}

        @precondition(lambda self: self.tx is None)
        @rule()
        def vacuum(self):
            self.db.vacuum()

        @precondition(lambda self: self.tx is None)
        @rule()
        def checkpoint(self):
            self.db.checkpoint()

        @precondition(lambda self: self.tx is None)
        @rule()
        def reopen(self):
            self.db.close()
            self.db = open_db(self.path, io_method, shared_buffers=32)
            self.kv = self.db.kv("s")

        @rule()
        def crash(self):
            """Drop the database without close (no shutdown checkpoint, an open transaction
            never commits) and open it again: recovery replays the WAL."""
            self.db._release_resources()
            self.tx = None
            self.pending = {}
            self.db = open_db(self.path, io_method, shared_buffers=32)
            self.kv = self.db.kv("s")

        @invariant()
        def matches_model(self):
            if self.tx is None:
                assert dict(self.kv.items()) == self.model
                assert len(self.kv) == len(self.model)
                self.kv.check()

    return KVMachine


@pytest.mark.parametrize("method", ["sync", "worker", "io_uring"])
def test_kv_against_dict_model(method):
    require_method(method)
    run_state_machine_as_test(
        make_machine(method),
        settings=settings(max_examples=int(os.environ.get("SLONIK_STATEFUL_EXAMPLES", "25")), stateful_step_count=40, deadline=None,
                          suppress_health_check=list(HealthCheck)))
