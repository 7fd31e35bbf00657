"""What both reports render alike: markdown tables, the figure style, and writing figures."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: the report's text, in its report folder beside its tables and figures
REPORT_FILE = "report.md"
FIGSIZE = (6, 4)  # inches, of one panel
DPI = 100

#: a figure to write: (file name, caption, plot); the plot returns None when there is no data
PlannedFigure = tuple[str, str, Callable[[], Figure | None]]


def cell(value) -> str:
    """A markdown table cell: floats to 4 significant digits, missing values empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table."""
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + " --- |" * len(frame.columns),
        *("| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)),
    ]
    return "\n".join(lines)


def panel_figure(n_panels: int = 1) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes, three to a row, each row ``FIGSIZE`` high."""
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] * nrows), dpi=DPI, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def grid_figure(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    """A figure with a (rows, cols) array of axes, panels 3/4 of ``FIGSIZE``, at most three wide."""
    fig = Figure(figsize=(FIGSIZE[0] * min(cols, 3) * 0.75, FIGSIZE[1] * rows * 0.75), dpi=DPI)
    return fig, np.array(fig.subplots(rows, cols, squeeze=False))


def write_figures(planned: Iterable[PlannedFigure], out_dir: Path) -> list[tuple[str, str]]:
    """Plot and write each planned figure into ``out_dir`` as PNG; (file name, caption) of each
    written (those without data are skipped)."""
    written = []
    for name, caption, plot in planned:
        fig = plot()
        if fig is None:
            log.info("figure %s skipped: no data for it", name)
            continue
        fig.savefig(Path(out_dir) / name)
        written.append((name, caption))
    return written


def figure_lines(figures: list[tuple[str, str]]) -> list[str]:
    """Markdown lines embedding the written figures (:func:`write_figures`), a paragraph each."""
    return [line for name, caption in figures for line in (f"![{caption}]({name})", "")]
