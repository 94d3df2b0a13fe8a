"""commit_delay / commit_siblings as Database settings (PostgreSQL's names and ranges)."""

from __future__ import annotations

import threading

import pytest
from slonik.engine.database import Database

THREADS = 8
PUTS_PER_THREAD = 40


def test_commit_delay_setting_reaches_the_wal_and_commits_stay_durable(io_method, tmp_path):
    """With commit_delay on and commit_siblings=1, eight threads of autocommit puts make
    some leader flushes wait for siblings (commit_delays > 0) and every put is there after
    a reopen. With the default (off) no flush is delayed."""
    path = str(tmp_path / "db")
    with Database.open(path, io_method=io_method, commit_delay=500, commit_siblings=1) as db:
        kv = db.kv("t")

        def putter(t: int) -> None:
            for i in range(PUTS_PER_THREAD):
                kv[b"%d:%03d" % (t, i)] = b"v" * 100

        threads = [threading.Thread(target=putter, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        delayed = db._wal.stats().commit_delays
    assert delayed > 0
    with Database.open(path, io_method=io_method) as db:
        assert len(db.kv("t")) == THREADS * PUTS_PER_THREAD
        db.kv("t")[b"x"] = b"y"
        assert db._wal.stats().commit_delays == 0


@pytest.mark.parametrize(("name", "value", "error", "text"), [
    ("commit_delay", -1, ValueError, r"commit_delay must be in 0\.\.100000 microseconds"),
    ("commit_delay", 100001, ValueError, r"commit_delay must be in 0\.\.100000"),
    ("commit_delay", "10", TypeError, "commit_delay must be an int"),
    ("commit_siblings", 0, ValueError, r"commit_siblings must be in 1\.\.1000"),
    ("commit_siblings", True, TypeError, "commit_siblings must be an int"),
])
def test_bad_commit_delay_settings_are_refused(tmp_path, name, value, error, text):
    """Out-of-range or mistyped values are refused at open, naming setting and range,
    before anything is created on disk."""
    path = tmp_path / "db"
    with pytest.raises(error, match=text):
        Database.open(str(path), io_method="sync", **{name: value})
    assert not path.exists()
