"""Smoke test of ``slonik bench scan`` (a command check, not a timing assertion)."""

import json

from slonik.engine.tools.cli import main


def test_bench_scan_reports_every_available_method(tmp_path, capsys):
    """A tiny O_DIRECT scan bench prints JSON with a positive cold and warm MB/s for every
    available io method and the relation's data built under --dir."""
    from slonik.aio.method_io_uring import io_uring_available

    code = main(["bench", "scan", "--size", "8M", "--runs", "1", "--direct",
                 "--dir", str(tmp_path / "scan"), "--shared-buffers", "64", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    expected = {"sync", "worker"} | ({"io_uring"} if io_uring_available()[0] else set())
    assert set(report["methods"]) == expected
    for row in report["methods"].values():
        assert row["cold_mb_s"] > 0 and row["warm_mb_s"] > 0
    assert (tmp_path / "scan" / "base" / "16384").stat().st_size == 8 << 20


def test_info_says_what_auto_picks(capsys):
    """`slonik info --json` lists every method with its availability and names the method
    io_method=auto resolves to here (io_uring when a ring can be set up, else worker)."""
    from slonik.aio.method_io_uring import io_uring_available

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sync"]["available"] and info["worker"]["available"]
    assert info["auto"] == ("io_uring" if io_uring_available()[0] else "worker")
