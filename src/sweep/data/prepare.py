"""Prepare a store: many source h5ad files -> one folder of gene-selected, shuffled shards.

The store format lives in :mod:`sweep.data.store`; this module only fills it. Three passes, each
parallel over worker processes; a process holds counts of one source chunk (``chunk_rows`` rows) or
one shard at a time, plus one source's obs columns:

1. **check** (per source, cheap): open the file, read its genes and obs (columns present, gene
   ids usable, cell ids unique) and the counts of its first ``HEADER_ROWS`` rows (a normalised
   file fails here); then, in the main process, the checks across sources: cell ids unique across
   sources, gene ids that match the gene list (``genes=FILE``) or another source (``genes=hvg``).
   **scan** (per source): check every count, count expressed genes per cell over ALL source genes
   (``n_genes_all``), collect each coded column's values and, for ``genes=hvg``, draw a seeded
   sample of eligible cells. Then, in the main process: one global vocabulary per coded column,
   the gene selection (a list file or seurat_v3 HVGs) and a seeded global permutation that gives
   every cell its destination (shard, row).
   A bad source raises PrepareError naming the file and the fix; with ``skip_bad_sources=true``
   it is left out instead, logged and listed in the manifest's ``skipped_sources``.
2. **pieces** (per source): read the source again in row chunks, keep the store's genes
   (zero-filling absent ones), encode obs, sort each chunk's rows by destination and write them to a
   temporary piece file ``.prepare_tmp/piece_XXXXX.h5`` (written atomically; reused when an
   interrupted run with the same config is resumed).
3. **shards** (per shard): gather the shard's rows from every piece, order them and write the shard
   with :func:`sweep.data.store.write_shard`.

The manifest is written last (atomically), so a folder without it is an incomplete store.
The main process keeps about 24 bytes per cell (cell id hashes, the permutation) and the HVG sample.

Gene order: a gene list keeps the list's order. ``genes=hvg`` keeps the selected genes in source
order, over the union of all sources' genes (the first source's genes in its order, then genes new
in later sources in theirs; sources are sorted by path): neither HVG rank nor alphabetical.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from sweep.data.store import (
    CODE_DTYPE,
    CODED_COLUMNS,
    FORMAT_VERSION,
    IS_PRIMARY,
    MANIFEST_NAME,
    N_GENES_ALL,
    Manifest,
    StoreError,
    check_store,
    read_manifest,
    shard_name,
    write_manifest,
    write_shard,
)

log = logging.getLogger(__name__)

HVG = "hvg"  # the `genes` value that selects highly variable genes
LOG_NAME = "prepare.log"  # written into the store folder
TMP_DIR = ".prepare_tmp"  # pieces of an unfinished run, inside the store folder
FINGERPRINT_FILE = "fingerprint"  # in TMP_DIR: which config the pieces belong to
MISSING_LABEL = "unknown"  # stands for a missing obs value (NaN) in the vocabulary
DENSE_CHUNK_VALUES = 1 << 25  # a dense source is read at most this many values at a time
HVG_BATCH_SEP = "_"  # joins the hvg_batch_keys values into one batch label
HVG_MIN_BATCH_CELLS = 50  # smaller HVG batches are left out of the seurat_v3 fit
HEADER_ROWS = 1000  # the check pass reads the counts of each source's first rows
SKIP_HINT = "or pass skip_bad_sources=true to prepare without"


class PrepareError(ValueError):
    """Bad input to prepare (config, source file, gene list, output folder); the message says
    which file or key and how to fix it."""


@dataclass
class PrepareConfig:
    """The keys of ``conf/prepare.yaml`` (comments there). ``???`` (MISSING) = required."""

    source: Any = MISSING  # glob string or list of paths/globs
    output: str = MISSING
    genes: str = HVG  # "hvg" or a TSV/CSV file whose first column lists Ensembl ids
    n_top_genes: int = 8000
    hvg_batch_keys: list[str] = field(default_factory=lambda: ["suspension_type", "assay"])
    hvg_sample_cells: int = 200_000
    hvg_min_genes: int = 300
    shard_size: int = 10_000
    chunk_rows: int = 10_000
    seed: int = 0
    workers: int | None = None
    overwrite: bool = False
    skip_bad_sources: bool = False  # true: leave bad sources out (listed in the manifest, logged)


# ---------------------------------------------------------------------------------------------
# Config, sources, fingerprint


def resolve_config(cfg: PrepareConfig | Mapping | Any) -> PrepareConfig:
    """Merge ``cfg`` (dataclass, dict, DictConfig) into the schema; bad keys raise PrepareError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PrepareConfig), cfg)
        resolved: PrepareConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise PrepareError(f"bad prepare config: {err}") from err
    for key in ("n_top_genes", "hvg_sample_cells", "shard_size", "chunk_rows"):
        if getattr(resolved, key) < 1:
            raise PrepareError(f"prepare config: {key} must be >= 1, got {getattr(resolved, key)}")
    if resolved.workers is not None and resolved.workers < 1:
        raise PrepareError(f"prepare config: workers must be >= 1 or null, got {resolved.workers}")
    if resolved.genes != HVG and not Path(resolved.genes).is_file():
        raise PrepareError(
            f"genes={resolved.genes!r} is neither 'hvg' nor an existing file: pass genes=hvg or "
            "the path of a TSV/CSV whose first column holds Ensembl ids"
        )
    return resolved


