"""``slonik bench wal``: the WAL writer and reader per io method, against fio's fdatasync rate.

In one invocation, for each io method (``wal.xlog.Wal`` writes through AIO), ``--runs``
times in alternating method order, medians reported:

- insert: one thread inserts records of ``--record-size`` payload bytes (resource manager
  ``test``) for ``--seconds`` without asking for a flush; the flushes the ring forces when
  it is full (write + fdatasync of ``--wal-buffers`` pages) and the zero-filling of new
  segment files are part of the cost. Figures: records/s and MB/s of encoded records.
- commit 1 / commit 8: 1 thread, then 8 threads, each looping ``insert`` + ``flush(end)``
  (a durable commit each). Figures: commits/s, WAL syncs (fdatasync calls), write + sync
  cycles, and the group-commit ratio commits/sync. The first segment exists before the
  clock starts, so these measure commits, not segment creation.
- replay: ``--replay-size`` bytes of WAL of the same records are built once; each run times
  one ``WalReader`` pass that reads, checks and decodes every record and calls its resource
  manager's redo, a no-op (``RM_TEST``, registered here if nothing else owns it). The reader
  reads segment files with preadv through ``aio.osfile`` (just written, so from the page
  cache): this figure is CPU-bound decoding and does not depend on the io method.
- device baseline, same file system (``--dir``), same runs: ``fio --rw=write --bs=8k
  --size=64m --fdatasync=1 --ioengine=sync`` (8 KiB sequential writes, fdatasync after
  each) gives syncs/s; ``ratio`` = commits/s over fio's syncs/s. A second fio job with
  ``--size=8k`` rewrites one 8 KiB block with fdatasync after each, the pattern of a WAL
  writer that commits small records (every commit rewrites the partial last page).

Units: MB/s is 10^6 bytes/s; commits/s counts flush() calls that returned durable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from types import SimpleNamespace

from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.engine.tools.bench import (
    ALL_METHODS,
    availability_notes,
    method_availability,
    parse_bytes,
    parse_methods,
    positive_float,
    positive_int,
    run_bench_command,
)
from slonik.engine.tools.fio import FioError, fio_command, fio_status, run_fio_job
from slonik.engine.wal_build import C_GROUP_FLUSH_FOR, C_RECORD_WRITER_FOR
from slonik.engine.wal_decode import C_SCANNER
from slonik.wal.reader import WalReader
from slonik.wal.record import WalRecord
from slonik.wal.rmgr import RM_TEST, ResourceManager, find_rmgr, get_rmgr, register_rmgr
from slonik.wal.walpage import WAL_PAGE_SIZE, WAL_SEGMENT_SIZE_DEFAULT, check_segment_size
from slonik.wal.xlog import (
    WAL_BUFFERS_DEFAULT_PAGES,
    WAL_BUFFERS_MAX_PAGES,
    WAL_BUFFERS_MIN_PAGES,
    Wal,
)

DEFAULT_DIR = "./bench-data/wal"
DEFAULT_RECORD_SIZE = 100             # payload bytes: a small row change
RECORD_SIZE_MAX_BYTES = 64 * 1024     # payloads beyond this are not what a commit logs
DEFAULT_REPLAY_SIZE = 64 << 20        # bytes of WAL replayed per run (~0.5 M records)
REPLAY_SIZE_MIN_BYTES = 64 << 10
REPLAY_SIZE_MAX_BYTES = 4 << 30
COMMIT_THREADS = (1, 8)
INSERTS_PER_CLOCK_READ = 256          # the insert loop reads the clock this seldom
AIO_CONCURRENCY = 16                  # a flush has at most a few writes and syncs in flight
FIO_FILE = "fio-wal.dat"
FIO_REWRITE_FILE = "fio-wal-rewrite.dat"
FIO_SIZE = "64m"
FIO_REWRITE_SIZE = "8k"
INFO_BENCH = 0x00



# --- the no-op resource manager ----------------------------------------------------------

def _bench_redo(ctx, rr) -> None:
    """Replay cost without page work: the record was read, checked and decoded already."""


def _bench_describe(rec: WalRecord) -> str:
    return f"bench record, {len(rec.payload)} payload bytes"


BENCH_RMGR = ResourceManager(RM_TEST, "test", _bench_redo, _bench_describe)


def _redo_lookup():
    """The lookup replay dispatches through: the registry when RM_TEST is (or can be made)
    the bench's no-op manager; a table of just that manager when a test suite in this
    process owns RM_TEST (registration is for life, see wal/rmgr.py)."""
    rm = find_rmgr(RM_TEST)
    if rm is None:
        try:
            register_rmgr(BENCH_RMGR)
        except ValueError:   # the name "test" is taken under another id
            pass
        rm = find_rmgr(RM_TEST)
    if rm is BENCH_RMGR:
        return get_rmgr
    return {RM_TEST: BENCH_RMGR}.__getitem__


# --- arguments ---------------------------------------------------------------------------

def _replay_size(text: str) -> int:
    size = parse_bytes(text)
    if not REPLAY_SIZE_MIN_BYTES <= size <= REPLAY_SIZE_MAX_BYTES:
        raise argparse.ArgumentTypeError(
            f"replay size must be {REPLAY_SIZE_MIN_BYTES >> 10} KiB..{REPLAY_SIZE_MAX_BYTES >> 30}"
            f" GiB, got {text!r}")
    return size


def _segment_size(text: str) -> int:
    try:
        return check_segment_size(parse_bytes(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _record_size(text: str) -> int:
    size = parse_bytes(text)
    if size > RECORD_SIZE_MAX_BYTES:
        raise argparse.ArgumentTypeError(
            f"record size must be at most {RECORD_SIZE_MAX_BYTES} bytes, got {text!r}")
    return size


def _wal_buffers(text: str) -> int:
    pages = int(text)
    if not WAL_BUFFERS_MIN_PAGES <= pages <= WAL_BUFFERS_MAX_PAGES:
        raise argparse.ArgumentTypeError(
            f"wal_buffers must be {WAL_BUFFERS_MIN_PAGES}..{WAL_BUFFERS_MAX_PAGES} pages, "
            f"got {text!r}")
    return pages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help=f"scratch directory on the file system to measure; WAL and fio "
                             f"files go here (default {DEFAULT_DIR})")
    parser.add_argument("--seconds", type=positive_float, default=2.0,
                        help="length of each insert/commit/fio measurement (default 2)")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="measurements of each kind; the median is reported (default 3)")
    parser.add_argument("--record-size", type=_record_size, default=DEFAULT_RECORD_SIZE,
                        help=f"payload bytes per record (default {DEFAULT_RECORD_SIZE})")
    parser.add_argument("--replay-size", type=_replay_size, default=DEFAULT_REPLAY_SIZE,
                        help="WAL bytes built once and replayed per run (default 64M)")
    parser.add_argument("--wal-segment-size", type=_segment_size,
                        default=WAL_SEGMENT_SIZE_DEFAULT,
                        help="WAL segment file size (default 16M)")
    parser.add_argument("--wal-buffers", type=_wal_buffers, default=WAL_BUFFERS_DEFAULT_PAGES,
                        help=f"WAL buffer pages of {WAL_PAGE_SIZE} bytes "
                             f"(default {WAL_BUFFERS_DEFAULT_PAGES})")
    parser.add_argument("--methods", type=parse_methods, default=None,
                        help="comma-separated io methods (default: sync,worker,io_uring, "
                             "those available)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# --- scratch directories -----------------------------------------------------------------

def _fresh_dir(path: str) -> str:
    """An empty directory at ``path`` (a leftover from an interrupted run is emptied)."""
    if osfile.exists(path):
        _remove_dir(path)
    osfile.mkdir(path)
    return path


def _remove_dir(path: str) -> None:
    """Remove a WAL directory (flat: segment files only)."""
    for name in osfile.listdir(path):
        osfile.unlink(os.path.join(path, name))
    osfile.rmdir(path)


def _make_parents(path: str) -> None:
    path = os.path.abspath(path)
    missing = []
    while not osfile.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        osfile.mkdir(p)


# --- measurements ------------------------------------------------------------------------

def _open_wal(aio: Aio, wal_dir: str, args: argparse.Namespace) -> Wal:
    """The WAL as a Database opens it: C record writers and C group commit (where built)."""
    return Wal(wal_dir, aio, wal_segment_size=args.wal_segment_size,
               wal_buffers=args.wal_buffers, record_writer_for=C_RECORD_WRITER_FOR,
               group_flush_for=C_GROUP_FLUSH_FOR)


def _payload(size: int) -> bytes:
    return bytes((i * 37 + 11) % 251 + 1 for i in range(size))


def measure_insert(aio: Aio, wal_dir: str, args: argparse.Namespace) -> dict:
    """One thread inserts for ``args.seconds``, never asking for a flush."""
    _fresh_dir(wal_dir)
    wal = _open_wal(aio, wal_dir, args)
    try:
        payload = _payload(args.record_size)
        insert = wal.insert
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + args.seconds
        while True:
            for _ in range(INSERTS_PER_CLOCK_READ):
                insert(RM_TEST, INFO_BENCH, n + 1, payload)
                n += 1
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - t0
        s = wal.stats()
    finally:
        wal.close()
        _remove_dir(wal_dir)
    return {"records_s": n / elapsed, "mb_s": s.record_bytes / elapsed / 1e6,
            "records": n, "seconds": elapsed, "ring_flushes": s.buffer_full_flushes,
            "syncs": s.syncs, "segments_created": s.segments_created}


def measure_commits(aio: Aio, wal_dir: str, threads: int, args: argparse.Namespace) -> dict:
    """``threads`` threads each loop insert + flush(end) for ``args.seconds``."""
    _fresh_dir(wal_dir)
    wal = _open_wal(aio, wal_dir, args)
    try:
        payload = _payload(args.record_size)
        _, end = wal.insert(RM_TEST, INFO_BENCH, 1, payload)
        wal.flush(end)            # the first segment exists before the clock starts
        before = wal.stats()
        counts = [0] * threads
        errors: list[BaseException] = []
        start = threading.Barrier(threads + 1)
        deadline = [0.0]

        def committer(k: int) -> None:
            try:
                insert, flush = wal.insert, wal.flush
                xid = 1 + k
                start.wait()
                n = 0
                while time.perf_counter() < deadline[0]:
                    _, end = insert(RM_TEST, INFO_BENCH, xid, payload)
                    flush(end)
                    n += 1
                counts[k] = n
            except BaseException as exc:  # re-raised in the caller below
                errors.append(exc)
                start.abort()

        workers = [threading.Thread(target=committer, args=(k,), name=f"bench-commit-{k}")
                   for k in range(threads)]
        for w in workers:
            w.start()
        t0 = time.perf_counter()
        deadline[0] = t0 + args.seconds
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        after = wal.stats()
    finally:
        wal.close()
        _remove_dir(wal_dir)
    commits = sum(counts)
    syncs = after.syncs - before.syncs
    flushes = after.flushes - before.flushes
    return {"commits_s": commits / elapsed, "syncs_s": syncs / elapsed, "commits": commits,
            "syncs": syncs, "flushes": flushes,
            "group_joins": after.group_joins - before.group_joins,
            "commits_per_sync": commits / syncs if syncs else None,
            "syncs_per_flush": syncs / flushes if flushes else None,
            "write_bytes_per_flush": (after.write_bytes - before.write_bytes) / flushes
            if flushes else None,
            "ms_per_flush": (after.sync_ns - before.sync_ns) / flushes / 1e6 if flushes else None,
            "seconds": elapsed}


def build_replay_wal(aio: Aio, wal_dir: str, args: argparse.Namespace) -> dict:
    """Fill ``wal_dir`` with ``args.replay_size`` bytes of test records, made durable."""
    _fresh_dir(wal_dir)
    wal = _open_wal(aio, wal_dir, args)
    try:
        payload = _payload(args.record_size)
        start_lsn = wal.insert_lsn
        stop = start_lsn + args.replay_size
        n = 0
        end = start_lsn
        t0 = time.perf_counter()
        while end < stop:
            _, end = wal.insert(RM_TEST, INFO_BENCH, n + 1, payload)
            n += 1
        wal.flush(end)
        elapsed = time.perf_counter() - t0
    finally:
        wal.close()
    return {"start_lsn": start_lsn, "end_lsn": end, "records": n, "build_seconds": elapsed}


def measure_replay(wal_dir: str, built: dict, args: argparse.Namespace) -> dict:
    """One reader pass over the built WAL, dispatching every record to its redo; records
    checked a chunk at a time by the C scanner when it is built, as recovery reads them."""
    lookup = _redo_lookup()
    ctx = SimpleNamespace(state={})
    reader = WalReader(wal_dir, args.wal_segment_size, built["start_lsn"],
                       check_middle_corruption=True, scanner=C_SCANNER)
    n = 0
    t0 = time.perf_counter()
    for rr in reader:
        lookup(rr.record.rmgr).redo(ctx, rr)
        n += 1
    elapsed = time.perf_counter() - t0
    if n != built["records"] or reader.end_lsn != built["end_lsn"]:
        raise AssertionError(f"replay read {n} records to {reader.end_lsn}, built "
                             f"{built['records']} to {built['end_lsn']}: {reader.stop_reason}")
    nbytes = reader.end_lsn - built["start_lsn"]
    return {"mb_s": nbytes / elapsed / 1e6, "records_s": n / elapsed, "records": n,
            "bytes": nbytes, "seconds": elapsed}


# --- fio ---------------------------------------------------------------------------------

def fio_sync_options(path: str, size: str, seconds: float) -> list[str]:
    return [f"--filename={path}", "--rw=write", "--bs=8k", f"--size={size}", "--fdatasync=1",
            "--ioengine=sync", f"--runtime={max(1, round(seconds * 1000))}ms", "--time_based"]


def fio_sync_command(path: str, size: str, seconds: float) -> list[str]:
    """The fio command line of the baseline (for the report)."""
    return fio_command(fio_sync_options(path, size, seconds))


def run_fio_sync(path: str, size: str, seconds: float) -> dict:
    """8 KiB writes with fdatasync after each; syncs/s = writes/s."""
    job = run_fio_job(fio_sync_options(path, size, seconds), seconds=seconds)
    write = job["write"]
    if write["total_ios"] <= 0:
        raise FioError("fio completed no writes")
    sync_lat = job.get("sync", {}).get("lat_ns", {}).get("mean")
    return {"syncs_s": write["iops"], "writes": write["total_ios"],
            "seconds": write["runtime"] / 1000,
            "sync_us_mean": sync_lat / 1000 if sync_lat else None}


# --- the command -------------------------------------------------------------------------

def _median(samples: list[dict], keys: tuple[str, ...]) -> dict:
    out: dict = {}
    for k in keys:
        values = [s[k] for s in samples if s[k] is not None]
        out[k] = statistics.median(values) if values else None
    out["runs"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
                   for s in samples]
    return out


INSERT_KEYS = ("records_s", "mb_s")
COMMIT_KEYS = ("commits_s", "syncs_s", "commits_per_sync", "syncs_per_flush",
               "write_bytes_per_flush", "ms_per_flush")
REPLAY_KEYS = ("mb_s", "records_s")
FIO_KEYS = ("syncs_s", "sync_us_mean")


def run_wal_bench(args: argparse.Namespace, log=None) -> dict:
    """Run the benchmark described by ``args``; returns the JSON-able report."""
    log = log or (lambda msg: None)
    requested = args.methods or list(ALL_METHODS)
    methods, usable = method_availability(requested)
    fio_ok, fio_detail = fio_status()
    directory = os.path.abspath(args.dir)
    _make_parents(directory)
    fio_paths = {"fio": os.path.join(directory, FIO_FILE),
                 "fio_rewrite": os.path.join(directory, FIO_REWRITE_FILE)}
    fio_sizes = {"fio": FIO_SIZE, "fio_rewrite": FIO_REWRITE_SIZE}
    report: dict = {
        "command": "wal", "dir": directory, "runs": args.runs, "seconds": args.seconds,
        "record_size": args.record_size, "replay_size": args.replay_size,
        "wal_segment_size": args.wal_segment_size, "wal_buffers": args.wal_buffers,
        "commit_threads": list(COMMIT_THREADS),
        "units": {"mb_s": "10^6 bytes/s", "records_s": "records/s",
                  "commits_s": "insert+flush(end) per second, all threads",
                  "syncs_s": "WAL fdatasync calls per second (fio: writes+fdatasync/s)",
                  "commits_per_sync": "group-commit ratio",
                  "ratio": "commits/s over fio's syncs/s"},
        "fio": {"available": fio_ok, "detail": fio_detail,
                "command": fio_sync_command(fio_paths["fio"], FIO_SIZE, args.seconds)},
        "fio_rewrite": {"available": fio_ok, "detail": fio_detail,
                        "command": fio_sync_command(fio_paths["fio_rewrite"], FIO_REWRITE_SIZE,
                                                    args.seconds)},
        "methods": methods, "replay": None}
    if not usable:
        return report
    samples: dict = {m: {"insert": [], "commit_1": [], "commit_8": []} for m in usable}
    fio_samples: dict[str, list[dict]] = {"fio": [], "fio_rewrite": []}
    replay_samples: list[dict] = []
    aios = {name: Aio(name, io_max_concurrency=AIO_CONCURRENCY) for name in usable}
    replay_dir = os.path.join(directory, "replay")
    built = None
    try:
        built = build_replay_wal(aios[usable[0]], replay_dir, args)
        log(f"built {args.replay_size >> 20} MiB of WAL ({built['records']} records) in "
            f"{built['build_seconds']:.1f} s with io_method={usable[0]}")
        for run in range(args.runs):
            for kind in ("fio", "fio_rewrite"):
                if not fio_ok:
                    break
                try:
                    fio_samples[kind].append(
                        run_fio_sync(fio_paths[kind], fio_sizes[kind], args.seconds))
                except (FioError, KeyError) as exc:
                    fio_ok, fio_detail = False, f"fio failed, no ratios: {exc}"
            order = usable if run % 2 == 0 else usable[::-1]
            for name in order:
                wal_dir = os.path.join(directory, f"wal-{name}")
                samples[name]["insert"].append(measure_insert(aios[name], wal_dir, args))
                for threads in COMMIT_THREADS:
                    samples[name][f"commit_{threads}"].append(
                        measure_commits(aios[name], wal_dir, threads, args))
            replay_samples.append(measure_replay(replay_dir, built, args))
            log(f"run {run + 1}/{args.runs} done")
    finally:
        for a in aios.values():
            a.shutdown()
        if osfile.exists(replay_dir):
            _remove_dir(replay_dir)
    for kind in ("fio", "fio_rewrite"):
        if fio_ok and fio_samples[kind]:
            report[kind].update(_median(fio_samples[kind], FIO_KEYS))
        else:
            report[kind].update({"available": False, "detail": fio_detail, "syncs_s": None})
    fio_rate = report["fio"]["syncs_s"]
    for name in usable:
        m = methods[name]
        m["insert"] = _median(samples[name]["insert"], INSERT_KEYS)
        for threads in COMMIT_THREADS:
            c = _median(samples[name][f"commit_{threads}"], COMMIT_KEYS)
            c["ratio"] = c["commits_s"] / fio_rate if fio_rate else None
            c["sync_ratio"] = c["syncs_s"] / fio_rate if fio_rate else None
            m[f"commit_{threads}"] = c
    report["replay"] = _median(replay_samples, REPLAY_KEYS)
    report["replay"].update({"records": built["records"], "bytes": built["end_lsn"]
                             - built["start_lsn"], "built_with": usable[0],
                             "note": "WalReader reads with preadv through aio.osfile "
                                     "(page cache): independent of io_method"})
    return report


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(report: dict) -> str:
    usable = [n for n, m in report["methods"].items() if m["available"]]
    lines = [f"slonik bench wal: {report['dir']}, {report['record_size']}-byte payloads, "
             f"wal_buffers {report['wal_buffers']} pages, segments "
             f"{report['wal_segment_size'] >> 20} MiB; median of {report['runs']} x "
             f"{report['seconds']:g} s", "MB = 10^6 bytes", ""]
    fio, rewrite = report["fio"], report["fio_rewrite"]
    if fio["syncs_s"] is not None:
        lines.append(f"fio 8 KiB write + fdatasync, sequential over 64 MiB: "
                     f"{fio['syncs_s']:.0f} syncs/s ({_num(fio['sync_us_mean'], '.0f')} us "
                     f"per fdatasync)")
    if rewrite["syncs_s"] is not None:
        lines.append(f"fio 8 KiB write + fdatasync, one block rewritten:      "
                     f"{rewrite['syncs_s']:.0f} syncs/s "
                     f"({_num(rewrite['sync_us_mean'], '.0f')} us per fdatasync)")
    if fio["syncs_s"] is not None or rewrite["syncs_s"] is not None:
        lines.append("")
    head = (f"{'method':<9} {'insert rec/s':>12} {'MB/s':>7} | {'1 thr commit/s':>14} "
            f"{'syncs/s':>8} {'ratio':>6} | {'8 thr commit/s':>14} {'syncs/s':>8} "
            f"{'c/sync':>6} {'ratio':>6}")
    lines += [head, "-" * len(head)]
    for name in usable:
        m = report["methods"][name]
        i, c1, c8 = m["insert"], m["commit_1"], m["commit_8"]
        lines.append(
            f"{name:<9} {i['records_s']:>12.0f} {i['mb_s']:>7.1f} | {c1['commits_s']:>14.0f} "
            f"{c1['syncs_s']:>8.0f} {_num(c1['ratio'], '.2f'):>6} | "
            f"{c8['commits_s']:>14.0f} {c8['syncs_s']:>8.0f} "
            f"{_num(c8['commits_per_sync'], '.2f'):>6} {_num(c8['ratio'], '.2f'):>6}")
    lines += ["", "ratio = commits/s over fio's sequential syncs/s; c/sync = commits per WAL "
                  "fdatasync (group commit)"]
    for name in usable:
        c1, c8 = report["methods"][name]["commit_1"], report["methods"][name]["commit_8"]
        lines.append(f"{name}: ms per write+sync cycle {_num(c1['ms_per_flush'], '.2f')} (1 thr),"
                     f" {_num(c8['ms_per_flush'], '.2f')} (8 thr); bytes written per cycle "
                     f"{_num(c1['write_bytes_per_flush'], '.0f')} / "
                     f"{_num(c8['write_bytes_per_flush'], '.0f')}")
    r = report["replay"]
    if r is not None:
        lines += ["", f"replay (WalReader decode + no-op redo, {r['bytes'] / 1e6:.1f} MB, "
                      f"{r['records']} records): {r['mb_s']:.1f} MB/s, "
                      f"{r['records_s']:.0f} records/s"]
    return "\n".join(lines + availability_notes(report))


def cmd_bench_wal(args: argparse.Namespace) -> int:
    return run_bench_command(args, run_wal_bench, format_table)
