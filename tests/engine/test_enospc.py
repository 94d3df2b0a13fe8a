"""A real full disk (ENOSPC) under a Slonik database (DESIGN §7), on every io method.

Each test makes a 16 MiB ext4 on a loop device (``tests/support/loopdev.py``), opens a
database on it, then writes a filler file of zeros (synced) that leaves only ``ROOM_BYTES``
free, and fills that room through the database until a statement or commit fails:
- data files: transactions of table rows (inserted eagerly, so the insert itself extends
  the heap) alternating with transactions of new KV keys (applied at commit), after a
  warm-up that lets checkpoints recycle WAL segments, so the WAL needs no new space;
- the WAL: no checkpoints (``max_wal_size`` 1 GiB, ``checkpoint_timeout`` a day) and the same
  few keys overwritten with big values, vacuumed every VACUUM_EVERY_COMMITS commits so the
  KV store's B+tree keeps a steady size, so new 64 KiB WAL segments are what runs out of
  room. (Autovacuum alone does not hold it steady here: it estimates a store's keys from
  its size, and eight 1.8 KB values make that estimate far too high.)
A dict model holds every acknowledged (committed) write. Then the filler is deleted, the
database is reopened (recovery after a WAL failure) and must hold every acknowledged write,
and accept and keep new writes.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import dataclass, field

import pytest

from slonik import Database, DatabaseClosedError, DiskFullError, WalError
from tests.support.loopdev import LoopMount, make_ext4_image, unavailable_reason

IMAGE_BYTES = 16 << 20            # the whole file system (1 KiB blocks at this size)
ROOM_BYTES = 3 << 20              # free space the filler leaves for the database to fill
FILLER_CHUNK_BYTES = 1 << 20
MAX_FILL_TRANSACTIONS = 5_000     # ROOM_BYTES is full long before this many commits
ROWS_PER_TRANSACTION = 8
ROW_PAYLOAD_BYTES = 1500          # several rows per heap page
KEYS_PER_TRANSACTION = 8
VALUE_BYTES = 1500                # inline KV values (under the overflow threshold)
HOT_KEYS = 8                      # the keys the WAL fill overwrites
HOT_VALUE_BYTES = 1800
WARMUP_WAL_BYTES = 3 << 20        # overwrites before the filler: checkpoints recycle WAL
                                  # segments (data test), autovacuum cycles the heap (both)
VACUUM_EVERY_COMMITS = 8         # the hot keys' dead versions go before the tree grows
AFTER_FREE_TRANSACTIONS = 20      # writes that must succeed once space is freed
TABLE_COLUMNS = [("id", "int8"), ("payload", "bytea")]
# Data files: a checkpoint every max_wal_size / 2 = 1 MiB of WAL, i.e. every 2 segments of
# 512 KiB, and the WAL keeps 4 recycled spares (RECYCLED_SEGMENTS_MAX): once warmed up the
# WAL never creates a segment file again, so only the heap and the KV store's files grow.
DATA_SETTINGS = dict(wal_segment_size=512 * 1024, max_wal_size=2 * 1024 * 1024,
                     segment_size=128, shared_buffers=64, checkpoint_timeout=86400)
WAL_SETTINGS = dict(wal_segment_size=64 * 1024, max_wal_size=1 << 30, checkpoint_timeout=86400,
                    shared_buffers=1024)


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB ext4 on a loop device, mounted; yields its mount point."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"a real full disk needs a loop device: {reason}")
    image = str(tmp_path / "small.img")
    make_ext4_image(image, IMAGE_BYTES)
    with LoopMount(image, str(tmp_path / "mnt"), "defaults") as mount:
        yield mount.mountpoint


@dataclass
class Model:
    kv: dict[bytes, bytes] = field(default_factory=dict)
    rows: dict[int, bytes] = field(default_factory=dict)


def write_filler(directory: str, room_bytes: int) -> str:
    """A synced file of zeros taking all free space but ``room_bytes`` (root may use the
    reserved blocks too, so f_bfree is what is left for us)."""
    st = os.statvfs(directory)
    size = st.f_bfree * st.f_frsize - room_bytes
    assert size > 0, f"only {st.f_bfree * st.f_frsize} bytes free"
    path = os.path.join(directory, "filler")
    chunk = bytes(FILLER_CHUNK_BYTES)
    with open(path, "wb") as f:
        done = 0
        while done < size:
            done += f.write(chunk[:min(len(chunk), size - done)])
        f.flush()
        os.fsync(f.fileno())
    return path


def free_space(filler: str) -> None:
    os.unlink(filler)
    fd = os.open(os.path.dirname(filler), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_state(db: Database) -> Model:
    """Everything the database shows: the KV store (structure checked) and the table."""
    model = Model()
    relations = db.relations()
    if "s" in relations:
        store = db.kv("s")
        store.check()
        model.kv = dict(store.items())
    if "t" in relations:
        for row_id, payload in db.table("t").scan():
            assert row_id not in model.rows, f"row {row_id} is in the table twice"
            model.rows[row_id] = payload
    return model


def enospc_in_chain(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is an ENOSPC OSError."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def describe(actual: Model, expected: Model) -> str:
    parts = []
    for what, a, e in (("keys", actual.kv, expected.kv), ("rows", actual.rows, expected.rows)):
        missing = [k for k in e if k not in a]
        wrong = [k for k in e if k in a and a[k] != e[k]]
        extra = [k for k in a if k not in e]
        parts.append(f"{what}: {len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} with "
                     f"another value, {len(extra)} unexpected (e.g. {extra[:3]})")
    return "; ".join(parts)


def write_more(db: Database, model: Model, rng: random.Random, first_id: int) -> None:
    """AFTER_FREE_TRANSACTIONS transactions of rows and new keys; they must all commit."""
    store, table = db.kv("s"), db.table("t")
    for n in range(AFTER_FREE_TRANSACTIONS):
        rows = {first_id + n * ROWS_PER_TRANSACTION + i: rng.randbytes(ROW_PAYLOAD_BYTES)
                for i in range(ROWS_PER_TRANSACTION)}
        puts = {b"after/%d/%d" % (first_id, n * KEYS_PER_TRANSACTION + i): rng.randbytes(VALUE_BYTES)
                for i in range(KEYS_PER_TRANSACTION)}
        with db.transaction():
            for row_id, payload in rows.items():
                table.insert((row_id, payload))
            for k, v in puts.items():
                store[k] = v
        model.rows.update(rows)
        model.kv.update(puts)


def reopen_and_verify(path: str, io_method: str, settings: dict, model: Model,
                      failed: Model | None) -> Model:
    """Open (recover), compare with the model — the failed transaction, when its outcome is
    unknown (``failed``), may be there as a whole — and return what the database holds."""
    with Database.open(path, io_method=io_method, **settings) as db:
        actual = read_state(db)
    if actual != model:
        assert failed is not None, f"after reopening: {describe(actual, model)}"
        with_failed = Model({**model.kv, **failed.kv}, {**model.rows, **failed.rows})
        assert actual == with_failed, f"after reopening: {describe(actual, model)}"
    return actual


def close_on_full_disk(db: Database) -> DiskFullError | None:
    """close() while the disk is still full. Its shutdown checkpoint may fail with
    DiskFullError when it replaces the control file (write a temporary file, rename: that
    needs one free block); the Database is closed and its lock released either way, and
    the next open recovers from the previous checkpoint. Any other failure propagates."""
    try:
        db.close()
    except DiskFullError as exc:
        assert db.closed, "close() failed and left the Database open"
        return exc
    return None


def warm_up_wal(db: Database, rng: random.Random, model: Model, wal_bytes: int) -> None:
    """Overwrite HOT_KEYS keys until about ``wal_bytes`` of WAL were written (a few
    checkpoints and recycled segments; autovacuum keeps the heap small)."""
    store = db.kv("s")
    start = db.stats().wal.insert_lsn
    commits = 0
    while db.stats().wal.insert_lsn - start < wal_bytes:
        puts = {b"hot/%d" % i: rng.randbytes(HOT_VALUE_BYTES) for i in range(HOT_KEYS)}
        with db.transaction():
            for k, v in puts.items():
                store[k] = v
        model.kv.update(puts)
        commits += 1
        if commits % VACUUM_EVERY_COMMITS == 0:
            db.vacuum()


def fill_data_files(db: Database, rng: random.Random, model: Model) -> tuple[BaseException, Model]:
    """Commit transactions of new rows / new keys until one fails; returns the exception
    and what the failed transaction tried to write."""
    store, table = db.kv("s"), db.table("t")
    for n in range(MAX_FILL_TRANSACTIONS):
        attempt = Model()
        if n % 2 == 0:
            attempt.rows = {n * ROWS_PER_TRANSACTION + i: rng.randbytes(ROW_PAYLOAD_BYTES)
                            for i in range(ROWS_PER_TRANSACTION)}
        else:
            attempt.kv = {b"k/%06d/%d" % (n, i): rng.randbytes(VALUE_BYTES)
                          for i in range(KEYS_PER_TRANSACTION)}
        try:
            with db.transaction():
                for row_id, payload in attempt.rows.items():
                    table.insert((row_id, payload))
                for k, v in attempt.kv.items():
                    store[k] = v
        except Exception as exc:  # judged by the caller
            return exc, attempt
        model.rows.update(attempt.rows)
        model.kv.update(attempt.kv)
    raise AssertionError(f"{MAX_FILL_TRANSACTIONS} transactions did not fill {ROOM_BYTES} bytes")


def test_full_disk_on_data_files(small_fs, io_method):
    """Data-file growth fills the disk: the transaction whose heap extension hits ENOSPC
    fails with DiskFullError (errno ENOSPC, message naming the relation's file); the
    Database stays usable (a data-file write failure is not fatal): it still shows exactly
    the acknowledged writes, without the failed transaction. close() releases it (its
    shutdown checkpoint may itself fail with DiskFullError: see close_on_full_disk). After the
    filler is deleted, it reopens with every acknowledged write, commits
    AFTER_FREE_TRANSACTIONS more transactions, and a further reopen shows them all."""
    path = os.path.join(small_fs, "db")
    rng = random.Random(11)
    model = Model()
    db = Database.open(path, io_method=io_method, **DATA_SETTINGS)
    try:
        db.create_table("t", TABLE_COLUMNS)
        warm_up_wal(db, rng, model, WARMUP_WAL_BYTES)
        filler = write_filler(small_fs, ROOM_BYTES)
        exc, failed = fill_data_files(db, rng, model)
        assert isinstance(exc, DiskFullError), f"expected DiskFullError, got {exc!r}"
        assert exc.errno == errno.ENOSPC, exc
        assert "No space left on device" in str(exc) and os.path.join(path, "base") in str(exc), \
            f"the message should name the data file and the cause: {exc}"
        assert len(model.rows) + len(model.kv) > 0, "nothing was committed before the disk filled"
        actual = read_state(db)
        assert actual == model, f"in the same Database after ENOSPC: {describe(actual, model)}"
    finally:
        closing = close_on_full_disk(db)
    print(f"{io_method}: {len(model.rows)} rows and {len(model.kv)} keys acknowledged, then "
          f"{'rows' if failed.rows else 'keys'} failed: {exc}; close(): {closing or 'ok'}")
    free_space(filler)
    reopen_and_verify(path, io_method, DATA_SETTINGS, model, None)
    with Database.open(path, io_method=io_method, **DATA_SETTINGS) as db:
        write_more(db, model, rng, 10_000_000)
    reopen_and_verify(path, io_method, DATA_SETTINGS, model, None)


@dataclass
class WalFill:
    db: Database
    model: Model
    failed: Model
    exc: BaseException
    filler: str
    commits: int            # transactions acknowledged after the filler was written


def fill_wal(directory: str, io_method: str) -> WalFill:
    """Open a database, warm it up, leave ROOM_BYTES free, then overwrite HOT_KEYS keys in
    transactions until a commit fails. The caller closes the returned Database."""
    rng = random.Random(23)
    model = Model()
    db = Database.open(os.path.join(directory, "db"), io_method=io_method, **WAL_SETTINGS)
    try:
        store = db.kv("s")
        warm_up_wal(db, rng, model, WARMUP_WAL_BYTES)
        filler = write_filler(directory, ROOM_BYTES)
        for commits in range(MAX_FILL_TRANSACTIONS):
            attempt = Model(kv={b"hot/%d" % i: rng.randbytes(HOT_VALUE_BYTES)
                                for i in range(HOT_KEYS)})
            try:
                with db.transaction():
                    for k, v in attempt.kv.items():
                        store[k] = v
            except Exception as exc:  # judged by the caller
                return WalFill(db, model, attempt, exc, filler, commits)
            model.kv.update(attempt.kv)
            if (commits + 1) % VACUUM_EVERY_COMMITS == 0:
                try:
                    db.vacuum()             # its PRUNE records are WAL too
                except Exception as exc:  # judged by the caller, like a failed commit
                    return WalFill(db, model, Model(), exc, filler, commits + 1)
    except BaseException:
        db.close()
        raise
    db.close()
    raise AssertionError(f"{MAX_FILL_TRANSACTIONS} transactions did not fill {ROOM_BYTES} bytes")


def test_full_disk_on_the_wal(small_fs, io_method):
    """WAL growth fills the disk: the commit whose WAL flush hits ENOSPC fails (ENOSPC in
    its exception chain, the message naming the WAL) and the Database then refuses all
    further work — writes, reads, checkpoints — with DatabaseClosedError (DESIGN §7: a
    failed WAL write is fatal). close() still releases it. After the filler is deleted the
    database reopens (crash recovery) with every acknowledged write (the failed commit's
    outcome is unknown: all of it or none), commits AFTER_FREE_TRANSACTIONS more
    transactions, and a further reopen shows them all."""
    fill = fill_wal(small_fs, io_method)
    try:
        assert isinstance(fill.exc, DiskFullError | WalError), f"got {fill.exc!r}"
        assert enospc_in_chain(fill.exc), f"ENOSPC is not the reported cause: {fill.exc!r}"
        assert "WAL" in str(fill.exc), f"the message should name the WAL: {fill.exc}"
        with pytest.raises(DatabaseClosedError):
            fill.db.kv("s")[b"after the failure"] = b"x"
        with pytest.raises(DatabaseClosedError):
            dict(fill.db.kv("s").items())
        with pytest.raises(DatabaseClosedError):
            fill.db.checkpoint()
    finally:
        fill.db.close()
    assert fill.commits > 0, "the disk was full before the WAL fill committed anything"
    print(f"{io_method}: {fill.commits} transactions acknowledged, then the commit failed: "
          f"{fill.exc!r}")
    free_space(fill.filler)
    path = os.path.join(small_fs, "db")
    model = Model(dict(reopen_and_verify(path, io_method, WAL_SETTINGS, fill.model,
                                         fill.failed).kv))
    with Database.open(path, io_method=io_method, **WAL_SETTINGS) as db:
        db.create_table("t", TABLE_COLUMNS)
        write_more(db, model, random.Random(5), 20_000_000)
    reopen_and_verify(path, io_method, WAL_SETTINGS, model, None)


def test_full_disk_on_the_wal_raises_disk_full_error(small_fs, io_method):
    """DESIGN §7: the commit that hits a full disk fails with DiskFullError, also when it is
    the WAL that ran out of room (the Database then refuses further work, as checked by
    test_full_disk_on_the_wal). Same fill; here only the exception's type is checked."""
    fill = fill_wal(small_fs, io_method)
    fill.db.close()
    assert enospc_in_chain(fill.exc), f"the fill did not end in ENOSPC: {fill.exc!r}"
    assert isinstance(fill.exc, DiskFullError), \
        f"a full disk under the WAL raised {type(fill.exc).__name__}: {fill.exc}"