def resolve_sources(source: str | list[str]) -> list[Path]:
    """Expand the ``source`` glob(s) to existing files: absolute, sorted, without duplicates."""
    patterns = [source] if isinstance(source, str) else list(source)
    if not patterns:
        raise PrepareError("source is empty: pass source='/data/*.h5ad' or a list of files")
    paths = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = glob.glob(pattern)
        if not matches:
            raise PrepareError(
                f"source {pattern!r} matches no file: check the path "
                "(on the command line quote a glob: source='/data/*.h5ad')"
            )
        for match in matches:
            if Path(match).is_dir():
                raise PrepareError(f"source {match} is a folder: use source='{match}/*.h5ad'")
            paths.add(Path(match).resolve())
    return sorted(paths)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_identity(cfg: PrepareConfig, sources: list[Path]) -> dict:
    """Everything that determines the store's content (not output, workers, chunking, overwrite)."""
    identity = {
        "format_version": FORMAT_VERSION,
        "sources": [[str(p), p.stat().st_size] for p in sources],
        "genes": cfg.genes if cfg.genes == HVG else str(Path(cfg.genes).resolve()),
        "shard_size": cfg.shard_size,
        "seed": cfg.seed,
    }
    if cfg.genes == HVG:
        identity |= {
            "n_top_genes": cfg.n_top_genes,
            "hvg_batch_keys": list(cfg.hvg_batch_keys),
            "hvg_sample_cells": cfg.hvg_sample_cells,
            "hvg_min_genes": cfg.hvg_min_genes,
        }
    else:
        identity["genes_sha256"] = _sha256(Path(cfg.genes))
    if cfg.skip_bad_sources:  # only when set: stores made before the key keep their fingerprint
        identity["skip_bad_sources"] = True
    return identity


def prepare_overrides(cfg: PrepareConfig, identity: dict) -> list[str]:
    """The ``key=value`` arguments of ``python -m sweep.prepare`` that make this store again
    (all but ``output``): ``manifest.provenance["prepare_overrides"]``, for rebuild hints."""
    keys = {"source": cfg.source}
    keys |= {k: v for k, v in identity.items() if k in PrepareConfig.__dataclass_fields__}

    def value(v: Any) -> str:
        if isinstance(v, list | tuple):
            return "[" + ",".join(map(value, v)) + "]"
        return str(v).lower() if isinstance(v, bool) else str(v)

    return [f"{k}={value(v)}" for k, v in keys.items()]


def fingerprint(identity: dict) -> str:
    """Short hash of :func:`config_identity`, stored in ``manifest.provenance["fingerprint"]``."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _identity_diff(old: dict, new: dict) -> str:
    """Which identity keys differ, e.g. ``shard_size: 4096 -> 10000``."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "sources":
                diffs.append(
                    f"sources: {len(old.get(key) or [])} -> {len(new[key])} files "
                    "(or their paths/sizes changed)"
                )
            else:
                diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(diffs)


# ---------------------------------------------------------------------------------------------
# Output folder: complete (no-op), different config (error), incomplete (clean)


def _is_ours(path: Path) -> bool:
    """True for the files prepare writes into a store folder."""
    name = path.name
    return name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp", LOG_NAME, TMP_DIR) or bool(
        re.fullmatch(r"shard_\d+(\.tmp)?\.h5ad", name)
    )


def existing_store(out: Path, fp: str, identity: dict, overwrite: bool) -> Manifest | None:
    """The manifest of a complete store at ``out`` made with the same config, else None.

    A complete store with a different config raises PrepareError unless ``overwrite``.
    """
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except StoreError as err:
        if overwrite:
            return None
        raise PrepareError(f"{err}; or pass overwrite=true to replace it") from err
    old_fp = manifest.provenance.get("fingerprint")
    if overwrite:
        log.info("%s: overwrite=true, replacing the existing store", out)
        return None
    if old_fp != fp:
        diff = _identity_diff(manifest.provenance.get("identity", {}), identity)
        raise PrepareError(
            f"{out} holds a complete store made with a different config ({diff}); "
            "pass overwrite=true to replace it, or choose another output folder"
        )
    check_store(out, manifest)
    return manifest


def check_output_folder(out: Path) -> None:
    """Refuse an output folder holding files prepare did not write (they would be in the way)."""
    foreign = sorted(p.name for p in out.iterdir() if not _is_ours(p)) if out.is_dir() else []
    if foreign:
        raise PrepareError(
            f"output {out} contains files prepare did not write ({', '.join(foreign[:5])}): "
            "choose an empty or new output folder"
        )


def clean_output(out: Path, fp: str) -> None:
    """Make ``out`` ready for a build: remove an old or incomplete store's files (never others).

    Pieces of an interrupted run with the same fingerprint ``fp`` are kept for reuse.
    """
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if p.name not in (LOG_NAME, TMP_DIR)]
    if stale and not (out / MANIFEST_NAME).is_file():
        log.warning("%s: incomplete store (no %s): cleaning and rebuilding", out, MANIFEST_NAME)
    for path in stale:
        path.unlink()
    tmp = out / TMP_DIR
    if (tmp / FINGERPRINT_FILE).is_file() and (tmp / FINGERPRINT_FILE).read_text() == fp:
        return
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading one source


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


