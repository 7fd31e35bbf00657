"""Hydra callbacks: the multirun report, written when a sweep ends.

Registered in ``conf/train.yaml`` under ``hydra.callbacks.report``. Hydra skips
``on_multirun_end`` when a job of the sweep raised, so the report is also buildable afterwards
with ``python -m sweep.report SWEEP_DIR``; for that, a failed job's traceback goes to its log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweep.report import build_report, default_out

log = logging.getLogger(__name__)


class MultirunReport(Callback):
    """Builds ``<out_root>/<sweep folder name>/report.md`` at the end of a multirun.

    ``out_root`` defaults to ``multirun_reports/`` under the repository root; override it with
    ``hydra.callbacks.report.out_root=DIR``.
    """

    def __init__(self, out_root: str | None = None):
        self.out_root = out_root

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        """Log a failed job's traceback into its own log (Hydra only prints it to the console)."""
        if job_return.status == JobStatus.FAILED:
            overrides = " ".join(job_return.overrides or [])
            log.error("job failed (%s)", overrides, exc_info=job_return._return_value)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        """Build the sweep's report; log, never raise, when that fails."""
        try:
            sweep_dir = Path(config.hydra.sweep.dir)
            out = Path(self.out_root) / sweep_dir.name if self.out_root else default_out(sweep_dir)
            report = build_report(sweep_dir, out)
            log.info("multirun report: %s", report)
        except Exception:
            log.exception(
                "the multirun report failed; rebuild it with `python -m sweep.report SWEEP_DIR`"
            )
