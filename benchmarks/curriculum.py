"""The Census-shaped curriculum end to end: ``python -m benchmarks.curriculum --work DIR``.

Runs, as a user would, each stage a command of its own in a fresh process:

1. generate: ``python -m sweep.data.synthetic shape=census n_datasets=900 cells_per_dataset=500
   n_genes=8000 donors_per_dataset=10`` (about 416,000 cells, ~8,700 czi_concat categories);
2. prepare: ``scvi-sweep-prepare`` with every one of the 8,000 genes in the generator's order
   (a gene list: no HVG selection to make, so no HVG pass over the cells);
3. train: ``python train.py dataset=prepared trainer.max_epochs=1`` with the default groups
   (evaluation=scib, batch=czi_concat, data=min_genes_300, logger=wandb offline), which writes
   the run folder and its page;
4. page: the run's page again from its folder (``scvi-sweep-report RUN_FOLDER``);
5. multirun: ``python train.py -m ... seed=0,1``, 1 epoch each, with its end-of-sweep report;
6. report: the multirun report again (``scvi-sweep-report SWEEP_FOLDER --out DIR``).

Each stage's output is removed before it runs (``--stages`` picks some; later stages need the
earlier ones' outputs). Per stage: wall time; peak RSS of its process tree, the sum over the
processes alive at once (sampled every 0.2 s from /proc: loader workers share pages with
their parent, so the sum overstates the memory they take together) and of its largest single
process (``ru_maxrss`` from ``wait4``); the cells and batch categories it handled; the load
average around it (the machine may be shared); the disk its output takes. Prints a markdown
table; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.record import REPO_ROOT, machine

MODULE = "benchmarks.curriculum"
BIN = Path(sys.executable).parent
STAGES = ("generate", "prepare", "train", "page", "multirun", "report")
#: batch=czi_concat's columns
CZI_CONCAT = ["dataset_id", "assay", "suspension_type", "donor_id"]


@dataclass
class Stage:
    """One stage's command, the folder it writes (removed before it runs; None: it writes into
    an earlier stage's) and what it did."""

    name: str
    command: list[str]
    output: Path | None
    wall_s: float = 0.0
    tree_peak_mb: float = 0.0
    largest_mb: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    cells: str = ""
    categories: str = ""
    disk_gb: float = 0.0


