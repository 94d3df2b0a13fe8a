"""Faulting in the buffer pool's memory ahead of its first use, off the reading thread.

The pool is one private anonymous mapping (``aio.memory.aligned_buffer``), advised for
transparent huge pages, that the kernel fills on first touch. The first touch of a buffer
is usually a read into it: with O_DIRECT the kernel pins the pages during the submission
(get_user_pages), so the fault — zeroing, and for a huge page often direct compaction —
lands inside the reading thread's system call. Measured here on a cold ordered KV scan
into a fresh pool: an io_uring submission of a 16-block read took 110–460 µs instead of
~10 µs, and a 2 MiB huge-page fault alone took ~3 ms (128 MiB pool touched one byte per
2 MiB: 207 ms; populated without huge pages: 79 ms).

``Prefaulter`` moves that work to a background thread: the buffer manager asks for the
memory of the buffers it is about to hand out (``ahead``), a little ahead of need, and a
short-lived thread populates it in 2 MiB steps with ``madvise(MADV_POPULATE_WRITE)`` in
C, which runs without the GIL — so on a machine with a free core the faults overlap with
the reader's work, and the resident size still grows only as the pool is used.

Invariants:
1. Populating never changes a byte (MADV_POPULATE_WRITE leaves present pages alone), so
   a range may be populated while buffers in it are being read into or read from.
2. At most one thread per pool; it exits when it has reached the requested end, and it
   holds the mapping alive while it runs (the pool never unmaps it meanwhile).
3. Optional: without the C helper, or on a kernel that refuses the advice, nothing is
   prefaulted and the first touch faults as before. A failure is not an error of any
   read; it only stops prefaulting (the reason is kept in ``disabled``).
"""

from __future__ import annotations

import mmap
import threading

try:
    from slonik.storage._pagecheck import ffi as _ffi
    from slonik.storage._pagecheck import lib as _lib
except ImportError:  # built without a C compiler: no prefaulting
    _ffi = _lib = None

PREFAULT_STEP_BYTES = 2 << 20       # one madvise call: a huge page's worth
PREFAULT_AHEAD_BYTES = 8 << 20      # how far past the buffers handed out to populate
# Below this much pool in use nothing is prefaulted: an open, a point read or a small
# store touches a few buffers, and a populating thread would only compete with it (it
# holds the mapping lock for reading while it faults, which the opening thread's own
# mappings - an io_uring's rings - wait for: open went from ~8 ms to ~20-30 ms).
PREFAULT_START_BYTES = 4 << 20


class Prefaulter:
    """Populates ``[0, end)`` of ``mem`` in the background as ``ahead(end)`` asks."""

    def __init__(self, mem: mmap.mmap) -> None:
        self._mem = mem
        self._size = len(mem)
        self._lock = threading.Lock()
        self._done = 0          # bytes from the start known populated
        self._target = 0        # bytes from the start asked for
        self._thread: threading.Thread | None = None
        self.disabled = "" if _lib is not None else "the C helper is not built"
        self._addr = 0
        if _lib is not None:
            self._addr = int(_ffi.cast("uintptr_t", _ffi.from_buffer(mem)))

    @property
    def populated(self) -> int:
        """Bytes from the start of the mapping populated so far."""
        return self._done

    def ahead(self, end: int) -> None:
        """Ask for ``[0, end + PREFAULT_AHEAD_BYTES)`` (capped at the mapping) to be
        populated, once ``end`` reaches ``PREFAULT_START_BYTES``; returns at once. A thread
        started for it is given twice that distance: starting one costs ~0.2 ms (creating
        it, and ``start`` waits for its first wake-up), and the pool asks every 2 MiB it
        grows (26 starts in a 64 MB replay, 7 with the margin)."""
        if end < PREFAULT_START_BYTES:
            return
        target = min(self._size, end + PREFAULT_AHEAD_BYTES)
        with self._lock:
            if self.disabled or target <= self._target:
                return
            if self._thread is not None:
                self._target = target
                return
            self._target = min(self._size, end + 2 * PREFAULT_AHEAD_BYTES)
            t = self._thread = threading.Thread(target=self._run, name="slonik-prefault",
                                                daemon=True)
        t.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running thread, if any (tests, and close)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _run(self) -> None:
        mem = self._mem  # noqa: F841 - held: the mapping stays while the thread runs (inv. 2)
        while True:
            with self._lock:
                start, target = self._done, self._target
                if start >= target or self.disabled:
                    self._thread = None
                    return
            n = min(PREFAULT_STEP_BYTES, target - start)
            rc = _lib.slk_populate(self._addr + start, n)
            with self._lock:
                if rc != 0:
                    self.disabled = f"madvise(MADV_POPULATE_WRITE) failed: errno {-rc}"
                else:
                    self._done = start + n
