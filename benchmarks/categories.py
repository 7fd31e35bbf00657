"""An epoch at thousands of batch categories vs a few: ``python -m benchmarks.categories``.

Issue 21's target: an epoch at the Census's thousands of batch categories should take at most
1.05x the time of the same epoch at a few categories (it took ~1.2x). This benchmark trains the
real thing: the project's datamodule and loader over a store (sweep.data), scvi-tools' SCVI
built by sweep.model.build (``model=czi_128``), ``plan=czi``, scvi-tools' ``SCVI.train`` on a
Lightning Trainer with the job's callbacks (sweep.training.job.train), 8,000 genes.

The cells and genes are the same at both category counts: the first ``--cells`` cells of a
prepared store (``--store``; without it, Census-shaped synthetic sources of 8,000 genes are
generated and prepared with all their genes into ``--work``) are copied into a store whose
``donor_id`` is recoded into ``--categories`` groups (cell ``i`` in group ``i % categories``
after a seeded shuffle; ~3 cells a group at 20,000 cells and 7,000 groups). The batch is then

- **many**: ``batch.batch_keys=[donor_id]``: ~``--categories`` categories (those that keep a
  cell after data=min_genes_300);
- **few**: ``batch.batch_keys=[assay,suspension_type]``: the 8 protocols of the Census shape;

both without covariates, the default data filter and split (the same training cells), each with
``trainer.batch_injection`` lookup (the default) and one_hot: four jobs built once in this one
process (sweep.training.parts.build_parts: logger=none, evaluation=none, no checkpoints, no
step-level validation). One untimed epoch of each, then ``--rounds`` rounds of one epoch of
each in turn (a ``SCVI.train(max_epochs=1)`` call each: the model goes on training), the order
reversed every other round, so that the machine's drift falls on all of them alike.

Per setting: the epoch's training time (EpochStats' ``epoch_time_s``: the training loop from
the epoch's start to its end, loading included, validation excluded) and the median step time
within it after its first ``--skip-steps`` steps (the steady state), split into forward,
backward, optimizer and the wait for the next batch (:func:`step_times`). Per implementation,
the ratio many / few: of the medians over rounds, and the median (min-max) of each round's own
ratio. The rounds' ratios are the figure to read on a busy machine; ``--threads 1`` gives the
narrowest spread there (torch's 2 threads beside a loader worker on 2 busy cores wait on each
other, above all in the optimizer's many small parallel ops).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.record import machine
from sweep.model.batch_injection import LOOKUP, ONE_HOT

MODULE = "benchmarks.categories"
IMPLEMENTATIONS = (LOOKUP, ONE_HOT)
#: the parts of a training step timed (:func:`step_times`)
PHASES = ("forward", "backward", "optimizer", "before")
#: the issue's target: an epoch at the most categories / the epoch at the fewest, lookup
TARGET_RATIO = 1.05
#: the batch definitions compared: name -> batch.batch_keys
BATCH_KEYS = {"many": ["donor_id"], "few": ["assay", "suspension_type"]}
#: the generated cells without --store: Census-shaped, 8,000 genes (~25,000 cells)
SYNTHETIC = dict(
    shape="census",
    n_datasets=100,
    cells_per_dataset=250,
    donors_per_dataset=10,
    n_genes=8000,
    seed=0,
)


def census_store(work: Path) -> Path:
    """Census-shaped sources (:data:`SYNTHETIC`) generated and prepared with all their genes
    (a gene list, no HVG selection) into ``work/store``; reused when it is there."""
    from sweep.config.schema import SyntheticConfig
    from sweep.data.prepare import prepare_store
    from sweep.data.synthetic import generate
    from sweep.data.synthetic.world import draw_world

    store = work / "store"
    if (store / "manifest.json").is_file():
        return store
    cfg = SyntheticConfig(output=str(work / "sources"), **SYNTHETIC)
    generate(cfg)
    genes = work / "genes.tsv"
    genes.write_text("\n".join(draw_world(cfg).var.index) + "\n")
    prepare_store(
        {
            "source": str(work / "sources" / "*.h5ad"),
            "output": str(store),
            "genes": str(genes),
            "workers": 2,
            "progress": False,
        }
    )
    return store


def relabelled_store(source: Path, out: Path, n_cells: int, categories: int, seed: int) -> Path:
    """The first ``n_cells`` cells of the store ``source`` (its genes, counts and obs) written to
    ``out`` in shards of the source's size, ``donor_id`` recoded into ``categories`` groups:
    a seeded shuffle of the cells, cell ``i`` of it in group ``i % categories``."""
    import pandas as pd
    import scipy.sparse as sp

    from sweep.data.store import (
        CODED_COLUMNS,
        IS_PRIMARY,
        N_GENES_ALL,
        Shard,
        StoreWriter,
        read_manifest,
    )

    manifest = read_manifest(source)
    n_cells = min(n_cells, manifest.n_cells)
    if out.exists():  # written by an earlier run of this benchmark: written again
        shutil.rmtree(out)
    groups = np.empty(n_cells, dtype=np.int32)
    groups[np.random.default_rng(seed).permutation(n_cells)] = np.arange(n_cells) % categories
    writer = StoreWriter(out, manifest.genes, manifest.gene_names)
    entries, first = [], 0
    for index, entry in enumerate(manifest.shards):
        if first >= n_cells:
            break
        shard = Shard(source / entry["file"])
        stop = min(shard.n_cells, n_cells - first)
        values, indices, indptr = shard.read_rows(0, stop)
        X = sp.csr_matrix((values, indices, indptr), shape=(stop, manifest.n_genes))
        obs = pd.DataFrame(
            {c: shard.obs_column(c)[:stop] for c in (*CODED_COLUMNS, N_GENES_ALL, IS_PRIMARY)},
            index=[f"cell{first + i}" for i in range(stop)],
        )
        obs["donor_id"] = groups[first : first + stop]
        entries.append(writer.write_shard(index, X, obs))
        shard.close()
        first += stop
    vocab = dict(manifest.vocab) | {"donor_id": [f"group{i}" for i in range(categories)]}
    writer.finish(entries, vocab, manifest.shard_size)
    return out


def step_times():
    """A Lightning callback for the job's progress slot: ``.times``, the seconds of each
    training step of the last epoch (batch start to batch end), and ``.phases``, each step's
    seconds per :data:`PHASES`: forward (to ``on_before_backward``), backward (to
    ``on_after_backward``), optimizer (Adam, ``zero_grad`` and the step's logging, to the
    batch's end) and before (from the previous batch's end: the next batch fetched from the
    loader, moved and densified, and the callbacks between steps)."""
    from lightning.pytorch import Callback

    class StepTimes(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.phases: list[tuple[float, ...]] = []
            self._marks: list[float] = []
            self._end = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.times, self.phases, self._end = [], [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._marks = [time.perf_counter()]

        def on_before_backward(self, trainer, pl_module, loss) -> None:
            self._marks.append(time.perf_counter())

        def on_after_backward(self, trainer, pl_module) -> None:
            self._marks.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            start, forward_end, backward_end = self._marks
            end = time.perf_counter()
            before = start - self._end if self._end is not None else float("nan")
            self.times.append(end - start)
            self.phases.append(
                (forward_end - start, backward_end - forward_end, end - backward_end, before)
            )
            self._end = end

    return StepTimes()


@dataclass
class Setting:
    """One job under test: its batch definition and implementation, its built parts and config,
    and per timed round the epoch's training time and its median steady step (s)."""

    batch: str
    implementation: str
    cfg: object
    parts: object
    steps: object
    epochs: list[float] = field(default_factory=list)
    step_medians: list[float] = field(default_factory=list)
    phase_medians: dict = field(default_factory=lambda: {p: [] for p in PHASES})

    @property
    def n_batch(self) -> int:
        return self.parts.datamodule.n_batch

    def epoch(self, skip_steps: int) -> tuple[float, float, dict]:
        """Train one more epoch; its training time, and its median step and phases after
        ``skip_steps``."""
        from sweep.training.job import train

        before = self.parts.epoch_stats.train_time_s
        train(self.parts, self.cfg, None)
        steps = self.steps.times[skip_steps:] or self.steps.times
        phases = self.steps.phases[skip_steps:] or self.steps.phases
        by_phase = {
            p: statistics.median(v for v in values if v == v)
            for p, values in zip(PHASES, zip(*phases, strict=True), strict=True)
        }
        return self.parts.epoch_stats.train_time_s - before, statistics.median(steps), by_phase


