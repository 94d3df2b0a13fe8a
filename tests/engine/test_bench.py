"""Smoke test of ``slonik bench aio``: the command runs end to end and reports figures."""

from __future__ import annotations

import json

from slonik.aio.method_io_uring import io_uring_available
from slonik.engine.tools.bench import PATTERNS, prepare_file
from slonik.engine.tools.cli import main


def test_bench_aio_json_reports_every_pattern_for_every_available_method(tmp_path, capsys):
    """``slonik bench aio --size 8M --runs 1 --seconds 0.2 --json`` on a tmp file prints JSON
    with one entry per pattern (sequential 128 KiB at depth 1/8/32, random 8 KiB at depth
    1/32), each holding positive MB/s, IOPS and CPU-per-read figures for every available io
    method (sync, worker, and io_uring when this machine allows it; otherwise io_uring is
    listed as unavailable with a reason). With fio present, fio's figures and the ratios are
    positive too. A smoke test of the command, not a timing assertion."""
    path = tmp_path / "aio.dat"
    rc = main(["bench", "aio", "--file", str(path), "--size", "8M", "--runs", "1",
               "--seconds", "0.2", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)

    assert path.stat().st_size == 8 << 20
    uring_ok, uring_reason = io_uring_available()
    expected = ["sync", "worker"] + (["io_uring"] if uring_ok else [])
    assert [n for n, m in report["methods"].items() if m["available"]] == expected
    if not uring_ok:
        assert report["methods"]["io_uring"] == {"available": False, "detail": uring_reason}

    assert [p["name"] for p in report["patterns"]] == [p.name for p in PATTERNS]
    for row in report["patterns"]:
        assert sorted(row["methods"]) == sorted(expected), row["name"]
        for name, fig in row["methods"].items():
            assert fig["mb_s"] > 0 and fig["iops"] > 0 and fig["cpu_us_per_io"] > 0, (row["name"], name)
            assert len(fig["runs"]) == 1
            if report["fio"]["available"]:
                assert fig["ratio"] > 0
            else:
                assert fig["ratio"] is None
        if report["fio"]["available"]:
            assert row["fio"]["mb_s"] > 0 and row["fio"]["iops"] > 0
        else:
            assert row["fio"] is None


def test_bench_aio_reuses_a_file_of_the_right_size(tmp_path):
    """The data file is written once (right size, not a single zero byte) and reused as is
    while its size matches; a different size rewrites it."""
    path = str(tmp_path / "aio.dat")
    assert prepare_file(path, 4 << 20) is True
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == 4 << 20 and data.count(0) == 0
    assert prepare_file(path, 4 << 20) is False
    assert prepare_file(path, 8 << 20) is True
