"""B+tree WAL records: one generic action list per record, its redo and its description.

A B+tree change touches one to a dozen pages (a leaf insert; a split that cascades up to a
new root and the metapage; a run of overflow pages). Every record (rmgr ``RM_BTREE``) is
a list of page *actions*, each naming one of the record's block references::

    payload = action*            action = "<BBI" block index, code, data length | data

    A_INIT       "<IIIHH" special, "<H" count, count x ("<H" len | item)
                 rebuild the page from nothing (its block reference is will_init)
    A_INSERT     "<H" offnum | item            put the item at offnum, shifting the rest
    A_SET_XMAX   "<HQ" offnum, xmax            a leaf entry's xmax
    A_SPLIT_LEFT "<HhIIIHH" keep, new index, special, high key length | high key | new item
                 the left half of a split: keep the first ``keep`` data items, put the new
                 item at ``new index`` among them (-1: it went right), new high key first
    A_SET_PREV   "<I" prev                      the old right sibling's left-link
    A_DELETE     "<H" count, count x "<H" offnum   vacuum
    A_SET_CHILD  "<HI" offnum, child           a pivot's downlink (unlinking a leaf)
    A_SET_NEXT   "<I" next                      a left sibling's right-link (unlinking)

The forward path applies exactly these actions to the locked pages (``apply_action``)
before logging them, and redo applies them to the pre-change page, so redo reproduces the
pages byte for byte (btree_page invariant 1). A split is one record from the leaf to the
highest page it changes (and the metapage for a new root), so there is never an
incomplete split to finish after a crash. ``info`` names the operation for waldump only.

Invariants:
1. Each block's actions use only the record's data and that block's own pre-change page,
   so blocks are replayed independently, each under the LSN test of the redo context
   (full-page image restored, or skipped when the page already has the change).
2. A will_init block's first action is A_INIT; no other action of the record reads
   another block.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate, repeat

from slonik.engine.access.btree_page import (
    Special,
    bt_build,
    bt_delete_items,
    bt_first_data,
    bt_insert_item,
    bt_items,
    bt_rebuild,
    bt_set_child,
    bt_set_next,
    bt_set_prev,
    bt_set_xmax,
    bt_special,
)
from slonik.storage.hotlib import hot_for
from slonik.wal.rmgr import RM_BTREE, ResourceManager

try:  # the optional C helpers (storage/_pagecheck_build.py, "wal decode" block)
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
except ImportError:  # not built (no C compiler at install time)
    _ffi = _lib = None
_hot = hot_for(_lib)   # its page-sized helpers, the GIL kept (storage/hotlib.py)
# Whether redo applies a block's leading inserts and set-xmaxes in one C call.
C_REDO_ACTIONS = _lib is not None and hasattr(_lib, "slk_bt_redo_actions_from")
# Whether A_INIT and A_SPLIT_LEFT rebuild the page in one C call (slk_bt_apply_build).
C_APPLY_BUILD = _lib is not None and hasattr(_lib, "slk_bt_apply_build")
# Whether A_DELETE rebuilds the page in one C call (slk_bt_apply_delete).
C_APPLY_DELETE = _lib is not None and hasattr(_lib, "slk_bt_apply_delete")
# Whether a run of single-block records is redone in one C call (slk_bt_redo_run).
C_REDO_RUN = _lib is not None and hasattr(_lib, "slk_bt_redo_run")
# Whether a block's actions are applied in one C call (slk_bt_redo_block), as far as C goes.
C_REDO_BLOCK = _lib is not None and hasattr(_lib, "slk_bt_redo_block")

__all__ = [
    "A_INIT", "A_INSERT", "A_SET_XMAX", "A_SPLIT_LEFT", "A_SET_PREV", "A_DELETE",
    "A_SET_CHILD", "A_SET_NEXT", "XLOG_BTREE_UNLINK", "set_child_data", "set_next_data",
    "XLOG_BTREE_NEWTREE", "XLOG_BTREE_INSERT", "XLOG_BTREE_SPLIT", "XLOG_BTREE_SET_XMAX",
    "XLOG_BTREE_VACUUM", "XLOG_BTREE_OVERFLOW", "XLOG_BTREE_FREE", "XLOG_BTREE_OPMASK",
    "Action", "init_data", "insert_data", "set_xmax_data", "split_left_data",
    "set_prev_data", "delete_data", "encode_actions", "decode_actions", "apply_action", "apply_block_actions",
    "apply_payload_actions", "apply_action_py", "C_APPLY_BUILD",
    "btree_redo", "btree_describe", "BTREE_RMGR", "C_REDO_RUN", "redo_leaf_run",
    "redo_leaf_run_at", "redo_leaf_run_py", "C_REDO_BLOCK",
    "block_action_counts",
]

A_INIT = 1
A_INSERT = 2
A_SET_XMAX = 3
A_SPLIT_LEFT = 4
A_SET_PREV = 5
A_DELETE = 6
A_SET_CHILD = 7
A_SET_NEXT = 8
_ACTION_NAMES = {A_INIT: "init", A_INSERT: "insert", A_SET_XMAX: "xmax",
                 A_SPLIT_LEFT: "split-left", A_SET_PREV: "prev", A_DELETE: "delete",
                 A_SET_CHILD: "child", A_SET_NEXT: "next"}

XLOG_BTREE_NEWTREE = 0x00
XLOG_BTREE_INSERT = 0x10
XLOG_BTREE_SPLIT = 0x20
XLOG_BTREE_SET_XMAX = 0x30
XLOG_BTREE_VACUUM = 0x40
XLOG_BTREE_OVERFLOW = 0x50
XLOG_BTREE_FREE = 0x60
XLOG_BTREE_UNLINK = 0x70
XLOG_BTREE_OPMASK = 0x70
_OP_NAMES = {XLOG_BTREE_NEWTREE: "NEWTREE", XLOG_BTREE_INSERT: "INSERT",
             XLOG_BTREE_SPLIT: "SPLIT", XLOG_BTREE_SET_XMAX: "SET_XMAX",
             XLOG_BTREE_VACUUM: "VACUUM", XLOG_BTREE_OVERFLOW: "OVERFLOW",
             XLOG_BTREE_FREE: "FREE", XLOG_BTREE_UNLINK: "UNLINK"}

_ACTION = struct.Struct("<BBI")
_SPECIAL = struct.Struct("<IIIHH")
_U16 = struct.Struct("<H")
_SET_XMAX = struct.Struct("<HQ")
_SPLIT = struct.Struct("<HhIIIHH")
_U32 = struct.Struct("<I")
_SET_CHILD = struct.Struct("<HI")
_PAGE_LSN = struct.Struct("<Q")   # storage.page's page LSN field, at offset 0

Action = tuple[int, bytes]  # (code, data) for one block


def init_data(special: Special, items: Sequence[bytes]) -> bytes:
    parts = [_SPECIAL.pack(special.prev, special.next, special.level, special.flags, 0),
             _U16.pack(len(items))]
    for item in items:
        parts.append(_U16.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def insert_data(offnum: int, item: bytes) -> bytes:
    return _U16.pack(offnum) + item


def set_xmax_data(offnum: int, xmax: int) -> bytes:
    return _SET_XMAX.pack(offnum, xmax)


def split_left_data(keep: int, new_index: int, special: Special, high_key: bytes,
                    new_item: bytes) -> bytes:
    return _SPLIT.pack(keep, new_index, special.prev, special.next, special.level,
                       special.flags, len(high_key)) + high_key + new_item


def set_prev_data(prev: int) -> bytes:
    return _U32.pack(prev)


def set_child_data(offnum: int, child: int) -> bytes:
    return _SET_CHILD.pack(offnum, child)


def set_next_data(next_: int) -> bytes:
    return _U32.pack(next_)


def delete_data(offnums: Sequence[int]) -> bytes:
    return _U16.pack(len(offnums)) + struct.pack(f"<{len(offnums)}H", *offnums)


def encode_actions(actions: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Payload of (block index, code, data) actions, in the order they are applied."""
    return b"".join(_ACTION.pack(index, code, len(data)) + data for index, code, data in actions)


