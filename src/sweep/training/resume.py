"""``resume=true``: continue a killed run, or reuse a finished one, made by the same overrides.

The job looks among the siblings of its folder (``outputs/<task>/runs/*`` for a single run; every
job of every sweep, ``outputs/<task>/multiruns/*/*``, for a sweep job) for the newest folder made
by the same overrides (``resume`` aside) that finished (``metrics.json``) or holds a checkpoint.
That folder's files are copied into the job's own folder, so the new folder, and the new
sweep's report, hold the whole run; the old folder stays as it was. A job whose own folder holds
progress (SLURM requeued it: it starts again in the same folder) continues that. Then:

- finished: nothing is trained again; the job returns the metrics it had;
- unfinished: training continues from the checkpoint (sweep.training.checkpoint).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sweep import run_folder
from sweep.config.overrides import parse_override
from sweep.training.distributed import is_rank_zero

log = logging.getLogger(__name__)

#: the override that asks for resuming; left out when matching a run folder's overrides
RESUME_KEY = "resume"
#: not copied from the previous folder: Hydra's and the logs of the job that made it, its W&B
#: run files (the continued run gets its own W&B run)
NOT_COPIED = (
    run_folder.HYDRA_DIR,
    run_folder.LOG_FILES,
    run_folder.WANDB_DIR,
    run_folder.DDP_HYDRA_DIRS,
)


@dataclass(frozen=True)
class Resume:
    """What a job continues from: a checkpoint, finished metrics, or nothing (a fresh start)."""

    checkpoint: Path | None = None
    metrics: dict | None = None


def without_resume(overrides: list[str]) -> list[str]:
    """``overrides`` but ``resume``, sorted: what must match between a job and its previous run."""
    return sorted(o for o in overrides if parse_override(o)[0] != RESUME_KEY)


def _overrides(run_dir: Path) -> list[str] | None:
    """The task overrides that made ``run_dir`` (``resume`` aside), sorted; None if unknown."""
    overrides = run_folder.read_overrides(run_dir)
    return None if overrides is None else without_resume(overrides)


def _progress(run_dir: Path) -> Path | None:
    """The file that shows how far ``run_dir`` got: its metrics, else its checkpoint."""
    for path in (run_dir / run_folder.METRICS_FILE, run_folder.checkpoint_file(run_dir)):
        if path.is_file():
            return path
    return None


def previous_run(run_dir: Path, overrides: list[str], multirun: bool) -> Path | None:
    """The folder made by ``overrides`` that finished or holds a checkpoint: ``run_dir`` itself
    if it does (a job started again in its own folder, as SLURM requeues one), else the newest
    such folder beside it; None if there is none."""
    run_dir = Path(run_dir)
    wanted = without_resume(overrides)
    if _progress(run_dir) is not None and _overrides(run_dir) == wanted:
        return run_dir  # its own progress, whatever a sibling's mtime (clocks of other nodes)
    root, pattern = (run_dir.parent.parent, "*/*") if multirun else (run_dir.parent, "*")
    found = [
        folder
        for folder in root.glob(pattern)
        if _progress(folder) is not None and _overrides(folder) == wanted
    ]
    return max(found, key=lambda f: _progress(f).stat().st_mtime, default=None)


def requeued() -> bool:
    """Whether SLURM started this job again (requeued at its time limit, or after a node
    failure): ``SLURM_RESTART_COUNT`` is 1 or more."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def prepare_resume(resume: bool, run_dir: Path) -> Resume:
    """Say what a job continues from, and for ``resume`` (``resume=true``) find this job's
    previous run and copy it into ``run_dir``. Outside Hydra only ``run_dir`` itself is looked at.

    A job SLURM requeued (:func:`requeued`) continues what its own folder holds whether or not
    ``resume`` is set: the SLURM launchers requeue timed-out jobs by default, and a requeued job
    that started over would never finish.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    run_dir = Path(run_dir)
    if not resume and not (requeued() and _progress(run_dir) is not None):
        return Resume()
    if not resume:  # a requeued job: its own folder, whatever the siblings hold
        log.info(
            "SLURM requeued this job (SLURM_RESTART_COUNT=%s)", os.environ["SLURM_RESTART_COUNT"]
        )
        return continue_from(run_dir, run_dir)
    if not is_rank_zero():  # a DDP process started by rank 0, which prepared the folder
        checkpoint = run_folder.checkpoint_file(run_dir)
        return Resume(checkpoint=checkpoint if checkpoint.is_file() else None)
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        found = previous_run(run_dir, list(hc.overrides.task), multirun)
    else:
        found = run_dir if _progress(run_dir) else None
    if found is None:
        log.warning("resume=true: no earlier run of these overrides near %s; starting", run_dir)
        return Resume()
    return continue_from(found, run_dir)


def continue_from(found: Path, run_dir: Path) -> Resume:
    """Copy the run ``found`` into ``run_dir`` (unless it is that folder) and say what to
    continue from: its finished metrics, or its checkpoint."""
    if found != run_dir:
        shutil.copytree(
            found, run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*NOT_COPIED)
        )
    metrics = run_folder.read_metrics(run_dir)
    if metrics is not None:
        log.info("resume: %s finished this run already; its results are reused", found)
        return Resume(metrics=metrics)
    info = run_folder.read_checkpoint_info(run_dir)
    within = (
        f" and {info['batches']} batches of epoch {info['epoch'] + 1}" if info["batches"] else ""
    )
    log.info("resuming %s after epoch %d%s (step %d)", found, info["epoch"], within, info["step"])
    return Resume(checkpoint=run_folder.checkpoint_file(run_dir))
