"""An OS layer that lies about durability (test only): the negative control of the power-cut
harness (tests/engine/test_powercut.py).

``NoSyncLayer`` passes every call through to the real OS except the ones that make data
durable: ``fsync``, ``fdatasync`` and ``fsync_directory`` return at once having done
nothing, ``writeback`` (sync_file_range, which would start write-back) is dropped, and
``O_SYNC``/``O_DSYNC`` are stripped from ``open`` flags. A writer running on it still
acknowledges its commits, but they live only in the page cache: a kill -9 keeps them, a
power cut loses them. Installed with ``osfile.install()`` by the child process; production
code never does.

io_uring issues its fsyncs through the ring, past this layer, so the layer only lies for
the sync and worker methods.
"""

from __future__ import annotations

import os

from slonik.aio.osfile import OsLayer

__all__ = ["NoSyncLayer"]

_SYNC_OPEN_FLAGS = os.O_SYNC | os.O_DSYNC


class NoSyncLayer(OsLayer):
    """The real OS with every sync turned into a no-op; counts the syncs it skipped."""

    def __init__(self) -> None:
        self.skipped_syncs = 0

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return super().open(path, flags & ~_SYNC_OPEN_FLAGS, mode)

    def fsync(self, fd: int) -> None:
        self.skipped_syncs += 1

    def fdatasync(self, fd: int) -> None:
        self.skipped_syncs += 1

    def fsync_directory(self, path: str) -> None:
        self.skipped_syncs += 1

    def writeback(self, fd: int, offset: int, length: int) -> None:
        self.skipped_syncs += 1
