"""A real ext4 file system on a loop device, and the power cut it can take (test only).

Why a loop device shows a power cut: the loop driver writes what the upper ext4 sends it
into a backing image file. Data a process wrote but nobody synced sits in the *upper* file
system's page cache and has not been sent to the device yet, so it is not in the image.
Copying the image right after SIGKILLing the writer therefore gives the disk a power cut
would leave: everything the writer made durable (fsync, fdatasync, directory fsync, and
whatever the kernel happened to write back on its own), nothing else. Mounting the copy
replays the ext4 journal, as booting after the cut would.

To make that loss certain rather than likely, the upper file system is mounted with
``MOUNT_OPTIONS``: ``commit=60`` (ext4 commits its journal every 5 s by default; 60 s is
longer than any test round) and ``noauto_da_alloc`` (no implicit write-back when a file is
renamed over another or truncated). With the kernel's ``vm.dirty_expire_centisecs`` (30 s by
default) nothing reaches the device within a round unless the writer syncs it, which is
exactly the writer the harness has to judge.

Worked example::

    with PowerCutDisk(tmp_path) as disk:         # mkfs.ext4, losetup, mount
        run_writer(disk.mountpoint)               # ... then SIGKILL it
        disk.power_cut()                          # copy the image, swap the copy in
        check(disk.mountpoint)                    # recovery sees the cut disk

Invariants:
1. Every loop device attached here is detached and every mount unmounted, on every path
   (``umount`` is retried while busy, then falls back to ``umount -l``; ``losetup -d`` of a
   busy device detaches it when the last user goes).
2. ``power_cut()`` copies the image before anything unmounts or syncs the original: an
   unmount writes back the page cache, which would undo the cut.
3. Nothing here touches a file system it did not make.

Entry points: ``unavailable_reason()`` (why loop devices cannot be used here, or None),
``make_ext4_image``, ``copy_image``, ``LoopMount`` (one image attached and mounted),
``PowerCutDisk`` (a mounted image that can take power cuts).
"""

from __future__ import annotations

import enum
import functools
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

__all__ = ["MOUNT_OPTIONS", "IMAGE_SIZE_BYTES", "LoopDeviceUnavailable", "unavailable_reason",
           "make_ext4_image", "copy_image", "CopyStats", "LoopMount", "PowerCutDisk",
           "dirty_expire_seconds"]

IMAGE_SIZE_BYTES = 256 << 20      # sparse; room for many rounds of a small database
MOUNT_OPTIONS = "commit=60,noauto_da_alloc"   # see the module docstring
COPY_CHUNK_BYTES = 1 << 20        # one read/write of the image copy
COMMAND_TIMEOUT_SECONDS = 60      # losetup/mkfs/mount/umount never take this long here
UMOUNT_BUSY_SECONDS = 10          # how long umount is retried while the file system is busy
UMOUNT_RETRY_SLEEP_SECONDS = 0.02
PROBE_IMAGE_BYTES = 4 << 20       # the image unavailable_reason() tries to mount
TOOLS = ("losetup", "mkfs.ext4", "mount", "umount")


class LoopDeviceUnavailable(RuntimeError):
    """A loop device, mkfs.ext4 or mount failed: the harness cannot run here."""


def _run(args: list[str]) -> str:
    """Run a system command; its failure raises LoopDeviceUnavailable naming it and why."""
    try:
        done = subprocess.run(args, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoopDeviceUnavailable(f"{' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise LoopDeviceUnavailable(f"{' '.join(args)} exited with {done.returncode}: "
                                    f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def _static_reason() -> str | None:
    if os.geteuid() != 0:
        return "loop devices and mount need root"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (no loop device support)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


@functools.cache
def unavailable_reason() -> str | None:
    """Why the harness cannot run here (not root, no loop devices, losetup, mkfs.ext4 or
    mount failing), or None. The probe makes, mounts and removes a tiny ext4 once."""
    reason = _static_reason()
    if reason is not None:
        return reason
    with tempfile.TemporaryDirectory(prefix="slonik-loop-probe-") as d:
        image = os.path.join(d, "probe.img")
        try:
            make_ext4_image(image, PROBE_IMAGE_BYTES)
            with LoopMount(image, os.path.join(d, "mnt")):
                pass
        except LoopDeviceUnavailable as exc:
            return str(exc)
    return None


def dirty_expire_seconds() -> float:
    """How long the kernel lets a dirty page sit before write-back (vm.dirty_expire_centisecs)."""
    with open("/proc/sys/vm/dirty_expire_centisecs") as f:
        return int(f.read()) / 100


def make_ext4_image(path: str, size_bytes: int) -> None:
    """A sparse file of ``size_bytes`` holding a fresh ext4. Inode tables and the journal
    are initialised now (not lazily after mount, which would write to the device in the
    background during a test)."""
    if size_bytes <= 0 or size_bytes % 4096:
        raise ValueError(f"size_bytes must be a positive multiple of 4096, got {size_bytes}")
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", path])


@dataclass(frozen=True)
class CopyStats:
    data_bytes: int       # bytes of the image that hold data (holes are not copied)
    seconds: float        # how long the copy took (informational)


def copy_image(src: str, dst: str) -> CopyStats:
    """Copy ``src`` to a new sparse ``dst``: the data extents byte for byte, holes as holes.
    It reads the image file as the loop device left it (through the host's page cache,
    which is coherent with what the loop driver wrote)."""
    started = time.monotonic()
    copied = 0
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fin).st_size
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fout, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fin, offset, os.SEEK_DATA)
                except OSError:  # ENXIO: no data after offset
                    break
                end = os.lseek(fin, start, os.SEEK_HOLE)
                pos = start
                while pos < end:
                    chunk = os.pread(fin, min(COPY_CHUNK_BYTES, end - pos), pos)
                    if not chunk:
                        raise OSError(f"{src} ended at {pos} while copying up to {end}")
                    written = os.pwrite(fout, chunk, pos)
                    if written != len(chunk):
                        raise OSError(f"short write to {dst} at {pos}")
                    pos += written
                copied += end - start
                offset = end
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return CopyStats(copied, time.monotonic() - started)


