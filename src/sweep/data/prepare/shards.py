"""Groups and shards: cells, read from the sources, into group files sorted by their shuffled store
row; then runs of shards gathered from the groups and written through the store writer.

The shuffle is a seeded permutation of all cells across all sources, computed cell by cell
(:func:`shuffled_rows`), so no process holds it whole. Its reach is the whole store: every shard
is a random draw from every source. A **group** is a range of ``group_cells`` consecutive cells
(in source order, possibly spanning or splitting sources). :func:`read_group` reads a group's
source rows once: it checks and scans them (:func:`~.checks.scan_rows`) and, when the store's
genes are known, writes the group's cells, store genes kept, sorted by store row into
``.prepare_tmp/group_XXXXX.h5`` with the scans (so a group read in pass 1 is not read again).
Codes in a group index the group's own vocabulary; :func:`write_store_shard` maps them to the
store's. Pass 3 reads each run of shards' rows (one contiguous slice per group, located by the
group's ``bounds``). A worker holds one group or one run of shards (about ``group_cells`` cells)
at a time.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.config.schema import PrepareConfig
from sweep.data.prepare.checks import Scan, obs_columns, scan_rows
from sweep.data.prepare.config import PrepareError
from sweep.data.prepare.sources import GeneTable, SourceReader, read_ahead
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
        """Group ``group``'s cells: (source, first row, end row, first cell) per source part; a
        source without cells is a part of the group its position falls in (the last at the end)."""
        lo, hi = group * self.group_cells, min((group + 1) * self.group_cells, self.n_cells)
        starts = np.concatenate([[0], np.cumsum(n_cells)])
        last = group == self.n_groups - 1
        parts = []
        at_lo = min(np.searchsorted(starts, lo, "left"), np.searchsorted(starts, lo, "right") - 1)
        for source in range(int(at_lo), len(n_cells)):
            first, end = max(lo, starts[source]), min(hi, starts[source + 1])
            if first > hi or (first == hi and not (last and n_cells[source] == 0)):
                break
            if end > first or n_cells[source] == 0:
                offset = int(starts[source])
                parts.append((source, int(first) - offset, int(end) - offset, int(first)))
        return parts

    def shard_cells(self, shard: int) -> int:
        return min(self.shard_size, self.n_cells - shard * self.shard_size)


def group_path(tmp: Path, group: int) -> Path:
    return tmp / f"group_{group:05d}.h5"


class Part(NamedTuple):
    """Rows [first, end) of source ``index`` (``path``, ``n_cells`` cells), in a group; the first
    is cell ``first_cell`` over all sources."""

    path: Path
    index: int
    n_cells: int
    first: int
    end: int
    first_cell: int


@dataclass(frozen=True)
class GroupTask:
    """Read one group: check and scan its source parts with ``cfg`` (HVG sample drawn with
    ``sample_probability``) and, with the store's ``genes``, write its group file."""

    index: int
    parts: list[Part]
    genes: GeneTable | None
    layout: Layout
    cfg: PrepareConfig
    sample_probability: float

    @property
    def key(self) -> str:
        """What the group file holds (parts, layout, genes): a file with another is rewritten."""
        what = (
            [(str(p.path), *p[1:]) for p in self.parts],
            _layout_key(self.layout),
            self.cfg.hvg_min_genes,
            self.cfg.seed,
        )
        digest = hashlib.sha256(repr(what).encode())
        digest.update(self.genes.blob if self.genes is not None else b"")
        return digest.hexdigest()

    @property
    def n_cells(self) -> int:
        return sum(p.end - p.first for p in self.parts)


def group_tasks(
    paths: list[Path],
    n_cells: list[int],
    layout: Layout,
    genes: GeneTable | None,
    cfg: PrepareConfig,
    sample_probability: float,
) -> list[GroupTask]:
    """One task per group of ``layout`` over the sources ``paths`` of ``n_cells`` cells."""
    return [
        GroupTask(
            group,
            [
                Part(paths[i], i, n_cells[i], first, end, cell)
                for i, first, end, cell in layout.group_parts(n_cells, group)
            ],
            genes,
            layout,
            cfg,
            sample_probability,
        )
        for group in range(layout.n_groups)
    ]


def _layout_key(layout: Layout) -> list[int]:
    return [layout.n_cells, layout.group_cells, layout.shard_size]


