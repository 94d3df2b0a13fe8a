"""A regular (non-editable) wheel install works from an unrelated directory.

The wheel is built from this checkout (no build isolation: the build tools of the test
environment are used, so no download), installed into a fresh virtual environment, and
used from a directory holding a user's own ``storage.py`` and ``engine.py`` — the names
that used to collide with ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_SCRIPT = r"""
import importlib.util, sys
import slonik
from slonik import Database, ConflictError, DataCorruptionError
for bare in ("aio", "wal"):
    spec = importlib.util.find_spec(bare)
    assert spec is None, f"{bare} is importable at top level: {spec.origin}"
spec = importlib.util.find_spec("engine")
assert spec.origin.endswith("project/engine.py"), spec.origin  # the user's, not ours
import storage  # the user's own storage.py, not ours
assert storage.MINE == 1
with Database.open(sys.argv[1], io_method="sync") as db:
    kv = db.kv("users")
    kv[b"alice"] = b"1"
    assert kv[b"alice"] == b"1"
print("ok", slonik.__file__)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
         "--disable-pip-version-check", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list(out.glob("slonik-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_only_the_slonik_namespace(wheel):
    """Every file in the wheel is under slonik/ (or its .dist-info), the compiled cffi
    modules included, and py.typed is there."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"slonik"}, tops
    assert "slonik/py.typed" in names
    for module in ("_pagecheck", "_pagehot"):
        assert any(n.startswith(f"slonik/storage/{module}") and n.endswith(".so")
                   for n in names), module
    assert not any("crashsim" in n or "method_faulty" in n for n in names)


def test_wheel_installs_into_a_fresh_venv_and_imports_beside_a_users_storage_py(
        wheel, tmp_path):
    """pip install of the wheel into a new venv; from a directory with the user's own
    storage.py and engine.py, `import slonik` works, the bare layer names are not ours,
    and a database round trip succeeds; the `slonik` command runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Runtime dependencies come from the test environment (no network needed); a .pth of
    # a directory does not run that directory's .pth files, so our editable finder stays out.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", str(wheel)],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    user = tmp_path / "project"
    user.mkdir()
    (user / "storage.py").write_text("MINE = 1\n")
    (user / "engine.py").write_text("raise SystemExit('the user engine.py was imported')\n")
    (user / "app.py").write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run = subprocess.run([str(py), "app.py", str(tmp_path / "db")], cwd=user, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok ") and str(venv) in run.stdout
    cli = subprocess.run([str(venv / "bin" / "slonik"), "get", str(tmp_path / "db"), "users",
                          "alice"], cwd=user, env=env, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == "1"
