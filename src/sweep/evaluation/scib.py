"""Integration quality of a latent space, scored with scib-metrics: the one place to add a metric.

Batch correction is measured against one evaluation batch (``evaluation.batch_keys``, default
dataset_id + donor_id) that does not change with the ``batch`` group, so batch definitions are
compared on one yardstick; bio conservation against ``cell_type``. The unintegrated PCA baseline
(sweep.evaluation.pca) is scored alongside. Neighbours are exact (scikit-learn): on a few
thousand cells that is faster than pynndescent's compilation.

Small evaluation sets: neighbourhoods larger than the cells are cut to all cells, and a metric the
cells cannot support is skipped with its reason (:func:`skipped_metrics`), in the log and
integration.csv. To add a metric: switch it on in :func:`score`'s ``Benchmarker`` (its score then
reaches integration.csv and metrics.json under its snake_case name); if some cells cannot support
it, say when in :func:`skipped_metrics` and name it in :data:`SKIPPABLE`.
"""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd

from sweep.evaluation.cells import EVAL_BATCH, LABEL, MIN_CELLS, EvaluationCells
from sweep.metric_names import BASELINE_PREFIX, BATCH, BIO, TOTAL

#: scib-metrics' aggregate scores -> their names in metrics.json / history.csv (sweep.metric_names)
AGGREGATES = {"Bio conservation": BIO, "Batch correction": BATCH, "Total": TOTAL}
#: the largest neighbourhood scib-metrics' Benchmarker uses (cells, self included; LISI)
NEIGHBORS = 90
#: skippable metrics: our name (integration.csv) -> scib-metrics' BatchCorrection field
SKIPPABLE = {"bras": "bras", "kbet": "kbet_per_label"}


def skipped_metrics(obs: pd.DataFrame) -> dict[str, str]:
    """Batch correction metrics that the evaluation cells (``obs``) cannot support -> why.

    BRAS needs a cell type with cells of 2+ evaluation batches (and not one cell per batch);
    kBET (per cell type) a cell type with :data:`MIN_CELLS`+ cells of 2+ batches.
    """
    types = obs.groupby(LABEL)[EVAL_BATCH].agg(["size", "nunique"])
    mixed = types[types["nunique"] > 1]
    skipped = {}
    if not (mixed["nunique"] < mixed["size"]).any():
        skipped["bras"] = "no cell type has several cells of one batch and cells of another"
    if not (mixed["size"] >= MIN_CELLS).any():
        skipped["kbet"] = f"no cell type has {MIN_CELLS}+ cells from two or more batches"
    return skipped


def exact_neighbors(X: np.ndarray, k: int):
    """scib-metrics' neighbour interface, exact kNN with scikit-learn: ``k`` neighbours (self
    included) of each row of ``X`` (n, d), at most n; so is any neighbourhood cut from them."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    class AtMostAll(NeighborsResults):
        def subset_neighbors(self, n: int) -> NeighborsResults:
            return NeighborsResults(indices=self.indices[:, :n], distances=self.distances[:, :n])

    distances, indices = NearestNeighbors(n_neighbors=min(k, len(X))).fit(X).kneighbors(X)
    return AtMostAll(indices=indices, distances=distances)


def batch_not_applicable(obs: pd.DataFrame) -> str | None:
    """Why batch correction cannot be scored on the evaluation cells (``obs``), or None: they
    come from one evaluation batch (a user's own 10x run: one dataset, one donor)."""
    batches = obs[EVAL_BATCH].unique()
    if len(batches) > 1:
        return None
    return f"one evaluation batch ({batches[0]}): batch correction compares two or more"


def score(cells: EvaluationCells, embedding: np.ndarray, baseline: bool = True) -> dict[str, float]:
    """scib-metrics Benchmarker on the embedding (and the PCA baseline); flat dict of scores.

    Keys: the three aggregates (:data:`AGGREGATES`) and every metric (snake_case) but those of
    :func:`skipped_metrics`, and with ``baseline`` the same for the PCA embedding, prefixed
    ``pca_``. Where batch correction is not applicable (:func:`batch_not_applicable`), its
    aggregate and the total (0.4 batch + 0.6 bio) are NaN and no batch metric is computed. The
    cells must pass :func:`~sweep.evaluation.cells.check_scorable`.
    """
    import anndata
    from scib_metrics.benchmark import BatchCorrection, Benchmarker

    names = {"scvi": "", "pca": BASELINE_PREFIX} if baseline else {"scvi": ""}
    adata = anndata.AnnData(obs=cells.obs.set_axis(cells.obs.index.astype(str)))
    adata.obsm["scvi"] = embedding
    adata.obsm["pca"] = cells.baseline
    one_batch = batch_not_applicable(cells.obs) is not None
    bench = Benchmarker(
        adata,
        batch_key=EVAL_BATCH,
        label_key=LABEL,
        embedding_obsm_keys=list(names),
        batch_correction_metrics=None
        if one_batch
        else BatchCorrection(**{SKIPPABLE[name]: False for name in skipped_metrics(cells.obs)}),
        pre_integrated_embedding_obsm_key="pca",
        n_jobs=1,
        progress_bar=False,
    )
    # scib-metrics runs ~20 full garbage collections a scoring, each over the whole process
    # (~850k objects in a training job): frozen objects are not walked, results are the same
    gc.freeze()
    try:
        bench.prepare(neighbor_computer=exact_neighbors)
        bench.benchmark()
    finally:
        gc.unfreeze()
    results = bench.get_results(min_max_scale=False).drop(index="Metric Type")
    scores = {}
    for embedding_name, prefix in names.items():
        if one_batch:
            scores |= {prefix + BATCH: float("nan"), prefix + TOTAL: float("nan")}
        for name, value in results.loc[embedding_name].items():
            key = AGGREGATES.get(name, name.lower().replace(" ", "_").replace("-", "_"))
            scores[prefix + key] = float(value)
    return scores
