"""``slonik controldata`` and ``slonik waldump`` on a real data directory.

The directory is made by ``engine.recovery.bootstrap`` (control file + shutdown checkpoint)
and a ``Wal`` continuing after the checkpoint with a few records: an smgr create, a test
record with a full-page image and a will_init block, and enough test records to cross into
a second 64 KiB segment. The commands only read, so one io method builds the data.
"""

import dataclasses
import json
import os

import pytest
from slonik.aio.core import Aio
from slonik.engine.recovery import WAL_DIR, bootstrap
from slonik.engine.smgr_wal import _CREATE, SMGR_CREATE
from slonik.engine.tools.cli import main
from slonik.wal.control import CONTROL_FILE_NAME, ControlData, read_control
from slonik.wal.lsn import format_lsn
from slonik.wal.reader import read_record_at
from slonik.wal.rmgr import RM_SMGR, RM_TEST
from slonik.wal.xlog import BlockSpec, Wal

from slonik import Database

WAL_SEGMENT_SIZE = 64 * 1024
WAL_BUFFERS = 8          # 64 KiB: the smallest ring, so corruption in the middle is findable
REL = 16384
N_FILLER = 30
FILLER_BYTES = 3000


@pytest.fixture
def data_dir(tmp_path):
    """(data_dir, control, records): records as (start_lsn, end_lsn, rmgr name) in order."""
    d = str(tmp_path / "db")
    os.mkdir(d)
    aio = Aio("sync")
    try:
        control = bootstrap(d, aio, wal_segment_size=WAL_SEGMENT_SIZE, segment_size=1 << 30,
                            wal_buffers=WAL_BUFFERS)
        wal_dir = os.path.join(d, WAL_DIR)
        cp = read_record_at(wal_dir, WAL_SEGMENT_SIZE, control.checkpoint_lsn)
        records = [(cp.lsn, cp.end_lsn, "xlog")]
        wal = Wal(wal_dir, aio, wal_segment_size=WAL_SEGMENT_SIZE, wal_buffers=WAL_BUFFERS,
                  start_lsn=cp.end_lsn, prev_lsn=cp.lsn, redo_lsn=control.redo_lsn)
        try:
            records.append((*wal.insert(RM_SMGR, SMGR_CREATE, 5, _CREATE.pack(REL, 0)), "smgr"))
            page = bytearray(b"\x5a" * 8192)
            page[100:4000] = bytes(3900)
            blocks = [BlockSpec(REL, 0, 3, page=memoryview(page), page_lsn=0, hole=(100, 4000)),
                      BlockSpec(REL, 0, 4, will_init=True)]
            records.append((*wal.insert(RM_TEST, 0, 7, b"x" * 50, blocks), "test"))
            for i in range(N_FILLER):
                records.append((*wal.insert(RM_TEST, 0, 8 + i, b"y" * FILLER_BYTES), "test"))
            wal.flush()
        finally:
            wal.close()
    finally:
        aio.shutdown()
    assert records[-1][1] // WAL_SEGMENT_SIZE > records[0][0] // WAL_SEGMENT_SIZE
    return d, control, records


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _segment_path(d: str, lsn: int) -> tuple[str, int]:
    return (os.path.join(d, WAL_DIR, f"{lsn // WAL_SEGMENT_SIZE:016X}"),
            lsn % WAL_SEGMENT_SIZE)


