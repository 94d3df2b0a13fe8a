"""``slonik check``'s index verification: every table index read from the files (no
``Database`` opened, nothing written) and compared with its heap, like amcheck's
``bt_index_parent_check(heapallindexed)``.

For each table with indexes (the visible catalog row lists them), the heap's tuples are
read page by page (``offline.fork_pages``: checksum and structure verified), and each
index's leaf pages (B+tree page codec, ``btree_page``) give its entries; then
``engine.index.check_entries``: every entry points at a heap tuple whose key is the
entry's, and every tuple a reader of the shut-down database sees (``offline.Visibility``)
has an entry in every index. Only a cleanly shut down database is verified this way: a
crashed one's pages may be stale until recovery.
"""

from __future__ import annotations

from collections.abc import Iterator

from slonik.engine.access.btree_page import (
    BTP_DELETED,
    BTP_FREE,
    BTP_LEAF,
    BTP_META,
    BTP_OVERFLOW,
    bt_first_data,
    bt_item,
    bt_item_count,
    bt_special,
    unpack_entry,
)
from slonik.engine.access.tuple import RowCodec, Tid, unpack_tuple
from slonik.engine.catalog import RelationEntry
from slonik.engine.index import IndexCheckResult, TableIndex, check_entries, split_entry_key
from slonik.engine.tools.offline import RelationFileReader, Visibility, fork_pages
from slonik.storage.page import LpFlag, page_get_item, page_is_new, page_item_count, page_item_flags

__all__ = ["check_table_indexes", "index_entries"]

_NOT_ENTRIES = BTP_DELETED | BTP_FREE | BTP_META | BTP_OVERFLOW


def index_entries(reader: RelationFileReader, rel: int) -> Iterator[tuple[bytes, Tid]]:
    """(encoded key, heap TID) of every entry on the live leaf pages of index ``rel``."""
    for _block, page in fork_pages(reader, rel):
        if page_is_new(page):
            continue
        special = bt_special(page)
        if not special.flags & BTP_LEAF or special.flags & _NOT_ENTRIES:
            continue
        for off in range(bt_first_data(special), bt_item_count(page) + 1):
            yield split_entry_key(unpack_entry(bt_item(page, off)).key)


def check_table_indexes(reader: RelationFileReader, entry: RelationEntry,
                        visibility: Visibility) -> list[IndexCheckResult]:
    """Verify every index of table ``entry`` against its heap (see the module docstring).
    ``DataCorruptionError`` for a page that cannot be read."""
    decode = RowCodec(entry.columns).decode
    rows: dict[Tid, tuple] = {}
    live: dict[Tid, bool] = {}
    for block, page in fork_pages(reader, entry.relfilenumber):
        for off in range(1, page_item_count(page) + 1):
            if page_item_flags(page, off) != LpFlag.NORMAL:
                continue
            xmin, xmax, _flags, data = unpack_tuple(page_get_item(page, off))
            tid = Tid(block, off)
            rows[tid] = decode(data)
            live[tid] = visibility.visible(xmin, xmax)
    results = []
    for i in entry.indexes:
        index = TableIndex(i, entry.columns, None)
        results.append(check_entries(index, index_entries(reader, i.relfilenumber), rows,
                                     live.__getitem__))
    return results
