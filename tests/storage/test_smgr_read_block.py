"""Smgr.read_block, a pool miss's one-block inline read: one preadv when it returns the
whole page, aio.transfer's short-read policy when it does not (every io method)."""

from __future__ import annotations

import os

import pytest
from slonik.aio import osfile
from slonik.aio.errors import IOFailure
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import BLCKSZ, page_get_item
from slonik.storage.smgr import Fork

REL = 16384  # relation_files' relation (tests/storage/conftest.py)
SEGMENT = 8
NBLOCKS = 12
SHORT_BYTES = 1000  # what ShortLayer's preadv returns at most


class ShortLayer(osfile.OsLayer):
    """preadv transfers at most SHORT_BYTES of the first buffer per call (counted)."""

    def __init__(self) -> None:
        self.calls = 0

    def preadv(self, fd, buffers, offset):
        self.calls += 1
        return os.preadv(fd, [memoryview(buffers[0])[:SHORT_BYTES]], offset)


class CountingLayer(osfile.OsLayer):
    def __init__(self) -> None:
        self.calls = 0

    def preadv(self, fd, buffers, offset):
        self.calls += 1
        return super().preadv(fd, buffers, offset)


def test_read_block_reads_every_block_with_one_preadv(relation_files):
    """Each block, in both segments, read into a fresh page has its own content; one
    preadv through the OS boundary per block, and the Smgr counts one read and BLCKSZ
    bytes per block."""
    smgr = relation_files(SEGMENT, NBLOCKS)
    before = smgr.stats()
    layer = CountingLayer()
    with osfile.installed(layer):
        for block in range(NBLOCKS):
            page = bytearray(BLCKSZ)
            smgr.read_block(REL, Fork.MAIN, block, page)
            assert page_get_item(page, 1) == f"block {block}".encode()
    after = smgr.stats()
    assert layer.calls == NBLOCKS
    assert (after.reads - before.reads, after.read_bytes - before.read_bytes) == (
        NBLOCKS, NBLOCKS * BLCKSZ)


def test_read_block_continues_short_reads(relation_files):
    """A preadv that returns SHORT_BYTES at a time: read_block continues from where the
    last one stopped until the page is whole (the page equals a plain read of the file),
    counting every call; past the relation's end it still fails naming the block and
    how much it read."""
    smgr = relation_files(SEGMENT, NBLOCKS)
    expected = bytearray(BLCKSZ)
    smgr.read_block(REL, Fork.MAIN, 9, expected)
    before = smgr.stats()
    layer = ShortLayer()
    page = memoryview(bytearray(BLCKSZ))
    with osfile.installed(layer):
        smgr.read_block(REL, Fork.MAIN, 9, page)
    calls = -(-BLCKSZ // SHORT_BYTES)
    assert bytes(page) == bytes(expected)
    assert layer.calls == calls
    after = smgr.stats()
    assert (after.reads - before.reads, after.read_bytes - before.read_bytes) == (
        calls, BLCKSZ)
    with osfile.installed(ShortLayer()), pytest.raises(
            DataCorruptionError, match=rf"block {NBLOCKS} of relation {REL}.*"
                                       rf"read only 0 of {BLCKSZ} bytes"):
        smgr.read_block(REL, Fork.MAIN, NBLOCKS, bytearray(BLCKSZ))


def test_read_block_names_an_os_error(relation_files):
    """EIO from the preadv raises IOFailure with its errno, naming block, relation and
    the segment file."""
    smgr = relation_files(SEGMENT, NBLOCKS)

    class Failing(osfile.OsLayer):
        def preadv(self, fd, buffers, offset):
            raise OSError(5, "injected EIO")

    with osfile.installed(Failing()), pytest.raises(IOFailure) as ei:
        smgr.read_block(REL, Fork.MAIN, 10, bytearray(BLCKSZ))
    assert ei.value.errno == 5
    assert f"block 10 of relation {REL} fork main in file" in str(ei.value)
    assert smgr.segment_path(REL, Fork.MAIN, 1) in str(ei.value)
