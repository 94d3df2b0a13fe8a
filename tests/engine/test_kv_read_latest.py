"""A KV read outside a transaction ("the latest committed value") against a commit that
lands in the middle of it: the key is never reported missing."""

from __future__ import annotations

from slonik.engine.access.btree import OLD_LOOKUP, VersionWrite

from tests.engine.dbutil import open_db


def test_a_commit_between_two_version_checks_does_not_hide_the_key(tmp_path, io_method):
    """A read outside a transaction judges a key's versions newest first, asking whether
    each xid committed when it reaches it. Here the overwriting transaction really ends
    (TransactionManager.finish_commit) right after its new version was judged
    uncommitted and before the old version's deleter is asked about, so the old version
    then reads as deleted: the read must still return the key's value (the new one: the
    answer after the commit), never raise KeyError. Deterministic: the hook makes the
    interleaving that a real-threads test met about once in 75 runs."""
    with open_db(tmp_path / "db", io_method) as db:
        kv = db.kv("k")
        kv[b"key"] = b"old"
        index = kv._index
        xacts = index._xacts
        x = xacts.assign_xid()
        # the overwrite's versions in the tree, its xid still running (a commit under way)
        index.tree.apply_trusted([VersionWrite(b"key", x, b"new", OLD_LOOKUP)],
                                 xacts.is_committed)
        real = index._is_committed
        asked = []

        def commit_lands_meanwhile(xid: int) -> bool:
            answer = real(xid)
            if xid == x and not asked:
                asked.append(answer)
                xacts.finish_commit(x)   # between this question and the next
            return answer

        index._is_committed = commit_lands_meanwhile
        try:
            assert kv[b"key"] == b"new"
            assert kv.get(b"key") == b"new"
        finally:
            index._is_committed = real
        assert asked == [False]
        assert kv.get(b"missing") is None
