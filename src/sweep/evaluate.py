"""Integration quality of a latent space, scored with scib-metrics on fixed validation cells.

The cells: a seeded subsample of the validation cells (``evaluation.n_cells``), so every job of a
sweep with the same ``data`` filter is scored on the same cells. Batch correction is always
measured against one evaluation batch key (``evaluation.batch_keys``, default dataset_id +
donor_id) that does not change with the ``batch`` group, so batch definitions are compared on one
yardstick; bio conservation against ``cell_type``. An unintegrated baseline (PCA of
log-normalised counts of the same cells) is scored alongside, as scib does. Neighbours are exact
(scikit-learn): on a few thousand cells that is faster than pynndescent's compilation.

Small evaluation sets: settings that cannot be scored at all (fewer than :data:`MIN_CELLS` cells,
one cell type, one evaluation batch) are refused before training (:func:`check_scorable`);
neighbourhoods larger than the cells are cut to all cells, and a metric the cells cannot support
is skipped with its reason (:func:`skipped_metrics`), in the log and integration.csv.

At the last epoch the cells are also laid out in 2-D (:func:`umap_layout`: UMAP of scVI's latent
space and of the PCA baseline) for the run's embedding pictures (sweep.report.embedding).

Also here, for evaluation between epoch ends (sweep.step_evaluation) and the run's summary: the
validation loss of given cells (:func:`validation_loss`) and when a recorded value settled
(:func:`settled_at`, the ``epochs_to_*``/``cells_to_*`` metrics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from lightning.pytorch import Callback
from scvi import REGISTRY_KEYS

from sweep.callbacks import EpochStats
from sweep.checkpoint import rng_untouched
from sweep.data.datamodule import StoreDataModule
from sweep.run_folder import (
    BASELINE_PREFIX,
    BATCH,
    BIO,
    CELLS_SEEN,
    ELBO_VALIDATION,
    EPOCH,
    GLOBAL_STEP,
    KL_LOCAL_VALIDATION,
    RECONSTRUCTION_VALIDATION,
    TOTAL,
)

log = logging.getLogger(__name__)

#: scib-metrics' aggregate scores -> their names in metrics.json / history.csv (sweep.run_folder)
AGGREGATES = {"Bio conservation": BIO, "Batch correction": BATCH, "Total": TOTAL}
EVAL_BATCH, LABEL = "eval_batch", "cell_type"
#: the largest neighbourhood scib-metrics' Benchmarker uses (cells, self included; LISI)
NEIGHBORS = 90
#: fewest evaluation cells that can be scored; also kBET's fewest cells of one cell type
MIN_CELLS = 10
#: skippable metrics: our name (integration.csv) -> scib-metrics' BatchCorrection field
SKIPPABLE = {"bras": "bras", "kbet": "kbet_per_label"}
#: store obs columns that say where a cell comes from, kept with the evaluation cells beside their
#: label and evaluation batch: with the label, what the embedding pictures colour by
SOURCE_COLUMNS = ("dataset_id", "assay", "suspension_type", "donor_id")
#: UMAP's neighbourhood (cells; umap-learn's default)
UMAP_NEIGHBORS = 15


@dataclass
class ModelCells:
    """Cells as the model takes them: counts (n, genes) CSR and the model's own codes,
    ``batch_codes`` (n,) and ``covariate_codes`` (n, k); ``rows``: their store rows."""

    rows: np.ndarray
    X: sp.csr_matrix
    batch_codes: np.ndarray
    covariate_codes: np.ndarray

    def tensors(self, part: slice, device) -> dict[str, torch.Tensor]:
        """The model's input tensors of the cells ``part`` on ``device``."""
        codes = self.batch_codes[part]
        tensors = {
            REGISTRY_KEYS.X_KEY: torch.as_tensor(self.X[part].toarray(), device=device),
            REGISTRY_KEYS.BATCH_KEY: torch.as_tensor(
                codes, dtype=torch.int64, device=device
            ).reshape(-1, 1),
            REGISTRY_KEYS.LABELS_KEY: torch.zeros(
                (codes.shape[0], 1), dtype=torch.int64, device=device
            ),
        }
        if self.covariate_codes.shape[1]:
            tensors[REGISTRY_KEYS.CAT_COVS_KEY] = torch.as_tensor(
                self.covariate_codes[part], dtype=torch.int64, device=device
            )
        return tensors


@dataclass
class EvaluationCells(ModelCells):
    """The cells every evaluation of a job scores: :class:`ModelCells` with labels.

    ``obs`` holds the evaluation batch label and the cell type as strings, and (from a store)
    the :data:`SOURCE_COLUMNS`.
    """

    obs: pd.DataFrame
    baseline: np.ndarray  # (n, n_pcs) PCA of log-normalised counts


