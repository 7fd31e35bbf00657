"""Reading one source h5ad: genes and obs at once, counts streamed in row chunks and checked.

The hot path reads the h5ad elements it needs straight through h5py (string arrays, categoricals,
plain arrays); anndata's ``read_elem`` only reads other encodings. Gene tables (thousands of
sources share one 33k-60k id list) cross process boundaries as one bytes blob and are shared.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem

from sweep.data.prepare.config import PrepareError
from sweep.data.store import IS_PRIMARY

MISSING_LABEL = "unknown"  # stands for a missing obs value (NaN) in the vocabulary
DENSE_CHUNK_VALUES = 1 << 25  # a dense source is read at most this many values at a time
READ_AHEAD_BYTES = 256 << 20  # smaller sources are read ahead whole when opened
READ_AHEAD_PIECE = 512 << 10  # bytes asked for per posix_fadvise call
SHARED_TABLES = 64  # distinct gene tables a process keeps shared (see GeneTable)
_shared: OrderedDict[bytes, GeneTable] = OrderedDict()
_checked: OrderedDict[bytes, GeneTable] = OrderedDict()  # blob -> gene ids found usable
_columns: OrderedDict[tuple[bytes, bytes], np.ndarray] = OrderedDict()  # see store_columns


class GeneTable(tuple):
    """A source's gene ids or names: a tuple of str, shared by every source with the same list in
    a process (:func:`gene_table`), that pickles as one bytes blob (a memcpy, not 60k str
    objects) and unpickles into the receiving process's shared table. Its hash is its blob's,
    so a dict mixing GeneTables with plain tuples of the same strings would see them differ."""

    blob: bytes  # the strings, NUL-joined UTF-8

    def __reduce__(self) -> tuple:
        return (_shared_table, (self.blob,))

    def __hash__(self) -> int:  # the blob's (cached by bytes): not 60k str hashes combined
        return hash(self.blob)


def gene_table(strings: list[str]) -> GeneTable:
    """The process's shared :class:`GeneTable` holding ``strings``."""
    return _shared_table("\0".join(strings).encode())


def _shared_table(blob: bytes) -> GeneTable:
    table = _shared.get(blob)
    if table is None:
        table = _remember(_shared, blob, GeneTable(blob.decode().split("\0") if blob else ()))
        table.blob = blob
    return table


def _remember(cache: OrderedDict, key: Any, value: Any) -> Any:
    """``cache[key] = value``, the oldest of more than SHARED_TABLES entries dropped; ``value``."""
    cache[key] = value
    if len(cache) > SHARED_TABLES:
        cache.popitem(last=False)
    return value


def store_columns(gene_ids: GeneTable, genes: GeneTable) -> np.ndarray:
    """Each source gene's column among the store's ``genes`` (-1: dropped), int32 (source genes);
    computed once per process for each pair of tables (thousands of sources share one)."""
    key = (gene_ids.blob, genes.blob)
    columns = _columns.get(key)
    if columns is None:
        position = pd.Index(genes).get_indexer(gene_ids).astype(np.int32)
        columns = _remember(_columns, key, position)
    return columns


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn low-level read failures of ``path`` into a PrepareError naming the file."""
    try:
        yield
    except (OSError, KeyError) as err:
        raise PrepareError(
            f"{path}: cannot be read ({type(err).__name__}: {err}): the file is truncated, "
            "still downloading or not an h5ad file; download or write it again"
        ) from err


def _as_str(values: Any) -> np.ndarray:
    """An obs column as a str array, shape (cells,); missing values become MISSING_LABEL."""
    series = pd.Series(values, copy=False).astype(object)
    return series.where(series.notna(), MISSING_LABEL).astype(str).to_numpy()


def _as_flags(values: Any, path: Path, column: str) -> np.ndarray:
    """A boolean obs column (bool or 0/1 values), shape (cells,)."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    distinct = set(pd.unique(pd.Series(array)))
    if distinct <= {0, 1}:
        return array.astype(bool)
    raise PrepareError(
        f"{path}: obs column {column!r} must be boolean, got values such as "
        f"{sorted(map(str, distinct))[:3]}: write it as True/False"
    )


