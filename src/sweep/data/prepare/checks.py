"""Pass 1, per source and across sources: the check and scan of a source's rows as they are read,
the checks across sources, and the sources refused (raised together, or left out and listed with
``skip_bad_sources``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.config.schema import PrepareConfig
from sweep.data.prepare.config import HVG, PrepareError
from sweep.data.prepare.sources import (
    GeneTable,
    SourceReader,
    expressed_genes,
    select_genes,
    store_columns,
)
from sweep.data.store import CODED_COLUMNS, IS_PRIMARY

log = logging.getLogger(__package__)  # the pipeline's one logger (see the package docstring)

HVG_BATCH_SEP = "_"  # joins the hvg_batch_keys values into one batch label
SKIP_HINT = "or pass skip_bad_sources=true to prepare without"


@dataclass
class SourceInfo:
    """A source's file, count matrix and genes."""

    path: Path
    matrix_key: str
    n_cells: int
    gene_ids: tuple[str, ...]
    gene_names: tuple[str, ...] | None


@dataclass
class Scan(SourceInfo):
    """What reading a source (or a part of its rows) learns. Arrays have shape (cells,)."""

    values: dict[str, list[str]]  # distinct values per coded column
    n_non_primary: int
    n_below_min_genes: int
    nnz: int  # non-zeros over all source genes
    cell_id_hashes: np.ndarray | None  # uint64; None once the checks across sources are done
    sample: sp.csr_matrix | None = None  # HVG sample (sampled cells, source genes)
    sample_batches: list[str] | None = None  # HVG batch label per sampled cell


def obs_columns(cfg: PrepareConfig) -> tuple[str, ...]:
    """The obs columns every source must have: the coded ones, the primary flag, the HVG keys."""
    hvg_keys = tuple(cfg.hvg_batch_keys) if cfg.genes == HVG else ()
    return tuple(dict.fromkeys((*CODED_COLUMNS, IS_PRIMARY, *hvg_keys)))


def _check_cell_ids(reader: SourceReader) -> None:
    ids = pd.Index(reader.cell_ids)
    if ids.has_duplicates:
        repeated = ids[ids.duplicated()].unique()
        raise PrepareError(
            f"{reader.path}: the obs index holds {len(repeated)} cell ids more than once, e.g. "
            f"{list(repeated[:3])}: cell ids must be unique; remove the repeated rows, or "
            "make the ids unique if they are different cells (adata.obs_names_make_unique())"
        )


def scan_rows(
    reader: SourceReader,
    cfg: PrepareConfig,
    index: int,
    rows: tuple[int, int],
    sample_probability: float,
    genes: GeneTable | None,
) -> tuple[Scan, sp.csr_matrix | None, np.ndarray]:
    """Check and scan rows [first, end) = ``rows`` of the open source ``index`` (its obs and genes
    are checked by the reader, its cell ids here, every count of the rows by the chunks).

    Returns the rows' Scan (its gene names left to :func:`name_genes`), their counts in the store
    ``genes`` (CSR (rows, len(genes)); None without ``genes``) and ``n_genes_all`` (expressed
    genes over ALL source genes, int32 (rows,)). Each eligible cell (primary, ``n_genes_all >=
    hvg_min_genes``) enters the HVG sample with ``sample_probability``, drawn from the stream
    (seed, index): the same cells however the source is cut into parts and chunks.
    """
    _check_cell_ids(reader)
    first, end = rows
    primary = reader.obs[IS_PRIMARY][first:end]
    draws = None
    if sample_probability > 0:
        draws = np.random.default_rng([cfg.seed, index]).random(reader.n_cells)[first:end]
    columns = None if genes is None else store_columns(reader.gene_ids, genes)
    expressed, selected, samples, sampled, nnz = [], [], [], [], 0
    for start, chunk in reader.chunks(cfg.chunk_rows, first, end):
        expressed.append(expressed_genes(chunk))
        nnz += chunk.nnz
        if columns is not None:
            selected.append(select_genes(chunk, columns, len(genes)))
        if draws is not None:
            at = np.arange(start - first, start - first + chunk.shape[0])
            take = (
                (expressed[-1] >= cfg.hvg_min_genes)
                & primary[at]
                & (draws[at] < sample_probability)
            )
            samples.append(chunk[take])
            sampled.append(at[take])
    n_genes_all = np.concatenate(expressed) if expressed else np.zeros(0, dtype=np.int32)
    coded = {c: reader.obs[c][first:end] for c in CODED_COLUMNS}
    scan = Scan(
        path=reader.path,
        matrix_key=reader.matrix_key,
        n_cells=end - first,
        gene_ids=reader.gene_ids,
        gene_names=None,
        values={c: v.present() for c, v in coded.items()},
        n_non_primary=int((~primary).sum()),
        n_below_min_genes=int((n_genes_all < cfg.hvg_min_genes).sum()),
        nnz=nnz,
        cell_id_hashes=pd.util.hash_array(reader.cell_ids[first:end].astype(object)),
    )
    if draws is not None:
        at = np.concatenate([np.zeros(0, dtype=int), *sampled])
        scan.sample = sp.vstack(
            [sp.csr_matrix((0, reader.n_genes), dtype=np.float32), *samples], format="csr"
        )
        labels = [reader.obs[key][first:end].strings()[at] for key in cfg.hvg_batch_keys] or [
            np.full(len(at), "")
        ]
        scan.sample_batches = [HVG_BATCH_SEP.join(t) for t in zip(*labels, strict=True)]
    X = None
    if genes is not None:
        X = sp.vstack([sp.csr_matrix((0, len(genes)), dtype=np.float32), *selected], format="csr")
    return scan, X, n_genes_all