def model_cells(dm: StoreDataModule, candidates: np.ndarray, n_cells: int, seed: int) -> ModelCells:
    """``n_cells`` of the store rows ``candidates`` (all when fewer), drawn with ``seed``, in
    store order, as the model takes them."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(candidates, size=min(n_cells, len(candidates)), replace=False))
    return ModelCells(
        rows, dm.counts(rows), dm.encoding.batch_codes[rows], dm.encoding.covariate_codes[rows]
    )


def choose_cells(
    dm: StoreDataModule,
    n_cells: int,
    seed: int,
    batch_keys: list[str],
    separator: str,
    label_key: str = LABEL,
    min_genes: int = 0,
) -> EvaluationCells:
    """Draw ``n_cells`` validation cells (seeded) with at least ``min_genes`` expressed genes and
    read what scoring needs about them; their evaluation batch is the values of ``batch_keys``
    joined with ``separator`` (``batch.separator``, as the model's batch labels are)."""
    validation = np.flatnonzero(dm.split.validation & (dm.n_genes_all >= min_genes))
    cells = model_cells(dm, validation, n_cells, seed)
    table = dm.obs_strings(
        cells.rows, list(dict.fromkeys([*batch_keys, label_key, *SOURCE_COLUMNS]))
    )
    obs = pd.DataFrame(
        {
            EVAL_BATCH: table[batch_keys].astype(str).agg(separator.join, axis=1).to_numpy(),
            LABEL: table[label_key].astype(str).to_numpy(),
            **{column: table[column].astype(str).to_numpy() for column in SOURCE_COLUMNS},
        }
    )
    return EvaluationCells(**vars(cells), obs=obs, baseline=pca_baseline(cells.X))


def check_scorable(obs: pd.DataFrame, evaluation_cfg, data_cfg) -> None:
    """Refuse, before training, evaluation cells (``obs`` of :class:`EvaluationCells`) that no
    integration score can be computed on: raise ``ValueError`` naming the config keys to change.
    """
    n = len(obs)
    off = "or set evaluation=none to train without integration scores"
    if n < MIN_CELLS:
        raise ValueError(
            f"evaluation: {n} validation cells to score (evaluation.n_cells="
            f"{evaluation_cfg.n_cells}, evaluation.min_genes={evaluation_cfg.min_genes}, "
            f"data.validation_fraction={data_cfg.validation_fraction}), at least {MIN_CELLS} "
            f"needed: raise data.validation_fraction or lower evaluation.min_genes, {off}"
        )
    for column, key, value, what in (
        (LABEL, "evaluation.label_key", evaluation_cfg.label_key, "cell types (bio conservation)"),
        (EVAL_BATCH, "evaluation.batch_keys", list(evaluation_cfg.batch_keys), "batches"),
    ):
        values = obs[column].unique()
        if len(values) < 2:
            raise ValueError(
                f"evaluation: {key}={value} has one value ({values[0]!r}) in the {n} evaluation "
                f"cells; scoring needs two or more {what}: choose another {key}, raise "
                f"evaluation.n_cells or data.validation_fraction if the data have more, {off}"
            )


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


def pca_baseline(X: sp.csr_matrix, n_pcs: int = 50) -> np.ndarray:
    """The unintegrated embedding: PCA of log1p(counts normalised to 10^4 per cell), (n, n_pcs)
    with at most ``min(n cells, n genes) - 1`` components (ARPACK's limit)."""
    from sklearn.decomposition import PCA

    totals = np.asarray(X.sum(axis=1)).ravel()
    normalised = sp.diags(1e4 / np.maximum(totals, 1)) @ X
    logged = normalised.log1p().toarray()
    n_pcs = min(n_pcs, min(logged.shape) - 1)
    return PCA(n_components=n_pcs, svd_solver="arpack", random_state=0).fit_transform(logged)


@torch.no_grad()
def latent(module, cells: ModelCells, chunk: int = 1024) -> np.ndarray:
    """Posterior means of the latent space for ``cells``, (n, n_latent); training mode restored."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    means = []
    for first in range(0, cells.X.shape[0], chunk):
        tensors = cells.tensors(slice(first, first + chunk), device)
        inference = module.inference(**module._get_inference_input(tensors))
        means.append(inference["qz"].loc.cpu().numpy())
    module.train(was_training)
    return np.concatenate(means)


@torch.no_grad()
def validation_loss(module, cells: ModelCells, chunk: int = 1024) -> dict[str, float]:
    """The loss terms of ``cells`` as scvi-tools' validation computes them (eval mode, z
    sampled: draw under :func:`~sweep.checkpoint.rng_untouched`), means per cell in nats:
    ``elbo_validation`` (reconstruction + local KL, unweighted), its two terms. Training mode
    restored."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    reconstruction = kl_local = 0.0
    for first in range(0, cells.X.shape[0], chunk):
        losses = module(cells.tensors(slice(first, first + chunk), device))[2]
        reconstruction += float(losses.reconstruction_loss_sum)
        kl_local += float(losses.kl_local_sum)
    module.train(was_training)
    n = cells.X.shape[0]
    return {
        ELBO_VALIDATION: (reconstruction + kl_local) / n,
        RECONSTRUCTION_VALIDATION: reconstruction / n,
        KL_LOCAL_VALIDATION: kl_local / n,
    }


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


