"""The prepare benchmark: ``python -m benchmarks.prepare --files 2000 [--write]`` (checkout).

Measured side by side in one run on the same CELLxGENE-like source files (500 cells x 33,000
genes, ~1,375 non-zeros per cell, float32 CSR counts, ~8.4 MB each; a gene list of 3,241 ids):

1. the naive script, one process: per file ``read_h5ad``, ``adata[:, genes]``, ``write_h5ad``;
2. ``scvi-sweep-prepare`` with its default worker processes (one per CPU), on all ``--files`` files
   and on the first ``--small`` of them (peak RSS must not grow with the number of files);
3. the disk's ceiling: the first ``--small`` files read whole, nothing parsed;
4. with ``--one-worker``, prepare with one worker process on all files.

Each runs in a fresh process (its own peak RSS: the process plus its largest worker), after the
page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``; the table says when that was
not possible). "per core" divides by the processes doing the work (prepare's workers). The
sources are written into ``--dir`` (checked for free disk first) and deleted afterwards unless
``--keep``. Results print as a table and go into ``docs/benchmarks.md`` (``--write``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from benchmarks.record import (
    machine,
    measure_in_subprocess,
    peak_rss_mb,
    serve_measurement,
    write_section,
)

CELLS = 500  # per source file
GENES = 33_000
NNZ_PER_CELL = 1_375
KEPT_GENES = 3_241
TEMPLATES = 8  # distinct simulated datasets; every file is a copy of one with its own cell ids
BYTES_PER_FILE = 8.5e6
GENE_LIST = "genes.tsv"


# --------------------------------------------------------------------------------------------
# CELLxGENE-like sources


def _write_templates(folder: Path, seed: int) -> list[Path]:
    """TEMPLATES datasets of sweep.data.synthetic, cut to CELLS cells, their non-zeros thinned
    at random to about NNZ_PER_CELL per cell."""
    from sweep.config.schema import SyntheticConfig
    from sweep.data.synthetic import draw_world, simulate_dataset

    cfg = SyntheticConfig(
        output=str(folder), n_datasets=TEMPLATES, cells_per_dataset=2 * CELLS, n_genes=GENES
    )
    world = draw_world(cfg)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(TEMPLATES):
        adata = simulate_dataset(cfg, k, world)[:CELLS].copy()  # >= CELLS cells: 0.5x-1.5x
        X = adata.X
        X.data[rng.random(X.nnz) >= NNZ_PER_CELL * CELLS / X.nnz] = 0
        X.eliminate_zeros()
        paths.append(folder / f"template_{k}.h5ad")
        adata.write_h5ad(paths[-1])
    return paths


def _copy_source(template: Path, path: Path, index: int) -> None:
    """A copy of ``template`` with its own cell ids and dataset_id (a file per dataset)."""
    shutil.copyfile(template, path)
    with h5py.File(path, "r+") as f:
        obs = f["obs"]
        ids = np.array([f"f{index:05d}-{j}" for j in range(CELLS)], dtype=object)
        obs[obs.attrs["_index"]][...] = ids
        obs["dataset_id/categories"][...] = np.array([f"dataset-{index:05d}"], dtype=object)


def make_sources(folder: Path, n_files: int, seed: int = 0) -> list[Path]:
    """``source_XXXXX.h5ad`` files and the gene list ``genes.tsv`` (KEPT_GENES random source ids,
    in source order) in ``folder``; sorted paths of the sources."""
    folder.mkdir(parents=True, exist_ok=True)
    templates = _write_templates(folder, seed)
    paths = [folder / f"source_{i:05d}.h5ad" for i in range(n_files)]
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(
            pool.map(
                _copy_source,
                [templates[i % TEMPLATES] for i in range(n_files)],
                paths,
                range(n_files),
            )
        )
    for template in templates:
        template.unlink()
    kept = np.sort(np.random.default_rng(seed).choice(GENES, KEPT_GENES, replace=False))
    (folder / GENE_LIST).write_text("".join(f"ENSG{j + 1:011d}\n" for j in kept))
    return paths


def sources(folder: Path, n_files: int) -> list[str]:
    return [str(folder / f"source_{i:05d}.h5ad") for i in range(n_files)]


# --------------------------------------------------------------------------------------------
# measurements (each returns a dict row)


def write_sources(folder: str, n_files: int) -> dict:
    """:func:`make_sources` in a process of its own (the simulation's memory stays out of the
    measurements' peak RSS: a child started by a big process starts with its high-water mark)."""
    start = time.perf_counter()
    make_sources(Path(folder), n_files)
    seconds = time.perf_counter() - start
    return {"what": f"write {n_files} sources", "cells_per_s": n_files * CELLS / seconds}


def read_rate(folder: str, n_files: int) -> dict:
    """The ceiling of any one-pass reader: every byte of the files read in 8 MiB blocks."""
    start = time.perf_counter()
    for path in sources(Path(folder), n_files):
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass
    seconds = time.perf_counter() - start
    return _row("ceiling: read the files (no parsing)", n_files, n_files * CELLS, 1, seconds)


def naive_rate(folder: str, n_files: int, output: str) -> dict:
    """The naive script in this process: per file read_h5ad, keep the listed genes, write_h5ad."""
    import anndata

    genes = Path(folder, GENE_LIST).read_text().split()
    Path(output).mkdir(parents=True, exist_ok=True)
    cells, start = 0, time.perf_counter()
    for path in sources(Path(folder), n_files):
        adata = anndata.read_h5ad(path)
        adata[:, genes].write_h5ad(Path(output) / Path(path).name)
        cells += adata.n_obs
    seconds = time.perf_counter() - start
    return _row("naive script (read_h5ad, select, write_h5ad)", n_files, cells, 1, seconds)


def prepare_rate(folder: str, n_files: int, output: str, workers: int | None) -> dict:
    """``scvi-sweep-prepare`` with the gene list, ``workers`` processes (None: one per CPU)."""
    from sweep.data.prepare import prepare_store
    from sweep.data.prepare.output import LOG_NAME

    start = time.perf_counter()
    manifest = prepare_store(
        {
            "source": sources(Path(folder), n_files),
            "output": output,
            "genes": str(Path(folder, GENE_LIST)),
            "workers": workers,
            "progress": False,
        }
    )
    seconds = time.perf_counter() - start
    passes = re.findall(
        r"\] (\w+ \w+): \d+ tasks in ([\d.]+) s", Path(output, LOG_NAME).read_text()
    )
    processes = workers or len(os.sched_getaffinity(0))
    row = _row(
        f"scvi-sweep-prepare, {processes} workers", n_files, manifest.n_cells, processes, seconds
    )
    row["passes"] = ", ".join(f"{name} {float(t):.0f} s" for name, t in passes)
    return row


def _row(what: str, n_files: int, cells: int, processes: int, seconds: float) -> dict:
    return {
        "what": what,
        "files": n_files,
        "cells": cells,
        "processes": processes,
        "wall_s": seconds,
        "cells_per_s": cells / seconds,
        "cells_per_s_per_core": cells / seconds / processes,
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------------------------
# orchestration: each measurement in its own process after dropping the page cache, then a table


# sweep and anndata are imported by the measurements only: a child of a big process starts with
# the parent's peak RSS as its own
MODULE = "benchmarks.prepare"
MEASURES = {
    "sources": write_sources,
    "read": read_rate,
    "naive": naive_rate,
    "prepare": prepare_rate,
}


def drop_page_cache(drop: bool) -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` if ``drop``; whether it was dropped (root on
    Linux only)."""
    subprocess.run(["sync"], check=False)
    if not drop:
        return False
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def measure(kind: str, drop: bool, **kwargs) -> dict:
    """One measurement in a fresh process, the page cache dropped first; its output removed."""
    dropped = drop_page_cache(drop)
    row = measure_in_subprocess(MODULE, kind, **kwargs)
    row["cache_dropped"] = dropped
    if "output" in kwargs:
        shutil.rmtree(kwargs["output"], ignore_errors=True)
    return row


def run_prepare_bench(args: argparse.Namespace) -> list[dict]:
    folder = Path(args.dir)
    need = args.files * BYTES_PER_FILE * 1.3  # sources, the naive outputs, the store and its temp
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    if free < need:
        raise SystemExit(
            f"{folder}: {free / 1e9:.0f} GB free, the benchmark needs {need / 1e9:.0f}"
        )
    if all(map(os.path.exists, [*sources(folder, args.files), folder / GENE_LIST])):
        print(f"reusing the {args.files} sources in {folder}")
    else:
        measure_in_subprocess(MODULE, "sources", folder=folder, n_files=args.files)
    rows, out, drop = [], folder / "out", not args.no_drop
    try:
        for n_files in (args.files, args.small):
            rows.append(
                measure("prepare", drop, folder=folder, n_files=n_files, output=out, workers=None)
            )
        if args.one_worker:
            rows.append(
                measure("prepare", drop, folder=folder, n_files=args.files, output=out, workers=1)
            )
        rows.append(measure("naive", drop, folder=folder, n_files=args.files, output=out))
        rows.append(measure("read", drop, folder=folder, n_files=args.small))
    finally:
        if not args.keep:
            shutil.rmtree(folder)
    return rows


def ratios(rows: list[dict], files: int, small: int) -> list[str]:
    """The targets of the issue, as ratios of rows measured in this run."""
    naive = next(r for r in rows if r["what"].startswith("naive"))
    big, few = (
        next(r for r in rows if r["what"].startswith("sweep") and r["files"] == n)
        for n in (files, small)
    )
    read = next(r for r in rows if r["what"].startswith("ceiling"))
    size = BYTES_PER_FILE * files / 1e9
    return [
        f"reading {files:,} files ({size:.1f} GB) at the ceiling's "
        f"{read['files'] * BYTES_PER_FILE / 1e6 / read['wall_s']:,.0f} MB/s takes "
        f"{files / read['files'] * read['wall_s']:,.0f} s: prepare's floor here",
        *(
            f"prepare ({r['processes']} workers) / naive script per core, {files:,} files: "
            f"{r['cells_per_s_per_core'] / naive['cells_per_s_per_core']:.1f}x "
            f"(wall {naive['wall_s']:,.0f} s -> {r['wall_s']:,.0f} s; issue 12's target: >= 4x)"
            for r in rows
            if r["what"].startswith("sweep") and r["files"] == files
        ),
        f"prepare's peak RSS, {small:,} -> {files:,} files: {few['peak_rss_mb']:,.0f} -> "
        f"{big['peak_rss_mb']:,.0f} MiB ({big['peak_rss_mb'] / few['peak_rss_mb'] - 1:+.0%})",
    ]


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    table = [
        "| measurement | files | cells | processes | wall (s) | cells/s | cells/s per core "
        "| peak RSS (MiB) | page cache dropped |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        table.append(
            f"| {r['what']} | {r['files']:,} | {r['cells']:,} | {r['processes']} | "
            f"{r['wall_s']:,.1f} | {r['cells_per_s']:,.0f} | {r['cells_per_s_per_core']:,.0f} | "
            f"{r['peak_rss_mb']:,.0f} | {'yes' if r['cache_dropped'] else 'no'} |"
        )
    command = "python -m benchmarks.prepare " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            f"### Prepare ({time.strftime('%Y-%m-%d')})",
            "",
            f"- machine: {machine()}",
            f"- sources: {args.files:,} CELLxGENE-like h5ad files of {CELLS} cells x {GENES:,} "
            f"genes, ~{NNZ_PER_CELL:,} non-zeros per cell (float32 CSR), gene list of "
            f"{KEPT_GENES:,} ids",
            f"- command: `{command}`",
            "",
            *table,
            "",
            "Prepare's passes (its log):",
            "",
            *(
                f"- {r['files']:,} files, {r['processes']} workers: {r['passes']}"
                for r in rows
                if "passes" in r
            ),
            "",
            "Ratios from this run:",
            "",
            *(f"- {line}" for line in ratios(rows, args.files, args.small)),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if serve_measurement(argv, MEASURES):
        return
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="source files (500 cells each)")
    parser.add_argument("--small", type=int, default=200, help="also prepare the first N files")
    parser.add_argument("--dir", default="/tmp/prepare_bench", help="folder for the sources")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the sources")
    parser.add_argument("--no-drop", action="store_true", help="leave the page cache alone")
    parser.add_argument("--one-worker", action="store_true", help="also prepare with 1 worker")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = run_prepare_bench(args)
    text = markdown(rows, args)
    print("\n" + text)
    if args.write:
        write_section("prepare", text)
        print("\nwrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
