"""Sweeps on a real SLURM (tests/services.sh: one node ``debug``, 2 CPUs, no GPU, no accounting)
through our launchers, hydra/launcher=slurm_gpu and slurm_ddp: a 2-job array, a DDP job over 2
tasks, a job requeued at its time limit that resumes from its checkpoint, a job cancelled while
the sweep runs, and Optuna trials as SLURM jobs reporting their epochs to PostgreSQL.

Every job asks for what the node has (no GPU, 1 CPU per task). The sweep runs with
OMP_NUM_THREADS=1 (its jobs inherit it): torch's second thread only spins on a shared 2-core
machine, and makes an epoch's time vary several-fold with the load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from sweep.paths import CONF_DIR, REPO_ROOT
from sweep.study.storage import open_storage

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: what one job asks of the node: no GPU, 1 CPU per task, a little memory
CPU_JOB = [
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=3",
]
#: longest a sweep may take here (the requeue test waits for a time limit and a restart)
SWEEP_LIMIT_S = 900


def sweep_command(store: Path, tmp_path: Path, partition: str, *overrides: str) -> list[str]:
    """A multirun on the test store through slurm_gpu (overrides may pick slurm_ddp)."""
    return [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "dataset=prepared",
        f"dataset.path={store}",
        "evaluation=none",
        "save_model=false",
        "trainer.enable_progress_bar=false",
        "hydra/launcher=slurm_gpu",
        f"hydra.launcher.partition={partition}",
        *CPU_JOB,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.callbacks.report.out_root={tmp_path / 'reports'}",
        *overrides,
    ]


class Sweep:
    """A sweep process started in ``tmp_path``, its console output in ``tmp_path/sweep.log``."""

    def __init__(self, command: list[str], tmp_path: Path):
        self.log = tmp_path / "sweep.log"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()

    def finish(self) -> tuple[int, str]:
        """Wait for the sweep: its exit status and its console output."""
        return self.process.wait(timeout=SWEEP_LIMIT_S), self.output()


def job_ids(tmp_path: Path) -> list[str]:
    """The SLURM job ids of the sweep's jobs ("123", or "123_0" in an array), from the folders
    submitit made for their pickles (an array's own folder holds only its sbatch script)."""
    folder = tmp_path / "sweep" / ".submitit"
    found = folder.glob("*/*_submitted.pkl") if folder.is_dir() else []
    return sorted(pickle.parent.name for pickle in found)


def slurm_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` of a job as key -> value (JobState, Restarts, ...)."""
    text = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True
    ).stdout
    return dict(field.split("=", 1) for field in text.split() if "=" in field)


def wait_for(what: str, condition, sweep: Sweep | None = None, limit_s=600):
    """Poll ``condition()`` until it holds (and return what it returned); fail, naming ``what``
    and quoting the sweep's output, if the ``sweep`` ends first."""
    deadline = time.monotonic() + limit_s
    while not (found := condition()):
        over = sweep is not None and sweep.process.poll() is not None
        if over or time.monotonic() > deadline:
            output = sweep.output()[-3000:] if sweep else ""
            pytest.fail(f"{what}: not seen (the sweep ended: {over})\n{output}")
        time.sleep(1)
    return found


def ended(job_id: str) -> str | None:
    """The job's state once SLURM has ended it (the sweep may end first), else None."""
    state = slurm_job(job_id).get("JobState")
    return None if state in ("PENDING", "RUNNING", "COMPLETING") else state


@pytest.fixture
def start_sweep(tmp_path):
    """Starts a sweep in ``tmp_path``; when the test ends, kills it if it still runs and
    cancels its jobs still in SLURM."""
    started = []

    def start(command: list[str]) -> Sweep:
        started.append(Sweep(command, tmp_path))
        return started[-1]

    yield start
    for sweep in started:
        if sweep.process.poll() is None:
            sweep.process.kill()
            sweep.process.wait()
    for job_id in job_ids(tmp_path):
        if not ended(job_id):
            subprocess.run(["scancel", job_id], check=False)


def each_epoch_once(run_dir: Path, epochs: int) -> bool:
    """Whether history.csv holds one row per epoch, epochs 1 to ``epochs``."""
    return pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == list(range(1, epochs + 1))


def report(tmp_path: Path) -> tuple[pd.DataFrame, str]:
    folder = tmp_path / "reports" / "sweep"
    return pd.read_csv(folder / "results.csv"), (folder / "report.md").read_text()


def test_a_two_job_array_through_slurm_gpu_without_gpus_completes_both_and_the_report(
    store, tmp_path, slurm_cluster, start_sweep
):
    """slurm_gpu with gpus_per_node=null: one array of 2 jobs asking for no GPU; both run
    folders and the multirun report complete."""
    command = sweep_command(
        store,
        tmp_path,
        slurm_cluster,
        "seed=0,1",
        "trainer.max_epochs=2",
        "logger=none",
    )
    status, log = start_sweep(command).finish()
    assert status == 0, log[-3000:]
    jobs = job_ids(tmp_path)
    assert len(jobs) == 2 and jobs[0].endswith("_0") and jobs[1].endswith("_1")  # one array
    array = jobs[0].split("_")[0]
    script = (tmp_path / "sweep" / ".submitit" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "--gpus" not in script and "--gres" not in script
    assert {wait_for("the jobs' end", lambda j=j: ended(j)) for j in jobs} == {"COMPLETED"}
    for number in ("0", "1"):
        run_dir = tmp_path / "sweep" / number
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and metrics["cells_seen"] == 2 * metrics["cells_train"]
        assert each_epoch_once(run_dir, 2)
    table, text = report(tmp_path)
    assert table.set_index("job")["status"].to_dict() == {0: "complete", 1: "complete"}
    assert sorted(table["seed"]) == [0, 1]
    assert "Jobs: 2 complete, 0 failed" in text


def test_one_ddp_job_over_two_slurm_tasks_sees_the_training_set_once_per_epoch_rank_0_writes(
    store, tmp_path, slurm_cluster, start_sweep
):
    """slurm_ddp: SLURM starts 2 tasks (gloo on the CPU); each epoch the 2 ranks together see
    every training cell once; only rank 0 writes (one W&B run, one history, one checkpoint)."""
    command = sweep_command(
        store,
        tmp_path,
        slurm_cluster,
        "hydra/launcher=slurm_ddp",
        "hydra.launcher.mem_gb=6",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "loader.batch_size=256",  # enough batches for each rank of the small store
    )
    status, log = start_sweep(command).finish()
    assert status == 0, log[-3000:]
    (job,) = job_ids(tmp_path)
    assert slurm_job(job)["NumTasks"] == "2"
    task_1 = (tmp_path / "sweep" / ".submitit" / job / f"{job}_1_log.out").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in task_1  # the second task is rank 1 of the DDP job
    run_dir = tmp_path / "sweep" / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    assert each_epoch_once(run_dir, 2)
    assert (history["train_cells_epoch"] == metrics["cells_train"]).all()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "last.json"]
    assert "Jobs: 1 complete, 0 failed" in report(tmp_path)[1]


#: the requeue test's job: longer than the time before SLURM's signal (at most 60 s after the
#: job starts) on a fast node: 400 epochs took 41 s of training on an idle node (2026-12-01), so
#: the job ended before its signal; 1,000 take ~100 s there and ~6 minutes on the slowest node
#: seen (2.8 epochs/s)
REQUEUED_EPOCHS = 1000


def test_a_job_at_its_time_limit_is_requeued_resumes_after_its_checkpoint_and_completes(
    store, tmp_path, slurm_cluster, start_sweep
):
    """The defaults (loader workers, W&B offline, the launcher's requeues, no ``resume=true``:
    a requeued job resumes its own folder by itself), a 3-minute limit with the signal 120 s
    before it: SLURM signals every process of the job 30-60 s after it starts (up to 30 s
    early), after its first epoch checkpoints. The training
    process alone checkpoints the submission and requeues the job, which starts again in its run
    folder, continues after its last checkpoint and its W&B run, and ends with each epoch once;
    the sweep waits for it and reports it complete.

    Once SLURM shows the job requeued, the test lets it start at once (SLURM would wait 2 min)
    and raises its limit, so that the rest of the training ends whatever the node's speed."""
    command = sweep_command(
        store,
        tmp_path,
        slurm_cluster,
        "hydra.launcher.cpus_per_task=2",  # the default loader: 1 worker beside the trainer
        "hydra.launcher.timeout_min=3",
        "hydra.launcher.signal_delay_s=120",
        f"trainer.max_epochs={REQUEUED_EPOCHS}",
    )
    sweep = start_sweep(command)
    (job,) = wait_for("the submission", lambda: job_ids(tmp_path), sweep)

    def requeued() -> bool:
        state = slurm_job(job)
        return state.get("Restarts") == "1" and state.get("JobState") == "PENDING"

    wait_for("the requeue", requeued, sweep)
    requeued_at = time.strftime("%H:%M:%S")
    subprocess.run(
        ["scontrol", "update", f"JobId={job}", "StartTime=now", "TimeLimit=20"], check=True
    )
    status, log = sweep.finish()
    assert status == 0, log[-3000:]
    assert wait_for("the job's end", lambda: ended(job)) == "COMPLETED"
    assert slurm_job(job)["Restarts"] == "1"

    logs = tmp_path / "sweep" / ".submitit" / job
    caught = (logs / f"{job}_0_log.err").read_text().count("Caught signal SIGUSR2")
    assert caught == 1  # submitit's handler ran in the trainer alone, not in its workers
    job_log = (logs / f"{job}_0_log.out").read_text()
    launcher = yaml.safe_load((CONF_DIR / "hydra" / "launcher" / "slurm_gpu.yaml").read_text())
    left = launcher["max_num_timeout"] - 1  # the launcher's default requeues, one spent
    assert left >= 1 and f"Requeued job {job} ({left} remaining timeouts)" in job_log
    run_dir = tmp_path / "sweep" / "0"
    train_log = (run_dir / "train.log").read_text()
    resumed = re.search(
        r"\]\[sweep.training.resume\]\[INFO\] - resuming \S+ after epoch (\d+)", train_log
    )
    assert resumed, train_log[-3000:]  # from the checkpoint in its own folder
    assert 0 < int(resumed.group(1)) < REQUEUED_EPOCHS
    assert each_epoch_once(run_dir, REQUEUED_EPOCHS)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == REQUEUED_EPOCHS
    assert metrics["cells_seen"] == REQUEUED_EPOCHS * metrics["cells_train"]
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # one W&B run
    table, text = report(tmp_path)
    assert table["status"].tolist() == ["complete"] and "Jobs: 1 complete, 0 failed" in text

    print(timeline(job_log, train_log, requeued_at, int(resumed.group(1))))


def timeline(job_log: str, train_log: str, requeued_at: str, resumed_after: int) -> str:
    """When the job was signalled, requeued, released and resumed, and after which epoch."""

    def at(pattern: str, text: str) -> str:
        found = re.search(r"\[[\d-]+ ([\d:]+),\d+\]\[[\w.]+\]\[\w+\] - " + pattern, text)
        return found.group(1) if found else "?"

    return (
        f"requeue timeline: started {at('training', train_log)}, "
        f"signalled {at('Caught signal SIGUSR2', job_log)}, "
        f"requeued {at('Requeued job', job_log)} (seen pending by the test {requeued_at}), "
        f"resumed {at('resuming', train_log)} after epoch {resumed_after}"
    )


CANCELLED_EPOCHS = 100


def test_a_job_cancelled_while_the_sweep_runs_is_reported_failed_and_the_other_completes(
    store, tmp_path, slurm_cluster, start_sweep
):
    """``scancel`` of job 0 once it trains: it ends without a result (SLURM: CANCELLED); the
    sweep still waits for job 1, reports 1 complete and 1 failed with the state, exits non-zero."""
    # 100 epochs: job 0 still trains when the test, polling each second, sees its first
    # checkpoint, on an idle node too (8-10 epochs/s there; 30 epochs left ~2 s)
    command = sweep_command(
        store,
        tmp_path,
        slurm_cluster,
        "seed=0,1",
        f"trainer.max_epochs={CANCELLED_EPOCHS}",
        "logger=none",
    )
    sweep = start_sweep(command)
    checkpoint = tmp_path / "sweep" / "0" / "checkpoints" / "last.json"
    wait_for("job 0's first checkpoint", checkpoint.exists, sweep)
    cancelled = next(j for j in job_ids(tmp_path) if j.endswith("_0"))
    subprocess.run(["scancel", cancelled], check=True)
    status, log = sweep.finish()
    assert status != 0
    assert ended(cancelled) == "CANCELLED"
    assert not (tmp_path / "sweep" / "0" / "metrics.json").exists()
    metrics = json.loads((tmp_path / "sweep" / "1" / "metrics.json").read_text())
    assert metrics["epochs"] == CANCELLED_EPOCHS
    table, text = report(tmp_path)
    assert table.set_index("job")["status"].to_dict() == {0: "failed", 1: "complete"}
    assert "1 complete, 1 failed" in text
    error = table.set_index("job").loc[0, "error"]
    assert f"SLURM job {cancelled} ended without a result (state CANCELLED)" in error


@pytest.mark.postgres
def test_optuna_trials_as_slurm_jobs_report_their_epochs_to_postgresql(
    store, tmp_path, slurm_cluster, postgres_url, start_sweep
):
    """hydra/sweeper=optuna with hydra/launcher=slurm_gpu: 3 trials, 2 SLURM jobs at a time;
    each job opens the PostgreSQL study itself and reports every epoch for pruning."""
    name = f"test-slurm-{uuid.uuid4().hex[:12]}"
    command = sweep_command(
        store,
        tmp_path,
        slurm_cluster,
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.storage={postgres_url}",
        "trainer.max_epochs=3",
        "logger=none",
        "plan.lr=tag(log,interval(1e-4,1e-2))",
    )
    storage = open_storage(postgres_url)
    try:
        status, log = start_sweep(command).finish()
        assert status == 0, log[-3000:]
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == 3
        assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
        for trial in trials:  # one value per epoch trained, reported from its job
            steps = sorted(trial.intermediate_values)
            assert steps == list(range(1, len(steps) + 1))
            if trial.state == TrialState.COMPLETE:
                assert steps == [1, 2, 3]
                metrics = json.loads(
                    (Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text()
                )
                assert trial.value == metrics["elbo_validation"]
        assert len(job_ids(tmp_path)) == 3  # every trial a SLURM job (arrays of 2, then 1)
    finally:
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
