"""What evaluation between epoch ends costs: ``python -m benchmarks.step_evaluation [--write]``.

Real training (``sweep.training.job.fit``) of the demo's synthetic data made larger
(``--cells-per-dataset`` x 6 data sets, so that the step-level validation has its default
10,000 validation cells), in this one process, alternating three settings ``--repeats`` times:

- off: ``trainer.validate_every_n_steps=0 evaluation.every_n_steps=0``;
- validation: the validation loss every ``--validate-every`` steps;
- scoring: integration scoring every ``--score-every`` steps;
- checkpoints: a mid-epoch checkpoint every ``--checkpoint-every`` steps
  (sweep.training.checkpoint).

Each runs ``--epochs`` epochs and is scored once more at the end of the last epoch (outside the
training time); a first short run compiles scib-metrics' kernels, so no setting pays for it.
Training time is EpochStats' (the epochs' wall time, step-level work included). The cost of one
validation, scoring or checkpoint is the setting's extra training time over its events; the
overhead at the defaults (validation every 1,000 steps, scoring every 10,000; checkpoints are
off by default: every 2,000 steps, the README's example) follows from it and the measured time
per step. ``--write`` puts the table into ``docs/benchmarks.md`` (section ``step_evaluation``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.record import machine, write_section
from sweep import metric_names, run_folder
from sweep.config.schema import EvaluationConfig, TrainerConfig, compose_train

#: the defaults the overhead is worked out for (sweep.config.schema's)
DEFAULT_VALIDATE = TrainerConfig.validate_every_n_steps
DEFAULT_SCORE = EvaluationConfig.every_n_steps
#: mid-epoch checkpoints are off by default; the README's example interval
EXAMPLE_CHECKPOINT = 2000


def compose(*overrides: str):
    """train.yaml composed with ``overrides`` (no W&B, no saved model, no progress bar)."""
    return compose_train(
        [
            "logger=none",
            "save_model=false",
            "trainer.enable_progress_bar=false",
            "trainer.checkpoint_every_n_epochs=0",
            *overrides,
        ]
    )


def train(run_dir: Path, *overrides: str) -> dict:
    """One run: its training time (s), steps, step-level validations, scorings and checkpoints
    between epoch ends."""
    from sweep.training.job import fit

    cfg = compose(*overrides)
    metrics = fit(cfg, run_dir)[1]
    steps = run_folder.read_table(run_dir, run_folder.STEPS_FILE)
    scorings = run_folder.read_table(run_dir, run_folder.INTEGRATION_FILE)
    ends = pd.read_csv(run_dir / run_folder.HISTORY_FILE)[metric_names.GLOBAL_STEP]
    every = cfg.trainer.checkpoint_every_n_steps
    return {
        "train_s": metrics[metric_names.TRAIN_TIME],
        "steps": int(ends.iloc[-1]),
        "validations": 0 if steps is None else len(steps),
        "scorings": len(scorings) - 1,  # the last epoch's end is scored in every setting
        "checkpoints": sum(
            1
            for s in range(1, ends.iloc[-1] + 1)
            if every and s % every == 0 and s not in set(ends)
        ),
        "cells_validation": metrics.get(metric_names.STEP_VALIDATION_CELLS, 0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells-per-dataset", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--validate-every", type=int, default=20)
    parser.add_argument("--score-every", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)

    data = [f"dataset.synthetic.cells_per_dataset={args.cells_per_dataset}"]
    base = [*data, f"trainer.max_epochs={args.epochs}", "evaluation.epochs=[]"]
    off = {
        "trainer.validate_every_n_steps": 0,
        "evaluation.every_n_steps": 0,
        "trainer.checkpoint_every_n_steps": 0,
    }
    settings = {
        name: [f"{k}={v}" for k, v in (off | changed).items()]
        for name, changed in (
            ("off", {}),
            ("validation", {"trainer.validate_every_n_steps": args.validate_every}),
            ("scoring", {"evaluation.every_n_steps": args.score_every}),
            ("checkpoints", {"trainer.checkpoint_every_n_steps": args.checkpoint_every}),
        )
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print("making the store and compiling scib-metrics' kernels (a first scored run)")
        train(Path(tmp) / "warm-up", *data, "trainer.max_epochs=1", *settings["off"])
        for repeat in range(args.repeats):
            for name, overrides in settings.items():
                row = train(Path(tmp) / f"{name}-{repeat}", *base, *overrides)
                rows.append({"setting": name, "repeat": repeat + 1, **row})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    text = report(table, args)
    print(text)
    if args.write:
        write_section("step_evaluation", text)


def report(table: pd.DataFrame, args) -> str:
    """The markdown section: every run, each event's cost and the overhead at the defaults."""
    off = table[table["setting"] == "off"]
    step_s = statistics.median(off["train_s"] / off["steps"])
    off_s = statistics.median(off["train_s"])
    costs = {}
    for name, events, default in (
        ("validation", "validations", DEFAULT_VALIDATE),
        ("scoring", "scorings", DEFAULT_SCORE),
        ("checkpoints", "checkpoints", EXAMPLE_CHECKPOINT),
    ):
        runs = table[table["setting"] == name]
        extra = statistics.median(runs["train_s"]) - off_s
        per_event = extra / statistics.median(runs[events])
        costs[name] = (per_event, extra / off_s, per_event / (default * step_s))
    cells = int(table["cells_validation"].max())
    lines = [
        f"Machine: {machine()}. Demo data with {args.cells_per_dataset:,} cells per data set "
        f"(6 data sets), {args.epochs} epochs of {int(off['steps'].median()) // args.epochs} "
        f"steps (batch 1024), {args.repeats} alternating repeats; training time in s "
        "(validation at epoch ends and the last epoch's scoring excluded):",
        "",
        "| run | setting | steps | validations | scorings | checkpoints | training s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r.repeat} | {r.setting} | {r.steps} | {r.validations} | {r.scorings} | "
            f"{r.checkpoints} | {r.train_s:.1f} |"
            for r in table.itertuples()
        ),
        "",
        f"Median time per training step (off): {step_s * 1000:.0f} ms.",
        "",
        "| what | every (here) | overhead here | cost of one | every (default) | "
        "overhead at the default |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| validation loss, {cells:,} cells | {args.validate_every} steps | "
        f"{costs['validation'][1]:+.1%} | {costs['validation'][0]:.2f} s | {DEFAULT_VALIDATE:,} "
        f"steps | {costs['validation'][2]:.2%} |",
        f"| integration scoring, 1,000 cells | {args.score_every} steps | "
        f"{costs['scoring'][1]:+.1%} | {costs['scoring'][0]:.2f} s | {DEFAULT_SCORE:,} steps | "
        f"{costs['scoring'][2]:.2%} |",
        f"| checkpoint in the middle of an epoch | {args.checkpoint_every} steps | "
        f"{costs['checkpoints'][1]:+.1%} | {costs['checkpoints'][0]:.2f} s | "
        f"{EXAMPLE_CHECKPOINT:,} steps (off by default) | {costs['checkpoints'][2]:.2%} |",
        "",
        "Reproduce: `python -m benchmarks.step_evaluation "
        f"--cells-per-dataset {args.cells_per_dataset} --epochs {args.epochs} "
        f"--validate-every {args.validate_every} --score-every {args.score_every} "
        f"--checkpoint-every {args.checkpoint_every} --repeats {args.repeats}`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
