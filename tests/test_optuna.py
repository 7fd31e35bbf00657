"""The Optuna sweeper (hydra/sweeper=optuna, sweep.study): real studies on the test store with
1-3 epochs, in sqlite and journal files under tmp folders.

Covers: a config written for hydra-optuna-sweeper runs unchanged and its best trial is its run's
metrics.json; a killed sweep resumes to exactly n_trials with no duplicate grid point; two
processes share one study; a bad learning rate is pruned; two objectives give a Pareto front;
failures stop the sweep at max_failure_rate; bad sweeper config fails naming the key.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep.cli.report_command import main as report_main
from sweep.config.schema import register_schema
from sweep.paths import CONF_DIR, REPO_ROOT
from sweep.study import attrs, liveness
from sweep.study.search_space import grid, parse
from sweep.study.storage import open_storage
from sweep.study.sweeper import StudySweeper

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: a search written for hydra-optuna-sweeper (its README's keys, its _target_ spelled out as
#: lightning-hydra-template's hparams_search configs do); only the searched keys are ours
OFFICIAL = """\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: tpe

hydra:
  mode: MULTIRUN
  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 123
      n_startup_trials: 3
    direction: minimize
    study_name: official
    storage: sqlite:///official.db
    n_trials: 4
    n_jobs: 1
    params:
      model.n_hidden: choice(32, 64)
      model.n_latent: int(interval(5, 20))
      model.dropout_rate: range(0.0, 0.3, 0.1)
      plan.lr: tag(log, interval(1e-4, 1e-2))
      batch: choice(czi_concat, dataset_donor)
