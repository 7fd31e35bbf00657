"""The prepared store format, in one place.

A store is a folder::

    manifest.json          written LAST: a store without it is incomplete
    shard_00000.h5ad ...   equal-size shards of cells (the last may be short)

Each shard is a valid h5ad file (``anndata.read_h5ad`` reads it) with

- ``X``: raw counts, CSR, shape (cells, genes): ``data`` in the narrowest of uint8 / uint16 /
  uint32 that holds the shard's counts exactly (float32 for a shard whose values are not all
  non-negative integers, or exceed uint32), ``indices`` uint16 when the store has at most 65,536
  genes (else uint32), ``indptr`` int64. ``anndata.read_h5ad`` reads the counts back exactly, in
  these dtypes. Written contiguous and uncompressed, so that a row range is one contiguous read
  and a shard's arrays can be memory-mapped: compression needs chunked datasets and CPU to
  decompress every read (worth it only if a cold-epoch benchmark says so; not measured yet);
- ``obs``: index = source cell id; one int32 code column per :data:`CODED_COLUMNS` entry
  (codes index the manifest's vocabulary), ``n_genes_all`` (int32, expressed genes over ALL
  source genes) and ``is_primary_data`` (bool);
- ``var``: index = Ensembl ``feature_id`` in the store's gene order, column ``feature_name``.

The manifest holds the gene list, one global vocabulary per coded column, the shard list with
cell and non-zero counts, how the store was made (``provenance``, with the command that rebuilds
it) and, optionally, the sources prepare left out (``skipped_sources``: file and reason; absent
in manifests written before it existed).

Version 2 narrowed X's ``data`` and ``indices``: version 1 stored float32 counts and int32 gene
indices, 8 bytes per non-zero where seed-shaped data (uint8 counts, uint16 genes) now takes 3.
Version 1 stores are read as before (the readers and the compiled gather kernels take either
dtype; their float32 counts cross the worker hand-off as float32, not int16).

Every store is written by :class:`StoreWriter` (prepare, the test fixtures, the benchmark) and
read through :func:`read_manifest`, :func:`check_store` and :class:`Shard` (the page cache
under it: sweep.data.page_cache).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

FORMAT_NAME = "scvi-sweep-store"
FORMAT_VERSION = 2
#: versions the readers accept: 1 differs only in X's dtypes (float32 counts, int32 gene indices)
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"

#: obs columns stored as integer codes into a global vocabulary (manifest["vocab"][column]).
CODED_COLUMNS = ("dataset_id", "donor_id", "assay", "suspension_type", "cell_type", "tissue")
#: per-cell numeric obs columns every shard carries.
N_GENES_ALL = "n_genes_all"
IS_PRIMARY = "is_primary_data"

CODE_DTYPE = np.int32
N_GENES_DTYPE = np.int32
INDPTR_DTYPE = np.int64
#: X's counts: the narrowest of these that holds a shard's values exactly, else FLOAT_COUNT_DTYPE
COUNT_DTYPES = (np.uint8, np.uint16, np.uint32)
FLOAT_COUNT_DTYPE = np.float32
#: X's gene indices: the narrowest of these that holds the store's largest gene index
GENE_INDEX_DTYPES = (np.uint16, np.uint32)
#: the dtypes a shard's X may have (version 1 wrote float32 counts and int32 gene indices)
VALUE_DTYPES = tuple(map(np.dtype, (*COUNT_DTYPES, FLOAT_COUNT_DTYPE)))
INDEX_DTYPES = tuple(map(np.dtype, (*GENE_INDEX_DTYPES, np.int32)))


class StoreError(ValueError):
    """A store that is missing, incomplete or inconsistent; the message says how to rebuild it."""


def count_dtype(values: np.ndarray) -> np.dtype:
    """The dtype a shard stores counts ``values`` (nnz,) in: the narrowest of
    :data:`COUNT_DTYPES` that holds them exactly when they are all non-negative integers, else
    :data:`FLOAT_COUNT_DTYPE` (as version 1 stored every shard)."""
    if values.size == 0:
        return np.dtype(COUNT_DTYPES[0])
    integral = np.issubdtype(values.dtype, np.integer) or bool((values == np.trunc(values)).all())
    largest = values.max()
    if integral and values.min() >= 0:  # NaN is not integral; inf exceeds every limit below
        for dtype in COUNT_DTYPES:
            if largest <= np.iinfo(dtype).max:
                return np.dtype(dtype)
    return np.dtype(FLOAT_COUNT_DTYPE)


def gene_index_dtype(n_genes: int) -> np.dtype:
    """The dtype of a store's gene indices: the narrowest of :data:`GENE_INDEX_DTYPES` that
    holds ``n_genes - 1`` (uint16 up to 65,536 genes)."""
    return next(np.dtype(d) for d in GENE_INDEX_DTYPES if n_genes - 1 <= np.iinfo(d).max)


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard_00000.h5ad``)."""
    return f"shard_{index:05d}.h5ad"


