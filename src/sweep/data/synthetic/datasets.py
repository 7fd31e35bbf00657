"""One synthetic dataset: its cells (donors, protocols, cell types, quality, libraries), their
CELLxGENE obs columns and their counts, drawn in chunks from the world and ``(seed, dataset)``
alone (:func:`simulate_dataset`, :func:`write_dataset`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.config.schema import SyntheticConfig
from sweep.data.synthetic.census import census_donors, sample_counts_sparse
from sweep.data.synthetic.world import ASSAYS, CELL_TYPES, TISSUES, World

NUCLEUS_DEPTH_FACTOR = 0.7
LIBRARY_SIGMA = 0.5  # log-scale spread of library sizes within a batch
LOW_QUALITY_DEPTH = (20.0, 200.0)  # counts; < 300 so that such cells express < 300 genes
LOW_QUALITY_MT_BOOST = 2.0  # log-shift of MT genes in low-quality (damaged) cells
CHUNK_CELLS = 512  # cells sampled per dense chunk (and per RNG stream)


def sample_counts(
    library: np.ndarray, profiles: np.ndarray, theta: np.ndarray, rng: np.random.Generator
) -> sp.csr_matrix:
    """NB counts (cells, G) as float32 CSR (the uniform shape's sampler).

    library: (cells,) total counts; profiles: (cells, G), rows sum to 1; theta: (G,).
    """
    mean = library[:, None] * profiles
    rate = rng.gamma(theta, mean / theta)
    return sp.csr_matrix(rng.poisson(rate).astype(np.float32))


def _uniform_donors(
    cfg: SyntheticConfig, i: int, world: World, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(cells,) donor and protocol index of each cell: Dirichlet(4) donor shares, protocols of
    a donor uniformly at random."""
    n, n_donors = int(world.n_cells[i]), cfg.donors_per_dataset
    donor = rng.choice(n_donors, size=n, p=rng.dirichlet(np.full(n_donors, 4.0)))
    n_protocols = np.array([len(p) for p in world.protocols[i]])
    return donor, rng.integers(n_protocols[donor])


def _uniform_counts(
    cells: pd.DataFrame, i: int, world: World
) -> Callable[[slice, np.random.Generator], sp.csr_matrix]:
    """The uniform shape's chunk sampler: one profile per distinct (type, donor, assay,
    suspension, quality) group of the dataset."""
    groups = cells[["t", "d", "a", "s", "q"]]
    codes, keys = pd.factorize(pd.MultiIndex.from_frame(groups))
    logits = np.stack(
        [
            world.log_mean
            + world.programs[t]
            + world.dataset_effect[i]
            + world.donor_effect[i, d]
            + world.assay_effect[a]
            + (world.nucleus_effect if s == "nucleus" else 0.0)
            + (LOW_QUALITY_MT_BOOST * world.mt_mask if q else 0.0)
            for t, d, a, s, q in keys
        ]
    )
    profiles = np.exp(logits - logits.max(axis=1, keepdims=True))
    profiles /= profiles.sum(axis=1, keepdims=True)
    library = cells["library"].to_numpy()

    def counts(sl: slice, rng: np.random.Generator) -> sp.csr_matrix:
        return sample_counts(library[sl], profiles[codes[sl]], world.theta, rng)

    return counts


def _census_counts(
    cfg: SyntheticConfig, cells: pd.DataFrame, i: int, world: World
) -> Callable[[slice, np.random.Generator], sp.csr_matrix]:
    """The census shape's chunk sampler: a cell's mean is a product of exponentiated effects,
    type (T, G) x donor (K, G) x protocol and quality (2P, G), scaled to its library; the
    dataset and donor effects are drawn from the stream ``(seed, 2, i)``."""
    s = cfg.batch_effect_strength
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, i)))
    dataset_effect = rng.normal(0.0, 0.5 * s, world.log_mean.size)
    donor_effect = rng.normal(0.0, 0.2 * s, (len(world.protocols[i]), world.log_mean.size))
    by_type = np.exp(world.log_mean + dataset_effect + world.programs)
    by_donor = np.exp(donor_effect)
    protocol_codes, protocols = pd.factorize(pd.MultiIndex.from_frame(cells[["a", "s"]]))
    by_protocol = np.exp(
        [
            world.assay_effect[a]
            + (world.nucleus_effect if suspension == "nucleus" else 0.0)
            + (LOW_QUALITY_MT_BOOST * world.mt_mask if q else 0.0)
            for a, suspension in protocols
            for q in (False, True)
        ]
    )
    t, d = cells["t"].to_numpy(), cells["d"].to_numpy()
    pq = 2 * protocol_codes + cells["q"].to_numpy()
    library = cells["library"].to_numpy()

    def counts(sl: slice, rng: np.random.Generator) -> sp.csr_matrix:
        mean = by_type[t[sl]] * by_donor[d[sl]]
        mean *= by_protocol[pq[sl]]
        mean *= (library[sl] / mean.sum(axis=1))[:, None]
        return sample_counts_sparse(mean, world.theta, rng)

    return counts


