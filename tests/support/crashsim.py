"""A test-only OS layer that simulates a power failure (as SQLite's crash-test VFS does).

``CrashSimLayer(root)`` is installed with ``osfile.install()``; production code never does.
While installed it passes every call through to the real OS (the process sees its own
writes, as it would through the page cache) and remembers, for every file and directory
under ``root`` that the process touches, what a power failure could leave behind:

- per file, a durable image (its bytes as of its last fsync/fdatasync; a file that existed
  at install time is durable with the content it had when first touched) and the ordered
  unsynced writes and truncations since;
- the directory operations (create, rename, unlink, mkdir, rmdir) not yet made durable by
  an fsync of their directory (both directories for a rename). Committing one also commits
  every earlier pending operation on the same names, as a file-system journal would.

A crash happens at the ``crash_after_ops``-th mutating call (pwritev, fsync, fdatasync,
ftruncate, rename, unlink, mkdir, rmdir, fsync_directory, open with O_CREAT or O_TRUNC), or
at ``crash_now()``. That call and every later one, from any thread, reads included, raise
``SimulatedCrash`` without touching anything (``close`` still releases the descriptor, so
dying threads leak nothing). Calls are ordered by when they pass that check: one that
passed it before the crash still completes, is recorded and returns normally. ``apply_crash()`` then rewrites the real files to one possible
post-crash state: every synced byte is kept; each unsynced write is kept, dropped or torn
(a random nonempty proper subset of its 512-byte or 4 KiB file-aligned chunks); each
unsynced truncation happens or not; each pending directory operation happens or not, in
order, when it still can (a rename of a file whose create did not happen cannot). The
layer is then spent; the test installs a plain ``OsLayer`` and reopens.

Syncs are simulated: fsync/fdatasync/fsync_directory check their argument as the real
call would but do not flush the disk, so hundreds of crash points stay fast.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from slonik.aio.osfile import Buffer, OsLayer

TORN_GRANULARITIES_BYTES = (512, 4096)  # a disk sector and a page: the units a write tears in
APPLY_WAIT_SECONDS = 10.0  # apply_crash waits this long for calls in flight at the crash
KEEP_DIRECTORY_OP_PROBABILITY = 0.5
KEEP_TRUNCATION_PROBABILITY = 0.5


class SimulatedCrash(BaseException):
    """The simulated machine lost power. A BaseException, not an OSError or SlonikError, so
    no error handling in the engine mistakes it for an I/O failure and carries on."""


class _Directory:
    """The node of a directory in a namespace (one shared instance)."""

    def __repr__(self) -> str:
        return "<directory>"


_DIRECTORY = _Directory()


@dataclass
class _Write:
    seq: int
    offset: int
    data: bytes


@dataclass
class _Truncate:
    seq: int
    length: int


@dataclass(eq=False)
class _File:
    """One file (an inode): its durable image and its unsynced writes and truncations."""

    label: str  # the name it was first seen under, for reports
    image: bytearray
    pending: list[_Write | _Truncate] = field(default_factory=list)
    seq: int = 0

    def add(self, cls, *args) -> None:
        self.seq += 1
        self.pending.append(cls(self.seq, *args))

    def make_durable(self, upto_seq: int) -> None:
        """An fsync that began after change ``upto_seq`` was recorded returned."""
        keep = []
        for change in self.pending:
            if change.seq <= upto_seq:
                _apply_change(self.image, change)
            else:
                keep.append(change)
        self.pending = keep


_Node = _File | _Directory | None  # None: known not to exist


@dataclass
class _DirectoryOp:
    kind: str  # create | rename | unlink | mkdir | rmdir
    paths: tuple[str, ...]  # (path,) or (src, dst)
    node: _File | _Directory
    directories: frozenset[str]
    synced: set[str] = field(default_factory=set)

    def describe(self) -> str:
        return f"{self.kind} {' -> '.join(self.paths)}"


@dataclass(frozen=True)
class ChangeFate:
    """What the crash did to one unsynced change of a file."""

    kind: str  # "write" or "truncate"
    offset: int  # write offset, or the truncation length
    length: int  # write length (0 for a truncation)
    fate: str  # write: kept | dropped | torn; truncate: applied | not applied
    granularity: int = 0  # torn writes: 512 or 4096
    kept_chunks: tuple[int, ...] = ()  # torn writes: file offsets of the chunks kept

    def __str__(self) -> str:
        if self.kind == "truncate":
            return f"truncate to {self.offset}: {self.fate}"
        text = f"write [{self.offset}, {self.offset + self.length}): {self.fate}"
        if self.fate == "torn":
            text += f" at {self.granularity} B, kept chunks at {list(self.kept_chunks)}"
        return text


@dataclass(frozen=True)
class FileFate:
    path: str  # its name after the crash, or the name it was last known by if it vanished
    survived: bool
    changes: tuple[ChangeFate, ...]


@dataclass(frozen=True)
class CrashReport:
    """What ``apply_crash`` chose, for test failure messages."""

    seed: int | None  # None when the caller passed its own rng
    files: tuple[FileFate, ...]
    directory_ops: tuple[tuple[str, str], ...]  # (description, happened | did not happen | ...)

    def file(self, path: str) -> FileFate | None:
        real = os.path.realpath(path)
        return next((f for f in self.files if f.path == real), None)

    def __str__(self) -> str:
        lines = [f"crash (seed {self.seed}):"]
        for op, fate in self.directory_ops:
            lines.append(f"  {op}: {fate}")
        for f in self.files:
            lines.append(f"  {f.path}: {'survived' if f.survived else 'vanished'}")
            lines.extend(f"    {c}" for c in f.changes)
        return "\n".join(lines)


class CrashSimLayer(OsLayer):
    """An ``OsLayer`` that remembers what is durable under ``root`` and can crash."""

    def __init__(self, root: str, *, seed: int | None = None,
                 crash_after_ops: int | None = None) -> None:
        if not isinstance(root, str | os.PathLike):
            raise TypeError(f"root must be a path, not {type(root).__name__}")
        if crash_after_ops is not None and (not isinstance(crash_after_ops, int)
                                            or crash_after_ops < 1):
            raise ValueError(f"crash_after_ops must be a positive int or None, got {crash_after_ops!r}")
        self.root = os.path.realpath(root)
        self.seed = seed
        self.crash_after_ops = crash_after_ops
        self._cond = threading.Condition(threading.Lock())  # the one lock of the bookkeeping
        self._ops = 0
        self._crashed = False
        self._spent = False
        self._inflight = 0  # calls past the crash check that have not returned yet
        self._live: dict[str, _Node] = {}  # the namespace the process sees
        self._durable: dict[str, _Node] = {}  # the namespace a crash keeps for sure
        self._pending_dir_ops: list[_DirectoryOp] = []
        self._fds: dict[int, _File | str] = {}  # fd -> file, or the path of a directory

    # --- crash control ----------------------------------------------------------------------
    @property
    def ops(self) -> int:
        """Mutating calls performed so far (the crashing call is not counted)."""
        return self._ops

    @property
    def crashed(self) -> bool:
        return self._crashed

    def crash_now(self) -> None:
        """Crash at once: every later call raises ``SimulatedCrash``. Idempotent."""
        with self._cond:
            self._check_not_spent()
            self._crashed = True

    def apply_crash(self, rng: random.Random | None = None) -> CrashReport:
        """Rewrite the files under ``root`` to a random post-crash state (crashing first if
        that has not happened yet) and return what was chosen. The layer is spent after."""
        with self._cond:
            self._check_not_spent()
            self._crashed = True
            if not self._cond.wait_for(lambda: self._inflight == 0, APPLY_WAIT_SECONDS):
                raise RuntimeError(f"{self._inflight} OS calls still running "
                                   f"{APPLY_WAIT_SECONDS} s after the crash; stop the workload "
                                   "threads before apply_crash()")
            self._spent = True
            seed = None
            if rng is None:
                seed = self.seed if self.seed is not None else random.randrange(2**63)
                rng = random.Random(seed)
            namespace = dict(self._durable)
            dir_fates = []
            for op in self._pending_dir_ops:
                if rng.random() >= KEEP_DIRECTORY_OP_PROBABILITY:
                    dir_fates.append((op.describe(), "did not happen"))
                elif _apply_directory_op(namespace, op):
                    dir_fates.append((op.describe(), "happened"))
                else:
                    dir_fates.append((op.describe(), "could not happen (an earlier op did not)"))
            _prune_unreachable(namespace)
            files = self._all_files()
            where = {id(node): path for path, node in sorted(namespace.items())
                     if isinstance(node, _File)}
            contents: dict[int, bytearray] = {}
            file_fates = []
            for f in files:
                content, fates = _resolve_file(f, rng)
                survived = id(f) in where
                if survived:
                    contents[id(f)] = content
                file_fates.append(FileFate(where.get(id(f), self._last_name(f)), survived,
                                           tuple(fates)))
            self._materialize(namespace, contents)
            return CrashReport(seed, tuple(file_fates), tuple(dir_fates))

    # --- files ------------------------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self._enter(mutating=bool(flags & (os.O_CREAT | os.O_TRUNC)))
        try:
            tracked = self._tracked(path)
            if tracked is None:
                fd = super().open(path, flags, mode)
                with self._cond:
                    self._fds.pop(fd, None)
                return fd
            with self._cond:  # held across the real open: the snapshot must precede O_TRUNC
                node = self._touch(tracked)
                fd = super().open(path, flags, mode)
                if node is None and flags & os.O_CREAT:
                    node = self._live[tracked] = _File(tracked, bytearray())
                    self._pending_dir_ops.append(_DirectoryOp(
                        "create", (tracked,), node, frozenset([os.path.dirname(tracked)])))
                elif isinstance(node, _File) and flags & os.O_TRUNC \
                        and flags & os.O_ACCMODE != os.O_RDONLY:
                    node.add(_Truncate, 0)
                if isinstance(node, _File):
                    self._fds[fd] = node
                elif node is _DIRECTORY:
                    self._fds[fd] = tracked
                else:
                    self._fds.pop(fd, None)
                return fd
        finally:
            self._leave()

    def close(self, fd: int) -> None:
        # Allowed even after the crash or apply_crash: it writes nothing and frees the fd.
        with self._cond:
            self._fds.pop(fd, None)
        super().close(fd)

    def preadv(self, fd: int, buffers: Sequence[Buffer], offset: int) -> int:
        self._enter(mutating=False)
        try:
            return super().preadv(fd, buffers, offset)
        finally:
            self._leave()

    def pwritev(self, fd: int, buffers: Sequence[Buffer], offset: int) -> int:
        self._enter(mutating=True)
        try:
            with self._cond:
                node = self._node_of_fd(fd)
            n = super().pwritev(fd, buffers, offset)
            if isinstance(node, _File) and n > 0:
                data = b"".join(buffers)[:n]
                with self._cond:
                    node.add(_Write, offset, data)
            return n
        finally:
            self._leave()

    def fsync(self, fd: int) -> None:
        self._sync(fd)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._enter(mutating=True)
        try:
            with self._cond:
                node = self._node_of_fd(fd)
            super().ftruncate(fd, length)
            if isinstance(node, _File):
                with self._cond:
                    node.add(_Truncate, length)
        finally:
            self._leave()

    def file_size(self, fd: int) -> int:
        self._enter(mutating=False)
        try:
            return super().file_size(fd)
        finally:
            self._leave()

    def fadvise_willneed(self, fd: int, offset: int, length: int) -> None:
        self._enter(mutating=False)
        try:
            super().fadvise_willneed(fd, offset, length)
        finally:
            self._leave()

    def writeback(self, fd: int, offset: int, length: int) -> None:
        self._enter(mutating=False)
        try:
            super().writeback(fd, offset, length)  # a hint: it makes nothing durable
        finally:
            self._leave()

    # --- directories ------------------------------------------------------------------------
    def rename(self, src: str, dst: str) -> None:
        self._enter(mutating=True)
        try:
            s, d = self._tracked(src), self._tracked(dst)
            if s is None and d is None:
                super().rename(src, dst)
                return
            if s is None or d is None:
                raise ValueError(f"rename({src!r}, {dst!r}) crosses the simulated root "
                                 f"{self.root!r}; CrashSimLayer cannot model it")
            with self._cond:
                node = self._touch(s)
                self._touch(d)
                if node is _DIRECTORY:
                    raise NotImplementedError(f"rename({src!r}, {dst!r}): CrashSimLayer "
                                              "models renames of files only")
                super().rename(src, dst)
                if s == d or node is None:
                    return
                self._live[s] = None
                self._live[d] = node
                self._pending_dir_ops.append(_DirectoryOp(
                    "rename", (s, d), node, frozenset([os.path.dirname(s), os.path.dirname(d)])))
        finally:
            self._leave()

    def unlink(self, path: str) -> None:
        self._directory_op("unlink", path, super().unlink, None)

    def mkdir(self, path: str) -> None:
        self._directory_op("mkdir", path, super().mkdir, _DIRECTORY)

    def rmdir(self, path: str) -> None:
        self._directory_op("rmdir", path, super().rmdir, None)

    def exists(self, path: str) -> bool:
        self._enter(mutating=False)
        try:
            return super().exists(path)
        finally:
            self._leave()

    def listdir(self, path: str) -> list[str]:
        self._enter(mutating=False)
        try:
            return super().listdir(path)
        finally:
            self._leave()

    def fsync_directory(self, path: str) -> None:
        self._enter(mutating=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # fails as fsync would
            os.close(fd)
            with self._cond:
                self._sync_directory(os.path.realpath(path))
        finally:
            self._leave()

    # --- internals --------------------------------------------------------------------------
    def _enter(self, *, mutating: bool) -> None:
        with self._cond:
            self._check_not_spent()
            self._check_alive()
            if mutating:
                if self.crash_after_ops is not None and self._ops + 1 >= self.crash_after_ops:
                    self._crashed = True
                    raise SimulatedCrash(f"simulated crash at mutating call {self._ops + 1}")
                self._ops += 1
            self._inflight += 1

    def _leave(self) -> None:
        with self._cond:
            self._inflight -= 1
            if self._inflight == 0:
                self._cond.notify_all()

    def _check_alive(self) -> None:
        if self._crashed:
            raise SimulatedCrash(f"the simulated machine crashed (after {self._ops} mutating calls)")

    def _check_not_spent(self) -> None:
        if self._spent:
            raise RuntimeError("this CrashSimLayer was spent by apply_crash(); "
                               "install a plain OsLayer to reopen")

    def _tracked(self, path: str) -> str | None:
        real = os.path.realpath(path)
        if real == self.root or real.startswith(self.root + os.sep):
            return real
        return None

    def _touch(self, path: str) -> _Node:
        """The live node at ``path``; the first time, snapshot the real state as durable."""
        if path in self._live:
            return self._live[path]
        try:
            st = os.stat(path)
        except FileNotFoundError:
            node: _Node = None
        else:
            if stat.S_ISDIR(st.st_mode):
                node = _DIRECTORY
            else:
                with open(path, "rb") as f:  # the snapshot bypasses the layer
                    node = _File(path, bytearray(f.read()))
        self._live[path] = self._durable[path] = node
        return node

    def _node_of_fd(self, fd: int) -> _File | str | None:
        node = self._fds.get(fd)
        if node is not None:
            return node
        # Opened outside the layer (before install, or by os.open): find it by its path.
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        tracked = self._tracked(target) if not target.endswith(" (deleted)") else None
        if tracked is None:
            return None
        found = self._touch(tracked)
        return tracked if found is _DIRECTORY else found

    def _sync(self, fd: int) -> None:
        self._enter(mutating=True)
        try:
            os.fstat(fd)  # EBADF as the real sync would; the flush itself is simulated
            with self._cond:
                node = self._node_of_fd(fd)
                if isinstance(node, _File):
                    node.make_durable(node.seq)
                elif isinstance(node, str):
                    self._sync_directory(node)
        finally:
            self._leave()

    def _directory_op(self, kind: str, path: str, real_call, new_node: _Node) -> None:
        self._enter(mutating=True)
        try:
            tracked = self._tracked(path)
            if tracked is None:
                real_call(path)
                return
            with self._cond:
                node = self._touch(tracked)
                real_call(path)
                self._live[tracked] = new_node
                self._pending_dir_ops.append(_DirectoryOp(
                    kind, (tracked,), node if new_node is None else new_node,
                    frozenset([os.path.dirname(tracked)])))
        finally:
            self._leave()

    def _sync_directory(self, directory: str) -> None:
        """Commit the pending ops of ``directory`` whose directories are all synced now,
        with every earlier pending op on the same names (journal order)."""
        ready = False
        for op in self._pending_dir_ops:
            if directory in op.directories:
                op.synced.add(directory)
                ready = ready or op.synced >= op.directories
        if not ready:
            return
        commit: set[int] = set()
        names: set[str] = set()
        for i in range(len(self._pending_dir_ops) - 1, -1, -1):
            op = self._pending_dir_ops[i]
            if op.synced >= op.directories or names.intersection(op.paths):
                commit.add(i)
                names.update(op.paths)
        keep = []
        for i, op in enumerate(self._pending_dir_ops):
            if i in commit:
                applied = _apply_directory_op(self._durable, op)
                assert applied, f"a committed {op.describe()} could not apply to the durable state"
            else:
                keep.append(op)
        self._pending_dir_ops = keep

    def _all_files(self) -> list[_File]:
        seen: dict[int, _File] = {}
        for ns in (self._durable, self._live):
            for node in ns.values():
                if isinstance(node, _File):
                    seen.setdefault(id(node), node)
        for op in self._pending_dir_ops:
            if isinstance(op.node, _File):
                seen.setdefault(id(op.node), op.node)
        for node in self._fds.values():
            if isinstance(node, _File):
                seen.setdefault(id(node), node)
        return sorted(seen.values(), key=lambda f: (f.label, id(f)))

    def _last_name(self, f: _File) -> str:
        return next((p for p, node in self._live.items() if node is f), f.label)

    def _materialize(self, namespace: dict[str, _Node], contents: dict[int, bytearray]) -> None:
        """Make the real tree under the touched paths match ``namespace``."""
        paths = set(self._live) | set(namespace)
        for path in sorted(paths, key=lambda p: p.count(os.sep), reverse=True):
            want = namespace.get(path)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and want is not _DIRECTORY:
                shutil.rmtree(path)
            elif not is_dir and not isinstance(want, _File):
                os.unlink(path)
        for path in sorted(paths, key=lambda p: p.count(os.sep)):
            want = namespace.get(path)
            if want is _DIRECTORY:
                os.makedirs(path, exist_ok=True)
            elif isinstance(want, _File):
                with open(path, "wb") as f:  # rewriting bypasses the layer
                    f.write(contents[id(want)])


def _apply_change(content: bytearray, change: _Write | _Truncate) -> None:
    if isinstance(change, _Truncate):
        if change.length < len(content):
            del content[change.length:]
        else:
            content.extend(bytes(change.length - len(content)))
    else:
        _write_into(content, change.offset, change.data)


def _write_into(content: bytearray, offset: int, data: bytes) -> None:
    if offset > len(content):
        content.extend(bytes(offset - len(content)))
    content[offset:offset + len(data)] = data


def _chunks(offset: int, length: int, granularity: int) -> list[tuple[int, int]]:
    """The write's pieces, split at file offsets that are multiples of ``granularity``."""
    pieces = []
    pos, end = offset, offset + length
    while pos < end:
        stop = min(end, (pos // granularity + 1) * granularity)
        pieces.append((pos, stop))
        pos = stop
    return pieces


def _resolve_file(f: _File, rng: random.Random) -> tuple[bytearray, list[ChangeFate]]:
    """The file's post-crash bytes: its durable image plus a random fate per change."""
    content = bytearray(f.image)
    fates = []
    for change in f.pending:
        if isinstance(change, _Truncate):
            applied = rng.random() < KEEP_TRUNCATION_PROBABILITY
            if applied:
                _apply_change(content, change)
            fates.append(ChangeFate("truncate", change.length, 0,
                                    "applied" if applied else "not applied"))
            continue
        data, offset = change.data, change.offset
        fate = rng.choice(("kept", "dropped", "torn"))
        if fate == "torn":
            granularity = rng.choice(TORN_GRANULARITIES_BYTES)
            pieces = _chunks(offset, len(data), granularity)
            if len(pieces) < 2:  # one chunk cannot tear at this granularity
                fate = rng.choice(("kept", "dropped"))
            else:
                chosen = sorted(rng.sample(range(len(pieces)), rng.randrange(1, len(pieces))))
                for i in chosen:
                    start, stop = pieces[i]
                    _write_into(content, start, data[start - offset:stop - offset])
                fates.append(ChangeFate("write", offset, len(data), "torn", granularity,
                                        tuple(pieces[i][0] for i in chosen)))
                continue
        if fate == "kept":
            _write_into(content, offset, data)
        fates.append(ChangeFate("write", offset, len(data), fate))
    return content, fates


def _apply_directory_op(namespace: dict[str, _Node], op: _DirectoryOp) -> bool:
    """Apply ``op`` to ``namespace`` if its names are still as it found them; say whether it
    did. Parents are not checked: an entry whose directory is missing is pruned at the end."""
    path = op.paths[0]
    if op.kind in ("create", "mkdir"):
        if namespace.get(path) is not None:
            return False
        namespace[path] = op.node
    elif op.kind == "rename":
        dst = op.paths[1]
        if namespace.get(path) is not op.node or namespace.get(dst) is _DIRECTORY:
            return False
        namespace[path] = None
        namespace[dst] = op.node
    elif op.kind == "unlink":
        if namespace.get(path) is not op.node:
            return False
        namespace[path] = None
    elif op.kind == "rmdir":  # entries still under it are pruned with it
        if namespace.get(path) is not _DIRECTORY:
            return False
        namespace[path] = None
    else:
        raise AssertionError(f"unknown directory op {op.kind!r}")
    return True


def _prune_unreachable(namespace: dict[str, _Node]) -> None:
    """Entries under a directory that did not survive are lost with it."""
    for path in sorted(namespace, key=lambda p: p.count(os.sep)):
        if namespace[path] is None:
            continue
        parent = os.path.dirname(path)
        while parent != os.path.dirname(parent):
            if parent in namespace and namespace[parent] is not _DIRECTORY:
                namespace[path] = None
                break
            parent = os.path.dirname(parent)
