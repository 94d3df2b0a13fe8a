"""Smoke test of ``slonik bench table`` (command checks, no timing assertions)."""

import json
import os

from slonik.engine.tools.bench_table import format_table
from slonik.engine.tools.cli import main


def test_bench_table_reports_slonik_beside_sqlite(io_method, tmp_path, capsys):
    """A tiny run on one io method prints JSON with SQLite's and Slonik's load, primary
    key lookup, index range and update figures all positive and the ratios computed from them;
    the scratch directory is empty afterwards and the text table renders both engines."""
    bench_dir = tmp_path / "tb"
    code = main(["bench", "table", "--dir", str(bench_dir), "--rows", "600", "--range-rows",
                 "20", "--seconds", "0.05", "--methods", io_method, "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["command"] == "table" and report["rows"] == 600
    m, s = report["methods"][io_method], report["sqlite"]
    for fig in ("load", "lookup", "range", "update"):
        assert s[f"{fig}_rows_s"] > 0 and m[f"{fig}_rows_s"] > 0
        assert m[f"{fig}_vs_sqlite"] == m[f"{fig}_rows_s"] / s[f"{fig}_rows_s"]
    assert os.listdir(bench_dir) == []
    table = format_table(report)
    assert "sqlite" in table and f"slonik {io_method}" in table
