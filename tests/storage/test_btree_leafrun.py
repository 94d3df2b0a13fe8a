"""The C leaf run (slk_bt_leaf_run through btree_leafrun.leaf_run) agrees with its Python
reference leaf_run_py on arbitrary leaves and batches: same writes done, stop reason,
record payload, room left and resolved OLD_LOOKUP versions; the payload applied to the
page gives the bytes redo gives, with every new version in place. Likewise validation's
probe (slk_bt_first_versions vs first_versions_py)."""

from __future__ import annotations

import itertools
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree_leafrun as lr
from slonik.engine.access import btree_page as bp
from slonik.engine.access.btree_wal import apply_action, apply_payload_actions, decode_actions
from slonik.storage.page import BLCKSZ

needs_c = pytest.mark.skipif(not lr.C_LEAF_RUN,
                             reason="storage._pagecheck not built (no C compiler at install)")

keys = st.binary(min_size=0, max_size=6)
xids = st.integers(1, 30)


def leaf(entries, high: bytes | None, value_len: int, flags: int = bp.BTP_LEAF,
         level: int = 0) -> bytearray:
    """A page (a leaf unless ``flags``/``level`` say otherwise) of ``entries`` [(key,
    xmin, xmax)] in tree order (below ``high`` when given)."""
    ordered = sorted({(k, x): m for k, x, m in entries if high is None or k < high}.items(),
                     key=lambda e: (e[0][0], -e[0][1]))
    items = [bp.pack_entry(k, x, m, 0, b"v" * value_len) for (k, x), m in ordered]
    if high is not None:
        items.insert(0, bp.pack_pivot(high, bp.XMIN_MAX, 0))
    page = bytearray(BLCKSZ)
    bp.bt_rebuild(page, bp.Special(0, 0 if high is None else 7, level, flags), items)
    return page


def batch_of(entries, writes):
    """A batch of ``writes`` [(key, xid, kind, old choice)], sorted, one per key; an old
    choice picks an xmin of the key on the page (or any xmin), 0, or OLD_LOOKUP."""
    by_key = {}
    for w in writes:
        by_key.setdefault(w[0], w)
    rows = sorted(by_key.values())
    olds = []
    for key, xid, _kind, choice in rows:
        versions = [x for k, x, _m in entries if k == key]
        if choice == "lookup":
            olds.append(lr.OLD_LOOKUP)
        elif choice == "none":
            olds.append(0)
        elif choice == "page" and versions:
            olds.append(versions[xid % len(versions)])
        else:
            olds.append(xid + 1)
    return lr.make_batch([r[0] for r in rows], [b"p" * (r[1] % 7) if r[2] else b"" for r in rows],
                         bytes(r[2] for r in rows), [r[1] for r in rows], olds)


def run_both(page, high, batch, start, room, committed, index=0):
    runner = lr.new_runner(batch)
    out = []
    for r in (runner, None):
        s = lr.LeafRunState(room, index)
        done, stop = lr.leaf_run(page, high, batch, start, s, committed, r)
        out.append((done, stop, s.payload(), s.room, s.inserted, s.resolved, s.nactions()))
    return out


@needs_c
@settings(max_examples=400, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 30)), max_size=50),
       writes=st.lists(st.tuples(keys, xids, st.sampled_from([0, 1, 1, 2]),
                                 st.sampled_from(["lookup", "none", "page", "page", "any"])),
                       max_size=40),
       high=st.one_of(st.none(), keys), value_len=st.integers(0, 40),
       room=st.integers(0, 3000), aborted=st.sets(xids, max_size=8),
       index=st.sampled_from([0, 0, 1, 2, 17, 31]))
