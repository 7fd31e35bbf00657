"""The GPU benchmark: ``python -m benchmarks.gpu [options]`` (from the checkout; ``--device cpu
--small`` runs it on the CPU in well under a minute, as the tests do).

For each model (``czi_128``, ``hidden_512``) x gene count (3241, 8000) x precision (Lightning's
``32-true``, ``bf16-mixed``), batch 1024, on a seed-shaped store per gene count
(:func:`benchmarks.loader.make_store`, 1000-1500 non-zeros per cell) written under ``--store-dir``
and deleted after:

1. model-only: scvi-tools' training step (its ``TrainingPlan``'s optimizer, KL weight and module
   loss, backward, optimizer step) on batches read from the store once and already dense on the
   device; ``--steps`` timed steps after ``--warmup`` steps, synchronised with the device; bf16
   as Lightning's ``bf16-mixed`` does it (``torch.autocast`` around the forward pass);
2. end to end, warm store: real ``model.train`` through ``StoreDataModule`` (``--workers`` loader
   workers) with the store's files read once first, ``--epochs`` epochs; cells/s is the best
   epoch (``sweep.training.epoch_stats.EpochStats``);
3. end to end, cold store: the same with the store's files evicted from the page cache just
   before training (fsync + ``posix_fadvise(DONTNEED)`` on those files only, checked with
   ``mincore``); only the first epoch reads from disk, so its cells/s is the first epoch's, to
   compare with the warm row's first epoch. Where the files stay cached (tmpfs, ...) the row
   says "cold not possible" and why.

4. batch injection: ``trainer.batch_injection`` one_hot vs lookup (sweep.model.batch_injection)
   at 20 and 11,108 batch categories, czi_128 on the largest gene count, model-only steps on
   synthetic dense batches, the four settings alternated in one process
   (:func:`benchmarks.batch_injection.alternate`); ms/step and the ratio of the most to the
   fewest categories per implementation.

Per row: cells/s, the mean GPU utilisation over the timed steps or epochs (``nvidia-smi``
sampled every 200 ms; n/a on the CPU), and the loader's share of the time,
1 - end-to-end cells/s / model-only cells/s at the same model, genes and precision. Each
measurement runs in a fresh process (``--in-process``: all in this one, quicker for tests).
``--write`` puts the table into ``docs/benchmarks.md`` (section ``gpu:<label>``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import batch_injection
from benchmarks.loader import make_store
from benchmarks.page_cache import evict, resident_fraction, warm_up
from benchmarks.record import (
    DOC,
    REPO_ROOT,
    machine,
    measure_in_subprocess,
    serve_measurement,
    write_section,
)
from benchmarks.stores import store_datamodule, store_shape

MODULE = "benchmarks.gpu"
MODELS = ["czi_128", "hidden_512"]
PRECISIONS = ["32-true", "bf16-mixed"]
#: what --small changes: the stores (shards x cells, non-zeros per cell), genes, batch, steps
SIZES = {
    "full": {
        "shards": 8,
        "shard_size": 10_000,
        "batch_size": 1024,
        "nnz_per_cell": (1000, 1500),
        "genes": [3241, 8000],
        "steps": 200,
        "warmup": 20,
        "epochs": 3,
        "injection_categories": list(batch_injection.CATEGORIES),
        "injection_rounds": 20,
    },
    "small": {
        "shards": 2,
        "shard_size": 64,
        "batch_size": 32,
        "nnz_per_cell": (20, 30),
        "genes": [64, 160],
        "steps": 3,
        "warmup": 1,
        "epochs": 1,
        "injection_categories": [4, 300],
        "injection_rounds": 2,
    },
}
WARM, COLD, MODEL_ONLY = "end-to-end, warm store", "end-to-end, cold store", "model-only"
INJECTION = "batch injection"


# --------------------------------------------------------------------------------------------
# the GPU's utilisation


class GpuUtilisation:
    """``nvidia-smi`` utilisation.gpu (%) of the device sampled every 200 ms between
    :meth:`start` and :meth:`stop` (the mean, or None without CUDA or ``nvidia-smi``)."""

    def __init__(self, device: str):
        self.command = None
        if device == "cuda" and shutil.which("nvidia-smi"):
            gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
            self.command = [
                "nvidia-smi",
                f"--id={gpu}",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ]
        self.samples: list[float] = []
        self.process = None

    def start(self) -> None:
        if self.command is None:
            return
        self.samples = []
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self.reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def stop(self) -> float | None:
        if self.process is None:
            return None
        self.process.terminate()
        self.process.wait()
        self.reader.join()  # every line nvidia-smi printed is counted
        self.process = None
        return sum(self.samples) / len(self.samples) if self.samples else None


# --------------------------------------------------------------------------------------------
# measurements (each returns a dict row)


@functools.cache
def _configs(model: str):
    """The composed ``model`` and ``plan`` configs of ``model=<model>``."""
    from sweep.config.schema import compose_train

    cfg = compose_train([f"model={model}"])
    return cfg.model, cfg.plan


def _scvi(dm, model_cfg):
    import scvi

    from sweep.model.build import build_scvi

    scvi.settings.seed = 0
    return build_scvi(dm.manifest.genes, dm.encoding.batch_categories, {}, model_cfg)


def _row(kind: str, model: str, store: Path, precision: str, **fields) -> dict:
    from sweep.data.store import read_manifest

    genes = read_manifest(store).n_genes
    return {
        "what": f"{model}, {genes} genes, {precision}, {kind}",
        "kind": kind,
        "model": model,
        "genes": genes,
        "precision": precision,
        **fields,
    }


def model_only_rate(
    store: Path, model: str, precision: str, device: str, batch_size: int, steps: int, warmup: int
) -> dict:
    """Training steps/s x cells per batch on up to 16 distinct batches of ``batch_size`` cells,
    dense (cells, genes) float32 on ``device``, cycled; ``warmup`` untimed steps first."""
    import torch
    from omegaconf import OmegaConf
    from scvi import REGISTRY_KEYS
    from scvi.train import TrainingPlan

    from sweep.data.densify import densify

    model_cfg, plan_cfg = _configs(model)
    dm = store_datamodule(store, 0, batch_size)
    batches = [
        {k: v.to(device) for k, v in densify(b, dm.n_vars).items()}
        for b in itertools.islice(dm.train_dataloader(), 16)
    ]
    plan = TrainingPlan(_scvi(dm, model_cfg).module, **OmegaConf.to_container(plan_cfg))
    plan.to(device)
    plan.train()
    optimizer = plan.configure_optimizers()["optimizer"]
    bf16 = precision.startswith("bf16")
    utilisation = GpuUtilisation(device)

    def step(batch: dict) -> None:
        """As TrainingPlan.training_step under Lightning's automatic optimisation."""
        if "kl_weight" in plan.loss_kwargs:
            plan.loss_kwargs["kl_weight"] = plan.kl_weight
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            _, _, loss = plan.forward(batch, loss_kwargs=plan.loss_kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.loss.backward()
        optimizer.step()

    def synchronise() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for batch in itertools.islice(itertools.cycle(batches), warmup):
        step(batch)
    cells = 0
    synchronise()
    utilisation.start()
    start = time.perf_counter()
    for batch in itertools.islice(itertools.cycle(batches), steps):
        step(batch)
        cells += batch[REGISTRY_KEYS.X_KEY].shape[0]
    synchronise()
    elapsed = time.perf_counter() - start
    return _row(
        MODEL_ONLY,
        model,
        store,
        precision,
        cells_per_s=cells / elapsed,
        gpu_util=utilisation.stop(),
        workers=None,
    )


def end_to_end_rate(
    store: Path,
    model: str,
    precision: str,
    device: str,
    batch_size: int,
    epochs: int,
    workers: int,
    cold: bool,
) -> dict:
    """``model.train`` for ``epochs`` epochs fed by this loader (no validation); cells/s is the
    best epoch on a warm store, the first (the only one read from disk) on a cold store."""
    from lightning.pytorch import Callback
    from omegaconf import OmegaConf

    from sweep.training.epoch_stats import EpochStats

    model_cfg, plan_cfg = _configs(model)
    dm = store_datamodule(store, workers, batch_size)
    scvi_model = _scvi(dm, model_cfg)
    utilisation = GpuUtilisation(device)

    class Sampling(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            utilisation.start()

        def on_train_end(self, trainer, pl_module) -> None:
            self.mean = utilisation.stop()

    if cold:
        reason = evict(store)
        if reason:
            raise RuntimeError(f"the store could not be made cold: {reason}")
    else:
        warm_up(store)
    resident = resident_fraction(store)
    stats, sampling = EpochStats(), Sampling()
    scvi_model.train(
        datamodule=dm,
        max_epochs=epochs,
        accelerator=device,
        devices=1,
        precision=precision,
        plan_kwargs=OmegaConf.to_container(plan_cfg),
        check_val_every_n_epoch=None,
        callbacks=[stats, sampling],
        enable_progress_bar=False,
        logger=False,
        early_stopping=False,
    )
    rates = stats.epoch_rates
    return _row(
        COLD if cold else WARM,
        model,
        store,
        precision,
        cells_per_s=rates[0] if cold else max(rates),
        first_epoch_cells_per_s=rates[0],
        gpu_util=sampling.mean,
        workers=dm.num_workers,
        resident_at_start=resident,
    )


def injection_rates(
    device: str,
    precision: str,
    genes: int,
    batch_size: int,
    categories: list[int],
    rounds: int,
    steps: int,
    warmup: int,
) -> dict:
    """czi_128 model-only steps with each ``trainer.batch_injection`` at each of ``categories``
    batch categories, alternated (benchmarks.batch_injection); the row's cells/s is the lookup's
    at the most categories, its ``settings`` the per-setting summary."""
    settings = [
        batch_injection.make_setting(i, n, genes, batch_size, device, precision)
        for i in batch_injection.IMPLEMENTATIONS
        for n in categories
    ]
    batch_injection.alternate(settings, rounds, steps, warmup)
    summary = batch_injection.summary(settings)
    lookup = next(
        r
        for r in summary
        if r["implementation"] == batch_injection.LOOKUP and r["categories"] == max(categories)
    )
    return {
        "what": f"{INJECTION}, czi_128, {genes} genes, {precision}",
        "kind": INJECTION,
        "genes": genes,
        "precision": precision,
        "cells_per_s": 1e3 * batch_size / lookup["ms"],
        "settings": summary,
    }


MEASURES = {
    "model_only": model_only_rate,
    "end_to_end": end_to_end_rate,
    "batch_injection": injection_rates,
}


# --------------------------------------------------------------------------------------------
# orchestration: each measurement in its own process, then one table


def measure(args: argparse.Namespace, kind: str, **kwargs) -> dict:
    """One measurement, in a fresh process unless ``--in-process``."""
    if not args.in_process:
        return measure_in_subprocess(MODULE, kind, **kwargs)
    row = MEASURES[kind](**kwargs)
    print(f"  {row['what']:<60} {row['cells_per_s']:>10,.0f} cells/s", flush=True)
    gc.collect()  # the trainer's loader workers exit before the next measurement
    return row


def run_gpu_bench(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Every row, and the shape of each store measured."""
    rows, shapes = [], []
    common = {"device": args.device, "batch_size": args.batch_size}
    for genes in args.genes:
        store = args.store_dir / f"store_{genes}"
        make_store(
            store,
            n_shards=args.shards,
            shard_size=args.shard_size,
            n_genes=genes,
            nnz_per_cell=args.nnz_per_cell,
        )
        shapes.append(store_shape(store))
        cold_reason = evict(store)
        try:
            for model, precision in itertools.product(args.models, args.precisions):
                this = {"store": store, "model": model, "precision": precision, **common}
                rows.append(
                    measure(args, "model_only", steps=args.steps, warmup=args.warmup, **this)
                )
                for cold in (False, True):
                    if cold and cold_reason:
                        rows.append(
                            _row(COLD, model, store, precision, cells_per_s=None, note=cold_reason)
                        )
                        continue
                    rows.append(
                        measure(
                            args,
                            "end_to_end",
                            epochs=args.epochs,
                            workers=args.workers,
                            cold=cold,
                            **this,
                        )
                    )
        finally:
            shutil.rmtree(store)
    return rows, shapes


def run_injection_bench(args: argparse.Namespace) -> list[dict]:
    """One batch-injection row per precision, at the largest gene count."""
    return [
        measure(
            args,
            "batch_injection",
            device=args.device,
            precision=precision,
            genes=max(args.genes),
            batch_size=args.batch_size,
            categories=args.injection_categories,
            rounds=args.injection_rounds,
            steps=max(1, args.steps // args.injection_rounds),
            warmup=args.warmup,
        )
        for precision in args.precisions
    ]


def injection_table(rows: list[dict]) -> list[str]:
    """The batch-injection rows as markdown table lines (one line per setting)."""
    lines = [
        "| batch injection | categories | precision | ms/step, median | spread (rounds' min-max) "
        "| / fewest categories | rounds' ratios, median (min-max) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        for s in row["settings"]:
            median, low, high = s["paired"]
            lines.append(
                f"| {s['implementation']} | {s['categories']:,} | {row['precision']} | "
                f"{s['ms']:,.1f} | {s['ms_min']:,.1f}-{s['ms_max']:,.1f} | {s['ratio']:.3f}x | "
                f"{median:.3f}x ({low:.3f}-{high:.3f}) |"
            )
    return lines


def loader_share(row: dict, rows: list[dict]) -> float | None:
    """1 - ``row``'s cells/s / the model-only cells/s at its model, genes and precision (None
    for model-only rows, unmeasured rows, or without a model-only row to compare with)."""
    if row["kind"] == MODEL_ONLY or not row.get("cells_per_s"):
        return None
    ceiling = next(
        (
            r["cells_per_s"]
            for r in rows
            if r["kind"] == MODEL_ONLY
            and (r["model"], r["genes"], r["precision"])
            == (row["model"], row["genes"], row["precision"])
        ),
        None,
    )
    return 1 - row["cells_per_s"] / ceiling if ceiling else None


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, fmt)


def table(rows: list[dict]) -> list[str]:
    """The rows as markdown table lines."""
    lines = [
        "| model | genes | precision | measurement | cells/s | first epoch cells/s "
        "| store cached at start | GPU util. (%) | loader share | loader workers |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        measured = r.get("cells_per_s")
        rate = f"{measured:,.0f}" if measured else f"cold not possible: {r.get('note', '?')}"
        share = loader_share(r, rows)
        lines.append(
            f"| {r['model']} | {r['genes']:,} | {r['precision']} | {r['kind']} | {rate} | "
            f"{_number(r.get('first_epoch_cells_per_s'), ',.0f')} | "
            f"{_number(r.get('resident_at_start'), '.0%')} | "
            f"{_number(r.get('gpu_util'), '.0f')} | {_number(share, '.0%')} | "
            f"{'' if r.get('workers') is None else r['workers']} |"
        )
    return lines


def markdown(
    rows: list[dict],
    shapes: list[str],
    args: argparse.Namespace,
    command: str,
    injection: list[dict] | None = None,
) -> str:
    """The section for the doc: what ran where, the table, how to read it, and the
    batch-injection table when ``injection`` holds rows."""
    injection_part = []
    if injection:
        rounds, steps = args.injection_rounds, max(1, args.steps // args.injection_rounds)
        injection_part = [
            "",
            f"Batch injection (`trainer.batch_injection`): czi_128, {max(args.genes):,} genes, "
            f"batch {args.batch_size}, model-only steps on synthetic batches, {rounds} rounds x "
            f"{steps} step{'s' * (steps != 1)} of each setting after {args.warmup}, alternated "
            "in one process:",
            "",
            *injection_table(injection),
        ]
    small_note = []
    if args.small:
        small_note = ["- --small: a check that every measurement runs, too short to compare"]
    return "\n".join(
        [
            f"### GPU benchmark, {args.label} ({time.strftime('%Y-%m-%d')})",
            "",
            f"- machine: {machine()}; device: {device_name(args.device)}",
            *(f"- store: {shape}" for shape in shapes),
            f"- batch {args.batch_size}; model-only: {args.steps} steps after {args.warmup}; "
            f"end to end: {args.epochs} epoch{'s' * (args.epochs != 1)}, no validation",
            f"- command: `{command}`",
            *small_note,
            "",
            *table(rows),
            "",
            "cells/s: model-only, timed steps; warm store, the best epoch; cold store, the first "
            "epoch (the only one read from disk: compare it with the warm row's first epoch). "
            "Store cached at start: the share of the store's bytes in the page cache as training "
            "starts (mincore). "
            "GPU util.: mean nvidia-smi utilization.gpu over the timed steps or the training. "
            "Loader share: 1 - end-to-end cells/s / model-only cells/s at the same model, genes "
            "and precision, the part of the training time the model does not account for "
            "(loading, host-to-device copies, densifying, Lightning's loop).",
            *injection_part,
        ]
    )


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "CPU"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if serve_measurement(argv, MEASURES):
        return
    from sweep.data.datamodule import default_num_workers

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (a CPU run, the tests)")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--genes", type=int, nargs="+", help="default 3241 8000 (64 160 small)")
    parser.add_argument("--shards", type=int, help="shards per store (default 8; 2 small)")
    parser.add_argument("--steps", type=int, help="model-only timed steps (default 200; 3 small)")
    parser.add_argument("--epochs", type=int, help="end-to-end epochs (default 3; 1 small)")
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument("--batch-size", type=int, help="default 1024 (32 small)")
    parser.add_argument(
        "--injection-categories", type=int, nargs="+", help="default 20 11108 (4 300 small)"
    )
    parser.add_argument("--injection-rounds", type=int, help="default 20 (2 small)")
    parser.add_argument("--workers", type=int, default=default_num_workers(), help="loader workers")
    parser.add_argument("--store-dir", type=Path, help="where the stores go (default: in the repo)")
    parser.add_argument("--in-process", action="store_true", help="no fresh process per row")
    parser.add_argument("--label", help="section name in the doc (default: the device's name)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--doc", type=Path, default=DOC, help="the doc --write updates")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here: use --device cpu (with --small for a quick run)")
    for key, value in SIZES["small" if args.small else "full"].items():
        if getattr(args, key, None) is None:  # not an option, or not given
            setattr(args, key, value)
    args.label = args.label or device_name(args.device) + (" small" if args.small else "")
    own_dir = args.store_dir is None
    args.store_dir = (args.store_dir or REPO_ROOT / ".gpu-bench-stores").resolve()
    args.store_dir.mkdir(parents=True, exist_ok=True)
    try:
        rows, shapes = run_gpu_bench(args)
    finally:
        if own_dir:
            shutil.rmtree(args.store_dir, ignore_errors=True)
    injection = run_injection_bench(args)
    text = markdown(rows, shapes, args, f"python -m {MODULE} " + " ".join(argv), injection)
    print("\n" + text)
    if args.write:
        write_section(f"gpu:{args.label.lower().replace(' ', '-')}", text, doc=args.doc)
        print(f"\nwrote {args.doc}")


if __name__ == "__main__":
    main()
