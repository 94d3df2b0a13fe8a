"""Settings of ``Database.open``: PostgreSQL's names, validated at open.

Every bad value is rejected with a ``TypeError``/``ValueError`` that names the setting and
its accepted range before anything on disk is touched; an unknown name is a ``TypeError``
naming it (as an unknown keyword argument would be).

``wal_segment_size`` and ``segment_size`` are fixed when a database is created (the
control file records them). At a later open, leaving them out means "what the database
has"; giving a different value is a ``ValueError`` saying which value the database was
created with (PostgreSQL's initdb --wal-segsize works the same way: fixed at creation).

Sizes: ``shared_buffers`` and ``wal_buffers`` are in pages of 8192 bytes, or a string with
a unit ("128MB", "1GB", "64kB", "16384"); ``max_wal_size`` and ``wal_segment_size`` are in
bytes (or a string with a unit); ``segment_size`` is in blocks. Times:
``checkpoint_timeout`` in seconds, ``wal_writer_delay`` in milliseconds (an int, 1..10000,
as PostgreSQL's), ``bgwriter_delay`` in milliseconds (an int, 10..10000, as PostgreSQL's;
``bgwriter_lru_maxpages`` pages a background-writer round writes at most, 0 turns the
background writer off), ``commit_delay`` in microseconds (an int, 0..100000, 0 = off, the default;
applied when at least ``commit_siblings``, 1..1000, other transactions are active),
``commit_placement`` "auto" (the default: committers that wait in the group commit are
bound to one CPU and its flusher to another, wal/placement.py) or "off".

``io_direct``: "auto" (the default: WAL segments O_DIRECT, each flush still synced, where
the file system is ext4 or xfs, wal/xlog.py ``direct_wal_writes_ok``; data through the page
cache), "none", "data" (relation files O_DIRECT), "wal" (WAL segments O_DIRECT|O_DSYNC,
no fdatasync) or "data,wal".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from slonik.aio.core import IO_MAX_CONCURRENCY_LIMIT, IO_METHODS
from slonik.aio.method_worker import IO_WORKERS_MAX
from slonik.engine.checkpointer import CHECKPOINT_TIMEOUT_RANGE, MAX_WAL_SIZE_RANGE
from slonik.storage.bgwriter import (
    BGWRITER_DELAY_DEFAULT_MS,
    BGWRITER_LRU_MAXPAGES_DEFAULT,
    check_bgwriter_delay,
    check_bgwriter_lru_maxpages,
)
from slonik.storage.bufmgr import IO_COMBINE_LIMIT_MAX, SHARED_BUFFERS_MAX, SHARED_BUFFERS_MIN
from slonik.storage.page import BLCKSZ
from slonik.storage.read_stream import EFFECTIVE_IO_CONCURRENCY_MAX
from slonik.wal.placement import check_commit_placement
from slonik.wal.walpage import WAL_SEGMENT_SIZE_MAX, WAL_SEGMENT_SIZE_MIN
from slonik.wal.walwriter import WAL_WRITER_DELAY_DEFAULT_MS, check_wal_writer_delay
from slonik.wal.xlog import (
    COMMIT_SIBLINGS_DEFAULT,
    WAL_BUFFERS_DEFAULT_PAGES,
    WAL_BUFFERS_MAX_PAGES,
    WAL_BUFFERS_MIN_PAGES,
    check_commit_delay,
    check_commit_siblings,
)

__all__ = ["Settings", "parse_settings", "SETTING_NAMES"]

IO_DIRECT_VALUES = ("auto", "none", "data", "wal", "data,wal")
SEGMENT_SIZE_MAX_BLOCKS = 1 << 20      # 8 GiB files; md segments beyond that buy nothing
MAX_FILES_RANGE = (4, 1 << 20)         # the fd cache needs a few; the OS limit caps the rest
DEFAULT_SEGMENT_SIZE_BLOCKS = 131072   # 1 GiB, PostgreSQL's RELSEG_SIZE
DEFAULT_WAL_SEGMENT_SIZE = 16 << 20    # 16 MiB, PostgreSQL's default

_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class Settings:
    io_method: str = "auto"
    io_workers: int = 3                       # PostgreSQL's default
    io_max_concurrency: int = 64              # handles per issuing thread
    io_combine_limit: int = 16                # blocks (128 KiB), PostgreSQL's default
    effective_io_concurrency: int = 16        # PostgreSQL 18's default
    io_direct: str = "auto"                   # WAL O_DIRECT on ext4/xfs, fdatasync kept
    shared_buffers: int = 16384               # pages: 128 MiB, PostgreSQL's default
    wal_segment_size: int | None = None       # bytes; None: the database's (16 MiB if new)
    wal_buffers: int = WAL_BUFFERS_DEFAULT_PAGES
    full_page_writes: bool = True
    synchronous_commit: bool = True
    checkpoint_timeout: float = 300           # seconds, PostgreSQL's default
    wal_writer_delay: int = WAL_WRITER_DELAY_DEFAULT_MS   # ms between background WAL flushes
    bgwriter_delay: int = BGWRITER_DELAY_DEFAULT_MS   # ms between background writer rounds
    bgwriter_lru_maxpages: int = BGWRITER_LRU_MAXPAGES_DEFAULT  # pages a round; 0 = off
    commit_delay: int = 0                     # µs a group-commit leader waits; 0 = off
    commit_siblings: int = COMMIT_SIBLINGS_DEFAULT  # active transactions for the delay
    commit_placement: str = "auto"            # bind waiting committers' CPU ("off": don't)
    max_wal_size: int = 1 << 30               # bytes, PostgreSQL's default
    segment_size: int | None = None           # blocks; None: the database's (131072 if new)
    max_files: int = 1000                     # PostgreSQL's max_files_per_process
    zero_damaged_pages: bool = False
    ignore_checksum_failure: bool = False

    @property
    def io_direct_data(self) -> bool:
        return "data" in self.io_direct.split(",")

    @property
    def io_direct_wal(self) -> bool:
        return "wal" in self.io_direct.split(",")

    def with_fixed(self, wal_segment_size: int, segment_size: int) -> Settings:
        """These settings with the creation-time sizes filled in."""
        return replace(self, wal_segment_size=wal_segment_size, segment_size=segment_size)


SETTING_NAMES = tuple(f.name for f in fields(Settings))


def _size(name: str, value: object, unit_bytes: int, unit: str) -> int:
    """An int, or a string with a unit converted to ``unit_bytes`` units (a bare number
    string is in ``unit`` already)."""
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None or m.group(2).lower() not in ("", *_UNITS):
            raise ValueError(f"{name} must be an int ({unit}) or a size such as '128MB', "
                             f"got {value!r}")
        n = int(m.group(1))
        suffix = m.group(2).lower()
        if not suffix:
            return n
        nbytes = n * _UNITS[suffix]
        if nbytes % unit_bytes:
            raise ValueError(f"{name} {value!r} is not a whole number of {unit}")
        return nbytes // unit_bytes
    return value  # checked by the caller


def _int_in(name: str, value: object, lo: int, hi: int, unit: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int in {lo}..{hi}{unit}, not "
                        f"{type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}{unit}, got {value}")
    return value


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off", "true", "false"):
        return value.lower() in ("on", "true")
    raise TypeError(f"{name} must be a bool (True/False, or 'on'/'off'), got {value!r}")


def parse_settings(**kwargs: object) -> Settings:
    """Validated ``Settings`` from ``Database.open``'s keyword arguments."""
    unknown = sorted(set(kwargs) - set(SETTING_NAMES))
    if unknown:
        raise TypeError(f"unknown setting {unknown[0]!r}; the settings are "
                        f"{', '.join(SETTING_NAMES)}")
    s = Settings()
    v = dict(kwargs)
    if "io_method" in v:
        m = v["io_method"]
        if m not in IO_METHODS:
            raise ValueError(f"io_method must be one of {' | '.join(IO_METHODS)}, got {m!r}")
    if "io_workers" in v:
        _int_in("io_workers", v["io_workers"], 1, IO_WORKERS_MAX)
    if "io_max_concurrency" in v:
        _int_in("io_max_concurrency", v["io_max_concurrency"], 1, IO_MAX_CONCURRENCY_LIMIT)
    if "io_combine_limit" in v:
        _int_in("io_combine_limit", v["io_combine_limit"], 1, IO_COMBINE_LIMIT_MAX, " blocks")
    if "effective_io_concurrency" in v:
        _int_in("effective_io_concurrency", v["effective_io_concurrency"], 0,
                EFFECTIVE_IO_CONCURRENCY_MAX)
    if "io_direct" in v:
        d = v["io_direct"]
        if isinstance(d, str):
            d = ",".join(sorted(p.strip() for p in d.split(",") if p.strip()) or ["none"])
        if d not in IO_DIRECT_VALUES:
            raise ValueError(f"io_direct must be one of {' | '.join(IO_DIRECT_VALUES)}, "
                             f"got {v['io_direct']!r}")
        v["io_direct"] = d
    if "shared_buffers" in v:
        v["shared_buffers"] = _int_in(
            "shared_buffers", _size("shared_buffers", v["shared_buffers"], BLCKSZ, "pages"),
            SHARED_BUFFERS_MIN, SHARED_BUFFERS_MAX, f" pages of {BLCKSZ} bytes")
    if "wal_buffers" in v:
        v["wal_buffers"] = _int_in(
            "wal_buffers", _size("wal_buffers", v["wal_buffers"], BLCKSZ, "pages"),
            WAL_BUFFERS_MIN_PAGES, WAL_BUFFERS_MAX_PAGES, f" pages of {BLCKSZ} bytes")
    if v.get("wal_segment_size") is not None:
        n = _int_in("wal_segment_size", _size("wal_segment_size", v["wal_segment_size"], 1,
                                              "bytes"),
                    WAL_SEGMENT_SIZE_MIN, WAL_SEGMENT_SIZE_MAX, " bytes")
        if n & (n - 1):
            raise ValueError(f"wal_segment_size must be a power of two in "
                             f"{WAL_SEGMENT_SIZE_MIN}..{WAL_SEGMENT_SIZE_MAX} bytes, got {n}")
        v["wal_segment_size"] = n
    if v.get("segment_size") is not None:
        n = _int_in("segment_size", v["segment_size"], 1, SEGMENT_SIZE_MAX_BLOCKS, " blocks")
        if n & (n - 1):
            raise ValueError(f"segment_size must be a power of two in 1.."
                             f"{SEGMENT_SIZE_MAX_BLOCKS} blocks, got {n}")
    if "max_wal_size" in v:
        v["max_wal_size"] = _int_in(
            "max_wal_size", _size("max_wal_size", v["max_wal_size"], 1, "bytes"),
            *MAX_WAL_SIZE_RANGE, " bytes")
    if "checkpoint_timeout" in v:
        t = v["checkpoint_timeout"]
        lo, hi = CHECKPOINT_TIMEOUT_RANGE
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise TypeError(f"checkpoint_timeout must be a number of seconds in {lo}..{hi}, "
                            f"got {t!r}")
        if not lo <= t <= hi:
            raise ValueError(f"checkpoint_timeout must be in {lo}..{hi} seconds, got {t}")
    if "wal_writer_delay" in v:
        check_wal_writer_delay(v["wal_writer_delay"])
    if "bgwriter_delay" in v:
        check_bgwriter_delay(v["bgwriter_delay"])
    if "bgwriter_lru_maxpages" in v:
        check_bgwriter_lru_maxpages(v["bgwriter_lru_maxpages"])
    if "commit_delay" in v:
        check_commit_delay(v["commit_delay"])
    if "commit_siblings" in v:
        check_commit_siblings(v["commit_siblings"])
    if "commit_placement" in v:
        check_commit_placement(v["commit_placement"])
    if "max_files" in v:
        _int_in("max_files", v["max_files"], *MAX_FILES_RANGE)
    for name in ("full_page_writes", "synchronous_commit", "zero_damaged_pages",
                 "ignore_checksum_failure"):
        if name in v:
            v[name] = _bool(name, v[name])
    return replace(s, **v)