class SourceReader:
    """One source h5ad opened for streaming: genes and obs read at once, counts in row chunks.

    Counts come from ``raw/X`` (with ``raw/var``) when the file has them, as CELLxGENE downloads
    keep raw counts there and normalised values in ``X``; otherwise from ``X``. ``X`` may be CSR
    or dense; it is never loaded whole. Every problem raises PrepareError naming the file.
    """

    def __init__(self, path: Path, obs_columns: tuple[str, ...]):
        self.path = path
        with _reading(path):
            self.file = h5py.File(path, "r")
            try:
                self._read_header(obs_columns)
            except BaseException:
                self.file.close()
                raise

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def _read_header(self, obs_columns: tuple[str, ...]) -> None:
        f, path = self.file, self.path
        self.matrix_key, var_key = ("raw/X", "raw/var") if "raw/X" in f else ("X", "var")
        if self.matrix_key not in f or var_key not in f or "obs" not in f:
            raise PrepareError(f"{path}: not an h5ad file with X, obs and var")
        self.matrix = f[self.matrix_key]
        self.n_cells, self.n_genes = self._shape()
        self.gene_ids, self.gene_names = self._read_genes(f[var_key], var_key)
        self.cell_ids, self.obs = self._read_obs(f["obs"], obs_columns)

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

    def _read_genes(self, var: h5py.Group, var_key: str) -> tuple[np.ndarray, np.ndarray]:
        """Gene ids (the var index) and names (``feature_name`` or the ids), shape (genes,)."""
        ids = _as_str(read_elem(var[var.attrs["_index"]]))
        names = _as_str(read_elem(var["feature_name"])) if "feature_name" in var else ids
        problem = None
        if len(ids) != self.n_genes:
            problem = f"{len(ids)} ids for {self.n_genes} matrix columns"
        elif len(ids) == 0 or (ids == "").any():
            problem = "the index is empty or holds empty strings"
        elif pd.Index(ids).has_duplicates:
            dups = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
            problem = f"{len(dups)} duplicated ids such as {list(dups[:3])}"
        if problem:
            raise PrepareError(
                f"{self.path}: {var_key} has no usable gene ids ({problem}): the var index must "
                "hold unique Ensembl feature ids (CELLxGENE's feature_id)"
            )
        return ids, names

    def _read_obs(
        self, obs: h5py.Group, columns: tuple[str, ...]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Cell ids (cells,) str and the requested columns (str arrays; IS_PRIMARY as bool)."""
        index_name = obs.attrs["_index"]
        have = [c for c in obs if c != index_name and not c.startswith("__")]
        missing = [c for c in columns if c not in have]
        if missing:
            raise PrepareError(
                f"{self.path}: obs lacks the columns {missing} (it has {sorted(have)}): "
                "prepare needs the CELLxGENE columns; add or rename them"
            )
        cell_ids = _as_str(read_elem(obs[index_name]))
        if len(cell_ids) != self.n_cells:
            raise PrepareError(
                f"{self.path}: obs has {len(cell_ids)} rows for {self.n_cells} matrix rows"
            )
        values = {}
        for column in columns:
            raw = read_elem(obs[column])
            if column == IS_PRIMARY:
                values[column] = _as_flags(raw, self.path, column)
            else:
                values[column] = _as_str(raw)
        return cell_ids, values

    def chunks(self, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield (first row, counts CSR (rows, source genes) float32, explicit zeros removed)."""
        with _reading(self.path):
            dense = isinstance(self.matrix, h5py.Dataset)
            indptr = None if dense else self.matrix["indptr"][:]
            if dense:
                chunk_rows = max(1, min(chunk_rows, DENSE_CHUNK_VALUES // max(1, self.n_genes)))
            for start in range(0, self.n_cells, chunk_rows):
                stop = min(start + chunk_rows, self.n_cells)
                if dense:
                    chunk = sp.csr_matrix(self.matrix[start:stop].astype(np.float32))
                else:
                    lo, hi = int(indptr[start]), int(indptr[stop])
                    chunk = sp.csr_matrix(
                        (
                            self.matrix["data"][lo:hi].astype(np.float32),
                            self.matrix["indices"][lo:hi],
                            indptr[start : stop + 1] - lo,
                        ),
                        shape=(stop - start, self.n_genes),
                    )
                self._check_counts(chunk, start)
                chunk.eliminate_zeros()
                yield start, chunk

    def _check_counts(self, chunk: sp.csr_matrix, start: int) -> None:
        """Raise unless every value is a finite non-negative integer."""
        data = chunk.data
        bad = ~np.isfinite(data) | (data != np.floor(data)) | (data < 0)
        if not bad.any():
            return
        first = int(np.flatnonzero(bad)[0])
        row = start + int(np.searchsorted(chunk.indptr, first, side="right")) - 1
        kind = "negative" if data[first] < 0 else "non-integer"
        where = "raw.X" if self.matrix_key == "raw/X" else "X"
        raise PrepareError(
            f"{self.path}: {where} has {kind} values (e.g. {data[first]} in row {row}): "
            f"{where} looks normalised; prepare needs raw counts (raw.X): use the file's raw "
            "counts (CELLxGENE keeps them in raw.X) or download the original h5ad"
        )


def _expressed_genes(chunk: sp.csr_matrix) -> np.ndarray:
    """Non-zero genes per row of a chunk without explicit zeros, shape (rows,) int32."""
    return np.diff(chunk.indptr).astype(np.int32)


def _select_genes(chunk: sp.csr_matrix, columns: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Re-index columns: source gene j -> ``columns[j]`` (-1 = dropped); CSR (rows, n_genes)."""
    keep = columns[chunk.indices] >= 0
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    out = sp.csr_matrix(
        (chunk.data[keep], columns[chunk.indices[keep]], kept_before[chunk.indptr]),
        shape=(chunk.shape[0], n_genes),
    )
    out.sort_indices()
    return out


# ---------------------------------------------------------------------------------------------
# Pass 1: check, then scan


@dataclass
class SourceInfo:
    """A source's file, count matrix and genes (both the check and the scan read them)."""

    path: Path
    matrix_key: str
    n_cells: int
    gene_ids: tuple[str, ...]
    gene_names: tuple[str, ...]


@dataclass
class Header(SourceInfo):
    """What the check pass learns about one source, with its cell ids' hashes (cells,) uint64."""

    cell_id_hashes: np.ndarray


@dataclass
class Scan(SourceInfo):
    """What the scan learns about one source. Arrays have shape (cells,) unless noted."""

    values: dict[str, list[str]]  # distinct values per coded column
    n_non_primary: int
    n_below_min_genes: int
    sample: sp.csr_matrix | None = None  # HVG sample (sampled cells, source genes)
    sample_batches: list[str] | None = None  # HVG batch label per sampled cell


def obs_columns(cfg: PrepareConfig) -> tuple[str, ...]:
    """The obs columns every source must have: the coded ones, the primary flag, the HVG keys."""
    hvg_keys = tuple(cfg.hvg_batch_keys) if cfg.genes == HVG else ()
    return tuple(dict.fromkeys((*CODED_COLUMNS, IS_PRIMARY, *hvg_keys)))


def check_source(path: Path, columns: tuple[str, ...]) -> Header:
    """The check pass for one source: header, genes, obs ``columns``, unique cell ids and the
    counts of the first ``HEADER_ROWS`` rows (every later count is checked by the scan)."""
    with SourceReader(path, columns) as reader:
        ids = pd.Index(reader.cell_ids)
        if ids.has_duplicates:
            repeated = ids[ids.duplicated()].unique()
            raise PrepareError(
                f"{path}: the obs index holds {len(repeated)} cell ids more than once, e.g. "
                f"{list(repeated[:3])}: cell ids must be unique; remove the repeated rows, or "
                "make the ids unique if they are different cells (adata.obs_names_make_unique())"
            )
        next(reader.chunks(HEADER_ROWS), None)
        return Header(
            path=path,
            matrix_key=reader.matrix_key,
            n_cells=reader.n_cells,
            gene_ids=tuple(reader.gene_ids),
            gene_names=tuple(reader.gene_names),
            cell_id_hashes=pd.util.hash_array(reader.cell_ids.astype(object)),
        )


def scan_source(cfg: PrepareConfig, index: int, path: Path, sample_probability: float) -> Scan:
    """The scan of source ``index``: check every count, count and (``sample_probability > 0``)
    sample.

    Each eligible cell (primary, ``n_genes_all >= hvg_min_genes``) enters the HVG sample with
    ``sample_probability``, drawn from the stream (seed, index), independent of chunking.
    """
    with SourceReader(path, obs_columns(cfg)) as reader:
        primary = reader.obs[IS_PRIMARY]
        draws = np.random.default_rng([cfg.seed, index]).random(reader.n_cells)
        n_below, samples, sampled_rows = 0, [], []
        for start, chunk in reader.chunks(cfg.chunk_rows):
            rows = np.arange(start, start + chunk.shape[0])
            enough = _expressed_genes(chunk) >= cfg.hvg_min_genes
            n_below += int((~enough).sum())
            take = enough & primary[rows] & (draws[rows] < sample_probability)
            if take.any():
                samples.append(chunk[take])
                sampled_rows.append(rows[take])
        scan = Scan(
            path=path,
            matrix_key=reader.matrix_key,
            n_cells=reader.n_cells,
            gene_ids=tuple(reader.gene_ids),
            gene_names=tuple(reader.gene_names),
            values={c: sorted(set(reader.obs[c])) for c in CODED_COLUMNS},
            n_non_primary=int((~primary).sum()),
            n_below_min_genes=n_below,
        )
        if sample_probability > 0:
            rows = np.concatenate(sampled_rows) if sampled_rows else np.zeros(0, dtype=int)
            scan.sample = (
                sp.vstack(samples, format="csr")
                if samples
                else sp.csr_matrix((0, reader.n_genes), dtype=np.float32)
            )
            labels = [reader.obs[key][rows] for key in cfg.hvg_batch_keys]
            scan.sample_batches = [HVG_BATCH_SEP.join(t) for t in zip(*labels, strict=True)]
    return scan


def _attempt(fn: Any, *args: Any) -> Any:
    """Run ``fn``; return a PrepareError instead of raising it (so that all get reported)."""
    try:
        return fn(*args)
    except PrepareError as err:
        return err


def run_parallel(pool: Executor | None, fn: Any, tasks: list[tuple], desc: str) -> list:
    """``[fn(*t) for t in tasks]`` over the pool (here when None), with a progress bar."""
    if pool is None:
        return [fn(*task) for task in tqdm(tasks, desc=desc)]
    futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
    results: list = [None] * len(tasks)
    try:
        for future in tqdm(as_completed(futures), total=len(tasks), desc=desc):
            results[futures[future]] = future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return results


class BadSources:
    """The sources refused so far. Without ``skip`` a refusal raises one PrepareError (every bad
    source of that stage listed); with ``skip`` (skip_bad_sources) each is logged and kept in
    :attr:`reasons` ({file: reason}) for the manifest, and prepare goes on without it."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.reasons: dict[str, str] = {}

    def refuse(self, found: Mapping[Path, PrepareError]) -> None:
        """Refuse the sources ``found`` (path -> the error naming the file and the fix)."""
        if found and not self.skip:
            errors = list(found.values())
            if len(errors) == 1:
                raise PrepareError(f"{errors[0]} ({SKIP_HINT} it)") from errors[0]
            listed = "\n  ".join(str(e) for e in errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise PrepareError(
                f"{len(errors)} sources are unusable (fix them, leave them out of source=, "
                f"{SKIP_HINT} them):\n  {listed}{more}"
            )
        for path, err in found.items():
            log.warning("skipping %s (skip_bad_sources=true): %s", path, err)
            self.reasons[str(path)] = str(err)

    def keep(self, paths: list[Path], results: list) -> list:
        """``results`` (one per source of ``paths``) of the sources not refused; refuses those
        whose result is a PrepareError. Raises when no source is left."""
        pairs = list(zip(paths, results, strict=True))
        self.refuse({p: r for p, r in pairs if isinstance(r, PrepareError)})
        kept = [r for p, r in pairs if str(p) not in self.reasons]
        if not kept:
            raise PrepareError(
                f"no usable source: skip_bad_sources=true left out all {len(self.reasons)} "
                "(reasons above and in the log); fix the sources"
            )
        return kept

    def entries(self) -> list[dict]:
        """The manifest's ``skipped_sources``: [{"file", "reason"}]."""
        return [{"file": file, "reason": reason} for file, reason in self.reasons.items()]


def _dedupe_gene_tables(infos: list[SourceInfo]) -> None:
    """Let sources with the same gene list share one tuple (thousands of 60k-id lists otherwise)."""
    seen: dict[tuple, tuple] = {}
    for info in infos:
        info.gene_ids = seen.setdefault(info.gene_ids, info.gene_ids)
        info.gene_names = seen.setdefault(info.gene_names, info.gene_names)


def _vocabulary(scans: list[Scan]) -> dict[str, list[str]]:
    """One sorted vocabulary per coded column over all sources."""
    return {c: sorted(set().union(*(s.values[c] for s in scans))) for c in CODED_COLUMNS}


def repeated_cell_ids(headers: list[Header]) -> dict[Path, PrepareError]:
    """Sources holding a cell id of an earlier source (sources are sorted by path).

    Cell ids are unique within each source (the check pass); the earliest holder of an id keeps it.
    """
    hashes = np.concatenate([h.cell_id_hashes for h in headers])
    values, counts = np.unique(hashes, return_counts=True)
    duplicated = values[counts > 1]
    if len(duplicated) == 0:
        return {}
    holder: dict[str, Path] = {}
    found = {}
    for header in headers:
        hit = np.isin(header.cell_id_hashes, duplicated)
        if not hit.any():
            continue
        with SourceReader(header.path, ()) as reader:
            ids = reader.cell_ids[hit]
        earlier = [(cell, holder.setdefault(cell, header.path)) for cell in ids]
        earlier = [(cell, first) for cell, first in earlier if first != header.path]
        if earlier:  # else a 64-bit hash collision between different ids
            cell, first = earlier[0]
            found[header.path] = PrepareError(
                f"{header.path}: {len(earlier)} of its cell ids are in an earlier source too, "
                f"e.g. {cell!r} also in {first}: cell ids must be unique across sources; leave "
                "out the duplicated file or make the obs index unique (e.g. prefix it with the "
                "dataset_id)"
            )
    return found


def unmatched_genes(
    infos: list[SourceInfo], gene_list: list[str] | None, genes: str
) -> dict[Path, PrepareError]:
    """Sources whose gene ids share none with the gene list (``genes=FILE``: their cells would
    be all zeros), or with any other source (``genes=hvg``: the union would hold their genes as
    a block of their own). Versioned ids, symbols or another species' ids in one source do this.
    """
    fix = (
        "the var index of every source must hold the same kind of ids (Ensembl feature ids, "
        "without version suffix): rewrite this source's var index"
    )
    found = {}
    if gene_list is not None:
        listed = set(gene_list)
        for info in infos:
            if listed.isdisjoint(info.gene_ids):
                found[info.path] = PrepareError(
                    f"{info.path}: none of its gene ids (e.g. {list(info.gene_ids[:3])}) is in "
                    f"the gene list {genes} (e.g. {gene_list[:3]}): {fix}, or fix the list"
                )
        return found
    counts = Counter(info.gene_ids for info in infos)  # distinct gene tuples -> sources
    if sum(counts.values()) < 2:
        return found
    holders: Counter = Counter()
    for gene_ids, n in counts.items():
        for gene in gene_ids:
            holders[gene] += n
    alone = {ids for ids, n in counts.items() if n == 1 and all(holders[g] == 1 for g in ids)}
    for info in infos:
        if info.gene_ids in alone:
            other = next(ids for ids in counts if ids != info.gene_ids)
            found[info.path] = PrepareError(
                f"{info.path}: none of its gene ids (e.g. {list(info.gene_ids[:3])}) occurs in "
                f"another source (e.g. {list(other[:3])}): {fix}, or pass genes=FILE with the "
                "genes to keep"
            )
    return found


# ---------------------------------------------------------------------------------------------
# Gene selection


def _gene_union(infos: list[SourceInfo]) -> dict[str, str]:
    """Every source gene id -> its name, in source order (first source first).

    An id named differently by a later source keeps its first name (logged, with a count).
    """
    union: dict[str, str] = {}
    renamed: dict[str, tuple[str, str]] = {}
    for gene_ids, gene_names in dict.fromkeys((s.gene_ids, s.gene_names) for s in infos):
        for gene_id, name in zip(gene_ids, gene_names, strict=True):
            if union.setdefault(gene_id, name) != name:
                renamed.setdefault(gene_id, (union[gene_id], name))
    if renamed:
        gene_id, (first, other) = next(iter(renamed.items()))
        log.warning(
            "%d gene ids have different feature_name values across sources, e.g. %s: %r and "
            "%r; the store keeps the name of the first source (sorted by path)",
            len(renamed),
            gene_id,
            first,
            other,
        )
    return union


def read_gene_list(path: Path, known: Mapping[str, Any]) -> list[str]:
    """Ids in the first column of a TSV/CSV, in file order.

    The first line is a header when its first field is neither a source gene id nor ``ENS...``.
    """
    fields = [
        re.split(r"[\t,]", line)[0].strip().strip("\"'") for line in path.read_text().split("\n")
    ]
    ids = [f for f in fields if f]
    if ids and ids[0] not in known and not ids[0].startswith("ENS"):
        log.info("%s: treating the first line (%r) as a header", path, ids[0])
        ids = ids[1:]
    if not ids:
        raise PrepareError(f"gene list {path} holds no ids: put one Ensembl id per line")
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
    if len(duplicated):
        raise PrepareError(
            f"gene list {path} lists {len(duplicated)} ids more than once, e.g. "
            f"{list(duplicated[:3])}: remove the duplicates"
        )
    return ids


def genes_from_list(path: Path, union: Mapping[str, Any]) -> list[str]:
    """The list's ids; raises when none is a source gene, logs those absent from every source."""
    ids = read_gene_list(path, union)
    absent = [g for g in ids if g not in union]
    if len(absent) == len(ids):
        raise PrepareError(
            f"gene list {path} matches no source gene: the list has ids such as {ids[:3]}, the "
            f"sources have ids such as {list(union)[:3]}; the list's first column must hold the "
            "sources' var index (Ensembl feature ids)"
        )
    if absent:
        log.warning(
            "%d of %d ids of %s are in no source (zero-filled in every cell), e.g. %s",
            len(absent),
            len(ids),
            path,
            absent[:5],
        )
    return ids


def _hvg_sample(scans: list[Scan], union: Mapping[str, str], cfg: PrepareConfig):
    """All sources' samples in union gene space, cut to at most ``hvg_sample_cells`` cells.

    Returns (counts CSR (cells, union genes), batch labels (cells,)).
    """
    position = pd.Index(list(union))
    parts, batches = [], []
    for scan in scans:
        columns = position.get_indexer(list(scan.gene_ids))
        parts.append(_select_genes(scan.sample, columns, len(position)))
        batches.extend(scan.sample_batches)
        scan.sample, scan.sample_batches = None, None
    X, labels = sp.vstack(parts, format="csr"), np.asarray(batches, dtype=object)
    if X.shape[0] > cfg.hvg_sample_cells:
        rng = np.random.default_rng([cfg.seed, 1])
        keep = np.sort(rng.choice(X.shape[0], cfg.hvg_sample_cells, replace=False))
        X, labels = X[keep], labels[keep]
    return X, labels


def highly_variable_genes(X: sp.csr_matrix, batches: np.ndarray, n_top_genes: int) -> np.ndarray:
    """Sorted column indices of the seurat_v3 top ``n_top_genes`` of counts X (cells, genes)."""
    import scanpy as sc  # imported here: slow to import, only genes=hvg needs it

    obs = pd.DataFrame(
        {"batch": pd.Categorical(batches)}, index=np.arange(len(batches)).astype(str)
    )
    adata = anndata.AnnData(X=X, obs=obs)
    batch_key = "batch" if adata.obs["batch"].nunique() > 1 else None
    sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key
    )
    return np.flatnonzero(adata.var["highly_variable"].to_numpy())


def _drop_small_batches(X: sp.csr_matrix, batches: np.ndarray) -> tuple:
    """Leave out HVG batches with < HVG_MIN_BATCH_CELLS sampled cells: seurat_v3's loess fit fails
    (or crashes, for one cell) on them. Returns (X, batches, {left-out batch: cells})."""
    counts = pd.Series(batches).value_counts()
    small = counts[counts < HVG_MIN_BATCH_CELLS]
    if small.empty:
        return X, batches, {}
    log.warning(
        "genes=hvg: leaving out %d batches with < %d sampled cells (%s); raise hvg_sample_cells "
        "or use fewer hvg_batch_keys to keep them",
        len(small),
        HVG_MIN_BATCH_CELLS,
        ", ".join(f"{k}: {v}" for k, v in small.items()),
    )
    keep = ~np.isin(batches, small.index)
    return X[keep], batches[keep], {str(k): int(v) for k, v in small.items()}


def genes_by_hvg(scans: list[Scan], union: Mapping[str, str], cfg: PrepareConfig) -> tuple:
    """Top ``n_top_genes`` HVGs in union order, and what the selection saw (provenance)."""
    X, batches = _hvg_sample(scans, union, cfg)
    X, batches, left_out = _drop_small_batches(X, batches)
    ids = list(union)
    info = {
        "sample_cells": int(X.shape[0]),
        "batches": {str(k): int(v) for k, v in pd.Series(batches).value_counts().items()},
        "left_out_batches": left_out,
        "n_genes_considered": len(ids),
    }
    if cfg.n_top_genes >= len(ids):
        log.info("genes=hvg: n_top_genes=%d >= %d genes: taking all", cfg.n_top_genes, len(ids))
        return ids, info
    if X.shape[0] == 0:
        raise PrepareError(
            f"genes=hvg: no batch has >= {HVG_MIN_BATCH_CELLS} primary cells with >= "
            f"{cfg.hvg_min_genes} expressed genes in the sample: lower hvg_min_genes, raise "
            "hvg_sample_cells or pass a gene list (genes=FILE)"
        )
    if len({s.gene_ids for s in scans}) > 1:
        log.warning(
            "genes=hvg: the sources' gene lists differ: choosing among their union of %d ids "
            "(a gene a source lacks counts as zero there)",
            len(ids),
        )
    log.info(
        "genes=hvg: seurat_v3 on %d sampled cells x %d genes, %d batches (%s)",
        X.shape[0],
        len(ids),
        len(info["batches"]),
        "+".join(cfg.hvg_batch_keys) or "none",
    )
    try:
        chosen = highly_variable_genes(X, batches, cfg.n_top_genes)
    except ValueError as err:
        raise PrepareError(
            f"genes=hvg: scanpy's seurat_v3 failed on {X.shape[0]} cells in "
            f"{len(info['batches'])} batches ({err}): raise hvg_sample_cells, use fewer "
            "hvg_batch_keys or pass a gene list (genes=FILE)"
        ) from err
    return [ids[j] for j in chosen], info


# ---------------------------------------------------------------------------------------------
# Pass 2: pieces


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
            X = _select_genes(chunk, columns, len(genes))[local]
            group.create_dataset("data", data=X.data)
            group.create_dataset("indices", data=X.indices)
            group.create_dataset("indptr", data=X.indptr.astype(np.int64))
            group.create_dataset("dest", data=dest[rows])
            group.create_dataset("codes", data=codes[rows])
            group.create_dataset(N_GENES_ALL, data=_expressed_genes(chunk)[local])
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


# ---------------------------------------------------------------------------------------------
# Pass 3: shards


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
    out: Path,
    index: int,
    blocks: np.ndarray,
    tmp: Path,
    genes: list[str],
    gene_names: list[str],
    shard_size: int,
) -> dict:
    """Pass 3: gather shard ``index`` from the pieces, order its rows, write it atomically.

    ``blocks`` int64 (blocks, 4): source, chunk, first row, end row. Returns the manifest entry.
    """
    matrices, parts = [], []
    for source in np.unique(blocks[:, 0]):
        with h5py.File(piece_path(tmp, int(source)), "r") as f:
            for _, chunk, first, end in blocks[blocks[:, 0] == source]:
                X, fields = _read_block(f[f"chunk_{chunk:05d}"], first, end, len(genes))
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
    obs[IS_PRIMARY] = fields[IS_PRIMARY][order].astype(bool)
    name = shard_name(index)
    partial = out / name.replace(".h5ad", ".tmp.h5ad")
    X = sp.vstack(matrices, format="csr")[order]
    nnz = write_shard(partial, X, obs, genes, gene_names)
    os.replace(partial, out / name)
    return {"file": name, "n_cells": len(order), "nnz": nnz}


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class Plan:
    """What pass 1 decided: the sources' scans, vocabularies, the store's genes and the sources
    left out (``skipped``: the manifest's ``skipped_sources``)."""

    scans: list[Scan]
    vocab: dict[str, list[str]]
    genes: list[str]
    gene_names: list[str]
    hvg: dict | None
    skipped: list[dict]


def plan_store(cfg: PrepareConfig, sources: list[Path], pool: Executor | None) -> Plan:
    """Pass 1 and the global decisions; every input check happens here, before any write.

    The cheap checks (each source's header, obs, genes and first rows, then the checks across
    sources) run before the scan reads every count, so most bad sources fail in seconds.
    """
    bad = BadSources(cfg.skip_bad_sources)
    columns = obs_columns(cfg)
    checked = run_parallel(
        pool, _attempt, [(check_source, p, columns) for p in sources], "check sources"
    )
    headers = bad.keep(sources, checked)
    _dedupe_gene_tables(headers)
    bad.refuse(repeated_cell_ids(headers))
    headers = bad.keep([h.path for h in headers], headers)
    gene_list = None
    if cfg.genes != HVG:
        known = dict.fromkeys(g for ids in dict.fromkeys(h.gene_ids for h in headers) for g in ids)
        gene_list = genes_from_list(Path(cfg.genes), known)
    bad.refuse(unmatched_genes(headers, gene_list, cfg.genes))
    headers = bad.keep([h.path for h in headers], headers)
    probability = 0.0
    if cfg.genes == HVG:
        probability = min(1.0, cfg.hvg_sample_cells / max(1, sum(h.n_cells for h in headers)))
    tasks = [(scan_source, cfg, i, h.path, probability) for i, h in enumerate(headers)]
    scans = bad.keep([h.path for h in headers], run_parallel(pool, _attempt, tasks, "scan sources"))
    _dedupe_gene_tables(scans)
    bad.refuse(unmatched_genes(scans, gene_list, cfg.genes))  # a skipped source may leave one alone
    scans = bad.keep([s.path for s in scans], scans)
    if sum(s.n_cells for s in scans) == 0:
        raise PrepareError(f"the {len(scans)} sources hold no cells")
    union = _gene_union(scans)
    hvg = None
    if cfg.genes == HVG:
        genes, hvg = genes_by_hvg(scans, union, cfg)
    else:
        genes = gene_list
    gene_names = [union.get(g, g) for g in genes]
    return Plan(scans, _vocabulary(scans), genes, gene_names, hvg, bad.entries())


def source_entries(plan: Plan, min_genes: int) -> list[dict]:
    """Manifest ``sources`` entries; logs each source's counts."""
    store_genes = set(plan.genes)
    present: dict[int, int] = {}  # id(gene tuple) -> store genes present (tuples are shared)
    entries = []
    for scan in plan.scans:
        n_present = present.setdefault(
            id(scan.gene_ids), len(store_genes.intersection(scan.gene_ids))
        )
        entry = {
            "file": str(scan.path),
            "n_cells": scan.n_cells,
            "n_genes_source": len(scan.gene_ids),
            "n_genes_missing": len(plan.genes) - n_present,
            "matrix": scan.matrix_key,
            "n_non_primary": scan.n_non_primary,
            "n_below_min_genes": scan.n_below_min_genes,
        }
        entries.append(entry)
        log.info(
            "%s: %d cells (%s), %d genes; %d of %d store genes present, %d zero-filled; "
            "%d non-primary, %d below %d expressed genes",
            scan.path.name,
            scan.n_cells,
            scan.matrix_key,
            entry["n_genes_source"],
            n_present,
            len(plan.genes),
            entry["n_genes_missing"],
            scan.n_non_primary,
            scan.n_below_min_genes,
            min_genes,
        )
    return entries


def build_store(
    cfg: PrepareConfig, plan: Plan, out: Path, pool: Executor | None, provenance: dict
) -> Manifest:
    """Passes 2 and 3 into the cleaned folder ``out``, then the manifest (last)."""
    entries = source_entries(plan, cfg.hvg_min_genes)
    n_cells = [s.n_cells for s in plan.scans]
    n_shards = -(-sum(n_cells) // cfg.shard_size)
    log.info(
        "%d sources, %d cells (%d non-primary, %d below %d expressed genes; all kept and flagged) "
        "-> %d genes, %d shards of %d cells",
        len(n_cells),
        sum(n_cells),
        sum(e["n_non_primary"] for e in entries),
        sum(e["n_below_min_genes"] for e in entries),
        cfg.hvg_min_genes,
        len(plan.genes),
        n_shards,
        cfg.shard_size,
    )
    if plan.skipped:
        log.warning(
            "left out %d bad sources (skip_bad_sources=true; listed in %s under "
            "skipped_sources): %s",
            len(plan.skipped),
            MANIFEST_NAME,
            ", ".join(Path(e["file"]).name for e in plan.skipped),
        )
    tmp = out / TMP_DIR
    tmp.mkdir(exist_ok=True)
    (tmp / FINGERPRINT_FILE).write_text(provenance["fingerprint"])
    reused = sum(piece_path(tmp, i).exists() for i in range(len(n_cells)))
    if reused:
        log.info("reusing %d source pieces of an interrupted run with the same config", reused)
    dest = destinations(n_cells, cfg.seed)
    tasks = [
        (cfg, s.path, piece_path(tmp, i), plan.genes, plan.vocab, dest[i])
        for i, s in enumerate(plan.scans)
    ]
    blocks = run_parallel(pool, write_piece, tasks, "write pieces")
    del dest, tasks
    tasks = [
        (out, s, b, tmp, plan.genes, plan.gene_names, cfg.shard_size)
        for s, b in enumerate(shard_tasks(blocks, n_shards))
    ]
    shards = run_parallel(pool, write_store_shard, tasks, "write shards")
    shutil.rmtree(tmp)
    provenance["counts"] = {
        "n_sources": len(n_cells),
        "n_skipped_sources": len(plan.skipped),
        "n_cells": sum(n_cells),
        "n_non_primary": sum(e["n_non_primary"] for e in entries),
        "n_below_min_genes": sum(e["n_below_min_genes"] for e in entries),
        "min_genes": cfg.hvg_min_genes,
        "n_shards": n_shards,
        "nnz": sum(s["nnz"] for s in shards),
    }
    manifest = Manifest(
        genes=plan.genes,
        gene_names=plan.gene_names,
        vocab=plan.vocab,
        shards=shards,
        shard_size=cfg.shard_size,
        sources=entries,
        provenance=provenance,
        skipped_sources=plan.skipped,
    )
    write_manifest(out, manifest)
    return manifest


@contextmanager
def _process_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool of ``workers`` processes, or None (run in this process) for one worker."""
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool


@contextmanager
def _run_log() -> Iterator[MemoryHandler]:
    """Buffer this module's log records (INFO and up) until :func:`_start_log_file` names a file."""
    buffer = MemoryHandler(capacity=1 << 20, flushLevel=logging.DEBUG)
    old_level = log.level
    log.addHandler(buffer)
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
    try:
        yield buffer
    finally:
        log.removeHandler(buffer)
        log.setLevel(old_level)
        buffer.flush()
        if buffer.target is not None:
            buffer.target.close()
        buffer.close()


def _start_log_file(buffer: MemoryHandler, path: Path) -> None:
    """Send the buffered and all further records to ``path`` (appended)."""
    target = logging.FileHandler(path)
    target.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    buffer.setTarget(target)
    buffer.flush()


def prepare_store(cfg: PrepareConfig | Mapping | Any) -> Manifest:
    """Prepare the store ``cfg.output`` from the sources ``cfg.source``; return its manifest.

    ``cfg``: a :class:`PrepareConfig`, a dict or a DictConfig with its keys (ill-typed or unknown
    keys raise PrepareError before any file is read). A complete store made with the same config
    is left as is ("store complete"); one made with another config raises unless ``overwrite``;
    an incomplete one is cleaned and rebuilt. Bad sources raise PrepareError before any shard is
    written, or with ``skip_bad_sources`` are left out and listed (manifest ``skipped_sources``).
    """
    start = time.time()
    cfg = resolve_config(cfg)
    sources = resolve_sources(cfg.source)
    identity = config_identity(cfg, sources)
    fp = fingerprint(identity)
    out = Path(cfg.output).expanduser().resolve()
    manifest = existing_store(out, fp, identity, cfg.overwrite)
    if manifest is not None:
        log.info(
            "%s: store complete (%d cells x %d genes in %d shards), nothing to do",
            out,
            manifest.n_cells,
            manifest.n_genes,
            len(manifest.shards),
        )
        return manifest
    check_output_folder(out)
    workers = cfg.workers or len(os.sched_getaffinity(0))
    with _run_log() as buffer, _process_pool(workers) as pool:
        log.info("preparing %s from %d sources with %d workers", out, len(sources), workers)
        plan = plan_store(cfg, sources, pool)
        clean_output(out, fp)
        _start_log_file(buffer, out / LOG_NAME)
        provenance = {
            "config": asdict(cfg),
            "sources": [str(p) for p in sources],
            "identity": identity,
            "fingerprint": fp,
            "prepare_overrides": prepare_overrides(cfg, identity),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hvg": plan.hvg,
        }
        manifest = build_store(cfg, plan, out, pool, provenance)
        log.info(
            "%s: wrote %d cells x %d genes in %d shards (%.1f s)",
            out,
            manifest.n_cells,
            manifest.n_genes,
            len(manifest.shards),
            time.time() - start,
        )
    return manifest
