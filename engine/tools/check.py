"""``slonik check``: read every page of every relation fork and report each corrupt block,
like pg_checksums / amcheck. The logic lives here; ``engine/cli.py`` only prints it.

``check_database(path)`` opens the database (taking its lock and running crash recovery
if needed, so torn pages a crash left are repaired from WAL first), runs a checkpoint so
that the files hold every page the buffer pool has, and then reads the data files
directly: every fork of every file under ``base/`` — the catalog (relfilenumber 1), each
relation the catalog names, and any file no catalog row names (kind ``"orphan"``) — in
runs of ``CHECK_READ_BLOCKS`` blocks through ``Smgr.readv``. Each page gets
``verify_page`` (header and checksum, via ``PageRunVerifier``) and then, when that passes,
``page_check`` (line pointers, item extents, free space), so a page with a good checksum
but a broken structure is reported too. It never stops at the first bad block.

When the database cannot be opened (say the catalog itself is damaged), the files are
still checked, under the database's lock, without names; ``open_error`` says why.

Invariants:
1. Every block below each fork's size is checked exactly once; ``pages_checked`` counts
   them, ``corrupt_blocks`` lists every one that failed, in (relfilenumber, fork, block)
   order.
2. Nothing is written to the data files except by ``Database.open``/``checkpoint``/
   ``close`` themselves (recovery, the checkpoint); the check only reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from slonik.aio import osfile
from slonik.aio.errors import IOFailure, SlonikError
from slonik.engine.catalog import CATALOG_RELFILENUMBER
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ, PageCorruptError, PageRunVerifier, page_check
from slonik.storage.smgr import Fork, Smgr
from slonik.wal.control import CONTROL_FILE_NAME, read_control

__all__ = ["CheckReport", "RelationCheck", "CorruptBlock", "check_database",
           "CHECK_READ_BLOCKS"]

CHECK_READ_BLOCKS = 64      # blocks per read (512 KiB): big sequential reads, a small buffer
CATALOG_NAME = "(catalog)"
ORPHAN_NAME = "(no catalog entry)"
_FILE_RE = re.compile(r"^(\d+)(_fsm|_vm)?(?:\.(\d+))?$")
_SUFFIX_FORK = {None: Fork.MAIN, "_fsm": Fork.FSM, "_vm": Fork.VM}


@dataclass(frozen=True)
class CorruptBlock:
    relation: str           # the relation's name, CATALOG_NAME or ORPHAN_NAME
    relfilenumber: int
    fork: str               # "main", "fsm", "vm"
    block: int
    reason: str


@dataclass(frozen=True)
class RelationCheck:
    name: str
    kind: str               # "kv", "table", "catalog" or "orphan"
    relfilenumber: int
    fork: str
    pages_checked: int
    corrupt_pages: int


@dataclass(frozen=True)
class CheckReport:
    path: str
    io_method: str | None   # what the database was opened with (None: it could not be)
    relations: tuple[RelationCheck, ...]
    corrupt_blocks: tuple[CorruptBlock, ...]
    open_error: str | None  # why the database could not be opened, if it could not

    @property
    def pages_checked(self) -> int:
        return sum(r.pages_checked for r in self.relations)

    @property
    def ok(self) -> bool:
        return not self.corrupt_blocks and self.open_error is None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pages_checked"] = self.pages_checked
        d["ok"] = self.ok
        return d

    def to_json(self) -> str:
        """The report as one JSON object (``slonik check --json``)."""
        return json.dumps(self.as_dict(), sort_keys=True)


def _relation_files(path: str) -> list[tuple[int, Fork]]:
    """(relfilenumber, fork) of every fork that has a segment 0 under ``base/``."""
    base = os.path.join(path, "base")
    if not osfile.exists(base):
        return []
    forks = set()
    for name in osfile.listdir(base):
        m = _FILE_RE.match(name)
        if m and m.group(3) is None:
            forks.add((int(m.group(1)), _SUFFIX_FORK[m.group(2)]))
    return sorted(forks)


def _check_fork(smgr: Smgr, name: str, rel: int, fork: Fork, pool: bytearray,
                verifier: PageRunVerifier, bad: list[CorruptBlock],
                progress: Callable[[int], None] | None) -> int:
    """Read and verify every block of one fork; append failures to ``bad``; return how
    many blocks were checked."""
    try:
        nblocks = smgr.nblocks(rel, fork)
    except (DataCorruptionError, IOFailure) as exc:
        bad.append(CorruptBlock(name, rel, fork.label, 0, f"cannot size the fork: {exc}"))
        return 0
    views = [memoryview(pool)[i * BLCKSZ:(i + 1) * BLCKSZ] for i in range(CHECK_READ_BLOCKS)]
    for first in range(0, nblocks, CHECK_READ_BLOCKS):
        n = min(CHECK_READ_BLOCKS, nblocks - first)
        unreadable: dict[int, str] = {}
        try:
            smgr.readv(rel, fork, first, views[:n])
        except (DataCorruptionError, IOFailure):
            for k in range(n):  # find which blocks cannot be read, one at a time
                try:
                    smgr.readv(rel, fork, first + k, views[k:k + 1])
                except (DataCorruptionError, IOFailure) as exc:
                    unreadable[k] = f"read failed: {exc}"
                    views[k][:] = bytes(BLCKSZ)
        failed = {k: v.reason for k, v in verifier.verify(range(n), rel, fork, first)}
        failed.update(unreadable)
        for k in range(n):
            reason = failed.get(k)
            if reason is None:
                try:
                    page_check(views[k])
                except PageCorruptError as exc:
                    reason = f"page structure: {exc}"
            if reason is not None:
                bad.append(CorruptBlock(name, rel, fork.label, first + k, reason))
        if progress is not None:
            progress(n)
    return nblocks


def _check_files(smgr: Smgr, names: dict[int, tuple[str, str]],
                 progress: Callable[[int], None] | None) -> tuple[list, list]:
    pool = bytearray(CHECK_READ_BLOCKS * BLCKSZ)
    verifier = PageRunVerifier(pool)
    relations: list[RelationCheck] = []
    bad: list[CorruptBlock] = []
    for rel, fork in _relation_files(smgr.data_dir):
        name, kind = names.get(rel, (ORPHAN_NAME, "orphan"))
        before = len(bad)
        n = _check_fork(smgr, name, rel, fork, pool, verifier, bad, progress)
        relations.append(RelationCheck(name, kind, rel, fork.label, n, len(bad) - before))
    return relations, bad


@contextlib.contextmanager
def _database_lock(path: str):
    """Hold the database's lock file (used only when Database.open failed)."""
    from slonik.engine.database import LOCK_FILE_NAME, DatabaseLockedError

    fd = osfile.open(os.path.join(path, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseLockedError(f"database {path} is open in another process; "
                                      f"close it there before checking") from None
        yield
    finally:
        osfile.close(fd)


def check_database(path: str | os.PathLike, *, io_method: str = "auto",
                   progress: Callable[[int], None] | None = None) -> CheckReport:
    """Verify every page of every relation of the database at ``path``; see the module
    docstring. ``progress(n)`` is called after each run of ``n`` blocks. Raises
    ``NotADatabaseError`` when ``path`` holds no database (nothing is created) and
    ``DatabaseLockedError`` when another process has it open."""
    from slonik.engine.database import Database, DatabaseLockedError, NotADatabaseError

    path = os.path.abspath(os.fspath(path))
    if not osfile.exists(os.path.join(path, CONTROL_FILE_NAME)):
        raise NotADatabaseError(f"{path} is not a Slonik database (no {CONTROL_FILE_NAME})")
    names = {CATALOG_RELFILENUMBER: (CATALOG_NAME, "catalog")}
    try:
        db = Database.open(path, io_method=io_method)
    except DatabaseLockedError:
        raise
    except SlonikError as exc:
        # The files are still worth checking: under the lock, without names.
        with _database_lock(path):
            segment_size = read_control(path).segment_size
            with Smgr(path, segment_size=segment_size) as smgr:
                relations, bad = _check_files(smgr, names, progress)
        return CheckReport(path, None, tuple(relations), tuple(bad),
                           f"{type(exc).__name__}: {exc}")
    with db:
        used_method = db.io_method
        for r in db.stats().relations:
            names[r.relfilenumber] = (r.name, r.kind)
        db.checkpoint()  # the files now hold every page the pool had changed
        with Smgr(path, segment_size=db.settings.segment_size) as smgr:
            relations, bad = _check_files(smgr, names, progress)
    return CheckReport(path, used_method, tuple(relations), tuple(bad), None)
