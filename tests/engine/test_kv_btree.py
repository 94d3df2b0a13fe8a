"""KV stores on the B+tree (issue #12), through the public API on every io method: values of
several MiB round trip (out of line, read back, survive reopen, dump and load), their
pages are reused after overwrites, opening a store reads a constant number of blocks
whatever it holds, ``slonik check`` runs the tree's structure check, and a database of the
previous format version is refused naming it."""

from __future__ import annotations

import os
import struct

import pytest
from slonik.engine.access.btree import VALUE_INLINE_MAX_BYTES
from slonik.engine.access.btree_page import (
    BTP_LEAF,
    bt_first_data,
    bt_item,
    bt_item_count,
    bt_special,
)
from slonik.engine.tools.check import check_database
from slonik.engine.tools.dump import load_database, write_dump
from slonik.storage.page import BLCKSZ, page_set_checksum
from slonik.wal.control import CONTROL_FILE_NAME, CONTROL_VERSION, ControlFileError

from slonik import Database
from tests.engine.dbutil import SMALL, open_db

MIB = 1 << 20


def _big(seed: int, n: int) -> bytes:
    """``n`` bytes that differ from block to block (a misplaced chunk shows)."""
    unit = b"%08d:" % seed + bytes(range(256))
    out = bytearray()
    i = 0
    while len(out) < n:
        out += b"%010d" % i + unit
        i += 1
    return bytes(out[:n])


def _rel_blocks(db, name: str) -> int:
    return next(r.nblocks for r in db.stats().relations if r.name == name)


def test_values_of_several_mib_round_trip(tmp_path, io_method):
    """Values of 3 and 5 MiB, and ones on both sides of the inline limit, are written in
    one transaction and autocommit, read back equal by get, [], get_many, items and
    values (in and outside a transaction), survive a clean reopen and a crash (dropped
    without close: recovery replays the overflow pages), and a delete makes them gone."""
    path = tmp_path / "db"
    vals = {b"a-3mib": _big(1, 3 * MIB), b"b-edge": _big(2, VALUE_INLINE_MAX_BYTES),
            b"c-edge+1": _big(3, VALUE_INLINE_MAX_BYTES + 1), b"d-small": b"v"}
    with open_db(path, io_method) as db:
        kv = db.kv("big")
        with db.transaction():
            kv.update(vals)
            assert kv[b"a-3mib"] == vals[b"a-3mib"]  # its own buffered write
        kv[b"e-5mib"] = vals[b"e-5mib"] = _big(4, 5 * MIB)
        assert kv.get_many([b"e-5mib", b"x", b"a-3mib"]) == \
            [vals[b"e-5mib"], None, vals[b"a-3mib"]]
        assert dict(kv.items()) == vals
        assert list(kv.values(reverse=True)) == [vals[k] for k in sorted(vals, reverse=True)]
        assert _rel_blocks(db, "big") >= (8 * MIB) // BLCKSZ
        kv.check()
    with open_db(path, io_method) as db:
        kv = db.kv("big")
        assert dict(kv.items()) == vals
        kv[b"a-3mib"] = vals[b"a-3mib"] = _big(5, 3 * MIB)
        db._release_resources()  # a crash: no shutdown checkpoint
    with open_db(path, io_method) as db:
        kv = db.kv("big")
        assert kv[b"a-3mib"] == vals[b"a-3mib"]
        assert dict(kv.items()) == vals
        kv.check()
        del kv[b"e-5mib"]
        assert b"e-5mib" not in kv and kv.get_many([b"e-5mib"]) == [None]


def test_overwritten_big_values_reuse_their_pages(tmp_path, io_method):
    """Overwriting four 200 KiB values 15 times, with a vacuum after each round, keeps the
    store's file within twice the size of one generation (vacuum frees the overflow pages
    of the versions no snapshot sees, and later values take them), and the tree checks
    clean; without vacuum the same rounds would need 15 generations."""
    with open_db(tmp_path / "db", io_method) as db:
        kv = db.kv("o")
        keys = [b"k%d" % i for i in range(4)]
        kv.update({k: _big(0, 200 * 1024) for k in keys})
        one_generation = _rel_blocks(db, "o")
        for r in range(1, 16):
            kv.update({k: _big(r, 200 * 1024) for k in keys})
            db.vacuum("o")
        assert _rel_blocks(db, "o") <= 2 * one_generation + 4, one_generation
        assert all(kv[k] == _big(15, 200 * 1024) for k in keys)
        kv.check()


def _open_reads(path, io_method) -> int:
    """Blocks read by ``Database.open`` and the first ``db.kv`` of the store."""
    with open_db(path, io_method) as db:
        db.kv("s")
        return db.stats().buffers.reads