def test_c_leaf_run_equals_reference_and_redo(entries, writes, high, value_len, room,
                                              aborted, index):
    """Random leaves (high key or rightmost), random sorted batches mixing explicit old
    versions (present or not), OLD_LOOKUP, deletes, overflow and inline payloads, and a
    random room limit: C and reference agree on everything they return; the payload
    applied by apply_payload_actions equals it applied action by action (redo's bytes),
    and each write's new version is then on the page with xmax 0. Every action names the
    run's block ``index`` (a leaf of a record with several blocks: the bottom-up append)."""
    page = leaf(entries, high, value_len)
    batch = batch_of(entries, writes)

    def committed(x: int) -> bool:
        return x not in aborted

    for start in range(min(len(batch.keys), 3) or 1):
        c, py = run_both(page, high, batch, start, room, committed, index)
        assert c == py
        done, _stop, payload, _room, _ins, _res, nactions = c
        assert {i for i, _code, _data in decode_actions(payload)} <= {index}
        fast = bytearray(page)
        apply_payload_actions(fast, payload, index, nactions)
        slow = bytearray(page)
        for _i, code, data in decode_actions(payload):
            apply_action(slow, code, data)
        assert fast == slow
        for k in range(start, start + done):
            if batch.kinds[k]:
                off = bp.search_page(fast, batch.keys[k], batch.xids[k], False)
                e = bp.unpack_entry(bp.bt_item(fast, off))
                assert (e.key, e.xmin, e.xmax) == (batch.keys[k], batch.xids[k], 0)


@needs_c
def test_c_leaf_run_stops_where_the_reference_does():
    """Hand-made cases for each stop reason: the high key, a missing old version, an
    existing new version, no room; C and reference agree on count and reason."""
    entries = [(b"b", 5, 0), (b"d", 3, 0)]
    page = leaf(entries, b"m", 10)
    cases = [
        ([(b"a", 9, 1, "none"), (b"z", 9, 1, "none")], 10_000, 1, lr.STOP_HIGH),
        ([(b"a", 9, 1, "none"), (b"c", 9, 1, "any")], 10_000, 1, lr.STOP_NO_OLD),
        ([(b"b", 9, 1, "page"), (b"d", 3, 1, "none")], 10_000, 1, lr.STOP_EXISTS),
        ([(b"a", 9, 1, "none"), (b"c", 9, 1, "none")], 40, 1, lr.STOP_NO_ROOM),
        ([(b"b", 9, 0, "lookup"), (b"d", 9, 1, "page")], 10_000, 2, lr.STOP_END),
    ]
    for writes, room, done, stop in cases:
        batch = batch_of(entries, writes)
        c, py = run_both(page, b"m", batch, 0, room, lambda x: True)
        assert c == py
        assert c[:2] == (done, stop), writes


@needs_c
def test_c_leaf_run_resolves_lookups_of_new_keys_itself():
    """An OLD_LOOKUP write whose key has no entry on the leaf (a blind put of a new key)
    is done by the C call itself, with nothing to supersede; the first OLD_LOOKUP write of
    a key with entries there stops the call for the reference (checked on the C call's
    own count and stop code, then the whole run against the reference)."""
    entries = [(b"b", 5, 0), (b"d", 3, 0)]
    page = leaf(entries, b"m", 10)
    writes = [(b"a", 9, 1, "lookup"), (b"c", 9, 1, "lookup"), (b"ca", 9, 0, "lookup"),
              (b"d", 9, 1, "lookup"), (b"e", 9, 1, "lookup")]
    batch = batch_of(entries, writes)
    runner = lr.new_runner(batch)
    runner.state[0], runner.state[1] = 10_000, 0
    got = lr._lib.slk_bt_leaf_run(
        lr._ffi.from_buffer(page), b"m", 1, *runner.args, 0, len(batch.keys), runner.state,
        runner.xout, lr._XMAX_OUT_BYTES, runner.iout, lr._INSERT_OUT_BYTES)
    assert (got, runner.state[4]) == (3, lr._STOP_LOOKUP)
    assert (runner.state[1], runner.state[2]) == (2, 0)   # 2 inserts, no set-xmax
    c, py = run_both(page, b"m", batch, 0, 10_000, lambda x: True)
    assert c == py
    assert c[:2] == (5, lr.STOP_END) and c[5] == {3: 3}   # only "d" had a version


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=40), payload=st.binary(max_size=60), kind=st.sampled_from(
    [lr.KIND_NONE, lr.KIND_INLINE, lr.KIND_OVERFLOW]), xid=st.integers(1, 2 ** 64 - 2),
       old=st.one_of(st.just(lr.OLD_LOOKUP), st.integers(0, 2 ** 64 - 2)))
