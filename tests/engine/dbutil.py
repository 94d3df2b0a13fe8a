"""Helpers shared by the engine's Database-level tests."""

from __future__ import annotations

import os

from slonik import Database

# Small everything: WAL and data files span several segments in tests.
SMALL = dict(shared_buffers=128, wal_segment_size=1 << 20, segment_size=64,
             wal_buffers=64, checkpoint_timeout=3600)


def open_db(path, io_method: str, **settings) -> Database:
    kw = dict(SMALL)
    kw.update(settings)
    return Database.open(path, io_method=io_method, **kw)


def tree_snapshot(path) -> dict[str, tuple[int, float, bytes]]:
    """Every file under ``path`` with its size, mtime and contents (to prove nothing changed)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.stat(p)
            data = b""
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    data = f.read()
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns, data)
    return out