@dataclass
class Manifest:
    """What ``manifest.json`` holds. ``shards[i]`` = {"file", "n_cells", "nnz"};
    ``skipped_sources[i]`` = {"file", "reason"}; ``version``: the format version it was written
    in (one of :data:`READABLE_VERSIONS`)."""

    genes: list[str]
    gene_names: list[str]
    vocab: dict[str, list[str]]
    shards: list[dict]
    shard_size: int
    sources: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    skipped_sources: list[dict] = field(default_factory=list)
    version: int = FORMAT_VERSION

    @property
    def n_cells(self) -> int:
        return sum(s["n_cells"] for s in self.shards)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "shard_size": self.shard_size,
            "genes": {"feature_id": self.genes, "feature_name": self.gene_names},
            "vocab": self.vocab,
            "shards": self.shards,
            "sources": self.sources,
            "skipped_sources": self.skipped_sources,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        return cls(
            genes=list(obj["genes"]["feature_id"]),
            gene_names=list(obj["genes"]["feature_name"]),
            vocab={k: list(v) for k, v in obj["vocab"].items()},
            shards=list(obj["shards"]),
            shard_size=int(obj["shard_size"]),
            sources=list(obj.get("sources", [])),
            provenance=dict(obj.get("provenance", {})),
            skipped_sources=list(obj.get("skipped_sources", [])),
            version=int(obj["version"]),
        )


def rebuild_hint(store: str | Path, manifest: Manifest | None = None) -> str:
    """How to rebuild ``store``: the prepare command, with the arguments that made it when the
    manifest recorded them (``provenance["prepare_overrides"]``)."""
    overrides = (manifest.provenance.get("prepare_overrides") if manifest else None) or [
        "source=..."
    ]
    arguments = [*overrides, f"output={Path(store).resolve()}", "overwrite=true"]
    command = " ".join(["scvi-sweep-prepare", *map(shlex.quote, arguments)])
    return f"rebuild it with `{command}` (or delete the folder and prepare again)"


def read_manifest(store: str | Path) -> Manifest:
    """Read and check a store's manifest; raise :class:`StoreError` naming what is wrong."""
    store = Path(store)
    path = store / MANIFEST_NAME
    made_by = "the folder `scvi-sweep-prepare source=... output=FOLDER` wrote"
    if store.is_file():
        raise StoreError(f"{store} is a file, not a prepared store: give {made_by}")
    if not store.is_dir():
        raise StoreError(
            f"prepared store {store} does not exist: give {made_by}, or create it with "
            "`scvi-sweep-prepare`"
        )
    if not path.is_file() and not any(is_store_file(p.name) for p in store.iterdir()):
        raise StoreError(
            f"{store} is not a prepared store (no {MANIFEST_NAME}, no shards): give {made_by}"
        )
    if not path.is_file():
        raise StoreError(
            f"{store} has no {MANIFEST_NAME}: the store is incomplete (prepare did not finish); "
            + rebuild_hint(store)
        )
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # unreadable, truncated or not UTF-8 JSON
        raise StoreError(f"{path} cannot be read ({err}); " + rebuild_hint(store)) from err
    if (
        not isinstance(obj, dict)
        or obj.get("format") != FORMAT_NAME
        or obj.get("version") not in READABLE_VERSIONS
    ):
        found = (obj.get("format"), obj.get("version")) if isinstance(obj, dict) else type(obj)
        versions = "/".join(f"v{v}" for v in READABLE_VERSIONS)
        version = found[1] if isinstance(found, tuple) and found[0] == FORMAT_NAME else None
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise StoreError(
            f"{path} is not a {FORMAT_NAME} {versions} manifest (format, version: "
            f"{found!r}); "
            + rebuild_hint(store)
            + (f"; or upgrade scvi-sweep, whose newer versions write v{version}" if newer else "")
        )
    try:
        return Manifest.from_json(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise StoreError(
            f"{path} is damaged ({type(err).__name__}: {err}); " + rebuild_hint(store)
        ) from err


def is_store_file(name: str) -> bool:
    """True for the names :class:`StoreWriter` writes into a store folder, temp files included."""
    return name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp") or bool(
        re.fullmatch(r"shard_\d+(\.tmp)?\.h5ad", name)
    )


