"""Crash recovery (engine/recovery.py) with a small test resource manager, through the crash
simulator (aio/crashsim.py): at hundreds of random crash points recovery succeeds, replays
every flushed record and nothing after the last valid one, restores torn data pages from
their full-page images, and replaying twice gives the same pages."""

from __future__ import annotations

import os
import random
import shutil
import struct
import threading

import pytest
from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.aio.errors import SlonikError
from slonik.engine import recovery
from slonik.engine.access import btree_wal
from slonik.engine.checkpointer import Checkpointer
from slonik.engine.database import Database
from slonik.engine.recovery import RedoAction, bootstrap, startup
from slonik.engine.smgr_wal import create_relation
from slonik.engine.tools.bench_replay import build_crashed_database
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import (
    BLCKSZ,
    init_page,
    page_add_item,
    page_free_space,
    page_get_item,
    page_get_lsn,
    page_is_new,
    page_set_lsn,
)
from slonik.storage.smgr import Fork, Smgr
from slonik.wal.control import DbState, read_control
from slonik.wal.rmgr import RM_TEST, ResourceManager, register_rmgr
from slonik.wal.walpage import align_lsn
from slonik.wal.xlog import BlockSpec

from tests.support.crashsim import CrashSimLayer, SimulatedCrash

SEG = 64 * 1024
SEGMENT_BLOCKS = 8
WAL_BUFFERS = 8
REL = 20000
TEST_ADD = 0x10
_ADD = struct.Struct("<H")


def _redo(ctx, rr) -> None:
    action, buf = ctx.read_buffer_for_redo(rr, 0)
    if action != RedoAction.NEEDS_REDO:
        return
    page = ctx.bufmgr.page(buf)
    if rr.record.blocks[0].will_init:
        init_page(page)
    (n,) = _ADD.unpack_from(rr.record.payload, 0)
    page_add_item(page, bytes(rr.record.payload[_ADD.size:_ADD.size + n]))
    ctx.finish_redo_buffer(rr, buf)


TEST_RMGR = ResourceManager(RM_TEST, "test", _redo, lambda rec: f"add {len(rec.payload)} bytes")
register_rmgr(TEST_RMGR)


def _hole(page) -> tuple[int, int]:
    lower, upper = struct.unpack_from("<HH", page, 14)
    return (lower, upper) if 24 <= lower <= upper <= BLCKSZ else (0, 0)


class MiniDb:
    """Just enough of an engine: smgr, buffers, WAL, checkpointer and one relation changed
    only through test-rmgr records."""

    def __init__(self, d: str, io_method: str, *, create: bool = False,
                 shared_buffers: int = 16) -> None:
        self.aio = Aio(io_method, io_max_concurrency=16)
        self.smgr = Smgr(d, segment_size=SEGMENT_BLOCKS, max_files=4, aio=self.aio)
        self.bm = BufferManager(self.smgr, self.aio, shared_buffers=shared_buffers,
                                flush_wal=lambda lsn: self.wal.flush(lsn))
        if create:
            bootstrap(d, self.aio, wal_segment_size=SEG, segment_size=SEGMENT_BLOCKS,
                      wal_buffers=WAL_BUFFERS)
        self.wal, control, self.info = startup(data_dir=d, aio=self.aio, smgr=self.smgr,
                                               bufmgr=self.bm, wal_buffers=WAL_BUFFERS)
        self.cp = Checkpointer(wal=self.wal, bufmgr=self.bm, smgr=self.smgr, data_dir=d,
                               control=control, state=lambda: (1, 30000, b""))
        if create:
            create_relation(self.wal, self.smgr, REL, Fork.MAIN)

    def nblocks(self) -> int:
        return self.smgr.nblocks(REL, Fork.MAIN) if self.smgr.exists(REL, Fork.MAIN) else 0

    def add(self, block: int, item: bytes) -> int:
        """Append ``item`` to ``block`` (the next new block when block == nblocks)."""
        bm = self.bm
        fresh = block >= self.nblocks()
        if fresh:
            (buf,) = bm.extend(REL, Fork.MAIN, 1)
        else:
            buf = bm.read_buffer(REL, Fork.MAIN, block)
            bm.lock_exclusive(buf)
        try:
            page = bm.page(buf)
            old_lsn = page_get_lsn(page)
            if fresh:
                init_page(page)
            page_add_item(page, item)
            _s, end = self.wal.insert(RM_TEST, TEST_ADD, 0, _ADD.pack(len(item)) + item,
                                      [BlockSpec(REL, Fork.MAIN, block, page, old_lsn,
                                                 will_init=fresh, hole=_hole(page))])
            page_set_lsn(page, end)
            bm.mark_dirty(buf)
        finally:
            bm.unlock_exclusive(buf)
            bm.unpin(buf)
        return end

    def pages(self) -> dict[int, list[bytes]]:
        out = {}
        for b in range(self.nblocks()):
            buf = self.bm.read_buffer(REL, Fork.MAIN, b)
            page = self.bm.page(buf)
            items = []
            if not page_is_new(page):
                n = (struct.unpack_from("<H", page, 14)[0] - 24) // 4
                items = [bytes(page_get_item(page, i + 1)) for i in range(n)]
            out[b] = items
            self.bm.unpin(buf)
        return out

    def raw_pages(self) -> list[bytes]:
        out = []
        for b in range(self.nblocks()):
            buf = self.bm.read_buffer(REL, Fork.MAIN, b)
            page = bytes(self.bm.page(buf))
            out.append(page[:8] + page[12:])  # the checksum is set when a page is written
            self.bm.unpin(buf)
        return out

    def abandon(self) -> None:
        """After a simulated crash: stop the io workers without any I/O."""
        self.aio.method.shutdown()


