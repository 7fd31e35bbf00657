"""An Optuna study as the study report reads it: its trials (a table, their run folders'
metrics), its objectives and the unit of their intermediate values, the best trial or the Pareto
front, and parameter importances. Read from the storage, so it works while the study runs, after
a sweep that stopped, and across processes and machines.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sweep import metric_names, run_folder
from sweep.report.baseline import LABEL
from sweep.report.headline import label
from sweep.report.sweep_folder import numeric_metrics
from sweep.study.attrs import (
    ERROR,
    PRUNED_AT,
    PRUNED_AT_CELLS,
    PRUNED_AT_FRACTION,
    RETRY_OF,
    RUN_DIR,
    STEPS,
    STEPS_CELLS,
    STEPS_EPOCHS,
    VOID,
)
from sweep.study.storage import open_storage

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "VOID")
#: fANOVA importances from fewer complete trials than this are indicative only
FEW_TRIALS = 20


def load(study_name: str, storage: str) -> optuna.Study:
    """The study, read from its storage (a journal path or a database URL)."""
    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


def objectives(study: optuna.Study) -> list[str]:
    """Objective names: the optimized_metric keys the sweeper recorded, else value_0, ..."""
    names = study.metric_names
    return list(names) if names else [f"value_{i}" for i in range(len(study.directions))]


def steps_unit(study: optuna.Study) -> str:
    """What the steps of the study's intermediate values are.

    Parameters
    ----------
    study
        The study.

    Returns
    -------
    ``epoch`` (the N-th finished epoch; also for studies from before the unit was recorded) or
    ``cells_seen`` (training cells seen: its trials reported every step-level validation).
    """
    return study.user_attrs.get(STEPS, STEPS_EPOCHS)


def steps_words(study: optuna.Study) -> str:
    """What the study's intermediate values are, in words, for its report."""
    if len(study.directions) > 1:
        return "Optuna prunes no multi-objective study: the trials reported no intermediate values."
    objective = label(objectives(study)[0])
    if steps_unit(study) == STEPS_CELLS:
        return (
            f"Each trial reported its {objective} at every step-level validation "
            "(`trainer.validate_every_n_steps`, on the fixed validation subsample of "
            "`trainer.step_validation_cells` cells) and at every epoch end (all validation "
            "cells), keyed by training cells seen: the pruner's steps are cells seen."
        )
    return f"Each trial reported its {objective} at every epoch end: the pruner's steps are epochs."


def state(trial: FrozenTrial) -> str:
    """A trial's state; VOID for trials that do not count (stale, surplus)."""
    return "VOID" if VOID in trial.system_attrs else trial.state.name


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective values, params, pruning, run folder, error."""
    names = objectives(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values if t.values is not None else [None] * len(names)
        if t.state == TrialState.PRUNED and t.values is None and t.intermediate_values:
            values = [t.intermediate_values[max(t.intermediate_values)]]
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "trial": t.number,
                "state": state(t),
                **dict(zip(names, values, strict=False)),
                **{f"param:{k}": v for k, v in t.params.items()},
                "steps_reported": len(t.intermediate_values),
                PRUNED_AT: t.user_attrs.get(PRUNED_AT),
                PRUNED_AT_CELLS: t.user_attrs.get(PRUNED_AT_CELLS),
                PRUNED_AT_FRACTION: t.user_attrs.get(PRUNED_AT_FRACTION),
                RETRY_OF: t.user_attrs.get(RETRY_OF),
                "duration_s": duration,
                "run_dir": t.user_attrs.get(RUN_DIR),
                "error": t.user_attrs.get(ERROR) or t.system_attrs.get(VOID),
            }
        )
    return pd.DataFrame(rows)


def run_folders(study: optuna.Study) -> pd.DataFrame:
    """One row per complete trial whose run folder's metrics.json can be read here: its numeric
    metrics, ``dataset`` (the group choice), ``data_subset`` (its cells in words, or None) and a
    :data:`LABEL` (``trial N``)."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        folder = t.user_attrs.get(RUN_DIR)
        metrics = run_folder.read_metrics(Path(folder)) if folder else None
        if metrics:
            dataset = metrics.get(metric_names.CHOICES, {}).get("dataset")
            rows.append(
                {
                    LABEL: f"trial {t.number}",
                    "dataset": dataset,
                    metric_names.DATA_SUBSET: metrics.get(metric_names.DATA_SUBSET),
                    **numeric_metrics(metrics),
                }
            )
    return pd.DataFrame(rows)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial, or the Pareto front (multi-objective); [] before any trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)


def importances(study: optuna.Study) -> tuple[pd.DataFrame | None, str]:
    """Parameter importances (fANOVA), a column per objective; or None and why not."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, "needs at least two complete trials"
    columns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, name in enumerate(objectives(study)):
            try:
                columns[name] = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i: t.values[i]
                )
            except (RuntimeError, ValueError) as error:
                return None, str(error)
    frame = pd.DataFrame(columns).fillna(0.0)
    return frame.sort_values(frame.columns[0], ascending=False), ""
