"""trainer=ddp: one job over several processes (gloo on the CPU), and where DDP is refused."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import sweep.training.distributed as distributed
from sweep.paths import REPO_ROOT
from sweep.training.distributed import check_launch, several_devices
from test_train import compose_train


@pytest.mark.parametrize(
    "devices, several",
    [(1, False), (2, True), (-1, True), ("1", False), ("4", True), ("0,1", True), ([0], False)],
)
def test_several_devices_reads_lightnings_device_spellings(devices, several):
    assert several_devices(devices) is several


def test_ddp_inside_a_multirun_is_refused_unless_a_cluster_started_the_processes(
    store, monkeypatch
):
    cfg = compose_train(store, "trainer=ddp")
    monkeypatch.setattr(distributed, "in_multirun", lambda: True)
    with pytest.raises(ValueError, match="hydra/launcher=slurm_ddp"):
        check_launch(cfg.trainer)
    monkeypatch.setenv("SLURM_NTASKS", "2")  # srun started this job's processes
    monkeypatch.setenv("SLURM_JOB_NAME", "scvi-sweep")
    check_launch(cfg.trainer)
    monkeypatch.setattr(distributed, "in_multirun", lambda: False)  # a single run: Lightning
    monkeypatch.delenv("SLURM_NTASKS")  # starts the processes itself
    check_launch(cfg.trainer)


@pytest.mark.slow
def test_two_process_ddp_run_sees_every_cell_once_per_epoch_and_rank_zero_writes(store, tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "dataset=prepared",
            f"dataset.path={store}",
            "evaluation=none",
            "loader.num_workers=0",
            "loader.batch_size=128",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "train_ddp_process_1.log").is_file()  # the second process ran
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    # both ranks' cells add up to the whole training set, every epoch
    assert history["train_cells_epoch"].tolist() == [metrics["cells_train"]] * 2
    assert metrics["cells_seen"] == 2 * metrics["cells_train"]
    assert list(history["epoch"]) == [1, 2]  # epochs count from 1
    # rank 0 alone wrote: one W&B run, one model that loads like any other
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    state = torch.load(run_dir / "model" / "model.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in state["model_state_dict"])  # not DDP-wrapped
    assert state["attr_dict"]["is_trained_"]
