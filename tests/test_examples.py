"""Every example runs as a user would run it (a subprocess), on every io method."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import METHODS, require_method

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.parametrize("io_method", METHODS)
def test_storage_scan_example(tmp_path, io_method):
    """storage_scan.py writes 200 pages and scans all of them back, first to last."""
    require_method(io_method)
    proc = run_example("storage_scan.py", str(tmp_path / "db"), io_method)
    assert f"{io_method}: wrote 200 pages, scanned 200: 'page 0' .. 'page 199'" in proc.stdout


@pytest.mark.parametrize("io_method", METHODS)
def test_kv_basics_example(tmp_path, io_method):
    """kv_basics.py: ordered range and reverse scans, a delete, the str-key TypeError, and
    the same four pairs after reopening."""
    require_method(io_method)
    out = run_example("kv_basics.py", str(tmp_path / "db"), io_method).stdout
    assert f"{io_method}: 5 keys, apple is green" in out
    assert "b..d: ['banana', 'cherry']" in out
    assert "reversed: ['elderberry', 'cherry', 'banana', 'apple']" in out
    assert "TypeError: key must be bytes" in out
    assert ("after reopen: {'apple': 'green', 'banana': 'yellow', 'cherry': 'red', "
            "'elderberry': 'purple'}") in out


@pytest.mark.parametrize("io_method", METHODS)
def test_transactions_example(tmp_path, io_method):
    """transactions.py: the transfer commits as a whole, the aborted block leaves nothing,
    the snapshot does not see the concurrent commit, and the second writer of bob gets
    ConflictError (bob keeps the first committer's value)."""
    require_method(io_method)
    out = run_example("transactions.py", str(tmp_path / "db"), io_method).stdout
    assert "after transfer: alice=70, bob=80" in out
    assert "after abort: alice=70, bob=80" in out
    assert "inside the snapshot bob is 80 before and 80 after" in out
    assert "after the snapshot ended: alice=70, bob=999" in out
    assert "ConflictError: " in out and "first committer wins" in out
    assert "final: alice=70, bob=1" in out


@pytest.mark.parametrize("io_method", METHODS)
def test_table_scan_example(tmp_path, io_method):
    """table_scan.py: 10,000 rows inserted, one deleted, one updated; a cold scan by a new
    Database sees 9,999 rows through read I/Os, and the updated row once."""
    require_method(io_method)
    out = run_example("table_scan.py", str(tmp_path / "db"), io_method).stdout
    assert f"{io_method}: first row (0, 'boot', 0.0, False)" in out
    assert "scanned 9999 rows (3332 ticks" in out
    assert "with a tock: [(1, 'tock', None, True)]" in out
    assert "TypeError: column 'kind' is text" in out


@pytest.mark.parametrize("io_method", METHODS)
def test_crash_recovery_example(tmp_path, io_method):
    """crash_recovery.py: the child is killed by SIGKILL (signal 9) after acknowledging
    puts, and after recovery every acknowledged put is present."""
    require_method(io_method)
    out = run_example("crash_recovery.py", str(tmp_path / "db"), io_method).stdout
    assert "child killed by signal 9 after" in out
    assert "every acknowledged write survived" in out
    line = next(x for x in out.splitlines() if "acknowledged puts present" in x)
    present, acked = line.split("; ")[1].split(" acknowledged")[0].split(" of ")
    assert present == acked and int(acked) > 0


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")
                                        if p.name != "example_args.py"))
def test_every_example_runs_without_arguments(name):
    """Each example, run with no arguments at all, works in a temporary directory (exit 0,
    says which directory) and removes it afterwards; --help prints its usage and exits 0;
    a bad io method is exit 2 with the usage, not a traceback."""
    proc = run_example(name)
    line = next(x for x in proc.stdout.splitlines() if "using the temporary directory" in x)
    tmp = line.split("temporary directory ")[1].split(",")[0]
    assert not os.path.exists(tmp), f"{name} left {tmp} behind"
    helped = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "usage: [DIR [io_method]]" in helped.stdout
    assert f"examples/{name} [DIR [io_method]]" in helped.stdout
    bad = subprocess.run([sys.executable, str(EXAMPLES / name), "x", "no_such_method"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "io_method must be one of" in bad.stderr
    assert "Traceback" not in bad.stderr
