"""The KV point read's leaf probe on the pool page itself (``slk_bt_probe_inplace``,
storage/_pagecheck_build.py "KV point read in place", used by engine/access/btree.py
``_probe_unlocked``): it answers exactly what ``slk_bt_probe`` answers on the page, copies
only the reported versions' items to the caller's page-sized buffer at their own offsets
(on a page it judges flawed, -1, at most items met before the flaw, also in place),
retries when the change counter is odd or changes, and never reads outside the page on
garbled leaves (a torn page as an optimistic reader may see it). The end-to-end races are
tests/engine/test_optimistic_reads.py's ``test_kv_gets_never_see_a_torn_or_garbled_leaf``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slonik.engine.access import btree as bt_module
from slonik.storage.page import BLCKSZ

from tests.engine.test_optimistic_reads import RETRY, _pool
from tests.storage.test_btree_c import (
    deleted_forms,
    entry_lists,
    few_keys,
    highs,
    leaf_flags,
    rich_leaf,
)

needs_c = pytest.mark.skipif(
    bt_module._lib is None or not hasattr(bt_module._lib, "slk_bt_probe_inplace"),
    reason="storage._pagecheck not built (no C compiler at install), or an older build")


@needs_c
@settings(max_examples=400, deadline=None)
@given(entries=entry_lists, high=highs, deleted=deleted_forms, key=few_keys,
       room=st.integers(1, 8),
       garble=st.lists(st.tuples(st.sampled_from([14, 18, 24, 28, BLCKSZ - 12, BLCKSZ - 4])
                                 | st.integers(0, BLCKSZ - 1),
                                 st.binary(min_size=1, max_size=4)), max_size=3))
def test_c_probe_inplace_equals_probe(entries, high, deleted, key, room, garble):
    """On random leaves (many versions of few keys, some garbled anywhere: header, line
    pointers, special space, items) in a pool buffer with an even counter:
    slk_bt_probe_inplace returns slk_bt_probe's count on the page (or -1 where that judges
    the page flawed); when >= 0 the right-link, status and the versions it has room for
    are the same, each reported item's bytes are in the copy at its offset and the rest
    of the copy is untouched. With the counter odd it retries without reading."""
    ffi, lib = bt_module._ffi, bt_module._lib
    page = rich_leaf(entries, high, leaf_flags(deleted))
    for at, chunk in garble:
        page[at:at + len(chunk)] = chunk[:BLCKSZ - at]
    pool = _pool([bytes(page)])
    want_out = ffi.new("uint64_t[]", 2 + 5 * room)
    got_out = ffi.new("uint64_t[]", 2 + 5 * room)
    copy = ffi.new("uint8_t[]", BLCKSZ)
    ffi.memmove(copy, b"\xee" * BLCKSZ, BLCKSZ)
    want = lib.slk_bt_probe(ffi.from_buffer(page), key, len(key), want_out, room)
    got = lib.slk_bt_probe_inplace(pool.c_pool, pool.seq, 0, key, len(key), got_out, room,
                                   copy)
    assert got == want
    expect_copy = bytearray(b"\xee" * BLCKSZ)
    if got >= 0:
        k = 2 + 5 * min(got, room)
        assert list(got_out[0:k]) == list(want_out[0:k])
        for i in range(2, k, 5):
            off, length = got_out[i], got_out[i + 1]
            expect_copy[off:off + length] = page[off:off + length]
        assert ffi.buffer(copy)[:] == bytes(expect_copy)
    else:
        # A flawed page (-1) reports nothing and the caller discards the copy; items met
        # before the flaw may have been copied, but only from the page at their own
        # offsets: every byte written equals the page's byte there.
        got_copy = ffi.buffer(copy)[:]
        assert all(got_copy[i] in (0xEE, page[i]) for i in range(BLCKSZ))
    pool.seq[0] += 1
    assert lib.slk_bt_probe_inplace(pool.c_pool, pool.seq, 0, key, len(key), got_out, room,
                                    copy) == RETRY


@needs_c
def test_kv_point_reads_use_the_in_place_probe_and_read_the_values(db):
    """A store of 3,000 keys with values of many lengths (some out of line): every get
    returns its value through _probe_unlocked, whose probe is slk_bt_probe_inplace (the
    values are sliced from the items it copied), and a get of a missing key raises
    KeyError."""
    kv = db.kv("s")
    values = {b"k%05d" % i: bytes([i % 251]) * (i * 7 % 3000) for i in range(3000)}
    with db.transaction():
        for k, v in values.items():
            kv[k] = v
    assert bt_module._PROBE is bt_module._hot.slk_bt_probe_inplace
    for k, v in values.items():
        assert kv[k] == v
    with pytest.raises(KeyError):
        kv[b"k99999"]
