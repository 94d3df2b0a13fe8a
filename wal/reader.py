"""Read WAL records back from the segment files: for recovery, waldump and the checkpoint.

``WalReader`` follows the record chain from a start LSN across page and segment boundaries
and stops at the first record that is not valid, leaving ``end_lsn``, ``last_lsn`` and a
``stop_reason``. Every check names the LSN it failed at; the order is that of PostgreSQL's
xlogreader: page header (magic, pageaddr, segment size, flags), continuation length
(``rem_len`` of each page a record continues onto must equal the bytes still missing),
record length bounds and header, CRC, then the prev-LSN link.

Stopping is quiet (a torn tail is normal after a crash) unless ``check_middle_corruption``
is set and the stop lies below a durable end that a later flush knew of: then the log was
damaged in the middle, and iteration raises ``WalCorruptMiddleError`` naming the LSN rather
than let recovery drop committed work (DESIGN §7). The proof is the flush stamp (walpage
invariant 4): after the first invalid record at L, the reader scans every remaining WAL
page of this segment and of every later segment file; a page whose header is valid at its
own position (magic and format version, header CRC, pageaddr, segment size, flags) and
whose ``prev_flush_end`` is > L was written by a flush that began after WAL beyond L was
durable — so the record at L was durable and is damaged, not torn. Pages of recycled
segments carry another position's pageaddr and prove nothing. Only the bytes of the last
flush before the crash carry no later stamp: damage there is indistinguishable from a torn
write and ends WAL quietly.

Segment files are read through ``aio.osfile`` in chunks of ``READ_CHUNK_BYTES``; records are
decoded from memoryviews of those chunks, so a record inside one page is never copied
before ``decode_record``.

Batches: with a ``scanner`` (``scan_records_py``'s contract; recovery passes the C one from
engine/wal_decode.py) the reader hands it the rest of the chunk, and the scanner accepts
the records it finds valid in one call; those are decoded with ``decode_checked`` (no second
CRC). The first record it does not accept goes through the record-at-a-time path above,
which alone decides where and why WAL ends, so stop reasons and ``WalCorruptMiddleError``
are the same with or without a scanner. ``scan_to_end`` checks without decoding (recovery's
first pass).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

from slonik.aio import osfile
from slonik.aio.errors import IOFailure
from slonik.wal.errors import WalError

from .lsn import format_lsn
from .record import (
    MAX_RECORD_SIZE_BYTES,
    RECORD_HEADER_SIZE,
    WalRecord,
    WalRecordError,
    check_record_header,
    decode_checked,
    decode_record,
)
from .rmgr import find_rmgr, rmgr_name
from .walpage import (
    PAGE_HEADER_SIZE,
    RECORD_ALIGN,
    USABLE_PAGE_BYTES,
    WAL_PAGE_SIZE,
    PageHeader,
    WalPageError,
    advance_lsn,
    align_lsn,
    check_segment_size,
    decode_page_header,
    next_record_lsn,
    parse_segment_file_name,
    segment_file_name,
    usable_lsn,
)

__all__ = [
    "READ_CHUNK_BYTES", "SCAN_BATCH_RECORDS", "RawBatch", "ReadRecord", "RecordScanner",
    "WalReader", "WalCorruptMiddleError", "read_record_at", "scan_records_py", "ScanResult",
    "first_record_lsn", "describe_record",
]

# Bytes read from a segment file per preadv: 32 pages. Large enough that replay is not
# syscall-bound, small enough that a reader stopping early has read little in vain.
READ_CHUNK_BYTES = 256 * 1024
# Records a scanner checks per call: a chunk holds at most this many (32 pages of 8 KiB,
# records of at least 32 bytes, 8-aligned), so one call covers the rest of a chunk.
SCAN_BATCH_RECORDS = READ_CHUNK_BYTES // 32
_NO_RECORDS: list = []
RAW = 2           # _walk's decode mode of raw_batches
_TOTAL_LENGTH = struct.Struct("<I")
_ZERO_PAGE_HEADER = bytes(PAGE_HEADER_SIZE)

assert READ_CHUNK_BYTES % WAL_PAGE_SIZE == 0


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """A record as read: where it starts, where it ends (the LSN redo gives the pages it
    changes), the record, and its length in bytes (page headers not counted)."""

    lsn: int
    end_lsn: int
    record: WalRecord
    length: int = 0


class WalCorruptMiddleError(WalError):
    """An invalid record at ``lsn`` below ``durable_lsn``, the durable end stamped into the
    WAL page at ``proof_lsn`` by a later flush: the log is damaged in the middle, not merely
    torn at its end."""

    def __init__(self, lsn: int, proof_lsn: int, durable_lsn: int, reason: str) -> None:
        super().__init__(f"WAL is corrupt in the middle at {format_lsn(lsn)}: the WAL page at "
                         f"{format_lsn(proof_lsn)} was written by a flush that began after WAL "
                         f"up to {format_lsn(durable_lsn)} was durable; refusing to start "
                         f"(first invalid record: {reason})")
        self.lsn = lsn
        self.proof_lsn = proof_lsn
        self.durable_lsn = durable_lsn
        self.reason = reason


class _Stop(Exception):
    """Internal: the WAL is not valid at this point; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_new_object = object.__new__
