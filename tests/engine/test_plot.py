"""``slonik bench ... --plot FILE.png``: the ratios of a real bench run drawn into a real
PNG (matplotlib is in the test extra), the pure collection of ratios from a report, and
the refusals that come before a bench starts."""

import struct

import pytest
from slonik.engine.tools.cli import main
from slonik.engine.tools.plot import PlotError, check_plot_path, ratio_rows, write_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_bench_kv_plot_writes_a_png_of_its_ratios(tmp_path, capsys):
    """A tiny real `slonik bench kv --plot` run prints its table and writes a PNG whose
    picture is taller than the minimum (one bar group per ratio of the report)."""
    out_png = tmp_path / "kv.png"
    code = main(["bench", "kv", "--dir", str(tmp_path / "b"), "--keys", "200", "--seconds",
                 "0.02", "--methods", "sync", "--plot", str(out_png)])
    out, err = capsys.readouterr()
    assert code == 0
    assert "Slonik / SQLite" in out
    assert f"plot written to {out_png}" in err
    width, height = _png_size(out_png)
    assert width > 500 and height > 300


def test_ratio_rows_collects_every_ratio_per_method():
    """Numbers under a key containing 'ratio' (or inside such a dict) are collected per
    method in first-seen order; other numbers are not; a missing one is None."""
    report = {"command": "kv", "methods": {
        "sync": {"ratios": {"auto1_sqlite": 0.5, "auto1_fio": None},
                 "get": {"gets_s": 1000.0},
                 "commit_1": {"ratio": 0.75, "commits_s": 10}},
        "io_uring": {"ratios": {"auto1_sqlite": 1.25}}}}
    labels, values = ratio_rows(report)
    assert labels == ["ratios auto1_sqlite", "ratios auto1_fio", "commit_1 ratio"]
    assert values == {"sync": [0.5, None, 0.75], "io_uring": [1.25, None, None]}


def test_reports_without_ratios_are_refused():
    """Nothing to plot is a clear PlotError, not an empty picture."""
    with pytest.raises(PlotError, match="no ratios"):
        ratio_rows({"methods": {"sync": {"get": {"gets_s": 5.0}}}})
    with pytest.raises(PlotError, match="no per-method results"):
        ratio_rows({"command": "kv"})


def test_write_plot_draws_a_report(tmp_path):
    """write_plot on a hand-made report writes a PNG at the path it returns."""
    path = tmp_path / "r.png"
    report = {"command": "scan", "methods": {"sync": {"ratios": {"fio_depth1": 0.9}},
                                             "worker": {"ratios": {"fio_depth1": None}}}}
    assert write_plot(report, path) == str(path)
    assert _png_size(path)[0] > 0


def test_unwritable_plot_paths_are_refused_before_the_bench_runs(tmp_path, capsys):
    """A missing directory or a directory given as the file: PlotError naming the path,
    and through the CLI exit 1 before any bench output, no file written."""
    with pytest.raises(PlotError, match="does not exist"):
        check_plot_path(tmp_path / "nope" / "x.png")
    with pytest.raises(PlotError, match="is a directory"):
        check_plot_path(tmp_path)
    bench_dir = tmp_path / "b"
    code = main(["bench", "kv", "--dir", str(bench_dir), "--keys", "200", "--seconds",
                 "0.02", "--methods", "sync", "--plot", str(tmp_path / "nope" / "x.png")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "does not exist" in err and out == ""
    assert not bench_dir.exists()
