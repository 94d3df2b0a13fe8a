"""Page-aligned I/O memory.

O_DIRECT needs aligned addresses, lengths and offsets; ``bytearray`` is only 16-byte aligned.
A private anonymous mapping is page-aligned, and advised for transparent huge pages it
measured 2.4x the sequential O_DIRECT throughput of a shared mapping here (fewer DMA segments
per request; ``shared/reference/python-io.md``).
"""

from __future__ import annotations

import mmap

PAGE_ALIGNMENT = 4096  # safe O_DIRECT alignment everywhere (512 suffices on this machine)


def aligned_buffer(nbytes: int, *, huge_pages: bool = True) -> mmap.mmap:
    """A zero-filled, page-aligned, private anonymous mapping of ``nbytes`` bytes."""
    if not isinstance(nbytes, int) or nbytes <= 0:
        raise ValueError(f"nbytes must be a positive int, got {nbytes!r}")
    size = -(-nbytes // PAGE_ALIGNMENT) * PAGE_ALIGNMENT
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # THP disabled: still correct, only slower
    return buf