_SET_LSN, _SET_END, _SET_RECORD, _SET_LENGTH = (
    ReadRecord.__dict__[name].__set__ for name in ("lsn", "end_lsn", "record", "length"))


def _read_record(chunk: memoryview, gathered, base: int, at: int, length: int,
                 end: int) -> ReadRecord:
    """The record a scanner accepted at chunk offset ``at``, decoded without checks (from
    the chunk, or from ``gathered`` when it continued onto later pages). The ReadRecord's
    slots are set directly, as ``make_record`` does: one per record, at half the cost of
    the frozen dataclass's ``__init__``."""
    rr = _new_object(ReadRecord)
    _SET_LSN(rr, base + at)
    _SET_END(rr, base + end)
    _SET_RECORD(rr, decode_checked(chunk if end - at == length else gathered, at, length))
    _SET_LENGTH(rr, length)
    return rr


class RawBatch(NamedTuple):
    """The records a scanner accepted from one chunk, not decoded (``WalReader.raw_batches``):
    the chunk and its LSN, the scanner's ``gathered`` buffer and its offsets, lengths and end
    offsets. The chunk is the reader's own copy, never overwritten, so a batch stays valid
    after the reader moves on."""

    chunk: memoryview
    base: int
    gathered: Any
    ats: list[int]
    lens: list[int]
    ends: list[int]

    def record(self, i: int) -> ReadRecord:
        """Record ``i`` of the batch, decoded."""
        return _read_record(self.chunk, self.gathered, self.base, self.ats[i], self.lens[i],
                            self.ends[i])


# (offsets, lengths, end offsets, stop offset, gathered: a buffer or None): see
# scan_records_py (its gathered is a bytearray, the C scanner's a cffi buffer).
ScanResult = tuple[list[int], list[int], list[int], int, Any]
RecordScanner = Callable[[memoryview, int, int, int, "int | None", int], ScanResult]


