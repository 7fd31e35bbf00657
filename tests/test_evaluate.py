"""Integration scoring against the synthetic ground truth, and the convergence summary."""

import json
import logging
import random
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from conftest import synthetic_store
from sweep.config.schema import SyntheticConfig
from sweep.data.synthetic import generate
from sweep.evaluation.cells import (
    EVAL_BATCH,
    LABEL,
    MIN_CELLS,
    SOURCE_COLUMNS,
    EvaluationCells,
    check_scorable,
    draw_by_batch,
)
from sweep.evaluation.convergence import settled_at
from sweep.evaluation.embedding import umap_layout
from sweep.evaluation.pca import pca_baseline
from sweep.evaluation.scib import NEIGHBORS, batch_not_applicable, score, skipped_metrics
from sweep.report.run_report import write_run_report
from sweep.training.job import fit
from sweep.training.rng import rng_untouched
from test_train import compose_train

#: a short run on the tiny store, scored with the default evaluation (epochs 1, 2 and the last)
TINY_RUN = ("trainer.max_epochs=3", "logger=none", "save_model=false", "loader.num_workers=0")


@pytest.fixture(scope="module")
def tiny_scored_run(tiny_store, tmp_path_factory) -> tuple[Path, dict]:
    """(run folder, metrics) of TINY_RUN with ``evaluation=scib`` (the default)."""
    run_dir = tmp_path_factory.mktemp("tiny_scored") / "run"
    return run_dir, fit(compose_train(tiny_store, *TINY_RUN, "evaluation=scib"), run_dir)[1]


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


def test_settled_at_counts_from_the_last_excursion():
    values = pd.Series([100.0, 50.0, 20.0, 10.5, 10.2, 10.0])
    epochs = pd.Series(range(1, 7))
    assert settled_at(values, epochs, 0.05) == 4  # 10.5 (epoch 4) is within 5% of 10
    assert settled_at(values, epochs, 0.01) == 6
    assert settled_at(values, epochs, 20.0) == 1
    assert settled_at(values.iloc[[0, 2, 5]], epochs.iloc[[0, 2, 5]], 0.05) == 6  # scored
    assert settled_at(pd.Series([np.nan, np.nan]), pd.Series([1, 2]), 0.1) is None


@pytest.mark.slow
def test_a_500_cell_data_set_trains_and_is_scored_with_the_default_evaluation(tiny_scored_run):
    """~40 validation cells, fewer than scib-metrics' 90 neighbours: neighbourhoods are cut to
    all cells, metrics the cells cannot support are skipped with their reason, the rest scored."""
    run_dir, metrics = tiny_scored_run
    integration = pd.read_csv(run_dir / "integration.csv", keep_default_na=False)
    n_cells = metrics["evaluation_cells"]
    assert MIN_CELLS <= n_cells < NEIGHBORS and metrics["cells_validation"] == n_cells
    assert list(integration["evaluation_neighbors"]) == [n_cells] * len(integration)
    assert len(integration) == 3  # epochs 1, 2 and the last
    for name in ("bio_conservation", "batch_correction", "integration_total", "silhouette_label"):
        assert integration[name].between(0, 1).all() and 0 <= metrics[name] <= 1
        assert metrics[name] == integration[name].iloc[-1]
    skipped = integration["evaluation_skipped"].iloc[-1]
    for name in ("bras", "kbet"):  # each either scored or skipped with its reason
        assert (name in integration) != (f"{name}: no cell type" in skipped)
    assert metrics["evaluation_skipped"] == skipped


