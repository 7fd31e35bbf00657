"""One training job, as a recipe: build its parts, train, write its run folder.

``run(cfg, run_dir)`` is what the training command calls for every Hydra job
(sweep.cli.train_command); it returns the value of ``cfg.optimized_metric`` from ``metrics.json``
so sweepers can optimise it. The steps live in their own modules: sweep.training.parts (build),
:func:`train` here, sweep.training.results (write).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import scvi
from omegaconf import OmegaConf

from sweep.training import tracking
from sweep.training.distributed import check_launch, is_rank_zero
from sweep.training.parts import JobParts, build_parts
from sweep.training.results import PageWriter, reset_peak_rss, write_results
from sweep.training.resume import prepare_resume

log = logging.getLogger(__name__)


def run(cfg, run_dir: str | Path, write_page: PageWriter | None = None) -> float | list[float]:
    """Train as ``cfg`` says into a run folder, or reuse its finished run (``resume=true``).

    Parameters
    ----------
    cfg
        The job's config, passed by ``sweep.config.schema.validate`` (the training command
        validates each job before it imports this module).
    run_dir
        The job's run folder (Hydra's output folder).
    write_page
        Writes the run's page once metrics.json is written (see :func:`fit`).

    Returns
    -------
    The optimized metric, ``cfg.optimized_metric`` read from metrics.json; a list of values when
    it is a list of keys (multi-objective sweeps); NaN in a DDP helper process.
    """
    check_launch(cfg.trainer)
    previous = prepare_resume(cfg.resume, Path(run_dir))
    if previous.metrics is not None:  # resume=true found this run finished
        metrics = previous.metrics
    else:
        metrics = fit(cfg, run_dir, previous.checkpoint, write_page)[1]
    if not is_rank_zero():  # a DDP helper process: rank 0 reports
        return float("nan")
    single = isinstance(cfg.optimized_metric, str)
    keys = [cfg.optimized_metric] if single else list(cfg.optimized_metric)
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"optimized_metric {missing} not in metrics.json (keys: {sorted(metrics)})")
    values = [float("nan") if metrics[k] is None else float(metrics[k]) for k in keys]
    shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(keys, values, strict=True))
    log.info("run folder: %s (%s)", run_dir, shown)
    return values[0] if single else values


def fit(
    cfg,
    run_dir: str | Path,
    resume_from: Path | None = None,
    write_page: PageWriter | None = None,
) -> tuple[scvi.model.SCVI, dict]:
    """Build, train and write one job: the recipe.

    Parameters
    ----------
    cfg
        The job's config, passed by ``sweep.config.schema.validate``.
    run_dir
        The run folder to write (created if missing).
    resume_from
        A checkpoint of this run (sweep.training.checkpoint) to continue from.
    write_page
        Writes the run's page from its finished folder (the training command passes
        sweep.report.run_report.write_run_report; training itself never imports the reports).

    Returns
    -------
    (the trained model, the metrics written to metrics.json; {} in a DDP helper process)
    """
    started = time.perf_counter()
    reset_peak_rss()  # this job's peak, not an earlier job's of the same process
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = build_parts(cfg, run_dir)
    exit_code, metrics = 1, {}
    try:
        train(parts, cfg, resume_from)
        if parts.writer:
            metrics = write_results(parts, cfg, started, write_page)
        exit_code = 0
    finally:
        tracking.finish(parts.wandb_logger, exit_code)
    return parts.model, metrics


def train(parts: JobParts, cfg, resume_from: Path | None) -> None:
    """The train step: scvi-tools' ``SCVI.train`` on the store's datamodule with the job's
    callbacks and loggers, ``cfg.trainer`` and ``cfg.plan`` as Lightning and the training plan
    take them; from ``resume_from`` when given."""
    log.info(
        "training %s for %d epoch%s on %d cells, %d batch categories",
        parts.identity["name"],
        cfg.trainer.max_epochs,
        "" if cfg.trainer.max_epochs == 1 else "s",
        parts.datamodule.n_train,
        parts.datamodule.n_batch,
    )
    parts.model.train(
        datamodule=parts.datamodule,
        max_epochs=cfg.trainer.max_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        plan_kwargs=OmegaConf.to_container(cfg.plan, resolve=True),
        check_val_every_n_epoch=1,
        early_stopping=False,
        logger=parts.loggers,
        callbacks=parts.callbacks,
        ckpt_path=str(resume_from) if resume_from else None,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        simple_progress_bar=False,  # not scvi-tools' bar over epochs: StepProgress
        log_every_n_steps=cfg.trainer.log_every_n_steps,
    )
