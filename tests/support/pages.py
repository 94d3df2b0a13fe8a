"""A checksummed heap page for storage tests: one item naming its block."""

from __future__ import annotations

from slonik.storage.page import BLCKSZ, init_page, page_add_item, page_set_checksum
from slonik.storage.smgr import Fork

TEST_REL = 16384   # the relation number the storage tests use


def make_page(block: int, rel: int = TEST_REL) -> bytes:
    """A valid page of ``rel``'s main fork at ``block``, holding one item ``block N``."""
    buf = bytearray(BLCKSZ)
    init_page(buf)
    page_add_item(buf, f"block {block}".encode())
    page_set_checksum(buf, rel, Fork.MAIN, block)
    return bytes(buf)
