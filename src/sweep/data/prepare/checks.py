"""Pass 1, per source and across sources: the cheap check, the scan of every count, and the
sources refused (raised together, or left out and listed with ``skip_bad_sources``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.data.prepare.config import HVG, PrepareConfig, PrepareError
from sweep.data.prepare.sources import SourceReader, expressed_genes
from sweep.data.store import CODED_COLUMNS, IS_PRIMARY

log = logging.getLogger(__package__)  # the pipeline's one logger (see the package docstring)

HEADER_ROWS = 1000  # the check pass reads the counts of each source's first rows
HVG_BATCH_SEP = "_"  # joins the hvg_batch_keys values into one batch label
SKIP_HINT = "or pass skip_bad_sources=true to prepare without"


@dataclass
class SourceInfo:
    """A source's file, count matrix and genes (both the check and the scan read them)."""

    path: Path
    matrix_key: str
    n_cells: int
    gene_ids: tuple[str, ...]
    gene_names: tuple[str, ...]


@dataclass
class Scan(SourceInfo):
    """What the scan learns about one source. Arrays have shape (cells,) unless noted."""

    values: dict[str, list[str]]  # distinct values per coded column
    n_non_primary: int
    n_below_min_genes: int
    nnz: int  # non-zeros over all source genes
    sample: sp.csr_matrix | None = None  # HVG sample (sampled cells, source genes)
    sample_batches: list[str] | None = None  # HVG batch label per sampled cell


@dataclass
class Header(SourceInfo):
    """What the check pass learns about one source, with its cell ids' hashes (cells,) uint64
    and, for a source the check read whole, its scan."""

    cell_id_hashes: np.ndarray
    scan: Scan | None = None


def obs_columns(cfg: PrepareConfig) -> tuple[str, ...]:
    """The obs columns every source must have: the coded ones, the primary flag, the HVG keys."""
    hvg_keys = tuple(cfg.hvg_batch_keys) if cfg.genes == HVG else ()
    return tuple(dict.fromkeys((*CODED_COLUMNS, IS_PRIMARY, *hvg_keys)))


def check_source(cfg: PrepareConfig, path: Path) -> Header:
    """The check pass for one source: header, genes, obs columns, unique cell ids and the counts
    of the first ``HEADER_ROWS`` rows (every later count is checked by the scan).

    A source of at most HEADER_ROWS cells is scanned right away when no HVG sample is needed
    (gene list): its counts are read once in pass 1 (thousands of small files).
    """
    with SourceReader(path, obs_columns(cfg)) as reader:
        ids = pd.Index(reader.cell_ids)
        if ids.has_duplicates:
            repeated = ids[ids.duplicated()].unique()
            raise PrepareError(
                f"{path}: the obs index holds {len(repeated)} cell ids more than once, e.g. "
                f"{list(repeated[:3])}: cell ids must be unique; remove the repeated rows, or "
                "make the ids unique if they are different cells (adata.obs_names_make_unique())"
            )
        scan = None
        if reader.n_cells <= HEADER_ROWS and cfg.genes != HVG:
            scan = _scan(reader, cfg, 0, 0.0)
        else:
            reader.check_first_rows(HEADER_ROWS)
        return Header(
            path=path,
            matrix_key=reader.matrix_key,
            n_cells=reader.n_cells,
            gene_ids=reader.gene_ids,
            gene_names=None,  # read once per gene list: name_genes
            cell_id_hashes=pd.util.hash_array(reader.cell_ids.astype(object)),
            scan=scan,
        )


def scan_source(cfg: PrepareConfig, index: int, header: Header, sample_probability: float) -> Scan:
    """The scan of source ``index`` (checked: ``header``): check every count, count and
    (``sample_probability > 0``) sample. Its genes are the header's."""
    with SourceReader(header.path, obs_columns(cfg), genes=False) as reader:
        if (reader.n_cells, reader.n_genes) != (header.n_cells, len(header.gene_ids)):
            raise PrepareError(
                f"{header.path}: the file changed since it was checked; prepare again"
            )
        return _scan(reader, cfg, index, sample_probability)


def _scan(reader: SourceReader, cfg: PrepareConfig, index: int, sample_probability: float) -> Scan:
    """Read every count of an open source; the Scan's genes are left for the caller
    (``gene_ids`` of the reader, or None).

    Each eligible cell (primary, ``n_genes_all >= hvg_min_genes``) enters the HVG sample with
    ``sample_probability``, drawn from the stream (seed, index), independent of chunking.
    """
    primary = reader.obs[IS_PRIMARY]
    draws = np.random.default_rng([cfg.seed, index]).random(reader.n_cells)
    n_below, nnz, samples, sampled_rows = 0, 0, [], []
    for start, chunk in reader.chunks(cfg.chunk_rows):
        rows = np.arange(start, start + chunk.shape[0])
        enough = expressed_genes(chunk) >= cfg.hvg_min_genes
        n_below += int((~enough).sum())
        nnz += chunk.nnz
        take = enough & primary[rows] & (draws[rows] < sample_probability)
        if take.any():
            samples.append(chunk[take])
            sampled_rows.append(rows[take])
    scan = Scan(
        path=reader.path,
        matrix_key=reader.matrix_key,
        n_cells=reader.n_cells,
        gene_ids=reader.gene_ids,
        gene_names=None,
        values={c: np.unique(reader.obs[c]).tolist() for c in CODED_COLUMNS},
        nnz=nnz,
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
        labels = [reader.obs[key][rows] for key in cfg.hvg_batch_keys] or [np.full(len(rows), "")]
        scan.sample_batches = [HVG_BATCH_SEP.join(t) for t in zip(*labels, strict=True)]
    return scan


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


def name_genes(headers: list[Header]) -> None:
    """Fill in the gene names, read once per distinct gene list (from the first source holding
    it, sorted by path): sources with the same gene ids share their names."""
    names: dict[tuple, tuple] = {}
    for header in headers:
        if header.gene_ids not in names:
            with SourceReader(header.path, (), genes=False) as reader:
                names[header.gene_ids] = reader.read_gene_names()
        header.gene_names = names[header.gene_ids]


def dedupe_gene_tables(infos: list[SourceInfo]) -> None:
    """Let sources with the same gene list share one tuple (thousands of 60k-id lists otherwise)."""
    seen: dict[tuple, tuple] = {}
    for info in infos:
        info.gene_ids = seen.setdefault(info.gene_ids, info.gene_ids)
        info.gene_names = seen.setdefault(info.gene_names, info.gene_names)


def vocabulary(scans: list[Scan]) -> dict[str, list[str]]:
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
        with SourceReader(header.path, (), genes=False) as reader:
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
