"""WAL reader: following records across pages and segments, and stopping exactly where the
WAL stops being valid — quietly at a torn tail, loudly at corruption in the middle.

WAL files are built by tests/wal/walgen.py (independent of the real writer) with 64 KiB
segments, so modest records span pages and segments. walgen models flushes and stamps each
page with the durable end of the flush before the last one that wrote it (walpage
invariant 4): corruption in the middle means "below a stamp found on a later valid page".
"""

from __future__ import annotations

import errno
import os
import random
import struct
import tempfile

import crc32c
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from slonik.aio import osfile
from slonik.aio.errors import IOFailure
from slonik.engine.wal_decode import C_SCANNER
from slonik.wal.errors import WalError
from slonik.wal.lsn import format_lsn
from slonik.wal.reader import (
    ReadRecord,
    WalCorruptMiddleError,
    WalReader,
    describe_record,
    first_record_lsn,
    read_record_at,
    scan_records_py,
)
from slonik.wal.record import BLCKSZ, MAX_RECORD_SIZE_BYTES, RECORD_HEADER_SIZE, BlockRef, WalRecord
from slonik.wal.rmgr import RM_TEST, ResourceManager, find_rmgr, register_rmgr
from slonik.wal.walpage import (
    PAGE_HEADER_SIZE,
    PAGE_MAGIC_BY_VERSION,
    RECORD_ALIGN,
    WAL_PAGE_FORMAT_VERSION,
    WAL_PAGE_SIZE,
    WalPageError,
    decode_page_header,
    segment_file_name,
    stamp_page_header,
)

from tests.wal.walgen import WalGen

SEG = 64 * 1024


def rec_of_size(total: int, seed: int = 0, xid: int = 1) -> WalRecord:
    """A test record whose encoding is ``total`` bytes."""
    assert total >= RECORD_HEADER_SIZE
    return WalRecord(RM_TEST, 0, xid, random.Random(seed).randbytes(total - RECORD_HEADER_SIZE))


def build(wal_dir: str, sizes, seg: int = SEG, *, flushed: int = 0) -> WalGen:
    """WAL of records of ``sizes`` bytes; each of the first ``flushed`` records is a flush
    of its own (as synchronous commits are), the rest are the flush in progress."""
    g = WalGen(wal_dir, seg)
    for i, n in enumerate(sizes):
        g.append(rec_of_size(n, seed=i, xid=i + 1))
        if i < flushed:
            g.flush()
    g.write()
    return g


def expected_proof(g: WalGen, bad: int, damaged_lsn: int) -> int | None:
    """The model's answer: the stamp > ``bad`` on a page at or after the page holding
    ``bad``, not the page whose header ``damaged_lsn`` hits, or None."""
    damaged_header = damaged_lsn - damaged_lsn % WAL_PAGE_SIZE \
        if damaged_lsn % WAL_PAGE_SIZE < PAGE_HEADER_SIZE else None
    first = bad - bad % WAL_PAGE_SIZE
    for page, stamp in sorted(g.stamps().items()):
        if page >= first and page != damaged_header and stamp > bad:
            return stamp
    return None


def read_all(g: WalGen, **kw) -> tuple[WalReader, list[ReadRecord]]:
    reader = WalReader(g.wal_dir, g.seg, g.start_lsn, **kw)
    return reader, list(reader)


def assert_read_prefix(g: WalGen, got: list[ReadRecord], n: int) -> None:
    assert len(got) == n, f"read {len(got)} records, expected {n}"
    for p, rr in zip(g.placed[:n], got, strict=True):
        assert (rr.lsn, rr.end_lsn, rr.length) == (p.lsn, p.end_lsn, p.length)
        assert rr.record == p.record


