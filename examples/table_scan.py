"""Tables: typed rows, inserts, an update and a delete, and a sequential scan.

    python examples/table_scan.py [DIR [io_method]]    (no DIR: a temporary directory)

``db.create_table(name, columns)`` takes (name, type) pairs with types int8, float8,
text, bytea and bool; every column may be None. ``scan()`` reads the table's pages through
a read stream (several reads in flight, neighbouring blocks combined into one I/O).
"""

import sys

from example_args import run

from slonik import Database

ROWS = 10_000


def main(path: str, io_method: str = "auto") -> int:
    with Database.open(path, io_method=io_method) as db:
        if "events" in db.relations():
            events = db.table("events")
        else:
            events = db.create_table("events", [("id", "int8"), ("kind", "text"),
                                                ("value", "float8"), ("ok", "bool")])
            with db.transaction():             # one commit for all the rows
                tids = events.insert_many([(i, ("boot", "tick", "halt")[i % 3], i * 0.5,
                                            i % 7 != 0) for i in range(ROWS)])
            events.update(tids[1], (1, "tock", None, True))
            events.delete(tids[2])
        first_tid, first = next(events.items())
        print(f"{db.io_method}: first row {first} at {tuple(first_tid)}")
    # A new Database: its buffer pool is empty, so the scan reads every page from the files.
    with Database.open(path, io_method=io_method) as db:
        events = db.table("events")
        count = total = ticks = 0
        for _id, kind, value, _ok in events.scan():
            count += 1
            total += value or 0.0
            ticks += kind == "tick"
        b = db.stats().buffers
        print(f"scanned {count} rows ({ticks} ticks, sum of values {total:.1f}) in "
              f"{b.read_ios} read I/Os of {b.read_bytes // b.read_ios // 1024} KiB on average")
        print("with a tock:", [row for row in events.scan() if row[1] == "tock"])
        try:
            events.insert((1, 2, 3.0, True))   # kind must be text
        except TypeError as exc:
            print("TypeError:", exc)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, __doc__))
