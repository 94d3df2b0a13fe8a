"""Optimistic (seqlock) reads of pinned pool pages without content locks
(storage/bufmgr.py invariant 8, engine/access/heap_fetch.py invariant 4):

- the C readers (slk_heap_fetch_opt, slk_heap_gather_opt, slk_ix_point_opt) against
  their references on random pages, damaged and garbled ones included, with even
  counters (the reference's answer, or a retry exactly where the reference raises) and
  odd ones (always a retry);
- real threads: writers updating, inserting, deleting and vacuuming rows (exclusive
  locks) while readers run primary-key lookups and index ranges, every io method: no
  row read is ever torn, uncommitted or aborted, and each range holds every stable row
  exactly once;
- a reader that meets a page held exclusively (its counter odd) falls back to the share
  lock, waits for the writer, and returns the consistent row;
- the KV store's point read (slk_bt_probe_opt) likewise, against slk_bt_probe and under
  writers, vacuum and garbling threads.
"""

from __future__ import annotations

import random
import struct
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine import index as ix
from slonik.engine.access import btree as bt_module
from slonik.engine.access import btree_page as bp
from slonik.engine.access import heap_fetch as hf
from slonik.engine.access.tuple import TupleFormatError, slot_tuple
from slonik.storage.page import BLCKSZ

from tests.engine.test_heap_fetch import heap_page
from tests.engine.test_table_index_c import entry_lists, highs, index_leaf, prefixes
from tests.storage.test_btree_c import deleted_forms, few_keys, leaf_flags, rich_leaf
from tests.storage.test_btree_c import entry_lists as bt_entry_lists
from tests.storage.test_btree_c import highs as bt_highs

needs_c = pytest.mark.skipif(not hf.C_GATHER,
                             reason="storage._pagecheck not built (no C compiler at install)")
RETRY = hf.OPT_RETRY


