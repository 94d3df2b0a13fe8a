"""smgr's read staging fast path: the remembered segment paths stay correct and bounded,
and a wide read request with a bad relation, fork, block, size or a closed smgr is still
refused naming what was wrong (the quick checks hand over to the full ones)."""

from __future__ import annotations

import os

import pytest
from slonik.aio.handle import AioReturn
from slonik.aio.memory import aligned_buffer
from slonik.storage import smgr as smgr_mod
from slonik.storage.page import BLCKSZ
from slonik.storage.smgr import Fork, Smgr


@pytest.fixture
def smgr(tmp_path, aio):
    s = Smgr(str(tmp_path), segment_size=4, max_files=3, aio=aio)
    yield s
    aio.wait_all()
    if not s._closed:
        s.close()


def test_segment_paths_are_remembered_correctly_and_bounded(smgr, tmp_path, monkeypatch):
    """With the bound lowered to 8, asking for 30 distinct segments' paths (three forks,
    ten segments) twice gives each time exactly the md path (base/R, base/R_fsm.N, ...)
    and never remembers more than 8."""
    monkeypatch.setattr(smgr_mod, "SEGMENT_PATH_CACHE_MAX", 8)
    base = os.path.join(str(tmp_path), "base")
    suffix = {Fork.MAIN: "", Fork.FSM: "_fsm", Fork.VM: "_vm"}
    for _ in range(2):
        for fork in Fork:
            for segno in range(10):
                want = os.path.join(base, f"77{suffix[fork]}" + (f".{segno}" if segno else ""))
                assert smgr.segment_path(77, fork, segno) == want
                assert len(smgr._paths) <= 8


def test_bad_read_requests_are_refused_naming_the_argument(smgr, aio):
    """start_readv with a bool or out-of-range relation, an unknown fork, a negative or
    non-int block, a view of 1.5 blocks, and after close: each raises TypeError or
    ValueError naming the problem, and a good request then reads (the handle is
    released after each refusal)."""
    smgr.create(5, Fork.MAIN)
    smgr.writev(5, Fork.MAIN, 0, [bytes([9]) * BLCKSZ] * 2)
    mv = memoryview(aligned_buffer(2 * BLCKSZ))
    cases = [
        ((True, Fork.MAIN, 0, [mv]), TypeError, "rel must be an int"),
        ((0, Fork.MAIN, 0, [mv]), ValueError, "rel must be in"),
        ((5, 7, 0, [mv]), ValueError, "fork must be one of"),
        ((5, Fork.MAIN, -1, [mv]), ValueError, "block must be in"),
        ((5, Fork.MAIN, 1.0, [mv]), TypeError, "block must be an int"),
        ((5, Fork.MAIN, 0, [mv[:BLCKSZ + BLCKSZ // 2]]), ValueError, "multiple of 8192"),
        ((5, Fork.MAIN, 3, [mv]), ValueError, "cross a segment boundary"),
    ]
    for args, exc, msg in cases:
        h = aio.acquire(AioReturn())
        with pytest.raises(exc, match=msg):
            smgr.start_readv(h, *args)
        h.release()
    ret = AioReturn()
    h = aio.acquire(ret)
    ref = h.wait_ref()
    smgr.start_readv(h, 5, Fork.MAIN, 0, [mv])
    aio.wait(ref)
    assert ret.raise_if_failed().result == 2
    assert bytes(mv) == bytes([9]) * (2 * BLCKSZ)
    smgr.close()
    h = aio.acquire(AioReturn())
    with pytest.raises(ValueError, match="closed"):
        smgr.start_readv(h, 5, Fork.MAIN, 0, [mv])
    h.release()
