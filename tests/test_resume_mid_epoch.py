"""Checkpoints every N steps, and a run stopped after one in the middle of an epoch resumed with
``resume=true``: each epoch once, each training cell once per epoch, the KL weight and learning
rate going on exactly, and the uninterrupted run's final validation ELBO."""

import json

import pandas as pd
import pytest

import sweep.train
from sweep.checkpoint import StepCheckpoint
from sweep.config import ConfigError, validate
from sweep.run_folder import CHECKPOINT_DIR, CHECKPOINT_INFO_FILE, read_checkpoint_info
from sweep.train import fit, run
from test_train import compose_train

EPOCHS = 3


def overrides(workers: int, *more: str) -> list[str]:
    """3 epochs of ~13 batches of 32 on the tiny store, a checkpoint every 5 steps, a KL weight
    that grows every step (plan=czi_kl_steps) until step 20, in epoch 2, where the run stops."""
    return [
        "logger=none",
        "save_model=false",
        f"trainer.max_epochs={EPOCHS}",
        "loader.batch_size=32",
        f"loader.num_workers={workers}",
        "trainer.checkpoint_every_n_steps=5",
        "plan=czi_kl_steps",
        "plan.n_steps_kl_warmup=20",
        *more,
    ]


class Killed(RuntimeError):
    """The interruption: raised right after the first checkpoint written in epoch 2's middle."""


class DiesAfterAMidEpochCheckpoint(StepCheckpoint):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        info = self.run_dir / CHECKPOINT_DIR / CHECKPOINT_INFO_FILE
        if info.exists() and json.loads(info.read_text()) == {
            "epoch": 1,
            "step": trainer.global_step,
            "batches": batch_idx + 1,
        }:
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
        patch.setattr(sweep.train, "StepCheckpoint", DiesAfterAMidEpochCheckpoint)
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
    for key in ("elbo_validation", "reconstruction_loss_validation"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-3)
    print(f"workers={workers}: {value!r} resumed vs {reference['elbo_validation']!r}")
