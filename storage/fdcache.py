"""A bounded LRU cache of open file descriptors that reopens files transparently.

Like PostgreSQL's virtual file descriptors: callers name files by path, and the cache keeps at
most ``max_files`` of them open, closing the least recently used idle one to make room. A file
that was closed is reopened by path on its next use, so callers never see the difference.

An fd is *in use* between ``acquire()`` and ``release()``, typically while an I/O on it is in
flight. An fd in use is never closed under the I/O: eviction only picks idle fds, and
``forget()`` / ``close_all()`` detach an in-use fd from its path (a new ``acquire()`` of that
path opens the file afresh) and close it at its last ``release()``.

Bound: when every cached fd is in use, ``acquire()`` of another path opens one more fd rather
than fail, so the number open can exceed ``max_files`` by at most the number of fds in use,
which is bounded by the I/O concurrency of the callers. ``release()`` shrinks the cache back
below ``max_files`` as soon as fds fall idle.

All calls are thread-safe (one lock). Opening a file happens under that lock, so that a
``forget()`` of a path is ordered with respect to every ``acquire()`` of it; keeping a
relation from being used while it is dropped is the caller's job (relation locks).
Every open and close goes through ``aio.osfile``, the one OS boundary.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from slonik.aio import osfile
from slonik.aio.errors import IOFailure


@dataclass(frozen=True)
class FdCacheStats:
    """Counters of one FdCache. ``open_now`` includes fds detached while in use."""

    opens: int
    closes: int
    evictions: int
    open_now: int
    in_use: int
    max_files: int


class _Entry:
    """One open fd and how many acquirers hold it."""

    __slots__ = ("path", "fd", "in_use")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.in_use = 0


class FdCache:
    """Path → fd, at most ``max_files`` open (plus fds in use; see the module docstring).

    ``flags`` are added to ``O_RDWR`` on every open (e.g. ``os.O_DIRECT``).
    """

    def __init__(self, max_files: int, flags: int = 0) -> None:
        if not isinstance(max_files, int) or isinstance(max_files, bool):
            raise TypeError(f"max_files must be an int, not {type(max_files).__name__}")
        if max_files < 1:
            raise ValueError(f"max_files must be at least 1, got {max_files}")
        if not isinstance(flags, int) or isinstance(flags, bool):
            raise TypeError(f"flags must be an int, not {type(flags).__name__}")
        self._max_files = max_files
        self._flags = flags
        self._lock = threading.Lock()
        # Least recently used first. Only these can be found by path.
        self._cached: OrderedDict[str, _Entry] = OrderedDict()
        # fds forgotten (or closed by close_all) while in use: closed at their last release.
        self._detached: dict[int, _Entry] = {}
        self._opens = 0
        self._closes = 0
        self._evictions = 0

    # -- acquire / release -------------------------------------------------------------------

    def acquire(self, path: str, *, create: bool = False) -> int:
        """Return an open fd for ``path``, marked most recently used and in use.

        Opens ``O_RDWR | flags`` (``| O_CREAT`` when ``create``) unless the path is cached.
        Every ``acquire()`` needs one ``release()``. An open failure raises ``IOFailure``
        naming the path (errno kept: ENOENT for a missing file).
        """
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        with self._lock:
            entry = self._cached.get(path)
            if entry is None:
                entry = self._open_locked(path, create)
            else:
                self._cached.move_to_end(path)
            entry.in_use += 1
            return entry.fd

    def release(self, path: str, fd: int | None = None) -> None:
        """Undo one ``acquire()`` of ``path``.

        Pass the ``fd`` that ``acquire()`` returned whenever the path may have been
        forgotten meanwhile (``using()`` and ``Smgr.fd_for()`` always do): after a
        ``forget()`` the same path can have two fds, the detached one and a fresh one.
        """
        with self._lock:
            entry = self._cached.get(path)
            if (entry is not None and entry.fd == fd and entry.in_use > 0
                    and len(self._cached) + len(self._detached) <= self._max_files):
                entry.in_use -= 1  # the usual: a cached fd, nothing to close or evict
                return
            entry = self._find_acquired_locked(path, fd)
            entry.in_use -= 1
            if entry.in_use > 0:
                return
            if self._detached.get(entry.fd) is entry:
                del self._detached[entry.fd]
                self._close_locked(entry)
            else:
                self._shrink_locked(self._max_files)

    @contextlib.contextmanager
    def using(self, path: str, create: bool = False) -> Iterator[int]:
        """``with cache.using(path) as fd:`` — acquire for the block, release after it."""
        fd = self.acquire(path, create=create)
        try:
            yield fd
        finally:
            self.release(path, fd)

    # -- closing -----------------------------------------------------------------------------

    def forget(self, path: str) -> None:
        """Close ``path``'s fd now (or at its last release if in use); used by unlink/truncate.

        A later ``acquire()`` of the path opens the file again, so it sees a file created
        anew under the same name.
        """
        with self._lock:
            entry = self._cached.pop(path, None)
            if entry is None:
                return
            if entry.in_use:
                self._detached[entry.fd] = entry
            else:
                self._close_locked(entry)

    def close_all(self) -> None:
        """Close every idle fd; fds in use are detached and closed at their last release.

        The cache stays usable. Calling it twice is harmless.
        """
        with self._lock:
            first_error: IOFailure | None = None
            while self._cached:
                _, entry = self._cached.popitem(last=False)
                if entry.in_use:
                    self._detached[entry.fd] = entry
                    continue
                try:
                    self._close_locked(entry)
                except IOFailure as e:  # close the rest before reporting
                    first_error = first_error or e
            if first_error is not None:
                raise first_error

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> FdCacheStats:
        with self._lock:
            entries = list(self._cached.values()) + list(self._detached.values())
            return FdCacheStats(
                opens=self._opens,
                closes=self._closes,
                evictions=self._evictions,
                open_now=len(entries),
                in_use=sum(1 for e in entries if e.in_use),
                max_files=self._max_files,
            )

    @property
    def max_files(self) -> int:
        return self._max_files

    @property
    def flags(self) -> int:
        """The extra open flags (e.g. ``os.O_DIRECT``), for a worker building its own cache."""
        return self._flags

    # -- internals (caller holds self._lock) -------------------------------------------------

    def _open_count_locked(self) -> int:
        return len(self._cached) + len(self._detached)

    def _open_locked(self, path: str, create: bool) -> _Entry:
        self._shrink_locked(self._max_files - 1)  # room for the one we open
        flags = os.O_RDWR | self._flags | (os.O_CREAT if create else 0)
        while True:
            try:
                fd = osfile.open(path, flags)
                break
            except OSError as e:
                # Out of fds in the process or system: give one idle fd back and retry.
                # Bounded: each retry closes one cached fd, and there are finitely many.
                if e.errno in (errno.EMFILE, errno.ENFILE) and self._evict_one_locked():
                    continue
                raise IOFailure(e.errno or errno.EIO, f"could not open file {path}") from e
        self._opens += 1
        entry = _Entry(path, fd)
        self._cached[path] = entry
        return entry

    def _shrink_locked(self, limit: int) -> None:
        """Evict idle fds, least recently used first, until at most ``limit`` are open."""
        while self._open_count_locked() > limit and self._evict_one_locked():
            pass

    def _evict_one_locked(self) -> bool:
        for path, entry in self._cached.items():
            if entry.in_use == 0:
                del self._cached[path]
                self._evictions += 1
                self._close_locked(entry)
                return True
        return False

    def _close_locked(self, entry: _Entry) -> None:
        assert entry.in_use == 0, f"closing fd {entry.fd} of {entry.path} while in use"
        self._closes += 1  # on Linux the fd is gone even when close() reports an error
        try:
            osfile.close(entry.fd)
        except OSError as e:
            raise IOFailure(e.errno or errno.EIO, f"could not close file {entry.path}") from e

    def _find_acquired_locked(self, path: str, fd: int | None) -> _Entry:
        cached = self._cached.get(path)
        if fd is not None:
            if cached is not None and cached.fd == fd:
                entry = cached
            else:
                entry = self._detached.get(fd)
            if entry is None or entry.path != path or entry.in_use == 0:
                raise ValueError(f"fd {fd} of {path} is not acquired from this cache")
            return entry
        detached = [e for e in self._detached.values() if e.path == path]
        candidates = ([cached] if cached is not None and cached.in_use else []) + detached
        if not candidates:
            raise ValueError(f"release() of {path} without a matching acquire()")
        if len(candidates) > 1:
            raise ValueError(f"{path} has {len(candidates)} fds in use after forget(); "
                             "pass the fd that acquire() returned")
        return candidates[0]