def _cells(cfg: SyntheticConfig, i: int, world: World) -> pd.DataFrame:
    """Dataset i's cells (rows): donor d, protocol's assay a and suspension s, cell type t,
    low quality q, primary, library (total counts), from the stream ``(seed, 1, i, 0)``."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, i, 0)))
    n = int(world.n_cells[i])
    if cfg.shape == "census":
        n_protocols = np.array([len(p) for p in world.protocols[i]])
        donor, protocol = census_donors(n, n_protocols, rng)
    else:
        donor, protocol = _uniform_donors(cfg, i, world, rng)
    design = world.protocols[i]
    assay = np.array([design[d][k][0] for d, k in zip(donor, protocol, strict=True)])
    suspension = np.array([design[d][k][1] for d, k in zip(donor, protocol, strict=True)])
    cell_type = rng.choice(cfg.n_cell_types, size=n, p=world.composition[i])
    low_quality = np.zeros(n, dtype=bool)
    low_quality[rng.choice(n, size=round(world.low_quality[i] * n), replace=False)] = True
    primary = np.ones(n, dtype=bool)
    primary[rng.choice(n, size=round(cfg.non_primary_fraction * n), replace=False)] = False

    # Library sizes (counts): log-normal around the assay/suspension/dataset median.
    median = np.array([ASSAYS[a][1] for a in assay]) * np.where(
        suspension == "nucleus", NUCLEUS_DEPTH_FACTOR, 1.0
    )
    library = np.exp(np.log(median) + world.depth_shift[i] + rng.normal(0, LIBRARY_SIGMA, n))
    library[low_quality] = np.exp(rng.uniform(*np.log(LOW_QUALITY_DEPTH), low_quality.sum()))
    return pd.DataFrame(
        {
            "d": donor,
            "a": assay,
            "s": suspension,
            "t": cell_type,
            "q": low_quality,
            "primary": primary,
            "library": library,
        }
    )


def _obs(cells: pd.DataFrame, i: int, world: World) -> pd.DataFrame:
    """The CELLxGENE obs columns of dataset i's cells; index ``{dataset_id}-{row}``."""
    dataset_id = world.dataset_ids[i]
    tissue, tissue_term = TISSUES[world.tissues[i]]
    cell_type = cells["t"].to_numpy()
    obs = pd.DataFrame(
        {
            "dataset_id": dataset_id,
            "donor_id": [f"D{i:03d}-donor{d + 1}" for d in cells["d"]],
            "assay": cells["a"].to_numpy(),
            "assay_ontology_term_id": [ASSAYS[a][0] for a in cells["a"]],
            "suspension_type": cells["s"].to_numpy(),
            "cell_type": np.array([name for name, _ in CELL_TYPES])[cell_type],
            "cell_type_ontology_term_id": np.array([term for _, term in CELL_TYPES])[cell_type],
            "tissue": tissue,
            "tissue_ontology_term_id": tissue_term,
        },
        index=pd.Index([f"{dataset_id}-{j}" for j in range(len(cells))]),
    ).astype("category")
    obs["is_primary_data"] = cells["primary"].to_numpy()
    return obs


def _dataset(
    cfg: SyntheticConfig, i: int, world: World
) -> tuple[pd.DataFrame, Iterator[sp.csr_matrix]]:
    """Dataset i's obs and its counts as an iterator of CSR chunks of CHUNK_CELLS rows, each
    chunk c drawn from its own stream ``(seed, 1, i, 1, c)``."""
    cells = _cells(cfg, i, world)
    if cfg.shape == "census":
        counts, threads = _census_counts(cfg, cells, i, world), 1  # files run in processes
    else:
        counts, threads = _uniform_counts(cells, i, world), min(4, os.cpu_count() or 1)

    def chunk(c: int) -> sp.csr_matrix:
        sl = slice(c * CHUNK_CELLS, (c + 1) * CHUNK_CELLS)
        return counts(
            sl, np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, i, 1, c)))
        )

    def chunks() -> Iterator[sp.csr_matrix]:
        n_chunks = -(-len(cells) // CHUNK_CELLS)
        if threads == 1:
            yield from map(chunk, range(n_chunks))
            return
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield from pool.map(chunk, range(n_chunks))

    return _obs(cells, i, world), chunks()


def simulate_dataset(cfg: SyntheticConfig, dataset_index: int, world: World) -> ad.AnnData:
    """One dataset's AnnData (cells, G) from ``world`` and the streams ``(seed, ., i, ...)``."""
    obs, chunks = _dataset(cfg, dataset_index, world)
    X = sp.vstack(list(chunks), format="csr")
    return ad.AnnData(X=X, obs=obs, var=world.var.copy(), uns=_uns(cfg, dataset_index))


def _uns(cfg: SyntheticConfig, i: int) -> dict:
    return {"synthetic": {"config": asdict(cfg), "dataset_index": i}}


def write_dataset(cfg: SyntheticConfig, i: int, world: World, path: Path) -> dict:
    """Write dataset i to ``path`` (the file :func:`simulate_dataset`'s AnnData writes), its
    counts appended chunk by chunk: memory is one chunk, not the file. Returns a summary."""
    obs, chunks = _dataset(cfg, i, world)
    ad.AnnData(obs=obs, var=world.var.copy(), uns=_uns(cfg, i)).write_h5ad(path)
    nnz = 0
    with h5py.File(path, "a") as f:
        for c, chunk in enumerate(chunks):
            nnz += chunk.nnz
            if c == 0:
                ad.io.write_elem(f, "X", chunk)
                X = ad.io.sparse_dataset(f["X"])
            else:
                X.append(chunk)
    return {
        "path": path,
        "cells": len(obs),
        "nnz": nnz,
        "assays": sorted(obs["assay"].unique()),
        "suspension": sorted(obs["suspension_type"].unique()),
    }
