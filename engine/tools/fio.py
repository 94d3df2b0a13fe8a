"""fio, the device baseline every bench compares against: one runner for all of them.

``run_fio_job(options)`` runs one fio job (``fio --name=slonik <options>
--output-format=json``) and returns that job's JSON object, or raises ``FioError`` with
fio's own last line of complaint: a non-zero exit, output that is not JSON, a job that
reports an error. Each bench builds its options (what to read or write, how) and reads
its figures from the job (``job["read"]``, ``job["write"]``, ``job["sync"]``).
``fio_status()`` says whether fio is here at all, and why not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["FioError", "fio_status", "run_fio_job", "FIO_VERSION_TIMEOUT_SECONDS",
           "FIO_STARTUP_TIMEOUT_SECONDS"]

FIO_VERSION_TIMEOUT_SECONDS = 30    # ``fio --version`` answers at once on a working fio
# Beyond the measured time: fio lays out its file first (GiBs on a slow disk) and exits.
FIO_STARTUP_TIMEOUT_SECONDS = 120


class FioError(RuntimeError):
    """fio did not run, failed, or reported an error for its job."""


def fio_status() -> tuple[bool, str]:
    """(available, detail): fio's version, or why there is no baseline."""
    exe = shutil.which("fio")
    if exe is None:
        return False, "fio is not installed (apt-get install fio): no baseline, no ratios"
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=FIO_VERSION_TIMEOUT_SECONDS).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"fio does not run: {exc}"
    return True, version or exe


def fio_command(options: Sequence[str]) -> list[str]:
    """The command line ``run_fio_job`` runs for ``options``."""
    return ["fio", "--name=slonik", *options, "--output-format=json"]


def run_fio_job(options: Sequence[str], *, seconds: float) -> dict:
    """Run one fio job that measures for about ``seconds`` and return its JSON object."""
    try:
        proc = subprocess.run(fio_command(options), capture_output=True, text=True,
                              timeout=seconds + FIO_STARTUP_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FioError(f"fio did not run: {exc}") from exc
    start = proc.stdout.find("{")   # fio may print notes before its JSON
    if proc.returncode != 0 or start < 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise FioError(f"fio failed (exit {proc.returncode}): {detail}")
    try:
        job = json.loads(proc.stdout[start:])["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        raise FioError(f"fio's output is not the JSON expected: {exc}") from exc
    if job.get("error"):
        raise FioError(f"fio job failed: error {job['error']}")
    return job
