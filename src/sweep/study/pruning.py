"""The trial side of a study: report the optimized metric as training goes, stop when Optuna prunes.

A job launched by the Optuna sweeper carries ``optuna.storage``, ``optuna.study_name`` and
``optuna.trial`` (the trial number). The callback opens the study from the storage, so it works
in the sweep process or in a remote launcher's worker, and builds the pruner the sweeper recorded
as the study's ``pruner`` user attr.

The steps of a study's intermediate values are one unit for the whole study (its ``STEPS`` user
attr, set by the first trial that starts):

- **epochs** (the N-th finished epoch), when the first trial takes no step-level validation
  (``trainer.validate_every_n_steps`` 0, or more steps than the trial trains): the metric is
  reported after each epoch's validation, on all validation cells;
- **training cells seen** (all DDP ranks), when it does: the metric is reported at every
  step-level validation (on the fixed validation subsample of sweep.training.step_evaluation,
  ``trainer.step_validation_cells`` cells) and after each epoch's validation (all validation
  cells), both keyed by cells seen, so the pruner can stop a trial between epoch ends. A pruner's
  step arguments (``min_resource``, ``max_resource``, ``n_warmup_steps``) are then cells.

A later trial keeps the study's unit: in a cells study it reports its epoch ends in cells seen
even if it takes no step-level validation; in an epochs study it reports epoch ends only.

A pruned trial stops right after the step it was pruned at (Lightning then validates once on all
validation cells and ends the epoch, as after early stopping), writes its run folder as any other
and gets the ``pruned_at_epoch``, ``pruned_at_cells_seen`` and ``pruned_at_fractional_epoch`` user
attrs, from which the sweeper tells Optuna PRUNED.
"""

from __future__ import annotations

import logging
from typing import Protocol

from lightning.pytorch import Callback

from sweep.metric_names import CELLS_SEEN, EPOCH
from sweep.study.attrs import (
    PRUNED_AT,
    PRUNED_AT_CELLS,
    PRUNED_AT_FRACTION,
    PRUNER,
    STEPS,
    STEPS_CELLS,
    STEPS_EPOCHS,
)

log = logging.getLogger(__name__)

#: pruner arguments counted in the study's steps (epochs, or training cells seen)
STEP_ARGUMENTS = ("min_resource", "max_resource", "n_warmup_steps")


class StepRows(Protocol):
    """What the pruning reads of the step-level validation
    (sweep.training.step_evaluation.StepEvaluation, which it does not import)."""

    LOSSES: tuple[str, ...]  # the metrics a row holds
    records: list[dict]  # the rows so far (rank 0)
    validated_step: int | None  # the global step of the latest row (every rank)

    def position(self, trainer) -> dict: ...

    def takes_rows(self, trainer) -> bool: ...

    def interval_cells(self, trainer) -> float: ...


class TrialPruning(Callback):
    """Reports ``monitor`` to the trial and stops the trial when its pruner says so.

    Parameters
    ----------
    trial
        The Optuna trial (``optuna.trial.Trial``) this job is.
    study_name
        Its study's name.
    monitor
        The metrics.json key reported (``optimized_metric``); None: multi-objective, which
        Optuna cannot prune, so nothing is reported.
    steps
        The job's step-level validation, whose rows are reported between epoch ends in a study
        whose steps are cells seen; None: epoch ends only.
    pruner_conf
        The pruner's config (``_target_`` + arguments), checked against the study's unit.
    """

    def __init__(
        self,
        trial,
        study_name: str,
        monitor: str | None,
        steps: StepRows | None = None,
        pruner_conf: dict | None = None,
    ):
        self.trial = trial
        self.study_name = study_name
        self.monitor = monitor
        self.steps = steps
        self.pruner_conf = pruner_conf or {}
        self.unit = STEPS_EPOCHS  # decided as training starts (:meth:`on_train_start`)
        self.pruned: dict | None = None  # where it was pruned: PRUNED_AT, ..._CELLS, ..._FRACTION

    def on_train_start(self, trainer, pl_module) -> None:
        if self.monitor is None:
            return
        unit = None
        if trainer.is_global_zero:
            unit = self.study_unit(trainer)
        self.unit = trainer.strategy.broadcast(unit, src=0)
        cells = self.unit == STEPS_CELLS and self.steps is not None
        interval = self.steps.interval_cells(trainer) if cells else None
        check_step_arguments(self.pruner_conf, self.unit, trainer.max_epochs, interval)

    def study_unit(self, trainer) -> str:
        """The study's steps: recorded by its first trial, which this may be."""
        rows = (
            self.steps is not None
            and self.monitor in self.steps.LOSSES
            and self.steps.takes_rows(trainer)
        )
        own = STEPS_CELLS if rows else STEPS_EPOCHS
        study = self.trial.study
        unit = study.user_attrs.get(STEPS)
        if unit is None:
            study.set_user_attr(STEPS, own)
            unit = own
        elif unit != own and own == STEPS_CELLS:
            log.warning(
                "study %s reports in epochs (its first trial took no step-level validation): "
                "trial %d is pruned at epoch ends only",
                self.study_name,
                self.trial.number,
            )
        words = "training cells seen" if unit == STEPS_CELLS else "epochs"
        log.info("trial %d reports to study %s in %s", self.trial.number, self.study_name, words)
        return unit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """A step-level validation row (StepEvaluation runs first) is reported in a cells study;
        not at an epoch's last batch, whose epoch-end validation follows at the same cells."""
        if self.unit != STEPS_CELLS or self.steps is None or self.pruned is not None:
            return
        if self.steps.validated_step != trainer.global_step:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        row = self.steps.records[-1] if trainer.is_global_zero else None
        self.report(trainer, row[self.monitor] if row else None, row)

    def on_validation_end(self, trainer, pl_module) -> None:
        """The epoch-end validation (all validation cells) is reported in either unit."""
        if trainer.sanity_checking or self.monitor is None or self.pruned is not None:
            return
        at = self.steps.position(trainer) if self.steps is not None else None  # every rank
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        self.report(trainer, float(value), at)

    def report(self, trainer, value: float | None, at: dict | None) -> None:
        """Report ``value`` (rank 0's; None elsewhere) at ``at`` (a steps.csv row's position:
        cells seen, fractional epoch), ask the pruner, stop training on every rank if pruned."""
        epoch = trainer.current_epoch + 1  # the epoch being trained (finished at its end)
        pruned = False
        if trainer.is_global_zero:
            step = int(at[CELLS_SEEN]) if self.unit == STEPS_CELLS else epoch
            self.trial.report(float(value), step=step)
            pruned = self.trial.should_prune()
        if not trainer.strategy.broadcast(pruned, src=0):
            return
        self.pruned = {
            PRUNED_AT: epoch,
            PRUNED_AT_CELLS: int(at[CELLS_SEEN]) if at else None,
            PRUNED_AT_FRACTION: float(at[EPOCH]) if at else None,
        }
        trainer.should_stop = True  # after this step: Lightning validates once, ends the epoch
        if trainer.is_global_zero:
            for key, where in self.pruned.items():
                self.trial.set_user_attr(key, where)
            log.info(
                "trial %d pruned in epoch %d at %s training cells seen (%s=%.4g)",
                self.trial.number,
                epoch,
                self.pruned[PRUNED_AT_CELLS],
                self.monitor,
                float(value),
            )

    def summary(self) -> dict:
        """What metrics.json records of the trial."""
        pruned = self.pruned or dict.fromkeys((PRUNED_AT, PRUNED_AT_CELLS, PRUNED_AT_FRACTION))
        return {"optuna_study": self.study_name, "optuna_trial": self.trial.number, **pruned}


