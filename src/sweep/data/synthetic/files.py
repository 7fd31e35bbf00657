"""Writing a synthetic curriculum: every dataset's file over a pool of processes
(:func:`generate`), and the command line (``python -m sweep.data.synthetic key=value ...``)."""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from sweep.config.schema import SyntheticConfig
from sweep.data.synthetic.datasets import write_dataset
from sweep.data.synthetic.world import World, draw_world

log = logging.getLogger("sweep.data.synthetic")

_WORKER: dict[str, World] = {}  # the world of a pool process, drawn once by _start_worker


def _start_worker(cfg: SyntheticConfig) -> None:
    _WORKER["world"] = draw_world(cfg)


def _write_in_worker(cfg: SyntheticConfig, i: int, path: Path) -> dict:
    return write_dataset(cfg, i, _WORKER["world"], path)


def generate(cfg: SyntheticConfig) -> list[Path]:
    """Write ``cfg.n_datasets`` files ``dataset_{i:03d}.h5ad`` into ``cfg.output``; sorted paths.

    Files are written by a process per CPU (largest first); each is the same whatever the
    number of processes.
    """
    if not cfg.output:
        raise ValueError("output must be set to the folder to write into")
    start = time.perf_counter()
    world = draw_world(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(cfg.n_datasets - 1)))
    paths = [out / f"dataset_{i:0{width}d}.h5ad" for i in range(cfg.n_datasets)]
    order = np.argsort(-world.n_cells, kind="stable").tolist()
    workers = min(len(os.sched_getaffinity(0)), cfg.n_datasets)
    each = log.info if cfg.n_datasets <= 20 else log.debug
    summaries = []

    def done(summary: dict) -> None:
        summaries.append(summary)
        each(
            "wrote %s: %d cells x %d genes, %d nnz, assays %s, suspension %s",
            summary["path"],
            summary["cells"],
            cfg.n_genes,
            summary["nnz"],
            summary["assays"],
            summary["suspension"],
        )

    if workers <= 1:
        for i in order:
            done(write_dataset(cfg, i, world, paths[i]))
    else:
        with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(cfg,)) as pool:
            futures = [pool.submit(_write_in_worker, cfg, i, paths[i]) for i in order]
            try:
                for future in as_completed(futures):
                    done(future.result())
            except BaseException:
                pool.shutdown(cancel_futures=True)  # a failed file stops the rest
                raise
    log.info(
        "wrote %d files to %s: %d cells x %d genes, %d nnz, in %.1f s",
        len(summaries),
        out,
        sum(s["cells"] for s in summaries),
        cfg.n_genes,
        sum(s["nnz"] for s in summaries),
        time.perf_counter() - start,
    )
    return sorted(paths)


def main(argv: list[str] | None = None) -> list[Path]:
    """CLI: ``key=value`` overrides of SyntheticConfig; unknown keys or bad types raise."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(
            "python -m sweep.data.synthetic output=DIR [key=value ...]: write CELLxGENE-like "
            "h5ad files. Keys (sweep.config.schema.SyntheticConfig) and their defaults:"
        )
        for field in fields(SyntheticConfig):
            print(f"  {field.name}={field.default}")
        return []
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = OmegaConf.from_dotlist(argv)
    schema = OmegaConf.structured(SyntheticConfig)
    schema.output = "???"  # the command line must name it (the demo fills it in)
    merged = OmegaConf.merge(schema, overrides)
    OmegaConf.to_container(merged, throw_on_missing=True)  # names a missing output
    cfg: SyntheticConfig = OmegaConf.to_object(merged)
    return generate(cfg)
