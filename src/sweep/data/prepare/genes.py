"""Gene selection: the union of the sources' genes, a gene list file or seurat_v3 HVGs.

Gene order: a gene list keeps the list's order. ``genes=hvg`` keeps the selected genes in source
order, over the union of all sources' genes (the first source's genes in its order, then genes new
in later sources in theirs; sources are sorted by path): neither HVG rank nor alphabetical.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.config.schema import PrepareConfig
from sweep.data.prepare.checks import Scan, SourceInfo
from sweep.data.prepare.config import PrepareError
from sweep.data.prepare.sources import select_genes

log = logging.getLogger(__package__)  # the pipeline's one logger (see the package docstring)

HVG_MIN_BATCH_CELLS = 50  # smaller HVG batches are left out of the seurat_v3 fit


def gene_union(infos: list[SourceInfo]) -> dict[str, str]:
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


def check_gene_list(path: Path, ids: list[str], union: Mapping[str, Any]) -> None:
    """Raise when none of the list's ``ids`` is a source gene (of ``union``); log those absent
    from every source."""
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


def _hvg_sample(scans: list[Scan], union: Mapping[str, str], cfg: PrepareConfig):
    """All sources' samples in union gene space, cut to at most ``hvg_sample_cells`` cells.

    Returns (counts CSR (cells, union genes), batch labels (cells,)).
    """
    position = pd.Index(list(union))
    parts, batches = [], []
    for scan in scans:
        columns = position.get_indexer(list(scan.gene_ids))
        parts.append(select_genes(scan.sample, columns, len(position)))
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
