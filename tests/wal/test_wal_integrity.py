"""WAL integrity at open (DESIGN §7, issue 11): damage below a durable end that a later
flush knew of is corruption in the middle — ``Database.open`` refuses, names the LSN and
leaves every file of the directory byte for byte as it was — while damage only in the
bytes of the flush in progress at the crash is a torn tail that ends recovery quietly with
every acknowledged commit present.

How: a database is written through the real engine on each io method (64 KiB WAL segments,
so records span pages and segments; transactions of ten keys, each commit one flush; a
checkpoint a quarter of the way in) and its directory copied while it is open, after the
last commit returned — the files a SIGKILL at that instant leaves (nothing is in flight:
every commit was flushed, no background checkpoint is due). Each case damages a fresh copy.
"Small" WALs are shorter than ``wal_buffers`` (4 MiB), "large" ones many times longer than
it (``wal_buffers`` = 8 pages), which the rule this replaces could not protect. The issue's
own scenario runs a real child process killed with SIGKILL.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading

import pytest
from slonik.wal.control import read_control
from slonik.wal.errors import WalError
from slonik.wal.lsn import format_lsn
from slonik.wal.reader import WalCorruptMiddleError, WalReader
from slonik.wal.walpage import (
    PAGE_HEADER_SIZE,
    WAL_PAGE_SIZE,
    WalPageError,
    decode_page_header,
    encode_page_header,
    parse_segment_file_name,
    segment_file_name,
)

from slonik import Database
from tests.support.dirstate import dir_state
from tests.wal.writer_child import BATCH_KEYS, STORE_NAME, key_of, value_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEG = 64 * 1024
TRANSACTIONS = 120                  # of BATCH_KEYS keys: ~1 MB of WAL with the big values
CHECKPOINT_AT = TRANSACTIONS // 4
WAL_BUFFERS = {"small": 512, "large": 8}   # pages: the WAL is < 4 MiB, or > 64 KiB
SETTINGS = dict(wal_segment_size=SEG, checkpoint_timeout=86400, max_wal_size=1 << 30)
DAMAGE_BYTES = 64
ISSUE_KEYS = 5000
ISSUE_DAMAGE_OFFSET = 128 * 1024 + 1000    # bytes into the first WAL segment file
CHILD_TIMEOUT_SECONDS = 600

_built: dict[tuple[str, str], tuple[str, int]] = {}


# --- the directory, before and after ----------------------------------------------------------

def assert_refused_untouched(path: str, io_method: str, lsn: int,
                             error: type[WalError] = WalCorruptMiddleError) -> WalError:
    before = dir_state(path)
    with pytest.raises(WalError) as ei:
        Database.open(path, io_method=io_method).close()
    e = ei.value
    assert isinstance(e, error), repr(e)
    assert format_lsn(lsn) in str(e), str(e)
    assert "refusing to start" in str(e) or error is not WalCorruptMiddleError
    after = dir_state(path)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the failed open changed {changed}"
    return e


# --- WAL layout ------------------------------------------------------------------------------

def wal_dir(path: str) -> str:
    return os.path.join(path, "wal")


def records(path: str) -> list[tuple[int, int]]:
    """(lsn, end_lsn) of every record from the redo point to the end of valid WAL."""
    c = read_control(path)
    return [(rr.lsn, rr.end_lsn) for rr in WalReader(wal_dir(path), c.wal_segment_size,
                                                       c.redo_lsn)]


def max_stamp(path: str) -> int:
    """The highest flush stamp on a page valid at its position: WAL below it is durable."""
    seg = read_control(path).wal_segment_size
    best = 0
    for name in os.listdir(wal_dir(path)):
        segno = parse_segment_file_name(name)
        if segno is None:
            continue
        with open(os.path.join(wal_dir(path), name), "rb") as f:
            data = f.read()
        for off in range(0, len(data) - WAL_PAGE_SIZE + 1, WAL_PAGE_SIZE):
            try:
                hdr = decode_page_header(data[off:off + PAGE_HEADER_SIZE], segno * seg + off, seg)
            except WalPageError:
                continue
            best = max(best, hdr.prev_flush_end)
    return best


def file_at(path: str, lsn: int) -> tuple[str, int]:
    seg = read_control(path).wal_segment_size
    return os.path.join(wal_dir(path), segment_file_name(lsn // seg)), lsn % seg


def overwrite(path: str, lsn: int, nbytes: int, seed: int) -> None:
    """Overwrite ``nbytes`` of WAL record bytes at ``lsn`` (never a page header) with junk."""
    assert PAGE_HEADER_SIZE <= lsn % WAL_PAGE_SIZE <= WAL_PAGE_SIZE - nbytes
    name, off = file_at(path, lsn)
    with open(name, "r+b") as f:
        f.seek(off)
        old = f.read(nbytes)
        junk = random.Random(seed).randbytes(nbytes)
        if junk == old:
            junk = bytes(b ^ 0xFF for b in old)
        f.seek(off)
        f.write(junk)


def damage_record(path: str, start: int, end: int, at: int, seed: int = 1) -> None:
    """Damage up to DAMAGE_BYTES of the record [start, end) from ``at``, within one page."""
    assert start <= at < end and at % WAL_PAGE_SIZE >= PAGE_HEADER_SIZE
    n = min(DAMAGE_BYTES, end - at, WAL_PAGE_SIZE - at % WAL_PAGE_SIZE)
    overwrite(path, at, n, seed)


# --- the databases ---------------------------------------------------------------------------

def crashed_copy(tmp_path_factory, io_method: str, size: str, dst: str) -> int:
    """Copy a crashed database (built once per io method and size) to ``dst``; returns the
    number of acknowledged keys (0..n-1)."""
    key = (io_method, size)
    if key not in _built:
        base = str(tmp_path_factory.mktemp(f"integrity-{io_method}-{size}"))
        live, crashed = os.path.join(base, "live"), os.path.join(base, "crashed")
        db = Database.open(live, io_method=io_method, wal_buffers=WAL_BUFFERS[size], **SETTINGS)
        try:
            store = db.kv(STORE_NAME)
            n = 0
            for t in range(TRANSACTIONS):
                with db.transaction():
                    for i in range(n, n + BATCH_KEYS):
                        store[key_of(i)] = value_of(i)
                n += BATCH_KEYS
                if t == CHECKPOINT_AT:
                    db.checkpoint()
            shutil.copytree(live, crashed)   # what a SIGKILL now would leave
        finally:
            db.close()
        _built[key] = (crashed, n)
    crashed, n = _built[key]
    shutil.copytree(crashed, dst)
    return n


def assert_all_acknowledged(path: str, io_method: str, n: int) -> None:
    with Database.open(path, io_method=io_method) as db:
        store = db.kv(STORE_NAME)
        missing = [i for i in range(n) if store.get(key_of(i)) != value_of(i)]
        assert not missing, f"{len(missing)} of {n} acknowledged keys lost, first {missing[:5]}"


POSITIONS = ("first_of_segment", "spanning_pages", "spanning_segments", "checkpoint",
             "last_complete_flush")


def pick(path: str, position: str) -> tuple[int, int, int]:
    """(record start, record end, where to damage) for a record of the position class,
    below the highest durable end stamped on disk."""
    c = read_control(path)
    seg = c.wal_segment_size
    durable = max_stamp(path)
    recs = [(s, e) for s, e in records(path) if e <= durable]
    assert len(recs) > 100, "the workload wrote too little WAL"

    def first(pred):
        for s, e in recs:
            if pred(s, e):
                return s, e
        raise AssertionError(f"no record of class {position} in the WAL")

    if position == "first_of_segment":
        s, e = first(lambda s, e: s // seg > c.redo_lsn // seg)
        prev = [r for r in recs if r[0] < s][-1]
        assert prev[0] // seg < s // seg      # really the first record of its segment
        return s, e, s + 8
    if position == "spanning_pages":
        s, e = first(lambda s, e: s // WAL_PAGE_SIZE != (e - 1) // WAL_PAGE_SIZE
                     and s // seg == (e - 1) // seg and s > c.checkpoint_lsn)
        return s, e, s - s % WAL_PAGE_SIZE + WAL_PAGE_SIZE + PAGE_HEADER_SIZE
    if position == "spanning_segments":
        s, e = first(lambda s, e: s // seg != (e - 1) // seg and s > c.checkpoint_lsn)
        return s, e, ((e - 1) // seg) * seg + PAGE_HEADER_SIZE
    if position == "checkpoint":
        s, e = first(lambda s, e: s == c.checkpoint_lsn)
        return s, e, s + 8
    assert position == "last_complete_flush"
    s, e = recs[-1]                            # the last record the last stamp covers
    return s, e, s + 8


# --- corruption in the middle ------------------------------------------------------------------

@pytest.mark.parametrize("size", sorted(WAL_BUFFERS))
@pytest.mark.parametrize("position", POSITIONS)
def test_damage_below_a_durable_end_refuses_and_touches_nothing(tmp_path_factory, tmp_path,
                                                                io_method, size, position):
    """64 bytes of junk in a record of each position class, in a WAL smaller and one many
    times larger than wal_buffers: Database.open raises WalCorruptMiddleError naming the
    damaged record's LSN (a WalError naming it for the checkpoint record the control file
    points to), and every file and directory — names, sizes, mtimes, SHA-256 of the bytes —
    is as it was before the open: no replay, no end-of-recovery checkpoint, no truncation.
    The undamaged copy opens with every acknowledged key (the case is a real one)."""
    path = str(tmp_path / "db")
    n = crashed_copy(tmp_path_factory, io_method, size, path)
    s, e, at = pick(path, position)
    pristine = str(tmp_path / "pristine")
    shutil.copytree(path, pristine)
    damage_record(path, s, e, at)
    if position == "checkpoint":
        assert_refused_untouched(path, io_method, s, WalError)
    else:
        err = assert_refused_untouched(path, io_method, s)
        assert err.lsn == s and err.durable_lsn > s
    assert_all_acknowledged(pristine, io_method, n)


# --- torn tails ----------------------------------------------------------------------------------

TORN_KINDS = ("junk_after_the_end", "last_page_cut_at_a_sector", "segment_file_cut_short")


def tear_the_next_flush(path: str, kind: str) -> int:
    """Make the WAL look as a crash during the flush after the last one would leave it:
    that flush stamps its pages with the durable end F (= the end of valid WAL) and wrote
    junk-looking (torn) bytes from F on; or only the first sector of its next page landed;
    or the segment file ends right after the page holding F. Returns F."""
    recs = records(path)
    end = recs[-1][1]
    f_end = end + (-end % 8)
    seg = read_control(path).wal_segment_size
    page = f_end - f_end % WAL_PAGE_SIZE
    name, off = file_at(path, page)
    assert (page + WAL_PAGE_SIZE) % seg, "the end of WAL is on a segment's last page"
    rng = random.Random(3)
    with open(name, "r+b") as fh:
        if kind == "segment_file_cut_short":
            fh.truncate(off + WAL_PAGE_SIZE)
            return f_end
        fh.seek(off)
        content = bytearray(fh.read(WAL_PAGE_SIZE))
        rem = 0
        if f_end % WAL_PAGE_SIZE:
            struct.pack_into("<Q", content, 16, f_end)           # the in-progress stamp
            struct.pack_into("<I", content, PAGE_HEADER_SIZE - 4, 0)
            reseal = encode_page_header(page, struct.unpack_from("<I", content, 4)[0],
                                        seg, f_end)
            content[:PAGE_HEADER_SIZE] = reseal
            tail = WAL_PAGE_SIZE - f_end % WAL_PAGE_SIZE
            content[f_end % WAL_PAGE_SIZE:] = rng.randbytes(tail)
            rem = 1000
        else:
            content[:] = encode_page_header(page, 0, seg, f_end) + \
                rng.randbytes(WAL_PAGE_SIZE - PAGE_HEADER_SIZE)
        nxt = encode_page_header(page + WAL_PAGE_SIZE, rem, seg, f_end) + \
            rng.randbytes(WAL_PAGE_SIZE - PAGE_HEADER_SIZE)
        if kind == "last_page_cut_at_a_sector":
            nxt = nxt[:512] + bytes(WAL_PAGE_SIZE - 512)
        fh.seek(off)
        fh.write(content + nxt)
    return f_end


@pytest.mark.parametrize("size", sorted(WAL_BUFFERS))
@pytest.mark.parametrize("kind", TORN_KINDS)
def test_torn_last_flush_ends_recovery_quietly(tmp_path_factory, tmp_path, io_method, size,
                                               kind):
    """Junk only where the flush in progress at the crash was writing (pages it stamped with
    the durable end, junk from that end on; or only its next page's first sector; or a
    segment file ending after the page holding the end): the open succeeds, recovery stops
    exactly at that end, and every acknowledged key is present with its value."""
    path = str(tmp_path / "db")
    n = crashed_copy(tmp_path_factory, io_method, size, path)
    end = records(path)[-1][1]
    f_end = tear_the_next_flush(path, kind)
    c = read_control(path)
    reader = WalReader(wal_dir(path), c.wal_segment_size, c.redo_lsn,
                       check_middle_corruption=True)
    assert sum(1 for _ in reader) > 0
    assert reader.end_lsn == end and format_lsn(f_end) in reader.stop_reason
    with Database.open(path, io_method=io_method) as db:
        assert db.stats().recovery_crashed
    assert_all_acknowledged(path, io_method, n)


def test_damage_in_the_last_flush_is_a_torn_tail(tmp_path_factory, tmp_path, io_method):
    """Damage to a record at or after the highest stamped durable end (bytes only the last
    flush wrote, which a crash may have torn) ends recovery there quietly: the open
    succeeds and recovers every key before the damaged transaction."""
    path = str(tmp_path / "db")
    n = crashed_copy(tmp_path_factory, io_method, "small", path)
    durable = max_stamp(path)
    tail = [(s, e) for s, e in records(path) if s >= durable]
    assert tail, "the last flush wrote no record"
    s, e = tail[0]
    damage_record(path, s, e, s + 8)
    with Database.open(path, io_method=io_method) as db:
        store = db.kv(STORE_NAME)
        present = sum(1 for i in range(n) if store.get(key_of(i)) == value_of(i))
    assert n - BATCH_KEYS <= present < n


# --- the issue's scenario, with a real SIGKILL ------------------------------------------------

def run_child_until_done(path: str, io_method: str, count: int) -> int:
    """The batches writer (tests/wal/writer_child.py) writes ``count`` keys; SIGKILL it once
    it says DONE. Returns how many keys it acknowledged."""
    args = [sys.executable, "-m", "tests.wal.writer_child", path, io_method, "batches",
            str(count)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    acked = 0
    done = threading.Event()
    lines: list[str] = []

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line == "DONE\n":
                done.set()
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert done.wait(CHILD_TIMEOUT_SECONDS), "the writer did not finish"
        alive = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t.join(10)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert alive and proc.returncode == -signal.SIGKILL, f"the writer died by itself:\n{stderr}"
    for line in lines:
        if line.startswith("A "):
            acked = int(line.split()[2]) + 1
    return acked


def test_issue_scenario_sigkill_then_64_bytes_128_kib_in_refuses(tmp_path, io_method):
    """Issue 11, as reported: 5,000 acknowledged keys written by a child process that is
    then SIGKILLed (no checkpoint since the database was created, default settings: the WAL
    is far smaller than wal_buffers); 64 bytes overwritten about 128 KiB into the WAL. Before
    the stamp rule the open recovered 741 keys and zeroed the evidence; now it raises
    WalCorruptMiddleError naming the LSN of the first damaged record and leaves every file
    byte for byte as it was. An undamaged copy recovers all 5,000 keys."""
    path = str(tmp_path / "db")
    acked = run_child_until_done(path, io_method, ISSUE_KEYS)
    assert acked == ISSUE_KEYS
    c = read_control(path)
    assert c.checkpoint_lsn < c.wal_segment_size + WAL_PAGE_SIZE   # only the bootstrap one
    pristine = str(tmp_path / "pristine")
    shutil.copytree(path, pristine)
    at = c.wal_segment_size + ISSUE_DAMAGE_OFFSET
    bad = next((s, e) for s, e in records(path) if e > at)
    assert max_stamp(path) > bad[0]
    name, off = file_at(path, at)
    with open(name, "r+b") as f:
        f.seek(off)
        f.write(random.Random(11).randbytes(DAMAGE_BYTES))
    assert_refused_untouched(path, io_method, bad[0])
    assert_all_acknowledged(pristine, io_method, acked)
