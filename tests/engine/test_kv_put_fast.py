"""The autocommit put's fast path (KVIndex.put_new: the leaf step in one C call, the leaf
record and the COMMIT in one WAL insertion) writes exactly what the general path (apply +
log_commit) writes: the same WAL records at the same LSNs and the same relation files,
byte for byte, for any sequence of autocommit puts (new keys, overwrites, values kept out
of line, deletes, splits, checkpoints: full-page images); checked by running the sequence
on two databases, the fast path switched off in one (TransactionLayer.put_fast_path), and
comparing both. Within the fast path, the leaf step and both records made in one C call
(Wal.insert_put_pair) write what its two steps (the leaf's put_new, then
Wal.insert_pair) write."""

from __future__ import annotations

import os
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.engine.database import Database
from slonik.wal.reader import WalReader, first_record_lsn
from slonik.wal.rmgr import RM_XLOG

ops = st.lists(st.tuples(st.integers(0, 400), st.sampled_from(["put", "put", "put", "big",
                                                                "del", "ckpt"]),
                         st.integers(0, 300)), min_size=1, max_size=80)


def run(path: str, io_method: str, sequence, fast: bool, fused: bool = True
        ) -> tuple[list, dict, dict]:
    """``sequence`` as autocommit writes on a new database at ``path``; returns its WAL
    records (lsn, end, rmgr, info, xid, payload, block refs), the store's contents and the
    files under base/ after a clean close. ``fused`` False: the fast path in two steps
    (no Wal.insert_put_pair)."""
    shutil.rmtree(path, ignore_errors=True)
    with Database.open(path, io_method=io_method) as db:
        db._txns.put_fast_path = fast
        if not fused:
            db._wal._put_pair = None
        kv = db.kv("s")
        for n, op, size in sequence:
            key = b"k%05d" % (n * 7919 % 401)
            if op == "del":
                kv.pop(key, None)
            elif op == "ckpt":   # (the next change of each page logs its image)
                db.checkpoint()
            else:
                kv[key] = bytes([n % 251]) * (size if op == "put" else 3000 + size)
        contents = dict(kv.items())
        seg = db.settings.wal_segment_size
    wal_dir = os.path.join(path, "wal")
    # (a checkpoint's payload holds its time: only its place and kind are compared)
    records = [(rr.lsn, rr.end_lsn, rr.record.rmgr, rr.record.info, rr.record.xid,
                None if rr.record.rmgr == RM_XLOG else rr.record.payload,
                [(b.rel, b.fork, b.block, b.image, b.will_init) for b in rr.record.blocks])
               for rr in WalReader(wal_dir, seg, first_record_lsn(wal_dir, seg))]
    files = {}
    for root, _dirs, names in os.walk(os.path.join(path, "base")):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return records, contents, files


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops)
def test_fast_path_writes_what_the_general_path_writes(io_method, tmp_path, sequence):
    """Both databases end with the same WAL records (payloads, block references, LSNs,
    xids; checkpoint records but for their time), the same contents and the same relation files
    (test_fast_path_is_taken_and_its_records_replay shows the fast path is taken)."""
    fast = run(str(tmp_path / "fast"), io_method, sequence, True)
    general = run(str(tmp_path / "general"), io_method, sequence, False)
    assert fast[1] == general[1]
    assert len(fast[0]) == len(general[0])
    for a, b in zip(fast[0], general[0], strict=True):
        assert a == b
    assert fast[2] == general[2]


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops)
def test_one_call_put_writes_what_its_two_steps_write(io_method, tmp_path, sequence):
    """The fast path's leaf step and records made in one C call (slk_bt_put_logged) and in
    two steps (put_new, then Wal.insert_pair) end with the same WAL records, contents and
    relation files (test_fast_path_is_taken_and_its_records_replay shows the one call is
    made)."""
    fused = run(str(tmp_path / "fused"), io_method, sequence, True)
    steps = run(str(tmp_path / "steps"), io_method, sequence, True, fused=False)
    assert fused[1] == steps[1]
    assert fused[0] == steps[0]
    assert fused[2] == steps[2]