def score(cells: EvaluationCells, embedding: np.ndarray, baseline: bool = True) -> dict[str, float]:
    """scib-metrics Benchmarker on the embedding (and the PCA baseline); flat dict of scores.

    Keys: the three aggregates (:data:`AGGREGATES`) and every metric (snake_case) but those of
    :func:`skipped_metrics`, and with ``baseline`` the same for the PCA embedding, prefixed
    ``pca_``. The cells must pass :func:`check_scorable`.
    """
    import anndata
    from scib_metrics.benchmark import BatchCorrection, Benchmarker

    names = {"scvi": "", "pca": BASELINE_PREFIX} if baseline else {"scvi": ""}
    adata = anndata.AnnData(obs=cells.obs.set_axis(cells.obs.index.astype(str)))
    adata.obsm["scvi"] = embedding
    adata.obsm["pca"] = cells.baseline
    bench = Benchmarker(
        adata,
        batch_key=EVAL_BATCH,
        label_key=LABEL,
        embedding_obsm_keys=list(names),
        batch_correction_metrics=BatchCorrection(
            **{SKIPPABLE[name]: False for name in skipped_metrics(cells.obs)}
        ),
        pre_integrated_embedding_obsm_key="pca",
        n_jobs=1,
        progress_bar=False,
    )
    bench.prepare(neighbor_computer=exact_neighbors)
    bench.benchmark()
    results = bench.get_results(min_max_scale=False).drop(index="Metric Type")
    scores = {}
    for embedding_name, prefix in names.items():
        for name, value in results.loc[embedding_name].items():
            key = AGGREGATES.get(name, name.lower().replace(" ", "_").replace("-", "_"))
            scores[prefix + key] = float(value)
    return scores


def umap_layout(cells: EvaluationCells, embedding: np.ndarray, seed: int) -> pd.DataFrame:
    """The evaluation cells in 2-D: UMAP of scVI's latent space ``embedding`` (n, n_latent) and
    of the PCA baseline, (n, 4) coordinates (no unit; sweep.report.embedding's ``SPACES`` and
    ``layout_columns``) beside the cells' label and :data:`SOURCE_COLUMNS`. Seeded: umap-learn
    draws from its own ``RandomState(seed)`` (one thread), so the same cells and embedding give
    the same layout."""
    import umap

    from sweep.report.embedding import SPACES, layout_columns

    coordinates = {}
    for space, values in zip(SPACES, (embedding, cells.baseline), strict=True):
        reducer = umap.UMAP(
            n_neighbors=min(UMAP_NEIGHBORS, len(values) - 1), random_state=seed, n_jobs=1
        )
        coordinates.update(zip(layout_columns(space), reducer.fit_transform(values).T, strict=True))
    labels = [c for c in (LABEL, *SOURCE_COLUMNS) if c in cells.obs]
    return pd.concat([pd.DataFrame(coordinates), cells.obs[labels].reset_index(drop=True)], axis=1)


def position(at: dict) -> str:
    """Where training was (``at``: GLOBAL_STEP, EPOCH, CELLS_SEEN) in words, for the log."""
    if float(at[EPOCH]).is_integer():
        return f"epoch {int(at[EPOCH])}"
    return f"step {at[GLOBAL_STEP]} ({at[CELLS_SEEN]:,} cells seen, epoch {at[EPOCH]:.2f})"


