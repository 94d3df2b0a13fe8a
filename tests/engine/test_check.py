"""Corruption (DESIGN §5, §7): a page damaged on disk gives ``DataCorruptionError`` naming
relation, fork and block when it is read, other pages and other stores stay readable, and
``engine.check.check_database`` (``slonik check``) lists exactly the damaged blocks. Pages
are damaged by flipping bytes in the data files of a closed (or open but not caching)
database, on every io method."""

from __future__ import annotations

import json
import os
import warnings

import pytest
from slonik.engine.access.btree_page import (
    BTP_LEAF,
    bt_first_data,
    bt_item,
    bt_item_count,
    bt_special,
    unpack_entry,
)
from slonik.engine.tools.check import CATALOG_NAME, CorruptBlock, check_database
from slonik.storage.bufmgr import DamagedPageWarning
from slonik.storage.page import (
    BLCKSZ,
    VERSION_OFFSET,
    page_is_new,
    page_set_checksum,
)

from slonik import DataCorruptionError, NotADatabaseError
from tests.engine.dbutil import SMALL, open_db
from tests.support.dirstate import dir_state

SEGMENT_BLOCKS = SMALL["segment_size"]
MAIN = 0


def block_path(db_path, rel: int, block: int) -> tuple[str, int]:
    """(file, byte offset) of ``block`` of the main fork of ``rel``."""
    segno, in_segment = divmod(block, SEGMENT_BLOCKS)
    name = str(rel) + (f".{segno}" if segno else "")
    return os.path.join(str(db_path), "base", name), in_segment * BLCKSZ


def flip_byte(db_path, rel: int, block: int, offset_in_page: int = BLCKSZ - 100) -> None:
    """Invert one byte of a block on disk (by default inside the newest tuple's data)."""
    path, base = block_path(db_path, rel, block)
    with open(path, "r+b") as f:
        f.seek(base + offset_in_page)
        b = f.read(1)
        f.seek(base + offset_in_page)
        f.write(bytes([b[0] ^ 0xFF]))


def rewrite_page(db_path, rel: int, block: int, change) -> None:
    """Read a block, let ``change(bytearray)`` edit it, write it back."""
    path, base = block_path(db_path, rel, block)
    with open(path, "r+b") as f:
        f.seek(base)
        page = bytearray(f.read(BLCKSZ))
        change(page)
        f.seek(base)
        f.write(page)


