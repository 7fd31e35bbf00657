"""End to end: synthetic sources -> prepare -> train -> run folder -> load with the seed's snippet.

Also: every plan key reaches the training plan, and bad configs fail before any data is read.
"""

import json
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scvi

from sweep.config import schema
from sweep.paths import REPO_ROOT
from sweep.report.run_report import write_run_report
from sweep.training.job import fit


def compose_train(store: Path, *overrides: str):
    """train.yaml on ``store``, no progress bar, no scoring, and ``overrides``."""
    return schema.compose_train(
        [
            "dataset=prepared",
            f"dataset.path={store}",
            "trainer.enable_progress_bar=false",
            "evaluation=none",  # scib scoring has its own tests (test_evaluate.py)
            *overrides,
        ]
    )


@pytest.mark.slow
def test_train_writes_a_complete_run_folder_that_the_seed_snippet_loads(store, sources, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_train(
        store, "trainer.max_epochs=2", "loader.batch_size=256", "loader.num_workers=1"
    )
    model, metrics = fit(cfg, run_dir, write_page=write_run_report)

    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["epochs"] == 2
    assert metrics["cells_seen"] == 2 * metrics["cells_train"]  # every training cell, every epoch
    assert metrics["n_batch"] == model.summary_stats["n_batch"]
    assert np.isfinite(metrics["elbo_validation"]) and metrics["train_cells_per_s"] > 0
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2]  # the N-th finished epoch
    # plan=czi: (epoch - 1)/20, scvi-tools counting epochs from 0
    assert history["kl_weight"].tolist() == pytest.approx([0.0, 1 / 20])
    assert {
        "elbo_validation",
        "reconstruction_loss_validation",
        "kl_local_validation",
        "elbo_train",
        "train_cells_per_s",
    } <= set(history.columns)
    assert (run_dir / "config_resolved.yaml").is_file()
    # the run's page, without the embedding picture of a scored run
    assert "Not scored (evaluation=none)." in (run_dir / "report.md").read_text()
    assert (run_dir / "curves.png").is_file() and not (run_dir / "embedding.png").exists()
    trainable = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
    assert (metrics["model_parameters"], metrics["model_hidden"]) == (trainable, 128)
    record = json.loads((run_dir / "wandb_run.json").read_text())
    assert Path(record["dir"]).is_dir() and record["mode"] == "offline"

    # the seed's snippet, on a source h5ad (raw counts, all genes)
    adata = anndata.read_h5ad(sources / "dataset_001.h5ad")
    adata.obs["batch"] = adata.obs["donor_id"].astype(str)
    scvi.model.SCVI.prepare_query_anndata(adata, str(run_dir / "model"))
    vae_q = scvi.model.SCVI.load_query_data(adata, str(run_dir / "model"))
    vae_q.is_trained = True  # as CZI's census notebooks do: embed without query training
    latent = vae_q.get_latent_representation()
    assert latent.shape == (adata.n_obs, 50)
    assert np.isfinite(latent).all()

    # SCVI.load on the same cells labelled with the trained batch definition (czi_concat)
    same = anndata.read_h5ad(sources / "dataset_001.h5ad")
    columns = ["dataset_id", "assay", "suspension_type", "donor_id"]
    same.obs["batch"] = same.obs[columns].astype(str).agg("|".join, axis=1)
    scvi.model.SCVI.prepare_query_anndata(same, str(run_dir / "model"))
    loaded = scvi.model.SCVI.load(str(run_dir / "model"), adata=same)
    assert loaded.get_latent_representation().shape == (same.n_obs, 50)


