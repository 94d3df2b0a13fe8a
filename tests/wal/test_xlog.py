"""The WAL writer (wal/xlog.py) on every io method, read back with the real reader."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest
from slonik.aio.errors import DiskFullError
from slonik.aio.handle import IoOp
from slonik.aio.memory import aligned_buffer
from slonik.storage.page import BLCKSZ, init_page, page_get_lsn
from slonik.wal.errors import WalDiskFullError, WalError
from slonik.wal.reader import WalReader
from slonik.wal.walpage import (
    PAGE_HEADER_SIZE,
    WAL_PAGE_SIZE,
    decode_page_header,
    segment_file_name,
)
from slonik.wal.xlog import BlockSpec, Wal, truncate_tail

from tests.support.method_faulty import FaultRule

SEG = 64 * 1024
FIRST = SEG + PAGE_HEADER_SIZE  # the first record of a fresh stream


def read_all(d: str, start: int = FIRST, **kw) -> tuple[list, WalReader]:
    r = WalReader(d, SEG, start, **kw)
    return list(r), r


def test_records_round_trip_across_pages_and_segments(aio, tmp_path):
    """Records of 0..20 KiB from one thread, then small ones from 8 threads with a flush
    each, all come back from the reader in LSN order with their bytes, xids and end LSNs;
    the WAL ends exactly where the writer's insert position is."""
    d = str(tmp_path)
    w = Wal(d, aio, wal_segment_size=SEG, wal_buffers=8)
    rng = random.Random(1)
    recs = {}
    for i in range(200):
        p = rng.randbytes(rng.randrange(0, 20000))
        s, e = w.insert(10, i % 7, i + 1, p)
        recs[s] = (i + 1, p, e)
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(40):
            p = bytes([k]) * (1 + (i * 37) % 300)
            s, e = w.insert(10, 0, 1000 * k + i, p)
            with lock:
                recs[s] = (1000 * k + i, p, e)
            w.flush(e)
            assert w.flush_lsn >= e

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.flush()
    end = max(e for _x, _p, e in recs.values())
    w.close()
    got, r = read_all(d)
    assert [rr.lsn for rr in got] == sorted(recs)
    for rr in got:
        xid, p, e = recs[rr.lsn]
        assert (rr.record.xid, rr.record.payload, rr.end_lsn) == (xid, p, e)
    assert r.end_lsn == end
    assert len(os.listdir(d)) > 3  # the stream really crossed segment files


