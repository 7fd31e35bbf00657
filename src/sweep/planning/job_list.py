"""The jobs a training command line would launch, expanded as Hydra expands them, none started.

The command line is composed the way ``python train.py`` composes it (Hydra's own run mode:
``-m``, or ``hydra.mode`` set by an experiment), without callbacks, run or sweep folders. Then:

- a single run is one job with the command line's overrides;
- a multirun of Hydra's basic sweeper is the product of ``hydra.sweeper.params`` and the command
  line's sweeps, by the basic sweeper's own ``split_arguments``, so the list equals what ``-m``
  would launch, in its order;
- an Optuna search (``hydra/sweeper=optuna``) is ``n_trials`` trials drawn from its search space
  (sweep.study.search_space): the space, the epochs range (``trainer.max_epochs`` may be
  searched), the config timed (the largest value of each numeric parameter) and the configs
  that span the searched ``data``/``dataset`` values, for the range of cells per epoch.

Every job's config is composed with :func:`sweep.config.schema.compose_train` and validated.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from sweep.config.schema import compose_train, register_schema, validate
from sweep.paths import CONF_DIR

#: the config keys of the plan itself: left out of the overrides a plan shows
PLAN_KEYS = ("dry_run", "dry_run_cells_per_s", "dry_run_calibration_steps")
#: search parameters that decide which cells train (their values span cells per epoch)
DATA_KEYS = ("data", "dataset")
#: the most configs composed to span the searched data values
MAX_DATA_CORNERS = 16


class PlanError(ValueError):
    """A command line the dry run cannot plan; the message says what to change."""


@dataclass
class PlannedJob:
    """One job: ``label`` (``job 3``, ``trial 0``), its ``overrides`` as it would get them (the
    plan's own keys left out) and its composed, validated ``cfg``."""

    label: str
    overrides: list[str]
    cfg: DictConfig


@dataclass
class SearchPlan:
    """An Optuna search: ``n_trials`` (the study's total; capped at the grid's size for the grid
    sampler), the study's name, the sampler and pruner (class names), the searched parameters
    (name -> Hydra syntax) and fixed overrides, the range of ``epochs`` (low, high), the overrides
    and config of the trial that is timed (``largest``), and one config per combination of the
    searched data values (``data_configs``: [the base config] when none is searched)."""

    n_trials: int
    study_name: str | None
    sampler: str
    pruner: str
    params: dict[str, str]
    fixed: list[str]
    epochs: tuple[int, int]
    largest_overrides: list[str]
    largest: DictConfig
    data_configs: list[DictConfig] = field(default_factory=list)
    custom_search_space: str | None = None


@dataclass
class JobList:
    """The jobs of a command line: ``kind`` (``single run``, ``grid``, ``Optuna search``), the
    jobs in launch order and, for a search, its :class:`SearchPlan`."""

    kind: str
    jobs: list[PlannedJob]
    search: SearchPlan | None = None


def shown(overrides: list[str]) -> list[str]:
    """``overrides`` without the plan's own keys (:data:`PLAN_KEYS`)."""
    from sweep.config.overrides import parse_override

    return [o for o in overrides if parse_override(o)[0] not in PLAN_KEYS]


def job_config(overrides: list[str]) -> DictConfig:
    """A job's config, as its Hydra job would compose it.

    Parameters
    ----------
    overrides
        The job's overrides (task overrides: no ``hydra.*``).

    Returns
    -------
    ``conf/train.yaml`` composed with them (:func:`~sweep.config.schema.compose_train`) and
    validated (raising :class:`~sweep.config.schema.ConfigError`).
    """
    cfg = compose_train(overrides)
    validate(cfg)
    return cfg


def expand(overrides: list[str], multirun: bool) -> JobList:
    """The jobs of ``python train.py [-m] *overrides``, as Hydra would launch them.

    Parameters
    ----------
    overrides
        The command line's overrides (``group=option``, ``key=value``, sweeps).
    multirun
        Whether ``-m``/``--multirun`` was given (an experiment may also set ``hydra.mode``).

    Returns
    -------
    The job list; nothing is written or started.
    """
    sweep_cfg, parser, is_multirun = sweep_config(overrides, multirun)
    task = list(sweep_cfg.hydra.overrides.task)
    sweeps = [o for o in parser.parse_overrides(task) if o.is_sweep_override()]
    refuse_swept_plan_keys(sweeps)
    if not is_multirun:
        return JobList("single run", [PlannedJob("job 0", shown(task), job_config(task))])
    target = str(sweep_cfg.hydra.sweeper.get("_target_", ""))
    if target.endswith("BasicSweeper"):
        return grid_jobs(sweep_cfg, task, parser)
    if target.endswith("OptunaSweeper"):
        return search_jobs(sweep_cfg, task)
    raise PlanError(f"dry_run plans the basic and Optuna sweepers, not hydra.sweeper {target}")


def sweep_config(overrides: list[str], multirun: bool) -> tuple[DictConfig, object, bool]:
    """The command line composed as Hydra composes it before launching, nothing started.

    Parameters
    ----------
    overrides
        The command line's overrides.
    multirun
        Whether ``-m`` was given.

    Returns
    -------
    The composed config (``hydra`` node included: ``hydra.overrides.task``, the sweeper), an
    override parser that knows the config groups (for ``glob(...)``), and whether Hydra would
    run a multirun (``-m``, or ``hydra.mode=MULTIRUN`` in a config such as an experiment).
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    register_schema()
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2(
            task_name="train", config_search_path=create_config_search_path(str(CONF_DIR))
        )
        mode = hydra.get_mode(config_name="train", overrides=overrides)
        if multirun:
            mode = RunMode.MULTIRUN
        elif mode is None:
            mode = RunMode.RUN
        cfg = hydra.compose_config(
            "train",
            [*overrides, f"hydra.mode={mode.name}"],
            run_mode=mode,
            with_log_configuration=False,
        )
        parser = OverridesParser.create(config_loader=hydra.config_loader)
    except Exception as error:  # Hydra's composition errors: one line, as Hydra words them
        raise PlanError(" ".join(str(error).split())) from error
    finally:
        GlobalHydra.instance().clear()
    return cfg, parser, mode == RunMode.MULTIRUN


def refuse_swept_plan_keys(sweeps) -> None:
    """A sweep over the plan's own keys (``dry_run=true,false``) has no plan: refuse it."""
    for override in sweeps:
        if override.get_key_element() in PLAN_KEYS:
            raise PlanError(
                f"{override.get_key_element()} cannot be swept: give one value for the whole plan"
            )


def grid_jobs(sweep_cfg: DictConfig, task: list[str], parser) -> JobList:
    """The basic sweeper's jobs, in its order.

    Parameters
    ----------
    sweep_cfg
        The composed sweep config (:func:`sweep_config`).
    task
        The command line's task overrides.
    parser
        Hydra's override parser.

    Returns
    -------
    ``hydra.sweeper.params`` then ``task``, expanded by ``BasicSweeper.split_arguments`` (one
    batch: the batch size does not change the list), each job composed.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{k}={v}" for k, v in (sweep_cfg.hydra.sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides([*params, *task]), None)
    jobs = [
        PlannedJob(f"job {n}", shown(overrides), job_config(overrides))
        for n, overrides in enumerate(itertools.chain.from_iterable(batches))
    ]
    return JobList("grid", jobs)


def search_jobs(sweep_cfg: DictConfig, task: list[str]) -> JobList:
    """An Optuna search's trials.

    Parameters
    ----------
    sweep_cfg
        The composed sweep config (``hydra/sweeper=optuna``).
    task
        The command line's task overrides (fixed values, or sweeps that join the space).

    Returns
    -------
    ``n_trials`` jobs (all alike before they are drawn, each with the timed config) and the
    :class:`SearchPlan`.
    """
    from sweep.study.search_space import grid, override, parse

    sweeper = sweep_cfg.hydra.sweeper
    params = OmegaConf.to_container(sweeper.params) if sweeper.get("params") else None
    try:
        space = parse(params, task)
    except ValueError as error:
        raise PlanError(str(error)) from error
    fixed = [f"{k}={v}" for k, v in space.fixed.items()]
    sampler = str(sweeper.sampler.get("_target_", "")).rpartition(".")[2]
    n_trials = int(sweeper.n_trials)
    if sampler == "GridSampler":
        n_trials = min(n_trials, math.prod(len(v) for v in grid(space).values()))
    largest = [override(k, extreme(d)) for k, d in space.distributions.items()]
    pruner = sweeper.get("pruner")
    search = SearchPlan(
        n_trials=n_trials,
        study_name=sweeper.get("study_name"),
        sampler=sampler,
        pruner=str(pruner.get("_target_", "")).rpartition(".")[2] if pruner else "none",
        params={k: str(v) for k, v in (params or {}).items() if k in space.distributions}
        | {k: "(command line)" for k in space.distributions if k not in (params or {})},
        fixed=shown(fixed),
        epochs=epochs_range(space, job_config(fixed)),
        largest_overrides=shown(largest),
        largest=job_config([*fixed, *largest]),
        data_configs=data_configs(space, fixed),
        custom_search_space=sweeper.get("custom_search_space"),
    )
    label = "trial {}".format
    jobs = [PlannedJob(label(n), search.fixed, search.largest) for n in range(n_trials)]
    return JobList("Optuna search", jobs, search)


def extreme(distribution):
    """The value of a searched parameter that is timed: the largest of a numeric one (bigger
    layers, more latent dimensions, more epochs are slower), the first choice of the others."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        choices = list(distribution.choices)
        numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices)
        return max(choices) if numeric else choices[0]
    return distribution.high