def _run_racing(threads: list[threading.Thread]) -> None:
    """Start and join ``threads`` with a GIL switch interval of 10 µs, so they interleave
    far more often than by default; the interval is restored afterwards."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)


@st.composite
def garbled_heap_page(draw) -> bytes:
    """``heap_page`` with up to three runs of random bytes written anywhere (the header's
    pd_lower / pd_upper, line pointers, tuple headers): a page as an optimistic reader may
    see it while a writer changes it."""
    page = bytearray(draw(heap_page()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.sampled_from([12, 14, 16, 24, 28, 32]) | st.integers(0, BLCKSZ - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        page[at:at + len(chunk)] = chunk[:BLCKSZ - at]
    return bytes(page)


def _pool(pages: list[bytes]) -> SimpleNamespace:
    """A C pool holding ``pages`` at buffer ids in reverse order (buffer b holds page
    n-1-b), with all-even change counters: the two things the C readers take from a
    BufferManager (``c_pool``, ``seq``)."""
    ffi = hf._ffi
    n = len(pages)
    pool = ffi.new("uint8_t[]", n * BLCKSZ)
    for i, page in enumerate(pages):
        ffi.memmove(pool + (n - 1 - i) * BLCKSZ, page, BLCKSZ)
    return SimpleNamespace(c_pool=pool, seq=ffi.new("uint32_t[]", [2 * i for i in range(n)]),
                           buf_of=lambda i: n - 1 - i)


def _reference_slot(page: bytes, offnum: int):
    try:
        got = slot_tuple(page, offnum, 0, 0, 0)
    except TupleFormatError:
        return "raises"
    if got is None:
        return None
    xmin, xmax, flags, s, e = got
    return xmin, xmax, flags, page[s:e]


@needs_c
@settings(max_examples=300, deadline=None)
@given(pages=st.lists(garbled_heap_page(), min_size=1, max_size=3),
       offnums=st.lists(st.integers(0, 2100), min_size=1, max_size=12))
def test_c_fetch_opt_equals_slot_tuple(pages, offnums):
    """slk_heap_fetch_opt on a page with an even counter gives slot_tuple's answer (no
    tuple: -1; a tuple: its data length, data, xmin, xmax, flags) and a retry exactly where
    slot_tuple raises (pd_lower past the page, a line pointer outside the tuple space, a
    data length that disagrees); with the counter odd it always retries."""
    ffi, lib = hf._ffi, hf._lib
    pool = _pool(pages)
    out = ffi.new("uint8_t[]", BLCKSZ)
    meta = ffi.new("uint64_t[]", 3)
    for i, page in enumerate(pages):
        b = pool.buf_of(i)
        for offnum in offnums:
            want = _reference_slot(page, offnum)
            n = lib.slk_heap_fetch_opt(pool.c_pool, pool.seq, b, offnum, out, BLCKSZ, meta)
            if want == "raises":
                assert n == RETRY
            elif want is None:
                assert n == -1
            else:
                assert (meta[0], meta[1], meta[2], ffi.buffer(out, n)[:]) == want
            pool.seq[b] += 1
            assert lib.slk_heap_fetch_opt(pool.c_pool, pool.seq, b, offnum, out, BLCKSZ,
                                          meta) == RETRY
            pool.seq[b] += 1


@needs_c
@settings(max_examples=300, deadline=None)
@given(pages=st.lists(garbled_heap_page(), min_size=1, max_size=4), data=st.data())
def test_c_gather_opt_equals_reference(pages, data):
    """gather_pool (slk_heap_gather_opt over pool buffers, no locks) equals gather_py over
    the same pages for random unique requests and snapshots, and answers None (take the
    locks) exactly where the reference raises; with any requested page's counter odd it
    answers None."""
    reqs = data.draw(st.lists(st.tuples(st.integers(0, len(pages) - 1), st.integers(0, 40)),
                              min_size=1, max_size=40, unique=True))
    page_of = [p for p, _o in reqs]
    offnums = [o for _p, o in reqs]
    snap = (data.draw(st.integers(0, 40)), data.draw(st.integers(0, 40)),
            tuple(sorted(data.draw(st.sets(st.integers(1, 40), max_size=8)))))
    pool = _pool(pages)
    bufs = [pool.buf_of(i) for i in range(len(pages))]
    try:
        want = hf.gather_py(pages, page_of, offnums, snap)
    except TupleFormatError:
        want = None
    assert hf.gather_pool(pool, bufs, page_of, offnums, snap) == want
    held = bufs[data.draw(st.sampled_from(page_of))]
    pool.seq[held] += 1
    assert hf.gather_pool(pool, bufs, page_of, offnums, snap) is None


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=entry_lists, high=highs, deleted=deleted_forms, prefix=prefixes,
       maxn=st.integers(0, ix.POINT_ENTRIES_MAX), garble=st.lists(
           st.tuples(st.integers(0, BLCKSZ - 1), st.binary(min_size=1, max_size=4)),
           max_size=2))
def test_c_ix_point_opt_equals_ix_point(entries, high, deleted, prefix, maxn, garble):
    """slk_ix_point_opt with an even counter returns what slk_ix_point returns on the page
    itself (code and entries), on random index leaves, some garbled (random bytes written
    anywhere: the locked call's -1 for a page the reference judges, or any other answer,
    is the same); with the counter odd it retries."""
    ffi, lib = ix._ffi, ix._lib
    page = index_leaf(entries, high, leaf_flags(deleted), 0 if high is None else 7)
    for at, chunk in garble:
        page[at:at + len(chunk)] = chunk[:BLCKSZ - at]
    pool = _pool([bytes(page)])
    ents = ffi.new("uint32_t[]", BLCKSZ)
    out_a = ffi.new("uint32_t[]", 3 * ix.POINT_ENTRIES_MAX)
    out_b = ffi.new("uint32_t[]", 3 * ix.POINT_ENTRIES_MAX)
    want = lib.slk_ix_point(ffi.from_buffer(page), prefix, len(prefix), maxn, ents, out_a)
    got = lib.slk_ix_point_opt(pool.c_pool, pool.seq, 0, prefix, len(prefix), maxn, ents,
                               out_b)
    assert got == want
    if got > 0:
        assert list(out_b[0:3 * got]) == list(out_a[0:3 * got])
    pool.seq[0] += 1
    assert lib.slk_ix_point_opt(pool.c_pool, pool.seq, 0, prefix, len(prefix), maxn, ents,
                                out_b) == RETRY


# --- the engine, real threads ---------------------------------------------------------------

ROWS = 1200        # initial rows; even ids are never deleted ("stable"), odd ones may be
HOT = 80           # the writer changes rows below this id, where readers mostly look
COLUMNS = [("id", "int8"), ("name", "text"), ("v", "int8"), ("payload", "bytea")]


def _name(i: int) -> str:
    return f"n{i:06d}"


def _payload(i: int, v: int) -> bytes:
    """A payload that says which (id, version) it belongs to everywhere along it, and
    whose length changes with the version (updates move tuples, vacuum compacts pages)."""
    unit = struct.pack("<qq", i, v)
    return (unit * 20)[:16 + (v * 37) % 300]


def _row(i: int, v: int) -> tuple:
    return (i, _name(i), v, _payload(i, v))


def _table(db):
    t = db.create_table("t", COLUMNS, primary_key="id")
    t.create_index("t_name", ["name"])
    with db.transaction():
        t.insert_many([_row(i, 0) for i in range(ROWS)])
    return t


def test_concurrent_writers_never_show_a_torn_row(db):
    """A writer thread updates stable rows (new versions, moved when their size changes),
    deletes and re-inserts odd rows and aborts every fifth transaction; a vacuum thread
    prunes dead versions (compacting pages in place); meanwhile two readers run get(id=)
    and 40-row ranges on the name index, mostly over the rows the writer changes. Every row read is whole (its payload is that
    of its own (id, version)), a version the writer attempted and never one it aborted;
    every stable row is found by get and appears exactly once in every range that covers
    it. Switching threads every 10 us makes readers meet pages mid-change."""
    t = _table(db)
    attempted = {i: {0} for i in range(ROWS)}
    aborted: dict[int, set[int]] = {i: set() for i in range(ROWS)}
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0, 0]

    def check_row(row, where):
        i, name, v, payload = row
        assert name == _name(i) and payload == _payload(i, v), (where, row)
        assert v in attempted[i] and v not in aborted[i], (where, row)

    def writer():
        rng = random.Random(7)
        version = 1
        try:
            for n in range(120):
                abort = n % 5 == 4
                picks = rng.sample(range(0, HOT, 2), 6)
                odd = rng.randrange(1, HOT, 2)
                for i in picks:
                    attempted[i].add(version)
                    if abort:
                        aborted[i].add(version)
                attempted[odd].add(version)
                if abort:
                    aborted[odd].add(version)
                with db.transaction() as txn:
                    for i in picks:
                        t.update(_row(i, version))
                    if t.get(id=odd) is not None:
                        t.delete(id=odd)
                    else:
                        t.insert(_row(odd, version))
                    if abort:
                        txn.rollback()
                version += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()

    def vacuum():
        try:
            while not done.is_set():
                db.vacuum("t")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def reader(seed, slot):
        rng = random.Random(seed)
        try:
            while not done.is_set():
                i = rng.randrange(HOT if rng.random() < 0.9 else ROWS)
                row = t.get(id=i)
                if row is None:
                    assert i % 2 == 1, f"stable row {i} not found"
                else:
                    assert row[0] == i
                    check_row(row, "get")
                lo = rng.randrange(HOT - 20 if rng.random() < 0.9 else ROWS - 40)
                rows = list(t.range("t_name", start=(_name(lo),), stop=(_name(lo + 40),)))
                for row in rows:
                    check_row(row, "range")
                ids = [r[0] for r in rows]
                assert ids == sorted(set(ids)), "a row twice, or out of order"
                assert set(range(lo + lo % 2, lo + 40, 2)) <= set(ids), "a stable row missing"
                reads[slot] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    _run_racing([threading.Thread(target=writer), threading.Thread(target=vacuum),
                   threading.Thread(target=reader, args=(1, 0)),
                   threading.Thread(target=reader, args=(2, 1))])
    assert not errors, errors[0]
    assert min(reads) > 0
    for i in range(0, ROWS, 2):   # the end state: every stable row whole
        row = t.get(id=i)
        assert row is not None
        check_row(row, "after")


def test_pages_garbled_under_exclusive_lock_are_never_read(db):
    """A writer thread repeatedly takes the exclusive lock of a heap page or of the primary
    key's leaf holding rows 0..59, overwrites the page's items with garbage, lets other
    threads run (sleeping, the garbage in place), puts the page back and releases it;
    meanwhile two readers run get(id=) and ranges over those rows. Every answer is the
    exact row: a reader that read while the lock was held (counter odd when it began, or
    changed before its re-check) discarded what it read and waited for the share lock."""
    t = _table(db)
    heap = t._heap
    bm = heap.bufmgr
    pk = t._pk_index()
    blocks = sorted({pk.point_tids(pk.encode((i,)))[0] for i in range(60)})
    leaves = sorted({pk.tree._leaf_for(pk.encode((i,))) for i in range(60)})
    bufs = [bm.read_buffer(heap.rel, heap.fork, b) for b in blocks] + \
        [bm.read_buffer(pk.tree.rel, pk.tree.fork, b) for b in leaves]
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0, 0]

    def writer():
        rng = random.Random(3)
        try:
            for n in range(300):
                buf = bufs[n % len(bufs)]
                bm.lock_exclusive(buf)
                page = bm.page(buf)
                saved = bytes(page)
                try:
                    at = rng.randrange(24, BLCKSZ // 2)
                    page[at:BLCKSZ - 16] = bytes([rng.randrange(256)]) * (BLCKSZ - 16 - at)
                    time.sleep(0.0005)
                finally:
                    page[:] = saved
                    bm.unlock_exclusive(buf)
                time.sleep(0.0002)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()

    def reader(seed, slot):
        rng = random.Random(seed)
        try:
            while not done.is_set():
                i = rng.randrange(60)
                assert t.get(id=i) == _row(i, 0)
                lo = rng.randrange(50)
                assert list(t.range("t_name", start=(_name(lo),), stop=(_name(lo + 10),))) \
                    == [_row(k, 0) for k in range(lo, lo + 10)]
                reads[slot] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            done.set()

    try:
        _run_racing([threading.Thread(target=writer),
                   threading.Thread(target=reader, args=(1, 0)),
                   threading.Thread(target=reader, args=(2, 1))])
    finally:
        bm.unpin_many(bufs)
    assert not errors, errors[0]
    assert min(reads) > 0
    bm.check()


def _wait_for_waiter(desc) -> None:
    """Until a thread waits for ``desc``'s content lock (a reader fell back to it)."""
    deadline = time.monotonic() + 60
    while not desc._waiters:
        assert time.monotonic() < deadline, "the reader never waited for the share lock"
        time.sleep(0.001)


