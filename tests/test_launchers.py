"""Launchers through hydra-submitit-launcher: our configs in conf/hydra/launcher (slurm_gpu,
slurm_ddp, local) and the plugin's own submitit_local / submitit_slurm.

Without SLURM: the SLURM tests build the sbatch script the plugin would submit (a fake ``srun``
on PATH satisfies submitit's check) and give Lightning the environment ``srun`` sets in each task
of that script; tests/test_slurm.py runs sweeps on a real SLURM. The local launcher runs for
real: every job a process of its own. Last, what a SLURM requeue does to a job's other processes
(loader workers, the W&B service) and to resuming, on this machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies.launchers import subprocess_script
from lightning.pytorch.utilities import rank_zero
from lightning_utilities.core import rank_zero as utils_rank_zero
from omegaconf import OmegaConf
from optuna.trial import TrialState

import sweep.training.distributed as distributed
from sweep.config.schema import register_schema
from sweep.data.densify import densify
from sweep.data.loader import EpochLoader
from sweep.paths import REPO_ROOT
from sweep.run_folder import write_checkpoint_info, write_metrics
from sweep.study.storage import open_storage
from sweep.training import tracking
from sweep.training.resume import Resume, prepare_resume, previous_run
from test_loader import cell_ids, make_batches

CONF_DIR = REPO_ROOT / "conf"
#: quick jobs on the test store: 1 epoch, nothing scored, logged, checkpointed or saved
QUICK = [
    "trainer.max_epochs=1",
    "evaluation=none",
    "logger=none",
    "loader.num_workers=0",
    "trainer.checkpoint_every_n_epochs=0",
    "trainer.enable_progress_bar=false",
    "save_model=false",
]


def compose_with_hydra(*overrides: str):
    """train.yaml with its hydra node, as a multirun would compose it."""
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def sbatch_script(cfg, n_jobs: int, monkeypatch, tmp_path) -> str:
    """The sbatch script hydra-submitit-launcher would submit for ``n_jobs`` jobs of ``cfg``."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks it exists
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin")
    executors = []

    def capture(executor, fn, *arguments):  # instead of submitting: keep the executor
        executors.append(executor)
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([[f"seed={i}"] for i in range(n_jobs)], initial_job_idx=0)
    slurm = executors[0]._executor
    slurm.parameters["map_count"] = n_jobs  # what submitit sets when it submits the array
    return slurm._make_submission_file_text("python -m submitit.core._submit", "uid")


def srun_task_environment(monkeypatch, cfg, rank: int) -> None:
    """The variables srun sets in task ``rank`` of the job the launcher config asks for."""
    launcher = cfg.hydra.launcher
    for key, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",  # hydra.job.name; "bash"/"interactive" would hide SLURM
        "SLURM_NNODES": launcher.nodes,
        "SLURM_NTASKS": launcher.nodes * launcher.tasks_per_node,
        "SLURM_NTASKS_PER_NODE": launcher.tasks_per_node,
        "SLURM_PROCID": rank,
        "SLURM_LOCALID": rank,
        "SLURM_NODEID": 0,
        "SLURM_NODELIST": "gpu01",
    }.items():
        monkeypatch.setenv(key, str(value))


