"""cffi build script for the io_uring binding (API mode, compiled against liburing).

The C helpers below take or return a whole batch per call: Python crosses into C once per
batch of submissions and once per batch of completions, never once per I/O (see
``shared/reference/python-io.md``). Each ring owns an iovec area indexed by handle slot, so
the iovecs stay alive and unmoved from preparation until the kernel completes the request.

Run by setuptools through ``cffi_modules`` (see setup.py); ``pip install -e .`` builds
``aio/_uring*.so`` in place. Rebuild after changing this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct slk_ring;

#define SLK_OP_READV ...
#define SLK_OP_WRITEV ...
#define SLK_OP_FSYNC ...
#define SLK_OP_FDATASYNC ...

int slk_ring_create(unsigned entries, unsigned max_iov, struct slk_ring **out);
void slk_ring_destroy(struct slk_ring *r);
int slk_ring_fd(struct slk_ring *r);

int slk_submit(struct slk_ring *r, int n, const int *op, const int *fd,
               const unsigned *slot, const int *iovcnt,
               const uint64_t *addr, const uint64_t *len,
               const int64_t *offset, const uint64_t *user_data,
               const uint8_t *link, unsigned wait_nr);
int slk_submit_one(struct slk_ring *r, int op, int fd, unsigned slot, int iovcnt,
                   const uint64_t *addr, const uint64_t *len,
                   int64_t offset, uint64_t user_data, unsigned wait_nr);
int slk_reap(struct slk_ring *r, int max, int min_wait,
             uint64_t *user_data_out, int32_t *res_out);
"""