sizes_strategy = st.lists(st.one_of(st.integers(32, 200), st.integers(32, 3 * WAL_PAGE_SIZE),
                                    st.integers(32, 100 * 1024)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(sizes_strategy)
def test_reads_every_record_across_pages_and_segments(sizes):
    """Every record written is read back with its LSN, end LSN and contents, records
    spanning pages and segments included; the WAL then ends quietly at zeroes."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, sizes, flushed=len(sizes) // 2)
        reader, got = read_all(g, check_middle_corruption=True)
        assert_read_prefix(g, got, len(sizes))
        assert reader.end_lsn == g.end_lsn
        assert reader.last_lsn == g.placed[-1].lsn
        assert reader.stop_reason.startswith("zeroes at"), reader.stop_reason


def test_spanning_records_really_span():
    """The layout the reader is tested on: a 100 KiB record crosses two segment boundaries
    and many pages; a record may end exactly at a page end and at a segment end."""
    with tempfile.TemporaryDirectory() as d:
        first = WAL_PAGE_SIZE - PAGE_HEADER_SIZE                 # fills page 0 exactly
        to_seg_end = 7 * (WAL_PAGE_SIZE - PAGE_HEADER_SIZE)      # fills pages 1..7: segment 1
        g = build(d, [first, to_seg_end, 100 * 1024, 40, 100])
        assert g.placed[0].end_lsn == SEG + WAL_PAGE_SIZE
        assert g.placed[1].end_lsn == 2 * SEG
        assert g.placed[2].lsn == 2 * SEG + PAGE_HEADER_SIZE
        assert g.placed[2].end_lsn > 3 * SEG + PAGE_HEADER_SIZE
        assert len(g.segments()) == 3
        reader, got = read_all(g)
        assert_read_prefix(g, got, 5)


def test_start_in_the_middle_and_at_a_page_start():
    """Iteration may start at any record; a page-start LSN means its first record."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [WAL_PAGE_SIZE - PAGE_HEADER_SIZE, 100, 200, 20000, 64])
        for k, p in enumerate(g.placed):
            got = list(WalReader(d, SEG, p.lsn))
            assert [rr.lsn for rr in got] == [q.lsn for q in g.placed[k:]]
        got = list(WalReader(d, SEG, SEG + WAL_PAGE_SIZE))      # page start of record 1
        assert got[0].lsn == g.placed[1].lsn


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(32, 3000), min_size=3, max_size=12),
       st.lists(st.integers(32, 12000), max_size=3), st.data())
def test_corruption_in_the_last_flush_stops_exactly_before_it(small, big, data):
    """Flip bits of any byte the last flush (the one in progress at the crash) wrote at or
    after the previous flush's durable end: replay yields exactly the records before the
    first record the byte belongs to (its bytes, or the header of a page it has bytes on),
    ends quietly there, and never calls it corruption in the middle — the bytes may be a
    torn write. A byte in alignment padding touches no record, and everything is read."""
    sizes = small + big
    random.Random(len(sizes)).shuffle(sizes)
    with tempfile.TemporaryDirectory() as d:
        flushed = data.draw(st.integers(0, len(sizes) - 1), label="completed flushes")
        g = build(d, sizes, flushed=flushed)
        last_durable = g.flushes[-1] if g.flushes else g.start_lsn
        x = data.draw(st.integers(last_durable, g.end_lsn - 1), label="corrupt lsn")
        g.xor_byte(x, data.draw(st.integers(1, 255), label="mask"))
        touching = g.records_touching(x)
        expect = touching[0] if touching else len(sizes)
        assert expect >= flushed
        reader, got = read_all(g, check_middle_corruption=True)
        assert_read_prefix(g, got, expect)
        if expect < len(sizes):
            stop_lsn = g.placed[expect].lsn
            assert format_lsn(stop_lsn) in reader.stop_reason, reader.stop_reason
            assert reader.end_lsn == (g.placed[expect - 1].end_lsn if expect else g.start_lsn)
        else:
            assert reader.end_lsn == g.end_lsn