def _children(pid: int) -> list[int]:
    """``pid``'s live descendants (from /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            found += kids
            todo += kids
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def run_stage(stage: Stage, work: Path, log: Path, interval: float = 0.2) -> None:
    """Run ``stage.command`` in ``work`` (output to ``log``), timing it, sampling its tree's RSS
    and reading its largest process's peak from ``wait4``."""
    if stage.output is not None and stage.output.exists():
        shutil.rmtree(stage.output)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(stage.command, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        peak, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                pids = [process.pid, *_children(process.pid)]
                peak[0] = max(peak[0], sum(_rss_mb(p) for p in pids))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4's ru_maxrss: the largest of the process and of its descendants it waited for
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    stage.wall_s = time.perf_counter() - start
    stage.load = (load, os.getloadavg()[0])
    stage.tree_peak_mb = peak[0]
    stage.largest_mb = usage.ru_maxrss / 1024
    if process.returncode != 0:
        raise RuntimeError(f"{stage.name} failed (exit {process.returncode}): see {log}")
    stage.disk_gb = _disk_gb(stage.output)


def _disk_gb(folder: Path | None) -> float:
    if folder is None or not folder.exists():
        return 0.0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e9


def store_counts(store: Path) -> tuple[int, int]:
    """The store's cells and the czi_concat categories among all of them (no filter)."""
    import numpy as np

    from sweep.data.store import Shard, read_manifest

    manifest = read_manifest(store)
    codes = []
    for entry in manifest.shards:
        shard = Shard(store / entry["file"])
        codes.append(np.stack([shard.obs_column(c) for c in CZI_CONCAT], axis=1))
        shard.close()
    return manifest.n_cells, len(np.unique(np.concatenate(codes), axis=0))


def stages(args: argparse.Namespace) -> dict[str, Stage]:
    """The commands of every stage under ``args.work``."""
    work = args.work
    sources, store, genes = work / "sources", work / "store", work / "genes.tsv"
    synthetic = [
        "shape=census",
        f"n_datasets={args.n_datasets}",
        f"cells_per_dataset={args.cells_per_dataset}",
        f"n_genes={args.n_genes}",
        f"donors_per_dataset={args.donors_per_dataset}",
    ]
    train = [sys.executable, str(REPO_ROOT / "train.py")]
    on_store = [
        "dataset=prepared",
        f"dataset.path={store}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    return {
        "generate": Stage(
            "generate",
            [sys.executable, "-m", "sweep.data.synthetic", f"output={sources}", *synthetic],
            sources,
        ),
        "prepare": Stage(
            "prepare",
            [
                str(BIN / "scvi-sweep-prepare"),
                f"source={sources}/*.h5ad",
                f"output={store}",
                f"genes={genes}",
                "progress=false",
                f"hydra.run.dir={work / 'prepare_hydra'}",
            ],
            store,
        ),
        "train": Stage("train", [*train, *on_store, f"hydra.run.dir={work / 'run'}"], work / "run"),
        "page": Stage("page", [str(BIN / "scvi-sweep-report"), str(work / "run")], None),
        "multirun": Stage(
            "multirun",
            [
                *train,
                "-m",
                *on_store,
                "seed=0,1",
                f"hydra.sweep.dir={work / 'sweep'}",
                f"hydra.callbacks.report.out_root={work / 'sweep_reports'}",
            ],
            work / "sweep",
        ),
        "report": Stage(
            "report",
            [str(BIN / "scvi-sweep-report"), str(work / "sweep"), "--out", str(work / "report")],
            work / "report",
        ),
    }


def write_gene_list(args: argparse.Namespace) -> Path:
    """Every generated gene (the generator's ids, in its order): prepare keeps them all."""
    from sweep.config.schema import SyntheticConfig
    from sweep.data.synthetic.world import draw_world

    cfg = SyntheticConfig(
        shape="census",
        n_datasets=args.n_datasets,
        cells_per_dataset=args.cells_per_dataset,
        n_genes=args.n_genes,
        donors_per_dataset=args.donors_per_dataset,
    )
    path = args.work / "genes.tsv"
    path.write_text("\n".join(draw_world(cfg).var.index) + "\n")
    return path


def describe(stage: Stage, work: Path) -> None:
    """The cells and categories a finished stage handled, from what it wrote."""
    if stage.name in ("generate", "prepare"):
        manifest = work / "store" / "manifest.json"
        if stage.name == "generate" or not manifest.exists():
            return  # counted once the store is there (the same cells)
        cells, categories = store_counts(work / "store")
        stage.cells, stage.categories = f"{cells:,} (all)", f"{categories:,} (all cells)"
        return
    folders = {"train": [work / "run"], "page": [work / "run"]}.get(
        stage.name, sorted(p for p in (work / "sweep").glob("[0-9]*") if p.is_dir())
    )
    metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
    jobs = f" x {len(metrics)} jobs" if len(metrics) > 1 else ""
    m = metrics[0]
    stage.cells = f"{m['cells_train']:,} train + {m['cells_validation']:,} val{jobs}"
    stage.categories = f"{m['n_batch']:,} (after filter)"


def markdown(done: list[Stage], args: argparse.Namespace, command: str) -> str:
    lines = [
        f"### The Census-shaped curriculum end to end ({time.strftime('%Y-%m-%d')})",
        "",
        f"- machine: {machine()}; load average around each stage in the table (other work "
        "shared the machine)",
        f"- command: `{command}`",
        "",
        "| stage | wall | peak RSS, process tree (sum) | largest process | cells | "
        "batch categories | output on disk | load avg before / after |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for s in done:
        largest = f"{s.largest_mb / 1024:.2f} GiB"
        lines.append(
            f"| {s.name} | {_duration(s.wall_s)} | {s.tree_peak_mb / 1024:.2f} GiB | {largest} | "
            f"{s.cells} | {s.categories} | {s.disk_gb:.2f} GB | "
            f"{s.load[0]:.1f} / {s.load[1]:.1f} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"- {s.name}: `{' '.join(s.command)}`" for s in done]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder of every stage's output")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--n-datasets", type=int, default=900)
    parser.add_argument("--cells-per-dataset", type=int, default=500)
    parser.add_argument("--n-genes", type=int, default=8000)
    parser.add_argument("--donors-per-dataset", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the markdown table into this file")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides (key=value)")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    write_gene_list(args)
    every = stages(args)
    done = []
    for name in args.stages:
        stage = every[name]
        print(f"{name}: {' '.join(stage.command)}", flush=True)
        run_stage(stage, args.work, args.work / f"{name}.log")
        describe(stage, args.work)
        print(
            f"{name}: {_duration(stage.wall_s)}, peak RSS {stage.tree_peak_mb / 1024:.2f} GiB "
            f"(tree), {stage.cells} {stage.categories}",
            flush=True,
        )
        done.append(stage)
    by_name = {s.name: s for s in done}
    if "generate" in by_name and "prepare" in by_name:  # the same cells
        by_name["generate"].cells = by_name["prepare"].cells
        by_name["generate"].categories = by_name["prepare"].categories
    text = markdown(done, args, " ".join(["python -m", MODULE, *argv]))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
