"""Read-only tools never write (DESIGN §7, issue #11): ``slonik check``, ``waldump`` and
``controldata`` on a crashed database — a writer child SIGKILLed mid-writes, on every io
method — leave every file's bytes, name, size and mtime (and every directory's mtime) as
they were, create no lock file, and run no recovery; ``check`` says recovery is needed and
from which redo point and exits 1; ``check --recover`` recovers explicitly. Every command
runs through the installed ``slonik`` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from slonik.aio import osfile
from slonik.engine.tools.check import check_database
from slonik.engine.tools.cli import main
from slonik.engine.tools.offline import lock_holder
from slonik.storage.page import BLCKSZ
from slonik.wal.control import DbState, read_control
from slonik.wal.lsn import format_lsn
from slonik.wal.reader import WalReader

from slonik import Database
from tests.engine.dbutil import SMALL
from tests.support.dirstate import dir_state

SLONIK = os.path.join(os.path.dirname(sys.executable), "slonik")
LOCK_FILE = "slonik.lock"
ACKS_BEFORE_CHECKPOINT = 150   # the child checkpoints here, so the redo point moves on
ACKS_BEFORE_KILL = 400
COLD_ROWS = 300
CHILD_TIMEOUT_SECONDS = 120

# The writer: opens the database, acknowledges each autocommit put on stdout, checkpoints
# once, and goes on until it is killed.
CHILD = """
import ast
import sys
from slonik import Database
path, method, settings = sys.argv[1], sys.argv[2], ast.literal_eval(sys.argv[3])
db = Database.open(path, io_method=method, **settings)
hot = db.kv("hot")
i = 0
while True:
    hot[b"k%06d" % i] = b"v%06d" % i * 20
    print(i, flush=True)
    i += 1
    if i == int(sys.argv[4]):
        db.checkpoint()
"""


def slonik(*args, check_rc: int | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([SLONIK, *map(str, args)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_SECONDS)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def crashed(tmp_path, io_method):
    """A database whose writer was SIGKILLed: a table "cold" written and shut down cleanly
    before, then a child putting into KV store "hot" (with one checkpoint) until killed.
    The lock file the child left is removed, so a tool that creates one is seen."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        t = db.create_table("cold", [("id", "int8"), ("name", "text")])
        with db.transaction():
            for i in range(COLD_ROWS):
                t.insert((i, f"cold row {i} " * 8))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), io_method, repr(SMALL),
                              str(ACKS_BEFORE_CHECKPOINT)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        acks = 0
        for _line in child.stdout:
            acks += 1
            if acks >= ACKS_BEFORE_KILL:
                break
        assert acks >= ACKS_BEFORE_KILL, child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=CHILD_TIMEOUT_SECONDS)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    control = read_control(str(path))
    assert control.state != DbState.SHUTDOWNED
    os.unlink(path / LOCK_FILE)
    return path, control


def test_read_only_tools_change_nothing_in_a_crashed_database(crashed, io_method):
    """The whole directory is hashed before and after each of check, check --json,
    waldump, waldump --json, controldata and controldata --json: identical each time (no
    recovery, no checkpoint, no lock file). check exits 1 saying recovery is needed from
    the control file's redo point; controldata shows the unclean state; waldump reads the
    records from that redo point to the end of valid WAL."""
    path, control = crashed
    redo = format_lsn(control.redo_lsn)
    before = dir_state(path)

    proc = slonik("check", path, "--io-method", io_method, check_rc=1)
    assert f"recovery needed from {redo}" in proc.stdout
    assert "slonik check --recover" in proc.stdout
    assert dir_state(path) == before

    report = json.loads(slonik("check", path, "--io-method", io_method, "--json",
                               check_rc=1).stdout)
    assert report["recovery_needed"] is True and report["redo_lsn"] == redo
    assert report["state"] == control.state.name and report["ok"] is False
    assert report["io_method"] == io_method and report["pages_checked"] > 0
    assert report["corrupt_blocks"] == []   # torn pages, if any, are repairable ones
    assert dir_state(path) == before

    proc = slonik("controldata", path, check_rc=0)
    assert control.state.name in proc.stdout and redo in proc.stdout
    slonik("controldata", path, "--json", check_rc=0)
    assert dir_state(path) == before

    proc = slonik("waldump", path, check_rc=0)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"lsn: {redo}") and lines[-1].startswith("end of WAL at ")
    dump = json.loads(slonik("waldump", path, "--json", check_rc=0).stdout)
    assert dump["start_lsn"] == redo and dump["records_read"] == len(lines) - 1
    assert dir_state(path) == before
    assert not (path / LOCK_FILE).exists()