def merge_parts(parts: list[Scan]) -> Scan:
    """One source's Scan from the Scans of its parts (its rows in order, read by several groups)."""
    if len(parts) == 1:
        return parts[0]
    sampled = parts[0].sample is not None
    return dataclasses.replace(
        parts[0],
        n_cells=sum(p.n_cells for p in parts),
        values={c: sorted(set().union(*(p.values[c] for p in parts))) for c in CODED_COLUMNS},
        n_non_primary=sum(p.n_non_primary for p in parts),
        n_below_min_genes=sum(p.n_below_min_genes for p in parts),
        nnz=sum(p.nnz for p in parts),
        cell_id_hashes=np.concatenate([p.cell_id_hashes for p in parts]),
        sample=sp.vstack([p.sample for p in parts], format="csr") if sampled else None,
        sample_batches=[b for p in parts for b in p.sample_batches] if sampled else None,
    )


def attempt(fn: Any, *args: Any) -> Any:
    """Run ``fn``; return a PrepareError instead of raising it (so that all get reported)."""
    try:
        return fn(*args)
    except PrepareError as err:
        return err


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


def name_genes(infos: list[SourceInfo]) -> None:
    """Fill in the gene names, read once per distinct gene list (from the first source holding
    it, sorted by path): sources with the same gene ids share their names."""
    names: dict[tuple, tuple] = {}
    for info in infos:
        if info.gene_ids not in names:
            with SourceReader(info.path, None) as reader:
                names[info.gene_ids] = reader.read_gene_names()
        info.gene_names = names[info.gene_ids]


def dedupe_gene_tables(infos: list[SourceInfo]) -> None:
    """Let sources with the same gene list share one tuple (thousands of 60k-id lists otherwise)."""
    seen: dict[tuple, tuple] = {}
    for info in infos:
        info.gene_ids = seen.setdefault(info.gene_ids, info.gene_ids)
        info.gene_names = seen.setdefault(info.gene_names, info.gene_names)


def vocabulary(scans: list[Scan]) -> dict[str, list[str]]:
    """One sorted vocabulary per coded column over all sources."""
    return {c: sorted(set().union(*(s.values[c] for s in scans))) for c in CODED_COLUMNS}


def repeated_cell_ids(scans: list[Scan]) -> dict[Path, PrepareError]:
    """Sources holding a cell id of an earlier source (sources are sorted by path).

    Cell ids are unique within each source (:func:`scan_rows`); the earliest holder of an id
    keeps it.
    """
    hashes = np.concatenate([s.cell_id_hashes for s in scans])
    values, counts = np.unique(hashes, return_counts=True)
    duplicated = values[counts > 1]
    if len(duplicated) == 0:
        return {}
    holder: dict[str, Path] = {}
    found = {}
    for scan in scans:
        hit = np.isin(scan.cell_id_hashes, duplicated)
        if not hit.any():
            continue
        with SourceReader(scan.path, (), genes=False) as reader:
            ids = reader.cell_ids[hit]
        earlier = [(cell, holder.setdefault(cell, scan.path)) for cell in ids]
        earlier = [(cell, first) for cell, first in earlier if first != scan.path]
        if earlier:  # else a 64-bit hash collision between different ids
            cell, first = earlier[0]
            found[scan.path] = PrepareError(
                f"{scan.path}: {len(earlier)} of its cell ids are in an earlier source too, "
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
