"""Smoke test of ``slonik bench scan`` (a command check, not a timing assertion)."""

import json
import os
from itertools import chain
from pathlib import Path

import pytest
from slonik.engine.database import Database
from slonik.engine.tools.bench_scan import (
    TABLE,
    build_table,
    checksum_floor_seconds,
    floor_batches,
    floor_run,
    row_floor_seconds,
    sync_bound_mb_s,
)
from slonik.engine.tools.cli import main
from slonik.storage.page import BLCKSZ, C_VERIFIER


def test_bench_scan_reports_every_available_method(tmp_path, capsys):
    """A tiny bench (8 MiB table of 1000-byte rows, 2000 small rows, one run, O_DIRECT by
    default) prints JSON with, for every available io method, positive cold and warm
    MB/s of Table.scan(), every row of the table scanned, positive small-row insert_many
    and warm-scan rates, the ratios to SQLite (and to fio when fio ran) present, and a
    positive WAL replay rate for both replay workloads; the table is built once under
    --dir (at least --size of heap) and reused by a second run, which skips the replay
    (--replay-mb 0) and so reports none."""
    from slonik.aio.method_io_uring import io_uring_available

    argv = ["bench", "scan", "--size", "8M", "--runs", "1", "--small-rows", "2000",
            "--dir", str(tmp_path / "scan"), "--shared-buffers", "64", "--json"]
    first = argv + ["--replay-mb", "1"]
    assert main(first) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["command"] == "scan" and report["replay_mb"] == 1
    expected = {"sync", "worker"} | ({"io_uring"} if io_uring_available()[0] else set())
    assert set(report["methods"]) == expected
    assert report["direct"] is True and report["cold_state"] == "O_DIRECT"
    assert report["table_bytes"] >= 8 << 20
    assert report["table_rows"] >= report["table_bytes"] // 8192  # several rows a page
    for row in report["methods"].values():
        assert row["cold_mb_s"] > 0 and row["warm_mb_s"] > 0
        assert row["small_insert_many_rows_s"] > 0 and row["small_warm_scan_rows_s"] > 0
        ratios = row["ratios"]
        assert ratios["warm_scan_vs_sqlite"] > 0 and ratios["insert_many_vs_sqlite"] > 0
        assert ratios["cold_vs_sync"] > 0
        assert set(row["replay_mb_s"]) == {"bulk", "mixed"}
        assert all(v > 0 for v in row["replay_mb_s"].values())
        if report["fio_depth32_mb_s"] is not None:
            assert ratios["cold_vs_fio_depth32"] > 0 and ratios["cold_vs_fio_depth1"] > 0
    assert report["row_floor_s"] > 0
    assert report["row_floor_mb_s"] == pytest.approx(
        report["table_bytes"] / 1e6 / report["row_floor_s"])
    assert (report["checksum_floor_s"] > 0) if C_VERIFIER else report["checksum_floor_s"] is None
    if report["fio_depth1_mb_s"] is not None:   # below both of what it is made of
        assert 0 < report["sync_bound_mb_s"] < min(report["fio_depth1_mb_s"],
                                                   report["row_floor_mb_s"])
    built = sorted(p.name for p in (tmp_path / "scan").iterdir() if p.name.startswith("built-"))
    assert built == [f"built-{8 << 20}-1000"]
    assert main(argv + ["--methods", "sync", "--no-warm", "--replay-mb", "0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["table_rows"] == report["table_rows"]  # the same table, not rebuilt
    assert again["methods"]["sync"]["warm_mb_s"] is None
    assert again["methods"]["sync"]["replay_mb_s"] == {"bulk": None, "mixed": None}


def test_info_says_what_auto_picks(capsys):
    """`slonik info --json` lists every method with its availability and names the method
    io_method=auto resolves to here (io_uring when a ring can be set up, else worker)."""
    from slonik.aio.method_io_uring import io_uring_available

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sync"]["available"] and info["worker"]["available"]
    assert info["auto"] == ("io_uring" if io_uring_available()[0] else "worker")


def test_row_floor_makes_the_rows_the_scan_yields(tmp_path):
    """The row floor times the making of exactly the rows ``Table.scan()`` yields: for the
    bench's table (built by the bench, 100-byte rows), the floor's runs (of 7 rows, the
    last one shorter) give the scan's rows, equal and in order; and it times them all."""
    db_dir, _rel = build_table(str(tmp_path / "scan"), 1 << 20, 100, lambda _msg: None)
    with Database.open(db_dir, io_method="sync") as db:
        scanned = list(db.table(TABLE).scan())
    n = len(scanned)
    assert n >= 10_000
    runs = [floor_run(i, min(7, n - i), 100) for i in range(0, n, 7)]
    assert list(chain.from_iterable(floor_batches(runs))) == scanned
    assert row_floor_seconds(n, 100, 7, repeats=1) > 0


def test_sync_bound_adds_the_read_and_the_row_floor():
    """A sync scan's ceiling: 1,000 MB read at 1,000 MB/s (1 s) plus a 1 s row floor is
    500 MB/s; a floor of 0 leaves fio's rate; without fio there is no bound."""
    assert sync_bound_mb_s(10**9, 1000.0, 1.0) == pytest.approx(500.0)
    assert sync_bound_mb_s(10**9, 1000.0, 0.0) == pytest.approx(1000.0)
    assert sync_bound_mb_s(10**9, None, 1.0) is None


@pytest.mark.skipif(not C_VERIFIER, reason="the checksum floor times the C verifier")
def test_checksum_floor_verifies_every_page_and_names_a_damaged_one(tmp_path):
    """The checksum floor checks every page of the bench's table (3 pages a call here, so
    the block numbers run on across calls and segment files) and times it; a copy of the
    table with one byte changed in block 4 raises ValueError naming that block, and the
    table's own files are left as they were."""
    db_dir, rel = build_table(str(tmp_path / "scan"), 1 << 20, 100, lambda _msg: None)
    segment = os.path.join(db_dir, "base", str(rel))
    data = Path(segment).read_bytes()
    assert len(data) >= 8 * BLCKSZ
    assert checksum_floor_seconds([segment], rel, chunk_pages=3) > 0
    half = len(data) // BLCKSZ // 2 * BLCKSZ   # the same pages split over two files
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(data[:half])
    second.write_bytes(data[half:])
    assert checksum_floor_seconds([str(first), str(second)], rel, chunk_pages=3) > 0
    damaged = bytearray(data)
    damaged[4 * BLCKSZ + 5000] ^= 0x40
    copy = tmp_path / "damaged"
    copy.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=f"block 4 of relation {rel} does not verify"):
        checksum_floor_seconds([str(copy)], rel, chunk_pages=3)
    assert Path(segment).read_bytes() == data
