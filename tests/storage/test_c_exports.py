"""The C page helpers leave no buffer export behind on a buffer-pool page view when they
fall back to the Python reference on a malformed page and it raises. A lingering export
held by the raised error's traceback is what let CPython 3.11's cyclic collector clear an
exported memoryview and then crash freeing it (test_check's damaged-leaf test segfaulted)."""

import pytest
from slonik.engine.access.btree_page import C_SEARCH, BTreePageError, extract_cut, probe_leaf
from slonik.storage.page import BLCKSZ

pytestmark = pytest.mark.skipif(not C_SEARCH, reason="the C page helpers are not built")


def _malformed_page() -> memoryview:
    page = memoryview(bytearray(BLCKSZ))
    page[:] = b"\xa5" * BLCKSZ  # no valid header or special space anywhere
    return page


def test_probe_fallback_releases_the_page_view_before_raising():
    """probe_leaf on a malformed page raises BTreePageError; while the error (and so its
    traceback's frames) is still alive, the page view can be released: no export left."""
    page = _malformed_page()
    with pytest.raises(BTreePageError) as info:
        probe_leaf(page, b"key")
    assert info.value is not None
    page.release()  # BufferError if the helper's frame still exported the view


def test_extract_fallback_releases_the_page_view_before_raising():
    """The same for a scan's extract_cut."""
    page = _malformed_page()
    with pytest.raises(BTreePageError) as info:
        extract_cut(page, None, None, 10, 0, (), True)
    assert info.value is not None
    page.release()

