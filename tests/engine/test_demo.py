"""``slonik demo`` at a small size, and its crash step on its own."""

import os

from slonik.engine.tools.cli import main
from slonik.engine.tools.demo import (
    KV_STORE,
    TXN_KEYS,
    bulk_rows,
    crash_and_verify,
    load,
    scan_cold,
)


def test_demo_small_runs_every_step(tmp_path, capsys):
    """The demo with 3,000 keys and a 1 MB bulk table exits 0: it loads, prints one scan
    row per available io method (with the bulk scan's ratio to sync), SIGKILLs the writer
    and reports every acknowledged write present; --dir keeps the database, which then
    holds the loaded store, both tables and the crash store."""
    from slonik.engine.tools.demo import available_methods

    path = tmp_path / "demo"
    code = main(["demo", "--keys", "3000", "--dir", str(path), "--crash-seconds", "0.3",
                 "--table-mb", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1. Loading 3,000 KV pairs" in out
    table = out.split("2. Cold scans")[1].split("3. Crash")[0]
    rows = [line.split()[0] for line in table.splitlines()[2:] if line.strip()]
    assert rows[1:] == available_methods()          # rows[0] is the dashed rule
    sync_row = next(line.split() for line in table.splitlines() if line.startswith("sync "))
    assert sync_row[5] == "1.00"                     # x sync of sync itself
    assert "every acknowledged write survived; no transaction is partly visible" in out
    from slonik import Database
    with Database.open(path) as db:
        assert db.relations() == {"crash": "kv", "events": "table", "bulk": "table",
                                  KV_STORE: "kv"}
        assert len(db.kv(KV_STORE)) == 3000
        assert db.table("events").count() == 750
        assert db.table("bulk").count() == bulk_rows(1) == 961


def test_demo_refuses_a_non_empty_dir(tmp_path, capsys):
    """--dir naming a directory with files in it is exit 1, and the files are untouched."""
    (tmp_path / "keep.txt").write_text("mine")
    code = main(["demo", "--keys", "10", "--dir", str(tmp_path)])
    assert code == 1
    assert "is not empty" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_scan_cold_reads_from_disk(tmp_path, io_method):
    """A cold scan on a new Database reads the relations through read I/Os (the pool
    starts empty) and sees every key and row of both tables."""
    path = str(tmp_path / "db")
    load(path, 2000, table_mb=0.5, progress=False)
    r = scan_cold(path, io_method)
    assert r.io_method == io_method
    assert r.kv_keys == 2000 and r.table_rows == 500 and r.bulk_rows == bulk_rows(0.5)
    assert r.bulk_bytes >= r.bulk_rows * 1000
    assert r.read_ios > 0 and r.read_bytes > 0


def test_crash_and_verify(tmp_path, io_method):
    """The writer child is SIGKILLed after acknowledging writes; every acknowledged put is
    present after recovery and every transaction is all or nothing."""
    path = str(tmp_path / "db")
    load(path, 10, progress=False)
    result = crash_and_verify(path, io_method, 0.3)
    assert result.ok, result
    assert result.acknowledged_puts > 0
    assert result.acknowledged_puts >= result.acknowledged_transactions * TXN_KEYS
