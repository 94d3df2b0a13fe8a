"""Completion callbacks and I/O targets, registered by small integer ids.

Upper layers register what they need (storage registers the smgr target and the smgr and
buffer callbacks); aio/ imports nothing above it.

Callback phases, in PostgreSQL's order (the callback added last runs first, so the lowest
layer, added last, sees the raw result first):
- ``stage(handle, data)``: before submission, in the issuer (e.g. pin the buffers).
- ``complete_shared(handle, prior, data) -> AioResult``: in whichever thread completes
  the I/O. Must not raise: failures go into the result. (An exception that escapes anyway is
  recorded as an ERROR result carrying it, never swallowed.)
- ``complete_local(handle, prior, data) -> AioResult``: in the owner, when it reclaims.
- ``report(ret, data)``: in the issuer, turns an ERROR (or unhandled PARTIAL) into the
  exception it raises.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slonik.aio.errors import DiskFullError, IOFailure
from slonik.aio.handle import AioResult, AioReturn, IoOp, ResultStatus

if TYPE_CHECKING:
    from slonik.aio.handle import Handle

MAX_CALLBACKS_PER_HANDLE = 4  # as PostgreSQL: bufmgr + smgr + room for two more layers
MAX_CALLBACK_ID = 63          # ids fit in 6 bits, as PgAioResult's id field


@dataclass(frozen=True)
class CallbackSet:
    name: str
    stage: Callable[[Handle, Any], None] | None = None
    complete_shared: Callable[[Handle, AioResult, Any], AioResult] | None = None
    complete_local: Callable[[Handle, AioResult, Any], AioResult] | None = None
    report: Callable[[AioReturn, Any], None] | None = None


@dataclass(frozen=True)
class TargetOps:
    """What an I/O is against. ``reopen(data) -> (path, open_flags)`` lets a worker open
    the file itself; ``describe(data) -> str`` names it in errors and in ``inflight()``."""

    name: str
    reopen: Callable[[Any], tuple[str, int]]
    describe: Callable[[Any], str]


_callbacks: dict[int, CallbackSet] = {}
_targets: dict[int, TargetOps] = {}


def register_callback(callback_id: int, callbacks: CallbackSet) -> None:
    if not isinstance(callback_id, int) or not 1 <= callback_id <= MAX_CALLBACK_ID:
        raise ValueError(f"callback_id must be an int in 1..{MAX_CALLBACK_ID}, got {callback_id!r}")
    existing = _callbacks.get(callback_id)
    if existing is not None and existing.name != callbacks.name:
        raise ValueError(f"callback id {callback_id} is taken by {existing.name!r}")
    _callbacks[callback_id] = callbacks


def callback_set(callback_id: int) -> CallbackSet:
    try:
        return _callbacks[callback_id]
    except KeyError:
        raise ValueError(f"no AIO callback registered with id {callback_id}") from None


def register_target(target_id: int, ops: TargetOps) -> None:
    if not isinstance(target_id, int) or not 1 <= target_id <= MAX_CALLBACK_ID:
        raise ValueError(f"target_id must be an int in 1..{MAX_CALLBACK_ID}, got {target_id!r}")
    existing = _targets.get(target_id)
    if existing is not None and existing.name != ops.name:
        raise ValueError(f"target id {target_id} is taken by {existing.name!r}")
    _targets[target_id] = ops


def target_ops(target_id: int) -> TargetOps:
    try:
        return _targets[target_id]
    except KeyError:
        raise ValueError(f"no AIO target registered with id {target_id}") from None


# --- the core's own pieces -----------------------------------------------------------------

def initial_result(handle: Handle) -> AioResult:
    """The result before any callback: ERROR for -errno, PARTIAL for a short transfer."""
    raw = handle.raw_result
    if raw < 0:
        return AioResult(ResultStatus.ERROR, 0, -raw, 0)
    if handle.op in (IoOp.READV, IoOp.WRITEV) and raw < handle.nbytes:
        return AioResult(ResultStatus.PARTIAL, raw, 0, 0)
    return AioResult(ResultStatus.OK, raw, 0, 0)


def run_stage(handle: Handle) -> None:
    for callback_id, data in reversed(handle.callbacks):
        stage = _callbacks[callback_id].stage
        if stage is not None:
            stage(handle, data)


def run_complete_shared(handle: Handle) -> AioResult:
    result = initial_result(handle)
    for callback_id, data in reversed(handle.callbacks):
        fn = _callbacks[callback_id].complete_shared
        if fn is None:
            continue
        try:
            result = fn(handle, result, data)
        except BaseException as exc:  # record, never swallow: the issuer raises it
            result = AioResult(ResultStatus.ERROR, 0, 0, callback_id, exc)
    return result


def run_complete_local(handle: Handle, result: AioResult) -> AioResult:
    for callback_id, data in reversed(handle.callbacks):
        fn = _callbacks[callback_id].complete_local
        if fn is None:
            continue
        try:
            result = fn(handle, result, data)
        except BaseException as exc:
            result = AioResult(ResultStatus.ERROR, 0, 0, callback_id, exc)
    return result


def report(ret: AioReturn, *, allow_partial: bool = False) -> AioResult:
    """Raise the exception an ERROR (or, unless allowed, a PARTIAL) result stands for."""
    assert ret.filled, "the I/O has not been reclaimed by its owner yet"
    result = ret.result
    if result.status in (ResultStatus.OK, ResultStatus.WARNING):
        return result
    if result.status == ResultStatus.PARTIAL and allow_partial:
        return result
    if isinstance(result.detail, BaseException):
        raise result.detail
    if result.callback_id:
        data = next((d for cid, d in ret.callbacks if cid == result.callback_id), None)
        fn = _callbacks[result.callback_id].report
        if fn is not None:
            fn(ret, data)
    # The core's own report, also the fallback when a callback's report did not raise.
    if result.status == ResultStatus.PARTIAL:
        if ret.op == IoOp.WRITEV:  # a short write with no error counts as a full disk
            raise DiskFullError(f"could not write {ret.target_desc}: wrote only "
                                f"{result.result} of {ret.nbytes} bytes")
        raise IOFailure(_errno.EIO, f"could not read {ret.target_desc}: read only "
                                    f"{result.result} of {ret.nbytes} bytes")
    err = result.error_data or _errno.EIO
    if err == _errno.ENOSPC:
        raise DiskFullError(ret.target_desc)
    raise IOFailure(err, ret.target_desc)


# --- a plain file target, for raw users (benchmarks, tests, WAL later) -------------------------

FILE_TARGET_ID = 1


def _file_describe(data: Any) -> str:
    path, _flags, offset = data
    return f"file {path!r} at offset {offset}"


register_target(FILE_TARGET_ID, TargetOps("file", reopen=lambda d: (d[0], d[1]),
                                          describe=_file_describe))
