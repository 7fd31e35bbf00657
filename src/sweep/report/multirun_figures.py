"""The multirun report's figures: each job's curves per epoch and against training cells seen,
the headline metrics by level of each factor, bio conservation against batch correction. Each is
titled with its sweep and what it shows; each line or dot is labelled by its job's swept values.
"""

from __future__ import annotations

import textwrap

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweep.metric_names import (
    BASELINE_PREFIX,
    BATCH,
    BIO,
    CELLS_SEEN,
    ELBO_VALIDATION,
    EPOCH,
    KL_WEIGHT,
    TOTAL,
)
from sweep.report.headline import axis_label, label
from sweep.report.render import (
    CHAR_WIDTH,
    PlannedFigure,
    cells_seen_axis,
    colours,
    figure_legend,
    panel_figure,
)
from sweep.report.sweep_folder import Sweep
from sweep.report.verdicts import SEED, levels, present_metrics

#: characters of a figure's title line before it wraps (a one-panel figure is 6 inches wide)
TITLE_WIDTH = 60


def titled(sweep: Sweep, title: str) -> str:
    """A figure's title: the sweep's name, then what it shows, wrapped."""
    return textwrap.fill(f"{sweep.folder.resolve().name}: {title}", TITLE_WIDTH)


def job_labels(sweep: Sweep) -> dict[int, str]:
    """Job number -> its swept values (``model=hidden_512 seed=1``), or ``job N`` without any."""
    return {
        row["job"]: " ".join(f"{f}={row[f]}" for f in sweep.factors) or f"job {row['job']}"
        for _, row in sweep.results.iterrows()
    }


