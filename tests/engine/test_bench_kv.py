"""Smoke tests of ``slonik bench kv`` (command checks, no timing assertions)."""

import json
import os

from slonik.engine.tools.bench_kv import FIGURES, READ_RATIOS, format_table
from slonik.engine.tools.cli import main
from slonik.engine.wal_build import C_GROUP_FLUSH_FOR
from slonik.wal.placement import commit_cpus


def test_bench_kv_reports_every_figure(io_method, tmp_path, capsys):
    """A tiny run on one io method prints JSON with every figure positive: the one-
    transaction load of all keys, durable autocommit puts with 1 and 8 threads and
    overwrites of loaded keys with 1 (each with at least one WAL flush, flushes never more
    than puts but for those of the background WAL writer), warm random gets, an ordered
    scan and the reopen that rebuilt the index of every key; the scratch databases are gone
    afterwards and the table renders from the report."""
    bench_dir = tmp_path / "kvbench"
    code = main(["bench", "kv", "--dir", str(bench_dir), "--keys", "500", "--seconds", "0.05",
                 "--aged-keys", "3000", "--runs", "1", "--methods", io_method, "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["command"] == "kv" and report["keys"] == 500
    assert report["autocommit_threads"] == [1, 8]
    assert list(report["methods"]) == [io_method]
    m = report["methods"][io_method]
    assert set(m) == set(FIGURES) | {"ratios", "read_ratios", "commit_placement"}
    for kind, keys in FIGURES.items():
        for key in keys:
            assert m[kind][key] > 0, (kind, key)
        assert len(m[kind]["runs"]) == 1
    for threads in (1, 8):
        run = m[f"autocommit_{threads}"]["runs"][0]
        assert run["threads"] == threads
        assert 1 <= run["wal_flushes"] <= run["puts"] + run["walwriter_flushes"]
    load = m["load"]["runs"][0]
    assert load["puts"] == 500
    auto = sum(m[f"autocommit_{t}"]["runs"][0]["puts"] for t in (1, 8))
    assert m["scan"]["runs"][0]["keys"] == 500 + auto
    assert m["open"]["runs"][0]["keys"] == 500 + auto
    assert m["cold_scan"]["runs"][0]["keys"] == 500 + auto
    assert m["cold_scan_eic1"]["runs"][0]["keys"] == 500 + auto  # effective_io_concurrency=1
    assert m["ratios"]["cold_vs_eic1"] == \
        m["cold_scan"]["keys_s"] / m["cold_scan_eic1"]["keys_s"]
    # eic 1 and io_combine_limit 1: one 8 KiB leaf read at a time, each its own I/O
    one_leaf = m["cold_scan_one_leaf"]["runs"][0]
    assert one_leaf["keys"] == 500 + auto
    assert one_leaf["read_ios"] >= m["cold_scan"]["runs"][0]["read_ios"]
    assert m["ratios"]["cold_vs_one_leaf"] == \
        m["cold_scan"]["keys_s"] / m["cold_scan_one_leaf"]["keys_s"]
    # The aged store: its own keys, 1,000 per transaction; both cold scans see every key.
    assert report["aged_keys"] == 3000
    assert m["aged_build"]["runs"][0]["puts"] == 3000
    assert m["cold_scan_aged"]["runs"][0]["keys"] == 3000
    assert m["cold_scan_aged_eic1"]["runs"][0]["keys"] == 3000
    assert m["cold_scan_aged"]["runs"][0]["read_ios"] > 1
    assert m["ratios"]["aged_cold_vs_eic1"] == \
        m["cold_scan_aged"]["keys_s"] / m["cold_scan_aged_eic1"]["keys_s"]
    assert "Aged store: 3,000 keys" in format_table(report)
    assert m["get_many"]["runs"][0]["keys"] % 100 == 0
    assert os.listdir(bench_dir) == []
    table = format_table(report)
    assert io_method in table and "scan keys/s" in table
    # Commit placement as the database had it: where this process may use two CPUs (and
    # the C group commit is built) the committers' CPU and the flusher's, else off.
    expected = commit_cpus(str(tmp_path)) if C_GROUP_FLUSH_FOR is not None else None
    assert m["commit_placement"] == (list(expected) if expected else None)
    assert ("commit placement: waiting committers on CPU" if expected
            else "commit placement: off") in table
    # The baselines of the same run: SQLite FULL from one thread, fio's fdatasync rate
    # (where fio is installed), and the method's autocommit rates as ratios of them.
    sqlite_s = report["baselines"]["sqlite"]["puts_s"]
    assert sqlite_s > 0 and len(report["baselines"]["sqlite"]["runs"]) == 1
    fio_s = report["baselines"]["fio"]["syncs_s"]
    assert fio_s is None or fio_s > 0
    r = m["ratios"]
    assert r["auto1_sqlite"] == m["autocommit_1"]["puts_s"] / sqlite_s
    assert r["auto8_sqlite"] == m["autocommit_8"]["puts_s"] / sqlite_s
    assert r["auto1_fio"] == (m["autocommit_1"]["puts_s"] / fio_s if fio_s else None)
    # The paired baseline: SQLite's 1-thread autocommit measured right before each of the
    # method's autocommit figures, the ratio of the two in the same run.
    for t in (1, 8):
        run = m[f"autocommit_{t}"]["runs"][0]
        assert run["sqlite_paired_puts_s"] > 0
        assert r[f"auto{t}_sqlite_paired"] == run["puts_s"] / run["sqlite_paired_puts_s"]
    assert "auto1/SQLite" in table and "paired" in table and "SQLite (WAL, synchronous=FULL)" in table
    # Overwrites of loaded keys (1 thread), beside SQLite's INSERT OR REPLACE right before:
    # they add no key (the scans above count the load and the new-key puts only).
    over = m["overwrite_1"]["runs"][0]
    assert over["threads"] == 1
    assert 1 <= over["wal_flushes"] <= over["puts"] + over["walwriter_flushes"]
    assert r["over1_sqlite_paired"] == over["puts_s"] / over["sqlite_paired_puts_s"]
    assert "over1 puts/s" in table
    # The read/write table: SQLite doing each workload in the same run, and the
    # method's figure as a ratio of it, one table row per workload.
    sr = report["baselines"]["sqlite_reads"]
    assert sr["load"]["puts_s"] > 0 and sr["scan"]["keys_s"] > 0 and sr["cold_scan"]["keys_s"] > 0
    assert m["read_ratios"]["warm random gets"] == m["get"]["gets_s"] / sr["get"]["gets_s"]
    assert m["read_ratios"]["cold ordered scan"] == \
        m["cold_scan"]["keys_s"] / sr["cold_scan"]["keys_s"]
    assert set(m["read_ratios"]) == {row for row, _k, _f in READ_RATIOS}
    for row, _kind, _fig in READ_RATIOS:
        assert row in table


def test_bench_kv_text_output_and_runs(tmp_path, capsys):
    """Two runs on sync: the text table has one row for the method; progress goes to
    stderr, not into the table."""
    code = main(["bench", "kv", "--dir", str(tmp_path / "b"), "--keys", "200", "--seconds",
                 "0.02", "--aged-keys", "1000", "--runs", "2", "--methods", "sync"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "median of 2 runs" in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("sync ")] == ["sync"]
    assert "sync: run 2 of 2" in err and "sync: run" not in out


def test_bench_kv_bad_arguments(tmp_path, capsys):
    """A value size beyond a page is refused by argparse (exit 2) naming the limit."""
    import pytest
    with pytest.raises(SystemExit) as exc:
        main(["bench", "kv", "--dir", str(tmp_path), "--value-size", "9000"])
    assert exc.value.code == 2
    assert "value size must be 0..4000" in capsys.readouterr().err