@dataclass(frozen=True)
class StoreWriter:
    """Writes one store into ``folder`` (created): the one place where shards are encoded.

    Shards first, each with :meth:`write_shard`, in any order and in any process (the writer is
    picklable); then :meth:`finish` writes the manifest, last. Every file is written under a temp
    name and renamed, so a folder holds only whole shards and a manifest only once it is complete.
    """

    folder: Path
    genes: list[str]  # Ensembl ids, the store's gene order
    gene_names: list[str]  # their feature names

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        self.folder.mkdir(parents=True, exist_ok=True)

    def write_shard(self, index: int, X: sp.spmatrix, obs: pd.DataFrame) -> dict:
        """Write shard ``index``; return its manifest entry {"file", "n_cells", "nnz"}.

        ``X`` (cells, genes) raw counts, any sparse format; ``obs`` indexed by cell id with the
        :data:`CODED_COLUMNS` codes, :data:`N_GENES_ALL` and :data:`IS_PRIMARY` (cast to the
        format's dtypes). obs and var go through anndata, X as contiguous uncompressed CSR
        through h5py, counts in :func:`count_dtype`, gene indices in :func:`gene_index_dtype`.
        """
        X = sp.csr_matrix(X)
        X.sort_indices()
        name = shard_name(index)
        partial = self.folder / name.replace(".h5ad", ".tmp.h5ad")
        var = pd.DataFrame({"feature_name": self.gene_names}, index=pd.Index(self.genes))
        anndata.AnnData(obs=_encode_obs(obs), var=var).write_h5ad(partial)
        with h5py.File(partial, "a") as f:
            group = f.create_group("X")
            group.attrs["encoding-type"] = "csr_matrix"
            group.attrs["encoding-version"] = "0.1.0"
            group.attrs["shape"] = np.array(X.shape, dtype=np.int64)
            for key, values, dtype in (
                ("data", X.data, count_dtype(X.data)),
                ("indices", X.indices, gene_index_dtype(len(self.genes))),
                ("indptr", X.indptr, INDPTR_DTYPE),
            ):
                group.create_dataset(key, data=values.astype(dtype, copy=False), chunks=None)
        os.replace(partial, self.folder / name)
        return {"file": name, "n_cells": int(X.shape[0]), "nnz": int(X.nnz)}

    def finish(
        self,
        shards: list[dict],
        vocab: dict[str, list[str]],
        shard_size: int,
        **extra: Any,
    ) -> Manifest:
        """Write the manifest (after this the store is complete) and return it.

        ``shards``: :meth:`write_shard`'s entries in shard order; ``vocab``: per coded column the
        values its codes index; ``extra``: the other :class:`Manifest` fields (``sources``,
        ``provenance``, ``skipped_sources``).
        """
        manifest = Manifest(self.genes, self.gene_names, vocab, shards, shard_size, **extra)
        path = self.folder / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest.to_json(), indent=1))
        os.replace(tmp, path)
        return manifest


def _encode_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """A shard's obs: the coded, count and flag columns in the format's dtypes, same index."""
    encoded = pd.DataFrame(
        {column: obs[column].to_numpy(CODE_DTYPE) for column in CODED_COLUMNS}, index=obs.index
    )
    encoded[N_GENES_ALL] = obs[N_GENES_ALL].to_numpy(N_GENES_DTYPE)
    encoded[IS_PRIMARY] = obs[IS_PRIMARY].to_numpy(bool)
    return encoded


#: X's arrays, by their HDF5 names
X_ARRAYS = ("data", "indices", "indptr")


@dataclass(frozen=True)
class XLayout:
    """Where X's arrays lie in a shard file stored contiguous and uncompressed: per name of
    :data:`X_ARRAYS`, (byte offset, dtype, length). Enough to map and read X without HDF5."""

    arrays: dict[str, tuple[int, np.dtype, int]]

    def __getitem__(self, name: str) -> tuple[int, np.dtype, int]:
        return self.arrays[name]


