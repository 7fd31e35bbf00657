"""benchmarks.step_evaluation: its arithmetic from made-up runs, and one tiny real run."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest
from benchmarks import step_evaluation

ARGS = argparse.Namespace(
    cells_per_dataset=1000,
    epochs=2,
    validate_every=10,
    score_every=50,
    checkpoint_every=20,
    repeats=2,
)


def run(setting: str, train_s: float, **events: int) -> dict:
    counts = {"validations": 0, "scorings": 0, "checkpoints": 0} | events
    return {
        "setting": setting,
        "steps": 100,
        "train_s": train_s,
        "cells_validation": 5000,
        **counts,
    }


def test_each_events_cost_and_the_overhead_at_the_defaults():
    """0.101 s a step; a validation costs 0.2 s (10 for 2 s), a scoring 4 s (2 for 8 s), a
    checkpoint 0.6 s (5 for 3 s): at the defaults (every 1,000 / 10,000 / 2,000 steps) 0.20%,
    0.40% and 0.30%."""
    rows = []
    for repeat in (1, 2):
        rows += [
            run("off", 10.0 + (repeat - 1) * 0.2),  # median 10.1 s
            run("validation", 12.1, validations=10),
            run("scoring", 18.1, scorings=2),
            run("checkpoints", 13.1, checkpoints=5),
        ]
    text = step_evaluation.report(pd.DataFrame(rows).assign(repeat=[1] * 4 + [2] * 4), ARGS)
    for row in (
        "| validation loss, 5,000 cells | 10 steps | +19.8% | 0.20 s | 1,000 steps | 0.20% |",
        "| integration scoring, 1,000 cells | 50 steps | +79.2% | 4.00 s | 10,000 steps | 0.40% |",
        "| checkpoint in the middle of an epoch | 20 steps | +29.7% | 0.60 s | 2,000 steps (off "
        "by default) | 0.30% |",
    ):
        assert row in text, row
    assert "Median time per training step (off): 101 ms." in text


@pytest.mark.slow
def test_a_tiny_real_run_counts_each_settings_events(tmp_path, monkeypatch, capsys):
    """6 x 300 cells, 1 epoch of batch 1024 = 2 steps: validation every step (2), scoring every
    step but the last (its end is scored anyway: 1), a checkpoint every step but the last (1)."""
    monkeypatch.setenv("SCVI_SWEEP_CACHE", str(tmp_path / "cache"))
    step_evaluation.main(
        [
            "--cells-per-dataset=300",
            "--epochs=1",
            "--validate-every=1",
            "--score-every=1",
            "--checkpoint-every=1",
            "--repeats=1",
        ]
    )
    out = capsys.readouterr().out
    steps = 2
    for line in (
        f"| 1 | off | {steps} | 0 | 0 | 0 |",
        f"| 1 | validation | {steps} | {steps} | 0 | 0 |",
        f"| 1 | scoring | {steps} | 0 | {steps - 1} | 0 |",
        f"| 1 | checkpoints | {steps} | 0 | 0 | {steps - 1} |",
    ):
        assert line in out, line
