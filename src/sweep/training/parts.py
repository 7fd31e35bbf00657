"""The build step of a training job: everything it is made of, made before training starts.

:func:`build_parts` reads the store's metadata, builds the datamodule, the scVI model, the W&B
logger and the callbacks, and refuses settings that cannot be evaluated, all before the first
training step, so that a bad setting costs seconds rather than an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scvi
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf
from scvi.train._logger import SimpleLogger

from sweep import metric_names, run_folder
from sweep.data.datamodule import StoreDataModule
from sweep.data.demo import resolve_store
from sweep.evaluation.cells import check_scorable, choose_cells, model_cells
from sweep.evaluation.compile_cache import keep_compiled_kernels
from sweep.evaluation.scib import batch_not_applicable
from sweep.model.build import build_scvi
from sweep.paths import cache_dir
from sweep.study.pruning import TrialPruning, pruning_callback
from sweep.training import tracking
from sweep.training.checkpoint import EpochCheckpoint, StepCheckpoint, StopOnNonFiniteLoss
from sweep.training.distributed import is_rank_zero
from sweep.training.epoch_stats import EpochStats
from sweep.training.kl_warmup import KlWarmupWatch
from sweep.training.progress import StepProgress
from sweep.training.resume import requeued
from sweep.training.scoring import IntegrationScoring
from sweep.training.step_evaluation import StepEvaluation


@dataclass
class JobParts:
    """One training job's parts: where it reads (``store``, ``datamodule``), what it trains
    (``model``), who it is (``identity``: name, group, overrides, choices; ``writer``: whether
    this process writes the run folder), where it logs (``history_logger``: scvi-tools'
    in-memory history; ``wandb_logger``), and the callbacks that measure, evaluate and
    checkpoint it and show its progress (``scoring``, ``pruning`` and ``progress`` are None
    when switched off)."""

    run_dir: Path
    store: Path
    datamodule: StoreDataModule
    model: scvi.model.SCVI
    identity: dict
    writer: bool
    history_logger: SimpleLogger
    wandb_logger: Logger | None
    epoch_stats: EpochStats
    warmup: KlWarmupWatch
    scoring: IntegrationScoring | None
    step_evaluation: StepEvaluation
    pruning: TrialPruning | None
    progress: StepProgress | None
    checkpoints: tuple[Callback, ...]

    @property
    def loggers(self) -> list[Logger]:
        return [self.history_logger] + ([self.wandb_logger] if self.wandb_logger else [])

    @property
    def callbacks(self) -> list[Callback]:
        """In the order Lightning calls them: measurement first; the step evaluation before the
        pruning, which reports its rows, and before the step checkpoint, so that a step's row
        is in the checkpoint taken at that step."""
        ordered = (
            self.epoch_stats,
            self.warmup,
            self.scoring,
            self.step_evaluation,
            self.pruning,
            self.progress,
            *self.checkpoints,
        )
        return [c for c in ordered if c is not None]


def data_and_model(cfg, store: Path) -> tuple[StoreDataModule, scvi.model.SCVI]:
    """The job's datamodule over ``store`` and its untrained scVI model, with scvi-tools' seed
    set to ``cfg.seed`` first (the model's initial weights follow from it)."""
    datamodule = StoreDataModule(store, cfg.data, cfg.batch, cfg.loader, seed=cfg.seed)
    scvi.settings.seed = cfg.seed
    model = build_scvi(
        datamodule.manifest.genes,
        datamodule.encoding.batch_categories,
        datamodule.encoding.covariate_categories,
        cfg.model,
        batch_injection=cfg.trainer.batch_injection,
    )
    return datamodule, model


def build_parts(cfg, run_dir: Path) -> JobParts:
    """Build a job's parts from its (validated) config; the run folder gets its config file.

    Parameters
    ----------
    cfg
        The job's config (``conf/train.yaml`` composed, passed by ``sweep.config.schema.validate``).
    run_dir
        The job's run folder (created by the caller).

    Returns
    -------
    The parts, ready to train (:func:`sweep.training.job.fit`).
    """
    store = resolve_store(cfg.dataset)
    datamodule, model = data_and_model(cfg, store)
    identity = tracking.job_identity(cfg.task_name, cfg.optuna.study_name)
    writer = is_rank_zero()  # with DDP, only rank 0 writes the run folder and the W&B run
    wandb_logger = None
    if writer:
        run_folder.write_config(run_dir, cfg)
        wandb_logger = tracking.make_wandb_logger(
            cfg.logger,
            run_dir,
            identity,
            tags=list(cfg.tags),
            resume=cfg.resume or requeued(),  # a requeued job continues its W&B run
            recorded=OmegaConf.to_container(cfg, resolve=True),
        )
    epoch_stats = EpochStats()
    scoring = build_scoring(cfg, datamodule, epoch_stats)
    step_evaluation = build_step_evaluation(cfg, datamodule, scoring, epoch_stats)
    history_logger = SimpleLogger(save_dir=None)
    return JobParts(
        run_dir=run_dir,
        store=store,
        datamodule=datamodule,
        model=model,
        identity=identity,
        writer=writer,
        history_logger=history_logger,
        wandb_logger=wandb_logger,
        epoch_stats=epoch_stats,
        warmup=KlWarmupWatch(),
        scoring=scoring,
        step_evaluation=step_evaluation,
        # after step_evaluation in the callbacks: reports its rows to the trial
        pruning=pruning_callback(cfg.optuna, cfg.optimized_metric, step_evaluation),
        progress=(
            StepProgress(cfg.trainer.progress_log_every_s)
            if cfg.trainer.enable_progress_bar
            else None
        ),
        checkpoints=(
            StopOnNonFiniteLoss(),
            EpochCheckpoint(run_dir, cfg.trainer.checkpoint_every_n_epochs, history_logger),
            StepCheckpoint(run_dir, cfg.trainer.checkpoint_every_n_steps),
        ),
    )


def build_scoring(
    cfg, datamodule: StoreDataModule, counter: EpochStats
) -> IntegrationScoring | None:
    """The integration scoring of ``cfg.evaluation`` on its evaluation cells, or None when it is
    switched off; settings no score can be computed on are refused here, before training. The
    scoring's compiled kernels are kept in the cache folder (sweep.evaluation.compile_cache)."""
    evaluation = cfg.evaluation
    if not evaluation.enabled:
        return None
    cells = choose_cells(
        datamodule,
        evaluation.n_cells,
        evaluation.seed,
        list(evaluation.batch_keys),
        cfg.batch.separator,
        evaluation.label_key,
        evaluation.min_genes,
        evaluation.min_cells_per_batch,
    )
    check_scorable(cells.obs, evaluation, cfg.data)
    one_batch = batch_not_applicable(cells.obs)
    optimized = (
        [cfg.optimized_metric]
        if isinstance(cfg.optimized_metric, str)
        else list(cfg.optimized_metric)
    )
    unscorable = [key for key in optimized if key in (metric_names.BATCH, metric_names.TOTAL)]
    if one_batch and unscorable:
        raise ValueError(
            f"optimized_metric {unscorable} cannot be scored: {one_batch}; optimise "
            f"{metric_names.BIO} or {metric_names.ELBO_VALIDATION} instead, or evaluate on more "
            "than one batch (evaluation.batch_keys)"
        )
    if is_rank_zero():  # the process that scores (DDP's rank 0): before its first scoring
        keep_compiled_kernels(cache_dir())
    return IntegrationScoring(cells, list(evaluation.epochs), counter, evaluation.seed)


def build_step_evaluation(
    cfg, datamodule: StoreDataModule, scoring: IntegrationScoring | None, counter: EpochStats
) -> StepEvaluation:
    """The evaluation between epoch ends: the validation loss every
    ``trainer.validate_every_n_steps`` steps on ``trainer.step_validation_cells`` validation
    cells (seeded by ``data.split_seed``), scoring every ``evaluation.every_n_steps`` steps."""
    validate_every = cfg.trainer.validate_every_n_steps
    cells = None
    if validate_every:
        validation_rows = np.flatnonzero(datamodule.split.validation)  # never empty
        cells = model_cells(
            datamodule, validation_rows, cfg.trainer.step_validation_cells, cfg.data.split_seed
        )
    return StepEvaluation(
        cells,
        validate_every,
        scoring,
        cfg.evaluation.every_n_steps,
        counter,
        datamodule.n_train,
    )
