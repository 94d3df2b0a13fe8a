"""WalReader.batches (recovery's way of reading WAL: a scanner's records of one chunk per
list) hands out exactly the records iteration yields, in order, and leaves the same end,
last record, stop reason and count, or raises the same middle-corruption error."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.wal.reader import WalCorruptMiddleError, WalReader
from slonik.wal.walpage import WAL_PAGE_SIZE

from tests.wal.test_reader import SCANNERS, build_mixed


def outcome(g, scanner, batched: bool):
    reader = WalReader(g.wal_dir, g.seg, g.start_lsn, scanner=scanner,
                       check_middle_corruption=True)
    got, sizes = [], []
    try:
        if batched:
            for batch in reader.batches():
                sizes.append(len(batch))
                got.extend((rr.lsn, rr.end_lsn, rr.length, rr.record) for rr in batch)
        else:
            for rr in reader:
                got.append((rr.lsn, rr.end_lsn, rr.length, rr.record))
        end = ("end", reader.end_lsn, reader.last_lsn, reader.stop_reason,
               reader.records_read)
    except WalCorruptMiddleError as e:
        end = ("corrupt", e.lsn, e.proof_lsn, e.durable_lsn, e.reason)
    return got, end, sizes


@pytest.mark.parametrize("scanner", SCANNERS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 150), data=st.data())
def test_batches_equal_iteration(scanner, seed, n, data):
    """On intact WAL of 1..150 mixed records (payload only, blocks, page images: records
    within a page and records crossing pages) and on WAL with one byte flipped anywhere,
    the batches joined are the records iteration yields (LSNs, ends, lengths, contents),
    no batch is empty, and end/last/stop reason/count (or the WalCorruptMiddleError) are
    the same. Checked by reading the same files both ways."""
    with tempfile.TemporaryDirectory() as d:
        g = build_mixed(d, seed, n, flushed=data.draw(st.integers(0, n), label="flushed"))
        if data.draw(st.booleans(), label="damage"):
            x = data.draw(st.integers(g.start_lsn - g.start_lsn % WAL_PAGE_SIZE,
                                      g.end_lsn - 1), label="x")
            g.xor_byte(x, data.draw(st.integers(1, 255), label="mask"))
        want, want_end, _ = outcome(g, scanner, False)
        got, got_end, sizes = outcome(g, scanner, True)
        assert (got, got_end) == (want, want_end)
        assert all(sizes)


def test_batches_group_a_chunk_of_records():
    """With a scanner, a WAL of 400 small records comes in far fewer batches than records
    (a batch per chunk, plus one per record that crosses a chunk)."""
    with tempfile.TemporaryDirectory() as d:
        g = build_mixed(d, 7, 400, flushed=399)
        for scanner in [s.values[0] for s in SCANNERS]:
            got, end, sizes = outcome(g, scanner, True)
            assert len(got) == 400 and end[0] == "end"
            assert len(sizes) < 100 and max(sizes) > 20
