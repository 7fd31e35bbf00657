"""The sweep loop: ask Optuna for trials, launch them as Hydra jobs, tell Optuna how they ended.

Any number of sweep processes may run the same command on one storage: each counts the study's
trials before asking (``n_trials`` is the study's total, void trials excluded, see
``liveness``) and checks after asking that its trial is within the total (a trial asked in the
same instant as the last one is voided, never run). Each trial is launched as job number =
trial number, so run folders of concurrent processes never collide, and gets ``optuna.storage``,
``optuna.study_name`` and ``optuna.trial`` overrides, through which its pruning callback reaches
the trial (in-process or through a remote launcher).
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
import time
import warnings
from pathlib import Path

import optuna
import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import Trial, TrialState

from sweep.study import liveness
from sweep.study.attrs import COMMAND, ERROR, OVERRIDES, PRUNED_AT, PRUNER, RUN_DIR, VOID
from sweep.study.search_space import SearchSpace, grid, override, parse
from sweep.study.storage import (
    dashboard_command,
    default_study_name,
    open_storage,
    resolve,
    write_record,
)

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
GRID_SAMPLER = "optuna.samplers.GridSampler"
#: drop-in for hydra-optuna-sweeper: best params / Pareto solutions in the sweep folder
RESULTS_FILE = "optimization_results.yaml"


class StudySweeper:
    """``hydra.sweeper`` keys in, a finished study out (see ``sweep.study.config``)."""

    def __init__(
        self,
        sampler: DictConfig,
        pruner: DictConfig | None,
        direction,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space,
        params,
        custom_search_space: str | None,
        heartbeat_interval: int,
    ):
        if search_space:
            raise ValueError(
                "hydra.sweeper.search_space is hydra-optuna-sweeper < 1.2's key: write its "
                "entries under hydra.sweeper.params as choice(...), interval(...) or range(...)"
            )
        for key, value, low in (("n_trials", n_trials, 1), ("n_jobs", n_jobs, 1)):
            if value < low:
                raise ValueError(f"hydra.sweeper.{key}={value} must be >= {low}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate} must be in [0, 1]")
        if heartbeat_interval < 1:
            raise ValueError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval} must be >= 1")
        directions = [direction] if isinstance(direction, str) else list(direction)
        if not directions or any(d not in DIRECTIONS for d in directions):
            raise ValueError(
                f"hydra.sweeper.direction={direction!r}: write minimize, maximize or a list of "
                "them (one per optimized_metric)"
            )
        self.sampler = sampler
        self.pruner = pruner
        self.directions = directions
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params
        self.custom_search_space = (
            load_extender(custom_search_space) if custom_search_space else None
        )
        self.heartbeat_interval = heartbeat_interval
        self.config: DictConfig | None = None
        self.launcher = None
        self.sampler_conf: dict = {}

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # --- the loop --------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        space = parse(OmegaConf.to_container(self.params) if self.params else None, arguments)
        name = self.study_name or default_study_name(
            self.config.task_name if "task_name" in self.config else "study",
            {
                "params": {k: distribution_to_json(d) for k, d in space.distributions.items()},
                "fixed": space.fixed,
                "directions": self.directions,
            },
        )
        location = resolve(self.storage, name, Path.cwd())
        storage = open_storage(location)
        sampler, n_trials = self.build_sampler(space)
        study = self.open_study(name, storage, sampler)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        write_record(
            sweep_dir,
            {
                "study_name": name,
                "storage": location,
                "directions": self.directions,
                "n_trials": n_trials,
            },
        )
        log.info(
            "study %s (%s, %s) in %s: %d of %d trials done or running; open it with `%s`",
            name,
            type(sampler).__name__,
            "/".join(self.directions),
            location,
            count(study),
            n_trials,
            dashboard_command(location),
        )
        started, overhead, ran, failed = time.perf_counter(), 0.0, 0, []
        with liveness.Heartbeat(storage, self.heartbeat_interval) as heartbeat:
            while True:
                tick = time.perf_counter()
                liveness.fail_stale(study, storage, self.heartbeat_interval)
                to_go = n_trials - count(study)
                batch = self.ask(study, storage, space, min(self.n_jobs, to_go), n_trials)
                if not batch:
                    break
                overrides = [self.job_overrides(trial, space, name, location) for trial in batch]
                heartbeat.trial_ids.update(t._trial_id for t in batch)
                overhead += time.perf_counter() - tick
                returns = self.launch(batch, overrides)
                tick = time.perf_counter()
                for trial, ret in zip(batch, returns, strict=True):
                    heartbeat.trial_ids.discard(trial._trial_id)
                    error = self.tell(study, storage, trial, ret)
                    if error is not None:
                        failed.append(error)
                ran += len(batch)
                overhead += time.perf_counter() - tick
                if failed and len(failed) / ran > self.max_failure_rate:
                    raise RuntimeError(
                        f"{len(failed)} of {ran} trials failed, more than "
                        f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows "
                        f"(last: {failed[-1]}); fix the cause or raise max_failure_rate, then "
                        f"rerun the same command to resume study {name}"
                    )
        log.info(
            "study %s: this process ran %d trials in %.0f s; sweeper overhead %.3f s per trial",
            name,
            ran,
            time.perf_counter() - started,
            overhead / max(ran, 1),
        )
        write_results(study, sweep_dir)

    def build_sampler(self, space: SearchSpace) -> tuple[optuna.samplers.BaseSampler, int]:
        """The configured sampler, and n_trials (capped at the grid size for the grid sampler)."""
        conf = OmegaConf.to_container(self.sampler, resolve=True)
        target = conf.get("_target_")
        is_grid = target == GRID_SAMPLER
        if is_grid:
            conf["search_space"] = grid(space)
        try:
            sampler = instantiate(conf)
        except Exception as error:
            raise ValueError(
                f"hydra.sweeper.sampler: cannot build {target} ({error}); choose an option of "
                "hydra/sweeper/sampler (tpe, random, grid, ...) or fix its keys"
            ) from error
        self.sampler_conf = conf
        n_trials = self.n_trials
        if is_grid:
            size = math.prod(len(v) for v in conf["search_space"].values())
            if n_trials > size:
                log.info("the grid has %d points: n_trials %d -> %d", size, n_trials, size)
                n_trials = size
        return sampler, n_trials

    def open_study(self, name: str, storage, sampler) -> optuna.Study:
        """Create or load the study; record the pruner its trials use."""
        pruner_conf = (
            OmegaConf.to_container(self.pruner, resolve=True)
            if self.pruner is not None
            else {"_target_": "optuna.pruners.NopPruner"}
        )
        try:
            pruner = instantiate(pruner_conf)
        except Exception as error:
            raise ValueError(
                f"hydra.sweeper.pruner: cannot build {pruner_conf.get('_target_')} ({error}); "
                "choose hydra/sweeper/pruner=median, hyperband or none, or fix its keys"
            ) from error
        try:
            study = optuna.create_study(
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                study_name=name,
                directions=self.directions,
                load_if_exists=True,
            )
        except ValueError as error:
            raise ValueError(
                f"study {name}: {error}; hydra.sweeper.direction must match the stored study's "
                "directions (or set hydra.sweeper.study_name to start a new study)"
            ) from error
        study.set_user_attr(PRUNER, pruner_conf)
        metrics = self.config.get("optimized_metric")
        metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        if len(metrics) == len(self.directions):
            with warnings.catch_warnings():  # experimental API: names the objectives in reports
                warnings.simplefilter("ignore")
                study.set_metric_names(metrics)
        if len(self.directions) > 1 and pruner_conf["_target_"] != "optuna.pruners.NopPruner":
            log.info("Optuna cannot prune multi-objective trials: pruning is off for this study")
        return study

    def ask(self, study, storage, space: SearchSpace, n: int, n_trials: int) -> list[Trial]:
        """Up to ``n`` new trials with sampled parameters, none beyond the study's total."""
        batch = []
        for _ in range(max(n, 0)):
            trial = study.ask()
            liveness.claim(storage, trial._trial_id)
            before = study.get_trials(deepcopy=False)
            used = sum(
                1 for t in before if t.number < trial.number and liveness.counts_toward_total(t)
            )
            if used >= n_trials:  # another process asked for the last trial at the same time
                storage.set_trial_system_attr(trial._trial_id, VOID, "surplus")
                tell_quietly(study, trial, TrialState.FAIL)
                break
            self.reseed(study, trial.number)
            for key, dist in space.distributions.items():
                suggest(trial, key, dist)
            if self.custom_search_space is not None:
                self.custom_search_space(self.config, trial)
            clash = sorted(set(trial.params) & set(space.fixed))
            if clash:
                raise ValueError(
                    f"hydra.sweeper.custom_search_space suggests {clash}, which the command line "
                    "or hydra.sweeper.params fixes: drop one of them"
                )
            batch.append(trial)
        return batch

    def reseed(self, study: optuna.Study, number: int) -> None:
        """Seed the sampler with ``seed + trial number`` before a trial draws its parameters:
        processes sharing a study draw different values, and each draw is reproducible. (The
        grid sampler's seed orders the grid, which every process must see alike.)"""
        conf = self.sampler_conf
        if conf.get("seed") is not None and conf["_target_"] != GRID_SAMPLER:
            study.sampler = instantiate({**conf, "seed": conf["seed"] + number})

    def job_overrides(self, trial: Trial, space: SearchSpace, name: str, location: str) -> list:
        """The trial's Hydra overrides: fixed ones, sampled ones, and where its trial lives."""
        task = [f"{k}={v}" for k, v in space.fixed.items()]
        task += [override(k, v) for k, v in trial.params.items()]
        trial.set_user_attr(OVERRIDES, task)
        trial.set_user_attr(COMMAND, self.rerun_command(task))
        return [
            *task,
            override("optuna.storage", location),
            override("optuna.study_name", name),
            f"optuna.trial={trial.number}",
        ]

    def rerun_command(self, task: list[str]) -> str:
        """The command line that repeats a trial as a single run (``--config-dir`` included)."""
        words = ["python", sys.argv[0]]
        for source in self.config.hydra.runtime.config_sources:
            if source.provider == "command-line":
                words += ["--config-dir", source.path]
        return shlex.join([*words, *task, "hydra.mode=RUN"])

    def launch(self, batch: list[Trial], overrides: list[list[str]]) -> list[JobReturn]:
        """Launch the trials as jobs numbered by trial number (consecutive numbers together)."""
        returns: list[JobReturn] = []
        start = 0
        for end in range(1, len(batch) + 1):
            if end == len(batch) or batch[end].number != batch[end - 1].number + 1:
                returns += self.launcher.launch(
                    overrides[start:end], initial_job_idx=batch[start].number
                )
                start = end
        return returns

    def tell(self, study, storage, trial: Trial, ret: JobReturn) -> str | None:
        """Tell Optuna how the trial's job ended; the error text of a failed trial, else None."""
        if ret.hydra_cfg is not None:
            trial.set_user_attr(RUN_DIR, ret.hydra_cfg.hydra.runtime.output_dir)
        error = None
        if ret.status == JobStatus.FAILED:
            error = f"{type(ret._return_value).__name__}: {ret._return_value}"
        else:
            try:
                values = objective_values(ret.return_value, len(self.directions))
            except ValueError as bad:
                error = str(bad)
        if error is not None:
            trial.set_user_attr(ERROR, error[:1000])
            log.warning("trial %d failed: %s", trial.number, error)
            tell_quietly(study, trial, TrialState.FAIL)
            return error
        if PRUNED_AT in storage.get_trial(trial._trial_id).user_attrs:
            tell_quietly(study, trial, TrialState.PRUNED)
        else:
            tell_quietly(study, trial, TrialState.COMPLETE, values)
        return None


