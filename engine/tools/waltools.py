"""``slonik controldata`` and ``slonik waldump``: look at a data directory's control file and WAL.

Both only read. ``controldata`` prints every field of ``slonik_control`` (state by name, LSNs
in ``X/XXXXXXXX`` form, the time in ISO 8601). ``waldump`` follows the record chain from the
control file's redo point (or ``--start``) with a ``WalReader`` and prints one line per
record: LSN, resource manager, total length, xid, previous LSN, block references
(``rel/fork/block``, ``FPI`` when the record carries a full-page image, ``init`` when redo
re-initialises the page) and the resource manager's own description; then where valid WAL
ends and why (the reader's ``stop_reason``), as PostgreSQL's pg_waldump does.

A torn tail is the normal end of WAL and not an error. A damaged control file, WAL that is
corrupt in the middle of the log (an invalid record that a later flush's stamp proves was
durable), an unreadable file or a ``--start`` that is not a record start print the error and
exit with status 1, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime

from slonik.aio.errors import SlonikError
from slonik.engine.recovery import WAL_DIR
from slonik.engine.rmgrlist import install as install_rmgrs
from slonik.engine.tools.offline import lock_holder
from slonik.wal.control import ControlData, read_control
from slonik.wal.lsn import format_lsn, parse_lsn
from slonik.wal.reader import ReadRecord, WalReader
from slonik.wal.record import BlockRef, WalRecord
from slonik.wal.rmgr import RM_MAX_ID, find_rmgr, rmgr_name
from slonik.wal.walpage import next_record_lsn, segment_file_name

__all__ = [
    "DESCRIBER_MODULES", "CONTROL_LABELS", "control_report", "format_control_report",
    "load_describers", "WalDump", "record_entry", "format_record_entry", "cmd_controldata",
    "cmd_waldump", "add_controldata_arguments", "add_waldump_arguments",
]

# Modules that register resource managers (and so their describe()) when imported. A module
# that does not exist yet in this build is skipped; one that fails to import is a bug and
# its error propagates.
DESCRIBER_MODULES = ("slonik.wal.checkpoint", "slonik.engine.smgr_wal", "slonik.engine.access.heap",
                     "slonik.engine.xact")

# pg_controldata's wording where PostgreSQL has the field; a field added to ControlData
# later is still printed, under its own name.
CONTROL_LABELS = {
    "version": "control file version",
    "system_identifier": "database system identifier",
    "state": "database cluster state",
    "checkpoint_lsn": "latest checkpoint location",
    "redo_lsn": "latest checkpoint's REDO location",
    "next_xid": "latest checkpoint's NextXID",
    "next_relfilenumber": "latest checkpoint's NextRelFileNumber",
    "wal_segment_size": "bytes per WAL segment",
    "segment_size": "blocks per segment of large relation",   # blocks, as pg_controldata
    "blcksz": "database block size",
    "time": "time of latest control file update",
}
_LSN_FIELDS = ("checkpoint_lsn", "redo_lsn")


# --- controldata -------------------------------------------------------------------------

def _iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def control_report(data_dir: str) -> dict:
    """Every field of ``data_dir``'s control file, ready to print or dump as JSON: the state
    by name, LSNs as text, the time in ISO 8601. ControlFileError when it is damaged."""
    control = read_control(data_dir)
    report: dict = {"path": os.path.join(os.path.abspath(data_dir), "slonik_control")}
    for f in dataclasses.fields(ControlData):
        value = getattr(control, f.name)
        if f.name == "state":
            value = value.name
        elif f.name in _LSN_FIELDS:
            value = format_lsn(value)
        elif f.name == "time":
            value = _iso_time(value)
        report[f.name] = value
    return report


def format_control_report(report: dict) -> str:
    width = max(len(label) for label in CONTROL_LABELS.values()) + 2
    lines = [f"{'control file':<{width}}{report['path']}"]
    for name, value in report.items():
        if name != "path":
            lines.append(f"{CONTROL_LABELS.get(name, name) + ':':<{width}}{value}")
    return "\n".join(lines)


# --- waldump -----------------------------------------------------------------------------

def load_describers() -> list[str]:
    """Import the modules that register resource managers; returns those now loaded."""
    loaded = []
    for module in DESCRIBER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        loaded.append(module)
    return loaded


def _describe(rec: WalRecord) -> str:
    rm = find_rmgr(rec.rmgr)
    if rm is not None:
        try:
            return rm.describe(rec)
        except Exception as exc:  # a describe bug must not stop a dump of damaged WAL
            return (f"{rmgr_name(rec.rmgr)} info 0x{rec.info:02X} "
                    f"(describe failed: {type(exc).__name__}: {exc})")
    return f"{rmgr_name(rec.rmgr)} info 0x{rec.info:02X}, payload {len(rec.payload)} bytes"


def _block_entry(b: BlockRef) -> dict:
    entry = {"rel": b.rel, "fork": b.fork, "block": b.block, "fpi": b.image is not None,
             "will_init": b.will_init}
    if b.image is not None and b.hole_length:
        entry["hole"] = [b.hole_offset, b.hole_length]
    return entry


def record_entry(rr: ReadRecord) -> dict:
    """One record as a JSON-able dict (LSNs as text)."""
    rec = rr.record
    return {"lsn": format_lsn(rr.lsn), "end_lsn": format_lsn(rr.end_lsn),
            "rmgr": rmgr_name(rec.rmgr), "rmgr_id": rec.rmgr, "info": rec.info,
            "length": rr.length, "xid": rec.xid, "prev_lsn": format_lsn(rec.prev_lsn),
            "payload_bytes": len(rec.payload),
            "blocks": [_block_entry(b) for b in rec.blocks],
            "description": _describe(rec)}


def _block_text(b: dict) -> str:
    text = f"{b['rel']}/{b['fork']}/{b['block']}"
    if b["fpi"]:
        text += " FPI"
        if "hole" in b:
            text += f" (hole {b['hole'][0]}+{b['hole'][1]})"
    if b["will_init"]:
        text += " init"
    return text


def format_record_entry(e: dict) -> str:
    """One waldump line, e.g. ``lsn: 0/01000018  rmgr: xlog   len:     80  tx:        0
    prev: 0/00000000  desc: checkpoint (shutdown): ...``."""
    text = (f"lsn: {e['lsn']}  rmgr: {e['rmgr']:<6} len: {e['length']:>6}  tx: {e['xid']:>8}  "
            f"prev: {e['prev_lsn']}")
    if e["blocks"]:
        text += "  blkref: " + ", ".join(_block_text(b) for b in e["blocks"])
    return text + f"  desc: {e['description']}"


class WalDump:
    """Iterate the records of a data directory's WAL as ``record_entry`` dicts.

    ``start_lsn``: default the control file's redo point. ``limit``: stop after this many
    records shown. ``rmgr``: show only records of the resource manager with this name
    (every record is still read and checked). After iteration ``summary()`` says where and
    why the dump ended. Iteration raises WalError when the WAL is corrupt in the middle (a
    later page's flush stamp proves the invalid record was durable)."""

    def __init__(self, data_dir: str, *, start_lsn: int | None = None, limit: int | None = None,
                 rmgr: str | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        install_rmgrs()  # describe() comes from the engine's rmgr table
        self.control = read_control(data_dir)
        self.wal_dir = os.path.join(data_dir, WAL_DIR)
        self.start_lsn = self.control.redo_lsn if start_lsn is None else start_lsn
        self.limit = limit
        self.rmgr_id = None if rmgr is None else rmgr_id_by_name(rmgr)
        self.reader = WalReader(self.wal_dir, self.control.wal_segment_size, self.start_lsn,
                                check_middle_corruption=True)
        self.shown = 0
        self.limited = False

    def __iter__(self) -> Iterator[dict]:
        self.shown = 0
        self.limited = False
        for rr in self.reader:
            if self.rmgr_id is not None and rr.record.rmgr != self.rmgr_id:
                continue
            yield record_entry(rr)
            self.shown += 1
            if self.limit is not None and self.shown >= self.limit:
                self.limited = True
                break

    def summary(self) -> dict:
        r = self.reader
        empty = None
        if self.limited:
            reason = (f"stopped after {self.shown} records (--limit); the next record would "
                      f"start at {format_lsn(next_record_lsn(r.end_lsn))}")
        else:
            reason = r.stop_reason
            empty = self._empty_segment()
            if empty is not None:
                reason = (f"WAL segment {empty} is empty (0 bytes): the WAL ends where it "
                          f"begins")
        return {"wal_dir": os.path.abspath(self.wal_dir), "start_lsn": format_lsn(self.start_lsn),
                "records_read": r.records_read, "records_shown": self.shown,
                "last_lsn": format_lsn(r.last_lsn), "end_lsn": format_lsn(r.end_lsn),
                "stopped_by_limit": self.limited, "stop_reason": reason,
                "empty_segment": empty}

    def _empty_segment(self) -> str | None:
        """The name of the segment file where the WAL continues — the one the next record
        was due in, or the next one when the reader stopped because a record ran into it —
        when that file exists and holds 0 bytes (created but never written, as a crash can
        leave it): the plain end of WAL, not damage."""
        r = self.reader
        due = next_record_lsn(r.end_lsn) if r.records_read else self.start_lsn
        segno = due // self.control.wal_segment_size
        for candidate in (segno, segno + 1):
            name = segment_file_name(candidate)
            if candidate != segno and name not in r.stop_reason:
                break
            try:
                size = os.stat(os.path.join(self.wal_dir, name)).st_size
            except FileNotFoundError:
                return None
            if size == 0:
                return name
        return None


def format_summary(s: dict) -> str:
    if s["stopped_by_limit"]:
        return s["stop_reason"]
    shown = "" if s["records_shown"] == s["records_read"] else f" ({s['records_shown']} shown)"
    return (f"end of WAL at {s['end_lsn']} after {s['records_read']} records from "
            f"{s['start_lsn']}{shown}: {s['stop_reason']}")


def rmgr_id_by_name(name: str) -> int:
    """The id of the resource manager called ``name`` (a registered name, a built-in one, or
    ``rmgr<id>``); ValueError listing the known names otherwise."""
    for i in range(RM_MAX_ID + 1):
        if rmgr_name(i) == name:
            return i
    known = sorted({rmgr_name(i) for i in range(RM_MAX_ID + 1)
                    if not rmgr_name(i).startswith("rmgr")})
    raise ValueError(f"unknown resource manager {name!r} (known: {', '.join(known)}, "
                     f"or rmgr<id>)")


# --- the commands ------------------------------------------------------------------------

def _lsn_arg(text: str) -> int:
    try:
        lsn = parse_lsn(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if lsn <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is the invalid LSN 0")
    return lsn


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def add_controldata_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the data directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_waldump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the data directory (WAL in DIR/wal)")
    parser.add_argument("--start", type=_lsn_arg, default=None,
                        help="LSN of the first record, e.g. 0/01000018 (default: the control "
                             "file's redo point)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="stop after this many records shown")
    parser.add_argument("--rmgr", default=None,
                        help="show only this resource manager's records (xlog, xact, smgr, "
                             "heap, test, ...)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _fail(command: str, exc: BaseException) -> int:
    print(f"slonik {command}: {exc}", file=sys.stderr)
    return 1


def _note_if_open(command: str, data_dir: str) -> None:
    """Say on stderr when another process has the database open: what was printed is the
    files as they were at that instant, and they are changing."""
    holder = lock_holder(os.path.abspath(data_dir))
    if holder is not None:
        print(f"slonik {command}: note: the database is open in process {holder}; this shows "
              f"its files as they were when read, and they are changing", file=sys.stderr)


def cmd_controldata(args: argparse.Namespace) -> int:
    try:
        report = control_report(args.dir)
    except (SlonikError, OSError) as exc:
        return _fail("controldata", exc)
    print(json.dumps(report, indent=2) if args.json else format_control_report(report))
    _note_if_open("controldata", args.dir)
    return 0


def cmd_waldump(args: argparse.Namespace) -> int:
    load_describers()
    try:
        dump = WalDump(args.dir, start_lsn=args.start, limit=args.limit, rmgr=args.rmgr)
    except (SlonikError, OSError, ValueError) as exc:
        return _fail("waldump", exc)
    records = []
    try:
        for entry in dump:
            if args.json:
                records.append(entry)
            else:
                print(format_record_entry(entry))
    except BrokenPipeError:
        raise   # the reader of our output has gone: the command's caller handles it
    except (SlonikError, OSError) as exc:
        sys.stdout.flush()
        return _fail("waldump", exc)
    summary = dump.summary()
    if args.json:
        print(json.dumps({**summary, "records": records}, indent=2))
    else:
        print(format_summary(summary))
    _note_if_open("waldump", args.dir)
    return 0