def test_controldata_prints_every_field(data_dir, capsys):
    """Text output names the state, both LSNs in X/XXXXXXXX form and the counters; --json has
    exactly the ControlData fields (plus the path) with the same values."""
    d, control, _ = data_dir
    code, out, err = _run(capsys, "controldata", d)
    assert code == 0 and err == ""
    assert "SHUTDOWNED" in out
    assert f"latest checkpoint location:            {format_lsn(control.checkpoint_lsn)}" in out
    assert format_lsn(control.redo_lsn) in out
    assert str(control.system_identifier) in out and str(WAL_SEGMENT_SIZE) in out
    assert len(out.strip().splitlines()) == len(dataclasses.fields(ControlData)) + 1

    code, out, _ = _run(capsys, "controldata", d, "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {f.name for f in dataclasses.fields(ControlData)} | {"path"}
    assert report["state"] == "SHUTDOWNED"
    assert report["checkpoint_lsn"] == format_lsn(control.checkpoint_lsn)
    assert report["redo_lsn"] == format_lsn(control.redo_lsn)
    assert report["next_xid"] == control.next_xid
    assert report["wal_segment_size"] == WAL_SEGMENT_SIZE
    assert report["time"][:4].isdigit() and "T" in report["time"]   # ISO 8601
    assert read_control(d) == control


def test_waldump_text_lists_every_record_and_the_end(data_dir, capsys):
    """One line per record from the redo point, in order, each with its LSN, rmgr name, xid
    and prev LSN; the block record shows rel/fork/block with FPI and init; the last line says
    where WAL ends (the last record's end) and why (zeroes)."""
    d, _, records = data_dir
    code, out, err = _run(capsys, "waldump", d)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == len(records) + 1
    prev = 0
    for line, (lsn, _end, rmgr) in zip(lines[:-1], records, strict=True):
        assert line.startswith(f"lsn: {format_lsn(lsn)}  rmgr: {rmgr} ")
        assert f"prev: {format_lsn(prev)}" in line
        prev = lsn
    assert "tx:        5" in lines[1] and "create relation 16384 fork 0" in lines[1]
    assert "blkref: 16384/0/3 FPI (hole 100+3900), 16384/0/4 init" in lines[2]
    assert "checkpoint (shutdown)" in lines[0]
    assert lines[-1].startswith(f"end of WAL at {format_lsn(records[-1][1])} after "
                                f"{len(records)} records")
    assert "zeroes" in lines[-1]


def test_waldump_json(data_dir, capsys):
    """--json: the records' LSNs, rmgr names, lengths and block flags, and the end of WAL."""
    d, _, records = data_dir
    code, out, _ = _run(capsys, "waldump", d, "--json")
    assert code == 0
    dump = json.loads(out)
    got = dump["records"]
    assert [r["lsn"] for r in got] == [format_lsn(r[0]) for r in records]
    assert [r["end_lsn"] for r in got] == [format_lsn(r[1]) for r in records]
    assert [r["rmgr"] for r in got] == [r[2] for r in records]
    assert all(r["length"] > 0 for r in got)
    assert got[2]["blocks"] == [
        {"rel": REL, "fork": 0, "block": 3, "fpi": True, "will_init": False, "hole": [100, 3900]},
        {"rel": REL, "fork": 0, "block": 4, "fpi": False, "will_init": True}]
    assert got[3]["payload_bytes"] == FILLER_BYTES and got[3]["xid"] == 8
    assert dump["end_lsn"] == format_lsn(records[-1][1])
    assert dump["last_lsn"] == format_lsn(records[-1][0])
    assert dump["records_read"] == len(records) and not dump["stopped_by_limit"]
    assert dump["stop_reason"].startswith("zeroes")


def test_waldump_start_limit_and_rmgr(data_dir, capsys):
    """--start begins at the given record, --limit stops after N shown and says where the next
    record starts, --rmgr shows only that manager's records."""
    d, _, records = data_dir
    code, out, _ = _run(capsys, "waldump", d, "--start", format_lsn(records[2][0]),
                        "--limit", "2", "--json")
    assert code == 0
    dump = json.loads(out)
    assert [r["lsn"] for r in dump["records"]] == [format_lsn(records[2][0]),
                                                  format_lsn(records[3][0])]
    assert dump["stopped_by_limit"] and format_lsn(records[4][0]) in dump["stop_reason"]

    code, out, _ = _run(capsys, "waldump", d, "--rmgr", "smgr")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "rmgr: smgr" in lines[0]
    assert "(1 shown)" in lines[1]

    code, _, err = _run(capsys, "waldump", d, "--rmgr", "nosuch")
    assert code == 1 and "unknown resource manager 'nosuch'" in err


def test_waldump_bad_start_is_an_error(data_dir, capsys):
    """A --start that is not a record start: the reason on stderr, exit 1, no traceback."""
    d, _, records = data_dir
    code, out, err = _run(capsys, "waldump", d, "--start", format_lsn(records[1][0] + 1))
    assert code == 1 and out == ""
    assert "not a record start" in err and "Traceback" not in err


def test_damaged_control_file_exits_1_naming_the_file(data_dir, capsys):
    """A flipped byte in the control file: controldata and waldump print the ControlFileError
    (naming the file) and exit 1 without a traceback; a missing file is the same."""
    d, _, _ = data_dir
    path = os.path.join(d, CONTROL_FILE_NAME)
    _flip_byte(path, 40)
    for argv in (["controldata", d], ["controldata", d, "--json"], ["waldump", d]):
        code, out, err = _run(capsys, *argv)
        assert code == 1 and out == ""
        assert path in err and "CRC" in err and "Traceback" not in err
    os.unlink(path)
    code, _, err = _run(capsys, "controldata", d)
    assert code == 1 and path in err and "does not exist" in err


def test_waldump_torn_tail_is_the_end(data_dir, capsys):
    """A damaged last record is a torn tail: the dump stops before it, exit 0, and says
    "bad CRC at" its LSN."""
    d, _, records = data_dir
    path, offset = _segment_path(d, records[-1][0] + 64)
    _flip_byte(path, offset)
    code, out, _ = _run(capsys, "waldump", d)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == len(records)
    assert lines[-1] == (f"end of WAL at {format_lsn(records[-2][1])} after {len(records) - 1} "
                         f"records from {format_lsn(records[0][0])}: bad CRC at "
                         f"{format_lsn(records[-1][0])}")


def test_waldump_corruption_in_the_middle_exits_1(data_dir, capsys):
    """A damaged record that a later flush's stamp proves durable: the records before it
    are printed, then the WalError naming its LSN, exit 1."""
    d, _, records = data_dir
    bad = records[3][0]
    path, offset = _segment_path(d, bad + 64)
    _flip_byte(path, offset)
    code, out, err = _run(capsys, "waldump", d)
    assert code == 1
    assert len(out.strip().splitlines()) == 3
    assert f"corrupt in the middle at {format_lsn(bad)}" in err and "Traceback" not in err


def test_controldata_segment_size_is_in_the_unit_it_names(tmp_path, capsys):
    """segment_size is stored in blocks: the text label says blocks, and the value times
    the block size is the size of a full relation segment file on disk (a relation grown
    past one segment of a 16-block database)."""
    path = tmp_path / "db"
    with Database.open(path, io_method="sync", segment_size=16) as db:
        kv = db.kv("s")
        with db.transaction():
            for i in range(400):
                kv[b"k%05d" % i] = b"v" * 300
        rel = kv.rel
    assert os.path.exists(path / "base" / f"{rel}.1")
    code, out, _ = _run(capsys, "controldata", str(path))
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("blocks per segment"))
    blocks = int(line.split(":")[1])
    assert blocks == 16
    assert os.path.getsize(path / "base" / str(rel)) == blocks * read_control(str(path)).blcksz
    code, out, _ = _run(capsys, "controldata", str(path), "--json")
    assert json.loads(out)["segment_size"] == 16


def test_waldump_reports_an_empty_segment_as_empty(data_dir, capsys):
    """A WAL segment file of 0 bytes where the WAL continues (created, never written, as a
    crash can leave it) is the plain end of WAL: exit 0, the records before it, and a last
    line (and JSON empty_segment) naming the empty segment — not an error."""
    d, _, records = data_dir
    second = records[-1][1] // WAL_SEGMENT_SIZE
    path = os.path.join(d, WAL_DIR, f"{second:016X}")
    os.truncate(path, 0)
    code, out, err = _run(capsys, "waldump", d)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    kept = [r for r in records if r[1] <= second * WAL_SEGMENT_SIZE]
    assert len(lines) == len(kept) + 1
    assert f"WAL segment {second:016X} is empty (0 bytes)" in lines[-1]
    code, out, _ = _run(capsys, "waldump", d, "--json")
    dump = json.loads(out)
    assert code == 0 and dump["empty_segment"] == f"{second:016X}"
    assert dump["records_read"] == len(kept)
