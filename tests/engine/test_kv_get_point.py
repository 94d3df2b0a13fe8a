"""BTree.get_point, the KV store's fused point read: the same answers as the general path
(BTree._get) for every kind of key a store holds, and the fused path really taken."""

from __future__ import annotations

import random
import threading

import pytest
from slonik.engine.access import btree as btree_mod
from slonik.engine.access.btree import VALUE_INLINE_MAX_BYTES

from tests.engine.dbutil import open_db

KEYS = 3000


def _key(i: int) -> bytes:
    return b"gp:%08d" % i


def _value(i: int) -> bytes:
    if i % 97 == 0:  # out of line (overflow pages)
        return bytes([i % 251]) * (VALUE_INLINE_MAX_BYTES + 1000 + i)
    return b"v%06d" % i * (1 + i % 7)


@pytest.mark.skipif(btree_mod._c_descend is None, reason="the C helper is not built")
def test_get_point_equals_the_general_read(tmp_path, io_method):
    """A store of KEYS keys over many leaves (some values out of line, some keys deleted,
    some overwritten so they have an older version): reads outside a transaction, in a
    transaction's snapshot taken before later overwrites, and in a transaction with its
    own uncommitted overwrite, all equal a dict model; BTree.get_point with each snapshot
    equals BTree._get for present, deleted and never-written keys. Fails when the fused
    path answers differently, and (counting its probe calls) when it is never taken."""
    with open_db(tmp_path / "db", io_method, shared_buffers=4096) as db:
        kv = db.kv("k")
        model = {}
        with db.transaction():
            for i in range(KEYS):
                kv[_key(i)] = model[_key(i)] = _value(i)
        rnd = random.Random(5)
        with db.transaction():
            for i in rnd.sample(range(KEYS), 300):
                del kv[_key(i)]
                del model[_key(i)]
        for _ in range(3 * btree_mod.DESCENT_REBUILD_READS):  # a current descent table
            kv.get(_key(1))
        tree = kv._index.tree
        assert tree._descent is not None
        probes = []
        real = btree_mod._PROBE

        def counting_probe(*args):
            probes.append(1)
            return real(*args)

        btree_mod._PROBE = counting_probe
        try:
            wanted = [_key(i) for i in range(-5, KEYS + 5)]
            assert [kv.get(k) for k in wanted] == [model.get(k) for k in wanted]
            assert len(probes) >= len(wanted)
            with db.transaction():
                before = dict(model)
                other = []
                t = threading.Thread(target=lambda: other.append(
                    _overwrite(db, kv, model, rnd)))
                t.start()
                t.join()
                assert other == [True]
                # this snapshot predates the other thread's overwrites
                assert [kv.get(k) for k in wanted] == [before.get(k) for k in wanted]
                mine = next(k for k in before if model.get(k) == before[k])  # no conflict
                kv[mine] = b"mine"
                assert kv[mine] == b"mine"
            model[mine] = b"mine"
            assert [kv.get(k) for k in wanted] == [model.get(k) for k in wanted]
            latest = kv._index._latest
            for k in wanted:
                assert tree.get_point(k, latest) == tree._get(k, latest)
        finally:
            btree_mod._PROBE = real


def _overwrite(db, kv, model, rnd) -> bool:
    with db.transaction():
        for i in rnd.sample(range(KEYS), 200):
            kv[_key(i)] = model[_key(i)] = b"new%d" % i
    return True
