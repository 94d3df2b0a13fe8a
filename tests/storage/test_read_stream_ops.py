"""A range read stream starts several combined reads per buffer-manager call once its
window is wide (every io method, real files): fewer start_read_buffers calls than reads,
each read still at most io_combine_limit blocks, the blocks handed out in order."""

from __future__ import annotations

from slonik.storage.bufmgr import BufferManager
from slonik.storage.read_stream import LOOK_AHEAD_BATCH_IOS, ReadStream
from slonik.storage.smgr import Fork

from tests.storage.conftest import FIXTURE_REL
from tests.storage.test_bufmgr import item

NBLOCKS = 512
COMBINE = 8


class CountingBufferManager(BufferManager):
    """The real buffer manager, recording how many blocks each start_read_buffers call
    covered and how many reads it started."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int, list[int]]] = []

    def start_read_buffers(self, rel, fork, first_block, nblocks, **kwargs):
        op = super().start_read_buffers(rel, fork, first_block, nblocks, **kwargs)
        self.calls.append((first_block, nblocks, [len(io.buf_ids) for io in op.ios]))
        return op


def test_range_stream_starts_several_reads_per_call(relation_files, aio):
    """A cold 512-block range (one segment) with io_combine_limit 8 and a 16-read window:
    every block comes back once, in order, with its own content; the reads are at most 8
    blocks each and cover each block once; once the window is wide a call covers
    LOOK_AHEAD_BATCH_IOS reads' worth (32 blocks), so there are fewer calls than reads."""
    smgr = relation_files(4096, NBLOCKS)
    bm = CountingBufferManager(smgr, aio, shared_buffers=1024, io_combine_limit=COMBINE)
    got = []
    with ReadStream(bm, FIXTURE_REL, Fork.MAIN, range(NBLOCKS), max_ios=16) as stream:
        while bufs := stream.next_buffers(64):
            for buf in bufs:
                block = bm.block_of(buf)[2]
                assert item(bm, buf) == f"block {block}".encode()
                got.append(block)
            bm.unpin_many(bufs)
    assert got == list(range(NBLOCKS))
    reads = [n for _first, _nblocks, ios in bm.calls for n in ios]
    assert sum(reads) == NBLOCKS and max(reads) <= COMBINE
    covered = [b for first, nblocks, _ios in bm.calls for b in range(first, first + nblocks)]
    assert covered == list(range(NBLOCKS))
    assert max(nblocks for _first, nblocks, _ios in bm.calls) == LOOK_AHEAD_BATCH_IOS * COMBINE
    assert len(bm.calls) < len(reads)
