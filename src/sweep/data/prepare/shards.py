"""Passes 2 and 3: each source's cells into a piece file sorted by destination, then each
shard gathered from the pieces and written through the store writer.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.data.prepare.config import PrepareConfig, PrepareError
from sweep.data.prepare.sources import SourceReader, expressed_genes, select_genes
from sweep.data.store import CODE_DTYPE, CODED_COLUMNS, IS_PRIMARY, N_GENES_ALL, StoreWriter


def piece_path(tmp: Path, index: int) -> Path:
    return tmp / f"piece_{index:05d}.h5"


def destinations(n_cells: list[int], seed: int) -> list[np.ndarray]:
    """Seeded global shuffle: per source, each cell's row in the shuffled store, int64 (cells,).

    Store row ``r`` lives in shard ``r // shard_size`` at row ``r % shard_size``.
    """
    order = np.random.default_rng(seed).permutation(sum(n_cells))
    dest = np.empty_like(order)
    dest[order] = np.arange(len(order))
    return np.split(dest, np.cumsum(n_cells)[:-1])


def _encode(reader: SourceReader, vocab: dict[str, list[str]]) -> np.ndarray:
    """The coded columns as codes into the global vocabulary, int32 (cells, len(CODED_COLUMNS))."""
    codes = np.empty((reader.n_cells, len(CODED_COLUMNS)), dtype=CODE_DTYPE)
    for j, column in enumerate(CODED_COLUMNS):
        codes[:, j] = pd.Categorical(reader.obs[column], categories=vocab[column]).codes
    if (codes < 0).any():
        raise PrepareError(f"{reader.path}: obs changed since it was scanned; prepare again")
    return codes


def write_piece(
    cfg: PrepareConfig,
    path: Path,
    piece: Path,
    genes: list[str],
    vocab: dict[str, list[str]],
    dest: np.ndarray,
) -> np.ndarray:
    """Pass 2 for one source: its cells (store genes, codes), sorted by destination within chunks.

    ``dest`` (cells,) int64 store rows. Writes ``piece`` atomically, one group per chunk, and
    returns its blocks, int64 (blocks, 4): shard, chunk, first row, end row (a block is a run of
    one chunk's rows bound for one shard). A piece left by an interrupted run is reused.
    """
    if piece.exists():
        with h5py.File(piece, "r") as f:
            return f["blocks"][:]
    partial = piece.with_name(piece.name + ".tmp")
    blocks = []
    with SourceReader(path, (*CODED_COLUMNS, IS_PRIMARY)) as reader, h5py.File(partial, "w") as out:
        columns = pd.Index(genes).get_indexer(reader.gene_ids)
        codes = _encode(reader, vocab)
        for k, (start, chunk) in enumerate(reader.chunks(cfg.chunk_rows)):
            local = np.argsort(dest[start : start + chunk.shape[0]], kind="stable")
            rows = start + local
            group = out.create_group(f"chunk_{k:05d}")
            X = select_genes(chunk, columns, len(genes))[local]
            group.create_dataset("data", data=X.data)
            group.create_dataset("indices", data=X.indices)
            group.create_dataset("indptr", data=X.indptr.astype(np.int64))
            group.create_dataset("dest", data=dest[rows])
            group.create_dataset("codes", data=codes[rows])
            group.create_dataset(N_GENES_ALL, data=expressed_genes(chunk)[local])
            group.create_dataset(IS_PRIMARY, data=reader.obs[IS_PRIMARY][rows])
            group.create_dataset(
                "cell_ids", data=reader.cell_ids[rows].astype(object), dtype=h5py.string_dtype()
            )
            shard = dest[rows] // cfg.shard_size
            firsts = np.flatnonzero(np.diff(shard, prepend=-1))
            ends = np.append(firsts[1:], len(rows))
            blocks.append(np.column_stack([shard[firsts], np.full_like(firsts, k), firsts, ends]))
        blocks = np.concatenate(blocks).astype(np.int64) if blocks else np.zeros((0, 4), np.int64)
        out.create_dataset("blocks", data=blocks)
    os.replace(partial, piece)
    return blocks


def shard_tasks(blocks: list[np.ndarray], n_shards: int) -> list[np.ndarray]:
    """Regroup pass 2's blocks by shard: per shard, int64 (blocks, 4): source, chunk, first, end."""
    table = np.concatenate(
        [np.column_stack([b[:, 0], np.full(len(b), i), b[:, 1:]]) for i, b in enumerate(blocks)]
    )
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    bounds = np.searchsorted(table[:, 0], np.arange(n_shards + 1))
    return [table[bounds[s] : bounds[s + 1], 1:] for s in range(n_shards)]


def _read_block(group: h5py.Group, first: int, end: int, n_genes: int) -> tuple:
    """Rows [first, end) of a piece chunk: (CSR (rows, genes), {field: array (rows, ...)})."""
    indptr = group["indptr"][first : end + 1]
    lo, hi = int(indptr[0]), int(indptr[-1])
    X = sp.csr_matrix(
        (group["data"][lo:hi], group["indices"][lo:hi], indptr - lo), shape=(end - first, n_genes)
    )
    fields = {name: group[name][first:end] for name in ("dest", "codes", N_GENES_ALL, IS_PRIMARY)}
    fields["cell_ids"] = group["cell_ids"].asstr()[first:end]
    return X, fields


def write_store_shard(
    writer: StoreWriter, index: int, blocks: np.ndarray, tmp: Path, shard_size: int
) -> dict:
    """Pass 3: gather shard ``index`` from the pieces in ``tmp``, order its rows, write it.

    ``blocks`` int64 (blocks, 4): source, chunk, first row, end row. Returns the manifest entry.
    """
    matrices, parts = [], []
    for source in np.unique(blocks[:, 0]):
        with h5py.File(piece_path(tmp, int(source)), "r") as f:
            for _, chunk, first, end in blocks[blocks[:, 0] == source]:
                X, fields = _read_block(f[f"chunk_{chunk:05d}"], first, end, len(writer.genes))
                matrices.append(X)
                parts.append(fields)
    fields = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    order = np.argsort(fields["dest"])
    expected = np.arange(index * shard_size, index * shard_size + len(order))
    if not np.array_equal(fields["dest"][order], expected):
        raise PrepareError(
            f"{tmp}: the pieces do not match the shuffle of shard {index}; "
            f"delete {tmp} and prepare again"
        )
    codes = fields["codes"][order]
    obs = pd.DataFrame(
        {column: codes[:, j] for j, column in enumerate(CODED_COLUMNS)},
        index=pd.Index(fields["cell_ids"][order], dtype=object),
    )
    obs[N_GENES_ALL] = fields[N_GENES_ALL][order]
    obs[IS_PRIMARY] = fields[IS_PRIMARY][order]
    return writer.write_shard(index, sp.vstack(matrices, format="csr")[order], obs)