@pytest.mark.parametrize("offset", range(PAGE_HEADER_SIZE))
def test_every_page_header_byte_is_checked(offset):
    """A flip in any byte of a page header (the header CRC covers them all) ends WAL before
    the first record with bytes on that page."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [3000, 3000, 3000, 3000])
        g.xor_byte(SEG + WAL_PAGE_SIZE + offset, 0x01)
        reader, got = read_all(g)
        assert len(got) == g.records_touching(SEG + WAL_PAGE_SIZE + offset)[0] == 2
        assert format_lsn(SEG + WAL_PAGE_SIZE) in reader.stop_reason, reader.stop_reason


def middle_sizes(rng: random.Random) -> list[int]:
    return [rng.choice([40, 100, 500, 2000]) for _ in range(300)]


def assert_refuses(g: WalGen, bad_index: int, reader_kw: dict | None = None, *,
                   modelled: bool = True) -> WalCorruptMiddleError:
    """Iteration raises WalCorruptMiddleError naming the bad record's LSN after yielding
    exactly the records before it; without the check the same WAL ends quietly there.
    ``modelled``: the proof is one of ``g``'s own pages, with the stamp walgen gave it."""
    bad = g.placed[bad_index]
    reader = WalReader(g.wal_dir, g.seg, g.start_lsn,
                       **(reader_kw or {"check_middle_corruption": True}))
    got = []
    with pytest.raises(WalCorruptMiddleError) as ei:
        for rr in reader:
            got.append(rr)
    assert_read_prefix(g, got, bad_index)
    e = ei.value
    assert isinstance(e, WalError)
    assert e.lsn == bad.lsn
    assert f"corrupt in the middle at {format_lsn(bad.lsn)}" in str(e)
    assert "refusing to start" in str(e)
    assert e.durable_lsn > bad.lsn and e.proof_lsn >= bad.lsn - bad.lsn % WAL_PAGE_SIZE
    if modelled:
        assert g.stamps()[e.proof_lsn] == e.durable_lsn
    quiet, got = read_all(g)
    assert len(got) == bad_index and format_lsn(bad.lsn) in quiet.stop_reason
    return e


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.data())
def test_corruption_in_the_middle_refuses_to_start(seed, data):
    """A corrupt byte anywhere below the durable end a later flush stamped (every record
    here is a flush of its own, like synchronous commits, and the WAL is far smaller than
    wal_buffers would be): iteration raises WalCorruptMiddleError naming the LSN of the bad
    record and the stamp that proves it durable; the records before it have been yielded.
    Without the check the stop is quiet. The one way to escape: damage to the header of
    the only page that carries the proof (checked against the model's answer)."""
    with tempfile.TemporaryDirectory() as d:
        sizes = middle_sizes(random.Random(seed))
        g = build(d, sizes, flushed=len(sizes) - 1)
        x = data.draw(st.integers(g.start_lsn, g.flushes[-1] - 1), label="x")
        touching = g.records_touching(x)
        assume(touching)                       # not alignment padding
        g.xor_byte(x, data.draw(st.integers(1, 255), label="mask"))
        bad = g.placed[touching[0]]
        if expected_proof(g, bad.lsn, x) is None:
            quiet, got = read_all(g, check_middle_corruption=True)
            assert len(got) == touching[0] and format_lsn(bad.lsn) in quiet.stop_reason
            return
        assert_refuses(g, touching[0])


def test_small_wal_damage_found_by_hypothesis_refuses():
    """The case that escaped the old wal_buffers rule (seed 1, byte 0/00010AAA, mask 3):
    damage a few records into a WAL much smaller than wal_buffers is refused now."""
    with tempfile.TemporaryDirectory() as d:
        sizes = middle_sizes(random.Random(1))
        g = build(d, sizes, flushed=len(sizes) - 1)
        x = 65706
        g.xor_byte(x, 3)
        assert_refuses(g, g.records_touching(x)[0])


def test_stamp_proves_only_what_the_previous_flush_made_durable():
    """One page re-written by three flushes: its stamp is the end of the last completed
    flush, so damage to a record of that flush is refused, while damage to the record the
    flush in progress was writing (at the stamp itself) is a torn tail."""
    for bad_index, refused in ((1, True), (3, True), (4, False)):
        with tempfile.TemporaryDirectory() as d:
            g = WalGen(d, SEG)
            for i in range(5):
                g.append(rec_of_size(300, i, i + 1))
                if i in (1, 3):
                    g.flush()
            g.write()
            assert set(g.stamps()) == {SEG} and g.stamps()[SEG] == g.flushes[-1]
            assert g.placed[4].lsn == g.flushes[-1]
            g.xor_byte(g.placed[bad_index].lsn + 40)
            if refused:
                assert assert_refuses(g, bad_index).durable_lsn == g.flushes[-1]
            else:
                r, got = read_all(g, check_middle_corruption=True)
                assert len(got) == 4 and "bad CRC" in r.stop_reason


