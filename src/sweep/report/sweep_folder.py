"""A Hydra sweep folder read into a results table: one row per job, with its status, settings
and metrics, and each job's per-epoch history, step-level history and scorings.

It reads only the job folders (``<job number>/``, through :mod:`sweep.run_folder`), so it works
after a sweep that raised and on a sweep still running. A job is *complete* (metrics.json
written), *failed* (its log holds a traceback) or *running* (neither: still training, or killed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweep import metric_names, run_folder
from sweep.config.overrides import parse_override
from sweep.metric_names import HEALTH

COMPLETE, FAILED, RUNNING = "complete", "failed", "running"
#: value of an override key in a job that does not set it
DEFAULT = "(default)"
#: metrics.json's words that results.csv keeps beside the numbers (columns only when a job has one)
TEXT_METRICS = (metric_names.DATA_SUBSET,)
TRACEBACK = "Traceback (most recent call last):"


@dataclass
class Job:
    """What one job folder holds."""

    number: int
    status: str
    error: str  # the exception line of a failed job's traceback, else ""
    overrides: list[str]  # as on the command line, e.g. "model=hidden_512"
    choices: dict[str, str]  # config group -> option
    metrics: dict  # metrics.json ({} unless complete)
    history: pd.DataFrame | None  # history.csv, one row per epoch
    steps: pd.DataFrame | None  # steps.csv, one row per step-level validation
    scorings: pd.DataFrame | None  # integration.csv, one row per scoring


@dataclass
class Sweep:
    """A sweep folder read into a results table (one row per job) and per-job histories."""

    folder: Path
    results: pd.DataFrame
    factors: list[str]  # override keys whose value differs between jobs, in override order
    histories: dict[int, pd.DataFrame]  # job number -> history.csv of the jobs that have one
    steps: dict[int, pd.DataFrame]  # job number -> steps.csv of the jobs that have one
    scorings: dict[int, pd.DataFrame]  # job number -> integration.csv of the jobs that have one
    health: dict[int, dict[str, str]]  # job number -> metrics.json's run health (complete jobs)
    overrides: dict[int, list[str]]  # job number -> its overrides, as on the command line
    #: complete jobs whose metrics.json records no health (written before the checks existed)
    unchecked: list[int] = field(default_factory=list)

    @property
    def complete(self) -> pd.DataFrame:
        """The rows of complete jobs."""
        return self.results[self.results["status"] == COMPLETE]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (named by job number, as ``hydra.sweep.subdir``), in order."""
    folders = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(folders, key=lambda p: int(p.name))


def exception_line(log_text: str) -> str | None:
    """The exception line (``ValueError: ...``) of the last traceback in a log, or None."""
    _, found, tail = log_text.rpartition(TRACEBACK)
    if not found:
        return None
    lines = [line for line in tail.splitlines() if line.strip() and not line[0].isspace()]
    return lines[0] if lines else "unknown error (traceback cut off)"


def failure(job_dir: Path) -> str | None:
    """The exception line of the job's log (:func:`exception_line`); None without one."""
    log_file = job_dir / run_folder.LOG_FILE
    return exception_line(log_file.read_text(errors="replace")) if log_file.is_file() else None


def read_job(job_dir: Path) -> Job:
    """Read one job folder."""
    metrics = run_folder.read_metrics(job_dir)
    error = None if metrics is not None else failure(job_dir)
    status = COMPLETE if metrics is not None else FAILED if error else RUNNING
    metrics = metrics or {}
    if metric_names.CHOICES in metrics:
        choices = metrics[metric_names.CHOICES]
    else:  # a job that did not finish: Hydra's record
        choices = run_folder.read_hydra_choices(job_dir)
    return Job(
        number=int(job_dir.name),
        status=status,
        error=error or "",
        overrides=run_folder.read_overrides(job_dir) or [],
        choices=dict(choices),
        metrics=metrics,
        history=run_folder.read_table(job_dir, run_folder.HISTORY_FILE),
        steps=run_folder.read_table(job_dir, run_folder.STEPS_FILE),
        scorings=run_folder.read_table(job_dir, run_folder.INTEGRATION_FILE),
    )


def override_values(job: Job) -> dict[str, str]:
    """The job's overrides as key -> value."""
    return dict(parse_override(o) for o in job.overrides)


def ordered_union(groups) -> list[str]:
    """The keys of all ``groups`` (iterables), each once, in order of first appearance."""
    return list(dict.fromkeys(key for group in groups for key in group))


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numeric entries of metrics.json (booleans, strings and lists left out)."""
    return {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def override_keys(jobs: list[Job]) -> list[str]:
    """Every key some job overrides, in order of first appearance."""
    return ordered_union(override_values(job) for job in jobs)


def job_row(job: Job, keys: list[str]) -> dict:
    """The job's row of results.csv; ``keys`` are the override keys of the whole sweep.

    A key the job does not override takes its group choice, or DEFAULT for a plain config key.
    """
    values = override_values(job)
    return {
        "job": job.number,
        "status": job.status,
        "overrides": " ".join(job.overrides),
        "error": job.error,
        **job.choices,
        **{k: values.get(k, job.choices.get(k, DEFAULT)) for k in keys},
        **numeric_metrics(job.metrics),
        **{k: job.metrics[k] for k in TEXT_METRICS if k in job.metrics},
    }


def results_table(jobs: list[Job]) -> pd.DataFrame:
    """One row per job: job, status, overrides, error, group choices, override values, metrics
    (numbers, then :data:`TEXT_METRICS`)."""
    keys = override_keys(jobs)
    settings = ordered_union([*(job.choices for job in jobs), keys])
    metrics = ordered_union(numeric_metrics(job.metrics) for job in jobs)
    texts = [k for k in TEXT_METRICS if any(k in job.metrics for job in jobs)]
    columns = ["job", "status", "overrides", "error", *settings, *metrics, *texts]
    return pd.DataFrame([job_row(job, keys) for job in jobs], columns=columns)


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read every job folder of a sweep."""
    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"sweep folder {folder} does not exist: pass a Hydra sweep dir")
    jobs = [read_job(d) for d in job_dirs(folder)]
    results = results_table(jobs)
    return Sweep(
        folder=folder,
        results=results,
        factors=[k for k in override_keys(jobs) if results[k].nunique(dropna=False) > 1],
        histories={job.number: job.history for job in jobs if job.history is not None},
        steps={job.number: job.steps for job in jobs if job.steps is not None},
        scorings={job.number: job.scorings for job in jobs if job.scorings is not None},
        health={job.number: job.metrics.get(HEALTH, {}) for job in jobs if job.status == COMPLETE},
        overrides={job.number: job.overrides for job in jobs},
        unchecked=[j.number for j in jobs if j.status == COMPLETE and HEALTH not in j.metrics],
    )