def _read_values(elem: h5py.Dataset | h5py.Group) -> np.ndarray:
    """An h5ad column (string array, categorical or plain array), shape (n,); strings as str
    (``<U``), a categorical decoded (missing -> MISSING_LABEL); other encodings via anndata."""
    if isinstance(elem, h5py.Dataset):
        if h5py.check_string_dtype(elem.dtype) is not None:
            strings = elem.astype(np.dtypes.StringDType())[()]
            return strings.astype(f"U{max(1, np.strings.str_len(strings).max(initial=0))}")
        return elem[()]
    categorical = _categorical(elem)
    if categorical is not None:
        labels, codes = categorical
        return labels[codes[()]]
    return read_elem(elem)


def _categorical(elem: h5py.Dataset | h5py.Group) -> tuple[np.ndarray, h5py.Dataset] | None:
    """A categorical column's labels, str (categories + 1: code -1 points to the last one,
    MISSING_LABEL) and its codes dataset; None for any other element (told by its members, not
    its attrs: slow)."""
    if not isinstance(elem, h5py.Group):
        return None
    try:
        categories, codes = elem["categories"], elem["codes"]
    except KeyError:
        return None
    return np.append(_read_strings(categories), MISSING_LABEL), codes


def _read_strings(elem: h5py.Dataset | h5py.Group) -> np.ndarray:
    """An h5ad column as a str array, shape (n,); missing values become MISSING_LABEL."""
    values = _read_values(elem)
    return values if values.dtype.kind == "U" else _as_str(values)


def _vlen_blob(elem: h5py.Dataset | h5py.Group) -> bytes | None:
    """A variable-length string dataset's values NUL-joined (a GeneTable's ``blob``), or None
    when it is not one. Read as bytes objects: h5py's conversion to str or fixed-width strings
    is slower, and the fixed-width one leaks about 1 MB per 33k-string read."""
    if not isinstance(elem, h5py.Dataset):
        return None
    kind = h5py.check_string_dtype(elem.dtype)
    if kind is None or kind.length is not None:
        return None
    return b"\0".join(elem[()].tolist())


@dataclass(frozen=True)
class Coded:
    """A coded obs column: its values are ``categories[codes]``; ``categories`` sorted distinct
    str (m,), ``codes`` int (cells,). ``coded[rows]`` keeps the categories, slices the codes."""

    categories: np.ndarray
    codes: np.ndarray

    def __getitem__(self, rows: slice) -> Coded:
        return Coded(self.categories, self.codes[rows])

    def strings(self) -> np.ndarray:
        """The values, str (cells,)."""
        return self.categories[self.codes]

    def present(self) -> list[str]:
        """The distinct values present, sorted."""
        return self.categories[np.unique(self.codes)].tolist()


def _read_coded(elem: h5py.Dataset | h5py.Group) -> Coded:
    """An h5ad column (string array or categorical), missing values as MISSING_LABEL."""
    categorical = _categorical(elem)
    if categorical is not None:
        labels, codes = categorical[0], categorical[1][()]
    else:
        labels = _read_strings(elem)
        codes = np.arange(len(labels))
    categories, to_sorted = np.unique(labels, return_inverse=True)
    return Coded(categories, to_sorted[codes])


