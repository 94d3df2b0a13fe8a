"""Completion callbacks: the data class every callback id's behaviour comes from, and the
core's runners for each phase.

Ids live in the one table ``ids.py``. An issuer attaches a callback with
``handle.add_callback(CallbackId.X, data)``; ``data`` is an ``IoCallbacks`` whose
``callback_id`` is X, and its methods are the phases (a phase left ``None`` is skipped):

- ``stage(handle)``: before submission, in the issuer (e.g. pin the buffers).
- ``complete_shared(handle, prior) -> AioResult``: in whichever thread completes the I/O.
  Must not raise: failures go into the result. (An exception that escapes anyway is
  recorded as an ERROR result carrying it, never swallowed.)
- ``complete_local(handle, prior) -> AioResult``: in the owner, when it reclaims.
- ``report(ret)``: in the issuer (``AioReturn.raise_if_failed``), turns an ERROR (or an
  unhandled PARTIAL) naming this callback into the exception it raises.

Callbacks run in PostgreSQL's order: the one attached last runs first, so the lowest layer,
attached last, sees the raw result first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from slonik.aio.handle import AioResult, AioReturn, Handle, IoOp, ResultStatus, new_tuple
from slonik.aio.ids import CallbackId, TargetId

_OK = ResultStatus.OK
_TRANSFERS = (IoOp.READV, IoOp.WRITEV)

# Kept for callers that name the plain-file target by its old constant.
FILE_TARGET_ID = TargetId.FILE


class IoCallbacks:
    """The data of one callback of one I/O; a subclass sets ``callback_id`` and defines the
    phases it needs as methods (see the module docstring)."""

    __slots__ = ()
    callback_id: ClassVar[CallbackId]
    stage: Callable[[Handle], None] | None = None
    complete_shared: Callable[[Handle, AioResult], AioResult] | None = None
    complete_local: Callable[[Handle, AioResult], AioResult] | None = None
    report: Callable[[AioReturn], None] | None = None


def initial_result(handle: Handle) -> AioResult:
    """The result before any callback: ERROR for -errno, PARTIAL for a short transfer."""
    raw = handle.raw_result
    if raw < 0:
        return AioResult(ResultStatus.ERROR, 0, -raw, 0)
    if raw < handle.nbytes and handle.op in _TRANSFERS:
        return AioResult(ResultStatus.PARTIAL, raw, 0, 0)
    return new_tuple(AioResult, (_OK, raw, 0, 0, None))  # once per I/O: no Python __new__


def run_stage(handle: Handle) -> None:
    for _cid, data in reversed(handle.callbacks):
        stage = data.stage
        if stage is not None:
            stage(handle)


def run_complete_shared(handle: Handle) -> AioResult:
    return _run_completion(handle, initial_result(handle), local=False)


def run_complete_local(handle: Handle, result: AioResult) -> AioResult:
    return _run_completion(handle, result, local=True)


def _run_completion(handle: Handle, result: AioResult, *, local: bool) -> AioResult:
    for cid, data in reversed(handle.callbacks):
        fn = data.complete_local if local else data.complete_shared
        if fn is None:
            continue
        try:
            result = fn(handle, result)
        except BaseException as exc:  # record, never swallow: the issuer raises it
            result = AioResult(ResultStatus.ERROR, 0, 0, cid, exc)
    return result