def plot_histories(
    sweep: Sweep,
    columns: list[str],
    title: str,
    tables: dict[int, pd.DataFrame] | None = None,
    x: str = EPOCH,
) -> Figure | None:
    """``columns`` of each job's table (``tables``, default history.csv) against ``x`` (epoch,
    or CELLS_SEEN), a panel each, one line per job; per epoch with a marker at each epoch (so
    a one-epoch run shows); the legend below (None without data)."""
    tables = {n: t for n, t in (sweep.histories if tables is None else tables).items() if x in t}
    columns = [c for c in columns if any(c in t for t in tables.values())]
    if not columns:
        return None
    labels = job_labels(sweep)
    last = max(t[x].max() for t in tables.values() if len(t))
    fig, axes = panel_figure(len(columns))
    for ax, column in zip(axes, columns, strict=True):
        for (number, table), colour in zip(tables.items(), colours(len(tables)), strict=True):
            if column in table:
                points = table[[x, column]].dropna()  # scores exist at scored points only
                style = dict(marker="o", ms=4) if x == EPOCH else dict(marker=".", ms=3)
                ax.plot(points[x], points[column], color=colour, label=labels[number], **style)
        if x == EPOCH:
            ax.set_xlim(0.5, last + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlabel(axis_label(x))
        else:
            cells_seen_axis(ax, last)
        ax.set_ylabel(axis_label(column), fontsize="small")
        if len(columns) > 1:
            ax.set_title(axis_label(column).split(" (")[0], fontsize="small")  # no unit
    figure_legend(fig, *axes[0].get_legend_handles_labels())
    fig.suptitle(titled(sweep, title))
    return fig


def scored_between_epochs(scorings: pd.DataFrame) -> bool:
    """Whether a job's integration.csv has a scoring between epoch ends (a fractional epoch)."""
    return bool((scorings[EPOCH] % 1 > 0).any())


def seed_spread(data: pd.DataFrame, factor: str, column: str) -> pd.Series:
    """Per level of ``factor``: the sd across seeds of the seed means of ``column``."""
    return data.groupby([factor, SEED])[column].mean().groupby(level=0).std()


def plot_factor(sweep: Sweep, factor: str) -> Figure | None:
    """Headline metrics by level of ``factor``: mean bars from zero, the sd across seeds as error
    bars (when seeds were swept), jobs as dots, the mean PCA baseline of integration scores as a
    dashed line."""
    complete = sweep.complete
    metrics = present_metrics(complete)
    if not metrics:
        return None
    order = levels(complete, factor)
    position = {level: i for i, level in enumerate(order)}
    seeded = SEED in sweep.factors and factor != SEED
    names = list(map(str, order))
    upright = sum(map(len, names)) <= 24  # side by side under a panel a third of FIGSIZE wide
    fig, axes = panel_figure(len(metrics), 0 if upright else CHAR_WIDTH * max(map(len, names)))
    for ax, metric in zip(axes, metrics, strict=True):
        data = complete.dropna(subset=[metric.key])
        means = data.groupby(factor)[metric.key].mean().reindex(order)
        errors = seed_spread(data, factor, metric.key).reindex(order) if seeded else None
        ax.bar(range(len(order)), means, yerr=errors, capsize=3, color="lightsteelblue")
        ax.scatter(data[factor].map(position), data[metric.key], s=10, color="black", zorder=3)
        baseline = data.get(BASELINE_PREFIX + metric.key)
        if baseline is not None and baseline.notna().any():
            ax.axhline(baseline.mean(), ls="--", color="grey")
            ax.annotate(
                "PCA baseline",
                (1, baseline.mean()),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize="x-small",
            )
        ax.set_xticks(range(len(order)), names, rotation=0 if upright else 90, fontsize="small")
        ax.set_ylim(bottom=min(0, ax.get_ylim()[0]))
        ax.set_xlabel(factor, fontsize="small")
        ax.set_ylabel(axis_label(metric.key), fontsize="small")
        ax.set_title(metric.label, fontsize="small")
    spread = "; error bars: sd across seeds" if seeded else ""
    fig.suptitle(titled(sweep, f"headline metrics by {factor} (bars: mean{spread})"))
    return fig


def plot_bio_vs_batch(sweep: Sweep) -> Figure | None:
    """Bio conservation against batch correction, a dot per job and a grey cross per job's PCA
    baseline where metrics.json has one (None without the scores)."""
    if not {BATCH, BIO} <= set(sweep.complete):
        return None
    data = sweep.complete.dropna(subset=[BATCH, BIO])
    if data.empty:
        return None
    labels = job_labels(sweep)
    fig, (ax,) = panel_figure()
    for (_, row), colour in zip(data.iterrows(), colours(len(data)), strict=True):
        ax.scatter(row[BATCH], row[BIO], color=colour, label=labels[row["job"]])
    if {BASELINE_PREFIX + BATCH, BASELINE_PREFIX + BIO} <= set(data):
        baseline = data[[BASELINE_PREFIX + BATCH, BASELINE_PREFIX + BIO]].dropna()
        ax.scatter(*baseline.T.values, marker="x", color="grey", label="PCA baseline")
    ax.set_xlabel(f"{axis_label(BATCH)}, higher is better")
    ax.set_ylabel(f"{axis_label(BIO)}, higher is better")
    fig.suptitle(titled(sweep, "bio conservation against batch correction"))
    figure_legend(fig, *ax.get_legend_handles_labels())
    return fig


def planned_figures(sweep: Sweep) -> list[PlannedFigure]:
    """Every figure of the report: per-epoch histories, a panel per factor, bio vs batch."""
    seeded = SEED in sweep.factors
    return [
        (
            "elbo_validation.png",
            f"{label(ELBO_VALIDATION)} (the loss) per epoch, lower is better",
            lambda: plot_histories(sweep, [ELBO_VALIDATION], label(ELBO_VALIDATION)),
        ),
        (
            "kl_weight.png",
            "KL weight per epoch",
            lambda: plot_histories(sweep, [KL_WEIGHT], "KL weight"),
        ),
        (
            "convergence.png",
            "integration scores per evaluated epoch (higher is better)",
            lambda: plot_histories(sweep, [BIO, BATCH, TOTAL], "integration scores per epoch"),
        ),
        (
            "by_cells_seen.png",
            f"{label(ELBO_VALIDATION)} and KL weight every few steps (steps.csv), against "
            "training cells seen",
            lambda: plot_histories(
                sweep,
                [ELBO_VALIDATION, KL_WEIGHT],
                "every few steps, against training cells seen",
                sweep.steps,
                CELLS_SEEN,
            ),
        ),
        (
            "scores_by_cells_seen.png",
            "integration scores against training cells seen, where jobs scored between epoch "
            "ends (higher is better)",
            lambda: plot_histories(
                sweep,
                [BIO, BATCH, TOTAL],
                "integration scores",
                {
                    n: sweep.scorings[n]
                    for n in sweep.scorings
                    if scored_between_epochs(sweep.scorings[n])
                },
                CELLS_SEEN,
            ),
        ),
        *[
            (
                f"by_{factor.replace('/', '_')}.png",
                f"headline metrics by `{factor}`"
                + ("" if not seeded or factor == SEED else " (error bars: sd across seeds)"),
                lambda factor=factor: plot_factor(sweep, factor),
            )
            for factor in sweep.factors
        ],
        (
            "bio_vs_batch.png",
            "bio conservation vs batch correction, PCA baseline as crosses",
            lambda: plot_bio_vs_batch(sweep),
        ),
    ]
