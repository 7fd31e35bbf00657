"""The evaluation cells in 2-D for the embedding pictures: a UMAP of scVI's latent space beside
one of the PCA baseline, with the cells' labels (sweep.report.embedding draws it)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweep.evaluation.cells import LABEL, SOURCE_COLUMNS, EvaluationCells

#: the 2-D layouts of a run: scVI's latent space and the PCA baseline
SPACES = ("scvi", "pca")
#: UMAP's neighbourhood (cells; umap-learn's default)
UMAP_NEIGHBORS = 15


def layout_columns(space: str) -> list[str]:
    """The two coordinate columns of ``space`` (one of :data:`SPACES`) in a layout."""
    return [f"umap_{space}_1", f"umap_{space}_2"]


def umap_layout(cells: EvaluationCells, embedding: np.ndarray, seed: int) -> pd.DataFrame:
    """The evaluation cells in 2-D: UMAP of scVI's latent space ``embedding`` (n, n_latent) and
    of the PCA baseline, (n, 4) coordinates (no unit; :data:`SPACES`, :func:`layout_columns`) beside
    the cells' label and :data:`SOURCE_COLUMNS`. Seeded: umap-learn draws from its own
    ``RandomState(seed)`` (one thread), so the same cells and embedding give the same layout."""
    import umap

    coordinates = {}
    for space, values in zip(SPACES, (embedding, cells.baseline), strict=True):
        reducer = umap.UMAP(
            n_neighbors=min(UMAP_NEIGHBORS, len(values) - 1), random_state=seed, n_jobs=1
        )
        coordinates.update(zip(layout_columns(space), reducer.fit_transform(values).T, strict=True))
    labels = [c for c in (LABEL, *SOURCE_COLUMNS) if c in cells.obs]
    return pd.concat([pd.DataFrame(coordinates), cells.obs[labels].reset_index(drop=True)], axis=1)
