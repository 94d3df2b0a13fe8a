"""WAL pages and LSN arithmetic (pure: no I/O).

The WAL stream is a sequence of 8 KiB pages. Each page starts with a fixed header; record
bytes fill the rest, and a record that does not fit continues on the next page, whose
header says how many bytes of it remain (``rem_len``). An LSN is a byte position in the
stream, page headers included (as in PostgreSQL), so the page of an LSN is ``lsn //
WAL_PAGE_SIZE`` and its segment file ``lsn // wal_segment_size``.

Header layout (32 bytes, little-endian), WAL page format version 2::

    magic u16 | info u16 | rem_len u32 | pageaddr u64 | prev_flush_end u64
    | wal_segment_size u32 | crc u32

``magic`` names the format version (``PAGE_MAGIC_BY_VERSION``; version 1 had a 24-byte
header without ``prev_flush_end`` and ``crc``). ``crc`` is the CRC-32C of the 32 header
bytes with the crc field read as zero. ``prev_flush_end`` is the flush stamp: the durable
end of WAL (the LSN up to which it was written *and synced*) when the flush that last wrote
this page began — the end of the previous completed flush.

Invariants:
1. A record starts at an 8-byte aligned LSN that is not inside a page header.
2. ``pageaddr`` equals the LSN of the page's first byte; a page whose header says otherwise
   (for example a recycled segment's old page) is not valid WAL at this position.
3. Unused bytes after the last record of a page are zero, so the end of WAL is seen as
   "zeroes" rather than guessed.
4. The stamp rule: a page whose header is valid at its position and carries
   ``prev_flush_end = S`` proves that every WAL byte below ``S`` was durable before the
   page was written (flushes run one at a time, each syncs before the next starts, and
   each stamps every page it writes with the end of the one before). ``S`` is a record
   boundary (flushes end at one) and ``S < pageaddr + WAL_PAGE_SIZE`` (a flush writes from
   the page holding the previous flush's end onwards). The stamp says nothing about bytes
   at or after ``S``: a page re-written by a later flush proves only what that flush knew.
5. The header lies within the page's first 512-byte sector, which a disk writes whole, so a
   crash leaves a header old or new, never mixed; a header whose CRC fails was damaged.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import crc32c as _crc32c
from slonik.wal.errors import WalError
from slonik.wal.lsn import format_lsn

WAL_PAGE_SIZE = 8192
WAL_PAGE_FORMAT_VERSION = 2
PAGE_MAGIC_BY_VERSION = {1: 0xD118, 2: 0xD119}   # every format this code can name
PAGE_MAGIC = PAGE_MAGIC_BY_VERSION[WAL_PAGE_FORMAT_VERSION]
PAGE_HEADER = struct.Struct("<HHIQQII")
PAGE_HEADER_SIZE = PAGE_HEADER.size  # 32, a multiple of the record alignment
PAGE_HEADER_STAMP_OFFSET = 16        # prev_flush_end u64
PAGE_HEADER_CRC_OFFSET = 28          # crc u32, the last header field
SECTOR_SIZE_BYTES = 512              # the unit a disk writes atomically (invariant 5)
RECORD_ALIGN = 8
USABLE_PAGE_BYTES = WAL_PAGE_SIZE - PAGE_HEADER_SIZE

INFO_FIRST_IN_SEGMENT = 0x0001
INFO_CONTINUATION = 0x0002  # the page starts with the rest of a record (rem_len > 0)
INFO_KNOWN = INFO_FIRST_IN_SEGMENT | INFO_CONTINUATION

WAL_SEGMENT_SIZE_MIN = 64 * 1024          # bytes; small segments make tests span files
WAL_SEGMENT_SIZE_MAX = 1024 * 1024 * 1024  # bytes; as PostgreSQL's limit
WAL_SEGMENT_SIZE_DEFAULT = 16 * 1024 * 1024

assert PAGE_HEADER_SIZE % RECORD_ALIGN == 0
assert PAGE_HEADER_CRC_OFFSET + 4 == PAGE_HEADER_SIZE <= SECTOR_SIZE_BYTES
assert PAGE_HEADER.pack(0, 0, 0, 0, 1, 0, 0)[PAGE_HEADER_STAMP_OFFSET] == 1


class WalPageError(WalError):
    """A WAL page header that is not valid at its position; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PageHeader(NamedTuple):
    magic: int
    info: int
    rem_len: int
    pageaddr: int
    prev_flush_end: int   # the flush stamp (invariant 4)
    wal_segment_size: int


