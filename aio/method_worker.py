"""The worker method: ``io_workers`` threads share one bounded submission queue.

A submitter wakes one idle worker; a worker that finds more queued work wakes up to two
more (fan-out, no thundering herd). Workers reopen files by path through their own small
fd cache (so they never depend on the issuer's descriptors), run preadv/pwritev through the
OS boundary (the GIL is released there) and run the shared completion callbacks themselves.
A full queue, or an I/O with no target to reopen, runs synchronously in the issuer.

A worker takes up to ``WORKER_BATCH`` queued I/Os at once and runs them one after another
in one call through the OS boundary (``execute_many``: the GIL released once for all of
them), then completes them in order. Each I/O that finishes in a worker costs the worker a
take-back of the GIL, which a busy issuer holds: a read stream's four reads of a run, taken
together, queue for it once instead of four times (a cold 512 MiB scan: 15.2-16.1k ->
10.1-10.3k voluntary context switches, 0.67-0.70 -> 0.58-0.62 s). Where that call cannot
take them (a test's OS layer, which must see each call; no C module) each runs as before.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict, deque

import slonik.aio.osfile as osfile
from slonik.aio.handle import Handle
from slonik.aio.ids import TARGETS
from slonik.aio.method import IoMethod, IssuerContext, execute, execute_many

IO_WORKERS_MAX = 32           # as PostgreSQL's MAX_IO_WORKERS
WORKER_QUEUE_SIZE = 64        # as PostgreSQL's io worker queue; overflow runs in the issuer
WORKER_MAX_FILES = 64         # descriptors each worker keeps open (LRU)
WAKE_FAN_OUT = 2              # workers a busy worker wakes when more is queued
WORKER_BATCH = 4              # queued I/Os a worker takes at once (a read stream's run)


class WorkerMethod(IoMethod):
    name = "worker"

    def __init__(self, io_workers: int = 3) -> None:
        if not isinstance(io_workers, int) or not 1 <= io_workers <= IO_WORKERS_MAX:
            raise ValueError(f"io_workers must be an int in 1..{IO_WORKERS_MAX}, got {io_workers!r}")
        self.io_workers = io_workers
        self._queue: deque[Handle] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._file_epoch = 0
        self.overflows = 0  # I/Os run in the issuer because the queue was full
        self.batched_ios = 0  # I/Os run together with others in one execute_many call

    def attach(self, aio, complete) -> None:
        super().attach(aio, complete)
        for i in range(self.io_workers):
            t = threading.Thread(target=self._run, name=f"slonik-io-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def needs_synchronous_execution(self, handle: Handle) -> bool:
        return handle.target_id == 0  # nothing to reopen by path: cannot be offloaded

    def submit(self, ctx: IssuerContext, handles: list[Handle]) -> None:
        overflow = []
        with self._cv:
            room = WORKER_QUEUE_SIZE - len(self._queue)
            self._queue.extend(handles[:room])
            overflow = handles[room:] if room < len(handles) else []
            self._cv.notify(1)
        for h in overflow:
            self.overflows += 1
            self.execute_inline(h)

    def forget_files(self) -> None:
        """Files were unlinked or replaced: workers drop their cached descriptors."""
        self._file_epoch += 1

    def _run(self) -> None:
        fds: OrderedDict[tuple[str, int], int] = OrderedDict()
        epoch = self._file_epoch
        queue, cv = self._queue, self._cv
        try:
            while True:
                with cv:
                    while not queue and not self._stopping:
                        cv.wait()
                    if not queue:
                        return
                    batch = [queue.popleft() for _ in range(min(len(queue), WORKER_BATCH))]
                    if queue:
                        cv.notify(WAKE_FAN_OUT)
                if epoch != self._file_epoch:
                    epoch = self._file_epoch
                    while fds:
                        osfile.close(fds.popitem()[1])
                self._run_batch(fds, batch)
        finally:
            for fd in fds.values():
                osfile.close(fd)

    def _run_batch(self, fds: OrderedDict[tuple[str, int], int], batch: list[Handle]) -> None:
        """Run and complete the I/Os a worker took: those whose files it could reopen in
        one ``execute_many`` call where it can take them, else each with ``execute``.
        An exception that is no OS error (a simulated crash) still completes every I/O
        of the batch not completed yet, as a failure, so no waiter sleeps forever; then
        this worker dies with it."""
        done = 0
        try:
            raws: list[int | None] = [None] * len(batch)
            fd_of: dict[int, int] = {}   # batch index -> its file's descriptor
            for i, h in enumerate(batch):
                try:
                    fd_of[i] = self._reopen(fds, h)
                except OSError as exc:
                    raws[i] = -(exc.errno or errno.EIO)
            if len(fd_of) > 1:
                many = execute_many([batch[i] for i in fd_of], list(fd_of.values()))
                if many is not None:
                    self.batched_ios += len(many)
                    for i, raw in zip(fd_of, many, strict=True):
                        raws[i] = raw
            for i, h in enumerate(batch):
                raw = raws[i]
                if raw is None:
                    raw = execute(h, fd_of[i])
                done += 1
                self.complete(h, raw)
        except BaseException:
            for h in batch[done:]:
                self.complete(h, -errno.EIO)
            raise

    @staticmethod
    def _reopen(fds: OrderedDict[tuple[str, int], int], h: Handle) -> int:
        key = TARGETS[h.target_id].reopen(h.target_data)
        fd = fds.get(key)
        if fd is not None:
            fds.move_to_end(key)
            return fd
        if len(fds) >= WORKER_MAX_FILES:
            osfile.close(fds.popitem(last=False)[1])
        path, flags = key
        fd = osfile.open(path, (flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)))
        fds[key] = fd
        return fd

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()
        self._threads.clear()
