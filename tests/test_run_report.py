"""A run's own page (report.md, curves, embedding picture), its health checks, and the multirun
report's embedding lines (issue 13)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sweep import run_folder
from sweep.cli.report_command import main
from sweep.data.datamodule import StoreDataModule
from sweep.evaluation.health import (
    SMALL_BATCH_CELLS,
    batch_category_sizes,
    health,
    last_epoch_change,
)
from sweep.metric_names import BELOW_BASELINE, HEALTH, LOSS_CHANGE, STILL_FALLING, WARMUP
from sweep.model.saved import inspect_model
from sweep.report.embedding import embedding_lines
from sweep.report.run_report import plot_curves
from sweep.report.trust import check_words
from sweep.training.kl_warmup import KlWarmupWatch

#: a finished run's metrics.json, as far as the health checks read it
HEALTHY = {
    LOSS_CHANGE: -0.004,
    "bio_conservation": 0.85,
    "pca_bio_conservation": 0.80,
    "batch_correction": 0.50,
    "pca_batch_correction": 0.24,
    "integration_total": 0.71,
    "pca_integration_total": 0.58,
    "n_batch": 20,
    **batch_category_sizes(np.arange(200, 220), [f"b{i}" for i in range(20)]),
}


def test_a_healthy_run_has_no_findings_and_each_check_says_its_numbers():
    assert health(HEALTHY, None) == {}
    warmup = "the KL warm-up had not finished: the last epoch trained at KL weight 0.45 of 1"
    sick = {
        **HEALTHY,
        LOSS_CHANGE: -0.023,
        "bio_conservation": 0.549,
        "integration_total": 0.50,
        **batch_category_sizes(np.array([12, 500, 99, 100, 40]), list("abcde")),
        "n_batch": 5,
    }
    findings = health(sick, warmup)
    assert findings[WARMUP] == warmup
    assert findings[STILL_FALLING].startswith(
        "the validation loss (negative ELBO) was still falling by 2.3% an epoch at the end"
    )
    assert findings[BELOW_BASELINE] == (
        "scVI scored below the unintegrated PCA baseline on bio conservation (0.549 vs 0.800), "
        "total (0.500 vs 0.580)"
    )
    assert findings["small_batch_categories"].startswith(
        f"3 of 5 batch categories have fewer than {SMALL_BATCH_CELLS} training cells"
    )
    assert "(smallest: a: 12 cells; e: 40 cells; c: 99 cells)" in findings["small_batch_categories"]
    # at the thresholds: 1% an epoch and 100 cells pass
    edge = {**HEALTHY, LOSS_CHANGE: -0.01, **batch_category_sizes(np.array([100, 300]), ["x", "y"])}
    assert health(edge, None) == {}


def test_batch_category_sizes_and_the_last_epoch_change():
    sizes = batch_category_sizes(np.array([150, 3, 0, 99, 1000]), ["a", "b", "c", "d", "e"])
    assert sizes == {
        "batch_category_min_cells": 0,
        "small_batch_categories": 3,
        "smallest_batch_categories": {"c": 0, "b": 3, "d": 99},
    }
    assert last_epoch_change(pd.Series([1700.0, 1650.0, 1600.0])) == pytest.approx(-50 / 1650)
    assert last_epoch_change(pd.Series([1608.0])) is None


def test_one_epoch_of_curves_is_a_dot_per_curve_on_integer_epochs():
    history = pd.DataFrame(
        {
            "epoch": [1],
            "elbo_validation": [1600.0],
            "elbo_train": [1650.0],
            "kl_weight": [0.0],
            "bio_conservation": [0.55],
        }
    )
    fig = plot_curves(history, {"pca_bio_conservation": 0.8})
    loss, weight, scores = fig.axes
    assert loss.get_xlim() == (0.5, 1.5)
    for ax in fig.axes:  # epoch ticks are whole epochs
        assert [t for t in ax.get_xticks() if 0.5 <= t <= 1.5] == [1.0]
    assert [line.get_xdata().tolist() for line in loss.get_lines()] == [[1], [1]]
    assert "negative ELBO" in loss.get_title() and loss.get_ylabel().startswith("nats per cell")
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["validation", "training"]
    # scores from zero to one, the PCA baseline as a dashed line beside the scVI dot
    assert scores.get_ylim() == (0, 1)
    scvi, baseline = scores.get_lines()
    assert (list(scvi.get_ydata()), list(baseline.get_ydata())) == ([0.55], [0.8, 0.8])
    assert (baseline.get_linestyle(), baseline.get_label()) == (
        "--",
        "PCA baseline: bio conservation",
    )


@pytest.mark.slow
def test_a_trained_job_writes_its_report_with_model_sizes_scores_and_health(trained_job):
    metrics = run_folder.read_metrics(trained_job)
    history = pd.read_csv(trained_job / "history.csv")
    text = (trained_job / "report.md").read_text()
    for name in ("curves.png", "embedding.png", "embedding.csv"):
        assert (trained_job / name).stat().st_size > 1000
    assert "![the run per epoch](curves.png)" in text and "](embedding.png)" in text

    # the built model's real sizes, checked against the saved weights
    saved = inspect_model(trained_job / "model")
    assert (metrics["model_genes"], metrics["model_hidden"], metrics["model_layers"]) == (
        len(saved.genes),
        saved.n_hidden,
        saved.n_layers,
    )
    assert (metrics["model_latent"], metrics["n_batch"]) == (50, len(saved.batch_categories))
    assert metrics["model_parameters"] == saved.n_parameters
    assert (
        f"Model as built: {len(saved.genes):,} genes, 128 hidden units, 2 layers, 50 latent "
        f"dimensions, {metrics['n_batch']} batch categories, {saved.n_parameters:,} trainable "
        "parameters." in text
    )
    for group, option in metrics["choices"].items():
        assert f"| {group} | {option} |" in text

    # scores against the baseline, in the table and in words
    for key, words in (("bio_conservation", "bio conservation"), ("integration_total", "total")):
        difference = metrics[key] - metrics[f"pca_{key}"]
        assert f"| {words} | {metrics[key]:.3f} | " in text and f"{difference:+.3f} |" in text
        side = "above" if difference >= 0 else "below"
        assert f"{side} it on {words} ({difference:+.3f})" in text

    # health: 3 epochs of CZI's 20-epoch warm-up; ~100 training cells per batch category
    findings = metrics[HEALTH]
    assert findings[WARMUP] == (
        "the KL warm-up had not finished: the last epoch trained at KL weight 0.10 of 1"
    )
    change = (history["elbo_validation"].iloc[-1] - history["elbo_validation"].iloc[-2]) / abs(
        history["elbo_validation"].iloc[-2]
    )
    assert metrics[LOSS_CHANGE] == pytest.approx(change)
    assert (STILL_FALLING in findings) == (change < -0.01)
    aggregates = ("bio_conservation", "batch_correction", "integration_total")
    below = any(metrics[k] < metrics[f"pca_{k}"] for k in aggregates)
    assert (BELOW_BASELINE in findings) == below
    cfg = OmegaConf.load(trained_job / "config_resolved.yaml")
    data = StoreDataModule(cfg.dataset.path, cfg.data, cfg.batch, cfg.loader, seed=cfg.seed)
    cells = np.bincount(data.encoding.batch_codes[data.split.train], minlength=data.n_batch)
    assert cells.sum() == metrics["cells_train"] and metrics["n_batch"] == len(cells)
    assert metrics["batch_category_min_cells"] == cells.min()
    assert metrics["small_batch_categories"] == (cells < SMALL_BATCH_CELLS).sum() > 0
    for message in findings.values():
        assert f"- **WARNING**: {message}" in text
    log = (trained_job / "train.log").read_text()
    for check, message in findings.items():  # each said once; the warm-up by KlWarmupWatch
        assert log.count(message) == 1, check
        assert (f"[sweep.training.kl_warmup][WARNING] - {message}" in log) == (check == WARMUP)


@pytest.mark.slow
def test_the_report_rebuilds_from_the_run_folder_alone(trained_job, tmp_path):
    copy = tmp_path / "run"
    keep = ("metrics.json", "history.csv", "embedding.csv")
    copy.mkdir()
    for name in keep:
        shutil.copyfile(trained_job / name, copy / name)
    main([str(copy)])
    original = (trained_job / "report.md").read_text().split("\n")
    rebuilt = (copy / "report.md").read_text().split("\n")
    # the one line that differs: the folder, by its name (no machine path)
    assert f"Run folder: `{copy.name}`" in rebuilt and str(tmp_path) not in "\n".join(rebuilt)
    assert [line for line in rebuilt if not line.startswith("Run folder:")] == [
        line for line in original if not line.startswith("Run folder:")
    ]
    # the same layout draws the same picture, byte for byte
    assert (copy / "embedding.png").read_bytes() == (trained_job / "embedding.png").read_bytes()


@pytest.mark.slow
def test_the_multirun_report_places_each_jobs_embedding_in_a_row(trained_job, tmp_path):
    unscored = tmp_path / "sweep" / "1"
    unscored.mkdir(parents=True)
    out = tmp_path / "report"
    out.mkdir()
    lines = embedding_lines([trained_job, unscored], out, {0: "model=czi_128", 1: "a|b"})
    assert lines[0] == "## Embeddings" and "| job | settings | embedding |" in lines
    assert "| 0 | model=czi_128 | ![embedding of job 0](embedding_0.png) |" in lines
    assert "| 1 | a\\|b | no picture (not scored, or not finished) |" in lines
    assert (out / "embedding_0.png").read_bytes() == (trained_job / "embedding.png").read_bytes()
    assert embedding_lines([unscored], out) == []


@pytest.mark.slow
def test_a_real_multiruns_report_shows_each_jobs_embedding_and_health(trained_job):
    (report,) = (trained_job.parents[1] / "reports").glob("*/report.md")
    text = report.read_text()
    assert "| 0 | job 0 | ![embedding of job 0](embedding_0.png) |" in text
    assert text.index("## Figures") < text.index("## Embeddings")
    copy = report.parent / "embedding_0.png"
    assert copy.read_bytes() == (trained_job / "embedding.png").read_bytes()
    findings = json.loads((trained_job / "metrics.json").read_text())["health"]
    assert findings  # the tiny store's 3 epochs end mid-warm-up, with small batch categories
    for check, message in findings.items():
        assert f"- **{check_words(check)}**: 1 of 1 complete jobs (0); job 0: {message}\n" in text


def test_the_warmup_watch_keeps_its_end_of_training_warning_for_the_health_check():
    watch = KlWarmupWatch()
    module = type("Plan", (), {"kl_weight": 0.45, "max_kl_weight": 1.0})()
    watch.on_train_epoch_end(None, module)
    assert watch.complete is False
    assert watch.unfinished == (
        "the KL warm-up had not finished: the last epoch trained at KL weight 0.45 of 1"
    )
    module.kl_weight = 1.0
    watch.on_train_epoch_end(None, module)
    assert watch.complete is True and watch.unfinished is None
    assert json.dumps(health(HEALTHY, watch.unfinished)) == "{}"