def check_step_arguments(
    conf: dict, unit: str, max_epochs: int, interval_cells: float | None
) -> None:
    """Refuse pruner step arguments that cannot be in the study's unit.

    Parameters
    ----------
    conf
        The pruner's config (``_target_`` + arguments).
    unit
        The study's steps: ``epoch`` or ``cells_seen``.
    max_epochs
        The epochs the trial trains.
    interval_cells
        Training cells between two step-level validations (a cells study); None: unknown.

    Raises
    ------
    ValueError
        In a cells study, a step argument below one validation interval (given in epochs or
        steps?); in an epochs study, a ``min_resource`` above the epochs the trial trains
        (given in cells?). An ``n_warmup_steps`` above them only gets a warning: the trial is
        not pruned.
    """
    for key in STEP_ARGUMENTS:
        value = conf.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            continue  # "auto", None or 0
        if unit == STEPS_CELLS and interval_cells is not None and value < interval_cells:
            raise ValueError(
                f"hydra.sweeper.pruner.{key}={value}: this study's steps are training cells "
                f"seen (its trials validate every {interval_cells:,.0f} cells: "
                "trainer.validate_every_n_steps x loader.batch_size), and this is less than "
                "one validation; give it in cells (epochs x training cells an epoch), or set "
                "trainer.validate_every_n_steps=0 to prune at epoch ends"
            )
        if unit != STEPS_EPOCHS or value <= max_epochs or key == "max_resource":
            continue
        where = (
            f"hydra.sweeper.pruner.{key}={value}: this study's steps are epochs (its first "
            "trial took no step-level validation: trainer.validate_every_n_steps is 0 or more "
            f"steps than it trained), and this is more than the {max_epochs} epochs this "
            "trial trains"
        )
        if key == "min_resource":
            raise ValueError(f"{where}; give it in epochs")
        log.warning("%s: the trial is never pruned", where)


def pruning_callback(
    optuna_cfg, optimized_metric, steps: StepRows | None = None
) -> TrialPruning | None:
    """The job's pruning callback, or None when the job is not an Optuna trial.

    Parameters
    ----------
    optuna_cfg
        The ``optuna`` keys the sweeper gives a trial (storage, study_name, trial).
    optimized_metric
        The metrics.json key it reports (a list: multi-objective, not pruned).
    steps
        The job's step-level validation (sweep.training.step_evaluation.StepEvaluation), whose
        rows are reported in a study whose steps are training cells seen.

    Returns
    -------
    The callback; None for a job that is not a trial.
    """
    if optuna_cfg.trial is None:
        return None
    import optuna
    from hydra.utils import instantiate

    from sweep.study.storage import open_storage

    storage = open_storage(optuna_cfg.storage)
    study = optuna.load_study(study_name=optuna_cfg.study_name, storage=storage)
    pruner_conf = study.user_attrs.get(PRUNER, {"_target_": "optuna.pruners.NopPruner"})
    study.pruner = instantiate(pruner_conf)
    study_id = storage.get_study_id_from_name(optuna_cfg.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, optuna_cfg.trial)
    single = len(study.directions) == 1 and isinstance(optimized_metric, str)
    monitor = optimized_metric if single else None
    trial = optuna.trial.Trial(study, trial_id)
    return TrialPruning(trial, optuna_cfg.study_name, monitor, steps, pruner_conf)