def test_group_commit_shares_syncs(aio, tmp_path):
    """Eight threads each inserting and flushing 30 commits need fewer WAL syncs than
    commits: a flush covers every record inserted before it (counted in stats)."""
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    barrier = threading.Barrier(8)

    def committer() -> None:
        barrier.wait()
        for _ in range(30):
            _s, e = w.insert(1, 0, 1, b"commit")
            w.flush(e)

    threads = [threading.Thread(target=committer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = w.stats()
    w.close()
    assert st.syncs < 240
    assert st.flushes + st.group_joins <= st.flush_requests
    assert st.group_joins > 0 or st.flushes < 240


def _page(lsn: int) -> memoryview:
    mem = memoryview(aligned_buffer(BLCKSZ))
    init_page(mem)
    mem[0:8] = lsn.to_bytes(8, "little")
    assert page_get_lsn(mem) == lsn
    return mem


def test_full_page_images_follow_the_redo_point(aio, tmp_path):
    """A block gets an image iff its page LSN is at or before the redo point: never for
    will_init, never with full_page_writes off; moving the redo point brings images back."""
    d = str(tmp_path)
    w = Wal(d, aio, wal_segment_size=SEG, redo_lsn=FIRST)
    page = _page(0)
    _s, e1 = w.insert(10, 0, 1, b"a", [BlockSpec(1, 0, 0, page, page_get_lsn(page), hole=(24, 8000))])
    page[0:8] = e1.to_bytes(8, "little")
    _s, e2 = w.insert(10, 0, 1, b"b", [BlockSpec(1, 0, 0, page, page_get_lsn(page))])
    _s, _e = w.insert(10, 0, 1, b"c", [BlockSpec(1, 0, 1, _page(0), 0, will_init=True)])
    redo = w.begin_checkpoint()
    assert redo > e2
    _s, _e = w.insert(10, 0, 1, b"d", [BlockSpec(1, 0, 0, page, page_get_lsn(page))])
    w.flush()
    w.close()
    got, _r = read_all(d)
    images = [rr.record.blocks[0].image is not None for rr in got]
    assert images == [True, False, False, True]
    assert got[0].record.blocks[0].image == bytes(page[:8]) + bytes(page[8:]) or \
        got[0].record.blocks[0].image[24:8000] == bytes(8000 - 24)
    assert got[2].record.blocks[0].will_init
    d2 = str(tmp_path / "off")
    os.mkdir(d2)
    w2 = Wal(d2, aio, wal_segment_size=SEG, redo_lsn=FIRST, full_page_writes=False)
    w2.insert(10, 0, 1, b"a", [BlockSpec(1, 0, 0, page, 0)])
    w2.flush()
    w2.close()
    got2, _r = read_all(d2)
    assert got2[0].record.blocks[0].image is None


def test_ring_overflow_flushes_and_oversized_record_is_refused(aio, tmp_path):
    """With an 8-page ring, records larger than half of it force flushes of their own and
    still read back whole; a record larger than the ring is a ValueError naming
    wal_buffers, and nothing of it reaches the WAL."""
    d = str(tmp_path)
    w = Wal(d, aio, wal_segment_size=SEG, wal_buffers=8)
    for i in range(20):
        w.insert(10, 0, i + 1, bytes([i]) * 30000)
    assert w.stats().buffer_full_flushes > 0
    with pytest.raises(ValueError, match="wal_buffers"):
        w.insert(10, 0, 99, bytes(8 * WAL_PAGE_SIZE))
    w.flush()
    w.close()
    got, _r = read_all(d)
    assert [rr.record.xid for rr in got] == list(range(1, 21))


def test_continue_after_reopen_and_truncated_tail(aio, tmp_path):
    """A Wal reopened at the end of valid WAL (mid-page) keeps the records before it and
    links the next record to the last one; garbage past the end is zeroed by
    truncate_tail and never read as WAL."""
    d = str(tmp_path)
    w = Wal(d, aio, wal_segment_size=SEG)
    for i in range(10):
        w.insert(10, 0, i + 1, b"x" * 700)
    w.flush()
    w.close()
    got, r = read_all(d)
    end, last = r.end_lsn, r.last_lsn
    # Garbage after the end: half a record's worth of random bytes.
    path = os.path.join(d, "0000000000000001")
    with open(path, "r+b") as f:
        f.seek(end - SEG + 8)
        f.write(os.urandom(3000))
    truncate_tail(d, SEG, end)
    w = Wal(d, aio, wal_segment_size=SEG, start_lsn=end, prev_lsn=last)
    w.insert(10, 0, 11, b"y" * 10)
    w.flush()
    w.close()
    got, r = read_all(d, expect_prev=None)
    assert [rr.record.xid for rr in got] == list(range(1, 12))
    assert got[-1].record.prev_lsn == last
    assert r.stop_reason.startswith("zeroes")


def test_segments_are_recycled(aio, tmp_path):
    """remove_segments_before renames old segments to future names; the writer reuses them
    (counted) and the WAL written into a recycled file reads back cleanly."""
    d = str(tmp_path)
    w = Wal(d, aio, wal_segment_size=SEG)
    for i in range(100):
        w.insert(10, 0, i + 1, b"z" * 2000)
    w.flush()
    keep_from = w.insert_lsn
    n = w.remove_segments_before(keep_from)
    assert n >= 2
    start = w.insert_lsn
    for i in range(100):
        w.insert(10, 0, 1000 + i, b"q" * 2000)
    w.flush()
    st = w.stats()
    w.close()
    assert st.segments_recycled >= 1
    got, _r = read_all(d, start=start)
    assert [rr.record.xid for rr in got] == [1000 + i for i in range(100)]


def test_wal_write_failure_is_fatal(faulty_aio, tmp_path):
    """An EIO on a WAL write makes flush raise WalError, and every later insert or flush
    raises too: nothing after a failed write may claim durability."""
    aio, method = faulty_aio
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    w.insert(10, 0, 1, b"ok")
    w.flush()
    method.add(FaultRule("eio", op=IoOp.WRITEV, match="WAL segment", errno=errno.EIO))
    _s, e = w.insert(10, 0, 2, b"lost")
    with pytest.raises(WalError, match="crash recovery"):
        w.flush(e)
    with pytest.raises(WalError, match="unusable"):
        w.insert(10, 0, 3, b"after")
    with pytest.raises(WalError, match="unusable"):
        w.flush(e)
    assert w.failed


def test_wal_sync_failure_is_fatal_and_never_retried(faulty_aio, tmp_path):
    """A failed fdatasync is fatal and is not retried: exactly one sync attempt is seen."""
    aio, method = faulty_aio
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    rule = FaultRule("syncfail", op=IoOp.FDATASYNC, errno=errno.EIO, times=None)
    method.add(rule)
    _s, e = w.insert(10, 0, 1, b"x")
    with pytest.raises(WalError):
        w.flush(e)
    with pytest.raises(WalError):
        w.flush(e)
    assert rule.fired == 1


def test_direct_dsync_wal_needs_no_fdatasync(io_method, tmp_path):
    """With io_direct for WAL (O_DIRECT|O_DSYNC) flushes issue no fdatasync and the WAL
    reads back."""
    from slonik.aio.core import Aio

    with Aio(io_method) as aio:
        w = Wal(str(tmp_path), aio, wal_segment_size=SEG, io_direct=True)
        for i in range(50):
            _s, e = w.insert(10, 0, i + 1, b"d" * 500)
            w.flush(e)
        st = w.stats()
        w.close()
    assert st.syncs == 0 and st.flushes > 0
    got, _r = read_all(str(tmp_path))
    assert len(got) == 50


def test_bad_settings_are_named(aio, tmp_path):
    with pytest.raises(ValueError, match="wal_buffers"):
        Wal(str(tmp_path), aio, wal_segment_size=SEG, wal_buffers=2)
    with pytest.raises(ValueError, match="wal_segment_size"):
        Wal(str(tmp_path), aio, wal_segment_size=12345)


def test_every_flush_stamps_the_pages_it_writes(aio, tmp_path):
    """The flush stamp on disk, written by the real writer on every io method: each page
    header carries the durable end the last flush that wrote it began with (flush k writes
    the pages from the one holding F(k-1) through the one holding its last byte). Checked
    page by page against that model after flushes of one record, of many pages and across
    segments; the reader accepts every header (CRC sealed after stamping)."""
    d = str(tmp_path)
    w = Wal(d, aio, wal_segment_size=SEG, wal_buffers=16)
    rng = random.Random(7)
    model: dict[int, int] = {}
    for i in range(120):
        for _ in range(rng.choice((1, 1, 2, 5))):
            w.insert(10, 0, i + 1, rng.randbytes(rng.choice((40, 300, 3000, 20000))))
        before = w.flush_lsn
        w.flush()
        after = w.flush_lsn
        page = before - before % WAL_PAGE_SIZE
        while page < after:
            model[page] = before
            page += WAL_PAGE_SIZE
    st = w.stats()
    w.close()
    assert st.pages_stamped >= len(model)
    seen = 0
    for page, stamp in sorted(model.items()):
        with open(os.path.join(d, segment_file_name(page // SEG)), "rb") as f:
            f.seek(page % SEG)
            hdr = decode_page_header(f.read(PAGE_HEADER_SIZE), page, SEG)
        assert hdr.prev_flush_end == stamp, (page, hdr.prev_flush_end, stamp)
        seen += 1
    assert seen == len(model) > 2 * SEG // WAL_PAGE_SIZE
    got, r = read_all(d, check_middle_corruption=True)
    assert len(got) == st.records and r.stop_reason.startswith("zeroes")


def test_full_disk_on_a_wal_write_is_disk_full_and_fatal(faulty_aio, tmp_path):
    """ENOSPC on a WAL write: the flush that hit it raises WalDiskFullError, which is both
    the DiskFullError DESIGN §7 promises the commit and a WalError (the message names the
    WAL and keeps errno 28); the Wal is unusable afterwards, as after any failed write. An
    EIO stays a plain WalError, not a full disk."""
    aio, method = faulty_aio
    w = Wal(str(tmp_path), aio, wal_segment_size=SEG)
    w.insert(10, 0, 1, b"ok")
    w.flush()
    method.add(FaultRule("enospc", op=IoOp.WRITEV, match="WAL segment", errno=errno.ENOSPC))
    _s, e = w.insert(10, 0, 2, b"no room")
    with pytest.raises(DiskFullError) as ei:
        w.flush(e)
    assert isinstance(ei.value, WalError) and isinstance(ei.value, WalDiskFullError)
    assert ei.value.errno == errno.ENOSPC and "WAL" in str(ei.value)
    assert w.failed
    with pytest.raises(WalError, match="unusable"):
        w.insert(10, 0, 3, b"after")
    w.close()
    (tmp_path / "eio").mkdir()
    w2 = Wal(str(tmp_path / "eio"), aio, wal_segment_size=SEG)
    method.add(FaultRule("eio", op=IoOp.WRITEV, match="WAL segment", errno=errno.EIO))
    _s, e = w2.insert(10, 0, 1, b"x")
    with pytest.raises(WalError) as ei:
        w2.flush(e)
    assert not isinstance(ei.value, DiskFullError)
    w2.close()
