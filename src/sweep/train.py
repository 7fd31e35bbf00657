"""One training job: config -> store -> datamodule -> scVI -> run folder (model, metrics, history,
step-level history, embedding, health, report.md).

``run(cfg, run_dir)`` is what ``train.py`` calls for every Hydra job; it returns the value of
``cfg.optimized_metric`` from ``metrics.json`` so sweepers can optimise it.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
from omegaconf import OmegaConf
from scvi.train._logger import SimpleLogger

from sweep import run_folder, tracking
from sweep.callbacks import KL_WEIGHT_LOGGED, EpochStats, KlWarmupWatch
from sweep.checkpoint import EpochCheckpoint, StepCheckpoint, StopOnNonFiniteLoss
from sweep.data.datamodule import StoreDataModule
from sweep.data.demo import resolve_store
from sweep.distributed import check_launch, is_rank_zero
from sweep.evaluate import (
    AGGREGATES,
    IntegrationScoring,
    check_scorable,
    choose_cells,
    model_cells,
    settled_at,
)
from sweep.model import build_scvi
from sweep.report.embedding import write_embedding
from sweep.report.run_report import (
    HEALTH,
    LOSS_CHANGE,
    WARMUP,
    batch_category_sizes,
    health,
    last_epoch_change,
    write_run_report,
)
from sweep.resume import prepare_resume
from sweep.step_evaluation import StepEvaluation
from sweep.study.pruning import pruning_callback

log = logging.getLogger(__name__)

#: history columns whose last value becomes a ``final`` metric in metrics.json
FINAL_METRICS = (
    "elbo_train",
    "reconstruction_loss_train",
    "kl_local_train",
    run_folder.ELBO_VALIDATION,
    run_folder.RECONSTRUCTION_VALIDATION,
    run_folder.KL_LOCAL_VALIDATION,
    run_folder.KL_WEIGHT,
)


def history_frame(history: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """scvi-tools' ``model.history`` (one frame per metric) as one table, a row per epoch: epoch
    N is the N-th finished epoch (1, 2, ...; Lightning's ``current_epoch`` + 1).

    Step-indexed entries (Lightning's learning-rate monitor) are left out; EpochStats logs the
    learning rate per epoch instead.
    """
    columns = {
        name: frame.iloc[:, 0]
        for name, frame in history.items()
        if len(frame) and frame.index.name == "epoch"  # scvi-tools' per-epoch frames, 0-based
    }
    columns[run_folder.KL_WEIGHT] = columns.pop(KL_WEIGHT_LOGGED)  # see EpochStats
    table = pd.DataFrame(columns)
    for count in (run_folder.GLOBAL_STEP, run_folder.CELLS_SEEN):  # logged as floats
        table[count] = pd.to_numeric(table[count]).round().astype("Int64")
    table.index = table.index + 1
    table.index.name = run_folder.EPOCH
    return table.reset_index()


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def run(cfg, run_dir: str | Path) -> float | list[float]:
    """Train as ``cfg`` says into the run folder ``run_dir``; return the optimized metric (a list
    of values when ``optimized_metric`` is a list of keys: multi-objective sweeps).

    ``cfg`` has passed ``sweep.config.validate``: train.py validates each job before it imports
    this module."""
    check_launch(cfg)
    previous = prepare_resume(cfg, Path(run_dir))
    if previous.metrics is not None:  # resume=true found this run finished
        metrics = previous.metrics
    else:
        metrics = fit(cfg, run_dir, resume_from=previous.checkpoint)[1]
    if not is_rank_zero():  # a DDP helper process: rank 0 reports
        return float("nan")
    single = isinstance(cfg.optimized_metric, str)
    keys = [cfg.optimized_metric] if single else list(cfg.optimized_metric)
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"optimized_metric {missing} not in metrics.json (keys: {sorted(metrics)})")
    values = [float(metrics[k]) for k in keys]
    shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(keys, values, strict=True))
    log.info("run folder: %s (%s)", run_dir, shown)
    return values[0] if single else values


def fit(cfg, run_dir: str | Path, resume_from: Path | None = None) -> tuple[scvi.model.SCVI, dict]:
    """Train one scVI model as ``cfg`` says and write the run folder; (trained model, metrics).

    ``resume_from``: a checkpoint of this run (sweep.checkpoint) to continue from. ``cfg`` has
    passed ``sweep.config.validate`` (as :func:`run`'s).
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = resolve_store(cfg.dataset)
    datamodule = StoreDataModule(store, cfg.data, cfg.batch, cfg.loader, seed=cfg.seed)
    scvi.settings.seed = cfg.seed
    model = build_scvi(
        datamodule.manifest.genes,
        datamodule.encoding.batch_categories,
        datamodule.encoding.covariate_categories,
        cfg.model,
    )
    identity = tracking.job_identity(cfg)
    writer = is_rank_zero()  # with DDP, only rank 0 writes the run folder and the W&B run
    if writer:
        run_folder.write_config(run_dir, cfg)
    wandb_logger = tracking.make_wandb_logger(cfg, run_dir, identity) if writer else None
    epoch_stats = EpochStats()
    warmup = KlWarmupWatch()
    scoring = None
    pruning = pruning_callback(cfg)  # None unless the job is an Optuna trial
    if cfg.evaluation.enabled:
        cells = choose_cells(
            datamodule,
            cfg.evaluation.n_cells,
            cfg.evaluation.seed,
            list(cfg.evaluation.batch_keys),
            cfg.batch.separator,
            cfg.evaluation.label_key,
            cfg.evaluation.min_genes,
        )
        check_scorable(cells.obs, cfg.evaluation, cfg.data)  # before training: fail at no cost
        scoring = IntegrationScoring(
            cells, list(cfg.evaluation.epochs), epoch_stats, cfg.evaluation.seed
        )
    validation_rows = np.flatnonzero(datamodule.split.validation)  # never empty (selection.py)
    step_evaluation = StepEvaluation(
        model_cells(
            datamodule, validation_rows, cfg.trainer.step_validation_cells, cfg.data.split_seed
        )
        if cfg.trainer.validate_every_n_steps
        else None,
        cfg.trainer.validate_every_n_steps,
        scoring,
        cfg.evaluation.every_n_steps,
        epoch_stats,
        datamodule.n_train,
    )
    history_logger = SimpleLogger(save_dir=None)
    loggers = [history_logger] + ([wandb_logger] if wandb_logger else [])
    stop_on_nan = StopOnNonFiniteLoss()
    epoch_checkpoint = EpochCheckpoint(
        run_dir, cfg.trainer.checkpoint_every_n_epochs, history_logger
    )
    step_checkpoint = StepCheckpoint(run_dir, cfg.trainer.checkpoint_every_n_steps)
    exit_code = 1
    try:
        log.info(
            "training %s for %d epochs on %d cells, %d batch categories",
            identity["name"],
            cfg.trainer.max_epochs,
            datamodule.n_train,
            datamodule.n_batch,
        )
        model.train(
            datamodule=datamodule,
            max_epochs=cfg.trainer.max_epochs,
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            strategy=cfg.trainer.strategy,
            precision=cfg.trainer.precision,
            plan_kwargs=OmegaConf.to_container(cfg.plan, resolve=True),
            check_val_every_n_epoch=1,
            early_stopping=False,
            logger=loggers,
            callbacks=[
                c
                for c in (
                    epoch_stats,
                    warmup,
                    scoring,
                    step_evaluation,  # before the step checkpoint: a step's row is in it
                    pruning,
                    stop_on_nan,
                    epoch_checkpoint,
                    step_checkpoint,
                )
                if c is not None
            ],
            ckpt_path=str(resume_from) if resume_from else None,
            enable_progress_bar=cfg.trainer.enable_progress_bar,
            log_every_n_steps=cfg.trainer.log_every_n_steps,
        )
        if not writer:
            return model, {}
        history = history_frame(model.history)
        run_folder.write_table(run_dir, run_folder.HISTORY_FILE, history)
        steps = pd.DataFrame(step_evaluation.records)
        if len(steps):
            run_folder.write_table(run_dir, run_folder.STEPS_FILE, steps)
        if cfg.save_model:
            model.save(str(run_dir / run_folder.MODEL_DIR), overwrite=True, save_anndata=False)
        metrics = summarize(cfg, datamodule, history, epoch_stats, identity, store, started)
        metrics.update(model_sizes(model))
        loss_record = steps if len(steps) else history  # the finest record of the loss
        tolerance = cfg.evaluation.convergence_tolerance
        metrics.update(convergence({run_folder.ELBO_VALIDATION: loss_record}, tolerance))
        if len(steps):
            metrics[run_folder.STEP_VALIDATION_CELLS] = len(step_evaluation.cells.rows)
        if scoring is not None:
            metrics.update(integration_summary(scoring, cfg.evaluation, run_dir))
            if scoring.layout is not None:  # None when no epoch was left to train (resumed)
                write_embedding(run_dir, scoring.layout)
        metrics["kl_warmup_complete"] = warmup.complete
        if pruning is not None:
            metrics.update(pruning.summary())
        metrics[HEALTH] = health(metrics, warmup.unfinished)
        for check, message in metrics[HEALTH].items():
            if check != WARMUP:  # KlWarmupWatch said it as training ended
                log.warning("run health: %s", message)
        run_folder.write_metrics(run_dir, metrics)
        report = write_run_report(run_dir)
        log.info("run report: %s", report)
        if wandb_logger is not None:
            wandb_logger.experiment.summary.update(
                {k: v for k, v in metrics.items() if isinstance(v, int | float) or k == HEALTH}
            )
            tracking.log_pictures(wandb_logger, run_dir)
        exit_code = 0
    finally:
        tracking.finish(wandb_logger, exit_code)
    return model, metrics


def convergence(tables: dict[str, pd.DataFrame], tolerance: float) -> dict:
    """For each metric name -> the table recording it (history.csv, steps.csv or
    integration.csv rows, in training order): the epochs (``epochs_to_<tolerance>_<name>``) and
    the training cells seen (``cells_to_...``) from which it stays within ``tolerance``
    (relative) of its last value, checked where the table has it."""
    percent = f"{tolerance:.0%}".replace("%", "pct")
    found = {}
    for name, table in tables.items():
        for prefix, position in (
            (run_folder.CONVERGENCE_PREFIX, run_folder.EPOCH),
            (run_folder.CELLS_CONVERGENCE_PREFIX, run_folder.CELLS_SEEN),
        ):
            found[f"{prefix}{percent}_{name}"] = settled_at(table[name], table[position], tolerance)
    return found


def integration_summary(scoring: IntegrationScoring, evaluation_cfg, run_dir: Path) -> dict:
    """Final integration scores, their baseline, and when each aggregate settled within
    ``convergence_tolerance`` of its final value (:func:`convergence`); every scoring goes to
    integration.csv, in training order."""
    records = pd.DataFrame(scoring.records)  # in training order
    run_folder.write_table(run_dir, run_folder.INTEGRATION_FILE, records)
    settled = convergence(
        {name: records for name in AGGREGATES.values()}, evaluation_cfg.convergence_tolerance
    )
    return {**scoring.final, **settled, "evaluation_cells": len(scoring.cells.rows)}


def model_sizes(model: scvi.model.SCVI) -> dict:
    """The built model's real sizes, read from its layers (not the config): genes, hidden units
    and layers of the encoder, latent dimensions, trainable parameters."""
    module = model.module
    encoder_layers = [layer[0] for layer in module.z_encoder.encoder.fc_layers]  # their Linear
    return {
        "model_genes": module.decoder.px_scale_decoder[0].out_features,
        "model_hidden": encoder_layers[0].out_features,
        "model_layers": len(encoder_layers),
        "model_latent": module.z_encoder.mean_encoder.out_features,
        "model_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


def summarize(
    cfg,
    datamodule: StoreDataModule,
    history: pd.DataFrame,
    epoch_stats: EpochStats,
    identity: dict,
    store: Path,
    started: float,
) -> dict:
    """The run's ``metrics.json``: final losses, cost, cell counts and what was run."""
    final = {name: float(history[name].iloc[-1]) for name in FINAL_METRICS if name in history}
    encoding, train = datamodule.encoding, datamodule.split.train
    batch_cells = np.bincount(encoding.batch_codes[train], minlength=datamodule.n_batch)
    return {
        **final,
        LOSS_CHANGE: last_epoch_change(history[run_folder.ELBO_VALIDATION]),
        run_folder.EPOCHS: int(len(history)),
        run_folder.CELLS_SEEN: epoch_stats.cells_seen,
        run_folder.TRAIN_CELLS_PER_S: epoch_stats.cells_per_s,
        run_folder.TRAIN_TIME: epoch_stats.train_time_s,
        "wall_time_s": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        **datamodule.split.counts,
        "n_batch": datamodule.n_batch,
        **batch_category_sizes(batch_cells, encoding.batch_categories),
        "n_cats_per_cov": datamodule.n_cats_per_cov or [],
        "n_genes": datamodule.n_vars,
        "store": str(store),
        "job_name": identity["name"],
        run_folder.OVERRIDES: identity["overrides"],
        run_folder.CHOICES: identity["choices"],
    }
