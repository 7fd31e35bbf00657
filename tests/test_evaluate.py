"""Integration scoring against the synthetic ground truth, and the convergence summary."""

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sweep.data.synthetic import SyntheticConfig, generate
from sweep.evaluate import EVAL_BATCH, LABEL, EvaluationCells, epochs_to_within, pca_baseline, score
from sweep.train import fit
from test_train import compose_train


def cells_of_sources(folder, n_cells: int = 600, seed: int = 0) -> EvaluationCells:
    """A seeded sample of primary cells of generated sources, labelled for scoring."""
    adata = anndata.concat([anndata.read_h5ad(p) for p in sorted(folder.glob("*.h5ad"))])
    adata = adata[adata.obs["is_primary_data"].to_numpy()]
    rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False))
    X = sp.csr_matrix(adata.X[rows])
    obs = pd.DataFrame(
        {
            EVAL_BATCH: adata.obs[["dataset_id", "donor_id"]]
            .astype(str)
            .agg("|".join, axis=1)
            .to_numpy()[rows],
            LABEL: adata.obs["cell_type"].astype(str).to_numpy()[rows],
        }
    )
    return EvaluationCells(
        rows, X, np.zeros(n_cells, np.int32), np.zeros((n_cells, 0), np.int32), obs, pca_baseline(X)
    )


@pytest.mark.slow
def test_stronger_batch_effects_score_worse_batch_correction(tmp_path):
    scores = {}
    for strength in (0.0, 2.0):
        folder = tmp_path / f"s{strength}"
        generate(
            SyntheticConfig(
                output=str(folder),
                n_datasets=4,
                cells_per_dataset=300,
                n_genes=1000,
                n_cell_types=4,
                donors_per_dataset=2,
                batch_effect_strength=strength,
                seed=1,
            )
        )
        cells = cells_of_sources(folder, n_cells=600)
        scores[strength] = score(cells, cells.baseline)
    assert scores[2.0]["batch_correction"] < scores[0.0]["batch_correction"] - 0.05
    # batch effects also blur cell types in an unintegrated embedding
    assert scores[2.0]["bio_conservation"] < scores[0.0]["bio_conservation"]


@pytest.mark.slow
def test_scvi_corrects_batches_better_than_pca_and_keeps_cell_types(store, tmp_path):
    cfg = compose_train(
        store,
        "trainer.max_epochs=30",
        "plan=scvi_default",
        "logger=none",
        "save_model=false",
        "loader.num_workers=0",
        "evaluation=scib",
        "evaluation.epochs=[1,30]",
        "batch=dataset_donor",
        "data.validation_fraction=0.3",
        "trainer.enable_progress_bar=true",  # scvi-tools adds its bar to the callback list
    )
    _, metrics = fit(cfg, tmp_path / "run")
    assert metrics["batch_correction"] > metrics["pca_batch_correction"] + 0.05
    assert metrics["bio_conservation"] > metrics["pca_bio_conservation"] - 0.1
    integration = pd.read_csv(tmp_path / "run" / "integration.csv")
    assert list(integration["epoch"]) == [1, 30]
    assert integration["batch_correction"].iloc[-1] == pytest.approx(metrics["batch_correction"])
    assert metrics["evaluation_cells"] == min(1000, metrics["cells_validation"])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["bio_conservation"].notna().sum() == 2  # logged at the scored epochs only
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 1 <= on_disk["epochs_to_1pct_elbo_validation"] <= 30


def test_epochs_to_within_counts_from_the_last_excursion():
    values = pd.Series([100.0, 50.0, 20.0, 10.5, 10.2, 10.0])
    epochs = pd.Series(range(6))
    assert epochs_to_within(values, epochs, 0.05) == 4  # 10.5 is 5% off: epoch index 3 -> 4th
    assert epochs_to_within(values, epochs, 0.01) == 6
    assert epochs_to_within(values, epochs, 20.0) == 1
    assert epochs_to_within(pd.Series([np.nan, np.nan]), pd.Series([0, 1]), 0.1) is None