def stored_scans(path: Path, key: str) -> list[Scan] | None:
    """The scans of a whole group file of ``key`` at ``path`` (written before), else None."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") != key or "bounds" not in f:
                return None
            return pickle.loads(f["scans"][()].tobytes())
    except (OSError, KeyError):
        return None


def read_group(task: GroupTask, path: Path) -> list[Scan | PrepareError]:
    """Read group ``task.index``: per source part its Scan, or the PrepareError that refuses the
    source. With ``task.genes`` and no error, also write the group file to ``path`` (atomically).

    The next part's file is read ahead while one part is processed (a cold disk and the CPU
    work at once).
    """
    results, rows = [], []
    for k, part in enumerate(task.parts):
        if k + 1 < len(task.parts):
            with suppress(OSError):  # only a hint: a file that cannot be read fails below
                read_ahead(task.parts[k + 1].path)
        try:
            with SourceReader(part.path, obs_columns(task.cfg)) as reader:
                if reader.n_cells != part.n_cells:
                    raise PrepareError(
                        f"{part.path}: the file changed since prepare opened it; prepare again"
                    )
                scan, X, n_genes_all = scan_rows(
                    reader,
                    task.cfg,
                    part.index,
                    (part.first, part.end),
                    task.sample_probability,
                    task.genes,
                )
                coded = {c: reader.obs[c][part.first : part.end] for c in CODED_COLUMNS}
                flags = reader.obs[IS_PRIMARY][part.first : part.end]
                cell_ids = reader.cell_ids[part.first : part.end]
        except PrepareError as err:
            results.append(err)
            continue
        results.append(scan)
        cells = np.arange(part.first_cell, part.first_cell + part.end - part.first)
        rows.append((X, cells, coded, n_genes_all, flags, cell_ids))
    if task.genes is not None and len(rows) == len(results):
        _write_group(task, path, rows, results)
    return results


def _write_group(task: GroupTask, path: Path, rows: list[tuple], scans: list[Scan]) -> None:
    """The group file: its cells sorted by store row: X (CSR, store genes), ``dest`` (store
    rows), ``codes`` (cells, coded columns) into ``vocab`` (each column's values, sorted, one
    column after the other; ``vocab_sizes``: how many each), N_GENES_ALL, IS_PRIMARY,
    ``cell_ids``, ``bounds`` int64 (shards + 1: where each shard's rows begin) and the pickled
    ``scans``."""
    X, cells, coded, n_genes_all, flags, cell_ids = zip(*rows, strict=True)
    dest = shuffled_rows(np.concatenate(cells), task.layout.n_cells, task.cfg.seed)
    order = np.argsort(dest, kind="stable")
    vocab = {c: np.unique(np.concatenate([p[c].categories for p in coded])) for c in CODED_COLUMNS}
    codes = [
        np.concatenate([np.searchsorted(vocab[c], p[c].categories)[p[c].codes] for p in coded])
        for c in CODED_COLUMNS
    ]
    fields = {
        "dest": dest,
        "codes": np.stack(codes, axis=1).astype(CODE_DTYPE),
        N_GENES_ALL: np.concatenate(n_genes_all),
        IS_PRIMARY: np.concatenate(flags),
    }
    X = sp.vstack(X, format="csr")[order]
    starts = np.arange(task.layout.n_shards + 1) * task.layout.shard_size
    partial = path.with_name(path.name + ".tmp")
    with h5py.File(partial, "w") as out:
        out.create_dataset("data", data=X.data)
        out.create_dataset("indices", data=X.indices.astype(gene_index_dtype(len(task.genes))))
        out.create_dataset("indptr", data=X.indptr.astype(np.int64))
        for name, values in fields.items():
            out.create_dataset(name, data=values[order])
        ids = np.concatenate(cell_ids)[order].astype(object)
        out.create_dataset("cell_ids", data=ids, dtype=h5py.string_dtype())
        values = np.concatenate([vocab[c] for c in CODED_COLUMNS]).astype(object)
        out.create_dataset("vocab", data=values, dtype=h5py.string_dtype())
        out.create_dataset("vocab_sizes", data=[len(vocab[c]) for c in CODED_COLUMNS])
        out.create_dataset("scans", data=np.frombuffer(pickle.dumps(scans), dtype=np.uint8))
        out.create_dataset("bounds", data=np.searchsorted(dest[order], starts))
        out.attrs["key"] = task.key
    os.replace(partial, path)


def _read_rows(
    group: h5py.File, first: int, end: int, n_genes: int, vocab: dict[str, pd.Index]
) -> tuple:
    """Rows [first, end) of a group: (CSR (rows, genes), {field: array (rows, ...)}, cell ids),
    codes mapped to the store's ``vocab`` (per coded column)."""
    indptr = group["indptr"][first : end + 1]
    lo, hi = int(indptr[0]), int(indptr[-1])
    X = sp.csr_matrix(
        (group["data"][lo:hi], group["indices"][lo:hi], indptr - lo), shape=(end - first, n_genes)
    )
    fields = {name: group[name][first:end] for name in FIELDS}
    values = group["vocab"].asstr()[()]
    starts = np.cumsum([0, *group["vocab_sizes"][()]])
    for j, column in enumerate(CODED_COLUMNS):
        to_store = vocab[column].get_indexer(values[starts[j] : starts[j + 1]])
        fields["codes"][:, j] = to_store[fields["codes"][:, j]]
        if (fields["codes"][:, j] < 0).any():
            raise PrepareError(
                f"{group.filename}: its {column} values are not all in the store's vocabulary "
                f"(a source changed): delete {Path(group.filename).parent} and prepare again"
            )
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
    writer: StoreWriter, shards: list[int], tmp: Path, layout: Layout, vocab: dict
) -> list[dict]:
    """Pass 3: gather the consecutive ``shards`` from every group in ``tmp``, write each (codes
    into the store's ``vocab``).

    Returns their manifest entries, in order.
    """
    lo, hi = shards[0], shards[-1] + 1
    store_vocab = {column: pd.Index(vocab[column]) for column in CODED_COLUMNS}
    matrices, parts, ids = [], [], []
    for group in range(layout.n_groups):
        with h5py.File(group_path(tmp, group), "r") as f:
            first, end = (int(b) for b in f["bounds"][[lo, hi]])
            if end > first:
                X, fields, cell_ids = _read_rows(f, first, end, len(writer.genes), store_vocab)
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
