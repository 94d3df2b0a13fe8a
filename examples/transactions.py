"""Transactions: atomic commit, rollback on an exception, snapshot reads, conflicts.

    python examples/transactions.py [DIR [io_method]]    (no DIR: a temporary directory)

``with db.transaction():`` commits at the end of the block (durably, before the block's
``with`` statement returns) and aborts if the block raises. Reads inside see one snapshot;
of two transactions writing the same key, the first to commit wins and the other gets
``ConflictError`` at its commit.
"""

import sys
import threading

from example_args import run

from slonik import ConflictError, Database


def main(path: str, io_method: str = "auto") -> int:
    with Database.open(path, io_method=io_method) as db:
        accounts = db.kv("accounts")
        accounts.update({b"alice": b"100", b"bob": b"50"})   # one transaction for both

        # A transfer: both writes commit together.
        with db.transaction():
            accounts[b"alice"] = str(int(accounts[b"alice"]) - 30).encode()
            accounts[b"bob"] = str(int(accounts[b"bob"]) + 30).encode()
        print("after transfer:", _balances(accounts))

        # An exception aborts: nothing of the block is visible afterwards.
        try:
            with db.transaction():
                accounts[b"alice"] = b"0"
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass
        print("after abort:", _balances(accounts))

        # Snapshot isolation: a commit made in another thread while this transaction runs
        # is invisible to it.
        with db.transaction():
            before = accounts[b"bob"]
            t = threading.Thread(target=accounts.__setitem__, args=(b"bob", b"999"))
            t.start()
            t.join()
            print(f"inside the snapshot bob is {before.decode()} before and "
                  f"{accounts[b'bob'].decode()} after another thread committed bob=999")
        print("after the snapshot ended:", _balances(accounts))

        # First committer wins: this transaction read bob, another commit changed it, so
        # its own write of bob conflicts.
        try:
            with db.transaction():
                bob = int(accounts[b"bob"])
                t = threading.Thread(target=accounts.__setitem__, args=(b"bob", b"1"))
                t.start()
                t.join()
                accounts[b"bob"] = str(bob + 1).encode()
        except ConflictError as exc:
            print("ConflictError:", exc)
        print("final:", _balances(accounts))
    return 0


def _balances(accounts) -> str:
    return ", ".join(f"{k.decode()}={v.decode()}" for k, v in accounts.items())


if __name__ == "__main__":
    sys.exit(run(main, __doc__))
