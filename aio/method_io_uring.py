"""The io_uring method, through the compiled cffi binding ``aio._uring``.

This module is the only user of the binding. ``io_uring_available()`` really opens and
closes a ring, because only that tells whether the kernel, sandbox (seccomp,
``kernel.io_uring_disabled``) and memlock limits allow io_uring here.
"""

from __future__ import annotations

import functools

try:
    from aio._uring import ffi as _ffi
    from aio._uring import lib as _lib

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # built without liburing, or not built at all
    _ffi = _lib = None
    _IMPORT_ERROR = (f"the io_uring binding aio._uring is not built ({exc}); install "
                     "liburing-dev and reinstall (pip install -e .)")


@functools.cache
def io_uring_available() -> tuple[bool, str]:
    """(True, description) when a ring can be set up here, else (False, the reason)."""
    if _lib is None:
        return False, _IMPORT_ERROR or "the io_uring binding is missing"
    out = _ffi.new("struct slk_ring **")
    rc = _lib.slk_ring_create(8, 1, out)
    if rc < 0:
        import os

        return False, f"io_uring_queue_init failed: {os.strerror(-rc)} (errno {-rc})"
    _lib.slk_ring_destroy(out[0])
    return True, "io_uring ring set up and torn down successfully"