def test_pages_valid_only_for_another_address_prove_nothing():
    """Pages whose header is valid but names another position (a recycled segment renamed
    ahead; here even one carrying stamps far past the damage) are not proof: a torn tail
    followed by them ends quietly. The same stamps at the right address do refuse."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [3000] * 60, flushed=50)            # segments 1..3, flush in progress
        last = g.segments()[-1]
        g.xor_byte(g.placed[-3].lsn + 100)
        with tempfile.TemporaryDirectory() as other:
            far = WalGen(other, SEG, start_lsn=(last + 5) * SEG)
            for i in range(30):
                far.append(rec_of_size(2000, i))
                far.flush()
            far.write()
            with open(far.path(last + 5), "rb") as f:
                stale = f.read()
        assert max(far.stamps().values()) > g.placed[-3].lsn
        for segno in range(last + 1, last + 4):
            with open(g.path(segno), "wb") as f:
                f.write(stale)                           # pageaddrs of segment last+5
        reader, got = read_all(g, check_middle_corruption=True)
        assert len(got) == len(g.placed) - 3
        assert "bad CRC" in reader.stop_reason
        os.rename(g.path(last + 1), g.path(last + 5))    # now at its own address
        assert assert_refuses(g, len(g.placed) - 3, modelled=False).proof_lsn >= (last + 5) * SEG


def test_stale_stamp_with_a_bad_header_crc_proves_nothing():
    """A page carrying a stamp past the damage but whose header CRC does not match (the
    header was damaged) is not proof."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [3000] * 30, flushed=20)
        g.xor_byte(g.placed[-3].lsn + 100)
        page = g.placed[-1].lsn - g.placed[-1].lsn % WAL_PAGE_SIZE
        path, off = g.file_offset(page)
        with open(path, "r+b") as f:
            f.seek(off)
            hdr = bytearray(f.read(PAGE_HEADER_SIZE))
            stamp_page_header(hdr, page)                # a stamp > the damage ...
            hdr[-1] ^= 0xFF                             # ... under a broken CRC
            f.seek(off)
            f.write(hdr)
        reader, got = read_all(g, check_middle_corruption=True)
        assert len(got) == len(g.placed) - 3
        with open(path, "r+b") as f:                    # the same stamp, sealed: proof
            hdr[-1] ^= 0xFF
            f.seek(off)
            f.write(hdr)
        assert assert_refuses(g, len(g.placed) - 3, modelled=False).proof_lsn == page


def test_zeroes_end_wal_quietly():
    """Zeroed bytes where a record should start end WAL quietly with 'zeroes at <lsn>'."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [100] * 20)
        g.zero_range(g.placed[12].lsn, 4)
        reader, got = read_all(g, check_middle_corruption=True)
        assert_read_prefix(g, got, 12)
        assert reader.stop_reason == f"zeroes at {format_lsn(g.placed[12].lsn)}"
        assert reader.end_lsn == g.placed[11].end_lsn and reader.last_lsn == g.placed[11].lsn


def test_zeroed_continuation_page_ends_wal():
    """A record continuing onto a zeroed page (never written) ends WAL before that record."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [100, 20000, 100])
        g.zero_range(SEG + WAL_PAGE_SIZE, WAL_PAGE_SIZE)
        reader, got = read_all(g)
        assert_read_prefix(g, got, 1)
        assert reader.stop_reason.startswith(f"zeroes at {format_lsn(SEG + WAL_PAGE_SIZE)}")
        assert format_lsn(g.placed[1].lsn) in reader.stop_reason


def test_missing_next_segment_ends_wal():
    """The next segment file is missing: a record continuing into it, or starting in it,
    ends WAL with 'missing segment <name>'."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [20000, 20000, 20000, 20000])    # record 3 crosses into segment 2
        assert g.placed[3].lsn < 2 * SEG < g.placed[3].end_lsn
        os.unlink(g.path(2))
        reader, got = read_all(g, check_middle_corruption=True)
        assert_read_prefix(g, got, 3)
        assert reader.stop_reason.startswith(f"missing segment {segment_file_name(2)}")
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [7 * (WAL_PAGE_SIZE - PAGE_HEADER_SIZE) + WAL_PAGE_SIZE
                      - PAGE_HEADER_SIZE, 100])      # record 0 ends exactly at segment end
        assert g.placed[0].end_lsn == 2 * SEG
        os.unlink(g.path(2))
        reader, got = read_all(g)
        assert_read_prefix(g, got, 1)
        assert reader.stop_reason == f"missing segment {segment_file_name(2)}"


def test_short_segment_file_ends_wal():
    """A segment file cut short (never fully written) ends WAL where it ends."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [3000] * 10)
        g.write(truncate_last_at=2 * WAL_PAGE_SIZE + 100)
        reader, got = read_all(g)
        n = sum(1 for p in g.placed if p.end_lsn <= SEG + 2 * WAL_PAGE_SIZE)
        assert_read_prefix(g, got, n)
        assert "ends at byte" in reader.stop_reason


