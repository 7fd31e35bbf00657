"""Which cells train and which validate: the ``data`` group's filter and the deterministic split.

Everything here works on the store's obs columns alone (a few bytes per cell), never on X.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sweep.data.store import IS_PRIMARY, N_GENES_ALL, Manifest, Shard
from sweep.metric_names import (
    CELLS_AFTER_FILTER,
    CELLS_IN_STORE,
    CELLS_NOT_PRIMARY,
    CELLS_TRAIN,
    CELLS_VALIDATION,
    cells_below_genes,
)

log = logging.getLogger(__name__)


@dataclass
class CellTable:
    """Obs columns of a whole store, concatenated in store order (shard 0 rows, shard 1 rows, ...).

    ``columns[name]`` has shape (n_cells,); ``offsets[s]`` is the first global row of shard ``s``
    (shape (n_shards + 1,)).
    """

    columns: dict[str, np.ndarray]
    offsets: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def read(cls, store: str | Path, manifest: Manifest, names: list[str]) -> CellTable:
        """Read obs columns ``names`` of every shard (h5py, one read per column and shard), each
        kept in the narrowest dtype that holds it (:func:`narrowed`): a coded column in 1 byte a
        cell up to 256 values, ``n_genes_all`` in 2 up to 65,535 genes."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for entry in manifest.shards:
            shard = Shard(Path(store) / entry["file"])
            for name in names:
                values = shard.obs_column(name)
                largest = len(manifest.vocab[name]) - 1 if name in manifest.vocab else None
                parts[name].append(narrowed(values, largest))
            shard.close()
        sizes = [entry["n_cells"] for entry in manifest.shards]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls({name: np.concatenate(p) for name, p in parts.items()}, offsets)


def narrowed(values: np.ndarray, largest: int | None = None) -> np.ndarray:
    """Non-negative integer ``values`` (n,) in the narrowest unsigned dtype holding ``largest``
    (default: their largest value); other values (bool, signed) as they are."""
    if values.dtype.kind != "i" or (values.size and values.min() < 0):
        return values
    top = int(values.max(initial=0)) if largest is None else max(largest, 0)
    return values.astype(np.min_scalar_type(top), copy=False)


@dataclass
class Split:
    """Boolean masks over the store's cells, shape (n_cells,), and the counts behind them."""

    train: np.ndarray
    validation: np.ndarray
    counts: dict[str, int]


def validation_flags(n_cells: int, fraction: float, seed: int) -> np.ndarray:
    """Mark ``fraction`` of all cells for validation from ``seed`` alone, shape (n_cells,) bool.

    The flag depends only on a cell's position in the store, not on the filter, model or batch
    definition, so every job of a sweep with the same ``data`` filter validates on the same cells.
    """
    return np.random.default_rng(seed).random(n_cells) < fraction


def split_cells(
    table: CellTable, min_genes: int, primary_only: bool, validation_fraction: float, seed: int
) -> Split:
    """Apply the cell filter, then split what passes into train and validation.

    Raises ``ValueError`` when the filter leaves no cells or the split leaves none to validate on.
    """
    n = table.n_cells
    primary = table.columns[IS_PRIMARY].astype(bool)
    enough_genes = table.columns[N_GENES_ALL] >= min_genes
    keep = enough_genes & primary if primary_only else enough_genes
    counts = {
        CELLS_IN_STORE: n,
        CELLS_NOT_PRIMARY: int((~primary).sum()),
        cells_below_genes(min_genes): int((~enough_genes).sum()),
        CELLS_AFTER_FILTER: int(keep.sum()),
    }
    if counts[CELLS_AFTER_FILTER] == 0:
        raise ValueError(
            f"the cell filter (min_genes={min_genes}, primary_only={primary_only}) leaves no cells "
            f"of the {n} in the store; lower data.min_genes or use data=none"
        )
    is_val = validation_flags(n, validation_fraction, seed)
    split = Split(train=keep & ~is_val, validation=keep & is_val, counts=counts)
    counts[CELLS_TRAIN] = int(split.train.sum())
    counts[CELLS_VALIDATION] = int(split.validation.sum())
    if counts[CELLS_VALIDATION] == 0:
        raise ValueError(
            f"data.validation_fraction={validation_fraction} leaves no validation cells of the "
            f"{counts['cells_after_filter']} that pass the filter; raise it (e.g. 0.1)"
        )
    if counts[CELLS_TRAIN] == 0:
        raise ValueError(
            f"data.validation_fraction={validation_fraction} leaves no training cells; lower it"
        )
    log.info("cells: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return split