def test_fast_path_is_taken_and_its_records_replay(io_method, tmp_path):
    """New keys put one at a time mostly take the fast path (KVIndex.put_new's answers
    counted), most of them in one C call (Wal.insert_put_pair's), with leaf splits in
    between (the general path takes those puts); after a
    crash (the database dropped without close, as test_kv_stateful's crash rule: no
    shutdown checkpoint, pages not written) recovery replays every put: all keys read
    back with their values, and the tree's whole-structure check passes."""
    path = str(tmp_path / "db")
    db = Database.open(path, io_method=io_method, shared_buffers=64)
    kv = db.kv("s")
    index = kv._relation.index
    real = index.put_new
    taken = []

    def counting(*args):
        got = real(*args)
        taken.append(got is not None)
        return got

    index.put_new = counting
    real_pair = db._wal.insert_put_pair
    fused = []   # Wal.insert_put_pair's answers: the leaf step and records in one C call

    def counting_pair(*args):
        got = real_pair(*args)
        fused.append(got is not None)
        return got

    db._wal.insert_put_pair = counting_pair
    want = {}
    for n in range(3000):
        key = b"key:%06d" % (n * 7919 % 3001)
        want[key] = bytes([n % 256]) * (n % 150)
        kv[key] = want[key]
    assert len(taken) == 3000 and sum(taken) > 2500 and not all(taken)
    # (None from it when the two records cross a WAL page: the two steps write them)
    assert sum(fused) > 2400 and not all(fused)
    db._release_resources()
    with Database.open(path, io_method=io_method, shared_buffers=64) as db2:
        kv2 = db2.kv("s")
        assert dict(kv2.items()) == want
        kv2.check()


def overwrite(path: str, io_method: str, fast: bool) -> tuple:
    """300 keys put, then each overwritten five times, autocommit, on a new database at
    ``path`` (``fast`` False: TransactionLayer.put_fast_path off); returns how many puts
    BTree.put_new took and how many of those superseded a version, the vacuum statistics,
    the store's dead versions and contents; the database is left open (for a crash)."""
    db = Database.open(path, io_method=io_method, shared_buffers=64)
    db._txns.put_fast_path = fast
    kv = db.kv("s")
    tree = kv._relation.index.tree
    real = tree.put_new
    answers = []

    def counting(*args):
        got = real(*args)
        answers.append(got)
        return got

    tree.put_new = counting
    want = {}
    for n in range(1800):
        key = b"key:%04d" % (n * 7 % 300)
        want[key] = bytes([n % 256]) * (n % 120)
        kv[key] = want[key]
    stats = db.stats()
    (rel,) = [r for r in stats.relations if r.name == "s"]
    taken = [got for got in answers if got is not None]
    return (db, want, len(taken), sum(r for _end, r in taken), stats.vacuum,
            rel.dead_versions, dict(kv.items()))


def test_overwrites_take_the_fast_path_and_count_their_dead_versions(io_method, tmp_path):
    """Autocommit overwrites of keys whose newest version is committed supersede it in
    the fast path (KVIndex.put_new reports the version it made dead): nearly all 1,500
    of them are taken there; the dead versions counted and the autovacuum runs they
    trigger are those of the general path (fast path off) for the same puts, as are the
    contents; after a crash (no shutdown checkpoint) recovery gives every put back and
    the tree's whole-structure check passes."""
    db, want, taken, superseded, vacuum, dead, contents = overwrite(
        str(tmp_path / "fast"), io_method, True)
    gdb, _w, gtaken, _g, gvacuum, gdead, gcontents = overwrite(
        str(tmp_path / "general"), io_method, False)
    gdb.close()
    assert gtaken == 0
    assert taken > 1650 and superseded > 1400, (taken, superseded)
    assert contents == gcontents == want
    assert (vacuum, dead) == (gvacuum, gdead)
    assert vacuum.automatic >= 1
    db._release_resources()
    with Database.open(str(tmp_path / "fast"), io_method=io_method, shared_buffers=64) as db2:
        kv2 = db2.kv("s")
        assert dict(kv2.items()) == want
        kv2.check()