def _holding(bm, buf, mangle, read):
    """Run ``read`` in a thread while ``buf`` is held exclusively with its page mangled
    (``mangle(page)`` returns the undo): the reader must wait for the share lock, and once
    the page is restored and released it gets its answer, which is returned."""
    bm.lock_exclusive(buf)
    got: list = []
    undo = mangle(bm.page(buf))
    th = threading.Thread(target=lambda: got.append(read()))
    try:
        th.start()
        _wait_for_waiter(bm.descs[buf])
        undo()
    finally:
        bm.unlock_exclusive(buf)
        th.join()
    return got


@needs_c
def test_readers_wait_for_a_writer_holding_the_page(db):
    """With a row's heap page held exclusively and the row's bytes overwritten (a change
    in progress), get(id=) and a range over it do not return the half-changed bytes: each
    falls back to the share lock, waits, and returns the row as it is once the writer has
    put the page back and released it. Likewise with the primary-key leaf held and its
    entries garbled."""
    t = _table(db)
    heap = t._heap
    bm = heap.bufmgr
    pk = t._pk_index()
    block, offnum = pk.point_tids(pk.encode((42,)))
    buf = bm.read_buffer(heap.rel, heap.fork, block)
    _x, _y, _f, start, end = slot_tuple(bm.page(buf), offnum, heap.rel, 0, block)

    def mangle(page):
        saved = bytes(page[start:end])
        page[start:end] = b"\xee" * (end - start)

        def undo():
            page[start:end] = saved
        return undo

    assert _holding(bm, buf, mangle, lambda: t.get(id=42)) == [_row(42, 0)]
    assert _holding(bm, buf, mangle, lambda: list(
        t.range("t_name", start=(_name(40),), stop=(_name(44),)))) == \
        [[_row(i, 0) for i in range(40, 44)]]
    bm.unpin(buf)

    tree = pk.tree
    leaf = tree._leaf_for(pk.encode((42,)))
    lbuf = bm.read_buffer(tree.rel, tree.fork, leaf)

    def garble(page):
        saved = bytes(page)
        page[24:BLCKSZ - 16] = b"\xee" * (BLCKSZ - 40)

        def undo():
            page[:] = saved
        return undo

    assert _holding(bm, lbuf, garble, lambda: t.get(id=42)) == [_row(42, 0)]
    bm.unpin(lbuf)
    bm.check()