def check_segment_size(wal_segment_size: object) -> int:
    """Validate ``wal_segment_size`` (bytes): a power of two in range, whole pages."""
    if (not isinstance(wal_segment_size, int) or isinstance(wal_segment_size, bool)
            or not WAL_SEGMENT_SIZE_MIN <= wal_segment_size <= WAL_SEGMENT_SIZE_MAX
            or wal_segment_size & (wal_segment_size - 1)):
        raise ValueError(f"wal_segment_size must be a power of two in {WAL_SEGMENT_SIZE_MIN}.."
                         f"{WAL_SEGMENT_SIZE_MAX} bytes, got {wal_segment_size!r}")
    return wal_segment_size


def encode_page_header(pageaddr: int, rem_len: int, wal_segment_size: int,
                       prev_flush_end: int) -> bytes:
    """The 32 header bytes of the page at ``pageaddr``, stamped with ``prev_flush_end``."""
    assert pageaddr % WAL_PAGE_SIZE == 0, f"page address {pageaddr} is not page-aligned"
    assert 0 <= prev_flush_end < pageaddr + WAL_PAGE_SIZE, \
        f"stamp {prev_flush_end} lies past page {pageaddr}"
    info = INFO_CONTINUATION if rem_len else 0
    if pageaddr % wal_segment_size == 0:
        info |= INFO_FIRST_IN_SEGMENT
    raw = bytearray(PAGE_HEADER.pack(PAGE_MAGIC, info, rem_len, pageaddr, prev_flush_end,
                                     wal_segment_size, 0))
    _seal(raw)
    return bytes(raw)


def stamp_page_header(header, prev_flush_end: int) -> None:
    """Set the flush stamp of the (valid, writable) header in ``header`` and re-seal its CRC:
    what a flush does to every page it is about to write."""
    pageaddr = struct.unpack_from("<Q", header, 8)[0]
    assert 0 <= prev_flush_end < pageaddr + WAL_PAGE_SIZE, \
        f"stamp {prev_flush_end} lies past page {pageaddr}"
    struct.pack_into("<Q", header, PAGE_HEADER_STAMP_OFFSET, prev_flush_end)
    _seal(header)


def _seal(header) -> None:
    struct.pack_into("<I", header, PAGE_HEADER_CRC_OFFSET, 0)
    struct.pack_into("<I", header, PAGE_HEADER_CRC_OFFSET,
                     _crc32c.crc32c(bytes(header[:PAGE_HEADER_SIZE])))


def _header_crc(data) -> int:
    return _crc32c.crc32c(bytes(data[PAGE_HEADER_CRC_OFFSET + 4:PAGE_HEADER_SIZE]),
                          _crc32c.crc32c(bytes(4), _crc32c.crc32c(
                              bytes(data[:PAGE_HEADER_CRC_OFFSET]))))


def page_format_version(magic: int) -> int | None:
    """The WAL page format version a magic number names (None: not a WAL page magic)."""
    for version, m in PAGE_MAGIC_BY_VERSION.items():
        if m == magic:
            return version
    return None


