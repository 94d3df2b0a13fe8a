"""WAL record codec: round trips, corruption detection, bounds and error fields."""

from __future__ import annotations

import random
import struct

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slonik.wal.errors import WalError
from slonik.wal.record import (
    BLCKSZ,
    BLOCK_REF_HEADER_SIZE,
    MAX_BLOCK_REFS,
    MAX_RECORD_SIZE,
    MAX_RECORD_SIZE_BYTES,
    RECORD_HEADER_SIZE,
    BlockRef,
    WalRecord,
    WalRecordError,
    check_record_header,
    decode_checked,
    decode_record,
    encode_record,
    make_record,
    record_total_length,
)

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


def page_with_hole(rng: random.Random, hole_offset: int, hole_length: int) -> bytes:
    page = bytearray(rng.randbytes(BLCKSZ))
    page[hole_offset:hole_offset + hole_length] = bytes(hole_length)
    return bytes(page)


@st.composite
def block_refs(draw) -> BlockRef:
    rng = random.Random(draw(st.integers(0, 2**32)))
    rel = draw(st.integers(0, U32))
    fork = draw(st.integers(0, 2))
    block = draw(st.integers(0, U32))
    will_init = draw(st.booleans())
    if not draw(st.booleans()):
        return BlockRef(rel, fork, block, None, will_init)
    hole_length = draw(st.sampled_from([0, 1, 100, 4000, BLCKSZ - 24, BLCKSZ]))
    hole_offset = 0 if hole_length == 0 else draw(st.integers(0, BLCKSZ - hole_length))
    return BlockRef(rel, fork, block, page_with_hole(rng, hole_offset, hole_length), will_init,
                    hole_offset, hole_length)


@st.composite
def records(draw, max_payload: int = 100 * 1024) -> WalRecord:
    size = draw(st.one_of(st.integers(0, 64), st.integers(0, max_payload)))
    payload = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    return WalRecord(rmgr=draw(st.integers(0, 255)), info=draw(st.integers(0, 255)),
                     xid=draw(st.integers(0, U64)), payload=payload,
                     blocks=tuple(draw(st.lists(block_refs(), max_size=4))),
                     prev_lsn=draw(st.integers(0, U64)))


def recrc(data: bytes | bytearray) -> bytes:
    """``data`` with its CRC recomputed: for building records that pass the CRC but are
    structurally wrong."""
    data = bytearray(data)
    data[4:8] = bytes(4)
    struct.pack_into("<I", data, 4, crc32c.crc32c(bytes(data)))
    return bytes(data)


def test_blcksz_matches_storage():
    """wal/ may not import storage/, so the data page size is defined twice; they agree."""
    from slonik.storage.page import BLCKSZ as STORAGE_BLCKSZ
    assert BLCKSZ == STORAGE_BLCKSZ


def test_bounds_are_named_and_consistent():
    """The limits exist under their names; the largest legal record of MAX_BLOCK_REFS
    unholed images fits under MAX_RECORD_SIZE_BYTES."""
    assert MAX_RECORD_SIZE == MAX_RECORD_SIZE_BYTES
    assert RECORD_HEADER_SIZE % 8 == 0
    assert RECORD_HEADER_SIZE + MAX_BLOCK_REFS * (BLOCK_REF_HEADER_SIZE + BLCKSZ) \
        <= MAX_RECORD_SIZE_BYTES


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_round_trip(rec):
    """decode(encode(r)) == r for arbitrary records: payloads 0..100 KiB, 0..4 block
    references, full-page images with and without holes (restored as zeros)."""
    data = encode_record(rec)
    assert isinstance(data, bytes)
    assert record_total_length(data) == len(data)
    assert check_record_header(data[:RECORD_HEADER_SIZE]) == len(data)
    stored_images = sum(BLCKSZ - b.hole_length for b in rec.blocks if b.image is not None)
    assert len(data) == (RECORD_HEADER_SIZE + BLOCK_REF_HEADER_SIZE * len(rec.blocks)
                         + stored_images + len(rec.payload))
    assert decode_record(data) == rec
    assert decode_record(memoryview(data)) == rec
    assert decode_record(bytearray(data)) == rec


def test_round_trip_accepts_memoryview_inputs():
    """The writer hands in the page as a memoryview and may pass a memoryview payload."""
    rng = random.Random(1)
    page = bytearray(page_with_hole(rng, 200, 5000))
    rec = WalRecord(10, 1, 7, memoryview(b"abc"),
                    (BlockRef(5, 0, 3, memoryview(page), False, 200, 5000),))
    out = decode_record(encode_record(rec))
    assert out.payload == b"abc" and out.blocks[0].image == bytes(page)
    assert out.blocks[0].hole_offset == 200 and out.blocks[0].hole_length == 5000


