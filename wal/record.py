"""The WAL record: encode and decode, CRC-32C, bounds. Pure, no I/O.

Layout (all integers little-endian; a record is stored contiguously in the WAL stream,
split across pages only by the page headers the reader strips)::

    header (32 bytes, struct "<IIQQBBBBI")
      0..4    total_length u32  bytes of the whole record, header included (first, so a
                                reader knows how much to gather before it can check the CRC)
      4..8    crc          u32  CRC-32C of the whole record with this field read as zero
      8..16   xid          u64  transaction id (0: none)
     16..24   prev_lsn     u64  start LSN of the previous record (0: none)
     24       rmgr         u8   resource manager id (wal.rmgr)
     25       info         u8   rmgr-specific bits
     26       block_count  u8   number of block references, <= MAX_BLOCK_REFS
     27       reserved     u8   zero
     28..32   payload_length u32
    block reference headers (16 bytes each, struct "<IIBBHHH")
              rel u32 | block u32 | fork u8 | flags u8 | hole_offset u16 | hole_length u16 |
              reserved u16 (zero)
    full-page images, in block order: BLCKSZ - hole_length bytes each (the page without its
              hole; hole_offset and hole_length are 0 when the image has no hole)
    payload   payload_length bytes

Decode checks, in this order, and names the field of the first one that fails
(``WalRecordError.field``): the length against the bytes given and the bounds, the CRC, then
the structure (reserved bytes, block count, flags, hole bounds, lengths adding up). The CRC
comes before the structure so that a random flip is reported as what it almost always is.
Encode is on the commit path: one ``struct.pack`` per header, CRC-32C over the parts, and one
``join``; bad arguments are diagnosed only after the fast path fails.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c as _crc32c
from slonik.wal.errors import WalError

__all__ = [
    "BLCKSZ", "RECORD_HEADER_SIZE", "BLOCK_REF_HEADER_SIZE", "MAX_RECORD_SIZE_BYTES",
    "MAX_RECORD_SIZE", "MAX_BLOCK_REFS", "BKP_HAS_IMAGE", "BKP_WILL_INIT", "BlockRef",
    "WalRecord", "WalRecordError", "encode_record", "encode_fields", "decode_record",
    "decode_checked", "make_record", "plain_block_header",
    "record_total_length", "check_record_header",
]

# The data page size, which full-page images have. Equal to storage.page.BLCKSZ (wal/ may not
# import storage/; tests/wal/test_record.py checks the two agree).
BLCKSZ = 8192

_HEADER = struct.Struct("<IIQQBBBBI")
_BLOCK = struct.Struct("<IIBBHHH")
_TOTAL_LENGTH = struct.Struct("<I")
RECORD_HEADER_SIZE = _HEADER.size        # 32
BLOCK_REF_HEADER_SIZE = _BLOCK.size      # 16
_CRC_OFFSET = 4
_ZERO_CRC = bytes(4)
_ZERO_PAGE = bytes(BLCKSZ)

# Largest record, header included. Big enough for a checkpoint record carrying hundreds of
# thousands of aborted xids, or MAX_BLOCK_REFS full-page images plus a page of payload; small
# enough that a garbage length read at a torn tail makes the reader gather at most 4 MiB
# before the CRC rejects it.
MAX_RECORD_SIZE_BYTES = 4 * 1024 * 1024
MAX_RECORD_SIZE = MAX_RECORD_SIZE_BYTES  # the contract's name
# Most block references one record may carry: PostgreSQL's XLR_MAX_BLOCK_ID. Heap records
# touch one or two pages; the bound keeps a garbage block count from meaning much work.
MAX_BLOCK_REFS = 32

BKP_HAS_IMAGE = 0x01   # a full-page image follows (after all the block headers)
BKP_WILL_INIT = 0x02   # redo re-initialises the page; it need not be read first
_BKP_KNOWN = BKP_HAS_IMAGE | BKP_WILL_INIT

_U8, _U16, _U32, _U64 = 0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF

assert RECORD_HEADER_SIZE == 32 and BLOCK_REF_HEADER_SIZE == 16
assert MAX_BLOCK_REFS * (BLOCK_REF_HEADER_SIZE + BLCKSZ) + RECORD_HEADER_SIZE \
    < MAX_RECORD_SIZE_BYTES


class WalRecordError(WalError):
    """Bytes that are not a valid WAL record; ``field`` names the part that is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid WAL record: {field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A data block a record changes, as stored in or decoded from a record.

    ``image`` is the full BLCKSZ-byte page (on decode, with the hole restored as zeros) or
    None. ``hole_offset``/``hole_length``: bytes ``[hole_offset, hole_offset + hole_length)``
    of the image are zeros and are not stored (PostgreSQL's pd_lower..pd_upper gap); both 0
    when there is no hole or no image. Decode returns them as stored.
    """

    rel: int
    fork: int
    block: int
    image: bytes | None = None
    will_init: bool = False
    hole_offset: int = 0
    hole_length: int = 0


@dataclass(frozen=True, slots=True)
class WalRecord:
    """One WAL record. ``prev_lsn`` is filled in by the inserter."""

    rmgr: int
    info: int
    xid: int
    payload: bytes = b""
    blocks: tuple[BlockRef, ...] = ()
    prev_lsn: int = 0


# --- encode ----------------------------------------------------------------------------------

def encode_record(rec: WalRecord) -> bytes:
    """The bytes of ``rec``. ValueError/TypeError naming the field when it cannot be stored."""
    if not isinstance(rec, WalRecord):
        raise _encode_error(rec)
    return encode_fields(rec.rmgr, rec.info, rec.xid, rec.payload, rec.blocks, rec.prev_lsn)


def encode_fields(rmgr: int, info: int, xid: int, payload: bytes,
                  blocks: tuple[BlockRef, ...], prev_lsn: int) -> bytes:
    """``encode_record`` of the record with these fields, without building the
    ``WalRecord`` (the inserter's hot path: two records per autocommit)."""
    nblocks = len(blocks)
    try:
        if not nblocks:
            total = RECORD_HEADER_SIZE + len(payload)
            if total > MAX_RECORD_SIZE_BYTES:
                raise _encode_error(WalRecord(rmgr, info, xid, payload, blocks, prev_lsn))
            pack_args = (xid, prev_lsn, rmgr, info, 0, 0, len(payload))
            crc = _crc32c.crc32c(payload, _crc32c.crc32c(_HEADER.pack(total, 0, *pack_args)))
            return _HEADER.pack(total, crc, *pack_args) + payload
        if nblocks > MAX_BLOCK_REFS:
            raise _encode_error(WalRecord(rmgr, info, xid, payload, blocks, prev_lsn))
        parts: list = [b""]          # [0] becomes the record header
        images: list = []
        total = RECORD_HEADER_SIZE + nblocks * BLOCK_REF_HEADER_SIZE + len(payload)
        for b in blocks:
            image = b.image
            if image is None:
                if b.hole_offset or b.hole_length:
                    raise _encode_error(WalRecord(rmgr, info, xid, payload, blocks, prev_lsn))
                parts.append(_BLOCK.pack(b.rel, b.block, b.fork,
                                         BKP_WILL_INIT if b.will_init else 0, 0, 0, 0))
                continue
            off, hole = b.hole_offset, b.hole_length
            if len(image) != BLCKSZ or off < 0 or hole < 0 or off + hole > BLCKSZ \
                    or (off and not hole):
                raise _encode_error(WalRecord(rmgr, info, xid, payload, blocks, prev_lsn))
            flags = BKP_HAS_IMAGE | BKP_WILL_INIT if b.will_init else BKP_HAS_IMAGE
            parts.append(_BLOCK.pack(b.rel, b.block, b.fork, flags, off, hole, 0))
            if hole:
                # The hole is the page's zero gap (storage/page.py invariant 5); a nonzero
                # byte there would be lost, so it is a broken invariant, not bad input.
                assert image[off:off + hole] == _ZERO_PAGE[:hole], \
                    f"full-page image of block {b.block} has nonzero bytes in its hole"
                images.append(image[:off])
                images.append(image[off + hole:])
            else:
                images.append(image)
            total += BLCKSZ - hole
        if total > MAX_RECORD_SIZE_BYTES:
            raise _encode_error(WalRecord(rmgr, info, xid, payload, blocks, prev_lsn))
        parts.extend(images)
        parts.append(payload)
        pack_args = (xid, prev_lsn, rmgr, info, nblocks, 0, len(payload))
        crc = _crc32c.crc32c(_HEADER.pack(total, 0, *pack_args))
        for i in range(1, len(parts)):
            crc = _crc32c.crc32c(parts[i], crc)
        parts[0] = _HEADER.pack(total, crc, *pack_args)
        return b"".join(parts)
    except (struct.error, AttributeError, TypeError) as e:
        raise _encode_error(WalRecord(rmgr, info, xid, payload, blocks, prev_lsn)) from e


def plain_block_header(rel: int, fork: int, block: int, will_init: bool) -> bytes:
    """The 16-byte block reference header ``encode_fields`` writes for an image-less
    ``BlockRef(rel, fork, block, will_init=will_init)`` (what the inserter's C record
    writer is given). ``struct.error`` when a field is out of range."""
    return _BLOCK.pack(rel, block, fork, BKP_WILL_INIT if will_init else 0, 0, 0, 0)


def _check_int(name: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit}, got {value}")


def _encode_error(rec: object) -> Exception:
    """Diagnose why ``rec`` cannot be encoded (off the fast path): the error to raise."""
    try:
        _diagnose(rec)
    except (TypeError, ValueError) as e:
        return e
    raise AssertionError(f"encode_record failed on a record that checks out: {rec!r}")


def _diagnose(rec: object) -> None:
    if not isinstance(rec, WalRecord):
        raise TypeError(f"encode_record needs a WalRecord, not {type(rec).__name__}")
    _check_int("rmgr", rec.rmgr, _U8)
    _check_int("info", rec.info, _U8)
    _check_int("xid", rec.xid, _U64)
    _check_int("prev_lsn", rec.prev_lsn, _U64)
    if not isinstance(rec.payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, not {type(rec.payload).__name__}")
    if not isinstance(rec.blocks, tuple | list):
        raise TypeError(f"blocks must be a tuple of BlockRef, not {type(rec.blocks).__name__}")
    if len(rec.blocks) > MAX_BLOCK_REFS:
        raise ValueError(f"blocks: at most MAX_BLOCK_REFS={MAX_BLOCK_REFS} block references, "
                         f"got {len(rec.blocks)}")
    total = RECORD_HEADER_SIZE + len(rec.payload)
    for i, b in enumerate(rec.blocks):
        name = f"blocks[{i}]"
        if not isinstance(b, BlockRef):
            raise TypeError(f"{name} must be a BlockRef, not {type(b).__name__}")
        _check_int(f"{name}.rel", b.rel, _U32)
        _check_int(f"{name}.fork", b.fork, _U8)
        _check_int(f"{name}.block", b.block, _U32)
        _check_int(f"{name}.hole_offset", b.hole_offset, BLCKSZ)
        _check_int(f"{name}.hole_length", b.hole_length, BLCKSZ)
        total += BLOCK_REF_HEADER_SIZE
        if b.image is None:
            if b.hole_offset or b.hole_length:
                raise ValueError(f"{name}: a hole (hole_offset {b.hole_offset}, hole_length "
                                 f"{b.hole_length}) needs an image")
            continue
        if not isinstance(b.image, bytes | bytearray | memoryview):
            raise TypeError(f"{name}.image must be bytes, not {type(b.image).__name__}")
        if len(b.image) != BLCKSZ:
            raise ValueError(f"{name}.image must be {BLCKSZ} bytes, got {len(b.image)}")
        if b.hole_offset + b.hole_length > BLCKSZ:
            raise ValueError(f"{name}: hole {b.hole_offset}+{b.hole_length} runs past the "
                             f"{BLCKSZ}-byte page")
        if b.hole_offset and not b.hole_length:
            raise ValueError(f"{name}.hole_offset must be 0 when hole_length is 0, "
                             f"got {b.hole_offset}")
        total += BLCKSZ - b.hole_length
    if total > MAX_RECORD_SIZE_BYTES:
        raise ValueError(f"record of {total} bytes exceeds MAX_RECORD_SIZE_BYTES="
                         f"{MAX_RECORD_SIZE_BYTES}")


# --- decode ----------------------------------------------------------------------------------

def record_total_length(header) -> int:
    """The total length a record header claims (its first 4 bytes), unchecked."""
    return _TOTAL_LENGTH.unpack_from(header, 0)[0]


def check_record_header(header) -> int:
    """Check the first RECORD_HEADER_SIZE bytes of a record before the rest is gathered;
    return the total length. WalRecordError naming the field (the CRC is not checked here)."""
    if len(header) < RECORD_HEADER_SIZE:
        raise WalRecordError("total_length", f"{len(header)} bytes, shorter than the "
                                             f"{RECORD_HEADER_SIZE}-byte record header")
    total, _crc, _xid, _prev, _rmgr, _info, nblocks, reserved, plen = \
        _HEADER.unpack_from(header, 0)
    _check_total(total)
    if reserved:
        raise WalRecordError("reserved", f"reserved byte is {reserved}, not 0")
    if nblocks > MAX_BLOCK_REFS:
        raise WalRecordError("block_count", f"{nblocks} block references, more than "
                                            f"MAX_BLOCK_REFS={MAX_BLOCK_REFS}")
    if RECORD_HEADER_SIZE + nblocks * BLOCK_REF_HEADER_SIZE + plen > total:
        raise WalRecordError("payload_length", f"payload of {plen} bytes and {nblocks} block "
                                               f"references do not fit in {total} bytes")
    return total


def _check_total(total: int) -> None:
    if total < RECORD_HEADER_SIZE:
        raise WalRecordError("total_length", f"{total} bytes, shorter than the "
                                             f"{RECORD_HEADER_SIZE}-byte record header")
    if total > MAX_RECORD_SIZE_BYTES:
        raise WalRecordError("total_length", f"{total} bytes, more than "
                                             f"MAX_RECORD_SIZE_BYTES={MAX_RECORD_SIZE_BYTES}")


def decode_record(data) -> WalRecord:
    """The record in ``data`` (exactly one record's bytes). WalRecordError naming the field."""
    n = len(data)
    if n < RECORD_HEADER_SIZE:
        raise WalRecordError("total_length", f"{n} bytes given, shorter than the "
                                             f"{RECORD_HEADER_SIZE}-byte record header")
    total, crc, xid, prev_lsn, rmgr, info, nblocks, reserved, plen = \
        _HEADER.unpack_from(data, 0)
    if total != n:
        raise WalRecordError("total_length", f"header says {total} bytes, {n} given")
    _check_total(total)
    mv = memoryview(data)
    computed = _crc32c.crc32c(mv[_CRC_OFFSET + 4:],
                              _crc32c.crc32c(_ZERO_CRC, _crc32c.crc32c(mv[:_CRC_OFFSET])))
    if computed != crc:
        raise WalRecordError("crc", f"CRC-32C is 0x{crc:08X}, computed 0x{computed:08X}")
    if reserved:
        raise WalRecordError("reserved", f"reserved byte is {reserved}, not 0")
    if nblocks > MAX_BLOCK_REFS:
        raise WalRecordError("block_count", f"{nblocks} block references, more than "
                                            f"MAX_BLOCK_REFS={MAX_BLOCK_REFS}")
    pos = RECORD_HEADER_SIZE + nblocks * BLOCK_REF_HEADER_SIZE
    if pos + plen > total:
        raise WalRecordError("payload_length", f"payload of {plen} bytes and {nblocks} block "
                                               f"references do not fit in {total} bytes")
    if not nblocks:
        if pos + plen != total:
            raise WalRecordError("payload_length", f"{plen} bytes, but {total - pos} follow "
                                                   f"the header")
        return WalRecord(rmgr, info, xid, bytes(mv[pos:]), (), prev_lsn)
    blocks = []
    for i in range(nblocks):
        rel, block, fork, flags, off, hole, bres = _BLOCK.unpack_from(
            mv, RECORD_HEADER_SIZE + i * BLOCK_REF_HEADER_SIZE)
        name = f"blocks[{i}]"
        if flags & ~_BKP_KNOWN:
            raise WalRecordError(f"{name}.flags", f"unknown flag bits 0x{flags:02X}")
        if bres:
            raise WalRecordError(f"{name}.reserved", f"reserved field is {bres}, not 0")
        will_init = bool(flags & BKP_WILL_INIT)
        if not flags & BKP_HAS_IMAGE:
            if off or hole:
                raise WalRecordError(f"{name}.hole_offset", f"hole {off}+{hole} on a block "
                                                            f"reference without an image")
            blocks.append(make_block_ref(rel, fork, block, None, will_init))
            continue
        if off + hole > BLCKSZ:
            raise WalRecordError(f"{name}.hole_length", f"hole {off}+{hole} runs past the "
                                                        f"{BLCKSZ}-byte page")
        if off and not hole:
            raise WalRecordError(f"{name}.hole_offset", f"{off} with an empty hole")
        stored = BLCKSZ - hole
        if pos + stored + plen > total:
            raise WalRecordError(f"{name}.hole_length", f"image of {stored} bytes runs past "
                                                        f"the {total}-byte record")
        if hole:
            image = b"".join((mv[pos:pos + off], _ZERO_PAGE[:hole], mv[pos + off:pos + stored]))
        else:
            image = bytes(mv[pos:pos + stored])
        pos += stored
        blocks.append(make_block_ref(rel, fork, block, image, will_init, off, hole))
    if pos + plen != total:
        raise WalRecordError("payload_length", f"{plen} bytes, but {total - pos} follow the "
                                               f"block images")
    return WalRecord(rmgr, info, xid, bytes(mv[pos:]), tuple(blocks), prev_lsn)


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple:
    return tuple(cls.__dict__[name].__set__ for name in names)


_new_object = object.__new__
_SET_RMGR, _SET_INFO, _SET_XID, _SET_PAYLOAD, _SET_BLOCKS, _SET_PREV = _slot_setters(
    WalRecord, ("rmgr", "info", "xid", "payload", "blocks", "prev_lsn"))


def make_record(rmgr: int, info: int, xid: int, payload: bytes, blocks: tuple,
                prev_lsn: int) -> WalRecord:
    """``WalRecord(rmgr, info, xid, payload, blocks, prev_lsn)`` for decoded fields, set
    through the slots directly: the frozen dataclass's ``__init__`` (which checks nothing)
    costs twice as much, and replay builds one per record."""
    rec = _new_object(WalRecord)
    _SET_RMGR(rec, rmgr)
    _SET_INFO(rec, info)
    _SET_XID(rec, xid)
    _SET_PAYLOAD(rec, payload)
    _SET_BLOCKS(rec, blocks)
    _SET_PREV(rec, prev_lsn)
    return rec


_SET_REL, _SET_FORK, _SET_BLOCK, _SET_IMAGE, _SET_WILL_INIT, _SET_HOLE_OFF, _SET_HOLE_LEN = \
    _slot_setters(BlockRef, ("rel", "fork", "block", "image", "will_init", "hole_offset",
                             "hole_length"))


def make_block_ref(rel: int, fork: int, block: int, image: bytes | None, will_init: bool,
                   hole_offset: int = 0, hole_length: int = 0) -> BlockRef:
    """``BlockRef(...)`` for decoded fields, through the slots (as ``make_record``): the
    frozen dataclass's ``__init__`` sets each field with ``object.__setattr__``."""
    ref = _new_object(BlockRef)
    _SET_REL(ref, rel)
    _SET_FORK(ref, fork)
    _SET_BLOCK(ref, block)
    _SET_IMAGE(ref, image)
    _SET_WILL_INIT(ref, will_init)
    _SET_HOLE_OFF(ref, hole_offset)
    _SET_HOLE_LEN(ref, hole_length)
    return ref


# A record's header and its first block reference's header, read with one unpack: most
# replayed records reference one block and carry no image (decode_checked's fast path).
_HEADER_BLOCK = struct.Struct(_HEADER.format + _BLOCK.format[1:])
_HEADER_BLOCK_SIZE = _HEADER_BLOCK.size    # 48


def decode_checked(buf, at: int, total: int) -> WalRecord:
    """The record of ``total`` bytes at ``buf[at:]`` that ``decode_record`` would accept
    (its CRC and structure already checked, e.g. by the reader's batch scanner): decoded
    without checking anything again. Gives what ``decode_record`` gives for those bytes.
    A record of one block reference without an image (most of a replayed WAL) is read with
    one unpack of both headers and its BlockRef's slots set directly."""
    end = at + total
    if total >= _HEADER_BLOCK_SIZE:
        (_total, _crc, xid, prev_lsn, rmgr, info, nblocks, _res, plen,
         rel, block, fork, flags, _off, _hole, _bres) = _HEADER_BLOCK.unpack_from(buf, at)
        if nblocks == 1 and not flags & BKP_HAS_IMAGE:
            ref = make_block_ref(rel, fork, block, None, bool(flags & BKP_WILL_INIT))
            return make_record(rmgr, info, xid, bytes(buf[end - plen:end]), (ref,), prev_lsn)
    _total, _crc, xid, prev_lsn, rmgr, info, nblocks, _res, plen = _HEADER.unpack_from(buf, at)
    if not nblocks:
        return make_record(rmgr, info, xid, bytes(buf[end - plen:end]), (), prev_lsn)
    blocks = []
    pos = at + RECORD_HEADER_SIZE + nblocks * BLOCK_REF_HEADER_SIZE
    head = at + RECORD_HEADER_SIZE
    for i in range(nblocks):
        rel, block, fork, flags, off, hole, _bres = _BLOCK.unpack_from(
            buf, head + i * BLOCK_REF_HEADER_SIZE)
        will_init = bool(flags & BKP_WILL_INIT)
        if not flags & BKP_HAS_IMAGE:
            blocks.append(make_block_ref(rel, fork, block, None, will_init))
            continue
        stored = BLCKSZ - hole
        if hole:
            image = b"".join((buf[pos:pos + off], _ZERO_PAGE[:hole], buf[pos + off:pos + stored]))
        else:
            image = bytes(buf[pos:pos + stored])
        pos += stored
        blocks.append(make_block_ref(rel, fork, block, image, will_init, off, hole))
    return make_record(rmgr, info, xid, bytes(buf[end - plen:end]), tuple(blocks), prev_lsn)