def test_wrong_prev_link_stops():
    """A record whose prev_lsn does not name the record before it ends WAL before it."""
    with tempfile.TemporaryDirectory() as d:
        g = WalGen(d, SEG)
        for i in range(10):
            g.append(rec_of_size(200, i), prev_lsn=12345 * 8 if i == 6 else None)
        g.write()
        reader, got = read_all(g)
        assert_read_prefix(g, got, 6)
        assert reader.stop_reason.startswith(f"wrong prev link at {format_lsn(g.placed[6].lsn)}")


def test_expect_prev_checks_the_first_record():
    """The first record is link-checked only when expect_prev is given."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [200] * 5)
        p = g.placed
        assert len(list(WalReader(d, SEG, p[2].lsn))) == 3
        assert len(list(WalReader(d, SEG, p[2].lsn, expect_prev=p[1].lsn))) == 3
        r = WalReader(d, SEG, p[2].lsn, expect_prev=p[0].lsn)
        assert list(r) == [] and r.stop_reason.startswith("wrong prev link")
        assert r.end_lsn == p[2].lsn and r.last_lsn == 0


def patch_page_header(g: WalGen, pageaddr: int, fmt: str, offset: int, value: int) -> None:
    """Set one header field and re-seal the header CRC, so only that field is wrong."""
    path, off = g.file_offset(pageaddr)
    with open(path, "r+b") as f:
        f.seek(off)
        hdr = bytearray(f.read(PAGE_HEADER_SIZE))
        struct.pack_into(fmt, hdr, offset, value)
        struct.pack_into("<I", hdr, PAGE_HEADER_SIZE - 4, 0)
        struct.pack_into("<I", hdr, PAGE_HEADER_SIZE - 4, crc32c.crc32c(bytes(hdr)))
        f.seek(off)
        f.write(hdr)


def test_wrong_continuation_length_stops():
    """A page whose rem_len disagrees with the bytes the record still needs ends WAL before
    that record (flags kept consistent, so only the length is wrong)."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [100, 20000, 100])
        patch_page_header(g, SEG + WAL_PAGE_SIZE, "<I", 4, 777)
        reader, got = read_all(g)
        assert_read_prefix(g, got, 1)
        assert reader.stop_reason.startswith("wrong continuation length")


def test_record_start_on_a_continuation_page_is_refused():
    """A record cannot start right after a page header that announces continued bytes."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [WAL_PAGE_SIZE - PAGE_HEADER_SIZE, 100, 100])
        patch_page_header(g, SEG + WAL_PAGE_SIZE, "<H", 2, 0x0002)    # info: CONTINUATION
        patch_page_header(g, SEG + WAL_PAGE_SIZE, "<I", 4, 8)
        reader, got = read_all(g)
        assert_read_prefix(g, got, 1)
        assert reader.stop_reason.startswith(f"no record at {format_lsn(g.placed[1].lsn)}")


@pytest.mark.parametrize("total", [1, RECORD_HEADER_SIZE - 1, MAX_RECORD_SIZE_BYTES + 1, 2**32 - 1])
def test_impossible_length_stops(total):
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [100] * 5)
        path, off = g.file_offset(g.placed[3].lsn)
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(struct.pack("<I", total))
        reader, got = read_all(g)
        assert_read_prefix(g, got, 3)
        assert reader.stop_reason == f"invalid record length {total} at " \
                                     f"{format_lsn(g.placed[3].lsn)}"


def test_wrong_segment_size_stops():
    """WAL written with another wal_segment_size is not read as valid."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [100] * 3, seg=128 * 1024)
        os.rename(g.path(1), os.path.join(d, segment_file_name(2)))  # LSN 2*64K == 128K
        r = WalReader(d, SEG, 2 * SEG)
        assert list(r) == [] and "wal_segment_size" in r.stop_reason


