"""The loader benchmark: ``python -m benchmarks.loader STORE [options]`` (from the checkout).

Measured side by side in one run on the same store, batch 1024 unless told otherwise:

1. this loader at 0, 1, 2 workers over full epochs; a cell counts once its batch is a dense float
   tensor on the training device (the CPU here), as cellarium-ml's are;
2. the ceiling: plain contiguous reads of the same CSR shards, no shuffling, one core (read only,
   and read + densify), best of 3 passes;
3. the anchor (``--anchor``): cellarium-ml's own loader on the same shard files, through
   ``../shared/anchors/cellarium_loader_bench.sh`` (it lives in its own venv);
4. end to end (``--train``): ``model=czi_128`` training throughput with this loader vs the same
   model fed batches already materialised in memory (the model-only ceiling), 3 epochs each,
   alternated twice, best epoch of the better run;
5. the loader's peak RSS on the store and on one 10x larger (``--rss-scale 10``).

Each loader configuration runs in a fresh process so that its peak RSS is its own. ``--make-store``
writes a store shaped like the seed's (3241 genes, 1000-1500 non-zeros per cell, 10k-cell shards).
Results print as a table and go into ``docs/benchmarks.md`` between markers (``--write``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from benchmarks.record import (
    REPO_ROOT,
    current_rss_mb,
    machine,
    measure_in_subprocess,
    peak_rss_mb,
    serve_measurement,
    write_section,
)
from benchmarks.stores import store_datamodule, store_shape
from sweep.data.store import (
    CODED_COLUMNS,
    IS_PRIMARY,
    N_GENES_ALL,
    Shard,
    StoreWriter,
    read_manifest,
)

ANCHOR_SCRIPT = REPO_ROOT.parent / "shared" / "anchors" / "cellarium_loader_bench.sh"


# --------------------------------------------------------------------------------------------
# a store shaped like the seed's


def make_store(
    folder: Path,
    n_shards: int = 8,
    shard_size: int = 10_000,
    n_genes: int = 3241,
    nnz_per_cell: tuple[int, int] = (1000, 1500),
    seed: int = 0,
) -> Path:
    """Random counts (geometric, mean 2) with ``nnz_per_cell`` non-zeros per cell on average.

    obs codes are random (5 values per column), every cell primary with n_genes_all = 2 x nnz.
    """
    rng = np.random.default_rng(seed)
    shutil.rmtree(folder, ignore_errors=True)
    genes = [f"ENSG{i:011d}" for i in range(n_genes)]
    writer = StoreWriter(folder, genes, genes)
    shards = []
    for s in range(n_shards):
        parts = []
        for first in range(0, shard_size, 1000):
            rows = min(1000, shard_size - first)
            density = rng.uniform(*nnz_per_cell, size=rows) / n_genes
            mask = rng.random((rows, n_genes), dtype=np.float32) < density[:, None]
            part = sp.csr_matrix(mask, dtype=np.float32)
            part.data = rng.geometric(0.5, part.nnz).astype(np.float32)
            parts.append(part)
        X = sp.vstack(parts, format="csr")
        obs = pd.DataFrame(
            {c: rng.integers(0, 5, shard_size).astype(np.int32) for c in CODED_COLUMNS},
            index=[f"bench-{s}-{i}" for i in range(shard_size)],
        )
        obs[N_GENES_ALL] = (2 * np.diff(X.indptr)).astype(np.int32)
        obs[IS_PRIMARY] = True
        shards.append(writer.write_shard(s, X, obs))
    vocab = {c: [f"{c}-{i}" for i in range(5)] for c in CODED_COLUMNS}
    writer.finish(shards, vocab, shard_size, provenance={"made_by": "benchmarks.loader make_store"})
    return writer.folder


# --------------------------------------------------------------------------------------------
# measurements (each returns a dict row)


def loader_rate(
    store: Path, workers: int, batch_size: int, epochs: int, run_size: int | None = None
) -> dict:
    """This loader over ``epochs`` full training epochs; dense float32 batches on the CPU.
    ``run_size``: the loader key (None: its default)."""
    import torch

    from sweep.data.densify import densify

    dm = store_datamodule(store, workers, batch_size, run_size)
    setup_rss_mb = current_rss_mb()
    loader = dm.train_dataloader()
    per_epoch = []
    for epoch in range(epochs):
        loader.epoch_of = lambda epoch=epoch: epoch  # no trainer: say which epoch's order to read
        cells, start = 0, time.perf_counter()
        for batch in loader:
            X = densify(batch, dm.n_vars)["X"]
            assert X.dtype == torch.float32
            cells += X.shape[0]
        per_epoch.append(cells / (time.perf_counter() - start))
    del loader  # persistent workers exit: their peak RSS becomes visible to getrusage
    shuffle = "" if run_size is None else f", shuffled cell by cell (run_size {run_size})"
    return {
        "what": f"this loader, {workers} workers{shuffle}",
        "cells_per_s": max(per_epoch),
        "first_epoch_cells_per_s": per_epoch[0],
        "epoch_cells_per_s": per_epoch,
        "cells_per_epoch": cells,
        "peak_rss_mb": peak_rss_mb(),
        "setup_rss_mb": setup_rss_mb,
        "metadata_bytes_per_cell": dm.per_cell_bytes / dm.manifest.n_cells,
    }


def ceiling_rate(store: Path, batch_size: int, densify_too: bool, passes: int = 3) -> dict:
    """Contiguous ``batch_size``-row reads of every shard in order, one core, as CSR or (with
    ``densify_too``) straight into dense float32 rows, the loader's fastest way; best of
    ``passes`` passes (as the loader's best epoch)."""
    from sweep.data.fetch import Fetch
    from sweep.data.heap import retain_freed_blocks

    manifest = read_manifest(store)
    retain_freed_blocks(4 * batch_size * manifest.n_genes)  # as the datamodule does
    rates = []
    for _ in range(passes):
        cells, start = 0, time.perf_counter()
        for entry in manifest.shards:
            shard = Shard(store / entry["file"])
            for first in range(0, entry["n_cells"], batch_size):
                stop = min(first + batch_size, entry["n_cells"])
                if densify_too:
                    rows = Fetch(
                        [shard.arrays()],
                        np.zeros(stop - first, dtype=np.int64),
                        shard.indptr[first:stop],
                        np.diff(shard.indptr[first : stop + 1]),
                        np.zeros(stop - first, dtype=np.int32),
                        np.zeros((stop - first, 0), dtype=np.int32),
                        manifest.n_genes,
                    )
                    batch = rows.dense_batch(np.arange(stop - first))  # kept, as a trainer would
                else:
                    batch = shard.read_rows(first, stop)
                cells += stop - first
            shard.close()
        rates.append(cells / (time.perf_counter() - start))
    del batch
    what = "ceiling: contiguous reads" + (" + densify" if densify_too else " (sparse)")
    return {
        "what": what,
        "cells_per_s": max(rates),
        "cells_per_epoch": cells,
        "peak_rss_mb": peak_rss_mb(),
    }


def anchor_rate(store: Path, workers: int, batch_size: int) -> dict:
    """cellarium-ml 0.0.15's loader on the same shards (its own venv, via the anchor script)."""
    if not ANCHOR_SCRIPT.is_file():
        raise FileNotFoundError(f"{ANCHOR_SCRIPT} not found: --anchor needs ../shared/anchors/")
    out = subprocess.run(
        ["bash", str(ANCHOR_SCRIPT), str(store / "shard_*.h5ad"), str(workers), str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    line = out.stdout.strip().splitlines()[
        -1
    ]  # "cellarium workers=N batch=B: C cells in S s = R cells/s"
    rate = float(line.rsplit("=", 1)[1].split()[0])
    return {
        "what": f"cellarium-ml 0.0.15, {workers} workers",
        "cells_per_s": rate,
        "cells_per_epoch": int(line.split(": ")[1].split()[0]),
        "peak_rss_mb": None,
        "raw": line,
    }


def train_rate(store: Path, workers: int, batch_size: int, epochs: int, in_memory: bool) -> dict:
    """``model=czi_128`` training cells/s (best epoch, no validation) fed by this loader, or by
    the same batches already densified in memory (the model-only ceiling)."""
    import scvi

    from sweep.config.schema import compose_train
    from sweep.data.densify import densify
    from sweep.model.build import build_scvi
    from sweep.training.epoch_stats import EpochStats

    model_cfg = compose_train(["model=czi_128"]).model
    dm = store_datamodule(store, workers, batch_size)
    if in_memory:
        dm = InMemoryBatches(dm, [densify(b, dm.n_vars) for b in dm.train_dataloader()])
    scvi.settings.seed = 0
    model = build_scvi(dm.manifest.genes, dm.encoding.batch_categories, {}, model_cfg)
    stats = EpochStats()
    model.train(
        datamodule=dm,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        check_val_every_n_epoch=None,
        callbacks=[stats],
        enable_progress_bar=False,
        logger=False,
        early_stopping=False,
    )
    what = (
        "czi_128 training, batches in memory"
        if in_memory
        else f"czi_128 training, this loader ({workers} workers)"
    )
    return {
        "what": what,
        "cells_per_s": max(stats.epoch_rates),
        "cells_per_epoch": dm.n_train,
        "peak_rss_mb": peak_rss_mb(),
    }


class InMemoryBatches(LightningDataModule):
    """The model-only ceiling: a datamodule whose training batches are already dense tensors."""

    def __init__(self, source, batches: list[dict]):
        super().__init__()
        self.batches = batches
        self.manifest, self.encoding = source.manifest, source.encoding
        self.n_vars, self.n_batch, self.n_cats_per_cov = (
            source.n_vars,
            source.n_batch,
            source.n_cats_per_cov,
        )
        self.n_train, self.n_val, self.n_obs = source.n_train, source.n_val, source.n_obs

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, collate_fn=_same)

    def val_dataloader(self) -> list:
        return []


def _same(batch: dict) -> dict:
    return batch


# --------------------------------------------------------------------------------------------
# orchestration: each measurement in its own process, then one table


MODULE = "benchmarks.loader"
MEASURES = {
    "loader": loader_rate,
    "ceiling": ceiling_rate,
    "anchor": anchor_rate,
    "train": train_rate,
}


def run_loader_bench(args: argparse.Namespace) -> list[dict]:
    store = Path(args.store)
    rows = []
    print(f"store: {store_shape(store)}")
    for workers in args.workers:
        rows.append(
            measure_in_subprocess(
                MODULE,
                "loader",
                store=store,
                workers=workers,
                batch_size=args.batch_size,
                epochs=args.epochs,
            )
        )
    rows.append(  # what runs of consecutive cells (loader.run_size) buy
        measure_in_subprocess(
            MODULE,
            "loader",
            store=store,
            workers=max(args.workers),
            batch_size=args.batch_size,
            epochs=args.epochs,
            run_size=1,
        )
    )
    for densify_too in (False, True):
        rows.append(
            measure_in_subprocess(
                MODULE, "ceiling", store=store, batch_size=args.batch_size, densify_too=densify_too
            )
        )
    if args.anchor:
        for workers in args.workers:
            rows.append(
                measure_in_subprocess(
                    MODULE, "anchor", store=store, workers=workers, batch_size=args.batch_size
                )
            )
    if args.train:  # alternated twice, best of each: training speed on a shared VM drifts
        trained = {True: [], False: []}
        for in_memory in (True, False, True, False):
            trained[in_memory].append(
                measure_in_subprocess(
                    MODULE,
                    "train",
                    store=store,
                    workers=args.train_workers,
                    batch_size=args.batch_size,
                    epochs=3,
                    in_memory=in_memory,
                )
            )
        rows += [max(trained[m], key=lambda r: r["cells_per_s"]) for m in (True, False)]
    if args.rss_scale > 1:
        big = store.with_name(store.name + f"_x{args.rss_scale}")
        manifest = read_manifest(store)
        make_store(
            big,
            n_shards=len(manifest.shards) * args.rss_scale,
            shard_size=manifest.shard_size,
            n_genes=manifest.n_genes,
        )
        row = measure_in_subprocess(
            MODULE,
            "loader",
            store=big,
            workers=max(args.workers),
            batch_size=args.batch_size,
            epochs=1,
        )
        row["what"] += f", store x{args.rss_scale}"
        rows.append(row)
        shutil.rmtree(big)
    return rows


def ratios(rows: list[dict]) -> list[str]:
    """The targets of the loader issue, as ratios of rows measured in this run."""
    by = {r["what"]: r for r in rows}
    ours = {
        int(r["what"].split(", ")[1].split()[0]): r
        for r in rows
        if r["what"].startswith("this loader")
        and "store x" not in r["what"]
        and "run_size" not in r["what"]
    }
    lines = []
    for workers, row in sorted(ours.items()):
        anchor = by.get(f"cellarium-ml 0.0.15, {workers} workers")
        if anchor:
            lines.append(
                f"this loader / cellarium-ml at {workers} workers: "
                f"{row['cells_per_s'] / anchor['cells_per_s']:.1f}x"
            )
    best = max(ours.values(), key=lambda r: r["cells_per_s"])
    for name in ("ceiling: contiguous reads + densify", "ceiling: contiguous reads (sparse)"):
        lines.append(
            f"best of this loader ({best['cells_per_s']:,.0f} cells/s, shuffled) / "
            f"{name}: {best['cells_per_s'] / by[name]['cells_per_s']:.0%}"
        )
    memory = by.get("czi_128 training, batches in memory")
    fed = next((r for r in rows if r["what"].startswith("czi_128 training, this loader")), None)
    if memory and fed:
        lines.append(
            f"czi_128 training fed by this loader / fed from memory: "
            f"{fed['cells_per_s'] / memory['cells_per_s']:.1%}"
        )
    big = next((r for r in rows if "store x" in r["what"]), None)
    if big:
        workers = int(big["what"].split(", ")[1].split()[0])
        small = ours[workers]
        lines.append(
            f"peak RSS with the store x{big['what'].rsplit('x', 1)[1]}: "
            f"{big['peak_rss_mb']:,.0f} MiB vs {small['peak_rss_mb']:,.0f} MiB "
            f"({big['peak_rss_mb'] / small['peak_rss_mb'] - 1:+.0%})"
        )
    return lines


def markdown(rows: list[dict], args: argparse.Namespace, label: str) -> str:
    table = [
        "| measurement | cells/s | first epoch cells/s | cells per epoch | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        first = r.get("first_epoch_cells_per_s")
        rss = r.get("peak_rss_mb")
        table.append(
            f"| {r['what']} | {r['cells_per_s']:,.0f} | "
            f"{f'{first:,.0f}' if first else ''} | {r['cells_per_epoch']:,} | "
            f"{f'{rss:,.0f}' if rss else ''} |"
        )
    command = "python -m benchmarks.loader " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            f"### Loader, {label} ({time.strftime('%Y-%m-%d')})",
            "",
            f"- machine: {machine()}",
            f"- store: {store_shape(Path(args.store))}; batch {args.batch_size}",
            f"- command: `{command}`",
            "",
            *table,
            "",
            "Ratios from this run:",
            "",
            *(f"- {line}" for line in ratios(rows)),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if serve_measurement(argv, MEASURES):
        return
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("store", help="prepared store folder (made with --make-store if asked)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loader measurement")
    parser.add_argument("--make-store", action="store_true", help="write a seed-shaped store first")
    parser.add_argument("--shards", type=int, default=8, help="shards of 10k cells (--make-store)")
    parser.add_argument("--anchor", action="store_true", help="also run cellarium-ml's loader")
    parser.add_argument("--train", action="store_true", help="also measure czi_128 training")
    parser.add_argument("--train-workers", type=int, default=1)
    parser.add_argument("--rss-scale", type=int, default=1, help="also run on a store N x larger")
    parser.add_argument("--label", default="CPU", help="device name for docs/benchmarks.md")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    cold = parser.add_argument_group("cold epochs (benchmarks.loader_cold)")
    cold.add_argument(
        "--cold",
        action="store_true",
        help="instead: a cold and a warm epoch per worker count, against the disk's read",
    )
    cold.add_argument("--repeats", type=int, default=3, help="runs per worker count (--cold)")
    cold.add_argument(
        "--before",
        type=Path,
        help="also measure the sweep package of this src folder (--cold), alternating",
    )
    args = parser.parse_args(argv)
    if args.make_store:
        make_store(Path(args.store), n_shards=args.shards)
    if args.cold:
        from benchmarks import loader_cold

        text, key = loader_cold.bench(args), "loader:cold"
    else:
        text, key = markdown(run_loader_bench(args), args, args.label), f"loader:{args.label}"
    print("\n" + text)
    if args.write:
        write_section(key.lower().replace(" ", "-"), text)
        print("\nwrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
