"""Tests of storage/page.py: the page layout, its operations, checksum and verification."""

from __future__ import annotations

import mmap
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from slonik.storage.errors import DataCorruptionError
from slonik.storage.page import (
    BLCKSZ,
    CHECKSUM_OFFSET,
    FLAGS_OFFSET,
    HEADER_SIZE,
    LINE_POINTER_SIZE,
    LOWER_OFFSET,
    PAGE_LAYOUT_VERSION,
    PD_ALL_VISIBLE,
    PD_HAS_FREE_LINES,
    PD_PAGE_FULL,
    RESERVED_OFFSET,
    SPECIAL_OFFSET,
    UPPER_OFFSET,
    VERSION_OFFSET,
    LpFlag,
    PageCorruptError,
    PageFullError,
    PageStatus,
    init_page,
    max_item_size,
    maxalign,
    page_add_item,
    page_check,
    page_checksum,
    page_compact,
    page_delete_item,
    page_free_space,
    page_get_item,
    page_get_lsn,
    page_get_special,
    page_header,
    page_is_new,
    page_item_count,
    page_item_flags,
    page_set_checksum,
    page_set_flags,
    page_set_item_flags,
    page_set_lsn,
    verify_page,
)

REL, FORK, BLOCK = 16384, 0, 7
U16 = struct.Struct("<H")

items_st = st.lists(st.binary(min_size=1, max_size=400), max_size=40)
relnumbers = st.integers(0, 2**32 - 1)
forks = st.integers(0, 255)
blocks = st.integers(0, 2**32 - 1)


def new_page(special_size: int = 0) -> bytearray:
    page = bytearray(BLCKSZ)
    init_page(page, special_size)
    return page


def fill(page: bytearray, items: list[bytes]) -> dict[int, bytes]:
    """Add items until one does not fit; return offnum -> data of those stored."""
    stored = {}
    for data in items:
        try:
            stored[page_add_item(page, data)] = data
        except PageFullError:
            break
    return stored


def sample_page() -> bytearray:
    """A checksummed page with items of varied sizes, a DEAD one, a hole and special space."""
    page = new_page(special_size=16)
    for i in range(40):
        page_add_item(page, bytes((i * 7 + j) % 256 for j in range(i * 5 + 1)))
    page_set_item_flags(page, 3, LpFlag.DEAD)
    page_delete_item(page, 10)
    page_set_lsn(page, 0x1_2345_6789)
    page_set_checksum(page, REL, FORK, BLOCK)
    return page


def set_u16(page: bytearray, offset: int, value: int) -> None:
    U16.pack_into(page, offset, value)


# --------------------------------------------------------------------------- header


@given(lsn=st.integers(0, 2**64 - 1), special_size=st.integers(0, 512),
       flags=st.sampled_from([0, PD_PAGE_FULL, PD_ALL_VISIBLE, PD_PAGE_FULL | PD_ALL_VISIBLE]),
       rel=relnumbers, fork=forks, block=blocks)
def test_header_fields_round_trip(lsn, special_size, flags, rel, fork, block):
    """Header fields written through the API read back unchanged, and the page verifies.

    init_page with a random special size, set LSN and flags, checksum for a random
    (relation, fork, block); page_header must show exactly those values.
    """
    page = new_page(special_size)
    page_set_lsn(page, lsn)
    page_set_flags(page, flags)
    page_set_checksum(page, rel, fork, block)
    header = page_header(page)
    special = BLCKSZ - maxalign(special_size)
    assert header == (lsn, page_checksum(page, rel, fork, block), flags, HEADER_SIZE, special,
                      special, PAGE_LAYOUT_VERSION, 0)
    assert page_get_lsn(page) == lsn
    assert len(page_get_special(page)) == BLCKSZ - special
    assert page_item_count(page) == 0
    assert verify_page(page, rel, fork, block).status == PageStatus.VALID
    page_check(page)


def test_header_is_little_endian_at_named_offsets():
    """The header constants name where each field lives: decode the raw bytes by hand."""
    page = new_page(special_size=8)
    page_set_lsn(page, 0x0102030405060708)
    page_set_checksum(page, REL, FORK, BLOCK)
    assert page[0:8] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert struct.unpack_from("<I", page, CHECKSUM_OFFSET)[0] == page_header(page).checksum
    assert U16.unpack_from(page, LOWER_OFFSET)[0] == HEADER_SIZE
    assert U16.unpack_from(page, UPPER_OFFSET)[0] == BLCKSZ - 8
    assert U16.unpack_from(page, SPECIAL_OFFSET)[0] == BLCKSZ - 8
    assert U16.unpack_from(page, VERSION_OFFSET)[0] == PAGE_LAYOUT_VERSION
    assert U16.unpack_from(page, RESERVED_OFFSET)[0] == 0


