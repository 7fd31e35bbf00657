"""Faults during training and sweeps: NaN loss, a failed job in a sweep, a killed run resumed.

Bad data and bad stores have their own tests (test_prepare.py, test_store_faults.py).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from sweep.paths import REPO_ROOT
from sweep.run_folder import CHECKPOINT_DIR
from sweep.run_folder import CHECKPOINT_FILE as LAST
from sweep.run_folder import CHECKPOINT_INFO_FILE as LAST_INFO
from sweep.training.job import fit
from sweep.training.resume import previous_run
from sweep.training.rng import rng_state, set_rng_state
from test_train import compose_train

QUICK = ["evaluation=none", "logger=none", "loader.num_workers=0", "save_model=false"]


def train_command(store: Path, *overrides: str, multirun: bool = False) -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        *(["-m"] if multirun else []),
        "dataset=prepared",
        f"dataset.path={store}",
        "trainer.enable_progress_bar=false",
        *QUICK,
        *overrides,
    ]


def test_nan_loss_stops_the_job_at_once_naming_epoch_and_batch(store, tmp_path):
    cfg = compose_train(store, *QUICK, "trainer.max_epochs=3", "plan.lr=1000")
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, batch \d+ \(global"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / CHECKPOINT_DIR / LAST).exists()  # died in epoch 1


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = rng_state()
    expected = torch.rand(3), np.random.rand(3)
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])


def _fake_run(folder: Path, overrides: list[str], finished: bool, age_s: float) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / CHECKPOINT_DIR).mkdir()
    progress = folder / ("metrics.json" if finished else f"{CHECKPOINT_DIR}/{LAST}")
    progress.write_text("{}")
    os.utime(progress, (time.time() - age_s, time.time() - age_s))
    return folder


def test_resume_finds_the_newest_run_of_the_same_overrides(tmp_path):
    runs = tmp_path / "runs"
    same = ["model=hidden_512", "trainer.max_epochs=4"]
    _fake_run(runs / "a", same, finished=False, age_s=100)
    newer = _fake_run(runs / "b", [*same, "resume=true"], finished=False, age_s=10)
    _fake_run(runs / "c", ["model=czi_128", "trainer.max_epochs=4"], finished=True, age_s=1)
    (runs / "d" / ".hydra").mkdir(parents=True)  # a run that died before its first checkpoint
    (runs / "d" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(same))
    here = runs / "e"
    assert previous_run(here, [*same, "resume=true"], multirun=False) == newer
    assert previous_run(here, list(reversed(same)), multirun=False) == newer  # order aside
    finished = _fake_run(runs / "f", same, finished=True, age_s=5)
    assert previous_run(here, same, multirun=False) == finished
    assert previous_run(here, ["model=czi_128"], multirun=False) is None
    sweeps = tmp_path / "multiruns"
    job = _fake_run(sweeps / "s1" / "3", same, finished=False, age_s=5)
    assert previous_run(sweeps / "s2" / "3", same, multirun=True) == job


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_ends_as_if_uninterrupted(store, tmp_path):
    """kill -9 after epoch 2 of 4, re-run the same command with resume=true: the new folder
    holds the whole run, ending with the uninterrupted run's history and metrics; a third run
    with resume=true finds it finished and trains nothing."""
    epochs = ["trainer.max_epochs=4"]
    runs = tmp_path / "outputs" / "runs"
    first = subprocess.Popen(
        train_command(store, *epochs, f"hydra.run.dir={runs / 'first'}"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    info = runs / "first" / CHECKPOINT_DIR / LAST_INFO
    deadline = time.time() + 300
    while not (info.exists() and json.loads(info.read_text())["epoch"] >= 2):
        assert first.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = json.loads(info.read_text())["epoch"]
    assert killed_at < 4 and not (runs / "first" / "metrics.json").exists()

    def resume_into(folder: str) -> str:
        """Run the same command with resume=true into ``folder``; its console output."""
        done = subprocess.run(
            train_command(store, *epochs, "resume=true", f"hydra.run.dir={runs / folder}"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    assert f"after epoch {killed_at}" in resume_into("second")
    metrics = json.loads((runs / "second" / "metrics.json").read_text())  # the whole run
    history = pd.read_csv(runs / "second" / "history.csv")
    assert not (runs / "first" / "metrics.json").exists()  # the killed folder stays as it was

    reference = fit(compose_train(store, *QUICK, *epochs), tmp_path / "reference")[1]
    expected = pd.read_csv(tmp_path / "reference" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert history["kl_weight"].tolist() == expected["kl_weight"].tolist()  # schedule intact
    assert history["lr"].tolist() == expected["lr"].tolist()
    assert metrics["epochs"] == 4
    assert metrics["cells_seen"] == reference["cells_seen"] == 4 * metrics["cells_train"]
    # epochs before the kill come from the checkpoint: exactly the uninterrupted values
    done = history["epoch"] <= killed_at
    assert history.loc[done, "elbo_validation"].tolist() == pytest.approx(
        expected.loc[done, "elbo_validation"].tolist(), rel=1e-6
    )
    # after it, the same training within float noise (seed-to-seed spread is ~100x larger)
    for key in ("elbo_validation", "elbo_train", "reconstruction_loss_validation"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-3)

    assert "finished this run already" in resume_into("third")
    assert json.loads((runs / "third" / "metrics.json").read_text()) == metrics
    assert "epochs on" not in (runs / "third" / "train.log").read_text()  # nothing trained


@pytest.mark.slow
def test_sweep_with_failing_jobs_finishes_the_others_reports_and_exits_nonzero(store, tmp_path):
    """One job's loss goes NaN, two jobs filter every cell out: the other job finishes, the
    report lists the failures with their errors, and the command's exit status is not 0. (A
    value out of range stops the whole sweep before its first job: tests/test_config.py.)"""
    sweep_dir, reports = tmp_path / "sweep", tmp_path / "reports"
    result = subprocess.run(
        train_command(
            store,
            "plan.lr=0.001,1000",
            "data.min_genes=0,100000",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.callbacks.report.out_root={reports}",
            multirun=True,
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    finished = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert finished == ["0"]  # lr 0.001, no cell filter: the only good job, run to the end
    table = pd.read_csv(reports / "sweep" / "results.csv")
    assert sorted(table["status"]) == ["complete", "failed", "failed", "failed"]
    report = (reports / "sweep" / "report.md").read_text()
    assert "1 complete, 3 failed" in report
    assert "FloatingPointError: training loss is nan" in report
    assert "the cell filter (min_genes=100000, primary_only=True) leaves no cells" in report


@pytest.mark.slow
def test_killed_sweep_rerun_with_resume_reuses_finished_jobs_and_continues_the_rest(
    store, tmp_path
):
    """kill -9 a 2-job sweep while its second job trains; the same command with resume=true (a
    new sweep folder) reuses the finished job, continues the other from its checkpoint, and
    reports both."""
    sweep = ["seed=0,1", "trainer.max_epochs=3", f"hydra.callbacks.report.out_root={tmp_path}"]
    first = tmp_path / "multiruns" / "first"
    killed = subprocess.Popen(
        train_command(store, *sweep, f"hydra.sweep.dir={first}", multirun=True),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    info = first / "1" / CHECKPOINT_DIR / LAST_INFO
    deadline = time.time() + 300
    while not info.exists():
        assert killed.poll() is None, "the sweep ended before it could be killed"
        assert time.time() < deadline, "no checkpoint of the second job after 300 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (first / "0" / "metrics.json").exists() and not (first / "1" / "metrics.json").exists()

    second = tmp_path / "multiruns" / "second"
    done = subprocess.run(
        train_command(store, *sweep, "resume=true", f"hydra.sweep.dir={second}", multirun=True),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "finished this run already" in log and "resuming" in log
    reused = json.loads((second / "0" / "metrics.json").read_text())
    assert reused == json.loads((first / "0" / "metrics.json").read_text())
    continued = pd.read_csv(second / "1" / "history.csv")
    assert list(continued["epoch"]) == [1, 2, 3]
    table = pd.read_csv(tmp_path / "second" / "results.csv")
    assert sorted(table["status"]) == ["complete", "complete"]
