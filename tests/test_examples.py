"""Every example runs as a user would run it."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("io_method", ["sync", "worker", "io_uring"])
def test_storage_scan_example(tmp_path, io_method):
    """storage_scan.py writes 200 pages and scans all of them back, first to last."""
    from tests.conftest import require_method

    require_method(io_method)
    proc = subprocess.run([sys.executable, str(EXAMPLES / "storage_scan.py"),
                           str(tmp_path / "db"), io_method],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{io_method}: wrote 200 pages, scanned 200: 'page 0' .. 'page 199'" in proc.stdout
