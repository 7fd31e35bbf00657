"""Where a job's metrics go: W&B (offline by default) next to our own files in the run folder.

One W&B run per job: it is finished when the job ends, so no two jobs of one process share a run.
The group is the sweep's name (an Optuna trial's: its study's), so one multirun's jobs group
together on the dashboard. A job that continues in its own folder from a checkpoint (``resume=true``
after a SLURM requeue) continues its W&B run: same id, a second ``offline-run-*-<id>`` folder
that ``wandb sync`` uploads into the same run.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import wandb
from lightning.pytorch.loggers import Logger, WandbLogger
from wandb.sdk.lib import module as wandb_module

from sweep import run_folder

log = logging.getLogger(__name__)

#: the prefix of Hydra's own config groups (``hydra/launcher``...); every other group's chosen
#: option is logged as a top-level W&B config key, so a new group in ``conf/`` is tracked as is
HYDRA_GROUP_PREFIX = "hydra/"


def job_identity(task_name: str, study_name: str | None = None) -> dict:
    """Name, sweep group, overrides and group choices of the current Hydra job: its group is the
    sweep's (``<task_name>-<sweep folder>``), or for an Optuna trial its study's
    (``study_name``).

    Outside Hydra (a plain ``run(cfg)`` call) the job is named "run" with no group.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"name": "run", "group": None, "overrides": [], "choices": {}}
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    choices = {
        group: option
        for group, option in hc.runtime.choices.items()
        if option is not None and not group.startswith(HYDRA_GROUP_PREFIX)
    }
    multirun = hc.mode == RunMode.MULTIRUN
    group = f"{task_name}-{Path(hc.sweep.dir).name}" if multirun else None
    group = study_name or group  # an Optuna trial: its study
    name = hc.job.override_dirname or "defaults"
    if multirun:
        name = f"{hc.job.num}:{name}"
    return {"name": name, "group": group, "overrides": overrides, "choices": choices}


def continued_run_id(resume: bool, run_dir: Path) -> str | None:
    """The id of the W&B run this job continues, or None for a new run: with ``resume`` (true),
    a job resuming from a checkpoint in the folder whose ``wandb/`` holds its run (a requeued
    job). A folder resumed from another one's copy has no ``wandb/`` (sweep.training.resume):
    new run."""
    if not (resume and run_folder.checkpoint_file(run_dir).is_file()):
        return None
    record = run_folder.read_wandb_record(run_dir)
    if record is None:
        return None
    run_id = record["id"]
    return run_id if any((run_dir / run_folder.WANDB_DIR).glob(f"*-{run_id}")) else None


def make_wandb_logger(
    logger_cfg, run_dir: Path, identity: dict, tags: list[str], resume: bool, recorded: dict
) -> Logger | None:
    """A WandbLogger writing into ``run_dir/wandb``, or None for ``logger=none``.

    Parameters
    ----------
    logger_cfg
        The ``logger`` group (kind, project, entity, mode, tags).
    run_dir
        The run folder.
    identity
        :func:`job_identity`'s: the run's name, group, overrides and group choices.
    tags
        The job's own tags (``tags``), before the logger's and one per group choice.
    resume
        ``resume``: a requeued job continues its W&B run (:func:`continued_run_id`).
    recorded
        The whole resolved config, kept as the run's ``cfg``.

    Returns
    -------
    The logger, its run started; the run's id, name, group and tags also go to
    ``run_dir/wandb_run.json`` (offline W&B runs cannot be read back from Python, and reports link
    jobs to their W&B runs).
    """
    if logger_cfg.kind == "none":
        return None
    run_id = continued_run_id(resume, Path(run_dir))
    if run_id is not None:
        log.info("continuing W&B run %s", run_id)
    config = {
        **identity["choices"],
        "overrides": identity["overrides"],
        "cfg": recorded,
    }
    tags = [*tags, *logger_cfg.tags, *(f"{k}={v}" for k, v in identity["choices"].items())]
    logger = WandbLogger(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        name=identity["name"],
        group=identity["group"],
        tags=tags,
        save_dir=str(run_dir),
        mode=logger_cfg.mode,
        config=config,
        log_model=False,
        settings=wandb.Settings(silent=True),
        id=run_id,  # Lightning asks W&B for resume="allow": the same id continues the run
    )
    # Lightning always passes W&B an `anonymous` setting, which W&B 0.2x+ ignores with a warning
    logger._wandb_init.pop("anonymous", None)
    run = logger.experiment  # start the run now, so its folder exists even if training fails
    record = {
        "id": run.id,
        "name": run.name,
        "group": run.group,
        "project": run.project,
        "tags": list(run.tags),
        "mode": logger_cfg.mode,
        "dir": run.settings.sync_dir,
    }
    run_folder.write_wandb_record(run_dir, record)
    return logger


def log_pictures(logger: Logger, run_dir: Path) -> None:
    """Log the run folder's pictures to its W&B run as images: the embedding picture (key
    ``embedding``, when the run was scored) and the curves (``curves``), where the run page drew
    them."""
    if not isinstance(logger, WandbLogger):
        return
    pictures = {"embedding": run_folder.EMBEDDING_FIGURE, "curves": run_folder.CURVES_FIGURE}
    logger.experiment.log(
        {
            key: wandb.Image(str(Path(run_dir) / name), caption=name)
            for key, name in pictures.items()
            if (Path(run_dir) / name).is_file()
        }
    )


def finish(logger: Logger | None, exit_code: int) -> None:
    """End the job's W&B run (also on failure, marked with the exit code). Never raises.

    It runs in a ``finally``: an error here would replace the job's own outcome, e.g. the
    ``SystemExit`` submitit raises to requeue a job, whose requeue SIGTERMs every process of the
    job, the W&B service (wandb-core) too. A run that cannot be finished is logged, and W&B is
    torn down and the run dropped, so that a later job of this process starts a new service
    and a new run.
    """
    if not isinstance(logger, WandbLogger):
        return
    run = logger.experiment
    try:
        run.finish(exit_code=exit_code)
    except Exception as error:
        log.warning(
            "W&B run %s could not be finished (%s: %s); its files in %s hold what was logged",
            run.id,
            type(error).__name__,
            error,
            run.settings.sync_dir,
        )
        with contextlib.suppress(Exception):  # the same dead connection; it is dropped anyway
            wandb.teardown()
        if wandb.run is run:  # it failed before unsetting itself; a WandbLogger would reuse it
            wandb_module.unset_globals()
        return
    if run.settings.mode == "offline":
        log.info("W&B offline run: upload it with `wandb sync %s`", run.settings.sync_dir)