def decode_actions(payload) -> list[tuple[int, int, bytes]]:
    out = []
    pos, end = 0, len(payload)
    while pos < end:
        index, code, length = _ACTION.unpack_from(payload, pos)
        pos += _ACTION.size
        if pos + length > end or code not in _ACTION_NAMES:
            raise ValueError(f"btree action at {pos - _ACTION.size}: code {code}, length "
                             f"{length} does not fit a payload of {end} bytes")
        out.append((index, code, bytes(payload[pos:pos + length])))
        pos += length
    return out


def _items(data: bytes, pos: int, count: int) -> tuple[list[bytes], int]:
    items = []
    for _ in range(count):
        (length,) = _U16.unpack_from(data, pos)
        pos += _U16.size
        items.append(data[pos:pos + length])
        pos += length
    return items, pos


def apply_action(page, code: int, data: bytes) -> None:
    """Apply one action to a page (the forward path and redo both come here). A page
    rebuild (A_INIT, A_SPLIT_LEFT) or a delete (A_DELETE: vacuum's) is one C call when
    built; an action it refuses (it changes nothing then) takes the Python path, which
    raises naming the flaw."""
    if code in (A_INIT, A_SPLIT_LEFT) and C_APPLY_BUILD and \
            _hot.slk_bt_apply_build(_ffi.from_buffer(page), code, data, len(data)) == 0:
        return
    if code == A_DELETE and C_APPLY_DELETE and \
            _hot.slk_bt_apply_delete(_ffi.from_buffer(page), data, len(data)) == 0:
        return
    apply_action_py(page, code, data)


