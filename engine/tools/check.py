"""``slonik check``: read every page of every relation fork and report each bad block, like
pg_checksums / amcheck, without changing a byte. The logic lives here; ``cli.py`` prints it.

``check_database(path)`` never opens a ``Database``: no recovery, no checkpoint, no lock
file, no file created or written (DESIGN §7). Everything goes through ``offline.py``: every
fork of every file under ``base/`` — the catalog (relfilenumber 1), each relation the
catalog names, and any file no catalog row names (kind ``"orphan"``) — is read ``O_RDONLY``
in runs of ``READ_RUN_BLOCKS`` blocks through an ``Aio`` of the chosen io method. Each page
gets ``verify_page`` (header and checksum, via ``PageRunVerifier``) and then, when that
passes, ``page_check`` (line pointers, item extents, free space), so a page with a good
checksum but a broken structure is reported too. It never stops at the first bad block.
Names come from the catalog's pages as they are on disk; when a catalog page cannot be
read, the files are still checked and ``open_error`` says which names may be missing.

Each KV store is a B+tree: when every page of its main fork verified and the database was
shut down cleanly, the tree's own check (``BTree.check``, like amcheck's
``bt_index_parent_check``: keys ordered within and across pages, high keys and
right-links consistent, every child's range inside its parent's, every overflow
reference a valid chain, the free list sound) runs over ``offline.OfflinePages``, and its
first violation is listed as a corrupt block naming relation and block.

A database that was not shut down cleanly (control file state not ``SHUTDOWNED``) needs
recovery: the check still verifies every page, says so (``recovery_needed``, and the redo
point replay would start from), and is never ``ok``. Pages of such a database may be torn or
stale — a crash can interrupt a page write — and replay repairs a page whole when a record
after the redo point carries its full-page image (or re-initialises it). The check reads
the WAL from the redo point (read-only, as recovery would) to tell the two apart: a bad
page that replay restores whole is listed in ``repairable_blocks`` ("may be repaired by
recovery", with the LSN of that record); any other bad page is corruption
(``corrupt_blocks``) whatever the state. ``slonik check --recover`` (``recover_database``)
is the explicit way to recover first: it opens the database, which recovers, closes it,
then checks.

A database open in another process (its lock held, found in the kernel's lock table without
touching the lock) is refused with ``DatabaseLockedError``: its files change while it runs
and its buffer pool holds pages the files do not, so no answer about them would be true.

Invariants:
1. Every block below each fork's size is checked exactly once; ``pages_checked`` counts
   them; ``corrupt_blocks`` and ``repairable_blocks`` list every one that failed, each in
   (relfilenumber, fork, block) order, and no block is in both.
2. ``check_database`` writes nothing: every file is opened ``O_RDONLY`` (offline.py).
3. ``ok`` only when no block failed, every catalog page was read, no recovery is
   pending, and every table index agrees with its heap (``check_index``: checked when
   the pages are sound and the database was shut down cleanly; ``index_problems``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from slonik.aio.core import Aio
from slonik.engine.access.btree import BTree
from slonik.engine.catalog import CATALOG_RELFILENUMBER
from slonik.engine.database import Database, DatabaseLockedError
from slonik.engine.tools.check_index import check_table_indexes
from slonik.engine.tools.offline import (
    READ_RUN_BLOCKS,
    OfflinePages,
    RecoveryImages,
    RelationFileReader,
    catalog_rows,
    lock_holder,
    recovery_images,
    relation_forks,
    require_database,
    shutdown_visibility,
    verified_pages,
    visible_relations,
)
from slonik.storage.errors import DataCorruptionError
from slonik.storage.smgr import Fork
from slonik.wal.control import DbState, read_control
from slonik.wal.lsn import format_lsn

__all__ = ["CheckReport", "RelationCheck", "CorruptBlock", "check_database",
           "recover_database", "CHECK_READ_BLOCKS"]

CHECK_READ_BLOCKS = READ_RUN_BLOCKS   # blocks per read (512 KiB)
CATALOG_NAME = "(catalog)"
ORPHAN_NAME = "(no catalog entry)"


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
    corrupt_pages: int      # blocks in corrupt_blocks (repairable ones not counted)
    repairable_pages: int = 0


@dataclass(frozen=True)
class CheckReport:
    path: str
    io_method: str | None   # the io method the pages were read with
    relations: tuple[RelationCheck, ...]
    corrupt_blocks: tuple[CorruptBlock, ...]
    open_error: str | None  # why (some) relation names could not be read from the catalog
    state: str = DbState.SHUTDOWNED.name        # the control file's state
    recovery_needed: bool = False
    redo_lsn: str | None = None                 # where replay would start, when needed
    repairable_blocks: tuple[CorruptBlock, ...] = field(default=())
    wal_error: str | None = None                # why the WAL could not be read to its end
    index_problems: tuple[str, ...] = ()        # table indexes that disagree with the heap
    indexes_checked: int = 0

    @property
    def pages_checked(self) -> int:
        return sum(r.pages_checked for r in self.relations)

    @property
    def ok(self) -> bool:
        return (not self.corrupt_blocks and not self.repairable_blocks
                and self.open_error is None and not self.recovery_needed
                and self.wal_error is None and not self.index_problems)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pages_checked"] = self.pages_checked
        d["ok"] = self.ok
        return d

    def to_json(self) -> str:
        """The report as one JSON object (``slonik check --json``)."""
        return json.dumps(self.as_dict(), sort_keys=True)


class _Checker:
    """One pass over the files: the state a check accumulates, block by block."""

    def __init__(self, reader: RelationFileReader, images: RecoveryImages | None,
                 progress: Callable[[int], None] | None) -> None:
        self.reader = reader
        self.images = images
        self.progress = progress
        self.names: dict[int, tuple[str, str]] = {CATALOG_RELFILENUMBER: (CATALOG_NAME,
                                                                          "catalog")}
        self.catalog_problems: list[str] = []
        self.relations: list[RelationCheck] = []
        self.bad: list[CorruptBlock] = []
        self.repairable: list[CorruptBlock] = []

    def _failed(self, name: str, rel: int, fork: Fork, block: int, reason: str) -> None:
        lsn = None if self.images is None else self.images.restores(rel, int(fork), block)
        if lsn is None:
            self.bad.append(CorruptBlock(name, rel, fork.label, block, reason))
        else:
            self.repairable.append(CorruptBlock(
                name, rel, fork.label, block,
                f"{reason}; may be repaired by recovery (the record at {format_lsn(lsn)} "
                f"restores the whole page)"))

    def _catalog_page(self, page: memoryview, block: int) -> None:
        try:
            rows = catalog_rows(page, block)
        except (DataCorruptionError, ValueError) as exc:
            self.catalog_problems.append(f"block {block}: {exc}")
            return
        for row in rows:
            self.names[row.relfilenumber] = (row.name, row.kind)
            for index in row.indexes:
                self.names[index.relfilenumber] = (f"{row.name}.{index.name}", "index")

    def _check_tree(self, name: str, rel: int) -> None:
        """The B+tree structure check of KV store ``rel`` (its pages all verified)."""
        try:
            BTree.open(rel, OfflinePages(self.reader), None).check()
        except DataCorruptionError as exc:
            block = exc.block if exc.block is not None else 0
            self.bad.append(CorruptBlock(name, rel, Fork.MAIN.label, block,
                                         f"B+tree structure: {exc}"))

    def check_fork(self, rel: int, fork: Fork) -> None:
        name, kind = self.names.get(rel, (ORPHAN_NAME, "orphan"))
        bad_before, repairable_before = len(self.bad), len(self.repairable)
        try:
            nblocks = self.reader.nblocks(rel, fork)
        except (DataCorruptionError, OSError) as exc:
            self.bad.append(CorruptBlock(name, rel, fork.label, 0, f"cannot size the fork: {exc}"))
            nblocks = 0
        catalog = rel == CATALOG_RELFILENUMBER and fork == Fork.MAIN
        for block, page, reason in verified_pages(self.reader, rel, fork, nblocks,
                                                  progress=self.progress):
            if reason is not None:
                self._failed(name, rel, fork, block, reason)
                if catalog:
                    self.catalog_problems.append(f"block {block}: {reason}")
            elif catalog:
                self._catalog_page(page, block)
        if kind == "kv" and fork == Fork.MAIN and self.images is None and \
                len(self.bad) == bad_before:
            self._check_tree(name, rel)
        self.relations.append(RelationCheck(name, kind, rel, fork.label, nblocks,
                                            len(self.bad) - bad_before,
                                            len(self.repairable) - repairable_before))


def check_database(path: str | os.PathLike, *, io_method: str = "auto",
                   progress: Callable[[int], None] | None = None) -> CheckReport:
    """Verify every page of every relation of the database at ``path`` without writing
    anything; see the module docstring. ``progress(n)`` is called after each run of ``n``
    blocks. Raises ``NotADatabaseError`` when ``path`` holds no database (nothing is
    created), ``DatabaseLockedError`` when another process has it open, and
    ``ControlFileError`` when its control file is damaged."""
    path = require_database(path)
    holder = lock_holder(path)
    if holder is not None:
        raise DatabaseLockedError(
            f"database {path} is open in process {holder}: its files change while it runs, "
            f"so check reads only a closed database; close it there first (controldata and "
            f"waldump work on an open database)")
    control = read_control(path)
    recovery_needed = control.state != DbState.SHUTDOWNED
    images = recovery_images(path, control) if recovery_needed else None
    with Aio(io_method) as aio:
        checker = _Checker(RelationFileReader(path, aio, control.segment_size), images,
                           progress)
        # relation_forks is sorted, so the catalog (relfilenumber 1) is read first and
        # names every relation after it.
        for rel, fork in relation_forks(path):
            checker.check_fork(rel, fork)
        index_problems: list[str] = []
        indexes_checked = 0
        if not (recovery_needed or checker.bad or checker.catalog_problems):
            try:
                reader = checker.reader
                visibility = shutdown_visibility(path, control)
                for entry in visible_relations(reader, visibility).values():
                    if entry.kind == "table" and entry.indexes:
                        for result in check_table_indexes(reader, entry, visibility):
                            indexes_checked += 1
                            index_problems += [f"table {entry.name!r}: {p}"
                                               for p in result.problems]
            except (DataCorruptionError, ValueError) as exc:
                index_problems.append(f"indexes could not be verified: {exc}")
        used_method = aio.method.name
    open_error = None
    if checker.catalog_problems:
        open_error = ("the catalog could not be read in full, so relations it names there "
                      "are unnamed: " + "; ".join(checker.catalog_problems))
    return CheckReport(
        path, used_method, tuple(checker.relations), tuple(checker.bad), open_error,
        state=control.state.name, recovery_needed=recovery_needed,
        redo_lsn=format_lsn(control.redo_lsn) if recovery_needed else None,
        repairable_blocks=tuple(checker.repairable),
        wal_error=None if images is None else images.error,
        index_problems=tuple(index_problems), indexes_checked=indexes_checked)


def recover_database(path: str | os.PathLike, *, io_method: str = "auto") -> None:
    """Run crash recovery explicitly (``slonik check --recover``): open the database, which
    recovers and writes its end-of-recovery checkpoint, and close it. The one check path
    that writes, and only when asked."""
    path = require_database(path)
    with Database.open(path, io_method=io_method):
        pass
