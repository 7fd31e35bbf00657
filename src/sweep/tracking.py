"""Where a job's metrics go: W&B (offline by default) next to our own files in the run folder.

One W&B run per job: it is finished when the job ends, so no two jobs of one process share a run.
The group is the sweep's name (an Optuna trial's: its study's), so one multirun's jobs group
together on the dashboard.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import wandb
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

#: config groups whose chosen option is logged as a top-level W&B config key
GROUPS = (
    "dataset",
    "data",
    "batch",
    "model",
    "plan",
    "loader",
    "trainer",
    "evaluation",
    "experiment",
)


def job_identity(cfg) -> dict:
    """Name, sweep group, overrides and group choices of the current Hydra job.

    Outside Hydra (a plain ``run(cfg)`` call) the job is named "run" with no group.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"name": "run", "group": None, "overrides": [], "choices": {}}
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    choices = {g: hc.runtime.choices[g] for g in GROUPS if hc.runtime.choices.get(g) is not None}
    multirun = hc.mode == RunMode.MULTIRUN
    group = f"{cfg.task_name}-{Path(hc.sweep.dir).name}" if multirun else None
    group = OmegaConf.select(cfg, "optuna.study_name") or group  # an Optuna trial: its study
    name = hc.job.override_dirname or "defaults"
    if multirun:
        name = f"{hc.job.num}:{name}"
    return {"name": name, "group": group, "overrides": overrides, "choices": choices}


def make_wandb_logger(cfg, run_dir: Path, identity: dict) -> Logger | None:
    """A WandbLogger writing into ``run_dir/wandb``, or None for ``logger=none``.

    The run's id, name, group and tags also go to ``run_dir/wandb_run.json``: offline W&B runs
    cannot be read back from Python, and reports need to link jobs to their W&B runs.
    """
    if cfg.logger.kind == "none":
        return None
    config = {
        **identity["choices"],
        "overrides": identity["overrides"],
        "cfg": OmegaConf.to_container(cfg, resolve=True),
    }
    tags = [*cfg.tags, *cfg.logger.tags, *(f"{k}={v}" for k, v in identity["choices"].items())]
    logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=identity["name"],
        group=identity["group"],
        tags=tags,
        save_dir=str(run_dir),
        mode=cfg.logger.mode,
        config=config,
        log_model=False,
        settings=wandb.Settings(silent=True),
    )
    run = logger.experiment  # start the run now, so its folder exists even if training fails
    record = {
        "id": run.id,
        "name": run.name,
        "group": run.group,
        "project": run.project,
        "tags": list(run.tags),
        "mode": cfg.logger.mode,
        "dir": run.settings.sync_dir,
    }
    (run_dir / "wandb_run.json").write_text(json.dumps(record, indent=1))
    return logger


def finish(logger: Logger | None, exit_code: int) -> None:
    """End the job's W&B run (also on failure, marked with the exit code)."""
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        run.finish(exit_code=exit_code)
        if run.settings.mode == "offline":
            log.info("W&B offline run: upload it with `wandb sync %s`", run.settings.sync_dir)