def scan_records_py(chunk, chunk_lsn: int, pos: int, wal_segment_size: int,
                    prev: int | None, cap: int) -> ScanResult:
    """The reference of the C batch checker (``slk_wal_scan``, engine/wal_decode.py).

    ``chunk``: whole WAL pages of one segment, the first at ``chunk_lsn``; ``pos``: the chunk
    offset of a record start. Accepts records one after another while each lies wholly in
    the chunk and passes the checks ``WalReader`` makes (page headers, continuation lengths,
    record header and structure, CRC, prev link: the first against ``prev`` unless it is
    None, then each against the record before). Returns (chunk offsets, lengths, chunk
    offsets of their ends, chunk offset of the first record not accepted, gathered): at
    most ``cap`` records; a record continued past the chunk, an invalid one or the end of
    the chunk stops it. A record continued onto later pages is copied whole into
    ``gathered`` (a buffer of the chunk's size, or None when there was none) at its own
    start offset."""
    ats: list[int] = []
    lens: list[int] = []
    ends: list[int] = []
    gathered: bytearray | None = None
    size = len(chunk) - len(chunk) % WAL_PAGE_SIZE
    checked = -1

    def page_ok(page: int):
        try:
            return decode_page_header(chunk[page:page + PAGE_HEADER_SIZE], chunk_lsn + page,
                                      wal_segment_size)
        except WalPageError:
            return None

    while len(ats) < cap and pos < size:
        off = pos % WAL_PAGE_SIZE
        page = pos - off
        if off < PAGE_HEADER_SIZE or pos % RECORD_ALIGN:
            break
        if page != checked:
            hdr = page_ok(page)
            if hdr is None:
                break
            checked = page
        if off == PAGE_HEADER_SIZE and hdr.rem_len:
            break
        total = _TOTAL_LENGTH.unpack_from(chunk, pos)[0]
        if not RECORD_HEADER_SIZE <= total <= MAX_RECORD_SIZE_BYTES:
            break
        if total <= WAL_PAGE_SIZE - off:
            data = chunk[pos:pos + total]
            end = pos + total
        else:
            parts = [chunk[pos:page + WAL_PAGE_SIZE]]
            got = len(parts[0])
            p = page + WAL_PAGE_SIZE
            while got < total and p + WAL_PAGE_SIZE <= size:
                nxt = page_ok(p)
                if nxt is None or nxt.rem_len != total - got:
                    break
                take = min(total - got, USABLE_PAGE_BYTES)
                parts.append(chunk[p + PAGE_HEADER_SIZE:p + PAGE_HEADER_SIZE + take])
                got += take
                end = p + PAGE_HEADER_SIZE + take
                hdr, checked = nxt, p
                p += WAL_PAGE_SIZE
            if got < total:
                break
            data = b"".join(parts)
        try:
            record = decode_record(data)
        except WalRecordError:
            break
        if prev is not None and record.prev_lsn != prev:
            break
        if total > WAL_PAGE_SIZE - off:
            if gathered is None:
                gathered = bytearray(len(chunk))
            gathered[pos:pos + total] = data
        ats.append(pos)
        lens.append(total)
        ends.append(end)
        prev = chunk_lsn + pos
        pos = next_record_lsn(chunk_lsn + end) - chunk_lsn
    return ats, lens, ends, pos, gathered


