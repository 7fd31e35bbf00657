"""Optuna studies whose steps are training cells seen (issue 22, item 4): with step-level
validation on, each trial reports every step-level validation and every epoch end keyed by cells
seen, and a bad trial is pruned between epoch ends with its run folder written; the pruning
callback on a real in-memory study; pruner arguments in the wrong unit refused; the Census preset;
the study report's axis.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweep.config.schema import register_schema
from sweep.metric_names import CELLS_SEEN, ELBO_VALIDATION, EPOCH, GLOBAL_STEP
from sweep.paths import CONF_DIR
from sweep.report.study_report import build_study_report, load, plot_intermediate
from sweep.study import attrs
from sweep.study.pruning import TrialPruning, check_step_arguments
from sweep.study.search_space import parse
from test_optuna import base, metrics_of, run, sweeper, trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

BATCH = 32  # cells a training batch
EVERY = 5  # optimizer steps between step-level validations


@pytest.mark.slow
def test_a_study_reports_in_cells_seen_and_prunes_a_trial_between_epoch_ends(tiny_store, tmp_path):
    journal = tmp_path / "cells.journal"
    result = run(
        base(
            tiny_store,
            tmp_path,
            "hydra/sweeper/sampler=grid",
            "hydra.sweeper.sampler.seed=1",  # this seed orders the grid: 1e-2 first, then 1e-7
            "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.study_name=cells",
            f"hydra.sweeper.storage={journal}",
            "trainer.max_epochs=2",
            "plan=czi_no_warmup",  # the full KL weight from the first step: 1e-2 learns at once
            f"loader.batch_size={BATCH}",
            f"trainer.validate_every_n_steps={EVERY}",
            "plan.lr=choice(1e-2,1e-7)",
        ),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = load("cells", str(journal))
    assert study.user_attrs[attrs.STEPS] == attrs.STEPS_CELLS
    good, bad = trials(str(journal), "cells")
    assert good.params["plan.lr"] == 1e-2 and good.state == TrialState.COMPLETE
    assert bad.params["plan.lr"] == 1e-7 and bad.state == TrialState.PRUNED

    # the complete trial: every step-level validation and every epoch end, in cells seen
    run_dir = Path(good.user_attrs["run_dir"])
    steps = pd.read_csv(run_dir / "steps.csv")
    history = pd.read_csv(run_dir / "history.csv")
    n_train = metrics_of(good)["cells_train"]
    keys = sorted(good.intermediate_values)
    assert len(keys) > len(history) == 2  # more values than epochs
    assert keys == sorted(set(steps[CELLS_SEEN]) | set(history[CELLS_SEEN]))
    assert all(isinstance(k, int) for k in keys) and keys[-1] == 2 * n_train
    first_epoch = steps[steps[CELLS_SEEN] < n_train]
    assert len(first_epoch) >= 2  # validated twice before the first epoch ended
    assert (first_epoch[CELLS_SEEN] == first_epoch[GLOBAL_STEP] * BATCH).all()
    assert (first_epoch[GLOBAL_STEP] % EVERY == 0).all()
    for row in first_epoch.itertuples():  # between epoch ends: the step-level subsample's value
        assert good.intermediate_values[row.cells_seen] == pytest.approx(row.elbo_validation)
    for row in history.itertuples():  # at epoch ends: all validation cells
        assert good.intermediate_values[row.cells_seen] == pytest.approx(row.elbo_validation)
    assert metrics_of(good)["pruned_at_cells_seen"] is None

    # the bad trial: pruned at its first step-level validation, in the middle of epoch 1
    where = EVERY * BATCH
    assert sorted(bad.intermediate_values) == [where]
    assert bad.intermediate_values[where] > good.intermediate_values[where]
    assert bad.user_attrs[attrs.PRUNED_AT] == 1
    assert bad.user_attrs[attrs.PRUNED_AT_CELLS] == where < n_train
    assert bad.user_attrs[attrs.PRUNED_AT_FRACTION] == pytest.approx(where / n_train)
    metrics = metrics_of(bad)  # a whole run folder, training stopped right after that step
    assert metrics["pruned_at_epoch"] == 1 and metrics["epochs"] == 1
    assert metrics["pruned_at_cells_seen"] == metrics["cells_seen"] == where
    assert metrics["pruned_at_fractional_epoch"] == pytest.approx(where / n_train)
    bad_dir = Path(bad.user_attrs["run_dir"])
    assert pd.read_csv(bad_dir / "history.csv")[CELLS_SEEN].tolist() == [where]
    assert pd.read_csv(bad_dir / "steps.csv")[GLOBAL_STEP].tolist() == [EVERY]
    assert (bad_dir / "report.md").exists()

    out = tmp_path / "reports" / "cells"
    report = (out / "report.md").read_text()
    assert "| 1 | 1 | 0 | 0 | 0 | 0 |" in report
    assert "keyed by training cells seen" in report and "metric by training cells seen" in report
    table = pd.read_csv(out / "trials.csv")
    assert table["steps_reported"].tolist() == [len(keys), 1]
    assert table["pruned_at_cells_seen"].tolist()[1] == where


# --- the callback on a real in-memory study ----------------------------------------------------


class Rows:
    """A stand-in for StepEvaluation: rows taken every ``validate_every`` steps."""

    LOSSES = (ELBO_VALIDATION,)

    def __init__(self, validate_every: int = 5, n_train: int = 1000):
        self.validate_every, self.n_train = validate_every, n_train
        self.records: list[dict] = []
        self.validated_step: int | None = None
        self.cells = 0

    def position(self, trainer) -> dict:
        return {GLOBAL_STEP: trainer.global_step, EPOCH: self.cells / self.n_train, CELLS_SEEN: 0}

    def takes_rows(self, trainer) -> bool:
        return 0 < self.validate_every <= trainer.total_steps

    def interval_cells(self, trainer) -> float:
        return self.validate_every * 10.0

    def take(self, trainer, value: float) -> None:
        self.validated_step = trainer.global_step
        self.cells = trainer.global_step * 10
        self.records.append(
            {
                GLOBAL_STEP: trainer.global_step,
                EPOCH: self.cells / self.n_train,
                CELLS_SEEN: self.cells,
                ELBO_VALIDATION: value,
            }
        )


def fake_trainer(total_steps: int = 100) -> SimpleNamespace:
    """What the callback reads of a Lightning trainer: 100 batches of 10 cells an epoch."""
    return SimpleNamespace(
        is_global_zero=True,
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
        total_steps=total_steps,
        max_epochs=total_steps // 100,
        global_step=0,
        current_epoch=0,
        sanity_checking=False,
        should_stop=False,
        callback_metrics={},
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(is_last_batch=False))
        ),
    )


def callback(study, rows, pruner_conf=None) -> TrialPruning:
    trial = study.ask()
    return TrialPruning(trial, study.study_name, ELBO_VALIDATION, rows, pruner_conf)


def test_the_callback_reports_step_rows_in_cells_and_stops_a_pruned_trial_mid_epoch():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=100.0))
    rows = Rows()
    pruning = callback(study, rows)
    trainer = fake_trainer(total_steps=300)
    pruning.on_train_start(trainer, None)
    assert pruning.unit == study.user_attrs[attrs.STEPS] == attrs.STEPS_CELLS
    for step, value in ((5, 90.0), (7, None), (10, 150.0), (15, 50.0)):
        trainer.global_step = step
        if value is not None:
            rows.take(trainer, value)
        pruning.on_train_batch_end(trainer, None, None, None, step - 1)
    assert study.trials[0].intermediate_values == {50: 90.0, 100: 150.0}  # step 15: stopped
    assert trainer.should_stop
    where = {attrs.PRUNED_AT: 1, attrs.PRUNED_AT_CELLS: 100, attrs.PRUNED_AT_FRACTION: 0.1}
    assert pruning.summary() == {"optuna_study": study.study_name, "optuna_trial": 0, **where}
    assert study.trials[0].user_attrs == where
    trainer.callback_metrics = {ELBO_VALIDATION: 160.0}  # the validation Lightning runs then
    pruning.on_validation_end(trainer, None)
    assert len(study.trials[0].intermediate_values) == 2


def test_an_epoch_ends_row_is_reported_once_from_the_epochs_validation():
    study = optuna.create_study()
    rows = Rows(validate_every=100)
    pruning = callback(study, rows)
    trainer = fake_trainer(total_steps=200)
    pruning.on_train_start(trainer, None)
    trainer.global_step = 100
    trainer.fit_loop.epoch_loop.batch_progress.is_last_batch = True
    rows.take(trainer, 5.0)
    pruning.on_train_batch_end(trainer, None, None, None, 99)
    assert not study.trials[0].intermediate_values  # the epoch end's validation reports it
    rows.cells = 1000
    trainer.callback_metrics = {ELBO_VALIDATION: 4.0}
    rows.position = lambda trainer: {GLOBAL_STEP: 100, EPOCH: 1.0, CELLS_SEEN: 1000}
    pruning.on_validation_end(trainer, None)
    assert study.trials[0].intermediate_values == {1000: 4.0}


def test_a_trial_without_step_rows_reports_epochs_unless_its_study_is_in_cells():
    study = optuna.create_study()
    epochs = callback(study, Rows(validate_every=0))
    trainer = fake_trainer(total_steps=300)
    epochs.on_train_start(trainer, None)
    assert epochs.unit == study.user_attrs[attrs.STEPS] == attrs.STEPS_EPOCHS
    trainer.callback_metrics = {ELBO_VALIDATION: 4.0}
    epochs.on_validation_end(trainer, None)
    assert study.trials[0].intermediate_values == {1: 4.0}
    # a later trial that validates between epoch ends keeps the study's unit: epoch ends only
    later = callback(study, Rows(validate_every=5))
    later.on_train_start(trainer, None)
    assert later.unit == attrs.STEPS_EPOCHS

    cells_study = optuna.create_study()
    cells_study.set_user_attr(attrs.STEPS, attrs.STEPS_CELLS)
    quiet = callback(cells_study, Rows(validate_every=0))
    quiet.on_train_start(trainer, None)
    assert quiet.unit == attrs.STEPS_CELLS  # its epoch ends in cells seen


@pytest.mark.parametrize(
    ("conf", "unit", "message"),
    [
        ({"min_resource": 1}, attrs.STEPS_CELLS, "pruner.min_resource=1: this study's steps are"),
        ({"max_resource": 40}, attrs.STEPS_CELLS, "less than one validation"),
        ({"n_warmup_steps": 3}, attrs.STEPS_CELLS, "trainer.validate_every_n_steps=0 to prune"),
        ({"min_resource": 2_000_000}, attrs.STEPS_EPOCHS, "more than the 3 epochs"),
    ],
)
def test_pruner_arguments_in_the_wrong_unit_are_refused(conf, unit, message):
    with pytest.raises(ValueError, match=message):
        check_step_arguments(conf, unit, max_epochs=3, interval_cells=1_024_000.0)


def test_pruner_arguments_in_the_studys_unit_pass():
    cells = {"min_resource": 2_048_000, "max_resource": "auto", "n_warmup_steps": 0}
    # each returns (None) without raising: the arguments are in the study's unit
    assert check_step_arguments(cells, attrs.STEPS_CELLS, 3, interval_cells=1_024_000.0) is None
    assert check_step_arguments({"min_resource": 1}, attrs.STEPS_EPOCHS, 3, None) is None
    assert check_step_arguments({"n_warmup_steps": 5}, attrs.STEPS_EPOCHS, 3, None) is None


# --- the Census preset and the report ----------------------------------------------------------


def test_the_census_preset_searches_with_hyperband_over_cells_seen():
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=scvi_census"], return_hydra_config=True)
    swept = cfg.hydra.sweeper
    space = parse(OmegaConf.to_container(swept.params), [])
    assert set(space.distributions) == {
        "model.n_hidden",
        "batch",
        "plan.n_steps_kl_warmup",
        "plan.lr",
    }
    assert space.distributions["plan.lr"].log
    assert {128, 512} <= set(space.distributions["model.n_hidden"].choices)
    assert cfg.plan.n_epochs_kl_warmup is None  # the warm-up searched is in steps
    assert cfg.optimized_metric == "elbo_validation" and not cfg.evaluation.enabled
    assert cfg.trainer.validate_every_n_steps == 1000 and cfg.trainer.max_epochs <= 5
    pruner = swept.pruner
    assert pruner._target_ == "optuna.pruners.HyperbandPruner"
    assert pruner.max_resource == "auto"  # the first complete trial's cells seen
    interval = cfg.trainer.validate_every_n_steps * cfg.loader.batch_size
    assert pruner.min_resource >= interval
    longest_warmup = max(space.distributions["plan.n_steps_kl_warmup"].choices)
    assert pruner.min_resource >= longest_warmup * cfg.loader.batch_size
    check_step_arguments(dict(pruner), attrs.STEPS_CELLS, cfg.trainer.max_epochs, interval)
    study_sweeper = sweeper(
        **{k: swept[k] for k in ("sampler", "pruner", "direction", "study_name", "n_trials")}
    )
    study_sweeper.build_sampler(space)
    study_sweeper.config = OmegaConf.create({"optimized_metric": cfg.optimized_metric})
    study = study_sweeper.open_study("census", optuna.storages.InMemoryStorage(), None)
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)


def cells_study(tmp_path: Path) -> str:
    """Two trials reported in cells seen, the second pruned; the storage URL."""
    storage = f"sqlite:///{tmp_path / 'cells.db'}"
    study = optuna.create_study(study_name="c", storage=storage)
    study.set_metric_names([ELBO_VALIDATION])
    study.set_user_attr(attrs.STEPS, attrs.STEPS_CELLS)
    for i, state in enumerate((TrialState.COMPLETE, TrialState.PRUNED)):
        values = {k * 1_024_000: 1000.0 - 10 * k + 50 * i for k in range(1, 6 - 3 * i)}
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=values[max(values)] if state == TrialState.COMPLETE else None,
                intermediate_values=values,
                user_attrs={attrs.PRUNED_AT_CELLS: max(values)} if i else {},
            )
        )
    return storage


def test_the_study_report_labels_its_steps_by_their_unit(tmp_path):
    from test_report_figures import assert_readable

    storage = cells_study(tmp_path)
    fig = plot_intermediate(load("c", storage))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training cells seen" and "cells seen" in ax.get_title()
    assert_readable(fig, tmp_path / "intermediate.png")
    text = build_study_report("c", storage, tmp_path / "report").read_text()
    assert "keyed by training cells seen" in text
    assert "(intermediate.png)" in text and "metric by training cells seen" in text
    table = pd.read_csv(tmp_path / "report" / "trials.csv")
    assert table["pruned_at_cells_seen"].tolist()[1] == 2_048_000
    assert json.loads(json.dumps(table["steps_reported"].tolist())) == [5, 2]
