"""Passes 2 and 3: cells into group files sorted by their shuffled store row, then runs of shards
gathered from the groups and written through the store writer.

The shuffle is a seeded permutation of all cells across all sources, computed cell by cell
(:func:`shuffled_rows`), so no process holds it whole. Its reach is the whole store: every shard
is a random draw from every source. A **group** is a range of ``group_cells`` consecutive cells
(in source order, possibly spanning or splitting sources): pass 2 writes each group's cells,
store genes kept, sorted by store row into ``.prepare_tmp/group_XXXXX.h5``; pass 3 reads each run
of shards' rows (one contiguous slice per group, located by the group's ``bounds``). A worker
holds one group or one run of shards (about ``group_cells`` cells) at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.data.prepare.config import PrepareError
from sweep.data.prepare.sources import SourceReader, expressed_genes, select_genes
from sweep.data.store import (
    CODE_DTYPE,
    CODED_COLUMNS,
    IS_PRIMARY,
    N_GENES_ALL,
    StoreWriter,
    gene_index_dtype,
    shard_name,
    shard_problem,
)

GROUP_NNZ = 50_000_000  # source non-zeros (all genes) per group, on average: a worker's memory
FEISTEL_ROUNDS = 4
FIELDS = ("dest", "codes", N_GENES_ALL, IS_PRIMARY)  # per-row arrays of a group besides X


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of ``x ^ key``, uint64 (n,)."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shuffled_rows(cells: np.ndarray, n_cells: int, seed: int) -> np.ndarray:
    """Seeded global shuffle: the store row of each cell (its index over all sources), int64.

    A permutation of [0, n_cells): a Feistel network on the smallest even number of bits that
    holds n_cells - 1, walked until it lands in range. Store row ``r`` lives in shard
    ``r // shard_size`` at row ``r % shard_size``.
    """
    half = max(1, (int(n_cells - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng(seed).integers(
        0, np.iinfo(np.uint64).max, size=FEISTEL_ROUNDS, dtype=np.uint64
    )

    def permute(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & mask)
        return (left << np.uint64(half)) | right

    rows = permute(np.asarray(cells, dtype=np.uint64))
    outside = np.flatnonzero(rows >= n_cells)
    while len(outside):
        rows[outside] = permute(rows[outside])
        outside = outside[rows[outside] >= n_cells]
    return rows.astype(np.int64)


@dataclass(frozen=True)
class Layout:
    """How passes 2 and 3 cut the store: ``n_cells`` cells in groups of ``group_cells`` and
    shards of ``shard_size``, written in runs of ``run_shards``."""

    n_cells: int
    group_cells: int
    shard_size: int

    @classmethod
    def plan(cls, n_cells: list[int], nnz: int, shard_size: int) -> Layout:
        """Groups of about GROUP_NNZ non-zeros, at least one shard's worth of cells."""
        total = sum(n_cells)
        per_cell = max(1.0, nnz / max(1, total))
        return cls(total, max(shard_size, int(GROUP_NNZ / per_cell)), shard_size)

    @property
    def n_groups(self) -> int:
        return -(-self.n_cells // self.group_cells)

    @property
    def n_shards(self) -> int:
        return -(-self.n_cells // self.shard_size)

    @property
    def run_shards(self) -> int:
        return max(1, self.group_cells // self.shard_size)

    def group_parts(self, n_cells: list[int], group: int) -> list[tuple[int, int, int, int]]:
        """Group ``group``'s cells: (source, first row, end row, first cell) per source part."""
        lo, hi = group * self.group_cells, min((group + 1) * self.group_cells, self.n_cells)
        starts = np.concatenate([[0], np.cumsum(n_cells)])
        parts = []
        for source in range(int(np.searchsorted(starts, lo, side="right")) - 1, len(n_cells)):
            first, end = max(lo, starts[source]), min(hi, starts[source + 1])
            if first >= hi:
                break
            if end > first:
                offset = int(starts[source])
                parts.append((source, int(first) - offset, int(end) - offset, int(first)))
        return parts

    def shard_cells(self, shard: int) -> int:
        return min(self.shard_size, self.n_cells - shard * self.shard_size)


def group_path(tmp: Path, group: int) -> Path:
    return tmp / f"group_{group:05d}.h5"


def _encode(reader: SourceReader, vocab: dict[str, list[str]]) -> np.ndarray:
    """The coded columns as codes into the global vocabulary, int32 (cells, len(CODED_COLUMNS))."""
    codes = np.empty((reader.n_cells, len(CODED_COLUMNS)), dtype=CODE_DTYPE)
    for j, column in enumerate(CODED_COLUMNS):
        codes[:, j] = pd.Categorical(reader.obs[column], categories=vocab[column]).codes
    if (codes < 0).any():
        raise PrepareError(f"{reader.path}: obs changed since it was scanned; prepare again")
    return codes


@dataclass(frozen=True)
class GroupTask:
    """Pass 2 for one group: its source parts (path, first row, end row, first cell, gene
    table) and, per gene table, each source gene's store column (-1: dropped), int32 (genes,)."""

    index: int
    parts: list[tuple[Path, int, int, int, int]]
    columns: list[np.ndarray]
    n_genes: int
    vocab: dict[str, list[str]]
    layout: Layout
    seed: int
    chunk_rows: int


def group_ready(path: Path, n_cells: int, layout: Layout) -> bool:
    """Whether ``path`` is a whole group file of ``n_cells`` cells cut by ``layout`` (left by an
    interrupted run)."""
    try:
        with h5py.File(path, "r") as f:
            cut = list(f.attrs.get("layout", []))
            return len(f["dest"]) == n_cells and "bounds" in f and cut == _layout_key(layout)
    except (OSError, KeyError):
        return False


def _layout_key(layout: Layout) -> list[int]:
    return [layout.n_cells, layout.group_cells, layout.shard_size]


def write_group(task: GroupTask, path: Path) -> int:
    """Write group ``task.index`` to ``path`` (atomically); return its cells.

    The file holds the group's cells sorted by store row: X (CSR, store genes), the FIELDS and
    ``cell_ids``, and ``bounds`` int64 (shards + 1): where each shard's rows begin.
    """
    matrices, fields, cell_ids = [], {name: [] for name in FIELDS}, []
    for source, first, end, first_cell, table in task.parts:
        columns = task.columns[table]
        with SourceReader(source, (*CODED_COLUMNS, IS_PRIMARY), genes=False) as reader:
            if reader.n_genes != len(columns) or reader.n_cells < end:
                raise PrepareError(
                    f"{source}: the file changed since it was checked; prepare again"
                )
            codes = _encode(reader, task.vocab)[first:end]
            for _, chunk in reader.chunks(task.chunk_rows, first, end):
                matrices.append(select_genes(chunk, columns, task.n_genes))
                fields[N_GENES_ALL].append(expressed_genes(chunk))
            fields["codes"].append(codes)
            fields[IS_PRIMARY].append(reader.obs[IS_PRIMARY][first:end])
            fields["dest"].append(np.arange(first_cell, first_cell + end - first))
            cell_ids.append(reader.cell_ids[first:end])
    rows = {name: np.concatenate(parts) for name, parts in fields.items()}
    rows["dest"] = shuffled_rows(rows["dest"], task.layout.n_cells, task.seed)
    order = np.argsort(rows["dest"], kind="stable")
    rows = {name: values[order] for name, values in rows.items()}
    X = sp.vstack(matrices, format="csr")[order]
    starts = np.arange(task.layout.n_shards + 1) * task.layout.shard_size
    partial = path.with_name(path.name + ".tmp")
    with h5py.File(partial, "w") as out:
        out.create_dataset("data", data=X.data)
        out.create_dataset("indices", data=X.indices.astype(gene_index_dtype(task.n_genes)))
        out.create_dataset("indptr", data=X.indptr.astype(np.int64))
        for name, values in rows.items():
            out.create_dataset(name, data=values)
        ids = np.concatenate(cell_ids)[order].astype(object)
        out.create_dataset("cell_ids", data=ids, dtype=h5py.string_dtype())
        out.create_dataset("bounds", data=np.searchsorted(rows["dest"], starts))
        out.attrs["layout"] = _layout_key(task.layout)
    os.replace(partial, path)
    return len(order)


def _read_rows(group: h5py.File, first: int, end: int, n_genes: int) -> tuple:
    """Rows [first, end) of a group: (CSR (rows, genes), {field: array (rows, ...)}, cell ids)."""
    indptr = group["indptr"][first : end + 1]
    lo, hi = int(indptr[0]), int(indptr[-1])
    X = sp.csr_matrix(
        (group["data"][lo:hi], group["indices"][lo:hi], indptr - lo), shape=(end - first, n_genes)
    )
    fields = {name: group[name][first:end] for name in FIELDS}
    return X, fields, group["cell_ids"].asstr()[first:end]


def finished_shard(folder: Path, shard: int, layout: Layout, n_genes: int) -> dict | None:
    """The manifest entry of shard ``shard`` when an interrupted run wrote it whole, else None."""
    path = folder / shard_name(shard)
    try:
        with h5py.File(path, "r") as f:
            nnz = int(f["X/data"].shape[0])
    except (OSError, KeyError):
        return None
    if shard_problem(path, layout.shard_cells(shard), n_genes, nnz) is not None:
        return None
    return {"file": path.name, "n_cells": layout.shard_cells(shard), "nnz": nnz}


def write_store_shard(
    writer: StoreWriter, shards: list[int], tmp: Path, layout: Layout
) -> list[dict]:
    """Pass 3: gather the consecutive ``shards`` from every group in ``tmp``, write each.

    Returns their manifest entries, in order.
    """
    lo, hi = shards[0], shards[-1] + 1
    matrices, parts, ids = [], [], []
    for group in range(layout.n_groups):
        with h5py.File(group_path(tmp, group), "r") as f:
            first, end = (int(b) for b in f["bounds"][[lo, hi]])
            if end > first:
                X, fields, cell_ids = _read_rows(f, first, end, len(writer.genes))
                matrices.append(X)
                parts.append(fields)
                ids.append(cell_ids)
    fields = {name: np.concatenate([p[name] for p in parts]) for name in FIELDS}
    order = np.argsort(fields["dest"], kind="stable")
    first_row = lo * layout.shard_size
    if not np.array_equal(fields["dest"][order], np.arange(first_row, first_row + len(order))):
        raise PrepareError(
            f"{tmp}: the groups do not match the shuffle of shards {lo}-{hi - 1}; "
            f"delete {tmp} and prepare again"
        )
    X = sp.vstack(matrices, format="csr")[order]
    fields = {name: values[order] for name, values in fields.items()}
    cell_ids = np.concatenate(ids)[order]
    entries = []
    for shard in shards:
        start = (shard - lo) * layout.shard_size
        rows = slice(start, start + layout.shard_cells(shard))
        codes = fields["codes"][rows]
        obs = pd.DataFrame(
            {column: codes[:, j] for j, column in enumerate(CODED_COLUMNS)},
            index=pd.Index(cell_ids[rows], dtype=object),
        )
        obs[N_GENES_ALL] = fields[N_GENES_ALL][rows]
        obs[IS_PRIMARY] = fields[IS_PRIMARY][rows]
        entries.append(writer.write_shard(shard, X[rows], obs))
    return entries