def test_open_reads_a_constant_number_of_blocks(tmp_path, io_method):
    """Opening a database whose store holds 20,000 keys (hundreds of leaves) reads no more
    blocks than opening one whose store holds 20 (the catalog and the store's metapage:
    no scan of the store at open), counted by the buffer manager's read counter; a get
    afterwards reads one root-to-leaf path."""
    sizes = {}
    for n in (20, 20_000):
        path = tmp_path / f"db{n}"
        with open_db(path, io_method) as db:
            kv = db.kv("s")
            with db.transaction():
                kv.update({b"key%08d" % i: b"v" * 100 for i in range(n)})
            blocks = _rel_blocks(db, "s")
        sizes[n] = (_open_reads(path, io_method), blocks)
    (small_reads, small_blocks), (big_reads, big_blocks) = sizes[20], sizes[20_000]
    assert big_blocks > 100 * small_blocks // 2, sizes
    assert big_reads == small_reads and big_reads <= 8, sizes
    with open_db(tmp_path / "db20000", io_method) as db:
        kv = db.kv("s")
        assert kv[b"key%08d" % 12345] == b"v" * 100
        # stats() takes the I/O counters before it counts the store's keys (a leaf scan)
        assert db.stats().buffers.reads - big_reads <= 4  # root, maybe an internal, leaf


def test_dump_and_load_carry_big_values(tmp_path, io_method):
    """``slonik dump`` reads a store's leaf level and its overflow pages offline: a dump
    of a store with MiB values and many small ones loads into a new database equal to the
    source."""
    src, dst, dump = tmp_path / "src", tmp_path / "dst", tmp_path / "d.sql"
    want = {b"small%04d" % i: b"s%d" % i for i in range(500)}
    want[b"big1"] = _big(1, 2 * MIB)
    want[b"big2"] = _big(2, VALUE_INLINE_MAX_BYTES + 1)
    with open_db(src, io_method) as db:
        db.kv("k").update(want)
        db.kv("k")[b"small0001"] = want[b"small0001"] = b"overwritten"
        del db.kv("k")[b"small0002"]
        del want[b"small0002"]
    with open(dump, "wb") as f:
        write_dump(str(src), f, io_method=io_method)
    with open_db(dst, io_method):
        pass
    load_database(dst, dump, io_method=io_method, **SMALL)
    with open_db(dst, io_method) as db:
        assert dict(db.kv("k").items()) == want


def _break_leaf_order(path, rel: int) -> int:
    """Make the last entry of the first leaf with several entries sort first (its key's
    first byte set to 0x00), re-stamp the checksum so the page verifies; its block."""
    file = os.path.join(str(path), "base", str(rel))
    with open(file, "r+b") as f:
        data = bytearray(f.read())
        for block in range(1, len(data) // BLCKSZ):
            page = data[block * BLCKSZ:(block + 1) * BLCKSZ]
            special = bt_special(page)
            if special.flags & BTP_LEAF and bt_item_count(page) - bt_first_data(special) >= 2:
                item = bt_item(page, bt_item_count(page))  # a view into the page
                item[19] = 0  # the key's first byte, after the "<QQBH" entry header
                page_set_checksum(page, rel, 0, block)
                f.seek(block * BLCKSZ)
                f.write(page)
                return block
    raise AssertionError("no leaf with several entries")


def test_check_reports_a_broken_tree_under_valid_checksums(tmp_path, io_method):
    """A leaf whose entries are out of key order but whose checksum and page structure are
    valid is reported by ``slonik check`` (the tree's structure check, run offline over
    read-only reads) as a corrupt block naming the store, its relfilenumber and the
    block; a clean database reports nothing."""
    path = tmp_path / "db"
    with open_db(path, io_method) as db:
        db.kv("t").update({b"k%05d" % i: b"x" * 50 for i in range(2000)})
        rel = db.kv("t").rel
    assert check_database(path, io_method=io_method).ok
    block = _break_leaf_order(path, rel)
    report = check_database(path, io_method=io_method)
    assert not report.ok
    [bad] = report.corrupt_blocks
    assert (bad.relation, bad.relfilenumber, bad.block) == ("t", rel, block), bad
    assert "B+tree structure" in bad.reason and f"block {block}" in bad.reason


def test_a_database_of_the_previous_format_is_refused(tmp_path):
    """A control file of version 2 (KV stores as heaps) is refused at open with an error
    naming the version it found, why, and the version this build reads."""
    path = tmp_path / "db"
    with Database.open(path, io_method="sync", **SMALL):
        pass
    control = os.path.join(str(path), CONTROL_FILE_NAME)
    with open(control, "r+b") as f:
        f.seek(4)
        f.write(struct.pack("<I", 2))
    with pytest.raises(ControlFileError) as exc:
        Database.open(path, io_method="sync", **SMALL)
    msg = str(exc.value)
    assert "version 2" in msg and "heaps" in msg and f"version {CONTROL_VERSION} only" in msg
    assert CONTROL_VERSION == 3