@settings(max_examples=300, deadline=None)
@given(records(max_payload=2000), st.data())
def test_any_single_byte_corruption_is_rejected(rec, data):
    """Flipping any bits of any one byte of an encoded record makes decode raise
    WalRecordError (CRC-32C catches every burst up to 32 bits; the length is checked
    against the bytes given)."""
    enc = bytearray(encode_record(rec))
    i = data.draw(st.integers(0, len(enc) - 1), label="offset")
    enc[i] ^= data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(WalRecordError) as ei:
        decode_record(bytes(enc))
    assert ei.value.field in ("crc", "total_length")
    assert isinstance(ei.value, WalError)


def test_every_byte_of_a_small_record_is_covered():
    """Exhaustive over a record with a block reference and an image: every byte, three
    masks each."""
    rng = random.Random(7)
    rec = WalRecord(1, 2, 3, b"payload!", (BlockRef(1, 0, 2, page_with_hole(rng, 100, 8000),
                                                    True, 100, 8000), BlockRef(9, 1, 9)), 99)
    enc = encode_record(rec)
    for i in range(len(enc)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(enc)
            bad[i] ^= mask
            with pytest.raises(WalRecordError):
                decode_record(bytes(bad))


def test_truncated_and_extended_records_are_rejected():
    """Fewer or more bytes than the header says: total_length names the problem."""
    enc = encode_record(WalRecord(1, 0, 1, b"x" * 100))
    for n in (0, 4, RECORD_HEADER_SIZE - 1, RECORD_HEADER_SIZE, len(enc) - 1):
        with pytest.raises(WalRecordError) as ei:
            decode_record(enc[:n])
        assert ei.value.field == "total_length"
    with pytest.raises(WalRecordError) as ei:
        decode_record(enc + b"\0")
    assert ei.value.field == "total_length"


def _header(total, nblocks=0, reserved=0, plen=0):
    return struct.pack("<IIQQBBBBI", total, 0, 1, 0, 1, 0, nblocks, reserved, plen)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d[:27] + b"\x01" + d[28:], "reserved"),                       # reserved byte
    (lambda d: d[:26] + bytes([MAX_BLOCK_REFS + 1]) + d[27:], "block_count"),
    (lambda d: d[:28] + struct.pack("<I", 10**6) + d[32:], "payload_length"),
    (lambda d: d[:28] + struct.pack("<I", 0) + d[32:], "payload_length"),
])
def test_structural_errors_name_the_field(mutate, field):
    """Records with a good CRC but impossible structure are rejected naming the field."""
    enc = encode_record(WalRecord(1, 0, 1, b"0123456789"))
    with pytest.raises(WalRecordError) as ei:
        decode_record(recrc(mutate(enc)))
    assert ei.value.field == field
    assert field in str(ei.value)


def test_block_errors_name_the_block():
    """Block reference fields: unknown flags, reserved, hole without image, hole past the
    page, hole_offset with empty hole, image running past the record."""
    rng = random.Random(3)
    rec = WalRecord(1, 0, 1, b"p", (BlockRef(1, 0, 0), BlockRef(2, 0, 0, page_with_hole(
        rng, 10, 100), False, 10, 100)))
    enc = encode_record(rec)
    b0 = RECORD_HEADER_SIZE
    b1 = RECORD_HEADER_SIZE + BLOCK_REF_HEADER_SIZE

    def patch(off, fmt, value):
        d = bytearray(enc)
        struct.pack_into(fmt, d, off, value)
        return recrc(d)

    cases = [
        (patch(b0 + 9, "<B", 0x80), "blocks[0].flags"),
        (patch(b0 + 14, "<H", 1), "blocks[0].reserved"),
        (patch(b0 + 10, "<H", 5), "blocks[0].hole_offset"),
        (patch(b1 + 10, "<H", BLCKSZ - 50), "blocks[1].hole_length"),
        (patch(b1 + 12, "<H", 50), "blocks[1].hole_length"),      # image runs past the record
        (patch(b1 + 12, "<H", 200), "payload_length"),           # image shorter: bytes left
    ]
    for data, field in cases:
        with pytest.raises(WalRecordError) as ei:
            decode_record(data)
        assert ei.value.field == field, (field, str(ei.value))
    d = bytearray(encode_record(WalRecord(1, 0, 1, b"", (BlockRef(2, 0, 0, page_with_hole(
        rng, 0, 0)),))))
    struct.pack_into("<H", d, b0 + 10, 7)    # hole_offset with hole_length 0
    with pytest.raises(WalRecordError) as ei:
        decode_record(recrc(d))
    assert ei.value.field == "blocks[0].hole_offset"