class WalReader:
    """Iterate the records of ``wal_dir`` from ``start_lsn`` (a record start, or the start of
    the page it is the first record of) until the first invalid one.

    After (or during) iteration: ``end_lsn`` is where valid WAL ends (the end of the last
    good record, or ``start_lsn``), ``last_lsn`` the start of the last good record (0 if
    none), ``stop_reason`` why iteration stopped ("" while it has not). ``expect_prev``: the
    LSN the first record's prev link must name (unchecked when None).
    ``check_middle_corruption``: after the first invalid record, look for a flush stamp that
    proves it durable and raise ``WalCorruptMiddleError`` if there is one (crash recovery and
    waldump want this; a plain stop is quiet). ``scanner``: a batch checker with
    ``scan_records_py``'s contract (the engine passes the C one): the records it accepts
    from a chunk are decoded without checking them again; every record it does not accept
    (continued onto another page, or not valid) goes through the record-at-a-time path,
    which decides exactly as without a scanner.
    """

    def __init__(self, wal_dir: str, wal_segment_size: int, start_lsn: int, *,
                 check_middle_corruption: bool = False,
                 expect_prev: int | None = None,
                 scanner: RecordScanner | None = None) -> None:
        check_segment_size(wal_segment_size)
        if not isinstance(start_lsn, int) or isinstance(start_lsn, bool) or start_lsn <= 0:
            raise ValueError(f"start_lsn must be a positive int LSN, got {start_lsn!r}")
        off = start_lsn % WAL_PAGE_SIZE
        if start_lsn % RECORD_ALIGN or 0 < off < PAGE_HEADER_SIZE:
            raise ValueError(f"start_lsn {format_lsn(start_lsn)} is not a record start "
                             f"(unaligned or inside a page header)")
        self.wal_dir = wal_dir
        self.wal_segment_size = wal_segment_size
        self.start_lsn = start_lsn
        if not isinstance(check_middle_corruption, bool):
            raise TypeError(f"check_middle_corruption must be a bool, got "
                            f"{check_middle_corruption!r}")
        self.check_middle_corruption = check_middle_corruption
        self.expect_prev = expect_prev
        self._scanner = scanner
        self.end_lsn = start_lsn
        self.last_lsn = 0
        self.stop_reason = ""
        self.records_read = 0
        self._fd = -1
        self._segno = -1
        self._chunk_lsn = 0           # LSN of the first byte of the chunk in memory
        self._chunk: memoryview = memoryview(b"")
        self._header_lsn = -1         # the page whose header was checked last, and
        self._header_checked: PageHeader | None = None   # its header

    # --- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ReadRecord]:
        for batch in self._walk(True):
            for rr in batch:
                self.last_lsn = rr.lsn
                self.end_lsn = rr.end_lsn
                self.records_read += 1
                yield rr

    def batches(self) -> Iterator[list[ReadRecord]]:
        """The records of ``__iter__`` in the lists the reader makes them in (the records a
        scanner accepted from one chunk, or one record read on its own): recovery takes a
        batch at a time. ``end_lsn``, ``last_lsn`` and ``records_read`` move per batch."""
        for batch in self._walk(True):
            if batch:
                rr = batch[-1]
                self.last_lsn = rr.lsn
                self.end_lsn = rr.end_lsn
                self.records_read += len(batch)
                yield batch

    def raw_batches(self) -> Iterator[RawBatch | list[ReadRecord]]:
        """``batches`` without decoding what the scanner accepted: a ``RawBatch`` per chunk
        scanned (recovery reads the fields it needs of most records in one C call and
        decodes the rest), a one-record list for a record read on its own."""
        for batch in self._walk(RAW):
            if batch:
                if isinstance(batch, RawBatch):
                    self.last_lsn = batch.base + batch.ats[-1]
                    self.end_lsn = batch.base + batch.ends[-1]
                    self.records_read += len(batch.ats)
                else:
                    rr = batch[-1]
                    self.last_lsn = rr.lsn
                    self.end_lsn = rr.end_lsn
                    self.records_read += 1
                yield batch

    def scan_to_end(self) -> int:
        """Read and check every record without decoding it (recovery's first pass): sets
        ``end_lsn``, ``last_lsn``, ``stop_reason`` as iterating would; the record count."""
        for _ in self._walk(False):
            pass
        return self.records_read

    def _walk(self, decode: int) -> Iterator[list[ReadRecord] | RawBatch]:
        """Batches of valid records in order (empty lists when ``decode`` is false: only
        ``end_lsn``/``last_lsn``/``records_read`` move; ``RawBatch``es of what the scanner
        accepted when it is ``RAW``), until the first invalid record."""
        self.end_lsn = self.start_lsn
        self.last_lsn = 0
        self.stop_reason = ""
        self.records_read = 0
        lsn = usable_lsn(self.start_lsn)
        prev = self.expect_prev
        scanner = self._scanner
        seg_size = self.wal_segment_size
        try:
            while True:
                if scanner is not None:
                    chunk, base = self._chunk_at(lsn)
                    if chunk is not None:
                        ats, lens, ends, _stop, gathered = scanner(
                            chunk, base, lsn - base, seg_size, prev, SCAN_BATCH_RECORDS)
                        if ats:
                            last = base + ats[-1]
                            end = base + ends[-1]
                            if decode == RAW:
                                yield RawBatch(chunk, base, gathered, ats, lens, ends)
                            elif decode:
                                yield list(map(_read_record, repeat(chunk), repeat(gathered),
                                               repeat(base), ats, lens, ends))
                            else:
                                self.last_lsn = last
                                self.end_lsn = end
                                self.records_read += len(ats)
                                yield _NO_RECORDS
                            prev = last
                            lsn = next_record_lsn(end)
                            continue
                try:
                    rr = self._read_at(lsn)
                    if prev is not None and rr.record.prev_lsn != prev:
                        raise _Stop(f"wrong prev link at {format_lsn(lsn)}: record names "
                                    f"{format_lsn(rr.record.prev_lsn)}, previous record is "
                                    f"at {format_lsn(prev)}")
                except _Stop as stop:
                    self.stop_reason = stop.reason
                    self._check_middle(lsn, stop.reason)
                    return
                prev = lsn
                if decode:
                    yield [rr]
                else:
                    self.last_lsn = lsn
                    self.end_lsn = rr.end_lsn
                    self.records_read += 1
                lsn = next_record_lsn(rr.end_lsn)
        finally:
            self.close()

    def _chunk_at(self, lsn: int) -> tuple[memoryview | None, int]:
        """(the chunk in memory holding ``lsn``'s page, its LSN), reading it when needed;
        (None, 0) when it cannot be read (the record-at-a-time path says why)."""
        rel = lsn - self._chunk_lsn
        if not 0 <= rel < len(self._chunk):
            try:
                self._page(lsn - lsn % WAL_PAGE_SIZE, None)
            except _Stop:
                return None, 0
        return self._chunk, self._chunk_lsn

    def close(self) -> None:
        """Close the open segment file (harmless twice; iteration reopens it)."""
        if self._fd >= 0:
            fd, self._fd, self._segno = self._fd, -1, -1
            osfile.close(fd)
        self._chunk = memoryview(b"")
        self._header_lsn = -1

    def __enter__(self) -> WalReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one record ------------------------------------------------------------------------

    def _read_at(self, lsn: int) -> ReadRecord:
        """The valid record starting at ``lsn``, or _Stop saying why there is none."""
        off = lsn % WAL_PAGE_SIZE
        assert lsn % RECORD_ALIGN == 0 and off >= PAGE_HEADER_SIZE, \
            f"{format_lsn(lsn)} is not a record start"
        pageaddr = lsn - off
        rel = pageaddr - self._chunk_lsn       # the common case inlined: page in memory
        if 0 <= rel < len(self._chunk):
            page = self._chunk[rel:rel + WAL_PAGE_SIZE]
        else:
            page = self._page(pageaddr, None)
        hdr = self._header(page, pageaddr, lsn, "starts on it")
        if off == PAGE_HEADER_SIZE and hdr.rem_len:
            raise _Stop(f"no record at {format_lsn(lsn)}: its page begins with {hdr.rem_len} "
                        f"bytes continued from an earlier record")
        # A record start is 8-aligned outside the header, so its length field is on this page.
        total = _TOTAL_LENGTH.unpack_from(page, off)[0]
        if total == 0:
            raise _Stop(f"zeroes at {format_lsn(lsn)}")
        if not RECORD_HEADER_SIZE <= total <= MAX_RECORD_SIZE_BYTES:
            raise _Stop(f"invalid record length {total} at {format_lsn(lsn)}")
        if total <= WAL_PAGE_SIZE - off:
            data = page[off:off + total]
            end = lsn + total
        else:
            end = advance_lsn(lsn, total)
            data = self._gather(lsn, page[off:], total)
        try:
            record = decode_record(data)
        except WalRecordError as e:
            if e.field == "crc":
                raise _Stop(f"bad CRC at {format_lsn(lsn)}") from None
            raise _Stop(f"invalid record at {format_lsn(lsn)}: {e.field}: {e.reason}") from None
        return ReadRecord(lsn, end, record, total)

    def _gather(self, lsn: int, head: memoryview, total: int) -> bytes:
        """The bytes of a record that continues past its first page."""
        parts = [head]
        got = len(head)
        checked = False
        pageaddr = lsn - lsn % WAL_PAGE_SIZE
        while True:
            if not checked and got >= RECORD_HEADER_SIZE:
                try:
                    check_record_header(b"".join(parts)[:RECORD_HEADER_SIZE])
                except WalRecordError as e:
                    raise _Stop(f"invalid record at {format_lsn(lsn)}: {e.field}: "
                                f"{e.reason}") from None
                checked = True
            if got == total:
                return b"".join(parts)
            pageaddr += WAL_PAGE_SIZE
            page = self._page(pageaddr, lsn)
            hdr = self._header(page, pageaddr, lsn, "continues onto it")
            missing = total - got
            if hdr.rem_len != missing:
                raise _Stop(f"wrong continuation length at {format_lsn(pageaddr)}: rem_len "
                            f"{hdr.rem_len}, the record at {format_lsn(lsn)} needs {missing} "
                            f"more bytes")
            take = min(missing, WAL_PAGE_SIZE - PAGE_HEADER_SIZE)
            parts.append(page[PAGE_HEADER_SIZE:PAGE_HEADER_SIZE + take])
            got += take

    # --- pages and segment files -----------------------------------------------------------

    def _page(self, pageaddr: int, record_lsn: int | None) -> memoryview:
        """The WAL page at ``pageaddr`` (unchecked), or _Stop when its segment is missing or
        ends before it. ``record_lsn``: the record that continues onto it, for messages."""
        rel = pageaddr - self._chunk_lsn
        if 0 <= rel < len(self._chunk):
            return self._chunk[rel:rel + WAL_PAGE_SIZE]
        seg_size = self.wal_segment_size
        segno = pageaddr // seg_size
        name = segment_file_name(segno)
        cont = "" if record_lsn is None else \
            f" (the record at {format_lsn(record_lsn)} continues into it)"
        if segno != self._segno:
            self.close()
            path = os.path.join(self.wal_dir, name)
            try:
                self._fd = osfile.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise _Stop(f"missing segment {name}{cont}") from None
            except OSError as e:
                raise IOFailure(e.errno or 5, f"could not open WAL segment {path}") from e
            self._segno = segno
        offset = pageaddr % seg_size
        want = min(READ_CHUNK_BYTES, seg_size - offset)
        buf = bytearray(want)   # new each time: views of the previous chunk stay valid
        view = memoryview(buf)
        got = 0
        while got < want:
            try:
                n = osfile.preadv(self._fd, [view[got:]], offset + got)
            except OSError as e:
                raise IOFailure(e.errno or 5, f"could not read WAL segment {name} at offset "
                                              f"{offset + got}") from e
            if n <= 0:
                break
            got += n
        whole = got - got % WAL_PAGE_SIZE
        if whole == 0:
            raise _Stop(f"segment {name} ends at byte {offset + got}, before page "
                        f"{format_lsn(pageaddr)}{cont}")
        self._chunk = view[:whole]
        self._chunk_lsn = pageaddr
        return self._chunk[:WAL_PAGE_SIZE]

    def _header(self, page: memoryview, pageaddr: int, record_lsn: int | None = None,
                how: str = "") -> PageHeader:
        """The checked header of ``page``, or _Stop naming what is wrong with it (and the
        record at ``record_lsn``, which ``how`` relates to the page). A zeroed header is the
        plain end of WAL when the next record would start on its page."""
        if pageaddr == self._header_lsn:
            return self._header_checked
        try:
            hdr = decode_page_header(page, pageaddr, self.wal_segment_size)
        except WalPageError as e:
            note = "" if record_lsn is None else f" (the record at {format_lsn(record_lsn)} {how})"
            if page[:PAGE_HEADER_SIZE] == _ZERO_PAGE_HEADER:
                if how == "starts on it":      # the plain end: name where the record was due
                    raise _Stop(f"zeroes at {format_lsn(record_lsn)}") from None
                raise _Stop(f"zeroes at {format_lsn(pageaddr)}{note}") from None
            raise _Stop(f"invalid page header at {format_lsn(pageaddr)}: {e.field}: "
                        f"{e}{note}") from None
        self._header_lsn = pageaddr
        self._header_checked = hdr
        return hdr

    # --- corruption in the middle ----------------------------------------------------------

    def _check_middle(self, bad_lsn: int, reason: str) -> None:
        """Raise WalCorruptMiddleError if a flush stamp proves the invalid record at
        ``bad_lsn`` durable (see the module docstring)."""
        if not self.check_middle_corruption:
            return
        proof = self._find_stamp_above(bad_lsn)
        if proof is not None:
            raise WalCorruptMiddleError(bad_lsn, proof[0], proof[1], reason)

    def _find_stamp_above(self, lsn: int) -> tuple[int, int] | None:
        """(pageaddr, stamp) of the first WAL page at or after the page holding ``lsn``,
        valid at its own address, whose flush stamp is > ``lsn``; None when there is none.

        Pages before the one holding ``lsn`` need no look: a flush writes from the page
        holding the previous flush's end on, so a page's stamp lies below its end. Every
        later page is read (a torn flush may leave holes, damage may zero any stretch), in
        this segment file and in every later one that exists."""
        seg_size = self.wal_segment_size
        first_page = lsn - lsn % WAL_PAGE_SIZE
        try:
            names = osfile.listdir(self.wal_dir)
        except FileNotFoundError:
            return None
        segnos = sorted(s for s in map(parse_segment_file_name, names)
                        if s is not None and s >= first_page // seg_size)
        for segno in segnos:
            pageaddr = max(first_page, segno * seg_size)
            while pageaddr < (segno + 1) * seg_size:
                try:
                    page = self._page(pageaddr, None)
                except _Stop:
                    break               # the segment file ends (or vanished): next one
                try:
                    hdr = decode_page_header(page, pageaddr, seg_size)
                except WalPageError:
                    pass                # never written, stale, torn or damaged: no proof
                else:
                    if hdr.prev_flush_end > lsn:
                        return pageaddr, hdr.prev_flush_end
                pageaddr += WAL_PAGE_SIZE
        return None

    def _first_record_on_page(self, page: memoryview, pageaddr: int) -> int | None:
        """Where the first record starting on this page starts (None: none does), read from
        its header; _Stop when the header is not valid for ``pageaddr``."""
        hdr = self._header(page, pageaddr)
        lsn = align_lsn(pageaddr + PAGE_HEADER_SIZE + hdr.rem_len)
        if lsn + RECORD_ALIGN > pageaddr + WAL_PAGE_SIZE:
            return None
        return lsn


def read_record_at(wal_dir: str, wal_segment_size: int, lsn: int) -> ReadRecord:
    """The record at ``lsn`` (a checkpoint record, say); WalError naming the LSN and why when
    there is no valid record there."""
    reader = WalReader(wal_dir, wal_segment_size, lsn)
    try:
        return reader._read_at(usable_lsn(lsn))
    except _Stop as stop:
        raise WalError(f"could not read the WAL record at {format_lsn(lsn)}: "
                       f"{stop.reason}") from None
    finally:
        reader.close()


def first_record_lsn(wal_dir: str, wal_segment_size: int) -> int | None:
    """The first record start in the oldest segment file of ``wal_dir`` (for waldump without
    a start LSN), or None when there is none."""
    check_segment_size(wal_segment_size)
    try:
        names = osfile.listdir(wal_dir)
    except FileNotFoundError:
        return None
    segnos = sorted(s for s in map(parse_segment_file_name, names) if s is not None and s > 0)
    if not segnos:
        return None
    start = segnos[0] * wal_segment_size
    reader = WalReader(wal_dir, wal_segment_size, start)
    try:
        for pageaddr in range(start, start + wal_segment_size, WAL_PAGE_SIZE):
            try:
                page = reader._page(pageaddr, None)
                lsn = reader._first_record_on_page(page, pageaddr)
            except _Stop:
                return None
            if lsn is not None:
                return lsn
        return None
    finally:
        reader.close()


def describe_record(rr: ReadRecord) -> str:
    """One waldump line: LSN, rmgr, length, xid, prev link, the rmgr's description, blocks."""
    rec = rr.record
    rm = find_rmgr(rec.rmgr)
    if rm is None:
        desc = f"info 0x{rec.info:02X}, payload {len(rec.payload)} bytes"
    else:
        try:
            desc = rm.describe(rec)
        except Exception as e:  # a describe bug must not stop a dump of damaged WAL
            desc = f"(describe failed: {type(e).__name__}: {e})"
    text = (f"rmgr: {rmgr_name(rec.rmgr):<6} len: {rr.length:>6}, tx: {rec.xid:>8}, "
            f"lsn: {format_lsn(rr.lsn)}, prev {format_lsn(rec.prev_lsn)}, desc: {desc}")
    for i, b in enumerate(rec.blocks):
        text += f", blkref #{i}: rel {b.rel} fork {b.fork} blk {b.block}"
        if b.image is not None:
            text += " FPW" + (f" (hole {b.hole_offset}+{b.hole_length})" if b.hole_length else "")
        if b.will_init:
            text += " will_init"
    return text
