"""The C record writers (engine/wal_build.py over storage/_pagecheck's slk_wal_build and
slk_wal_build_span) that ``Wal.insert`` uses for image-less records: the in-page one writes
exactly the bytes of its Python reference ``wal.record.encode_fields`` and nothing else;
the crossing one writes exactly what ``wal.xlog.copy_in`` of that record writes (page
headers, continuation lengths, ring wrap, segment starts) and nothing else; and a Wal using
them leaves WAL segment files byte for byte equal to those of a Wal without them, on every
io method."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.wal_build import C_RECORD_WRITER_FOR
from slonik.storage.page import BLCKSZ, init_page
from slonik.wal.reader import WalReader
from slonik.wal.record import BlockRef, encode_fields, plain_block_header
from slonik.wal.walpage import PAGE_HEADER_SIZE, WAL_PAGE_SIZE, align_lsn
from slonik.wal.xlog import BlockSpec, RecordWriters, Wal, copy_in

needs_c = pytest.mark.skipif(C_RECORD_WRITER_FOR is None,
                             reason="storage._pagecheck not built (no C compiler at install)")

SEG = 64 * 1024
FIRST = SEG + PAGE_HEADER_SIZE

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
plain_blocks = st.lists(st.tuples(u32, u8, u32, st.booleans()), max_size=5)


@needs_c
@settings(max_examples=300, deadline=None)
@given(u64, u64, u8, u8, plain_blocks, st.binary(max_size=600), st.integers(0, 1000))
def test_c_writer_equals_encode_fields(xid, prev, rmgr, info, blocks, payload, at):
    """For arbitrary header fields, image-less blocks and payloads, the bytes the C writer
    puts at ``at`` are encode_fields' record, its return value is their length, and every
    byte around them keeps its fill value."""
    buf = bytearray(b"\xa5" * WAL_PAGE_SIZE)
    write = C_RECORD_WRITER_FOR(buf, 1, SEG).in_page
    hdrs = b"".join(plain_block_header(r, f, b, w) for r, f, b, w in blocks)
    n = write(at, xid, prev, rmgr, info, hdrs, len(blocks), payload, len(payload))
    want = encode_fields(rmgr, info, xid, payload,
                         tuple(BlockRef(r, f, b, will_init=w) for r, f, b, w in blocks), prev)
    assert n == len(want)
    assert bytes(buf[at:at + n]) == want
    assert buf[:at] == b"\xa5" * at and buf[at + n:] == b"\xa5" * (len(buf) - at - n)


@needs_c
def test_c_writer_refuses_fields_out_of_range_without_writing():
    """A field the C types cannot hold raises OverflowError or TypeError (the inserter then
    takes the Python path, which names the field) and leaves the buffer untouched."""
    buf = bytearray(WAL_PAGE_SIZE)
    write, cross, _pair = C_RECORD_WRITER_FOR(buf, 1, SEG)
    for args in [(0, 1, 0, 256, 0, b"", 0, b"", 0), (0, -1, 0, 1, 0, b"", 0, b"", 0),
                 (0, 1 << 64, 0, 1, 0, b"", 0, b"", 0), (0, 1, 0, 1, 0, b"", 0, "s", 1),
                 (0, 1.5, 0, 1, 0, b"", 0, b"", 0)]:
        with pytest.raises((OverflowError, TypeError)):
            write(*args)
        with pytest.raises((OverflowError, TypeError)):
            cross(*args)
    assert buf == bytearray(WAL_PAGE_SIZE)
    with pytest.raises(ValueError, match="do not hold 2 pages"):
        C_RECORD_WRITER_FOR(buf, 2, SEG)


def _workload(w: Wal, rng: random.Random, page: bytearray) -> list[tuple[int, int]]:
    """Inserts and flushes of every kind: small records in a page, records crossing pages,
    image-less blocks, a full-page image (page LSN at the redo point), will_init, a
    memoryview payload, and refused fields; returns the (start, end) of each record."""
    out = []
    for i in range(600):
        kind = i % 9
        if kind == 0:
            payload = rng.randbytes(rng.randrange(9000, 20000))  # crosses pages
        else:
            payload = rng.randbytes(rng.randrange(0, 300))
        blocks: tuple = ()
        if kind in (1, 2):
            blocks = (BlockSpec(16384 + i % 3, 0, i % 11),)
        elif kind == 3:
            blocks = (BlockSpec(16384, 0, 1, will_init=True), BlockSpec(16385, 1, 2))
        elif kind == 4:
            blocks = (BlockSpec(16384, 0, 5, page=memoryview(page), page_lsn=0,
                                hole=(100, 8000)),)
        if kind == 5:
            payload = memoryview(payload)
        if kind == 6 and i % 4 == 0:
            with pytest.raises(ValueError, match="rmgr"):
                w.insert(256, 0, i + 1, bytes(payload))
            continue
        out.append(w.insert(10 + kind, i % 5, i + 1, payload, blocks))
        if kind in (7, 8):
            w.flush(out[-1][1])
    w.flush()
    return out


@needs_c
def test_wal_with_c_writer_writes_the_same_files(aio, tmp_path):
    """The same inserts and flushes into a Wal with the C writer and into one without give
    the same (start, end) LSNs and byte-identical segment files, which read back record for
    record (so the C path changed no byte of what reaches disk, stamps included)."""
    page = bytearray(BLCKSZ)
    init_page(page)
    results = {}
    used = []

    crossed = []

    def counted(ring, npages, seg):
        write, cross, _pair = C_RECORD_WRITER_FOR(ring, npages, seg)

        def counting(*args):
            n = write(*args)
            used.append(n)
            return n

        def crossing(*args):
            end = cross(*args)
            crossed.append(end)
            return end
        return RecordWriters(counting, crossing)

    for name, writer in (("py", None), ("c", counted)):
        d = tmp_path / name
        d.mkdir()
        w = Wal(str(d), aio, wal_segment_size=SEG, wal_buffers=8, record_writer_for=writer)
        lsns = _workload(w, random.Random(7), page)
        st = w.stats()
        w.close()
        files = {f: (d / f).read_bytes() for f in sorted(os.listdir(d))}
        results[name] = (lsns, files, st.records, st.record_bytes, st.full_page_images)
    assert len(used) > 300  # most records went through the C writer
    assert len(crossed) > 60  # records crossing pages (and ring-full retries) did too
    assert results["c"][0] == results["py"][0]
    assert results["c"][1].keys() == results["py"][1].keys()
    for f in results["py"][1]:
        assert results["c"][1][f] == results["py"][1][f], f"segment {f} differs"
    assert results["c"][2:] == results["py"][2:]
    recs = list(WalReader(str(tmp_path / "c"), SEG, FIRST))
    assert [(r.lsn, r.end_lsn) for r in recs] == results["c"][0]


@needs_c
@settings(max_examples=400, deadline=None)
@given(u64, u64, u8, u8, plain_blocks, st.integers(0, 40000), st.integers(1, 12),
       st.integers(0, 200), st.integers(0, WAL_PAGE_SIZE // 8 - 1), st.booleans())
def test_c_crossing_writer_equals_copy_in(xid, prev, rmgr, info, blocks, plen, npages,
                                          page_no, slot8, page_start):
    """For arbitrary header fields, image-less blocks, payloads up to five pages, ring
    sizes and stream positions (any 8-byte aligned offset in a page, or a page start; the
    segment of 64 KiB is 8 pages, so records run over segment starts and around the ring),
    the crossing writer leaves the ring byte for byte as copy_in of encode_fields' record
    does (page headers with continuation lengths and first-in-segment flags, zeroed
    tails), touches nothing else, and returns copy_in's end; checked by writing both into
    rings filled with 0xA5."""
    payload = bytes(random.Random(plen).randbytes(plen))
    cur = SEG + page_no * WAL_PAGE_SIZE + (0 if page_start else align_lsn(slot8 * 8))
    if not page_start and cur % WAL_PAGE_SIZE < PAGE_HEADER_SIZE:
        cur += PAGE_HEADER_SIZE   # a record starts after the page header
    hdrs = b"".join(plain_block_header(r, f, b, w) for r, f, b, w in blocks)
    record = encode_fields(rmgr, info, xid, payload,
                           tuple(BlockRef(r, f, b, will_init=w) for r, f, b, w in blocks), prev)
    npages = max(npages, len(record) // (WAL_PAGE_SIZE - PAGE_HEADER_SIZE) + 2)
    want = bytearray(b"\xa5" * (npages * WAL_PAGE_SIZE))
    got = bytearray(want)
    start, end = copy_in(memoryview(want), npages, SEG, cur, record)
    cross = C_RECORD_WRITER_FOR(got, npages, SEG).crossing
    assert cross(cur, xid, prev, rmgr, info, hdrs, len(blocks), payload, len(payload)) == end
    assert got == want
    assert start == (cur + PAGE_HEADER_SIZE if cur % WAL_PAGE_SIZE == 0 else cur)
