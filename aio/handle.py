"""AIO handles: the state machine, results, wait references.

A handle carries one I/O from acquisition to recycling:

    IDLE -> HANDED_OUT -> DEFINED -> STAGED -> SUBMITTED -> COMPLETED_IO
         -> COMPLETED_SHARED -> COMPLETED_LOCAL -> IDLE
    (HANDED_OUT -> IDLE when released unused)

Every reuse bumps ``generation`` (before the handle goes IDLE), so a ``WaitRef``
(index, generation) taken while the I/O was alive answers "done" forever after.
Only ``Handle._set_state`` changes ``state``, and it asserts the edge.

This module also owns what an I/O distils into (``AioResult``) and what the issuer gets
back (``AioReturn``, whose ``raise_if_failed`` is the report phase). Target and callback
ids are checked against the one table in ``ids.py``.
"""

from __future__ import annotations

import threading
from enum import IntEnum
from typing import Any, NamedTuple

from slonik.aio.errors import io_error
from slonik.aio.ids import TARGETS, CallbackId, TargetId, callback_id, target_id
from slonik.aio.transfer import short_transfer_error

MAX_CALLBACKS_PER_HANDLE = 4  # as PostgreSQL: bufmgr + smgr + room for two more layers


class HandleState(IntEnum):
    IDLE = 0
    HANDED_OUT = 1
    DEFINED = 2
    STAGED = 3
    SUBMITTED = 4
    COMPLETED_IO = 5
    COMPLETED_SHARED = 6
    COMPLETED_LOCAL = 7


S = HandleState

# The one table of legal transitions (README.md draws the same diagram).
LEGAL_TRANSITIONS: dict[HandleState, frozenset[HandleState]] = {
    S.IDLE: frozenset({S.HANDED_OUT}),
    S.HANDED_OUT: frozenset({S.DEFINED, S.IDLE}),
    S.DEFINED: frozenset({S.STAGED}),
    S.STAGED: frozenset({S.SUBMITTED}),
    S.SUBMITTED: frozenset({S.COMPLETED_IO}),
    S.COMPLETED_IO: frozenset({S.COMPLETED_SHARED}),
    S.COMPLETED_SHARED: frozenset({S.COMPLETED_LOCAL}),
    S.COMPLETED_LOCAL: frozenset({S.IDLE}),
}


class IoOp(IntEnum):
    INVALID = -1
    READV = 0      # values match SLK_OP_* in the io_uring binding
    WRITEV = 1
    FSYNC = 2
    FDATASYNC = 3


# Members read on every I/O, as module constants: an attribute of an Enum class goes
# through its metaclass's __getattr__ hook (~1 us each), a global does not.
_IDLE, _HANDED_OUT = S.IDLE, S.HANDED_OUT
_OP_INVALID, _OP_READV, _OP_WRITEV = IoOp.INVALID, IoOp.READV, IoOp.WRITEV


class HandleFlag(IntEnum):
    SYNCHRONOUS = 1  # the issuer waits at once: execute inline, skip the dispatch cost
    BUFFERED = 2     # goes through the page cache (not O_DIRECT); informational
    # Only where the method links submissions (IoMethod.links_submissions): the next I/O
    # of the same submission starts after this one completed in full, and is cancelled
    # (-ECANCELED) if this one failed or came back short.
    LINK_NEXT = 4
    ISSUER_WAITS = 8  # the issuer waits right after submitting: submit and wait in one call


class ResultStatus(IntEnum):
    UNKNOWN = 0
    OK = 1
    PARTIAL = 2
    WARNING = 3
    ERROR = 4


class AioResult(NamedTuple):
    """What a completion distilled. ``result`` is the callback's unit (bytes, blocks);
    ``error_data`` is the errno (or a callback-defined code); ``callback_id`` names the
    callback whose ``report`` turns this into the issuer's exception (0 = the core's)."""

    status: ResultStatus
    result: int
    error_data: int = 0
    callback_id: int = 0
    detail: Any = None  # callback-defined extra (e.g. per-block reasons, a caught exception)


_UNKNOWN_RESULT = AioResult(ResultStatus.UNKNOWN, 0)  # (immutable: shared by every return)


class WaitRef(NamedTuple):
    """Names one I/O without holding its handle; valid (answering done) after recycling."""

    index: int
    generation: int


# Building a NamedTuple through its class runs a Python-level __new__; the hot paths (a
# wait reference and a result per I/O) build the tuple directly, fields in order.
new_tuple = tuple.__new__


