"""The latent space in pictures: a run's evaluation cells in 2-D (UMAP of scVI's latent space, the
PCA baseline beside it), coloured by cell type and by where the cells come from (dataset, assay,
suspension, donor), and the multirun report's lines placing every job's picture in a table.

A run folder holds the layout as ``embedding.csv`` (a row per evaluation cell: the coordinates of
sweep.evaluation.embedding.umap_layout and the cells' labels, written by training) and its picture
``embedding.png``; the picture is drawn from the table alone, so a report can redraw it from the run
folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sweep import run_folder
from sweep.evaluation.embedding import SPACES, layout_columns
from sweep.report.render import DPI, cell, colours
from sweep.report.run_answer import run_title

#: each space's column title
SPACE_TITLES = {"scvi": "scVI latent space", "pca": "PCA baseline (unintegrated)"}
#: the most categories a panel's legend lists; beyond, the panel title gives their number
LEGEND_MAX = 20
#: each colour column in words (others as they are). The store keeps dataset ids, not titles
#: (sweep.data.store: obs holds codes of CODED_COLUMNS only), so datasets are shown by their ids
COLUMN_WORDS = {
    "cell_type": "cell type",
    "dataset_id": "dataset (id)",
    "assay": "assay",
    "suspension_type": "suspension type",
    "donor_id": "donor (id)",
}
#: ids longer than this (CELLxGENE's 36-character UUIDs) are shown by their first ID_SHOWN
#: characters in a legend, as a short git hash is
ID_LONG, ID_SHOWN = 16, 8
PANEL = (4.0, 3.4)  # inches, of one panel (legend beside it not included)


def colour_columns(layout: pd.DataFrame) -> list[str]:
    """The columns of ``layout`` the cells are coloured by: its label columns (the cell type,
    then dataset, assay, ...: all but the coordinates) with two or more values, in order."""
    coordinates = {c for space in SPACES for c in layout_columns(space)}
    return [c for c in layout if c not in coordinates and layout[c].nunique() > 1]


def legend_name(category: str) -> str:
    """A category as its legend shows it: a long id by its first ID_SHOWN characters
    (``53d208b0…``), anything else whole."""
    text = str(category)
    return f"{text[:ID_SHOWN]}…" if len(text) > ID_LONG and " " not in text else text


def plot_embedding(layout: pd.DataFrame, title: str | None = None) -> Figure:
    """A row per colour column (:func:`colour_columns`), a column per space (scVI, PCA): every
    cell a dot, one colour per category (sorted, so jobs on the same cells share colours); the
    legend beside the right panel of its row, or the number of categories past LEGEND_MAX;
    dots shrink as the cells grow in number. ``title``: the run's (its job and settings), above
    the figure's own."""
    rows = colour_columns(layout)
    fig = Figure(
        figsize=(PANEL[0] * len(SPACES) + 2.5, PANEL[1] * len(rows)), dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(len(rows), len(SPACES), squeeze=False)
    dot = min(30.0, max(3.0, 3000 / len(layout)))  # points^2: 3 for 1,000 cells, 30 for 100
    for row, column in zip(axes, rows, strict=True):
        categories = sorted(layout[column].unique())
        palette = colours(len(categories))
        for ax, space in zip(row, SPACES, strict=True):
            x, y = layout_columns(space)
            for i, category in enumerate(categories):
                cells = layout[layout[column] == category]
                ax.scatter(
                    cells[x],
                    cells[y],
                    s=dot,
                    color=palette[i],
                    label=legend_name(category),
                    linewidths=0,
                )
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel("UMAP 1", fontsize="small"), ax.set_ylabel("UMAP 2", fontsize="small")
            ax.set_title(
                f"{SPACE_TITLES[space]}: {COLUMN_WORDS.get(column, column)}", fontsize="small"
            )
        if len(categories) <= LEGEND_MAX:
            row[-1].legend(
                loc="center left",
                bbox_to_anchor=(1.02, 0.5),
                fontsize="x-small",
                markerscale=3,
                frameon=False,
            )
        else:
            title = f"{row[-1].get_title()} ({len(categories)}, no legend)"
            row[-1].set_title(title, fontsize="small")
    cells = f"{len(layout):,} evaluation cells, UMAP"
    fig.suptitle(f"{title}\n{cells}" if title else cells)
    return fig


def draw_embedding(run_dir: Path) -> Path | None:
    """Draw ``embedding.png`` from the run folder's ``embedding.csv``, titled with the run's job
    and settings (its metrics.json); its path, or None when the run has no layout (not
    scored)."""
    layout = run_folder.read_table(run_dir, run_folder.EMBEDDING_TABLE)
    if layout is None:
        return None
    path = Path(run_dir) / run_folder.EMBEDDING_FIGURE
    metrics = run_folder.read_metrics(Path(run_dir)) or {}
    plot_embedding(
        layout.astype({c: str for c in colour_columns(layout)}), run_title(metrics, width=90)
    ).savefig(path)
    return path


def embedding_lines(
    job_dirs: list[Path], out_dir: Path, labels: dict[int, str] | None = None
) -> list[str]:
    """The multirun report's "Embeddings" section: a markdown table, one row per job (its number,
    its label from ``labels`` (job number -> text), its picture), each job's ``embedding.png``
    copied into ``out_dir`` as ``embedding_<job>.png`` so that the report folder stands alone.
    [] when no job has a picture."""
    rows = []
    for job_dir in job_dirs:
        number = int(job_dir.name)
        picture = job_dir / run_folder.EMBEDDING_FIGURE
        label = cell((labels or {}).get(number, ""))
        if picture.is_file():
            copy = f"embedding_{number}.png"
            shutil.copyfile(picture, Path(out_dir) / copy)
            rows.append(f"| {number} | {label} | ![embedding of job {number}]({copy}) |")
        else:
            rows.append(f"| {number} | {label} | no picture (not scored, or not finished) |")
    if not any("![" in row for row in rows):
        return []
    return [
        "## Embeddings",
        "",
        "Each job's evaluation cells in 2-D (UMAP): its scVI latent space (left) beside the "
        "unintegrated PCA baseline (right), a row per colouring (cell type, then dataset, assay, "
        "suspension, donor). Integrated batches mix within a cell type; cell types stay apart. "
        "Datasets and donors are shown by their ids (a long id by its first "
        f"{ID_SHOWN} characters): the store keeps no dataset titles.",
        "",
        "| job | settings | embedding |",
        "| --- | --- | --- |",
        *rows,
        "",
    ]
