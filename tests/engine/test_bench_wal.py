"""Smoke tests of ``slonik bench wal`` (command checks, no timing assertions)."""

import json
import os

from slonik.engine.tools.bench_wal import format_table
from slonik.engine.tools.cli import main
from slonik.engine.tools.fio import fio_status

FIGURES = {
    "insert": ("records_s", "mb_s"),
    "commit_1": ("commits_s", "syncs_s", "commits_per_sync", "ratio"),
    "commit_8": ("commits_s", "syncs_s", "commits_per_sync", "ratio"),
}


def test_bench_wal_reports_every_figure(io_method, tmp_path, capsys):
    """A tiny run on one io method prints JSON with positive insert, 1- and 8-thread commit
    and replay figures; every commit was durable, so there is at least one sync per
    commits_per_sync commits; the fio baseline and ratios are there when fio is; the
    scratch WAL directories are gone afterwards and the table renders from the report."""

    bench_dir = tmp_path / "walbench"
    code = main(["bench", "wal", "--dir", str(bench_dir), "--seconds", "0.05", "--runs", "1",
                 "--replay-size", "256K", "--wal-segment-size", "256K", "--wal-buffers", "16",
                 "--methods", io_method, "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["command"] == "wal" and report["commit_threads"] == [1, 8]
    assert list(report["methods"]) == [io_method]
    m = report["methods"][io_method]
    fio_ok = fio_status()[0]
    for kind, keys in FIGURES.items():
        for key in keys:
            if key == "ratio" and not fio_ok:
                assert m[kind][key] is None
                continue
            assert m[kind][key] > 0, (kind, key)
        assert len(m[kind]["runs"]) == 1
    for threads in (1, 8):
        run = m[f"commit_{threads}"]["runs"][0]
        assert run["commits"] > 0 and 1 <= run["syncs"] <= run["commits"]
    replay = report["replay"]
    assert replay["mb_s"] > 0 and replay["records_s"] > 0
    assert replay["bytes"] >= 256 << 10 and replay["records"] > 0
    if fio_ok:
        assert report["fio"]["syncs_s"] > 0 and report["fio_rewrite"]["syncs_s"] > 0
        assert "--fdatasync=1" in report["fio"]["command"]
    leftovers = [n for n in os.listdir(bench_dir) if not n.startswith("fio-")]
    assert leftovers == []
    table = format_table(report)
    assert io_method in table and "replay" in table
