"""Commit placement: which CPU the committers waiting in the group commit run on, and
which the flusher runs on (setting ``commit_placement``, "auto" or "off").

A committer's Python runs under the GIL, so committers never run in parallel; what
decides their rate under contention is how fast each hand-off is: the GIL a committer
drops on its way into the wait wakes the next one, and a flush wakes the committers it
covered. Unbound, those wake-ups land on whichever CPU is idle, and an idle vCPU of a
guest halts: here a wake-up across CPUs takes ~20 us, one between two threads of the
same CPU ~6 us (README.md, "Commit placement"). Bound to one CPU, the committers hand the
GIL to each other in place, and the flusher, on the CPU that takes the WAL device's
completion interrupts, is woken by its own interrupt. The binding itself is done in C
(storage/_pagecheck_build.py, "commit placement"); this module picks the CPUs.

``commit_cpus(wal_dir)`` is None (placement off) with fewer than two CPUs to run on, or in
an interpreter without a GIL (free-threaded: committers do run in parallel there).
Otherwise the flusher's CPU is the one the WAL device's busiest interrupt is delivered to
(``device_irq_cpu``) when the process may run there, else the highest CPU it may run on;
the committers' CPU is the lowest other one.
"""

from __future__ import annotations

import os
import sys

__all__ = ["COMMIT_PLACEMENT_VALUES", "check_commit_placement", "commit_cpus",
           "device_irq_cpu", "parse_cpu_list"]

COMMIT_PLACEMENT_VALUES = ("auto", "off")
SYS_DEV_BLOCK = "/sys/dev/block"
PROC_INTERRUPTS = "/proc/interrupts"
PROC_IRQ = "/proc/irq"


def check_commit_placement(value: object) -> str:
    """Validate the ``commit_placement`` setting."""
    if value not in COMMIT_PLACEMENT_VALUES:
        raise ValueError(f"commit_placement must be one of "
                         f"{' | '.join(COMMIT_PLACEMENT_VALUES)}, got {value!r}")
    return value


def parse_cpu_list(text: str) -> set[int]:
    """The CPUs of a kernel CPU list ("0-3,8,10-11")."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text!r}")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _irq_counts(interrupts: str) -> dict[int, int]:
    """Each numbered interrupt's count summed over CPUs, from /proc/interrupts' text."""
    counts: dict[int, int] = {}
    for line in interrupts.splitlines()[1:]:
        name, _, rest = line.partition(":")
        if not name.strip().isdigit():
            continue
        total = 0
        for field in rest.split():
            if not field.isdigit():
                break
            total += int(field)
        counts[int(name)] = total
    return counts


def device_irq_cpu(path: str) -> int | None:
    """The CPU the completion interrupts of the block device holding ``path`` go to: the
    busiest of the interrupts (MSI vectors) of the first device above it in sysfs that has
    any, when the kernel delivers that one to a single CPU. None where there is no such
    device (a loop device, tmpfs, a device-mapper stack) or the kernel does not say (no
    /sys or /proc to read, as in some containers)."""
    st = os.stat(path)
    dev = f"{SYS_DEV_BLOCK}/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        node = os.path.realpath(dev, strict=True)
        irqs: list[int] = []
        while node.startswith("/sys/devices/") and not irqs:
            msi = os.path.join(node, "msi_irqs")
            if os.path.isdir(msi):
                irqs = [int(n) for n in os.listdir(msi) if n.isdigit()]
            node = os.path.dirname(node)
        if not irqs:
            return None
        with open(PROC_INTERRUPTS) as f:
            counts = _irq_counts(f.read())
        busiest = max(irqs, key=lambda n: counts.get(n, 0))
        with open(f"{PROC_IRQ}/{busiest}/effective_affinity_list") as f:
            cpus = parse_cpu_list(f.read())
    except (FileNotFoundError, PermissionError):
        # no sysfs or procfs here (a container), or a kernel that does not name the CPU:
        # nothing to go by, which the caller's fallback covers
        return None
    return cpus.pop() if len(cpus) == 1 else None


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def commit_cpus(wal_dir: str, allowed: set[int] | None = None) -> tuple[int, int] | None:
    """``(commit_cpu, flush_cpu)`` for a WAL in ``wal_dir``, or None: placement off (one
    CPU to run on, or no GIL). ``allowed``: the CPUs to choose from (default: the
    process's mask)."""
    cpus = set(os.sched_getaffinity(0) if allowed is None else allowed)
    if len(cpus) < 2 or not _gil_enabled():
        return None
    flush = device_irq_cpu(wal_dir)
    if flush not in cpus:
        flush = max(cpus)
    return min(cpus - {flush}), flush