SOURCE = r"""
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <liburing.h>

#define SLK_OP_READV 0
#define SLK_OP_WRITEV 1
#define SLK_OP_FSYNC 2
#define SLK_OP_FDATASYNC 3

struct slk_ring {
    struct io_uring ring;
    unsigned entries;
    unsigned max_iov;
    struct iovec *iov;      /* entries * max_iov, indexed by handle slot */
    int in_chain;           /* the last prepared SQE carries IOSQE_IO_LINK */
};

int slk_ring_create(unsigned entries, unsigned max_iov, struct slk_ring **out)
{
    struct slk_ring *r;
    int rc;

    if (entries == 0 || max_iov == 0)
        return -EINVAL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    r->iov = calloc((size_t)entries * max_iov, sizeof(struct iovec));
    if (r->iov == NULL) {
        free(r);
        return -ENOMEM;
    }
    /* COOP_TASKRUN: completions are processed when the issuer next enters the kernel
     * (it is about to: submit_and_wait), not by interrupting it; older kernels refuse
     * the flag, and the ring is then set up without it. */
    rc = io_uring_queue_init(entries, &r->ring, IORING_SETUP_COOP_TASKRUN);
    if (rc == -EINVAL)
        rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) {
        free(r->iov);
        free(r);
        return rc;
    }
    r->entries = entries;
    r->max_iov = max_iov;
    *out = r;
    return 0;
}

void slk_ring_destroy(struct slk_ring *r)
{
    io_uring_queue_exit(&r->ring);
    free(r->iov);
    free(r);
}

int slk_ring_fd(struct slk_ring *r)
{
    return r->ring.ring_fd;
}

/* Prepare one SQE; the iovecs are copied into the slot's own area. */
static int slk_prep(struct slk_ring *r, int op, int fd, unsigned slot, int iovcnt,
                    const uint64_t *addr, const uint64_t *len,
                    int64_t offset, uint64_t user_data, int link)
{
    struct io_uring_sqe *sqe;
    struct iovec *iov;
    int i;

    if (slot >= r->entries || iovcnt < 0 || (unsigned)iovcnt > r->max_iov)
        return -EINVAL;
    sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL) {
        int rc;
        /* Submitting now would cut an open link chain in two: the rest would run
         * unordered (a sync before its write). Refuse instead. */
        if (r->in_chain)
            return -EBUSY;
        rc = io_uring_submit(&r->ring);
        if (rc < 0)
            return rc;
        sqe = io_uring_get_sqe(&r->ring);
        if (sqe == NULL)
            return -EBUSY;
    }
    iov = r->iov + (size_t)slot * r->max_iov;
    for (i = 0; i < iovcnt; i++) {
        iov[i].iov_base = (void *)(uintptr_t)addr[i];
        iov[i].iov_len = (size_t)len[i];
    }
    switch (op) {
    case SLK_OP_READV:
        io_uring_prep_readv(sqe, fd, iov, (unsigned)iovcnt, (uint64_t)offset);
        break;
    case SLK_OP_WRITEV:
        io_uring_prep_writev(sqe, fd, iov, (unsigned)iovcnt, (uint64_t)offset);
        break;
    case SLK_OP_FSYNC:
        io_uring_prep_fsync(sqe, fd, 0);
        break;
    case SLK_OP_FDATASYNC:
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        break;
    default:
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, user_data);
        return -EINVAL;
    }
    io_uring_sqe_set_data64(sqe, user_data);
    if (link)
        sqe->flags |= IOSQE_IO_LINK;
    r->in_chain = link;
    return 0;
}

/* Submit everything prepared; with wait_nr > 0 also wait for that many completions in
 * the same io_uring_enter (io_uring_submit_and_wait), so the caller reaps them from the
 * completion ring without a second system call. */
static int slk_enter(struct slk_ring *r, unsigned wait_nr)
{
    int rc;

    r->in_chain = 0;
    do {
        rc = wait_nr ? io_uring_submit_and_wait(&r->ring, wait_nr)
                     : io_uring_submit(&r->ring);
    } while (rc == -EINTR || rc == -EAGAIN);
    return rc;
}

/* Prepare n requests from parallel arrays and submit them with one io_uring_enter.
 * The iovecs of request i are addr/len[sum(iovcnt[0..i-1]) ...]. link[i] != 0 links
 * request i to request i + 1 (IOSQE_IO_LINK: i + 1 starts only after i completed in
 * full; a failure or a short transfer of i completes i + 1 with -ECANCELED); the last
 * request's link is ignored, so a chain never outlives the submission. wait_nr > 0 also
 * waits for that many completions in the same system call. Returns the number of
 * requests the kernel accepted, or -errno. */
int slk_submit(struct slk_ring *r, int n, const int *op, const int *fd,
               const unsigned *slot, const int *iovcnt,
               const uint64_t *addr, const uint64_t *len,
               const int64_t *offset, const uint64_t *user_data,
               const uint8_t *link, unsigned wait_nr)
{
    int i, rc;
    size_t at = 0;

    for (i = 0; i < n; i++) {
        rc = slk_prep(r, op[i], fd[i], slot[i], iovcnt[i], addr + at, len + at,
                      offset[i], user_data[i], link[i] && i + 1 < n);
        if (rc < 0)
            return rc;
        at += (size_t)iovcnt[i];
    }
    while (1) {
        rc = slk_enter(r, wait_nr);
        if (rc < 0)
            return rc;
        wait_nr = 0;
        if (io_uring_sq_ready(&r->ring) == 0)
            return n;
        if (rc == 0)
            return -EBUSY;
    }
}

int slk_submit_one(struct slk_ring *r, int op, int fd, unsigned slot, int iovcnt,
                   const uint64_t *addr, const uint64_t *len,
                   int64_t offset, uint64_t user_data, unsigned wait_nr)
{
    int rc = slk_prep(r, op, fd, slot, iovcnt, addr, len, offset, user_data, 0);
    if (rc < 0)
        return rc;
    rc = slk_enter(r, wait_nr);
    return rc < 0 ? rc : 1;
}

/* Copy up to max completions out, waiting in the kernel for at least min_wait of them
 * (0: do not wait). Returns how many were copied, or -errno. */
int slk_reap(struct slk_ring *r, int max, int min_wait,
             uint64_t *user_data_out, int32_t *res_out)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    int got = 0, rc;

    while (got < max) {
        unsigned seen = 0;
        io_uring_for_each_cqe(&r->ring, head, cqe) {
            if (got >= max)
                break;
            user_data_out[got] = io_uring_cqe_get_data64(cqe);
            res_out[got] = cqe->res;
            got++;
            seen++;
        }
        io_uring_cq_advance(&r->ring, seen);
        if (got >= min_wait)
            break;
        rc = io_uring_wait_cqe_nr(&r->ring, &cqe, (unsigned)(min_wait - got));
        if (rc == -EINTR || rc == -EAGAIN || rc == -ETIME)
            continue;
        if (rc < 0)
            return got > 0 ? got : rc;
    }
    return got;
}
"""


def _static_liburing() -> str | None:
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                      "/usr/lib", "/usr/local/lib"):
        path = os.path.join(directory, "liburing.a")
        if os.path.exists(path):
            return path
    return None


def liburing_missing_reason() -> str | None:
    """None when a test program against liburing compiles and links, else why not."""
    try:
        import cffi  # noqa: F401
    except ImportError:
        return "cffi is not installed in the build environment"
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc/gcc) found"
    program = "#include <liburing.h>\nint main(void){struct io_uring r;" \
              "return io_uring_queue_init(2,&r,0) < 0;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(program)
        proc = subprocess.run([compiler, src, "-o", os.path.join(tmp, "probe"), "-luring"],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["unknown error"])[0]
        return f"liburing headers/library not found (install liburing-dev): {first}"
    return None


def _builder():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    static = _static_liburing()
    link = {"extra_objects": [static]} if static else {"libraries": ["uring"]}
    ffi.set_source("slonik.aio._uring", SOURCE, extra_compile_args=["-O2"], **link)
    return ffi


try:
    ffibuilder = _builder()
except ImportError:  # cffi absent: setup.py reports it through liburing_missing_reason()
    ffibuilder = None

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