def make_setting(store: Path, batch: str, implementation: str, run_dir: Path, extra: list[str]):
    """The job of ``batch`` (a :data:`BATCH_KEYS` name) and ``implementation`` on ``store``,
    built as a training job builds it."""
    from sweep.config.schema import compose_train, validate
    from sweep.training.parts import build_parts

    keys = ",".join(BATCH_KEYS[batch])
    cfg = compose_train(
        [
            "dataset=prepared",
            f"dataset.path={store}",
            f"batch.batch_keys=[{keys}]",
            "batch.covariate_keys=[]",
            f"trainer.batch_injection={implementation}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.checkpoint_every_n_epochs=0",
            "trainer.validate_every_n_steps=0",
            "evaluation=none",
            "logger=none",
            "save_model=false",
            *extra,
        ]
    )
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = build_parts(cfg, run_dir)
    parts.progress = step_times()  # the progress slot: off with enable_progress_bar=false
    return Setting(batch, implementation, cfg, parts, parts.progress)


def alternate(settings: list[Setting], rounds: int, skip_steps: int) -> None:
    """One untimed epoch of each setting, then ``rounds`` rounds of one epoch of each in turn,
    the order reversed every other round; progress on stdout."""
    for s in settings:
        seconds, _, _ = s.epoch(skip_steps)
        print(f"warm-up  {s.implementation:>7} {s.n_batch:>6,} categories {seconds:6.1f} s")
    for r in range(rounds):
        for s in settings if r % 2 == 0 else settings[::-1]:
            seconds, step, phases = s.epoch(skip_steps)
            s.epochs.append(seconds)
            s.step_medians.append(step)
            for phase, value in phases.items():
                s.phase_medians[phase].append(value)
            split = ", ".join(f"{p} {1e3 * v:.0f}" for p, v in phases.items())
            print(
                f"round {r + 1:>2} {s.implementation:>7} {s.n_batch:>6,} categories "
                f"{seconds:6.1f} s, step {1e3 * step:5.0f} ms ({split})",
                flush=True,
            )


