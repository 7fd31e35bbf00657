"""What the jobs of a command line would cost: cells, epochs, cells seen and wall time, none run.

Cells per epoch are the training cells of the job's split (the ``data`` filter, ``data.keep`` and
``data.max_cells``), computed from the store's obs columns by sweep.data.selection, exactly as
the job's datamodule computes them, without building a loader or a model. The time of a job is

    training cells seen / training cells/s  +  validation cells / validation cells/s

on each of ``trainer.devices`` devices (DDP assumed to scale linearly), where the validation
cells are the whole validation set at every epoch end plus ``step_validation_cells`` every
``trainer.validate_every_n_steps`` steps. Scorings (scib-metrics) are counted, not timed; nor is
a job's start-up (reading obs, building the model, starting workers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep.config.schema import named_device_count
from sweep.planning.calibration import Throughput, throughput
from sweep.planning.job_list import JobList, expand

#: a (low, high) pair: equal for a planned job, a range for an Optuna trial
Span = tuple[float, float]


@dataclass
class JobCost:
    """One job's plan. Counts are (low, high) spans: ``cells_per_epoch`` (training cells),
    ``validation_cells`` (per epoch end), ``epochs``; ``step_validations`` and ``scorings``
    (at most, over the job), each on ``step_validation_cells`` / ``scoring_cells`` cells;
    ``train_s`` and ``validation_s``: estimated seconds (at most) on ``devices`` devices at
    ``rate``."""

    label: str
    overrides: list[str]
    store: Path
    cells_per_epoch: Span
    validation_cells: Span
    epochs: Span
    devices: int
    rate: Throughput
    step_validations: int
    step_validation_cells: int
    scorings: int
    scoring_cells: int
    train_s: float
    validation_s: float

    @property
    def cells_seen(self) -> Span:
        """Training cells seen over the job (low, high)."""
        return (self.cells_per_epoch[0] * self.epochs[0], self.cells_per_epoch[1] * self.epochs[1])

    @property
    def wall_s(self) -> float:
        """Estimated wall time (s, at most): training and validation."""
        return self.train_s + self.validation_s

    @property
    def device_hours(self) -> float:
        """``wall_s`` on each of ``devices`` devices, in hours."""
        return self.wall_s * self.devices / 3600


def device_count(trainer_cfg) -> int:
    """Devices one job trains on.

    Parameters
    ----------
    trainer_cfg
        The ``trainer`` group.

    Returns
    -------
    ``trainer.devices`` as a number (``4``, ``"4"``), the length of a list (``[0, 1]``,
    ``"0,1"``); 1 for ``auto`` and ``-1``, which only the machine the job runs on can count
    (:func:`sweep.config.schema.named_device_count`).
    """
    return max(1, named_device_count(trainer_cfg.devices) or 1)


class Planner:
    """Costs jobs, reusing within one plan each store (a demo store is built once), each split
    (per store and ``data`` config) and each throughput."""

    def __init__(self):
        self.stores: dict[str, Path] = {}
        self.splits: dict[tuple[str, str], tuple[int, int]] = {}

    def store(self, cfg: DictConfig) -> Path:
        """The job's store folder (sweep.data.demo.resolve_store: a demo store is built once)."""
        from sweep.data.demo import resolve_store

        key = json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True)
        if key not in self.stores:
            self.stores[key] = Path(resolve_store(cfg.dataset))
        return self.stores[key]

    def cells(self, cfg: DictConfig, store: Path) -> tuple[int, int]:
        """(training, validation) cells of the job's split, from the store's obs columns only."""
        from sweep.data.selection import CellTable, columns_for, split_for
        from sweep.data.store import check_store

        data = OmegaConf.to_container(cfg.data, resolve=True)
        key = (str(store), json.dumps(data, sort_keys=True))
        if key not in self.splits:
            manifest = check_store(store)
            table = CellTable.read(store, manifest, columns_for(cfg.data))
            split = split_for(table, manifest.vocab, cfg.data)
            self.splits[key] = (int(split.train.sum()), int(split.validation.sum()))
        return self.splits[key]

    def cost(
        self,
        label: str,
        overrides: list[str],
        timed: DictConfig,
        data_configs: list[DictConfig],
        epochs: Span,
    ) -> JobCost:
        """A job's (or trial's) cost: cells from each of ``data_configs`` (the range over them),
        time at ``timed``'s throughput, counts over ``epochs`` (low, high)."""
        store = self.store(timed)
        counts = [self.cells(cfg, self.store(cfg)) for cfg in data_configs]
        train = (min(c[0] for c in counts), max(c[0] for c in counts))
        validation = (min(c[1] for c in counts), max(c[1] for c in counts))
        rate = throughput(timed, store)
        devices = device_count(timed.trainer)
        # Lightning counts steps per process: each of the devices takes its share of a batch
        steps = math.ceil(train[1] / (timed.loader.batch_size * devices)) * int(epochs[1])
        trainer, evaluation = timed.trainer, timed.evaluation
        every = int(trainer.validate_every_n_steps)
        step_validations = steps // every if every else 0
        step_cells = min(int(trainer.step_validation_cells), validation[1])
        scorings, scoring_cells = 0, 0
        if evaluation.enabled:
            scored = {e for e in evaluation.epochs if e <= epochs[1]} | {int(epochs[1])}
            score_every = int(evaluation.every_n_steps)
            scorings = len(scored) + (steps // score_every if score_every else 0)
            scoring_cells = min(int(evaluation.n_cells), validation[1])
        # epoch-end validation is shared by the devices; step-level validation runs on rank 0
        step_validated = step_validations * step_cells
        validation_rate = rate.validation or rate.train
        return JobCost(
            label=label,
            overrides=overrides,
            store=store,
            cells_per_epoch=train,
            validation_cells=validation,
            epochs=epochs,
            devices=devices,
            rate=rate,
            step_validations=step_validations,
            step_validation_cells=step_cells,
            scorings=scorings,
            scoring_cells=scoring_cells,
            train_s=train[1] * epochs[1] / (rate.train * devices),
            validation_s=validation[1] * epochs[1] / (validation_rate * devices)
            + step_validated / validation_rate,
        )


@dataclass
class Plan:
    """A command line's jobs and their costs, with :meth:`text` to print."""

    command: list[str]
    jobs: JobList
    costs: list[JobCost]

    @property
    def device_hours(self) -> float:
        """The sweep's device-hours, at most (every trial run to its end)."""
        return sum(cost.device_hours for cost in self.costs)


def make_plan(overrides: list[str], multirun: bool) -> Plan:
    """Plan ``python train.py [-m] *overrides``: expand its jobs, compute each one's cells from
    the store's metadata and its time from the throughput; start nothing.

    Parameters
    ----------
    overrides
        The command line's overrides (``dry_run=true`` among them).
    multirun
        Whether ``-m``/``--multirun`` was given.

    Returns
    -------
    The plan (in words: ``sweep.planning.printout.plan_text(plan)``).
    """
    jobs = expand(overrides, multirun)
    planner = Planner()
    search = jobs.search
    if search is not None:
        trial = planner.cost(
            "trial", search.fixed, search.largest, search.data_configs, search.epochs
        )
        costs = [
            JobCost(**{**trial.__dict__, "label": job.label, "overrides": job.overrides})
            for job in jobs.jobs
        ]
    else:
        costs = [
            planner.cost(
                job.label, job.overrides, job.cfg, [job.cfg], (job.cfg.trainer.max_epochs,) * 2
            )
            for job in jobs.jobs
        ]
    return Plan(list(overrides), jobs, costs)
