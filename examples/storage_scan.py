"""Write a relation of checksummed pages and scan it back through a read stream.

    python examples/storage_scan.py [DIR [io_method]]    (no DIR: a temporary directory)

Uses the storage layer directly (the Database API arrives with the engine): an smgr over
md-style segment files, the shared buffer manager, and a read stream whose reads are
verified in their completion callbacks.
"""

import sys

from example_args import run
from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import init_page, page_add_item, page_get_item
from slonik.storage.read_stream import ReadStream
from slonik.storage.smgr import Fork, Smgr

REL = 16384


def main(path: str, io_method: str = "auto") -> int:
    if not osfile.exists(path):
        osfile.mkdir(path)
    with Aio(io_method) as aio:
        smgr = Smgr(path, segment_size=64, aio=aio)
        bm = BufferManager(smgr, aio, shared_buffers=256)
        if smgr.exists(REL, Fork.MAIN):
            smgr.unlink(REL)
        for block_batch in range(4):              # 4 x 50 new pages
            bufs = bm.extend(REL, Fork.MAIN, 50)
            for k, buf in enumerate(bufs):
                init_page(bm.page(buf))
                page_add_item(bm.page(buf), f"page {block_batch * 50 + k}".encode())
                bm.mark_dirty(buf)
                bm.unlock_exclusive(buf)
            bm.unpin_many(bufs)
        written = bm.flush_all()                  # sorted, combined AIO writes
        smgr.immedsync(REL, Fork.MAIN)
        bm.drop_relation_buffers(REL)             # forget the pool: the scan reads from disk
        first = last = None
        scanned = 0
        with ReadStream(bm, REL, Fork.MAIN, range(smgr.nblocks(REL, Fork.MAIN))) as stream:
            for buf in stream:
                text = bytes(page_get_item(bm.page(buf), 1)).decode()
                first = first or text
                last = text
                scanned += 1
                bm.unpin(buf)
        print(f"{aio.method.name}: wrote {written} pages, scanned {scanned}: "
              f"{first!r} .. {last!r}; {stream.stats.ios} reads")
        smgr.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(main, __doc__))
