"""hydra-submitit-launcher's local launcher, with a cap on the jobs that run at once.

submitit's local executor starts every job it is handed at the same moment (it has no
``array_parallelism``), so a 24-job sweep would start 24 training processes on one machine. The
basic sweeper's ``hydra.sweeper.max_batch_size`` limits that, but the sweeper raises for the first
failed job of a batch before it launches the next batch: one diverged job would cancel the rest of
the sweep. ``CappedLocalLauncher`` (``hydra/launcher=local``: conf/hydra/launcher/local.yaml)
runs the jobs in waves of ``max_parallel`` instead, always to the end, and returns every job's
result; the sweeper then fails the command for a failed job as usual, after all of them ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class CappedLocalLauncher(submitit_launcher.LocalLauncher):
    """submitit_local with ``max_parallel``: at most that many jobs at once (None: all)."""

    def __init__(self, max_parallel: int | None = None, **params: Any) -> None:
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(
                f"hydra.launcher.max_parallel={max_parallel}: give a number of jobs >= 1, "
                "or null to start every job at once"
            )
        super().__init__(**params)
        self.max_parallel = max_parallel

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Launch the jobs ``max_parallel`` at a time; each wave starts when the last one ended
        (failed jobs included), so every job runs whatever the others do."""
        wave = self.max_parallel or len(job_overrides)
        returns: list[JobReturn] = []
        for start in range(0, len(job_overrides), wave):
            returns += super().launch(job_overrides[start : start + wave], initial_job_idx + start)
        return returns
