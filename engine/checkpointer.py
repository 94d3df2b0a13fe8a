"""Checkpoints: explicit, on shutdown, and from a background thread.

Order (DESIGN §7): note the redo point → write every dirty buffer (the buffer manager's
sorted, combined AIO write-back; WAL is flushed first for each page) → fsync every data
segment written since the last checkpoint → log the checkpoint record → flush WAL →
replace the control file → only then recycle WAL segments older than the redo point.

The background checkpointer wakes every ``checkpoint_timeout`` seconds, or when the WAL
has grown by ``max_wal_size / 2`` since the last redo point (checked at every segment
switch). A checkpoint that fails leaves the error in ``error``; a failed fsync or WAL
write is fatal (``fatal`` is set and the engine refuses further work), since the kernel
may already have dropped the dirty pages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from slonik.aio.errors import IOFailure
from slonik.storage.bufmgr import BufferManager
from slonik.storage.smgr import Smgr
from slonik.wal.checkpoint import (
    XLOG_CHECKPOINT_ONLINE,
    XLOG_CHECKPOINT_SHUTDOWN,
    CheckpointData,
    encode_checkpoint,
)
from slonik.wal.control import (
    ControlData,
    DbState,
    install_control,
    stage_control,
    write_control,
)
from slonik.wal.errors import WalError
from slonik.wal.rmgr import RM_XLOG
from slonik.wal.xlog import Wal

CHECKPOINT_TIMEOUT_RANGE = (1, 86400)                 # seconds, as PostgreSQL's 30s..1d, looser
MAX_WAL_SIZE_RANGE = (2 * 1024 * 1024, 1 << 40)      # bytes


@dataclass(frozen=True)
class CheckpointStats:
    checkpoints: int
    requested: int
    timed: int
    buffers_written: int
    files_synced: int
    segments_removed: int
    last_redo_lsn: int
    last_checkpoint_lsn: int
    last_seconds: float


class Checkpointer:
    """See the module docstring. ``state()`` returns (next_xid, next_relfilenumber, extra)
    from the engine at the moment the checkpoint record is written."""

    def __init__(self, *, wal: Wal, bufmgr: BufferManager, smgr: Smgr, data_dir: str,
                 control: ControlData, state: Callable[[], tuple[int, int, bytes]],
                 checkpoint_timeout: float = 300, max_wal_size: int = 1 << 30,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 redo_lock: threading.Lock | None = None) -> None:
        self.wal = wal
        self.bufmgr = bufmgr
        self.smgr = smgr
        self.data_dir = data_dir
        self.control = control
        self._state = state
        self.checkpoint_timeout = checkpoint_timeout
        self.max_wal_size = max_wal_size
        self.on_fatal = on_fatal
        # Held while the redo point is taken: the engine's commit lock, so that no
        # transaction's records straddle a redo point.
        self.redo_lock = redo_lock
        self._lock = threading.Lock()       # one checkpoint at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.fatal: BaseException | None = None
        self._last_redo = control.redo_lsn
        self._checkpoints = self._requested = self._timed = 0
        self._buffers = self._files = self._removed = 0
        self._last_lsn = control.checkpoint_lsn
        self._last_end = 0  # end of our last checkpoint record: no WAL since means idle
        self._last_seconds = 0.0

    # --- the checkpoint -----------------------------------------------------------------------
    def checkpoint(self, *, shutdown: bool = False) -> int:
        """Run one checkpoint now; returns the checkpoint record's LSN."""
        if self.fatal is not None:
            raise WalError(f"a checkpoint is impossible after a fatal error: {self.fatal}")
        with self._lock:
            t0 = time.perf_counter()
            try:
                if self.redo_lock is not None:
                    with self.redo_lock:
                        redo = self.wal.begin_checkpoint()
                else:
                    redo = self.wal.begin_checkpoint()
                written = self.bufmgr.flush_all()
                synced = self.smgr.sync_written()
                next_xid, next_rel, extra = self._state()
                cp = CheckpointData(redo, next_xid, next_rel, time.time(), extra)
                info = XLOG_CHECKPOINT_SHUTDOWN if shutdown else XLOG_CHECKPOINT_ONLINE
                start, end = self.wal.insert(RM_XLOG, info, 0, encode_checkpoint(cp))
                self.wal.flush(end)
            except (WalError, IOFailure) as exc:
                self._fail(exc)
                raise
            control = replace(
                self.control, state=DbState.SHUTDOWNED if shutdown else DbState.IN_PRODUCTION,
                checkpoint_lsn=start, redo_lsn=redo, next_xid=next_xid,
                next_relfilenumber=next_rel, time=cp.time)
            # Staging the new control file touches only its temp file: if that fails (a full
            # disk), the old control file still names the previous checkpoint, whose redo
            # point's WAL is all kept, so this checkpoint simply did not happen — an error
            # for its caller, not a fatal one. Installing it (rename) is past that point.
            stage_control(self.data_dir, control)
            try:
                install_control(self.data_dir)
            except IOFailure as exc:
                self._fail(exc)
                raise
            self.control = control
            self._last_redo = redo
            self._last_lsn = start
            self._last_end = self.wal.insert_lsn
            self._removed += self.wal.remove_segments_before(redo)
            self._checkpoints += 1
            self._buffers += written or 0
            self._files += synced or 0
            self._last_seconds = time.perf_counter() - t0
            return start

    def _fail(self, exc: BaseException) -> None:
        # A failed data fsync or WAL write/sync: never retried, the engine must stop.
        self.fatal = exc
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def mark_in_production(self) -> None:
        """After a clean start: the control file says the database is running."""
        self.control = replace(self.control, state=DbState.IN_PRODUCTION, time=time.time())
        write_control(self.data_dir, self.control)

    # --- background ----------------------------------------------------------------------------
    def request(self) -> None:
        """Wake the background checkpointer (the WAL switched segment)."""
        if self.wal.insert_lsn - self._last_redo >= self.max_wal_size // 2:
            self._requested += 1
            self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="slonik-checkpointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.checkpoint_timeout)
            self._wake.clear()
            if self._stop.is_set() or self.fatal is not None:
                return
            if not woken:
                self._timed += 1
            try:
                if woken or self.wal.insert_lsn > self._last_end:
                    self.checkpoint()
            except BaseException as exc:  # recorded for the engine; fatal ones stop us above
                self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def stats(self) -> CheckpointStats:
        return CheckpointStats(self._checkpoints, self._requested, self._timed, self._buffers,
                               self._files, self._removed, self._last_redo, self._last_lsn,
                               self._last_seconds)
