"""Storage tests' pages: a checksummed heap page with one item naming its block, a pool
whose first blocks are rewritten and dirty, and a block as the file holds it."""

from __future__ import annotations

from slonik.storage.page import (
    BLCKSZ,
    init_page,
    page_add_item,
    page_set_checksum,
    page_set_lsn,
)
from slonik.storage.smgr import Fork

TEST_REL = 16384   # the relation number the storage tests use


def make_page(block: int, rel: int = TEST_REL, *, text: bytes | None = None) -> bytes:
    """A valid page of ``rel``'s main fork at ``block``, holding one item: ``text``, or
    ``block N`` without it."""
    buf = bytearray(BLCKSZ)
    init_page(buf)
    page_add_item(buf, f"block {block}".encode() if text is None else text)
    page_set_checksum(buf, rel, Fork.MAIN, block)
    return bytes(buf)


def dirty_first_blocks(bm, count: int, lsn_base: int, rel: int = TEST_REL) -> None:
    """Rewrite blocks 0..count-1 of ``rel`` in the pool of ``bm`` (one item 'new b', page
    LSN ``lsn_base + b``), each marked dirty and released: a pool full of dirty pages."""
    for block in range(count):
        b = bm.read_buffer(rel, Fork.MAIN, block)
        bm.lock_exclusive(b)
        page = bm.page(b)
        init_page(page)
        page_add_item(page, b"new %d" % block)
        page_set_lsn(page, lsn_base + block)
        bm.mark_dirty(b)
        bm.unlock_exclusive(b)
        bm.unpin(b)


def block_on_disk(smgr, block: int, segment_blocks: int, rel: int = TEST_REL) -> bytes:
    """Block ``block`` of ``rel``'s main fork as its segment file holds it (not the pool)."""
    with open(smgr.segment_path(rel, Fork.MAIN, block // segment_blocks), "rb") as f:
        f.seek((block % segment_blocks) * BLCKSZ)
        return f.read(BLCKSZ)