def test_single_batch_equals_make_batch(key, payload, kind, xid, old):
    """The one-write batch of an autocommit put (single_batch) is field for field the
    batch make_batch builds from one-element columns (xids and old xmins up to 2**64-2,
    OLD_LOOKUP included)."""
    assert lr.single_batch(key, payload, kind, xid, old) == lr.make_batch(
        [key], [payload], bytes([kind]), [xid], [old])


_sort_keys = st.lists(st.one_of(
    st.binary(max_size=20),
    st.builds(lambda p, s: p + bytes(s),
              st.sampled_from([b"", b"\x00" * 8, b"abcdefgh", b"abc"]),
              st.lists(st.sampled_from([0, 1, 255]), max_size=12)),
    st.sampled_from([b"", b"\x00", b"a", b"a\x00", b"abcdefgh", b"abcdefgh\x00",
                     b"abcdefghi", b"abcdefg\xff"])), max_size=300, unique=True)


@needs_c
@settings(max_examples=300, deadline=None)
@given(keys=_sort_keys)
def test_c_key_sort_equals_reference(keys):
    """A commit's key sort (slk_kv_sort through sorted_joined) gives the reference's order,
    sorted keys and joined keys for distinct keys of every length around its 8-byte
    prefix (shared prefixes, zero bytes, a key and itself plus a zero), and that order is
    Python's bytes order."""
    got = lr.sorted_joined(keys)
    ref = lr.sorted_joined_py(keys)
    assert got[0] == ref[0] and got[1] == ref[1] == sorted(keys)
    assert got[2][0] == ref[2][0] and list(got[2][1]) == list(ref[2][1])


def test_make_batch_refuses_columns_of_different_lengths():
    """A batch whose columns differ in length is refused, naming the lengths."""
    with pytest.raises(ValueError, match="different lengths"):
        lr.make_batch([b"a"], [b"", b""], b"\x01", [1], [0])


def test_make_batch_keeps_xmins_above_two_to_the_63():
    """Old xmins of 2**63 and more (valid xids) and OLD_LOOKUP share the u64 column."""
    batch = lr.make_batch([b"a", b"b"], [b"", b""], b"\x00\x00", [1, 2],
                          [2 ** 63 + 5, lr.OLD_LOOKUP])
    assert list(batch.olds) == [2 ** 63 + 5, bp.XMIN_MAX]


@needs_c
@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.tuples(keys, xids, st.integers(0, 30)), max_size=50),
       probe=st.lists(keys, max_size=30, unique=True), high=st.one_of(st.none(), keys),
       start=st.integers(0, 5))
def test_c_first_versions_equals_reference_and_rule(entries, probe, high, start):
    """A commit's validation probe (slk_bt_first_versions): for random leaves and sorted
    keys, C gives the reference's offnums, and each is the key's newest entry (0 exactly
    when the key has none on the page); it stops at the first key >= the high key."""
    page = leaf(entries, high, 3)
    skeys = sorted(probe)
    blob = b"".join(skeys)
    at = array("Q", itertools.accumulate(map(len, skeys), initial=0))
    got = bp.first_versions(page, high, skeys, blob, at, start, bp.first_versions_out(len(skeys)))
    assert got == bp.first_versions_py(page, high, skeys, start)
    below = [k for k in skeys[start:] if high is None or k < high]
    stop = next((i for i, k in enumerate(skeys[start:]) if high is not None and k >= high),
                None)
    assert len(got) == (len(below) if stop is None else stop)
    on_page = {(k, x) for k, x, _m in entries if high is None or k < high}
    for key, off in zip(skeys[start:], got, strict=False):
        newest = max((x for k, x in on_page if k == key), default=None)
        if newest is None:
            assert off == 0
        else:
            assert bp.entry_key(bp.bt_item(page, off)) == (key, newest)