class IntegrationScoring(Callback):
    """Scores the latent space at the end of the listed epochs (1-based) and of the last one,
    and lays the cells out in 2-D at the last one (``layout``, :func:`umap_layout`); scores at
    other moments through :meth:`evaluate` (every N steps: sweep.step_evaluation).

    Each scoring is kept in ``records``, with where training was (GLOBAL_STEP, EPOCH, fractional
    between epoch ends, CELLS_SEEN from ``counter``), the largest neighbourhood used (cells) and
    the metrics skipped ("name: why; ..."); epoch-end scores are also logged per epoch
    (history.csv, W&B). ``seed``: the UMAP layout's.
    """

    def __init__(
        self, cells: EvaluationCells, epochs: list[int], counter: EpochStats, seed: int = 0
    ):
        self.cells = cells
        self.epochs = set(epochs)
        self.counter = counter
        self.seed = seed
        self.layout: pd.DataFrame | None = None
        self.records: list[dict] = []
        self.baseline_scores: dict[str, float] = {}
        self.neighbors = min(NEIGHBORS, len(cells.rows))
        self.skipped = "; ".join(f"{k}: {v}" for k, v in skipped_metrics(cells.obs).items())
        if self.neighbors < NEIGHBORS or self.skipped:
            log.warning(
                "evaluation on %d cells: neighbourhoods of at most %d cells (scib-metrics: %d)%s",
                len(cells.rows),
                self.neighbors,
                NEIGHBORS,
                f"; skipped {self.skipped}" if self.skipped else "",
            )

    @property
    def state_key(self) -> str:
        """Its key in a checkpoint: its name before it was renamed, so a checkpoint written then
        still restores its scores."""
        return "IntegrationCheckpoints"

    def due(self, trainer) -> bool:
        """Whether the current epoch's end is scored: a listed epoch, or the last."""
        epoch = trainer.current_epoch + 1
        return epoch in self.epochs or epoch == trainer.max_epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.due(trainer) or not trainer.is_global_zero:  # with DDP, rank 0 scores
            return
        epoch = trainer.current_epoch + 1
        at = {GLOBAL_STEP: trainer.global_step, EPOCH: epoch, CELLS_SEEN: self.counter.cells_seen}
        scores = self.evaluate(pl_module, at, layout=epoch == trainer.max_epochs)
        for name in AGGREGATES.values():
            pl_module.log(name, scores[name], on_epoch=True)

    def evaluate(self, pl_module, at: dict, layout: bool = False) -> dict[str, float]:
        """Score the latent space now (one process: DDP's rank 0), and with ``layout`` lay the
        cells out in 2-D; ``at``: where training is (GLOBAL_STEP, EPOCH, CELLS_SEEN), kept with
        the scores in ``records``. The scores: :func:`score`'s."""
        started = time.perf_counter()
        # scvi-tools samples z even in eval mode (torch); scib-metrics, sklearn and umap may draw
        # from numpy's global RNG: none of it may shift the training's random streams
        with rng_untouched():
            embedding = latent(pl_module.module, self.cells)
            if self.baseline_scores:  # the baseline does not change during training: scored once
                scores = {**score(self.cells, embedding, baseline=False), **self.baseline_scores}
            else:
                log.info(
                    "scoring %s with the PCA baseline: in a process's first scoring, "
                    "scib-metrics compiles its kernels (JAX, numba) first, 45 s to 5 minutes on "
                    "a CPU, while the progress bar stands still",
                    position(at),
                )
                scores = score(self.cells, embedding)
                self.baseline_scores = {
                    k: v for k, v in scores.items() if k.startswith(BASELINE_PREFIX)
                }
            if layout:
                laid_out = time.perf_counter()
                self.layout = umap_layout(self.cells, embedding, self.seed)
                log.info(
                    "%s: UMAP of the %d evaluation cells (scVI, PCA baseline), %.1f s",
                    position(at),
                    len(self.layout),
                    time.perf_counter() - laid_out,
                )
        self.records.append(
            {
                **at,
                **scores,
                "evaluation_neighbors": self.neighbors,
                "evaluation_skipped": self.skipped,
            }
        )
        log.info(
            "%s: bio conservation %.3f, batch correction %.3f (baseline %.3f, %.3f), %.1f s",
            position(at),
            scores[BIO],
            scores[BATCH],
            scores[BASELINE_PREFIX + BIO],
            scores[BASELINE_PREFIX + BATCH],
            time.perf_counter() - started,
        )
        return scores

    @property
    def final(self) -> dict:
        """The last evaluation's record, without where it was taken (for metrics.json)."""
        if not self.records:
            return {}
        where = (EPOCH, GLOBAL_STEP, CELLS_SEEN)
        return {k: v for k, v in self.records[-1].items() if k not in where}

    def state_dict(self) -> dict:
        """What a resumed run needs (see sweep.checkpoint): the scores so far."""
        return {"records": self.records, "baseline_scores": self.baseline_scores}

    def load_state_dict(self, state: dict) -> None:
        self.records, self.baseline_scores = state["records"], state["baseline_scores"]


def settled_at(values: pd.Series, positions: pd.Series, tolerance: float) -> float | None:
    """The position (of ``positions``: epochs, counted from 1, or cells seen) from which
    ``values`` stay within ``tolerance`` (relative) of the last value; an int when it is whole;
    None if there are no values."""
    values, positions = values.dropna(), positions[values.dropna().index]
    if values.empty:
        return None
    final = values.iloc[-1]
    outside = np.abs(values.to_numpy() - final) > tolerance * max(abs(final), 1e-12)
    last_outside = np.flatnonzero(outside)
    found = float(positions.iloc[last_outside[-1] + 1 if len(last_outside) else 0])
    return int(found) if found.is_integer() else found