def decode_page_header(data, expected_pageaddr: int, wal_segment_size: int) -> PageHeader:
    """Decode and check a page header found at ``expected_pageaddr``: format version, CRC,
    then each field (``WalPageError.field`` names the first that is wrong)."""
    if len(data) < PAGE_HEADER_SIZE:
        raise WalPageError("length", f"WAL page at {format_lsn(expected_pageaddr)} is "
                                     f"{len(data)} bytes, shorter than its header")
    *fields, crc = PAGE_HEADER.unpack_from(data, 0)
    hdr = PageHeader(*fields)
    where = f"WAL page at {format_lsn(expected_pageaddr)}"
    if hdr.magic != PAGE_MAGIC:
        version = page_format_version(hdr.magic)
        if version is not None:
            raise WalPageError("version", f"{where} is in WAL page format version {version}; "
                                          f"this Slonik reads version {WAL_PAGE_FORMAT_VERSION}")
        raise WalPageError("magic", f"{where}: bad magic 0x{hdr.magic:04X}")
    computed = _header_crc(data)
    if computed != crc:
        raise WalPageError("crc", f"{where}: header CRC-32C is 0x{crc:08X}, computed "
                                  f"0x{computed:08X}")
    if hdr.pageaddr != expected_pageaddr:
        raise WalPageError("pageaddr", f"{where}: header says it is page "
                                       f"{format_lsn(hdr.pageaddr)}")
    if hdr.wal_segment_size != wal_segment_size:
        raise WalPageError("wal_segment_size", f"{where}: written with wal_segment_size "
                                               f"{hdr.wal_segment_size}, expected {wal_segment_size}")
    if hdr.info & ~INFO_KNOWN:
        raise WalPageError("info", f"{where}: unknown info bits 0x{hdr.info:04X}")
    first = expected_pageaddr % wal_segment_size == 0
    if bool(hdr.info & INFO_FIRST_IN_SEGMENT) != first:
        raise WalPageError("info", f"{where}: first-in-segment flag is wrong")
    if bool(hdr.info & INFO_CONTINUATION) != (hdr.rem_len > 0):
        raise WalPageError("rem_len", f"{where}: continuation flag disagrees with "
                                      f"rem_len {hdr.rem_len}")
    if not hdr.prev_flush_end < expected_pageaddr + WAL_PAGE_SIZE:
        raise WalPageError("prev_flush_end", f"{where}: flush stamp "
                                             f"{format_lsn(hdr.prev_flush_end)} lies past "
                                             f"the page")
    return hdr


# --- LSN arithmetic ---------------------------------------------------------------------------

def usable_lsn(lsn: int) -> int:
    """Where record bytes at ``lsn`` really go: past the page header at a page start."""
    return lsn + PAGE_HEADER_SIZE if lsn % WAL_PAGE_SIZE == 0 else lsn


def align_lsn(lsn: int) -> int:
    return (lsn + RECORD_ALIGN - 1) & ~(RECORD_ALIGN - 1)


def advance_lsn(start: int, nbytes: int) -> int:
    """The LSN just after ``nbytes`` of record data written from ``start``, skipping the
    headers of the pages it crosses. ``start`` must not lie inside a page header."""
    off = start % WAL_PAGE_SIZE
    assert off >= PAGE_HEADER_SIZE, f"LSN {format_lsn(start)} lies inside a page header"
    room = WAL_PAGE_SIZE - off
    if nbytes <= room:
        return start + nbytes
    nbytes -= room
    page = start - off + WAL_PAGE_SIZE
    full, rem = divmod(nbytes, USABLE_PAGE_BYTES)
    if rem == 0:
        return page + full * WAL_PAGE_SIZE  # ends exactly at a page end
    return page + full * WAL_PAGE_SIZE + PAGE_HEADER_SIZE + rem


def next_record_lsn(end: int) -> int:
    """Where the record after one ending at ``end`` starts."""
    return usable_lsn(align_lsn(end))


def segment_of(lsn: int, wal_segment_size: int) -> int:
    return lsn // wal_segment_size


def segment_file_name(segno: int) -> str:
    return f"{segno:016X}"


def parse_segment_file_name(name: str) -> int | None:
    """The segment number of a WAL file name, or None if ``name`` is not one."""
    if len(name) != 16:
        return None
    try:
        return int(name, 16)
    except ValueError:
        return None