@pytest.mark.slow
def test_every_plan_key_reaches_the_training_plan(store, tmp_path):
    plan = {
        "optimizer": "AdamW",
        "lr": 0.003,
        "weight_decay": 0.02,
        "eps": 1e-5,
        "n_epochs_kl_warmup": 4,
        "max_kl_weight": 0.8,
        "min_kl_weight": 0.2,
        "reduce_lr_on_plateau": True,
    }
    cfg = compose_train(
        store,
        "trainer.max_epochs=3",
        "logger=none",
        "save_model=false",
        "loader.num_workers=0",
        *(f"plan.{k}={v}" for k, v in plan.items()),
    )
    model, _ = fit(cfg, tmp_path / "run")
    training_plan = model.trainer.lightning_module
    optimizer = model.trainer.optimizers[0]
    group = optimizer.param_groups[0]
    seen = {
        "optimizer": type(optimizer).__name__,
        "lr": group["initial_lr"] if "initial_lr" in group else group["lr"],
        "weight_decay": group["weight_decay"],
        "eps": group["eps"],
        "n_epochs_kl_warmup": training_plan.n_epochs_kl_warmup,
        "max_kl_weight": training_plan.max_kl_weight,
        "min_kl_weight": training_plan.min_kl_weight,
        "reduce_lr_on_plateau": bool(model.trainer.lr_scheduler_configs),
    }
    assert seen == pytest.approx(plan)
    assert training_plan.n_steps_kl_warmup is None
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # KL weight = min + (max - min) * epoch / n_epochs_kl_warmup, read from the trained plan
    assert history["kl_weight"].tolist() == pytest.approx([0.2, 0.35, 0.5])


@pytest.mark.slow
def test_same_config_same_model(store, tmp_path):
    overrides = ("trainer.max_epochs=2", "logger=none", "save_model=false", "loader.num_workers=1")
    first = fit(compose_train(store, *overrides), tmp_path / "a")[1]
    second = fit(compose_train(store, *overrides), tmp_path / "b")[1]
    other_seed = fit(compose_train(store, *overrides, "seed=1"), tmp_path / "c")[1]
    assert first["elbo_validation"] == second["elbo_validation"]
    assert first["elbo_train"] == second["elbo_train"]
    assert other_seed["elbo_validation"] != first["elbo_validation"]


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_run_folder_and_wandb_run(store, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_train(
        "-m",
        "dataset=prepared",
        f"dataset.path={store}",
        "model=czi_128,hidden_512",
        "batch=czi_concat,covariates",
        "trainer.max_epochs=1",
        "evaluation=none",
        "trainer.enable_progress_bar=false",
        "loader.num_workers=0",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.callbacks.report.out_root={tmp_path / 'reports'}",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    metrics = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    runs = [json.loads((p / "wandb_run.json").read_text()) for p in jobs]
    assert len({r["id"] for r in runs}) == 4
    assert {r["group"] for r in runs} == {f"train-{sweep_dir.name}"}
    choices = {(m["choices"]["model"], m["choices"]["batch"]) for m in metrics}
    assert choices == {
        (a, b) for a in ("czi_128", "hidden_512") for b in ("czi_concat", "covariates")
    }
    # same data filter: the same validation cells for every job
    assert len({m["cells_validation"] for m in metrics}) == 1
    # czi_concat has more batch categories than dataset+donor (a donor with two assays)
    by_batch = {m["choices"]["batch"]: m["n_batch"] for m in metrics}
    assert by_batch["czi_concat"] > by_batch["covariates"]
    assert all(p.joinpath("model", "model.pt").is_file() for p in jobs)
    assert (tmp_path / "reports" / "sweep" / "report.md").is_file()  # the end-of-sweep callback


def run_train(*overrides: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train.py *overrides`` in ``cwd``, its output captured; at most ``timeout`` s."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_hidden=abc", "model.n_hidden"),
        ("model=czi_256", "did you mean model=czi_128?"),
        ("model.gene_likelihood=gaussian", "model.gene_likelihood='gaussian' is not one of"),
        ("data.validation_fraction=1.5", "data.validation_fraction=1.5 must lie in"),
        ("loader.bogus_key=1", "bogus_key"),
    ],
)
def test_bad_config_fails_before_any_data_is_read(tmp_path, override, message):
    missing = tmp_path / "no-such-store"
    result = run_train("dataset=prepared", f"dataset.path={missing}", override, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "does not exist" not in result.stderr  # it failed on the config, not on the store


def test_missing_store_is_named_with_the_fix(tmp_path):
    result = run_train(
        "dataset=prepared", f"dataset.path={tmp_path / 'nowhere'}", "logger=none", cwd=tmp_path
    )
    assert result.returncode != 0
    assert "nowhere does not exist" in result.stderr and "scvi-sweep-prepare" in result.stderr
