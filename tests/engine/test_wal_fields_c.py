"""Recovery's batch read of WAL records (engine.wal_decode.wal_fields, slk_wal_fields):
``WalReader.raw_batches`` hands out the records ``batches`` decodes, and the C reader of a
raw batch's fields gives exactly what its Python reference gives by decoding each record:
every xid, and for each single-block record of the chosen resource manager without an image
and not will_init its index, block, end LSN and payload bytes."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.engine import wal_decode
from slonik.engine.wal_decode import C_SCANNER, wal_fields_py
from slonik.wal.reader import RawBatch, WalReader
from slonik.wal.rmgr import RM_TEST

from tests.wal.test_reader import build_mixed

needs_c = pytest.mark.skipif(not wal_decode.C_FIELDS,
                             reason="storage._pagecheck not built (no C compiler at install)")


def raw_and_decoded(g):
    raw = list(WalReader(g.wal_dir, g.seg, g.start_lsn, scanner=C_SCANNER).raw_batches())
    decoded = [(rr.lsn, rr.end_lsn, rr.record)
               for rr in WalReader(g.wal_dir, g.seg, g.start_lsn, scanner=C_SCANNER)]
    return raw, decoded


def c_fields_as_lists(f):
    k = len(f.fast)
    return (f.xids, f.fast, f.rels, f.blocks, f.forks, list(f.end_lsns[0:k]),
            bytes(wal_decode._ffi.buffer(f.arena)[:f.offs[k]]), list(f.offs[0:k + 1]))


@needs_c
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 300), fast_rmgr=st.sampled_from([RM_TEST, 0]))
def test_c_fields_equal_reference(seed, n, fast_rmgr):
    """On WAL of 1..300 mixed records (payload only; 1..3 block references with and without
    images, will_init or not; records within a page, crossing pages and crossing chunks),
    the raw batches hold every record once, in order, as iteration decodes them; and per
    raw batch the C fields equal the reference's (with the records' resource manager as
    the fast one, and with another, which leaves no fast record)."""
    with tempfile.TemporaryDirectory() as d:
        g = build_mixed(d, seed, n, flushed=n)
        raw, decoded = raw_and_decoded(g)
        got = []
        for batch in raw:
            if not isinstance(batch, RawBatch):
                got.extend((rr.lsn, rr.end_lsn, rr.record) for rr in batch)
                continue
            records = [batch.record(i) for i in range(len(batch.ats))]
            got.extend((rr.lsn, rr.end_lsn, rr.record) for rr in records)
            want = wal_fields_py(batch, fast_rmgr)
            assert c_fields_as_lists(wal_decode.wal_fields_c(batch, fast_rmgr)) == \
                (want.xids, want.fast, want.rels, want.blocks, want.forks, want.end_lsns,
                 want.arena, want.offs)
            if fast_rmgr != RM_TEST:
                assert want.fast == []
            for k, i in enumerate(want.fast):      # the reference against the records
                rec = records[i].record
                assert len(rec.blocks) == 1 and rec.blocks[0].image is None
                assert not rec.blocks[0].will_init
                assert want.arena[want.offs[k]:want.offs[k + 1]] == rec.payload
        assert got == decoded


@needs_c
def test_raw_batches_cover_a_chunk_and_find_fast_records():
    """400 small records come in raw batches of many records each (a batch per chunk), and
    a fair share of them are fast (single block, no image, not will_init)."""
    with tempfile.TemporaryDirectory() as d:
        g = build_mixed(d, 11, 400, flushed=400)
        raw, decoded = raw_and_decoded(g)
        batches = [b for b in raw if isinstance(b, RawBatch)]
        assert sum(len(b.ats) for b in batches) + sum(
            len(b) for b in raw if not isinstance(b, RawBatch)) == len(decoded) == 400
        assert max(len(b.ats) for b in batches) > 20
        fast = sum(len(wal_decode.wal_fields_c(b, RM_TEST).fast) for b in batches)
        assert 20 < fast < 400
