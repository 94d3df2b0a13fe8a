"""``slonik bench scan|kv|wal --plot FILE.png``: the side-by-side result as a picture.

Every bench report holds, per io method, ratios to the baseline measured in the same run
(fio for the device, SQLite for the embedded peer): any numeric value whose key, or whose
enclosing dict's key, contains ``ratio``. ``ratio_rows`` collects them (a pure function of
the report); ``write_plot`` draws one horizontal bar group per ratio, one bar per io
method, with the parity line at 1.0, and writes a PNG.

matplotlib is an optional extra (``pip install 'slonik[plot]'``). It is imported when a
plot is drawn, not when this module is: every ``slonik`` command imports the bench modules
through the CLI, and matplotlib's import costs a few hundred milliseconds that
``slonik get`` must not pay. Without it a bench still runs and prints; ``plot_unavailable``
says why no picture can be drawn, before the bench starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

__all__ = ["PlotError", "add_plot_argument", "check_plot_path", "plot_unavailable",
           "ratio_rows", "write_plot"]

BAR_HEIGHT_IN = 0.22      # inches of figure height per bar
FIGURE_WIDTH_IN = 9.0     # inches
FIGURE_MIN_HEIGHT_IN = 3.0
PLOT_DPI = 110
PLOT_LOG_MARGIN = 1.6      # the log axis reaches this factor past the smallest and largest ratio


class PlotError(ValueError):
    """The report has nothing to plot, or the output path cannot be written."""


def add_plot_argument(parser) -> None:
    """The ``--plot FILE.png`` option of a bench command."""
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also draw the ratios to the baselines into this PNG file "
                             "(needs matplotlib: pip install 'slonik[plot]')")


def check_plot_path(path: str | os.PathLike) -> None:
    """PlotError unless ``path`` can be written as a file (checked before a bench runs,
    so a long bench does not end in a refusal)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise PlotError(f"--plot {path!r} is a directory; give a file name such as plot.png")
    if not os.path.isdir(parent):
        raise PlotError(f"--plot {path!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise PlotError(f"--plot {path!r}: directory {parent!r} is not writable")


def plot_unavailable() -> str | None:
    """None when matplotlib can be imported, else what to install."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install 'slonik[plot]')"
    return None


def _ratios(node: object, path: tuple[str, ...], inside: bool,
            out: dict[str, float | None]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _ratios(value, path + (str(key),), inside or "ratio" in str(key), out)
    elif inside and (node is None or isinstance(node, int | float)) \
            and not isinstance(node, bool):
        out[" ".join(path)] = None if node is None else float(node)


def ratio_rows(report: dict) -> tuple[list[str], dict[str, list[float | None]]]:
    """(labels, {method: value per label}) of every ratio in ``report["methods"]``, labels
    in first-seen order; a method without a label's ratio gets None there."""
    methods = report.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise PlotError("the bench report has no per-method results to plot")
    per_method: dict[str, dict[str, float | None]] = {}
    labels: list[str] = []
    for method, result in methods.items():
        found: dict[str, float | None] = {}
        _ratios(result, (), False, found)
        per_method[method] = found
        labels += [label for label in found if label not in labels]
    if not labels:
        raise PlotError("the bench report holds no ratios to a baseline (nothing to plot)")
    return labels, {m: [found.get(label) for label in labels]
                    for m, found in per_method.items()}


def write_plot(report: dict, path: str | os.PathLike) -> str:
    """Draw ``report``'s ratios into the PNG file ``path``; returns the path written."""
    reason = plot_unavailable()
    if reason is not None:
        raise PlotError(f"cannot draw {os.fspath(path)!r}: {reason}")
    labels, values = ratio_rows(report)
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # files only: no display needed
    pyplot = importlib.import_module("matplotlib.pyplot")
    methods = list(values)
    group = len(methods) + 1  # one gap between label groups
    height = max(FIGURE_MIN_HEIGHT_IN, BAR_HEIGHT_IN * group * len(labels))
    fig, ax = pyplot.subplots(figsize=(FIGURE_WIDTH_IN, height), dpi=PLOT_DPI)
    try:
        # Ratios span 0.1 to 100+ (a rate next to an RSS growth): a log axis with every
        # bar drawn from parity (1.0), left when below it, right when above it.
        ax.set_xscale("log")
        ticker = importlib.import_module("matplotlib.ticker")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        shown = [v for vs in values.values() for v in vs if v is not None and v > 0]
        ax.set_xlim(min(shown + [1.0]) / PLOT_LOG_MARGIN, max(shown + [1.0]) * PLOT_LOG_MARGIN)
        for i, method in enumerate(methods):
            ys = [row * group + i for row in range(len(labels))]
            xs = [v if v is not None and v > 0 else 1.0 for v in values[method]]
            bars = ax.barh(ys, [x - 1.0 for x in xs], left=1.0, height=0.9, label=method)
            for bar, x, v in zip(bars, xs, values[method], strict=True):
                ax.annotate("n/a" if v is None else f"{v:.2f}",
                            (max(x, 1.0), bar.get_y() + bar.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7)
        ax.set_yticks([row * group + (len(methods) - 1) / 2 for row in range(len(labels))],
                      labels)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("ratio to the baseline measured in the same run (1.0 = parity; log scale)")
        ax.set_title(f"slonik bench {report.get('command', '')}".rstrip())
        # Outside the axes, right of them: inside, it covered the longest bars.
        ax.legend(title="io method", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        try:
            fig.savefig(path, format="png")
        except OSError as e:
            raise PlotError(f"cannot write the plot to {os.fspath(path)!r}: {e}") from e
    finally:
        pyplot.close(fig)
    return os.fspath(path)
