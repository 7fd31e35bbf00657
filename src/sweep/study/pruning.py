"""The trial side of a study: report the optimized metric each epoch, stop when Optuna prunes.

A job launched by the Optuna sweeper carries ``optuna.storage``, ``optuna.study_name`` and
``optuna.trial`` (the trial number). The callback opens the study from the storage, so it works
in the sweep process or in a remote launcher's worker, and builds the pruner the sweeper recorded
as the study's ``pruner`` user attr. A pruned trial finishes its epoch, writes its run folder
and gets the ``pruned_at_epoch`` user attr, from which the sweeper tells Optuna PRUNED.
"""

from __future__ import annotations

import logging

from lightning.pytorch import Callback

from sweep.study.attrs import PRUNED_AT, PRUNER

log = logging.getLogger(__name__)


class TrialPruning(Callback):
    """Reports ``monitor`` after each validation to the trial and stops a pruned trial."""

    def __init__(self, trial, study_name: str, monitor: str | None):
        self.trial = trial
        self.study_name = study_name
        self.monitor = monitor  # None: multi-objective, which Optuna cannot prune
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor is None or self.pruned_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        epoch = trainer.current_epoch + 1  # the N-th finished epoch, as history.csv counts
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            self.trial.set_user_attr(PRUNED_AT, epoch)
            trainer.should_stop = True
            log.info(
                "trial %d pruned at epoch %d (%s=%.4g)",
                self.trial.number,
                epoch,
                self.monitor,
                float(value),
            )

    def summary(self) -> dict:
        """What metrics.json records of the trial."""
        return {
            "optuna_study": self.study_name,
            "optuna_trial": self.trial.number,
            PRUNED_AT: self.pruned_at,
        }


def pruning_callback(optuna_cfg, optimized_metric) -> TrialPruning | None:
    """The job's pruning callback, or None when the job is not an Optuna trial.

    ``optuna_cfg``: the ``optuna`` keys the sweeper gives a trial (storage, study_name, trial);
    ``optimized_metric``: the metrics.json key it reports (a list: multi-objective, not pruned).
    """
    if optuna_cfg.trial is None:
        return None
    import optuna
    from hydra.utils import instantiate

    from sweep.study.storage import open_storage

    storage = open_storage(optuna_cfg.storage)
    study = optuna.load_study(study_name=optuna_cfg.study_name, storage=storage)
    study.pruner = instantiate(
        study.user_attrs.get(PRUNER, {"_target_": "optuna.pruners.NopPruner"})
    )
    study_id = storage.get_study_id_from_name(optuna_cfg.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, optuna_cfg.trial)
    single = len(study.directions) == 1 and isinstance(optimized_metric, str)
    monitor = optimized_metric if single else None
    return TrialPruning(optuna.trial.Trial(study, trial_id), optuna_cfg.study_name, monitor)