def apply_action_py(page, code: int, data: bytes) -> None:
    """``apply_action`` in Python only: the reference of its C page rebuild."""
    if code == A_INIT:
        prev, next_, level, flags, _zero = _SPECIAL.unpack_from(data)
        (count,) = _U16.unpack_from(data, _SPECIAL.size)
        items, pos = _items(data, _SPECIAL.size + _U16.size, count)
        assert pos == len(data), (pos, len(data))
        bt_build(page, Special(prev, next_, level, flags), items)
    elif code == A_INSERT:
        (offnum,) = _U16.unpack_from(data)
        bt_insert_item(page, offnum, data[_U16.size:])
    elif code == A_SET_XMAX:
        offnum, xmax = _SET_XMAX.unpack_from(data)
        bt_set_xmax(page, offnum, xmax)
    elif code == A_SPLIT_LEFT:
        keep, new_index, prev, next_, level, flags, hk_len = _SPLIT.unpack_from(data)
        high_key = data[_SPLIT.size:_SPLIT.size + hk_len]
        new_item = data[_SPLIT.size + hk_len:]
        old = bt_items(page)
        kept = old[bt_first_data(bt_special(page)) - 1:]
        assert keep <= len(kept), (keep, len(kept))
        kept = kept[:keep]
        if new_index >= 0:
            kept.insert(new_index, new_item)
        bt_rebuild(page, Special(prev, next_, level, flags), [high_key, *kept])
    elif code == A_SET_PREV:
        bt_set_prev(page, _U32.unpack_from(data)[0])
    elif code == A_DELETE:
        (count,) = _U16.unpack_from(data)
        bt_delete_items(page, struct.unpack_from(f"<{count}H", data, _U16.size))
    elif code == A_SET_CHILD:
        offnum, child = _SET_CHILD.unpack_from(data)
        bt_set_child(page, offnum, child)
    elif code == A_SET_NEXT:
        bt_set_next(page, _U32.unpack_from(data)[0])
    else:
        raise AssertionError(f"unknown btree action {code}")


def apply_block_actions(page, payload, index: int, actions: Sequence[tuple[int, bytes]]) -> None:
    """Apply block ``index``'s ``actions`` (decoded from ``payload``) to ``page`` in order:
    each stretch of inserts and set-xmaxes in one C call (slk_bt_redo_actions_from) when
    it is built, every other action (and any it refuses) through ``apply_action``, which
    raises. So a new leaf's A_INIT and the inserts after it take two calls, not one per
    insert."""
    if not (C_REDO_ACTIONS and actions):
        for code, data in actions:
            apply_action(page, code, data)
        return
    _apply_from(page, payload, index, actions, 0)


def _apply_from(page, payload, index: int, actions: Sequence[tuple[int, bytes]],
                done: int) -> None:
    """Apply ``actions[done:]`` (block ``index``'s, decoded from ``payload``): each stretch
    C accepts in one call, each action it refuses through ``apply_action`` (which raises
    for a bad one)."""
    n = len(actions)
    plen = len(payload)
    while done < n:
        # The page's C export lives for the call only: kept in this frame, the traceback
        # of an error apply_action raises would hold it, and CPython 3.11's collector
        # crashed clearing the view (README; test_btree_redo_c).
        done += _hot.slk_bt_redo_actions_from(_ffi.from_buffer(page),
                                              _ffi.from_buffer(payload), plen, index, done)
        if done < n:
            code, data = actions[done]
            apply_action(page, code, data)
            done += 1