def test_point_reads_without_the_c_helper(db, monkeypatch):
    """With the C helper absent, get(id=) and ranges take the locked path and give the
    same rows."""
    t = _table(db)
    want = [t.get(id=i) for i in range(0, ROWS, 97)]
    ranged = list(t.range("t_name", start=(_name(10),), stop=(_name(60),)))
    monkeypatch.setattr(hf, "_lib", None)
    monkeypatch.setattr(ix, "_lib", None)
    assert [t.get(id=i) for i in range(0, ROWS, 97)] == want == \
        [_row(i, 0) for i in range(0, ROWS, 97)]
    assert list(t.range("t_name", start=(_name(10),), stop=(_name(60),))) == ranged


# --- the KV store's point read (slk_bt_probe_opt) ----------------------------------------


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=bt_entry_lists, high=bt_highs, deleted=deleted_forms, key=few_keys,
       garble=st.lists(st.tuples(st.integers(0, BLCKSZ - 1),
                                 st.binary(min_size=1, max_size=4)), max_size=2))
def test_c_bt_probe_opt_equals_probe(entries, high, deleted, key, garble):
    """slk_bt_probe_opt with an even counter returns slk_bt_probe's answer on the page
    itself (its count, or -1 for a page the reference judges; the right-link, status and
    versions when it has room), with the page copied whole so the versions' offsets read
    the same bytes, on random leaves (some garbled anywhere); with the counter odd it
    retries."""
    ffi, lib = bt_module._ffi, bt_module._lib
    page = rich_leaf(entries, high, leaf_flags(deleted))
    for at, chunk in garble:
        page[at:at + len(chunk)] = chunk[:BLCKSZ - at]
    pool = _pool([bytes(page)])
    room = 8
    want_out = ffi.new("uint64_t[]", 2 + 5 * room)
    got_out = ffi.new("uint64_t[]", 2 + 5 * room)
    copy = ffi.new("uint8_t[]", BLCKSZ)
    want = lib.slk_bt_probe(ffi.from_buffer(page), key, len(key), want_out, room)
    got = lib.slk_bt_probe_opt(pool.c_pool, pool.seq, 0, key, len(key), got_out, room, copy)
    assert got == want
    if got >= 0:
        k = 2 + 5 * min(got, room)
        assert list(got_out[0:k]) == list(want_out[0:k])
        assert ffi.buffer(copy)[:] == bytes(page)
    pool.seq[0] += 1
    assert lib.slk_bt_probe_opt(pool.c_pool, pool.seq, 0, key, len(key), got_out, room,
                                copy) == RETRY