def test_read_record_at():
    """read_record_at returns the record at an LSN (a page start means its first record);
    anything else is a WalError naming the LSN."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [WAL_PAGE_SIZE - PAGE_HEADER_SIZE, 5000, 300])
        for p in g.placed:
            rr = read_record_at(d, SEG, p.lsn)
            assert (rr.lsn, rr.end_lsn, rr.record) == (p.lsn, p.end_lsn, p.record)
        assert read_record_at(d, SEG, SEG + WAL_PAGE_SIZE).lsn == g.placed[1].lsn
        g.xor_byte(g.placed[2].lsn + 50)
        with pytest.raises(WalError, match=f"{format_lsn(g.placed[2].lsn)}.*bad CRC"):
            read_record_at(d, SEG, g.placed[2].lsn)
        with pytest.raises(WalError, match="missing segment"):
            read_record_at(d, SEG, 5 * SEG + PAGE_HEADER_SIZE)


@pytest.mark.parametrize("lsn", [0, -8, SEG + 4, SEG + 8, SEG + 8192 + 16])
def test_bad_start_lsn(lsn):
    """A start that cannot be a record start is caller misuse."""
    with pytest.raises(ValueError, match="start_lsn"):
        WalReader("/nonexistent", SEG, lsn)


def test_os_errors_are_not_a_quiet_end(tmp_path):
    """A read the OS refuses is an IOFailure keeping the errno, never 'end of WAL'; the
    reader goes through aio.osfile and closes every file it opens."""
    g = build(str(tmp_path), [3000] * 40)

    class Layer(osfile.OsLayer):
        def __init__(self, fail_after=None):
            self.opens = self.closes = self.reads = 0
            self.fail_after = fail_after

        def open(self, path, flags, mode=0o644):
            self.opens += 1
            return super().open(path, flags, mode)

        def close(self, fd):
            self.closes += 1
            super().close(fd)

        def preadv(self, fd, buffers, offset):
            self.reads += 1
            if self.fail_after is not None and self.reads > self.fail_after:
                raise OSError(errno.EIO, "injected")
            return super().preadv(fd, buffers, offset)

    layer = Layer()
    with osfile.installed(layer):
        _, got = read_all(g)
    assert len(got) == 40 and layer.reads > 0 and layer.opens == layer.closes >= 2
    layer = Layer(fail_after=1)
    with osfile.installed(layer), pytest.raises(IOFailure) as ei:
        read_all(g)
    assert ei.value.errno == errno.EIO and layer.opens == layer.closes


def test_describe_record_and_first_record_lsn():
    """waldump's pieces: one line per record naming LSN, rmgr, length, xid, blocks and
    the rmgr's description; the first record of the oldest segment file."""
    if find_rmgr(RM_TEST) is None:
        register_rmgr(ResourceManager(RM_TEST, "test", lambda ctx, rr: None,
                                      lambda rec: f"test record of {len(rec.payload)} bytes"))
    with tempfile.TemporaryDirectory() as d:
        g = WalGen(d, SEG)
        page = bytearray(random.Random(1).randbytes(BLCKSZ))
        page[100:5000] = bytes(4900)
        g.append(WalRecord(RM_TEST, 3, 77, b"abc", (BlockRef(16384, 0, 5, bytes(page), False,
                                                             100, 4900),
                                                    BlockRef(16384, 1, 6, will_init=True))))
        g.append(WalRecord(99, 0, 0, b"zz"))
        for _ in range(30):
            g.append(rec_of_size(3000))
        g.write()
        got = list(WalReader(d, SEG, g.start_lsn))
        line = describe_record(got[0])
        for part in (format_lsn(got[0].lsn), "test", "tx:       77", "blk 5 FPW", "hole 100+4900",
                     "fork 1 blk 6 will_init", find_rmgr(RM_TEST).describe(got[0].record)):
            assert part in line, (part, line)
        assert "rmgr99" in describe_record(got[1])
        assert first_record_lsn(d, SEG) == g.start_lsn + PAGE_HEADER_SIZE
        # Remove segment 1: segment 2 begins with the rest of a record.
        os.unlink(g.path(1))
        first = first_record_lsn(d, SEG)
        assert first == next(p.lsn for p in g.placed if p.lsn >= 2 * SEG)
        assert [rr.lsn for rr in WalReader(d, SEG, first)] == \
            [p.lsn for p in g.placed if p.lsn >= first]
    with tempfile.TemporaryDirectory() as d:
        assert first_record_lsn(d, SEG) is None


