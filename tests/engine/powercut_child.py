"""The writer the power-cut tests SIGKILL (tests/engine/test_powercut.py).

Usage: ``python -m tests.engine.powercut_child PATH IO_METHOD SEED ROUND LAYER [KEY=VALUE...]``
(``LAYER`` is ``real`` or ``nosync``: with ``nosync`` the child installs
``tests.support.nosync.NoSyncLayer``, whose fsyncs do nothing; the ``KEY=VALUE`` pairs are
integer settings passed to ``Database.open``).

It prints ``OPENING``, opens the database (recovering it), prints ``OPEN``, then loops for
ever, single-threaded, over:
- ``put``: an autocommit ``store[key] = value`` on a shared key ``K/<nnn>`` of the KV store
  ``"d"`` (later writes override earlier ones, across rounds too);
- ``row``: an autocommit insert of the row ``(seq, payload)`` into the table ``"t"``;
- ``batch``: ``with db.transaction():`` a marker ``B/<seq>``, ``BATCH_MEMBERS`` members
  ``M/<seq>/<i>``, an overwrite of a shared key, a delete of a shared key when it exists,
  and the row ``(seq, payload)`` in ``"t"``: all of it or nothing may survive;
- every ``CHECKPOINT_EVERY_OPS`` operations a ``db.checkpoint()`` (printed ``C``), so cuts
  land before, inside and after checkpoints (the background checkpointer adds timed ones).
For each operation it prints an intent line (``I <json>``: puts and deletes as hex, rows as
``[seq, hex]``) before the last call that can make it durable, and ``A <seq>`` after that
call returned. Every line is flushed as printed: when the parent kills the child, the only
operation whose outcome is unknown is the last one announced and not acknowledged.
"""

from __future__ import annotations

import json
import random
import sys

from slonik.aio import osfile

from slonik import Database
from tests.support.nosync import NoSyncLayer

STORE_NAME = "d"
TABLE_NAME = "t"
TABLE_COLUMNS = [("seq", "int8"), ("payload", "bytea")]
SHARED_KEYS = 64            # K/000 .. K/063: the keys later writes override
BATCH_MEMBERS = 4           # member keys per transactional batch (plus its marker)
SEQ_PER_ROUND = 1_000_000   # more operations than a round can do in its few seconds
VALUE_MAX_BYTES = 600       # values are 1..600 bytes, now and then 3000 (several per page)
BIG_VALUE_BYTES = 3000
ROW_PAYLOAD_MAX_BYTES = 300
CHECKPOINT_EVERY_OPS = 50   # explicit checkpoints: a few per round
PUT_SHARE, ROW_SHARE = 0.55, 0.15   # the rest are batches
LAYERS = ("real", "nosync")


def _value(rng: random.Random, seq: int) -> bytes:
    n = BIG_VALUE_BYTES if rng.random() < 0.05 else rng.randint(1, VALUE_MAX_BYTES)
    head = b"%d:" % seq
    return (head + rng.randbytes(n))[:max(n, len(head))]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _intent(seq: int, op: str, puts: dict[bytes, bytes], deletes: list[bytes],
            rows: list[tuple[int, bytes]]) -> None:
    _say("I " + json.dumps({"seq": seq, "op": op,
                            "puts": {k.hex(): v.hex() for k, v in puts.items()},
                            "deletes": [k.hex() for k in deletes],
                            "rows": [[s, p.hex()] for s, p in rows]}))


def main(argv: list[str]) -> int:
    path, io_method, seed, round_no, layer = argv[:5]
    if layer not in LAYERS:
        raise SystemExit(f"LAYER must be one of {LAYERS}, got {layer!r}")
    settings = {k: int(v) for k, v in (a.split("=", 1) for a in argv[5:])}
    if layer == "nosync":
        osfile.install(NoSyncLayer())
        # every write through the page cache: an O_DIRECT WAL write (the default's on ext4)
        # reaches the device with no sync at all, which would hide the skipped fsyncs
        settings["io_direct"] = "none"
    rng = random.Random(int(seed))
    _say("OPENING")
    db = Database.open(path, io_method=io_method, **settings)
    store = db.kv(STORE_NAME)
    try:
        table = db.table(TABLE_NAME)
    except KeyError:
        table = db.create_table(TABLE_NAME, TABLE_COLUMNS)
    _say("OPEN")
    seq = int(round_no) * SEQ_PER_ROUND
    while True:
        seq += 1
        r = rng.random()
        if r < PUT_SHARE:
            key = b"K/%03d" % rng.randrange(SHARED_KEYS)
            value = _value(rng, seq)
            _intent(seq, "put", {key: value}, [], [])
            store[key] = value
        elif r < PUT_SHARE + ROW_SHARE:
            payload = rng.randbytes(rng.randint(0, ROW_PAYLOAD_MAX_BYTES))
            _intent(seq, "row", {}, [], [(seq, payload)])
            table.insert((seq, payload))
        else:
            with db.transaction():
                puts = {b"B/%d" % seq: b"%d members" % BATCH_MEMBERS}
                for i in range(BATCH_MEMBERS):
                    puts[b"M/%d/%d" % (seq, i)] = _value(rng, seq)
                puts[b"K/%03d" % rng.randrange(SHARED_KEYS)] = _value(rng, seq)
                victim = b"K/%03d" % rng.randrange(SHARED_KEYS)
                deletes = [victim] if victim not in puts and victim in store else []
                payload = rng.randbytes(rng.randint(0, ROW_PAYLOAD_MAX_BYTES))
                for k, v in puts.items():
                    store[k] = v
                for k in deletes:
                    del store[k]
                table.insert((seq, payload))
                _intent(seq, "batch", puts, deletes, [(seq, payload)])
        _say(f"A {seq}")
        if seq % CHECKPOINT_EVERY_OPS == 0:
            db.checkpoint()
            _say("C")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
