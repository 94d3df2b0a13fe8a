"""Stand-ins for testing an access method's redo on copies of pages, without recovery."""

from __future__ import annotations

from slonik.engine.recovery import RedoAction
from slonik.storage.bufmgr import BufferManager
from slonik.storage.page import BLCKSZ, page_set_lsn
from slonik.storage.smgr import Fork


def no_pins(bm: BufferManager) -> bool:
    """No buffer of the pool is pinned."""
    return all(d.refcount == 0 for d in bm.descs)


class StandInRedoContext:
    """A redo context over copies of one relation's pages (block -> bytearray): every
    block needs redo (will_init blocks start zeroed, as recovery gives them), finish sets
    the page LSN."""

    def __init__(self, pages: dict[int, bytearray], rel: int) -> None:
        self.pages = pages
        self.rel = rel
        self.bufmgr = self

    def page(self, buf: int) -> memoryview:
        return memoryview(self.pages[buf])

    def read_buffer_for_redo(self, rr, index: int):
        ref = rr.record.blocks[index]
        assert ref.rel == self.rel and ref.fork == Fork.MAIN
        if ref.will_init or ref.block not in self.pages:
            self.pages[ref.block] = bytearray(BLCKSZ)
        return RedoAction.NEEDS_REDO, ref.block

    def finish_redo_buffer(self, rr, buf: int) -> None:
        page_set_lsn(self.pages[buf], rr.end_lsn)
