"""The LightningDataModule scvi-tools trains from: store, cell filter, batch definition, loader."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from lightning.pytorch import LightningDataModule

from sweep.data.batches import BatchEncoding, check_columns, encode_batches
from sweep.data.densify import densify
from sweep.data.epoch_plan import EpochPlan
from sweep.data.fetch import Fetch, StoreCells
from sweep.data.heap import retain_freed_blocks
from sweep.data.loader import EpochLoader, ShardBatches
from sweep.data.page_cache import cached_share
from sweep.data.selection import CellTable, Split, split_for
from sweep.data.store import CODED_COLUMNS, IS_PRIMARY, N_GENES_ALL, Shard, check_store
from sweep.metric_names import CELLS_TRAIN, CELLS_VALIDATION

log = logging.getLogger(__name__)


#: below this share of a store in the page cache, its next epoch reads it from disk (cold)
COLD_CACHED_SHARE = 0.5
#: with at most this many cores, a cold store is read with no workers: on the 2-core machine
#: of docs/benchmarks.md (issue 24) a cold epoch was fastest read by the training process
COLD_NO_WORKER_CORES = 2
#: shards whose page-cache share stands for the store's (evenly spaced)
CACHED_SAMPLE_SHARDS = 64


def default_num_workers() -> int:
    """Loader workers for a warm store when ``loader.num_workers`` is null: the cores this
    process may use (a SLURM job's allocation, not the whole node) - 1, at most 8."""
    return max(0, min(8, len(os.sched_getaffinity(0)) - 1))


def auto_num_workers(shards: list[Path]) -> tuple[int, str]:
    """Loader workers when ``loader.num_workers`` is null, for the state of the store whose
    shard files are ``shards``, and why (a sentence for the log).

    Cold (under :data:`COLD_CACHED_SHARE` of a sample of its shards in the page cache) on a
    machine of at most :data:`COLD_NO_WORKER_CORES` cores: 0 workers (the reader thread and
    its read-ahead). Else :func:`default_num_workers`.
    """
    cores = len(os.sched_getaffinity(0))
    share = None
    if shards:
        spaced = np.linspace(0, len(shards) - 1, CACHED_SAMPLE_SHARDS).round().astype(int)
        share = cached_share([shards[i] for i in np.unique(spaced)])
    cached = "unknown" if share is None else f"{share:.0%}"
    if share is not None and share < COLD_CACHED_SHARE and cores <= COLD_NO_WORKER_CORES:
        return 0, (
            f"{cached} of the store is in the page cache, so the next epoch reads it from "
            f"disk, and this process has {cores} cores: a cold epoch runs fastest with none "
            "(docs/benchmarks.md, issue 24)"
        )
    workers = default_num_workers()
    return workers, f"{cores} cores - 1, at most 8 ({cached} of the store in the page cache)"


def available_memory_bytes() -> int | None:
    """The memory the kernel says is available now (``MemAvailable``), or None off Linux."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class StoreDataModule(LightningDataModule):
    """Train/validation loaders over a prepared store, with the attributes scvi-tools reads.

    Everything that can fail on bad input (store, filter, split, batch columns) fails in the
    constructor, before a model is built. ``n_vars``, ``n_batch``, ``n_cats_per_cov``, ``n_obs``,
    ``n_train``, ``n_val`` describe the data to scvi-tools.

    Parameters
    ----------
    store
        A prepared store folder (``scvi-sweep-prepare``).
    data_cfg
        The ``data`` group: the cell filter (``data.keep`` included), the validation split and
        the subset (``data.max_cells``), all from obs (sweep.data.selection).
    batch_cfg
        The ``batch`` group: obs columns -> scVI's batch and categorical covariates.
    loader_cfg
        The ``loader`` group: batch size, workers, block and fetch sizes.
    seed
        The run's seed: the order of cells in each epoch follows (seed, epoch).
    """

    def __init__(self, store: str | Path, data_cfg, batch_cfg, loader_cfg, seed: int):
        super().__init__()
        self.store = Path(store)
        self.manifest = check_store(self.store)
        check_columns(list(batch_cfg.batch_keys), list(batch_cfg.covariate_keys), str(self.store))
        table = CellTable.read(self.store, self.manifest, [*CODED_COLUMNS, N_GENES_ALL, IS_PRIMARY])
        self.split: Split = split_for(table, self.manifest.vocab, data_cfg)
        self.encoding: BatchEncoding = encode_batches(
            table.columns,
            self.manifest.vocab,
            self.split.train | self.split.validation,
            list(batch_cfg.batch_keys),
            list(batch_cfg.covariate_keys),
            batch_cfg.separator,
        )
        self.offsets = table.offsets
        self.n_genes_all = table.columns[N_GENES_ALL]  # (n_cells,) for evaluation's cell choice
        self.loader_cfg = loader_cfg
        self.seed = seed
        self.num_workers = loader_cfg.num_workers
        if self.num_workers is None:
            shards = [self.store / entry["file"] for entry in self.manifest.shards]
            self.num_workers, why = auto_num_workers(shards)
            log.info(
                "loader.num_workers=null: %d workers: %s; set loader.num_workers to keep it "
                "(the workers decide which cells each batch holds)",
                self.num_workers,
                why,
            )
        self.train_set = self._dataset(self.split.train, shuffle=True)
        self.val_set = self._dataset(self.split.validation, shuffle=False)
        retain_freed_blocks(4 * loader_cfg.batch_size * self.n_vars)  # dense float32 batches
        if loader_cfg.read_ahead:
            self._warn_if_read_ahead_outgrows_memory()

    def _warn_if_read_ahead_outgrows_memory(self) -> None:
        """Reading ahead keeps in the page cache the group of ``max_cache_size`` shards being
        read and up to ``read_ahead_mib`` of the next (at most all of it); warn when that is
        over a quarter of the memory available now, where pages read ahead would push out the
        ones still to be read."""
        shard_bytes = max((self.store / e["file"]).stat().st_size for e in self.manifest.shards)
        group = self.loader_cfg.max_cache_size * shard_bytes
        held = group + min(group, self.loader_cfg.read_ahead_mib << 20)
        available = available_memory_bytes()
        if available is not None and held > available / 4:
            log.warning(
                "loader.read_ahead holds up to %.1f GB of this store's shards in the page cache "
                "(loader.max_cache_size=%d x %.1f GB shards, and up to loader.read_ahead_mib=%d "
                "MiB of the next ones), over a quarter of the %.1f GB available: prepare smaller "
                "shards (prepare's shard_size), lower loader.max_cache_size or "
                "loader.read_ahead_mib, or set loader.read_ahead=false",
                held / 1e9,
                self.loader_cfg.max_cache_size,
                shard_bytes / 1e9,
                self.loader_cfg.read_ahead_mib,
                available / 1e9,
            )

    # what scvi-tools reads from a datamodule
    @property
    def n_vars(self) -> int:
        return self.manifest.n_genes

    @property
    def n_batch(self) -> int:
        return self.encoding.n_batch

    @property
    def n_cats_per_cov(self) -> list[int] | None:
        cats = self.encoding.covariate_categories
        return [len(cats[k]) for k in self.encoding.covariate_keys] or None

    @property
    def n_train(self) -> int:
        return self.split.counts[CELLS_TRAIN]

    @property
    def n_val(self) -> int:
        return self.split.counts[CELLS_VALIDATION]

    @property
    def n_obs(self) -> int:
        return self.n_train + self.n_val

    def train_steps(self, epochs: int) -> int:
        """Training steps of this module's rank in ``epochs`` epochs: its batches of the first
        epoch as its readers (workers) split them, times ``epochs`` (with several readers a
        later epoch may split into a batch or so more or fewer). Lightning cannot count them:
        the loader is iterable."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        counts = self.train_set.batch_counts(0, world, max(1, self.num_workers))
        return int(counts[rank].sum()) * epochs

    @property
    def per_cell_bytes(self) -> int:
        """Bytes of the per-cell arrays (n_cells,) this module holds through training: the
        split's masks, the batch and covariate codes and ``n_genes_all``."""
        arrays = (
            self.split.train,
            self.split.validation,
            self.encoding.batch_codes,
            self.encoding.covariate_codes,
            self.n_genes_all,
        )
        return sum(array.nbytes for array in arrays)

    @property
    def slot_bytes(self) -> int:
        """Room for a typical batch in a worker's shared-memory slot: 2x the mean non-zeros per
        cell at 4 bytes each (int16 counts + int16 gene index), plus row pointers."""
        nnz_per_cell = sum(s["nnz"] for s in self.manifest.shards) / max(self.manifest.n_cells, 1)
        size = self.loader_cfg.batch_size
        return int(size * 2 * nnz_per_cell * 4 + 8 * (size + 1))

    def _by_shard(self, rows: np.ndarray):
        """(shard, its rows of ``rows`` as shard-local row numbers) for sorted global ``rows``."""
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        cuts = np.flatnonzero(np.diff(shard_of)) + 1  # rows are sorted: one run per shard
        for part in np.split(np.arange(len(rows)), cuts) if len(rows) else []:
            s = shard_of[part[0]]
            shard = Shard(self.store / self.manifest.shards[s]["file"])
            yield shard, rows[part] - self.offsets[s]
            shard.close()

    def counts(self, rows: np.ndarray) -> sp.csr_matrix:
        """Counts of store rows ``rows`` (global, sorted), (len(rows), genes) float32 CSR."""
        sources, located = [], []
        for k, (shard, local) in enumerate(self._by_shard(rows)):
            sources.append(shard.arrays())  # mapped arrays outlive the closed shard
            pointers = shard.indptr
            located.append(
                (np.full(len(local), k), pointers[local], pointers[local + 1] - pointers[local])
            )
        source, starts, lengths = (np.concatenate(parts) for parts in zip(*located, strict=True))
        n = len(rows)
        no_codes = np.zeros(n, dtype=np.int32), np.zeros((n, 0), dtype=np.int32)
        return Fetch(sources, source, starts, lengths, *no_codes, self.n_vars).csr()

    def obs_codes(self, rows: np.ndarray, columns: list[str]) -> np.ndarray:
        """Coded obs ``columns`` of store rows ``rows`` (global, sorted): (len(rows), len(columns))
        integer codes into the manifest's vocabularies, read a shard at a time."""
        parts = [
            np.stack([shard.obs_column(c)[local] for c in columns], axis=1)
            for shard, local in self._by_shard(rows)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(columns)), dtype=np.int64)

    def obs_strings(self, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
        """Coded obs ``columns`` of store rows ``rows`` (global, sorted), decoded to strings."""
        codes = self.obs_codes(rows, columns)
        return pd.DataFrame(
            {c: np.asarray(self.manifest.vocab[c])[codes[:, i]] for i, c in enumerate(columns)}
        )

    def _dataset(self, selected: np.ndarray, shuffle: bool) -> ShardBatches:
        """The reader of the cells ``selected`` (n_cells,) bool, as rank 0 of 1."""
        cfg = self.loader_cfg
        plan = EpochPlan.cover(
            self.offsets,
            selected,
            block_size=cfg.block_size,
            seed=self.seed,
            shuffle=shuffle,
            batch_size=cfg.batch_size,
            fetch_size=cfg.fetch_size,
            run_size=cfg.run_size,
            max_cache_size=cfg.max_cache_size,
            drop_last=cfg.drop_last and shuffle,
        )
        cells = StoreCells(
            [self.store / entry["file"] for entry in self.manifest.shards],
            self.offsets,
            self.n_vars,
            selected,
            self.encoding.batch_codes,
            self.encoding.covariate_codes,
        )
        return ShardBatches.over(
            plan,
            cells,
            strict=cfg.cache_size_strictly_enforced,
            reads_ahead=cfg.read_ahead,
            read_ahead_bytes=cfg.read_ahead_mib << 20,
        )

    def _loader(self, dataset: ShardBatches) -> EpochLoader:
        on_cpu = self.trainer is None or self.trainer.strategy.root_device.type == "cpu"
        return self.loader(dataset, trains_on_cpu=on_cpu)

    def _drawn_before(self, validation: bool) -> bool:
        """Whether the run this trainer resumes had read the training set (``validation``: the
        validation set) before its checkpoint: the training set always; the validation set
        once an epoch had finished (was validated)."""
        if self.trainer is None or self.trainer.ckpt_path is None:
            return False
        return not validation or self.trainer.current_epoch >= 1

    def loader(self, dataset: ShardBatches, trains_on_cpu: bool) -> EpochLoader:
        """The loader of ``dataset`` (``train_set`` or ``val_set``) for this module's trainer:
        batches dense for one on the CPU, else CSR, densified on the device."""
        validation = dataset is self.val_set
        if self.trainer is not None:
            dataset = replace(
                dataset, rank=self.trainer.global_rank, world_size=self.trainer.world_size
            )
        workers = self.num_workers
        return EpochLoader(
            dataset,
            epoch_of=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            trained_of=self._batches_trained,
            drawn_before_of=functools.partial(self._drawn_before, validation),
            slot_bytes=self.slot_bytes,
            reader_thread=self.loader_cfg.reader_thread,
            batches_per_handoff=self.loader_cfg.batches_per_handoff,
            trains_on_cpu=trains_on_cpu,
            num_workers=workers,
            prefetch_factor=self.loader_cfg.prefetch_factor if workers else None,
            persistent_workers=self.loader_cfg.persistent_workers and workers > 0,
            pin_memory=self.loader_cfg.pin_memory,
        )

    def _batches_trained(self) -> int:
        """Batches of the current epoch the trainer has taken so far (a checkpoint written at
        the end of a training step counts that step's): where a resumed epoch restarts."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> EpochLoader:
        return self._loader(self.train_set)

    def val_dataloader(self) -> EpochLoader:
        return self._loader(self.val_set)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Densify the CSR batch on the training device, right before the model sees it."""
        return densify(batch, self.n_vars)