def test_page_format_version_1_is_named():
    """A WAL page in the old format (version 1 magic, no flush stamp) is refused with a
    message naming the version found and the one this code reads."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [100] * 3)
        patch_page_header(g, SEG, "<H", 0, PAGE_MAGIC_BY_VERSION[1])
        with pytest.raises(WalPageError) as ei, open(g.path(1), "rb") as f:
            decode_page_header(f.read(PAGE_HEADER_SIZE), SEG, SEG)
        assert ei.value.field == "version"
        assert f"format version 1; this Slonik reads version {WAL_PAGE_FORMAT_VERSION}" in str(ei.value)
        r, got = read_all(g)
        assert got == [] and "format version 1" in r.stop_reason


def test_stamp_past_its_page_is_refused():
    """A header whose flush stamp lies past its own page is not valid (a flush stamps only
    pages from the one holding the previous flush's end on)."""
    with tempfile.TemporaryDirectory() as d:
        g = build(d, [100] * 3)
        patch_page_header(g, SEG, "<Q", 16, SEG + WAL_PAGE_SIZE)
        r, got = read_all(g)
        assert got == [] and "prev_flush_end" in r.stop_reason


# --- the batch scanner (recovery's fast path) ------------------------------------------------

SCANNERS = [pytest.param(scan_records_py, id="py")] + (
    [pytest.param(C_SCANNER, id="c")] if C_SCANNER is not None else [])


def mixed_record(rng: random.Random, xid: int) -> WalRecord:
    """A record of one of the shapes recovery meets: payload only, block references
    without an image (will_init or not), or full-page images whose hole leaves them short
    enough to fit on one WAL page (hole at the page's end or in its middle)."""
    payload = rng.randbytes(rng.choice([0, 8, 60, 100, 400, 1500]))
    blocks = []
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        kind = rng.randrange(3)
        rel, block = rng.randrange(16384, 16400), rng.randrange(1000)
        if kind < 2:
            blocks.append(BlockRef(rel, 0, block, None, will_init=kind == 1))
            continue
        off = rng.choice([0, 24, 100, 2000])
        hole = BLCKSZ - off - rng.choice([0, 50, 200]) if off else 0
        if off and hole <= 0:
            off, hole = 0, 0
        image = bytearray(rng.randbytes(BLCKSZ))
        image[off:off + hole] = bytes(hole)
        blocks.append(BlockRef(rel, 0, block, bytes(image), rng.random() < 0.3, off, hole))
    return WalRecord(RM_TEST, rng.randrange(4), xid, payload, tuple(blocks))


def build_mixed(wal_dir: str, seed: int, n: int, *, flushed: int,
                bad_prev_at: int = -1) -> WalGen:
    """``n`` mixed records; the one at index ``bad_prev_at`` names a wrong previous record
    (a valid record that does not belong after the one before it)."""
    rng = random.Random(seed)
    g = WalGen(wal_dir, SEG)
    for i in range(n):
        rec = mixed_record(rng, i + 1)
        if i == bad_prev_at:
            g.append(rec, prev_lsn=g.prev + RECORD_ALIGN)
        else:
            g.append(rec)
        if i < flushed:
            g.flush()
    g.write()
    return g


def read_outcome(g: WalGen, scanner, **kw):
    """What a reader over ``g`` yields and decides: the records, then end/last/stop/count,
    or the WalCorruptMiddleError's LSNs; and what scan_to_end decides on the same WAL."""
    reader = WalReader(g.wal_dir, g.seg, g.start_lsn, scanner=scanner, **kw)
    got = []
    try:
        for rr in reader:
            got.append((rr.lsn, rr.end_lsn, rr.length, rr.record))
        end = ("end", reader.end_lsn, reader.last_lsn, reader.stop_reason, reader.records_read)
    except WalCorruptMiddleError as e:
        end = ("corrupt", e.lsn, e.proof_lsn, e.durable_lsn, e.reason)
    scan = WalReader(g.wal_dir, g.seg, g.start_lsn, scanner=scanner, **kw)
    try:
        n = scan.scan_to_end()
        scanned = ("end", scan.end_lsn, scan.last_lsn, scan.stop_reason, n)
    except WalCorruptMiddleError as e:
        scanned = ("corrupt", e.lsn, e.proof_lsn, e.durable_lsn, e.reason)
    return got, end, scanned


@pytest.mark.parametrize("scanner", SCANNERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 120), data=st.data())
def test_scanner_reader_decides_exactly_as_the_record_at_a_time_reader(scanner, seed, n, data):
    """A reader with a batch scanner (the Python reference or the C one) yields the same
    records (LSNs, lengths, decoded contents) and decides the same end, last record, stop
    reason and middle-corruption error as the record-at-a-time reader, on intact WAL and on
    WAL with a byte flipped anywhere (page headers, record headers, block headers, images,
    payloads, padding) or a valid record naming a wrong previous record; ``scan_to_end``
    decides the same without decoding. Checked by reading the same files with and without
    the scanner."""
    with tempfile.TemporaryDirectory() as d:
        bad_prev = data.draw(st.integers(-n, n - 1), label="bad_prev_at")
        g = build_mixed(d, seed, n, flushed=data.draw(st.integers(0, n), label="flushed"),
                        bad_prev_at=bad_prev)
        if data.draw(st.booleans(), label="damage"):
            x = data.draw(st.integers(g.start_lsn - g.start_lsn % WAL_PAGE_SIZE,
                                      g.end_lsn - 1), label="x")
            g.xor_byte(x, data.draw(st.integers(1, 255), label="mask"))
        for kw in ({}, {"check_middle_corruption": True}):
            want = read_outcome(g, None, **kw)
            got = read_outcome(g, scanner, **kw)
            assert got == want
            assert want[2] == want[1] or want[1][0] == "corrupt"


