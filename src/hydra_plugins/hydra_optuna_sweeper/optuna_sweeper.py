"""The ``hydra/sweeper=optuna`` plugin: Hydra loads sweepers only from ``hydra_plugins``; the
logic is ``sweep.study.sweeper`` (imported when a sweep starts, not at every Hydra start-up)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper

from sweep.study.config import register_configs

register_configs()


class OptunaSweeper(Sweeper):
    """Hydra's view of :class:`sweep.study.sweeper.StudySweeper` (same keyword arguments)."""

    def __init__(self, **conf: Any):
        from sweep.study.sweeper import StudySweeper

        self.impl = StudySweeper(**conf)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = self.impl.launcher

    def sweep(self, arguments: list[str]) -> Any:
        return self.impl.sweep(arguments)