def test_slurm_gpu_submits_a_throttled_array_of_one_gpu_tasks(monkeypatch, tmp_path):
    cfg = compose_with_hydra(
        "hydra/launcher=slurm_gpu",
        "trainer=gpu",
        "hydra.launcher.partition=a100",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert cfg.hydra.launcher._target_.endswith("sweep_slurm_launcher.slurm_launcher.SlurmLauncher")
    script = sbatch_script(cfg, 20, monkeypatch, tmp_path)
    for line in (
        "#SBATCH --partition=a100",
        "#SBATCH --array=0-19%16",  # 20 jobs, at most array_parallelism=16 at once
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=720",
        f"#SBATCH --output={tmp_path / 'sweep'}/.submitit/%A_%a/%A_%a_0_log.out",
    ):
        assert line in script.splitlines(), f"{line} not in\n{script}"
    assert "\nsrun " in script


@pytest.mark.filterwarnings("ignore:The `srun` command is available")  # the fake srun
def test_slurm_ddp_runs_one_task_per_device_that_lightning_finds_without_relaunching(
    monkeypatch, tmp_path
):
    """slurm_ddp: --ntasks-per-node and --gpus-per-node follow trainer.devices; in each task,
    Lightning's SLURMEnvironment sees all of them, so Lightning starts no process itself, and
    check_launch lets the multirun job through."""
    overrides = ["hydra/launcher=slurm_ddp", "trainer=ddp", "trainer.devices=4"]
    cfg = compose_with_hydra(*overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 4
    script = sbatch_script(cfg, 3, monkeypatch, tmp_path).splitlines()
    assert "#SBATCH --ntasks-per-node=4" in script and "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --nodes=1" in script and "#SBATCH --array=0-2%3" in script

    monkeypatch.setattr(distributed, "in_multirun", lambda: True)
    with pytest.raises(ValueError, match="hydra/launcher=slurm_ddp"):  # no SLURM: refused
        distributed.check_launch(cfg.trainer)
    # Trainer.__init__ may set the rank_zero_only ranks, the launcher torch's threads: restore
    for module in (rank_zero, utils_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", module.rank_zero_only.rank)
    monkeypatch.setattr(subprocess_script, "_set_num_threads_if_needed", lambda **kwargs: None)

    def relaunch(self):
        raise AssertionError("Lightning re-ran sys.argv to start the DDP processes itself")

    monkeypatch.setattr(
        subprocess_script._SubprocessScriptLauncher, "_call_children_scripts", relaunch
    )
    for rank in (0, 3):
        srun_task_environment(monkeypatch, cfg, rank)
        assert SLURMEnvironment.detect()
        distributed.check_launch(cfg.trainer)  # SLURM started the processes: allowed in a multirun
        trainer = ddp_trainer(cfg.trainer)
        assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
        assert (trainer.world_size, trainer.global_rank, trainer.local_rank) == (4, rank, rank)
        # what fit() does first: validate SLURM's tasks against the devices, start no process
        assert trainer.strategy.launcher.launch(lambda: "trained") == "trained"

    # why tasks_per_node follows trainer.devices: other task counts stop Lightning
    mismatched = compose_with_hydra(*overrides, "hydra.launcher.tasks_per_node=2")
    srun_task_environment(monkeypatch, mismatched, 0)
    trainer = ddp_trainer(mismatched.trainer)
    with pytest.raises(ValueError, match="ntasks-per-node=2"):
        trainer.strategy.launcher.launch(lambda: "trained")


def ddp_trainer(trainer_cfg) -> Trainer:
    """A Trainer as scvi-tools builds it for trainer=ddp, on CPU devices (no GPU here)."""
    return Trainer(
        accelerator="cpu",
        devices=trainer_cfg.devices,
        strategy=trainer_cfg.strategy,
        logger=False,
        enable_checkpointing=False,
    )


def test_local_launcher_is_submitit_local_with_a_cap_on_parallel_jobs():
    cfg = compose_with_hydra("hydra/launcher=local", "hydra.launcher.max_parallel=3")
    launcher = instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, submitit_launcher.LocalLauncher)
    assert launcher.max_parallel == 3 and launcher.params["timeout_min"] == 2880
    assert "max_parallel" not in launcher.params  # submitit would refuse the key
    with pytest.raises(InstantiationException, match="max_parallel=0: give a number"):
        instantiate(
            compose_with_hydra(
                "hydra/launcher=local", "hydra.launcher.max_parallel=0"
            ).hydra.launcher
        )


def multirun(store: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "dataset=prepared",
        f"dataset.path={store}",
        *QUICK,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.callbacks.report.out_root={tmp_path / 'reports'}",
        *overrides,
    ]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def submitit_jobs(sweep: Path) -> list[Path]:
    """The job folders submitit_local made (one per job: its pickles and stdout/stderr)."""
    return sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_a_two_job_sweep_through_submitit_local_completes_both_runs_and_the_report(store, tmp_path):
    result = multirun(store, tmp_path, "hydra/launcher=submitit_local", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stderr + result.stdout
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["epochs"] == 1 and metrics["cells_seen"] == metrics["cells_train"]
    jobs = submitit_jobs(sweep)
    assert len(jobs) == 2  # each job ran in its own process, not in the sweep's
    assert all(next(job.glob("*_result.pkl"), None) for job in jobs)
    table = pd.read_csv(tmp_path / "reports" / "sweep" / "results.csv")
    assert sorted(table["status"]) == ["complete", "complete"]
    assert sorted(table["seed"]) == [0, 1]
    assert "Jobs: 2 complete, 0 failed" in (tmp_path / "reports/sweep/report.md").read_text()


@pytest.mark.slow
def test_a_failing_job_under_the_local_launcher_leaves_the_next_and_is_reported(store, tmp_path):
    """plan.lr=1000 makes job 0's loss NaN: it raises in its own process; job 1, in the next
    wave (max_parallel=1), still runs to the end; the report lists the failure with its error,
    and the exit status is not 0."""
    result = multirun(
        store,
        tmp_path,
        "hydra/launcher=local",
        "hydra.launcher.max_parallel=1",
        "plan.lr=1000,0.001",
    )
    assert result.returncode != 0
    assert "FloatingPointError" in result.stderr  # Hydra re-raises the job's error at the end
    sweep = tmp_path / "sweep"
    assert not (sweep / "0" / "metrics.json").exists()
    assert (sweep / "1" / "metrics.json").exists()
    assert len(submitit_jobs(sweep)) == 2
    assert "job failed" in (sweep / "0" / "train.log").read_text()  # the traceback, in its log
    table = pd.read_csv(tmp_path / "reports" / "sweep" / "results.csv")
    assert table.set_index("job")["status"].to_dict() == {0: "failed", 1: "complete"}
    report = (tmp_path / "reports" / "sweep" / "report.md").read_text()
    assert "1 complete, 1 failed" in report
    assert "FloatingPointError: training loss is nan" in report


@pytest.mark.slow
def test_an_optuna_study_runs_its_trials_through_submitit_local(store, tmp_path):
    """Two trials at once (n_jobs=2), each in a submitit process: each finds its trial in the
    shared journal (the pruning callback reports every epoch) and the sweep tells Optuna."""
    journal = tmp_path / "study.journal"
    result = multirun(
        store,
        tmp_path,
        "hydra/launcher=submitit_local",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.study_name=launched",
        f"hydra.sweeper.storage={journal}",
        "trainer.max_epochs=2",
        "plan.lr=tag(log,interval(1e-4,1e-2))",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="launched", storage=open_storage(str(journal)))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        run_dir = tmp_path / "sweep" / str(trial.number)
        assert trial.user_attrs["run_dir"] == str(run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert trial.value == metrics["elbo_validation"]
        assert metrics["optuna_trial"] == trial.number
        assert sorted(trial.intermediate_values) == [1, 2]  # reported from the job's process
    assert len(submitit_jobs(tmp_path / "sweep")) == 2
    assert "| 2 | 0 | 0 | 0 | 0 | 0 |" in (tmp_path / "reports/launched/report.md").read_text()


# --- what a SLURM requeue does to a job's other processes (tests/test_slurm.py: on SLURM) -----


def worker_pids() -> list[int]:
    """The pids of this process's running DataLoader workers (multiprocessing children)."""
    return [child.pid for child in multiprocessing.active_children()]


def received(path: Path) -> list[int]:
    """The pids that ran the test's signal handler."""
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize(
    ("signum", "parent"),
    [(signal.SIGUSR2, "handler"), (signal.SIGUSR2, "default"), (signal.SIGTERM, "handler")],
    ids=["SIGUSR2-handled", "SIGUSR2-default", "SIGTERM"],
)
def test_a_loader_worker_signalled_by_slurm_keeps_loading_and_leaves_the_signal_to_the_trainer(
    small_store, tmp_path, signum, parent
):
    """SLURM signals every process of the job, forked workers included: SIGUSR2 before the time
    limit, SIGTERM when it requeues or cancels the job. A worker must neither run the handler it
    inherits from the training process (submitit's: checkpoint and requeue the job; here one
    that records its pid) nor die (SIGUSR2's default action, torch's worker SIGTERM handler)."""
    handled = tmp_path / "handled"

    def record(signum, frame):
        with open(handled, "a") as out:
            out.write(f"{os.getpid()}\n")

    previous = signal.signal(signum, record if parent == "handler" else signal.SIG_DFL)
    try:
        dataset, selected = make_batches(small_store)
        epoch = {"now": 0}
        loader = EpochLoader(
            dataset,
            epoch_of=lambda: epoch["now"],
            slot_bytes=1 << 20,
            num_workers=1,
            persistent_workers=True,
        )
        others = set(worker_pids())
        batches = iter(loader)
        cells = [cell_ids(densify(next(batches), 60))]
        (worker,) = set(worker_pids()) - others
        subprocess.run(["kill", f"-{signum.name[3:]}", str(worker)], check=True)  # not its parent
        cells += [cell_ids(densify(b, 60)) for b in batches]
        epoch["now"] = 1  # a whole epoch more from the signalled worker
        later = [cell_ids(densify(b, 60)) for b in loader]
        for delivered in (cells, later):
            assert np.array_equal(np.sort(np.concatenate(delivered)), np.flatnonzero(selected))
        assert worker in worker_pids()
        assert received(handled) == []
        if parent == "handler":  # the training process still handles it
            signal.raise_signal(signum)
            assert received(handled) == [os.getpid()]
    finally:
        signal.signal(signum, previous)


def wandb_service_pids() -> list[int]:
    """The pids of this process's live W&B service (wandb-core) children."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
            child = fields["PPid"].strip() == str(os.getpid()) and fields["State"][0] != "Z"
            if child and fields["Name"].strip() == "wandb-core":
                pids.append(int(status.parent.name))
    return pids


def test_finishing_a_wandb_run_whose_service_died_warns_and_keeps_the_jobs_own_exit(
    tmp_path, caplog
):
    """A requeue SIGTERMs every process of the job, wandb-core too: tracking.finish, called in
    train.py's ``finally``, then warns instead of replacing submitit's SystemExit with W&B's
    ConnectionResetError, and the next run of the process gets a new service."""
    logger = WandbLogger(project="t", save_dir=str(tmp_path), mode="offline")
    logger.experiment.log({"a": 1})
    for pid in wandb_service_pids():
        os.kill(pid, signal.SIGTERM)
    while wandb_service_pids():  # until it has exited
        time.sleep(0.1)
    with (
        pytest.raises(SystemExit),
        caplog.at_level(logging.WARNING, logger="sweep.training.tracking"),
    ):
        try:
            raise SystemExit(-1)  # what submitit raises once it has requeued the job
        finally:
            tracking.finish(logger, exit_code=1)
    assert "could not be finished (ConnectionResetError" in caplog.text
    caplog.clear()
    again = WandbLogger(project="t", save_dir=str(tmp_path / "again"), mode="offline")
    again.experiment.log({"a": 2})
    tracking.finish(again, exit_code=0)
    assert "could not be finished" not in caplog.text


def test_a_requeued_job_resumes_its_own_folder_before_a_newer_one_of_the_same_overrides(
    tmp_path,
):
    """SLURM starts a requeued job again in its run folder: it continues that folder's
    checkpoint, even where another sweep's folder with the same overrides is newer."""
    folders = [tmp_path / "sweep_a" / "0", tmp_path / "sweep_b" / "0"]
    for folder in folders:  # sweep_b/0 written last: the newer
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text("- seed=1\n- resume=true\n")
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert previous_run(folders[0], ["seed=1", "resume=true"], multirun=True) == folders[0]
    shutil.rmtree(folders[0] / "checkpoints")  # nothing of its own: the newest sibling
    assert previous_run(folders[0], ["seed=1"], multirun=True) == folders[1]


def test_a_requeued_job_resumes_its_own_folder_without_resume_true(tmp_path, monkeypatch):
    """The SLURM launchers requeue timed-out jobs by default (max_num_timeout 10): a requeued
    job continues its own folder's checkpoint, or reuses its finished metrics, whether or not
    ``resume=true`` was given; a job that was not requeued starts over as asked."""
    folder = tmp_path / "sweep" / "0"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    write_checkpoint_info(folder, epoch=3, step=60)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert prepare_resume(False, folder) == Resume()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert prepare_resume(False, folder) == Resume(checkpoint=folder / "checkpoints" / "last.ckpt")
    write_metrics(folder, {"elbo_validation": 1.0})
    assert prepare_resume(False, folder) == Resume(metrics={"elbo_validation": 1.0})
    assert prepare_resume(False, tmp_path / "fresh") == Resume()  # requeued before any progress
    assert OmegaConf.load(CONF_DIR / "hydra/launcher/slurm_gpu.yaml").max_num_timeout == 10