def test_line_pointer_bit_layout():
    """A line pointer is offset (bits 0-14), flags (15-16), length (17-31), little-endian."""
    page = new_page()
    page_add_item(page, b"abc")
    (value,) = struct.unpack_from("<I", page, HEADER_SIZE)
    assert value & 0x7FFF == BLCKSZ - 8
    assert (value >> 15) & 3 == LpFlag.NORMAL
    assert value >> 17 == 3
    assert page[BLCKSZ - 8:] == b"abc\0\0\0\0\0"


# --------------------------------------------------------------------------- items


@given(items=items_st, special_size=st.sampled_from([0, 8, 24, 100]))
def test_items_round_trip(items, special_size):
    """Random items added until the page is full come back byte for byte, at offnums 1..n.

    Also: each item starts MAXALIGNed, the whole structure checks, and the page's free space
    shrank by exactly the aligned item sizes plus one line pointer each.
    """
    page = new_page(special_size)
    empty_gap = BLCKSZ - maxalign(special_size) - HEADER_SIZE
    stored = fill(page, items)
    assert list(stored) == list(range(1, len(stored) + 1))
    for offnum, data in stored.items():
        item = page_get_item(page, offnum)
        assert item == data
        assert page_item_flags(page, offnum) == LpFlag.NORMAL
    header = page_header(page)
    used = sum(maxalign(len(d)) + LINE_POINTER_SIZE for d in stored.values())
    assert header.upper - header.lower == empty_gap - used
    page_check(page)


@given(items=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=40),
       data=st.data())
def test_delete_and_compact_keep_other_items(items, data):
    """Deleting or killing items then compacting keeps the rest, at their old offnums.

    A random subset is deleted (UNUSED) and another marked DEAD. After page_compact every
    NORMAL item reads back equal under the same offnum, DEAD ones stay DEAD without storage,
    trailing UNUSED line pointers are gone, and free space grew by exactly the aligned bytes
    of the removed items plus the truncated line pointers.
    """
    page = new_page()
    stored = fill(page, items)
    offnums = list(stored)
    deleted = set(data.draw(st.sets(st.sampled_from(offnums))))
    dead = set(data.draw(st.sets(st.sampled_from(offnums)))) - deleted
    gap_before = page_header(page).upper - page_header(page).lower
    for offnum in deleted:
        page_delete_item(page, offnum)
    for offnum in dead:
        page_set_item_flags(page, offnum, LpFlag.DEAD)
        assert page_get_item(page, offnum) == stored[offnum]  # storage kept until compaction
    page_check(page)
    page_compact(page)
    page_check(page)

    survivors = [o for o in offnums if o not in deleted]
    expected_count = max(survivors, default=0)
    assert page_item_count(page) == expected_count
    for offnum, value in stored.items():
        if offnum in deleted:
            if offnum <= expected_count:
                assert page_item_flags(page, offnum) == LpFlag.UNUSED
        elif offnum in dead:
            assert page_item_flags(page, offnum) == LpFlag.DEAD
            with pytest.raises(ValueError, match=f"offnum {offnum} is DEAD"):
                page_get_item(page, offnum)
        else:
            assert page_get_item(page, offnum) == value
    freed = sum(maxalign(len(stored[o])) for o in deleted | dead)
    truncated = len(offnums) - expected_count
    header = page_header(page)
    assert header.upper - header.lower == gap_before + freed + truncated * LINE_POINTER_SIZE
    assert bool(header.flags & PD_HAS_FREE_LINES) == bool(
        {o for o in deleted if o <= expected_count})


def test_add_reuses_unused_line_pointer():
    """After a delete, the next add takes the UNUSED line pointer instead of appending one."""
    page = new_page()
    for i in range(5):
        page_add_item(page, bytes([i]) * 10)
    page_delete_item(page, 2)
    assert page_add_item(page, b"again") == 2
    assert page_get_item(page, 2) == b"again"
    assert page_item_count(page) == 5
    # The hint is stale now; the next add finds nothing to reuse, appends and clears it.
    assert page_add_item(page, b"sixth") == 6
    assert not page_header(page).flags & PD_HAS_FREE_LINES
    page_check(page)