class AioReturn:
    """Filled by the owner when it reclaims the handle: the distilled result and (for a
    result that is not OK) the target's description, for the issuer to inspect or
    ``raise_if_failed()``."""

    __slots__ = ("result", "target_desc", "callbacks", "filled", "op", "nbytes")

    def __init__(self) -> None:
        self.result: AioResult = _UNKNOWN_RESULT
        self.target_desc = ""
        self.op = _OP_INVALID
        self.nbytes = 0
        self.callbacks: tuple[tuple[int, Any], ...] = ()
        self.filled = False

    def raise_if_failed(self, *, allow_partial: bool = False) -> AioResult:
        """The report phase: return an OK or WARNING result (PARTIAL too when allowed),
        else raise the exception it stands for. The callback named by the result reports
        first (its data's ``report``); the core's policy is the fallback."""
        assert self.filled, "the I/O has not been reclaimed by its owner yet"
        result = self.result
        status = result.status
        if status == ResultStatus.OK or status == ResultStatus.WARNING:
            return result
        if status == ResultStatus.PARTIAL and allow_partial:
            return result
        if isinstance(result.detail, BaseException):
            raise result.detail
        if result.callback_id:
            data = next((d for cid, d in self.callbacks if cid == result.callback_id), None)
            report = getattr(data, "report", None)
            if report is not None:
                report(self)
        if status == ResultStatus.PARTIAL:
            raise short_transfer_error(self.op == IoOp.WRITEV, result.result, self.nbytes,
                                       self.target_desc)
        raise io_error(result.error_data, self.target_desc)


class Handle:
    """One slot of an issuer's pool. Fields are reset on recycling. ``owner`` is the
    ``IssuerContext`` (``method.py``) whose pool holds it."""

    __slots__ = ("index", "owner", "generation", "state", "cond", "op", "fd", "offset",
                 "buffers", "nbytes", "target_id", "target_data", "callbacks", "handle_data",
                 "flags", "raw_result", "distilled", "report_return", "reaped", "submit_time",
                 "has_local")

    def __init__(self, index: int, owner: Any) -> None:
        self.index = index
        self.owner = owner
        self.generation = 1
        self.state = _IDLE
        self.cond = threading.Condition(threading.Lock())
        self._reset()

    def _reset(self) -> None:
        self.op = _OP_INVALID
        self.fd = -1
        self.offset = 0
        self.buffers: list = []
        self.nbytes = 0
        self.target_id = 0
        self.target_data: Any = None
        self.callbacks: list[tuple[int, Any]] = []
        self.has_local = False  # a callback has a complete_local phase (most have none)
        self.handle_data: Any = None
        self.flags = 0
        self.raw_result = 0
        self.distilled: AioResult | None = None
        self.report_return: AioReturn | None = None
        self.reaped = False
        self.submit_time = 0

    def _set_state(self, new: HandleState) -> None:
        assert new in LEGAL_TRANSITIONS[self.state], (
            f"illegal AIO handle transition {self.state.name} -> {new.name} (handle {self.index})")
        self.state = new

    # --- definition (issuer, while HANDED_OUT) -------------------------------------------
    def wait_ref(self) -> WaitRef:
        assert self.state == _HANDED_OUT, "take the wait reference before starting the I/O"
        return new_tuple(WaitRef, (self.index, self.generation))

    def set_flag(self, flag: HandleFlag) -> None:
        assert self.state == _HANDED_OUT, f"flags are set while HANDED_OUT, not {self.state.name}"
        self.flags |= flag

    def add_callback(self, cid: int, data: Any = None) -> None:
        """Attach callback ``cid`` (an ``ids.CallbackId``) with its data, an
        ``callbacks.IoCallbacks`` of that id whose methods are the phases."""
        assert self.state == _HANDED_OUT, "callbacks are attached while HANDED_OUT"
        if type(cid) is not CallbackId:
            cid = callback_id(cid)  # ValueError for an id not in the table
        if getattr(data, "callback_id", None) != cid:
            raise ValueError(f"the data of AIO callback {cid.name} must be an IoCallbacks "
                             f"with that callback_id, not {type(data).__name__}")
        if len(self.callbacks) >= MAX_CALLBACKS_PER_HANDLE:
            raise ValueError(f"at most {MAX_CALLBACKS_PER_HANDLE} callbacks per AIO handle")
        self.callbacks.append((cid, data))
        if getattr(data, "complete_local", None) is not None:
            self.has_local = True

    def set_target(self, tid: int, target_data: Any) -> None:
        """What the I/O is against: an ``ids.TargetId`` and the data its row describes."""
        assert self.state == _HANDED_OUT, "the target is set while HANDED_OUT"
        # ValueError for an id not in the table (a TargetId member is in it by definition)
        self.target_id = tid if type(tid) is TargetId else target_id(tid)
        self.target_data = target_data

    def set_handle_data(self, data: Any) -> None:
        assert self.state == _HANDED_OUT, "handle data is set while HANDED_OUT"
        self.handle_data = data

    def start_readv(self, fd: int, buffers: list, offset: int) -> None:
        self.owner.aio._start(self, _OP_READV, fd, buffers, offset)

    def start_writev(self, fd: int, buffers: list, offset: int) -> None:
        self.owner.aio._start(self, _OP_WRITEV, fd, buffers, offset)

    def start_fsync(self, fd: int, *, datasync: bool = False) -> None:
        self.owner.aio._start(self, IoOp.FDATASYNC if datasync else IoOp.FSYNC, fd, [], 0)

    def release(self) -> None:
        """Give back a handle that was handed out but not used."""
        self.owner.aio._release_unused(self)

    def describe(self) -> str:
        if self.target_id:
            return TARGETS[self.target_id].describe(self.target_data)
        return f"fd {self.fd} at offset {self.offset}"