def test_scanner_reader_reads_a_mixed_wal_whole():
    """The mixed records above really go through the scanner: every record that lies on one
    page is accepted by it (checked at each such record of the first segment), most records
    are such, and the reader with each scanner yields every record written, as written."""
    with tempfile.TemporaryDirectory() as d:
        g = build_mixed(d, 7, 400, flushed=399)
        with open(os.path.join(d, segment_file_name(1)), "rb") as f:
            seg1 = memoryview(f.read())
        one_page = [p for p in g.placed if p.end_lsn <= 2 * SEG
                    and (p.end_lsn - 1) // WAL_PAGE_SIZE == p.lsn // WAL_PAGE_SIZE]
        assert len(one_page) >= 20
        for p in one_page:
            ats, lens, ends, _stop, _g = scan_records_py(seg1, SEG, p.lsn - SEG, SEG,
                                                         p.record.prev_lsn, 1)
            assert (ats, lens, ends) == ([p.lsn - SEG], [p.length], [p.end_lsn - SEG])
        assert sum((p.end_lsn - 1) // WAL_PAGE_SIZE == p.lsn // WAL_PAGE_SIZE
                   for p in g.placed) > 200
        for scanner in [s.values[0] for s in SCANNERS]:
            reader, got = read_all(g, scanner=scanner, check_middle_corruption=True)
            assert_read_prefix(g, got, 400)
            assert reader.stop_reason.startswith("zeroes at"), reader.stop_reason


@pytest.mark.skipif(C_SCANNER is None, reason="the C module is not built")
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 80), data=st.data())
def test_c_scanner_matches_its_python_reference(seed, n, data):
    """slk_wal_scan (through engine.wal_decode) returns exactly what scan_records_py
    returns — accepted offsets, lengths, end offsets, the stop offset, and the gathered
    bytes of each record continued onto later pages — for chunks of intact and damaged WAL
    (one to three flipped bytes), any record start, a right, wrong or absent expected prev
    link, and a cap on the count."""
    with tempfile.TemporaryDirectory() as d:
        g = build_mixed(d, seed, n, flushed=0)
        segno = data.draw(st.sampled_from(list(g.segments())), label="segment")
        with open(os.path.join(d, segment_file_name(segno)), "rb") as f:
            raw = bytearray(f.read())
        for _ in range(data.draw(st.integers(0, 3), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1), label="x")] ^= \
                data.draw(st.integers(1, 255), label="mask")
        pages = data.draw(st.integers(1, len(raw) // WAL_PAGE_SIZE), label="pages")
        first = data.draw(st.integers(0, len(raw) // WAL_PAGE_SIZE - pages), label="first")
        chunk = memoryview(raw)[first * WAL_PAGE_SIZE:(first + pages) * WAL_PAGE_SIZE]
        chunk_lsn = segno * SEG + first * WAL_PAGE_SIZE
        starts = [p for p in g.placed if chunk_lsn <= p.lsn < chunk_lsn + len(chunk)]
        if starts:
            start = data.draw(st.sampled_from(starts), label="start")
            pos, right = start.lsn - chunk_lsn, start.record.prev_lsn
        else:
            pos, right = PAGE_HEADER_SIZE, 0
        prev = data.draw(st.sampled_from([None, right, right + 8]), label="prev")
        cap = data.draw(st.sampled_from([1, 3, 10_000]), label="cap")
        *want, want_gathered = scan_records_py(chunk, chunk_lsn, pos, SEG, prev, cap)
        *got, got_gathered = C_SCANNER(chunk, chunk_lsn, pos, SEG, prev, cap)
        assert got == want
        for at, length, end in zip(*want[:3], strict=True):
            if end - at != length:     # continued onto later pages: gathered whole
                assert got_gathered[at:at + length] == want_gathered[at:at + length]