def test_add_at_explicit_offnum():
    """With offnum, an item goes to that UNUSED line pointer or the next new one, else ValueError."""
    page = new_page()
    assert page_add_item(page, b"a", offnum=1) == 1
    assert page_add_item(page, b"b", offnum=2) == 2
    page_delete_item(page, 1)
    assert page_add_item(page, b"c", offnum=1) == 1
    assert page_get_item(page, 1) == b"c"
    with pytest.raises(ValueError, match="offnum 2 is in use"):
        page_add_item(page, b"d", offnum=2)
    with pytest.raises(ValueError, match="offnum 4"):
        page_add_item(page, b"d", offnum=4)
    with pytest.raises(ValueError, match="offnum 0"):
        page_add_item(page, b"d", offnum=0)


@given(items=items_st)
def test_free_space_is_exactly_what_fits(items):
    """An item of page_free_space() bytes fits; one MAXALIGN step more does not.

    Fill randomly, then (the page has no UNUSED line pointer) try free+1 bytes, which must
    raise PageFullError, and free bytes, which must succeed unless free is 0.
    """
    page = new_page()
    fill(page, items)
    free = page_free_space(page)
    with pytest.raises(PageFullError):
        page_add_item(page, bytes(free + 1))
    if free:
        page_add_item(page, b"\xff" * free)
    page_check(page)


def test_max_item_size_fits_an_empty_page():
    """max_item_size() bytes fit an empty page (which is then exactly full); one more does not."""
    for special_size in (0, 32):
        size = max_item_size(special_size)
        assert size == page_free_space(new_page(special_size))
        page = new_page(special_size)
        page_add_item(page, b"x" * size)
        assert page_free_space(page) == 0
        with pytest.raises(PageFullError):
            page_add_item(new_page(special_size), b"x" * (size + 1))
    assert max_item_size() == BLCKSZ - HEADER_SIZE - LINE_POINTER_SIZE - 4  # 8160


def test_full_page_raises_page_full_error_naming_sizes():
    """Adding to a full page raises PageFullError (a ValueError) saying needed and free bytes."""
    page = new_page()
    page_add_item(page, bytes(8000))
    with pytest.raises(PageFullError, match=r"item of 200 bytes needs 204 bytes .* page has "
                                            r"\d+ free") as caught:
        page_add_item(page, bytes(200))
    assert isinstance(caught.value, ValueError)
    assert caught.value.needed == 204
    assert caught.value.available == page_header(page).upper - page_header(page).lower
    page_check(page)  # a failed add changes nothing


@pytest.mark.parametrize("offnum", [0, -1, 4, 1000])
def test_bad_offnum_raises_value_error_naming_it(offnum):
    """Offnums outside 1..count are caller misuse: ValueError that names the offnum."""
    page = new_page()
    for data in (b"a", b"b", b"c"):
        page_add_item(page, data)
    for op in (page_get_item, page_item_flags, page_delete_item):
        with pytest.raises(ValueError, match=f"offnum {offnum} out of range 1..3"):
            op(page, offnum)


def test_line_pointer_transitions():
    """Only the edges in LP_TRANSITIONS are allowed; others raise ValueError naming both states."""
    page = new_page()
    page_add_item(page, b"a")
    page_add_item(page, b"b")
    page_set_item_flags(page, 1, LpFlag.DEAD)
    with pytest.raises(ValueError, match="from DEAD to NORMAL"):
        page_set_item_flags(page, 1, LpFlag.NORMAL)
    with pytest.raises(ValueError, match="from DEAD to DEAD"):
        page_set_item_flags(page, 1, LpFlag.DEAD)
    page_delete_item(page, 1)
    with pytest.raises(ValueError, match="from UNUSED to UNUSED"):
        page_delete_item(page, 1)
    with pytest.raises(ValueError, match="offnum 1 is UNUSED and has no storage"):
        page_get_item(page, 1)
    with pytest.raises(ValueError, match="from NORMAL to REDIRECT"):
        page_set_item_flags(page, 2, LpFlag.REDIRECT)


