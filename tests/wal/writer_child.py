"""A writer process the WAL tests SIGKILL (tests/wal/test_wal_integrity.py,
tests/engine/test_walwriter.py).

Usage: ``python -m tests.wal.writer_child PATH IO_METHOD MODE COUNT [KEY=VALUE...]`` (the
``KEY=VALUE`` pairs are integer settings for ``Database.open``; ``synchronous_commit`` is
set by the mode).

Modes, both on the KV store ``"k"`` with keys ``k/<nnnnnn>`` and values derived from the key
(``value_of``), so the parent can check every acknowledged key without being told values:
- ``batches``: synchronous commits, ``COUNT`` keys in transactions of ``BATCH_KEYS``; after
  each commit returns, one line ``A <first> <last>`` (indexes of the keys it made durable);
  then ``DONE``, and the process waits to be killed.
- ``async``: ``synchronous_commit=False``, autocommit puts for ever (``COUNT`` is ignored);
  after each put returns, ``A <index> <time.monotonic()>``. CLOCK_MONOTONIC is one clock
  for every process of the machine, so the parent compares it with the kill's moment.

``OPEN`` is printed once the database is open. Every line is flushed as it is printed.
"""

from __future__ import annotations

import sys
import time

from slonik import Database

STORE_NAME = "k"
BATCH_KEYS = 10
BIG_EVERY = 97             # every 97th value is big, so records span pages and segments
BIG_VALUE_BYTES = 6000       # < a heap page; such records span WAL pages
SMALL_VALUE_BYTES = 150


def key_of(i: int) -> bytes:
    return b"k/%06d" % i


def value_of(i: int) -> bytes:
    n = BIG_VALUE_BYTES if i % BIG_EVERY == BIG_EVERY - 1 else SMALL_VALUE_BYTES
    seed = b"%d;" % i
    return (seed * (n // len(seed) + 1))[:n]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    path, io_method, mode, count = argv[:4]
    settings = {k: int(v) for k, v in (a.split("=", 1) for a in argv[4:])}
    if mode not in ("batches", "async"):
        raise SystemExit(f"unknown mode {mode!r}")
    db = Database.open(path, io_method=io_method, synchronous_commit=mode == "batches",
                       **settings)
    store = db.kv(STORE_NAME)
    _say("OPEN")
    if mode == "batches":
        for first in range(0, int(count), BATCH_KEYS):
            last = min(int(count), first + BATCH_KEYS) - 1
            with db.transaction():
                for i in range(first, last + 1):
                    store[key_of(i)] = value_of(i)
            _say(f"A {first} {last}")
        _say("DONE")
        while True:
            time.sleep(60)
    i = 0
    while True:
        store[key_of(i)] = value_of(i)
        _say(f"A {i} {time.monotonic()!r}")
        i += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
