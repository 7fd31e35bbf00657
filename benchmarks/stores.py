"""The stores the loader benchmarks read: a datamodule over one, and its shape in words."""

from __future__ import annotations

from pathlib import Path

from sweep.data.store import read_manifest


def store_datamodule(
    store: Path, workers: int, batch_size: int, run_size: int | None = None, **loader_keys
):
    """The training datamodule over ``store``: every cell (no filter), 1% validating, this
    loader's keys at their defaults but ``workers``, ``batch_size``, ``run_size`` and
    ``loader_keys``."""
    from omegaconf import OmegaConf

    try:
        from sweep.config.schema import TrainConfig
    except ModuleNotFoundError:  # a checkout from before the config package (--cold --before)
        from sweep.config import TrainConfig
    from sweep.data.datamodule import StoreDataModule

    cfg = OmegaConf.structured(TrainConfig)
    cfg.data.min_genes = 0
    cfg.data.validation_fraction = 0.01
    cfg.loader.num_workers = workers
    cfg.loader.batch_size = batch_size
    if run_size is not None:
        cfg.loader.run_size = run_size
    cfg.loader.merge_with(loader_keys)
    return StoreDataModule(store, cfg.data, cfg.batch, cfg.loader, seed=0)


def store_shape(store: Path) -> str:
    """Cells, genes, shards, non-zeros per cell and bytes on disk (all the folder's files)."""
    manifest = read_manifest(store)
    nnz = sum(s["nnz"] for s in manifest.shards)
    size = sum(path.stat().st_size for path in store.iterdir() if path.is_file())
    return (
        f"{manifest.n_cells:,} cells x {manifest.n_genes:,} genes in {len(manifest.shards)} "
        f"shards of {manifest.shard_size:,}, {nnz / manifest.n_cells:,.0f} non-zeros per cell, "
        f"format v{manifest.version}: {size / manifest.n_cells:,.0f} bytes per cell "
        f"({size / nnz:.2f} per non-zero)"
    )
