"""Hydra callbacks: the multirun report, written when a sweep ends; secrets kept off the disk.

Registered in ``conf/train.yaml`` under ``hydra.callbacks.report``. Hydra's basic sweeper runs
every job of a sweep, then raises for the first failed one and skips ``on_multirun_end``: the
report is then built as the process exits (the exit status stays non-zero). It can also be
rebuilt any time with ``scvi-sweep-report SWEEP_DIR``; a failed job's traceback goes to its
log for that.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweep.config.overrides import SecretInOverride, refuse_secrets
from sweep.config.schema import ConfigError, validate

log = logging.getLogger(__name__)


class MultirunReport(Callback):
    """Builds ``<out_root>/<sweep folder name>/report.md`` at the end of a multirun
    (``<out_root>/<study name>/`` for the Optuna sweeper) through
    ``sweep.report.entry.write_report``; where that folder holds another sweep's report, it takes
    the next free ``<name>-2``, ``-3``...

    ``out_root`` defaults to ``sweep.paths.reports_dir()`` (``multirun_reports/``); override it with
    ``hydra.callbacks.report.out_root=DIR``.
    """

    def __init__(self, out_root: str | None = None):
        self.out_root = out_root
        self._reported = False

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Make sure the report is written even when the sweep ends by raising.

        The report's modules (matplotlib, optuna) are imported now: at exit, an import that
        registers its own exit hook (optuna imports ``concurrent.futures.thread``) fails with
        "can't register atexit after shutdown".
        """
        import sweep.report.entry  # noqa: F401

        atexit.register(self._report_unless_done, config)

    def _report_unless_done(self, config: DictConfig) -> None:
        if not self._reported:
            self.on_multirun_end(config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        """Log a failed job's traceback into its own log (Hydra only prints it to the console)."""
        if job_return.status == JobStatus.FAILED:
            overrides = " ".join(job_return.overrides or [])
            log.error("job failed (%s)", overrides, exc_info=job_return._return_value)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        """Build the sweep's report; log, never raise, when that fails. A sweep that stopped
        before its first job (no sweep folder) has nothing to report."""
        self._reported = True
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            log.info("no multirun report: the sweep stopped before its first job")
            return
        try:
            from sweep.report.entry import write_report  # imported by on_multirun_start

            report = write_report(sweep_dir, out_root=self.out_root)
            log.info("multirun report: %s", report)
        except Exception:
            log.exception(
                "the multirun report failed; rebuild it with `scvi-sweep-report SWEEP_DIR`"
            )


class RefuseBadConfig(Callback):
    """Stops a run or sweep before Hydra writes anything (no run folder) when an override carries
    a secret (:mod:`sweep.config.overrides`) or the composed config has a value out of range
    (``sweep.config.schema.validate``): one line naming the key, no traceback. ``train.py`` checks
    its command line the same way before Hydra composes; this also covers values that only the
    composed config shows (interpolations, option files). Hydra turns a callback's exceptions into
    warnings, so it exits. In a multirun it checks the base config; ``train.py`` checks each job's
    own values."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        try:
            refuse_secrets([*config.hydra.overrides.task, *config.hydra.overrides.hydra])
            validate(config)
        except (SecretInOverride, ConfigError) as error:
            raise SystemExit(f"Error: {error}") from error