def apply_payload_actions(page, payload, index: int, nactions: int) -> None:
    """Apply block ``index``'s ``nactions`` actions of ``payload`` to ``page``, in order:
    as far as one C call takes them (slk_bt_redo_block: insert and set-xmax stretches,
    page rebuilds, deletes, set-prev/next), the one it stops at through ``apply_action``
    (which raises for a refused one) and the rest as ``apply_block_actions`` would."""
    done = 0
    if C_REDO_BLOCK and nactions:
        done = _hot.slk_bt_redo_block(_ffi.from_buffer(page), _ffi.from_buffer(payload),
                                      len(payload), index)
    if done < nactions:
        actions = [(code, data) for i, code, data in decode_actions(payload) if i == index]
        if not C_REDO_ACTIONS:
            for code, data in actions[done:]:
                apply_action(page, code, data)
            return
        code, data = actions[done]
        apply_action(page, code, data)      # refused by C: raises for a bad action
        if done + 1 < nactions:
            _apply_from(page, payload, index, actions, done + 1)


def block_action_counts(payload, nblocks: int) -> list[tuple[int, int]] | None:
    """(action count, first action's code or 0) of blocks 0..nblocks-1 of ``payload`` in C
    (slk_bt_block_actions); None without the C module. Raises as ``decode_actions`` does
    for a payload whose layout is bad."""
    if not C_REDO_BLOCK:
        return None
    cpayload, plen, first = _ffi.from_buffer(payload), len(payload), _ffi.new("int *")
    out = []
    for index in range(nblocks):
        n = _hot.slk_bt_block_actions(cpayload, plen, index, first)
        if n < 0:
            decode_actions(payload)         # raises naming the flaw
            return None                     # (accepted after all: the decoding path)
        out.append((n, first[0]))
    return out


def btree_redo(ctx, rr) -> None:
    """Replay one RM_BTREE record: each block that needs redo gets its actions in order
    (``apply_payload_actions``: one C call per block where C takes them all)."""
    rec = rr.record
    counts = block_action_counts(rec.payload, len(rec.blocks))
    if counts is None:       # without the C module: counted by decoding
        by_block: dict[int, list[int]] = {}
        for index, code, _data in decode_actions(rec.payload):
            by_block.setdefault(index, []).append(code)
        counts = [(len(codes), codes[0] if codes else 0)
                  for codes in map(by_block.get, range(len(rec.blocks)), repeat([]))]
    for index, ref in enumerate(rec.blocks):
        n, first = counts[index]
        assert not ref.will_init or (n and first == A_INIT), \
            f"will_init block {ref.block} does not start with A_INIT"
        _action, buf = ctx.read_buffer_for_redo(rr, index)
        if buf is None:  # restored from its image, or already has the change
            continue
        apply_payload_actions(ctx.bufmgr.page(buf), rec.payload, index, n)
        ctx.finish_redo_buffer(rr, buf)


def redo_leaf_run_py(pages: Sequence, payloads: Sequence, end_lsns: Sequence[int]) -> list[int]:
    """The reference of ``redo_leaf_run``: redo of single-block records in order, record i
    (``payloads[i]``, ending at ``end_lsns[i]``) on ``pages[i]`` (pages may repeat: a run of
    records for one page). A page whose LSN is at or past the record's end is left alone
    (0), otherwise block 0's actions are applied and its LSN set to the record's end (1).
    Raises as ``btree_redo`` does for a malformed payload or a refused action."""
    changed = []
    for page, payload, end in zip(pages, payloads, end_lsns, strict=True):
        actions = [(code, data) for index, code, data in decode_actions(payload) if index == 0]
        if _PAGE_LSN.unpack_from(page, 0)[0] >= end:
            changed.append(0)
            continue
        for code, data in actions:
            apply_action_py(page, code, data)
        _PAGE_LSN.pack_into(page, 0, end)
        changed.append(1)
    return changed


