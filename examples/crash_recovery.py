"""Crash and recovery: SIGKILL a writer mid-stream, reopen, every acknowledged write is there.

    python examples/crash_recovery.py [DIR [io_method]]    (no DIR: a temporary directory)

A child process (this script with ``--child``) puts keys one by one outside a transaction
(each put is a durable commit) and prints each key after its put returned. The parent
reads those acknowledgements, kills the child with SIGKILL after a second, reopens the
database — which replays the WAL — and checks that every acknowledged key is present.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from example_args import run

from slonik import Database

WRITE_SECONDS = 1.0


def child(path: str, io_method: str) -> None:
    with Database.open(path, io_method=io_method) as db:
        log = db.kv("log")
        print("ready", flush=True)
        i = 0
        while True:
            log[b"entry:%08d" % i] = b"payload %d" % i
            print(i, flush=True)                   # acknowledged: the put is durable
            i += 1


def main(path: str, io_method: str = "auto") -> int:
    proc = subprocess.Popen([sys.executable, __file__, "--child", path, io_method],
                            stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    ready = threading.Event()

    def read_acks() -> None:
        for line in proc.stdout:
            if not line.endswith("\n"):
                break                              # cut by the kill: not acknowledged
            if line.strip() == "ready":
                ready.set()
            else:
                acked.append(int(line))
        ready.set()

    reader = threading.Thread(target=read_acks)
    reader.start()
    ready.wait(60)
    time.sleep(WRITE_SECONDS)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join()
    print(f"child killed by signal {-proc.returncode} after {len(acked)} acknowledged puts")

    with Database.open(path, io_method=io_method) as db:
        log = db.kv("log")
        stats = db.stats()
        missing = [i for i in acked if log.get(b"entry:%08d" % i) != b"payload %d" % i]
        print(f"{db.io_method}: recovery replayed {stats.recovery_replayed} WAL records; "
              f"{len(acked) - len(missing)} of {len(acked)} acknowledged puts present, "
              f"{len(log)} keys in all")
    if missing or not acked:
        print("LOST:", missing[:10])
        return 1
    print("every acknowledged write survived")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:])
    else:
        sys.exit(run(main, __doc__))