def _value(k: int, v: int) -> bytes:
    """A value naming its (key, version) all along it, of a length that changes with it."""
    return (struct.pack("<qq", k, v) * 30)[:16 + (v * 53) % 400]


def _garble_values(page, fill: int) -> None:
    """Overwrite the value bytes of every data entry of a leaf with ``fill``, keeping the
    page well formed (line pointers, entry headers and keys intact): a reader of it gets
    wrong values, not an error."""
    lower = struct.unpack_from("<H", page, 14)[0]
    first = 1 if struct.unpack_from("<I", page, BLCKSZ - 12)[0] == 0 else 2
    for offnum in range(first, (lower - 24) // 4 + 1):
        (lp,) = struct.unpack_from("<I", page, 24 + 4 * (offnum - 1))
        off, length = lp & 0x7FFF, lp >> 17
        keylen = struct.unpack_from("<H", page, off + 17)[0]
        start = off + bp.LEAF_HEADER_SIZE + keylen
        page[start:off + length] = bytes([fill]) * (off + length - start)


def test_kv_gets_never_see_a_torn_or_garbled_leaf(db):
    """KV point reads while (1) a writer overwrites and deletes hot keys (aborting every
    fifth transaction) and a vacuum thread prunes their leaves, and (2) a thread takes the
    leaves' exclusive locks and garbles them, sleeping with the garbage in place: every
    value read is whole, a version the writer attempted and not one it aborted; a key
    never deleted is always found; during (2) every value is exactly the committed one."""
    kv = db.kv("s")
    keys = [b"k%05d" % i for i in range(600)]
    with db.transaction():
        for i, k in enumerate(keys):
            kv[k] = _value(i, 0)
    attempted = {i: {0} for i in range(600)}
    aborted: dict[int, set[int]] = {i: set() for i in range(600)}
    errors: list[BaseException] = []
    done = threading.Event()
    phase = ["write"]
    reads = [0]

    def check(i, value):
        if value is None:
            assert i % 2 == 1, f"key {i} (never deleted) not found"
            return
        _k, v = struct.unpack_from("<qq", value)
        assert _k == i and value == _value(i, v), (i, value[:32])
        assert v in attempted[i] and v not in aborted[i], (i, v)
        if phase[0] == "garble":
            assert v == max(attempted[i] - aborted[i])

    def writer():
        rng = random.Random(5)
        try:
            for n in range(1, 121):
                abort = n % 5 == 0
                picks = rng.sample(range(60), 8)
                for i in picks:
                    attempted[i].add(n)
                    if abort:
                        aborted[i].add(n)
                with db.transaction() as txn:
                    for i in picks:
                        if i % 2 and rng.random() < 0.3:
                            kv.pop(keys[i], None)
                        else:
                            kv[keys[i]] = _value(i, n)
                    if abort:
                        txn.rollback()
            for i in range(1, 60, 2):   # the odd keys back, for the second phase
                attempted[i].add(1000)
            with db.transaction():
                for i in range(1, 60, 2):
                    kv[keys[i]] = _value(i, 1000)
            db.vacuum("s")
            phase[0] = "garble"
            tree = kv._index.tree
            bm = tree.bufmgr
            leaves = sorted({tree._leaf_for(keys[i]) for i in range(60)})
            bufs = [bm.read_buffer(tree.rel, tree.fork, b) for b in leaves]
            try:
                for n in range(200):
                    buf = bufs[n % len(bufs)]
                    bm.lock_exclusive(buf)
                    page = bm.page(buf)
                    saved = bytes(page)
                    try:
                        _garble_values(page, n % 256)
                        time.sleep(0.0005)
                    finally:
                        page[:] = saved
                        bm.unlock_exclusive(buf)
                    time.sleep(0.0002)
            finally:
                bm.unpin_many(bufs)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()

    def vacuum():
        try:
            while not done.is_set() and phase[0] == "write":
                db.vacuum("s")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def reader(seed):
        rng = random.Random(seed)
        try:
            while not done.is_set():
                i = rng.randrange(60)
                check(i, kv.get(keys[i]))
                reads[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            done.set()

    _run_racing([threading.Thread(target=writer), threading.Thread(target=vacuum),
                   threading.Thread(target=reader, args=(1,)),
                   threading.Thread(target=reader, args=(2,))])
    assert not errors, errors[0]
    assert reads[0] > 0
