"""Evaluation between epoch ends: the validation loss every N steps (steps.csv) and integration
scoring every N steps (integration.csv), indexed by global step, fractional epoch and training
cells seen; the convergence measures in epochs and cells seen; the run's report and W&B charts
against cells seen; training exactly as without them."""

import json

import pandas as pd
import pytest

from sweep.config.schema import ConfigError, validate
from sweep.evaluation.convergence import settled_at
from sweep.report.run_report import write_run_report
from sweep.training.job import fit
from test_train import compose_train
from test_wandb_record import read_run, records, run_file

EPOCHS = 3


def overrides(*more: str) -> list[str]:
    """3 epochs of 14 batches of 32 cells on the tiny store (42 steps), no W&B."""
    return [
        "logger=none",
        "save_model=false",
        f"trainer.max_epochs={EPOCHS}",
        "loader.batch_size=32",
        "loader.num_workers=0",
        *more,
    ]


def read(run_dir, name: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / name)


@pytest.mark.parametrize("key", ["trainer.validate_every_n_steps", "evaluation.every_n_steps"])
def test_a_negative_step_interval_is_refused_naming_the_key(tiny_store, key):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}=-1 must lie in"):
        validate(compose_train(tiny_store, f"{key}=-1"))
    with pytest.raises(ConfigError, match=r"trainer[.]step_validation_cells=0 must lie in"):
        validate(compose_train(tiny_store, "trainer.step_validation_cells=0"))


@pytest.mark.slow
def test_the_validation_loss_every_n_steps_is_a_step_indexed_history(tiny_store, tmp_path):
    fit(compose_train(tiny_store, *overrides("trainer.validate_every_n_steps=5")), tmp_path / "on")
    fit(compose_train(tiny_store, *overrides("trainer.validate_every_n_steps=0")), tmp_path / "off")
    steps, history = read(tmp_path / "on", "steps.csv"), read(tmp_path / "on", "history.csv")
    metrics = json.loads((tmp_path / "on" / "metrics.json").read_text())
    n_train = metrics["cells_train"]

    # history.csv: where each epoch ended, in optimizer steps and training cells
    batches = int(history["global_step"].iloc[0])
    assert history["global_step"].tolist() == [batches * e for e in range(1, EPOCHS + 1)]
    assert history["cells_seen"].tolist() == [n_train * e for e in range(1, EPOCHS + 1)]
    # steps.csv: every 5th step and the last; batches of 32 cells, each epoch the training set
    last = batches * EPOCHS
    assert steps["global_step"].tolist() == [*range(5, last, 5), last]
    expected = [(s // batches) * n_train + (s % batches) * 32 for s in steps["global_step"]]
    assert steps["cells_seen"].tolist() == expected
    assert steps["epoch"].tolist() == pytest.approx([c / n_train for c in expected])
    assert steps["epoch"].iloc[-1] == EPOCHS
    assert (steps["kl_weight"].diff().dropna() >= 0).all()  # the warm-up, step by step
    # all validation cells (fewer than 10,000) at the last step: the epoch's validation loss
    assert metrics["step_validation_cells"] == metrics["cells_validation"]
    for key in ("elbo_validation", "reconstruction_loss_validation", "kl_local_validation"):
        assert steps[key].iloc[-1] == pytest.approx(history[key].iloc[-1], rel=1e-5), key

    # measuring between epoch ends leaves training exactly as it was
    off = read(tmp_path / "off", "history.csv")
    assert history["elbo_validation"].tolist() == off["elbo_validation"].tolist()
    assert not (tmp_path / "off" / "steps.csv").exists()

    # convergence from the finest record: in epochs and in cells seen, at the same row
    cells_to = settled_at(steps["elbo_validation"], steps["cells_seen"], 0.01)
    assert metrics["cells_to_1pct_elbo_validation"] == cells_to
    assert metrics["epochs_to_1pct_elbo_validation"] == pytest.approx(cells_to / n_train)
    without = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert without["cells_to_1pct_elbo_validation"] in off["cells_seen"].tolist()

    # the run's page plots against training cells seen
    page = write_run_report(tmp_path / "on").read_text()
    assert "the run against training cells seen" in page
    assert f"stayed within 1% of its final value from {cells_to:,} training cells seen" in page
    assert "the run per epoch" in write_run_report(tmp_path / "off").read_text()

    # a subsample of the validation cells
    few = overrides("trainer.validate_every_n_steps=5", "trainer.step_validation_cells=10")
    fit(compose_train(tiny_store, *few), tmp_path / "few")
    assert (
        json.loads((tmp_path / "few" / "metrics.json").read_text())["step_validation_cells"] == 10
    )
    sampled = read(tmp_path / "few", "steps.csv")["elbo_validation"].iloc[-1]
    assert sampled != pytest.approx(history["elbo_validation"].iloc[-1], rel=1e-3)


@pytest.mark.slow
def test_scoring_every_n_steps_goes_to_integration_csv_and_wandb_against_cells_seen(
    tiny_store, tmp_path
):
    run_dir = tmp_path / "run"
    step_level = overrides(
        "logger=wandb",
        "evaluation=scib",
        "evaluation.epochs=[]",  # the last epoch's end only
        "evaluation.every_n_steps=20",
        "trainer.validate_every_n_steps=5",
    )
    metrics = fit(compose_train(tiny_store, *step_level), run_dir)[1]
    scorings = read(run_dir, "integration.csv")
    n_train = metrics["cells_train"]

    assert scorings["global_step"].tolist() == [20, 40, 42]
    assert scorings["epoch"].tolist()[:2] == pytest.approx([626 / n_train, 1252 / n_train])
    assert scorings["cells_seen"].tolist() == [626, 1252, 3 * n_train]
    for key in ("bio_conservation", "batch_correction", "integration_total"):
        assert metrics[key] == scorings[key].iloc[-1]  # the final scores: the last epoch's end
        cells_to = settled_at(scorings[key], scorings["cells_seen"], 0.01)
        assert metrics[f"cells_to_1pct_{key}"] == cells_to
        epochs_to = metrics[f"epochs_to_1pct_{key}"]
        assert epochs_to == pytest.approx(cells_to / n_train)
    # per epoch (history.csv, W&B's epoch charts): only the epoch-end scoring
    history = read(run_dir, "history.csv")
    assert history["bio_conservation"].notna().tolist() == [False, False, True]

    # W&B: every step-level value charted against cells seen
    offline = read_run(run_file(run_dir))
    rows = [row for row in offline.history if "steps/elbo_validation" in row]
    steps = read(run_dir, "steps.csv")
    assert [row["cells_seen"] for row in rows] == steps["cells_seen"].tolist()
    assert [row["steps/elbo_validation"] for row in rows] == pytest.approx(
        steps["elbo_validation"].tolist()
    )
    scored = [row for row in offline.history if "steps/bio_conservation" in row]
    assert [row["cells_seen"] for row in scored] == scorings["cells_seen"].tolist()[:2]
    assert [row["steps/bio_conservation"] for row in scored] == pytest.approx(
        scorings["bio_conservation"].tolist()[:2]
    )
    charted = {
        r.metric.name: r.metric.step_metric
        for r in records(run_file(run_dir))
        if r.WhichOneof("record_type") == "metric" and r.metric.name.startswith("steps/")
    }
    assert charted["steps/elbo_validation"] == charted["steps/bio_conservation"] == "cells_seen"