def ratios(many: list[float], few: list[float]) -> dict:
    """Many / few: the ratio of the medians, and the rounds' own ratios' median, min and max."""
    paired = [a / b for a, b in zip(many, few, strict=True)]
    return {
        "of_medians": statistics.median(many) / statistics.median(few),
        "paired": statistics.median(paired),
        "min": min(paired),
        "max": max(paired),
    }


def summary(settings: list[Setting]) -> list[dict]:
    """Per implementation: both settings' medians and spreads, and the many / few ratios of the
    epoch and of the steady step."""
    rows = []
    for implementation in IMPLEMENTATIONS:
        by = {s.batch: s for s in settings if s.implementation == implementation}
        if set(by) != set(BATCH_KEYS):
            continue
        many, few = by["many"], by["few"]
        rows.append(
            {
                "implementation": implementation,
                "categories": (many.n_batch, few.n_batch),
                "epoch": {
                    b: (statistics.median(s.epochs), min(s.epochs), max(s.epochs))
                    for b, s in by.items()
                },
                "step": {b: statistics.median(s.step_medians) for b, s in by.items()},
                "phases": {
                    b: {p: statistics.median(v) for p, v in s.phase_medians.items()}
                    for b, s in by.items()
                },
                "epoch_ratio": ratios(many.epochs, few.epochs),
                "step_ratio": ratios(many.step_medians, few.step_medians),
            }
        )
    return rows