def fill(store, prefix: bytes, n: int, size: int = 300) -> dict[bytes, bytes]:
    data = {prefix + b"%06d" % i: (prefix + b"%06d-" % i) * (size // 8) for i in range(n)}
    store.update(data)  # one transaction
    return data


def blocks_of(db_path, rel: int) -> dict[int, list[bytes]]:
    """block -> keys whose live version (xmax 0) is there, read from the leaves of the KV
    store's B+tree file on disk with the B+tree page codec (the database is closed)."""
    out: dict[int, list[bytes]] = {}
    with open(os.path.join(str(db_path), "base", str(rel)), "rb") as f:
        data = f.read()
    assert len(data) <= SEGMENT_BLOCKS * BLCKSZ, "the store fits in its first segment"
    for block in range(len(data) // BLCKSZ):
        page = data[block * BLCKSZ:(block + 1) * BLCKSZ]
        if page_is_new(page):
            continue
        special = bt_special(page)
        if special.flags != BTP_LEAF:  # (ROOT, DELETED, META, OVERFLOW, FREE: no)
            continue
        for offnum in range(bt_first_data(special), bt_item_count(page) + 1):
            e = unpack_entry(bt_item(page, offnum))
            if e.xmax == 0:
                out.setdefault(block, []).append(e.key)
    return out


def rel_of(db, name: str) -> int:
    return next(r.relfilenumber for r in db.stats().relations if r.name == name)


def make_db(path, io_method, **settings):
    """A database with a KV store "a" (~40 pages), a KV store "b" and a table "t"."""
    with open_db(path, io_method, **settings) as db:
        a = fill(db.kv("a"), b"a", 1000)
        b = fill(db.kv("b"), b"b", 200)
        t = db.create_table("t", [("id", "int8"), ("name", "text")])
        with db.transaction():
            for i in range(500):
                t.insert((i, f"row {i} " * 10))
        rels = {name: rel_of(db, name) for name in ("a", "b", "t")}
    return a, b, rels, blocks_of(path, rels["a"])


def test_clean_database_reports_no_corruption(tmp_path, io_method):
    """Every block of every relation (the catalog, two KV stores, a table) is read and
    verified, none is reported; the JSON form says the same."""
    path = tmp_path / "db"
    make_db(path, io_method)
    report = check_database(path, io_method=io_method)
    assert report.ok and report.corrupt_blocks == () and report.open_error is None
    assert report.io_method == io_method
    with open_db(path, io_method) as db:
        sizes = {r.name: r.nblocks for r in db.stats().relations}
    checked = {r.name: r.pages_checked for r in report.relations if r.fork == "main"}
    assert checked == {**sizes, CATALOG_NAME: 1}
    assert report.pages_checked == sum(r.pages_checked for r in report.relations) > 40
    kinds = {r.name: r.kind for r in report.relations}
    assert kinds == {"a": "kv", "b": "kv", "t": "table", CATALOG_NAME: "catalog"}
    j = json.loads(report.to_json())
    assert j["ok"] is True and j["corrupt_blocks"] == [] and j["pages_checked"] == \
        report.pages_checked


def test_damaged_kv_page_is_reported_not_returned(tmp_path, io_method):
    """A flipped byte in one leaf of KV store "a": after reopen every access that needs
    that leaf (a key on it, a full scan, len, a write of a key on it) raises
    DataCorruptionError naming its relfilenumber, fork main and the block (never a
    silently shorter store), while keys on other leaves read and write; store "b" and table
    "t" read in full; check_database lists exactly that block; with zero_damaged_pages the
    page is zeroed in memory with a DamagedPageWarning (the file keeps the damage), and a
    zeroed leaf is no B+tree page: its keys still fail, loudly, naming the block."""
    path = tmp_path / "db"
    a, b, rels, blocks = make_db(path, io_method)
    victim = 7
    assert len(blocks) > victim + 2
    flip_byte(path, rels["a"], victim)

    with open_db(path, io_method) as db:
        store = db.kv("a")
        on_victim = blocks[victim][0]
        for op in (lambda: store[on_victim], lambda: list(store.items()),
                   lambda: len(store), lambda: store.__setitem__(on_victim, b"v")):
            with pytest.raises(DataCorruptionError) as exc:
                op()
            e = exc.value
            assert (e.relation, e.fork, e.block) == (rels["a"], MAIN, victim)
            assert f"block {victim}" in str(e) and str(rels["a"]) in str(e)
        elsewhere = blocks[victim + 2][0]
        assert store[elsewhere] == a[elsewhere]
        store[b"new"] = b"v"
        assert store[b"new"] == b"v"
        assert dict(db.kv("b").items()) == b
        assert sum(1 for _ in db.table("t").scan()) == 500

    report = check_database(path, io_method=io_method)
    assert not report.ok
    assert [(c.relation, c.relfilenumber, c.fork, c.block) for c in report.corrupt_blocks] \
        == [("a", rels["a"], "main", victim)]
    assert "checksum mismatch" in report.corrupt_blocks[0].reason

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_db(path, io_method, zero_damaged_pages=True) as db:
            with pytest.raises(DataCorruptionError) as exc:
                db.kv("a")[on_victim]
            assert exc.value.block == victim and "all zero" in str(exc.value)
            assert db.kv("a")[elsewhere] == a[elsewhere]
    assert any(issubclass(w.category, DamagedPageWarning) for w in caught)
    # The damage is still on disk: zeroing happened in memory only.
    assert [c.block for c in check_database(path, io_method=io_method).corrupt_blocks] \
        == [victim]


def test_page_damaged_while_open_fails_only_its_keys(tmp_path, io_method):
    """Damage a page on disk while the database is open and the page is not in the
    buffer pool: reading a key on it raises DataCorruptionError naming relation, fork and
    block; keys on every other page of the same store, and the other store, stay
    readable; so does the store's ordered scan up to the damaged page."""
    path = tmp_path / "db"
    a, b, rels, blocks = make_db(path, io_method)
    victim = 5
    with open_db(path, io_method, shared_buffers=16) as db:
        store = db.kv("a")
        bufmgr = db._bufmgr
        flip_byte(path, rels["a"], victim)
        for _ in range(3):  # read other pages until the victim's buffer is recycled
            if not bufmgr.cached(rels["a"], MAIN, victim, 1):
                break
            for blk, keys in blocks.items():
                if blk != victim:
                    store[keys[0]]
        assert not bufmgr.cached(rels["a"], MAIN, victim, 1)
        for key in blocks[victim][:3]:
            with pytest.raises(DataCorruptionError) as exc:
                store[key]
            assert (exc.value.relation, exc.value.fork, exc.value.block) == \
                (rels["a"], MAIN, victim)
        for blk, keys in blocks.items():
            if blk != victim:
                for key in keys:
                    assert store[key] == a[key]
        assert dict(db.kv("b").items()) == b
        first_lost = min(blocks[victim])
        assert dict(store.items(stop=first_lost)) == {k: v for k, v in a.items()
                                                      if k < first_lost}
        with pytest.raises(DataCorruptionError):
            list(store.items())


def test_check_lists_damaged_blocks_in_two_relations(tmp_path, io_method):
    """Two damaged blocks in two relations — a checksum mismatch in KV store "a" and a
    broken header in table "t" — are both listed, in (relfilenumber, block) order, each
    with its relation's name and a reason; the check does not stop at the first one and
    counts every page."""
    path = tmp_path / "db"
    _a, _b, rels, _blocks = make_db(path, io_method)
    clean = check_database(path, io_method=io_method)
    flip_byte(path, rels["a"], 3)
    rewrite_page(path, rels["t"], 1, lambda p: p.__setitem__(VERSION_OFFSET, 0x77))
    report = check_database(path, io_method=io_method)
    assert report.corrupt_blocks == (
        CorruptBlock("a", rels["a"], "main", 3, report.corrupt_blocks[0].reason),
        CorruptBlock("t", rels["t"], "main", 1, report.corrupt_blocks[1].reason))
    assert "checksum" in report.corrupt_blocks[0].reason
    assert "version" in report.corrupt_blocks[1].reason
    assert report.pages_checked == clean.pages_checked
    per_rel = {r.name: r.corrupt_pages for r in report.relations}
    assert per_rel == {"a": 1, "b": 0, "t": 1, CATALOG_NAME: 0}
    j = json.loads(report.to_json())
    assert [(c["relation"], c["block"]) for c in j["corrupt_blocks"]] == [("a", 3), ("t", 1)]


def test_check_finds_broken_structure_under_a_valid_checksum(tmp_path, io_method):
    """A page whose checksum is right but whose line pointer points outside the page's
    items (a software bug, not a disk error) is reported too: page_check runs after
    verify_page, like amcheck after pg_checksums."""
    path = tmp_path / "db"
    _a, _b, rels, _blocks = make_db(path, io_method)

    def break_line_pointer(page: bytearray) -> None:
        page[24:28] = (0x7FFF | (1 << 15) | (40 << 17)).to_bytes(4, "little")  # offset 32767
        page_set_checksum(page, rels["b"], MAIN, 2)

    rewrite_page(path, rels["b"], 2, break_line_pointer)
    report = check_database(path, io_method=io_method)
    assert [(c.relation, c.block) for c in report.corrupt_blocks] == [("b", 2)]
    assert report.corrupt_blocks[0].reason.startswith("page structure:")


def test_check_with_a_damaged_catalog_still_checks_the_files(tmp_path, io_method):
    """When the catalog page itself is damaged the database cannot open; the check says
    why (open_error), still reads every file under the lock, and lists the catalog block;
    relations are then unnamed."""
    path = tmp_path / "db"
    _a, _b, rels, _blocks = make_db(path, io_method)
    flip_byte(path, 1, 0, offset_in_page=BLCKSZ - 8)
    report = check_database(path, io_method=io_method)
    assert report.open_error is not None and not report.ok
    assert [(c.relation, c.relfilenumber, c.block) for c in report.corrupt_blocks] == \
        [(CATALOG_NAME, 1, 0)]
    assert {r.relfilenumber for r in report.relations} >= set(rels.values())


def test_check_refuses_a_directory_that_is_not_a_database(tmp_path):
    """check_database on an empty or foreign directory raises NotADatabaseError and
    creates nothing (it must not initialise a database there)."""
    d = tmp_path / "x"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    before = dir_state(d)
    with pytest.raises(NotADatabaseError):
        check_database(d)
    with pytest.raises(NotADatabaseError):
        check_database(tmp_path / "missing")
    assert dir_state(d) == before
    assert not (tmp_path / "missing").exists()
