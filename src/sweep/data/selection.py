"""Which cells train and which validate: the ``data`` group's filter and the deterministic split.

Everything here works on the store's obs columns alone (a few bytes per cell), never on X. The
filter is the ``data`` group's gene-count and primary-data filter, then its value filter on coded
obs columns (``data.keep``); the validation flags are drawn by store position, and a subset
(``data.max_cells``) is drawn from each side of the split, stratified by dataset, so a subset's
validation cells are among the full store's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sweep.data.store import CODED_COLUMNS, IS_PRIMARY, N_GENES_ALL, Manifest, Shard
from sweep.metric_names import (
    CELLS_AFTER_FILTER,
    CELLS_IN_STORE,
    CELLS_NOT_PRIMARY,
    CELLS_NOT_SUBSAMPLED,
    CELLS_OUTSIDE_KEEP,
    CELLS_TRAIN,
    CELLS_VALIDATION,
    DATA_SUBSET,
    MAX_CELLS,
    cells_below_genes,
)

log = logging.getLogger(__name__)

#: the obs column a subset (``data.max_cells``) is stratified by: every dataset keeps its share
STRATUM = "dataset_id"
#: the subset's random stream, next to the validation flags' (drawn from the seed alone)
SUBSET_STREAM = 1


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
    """Boolean masks over the store's cells, shape (n_cells,), and the counts behind them;
    ``subset``: in words, how ``data.keep`` and ``data.max_cells`` narrowed the cells ("" when
    neither did)."""

    train: np.ndarray
    validation: np.ndarray
    counts: dict[str, int]
    subset: str = field(default="")

    def summary(self) -> dict:
        """What metrics.json records of the split: the counts, and the subset in words
        (``data_subset``) when there is one."""
        return {**self.counts, **({DATA_SUBSET: self.subset} if self.subset else {})}


def validation_flags(n_cells: int, fraction: float, seed: int) -> np.ndarray:
    """Mark ``fraction`` of all cells for validation from ``seed`` alone, shape (n_cells,) bool.

    The flag depends only on a cell's position in the store, not on the filter, model or batch
    definition, so every job of a sweep with the same ``data`` filter validates on the same cells.
    """
    return np.random.default_rng(seed).random(n_cells) < fraction


def split_cells(
    table: CellTable,
    min_genes: int,
    primary_only: bool,
    validation_fraction: float,
    seed: int,
    *,
    keep: Mapping[str, Sequence[str]] | None = None,
    vocab: Mapping[str, Sequence[str]] | None = None,
    max_cells: int | None = None,
) -> Split:
    """Apply the cell filter, then split what passes into train and validation.

    Parameters
    ----------
    table
        The store's obs columns: ``n_genes_all`` and ``is_primary_data``, every ``keep`` column,
        and ``dataset_id`` when ``max_cells`` is set.
    min_genes, primary_only
        The gene-count and primary-data filter (``data.min_genes``, ``data.primary_only``).
    validation_fraction, seed
        The share of store rows that validate and the seed of their flags (and of the subset).
    keep
        ``data.keep``: obs column -> the values whose cells are kept (:func:`keep_mask`).
    vocab
        The store's vocabularies (column -> values in code order); needed with ``keep``.
    max_cells
        ``data.max_cells``: at most this many training cells, with validation cells in the same
        proportion, each side drawn by :func:`stratified_subset`; None: every cell.

    Returns
    -------
    The train and validation masks, shape (n_cells,) bool, with the counts (logged).

    Raises ``ValueError`` when the filter leaves no cells or the split leaves none to validate
    on, or (:func:`keep_mask`) when ``keep`` names a column or value the store does not have.
    """
    n = table.n_cells
    primary = table.columns[IS_PRIMARY].astype(bool)
    enough_genes = table.columns[N_GENES_ALL] >= min_genes
    keep_cells = enough_genes & primary if primary_only else enough_genes
    counts = {
        CELLS_IN_STORE: n,
        CELLS_NOT_PRIMARY: int((~primary).sum()),
        cells_below_genes(min_genes): int((~enough_genes).sum()),
    }
    words = []
    if keep:
        listed = keep_mask(table, keep, vocab or {})
        counts[CELLS_OUTSIDE_KEEP] = int((~listed).sum())
        keep_cells &= listed
        words.append(keep_words(keep))
    counts[CELLS_AFTER_FILTER] = int(keep_cells.sum())
    if counts[CELLS_AFTER_FILTER] == 0:
        raise ValueError(
            f"the cell filter (min_genes={min_genes}, primary_only={primary_only}"
            + (f", {keep_words(keep)}" if keep else "")
            + f") leaves no cells of the {n} in the store; lower data.min_genes or use "
            "data=none" + (", or widen data.keep" if keep else "")
        )
    is_val = validation_flags(n, validation_fraction, seed)
    split = Split(train=keep_cells & ~is_val, validation=keep_cells & is_val, counts=counts)
    if max_cells is not None:
        words.append(subsample(split, table, max_cells, seed))
    counts[CELLS_TRAIN] = int(split.train.sum())
    counts[CELLS_VALIDATION] = int(split.validation.sum())
    split.subset = "; ".join(words)
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
    if split.subset:
        log.info("cells narrowed: %s", split.subset)
    return split


def split_for(table: CellTable, vocab: Mapping[str, Sequence[str]], data_cfg) -> Split:
    """:func:`split_cells` as the ``data`` group asks.

    Parameters
    ----------
    table
        The store's obs columns, at least :func:`columns_for` ``(data_cfg)``.
    vocab
        The store's vocabularies (the manifest's: column -> values in code order).
    data_cfg
        The ``data`` group (``min_genes``, ``primary_only``, ``validation_fraction``,
        ``split_seed``, ``keep``, ``max_cells``).

    Returns
    -------
    The split: train and validation masks (n_cells,) bool, their counts and the subset in words.
    """
    return split_cells(
        table,
        min_genes=data_cfg.min_genes,
        primary_only=data_cfg.primary_only,
        validation_fraction=data_cfg.validation_fraction,
        seed=data_cfg.split_seed,
        keep={k: list(v) for k, v in (getattr(data_cfg, "keep", None) or {}).items()},
        vocab=vocab,
        max_cells=getattr(data_cfg, "max_cells", None),
    )


def columns_for(data_cfg) -> list[str]:
    """The obs columns :func:`split_for` reads.

    Parameters
    ----------
    data_cfg
        The ``data`` group.

    Returns
    -------
    The filter's columns, every coded ``data.keep`` column (:func:`keep_mask` refuses the
    others) and, with ``data.max_cells``, the stratum (:data:`STRATUM`), each once.
    """
    keep = [c for c in getattr(data_cfg, "keep", None) or {} if c in CODED_COLUMNS]
    names = [N_GENES_ALL, IS_PRIMARY, *keep]
    if getattr(data_cfg, "max_cells", None) is not None:
        names.append(STRATUM)
    return list(dict.fromkeys(names))


def keep_mask(
    table: CellTable, keep: Mapping[str, Sequence[str]], vocab: Mapping[str, Sequence[str]]
) -> np.ndarray:
    """The value filter of ``data.keep``.

    Parameters
    ----------
    table
        The store's obs columns, every ``keep`` column among them.
    keep
        Coded obs column -> the values whose cells are kept.
    vocab
        The store's vocabularies (column -> values in code order).

    Returns
    -------
    Cells whose value of every ``keep`` column is one of its listed values, (n_cells,) bool.

    Raises ``ValueError`` (:func:`check_keep`) for a column or value the store does not have.
    """
    check_keep(keep, vocab)
    mask = np.ones(table.n_cells, dtype=bool)
    for column, values in keep.items():
        known = {str(v): code for code, v in enumerate(vocab[column])}
        mask &= np.isin(table.columns[column], [known[str(v)] for v in values])
    return mask


def check_keep(keep: Mapping[str, Sequence[str]], vocab: Mapping[str, Sequence[str]]) -> None:
    """Refuse a ``data.keep`` the store cannot honour, from its manifest alone (the training
    command checks every job's before Hydra starts; :func:`keep_mask` again as a job reads).

    Parameters
    ----------
    keep
        Coded obs column -> the values whose cells are kept.
    vocab
        The store's vocabularies (the manifest's: column -> values in code order).

    Raises ``ValueError`` (one line, the key ``data.keep.<column>`` named) for a column that is
    not one of the store's coded obs columns, or a value not in that column's vocabulary (the
    nearest value and the values that exist listed).
    """
    import difflib

    for column, values in keep.items():
        if column not in CODED_COLUMNS or column not in vocab:
            near = difflib.get_close_matches(str(column), CODED_COLUMNS, n=1)
            hint = f"did you mean data.keep.{near[0]}? " if near else ""
            raise ValueError(
                f"data.keep.{column}: {column!r} is not a coded obs column of the store; "
                f"{hint}choose one of {', '.join(CODED_COLUMNS)}"
            )
        known = [str(v) for v in vocab[column]]
        missing = [str(v) for v in values if str(v) not in set(known)]
        if missing:
            near = difflib.get_close_matches(missing[0], known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            shown = ", ".join(known[:50])
            more = f" (and {len(known) - 50} more)" if len(known) > 50 else ""
            raise ValueError(
                f"data.keep.{column}: {missing[0]!r} is not a value of {column} in the store; "
                f"{hint}its values: {shown}{more}"
            )


def keep_words(keep: Mapping[str, Sequence[str]]) -> str:
    """``data.keep`` in words: ``tissue in {blood, lung} and assay in {...}``."""
    return " and ".join(f"{c} in {{{', '.join(map(str, v))}}}" for c, v in keep.items())


def subsample(split: Split, table: CellTable, max_cells: int, seed: int) -> str:
    """Narrow ``split`` in place to ``max_cells`` training cells and validation cells in the
    proportion the split had, each side drawn by :func:`stratified_subset` from the same seeded
    keys, and count what was left out in ``split.counts``.

    Parameters
    ----------
    split
        The filtered split (masks of shape (n_cells,)); narrowed in place.
    table
        The store's obs columns, :data:`STRATUM` among them.
    max_cells
        Training cells wanted; at or above the split's, every cell is kept.
    seed
        ``data.split_seed``: the same cells for every job of this filter and seed.

    Returns
    -------
    The subset in words (run page, reports).
    """
    n_train, n_val = int(split.train.sum()), int(split.validation.sum())
    split.counts[MAX_CELLS] = int(max_cells)
    if max_cells >= n_train:
        split.counts[CELLS_NOT_SUBSAMPLED] = 0
        return f"data.max_cells={max_cells:,} is not below the {n_train:,} training cells: all kept"
    val_target = max(1, round(max_cells * n_val / n_train)) if n_val else 0
    keys = subset_keys(table.n_cells, seed)
    strata = table.columns[STRATUM]
    split.train = stratified_subset(split.train, strata, keys, max_cells)
    split.validation = stratified_subset(split.validation, strata, keys, val_target)
    split.counts[CELLS_NOT_SUBSAMPLED] = n_train + n_val - max_cells - val_target
    return (
        f"a subsample of {max_cells:,} of the {n_train:,} training cells and {val_target:,} of "
        f"the {n_val:,} validation cells, stratified by {STRATUM} (data.max_cells, seed {seed})"
    )


def subset_keys(n_cells: int, seed: int) -> np.ndarray:
    """A seeded uniform key per store row, from ``seed`` alone: a subset takes the cells of
    smallest key, so it depends on positions, never on the job.

    Parameters
    ----------
    n_cells
        Cells in the store.
    seed
        ``data.split_seed``.

    Returns
    -------
    Keys in [0, 1), shape (n_cells,) float32.
    """
    return np.random.default_rng([seed, SUBSET_STREAM]).random(n_cells, dtype=np.float32)


def stratum_quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """Share ``total`` among strata in proportion to their sizes, by largest remainders.

    Parameters
    ----------
    sizes
        Cells of each stratum, shape (n_strata,).
    total
        Cells to share, at most ``sizes.sum()``.

    Returns
    -------
    Quotas summing to ``total``, shape (n_strata,) int64: each within 1 of its exact share,
    none above its stratum's size.
    """
    exact = sizes * (total / max(int(sizes.sum()), 1))
    quotas = np.floor(exact).astype(np.int64)
    short = total - int(quotas.sum())
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:short]] += 1
    return quotas


def stratified_subset(
    selected: np.ndarray, strata: np.ndarray, keys: np.ndarray, total: int
) -> np.ndarray:
    """A subsample stratified by ``strata``: in each stratum, its quota (:func:`stratum_quotas`)
    of the selected cells with the smallest keys; within a stratum a larger quota takes a
    superset of a smaller one's cells.

    Parameters
    ----------
    selected
        Cells to draw from, shape (n_cells,) bool.
    strata
        Each cell's stratum code (non-negative), shape (n_cells,).
    keys
        Each cell's key (:func:`subset_keys`), shape (n_cells,); ties go to the earlier row.
    total
        Cells to draw (all of ``selected`` when it has fewer).

    Returns
    -------
    The cells drawn, shape (n_cells,) bool.
    """
    rows = np.flatnonzero(selected)
    codes = strata[rows].astype(np.int64)
    sizes = np.bincount(codes) if len(codes) else np.zeros(0, dtype=np.int64)
    quotas = stratum_quotas(sizes, min(total, len(rows)))
    order = np.lexsort((keys[rows], codes))  # by stratum, then key; ties by position
    ordered = codes[order]
    rank = np.arange(len(order)) - np.searchsorted(ordered, ordered)
    chosen = np.zeros_like(selected, dtype=bool)
    chosen[rows[order[rank < quotas[ordered]]]] = True
    return chosen
