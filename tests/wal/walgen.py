"""A tiny WAL writer for reader tests: builds the WAL stream in memory with wal.walpage's
page headers and wal.record's encoding, then writes whole segment files.

It is deliberately independent of wal/xlog.py (no buffers, no AIO, no syncs) so that reader
tests check the on-disk format, not one writer's behaviour. Records are placed exactly as
the format says: 8-byte aligned starts, never inside a page header, a page that begins
with the rest of a record carries ``rem_len`` = bytes of that record still to come, a page
whose first record starts right after the header carries rem_len 0, unused bytes zero.

Flushes are modelled too, for the flush stamp (walpage invariant 4): ``flush()`` marks the
current end as the durable end of a completed flush. When the files are written, every page
carries the stamp of the last flush that wrote it — flush k writes the pages from the one
holding F(k-1) to the one holding its last byte and stamps them F(k-1) — and records
appended after the last ``flush()`` form one more flush, in progress at the "crash", whose
pages carry the last flush's end. Without any ``flush()`` everything is that one flush,
stamped with the start: nothing is provably durable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from slonik.wal.record import WalRecord, encode_record
from slonik.wal.walpage import (
    PAGE_HEADER_SIZE,
    WAL_PAGE_SIZE,
    align_lsn,
    encode_page_header,
    next_record_lsn,
    segment_file_name,
    stamp_page_header,
)


@dataclass(frozen=True)
class Placed:
    lsn: int
    end_lsn: int
    record: WalRecord   # as written (prev_lsn filled in)
    length: int


class WalGen:
    def __init__(self, wal_dir: str, wal_segment_size: int = 64 * 1024,
                 start_lsn: int | None = None) -> None:
        self.wal_dir = wal_dir
        self.seg = wal_segment_size
        self.start_lsn = wal_segment_size if start_lsn is None else start_lsn
        self.base = self.start_lsn - self.start_lsn % WAL_PAGE_SIZE   # stream[0] is here
        self.stream = bytearray()
        self.cur = self.start_lsn     # where the next record goes (may be a page start)
        self.prev = 0
        self.placed: list[Placed] = []
        self.flushes: list[int] = []  # durable ends of completed flushes, ascending
        os.makedirs(wal_dir, exist_ok=True)

    # --- building ------------------------------------------------------------------------

    def _ensure(self, lsn: int) -> None:
        need = lsn - self.base
        if need > len(self.stream):
            self.stream.extend(bytes(need - len(self.stream)))

    def _start_page(self, pageaddr: int, rem_len: int) -> None:
        self._ensure(pageaddr + WAL_PAGE_SIZE)
        i = pageaddr - self.base
        self.stream[i:i + PAGE_HEADER_SIZE] = encode_page_header(pageaddr, rem_len, self.seg, 0)

    def append(self, rec: WalRecord, *, prev_lsn: int | None = None) -> Placed:
        """Place ``rec`` (its prev_lsn set to the previous record's LSN unless given)."""
        rec = replace(rec, prev_lsn=self.prev if prev_lsn is None else prev_lsn)
        data = encode_record(rec)
        return self.append_bytes(data, rec)

    def append_bytes(self, data: bytes, rec: WalRecord | None = None) -> Placed:
        """Place raw record bytes (which may be invalid on purpose)."""
        pos = self.cur
        if pos % WAL_PAGE_SIZE == 0:
            self._start_page(pos, 0)
            pos += PAGE_HEADER_SIZE
        elif pos - self.base >= len(self.stream):     # first record of a mid-page start
            self._start_page(pos - pos % WAL_PAGE_SIZE, 0)
        lsn = pos
        i = 0
        n = len(data)
        while True:
            off = pos % WAL_PAGE_SIZE
            if off == 0:
                self._start_page(pos, n - i)
                pos += PAGE_HEADER_SIZE
                off = PAGE_HEADER_SIZE
            take = min(WAL_PAGE_SIZE - off, n - i)
            self._ensure(pos + take)
            j = pos - self.base
            self.stream[j:j + take] = data[i:i + take]
            i += take
            pos += take
            if i == n:
                break
        placed = Placed(lsn, pos, rec, n)
        self.placed.append(placed)
        self.prev = lsn
        self.cur = next_record_lsn(pos)
        if self.cur % WAL_PAGE_SIZE == PAGE_HEADER_SIZE:
            self.cur -= PAGE_HEADER_SIZE   # the header is written when the page is entered
        return placed

    def flush(self) -> int:
        """A completed flush of everything appended so far; returns its durable end (a
        record boundary, aligned as the real writer's)."""
        end = align_lsn(self.end_lsn)
        if not self.flushes or self.flushes[-1] < end:
            self.flushes.append(end)
        return end

    def stamps(self) -> dict[int, int]:
        """pageaddr -> flush stamp of every page in the stream (see the module docstring)."""
        out: dict[int, int] = {}
        bounds = [self.start_lsn, *self.flushes]
        for prev, end in zip(bounds, bounds[1:], strict=False):
            page = prev - prev % WAL_PAGE_SIZE
            while page < end:
                out[page] = prev
                page += WAL_PAGE_SIZE
        last = bounds[-1]
        if self.end_lsn > last:                       # the flush in progress at the crash
            page = last - last % WAL_PAGE_SIZE
            while page < self.base + len(self.stream):
                out[page] = last
                page += WAL_PAGE_SIZE
        return out

    @property
    def end_lsn(self) -> int:
        return self.placed[-1].end_lsn if self.placed else self.start_lsn

    # --- writing -------------------------------------------------------------------------

    def segments(self) -> range:
        last = max(self.base + len(self.stream) - 1, self.base)
        return range(self.base // self.seg, last // self.seg + 1)

    def path(self, segno: int) -> str:
        return os.path.join(self.wal_dir, segment_file_name(segno))

    def write(self, *, truncate_last_at: int | None = None) -> None:
        """Write every segment the stream touches, zero-filled to full size (the last one cut
        to ``truncate_last_at`` bytes when given; after one filled to its end, the next,
        all zero), each page stamped as ``stamps()`` says."""
        for pageaddr, stamp in self.stamps().items():
            i = pageaddr - self.base
            if 0 <= i < len(self.stream) and any(self.stream[i:i + 2]):   # a started page
                stamp_page_header(memoryview(self.stream)[i:i + PAGE_HEADER_SIZE], stamp)
        segs = self.segments()
        for segno in segs:
            start = segno * self.seg
            content = bytearray(self.seg)
            lo = max(start, self.base)
            hi = min(start + self.seg, self.base + len(self.stream))
            if hi > lo:
                content[lo - start:hi - start] = self.stream[lo - self.base:hi - self.base]
            if segno == segs[-1] and truncate_last_at is not None:
                del content[truncate_last_at:]
            with open(self.path(segno), "wb") as f:
                f.write(content)
        if truncate_last_at is None and (self.base + len(self.stream)) % self.seg == 0:
            # A stream that fills its last segment to the end: the writer has the next one
            # prepared, zero-filled (Wal.prepare_segments), where a reader finds the end.
            with open(self.path(segs[-1] + 1), "wb") as f:
                f.write(bytes(self.seg))

    # --- damaging ------------------------------------------------------------------------

    def file_offset(self, lsn: int) -> tuple[str, int]:
        return self.path(lsn // self.seg), lsn % self.seg

    def xor_byte(self, lsn: int, mask: int = 0xFF) -> None:
        """Flip bits of the byte at ``lsn`` in the written segment file."""
        assert mask & 0xFF
        path, off = self.file_offset(lsn)
        with open(path, "r+b") as f:
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            f.write(bytes([b ^ mask]))

    def zero_range(self, lsn: int, nbytes: int) -> None:
        path, off = self.file_offset(lsn)
        assert off + nbytes <= self.seg
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(bytes(nbytes))

    def records_touching(self, lsn: int) -> list[int]:
        """Indexes of records that a change to the byte at ``lsn`` invalidates: those whose
        bytes include it, or that have bytes on the page whose header includes it."""
        off = lsn % WAL_PAGE_SIZE
        out = []
        if off < PAGE_HEADER_SIZE:
            page = lsn - off
            for i, p in enumerate(self.placed):
                if p.lsn < page + WAL_PAGE_SIZE and p.end_lsn > page:
                    out.append(i)
        else:
            for i, p in enumerate(self.placed):
                if p.lsn <= lsn < p.end_lsn:
                    out.append(i)
        return out