#: the X layout of every shard file this process has opened, by (path, inode, size, mtime):
#: ~200 bytes a shard. Reopening a shard (each group of each epoch) then needs no HDF5 call,
#: whose reads of a cold file hold the GIL against every other thread of the process.
_LAYOUTS: dict[tuple, XLayout | None] = {}


class Shard:
    """Read access to one shard: obs columns and CSR rows, without pandas or anndata.

    ``indptr`` is read whole on first use (8 bytes per cell). :meth:`arrays` gives X's values and
    gene indices in their stored dtypes, memory-mapped (no copy: a reader touches only the pages
    of the rows it reads) when they are stored contiguous and uncompressed, as
    :class:`StoreWriter` writes them; otherwise it reads them whole. For a shard stored that
    way, X's layout is read with HDF5 once per process (:data:`_LAYOUTS`); after that, the row
    pointers are one ``pread`` and the arrays a memory map, with no HDF5 call.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._indptr: np.ndarray | None = None
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def file(self) -> h5py.File:
        if self._file is None:  # opened lazily: each DataLoader worker opens its own handle
            self._file = h5py.File(self.path, "r")
        return self._file

    def close(self) -> None:
        """Close the file; mapped arrays handed out stay valid until they are dropped."""
        if self._file is not None:
            self._file.close()
        self.__init__(self.path)

    def __getstate__(self) -> dict:  # open handles cannot cross process boundaries
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @property
    def n_cells(self) -> int:
        return int(self.file["X"].attrs["shape"][0])

    @property
    def nnz(self) -> int:
        return int(self.file["X/data"].shape[0])

    @property
    def layout(self) -> XLayout | None:
        """X's layout in the file (None when an array is chunked, compressed or empty)."""
        status = os.stat(self.path)
        key = (str(self.path), status.st_ino, status.st_size, status.st_mtime_ns)
        if key not in _LAYOUTS:
            datasets = [self.file["X"][name] for name in X_ARRAYS]
            mappable = all(
                d.chunks is None and d.compression is None and d.shape[0] > 0 for d in datasets
            )
            _LAYOUTS[key] = (
                XLayout(
                    {
                        name: (d.id.get_offset(), d.dtype, d.shape[0])
                        for name, d in zip(X_ARRAYS, datasets, strict=True)
                    }
                )
                if mappable
                else None
            )
        return _LAYOUTS[key]

    @property
    def indptr(self) -> np.ndarray:
        """CSR row pointers, shape (cells + 1,) int64."""
        if self._indptr is None:
            layout = self.layout
            raw = self._pread(*layout["indptr"]) if layout else self.file["X/indptr"][:]
            self._indptr = raw.astype(np.int64, copy=False)
        return self._indptr

    def obs_column(self, name: str) -> np.ndarray:
        """One obs column as a numpy array, shape (cells,)."""
        return self.file["obs"][name][:]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """X's values (nnz,), one of :data:`VALUE_DTYPES`, and gene indices (nnz,), one of
        :data:`INDEX_DTYPES` (as :func:`shard_problem` checks)."""
        if self._arrays is None:
            layout = self.layout
            self._arrays = tuple(
                self._map(*layout[name]) if layout else self.file["X"][name][:]
                for name in ("data", "indices")
            )
        return self._arrays

    def _map(self, offset: int, dtype: np.dtype, length: int) -> np.memmap:
        try:
            return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=(length,))
        except ValueError as err:  # the file is shorter than its own header says
            raise self._truncated(err) from err

    def _pread(self, offset: int, dtype: np.dtype, length: int) -> np.ndarray:
        """``length`` items of ``dtype`` at byte ``offset``, in one read (the GIL released)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, length * dtype.itemsize, offset)
        finally:
            os.close(fd)
        if len(raw) < length * dtype.itemsize:
            raise self._truncated(f"{len(raw)} of {length * dtype.itemsize} bytes at {offset}")
        return np.frombuffer(raw, dtype=dtype)

    def _truncated(self, why) -> StoreError:
        return StoreError(
            f"shard {self.path} is truncated ({why}); " + rebuild_hint(self.path.parent)
        )

    def byte_ranges(self, starts: np.ndarray, stops: np.ndarray) -> list[tuple[int, int]]:
        """(file offset, length) in bytes of rows ``[starts[i], stops[i])`` (each (n,)) of X's
        memory-mapped values and gene indices, in file order, touching ranges merged; none
        for arrays read whole."""
        indptr, firsts, ends = self.indptr, [], []
        for array in self.arrays():
            if isinstance(array, np.memmap):
                firsts.append(array.offset + indptr[starts] * array.itemsize)
                ends.append(array.offset + indptr[stops] * array.itemsize)
        if not firsts:
            return []
        order = np.argsort(np.concatenate(firsts), kind="stable")
        first, end = np.concatenate(firsts)[order], np.concatenate(ends)[order]
        new_run = np.concatenate([[True], first[1:] > end[:-1]])  # not touching the one before
        runs = np.flatnonzero(new_run)
        run_ends = np.maximum.reduceat(end, runs)
        return list(zip(first[runs].tolist(), (run_ends - first[runs]).tolist(), strict=True))

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR rows [start, stop) copied out: values (nnz,), gene indices (nnz,), indptr."""
        indptr = self.indptr[start : stop + 1]
        lo, hi = int(indptr[0]), int(indptr[-1])
        values, indices = self.arrays()
        return np.array(values[lo:hi]), np.array(indices[lo:hi]), indptr - lo


