"""The worker method: ``io_workers`` threads share one bounded submission queue.

A submitter wakes one idle worker; a worker that finds more queued work wakes up to two
more (fan-out, no thundering herd). Workers reopen files by path through their own small
fd cache (so they never depend on the issuer's descriptors), run preadv/pwritev through the
OS boundary (the GIL is released there) and run the shared completion callbacks themselves.
A full queue, or an I/O with no target to reopen, runs synchronously in the issuer.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict, deque

import slonik.aio.osfile as osfile
from slonik.aio.handle import Handle
from slonik.aio.ids import TARGETS
from slonik.aio.method import IoMethod, IssuerContext, execute

IO_WORKERS_MAX = 32           # as PostgreSQL's MAX_IO_WORKERS
WORKER_QUEUE_SIZE = 64        # as PostgreSQL's io worker queue; overflow runs in the issuer
WORKER_MAX_FILES = 64         # descriptors each worker keeps open (LRU)
WAKE_FAN_OUT = 2              # workers a busy worker wakes when more is queued


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
                    h = queue.popleft()
                    if queue:
                        cv.notify(WAKE_FAN_OUT)
                if epoch != self._file_epoch:
                    epoch = self._file_epoch
                    while fds:
                        osfile.close(fds.popitem()[1])
                try:
                    fd = self._reopen(fds, h)
                    raw = execute(h, fd)
                except OSError as exc:
                    raw = -(exc.errno or 5)
                except BaseException:
                    # This worker dies (e.g. a simulated crash); its I/O still completes,
                    # as a failure, so no waiter sleeps forever.
                    self.complete(h, -errno.EIO)
                    raise
                self.complete(h, raw)
        finally:
            for fd in fds.values():
                osfile.close(fd)

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
