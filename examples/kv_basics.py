"""The KV store: put, get, delete, ordered range scans, and reopening the database.

    python examples/kv_basics.py [DIR [io_method]]    (no DIR: a temporary directory)

``db.kv(name)`` is a ``MutableMapping[bytes, bytes]`` kept in key order. Outside a
transaction every write is one durable transaction: when the assignment returns, the
write is on disk (its WAL fsynced).
"""

import sys

from example_args import run

from slonik import Database


def main(path: str, io_method: str = "auto") -> int:
    with Database.open(path, io_method=io_method) as db:
        fruit = db.kv("fruit")
        for name, colour in [(b"cherry", b"red"), (b"apple", b"green"), (b"banana", b"yellow"),
                             (b"date", b"brown"), (b"elderberry", b"purple")]:
            fruit[name] = colour                   # each put: one durable transaction
        print(f"{db.io_method}: {len(fruit)} keys, apple is {fruit[b'apple'].decode()}")
        del fruit[b"date"]
        print("b..d:", [k.decode() for k in fruit.keys(start=b"b", stop=b"d")])
        print("reversed:", [k.decode() for k in fruit.keys(reverse=True)])
        print("missing:", fruit.get(b"fig", b"(none)").decode())
        try:
            fruit["apple"] = b"red"                # keys are bytes, not str
        except TypeError as exc:
            print("TypeError:", exc)
    with Database.open(path, io_method=io_method) as db:   # everything survived the close
        fruit = db.kv("fruit")
        print("after reopen:", {k.decode(): v.decode() for k, v in fruit.items()})
    return 0


if __name__ == "__main__":
    sys.exit(run(main, __doc__))
