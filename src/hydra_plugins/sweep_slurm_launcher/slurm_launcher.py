"""hydra-submitit-launcher's SLURM launcher, for a sweep that sees every job to its end.

submitit learns how a job ended from its result files, or, for a job that wrote none, from
``sacct``. hydra-submitit-launcher's sweep process then goes wrong on two counts:

- a job that ends without a result (``scancel``, killed at its time limit or for memory, a
  node failure) raises out of ``launch``: the sweep stops with no result for the other jobs;
- on a cluster without accounting ``sacct`` fails at every poll ("Bypassing sacct error"): such
  a job stays UNKNOWN and the sweep waits for it forever.

:class:`SlurmLauncher` waits until each job has returned or SLURM has ended it, asking
``squeue`` where ``sacct`` fails (:class:`JobStates`), and returns a job that ended without a
result as a failed job (:class:`JobEndedWithoutResult`), its error also appended to the job's
log, where the multirun report reads failures. A job that SLURM requeues (submitit's
``max_num_timeout``) is pending or running again, so the sweep waits for it.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

if TYPE_CHECKING:  # submitit is imported when a sweep launches: plugin discovery stays fast
    import submitit

log = logging.getLogger(__name__)

#: SLURM job states after which a job never runs again (sacct may add words: "CANCELLED by 0").
#: PREEMPTED is not one: a preempted job may be requeued.
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "REVOKED",
    "TIMEOUT",
}
#: the state of a job squeue no longer lists: it ended more than SLURM's MinJobAge ago
FORGOTTEN = "FORGOTTEN"
#: seconds a job that SLURM ended may take to show its result files (submitit waits as long)
RESULT_GRACE_S = 15


class JobEndedWithoutResult(RuntimeError):
    """A SLURM job ended without returning: cancelled, killed, or failed outside its task."""


class JobStates:
    """The SLURM states of jobs ("123", "123_4"): sacct's, or squeue's where sacct fails (a
    cluster without accounting). Polled every 2 s at first, then at half the time since the
    jobs were submitted, at most every ``max_delay_s``: less than SLURM's MinJobAge (300 s by
    default), the time squeue still lists a job that ended."""

    def __init__(self, job_ids: Sequence[str], max_delay_s: float = 60):
        self.job_ids = set(job_ids)
        self.states: dict[str, str] = {}
        self.max_delay_s = max_delay_s
        self.submitted = time.monotonic()
        self.polled = -math.inf

    def ended(self, job_id: str) -> str | None:
        """The state SLURM ended ``job_id`` in, or None while it may run (again)."""
        now = time.monotonic()
        if now - self.polled >= min(self.max_delay_s, max(2, (now - self.submitted) / 2)):
            self.poll()
        state = self.states.get(job_id, "UNKNOWN")
        return state if state.split(" ")[0] in ENDED | {FORGOTTEN} else None

    def poll(self) -> None:
        self.polled = time.monotonic()
        base_ids = sorted({job_id.split("_")[0] for job_id in self.job_ids})
        sacct = ["sacct", "--parsable2", "--noheader", "--format=JobID,State"]
        done = subprocess.run(
            sacct + [f"--jobs={','.join(base_ids)}"], capture_output=True, text=True
        )
        if done.returncode == 0:
            self._read(done.stdout)
            return
        squeue = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T"]
        done = subprocess.run(
            squeue + [f"--jobs={','.join(base_ids)}"], capture_output=True, text=True
        )
        if done.returncode != 0 and "Invalid job id" not in done.stderr:  # "none listed" aside
            log.warning("squeue failed (%s); job states unchanged", done.stderr.strip())
            return
        listed = self._read(done.stdout if done.returncode == 0 else "")
        for job_id in self.job_ids - listed:
            self.states[job_id] = FORGOTTEN

    def _read(self, table: str) -> set[str]:
        """Take the states of our jobs from ``JobID|State`` lines; the job ids listed."""
        listed = set()
        for line in table.splitlines():
            job_id, _, state = line.partition("|")
            if job_id in self.job_ids:
                self.states[job_id] = state.strip()
                listed.add(job_id)
        return listed


def returned(job: submitit.Job) -> bool:
    """Whether every task of ``job`` has written its result file."""
    return all(job.task(k).paths.result_pickle.exists() for k in range(job.num_tasks))


def wait_for_the_end(jobs: Sequence[submitit.Job]) -> dict[str, str]:
    """Wait until every job has returned or SLURM has ended it (a requeued job is pending or
    running again: waited for); the SLURM states of the jobs that ended without returning."""
    states = JobStates([job.job_id for job in jobs])
    ended = {}
    for job in jobs:
        state = None
        while not returned(job) and not (state := states.ended(job.job_id)):
            time.sleep(1)
        deadline = time.monotonic() + RESULT_GRACE_S  # files may lag SLURM (network file system)
        while not returned(job) and time.monotonic() < deadline:
            time.sleep(1)
        if not returned(job):
            ended[job.job_id] = state
    return ended


def _error_line(failed: Exception) -> str:
    """The exception line of the traceback a submitit FailedJobError quotes between rules."""
    parts = str(failed).split("-" * 22)
    lines = [line for line in parts[min(1, len(parts) - 1)].splitlines() if line.strip()]
    return next((line for line in reversed(lines) if not line[0].isspace()), "")


def _raised(error: Exception, cause: Exception | None = None) -> Exception:
    """``error`` raised (from ``cause``) and caught: with the traceback a log shows."""
    try:
        raise error from cause
    except type(error) as caught:
        return caught


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """submitit_slurm (the same keys) whose sweep sees every job to its end: it waits for each
    job to return or end (:func:`wait_for_the_end`); a job that ended without a result, or
    raised outside Hydra's job, is a failed job instead of an error that stops the sweep."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """hydra-submitit-launcher's ``launch``, with :func:`wait_for_the_end` and
        :meth:`_job_return` in place of waiting on each job's results."""
        import submitit

        assert self.config is not None
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in generic else f"slurm_{key}": value
                for key, value in self.params.items()
                if key not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        job_params = []
        for number, overrides in zip(numbers, job_overrides, strict=True):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            state = Singleton.get_state()
            job_params.append(
                (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", state)
            )
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        ended = wait_for_the_end(jobs)
        return [
            self._job_return(job, numbers[i], job_overrides[i], ended.get(job.job_id))
            for i, job in enumerate(jobs)
        ]

    def _job_return(
        self, job: submitit.Job, number: int, overrides: Sequence[str], ended: str | None
    ) -> JobReturn:
        """What job ``number`` returned; if SLURM ``ended`` it without a result or it raised
        outside Hydra's job, a failed JobReturn whose error is also appended to the job's log
        (the multirun report reads it there)."""
        from submitit.core.utils import FailedJobError

        if ended is None:
            try:
                return job.results()[0]
            except FailedJobError as cause:
                message = f"SLURM job {job.job_id} failed outside its task: {_error_line(cause)}"
                error = _raised(JobEndedWithoutResult(message), cause)
        else:
            error = _raised(
                JobEndedWithoutResult(
                    f"SLURM job {job.job_id} ended without a result (state {ended}): cancelled, "
                    f"killed (time limit, memory) or its node failed; see {job.paths.stderr}"
                )
            )
        log.error("job #%d: %s", number, error)
        job_dir = self._job_dir(number, overrides)
        job_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(job_dir / f"{self.config.hydra.job.name}.log", "a") as job_log:
            job_log.write(f"[{stamp}][{__name__}][ERROR] - job failed ({' '.join(overrides)})\n")
            job_log.write("".join(traceback.format_exception(error, chain=False)))
        return JobReturn(
            overrides=list(overrides),
            working_dir=str(job_dir),
            task_name=self.config.hydra.job.name,
            status=JobStatus.FAILED,
            _return_value=error,
        )

    def _job_dir(self, number: int, overrides: Sequence[str]) -> Path:
        """The run folder of job ``number``: its hydra.sweep.dir / hydra.sweep.subdir."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
