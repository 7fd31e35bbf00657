"""What both reports render alike: markdown tables, the data-set note, the figure style (panels,
colours, legends that are never cut off) and writing figures."""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Callable, Iterable
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from sweep.report.numbers import Format, duration, durations, general, missing

log = logging.getLogger(__name__)

FIGSIZE = (6, 4)  # inches, of one panel
DPI = 100

#: a figure to write: (file name, caption, plot); the plot returns None when there is no data
PlannedFigure = tuple[str, str, Callable[[], Figure | None]]


def cell(value, digits: int = 4, fmt: Format | None = None) -> str:
    """A markdown table cell: floats in ``fmt`` (sweep.report.numbers) or to ``digits``
    significant digits (never an exponent for a large number), missing values empty."""
    if isinstance(value, Real) and not isinstance(value, bool) and fmt is not None:
        return "" if missing(value) else fmt(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else general(value, digits)
    return str(value).replace("|", "\\|")


def markdown_table(
    frame: pd.DataFrame, digits: int = 4, formats: dict[str, Format] | None = None
) -> str:
    """``frame`` as a markdown table: the columns named in ``formats`` in their format
    (sweep.report.numbers.column_formats; times in one unit per column), other floats to
    ``digits`` significant digits."""
    formats = formats or {}
    rows = frame.itertuples(index=False)
    fmts = [formats.get(column) for column in frame.columns]
    fmts = [  # times: one unit per column
        durations(frame.iloc[:, i]) if f is duration else f for i, f in enumerate(fmts)
    ]
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + " --- |" * len(frame.columns),
        *(
            "| "
            + " | ".join(cell(value, digits, f) for value, f in zip(row, fmts, strict=True))
            + " |"
            for row in rows
        ),
    ]
    return "\n".join(lines)


def listing(items: list[str]) -> str:
    """Items in words: ``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def shown_path(path: str | Path, elide: bool = False) -> str:
    """A folder or file as a report names it, without the machine's own paths: relative to the
    working folder when inside it (``outputs/train/multiruns/2026-01-30_10-00-00``), else by its
    name alone (``architecture``; ``…/architecture`` with ``elide``, where a reader must fill in
    the rest, as in a command). A path given relative stays as given."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return f"…/{path.name}" if elide else path.name


#: the URL prefix of a SQLite database file (Optuna's storages)
SQLITE = "sqlite:///"


def shown_storage(storage: str) -> str:
    """A study's storage as a report names it: a journal file or a SQLite file by
    :func:`shown_path` (elided), a database server's URL as it is."""
    if storage.startswith(SQLITE):
        return SQLITE + shown_path(storage.removeprefix(SQLITE), elide=True)
    if "://" in storage:
        return storage
    return shown_path(storage, elide=True)


def shown_command(command: str) -> str:
    """A command line as a report shows it: each absolute path in it (a word, or an override's
    value) by :func:`shown_path` (elided)."""
    words = []
    for word in shlex.split(command):
        key, equals, value = word.partition("=")
        if equals and value.startswith("/"):
            words.append(f"{key}={shown_path(value, elide=True)}")
        elif word.startswith("/"):
            words.append(shown_path(word, elide=True))
        else:
            words.append(shlex.quote(word))
    return " ".join(words)


def data_note(datasets: Iterable[str], subsets: Iterable[str | None] = ()) -> list[str]:
    """Which data set the runs trained on, and on which of its cells when ``data.keep`` or
    ``data.max_cells`` narrowed them (``subsets``: each run's metrics.json ``data_subset``, None
    or "" for a run on every cell, one line); a warning when it is the synthetic demo. [] when
    unknown."""
    datasets = sorted(set(map(str, datasets)))
    if not datasets:
        return []
    lines = [f"Data set: {', '.join(f'`{d}`' for d in datasets)}.", ""]
    subsets = [s if isinstance(s, str) and s else "" for s in subsets]
    narrowed = sorted(set(subsets) - {""})
    if narrowed:
        n = len(subsets)
        some = "" if "" not in subsets else f" ({n - subsets.count('')} of {n} runs)"
        lines += [f"Cells narrowed{some}: {'; or '.join(narrowed)}.", ""]
    if "demo" in datasets:
        lines += [
            "**Demo data**: a small synthetic data set trained for a few epochs on a CPU. "
            "These numbers show what a report looks like; they do not answer the question "
            "for real (Census-scale) data.",
            "",
        ]
    return lines


#: inches a character of a small (``fontsize="small"``) label takes, about
CHAR_WIDTH = 0.075


def panel_figure(n_panels: int = 1, extra_height: float = 0) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes, three to a row, each row ``FIGSIZE`` high plus
    ``extra_height`` inches (for long tick labels)."""
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    size = (FIGSIZE[0], (FIGSIZE[1] + extra_height) * nrows)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def grid_figure(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    """A figure with a (rows, cols) array of axes, panels 3/4 of ``FIGSIZE``, at most three wide."""
    size = (FIGSIZE[0] * min(cols, 3) * 0.75, FIGSIZE[1] * rows * 0.75)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    return fig, np.array(fig.subplots(rows, cols, squeeze=False))


def colours(n: int) -> list:
    """``n`` colours that tell lines apart: tab10 up to 10, tab20 beyond (repeating after 20)."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def figure_legend(fig: Figure, handles: list, labels: list[str]) -> None:
    """A legend below the panels of a constrained-layout figure, in as many columns (at most
    three) as fit its width; the figure grows by the legend's height (and width, for one
    label wider than the figure), so that the legend is never cut off, with 2 entries or 20."""
    for ncols in range(min(3, len(labels)), 0, -1):
        legend = fig.legend(
            handles, labels, loc="outside lower center", ncols=ncols, fontsize="x-small"
        )
        box = legend.get_window_extent()
        if box.width < 0.95 * fig.bbox.width or ncols == 1:
            break
        legend.remove()
    fig.set_size_inches(
        max(fig.get_figwidth(), box.width / fig.dpi + 0.2),
        fig.get_figheight() + box.height / fig.dpi,
    )


def cells_seen_axis(ax, last: float) -> None:
    """An x-axis of training cells seen from 0 to ``last`` (cells), ticks in plain numbers, or
    in millions (``1.5M``) from 1M on."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlim(0, last * 1.03)
    ax.set_xlabel("training cells seen")
    if last >= 1e6:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1e6:g}M"))


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
