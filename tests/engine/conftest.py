"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest
from slonik.engine.database import Database


@pytest.fixture
def db(tmp_path, io_method):
    """A new Database under ``tmp_path``/db with the test's io method, closed after."""
    d = Database.open(str(tmp_path / "db"), io_method=io_method)
    yield d
    d.close()
