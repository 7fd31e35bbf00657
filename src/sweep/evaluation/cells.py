"""Which cells a job is evaluated on, read as the model takes them.

:class:`ModelCells` are cells with the model's own codes (for the validation loss every N steps,
sweep.training.step_evaluation); :class:`EvaluationCells` add what scoring needs (their
evaluation batch, cell type and source columns, and the PCA baseline of their counts). The cells
are a seeded subsample of the validation cells, so every job of a sweep with the same ``data``
filter is scored on the same cells. Settings that cannot be scored at all are refused before
training (:func:`check_scorable`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS

from sweep.data.datamodule import StoreDataModule
from sweep.evaluation.pca import pca_baseline

#: the evaluation cells' obs columns: their evaluation batch (``evaluation.batch_keys`` joined)
#: and their label (``evaluation.label_key``)
EVAL_BATCH, LABEL = "eval_batch", "cell_type"
#: fewest evaluation cells that can be scored; also kBET's fewest cells of one cell type
MIN_CELLS = 10
#: store obs columns that say where a cell comes from, kept with the evaluation cells beside their
#: label and evaluation batch: with the label, what the embedding pictures colour by
SOURCE_COLUMNS = ("dataset_id", "assay", "suspension_type", "donor_id")


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
    the :data:`SOURCE_COLUMNS`; ``choice`` says in words how the cells were chosen.
    """

    obs: pd.DataFrame
    baseline: np.ndarray  # (n, n_pcs) PCA of log-normalised counts
    choice: str = "given"

    def batch_sizes(self) -> pd.Series:
        """Evaluation cells of each evaluation batch, largest first."""
        return self.obs[EVAL_BATCH].value_counts()


def read_cells(dm: StoreDataModule, rows: np.ndarray) -> ModelCells:
    """The store rows ``rows`` (sorted) as the model takes them."""
    return ModelCells(
        rows, dm.counts(rows), dm.encoding.batch_codes[rows], dm.encoding.covariate_codes[rows]
    )


def model_cells(dm: StoreDataModule, candidates: np.ndarray, n_cells: int, seed: int) -> ModelCells:
    """``n_cells`` of the store rows ``candidates`` (all when fewer), drawn with ``seed``, in
    store order, as the model takes them."""
    rng = np.random.default_rng(seed)
    return read_cells(
        dm, np.sort(rng.choice(candidates, size=min(n_cells, len(candidates)), replace=False))
    )


def draw_by_batch(
    batches: np.ndarray, n_cells: int, per_batch: int, seed: int
) -> tuple[np.ndarray, str]:
    """Which of the candidate cells to score, so that each scored batch holds enough cells.

    ``batches`` (n,): each candidate's evaluation batch id. A plain seeded draw of ``n_cells``
    is kept when its batches hold ``per_batch`` cells or more on median (the demo: ~55 each).
    Otherwise (thousands of batches: most would hold one or two cells, which batch metrics
    cannot judge) batches are drawn first: ``n_cells // per_batch`` of those with ``per_batch``+
    candidates (at random, at least 2), ``per_batch`` cells of each, the rest of ``n_cells`` at
    random among their other cells.

    Returns
    -------
    (candidate indices, sorted; how they were chosen, in words)
    """
    rng = np.random.default_rng(seed)
    plain = rng.choice(len(batches), size=min(n_cells, len(batches)), replace=False)
    held = np.bincount(batches[plain])
    median = float(np.median(held[held > 0])) if len(plain) else 0.0
    counts = np.bincount(batches)
    eligible = np.flatnonzero(counts >= per_batch)
    if median >= per_batch or len(np.flatnonzero(counts)) < 2 or len(eligible) < 2:
        why = (
            ""
            if median >= per_batch
            else (
                f" (fewer than two batches have {per_batch}+ of them: batch scores rest on small "
                "batches)"
            )
        )
        return np.sort(plain), f"drawn at random from the validation cells{why}"
    chosen = rng.choice(
        eligible, size=min(len(eligible), max(2, n_cells // per_batch)), replace=False
    )
    members = np.flatnonzero(np.isin(batches, chosen))
    members = members[rng.permutation(len(members))]  # a random order within each batch
    ranked = members[np.argsort(batches[members], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(batches[ranked]) != 0])
    rank = np.arange(len(ranked)) - np.repeat(starts, np.diff(np.r_[starts, len(ranked)]))
    first = ranked[rank < per_batch]
    rest = members[~np.isin(members, first)]
    taken = np.concatenate([first, rest[: max(0, n_cells - len(first))]])
    return np.sort(taken), (
        f"batches first: {len(chosen)} of the {len(eligible)} evaluation batches with "
        f"{per_batch}+ validation cells, at random, {per_batch} cells each and the rest at random "
        f"among their cells (a plain draw would have held {median:g} "
        f"cell{'' if median == 1 else 's'} a batch on median)"
    )


def choose_cells(
    dm: StoreDataModule,
    n_cells: int,
    seed: int,
    batch_keys: list[str],
    separator: str,
    label_key: str = LABEL,
    min_genes: int = 0,
    min_cells_per_batch: int = 20,
) -> EvaluationCells:
    """The evaluation cells of a job: validation cells with at least ``min_genes`` expressed
    genes, ``n_cells`` of them (seeded) chosen so that each scored batch holds enough
    (:func:`draw_by_batch`), with what scoring needs about them.

    Parameters
    ----------
    dm
        The job's datamodule (its store, split and encoding).
    n_cells, seed
        How many cells, and the seed of their draw (``evaluation.n_cells``, ``evaluation.seed``).
    batch_keys, separator
        The evaluation batch: these obs columns' values joined with ``separator``
        (``batch.separator``, as the model's batch labels are).
    label_key
        The cell type column (bio conservation).
    min_genes
        Only cells with this many expressed genes (the same cells across data filters).
    min_cells_per_batch
        The cells each scored batch should hold (``evaluation.min_cells_per_batch``).

    Returns
    -------
    The cells, their labels, their PCA baseline and how they were chosen.
    """
    validation = np.flatnonzero(dm.split.validation & (dm.n_genes_all >= min_genes))
    codes = dm.obs_codes(validation, batch_keys)
    batches = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    taken, choice = draw_by_batch(batches, n_cells, min_cells_per_batch, seed)
    cells = read_cells(dm, validation[taken])
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
    # fewer than MIN_CELLS have no PCA to speak of; check_scorable refuses them with the keys
    too_few = len(cells.rows) < MIN_CELLS
    baseline = np.zeros((len(cells.rows), 0), np.float32) if too_few else pca_baseline(cells.X)
    return EvaluationCells(**vars(cells), obs=obs, baseline=baseline, choice=choice)


def check_scorable(obs: pd.DataFrame, evaluation_cfg, data_cfg) -> None:
    """Refuse, before training, evaluation cells (``obs`` of :class:`EvaluationCells`) that bio
    conservation cannot be scored on: raise ``ValueError`` naming the config keys to change.
    (One evaluation batch is a data set, not an error: batch correction is then not applicable,
    :func:`sweep.evaluation.scib.batch_not_applicable`.)
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
    values = obs[LABEL].unique()
    if len(values) < 2:
        key = "evaluation.label_key"
        raise ValueError(
            f"evaluation: {key}={evaluation_cfg.label_key} has one value ({values[0]!r}) in the "
            f"{n} evaluation cells; scoring needs two or more cell types (bio conservation): "
            f"choose another {key}, raise evaluation.n_cells or data.validation_fraction if the "
            f"data have more, {off}"
        )