def workload(db: MiniDb, rng: random.Random, ops: list, durable: list, steps: int) -> None:
    """Random appends (mostly to the last few blocks, sometimes a new block), flushes and
    checkpoints. ``ops`` gets (end_lsn, block, item); ``durable`` the flushed LSNs."""
    for _ in range(steps):
        r = rng.random()
        if r < 0.08:
            db.wal.flush()
            durable.append(db.wal.flush_lsn)
        elif r < 0.11:
            db.cp.checkpoint()
            durable.append(db.wal.flush_lsn)
        else:
            n = db.nblocks()
            item = rng.randbytes(rng.randrange(8, 600))
            block = rng.randrange(max(0, n - 6), n + 1) if n else 0
            if block < n:
                buf = db.bm.read_buffer(REL, Fork.MAIN, block)
                room = page_free_space(db.bm.page(buf))
                db.bm.unpin(buf)
                if room < len(item) + 8:
                    block = n
            end = db.add(block, item)
            ops.append((end, block, item))


def expected_pages(ops: list, end_lsn: int) -> dict[int, list[bytes]]:
    pages: dict[int, list[bytes]] = {}
    for end, block, item in ops:
        if end <= end_lsn:
            pages.setdefault(block, []).append(item)
    return pages


def run_crash_point(tmp_path, io_method: str, seed: int) -> dict:
    d = str(tmp_path / f"db{seed}")
    os.makedirs(d)
    rng = random.Random(seed)
    db = MiniDb(d, io_method, create=True)
    db.cp.checkpoint()
    ops: list = []
    durable: list = [db.wal.flush_lsn]
    layer = CrashSimLayer(d, crash_after_ops=rng.randrange(1, 120))
    errors: list = []

    def run() -> None:
        try:
            workload(db, rng, ops, durable, 400)
        except SimulatedCrash:
            pass
        except BaseException as exc:  # the crash may surface as an I/O error: must be later
            if not layer.crashed:
                errors.append(exc)
            else:
                assert isinstance(exc, OSError | SlonikError), exc

    with osfile.installed(layer):
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(60)
        if not layer.crashed:
            layer.crash_now()
        t.join(2)  # a worker-method issuer may wait forever on an I/O the crash killed
        db.abandon()
    assert not errors, errors
    report = layer.apply_crash(random.Random(seed))
    flushed = max(durable)
    db2 = MiniDb(d, io_method)
    info = db2.info
    assert align_lsn(info.end_lsn) >= flushed, (  # flush_lsn counts the alignment padding
        f"recovery stopped at {info.end_lsn:#x} ({info.stop_reason}) before the flushed "
        f"{flushed:#x}\n{report}")
    want = expected_pages(ops, info.end_lsn)
    got = db2.pages()
    for b in set(want) | set(got):
        assert got.get(b, []) == want.get(b, []), f"block {b} differs after recovery\n{report}"
    # Replay again over the recovered pages: same bytes.
    db2.bm.flush_all()
    first = db2.raw_pages()
    db2.wal.close()
    db2.aio.shutdown()
    assert read_control(d).state == DbState.IN_CRASH_RECOVERY or not info.crashed
    db3 = MiniDb(d, io_method)
    assert db3.raw_pages() == first
    db3.wal.close()
    db3.aio.shutdown()
    torn = sum(1 for f in report.files if "base" in f.path
               for c in f.changes if "torn" in str(c))
    return {"torn_data_writes": torn, "replayed": info.replayed, "ops": len(ops)}


