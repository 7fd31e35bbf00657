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
