"""FdCache: bounded LRU of open fds, transparent reopen, in-use fds never closed."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest
from slonik.aio import osfile
from slonik.aio.errors import IOFailure
from slonik.storage.fdcache import FdCache


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _files(tmp_path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 16)
        paths.append(str(p))
    return paths


def _first_byte(fd: int) -> int:
    return os.pread(fd, 1, 0)[0]


def test_lru_eviction_keeps_at_most_max_files(tmp_path):
    """At most max_files fds are open (by stats and by /proc/self/fd), the least recently
    used idle one is evicted, and an evicted path reopens transparently on the same file.
    Checked by cycling through 6 files with max_files=3."""
    paths = _files(tmp_path, 6)
    cache = FdCache(3)
    before = _fd_count()
    for rnd in range(4):
        for i, p in enumerate(paths):
            with cache.using(p) as fd:
                assert _first_byte(fd) == i, f"round {rnd}: fd of {p} reads another file"
            assert cache.stats().open_now <= 3
            assert _fd_count() - before <= 3
    s = cache.stats()
    assert s.open_now == 3 and s.max_files == 3 and s.in_use == 0
    assert s.evictions == s.opens - 3 > 0
    cache.acquire(paths[3])  # f3..f5 are cached; touching f3 makes f4 the LRU
    cache.release(paths[3])
    opens = cache.stats().opens
    cache.acquire(paths[0])
    cache.release(paths[0])
    assert cache.stats().opens == opens + 1
    for p in (paths[3], paths[5], paths[0]):  # still cached: no new open
        with cache.using(p):
            pass
    assert cache.stats().opens == opens + 1
    cache.close_all()
    assert cache.stats().open_now == 0 and _fd_count() == before


def test_in_use_fds_are_never_evicted(tmp_path):
    """An fd held between acquire and release stays open and keeps naming its file while
    other paths churn through the cache; the excess over max_files is at most the number
    in use, and release shrinks the cache back to max_files."""
    paths = _files(tmp_path, 8)
    cache = FdCache(3)
    held = [cache.acquire(p) for p in paths[:3]]
    for i, p in enumerate(paths[3:], start=3):
        with cache.using(p) as fd:
            assert _first_byte(fd) == i
            assert cache.stats().open_now == 4  # all 4 in use: over max_files by 1
        assert cache.stats().open_now == 3  # the idle one went at release
    for i, fd in enumerate(held):
        assert _first_byte(fd) == i  # never closed under us
    for p, fd in zip(paths[:3], held, strict=True):
        cache.release(p, fd)
    assert cache.stats().open_now == 3 and cache.stats().in_use == 0
    assert cache.stats().evictions == 5
    cache.close_all()


def test_forget_defers_close_of_an_in_use_fd(tmp_path):
    """forget() closes an idle fd at once, but an fd in use stays open (still reading its
    old file) until its last release; meanwhile the path reopens as a new fd, so a file
    recreated under the same name is seen."""
    (p,) = _files(tmp_path, 1)
    cache = FdCache(3)
    with cache.using(p):
        pass
    cache.forget(p)
    assert cache.stats().open_now == 0
    old = cache.acquire(p)
    cache.forget(p)
    os.unlink(p)
    with open(p, "wb") as f:
        f.write(b"\x09" * 16)
    new = cache.acquire(p)
    assert new != old and _first_byte(old) == 0 and _first_byte(new) == 9
    with pytest.raises(ValueError, match="pass the fd"):
        cache.release(p)  # ambiguous: two fds of p in use
    cache.release(p, old)
    assert cache.stats().open_now == 1
    with pytest.raises(OSError):
        os.fstat(old)  # closed at its last release (nothing else opened meanwhile)
    cache.release(p)  # unambiguous now
    cache.close_all()
    cache.close_all()  # twice is harmless


def test_close_all_detaches_fds_in_use(tmp_path):
    """close_all() closes idle fds and leaves fds in use open until released."""
    a, b = _files(tmp_path, 2)
    cache = FdCache(3)
    fd_a = cache.acquire(a)
    with cache.using(b):
        pass
    cache.close_all()
    assert cache.stats().open_now == 1 and _first_byte(fd_a) == 0
    cache.release(a, fd_a)
    assert cache.stats().open_now == 0
    assert cache.stats().closes == cache.stats().opens == 2


def test_open_failures_and_misuse(tmp_path):
    """A missing file raises IOFailure with ENOENT naming the path; create=True makes it;
    bad max_files/path and release without acquire raise ValueError/TypeError."""
    cache = FdCache(2)
    missing = str(tmp_path / "nope")
    with pytest.raises(IOFailure) as info:
        cache.acquire(missing)
    assert info.value.errno == errno.ENOENT and missing in str(info.value)
    with cache.using(missing, create=True) as fd:
        assert os.fstat(fd).st_size == 0
    with pytest.raises(ValueError, match="max_files"):
        FdCache(0)
    with pytest.raises(TypeError, match="max_files"):
        FdCache("3")
    with pytest.raises(TypeError, match="path"):
        cache.acquire(b"bytes path")
    with pytest.raises(ValueError, match="without a matching acquire"):
        cache.release(missing)
    with pytest.raises(ValueError, match="not acquired"):
        cache.release(missing, 12345)


def test_emfile_evicts_an_idle_fd_and_retries(tmp_path):
    """When open() fails with EMFILE, the cache closes an idle fd and retries, so running
    out of process fds costs an eviction rather than an error (injected via OsLayer)."""
    paths = _files(tmp_path, 3)

    class OneEmfile(osfile.OsLayer):
        armed = False

        def open(self, path, flags, mode=0o644):
            if self.armed:
                self.armed = False
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return super().open(path, flags, mode)

    cache = FdCache(3)
    layer = OneEmfile()
    with osfile.installed(layer):
        for p in paths[:2]:
            with cache.using(p):
                pass
        layer.armed = True
        with cache.using(paths[2]) as fd:
            assert _first_byte(fd) == 2
    s = cache.stats()
    assert s.evictions == 1 and s.open_now == 2
    cache.close_all()


def test_threads_share_the_cache_safely(tmp_path):
    """Eight threads acquire/read/release random paths concurrently: every read sees the
    right file and the cache never holds more than max_files + threads fds."""
    paths = _files(tmp_path, 10)
    cache = FdCache(3)
    errors: list[BaseException] = []
    peak = [0]

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                i = rng.randrange(len(paths))
                with cache.using(paths[i]) as fd:
                    assert _first_byte(fd) == i
                    peak[0] = max(peak[0], cache.stats().open_now)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert peak[0] <= 3 + 8
    assert cache.stats().open_now <= 3 and cache.stats().in_use == 0
    cache.close_all()