def test_misuse_is_type_or_value_error():
    """Wrong sizes, read-only buffers, empty items and uninitialised pages are refused clearly."""
    with pytest.raises(ValueError, match="buf must be 8192 bytes, got 100"):
        init_page(bytearray(100))
    with pytest.raises(TypeError, match="writable"):
        page_add_item(bytes(new_page()), b"x")
    with pytest.raises(TypeError, match="bytes-like"):
        page_add_item(new_page(), "text")
    with pytest.raises(ValueError, match="data is empty"):
        page_add_item(new_page(), b"")
    with pytest.raises(ValueError, match="init_page"):
        page_add_item(bytearray(BLCKSZ), b"x")
    with pytest.raises(ValueError, match="special_size 9000"):
        init_page(bytearray(BLCKSZ), 9000)
    with pytest.raises(ValueError, match="fork 256"):
        page_checksum(new_page(), REL, 256, BLOCK)
    with pytest.raises(ValueError, match="flags"):
        page_set_flags(new_page(), 0x100)


def test_works_in_place_on_mmap_slices():
    """Pages are edited in place inside a shared mapping, as the buffer pool will do."""
    pool = mmap.mmap(-1, 3 * BLCKSZ)
    view = memoryview(pool)
    page = view[BLCKSZ:2 * BLCKSZ]
    assert page_is_new(page)
    init_page(page)
    offnum = page_add_item(page, b"in the pool")
    page_set_checksum(page, REL, FORK, 1)
    assert verify_page(view[BLCKSZ:2 * BLCKSZ], REL, FORK, 1).status == PageStatus.VALID
    assert bytes(page_get_item(pool[BLCKSZ:2 * BLCKSZ], offnum)) == b"in the pool"
    assert pool[:BLCKSZ] == bytes(BLCKSZ) and pool[2 * BLCKSZ:] == bytes(BLCKSZ)
    page.release()
    view.release()
    pool.close()


class PageMachine(RuleBasedStateMachine):
    """Random add/delete/kill/compact sequences against a dict model of offnum -> (state, data).

    After every step page_check() verifies the whole structure and every live item and
    every line pointer state must match the model.
    """

    def __init__(self):
        super().__init__()
        self.page = new_page(special_size=16)
        self.model: dict[int, tuple[LpFlag, bytes]] = {}

    def offnums_in(self, *states):
        return sorted(o for o, (s, _) in self.model.items() if s in states)

    @rule(data=st.binary(min_size=1, max_size=700))
    def add(self, data):
        free = page_free_space(self.page)
        unused = self.offnums_in(LpFlag.UNUSED)
        try:
            offnum = page_add_item(self.page, data)
        except PageFullError:
            assert maxalign(len(data)) > free
            return
        if unused and page_header(self.page).flags & PD_HAS_FREE_LINES:
            assert offnum == unused[0]
        assert offnum not in self.model or self.model[offnum][0] == LpFlag.UNUSED
        self.model[offnum] = (LpFlag.NORMAL, data)

    @precondition(lambda self: self.offnums_in(LpFlag.NORMAL, LpFlag.DEAD))
    @rule(data=st.data())
    def delete(self, data):
        offnum = data.draw(st.sampled_from(self.offnums_in(LpFlag.NORMAL, LpFlag.DEAD)))
        page_delete_item(self.page, offnum)
        self.model[offnum] = (LpFlag.UNUSED, b"")

    @precondition(lambda self: self.offnums_in(LpFlag.NORMAL))
    @rule(data=st.data())
    def kill(self, data):
        offnum = data.draw(st.sampled_from(self.offnums_in(LpFlag.NORMAL)))
        page_set_item_flags(self.page, offnum, LpFlag.DEAD)
        self.model[offnum] = (LpFlag.DEAD, self.model[offnum][1])

    @rule()
    def compact(self):
        page_compact(self.page)
        for offnum, (state, _) in list(self.model.items()):
            if state == LpFlag.DEAD:
                self.model[offnum] = (LpFlag.DEAD, b"")
        while self.model and self.model[max(self.model)][0] == LpFlag.UNUSED:
            del self.model[max(self.model)]
        header = page_header(self.page)
        live = sum(maxalign(len(d)) for s, d in self.model.values() if s == LpFlag.NORMAL)
        assert header.upper == header.special - live
        assert header.lower == HEADER_SIZE + LINE_POINTER_SIZE * len(self.model)

    @invariant()
    def matches_model(self):
        page_check(self.page)
        assert page_item_count(self.page) == (max(self.model) if self.model else 0)
        for offnum, (state, data) in self.model.items():
            assert page_item_flags(self.page, offnum) == state
            if data:
                assert page_get_item(self.page, offnum) == data

    @invariant()
    def checksum_round_trips(self):
        page_set_checksum(self.page, REL, FORK, BLOCK)
        assert verify_page(self.page, REL, FORK, BLOCK).status == PageStatus.VALID