def shard_problem(path: Path, n_cells: int, n_genes: int, nnz: int) -> str | None:
    """What is wrong with the shard file ``path`` given the manifest's counts, or None.

    Cheap: reads the HDF5 metadata (shapes, attrs) and two row pointers, never the counts, so a
    shard that is missing, truncated, damaged in its metadata or out of step with the manifest is
    found (X's dtypes included); values overwritten inside X's data are not.
    """
    if not path.is_file():
        return "is missing"
    try:
        with h5py.File(path, "r") as f:
            X, obs = f["X"], f["obs"]
            shape = tuple(int(x) for x in X.attrs["shape"])
            lengths = {name: int(X[name].shape[0]) for name in ("data", "indices", "indptr")}
            dtypes = {name: X[name].dtype for name in ("data", "indices")}
            indptr = X["indptr"]
            ends = (int(indptr[0]), int(indptr[lengths["indptr"] - 1])) if len(indptr) else ()
            needed = (*CODED_COLUMNS, N_GENES_ALL, IS_PRIMARY)
            rows = {c: int(obs[c].shape[0]) for c in needed if c in obs}
    except Exception as err:  # a damaged HDF5 file fails in many ways (OSError, KeyError, ...)
        return f"cannot be read ({type(err).__name__}: {err}): it is truncated or damaged"
    if shape != (n_cells, n_genes):
        return f"has shape {shape}, the manifest says ({n_cells}, {n_genes})"
    if lengths["data"] != nnz:
        return f"has {lengths['data']} non-zeros, the manifest says {nnz}"
    if lengths["indices"] != nnz or lengths["indptr"] != n_cells + 1 or ends != (0, nnz):
        first, last = ends or (None, None)
        return (
            f"has an inconsistent CSR matrix (X/indptr: {lengths['indptr']} entries from {first} "
            f"to {last}, X/indices: {lengths['indices']}; expected {n_cells + 1} entries from 0 "
            f"to {nnz}, and {nnz} indices)"
        )
    for name, accepted in (("data", VALUE_DTYPES), ("indices", INDEX_DTYPES)):
        if dtypes[name] not in accepted:
            return (
                f"has X/{name} of dtype {dtypes[name]}, not one of {', '.join(map(str, accepted))}"
            )
    missing = [c for c in needed if c not in rows]
    if missing:
        return f"lacks obs columns {missing}"
    short = {c: n for c, n in rows.items() if n != n_cells}
    if short:
        return f"has obs columns of the wrong length {short} for {n_cells} cells"
    return None


def check_store(store: str | Path, manifest: Manifest | None = None) -> Manifest:
    """Check every shard against the manifest (:func:`shard_problem`), before any data is read.

    Raises :class:`StoreError` naming the first shard that disagrees and the prepare command
    that rebuilds the store.
    """
    store = Path(store)
    manifest = manifest or read_manifest(store)
    for entry in manifest.shards:
        path = store / entry["file"]
        problem = shard_problem(path, entry["n_cells"], manifest.n_genes, entry["nnz"])
        if problem:
            raise StoreError(
                f"shard {path} {problem}: the store is damaged or its manifest disagrees; "
                + rebuild_hint(store, manifest)
            )
    return manifest
