"""smgr's asynchronous reads and writes, on every io method, with tiny segments and a
three-descriptor fd cache so boundaries and fd recycling are exercised constantly."""

from __future__ import annotations

import errno
import os

import pytest
from slonik.aio.core import Aio, make_method
from slonik.aio.errors import DiskFullError, IOFailure
from slonik.aio.handle import AioReturn, IoOp, ResultStatus
from slonik.aio.memory import aligned_buffer
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, Smgr

from tests.support.method_faulty import FaultInjectingMethod, FaultRule

SEGMENT = 4


def pattern(rel: int, block: int, version: int = 0) -> bytes:
    return (rel.to_bytes(4, "little") + block.to_bytes(2, "little")
            + version.to_bytes(2, "little")) * (BLCKSZ // 8)


@pytest.fixture
def smgr(tmp_path, aio):
    s = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    yield s
    aio.wait_all()
    s.close()


def buffers(n: int) -> list[memoryview]:
    mv = memoryview(aligned_buffer(n * BLCKSZ))
    return [mv[i * BLCKSZ:(i + 1) * BLCKSZ] for i in range(n)]


def start(aio: Aio, smgr: Smgr, write: bool, rel: int, block: int, bufs: list):
    """Start one I/O per segment piece; returns [(ref, ret, first_block, count)]."""
    out = []
    i = 0
    while i < len(bufs):
        n = min(smgr.maxcombine(block + i), len(bufs) - i)
        ret = AioReturn()
        h = aio.acquire(ret)
        ref = h.wait_ref()
        (smgr.start_writev if write else smgr.start_readv)(h, rel, Fork.MAIN, block + i,
                                                           bufs[i:i + n])
        out.append((ref, ret, block + i, n))
        i += n
    return out


def finish(aio: Aio, pending) -> None:
    for ref, ret, _, _ in pending:
        aio.wait(ref)
        ret.raise_if_failed()


def test_async_write_then_read_many_relations_under_fd_pressure(aio, io_method, smgr):
    """Six relations of 10 blocks (3 segments each) are written and read back with all
    I/O of a pass in flight at once (one batch): up to 18 segment files are in use by
    staged or in-flight I/O while the fd cache allows 3. No fd is closed under an I/O (every result is right),
    and once everything completed the cache is back within its bound."""
    rels = list(range(100, 106))
    for rel in rels:
        smgr.create(rel, Fork.MAIN)
    written = {}
    with aio.batch():
        pending = []
        for rel in rels:
            bufs = buffers(10)
            for b, buf in enumerate(bufs):
                buf[:] = pattern(rel, b)
            written[rel] = bufs
            pending += start(aio, smgr, True, rel, 0, bufs)
    finish(aio, pending)
    assert all(smgr.nblocks(rel, Fork.MAIN) == 10 for rel in rels)
    reads = {}
    with aio.batch():
        pending = []
        for rel in rels[:5]:  # 15 I/Os: all fit in the 16-handle pool, none submitted yet
            reads[rel] = buffers(10)
            pending += start(aio, smgr, False, rel, 0, reads[rel])
        if io_method != "sync":  # sync executes at staging time
            assert smgr.stats().fd_cache.in_use == 15  # each staged I/O holds its fd
            assert smgr.stats().fd_cache.open_now == 15
    finish(aio, pending)
    for rel in rels[:5]:
        for b in range(10):
            assert bytes(reads[rel][b]) == pattern(rel, b), (rel, b)
    fd_stats = smgr.stats().fd_cache
    assert fd_stats.in_use == 0
    assert fd_stats.open_now <= 3
    assert fd_stats.evictions > 0


def test_read_at_end_of_file_is_partial_then_reported(aio, smgr):
    """A 3-block read where only 1 block exists completes PARTIAL with 1 block done; the
    report names relation, blocks and file and says how many bytes were read. A read
    wholly past the end is an ERROR that reports 'read only 0'."""
    smgr.create(7, Fork.MAIN)
    smgr.zeroextend(7, Fork.MAIN, 0, 5)
    (ref, ret, _, _), = start(aio, smgr, False, 7, 4, buffers(3))
    aio.wait(ref)
    assert ret.result.status == ResultStatus.PARTIAL and ret.result.result == 1
    with pytest.raises(DataCorruptionError,
                       match=r"blocks 4\.\.6 of relation 7 fork main in file .*7\.1: "
                             r"read only 8192 of 24576 bytes") as info:
        ret.raise_if_failed()
    assert info.value.relation == 7 and info.value.block == 5
    (ref, ret, _, _), = start(aio, smgr, False, 7, 5, buffers(2))
    aio.wait(ref)
    assert ret.result.status == ResultStatus.ERROR
    with pytest.raises(DataCorruptionError, match="read only 0 of 16384 bytes"):
        ret.raise_if_failed()


def test_missing_segment_names_file(aio, smgr):
    """Starting a read in a segment file that does not exist fails at once with an error
    naming the path and the blocks; no fd stays in use."""
    smgr.create(8, Fork.MAIN)
    h = aio.acquire()
    with pytest.raises(IOFailure, match=r"8\.2.*block 9 of relation 8 fork main") as info:
        smgr.start_readv(h, 8, Fork.MAIN, 9, buffers(1))
    assert info.value.errno == errno.ENOENT
    h.release()
    assert smgr.stats().fd_cache.in_use == 0


def test_crossing_a_segment_is_refused(aio, smgr):
    """One smgr I/O never crosses a segment file: asking is a ValueError naming the limit."""
    smgr.create(9, Fork.MAIN)
    smgr.zeroextend(9, Fork.MAIN, 0, 8)
    h = aio.acquire()
    with pytest.raises(ValueError, match="cross a segment boundary"):
        smgr.start_readv(h, 9, Fork.MAIN, 3, buffers(2))
    h.release()


@pytest.fixture
def faulty(io_method, tmp_path):
    method = FaultInjectingMethod(make_method(io_method))
    aio = Aio(method=method, io_max_concurrency=8)
    s = Smgr(str(tmp_path), segment_size=SEGMENT, max_files=3, aio=aio)
    yield aio, method, s
    aio.shutdown()
    s.close()


def test_injected_eio_names_relation_block_and_file(faulty):
    """An EIO on a read surfaces as IOFailure with errno EIO naming the relation, the
    blocks and the file; the same read succeeds once the fault is gone."""
    aio, method, smgr = faulty
    smgr.create(11, Fork.MAIN)
    smgr.writev(11, Fork.MAIN, 0, [pattern(11, b) for b in range(4)])
    method.add(FaultRule("eio", op=IoOp.READV, match="relation 11", errno=errno.EIO))
    bufs = buffers(4)
    (ref, ret, _, _), = start(aio, smgr, False, 11, 0, bufs)
    aio.wait(ref)
    with pytest.raises(IOFailure, match=r"could not read blocks 0\.\.3 of relation 11 fork main "
                                        r"in file .*base/11: Input/output error") as info:
        ret.raise_if_failed()
    assert info.value.errno == errno.EIO
    finish(aio, start(aio, smgr, False, 11, 0, bufs))
    assert [bytes(b) for b in bufs] == [pattern(11, b) for b in range(4)]


@pytest.mark.parametrize("cut", [BLCKSZ, 2 * BLCKSZ + 100])
def test_short_write_is_partial_and_disk_full(faulty, cut):
    """A write cut short without an error is PARTIAL with the whole blocks done; reported,
    it is a full disk naming the counts."""
    aio, method, smgr = faulty
    smgr.create(12, Fork.MAIN)
    method.add(FaultRule("short", op=IoOp.WRITEV, short=cut))
    (ref, ret, _, _), = start(aio, smgr, True, 12, 0, buffers(4))
    aio.wait(ref)
    assert ret.result.status == ResultStatus.PARTIAL and ret.result.result == cut // BLCKSZ
    with pytest.raises(DiskFullError, match=f"wrote only {cut} of 32768 bytes"):
        ret.raise_if_failed()


def test_truncate_and_regrow_is_seen_by_workers(aio, smgr):
    """After a relation's later segments are unlinked and grown again, asynchronous I/O
    reaches the new files, not descriptors cached for the removed ones."""
    smgr.create(13, Fork.MAIN)
    finish(aio, start(aio, smgr, True, 13, 0, [memoryview(bytearray(pattern(13, b, 1)))
                                               for b in range(8)]))
    bufs = buffers(8)
    finish(aio, start(aio, smgr, False, 13, 0, bufs))  # workers now cache both segments
    smgr.truncate(13, Fork.MAIN, 2)
    assert not os.path.exists(smgr.segment_path(13, Fork.MAIN, 1))
    finish(aio, start(aio, smgr, True, 13, 2, [memoryview(bytearray(pattern(13, b, 2)))
                                               for b in range(2, 8)]))
    finish(aio, start(aio, smgr, False, 13, 0, bufs))
    assert [bytes(b) for b in bufs] == [pattern(13, b, 1) for b in range(2)] + \
        [pattern(13, b, 2) for b in range(2, 8)]
    smgr.close()
    with open(smgr.segment_path(13, Fork.MAIN, 1), "rb") as f:
        assert f.read() == b"".join(pattern(13, b, 2) for b in range(4, 8))


def test_wide_buffers_are_whole_blocks(smgr, aio):
    """start_writev/start_readv take buffers of whole multiples of BLCKSZ (adjacent pool
    pages as one view, one iovec): 3 blocks written as a 2-block view plus a 1-block view
    read back as one 3-block view; a size that is not whole blocks is a ValueError."""
    smgr.create(7, Fork.MAIN)
    src = memoryview(aligned_buffer(3 * BLCKSZ))
    for k in range(3):
        src[k * BLCKSZ:(k + 1) * BLCKSZ] = pattern(7, k)
    finish(aio, start(aio, smgr, True, 7, 0, [src[:2 * BLCKSZ], src[2 * BLCKSZ:]]))
    dst = memoryview(aligned_buffer(3 * BLCKSZ))
    ret = AioReturn()
    h = aio.acquire(ret)
    ref = h.wait_ref()
    smgr.start_readv(h, 7, Fork.MAIN, 0, [dst[:3 * BLCKSZ]])
    aio.wait(ref)
    assert ret.raise_if_failed().result == 3
    assert bytes(dst[:3 * BLCKSZ]) == bytes(src[:3 * BLCKSZ])
    for bad in ([dst[:BLCKSZ + 512]], [dst[:BLCKSZ], dst[:0]]):
        h = aio.acquire(AioReturn())
        with pytest.raises(ValueError, match="multiple of 8192"):
            smgr.start_readv(h, 7, Fork.MAIN, 0, bad)
        h.release()