def redo_leaf_run(pool, buf_pages: Sequence, bufs: Sequence[int], payloads: Sequence,
                  end_lsns: Sequence[int]) -> bytes | list[int]:
    """``redo_leaf_run_py`` for records whose pages are pool buffers ``bufs`` (``pool``: the
    buffer manager's C view of its memory, ``buf_pages``: its page views by buffer id), in
    one C call (slk_bt_redo_run) per run of records it accepts: the per-record LSN test,
    actions and LSN stamp happen in C; an action it refuses (a split, a rebuild, a bad
    one) goes through ``apply_action``, which raises for a bad one. Per record 1 when the
    page changed, else 0."""
    n = len(bufs)
    if not C_REDO_RUN or pool is None:
        return redo_leaf_run_py(list(map(buf_pages.__getitem__, bufs)), payloads, end_lsns)
    joined = b"".join(payloads)
    offs = _ffi.new("uint32_t[]", [0, *accumulate(map(len, payloads))])
    return redo_leaf_run_at(pool, buf_pages, _ffi.new("int32_t[]", bufs),
                            _ffi.new("uint64_t[]", end_lsns),
                            _ffi.from_buffer("uint8_t[]", joined), offs, 0, n)


def redo_leaf_run_at(pool, buf_pages: Sequence, cbufs, cends, arena, offs, first: int,
                     n: int) -> bytes:
    """``redo_leaf_run`` of records ``first``..``n - 1`` given as C arrays (recovery's batch
    redo, ``engine/wal_decode.wal_fields``): record i on buffer ``cbufs[i]``, ending at
    ``cends[i]``, its payload ``arena[offs[i]:offs[i + 1]]`` (``arena``: a ``uint8_t[]``).
    Per record of the range 1 when its page changed, else 0."""
    changed = _ffi.new("uint8_t[]", n)
    done = _ffi.new("int *")
    i = first
    while True:
        i = _lib.slk_bt_redo_run(pool, cbufs, cends, arena, offs, i, n, changed, done)
        if i >= n:
            return _ffi.buffer(changed)[first:n]
        # A refused action (or a payload decode_actions raises for): the rest of this
        # record's actions go through apply_action, which raises naming a bad one.
        page = buf_pages[cbufs[i]]
        payload = _ffi.buffer(arena)[offs[i]:offs[i + 1]]
        end_lsn = cends[i]
        actions = [(code, data) for index, code, data in decode_actions(payload)
                   if index == 0]
        if done[0] < 0:
            if _PAGE_LSN.unpack_from(page, 0)[0] >= end_lsn:
                changed[i] = 0     # (decode_actions accepted what C did not: as the reference)
                i += 1
                continue
            for code, data in actions:
                apply_action(page, code, data)
        else:
            code, data = actions[done[0]]
            apply_action(page, code, data)      # raises for a bad action
            if done[0] + 1 < len(actions):
                _apply_from(page, payload, 0, actions, done[0] + 1)
        _PAGE_LSN.pack_into(page, 0, end_lsn)
        changed[i] = 1
        i += 1


def btree_describe(rec) -> str:
    """One line for waldump, e.g. ``SPLIT rel 16384 blk 5: split-left; blk 9: init (init)``."""
    op = rec.info & XLOG_BTREE_OPMASK
    name = _OP_NAMES.get(op, f"UNKNOWN({rec.info:#04x})")
    rel = rec.blocks[0].rel if rec.blocks else "?"
    try:
        actions = decode_actions(rec.payload)
    except (ValueError, struct.error):
        return f"{name} rel {rel} (malformed payload of {len(rec.payload)} bytes)"
    per_block: dict[int, list[str]] = {}
    for index, code, _data in actions:
        per_block.setdefault(index, []).append(_ACTION_NAMES[code])
    parts = []
    for index, ref in enumerate(rec.blocks[:8]):
        init = " (init)" if ref.will_init else ""
        parts.append(f"blk {ref.block}: {','.join(per_block.get(index, []))}{init}")
    more = f"; +{len(rec.blocks) - 8} blocks" if len(rec.blocks) > 8 else ""
    return f"{name} rel {rel} " + "; ".join(parts) + more


# Bound by engine/rmgrlist.py (the engine's one table of resource managers).
BTREE_RMGR = ResourceManager(RM_BTREE, "btree", btree_redo, btree_describe)