def load_extender(path: str):
    """``hydra.sweeper.custom_search_space``: the function ``fn(cfg, trial)`` it names."""
    try:
        return get_method(path)
    except Exception as error:
        raise ValueError(
            f"hydra.sweeper.custom_search_space={path!r}: cannot import it ({error}); name a "
            "function as module.function"
        ) from error


def suggest(trial: Trial, key: str, dist: BaseDistribution):
    """Sample one parameter through Optuna's public suggest API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def objective_values(value, n_objectives: int) -> list[float]:
    """A job's return value as a list of finite floats, one per direction."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        values = []
    if len(values) != n_objectives:
        raise ValueError(
            f"the job returned {value!r}, not {n_objectives} number(s): optimized_metric must "
            "name one metrics.json key per hydra.sweeper.direction"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"the job returned {values}: not finite (training diverged)")
    return values


def tell_quietly(study, trial: Trial, state: TrialState, values=None) -> None:
    """``study.tell``, ignoring the grid sampler's stop request (it stops ask/tell loops too)."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


def count(study) -> int:
    """Trials that use up the study's total: finished or running, void ones excluded."""
    return sum(1 for t in study.get_trials(deepcopy=False) if liveness.counts_toward_total(t))


def write_results(study, sweep_dir: Path) -> None:
    """hydra-optuna-sweeper's ``optimization_results.yaml``: best params, or the Pareto front."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    if len(study.directions) == 1:
        best = study.best_trial
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
    else:
        results = {
            "name": "optuna",
            "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials],
        }
    (sweep_dir / RESULTS_FILE).write_text(yaml.safe_dump(results, sort_keys=False))
