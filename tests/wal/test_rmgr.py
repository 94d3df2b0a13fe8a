"""Resource manager registry: registration rules, lookup errors, names for display."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
import tempfile

import pytest
from slonik.wal.errors import WalError
from slonik.wal.rmgr import (
    RM_CUSTOM_MIN,
    RM_HEAP,
    RM_SMGR,
    RM_TEST,
    RM_XACT,
    RM_XLOG,
    RMGR_TABLE,
    ResourceManager,
    find_rmgr,
    get_rmgr,
    install_rmgrs,
    register_rmgr,
    registered_rmgrs,
    rmgr_name,
)

# The registry is process-wide and only grows: each test takes ids nobody else uses.
_ids = itertools.count(200)


def make(rm_id: int, name: str | None = None) -> ResourceManager:
    return ResourceManager(rm_id, name or f"t{rm_id}", lambda ctx, rr: None,
                           lambda rec: f"desc {rec.info}")


def test_contract_ids():
    """The ids the contract fixes."""
    assert (RM_XLOG, RM_XACT, RM_SMGR, RM_HEAP, RM_TEST) == (0, 1, 2, 10, 127)


def test_register_and_get():
    """A registered manager is found by id, listed, and named; registering the same object
    again is harmless."""
    rm = make(next(_ids))
    register_rmgr(rm)
    register_rmgr(rm)
    assert get_rmgr(rm.id) is rm and find_rmgr(rm.id) is rm
    assert rm in registered_rmgrs()
    assert rmgr_name(rm.id) == rm.name


def test_reregistering_an_id_with_another_object_is_refused():
    """An id is bound to one object for the life of the process: a different object (even
    an equal-looking one) is a ValueError naming the id and the holder."""
    rm_id = next(_ids)
    register_rmgr(make(rm_id, "first"))
    with pytest.raises(ValueError, match=f"{rm_id}.*first"):
        register_rmgr(make(rm_id, "second"))
    assert get_rmgr(rm_id).name == "first"


def test_duplicate_name_is_refused():
    """Two ids may not share a name (waldump output would be ambiguous)."""
    register_rmgr(make(next(_ids), "samename"))
    with pytest.raises(ValueError, match="samename"):
        register_rmgr(make(next(_ids), "samename"))


def test_unknown_id_is_a_wal_error_naming_it():
    """Recovery meeting a record of an unregistered rmgr gets a WalError naming the id."""
    with pytest.raises(WalError, match="199"):
        get_rmgr(199)
    assert find_rmgr(199) is None
    assert rmgr_name(199) == "rmgr199"
    assert rmgr_name(RM_HEAP) in ("heap", find_rmgr(RM_HEAP) and find_rmgr(RM_HEAP).name)


@pytest.mark.parametrize("bad, exc", [
    (ResourceManager(256, "x", lambda c, r: None, lambda r: ""), ValueError),
    (ResourceManager(-1, "x", lambda c, r: None, lambda r: ""), ValueError),
    (ResourceManager(True, "x", lambda c, r: None, lambda r: ""), ValueError),
    (ResourceManager(198, "", lambda c, r: None, lambda r: ""), ValueError),
    (ResourceManager(198, "x", None, lambda r: ""), TypeError),
    ("not an rmgr", TypeError),
])
def test_bad_registrations(bad, exc):
    """Misuse is TypeError/ValueError, and nothing is registered."""
    with pytest.raises(exc):
        register_rmgr(bad)
    assert find_rmgr(198) is None


def test_builtin_ids_come_from_the_one_table():
    """Ids below RM_CUSTOM_MIN are RMGR_TABLE's: one of them under another name, or an id
    below RM_CUSTOM_MIN the table does not list, is refused; install_rmgrs takes only
    table ids; a custom id may not take a built-in name."""
    assert RMGR_TABLE[RM_XLOG].name == "xlog" and RMGR_TABLE[RM_HEAP].name == "heap"
    assert all(i < RM_CUSTOM_MIN for i in RMGR_TABLE)
    with pytest.raises(ValueError, match="'heap' in RMGR_TABLE, not 'notheap'"):
        register_rmgr(make(RM_HEAP, "notheap"))
    with pytest.raises(ValueError, match="not in RMGR_TABLE"):
        register_rmgr(make(100, "unlisted"))
    with pytest.raises(ValueError, match="not in RMGR_TABLE"):
        install_rmgrs([make(next(_ids), "custom")])
    with pytest.raises(ValueError, match="built-in"):
        register_rmgr(make(next(_ids), "xact"))
    assert find_rmgr(100) is None


def test_engine_table_binds_every_engine_rmgr_and_imports_bind_nothing():
    """In a fresh interpreter, importing the modules that define resource managers binds
    none of them (no registration as an import side effect); installing the engine's table
    (engine/rmgrlist.py) binds exactly its managers, each under its RMGR_TABLE id and name,
    and installing it twice is harmless."""
    code = (
        "import slonik.engine.access.heap, slonik.engine.xact, slonik.engine.smgr_wal\n"
        "import slonik.wal.checkpoint\n"
        "from slonik.wal.rmgr import RMGR_TABLE, registered_rmgrs\n"
        "assert registered_rmgrs() == [], registered_rmgrs()\n"
        "from slonik.engine import rmgrlist\n"
        "rmgrlist.install(); rmgrlist.install()\n"
        "got = registered_rmgrs()\n"
        "assert got == list(rmgrlist.ENGINE_RMGRS), got\n"
        "assert all(RMGR_TABLE[rm.id].name == rm.name for rm in got)\n"
        "print(sorted(rm.name for rm in got))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), timeout=120)
    assert out.returncode == 0, out.stderr
    names = set(ast.literal_eval(out.stdout.strip()))
    assert {"xlog", "xact", "smgr", "heap"} <= names <= {e.name for e in RMGR_TABLE.values()}
