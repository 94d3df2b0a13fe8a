"""The sync method: every I/O executes inline, in the issuer, at staging time.

It is the reference the other methods are tested against: no threads, no rings, the same
callbacks in the same order.
"""

from __future__ import annotations

from slonik.aio.handle import Handle
from slonik.aio.method import IoMethod, IssuerContext


class SyncMethod(IoMethod):
    name = "sync"

    def needs_synchronous_execution(self, handle: Handle) -> bool:
        return True

    def submit(self, ctx: IssuerContext, handles: list[Handle]) -> None:
        raise AssertionError("the sync method executes at staging time; nothing is submitted")
