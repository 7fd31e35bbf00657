"""Checkpoints every N steps, and a run stopped after one in the middle of an epoch resumed with
``resume=true``: each epoch once, each training cell once per epoch, the KL weight and learning
rate going on exactly, and the uninterrupted run's final validation ELBO."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import sweep.training.parts
from sweep.config.schema import ConfigError, validate
from sweep.paths import REPO_ROOT
from sweep.run_folder import read_checkpoint_info
from sweep.training.checkpoint import StepCheckpoint
from sweep.training.job import fit, run
from test_train import compose_train

EPOCHS = 3


def overrides(workers: int, *more: str) -> list[str]:
    """3 epochs of 14 batches of 32 on the tiny store, a checkpoint every 5 steps, the
    validation loss every 3 (steps.csv), a KL weight that grows every step
    (plan=czi_kl_steps) until step 20, in epoch 2, where the run stops."""
    return [
        "logger=none",
        "save_model=false",
        f"trainer.max_epochs={EPOCHS}",
        "loader.batch_size=32",
        f"loader.num_workers={workers}",
        "trainer.checkpoint_every_n_steps=5",
        "trainer.validate_every_n_steps=3",
        "plan=czi_kl_steps",
        "plan.n_steps_kl_warmup=20",
        *more,
    ]


class Killed(RuntimeError):
    """The interruption: raised right after the first checkpoint written in epoch 2's middle."""


class DiesAfterAMidEpochCheckpoint(StepCheckpoint):
    """Every DDP rank stops at the same step: right after that checkpoint was written."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._saved.get("epoch") == 1 and self._saved["batches"] == batch_idx + 1:
            raise Killed(f"stopped at step {trainer.global_step}")


def test_a_negative_step_interval_is_refused_naming_the_key(tiny_store):
    cfg = compose_train(tiny_store, "trainer.checkpoint_every_n_steps=-1")
    with pytest.raises(ConfigError, match=r"trainer\.checkpoint_every_n_steps=-1 must lie in"):
        validate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_stopped_mid_epoch_resumes_where_it_was(tiny_store, tmp_path, monkeypatch, workers):
    reference = fit(compose_train(tiny_store, *overrides(workers)), tmp_path / "reference")[1]
    expected = pd.read_csv(tmp_path / "reference" / "history.csv")
    if workers == 0:  # checkpoints in the middle of epochs leave training as it was
        off = overrides(workers, "trainer.checkpoint_every_n_steps=0")
        fit(compose_train(tiny_store, *off), tmp_path / "off")
        without = pd.read_csv(tmp_path / "off" / "history.csv")
        assert without["elbo_validation"].tolist() == expected["elbo_validation"].tolist()

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(sweep.training.parts, "StepCheckpoint", DiesAfterAMidEpochCheckpoint)
        with pytest.raises(Killed):
            fit(compose_train(tiny_store, *overrides(workers)), run_dir)
    info = read_checkpoint_info(run_dir)
    assert info["epoch"] == 1 and info["batches"] > 0  # in the middle of epoch 2
    assert not (run_dir / "metrics.json").exists()

    value = run(compose_train(tiny_store, *overrides(workers, "resume=true")), run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))  # each epoch once
    assert history["kl_weight"].tolist() == expected["kl_weight"].tolist()
    assert history["lr"].tolist() == expected["lr"].tolist()
    # every training cell once per epoch, the interrupted one included
    assert history["train_cells_epoch"].tolist() == [metrics["cells_train"]] * EPOCHS
    assert metrics["cells_seen"] == reference["cells_seen"] == EPOCHS * metrics["cells_train"]
    assert metrics["kl_weight"] == reference["kl_weight"] == 1.0  # the warm-up ended in step
    # the interrupted epoch's training means are over all of its batches, before and after
    for key in ("train_loss", "elbo_train", "reconstruction_loss_train", "kl_local_train"):
        assert history[key].tolist() == pytest.approx(expected[key].tolist(), rel=1e-5), key
    # the epoch before the interruption comes from the checkpoint: exactly the same
    assert history["elbo_validation"].iloc[0] == pytest.approx(expected["elbo_validation"].iloc[0])
    assert value == pytest.approx(reference["elbo_validation"], rel=1e-3)
    assert_same_steps(run_dir, tmp_path / "reference", info["step"])
    for key in ("elbo_validation", "reconstruction_loss_validation"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-3)
    print(f"workers={workers}: {value!r} resumed vs {reference['elbo_validation']!r}")


def assert_same_steps(run_dir: Path, reference_dir: Path, stopped_at: int) -> None:
    """steps.csv of the resumed run: each step-level validation once, at the same steps and
    cells seen as the uninterrupted run's, the same values up to the interruption (after
    step ``stopped_at``)."""
    steps = pd.read_csv(run_dir / "steps.csv")
    expected = pd.read_csv(reference_dir / "steps.csv")
    for key in ("global_step", "cells_seen", "kl_weight"):
        assert steps[key].tolist() == expected[key].tolist(), key
    before = steps["global_step"] <= stopped_at
    assert before.any()
    assert steps["elbo_validation"][before].tolist() == pytest.approx(
        expected["elbo_validation"][before].tolist(), rel=1e-6
    )
    assert steps["elbo_validation"].tolist() == pytest.approx(
        expected["elbo_validation"].tolist(), rel=1e-3
    )


def train_ddp(store: Path, run_dir: Path, *more: str, dies: bool = False):
    """``python train.py trainer=ddp trainer.devices=2`` (gloo CPU processes) of
    :func:`overrides` into ``run_dir``; ``dies``: through tests/train_dies_mid_epoch.py (both
    ranks run it: Lightning starts rank 1 by re-running the command)."""
    script = Path(__file__).with_name("train_dies_mid_epoch.py") if dies else REPO_ROOT / "train.py"
    return subprocess.run(
        [
            sys.executable,
            str(script),
            "dataset=prepared",
            f"dataset.path={store}",
            "evaluation=none",
            "trainer.enable_progress_bar=false",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "loader.block_size=16",  # the tiny store's cells dealt evenly to 2 ranks
            *overrides(0, "trainer.checkpoint_every_n_steps=2", *more),
            f"hydra.run.dir={run_dir}",
        ],
        cwd=run_dir.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_ddp_run_stopped_mid_epoch_resumes_where_it_was(tiny_store, tmp_path):
    """2 ranks: each leaves out its own share of the trained batches and takes up its own
    random streams and running sums; the same history as the uninterrupted run."""
    done = train_ddp(tiny_store, tmp_path / "reference")
    assert done.returncode == 0, done.stderr[-3000:]
    stopped = train_ddp(tiny_store, tmp_path / "run", dies=True)
    assert stopped.returncode != 0 and "Killed: stopped at step" in stopped.stderr
    info = read_checkpoint_info(tmp_path / "run")
    assert info["epoch"] == 1 and info["batches"] > 0
    resumed = train_ddp(tiny_store, tmp_path / "run", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"and {info['batches']} batches of epoch 2" in resumed.stdout + resumed.stderr

    expected = pd.read_csv(tmp_path / "reference" / "history.csv")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    assert history["train_cells_epoch"].tolist() == [metrics["cells_train"]] * EPOCHS
    for key in ("elbo_validation", "elbo_train", "kl_weight"):
        assert history[key].tolist() == pytest.approx(expected[key].tolist(), rel=1e-5), key
    assert_same_steps(tmp_path / "run", tmp_path / "reference", info["step"])
