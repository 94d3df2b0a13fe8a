"""Helpers shared by the engine's Database-level tests."""

from __future__ import annotations

from slonik import Database

# Small everything: WAL and data files span several segments in tests.
SMALL = dict(shared_buffers=128, wal_segment_size=1 << 20, segment_size=64,
             wal_buffers=64, checkpoint_timeout=3600)


def open_db(path, io_method: str, **settings) -> Database:
    kw = dict(SMALL)
    kw.update(settings)
    return Database.open(path, io_method=io_method, **kw)