class MountState(enum.IntEnum):
    DETACHED = 0      # no loop device
    ATTACHED = 1      # image on a loop device, not mounted
    MOUNTED = 2       # the loop device's ext4 is mounted on the mount point


_TRANSITIONS = {
    (MountState.DETACHED, MountState.ATTACHED),
    (MountState.ATTACHED, MountState.MOUNTED),
    (MountState.MOUNTED, MountState.ATTACHED),
    (MountState.ATTACHED, MountState.DETACHED),
}


class LoopMount:
    """One image file attached to a loop device and its ext4 mounted on ``mountpoint``.

    DETACHED --losetup--> ATTACHED --mount--> MOUNTED --umount--> ATTACHED --losetup -d-->
    DETACHED. ``close()`` walks back down from wherever it is, even after a failure."""

    def __init__(self, image: str, mountpoint: str, options: str = MOUNT_OPTIONS) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.options = options
        self.device: str | None = None
        self.state = MountState.DETACHED
        self.lazy_unmounts = 0    # times umount stayed busy and ``umount -l`` was used

    def _set_state(self, new: MountState) -> None:
        assert (self.state, new) in _TRANSITIONS, f"loop mount {self.state.name} -> {new.name}"
        self.state = new

    def open(self) -> None:
        """Attach and mount; on any failure nothing is left attached."""
        os.makedirs(self.mountpoint, exist_ok=True)
        try:
            self.device = _run(["losetup", "--find", "--show", self.image]).strip()
            if not self.device.startswith("/dev/"):
                raise LoopDeviceUnavailable(f"losetup printed {self.device!r}, not a device")
            self._set_state(MountState.ATTACHED)
            _run(["mount", "-t", "ext4", "-o", self.options, self.device, self.mountpoint])
            self._set_state(MountState.MOUNTED)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Unmount (``umount -l`` if busy) and detach. Harmless when already detached; the
        first failure is raised once both steps were tried."""
        failure: BaseException | None = None
        if self.state == MountState.MOUNTED:
            if not self._unmount():
                self.lazy_unmounts += 1
                try:
                    _run(["umount", "-l", self.mountpoint])
                except LoopDeviceUnavailable as exc:
                    failure = exc
            self._set_state(MountState.ATTACHED)
        if self.state == MountState.ATTACHED:
            try:
                _run(["losetup", "-d", self.device])
            except LoopDeviceUnavailable as exc:
                failure = failure or exc
            self._set_state(MountState.DETACHED)
            self.device = None
        if failure is not None:
            raise failure

    def _unmount(self) -> bool:
        """umount, retried while the file system is busy: a killed process's io_uring
        instance is torn down by the kernel after the process was reaped, and holds its
        files open until then. False if it stayed busy for UMOUNT_BUSY_SECONDS."""
        deadline = time.monotonic() + UMOUNT_BUSY_SECONDS
        while True:
            try:
                _run(["umount", self.mountpoint])
                return True
            except LoopDeviceUnavailable:
                if time.monotonic() > deadline:
                    return False
                time.sleep(UMOUNT_RETRY_SLEEP_SECONDS)

    def __enter__(self) -> LoopMount:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LoopMount {self.image} on {self.device} at {self.mountpoint} ({self.state.name})>"


class PowerCutDisk:
    """The disk of a machine whose power can be cut: an ext4 image on a loop device, mounted
    at ``mountpoint``.

    ``power_cut()`` is called right after the writer on it was killed with SIGKILL (and
    reaped, so no process holds a file open there): it copies the image as the device holds
    it, then unmounts and detaches the original, and mounts the copy in its place; the
    journal replay happens at that mount. ``keep_original=True`` keeps the original image
    (cleanly unmounted, so it holds everything the writer handed to the kernel: what a
    kill -9 alone would leave) and returns its path."""

    def __init__(self, workdir: str | os.PathLike, size_bytes: int = IMAGE_SIZE_BYTES,
                 options: str = MOUNT_OPTIONS) -> None:
        self.workdir = os.fspath(workdir)
        self.size_bytes = size_bytes
        self.options = options
        self.mountpoint = os.path.join(self.workdir, "mnt")
        self.generation = 0
        self.copies: list[CopyStats] = []
        self._mount: LoopMount | None = None

    def _image(self, generation: int) -> str:
        return os.path.join(self.workdir, f"disk.{generation}.img")

    def open(self) -> None:
        make_ext4_image(self._image(0), self.size_bytes)
        self._mount = LoopMount(self._image(0), self.mountpoint, self.options)
        self._mount.open()

    def power_cut(self, *, keep_original: bool = False) -> str | None:
        assert self._mount is not None and self._mount.state == MountState.MOUNTED
        old = self._mount
        self.generation += 1
        cut = self._image(self.generation)
        self.copies.append(copy_image(old.image, cut))  # first: before anything syncs it
        self._mount = None
        old.close()
        if not keep_original:
            os.unlink(old.image)
        self._mount = LoopMount(cut, self.mountpoint, self.options)
        self._mount.open()
        return old.image if keep_original else None

    def close(self) -> None:
        if self._mount is not None:
            mount, self._mount = self._mount, None
            mount.close()

    def __enter__(self) -> PowerCutDisk:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