CRASH_POINTS = int(os.environ.get("SLONIK_CRASH_POINTS", "60"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("io_method", ["sync", "worker"])
def test_recovery_at_random_crash_points(tmp_path, io_method):
    """For CRASH_POINTS seeds per method (two methods: io_uring bypasses the OS boundary, so
    it cannot be crash-simulated): a workload of appends, flushes and checkpoints crashes
    at a random mutating OS call; the simulated disk keeps, drops or tears every unsynced
    write; recovery must replay every flushed record, exactly the records up to the end of
    valid WAL, and give the same pages when run twice. Some runs must have torn data-page
    writes (so full-page-image restore really happened)."""
    torn = 0
    for seed in range(CRASH_POINTS):
        torn += run_crash_point(tmp_path, io_method, 1000 * (io_method == "worker") + seed)[
            "torn_data_writes"]
    assert torn > 0


@pytest.mark.torture
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("io_method", ["sync", "worker"])
def test_recovery_torture(tmp_path, io_method):
    """As above, 400 crash points per method."""
    for seed in range(400):
        run_crash_point(tmp_path, io_method, 50_000 + seed)


def test_clean_restart_replays_only_the_checkpoint(tmp_path, io_method):
    """After a shutdown checkpoint the next startup replays one record (the checkpoint
    itself), reports no crash, and the pages are intact."""
    d = str(tmp_path)
    db = MiniDb(d, io_method, create=True)
    for i in range(30):
        db.add(i // 10, bytes([i]) * 100)
    db.cp.checkpoint(shutdown=True)
    before = db.pages()
    db.wal.close()
    db.aio.shutdown()
    db2 = MiniDb(d, io_method)
    assert not db2.info.crashed and db2.info.replayed == 1
    assert db2.pages() == before
    db2.aio.shutdown()


def _recover_copy(pristine: str, dest: str, io_method: str, fast: list | None = None):
    """(recovery figures, KV items, table rows) of a recovered copy of ``pristine``; the
    number of records redone in C runs appended to ``fast``."""
    shutil.copytree(pristine, dest)
    db = Database.open(dest, io_method=io_method)
    try:
        info = db._recovery
        kv = list(db.kv("kv").items())
        rows = sorted(db.table("t").scan())
    finally:
        db.close()
    if fast is not None:
        fast.append(info.fast_records)
    return (info.replayed, info.start_lsn, info.end_lsn, info.stop_reason,
            info.replay_bytes), kv, rows


def test_recovery_with_the_c_scanner_replays_as_record_at_a_time(tmp_path, io_method,
                                                                   monkeypatch):
    """A database killed (os._exit, no close) after a checkpoint and a few MB of table
    inserts and random KV puts (heap and B+tree records, full-page images, records
    continued across pages) recovers to the same state with the C batch scanner as with
    the record-at-a-time reader: same records replayed, same end of WAL and stop reason,
    same KV items and table rows. Checked by recovering three copies of the crashed
    directory: the second with the fast path's C field reader off (every record decoded
    and redone through its resource manager), the third with engine.recovery's scanner
    set to None too and B+tree redo counting a block's actions by decoding them."""
    pristine = build_crashed_database(str(tmp_path / "build"), 3, preload_rows=2000)
    fast: list[int] = []
    with_c = _recover_copy(pristine, str(tmp_path / "c"), io_method, fast)
    # The scanner's batches decoded record by record (no C runs of B+tree records).
    monkeypatch.setattr(recovery, "C_FIELDS", False)
    decoded = _recover_copy(pristine, str(tmp_path / "decoded"), io_method, fast)
    monkeypatch.setattr(recovery, "C_SCANNER", None)
    monkeypatch.setattr(btree_wal, "C_REDO_BLOCK", False)   # actions counted by decoding
    without = _recover_copy(pristine, str(tmp_path / "py"), io_method, fast)
    assert with_c == decoded == without
    assert fast[0] > with_c[0][0] // 2 and fast[1:] == [0, 0]
    replayed, _start, _end, stop_reason, replay_bytes = with_c[0]
    assert replay_bytes > 2_000_000 and replayed > 1000
    assert stop_reason.startswith("zeroes at"), stop_reason
    assert len(with_c[2]) >= 2000 and len(with_c[1]) > 1000