TestPageMachine = PageMachine.TestCase
TestPageMachine.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)


# --------------------------------------------------------------------------- checksum, verify


def test_every_single_bit_flip_is_detected_exhaustively():
    """Flip each of the 65536 bits of a checksummed page in turn: verify is never VALID or NEW.

    CRC-32C catches every single-bit error; flips in the header may be caught earlier as
    BAD_HEADER. The loop must also be fast (< 2 s), which bounds verify_page's cost.
    """
    page = sample_page()
    assert verify_page(page, REL, FORK, BLOCK).status == PageStatus.VALID
    started = time.perf_counter()
    for bit in range(BLCKSZ * 8):
        byte, mask = divmod(bit, 8)
        page[byte] ^= 1 << mask
        status = verify_page(page, REL, FORK, BLOCK).status
        page[byte] ^= 1 << mask
        assert status in (PageStatus.BAD_CHECKSUM, PageStatus.BAD_HEADER), bit
    assert time.perf_counter() - started < 2.0
    assert verify_page(page, REL, FORK, BLOCK).status == PageStatus.VALID


@given(items=items_st, bit=st.integers(0, BLCKSZ * 8 - 1), lsn=st.integers(0, 2**64 - 1))
def test_single_bit_flip_of_random_page_is_detected(items, bit, lsn):
    """For random page contents, flipping any one bit makes verify_page report non-VALID."""
    page = new_page()
    fill(page, items)
    page_set_lsn(page, lsn)
    page_set_checksum(page, REL, FORK, BLOCK)
    page[bit // 8] ^= 1 << (bit % 8)
    result = verify_page(page, REL, FORK, BLOCK)
    assert result.status in (PageStatus.BAD_CHECKSUM, PageStatus.BAD_HEADER)
    assert result.reason


@given(rel=relnumbers, fork=forks, block=blocks, other=st.data())
def test_page_in_the_wrong_place_fails_checksum(rel, fork, block, other):
    """A page checksummed for (rel, fork, block) is BAD_CHECKSUM when read as any other one.

    One of the three coordinates is replaced by a different random value.
    """
    page = sample_page()
    page_set_checksum(page, rel, fork, block)
    assert verify_page(page, rel, fork, block).status == PageStatus.VALID
    which = other.draw(st.sampled_from(["rel", "fork", "block"]))
    place = {"rel": rel, "fork": fork, "block": block}
    strategy = {"rel": relnumbers, "fork": forks, "block": blocks}[which]
    place[which] = other.draw(strategy.filter(lambda v: v != place[which]))
    result = verify_page(page, place["rel"], place["fork"], place["block"])
    assert result.status == PageStatus.BAD_CHECKSUM
    assert result.reason.startswith("checksum mismatch: stored 0x")


def test_checksum_ignores_its_own_field_and_buffer_type():
    """The checksum is the same for bytes, bytearray and memoryview, and whatever is stored
    in the checksum field (it is read as zero), so setting it twice changes nothing."""
    page = sample_page()
    first = page_checksum(page, REL, FORK, BLOCK)
    assert first == page_checksum(bytes(page), REL, FORK, BLOCK)
    assert first == page_checksum(memoryview(page), REL, FORK, BLOCK)
    struct.pack_into("<I", page, CHECKSUM_OFFSET, 0xDEADBEEF)
    assert page_checksum(page, REL, FORK, BLOCK) == first
    page_set_checksum(page, REL, FORK, BLOCK)
    page_set_checksum(page, REL, FORK, BLOCK)
    assert page_header(page).checksum == first


@pytest.mark.parametrize("page", [bytes(BLCKSZ), bytearray(BLCKSZ),
                                  memoryview(mmap.mmap(-1, BLCKSZ))])
def test_all_zero_page_is_new(page):
    """An all-zero page of any buffer type is NEW (valid), for any relation/fork/block."""
    assert page_is_new(page)
    assert verify_page(page, REL, FORK, BLOCK) == (PageStatus.NEW, "")
    assert verify_page(page, 1, 2, 3).status == PageStatus.NEW
    page_check(page)


@given(position=st.integers(HEADER_SIZE, BLCKSZ - 1), value=st.integers(1, 255))
def test_zero_header_with_stray_byte_is_bad_header(position, value):
    """A zero header over a nonzero byte anywhere is BAD_HEADER naming that byte, not NEW."""
    page = bytearray(BLCKSZ)
    page[position] = value
    assert not page_is_new(page)
    result = verify_page(page, REL, FORK, BLOCK)
    assert result.status == PageStatus.BAD_HEADER
    assert f"byte {position}" in result.reason


def _corrupt(offset, value):
    def apply(page):
        set_u16(page, offset, value)
    return apply


BAD_HEADERS = [
    ("lower above upper", _corrupt(LOWER_OFFSET, 8000), "lower 8000 > upper"),
    ("lower inside header", _corrupt(LOWER_OFFSET, 10), "lower 10 < header size 24"),
    ("lower mid line pointer", _corrupt(LOWER_OFFSET, 26), "lower 26 does not end"),
    ("upper above special", _corrupt(UPPER_OFFSET, 8184), "upper 8184 > special 8176"),
    ("upper unaligned", _corrupt(UPPER_OFFSET, 7001), "upper 7001 is not a multiple"),
    ("special beyond page", _corrupt(SPECIAL_OFFSET, 9000), "special 9000 > page size"),
    ("special unaligned", _corrupt(SPECIAL_OFFSET, 8180), "special 8180 is not a multiple"),
    ("version", _corrupt(VERSION_OFFSET, 2), "layout version 2, expected 1"),
    ("reserved", _corrupt(RESERVED_OFFSET, 1), "reserved field 0x0001"),
    ("unknown flag", _corrupt(FLAGS_OFFSET, 0x40), "unknown bits 0x0040"),
]


@pytest.mark.parametrize(("name", "damage", "reason"), BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_bad_header_is_reported_naming_the_field(name, damage, reason):
    """Each impossible header field gives BAD_HEADER (checked before the checksum) whose
    reason names the field, and the page operations raise PageCorruptError saying the same."""
    page = sample_page()
    damage(page)
    page_set_checksum(page, REL, FORK, BLOCK)  # a matching checksum does not rescue it
    result = verify_page(page, REL, FORK, BLOCK)
    assert result.status == PageStatus.BAD_HEADER
    assert result.reason.startswith("invalid page header: ")
    assert reason in result.reason
    with pytest.raises(PageCorruptError, match=reason) as caught:
        page_get_item(page, 1)
    assert isinstance(caught.value, DataCorruptionError)
    with pytest.raises(PageCorruptError, match=reason):
        page_add_item(page, b"x")
    with pytest.raises(PageCorruptError, match=reason):
        page_check(page)


def test_item_pointing_outside_the_page_is_corruption():
    """A line pointer whose item leaves [upper, special) raises PageCorruptError naming it."""
    page = new_page(special_size=16)
    page_add_item(page, b"a" * 20)
    page_add_item(page, b"b" * 20)
    lp2 = HEADER_SIZE + LINE_POINTER_SIZE
    struct.pack_into("<I", page, lp2, (BLCKSZ - 24) | (1 << 15) | (20 << 17))
    with pytest.raises(PageCorruptError, match="line pointer 2: item offset 8168 \\+ length 20 "
                                               "exceeds special 8176"):
        page_get_item(page, 2)
    struct.pack_into("<I", page, lp2, 40 | (1 << 15) | (20 << 17))
    with pytest.raises(PageCorruptError, match="line pointer 2: item offset 40 is below upper"):
        page_get_item(page, 2)
    with pytest.raises(PageCorruptError, match="line pointer 2"):
        page_compact(page)
    assert page_get_item(page, 1) == b"a" * 20


def test_overlapping_items_are_corruption():
    """Two line pointers sharing bytes are found by page_check and refused by page_compact."""
    page = new_page()
    page_add_item(page, b"a" * 16)
    page_add_item(page, b"b" * 16)
    first = struct.unpack_from("<I", page, HEADER_SIZE)[0]
    struct.pack_into("<I", page, HEADER_SIZE + LINE_POINTER_SIZE, first)
    with pytest.raises(PageCorruptError, match="overlap"):
        page_check(page)
    with pytest.raises(PageCorruptError, match="overlap"):
        page_compact(page)