"""


def base(store: Path, tmp_path: Path, *overrides: str) -> list[str]:
    """An Optuna multirun on the test store: 1 epoch, no scoring, no W&B, no model file."""
    return [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "hydra/sweeper=optuna",
        "dataset=prepared",
        f"dataset.path={store}",
        "trainer.max_epochs=1",
        "evaluation=none",
        "logger=none",
        "save_model=false",
        "trainer.enable_progress_bar=false",
        "loader.num_workers=0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.callbacks.report.out_root={tmp_path / 'reports'}",
        *overrides,
    ]


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def trials(storage: str, name: str, *states: TrialState) -> list:
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return study.get_trials(deepcopy=False, states=states or None)


def metrics_of(trial) -> dict:
    return json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())


@pytest.mark.slow
def test_a_config_for_hydra_optuna_sweeper_runs_unchanged_best_trial_is_its_run(store, tmp_path):
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "official.yaml").write_text(OFFICIAL)
    command = base(store, tmp_path)
    command[2:2] = ["--config-dir", str(tmp_path / "conf")]  # the search path holds the config
    command.remove("hydra/sweeper=optuna")  # the config alone selects the sweeper
    command.remove("logger=none")  # W&B offline: each trial's run is grouped by study
    result = run([*command, "hparams_search=official"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    storage = f"sqlite:///{tmp_path / 'official.db'}"  # relative to the launch folder
    done = trials(storage, "official")
    assert [t.state for t in done] == [TrialState.COMPLETE] * 4
    for t in done:
        assert t.params["model.n_hidden"] in (32, 64)
        assert isinstance(t.params["model.n_latent"], int) and 5 <= t.params["model.n_latent"] <= 20
        assert round(t.params["model.dropout_rate"], 9) in (0.0, 0.1, 0.2)  # range: stop excluded
        assert 1e-4 <= t.params["plan.lr"] <= 1e-2
        assert t.user_attrs["run_dir"] == str(tmp_path / "sweep" / str(t.number))
        metrics = metrics_of(t)
        assert t.value == metrics["elbo_validation"]  # the objective is the run's metrics.json
        assert metrics["optuna_trial"] == t.number and metrics["optuna_study"] == "official"
        run_dir = Path(t.user_attrs["run_dir"])
        assert json.loads((run_dir / "wandb_run.json").read_text())["group"] == "official"
        resolved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
        assert resolved["model"]["n_latent"] == t.params["model.n_latent"]
        assert resolved["optuna"]["trial"] == t.number
    best = min(done, key=lambda t: t.value)
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == best.value and results["best_params"] == best.params

    # the end-of-sweep study report, and the same from `scvi-sweep-report`
    out = tmp_path / "reports" / "official"
    report = (out / "report.md").read_text()
    assert "| 4 | 0 | 0 | 0 | 0 | 0 |" in report  # complete pruned fail running waiting void
    for figure in ("history.png", "slices.png", "importances.png", "intermediate.png"):
        assert (out / figure).stat().st_size > 0 and f"({figure})" in report
    rerun = next(line for line in report.splitlines() if line.startswith("- trial "))
    # machine paths elided (issue 23): the reader fills in the folders the report names
    assert rerun.startswith(f"- trial {best.number}: `python …/train.py --config-dir conf ")
    report_main(["--study", "official", "--storage", storage, "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "trials.csv").read_text() == (out / "trials.csv").read_text()

    # the report's command re-runs the best trial as a single job, to the same ELBO
    filled = rerun.split("`")[1].replace("…/train.py", str(REPO_ROOT / "train.py"))
    args = shlex.split(filled.replace("…/store", str(store)))[1:]
    single = run([sys.executable, *args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    again = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert again["elbo_validation"] == best.value


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_exactly_n_trials_without_duplicate_grid_points(store, tmp_path):
    # storage null: the default journal in outputs/optuna/ under the launch folder, study name
    # derived from the search, so the very same command finds the study again
    command = base(
        store,
        tmp_path,
        "hydra/sweeper/sampler=grid",
        "trainer.max_epochs=4",  # trials of a few seconds, to kill one mid-way
        "model.n_hidden=choice(16,32)",
        "model.n_latent=choice(5,10)",
        "hydra.sweeper.n_trials=10",  # capped at the grid's 4 points
    )
    sweep = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    journal, name = None, None
    deadline = time.monotonic() + 240
    while sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
        found = list((tmp_path / "outputs" / "optuna").glob("*.journal"))
        if found:
            journal = str(found[0])
            name = optuna.get_all_study_names(open_storage(journal))[0]
            if any(t.number >= 1 for t in trials(journal, name, TrialState.RUNNING)):
                time.sleep(0.3)  # into the second trial's training
                os.killpg(sweep.pid, signal.SIGKILL)
                sweep.wait()
    assert sweep.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    (killed,) = trials(journal, name, TrialState.RUNNING)  # left running by the dead process
    assert killed.params
    assert name == f"train-{name.split('-')[1]}" and journal.endswith(f"{name}.journal")

    result = run(command, tmp_path)  # the same command resumes the study
    assert result.returncode == 0, result.stderr[-3000:]
    everything = trials(journal, name)
    complete = [t for t in everything if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    points = {(t.params["model.n_hidden"], t.params["model.n_latent"]) for t in complete}
    assert points == {(16, 5), (16, 10), (32, 5), (32, 10)}  # every grid point once
    void = [t for t in everything if attrs.VOID in t.system_attrs]
    assert [t.number for t in void] == [killed.number]
    assert void[0].state == TrialState.FAIL and "stale" in void[0].system_attrs[attrs.VOID]
    retry = [t for t in complete if t.user_attrs.get(attrs.RETRY_OF) == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params
    assert len(everything) == 5
    report = (tmp_path / "reports" / name / "report.md").read_text()
    assert "| 4 | 0 | 0 | 0 | 0 | 1 |" in report


def two_sweeps_share_one_study(store, tmp_path, storage: str, name: str, n_trials: int) -> list:
    """Start the same search in two processes at once on one study; check that together they
    ran exactly ``n_trials`` distinct trials, each with its own run folder; return those."""
    command = base(
        store,
        tmp_path,
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",  # the same seed in both: trials still draw apart
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.n_trials={n_trials}",
        "trainer.max_epochs=2",
        "plan.lr=tag(log,interval(1e-4,1e-2))",
    )
    sweeps = [
        subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for sweep in sweeps:
        _, err = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, err[-3000:]
    everything = trials(storage, name)
    counted = [t for t in everything if liveness.counts_toward_total(t)]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * n_trials
    assert all(t.system_attrs[attrs.VOID] == "surplus" for t in everything if t not in counted)
    assert len({t.params["plan.lr"] for t in counted}) == n_trials  # no duplicate draw
    assert len({t.system_attrs[attrs.PID] for t in counted}) == 2  # both processes ran trials
    for t in counted:  # one run folder per trial, named by its number
        assert t.user_attrs["run_dir"] == str(tmp_path / "sweep" / str(t.number))
        assert metrics_of(t)["elbo_validation"] == t.value
    return counted


@pytest.mark.slow
def test_two_sweep_processes_share_one_study_and_stop_at_its_total(store, tmp_path):
    two_sweeps_share_one_study(store, tmp_path, str(tmp_path / "shared.journal"), "shared", 5)


@pytest.mark.slow
def test_a_bad_learning_rate_is_pruned_before_max_epochs(store, tmp_path):
    journal = tmp_path / "prune.journal"
    result = run(
        base(
            store,
            tmp_path,
            "hydra/sweeper/sampler=grid",
            "hydra.sweeper.sampler.seed=1",  # this seed orders the grid: 1e-2 first, then 1e-7
            "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.study_name=prune",
            f"hydra.sweeper.storage={journal}",
            "trainer.max_epochs=3",
            "plan.lr=choice(1e-2,1e-7)",
        ),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    good, bad = trials(str(journal), "prune")
    assert good.params["plan.lr"] == 1e-2 and good.state == TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [1, 2, 3]  # the callback reported every epoch
    assert bad.params["plan.lr"] == 1e-7 and bad.state == TrialState.PRUNED
    assert bad.user_attrs["pruned_at_epoch"] == 1
    assert bad.intermediate_values[1] > good.intermediate_values[1]
    metrics = metrics_of(bad)  # a pruned trial still leaves a whole run folder
    assert metrics["epochs"] == 1 < 3 and metrics["pruned_at_epoch"] == 1
    assert metrics["elbo_validation"] == bad.intermediate_values[1]
    assert metrics_of(good)["elbo_validation"] == good.value == good.intermediate_values[3]
    assert "| 1 | 1 | 0 | 0 | 0 | 0 |" in (tmp_path / "reports/prune/report.md").read_text()


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front(store, tmp_path):
    journal = tmp_path / "pareto.journal"
    result = run(
        base(
            store,
            tmp_path,
            "hydra/sweeper/sampler=nsgaii",
            "hydra.sweeper.sampler.seed=0",
            "hydra.sweeper.study_name=pareto",
            f"hydra.sweeper.storage={journal}",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.direction=[minimize,minimize]",
            "optimized_metric=[reconstruction_loss_validation,kl_local_validation]",
            "plan.lr=tag(log,interval(1e-4,1e-2))",
            "model.n_latent=choice(5,20)",
        ),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="pareto", storage=open_storage(str(journal)))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4 and study.metric_names == [
        "reconstruction_loss_validation",
        "kl_local_validation",
    ]
    front = study.best_trials
    assert front
    for t in complete:
        metrics = metrics_of(t)
        assert t.values == [
            metrics["reconstruction_loss_validation"],
            metrics["kl_local_validation"],
        ]
        assert not t.intermediate_values  # Optuna cannot prune multi-objective trials
        dominated = any(
            all(f <= v for f, v in zip(o.values, t.values, strict=True)) and o.values != t.values
            for o in complete
        )
        assert dominated == (t.number not in {f.number for f in front})
    out = tmp_path / "reports" / "pareto"
    assert (out / "pareto.png").stat().st_size > 0
    assert f"## Pareto front ({len(front)} trials)" in (out / "report.md").read_text()
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert sorted(s["values"] for s in results["solutions"]) == sorted(t.values for t in front)


@pytest.mark.slow
def test_failed_trials_are_told_to_optuna_and_stop_the_sweep_at_max_failure_rate(store, tmp_path):
    journal = tmp_path / "fail.journal"
    # a valid config and a store whose manifest reads (train.py refuses a missing store before
    # the sweep starts), but every job raises: the shards are not there
    broken = tmp_path / "no-shards"
    broken.mkdir()
    shutil.copy(store / "manifest.json", broken)
    command = base(
        broken,
        tmp_path,
        "hydra.sweeper.study_name=fail",
        f"hydra.sweeper.storage={journal}",
        "hydra.sweeper.n_trials=2",
        "model.n_hidden=choice(16,32)",
    )
    stopped = run([*command, "hydra.sweeper.max_failure_rate=0.0"], tmp_path)
    assert stopped.returncode != 0
    assert "hydra.sweeper.max_failure_rate=0.0" in stopped.stderr
    failed = trials(str(journal), "fail")
    assert [t.state for t in failed] == [TrialState.FAIL]
    assert f"shard {broken / 'shard_00000.h5ad'} is missing" in failed[0].user_attrs["error"]

    going_on = run([*command, "hydra.sweeper.max_failure_rate=1.0"], tmp_path)
    assert going_on.returncode == 0, going_on.stderr[-3000:]
    assert [t.state for t in trials(str(journal), "fail")] == [TrialState.FAIL] * 2


# --- fast: search space syntax, ready searches, bad config, stale trials -----------------------


def test_hydra_optuna_sweeper_parameter_syntax():
    space = parse(
        {
            "a": "choice(czi_concat, 'two words')",
            "b": "range(1, 10, 3)",
            "c": "range(0.0, 0.3, 0.1)",
            "d": "interval(0.1, 0.5)",
            "e": "int(interval(1, 4))",
            "f": "tag(log, interval(1e-4, 1e-2))",
            "g": "shuffle(range(1, 4))",
            "h": 5,
        },
        ["b=4", "i=x,y"],  # the command line fixes b and adds a choice
    )
    d = space.distributions
    assert d["a"] == CategoricalDistribution(["czi_concat", "two words"])
    assert d["c"] == FloatDistribution(0.0, 0.2, step=0.1)
    assert d["d"] == FloatDistribution(0.1, 0.5)
    assert d["e"] == IntDistribution(1, 4)
    assert d["f"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert sorted(d["g"].choices) == [1, 2, 3]
    assert d["i"] == CategoricalDistribution(["x", "y"])
    assert space.fixed == {"h": "5", "b": "4"}
    assert parse({"b": "range(1, 10, 3)"}, []).distributions["b"] == IntDistribution(1, 7, step=3)
    assert grid(parse({"b": "range(1, 10, 3)", "c": "range(0.0, 0.3, 0.1)"}, [])) == {
        "b": [1, 4, 7],
        "c": [0.0, 0.1, 0.2],
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"plan.lr": "interval(0.1)"},
            "hydra.sweeper.params: cannot parse 'plan.lr=interval(0.1)'",
        ),
        ({"plan.lr": "tag(log, interval(0, 1))"}, "hydra.sweeper.params.plan.lr: "),
        ({"x": "glob(*)"}, "hydra.sweeper.params.x: glob(*) is not one of choice"),
    ],
)
def test_bad_params_are_named_with_the_syntax(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(params, [])


def sweeper(**changes) -> StudySweeper:
    conf = {
        "sampler": OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": None}),
        "pruner": None,
        "direction": "minimize",
        "storage": None,
        "study_name": None,
        "n_trials": 2,
        "n_jobs": 1,
        "max_failure_rate": 0.0,
        "search_space": None,
        "params": None,
        "custom_search_space": None,
        "heartbeat_interval": 60,
    }
    return StudySweeper(**{**conf, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"direction": "up"}, "hydra.sweeper.direction='up'"),
        ({"max_failure_rate": 2.0}, "hydra.sweeper.max_failure_rate=2.0 must be in"),
        ({"n_trials": 0}, "hydra.sweeper.n_trials=0 must be >= 1"),
        ({"search_space": {"x": {"type": "float"}}}, "write its entries under hydra.sweeper"),
        ({"custom_search_space": "no.such.fn"}, "hydra.sweeper.custom_search_space='no.such.fn'"),
    ],
)
def test_bad_sweeper_config_names_the_key_and_the_fix(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sweeper(**changes)


def test_the_grid_sampler_refuses_continuous_params():
    grid_sweeper = sweeper(
        sampler=OmegaConf.create({"_target_": "optuna.samplers.GridSampler", "seed": 0})
    )
    with pytest.raises(ValueError, match="hydra.sweeper.params.plan.lr: the grid sampler needs"):
        grid_sweeper.build_sampler(parse({"plan.lr": "interval(0.1, 0.2)"}, []))


def test_a_bad_sweeper_key_stops_train_py_before_any_trial(tmp_path):
    result = run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.direction=upward",
            f"hydra.sweeper.storage={tmp_path / 's.journal'}",
        ],
        tmp_path,
    )
    assert result.returncode != 0
    assert "hydra.sweeper.direction='upward': write minimize, maximize" in result.stderr
    assert not (tmp_path / "s.journal").exists()


@pytest.mark.parametrize("search", ["scvi", "scvi_pareto"])
def test_the_ready_searches_compose_into_valid_studies(search):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    sweeper_cfg = cfg.hydra.sweeper
    space = parse(OmegaConf.to_container(sweeper_cfg.params), [])
    assert set(space.distributions) == {
        "model.n_hidden",
        "model.n_latent",
        "model.n_layers",
        "model.dropout_rate",
        "plan.lr",
        "plan.n_epochs_kl_warmup",
        "batch",
        "trainer.max_epochs",
    }
    assert space.distributions["plan.lr"].log
    assert space.distributions["batch"].choices == ("czi_concat", "dataset_donor", "covariates")
    study_sweeper = sweeper(
        **{k: sweeper_cfg[k] for k in ("sampler", "pruner", "direction", "study_name")}
    )
    sampler, _ = study_sweeper.build_sampler(space)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    if search == "scvi":
        assert cfg.optimized_metric == "elbo_validation" and not cfg.evaluation.enabled
        assert sweeper_cfg.pruner._target_ == "optuna.pruners.MedianPruner"
    else:
        assert list(cfg.optimized_metric) == ["elbo_validation", "integration_total"]
        assert list(sweeper_cfg.direction) == ["minimize", "maximize"]
        assert cfg.evaluation.enabled and sweeper_cfg.pruner is None


def test_a_trial_read_while_another_process_claims_it_is_left_alone(tmp_path):
    """Another sweep process may list the running trials between two writes of ``claim``."""
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    write = storage.set_trial_system_attr
    seen = []

    def write_then_look(trial_id, key, value):
        write(trial_id, key, value)
        seen.append(liveness.fail_stale(study, storage, interval=60))

    storage.set_trial_system_attr = write_then_look
    liveness.claim(storage, trial._trial_id)
    assert seen == [[], [], []]  # before: KeyError 'sweep:pid' after the first write
    assert study.trials[0].state == TrialState.RUNNING


def test_a_trial_left_running_by_a_dead_process_is_failed_void_and_queued_again(tmp_path):
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = study.ask()
    orphan.suggest_int("x", 0, 9)
    liveness.claim(storage, orphan._trial_id)
    storage.set_trial_system_attr(orphan._trial_id, attrs.PID, dead.pid)
    elsewhere = study.ask()  # another machine: judged by its heartbeat
    liveness.claim(storage, elsewhere._trial_id)
    storage.set_trial_system_attr(elsewhere._trial_id, attrs.HOST, "another-host")
    mine = study.ask()  # this process: alive
    liveness.claim(storage, mine._trial_id)

    assert liveness.fail_stale(study, storage, interval=60) == [orphan.number]
    storage.set_trial_system_attr(elsewhere._trial_id, attrs.HEARTBEAT, time.time() - 200)
    assert liveness.fail_stale(study, storage, interval=60) == [elsewhere.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[orphan.number] == states[elsewhere.number] == TrialState.FAIL
    assert states[mine.number] == TrialState.RUNNING
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[attrs.RETRY_OF] for t in queued] == [orphan.number]  # had params
    assert study.ask().suggest_int("x", 0, 9) == orphan.params["x"]  # the retry: same params
    assert sum(liveness.counts_toward_total(t) for t in study.get_trials()) == 2


def test_a_storage_url_with_a_password_is_refused_and_paths_are_made_absolute(tmp_path):
    from sweep.study.storage import resolve

    with pytest.raises(ValueError, match="PGPASSWORD"):
        resolve("postgresql://optuna:hunter22@db:5432/studies", "scvi", tmp_path)
    assert resolve("postgresql://optuna@db/studies", "s", tmp_path) == (
        "postgresql://optuna@db/studies"
    )
    assert resolve(None, "scvi", tmp_path) == str(tmp_path / "outputs/optuna/scvi.journal")
    assert resolve("sqlite:///s.db", "scvi", tmp_path) == f"sqlite:///{tmp_path / 's.db'}"