def epochs_range(space, base: DictConfig) -> tuple[int, int]:
    """(fewest, most) epochs of a trial: ``trainer.max_epochs``'s searched values, else the
    base config's."""
    from optuna.distributions import CategoricalDistribution

    dist = space.distributions.get("trainer.max_epochs")
    if dist is None:
        return (int(base.trainer.max_epochs),) * 2
    if isinstance(dist, CategoricalDistribution):
        return int(min(dist.choices)), int(max(dist.choices))
    return int(dist.low), int(dist.high)


def data_configs(space, fixed: list[str]) -> list[DictConfig]:
    """The configs that span the searched values deciding which cells train.

    Parameters
    ----------
    space
        The search space (sweep.study.search_space).
    fixed
        The search's fixed overrides.

    Returns
    -------
    One config per combination of the ``data``/``dataset`` values searched (every choice, or an
    interval's ends); [the base config] when none is.
    """
    from optuna.distributions import CategoricalDistribution

    from sweep.study.search_space import override

    values = {
        key: list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]
        for key, d in space.distributions.items()
        if key.split(".")[0] in DATA_KEYS
    }
    combos = list(itertools.product(*values.values()))
    if len(combos) > MAX_DATA_CORNERS:
        raise PlanError(
            f"the search's data parameters ({', '.join(values)}) make {len(combos)} combinations; "
            f"dry_run spans at most {MAX_DATA_CORNERS}: search fewer data values"
        )
    return [
        job_config([*fixed, *(override(k, v) for k, v in zip(values, combo, strict=True))])
        for combo in combos
    ]