def test_a_setting_that_cannot_be_scored_stops_before_training_naming_the_key(tiny_store, tmp_path):
    cfg = compose_train(tiny_store, *TINY_RUN, "evaluation=scib", "data.validation_fraction=0.01")
    with pytest.raises(ValueError, match=r"at least 10 needed: raise data.validation_fraction"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # no epoch was trained


def test_one_cell_type_is_refused_with_its_key_and_one_batch_is_not_applicable(tmp_path):
    cfg = compose_train(tmp_path, "evaluation=scib", "evaluation.batch_keys=[dataset_id]")
    one_type = pd.DataFrame({EVAL_BATCH: ["a", "b"] * 10, LABEL: ["T cell"] * 20})
    with pytest.raises(ValueError, match=r"label_key=cell_type has one value \('T cell'\) in"):
        check_scorable(one_type, cfg.evaluation, cfg.data)
    # one batch is a data set (issue 21): bio conservation is scored, batch correction is not
    one_batch = pd.DataFrame({EVAL_BATCH: ["a"] * 20, LABEL: ["T cell", "B cell"] * 10})
    check_scorable(one_batch, cfg.evaluation, cfg.data)
    assert batch_not_applicable(one_batch) == (
        "one evaluation batch (a): batch correction compares two or more"
    )
    two_of_each = pd.DataFrame(
        {EVAL_BATCH: ["a", "b"] * 5, LABEL: ["T", "T", "B", "B"] * 2 + ["T"] * 2}
    )
    check_scorable(two_of_each, cfg.evaluation, cfg.data)
    assert batch_not_applicable(two_of_each) is None
    with pytest.raises(ValueError, match=r"9 validation cells to score .* at least 10 needed"):
        check_scorable(two_of_each.iloc[:9], cfg.evaluation, cfg.data)


def test_a_plain_draw_is_kept_where_its_batches_hold_enough_cells():
    batches = np.repeat(np.arange(18), 140)  # the demo: 18 dataset|donor batches, ~2,500 cells
    taken, choice = draw_by_batch(batches, 1000, 20, seed=3)
    plain = np.sort(np.random.default_rng(3).choice(len(batches), size=1000, replace=False))
    assert np.array_equal(taken, plain) and choice == "drawn at random from the validation cells"


def test_thousands_of_small_batches_are_drawn_batch_first():
    """Census-like: 3,000 batches of 1 to 400 validation cells (heavy-tailed); a plain draw of
    1,000 cells would hold 1-2 cells a batch."""
    rng = np.random.default_rng(0)
    sizes = np.minimum(400, np.ceil(rng.pareto(1.2, 3000) * 3)).astype(int)
    batches = np.repeat(np.arange(3000), sizes)
    taken, choice = draw_by_batch(batches, 1000, 20, seed=0)
    held = np.bincount(batches[taken])
    held = held[held > 0]
    assert len(taken) == 1000 and len(np.unique(taken)) == 1000
    assert len(held) == 1000 // 20 and held.min() >= 20  # 50 batches, 20+ cells each
    assert choice.startswith("batches first: 50 of the ")
    assert f"of the {int((np.bincount(batches) >= 20).sum())} evaluation batches" in choice
    again, _ = draw_by_batch(batches, 1000, 20, seed=0)
    assert np.array_equal(taken, again)  # the same cells for every job of a sweep
    other, _ = draw_by_batch(batches, 1000, 20, seed=1)
    assert not np.array_equal(taken, other)
    # too few batches with 20+ cells: the plain draw, and the reason
    few = np.repeat(np.arange(500), 3)
    taken, choice = draw_by_batch(few, 100, 20, seed=0)
    assert len(taken) == 100 and "fewer than two batches have 20+ of them" in choice


@pytest.mark.slow
def test_a_one_batch_data_set_trains_and_is_scored_with_the_defaults(tmp_path, caplog):
    """One dataset, one donor (a user's own 10x run): bio conservation scored, batch correction
    and the total reported as not applicable in the log, integration.csv, metrics.json and the
    run page."""
    store = synthetic_store(
        tmp_path,
        n_top_genes=300,
        n_datasets=1,
        cells_per_dataset=500,
        n_genes=600,
        donors_per_dataset=1,
    )
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="sweep.training.scoring")
    cfg = compose_train(store, *TINY_RUN, "evaluation=scib")
    metrics = fit(cfg, run_dir, write_page=write_run_report)[1]
    reason = metrics["batch_correction_not_applicable"]
    assert reason.startswith("one evaluation batch (") and "compares two or more" in reason
    assert 0 <= metrics["bio_conservation"] <= 1 and 0 <= metrics["pca_bio_conservation"] <= 1
    assert metrics["batch_correction"] is None and metrics["integration_total"] is None
    assert metrics["evaluation_batches"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["batch_correction"] is None
    integration = pd.read_csv(run_dir / "integration.csv", keep_default_na=False)
    assert (integration["evaluation_skipped"] == f"batch correction: {reason}").all()
    said = [r.getMessage() for r in caplog.records if r.name == "sweep.training.scoring"]
    assert any(": bio conservation" in m and "batch correction not applicable" in m for m in said)
    assert any(f"skipped batch correction: {reason}" in m for m in said)
    page = (run_dir / "report.md").read_text()
    assert f"Batch correction and the total were not scored: {reason}." in page
    # a sweep that optimises what cannot be scored is refused before training, not after
    optimising = compose_train(
        store, *TINY_RUN, "evaluation=scib", "optimized_metric=integration_total"
    )
    with pytest.raises(
        ValueError, match=r"\['integration_total'\] cannot be scored: one evaluation"
    ):
        fit(optimising, tmp_path / "run-2")
    assert not (tmp_path / "run-2" / "checkpoints").exists()


def test_batch_metrics_the_cells_cannot_support_are_skipped():
    # every cell type in one batch only: neither BRAS nor kBET has a mixed cell type
    apart = pd.DataFrame({EVAL_BATCH: ["a"] * 12 + ["b"] * 12, LABEL: ["T"] * 12 + ["B"] * 12})
    assert set(skipped_metrics(apart)) == {"bras", "kbet"}
    # one mixed cell type of 6 cells: BRAS can score it, kBET needs 10 cells
    mixed = pd.DataFrame({EVAL_BATCH: ["a", "b"] * 3 + ["a"] * 6, LABEL: ["T"] * 6 + ["B"] * 6})
    assert set(skipped_metrics(mixed)) == {"kbet"}
    big = pd.DataFrame({EVAL_BATCH: ["a", "b"] * 5 + ["a"] * 2, LABEL: ["T"] * 10 + ["B"] * 2})
    assert skipped_metrics(big) == {}


def test_pca_baseline_has_fewer_components_than_cells_and_genes():
    X = sp.random(30, 20, density=0.5, format="csr", random_state=0) * 10
    assert pca_baseline(sp.csr_matrix(X)).shape == (30, 19)
    assert pca_baseline(sp.csr_matrix(X[:12])).shape == (12, 11)


def test_rng_untouched_restores_every_global_random_stream():
    def draws():
        return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = draws()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with pytest.raises(RuntimeError), rng_untouched():
        draws()
        raise RuntimeError("scoring failed")  # restored however the block ends
    assert draws() == expected


@pytest.mark.slow
def test_scoring_leaves_the_training_exactly_as_without_it(tiny_store, tiny_scored_run, tmp_path):
    """Scoring after epochs 1 and 2 draws no number from the training's random streams: the
    validation ELBO of every epoch equals that of the same run with evaluation=none."""
    scored_dir, _ = tiny_scored_run
    fit(compose_train(tiny_store, *TINY_RUN, "evaluation=none"), tmp_path / "plain")
    scored = pd.read_csv(scored_dir / "history.csv")
    plain = pd.read_csv(tmp_path / "plain" / "history.csv")
    assert scored["bio_conservation"].notna().sum() == 3  # scored at every epoch
    assert scored["elbo_validation"].tolist() == plain["elbo_validation"].tolist()
    assert scored["elbo_train"].tolist() == plain["elbo_train"].tolist()


@pytest.mark.slow
def test_the_umap_layout_is_seeded_and_keeps_cell_types_apart():
    """Two cell types far apart in the latent space stay apart in 2-D; the same seed gives the
    same layout, another seed another one; the cells' labels come along."""
    rng = np.random.default_rng(0)
    n = 80
    types = np.repeat(["T cell", "B cell"], n // 2)
    obs = pd.DataFrame(
        {
            EVAL_BATCH: rng.choice(["a|d1", "b|d2"], n),
            LABEL: types,
            **{column: rng.choice([f"{column}-1", f"{column}-2"], n) for column in SOURCE_COLUMNS},
        }
    )
    latent = rng.normal(size=(n, 10)) + 20 * (types == "B cell")[:, None]
    no_codes = np.zeros(n, np.int32), np.zeros((n, 0), np.int32)
    cells = EvaluationCells(np.arange(n), sp.csr_matrix((n, 5)), *no_codes, obs, latent[:, :5])
    layout = umap_layout(cells, latent, seed=0)
    coordinates = ["umap_scvi_1", "umap_scvi_2", "umap_pca_1", "umap_pca_2"]
    assert list(layout.columns) == [*coordinates, LABEL, *SOURCE_COLUMNS]
    assert layout[[LABEL, *SOURCE_COLUMNS]].equals(obs[[LABEL, *SOURCE_COLUMNS]])
    pd.testing.assert_frame_equal(umap_layout(cells, latent, seed=0), layout)
    assert not np.allclose(umap_layout(cells, latent, seed=1)[coordinates], layout[coordinates])
    for space in ("scvi", "pca"):  # each cell's 5 nearest neighbours in 2-D: of its own type
        xy = layout[[f"umap_{space}_1", f"umap_{space}_2"]].to_numpy()
        distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
        nearest = np.argsort(distances, axis=1)[:, 1:6]
        assert (types[nearest] == types[:, None]).mean() > 0.95


@pytest.mark.slow
def test_every_file_numbers_epochs_from_one(tiny_scored_run):
    """Epoch N is the N-th finished epoch in history.csv, integration.csv, last.json and the
    epochs_to_* counts of metrics.json."""
    run_dir, metrics = tiny_scored_run
    history = pd.read_csv(run_dir / "history.csv")
    integration = pd.read_csv(run_dir / "integration.csv")
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    assert list(history["epoch"]) == list(integration["epoch"]) == [1, 2, 3]
    assert last["epoch"] == metrics["epochs"] == 3
    scored = history.dropna(subset=["bio_conservation"])  # scores on the rows of their epochs
    assert scored["bio_conservation"].tolist() == pytest.approx(
        integration["bio_conservation"].tolist(),
        rel=1e-6,  # history holds float32
    )
    elbo = history.set_index("epoch")["elbo_validation"]
    within = (elbo - elbo.iloc[-1]).abs() <= 0.01 * abs(elbo.iloc[-1])
    first_within = min(e for e in elbo.index if within[e:].all())
    assert metrics["epochs_to_1pct_elbo_validation"] == first_within
