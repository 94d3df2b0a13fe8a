"""The buffer state machine under random work: reads, changes, evictions of dirty pages,
flushes and drops against a dict model, on every io method, with the whole-structure
check() (legal states, no leaked pin, no I/O stuck in progress) after every step."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.storage.bufmgr import BM_DIRTY, BufferManager, BufferState
from slonik.storage.page import BLCKSZ, init_page, page_add_item, page_get_item, page_set_checksum
from slonik.storage.smgr import Fork, Smgr

REL = 16384
NBLOCKS = 48        # three times the pool: every scan evicts, dirty victims get written
SHARED_BUFFERS = 16
SEGMENT = 8


def _page(block: int, version: int) -> bytes:
    buf = bytearray(BLCKSZ)
    init_page(buf)
    page_add_item(buf, f"block {block} v{version}".encode())
    page_set_checksum(buf, REL, Fork.MAIN, block)
    return bytes(buf)


_block = st.integers(0, NBLOCKS - 1)
steps = st.lists(st.one_of(
    st.tuples(st.just("read"), _block),
    st.tuples(st.just("change"), _block),
    st.tuples(st.just("scan"), _block, st.integers(1, 12)),
    st.tuples(st.just("flush_buffer"), _block),
    st.tuples(st.just("flush_all")),
    st.tuples(st.just("flush_and_drop")),
), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_random_work_keeps_states_legal_and_contents_right(tmp_path_factory, aio, steps):
    """Each step's result matches the model (the latest version of every block, whether it
    comes from the pool, from a dirty victim written back, or from disk after a drop), every
    descriptor holds a legal BufferState, and check() finds no pin, lock or I/O left over."""
    path = str(tmp_path_factory.mktemp("bm"))
    smgr = Smgr(path, segment_size=SEGMENT, max_files=4, aio=aio)
    smgr.create(REL, Fork.MAIN)
    smgr.writev(REL, Fork.MAIN, 0, [_page(b, 0) for b in range(NBLOCKS)])
    bm = BufferManager(smgr, aio, shared_buffers=SHARED_BUFFERS, io_combine_limit=4)
    model = {b: 0 for b in range(NBLOCKS)}
    try:
        for step in steps:
            kind = step[0]
            if kind == "read":
                with bm.buffer_locked(REL, Fork.MAIN, step[1]) as buf:
                    assert _text(bm, buf) == f"block {step[1]} v{model[step[1]]}"
            elif kind == "change":
                block = step[1]
                model[block] += 1
                with bm.buffer_locked(REL, Fork.MAIN, block, exclusive=True) as buf:
                    bm.page(buf)[:] = _page(block, model[block])
                    bm.mark_dirty(buf)
                    assert BufferState(bm.descs[buf].flags) == BufferState.DIRTY
            elif kind == "scan":
                first = min(step[1], NBLOCKS - step[2])
                bufs = bm.read_buffers(REL, Fork.MAIN, first, step[2])
                try:
                    assert [_text(bm, b) for b in bufs] == \
                        [f"block {k} v{model[k]}" for k in range(first, first + step[2])]
                finally:
                    bm.unpin_many(bufs)
            elif kind == "flush_buffer":
                buf = bm.read_buffer(REL, Fork.MAIN, step[1])
                try:
                    bm.flush_buffer(buf)
                    assert BufferState(bm.descs[buf].flags) == BufferState.VALID
                finally:
                    bm.unpin(buf)
            elif kind == "flush_all":
                bm.flush_all()
                assert not any(d.flags & BM_DIRTY for d in bm.descs)
            else:  # flush, then forget every buffer: the next reads come from disk
                bm.flush_all()
                bm.drop_relation_buffers(REL)
                assert all(BufferState(d.flags) == BufferState.FREE for d in bm.descs)
            bm.check()
        bm.flush_all()
        on_disk = [bytearray(BLCKSZ) for _ in range(NBLOCKS)]
        smgr.readv(REL, Fork.MAIN, 0, on_disk)
        assert [bytes(page_get_item(p, 1)).decode() for p in on_disk] == \
            [f"block {b} v{model[b]}" for b in range(NBLOCKS)]
        bm.check()
    finally:
        aio.wait_all()
        smgr.close()


def _text(bm: BufferManager, buf: int) -> str:
    return bytes(page_get_item(bm.page(buf), 1)).decode()

