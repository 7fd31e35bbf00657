"""The ``hydra/sweeper=optuna`` config: hydra-optuna-sweeper's keys, plus ``pruner`` and
``heartbeat_interval``; sampler and pruner options as groups ``hydra/sweeper/{sampler,pruner}``.

Imported by Hydra's plugin scan at every start-up, so it imports nothing heavy (no optuna).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

#: the plugin class Hydra instantiates (it must live in the hydra_plugins namespace package)
SWEEPER_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"

#: ``hydra/sweeper/sampler`` options: optuna.samplers classes; any other key of a sampler's
#: constructor can be added under ``hydra.sweeper.sampler`` (``motpe``: Optuna >= 4 folded
#: multi-objective TPE into TPESampler)
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "nsgaii": "NSGAIISampler",
    "nsgaiii": "NSGAIIISampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "bruteforce": "BruteForceSampler",
    "motpe": "TPESampler",
}

#: ``hydra/sweeper/pruner`` options with their main arguments
PRUNERS = {
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
    "none": {"_target_": "optuna.pruners.NopPruner"},
}


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper`` for ``hydra/sweeper=optuna`` (see README, "Optuna searches")."""

    _target_: str = SWEEPER_TARGET
    _recursive_: bool = False  # the sweeper builds sampler and pruner itself (grid needs params)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING  # {_target_: optuna.samplers.X, seed: ..., ...}
    pruner: Any = MISSING  # {_target_: optuna.pruners.X, ...} or null (no pruning)
    direction: Any = "minimize"  # or a list, one per value of optimized_metric
    storage: str | None = None  # null: outputs/optuna/<study_name>.journal under the launch dir
    study_name: str | None = None  # null: <task_name>-<hash of the search>, stable across reruns
    n_trials: int = 20  # the study's total: a rerun runs only what is missing
    n_jobs: int = 1  # trials handed to the launcher at once
    max_failure_rate: float = 0.0  # failed / finished trials of this sweep above this: stop
    search_space: Any = None  # hydra-optuna-sweeper < 1.2's key: rejected, use params
    params: Any = None  # key -> choice(...) | range(...) | interval(...) | tag(log, ...) | value
    custom_search_space: str | None = None  # "module.fn": fn(cfg, trial) suggests more params
    heartbeat_interval: int = 60  # s; a running trial silent for 3 intervals is failed


def register_configs() -> None:
    """Put the sweeper, its samplers and pruners into Hydra's ConfigStore."""
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="sweep")
    for name, cls in SAMPLERS.items():
        node = {"_target_": f"optuna.samplers.{cls}", "seed": None}
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="sweep")
    for name, node in PRUNERS.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="sweep")