def read_ahead(path: Path) -> None:
    """Ask the kernel to read a file of at most READ_AHEAD_BYTES whole into the page cache now,
    in big sequential reads: HDF5's small scattered reads of a cold file are slower (a pass over
    120 small sources cold: 8.3 s with, 11.3 s without)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size <= READ_AHEAD_BYTES:  # in pieces: Linux reads one read-ahead window per call
            for offset in range(0, size, READ_AHEAD_PIECE):
                os.posix_fadvise(fd, offset, READ_AHEAD_PIECE, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


class SourceReader:
    """One source h5ad opened for streaming: genes and obs read at once, counts in row chunks.

    Counts come from ``raw/X`` (with ``raw/var``) when the file has them, as CELLxGENE downloads
    keep raw counts there and normalised values in ``X``; otherwise from ``X``. ``X`` may be CSR
    or dense; it is never loaded whole. The gene ids are read unless ``genes=False``, the names
    only by :meth:`read_gene_names`; with ``obs_columns=None`` only the matrix's header is read
    (:func:`source_size`). Every problem raises PrepareError naming the file.
    """

    def __init__(self, path: Path, obs_columns: tuple[str, ...] | None, genes: bool = True) -> None:
        self.path = path
        with _reading(path):
            if obs_columns is not None:
                read_ahead(path)
            self.file = h5py.File(path, "r")
            try:
                self._read_header(obs_columns, genes)
            except BaseException:
                self.file.close()
                raise

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def _read_header(self, obs_columns: tuple[str, ...] | None, genes: bool) -> None:
        f, path = self.file, self.path
        self.matrix_key, var_key = ("raw/X", "raw/var") if "raw/X" in f else ("X", "var")
        if self.matrix_key not in f or var_key not in f or "obs" not in f:
            raise PrepareError(f"{path}: not an h5ad file with X, obs and var")
        self.matrix = f[self.matrix_key]
        self.n_cells, self.n_genes = self._shape()
        self.var_key = var_key
        if obs_columns is not None:
            self.gene_ids = self.read_gene_ids() if genes else None
            self.cell_ids, self.obs = self._read_obs(f["obs"], obs_columns)

    @property
    def n_values(self) -> int:
        """Values stored in the count matrix: CSR non-zeros, or cells x genes when dense."""
        if isinstance(self.matrix, h5py.Dataset):
            return self.n_cells * self.n_genes
        return int(self.matrix["data"].shape[0])

    def _shape(self) -> tuple[int, int]:
        if isinstance(self.matrix, h5py.Dataset):
            n_cells, n_genes = self.matrix.shape
            return int(n_cells), int(n_genes)
        encoding = self.matrix.attrs.get("encoding-type")
        if encoding != "csr_matrix":
            raise PrepareError(
                f"{self.path}: {self.matrix_key} is stored as {encoding}; prepare streams rows "
                "and needs CSR or dense: rewrite it (adata.X = adata.X.tocsr(); write_h5ad)"
            )
        n_cells, n_genes = self.matrix.attrs["shape"]
        return int(n_cells), int(n_genes)

    def read_gene_ids(self) -> GeneTable:
        """Gene ids (the var index), (genes,): a list this process has checked before is found
        by its blob and not checked again."""
        with _reading(self.path):
            var = self.file[self.var_key]
            elem = var[var.attrs["_index"]]
            blob = _vlen_blob(elem)
            table = _checked.get(blob) if blob is not None else None
            if table is None:
                table = self._checked_gene_ids(_read_strings(elem).tolist())
                _remember(_checked, table.blob, table)
            elif len(table) != self.n_genes:
                self._checked_gene_ids(table)
            return table

    def _checked_gene_ids(self, ids: list[str]) -> GeneTable:
        """``ids`` as a shared table; raises unless they are usable gene ids for this matrix."""
        problem = None
        if len(ids) != self.n_genes:
            problem = f"{len(ids)} ids for {self.n_genes} matrix columns"
        elif len(ids) == 0 or "" in ids:
            problem = "the index is empty or holds empty strings"
        elif len(set(ids)) < len(ids):
            dups = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
            problem = f"{len(dups)} duplicated ids such as {list(dups[:3])}"
        if problem:
            raise PrepareError(
                f"{self.path}: {self.var_key} has no usable gene ids ({problem}): the var index "
                "must hold unique Ensembl feature ids (CELLxGENE's feature_id)"
            )
        return gene_table(ids)

    def read_gene_names(self) -> GeneTable:
        """Gene names (``feature_name``, else the ids), (genes,)."""
        var = self.file[self.var_key]
        with _reading(self.path):
            if "feature_name" not in var:
                return self._checked_gene_ids(_read_strings(var[var.attrs["_index"]]).tolist())
            return gene_table(_read_strings(var["feature_name"]).tolist())

    def _read_obs(
        self, obs: h5py.Group, columns: tuple[str, ...]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Cell ids (cells,) str and the requested columns (:class:`Coded`; IS_PRIMARY: bool)."""
        index_name = obs.attrs["_index"]
        have = [c for c in obs if c != index_name and not c.startswith("__")]
        missing = [c for c in columns if c not in have]
        if missing:
            raise PrepareError(
                f"{self.path}: obs lacks the columns {missing} (it has {sorted(have)}): "
                "prepare needs the CELLxGENE columns; add or rename them"
            )
        cell_ids = _read_strings(obs[index_name])
        if len(cell_ids) != self.n_cells:
            raise PrepareError(
                f"{self.path}: obs has {len(cell_ids)} rows for {self.n_cells} matrix rows"
            )
        values = {}
        for column in columns:
            if column == IS_PRIMARY:
                elem = obs[column]
                raw = elem[()] if isinstance(elem, h5py.Dataset) else read_elem(elem)
                values[column] = _as_flags(raw, self.path, column)
            else:
                values[column] = _read_coded(obs[column])
        return cell_ids, values

    def chunks(
        self, chunk_rows: int, first: int = 0, end: int | None = None
    ) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield (first row, counts CSR (rows, source genes) float32, explicit zeros removed)
        over rows [first, end) (all rows by default)."""
        end = self.n_cells if end is None else end
        with _reading(self.path):
            dense = isinstance(self.matrix, h5py.Dataset)
            indptr = None if dense else self.matrix["indptr"][first : end + 1]
            if dense:
                chunk_rows = max(1, min(chunk_rows, DENSE_CHUNK_VALUES // max(1, self.n_genes)))
            for start in range(first, end, chunk_rows):
                stop = min(start + chunk_rows, end)
                if dense:
                    chunk = sp.csr_matrix(self.matrix[start:stop].astype(np.float32))
                else:
                    lo, hi = int(indptr[start - first]), int(indptr[stop - first])
                    chunk = sp.csr_matrix(
                        (
                            self.matrix["data"][lo:hi].astype(np.float32, copy=False),
                            self.matrix["indices"][lo:hi],
                            indptr[start - first : stop - first + 1] - lo,
                        ),
                        shape=(stop - start, self.n_genes),
                    )
                self._check_counts(chunk.data, chunk.indptr, start)
                if not chunk.data.all():
                    chunk.eliminate_zeros()
                yield start, chunk

    def _check_counts(self, data: np.ndarray, indptr: np.ndarray, start: int) -> None:
        """Raise unless every value of rows ``start``... (CSR ``data``, ``indptr``) is a finite
        non-negative integer."""
        if data.size == 0 or (
            data.min() >= 0 and data.max() < np.inf and (np.trunc(data) == data).all()
        ):
            return
        bad = ~np.isfinite(data) | (data != np.floor(data)) | (data < 0)
        first = int(np.flatnonzero(bad)[0])
        row = start + int(np.searchsorted(indptr - indptr[0], first, side="right")) - 1
        kind = "negative" if data[first] < 0 else "non-integer"
        where = "raw.X" if self.matrix_key == "raw/X" else "X"
        raise PrepareError(
            f"{self.path}: {where} has {kind} values (e.g. {data[first]} in row {row}): "
            f"{where} looks normalised; prepare needs raw counts (raw.X): use the file's raw "
            "counts (CELLxGENE keeps them in raw.X) or download the original h5ad"
        )


def source_size(path: Path) -> tuple[int, int]:
    """A source's cells and stored values (:attr:`SourceReader.n_values`), from its header."""
    with SourceReader(path, None) as reader:
        return reader.n_cells, reader.n_values


def expressed_genes(chunk: sp.csr_matrix) -> np.ndarray:
    """Non-zero genes per row of a chunk without explicit zeros, shape (rows,) int32."""
    return np.diff(chunk.indptr).astype(np.int32)


def select_genes(chunk: sp.csr_matrix, columns: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Re-index columns: source gene j -> ``columns[j]`` (-1 = dropped); CSR (rows, n_genes)."""
    mapped = np.take(columns, chunk.indices)
    kept = np.flatnonzero(mapped >= 0)
    out = sp.csr_matrix(
        (chunk.data[kept], mapped[kept], np.searchsorted(kept, chunk.indptr)),
        shape=(chunk.shape[0], n_genes),
    )
    out.sort_indices()
    return out
