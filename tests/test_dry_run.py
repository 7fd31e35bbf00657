"""A plan before launch: ``dry_run=true`` lists the jobs a command line would launch (a single
run, a grid, an experiment, an Optuna search) with their cells, epochs, cells seen and estimated
time, and starts nothing. No timing is asserted: only counts, arithmetic and the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sweep.data.datamodule import StoreDataModule
from sweep.paths import REPO_ROOT, reports_dir
from sweep.planning import calibration
from sweep.planning.cost import Planner, device_count, make_plan
from sweep.planning.job_list import PlanError, expand
from sweep.planning.printout import duration, plan_text, span


def on_store(store, *overrides: str) -> list[str]:
    """``overrides`` on a prepared store, with no loader workers (quick to build)."""
    return ["dataset=prepared", f"dataset.path={store}", "loader.num_workers=0", *overrides]


def test_a_grid_lists_the_jobs_hydra_would_launch_in_its_order():
    jobs = expand(["model=czi_128,hidden_512", "seed=0,1", "dry_run=true"], multirun=True)
    assert jobs.kind == "grid"
    assert [job.overrides for job in jobs.jobs] == [
        ["model=czi_128", "seed=0"],
        ["model=czi_128", "seed=1"],
        ["model=hidden_512", "seed=0"],
        ["model=hidden_512", "seed=1"],
    ]
    assert [job.cfg.model.n_hidden for job in jobs.jobs] == [128, 128, 512, 512]
    assert [job.cfg.seed for job in jobs.jobs] == [0, 1, 0, 1]


def test_an_experiment_is_a_multirun_of_its_sweeper_params():
    jobs = expand(["experiment=architecture", "dry_run=true"], multirun=False)
    assert jobs.kind == "grid" and len(jobs.jobs) == 6
    assert {(job.cfg.model.n_hidden, job.cfg.seed) for job in jobs.jobs} == {
        (h, s) for h in (128, 512) for s in (0, 1, 2)
    }
    assert all("experiment=architecture" in job.overrides for job in jobs.jobs)
    assert not any(o.startswith("dry_run") for job in jobs.jobs for o in job.overrides)


def test_a_single_run_is_one_job_and_a_sweep_without_m_is_refused_as_hydra_refuses_it():
    jobs = expand(["seed=3", "dry_run=true"], multirun=False)
    assert jobs.kind == "single run" and [job.cfg.seed for job in jobs.jobs] == [3]
    with pytest.raises(PlanError, match="Ambiguous value for argument 'seed=0,1'"):
        expand(["seed=0,1", "dry_run=true"], multirun=False)
    with pytest.raises(PlanError, match="dry_run cannot be swept"):
        expand(["seed=0,1", "dry_run=true,false"], multirun=True)


def test_an_optuna_search_lists_its_trials_with_the_space_and_the_epochs_range():
    jobs = expand(["hparams_search=scvi", "dry_run=true"], multirun=False)
    search = jobs.search
    assert jobs.kind == "Optuna search" and len(jobs.jobs) == search.n_trials == 30
    assert search.epochs == (10, 40)
    assert "model.n_hidden" in search.params and "trainer.max_epochs" in search.params
    timed = search.largest
    assert (timed.model.n_hidden, timed.model.n_layers, timed.trainer.max_epochs) == (512, 3, 40)
    assert search.pruner == "MedianPruner" and search.sampler == "TPESampler"


def test_cells_per_epoch_are_the_training_cells_a_job_trains_on(tiny_store):
    for extra in ([], ["data=none"], ["data.max_cells=150"]):
        job = expand(on_store(tiny_store, *extra), multirun=False).jobs[0]
        planner = Planner()
        n_train, n_val = planner.cells(job.cfg, planner.store(job.cfg))
        module = StoreDataModule(
            tiny_store, job.cfg.data, job.cfg.batch, job.cfg.loader, seed=job.cfg.seed
        )
        assert (n_train, n_val) == (module.n_train, module.n_val)
    assert n_train == 150


def test_a_given_throughput_gives_the_time_by_arithmetic(tiny_store):
    overrides = on_store(
        tiny_store,
        "trainer.max_epochs=3",
        "evaluation=none",
        "trainer.validate_every_n_steps=0",
        "dry_run=true",
        "dry_run_cells_per_s=1000",
    )
    plan = make_plan(overrides, multirun=False)
    (cost,) = plan.costs
    n_train, n_val = cost.cells_per_epoch[1], cost.validation_cells[1]
    assert cost.cells_seen == (3 * n_train, 3 * n_train)
    assert cost.train_s == pytest.approx(3 * n_train / 1000)
    assert cost.validation_s == pytest.approx(3 * n_val / 1000)  # at the training rate
    assert plan.device_hours == pytest.approx((3 * n_train + 3 * n_val) / 1000 / 3600)
    assert cost.scorings == 0 and cost.step_validations == 0
    text = plan_text(plan)
    assert "given: dry_run_cells_per_s=1,000" in text and "validation counted at the" in text
    assert "(no scoring: evaluation=none)" in text and "Total: 1 jobs" in text


def test_step_validations_and_scorings_are_counted(tiny_store):
    overrides = on_store(
        tiny_store,
        "trainer.max_epochs=4",
        "loader.batch_size=64",
        "trainer.validate_every_n_steps=5",
        "evaluation.every_n_steps=0",
        "evaluation.epochs=[1,2,10]",
        "dry_run_cells_per_s=1000",
    )
    (cost,) = make_plan(overrides, multirun=False).costs
    steps = -(-int(cost.cells_per_epoch[1]) // 64) * 4
    assert cost.step_validations == steps // 5
    assert cost.scorings == 3  # epochs 1, 2 and the last (4); 10 is beyond it
    validated = cost.validation_cells[1] * 4 + steps // 5 * cost.step_validation_cells
    assert cost.validation_s == pytest.approx(validated / 1000)


def test_several_devices_take_fewer_steps_each(tiny_store):
    # Lightning counts steps per process: on 2 devices each step takes 2 x 64 cells, and the
    # step-level validation (rank 0 alone) is not shared
    overrides = on_store(
        tiny_store,
        "trainer.max_epochs=4",
        "trainer.devices=2",
        "loader.batch_size=64",
        "trainer.validate_every_n_steps=5",
        "evaluation=none",
        "dry_run_cells_per_s=1000",
    )
    (cost,) = make_plan(overrides, multirun=False).costs
    steps = -(-int(cost.cells_per_epoch[1]) // (64 * 2)) * 4
    assert cost.devices == 2 and cost.step_validations == steps // 5
    epoch_ends = cost.validation_cells[1] * 4 / (1000 * 2)
    assert cost.validation_s == pytest.approx(
        epoch_ends + steps // 5 * cost.step_validation_cells / 1000
    )
    assert cost.train_s == pytest.approx(cost.cells_per_epoch[1] * 4 / (1000 * 2))


def test_devices_divide_the_wall_time_not_the_device_hours():
    from omegaconf import OmegaConf

    assert device_count(OmegaConf.create({"devices": 4})) == 4
    assert device_count(OmegaConf.create({"devices": [0, 1]})) == 2
    assert device_count(OmegaConf.create({"devices": "0,1"})) == 2
    assert device_count(OmegaConf.create({"devices": "auto"})) == 1
    assert (duration(30), duration(600), duration(7200)) == ("30 s", "10.0 min", "2.0 h")
    assert (span(5, 5), span(1000, 4000)) == ("5", "1,000-4,000")


def test_the_calibration_is_cached_and_reused(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("SCVI_SWEEP_CACHE", str(tmp_path / "cache"))
    overrides = on_store(tiny_store, "dry_run=true", "dry_run_calibration_steps=12")
    first = make_plan(overrides, multirun=False).costs[0].rate
    assert first.fresh and first.source.startswith("calibrated on cpu")
    assert first.train > 0 and first.validation is not None
    (record,) = (tmp_path / "cache" / calibration.CALIBRATION_DIR).glob("*.json")
    assert json.loads(record.read_text())["key"]["steps"] == 12

    def no_second_calibration(*args):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(calibration, "measure", no_second_calibration)
    again = make_plan([*overrides, "seed=5"], multirun=False).costs[0].rate
    assert (again.train, again.validation) == (first.train, first.validation)
    assert not again.fresh and again.source == first.source and str(record) in again.source
    other_model = expand([*overrides, "model=hidden_512"], multirun=False).jobs[0].cfg
    key = calibration.calibration_key(other_model, tiny_store, "cpu")
    assert calibration.cache_path(key) != record  # another model: another calibration


def test_an_experiment_dry_run_prints_6_jobs_and_a_total_and_creates_nothing(tiny_store, tmp_path):
    """The issue's done-when, in a fresh process: calibrated on the tiny store (12 steps), no
    outputs/ folder, no change in multirun_reports/."""
    reports = reports_dir()
    before = sorted(p.name for p in reports.iterdir()) if reports.is_dir() else []
    env = {**os.environ, "SCVI_SWEEP_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "experiment=architecture",
            *on_store(tiny_store, "dry_run=true", "dry_run_calibration_steps=12"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 6  # the header and 6 jobs
    assert "a grid of 6 jobs" in out and "Total: 6 jobs" in out and "device-hours" in out
    assert "calibrated on cpu" in out and "measured by this plan" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no outputs/, nothing else
    after = sorted(p.name for p in reports.iterdir()) if reports.is_dir() else []
    assert after == before


def test_an_optuna_dry_run_creates_no_study(tiny_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = on_store(tiny_store, "hparams_search=scvi", "dry_run_cells_per_s=2000")
    plan = make_plan(overrides, multirun=False)
    assert len(plan.costs) == 30 and {c.epochs for c in plan.costs} == {(10, 40)}
    text = plan_text(plan)
    assert "an Optuna search of 30 trials" in text and "Total: 30 trials, at most" in text
    assert list(tmp_path.iterdir()) == []  # no outputs/optuna/*.journal