def test_check_record_header():
    """The early header check a reader runs before gathering a record spanning pages."""
    assert check_record_header(_header(100, 0, 0, 68)) == 100
    for hdr, field in [(_header(10), "total_length"),
                       (_header(MAX_RECORD_SIZE_BYTES + 1), "total_length"),
                       (_header(100, reserved=1), "reserved"),
                       (_header(1000, nblocks=MAX_BLOCK_REFS + 1), "block_count"),
                       (_header(100, nblocks=2, plen=60), "payload_length"),
                       (b"\x00" * 8, "total_length")]:
        with pytest.raises(WalRecordError) as ei:
            check_record_header(hdr)
        assert ei.value.field == field


@pytest.mark.parametrize("rec, exc, words", [
    (WalRecord(256, 0, 0), ValueError, "rmgr"),
    (WalRecord(1, -1, 0), ValueError, "info"),
    (WalRecord(1, 0, U64 + 1), ValueError, "xid"),
    (WalRecord(1, 0, 0, prev_lsn=-5), ValueError, "prev_lsn"),
    (WalRecord(1, 0, "7"), TypeError, "xid"),
    (WalRecord(1, 0, 0, "text"), TypeError, "payload"),
    (WalRecord(1, 0, 0, b"", (BlockRef(U32 + 1, 0, 0),)), ValueError, "blocks[0].rel"),
    (WalRecord(1, 0, 0, b"", (BlockRef(1, 256, 0),)), ValueError, "blocks[0].fork"),
    (WalRecord(1, 0, 0, b"", (BlockRef(1, 0, -1),)), ValueError, "blocks[0].block"),
    (WalRecord(1, 0, 0, b"", (BlockRef(1, 0, 0, b"short"),)), ValueError, "blocks[0].image"),
    (WalRecord(1, 0, 0, b"", (BlockRef(1, 0, 0, None, False, 0, 10),)), ValueError, "hole"),
    (WalRecord(1, 0, 0, b"", (BlockRef(1, 0, 0, bytes(BLCKSZ), False, 8000, 1000),)),
     ValueError, "hole"),
    (WalRecord(1, 0, 0, b"", (BlockRef(1, 0, 0, bytes(BLCKSZ), False, 5, 0),)),
     ValueError, "hole_offset"),
    (WalRecord(1, 0, 0, b"", (1,)), TypeError, "blocks[0]"),
    (WalRecord(1, 0, 0, b"", (BlockRef(1, 0, 0),) * (MAX_BLOCK_REFS + 1)), ValueError,
     "MAX_BLOCK_REFS"),
    (WalRecord(1, 0, 0, bytes(MAX_RECORD_SIZE_BYTES)), ValueError, "MAX_RECORD_SIZE_BYTES"),
    (WalRecord(1, 0, 0, bytes(MAX_RECORD_SIZE_BYTES - 1000), (BlockRef(1, 0, 0, bytes(BLCKSZ)),)),
     ValueError, "MAX_RECORD_SIZE_BYTES"),
])
def test_encode_rejects_bad_arguments_naming_them(rec, exc, words):
    """Caller misuse is TypeError/ValueError whose message names the argument."""
    with pytest.raises(exc) as ei:
        encode_record(rec)
    assert words in str(ei.value)


def test_encode_largest_record():
    """A record of exactly MAX_RECORD_SIZE_BYTES encodes and decodes."""
    rec = WalRecord(1, 0, 0, bytes(MAX_RECORD_SIZE_BYTES - RECORD_HEADER_SIZE))
    assert decode_record(encode_record(rec)) == rec


def test_nonzero_hole_is_a_broken_invariant():
    """The hole is the page's zero gap; bytes there would be lost, so it is an
    AssertionError (a bug in the caller), never silent data loss."""
    with pytest.raises(AssertionError):
        encode_record(WalRecord(1, 0, 0, b"", (BlockRef(1, 0, 0, b"\x01" * BLCKSZ, False,
                                                         100, 100),)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.integers(0, 64), st.integers(0, 64))
def test_decode_checked_gives_what_decode_record_gives(rec, before, after):
    """decode_checked (the reader's path for records its scanner already checked) decodes a
    valid record inside a larger buffer, at any offset, to exactly what decode_record gives
    for the record's own bytes: payload, block references, images with holes restored."""
    data = encode_record(rec)
    buf = memoryview(bytes(range(256))[:before] + data + bytes(after))
    got = decode_checked(buf, before, len(data))
    assert got == decode_record(data) == rec
    assert type(got) is WalRecord and hash(got) == hash(rec) and repr(got) == repr(rec)
    assert make_record(rec.rmgr, rec.info, rec.xid, rec.payload, rec.blocks,
                       rec.prev_lsn) == rec
    assert type(got.payload) is bytes
    assert all(type(b.image) is bytes for b in got.blocks if b.image is not None)
