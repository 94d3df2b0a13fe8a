"""The writer the durability tests SIGKILL (tests/engine/test_durability.py).

Usage: ``python -m tests.engine.durability_child PATH IO_METHOD SEED ROUND SYNC [KEY=VALUE...]``
(``SYNC`` is 1 or 0 for ``synchronous_commit``; the ``KEY=VALUE`` pairs are integer
settings passed to ``Database.open``).

It opens the database, writes ``OPEN`` once ``Database.open`` returned, then loops for
ever over random operations on the KV store ``"d"``, single-threaded. For each operation
it first prints an intent line (``I <json>``) saying exactly what it is about to write,
then does it, then prints the acknowledgement (``A <seq>``) after the put or commit
returned. Every line is flushed as it is printed, so when the parent kills the child the
only operation whose outcome is unknown is the last one with an intent but no
acknowledgement.

Operations (``seq`` numbers are ``ROUND * SEQ_PER_ROUND + n``, unique across rounds):
- ``put``: an autocommit ``store[key] = value`` on a shared key ``K/<nnn>`` (so later
  writes override earlier ones, across rounds too);
- ``batch``: ``with db.transaction():`` a marker ``B/<seq>``, ``BATCH_MEMBERS`` member
  keys ``M/<seq>/<i>``, an overwrite of a shared key and a delete of a shared key when it
  exists. The intent line is printed inside the block, just before the commit starts.
"""

from __future__ import annotations

import json
import random
import sys

from slonik import Database

STORE_NAME = "d"
SHARED_KEYS = 64            # K/000 .. K/063: the keys later writes override
BATCH_MEMBERS = 4           # member keys per transactional batch (plus its marker)
SEQ_PER_ROUND = 1_000_000   # more operations than a round can do in its few seconds
VALUE_MAX_BYTES = 600       # values are 1..600 bytes, now and then big: out of line in
BIG_VALUE_BYTES = (3000, 20_000)  # the store's overflow pages (one page, or three)


def _value(rng: random.Random, seq: int) -> bytes:
    n = rng.choice(BIG_VALUE_BYTES) if rng.random() < 0.05 else rng.randint(1, VALUE_MAX_BYTES)
    head = b"%d:" % seq
    return (head + rng.randbytes(n))[:max(n, len(head))]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    path, io_method, seed, round_no, sync = argv[:5]
    settings = {k: int(v) for k, v in (a.split("=", 1) for a in argv[5:])}
    rng = random.Random(int(seed))
    db = Database.open(path, io_method=io_method, synchronous_commit=sync == "1", **settings)
    store = db.kv(STORE_NAME)
    _say("OPEN")
    seq = int(round_no) * SEQ_PER_ROUND
    while True:
        seq += 1
        if rng.random() < 0.6:
            key = b"K/%03d" % rng.randrange(SHARED_KEYS)
            value = _value(rng, seq)
            _say("I " + json.dumps({"seq": seq, "op": "put", "puts": {key.hex(): value.hex()},
                                    "deletes": []}))
            store[key] = value
        else:
            with db.transaction():
                puts = {b"B/%d" % seq: b"%d members" % BATCH_MEMBERS}
                for i in range(BATCH_MEMBERS):
                    puts[b"M/%d/%d" % (seq, i)] = _value(rng, seq)
                puts[b"K/%03d" % rng.randrange(SHARED_KEYS)] = _value(rng, seq)
                victim = b"K/%03d" % rng.randrange(SHARED_KEYS)
                deletes = [victim] if victim not in puts and victim in store else []
                for k, v in puts.items():
                    store[k] = v
                for k in deletes:
                    del store[k]
                _say("I " + json.dumps({"seq": seq, "op": "batch",
                                        "puts": {k.hex(): v.hex() for k, v in puts.items()},
                                        "deletes": [k.hex() for k in deletes]}))
        _say(f"A {seq}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
