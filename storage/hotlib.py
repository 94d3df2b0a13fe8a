"""The page-sized C helpers with the GIL kept across the call.

cffi releases the GIL around every C call. For a helper of well under a microsecond (a
B+tree page search, a leaf put, a WAL record written into the buffers) that release is
the expensive part once threads contend: the GIL goes to another thread and the caller
queues to take it back, ~10 us of futex calls and context switches, and a thread that
loses the GIL while holding the commit lock stalls every committer behind it. The
``HOT_NAMES`` helpers of storage/_pagecheck_build.py are therefore also built as
``slonik.storage._pagehot``, the same C source with the GIL kept. ``hot_for(lib)`` is
that module where it is built (else ``lib`` itself; None for None), for the modules that
call those helpers.
"""

from __future__ import annotations

try:
    from slonik.storage._pagehot import lib as _hot
    _hot.slk_pagecheck_init()   # its own copy of the CRC's hardware check
except ImportError:   # not built (no C compiler, or an older build): the releasing module
    _hot = None

__all__ = ["hot_for"]


def hot_for(lib):
    """The GIL-keeping build of ``lib``'s page-sized helpers, or ``lib`` without it."""
    if lib is None or _hot is None:
        return lib
    return _hot
