"""``slonik bench aio``: the AIO methods against fio on the same file, back to back.

Every read is O_DIRECT into page-aligned, huge-page advised memory (``aio.memory``), so the
page cache is out of the picture. A pattern keeps ``depth`` reads in flight from one issuing
thread: whenever some complete, the free slots are refilled and submitted together
(``aio.batch()``). fio runs the same pattern with ``--ioengine=io_uring`` in the same
invocation; each pattern is measured ``--runs`` times, fio and every method back to back in
turn, and the median is reported (fio's sequential figure moves a lot from run to run on a
virtual disk: ``shared/reference/python-io.md``).

Units: MB/s is 10^6 bytes per second; IOPS is completed reads per second; ``ratio`` is the
method's median over fio's median; ``cpu_us_per_io`` is the process's user+system CPU time
(all threads) per read.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import random
import re
import resource
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from slonik.aio import callbacks as cb
from slonik.aio import osfile
from slonik.aio.core import Aio
from slonik.aio.handle import AioReturn, ResultStatus
from slonik.aio.memory import PAGE_ALIGNMENT, aligned_buffer
from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.tools.fio import FioError, fio_status, run_fio_job
from slonik.engine.tools.plot import check_plot_path, plot_unavailable, write_plot

DEFAULT_FILE = "./bench-data/aio.dat"
DEFAULT_SIZE = 1 << 30
ALL_METHODS = ("sync", "worker", "io_uring")
HUGE_PAGE = 2 << 20
FILL_CHUNK = 8 << 20
RANDOM_SEED = 20250601


@dataclass(frozen=True)
class Pattern:
    name: str
    rw: str     # fio's --rw: read (sequential) or randread
    bs: int
    depth: int

    @property
    def sequential(self) -> bool:
        return self.rw == "read"


PATTERNS = (
    Pattern("seq 128k qd1", "read", 128 << 10, 1),
    Pattern("seq 128k qd8", "read", 128 << 10, 8),
    Pattern("seq 128k qd32", "read", 128 << 10, 32),
    Pattern("rand 8k qd1", "randread", 8 << 10, 1),
    Pattern("rand 8k qd32", "randread", 8 << 10, 32),
)
MAX_BS = max(p.bs for p in PATTERNS)
MAX_DEPTH = max(p.depth for p in PATTERNS)


# --- argument helpers ----------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """Bytes from ``1073741824``, ``256M``, ``1G``, ``512KiB`` (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def parse_size(text: str) -> int:
    """A benchmark file size: ``parse_bytes`` and whole, deep-enough O_DIRECT requests."""
    size = parse_bytes(text)
    if size < MAX_BS * MAX_DEPTH or size % MAX_BS:
        raise argparse.ArgumentTypeError(
            f"size must be a multiple of {MAX_BS // 1024} KiB and at least "
            f"{MAX_BS * MAX_DEPTH >> 20} MiB, got {text!r}")
    return size


def parse_methods(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ALL_METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"methods are a comma-separated subset of {','.join(ALL_METHODS)}; got {text!r}")
    return list(dict.fromkeys(names))


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def method_availability(requested: list[str]) -> tuple[dict[str, dict], list[str]]:
    """For each requested io method, whether it is available here and why (the report's
    ``methods``), and the usable ones in order."""
    uring_ok, uring_reason = io_uring_available()
    methods: dict[str, dict] = {}
    for name in requested:
        if name == "io_uring" and not uring_ok:
            methods[name] = {"available": False, "detail": uring_reason}
        else:
            methods[name] = {"available": True,
                             "detail": uring_reason if name == "io_uring" else "always available"}
    return methods, [n for n in requested if methods[n]["available"]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", default=DEFAULT_FILE,
                        help=f"data file, created once and reused (default {DEFAULT_FILE})")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE,
                        help="file size, e.g. 256M or 1G (default 1G)")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="measurements per pattern and method; the median is reported "
                             "(default 3)")
    parser.add_argument("--seconds", type=positive_float, default=3.0,
                        help="length of each measurement in seconds (default 3)")
    parser.add_argument("--methods", type=parse_methods, default=None,
                        help="comma-separated io methods (default: sync,worker,io_uring, "
                             "those available)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# --- the data file -------------------------------------------------------------------------

def prepare_file(path: str, size: int) -> bool:
    """Create ``path`` with ``size`` bytes of non-zero data, fsync'd; reuse it when it
    already has that size. Returns True when the file was (re)written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if osfile.exists(path):
        fd = osfile.open(path, os.O_RDONLY)
        try:
            if osfile.file_size(fd) == size:
                return False
        finally:
            osfile.close(fd)
    tmp = path + ".tmp"
    fd = osfile.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        chunk = bytearray(random.Random(RANDOM_SEED).randbytes(FILL_CHUNK))
        chunk = chunk.replace(b"\x00", b"\x5a")  # non-zero everywhere, not a sparse file
        offset = 0
        while offset < size:
            n = min(FILL_CHUNK, size - offset)
            chunk[:16] = b"%016x" % offset  # distinct chunks, still no zero byte
            written = osfile.pwritev(fd, [memoryview(chunk)[:n]], offset)
            if written <= 0:
                raise OSError(f"could not write {path}: short write at offset {offset}")
            offset += written
        osfile.fsync(fd)
    finally:
        osfile.close(fd)
    osfile.rename(tmp, path)
    osfile.fsync_directory(directory)
    return True


# --- measuring one method ---------------------------------------------------------------------

def _huge_page_pool(nbytes: int):
    """(mapping, memoryview of nbytes) starting on a 2 MiB boundary, pre-faulted."""
    buf = aligned_buffer(nbytes + HUGE_PAGE)
    anchor = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(anchor)
    del anchor  # release the export, or the mapping can never be closed
    start = (-addr) % HUGE_PAGE
    view = memoryview(buf)[start:start + nbytes]
    assert (addr + start) % PAGE_ALIGNMENT == 0
    view[:] = b"\x01" * nbytes  # fault the pages in outside the measurement
    return buf, view


def offset_iterator(pattern: Pattern, size: int, seed: int) -> Iterator[int]:
    """Endless offsets: sequential from a random start, wrapping at the end of the file;
    or uniformly random ``bs``-aligned blocks (a pre-drawn table, cycled)."""
    rng = random.Random(seed)
    bs, nblocks = pattern.bs, size // pattern.bs
    if pattern.sequential:
        start = rng.randrange(nblocks) * bs
        return itertools.chain(range(start, size, bs), itertools.cycle(range(0, size, bs)))
    return itertools.cycle([rng.randrange(nblocks) * bs for _ in range(1 << 16)])


def measure_method(aio: Aio, path: str, fd: int, flags: int, size: int, pattern: Pattern,
                   seconds: float, seed: int) -> dict:
    """Keep ``pattern.depth`` reads in flight for ``seconds``; returns the figures.

    One issuing thread (the caller) keeps a window of ``depth`` reads: it blocks on the
    oldest, then collects every read that has finished and refills their slots, submitting
    the refills together in one ``aio.batch()``."""
    bs, depth = pattern.bs, pattern.depth
    mapping, pool = _huge_page_pool(bs * depth)
    try:
        buffers = [[pool[i * bs:(i + 1) * bs]] for i in range(depth)]
        rets = [AioReturn() for _ in range(depth)]  # reused: refilled only after reclaim
        next_offset = offset_iterator(pattern, size, seed).__next__
        free = list(range(depth))
        inflight: deque = deque()  # (wait ref, slot), in submission order
        target = cb.FILE_TARGET_ID
        acquire, wait, done, batch = aio.acquire, aio.wait, aio.done, aio.batch
        ok = ResultStatus.OK
        ios = 0

        def refill() -> None:
            with batch():
                while free:
                    slot = free.pop()
                    offset = next_offset()
                    h = acquire(rets[slot])
                    h.set_target(target, (path, flags, offset))
                    inflight.append((h.wait_ref(), slot))
                    h.start_readv(fd, buffers[slot], offset)

        def reap() -> int:
            """Wait for the oldest read, then collect every other finished one."""
            ref, slot = inflight.popleft()
            wait(ref)
            ret = rets[slot]
            if ret.result.status != ok:
                ret.raise_if_failed()
            free.append(slot)
            n = 1
            for _ in range(len(inflight)):
                item = inflight.popleft()
                if done(item[0]):
                    ret = rets[item[1]]
                    if ret.result.status != ok:
                        ret.raise_if_failed()
                    free.append(item[1])
                    n += 1
                else:
                    inflight.append(item)
            return n

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            refill()
            ios += reap()
            if time.perf_counter() >= deadline:
                break
        while inflight:  # drain: what was started counts, and the time it took too
            ios += reap()
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        buffers = None
        pool.release()
        mapping.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"mb_s": ios * bs / elapsed / 1e6, "iops": ios / elapsed, "ios": ios,
            "seconds": elapsed, "cpu_us_per_io": cpu / ios * 1e6}


def verify_reads(aio: Aio, path: str, fd: int, flags: int, size: int) -> None:
    """Read a few blocks through the method and compare with buffered reads of the file:
    the benchmark must move real data, not just count completions."""
    mapping, pool = _huge_page_pool(MAX_BS)
    try:
        for offset in (0, size // 2 - MAX_BS, size - MAX_BS):
            ret = AioReturn()
            h = aio.acquire(ret)
            h.set_target(cb.FILE_TARGET_ID, (path, flags, offset))
            ref = h.wait_ref()
            h.start_readv(fd, [pool], offset)
            aio.wait(ref)
            ret.raise_if_failed()
            with open(path, "rb") as f:
                f.seek(offset)
                expected = f.read(MAX_BS)
            if pool.tobytes() != expected:
                raise AssertionError(f"io_method={aio.method.name} read wrong data at {offset}")
    finally:
        pool.release()
        mapping.close()


# --- fio ---------------------------------------------------------------------------------------

def fio_options(path: str, pattern: Pattern, seconds: float) -> list[str]:
    return [f"--filename={path}", "--direct=1", "--ioengine=io_uring", f"--rw={pattern.rw}",
            f"--bs={pattern.bs // 1024}k", f"--iodepth={pattern.depth}",
            f"--runtime={max(1, round(seconds * 1000))}ms", "--time_based"]


def run_fio(path: str, pattern: Pattern, seconds: float) -> dict:
    job = run_fio_job(fio_options(path, pattern, seconds), seconds=seconds)
    read = job["read"]
    if read["total_ios"] <= 0:
        raise FioError("fio completed no reads")
    cpu = (job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0)) / 100 * read["runtime"] / 1000
    return {"mb_s": read["bw_bytes"] / 1e6, "iops": read["iops"], "ios": read["total_ios"],
            "seconds": read["runtime"] / 1000, "cpu_us_per_io": cpu / read["total_ios"] * 1e6}


# --- the command -------------------------------------------------------------------------------

def _median(samples: list[dict]) -> dict:
    return {"mb_s": statistics.median(s["mb_s"] for s in samples),
            "iops": statistics.median(s["iops"] for s in samples),
            "cpu_us_per_io": statistics.median(s["cpu_us_per_io"] for s in samples),
            "runs": [{k: round(v, 3) for k, v in s.items()} for s in samples]}


def run_aio_bench(args: argparse.Namespace, log=None) -> dict:
    """Run the benchmark described by ``args``; returns the JSON-able report."""
    log = log or (lambda msg: None)
    requested = args.methods or list(ALL_METHODS)
    methods, usable = method_availability(requested)
    fio_ok, fio_detail = fio_status()
    report = {"command": "aio", "file": os.path.abspath(args.file), "size": args.size,
              "runs": args.runs, "seconds": args.seconds,
              "units": {"mb_s": "10^6 bytes/s", "iops": "reads/s",
                        "cpu_us_per_io": "process user+sys CPU per read"},
              "fio": {"available": fio_ok, "detail": fio_detail},
              "methods": methods, "patterns": []}
    if prepare_file(args.file, args.size):
        log(f"wrote {args.size >> 20} MiB of data to {args.file} (fsync'd)")
    flags = os.O_RDONLY | os.O_DIRECT
    fd = osfile.open(args.file, flags)
    aios: dict[str, Aio] = {}
    try:
        for name in usable:
            aios[name] = Aio(name, io_max_concurrency=MAX_DEPTH)
            verify_reads(aios[name], args.file, fd, flags, args.size)
        for p_index, pattern in enumerate(PATTERNS):
            samples: dict[str, list[dict]] = {"fio": []} | {n: [] for n in usable}
            for run in range(args.runs):
                if fio_ok:
                    try:
                        samples["fio"].append(run_fio(args.file, pattern, args.seconds))
                    except (FioError, KeyError) as exc:
                        fio_ok, fio_detail = False, f"fio failed, no ratios: {exc}"
                        report["fio"] = {"available": False, "detail": fio_detail}
                        samples["fio"] = []
                # alternate the order of the methods from run to run
                order = usable if run % 2 == 0 else usable[::-1]
                for name in order:
                    samples[name].append(measure_method(
                        aios[name], args.file, fd, flags, args.size, pattern, args.seconds,
                        seed=RANDOM_SEED + 1000 * p_index + run))
                log(f"{pattern.name}: run {run + 1}/{args.runs} done")
            row: dict = {"name": pattern.name, "rw": pattern.rw, "bs": pattern.bs,
                         "depth": pattern.depth,
                         "fio": _median(samples["fio"]) if samples["fio"] else None,
                         "methods": {}}
            for name in usable:
                m = _median(samples[name])
                m["ratio"] = m["iops"] / row["fio"]["iops"] if row["fio"] else None
                row["methods"][name] = m
            report["patterns"].append(row)
    finally:
        for a in aios.values():
            a.shutdown()
        osfile.close(fd)
    if not fio_ok:
        for row in report["patterns"]:
            row["fio"] = None
            for m in row["methods"].values():
                m["ratio"] = None
    return report


def format_table(report: dict) -> str:
    usable = [n for n, m in report["methods"].items() if m["available"]]
    cell = 26

    def fig(m: dict | None, ratio: bool = True) -> str:
        if m is None:
            return "-"
        text = f"{m['mb_s']:.0f} ({m['iops']:.0f})"
        if ratio and m.get("ratio") is not None:
            text += f" {m['ratio']:.2f}x"
        return text

    lines = [f"slonik bench aio: {report['file']} ({report['size'] >> 20} MiB), O_DIRECT, "
             f"median of {report['runs']} x {report['seconds']:g} s",
             "MB/s (IOPS), ratio to fio; MB = 10^6 bytes", ""]
    head = f"{'pattern':<14} {'fio io_uring':<{cell - 6}}" + "".join(f" {n:<{cell}}" for n in usable)
    lines += [head, "-" * len(head)]
    for row in report["patterns"]:
        lines.append(f"{row['name']:<14} {fig(row['fio'], False):<{cell - 6}}"
                     + "".join(f" {fig(row['methods'][n]):<{cell}}" for n in usable))
    lines += ["", "CPU us per read (process, all threads)",
              f"{'pattern':<14} {'fio':>8}" + "".join(f" {n:>10}" for n in usable)]
    for row in report["patterns"]:
        fio = f"{row['fio']['cpu_us_per_io']:.1f}" if row["fio"] else "-"
        lines.append(f"{row['name']:<14} {fio:>8}" + "".join(
            f" {row['methods'][n]['cpu_us_per_io']:>10.1f}" for n in usable))
    return "\n".join(lines + availability_notes(report))


def availability_notes(report: dict) -> list[str]:
    """Trailing notes of a bench table: a missing fio baseline, unavailable io methods."""
    notes = []
    if not report["fio"]["available"]:
        notes.append(f"note: {report['fio']['detail']}")
    for name, m in report["methods"].items():
        if not m["available"]:
            notes.append(f"note: io_method={name} unavailable: {m['detail']}")
    return [""] + notes if notes else []


def run_bench_command(args: argparse.Namespace, run, fmt) -> int:
    """Run a benchmark: progress on stderr, then its table (or JSON with --json), then
    the plot ``--plot FILE`` asks for. A plot that cannot be drawn (matplotlib missing)
    is said before the bench starts, and the bench still runs and prints; an output
    directory that cannot be written is refused before the bench starts."""
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    plot = getattr(args, "plot", None)
    if plot is not None:
        check_plot_path(plot)
        reason = plot_unavailable()
        if reason is not None:
            print(f"warning: --plot {plot}: {reason}; the bench runs and prints without "
                  "the plot", file=sys.stderr, flush=True)
            plot = None
    report = run(args, log)
    print(json.dumps(report, indent=2) if args.json else fmt(report))
    if plot is not None:
        write_plot(report, plot)
        print(f"plot written to {plot}", file=sys.stderr, flush=True)
    return 0


def cmd_bench_aio(args: argparse.Namespace) -> int:
    return run_bench_command(args, run_aio_bench, format_table)
