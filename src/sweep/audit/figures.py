"""The audit's figures (matplotlib's object API, no pyplot: no display, no global state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sweep.audit import names
from sweep.audit.categories import OptionCategories
from sweep.audit.gene_filter import MIN_CELLS_TO_NAME, FilterRemovals
from sweep.evaluation.health import SMALL_BATCH_CELLS

#: datasets shown by name in the filter figure (the most removed share first)
TOP_DATASETS = 25
#: one per batch option in the sizes figure
LINESTYLES = ("-", "--", ":", "-.")


def category_sizes_figure(options: dict[str, OptionCategories], path: Path) -> Path | None:
    """Histograms of training cells per batch category, one step line per option, log-spaced
    bins on a log x axis, with the small-category line; None when no option has categories.
    Categories with 0 training cells are drawn at 1 cell (a log axis has no 0)."""
    drawn = {o: c for o, c in options.items() if c.cells.size}
    if not drawn:
        return None
    largest = max(int(c.cells.max()) for c in drawn.values())
    bins = np.logspace(0, np.log10(max(largest, 10)) + 0.05, 40)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, (option, result) in enumerate(drawn.items()):
        label = f"{option}: {result.n_categories:,} ({result.n_small:,} < {SMALL_BATCH_CELLS})"
        ax.hist(
            np.maximum(result.cells, 1),
            bins=bins,
            histtype="step",
            linewidth=1.5,
            linestyle=LINESTYLES[i % len(LINESTYLES)],  # options with the same sizes overlap
            label=label,
        )
    ax.axvline(SMALL_BATCH_CELLS, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training cells per batch category")
    ax.set_ylabel("batch categories")
    ax.set_title("batch category sizes per batch option")
    ax.legend(fontsize="small", title=f"categories (< {SMALL_BATCH_CELLS} training cells)")
    fig.savefig(path, dpi=110)
    return path


def filter_figure(removals: FilterRemovals, path: Path) -> Path | None:
    """The share of primary cells the filter removes: by assay (bars, cells removed beside
    them), and the datasets losing the largest share (the top :data:`TOP_DATASETS` of those
    with at least MIN_CELLS_TO_NAME primary cells) beside a histogram of every dataset's
    removed share. None when the store has no primary cells."""
    if not removals.primary_cells:
        return None
    assays = removals.of("assay").sort_values(names.REMOVED_SHARE)
    datasets = removals.of("dataset_id").sort_values(names.REMOVED_SHARE, ascending=False)
    large = datasets[datasets[names.CELLS] >= MIN_CELLS_TO_NAME]
    named = large if len(large) else datasets
    fig = Figure(figsize=(12, 5), layout="constrained")
    left, middle, right = fig.subplots(1, 3, width_ratios=[1.1, 1.1, 0.9])
    left.barh(assays[names.CATEGORY], assays[names.REMOVED_SHARE] * 100)
    for y, (share, removed) in enumerate(
        zip(assays[names.REMOVED_SHARE], assays[names.REMOVED], strict=True)
    ):
        left.text(share * 100, y, f" {removed:,}", va="center", fontsize="small")
    left.set_xlim(0, max(assays[names.REMOVED_SHARE].max() * 100, 1) * 1.3)  # for the labels
    left.set_xlabel("removed share of primary cells (%)")
    left.set_title("by assay (removed cells beside)")
    top = named.head(TOP_DATASETS).iloc[::-1]
    middle.barh([c[:18] for c in top[names.CATEGORY]], top[names.REMOVED_SHARE] * 100)
    middle.tick_params(axis="y", labelsize=6)
    middle.set_xlabel("removed share of primary cells (%)")
    middle.set_title(f"the {len(top)} datasets losing the most (>= {MIN_CELLS_TO_NAME} cells)")
    right.hist(datasets[names.REMOVED_SHARE] * 100, bins=np.linspace(0, 100, 21))
    right.set_xlabel("removed share of primary cells (%)")
    right.set_ylabel("datasets")
    right.set_title(f"all {len(datasets):,} datasets")
    fig.suptitle(
        f"min_genes={removals.min_genes} removes {removals.removed:,} of "
        f"{removals.primary_cells:,} primary cells ({removals.share:.1%})"
    )
    fig.savefig(path, dpi=110)
    return path


def genes_figure(
    assays: list[str], counts: np.ndarray, thresholds: list[int], path: Path
) -> Path | None:
    """Per assay, the share of its primary cells with fewer than x expressed genes (a
    cumulative curve over log x), with the thresholds marked. ``counts`` (n_assays, max genes
    + 1): primary cells per assay and expressed genes. None when there are no primary cells."""
    if not counts.sum():
        return None
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    genes = np.arange(1, counts.shape[1] + 1)  # below x + 1 genes: cells with <= x
    for name, row in zip(assays, counts, strict=True):
        if row.sum():
            ax.plot(genes, np.cumsum(row) / row.sum() * 100, label=f"{name} ({row.sum():,})")
    for t in thresholds:
        ax.axvline(t, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("expressed genes (over all source genes)")
    ax.set_ylabel("primary cells with fewer (%)")
    ax.set_title("expressed genes per cell, by assay (dashed: the thresholds)")
    ax.legend(fontsize="small", title="assay (primary cells)")
    fig.savefig(path, dpi=110)
    return path