def markdown(rows: list[dict], info: dict, args: argparse.Namespace, command: str) -> str:
    """What ran, and the table of epochs and ratios."""
    lines = [
        f"### Epoch time at {info['many']:,} vs {info['few']} batch categories "
        f"({time.strftime('%Y-%m-%d')})",
        "",
        f"- machine: {machine()}; shared with other work while it ran (load average "
        f"{info['load'][0]:.1f} before, {info['load'][1]:.1f} after)",
        f"- store: the first {info['cells']:,} cells of `{info['source']}` ({info['genes']:,} "
        f"genes), donor_id recoded into {args.categories:,} groups; "
        f"{info['train']:,} training cells an epoch (data=min_genes_300), batch "
        f"{info['batch_size']:,}, {info['steps']} steps",
        f"- model=czi_128, plan=czi, loader=local ({info['workers']}), trainer=cpu fp32, "
        f"{info['threads']} torch thread{'s' * (info['threads'] != 1)}; one untimed epoch of "
        f"each setting, then {args.rounds} round{'s' * (args.rounds != 1)} of one epoch of each, "
        "alternated in one process (order reversed every other round)",
        f"- command: `{command}` ({info['wall'] / 60:.0f} min)",
        "",
        "| batch injection | categories | epoch s, median (min-max) | steady step ms, median "
        "| epoch many / few: of medians | rounds' ratios, median (min-max) "
        "| step many / few: rounds' median (min-max) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        e, s = r["epoch_ratio"], r["step_ratio"]
        for batch, n in zip(("many", "few"), r["categories"], strict=True):
            med, lo, hi = r["epoch"][batch]
            ratio_cells = (
                f"**{e['of_medians']:.3f}x** | {e['paired']:.3f}x ({e['min']:.3f}-{e['max']:.3f}) "
                f"| {s['paired']:.3f}x ({s['min']:.3f}-{s['max']:.3f})"
                if batch == "many"
                else " | | "
            )
            lines.append(
                f"| {r['implementation']} | {n:,} | {med:.1f} ({lo:.1f}-{hi:.1f}) | "
                f"{1e3 * r['step'][batch]:,.0f} | {ratio_cells} |"
            )
    lines += [
        "",
        f"The steady step by phase (ms, the median over rounds of each epoch's median after its "
        f"first {args.skip_steps} steps): forward to `on_before_backward`, backward to "
        "`on_after_backward`, optimizer (Adam, `zero_grad`, the step's logging) to the batch's "
        "end, and before it: the next batch from the loader, moved and densified.",
        "",
        "| batch injection | categories | " + " | ".join(PHASES) + " |",
        "| --- | ---: |" + " ---: |" * len(PHASES),
    ]
    for r in rows:
        for batch, n in zip(("many", "few"), r["categories"], strict=True):
            cells = " | ".join(f"{1e3 * r['phases'][batch][p]:,.0f}" for p in PHASES)
            lines.append(f"| {r['implementation']} | {n:,} | {cells} |")
    lookup = next((r for r in rows if r["implementation"] == "lookup"), None)
    if lookup:
        paired = lookup["epoch_ratio"]["paired"]
        verdict = "within" if paired <= TARGET_RATIO else "above"
        lines += [
            "",
            f"lookup (the default): an epoch at {lookup['categories'][0]:,} categories takes "
            f"{paired:.3f}x the epoch at {lookup['categories'][1]} (rounds' median), {verdict} "
            f"the issue's {TARGET_RATIO:.2f}x.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, help="a prepared store (default: generated)")
    parser.add_argument("--work", type=Path, help="folder of the stores (default: a temp one)")
    parser.add_argument("--cells", type=int, default=20000, help="cells of the epoch's store")
    parser.add_argument("--categories", type=int, default=7000, help="donor_id groups")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-steps", type=int, default=3, help="steps left out of the steady")
    parser.add_argument("--seed", type=int, default=0, help="seed of the groups")
    parser.add_argument(
        "--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS
    )
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the markdown into this file")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides (key=value)")
    args = parser.parse_args(argv)
    import os

    import torch

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")  # Lightning's srun, eval-mode and pytree notes, each epoch
    for name in ("lightning", "lightning.pytorch", "scvi", "sweep"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load = time.perf_counter(), os.getloadavg()[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="categories-"))
    source = args.store or census_store(work / "census")
    store = relabelled_store(
        source,
        work / f"relabelled-{args.cells}-{args.categories}",
        args.cells,
        args.categories,
        args.seed,
    )
    settings = [
        make_setting(
            store, batch, implementation, work / f"run-{batch}-{implementation}", args.overrides
        )
        for implementation in args.implementations
        for batch in BATCH_KEYS
    ]
    alternate(settings, args.rounds, args.skip_steps)
    dm = settings[0].parts.datamodule
    info = {
        "many": max(s.n_batch for s in settings),
        "few": min(s.n_batch for s in settings),
        "cells": dm.manifest.n_cells,
        "genes": dm.n_vars,
        "source": source,
        "train": dm.n_train,
        "batch_size": settings[0].cfg.loader.batch_size,
        "steps": len(settings[0].steps.times),
        "workers": f"{dm.num_workers} loader worker{'s' * (dm.num_workers != 1)}",
        "threads": torch.get_num_threads(),
        "load": (load, os.getloadavg()[0]),
        "wall": time.perf_counter() - started,
    }
    text = markdown(summary(settings), info, args, " ".join(["python -m", MODULE, *argv]))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
