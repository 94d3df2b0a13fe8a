"""cffi build script for ``slonik.aio._osio``: a batch of I/Os run in one C call (API mode,
no library beyond libc), for the worker method.

An I/O worker that finds several I/Os queued takes them together and runs them with this
module's ``slk_run_many``: one release of the GIL around all their system calls and one
take-back to complete them, where ``os.preadv`` per I/O would take the GIL back after each
(under a busy issuer, each take-back is a queue on the GIL: a cold worker-method scan made
~4 voluntary context switches per read). The calls are the ones ``method.execute`` makes
through ``osfile``, one after another, each I/O's result (bytes or -errno) in its slot;
``osfile.run_many`` is the only caller, and only while the real OS layer is installed.

Built as an optional extension by setup.py when a C compiler works (the condition of
``storage/_pagecheck_build.py``); without it the worker runs each I/O through ``osfile``.
"""

from __future__ import annotations

CDEF = """
#define SLK_RUN_READV ...
#define SLK_RUN_WRITEV ...
#define SLK_RUN_FSYNC ...
#define SLK_RUN_FDATASYNC ...
#define SLK_RUN_MAX_IOV ...

int slk_run_many(int n, const int *op, const int *fd, const int *iovcnt,
                 const uint64_t *addr, const uint64_t *len, const int64_t *offset,
                 int64_t *res);
"""

SOURCE = r"""
#include <errno.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

/* IoOp's values (aio/handle.py; checked where the module is loaded) */
#define SLK_RUN_READV 0
#define SLK_RUN_WRITEV 1
#define SLK_RUN_FSYNC 2
#define SLK_RUN_FDATASYNC 3
#define SLK_RUN_MAX_IOV 64

/* Run n I/Os in order: I/O i is op[i] on fd[i] at offset[i] over its iovcnt[i] buffers,
 * whose addresses and lengths follow I/O i-1's in addr/len. res[i]: bytes transferred
 * (a short count is the caller's to judge), 0 for a sync, or -errno; each runs once
 * (EINTR retried, as os.preadv does), whatever the others gave. Returns n, or -1 with
 * nothing run when an I/O has more than SLK_RUN_MAX_IOV buffers or an unknown op. */
int slk_run_many(int n, const int *op, const int *fd, const int *iovcnt,
                 const uint64_t *addr, const uint64_t *len, const int64_t *offset,
                 int64_t *res)
{
    for (int i = 0; i < n; i++)
        if (iovcnt[i] < 0 || iovcnt[i] > SLK_RUN_MAX_IOV || op[i] < SLK_RUN_READV
                || op[i] > SLK_RUN_FDATASYNC)
            return -1;
    struct iovec iov[SLK_RUN_MAX_IOV];
    int k = 0;
    for (int i = 0; i < n; i++) {
        int cnt = iovcnt[i];
        for (int j = 0; j < cnt; j++) {
            iov[j].iov_base = (void *)(uintptr_t)addr[k + j];
            iov[j].iov_len = (size_t)len[k + j];
        }
        k += cnt;
        ssize_t got;
        do {
            switch (op[i]) {
            case SLK_RUN_READV:
                got = preadv(fd[i], iov, cnt, (off_t)offset[i]);
                break;
            case SLK_RUN_WRITEV:
                got = pwritev(fd[i], iov, cnt, (off_t)offset[i]);
                break;
            case SLK_RUN_FSYNC:
                got = fsync(fd[i]);
                break;
            default:
                got = fdatasync(fd[i]);
                break;
            }
        } while (got < 0 && errno == EINTR);
        res[i] = got < 0 ? -(int64_t)errno : (int64_t)got;
    }
    return n;
}
"""


def _builder():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    # optional=True: a failed compile leaves the per-I/O path, not a failed install.
    ffi.set_source("slonik.aio._osio", SOURCE, extra_compile_args=["-O2"], optional=True)
    return ffi


try:
    ffibuilder = _builder()
except ImportError:  # cffi absent: the worker runs each I/O through osfile
    ffibuilder = None

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
