"""Tables with a primary key and secondary indexes against a dict model (hypothesis
stateful test), and concurrent writers of one unique key, on every io method."""

from __future__ import annotations

import tempfile
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from slonik import ConflictError, UniqueViolation
from tests.engine.dbutil import open_db

IDS = st.integers(0, 8)
NAMES = st.one_of(st.none(), st.sampled_from(["", "a", "b", "ab", "é", "z"]))
SCORES = st.one_of(st.none(), st.sampled_from([-1.0, -0.0, 0.5, 2.0, float("inf")]))


def _order(v):
    return (v is None, v)


class TableMachine(RuleBasedStateMachine):
    """Random inserts, updates (by key and by TID), deletes, aborted transactions,
    vacuums, a unique index on ``code`` and reopens; after every step the table equals the
    model, every key is found by ``get(id=)``, each index's range scan lists the model's
    rows in key order, and ``check_indexes`` is clean."""

    io_method = "sync"

    @initialize()
    def open(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = f"{self.dir.name}/db"
        self.db = open_db(self.path, self.io_method)
        self.t = self.db.create_table("t", [("id", "int8"), ("name", "text"),
                                            ("score", "float8"), ("code", "int8")],
                                      primary_key="id")
        self.t.create_index("t_name_score", ["name", "score"])
        self.t.create_index("t_code", ["code"], unique=True)
        self.model: dict[int, tuple] = {}

    def teardown(self):
        if hasattr(self, "db"):
            self.db.close()
            self.dir.cleanup()

    def _code_taken(self, code, but=None) -> bool:
        return code is not None and any(r[3] == code for k, r in self.model.items()
                                        if k != but)

    @rule(k=IDS, name=NAMES, score=SCORES, code=st.one_of(st.none(), st.integers(0, 8)))
    def insert(self, k, name, score, code):
        row = (k, name, score, code)
        if k in self.model or self._code_taken(code):
            with pytest.raises(UniqueViolation):
                self.t.insert(row)
        else:
            self.t.insert(row)
            self.model[k] = row

    @rule(k=IDS, name=NAMES, score=SCORES, code=st.one_of(st.none(), st.integers(0, 8)),
          by_tid=st.booleans())
    def update(self, k, name, score, code, by_tid):
        row = (k, name, score, code)
        if k not in self.model:
            with pytest.raises(KeyError):
                self.t.update(row)
            return
        if self._code_taken(code, but=k):
            with pytest.raises(UniqueViolation):
                self.t.update(row)
            return
        if by_tid:
            tid = next(tid for tid, r in self.t.items() if r[0] == k)
            self.t.update(tid, row)
        else:
            self.t.update(row)
        self.model[k] = row

    @rule(k=IDS)
    def delete(self, k):
        if k in self.model:
            self.t.delete(id=k)
            del self.model[k]
        else:
            with pytest.raises(KeyError):
                self.t.delete(id=k)

    @rule(ks=st.lists(IDS, min_size=1, max_size=4, unique=True))
    def aborted(self, ks):
        with self.db.transaction() as txn:
            for k in ks:
                if k in self.model:
                    self.t.delete(id=k)
                else:
                    self.t.insert((k, "gone", None, None))
            txn.rollback()

    @rule()
    def vacuum(self):
        self.db.vacuum()

    @rule()
    def reopen(self):
        self.db.close()
        self.db = open_db(self.path, self.io_method)
        self.t = self.db.table("t")

    @invariant()
    def matches_model(self):
        if not hasattr(self, "db"):
            return
        t, model = self.t, self.model
        assert sorted(t.scan()) == sorted(model.values())
        for k, row in model.items():
            assert t.get(id=k) == row
        got = [(r[1], r[2]) for r in t.range("t_name_score")]
        assert [(_order(n), _order(s)) for n, s in got] == sorted(
            (_order(r[1]), _order(r[2])) for r in model.values())
        assert [r[0] for r in t.range("t_pkey", reverse=True)] == sorted(model, reverse=True)
        for result in t.check_indexes():
            assert result.ok, result.problems


def test_table_with_indexes_against_a_model(io_method):
    """See TableMachine."""
    machine = type("M", (TableMachine,), {"io_method": io_method})
    run = settings(max_examples=20, stateful_step_count=30, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])(machine).TestCase
    run().runTest()


def test_concurrent_writers_of_one_key_leave_one_row(tmp_path, io_method):
    """Eight threads each try, in transactions with retries, to insert the same 20 primary
    keys: every key ends up in exactly one row (each loser got ConflictError while the
    winner ran, or UniqueViolation once it committed), and the indexes verify."""
    with open_db(tmp_path / "db", io_method) as db:
        t = db.create_table("c", [("id", "int8"), ("who", "int8")], primary_key="id")
        t.create_index("c_who", ["who", "id"])
        outcomes: list[str] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def writer(who: int) -> None:
            try:
                for k in range(20):
                    while True:
                        try:
                            with db.transaction():
                                t.insert((k, who))
                            outcome = "won"
                        except ConflictError:
                            continue
                        except UniqueViolation:
                            outcome = "lost"
                        with lock:
                            outcomes.append(outcome)
                        break
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        rows = list(t.scan())
        assert sorted(r[0] for r in rows) == list(range(20))
        assert outcomes.count("won") == 20 and outcomes.count("lost") == 140
        assert sorted(r[0] for r in t.range("c_who")) == list(range(20))
        for result in t.check_indexes():
            assert result.ok, result.problems
