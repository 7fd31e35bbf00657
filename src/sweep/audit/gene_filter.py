"""What the ``min_genes`` filter removes: primary cells with fewer expressed genes than the
threshold (``n_genes_all``: over ALL source genes, as CZI's filter counts them), per category of
dataset, assay, suspension type, cell type and tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep.audit import names

#: a category is named "most affected by share" only with at least this many primary cells:
#: a 3-cell dataset that loses all 3 is not news
MIN_CELLS_TO_NAME = 100


@dataclass
class FilterRemovals:
    """One threshold's removals. ``table``: one row per (column, category) with primary cells,
    columns column, category, cells (primary), removed, removed_share (0-1), sorted by column
    (:data:`~sweep.audit.names.FILTER_COLUMNS` order), then removed cells, most first."""

    min_genes: int
    primary_cells: int
    removed: int
    table: pd.DataFrame

    @property
    def share(self) -> float:
        """Removed share of the primary cells, 0-1."""
        return self.removed / max(self.primary_cells, 1)

    def of(self, column: str) -> pd.DataFrame:
        """The rows of one obs column."""
        return self.table[self.table[names.COLUMN] == column]

    def most_affected(self, column: str) -> dict:
        """The category of ``column`` with the largest removed share (among those with at least
        :data:`MIN_CELLS_TO_NAME` primary cells, or all when none has) and the one with the
        most removed cells: {"by_share": row, "by_cells": row}, each row a dict of the table's
        columns, or {} when nothing of ``column`` is removed."""
        rows = self.of(column)
        rows = rows[rows[names.REMOVED] > 0]
        if rows.empty:
            return {}
        named = rows[rows[names.CELLS] >= MIN_CELLS_TO_NAME]
        named = rows if named.empty else named
        by_share = named.sort_values([names.REMOVED_SHARE, names.REMOVED], ascending=False)
        return {
            "by_share": by_share.iloc[0].to_dict(),
            "by_cells": rows.iloc[0].to_dict(),  # the table is sorted by removed cells
        }

    def summary(self) -> dict:
        """audit.json's entry for this threshold: removed cells and share, and per column its
        most affected categories (:meth:`most_affected`)."""
        return {
            names.REMOVED: self.removed,
            names.REMOVED_SHARE: self.share,
            "most_affected": {c: self.most_affected(c) for c in names.FILTER_COLUMNS},
        }


def filter_removals(
    columns: dict[str, np.ndarray],
    vocab: dict[str, list[str]],
    primary: np.ndarray,
    n_genes_all: np.ndarray,
    min_genes: int,
) -> FilterRemovals:
    """Count the primary cells that ``n_genes_all >= min_genes`` removes, per category.

    Parameters
    ----------
    columns
        The obs code columns of :data:`~sweep.audit.names.FILTER_COLUMNS`, each (n_cells,)
        integer codes into ``vocab[name]``.
    vocab
        The manifest's vocabularies.
    primary
        (n_cells,) bool: the cells counted (``is_primary_data``).
    n_genes_all
        (n_cells,) expressed genes per cell over all source genes.
    min_genes
        The filter's threshold: a cell with fewer expressed genes is removed.

    Returns
    -------
    FilterRemovals
        The totals and the per-category table.
    """
    below = n_genes_all[primary] < min_genes
    parts = []
    for column in names.FILTER_COLUMNS:
        codes = columns[column][primary]
        size = len(vocab[column])
        cells = np.bincount(codes, minlength=size)
        removed = np.bincount(codes[below], minlength=size)
        present = np.flatnonzero(cells)
        part = pd.DataFrame(
            {
                names.COLUMN: column,
                names.CATEGORY: np.asarray(vocab[column], dtype=object)[present],
                names.CELLS: cells[present],
                names.REMOVED: removed[present],
                names.REMOVED_SHARE: removed[present] / cells[present],
            }
        )
        parts.append(part.sort_values([names.REMOVED, names.CATEGORY], ascending=[False, True]))
    return FilterRemovals(
        min_genes=min_genes,
        primary_cells=int(primary.sum()),
        removed=int(below.sum()),
        table=pd.concat(parts, ignore_index=True),
    )


def genes_per_cell(
    codes: np.ndarray, n_values: int, primary: np.ndarray, n_genes_all: np.ndarray
) -> np.ndarray:
    """Primary cells per (category, expressed genes): (n_values, max genes + 1) int64, from
    which the share of each category's cells below any threshold follows (a cumulative sum)."""
    genes = n_genes_all[primary].astype(np.int64)
    width = int(genes.max(initial=0)) + 1
    flat = codes[primary].astype(np.int64) * width + genes
    return np.bincount(flat, minlength=n_values * width).reshape(n_values, width)
