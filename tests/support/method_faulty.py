"""A test-only io method that wraps a real one and injects faults at completion.

It is never chosen by ``io_method``: tests construct it explicitly
(``Aio(method=FaultInjectingMethod(make_method("worker")))``), so the public three stay
free of test hooks. Faults are named rules matched against each completed I/O:

- ``errno``: the I/O fails with that errno (EIO, ENOSPC, EROFS, ...);
- ``short``: the transfer stops after that many bytes (any byte boundary); for reads the
  unread tail of the buffers is zeroed so a wrongly-accepted buffer cannot hide;
- ``delay``: completion waits that many seconds (in a timer thread, so completions of a
  batch arrive out of order: reordering).

The real I/O has already happened when a rule fires, as with PostgreSQL's
``aio-process-completion-before-shared`` injection point.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from slonik.aio.handle import Handle, IoOp
from slonik.aio.method import IoMethod, IssuerContext


@dataclass
class FaultRule:
    """Fire on I/Os whose op matches (None: any) and whose target description contains
    ``match``; skip the first ``skip`` matches, then fire ``times`` times (None: forever)."""

    name: str
    op: IoOp | None = None
    match: str = ""
    errno: int | None = None
    short: int | None = None
    delay: float | None = None
    skip: int = 0
    times: int | None = 1
    fired: int = 0
    seen: int = 0

    def applies(self, h: Handle) -> bool:
        if self.op is not None and h.op != self.op:
            return False
        if self.match and self.match not in h.describe():
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        return self.times is None or self.fired < self.times


class FaultInjectingMethod(IoMethod):
    def __init__(self, inner: IoMethod) -> None:
        self.inner = inner
        self.name = inner.name
        self.wait_on_fd_before_close = inner.wait_on_fd_before_close
        self.completes_without_waiters = inner.completes_without_waiters
        self.links_submissions = inner.links_submissions
        self.rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def attach(self, aio, complete) -> None:
        super().attach(aio, complete)
        self.inner.attach(aio, self._intercept)

    def _intercept(self, h: Handle, raw: int) -> None:
        delay = None
        with self._lock:
            for rule in self.rules:
                if not rule.applies(h):
                    continue
                rule.fired += 1
                if rule.errno is not None:
                    raw = -rule.errno
                elif rule.short is not None and raw >= 0:
                    if h.op == IoOp.READV:
                        _zero_from(h.buffers, rule.short)
                    raw = min(raw, rule.short)
                if rule.delay is not None:
                    delay = rule.delay
        if delay is None:
            self.complete(h, raw)
            return
        timer = threading.Timer(delay, self.complete, args=(h, raw))
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    # Everything else is the inner method's.
    def init_issuer(self, ctx: IssuerContext) -> None:
        self.inner.init_issuer(ctx)

    def release_issuer(self, ctx: IssuerContext) -> None:
        self.inner.release_issuer(ctx)

    def needs_synchronous_execution(self, handle: Handle) -> bool:
        return self.inner.needs_synchronous_execution(handle)

    def submit(self, ctx: IssuerContext, handles: list[Handle]) -> None:
        self.inner.submit(ctx, handles)

    def execute_inline(self, handle: Handle) -> None:
        self.inner.execute_inline(handle)

    def wait_one(self, handle: Handle, generation: int) -> bool:
        return self.inner.wait_one(handle, generation)

    def forget_files(self) -> None:
        forget = getattr(self.inner, "forget_files", None)
        if forget is not None:
            forget()

    def shutdown(self) -> None:
        for t in list(self._timers):
            t.join()
        self.inner.shutdown()


def _zero_from(buffers: list, start: int) -> None:
    pos = 0
    for b in buffers:
        end = pos + len(b)
        if end > start:
            cut = max(0, start - pos)
            b[cut:] = bytes(len(b) - cut)
        pos = end
