"""A flush (checkpoint) never waits for a content lock while it holds another: a writer
that holds page B exclusively and then asks for page A, which the flush has taken shared
for its write, finishes, and the flush writes both (real threads, every io method)."""

import threading
import time

from slonik.storage.smgr import Fork

from tests.storage.test_bufmgr import REL, env  # noqa: F401  (the fixture)

JOIN_S = 20.0        # a deadlock shows as threads still running after this
LET_FLUSH_CLAIM_S = 0.3


def test_flush_defers_a_locked_page_instead_of_waiting_holding_another(env):  # noqa: F811
    """Blocks 0 and 5 dirty. The writer holds 5 exclusively; the flush starts, claims 0
    for its write (shared) and meets 5 locked; the writer then locks 0 exclusively (as a
    B+tree split takes the metapage last). With the flush waiting for 5 while holding 0
    the two would wait for each other forever; deferring 5 lets 0's write finish, the
    writer go on, and the flush write 5 afterwards."""
    bm, _ = env
    a = bm.read_buffer(REL, Fork.MAIN, 0)
    b = bm.read_buffer(REL, Fork.MAIN, 5)
    for buf in (a, b):
        bm.lock_exclusive(buf)
        bm.mark_dirty(buf)
        bm.unlock_exclusive(buf)
    bm.lock_exclusive(b)                    # the writer's first page
    written: list[int] = []
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            written.append(bm.flush_all())
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    def writer() -> None:
        try:
            time.sleep(LET_FLUSH_CLAIM_S)   # the flush has claimed block 0 by now
            bm.lock_exclusive(a)            # ... and the writer's second page
            bm.mark_dirty(a)
            bm.unlock_exclusive(a)
            bm.unlock_exclusive(b)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flush, daemon=True),
               threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "flush and writer deadlocked"
    assert errors == []
    assert written and written[0] >= 2
    bm.flush_all()                          # block 0 was dirtied again by the writer
    assert not bm.is_dirty(a) and not bm.is_dirty(b)
    bm.unpin_many([a, b])
    bm.check()