def test_check_recover_then_check_again(crashed, io_method):
    """check --recover is the explicit way to recover: it exits 0, the control file says
    shut down afterwards, and a plain check then exits 0 and leaves the files alone."""
    path, _control = crashed
    proc = slonik("check", path, "--recover", "--io-method", io_method, check_rc=0)
    assert "no corrupt blocks found" in proc.stdout and "recovery needed" not in proc.stdout
    assert read_control(str(path)).state == DbState.SHUTDOWNED
    before = dir_state(path)
    slonik("check", path, "--io-method", io_method, check_rc=0)
    assert dir_state(path) == before


def _whole_page_records(path, control) -> dict[tuple[int, int, int], int]:
    """(rel, fork, block) -> LSN of the first record after the redo point that carries the
    block's full-page image or re-initialises it, read with the WAL reader directly."""
    out: dict[tuple[int, int, int], int] = {}
    for rr in WalReader(os.path.join(path, "wal"), control.wal_segment_size, control.redo_lsn):
        for b in rr.record.blocks:
            if b.image is not None or b.will_init:
                out.setdefault((b.rel, b.fork, b.block), rr.lsn)
    return out


def _damage(path, rel: int, block: int, *, torn: bool) -> None:
    """A torn write (the page's second half zeroed, as if only the first 4 KiB reached
    the disk) or a flipped byte, in block ``block`` of ``rel``'s main fork."""
    segno, in_segment = divmod(block, SMALL["segment_size"])
    name = str(rel) + (f".{segno}" if segno else "")
    with open(os.path.join(path, "base", name), "r+b") as f:
        f.seek(in_segment * BLCKSZ + BLCKSZ // 2)
        if torn:
            f.write(bytes(BLCKSZ // 2))
        else:
            b = f.read(1)
            f.seek(in_segment * BLCKSZ + BLCKSZ // 2)
            f.write(bytes([b[0] ^ 0xFF]))


def test_torn_pages_are_told_apart_from_corruption(crashed, io_method):
    """With recovery pending, a torn page that replay restores from a full-page image is
    listed as repairable (naming the record), while a damaged page no record after the
    redo point rewrites is corruption; check exits 1 and changes nothing. After check
    --recover the torn page is restored and only the corrupt one is still reported."""
    path, control = crashed
    cold = relfilenumber_offline(path, "cold")
    hot = relfilenumber_offline(path, "hot")
    whole = _whole_page_records(str(path), control)
    hot_blocks = sorted(b for (r, f, b) in whole if r == hot and f == 0)
    assert hot_blocks, "the hot store's pages carry full-page images after the redo point"
    assert not [k for k in whole if k[0] == cold], "nothing rewrote the cold table's pages"
    torn_block = hot_blocks[0]
    _damage(path, hot, torn_block, torn=True)
    _damage(path, cold, 1, torn=False)
    before = dir_state(path)

    report = json.loads(slonik("check", path, "--io-method", io_method, "--json",
                               check_rc=1).stdout)
    assert [(b["relation"], b["relfilenumber"], b["block"]) for b in report["corrupt_blocks"]] \
        == [("cold", cold, 1)]
    assert [(b["relation"], b["block"]) for b in report["repairable_blocks"]] == \
        [("hot", torn_block)]
    assert format_lsn(whole[(hot, 0, torn_block)]) in report["repairable_blocks"][0]["reason"]
    assert "may be repaired by recovery" in report["repairable_blocks"][0]["reason"]
    assert dir_state(path) == before

    report = json.loads(slonik("check", path, "--recover", "--io-method", io_method, "--json",
                               check_rc=1).stdout)
    assert report["recovery_needed"] is False and report["repairable_blocks"] == []
    assert [(b["relation"], b["block"]) for b in report["corrupt_blocks"]] == [("cold", 1)]


def relfilenumber_offline(path, name: str) -> int:
    """A relation's relfilenumber from ``slonik check --json`` (the database is not
    opened: it would recover)."""
    report = json.loads(slonik("check", path, "--json").stdout)
    return next(r["relfilenumber"] for r in report["relations"] if r["name"] == name)


def test_tools_on_a_database_open_in_another_process(tmp_path, io_method):
    """While a Database holds the lock (here, in the test process): check refuses with
    exit 1 and one line naming the holder's pid, because the files change under a running
    database; controldata and waldump read the files as they are, exit 0 and say on
    stderr that the database is open in that process. None of them writes a byte."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        db.kv("s")[b"k"] = b"v"
        # The database's own WAL writer prepares the next WAL segment just after open; let
        # it finish, so what changes below could only be the tools' doing.
        deadline = time.monotonic() + CHILD_TIMEOUT_SECONDS
        while db.stats().wal.segments_prepared < 1:
            assert time.monotonic() < deadline, "the WAL writer prepared no segment"
            time.sleep(0.01)
        before = dir_state(path)
        proc = slonik("check", path, "--io-method", io_method, check_rc=1)
        assert proc.stderr.startswith("slonik check: database ")
        assert f"open in process {os.getpid()}" in proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""
        for args in (("controldata", path), ("waldump", path)):
            proc = slonik(*args, check_rc=0)
            assert f"open in process {os.getpid()}" in proc.stderr
            assert proc.stdout
        assert "IN_PRODUCTION" in slonik("controldata", path).stdout
        assert dir_state(path) == before
    slonik("check", path, "--io-method", io_method, check_rc=0)


def test_check_never_creates_a_lock_file(tmp_path, io_method):
    """A cleanly closed database whose lock file is gone: check, controldata and waldump
    exit 0 and the directory has no lock file afterwards (and nothing else changed)."""
    path = tmp_path / "db"
    with Database.open(path, io_method=io_method, **SMALL) as db:
        db.kv("s")[b"k"] = b"v"
    os.unlink(path / LOCK_FILE)
    before = dir_state(path)
    slonik("check", path, "--io-method", io_method, check_rc=0)
    slonik("controldata", path, check_rc=0)
    slonik("waldump", path, check_rc=0)
    assert dir_state(path) == before


def test_lock_holder_without_the_kernel_lock_table(tmp_path):
    """Where /proc/locks cannot be read, lock_holder probes with a shared non-blocking
    flock on a read-only descriptor: it names the holder (from the lock file) while a
    Database is open, None after close, and leaves the lock file's bytes and mtime alone.
    With the table readable, the answer is the same pid."""
    path = tmp_path / "db"
    with Database.open(path, io_method="sync") as db:
        db.kv("s")[b"k"] = b"v"
        lock = path / LOCK_FILE
        before = (lock.read_bytes(), lock.stat().st_mtime_ns)
        assert lock_holder(str(path), proc_locks=str(tmp_path / "no-such-table")) == os.getpid()
        assert lock_holder(str(path)) == os.getpid()
        assert (lock.read_bytes(), lock.stat().st_mtime_ns) == before
    assert lock_holder(str(path), proc_locks=str(tmp_path / "no-such-table")) is None
    assert lock_holder(str(path)) is None
    os.unlink(path / LOCK_FILE)
    assert lock_holder(str(path)) is None and not (path / LOCK_FILE).exists()


class ReadOnlyWitness(osfile.OsLayer):
    """The real OS, recording every open's flags and refusing (AssertionError, never
    caught by the tools) any call that could change a file or a directory."""

    def __init__(self) -> None:
        self.opens: list[tuple[str, int]] = []

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self.opens.append((path, flags))
        assert flags & os.O_ACCMODE == os.O_RDONLY and not flags & (os.O_CREAT | os.O_TRUNC), \
            f"{path} opened with flags {flags:#o}"
        return super().open(path, flags, mode)

    def _refuse(self, *args, **kwargs) -> None:
        raise AssertionError(f"a read-only tool tried to write: {args!r}")

    pwritev = fsync = fdatasync = ftruncate = rename = unlink = mkdir = rmdir = _refuse
    fsync_directory = writeback = _refuse


def test_read_only_tools_open_only_read_only_through_the_os_boundary(crashed, io_method,
                                                                    capsys):
    """In-process, with an OS layer that records every open and fails any write, sync,
    truncate, rename, create or unlink: check (on the crashed database, on this io
    method), waldump and controldata open every file O_RDONLY and call nothing that
    writes; they opened the control file, WAL segments and relation segments."""
    path, _control = crashed
    witness = ReadOnlyWitness()
    with osfile.installed(witness):
        report = check_database(path, io_method=io_method)
        assert main(["waldump", str(path)]) == 0
        assert main(["controldata", str(path)]) == 0
    capsys.readouterr()
    assert report.recovery_needed and report.io_method == io_method
    opened = {os.path.relpath(p, path).split(os.sep)[0] for p, _flags in witness.opens}
    assert {"slonik_control", "wal", "base"} <= opened
