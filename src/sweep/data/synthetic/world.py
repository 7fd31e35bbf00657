"""The random world of a synthetic curriculum: the genes, the cell-type programs, every batch
effect and the datasets' designs, drawn once from the seed (:func:`draw_world`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep.config.schema import SyntheticConfig
from sweep.data.synthetic.census import LOW_QUALITY_CONCENTRATION, census_design

# Assay name -> (EFO ontology term id, median total counts of a cell-suspension library).
ASSAYS: dict[str, tuple[str, float]] = {
    "10x 3' v3": ("EFO:0009922", 6000.0),
    "10x 3' v2": ("EFO:0009899", 3500.0),
    "10x 5' v1": ("EFO:0011025", 4000.0),
    "Smart-seq2": ("EFO:0008931", 12000.0),
}
CELL_TYPES: list[tuple[str, str]] = [
    ("T cell", "CL:0000084"),
    ("B cell", "CL:0000236"),
    ("natural killer cell", "CL:0000623"),
    ("monocyte", "CL:0000576"),
    ("macrophage", "CL:0000235"),
    ("dendritic cell", "CL:0000451"),
    ("neutrophil", "CL:0000775"),
    ("plasma cell", "CL:0000786"),
    ("endothelial cell", "CL:0000115"),
    ("fibroblast", "CL:0000057"),
    ("epithelial cell", "CL:0000066"),
    ("smooth muscle cell", "CL:0000192"),
    ("mast cell", "CL:0000097"),
    ("erythrocyte", "CL:0000232"),
    ("platelet", "CL:0000233"),
    ("type II pneumocyte", "CL:0002063"),
]
TISSUES: list[tuple[str, str]] = [
    ("blood", "UBERON:0000178"),
    ("lung", "UBERON:0002048"),
    ("spleen", "UBERON:0002106"),
    ("lymph node", "UBERON:0000029"),
    ("bone marrow", "UBERON:0002371"),
    ("liver", "UBERON:0002107"),
]
MT_GENES = [
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
]  # fmt: skip


@dataclass(frozen=True)
class World:
    """Random parameters shared by all datasets of one config (G genes, T types, D datasets).

    Effects are natural-log shifts of the mean expression, already scaled by the strength.
    ``protocols[i][k]`` lists the (assay, suspension_type) pairs donor k of dataset i was
    profiled with; its cells are assigned to them uniformly at random (census: after one cell
    to each).
    """

    var: pd.DataFrame  # (G,) index: Ensembl-like ids; column feature_name
    log_mean: np.ndarray  # (G,) base log-mean expression
    theta: np.ndarray  # (G,) NB inverse dispersion
    programs: np.ndarray  # (T, G) cell-type log-fold changes
    mt_mask: np.ndarray  # (G,) bool, mitochondrial genes
    dataset_ids: list[str]  # (D,) uuid strings
    tissues: list[int]  # (D,) index into TISSUES
    n_cells: np.ndarray  # (D,) cells per dataset
    composition: np.ndarray  # (D, T) cell-type probabilities, zero for absent types
    protocols: list[list[list[tuple[str, str]]]]
    dataset_effect: np.ndarray | None  # (D, G); None (census): drawn per dataset
    donor_effect: np.ndarray | None  # (D, K, G); None (census): drawn per dataset
    assay_effect: dict[str, np.ndarray]  # assay -> (G,)
    nucleus_effect: np.ndarray  # (G,), added for suspension_type "nucleus"
    depth_shift: np.ndarray  # (D,) log-shift of the median library size
    low_quality: np.ndarray  # (D,) share of low-quality cells per dataset


def check_config(cfg: SyntheticConfig) -> None:
    """Reject configs the generator cannot honour, naming the offending field."""
    if cfg.n_datasets < 1 or cfg.donors_per_dataset < 1 or cfg.cells_per_dataset < 1:
        raise ValueError("n_datasets, donors_per_dataset and cells_per_dataset must be >= 1")
    if cfg.n_genes < 100:
        raise ValueError(f"n_genes must be >= 100, got {cfg.n_genes}")
    if not 1 <= cfg.n_cell_types <= len(CELL_TYPES):
        raise ValueError(f"n_cell_types must be in [1, {len(CELL_TYPES)}], got {cfg.n_cell_types}")
    if cfg.batch_effect_strength < 0:
        raise ValueError(f"batch_effect_strength must be >= 0, got {cfg.batch_effect_strength}")
    for name in ("low_quality_fraction", "non_primary_fraction"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.shape not in ("uniform", "census"):
        raise ValueError(f"shape must be uniform or census, got {cfg.shape!r}")
    if cfg.shape == "census":
        low, mean, high = (
            cfg.min_cells_per_dataset,
            cfg.cells_per_dataset,
            cfg.max_cells_per_dataset,
        )
        if not (1 <= low < high and low < mean < (high - low) / np.log(high / low)):
            raise ValueError(
                "shape=census needs 1 <= min_cells_per_dataset < cells_per_dataset < "
                "(max - min) / ln(max / min) (the mean of the flattest Pareto law between "
                f"min_cells_per_dataset and max_cells_per_dataset), got {low}, {mean}, {high}"
            )
        if not 0 <= cfg.multi_protocol_donor_fraction <= 1:
            raise ValueError(
                "multi_protocol_donor_fraction must be in [0, 1], got "
                f"{cfg.multi_protocol_donor_fraction}"
            )


def _gene_table(n_genes: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``var`` with ids ENSG + 11 digits and symbols GENE1..., MT genes last; plus the MT mask."""
    n_plain = n_genes - len(MT_GENES)
    names = [f"GENE{j + 1}" for j in range(n_plain)] + MT_GENES
    ids = pd.Index([f"ENSG{j + 1:011d}" for j in range(n_genes)])
    var = pd.DataFrame({"feature_name": pd.Categorical(names)}, index=ids)
    return var, np.arange(n_genes) >= n_plain


def _protocols(n_datasets: int, n_donors: int) -> list[list[list[tuple[str, str]]]]:
    """Assay/suspension design: dataset i uses assay i % 4 and nuclei when i % 4 == 1.

    Donor 1 of dataset 0 is also profiled with 10x 5' v1, and donor 1 of dataset 2 also as
    nuclei, so that dataset+donor and dataset+assay+suspension_type+donor are different batch
    partitions.
    """
    assays = list(ASSAYS)
    design = []
    for i in range(n_datasets):
        primary = (assays[i % len(assays)], "nucleus" if i % 4 == 1 else "cell")
        donors = [[primary] for _ in range(n_donors)]
        if i == 0:
            donors[0].append(("10x 5' v1", primary[1]))
        elif i == 2:
            donors[0].append((primary[0], "nucleus"))
        design.append(donors)
    return design


def _composition(rng: np.random.Generator, n_datasets: int, n_types: int) -> np.ndarray:
    """(D, T) cell-type probabilities: each dataset holds a random subset of types (>= 2 when
    possible), each type occurs in >= 2 datasets when possible; weights are Dirichlet(2)."""
    present = rng.random((n_datasets, n_types)) < 0.75
    for t in range(n_types):
        missing = np.flatnonzero(~present[:, t])
        lacking = min(2, n_datasets) - present[:, t].sum()
        if lacking > 0:
            present[rng.choice(missing, size=lacking, replace=False), t] = True
    for i in range(n_datasets):
        missing = np.flatnonzero(~present[i])
        lacking = min(2, n_types) - present[i].sum()
        if lacking > 0:
            present[i, rng.choice(missing, size=lacking, replace=False)] = True
    weights = rng.dirichlet(np.full(n_types, 2.0), size=n_datasets) * present
    return weights / weights.sum(axis=1, keepdims=True)


def draw_world(cfg: SyntheticConfig) -> World:
    """Draw the parameters shared by all datasets from ``cfg.seed``."""
    check_config(cfg)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    n_genes, n_types, n_datasets = cfg.n_genes, cfg.n_cell_types, cfg.n_datasets
    s = cfg.batch_effect_strength
    var, mt_mask = _gene_table(n_genes)
    plain = np.flatnonzero(~mt_mask)

    log_mean = rng.normal(0.0, 1.7, n_genes)
    log_mean[mt_mask] = rng.normal(4.0, 0.5, mt_mask.sum())
    theta = np.exp(rng.uniform(np.log(2.0), np.log(10.0), n_genes))

    programs = np.zeros((n_types, n_genes))
    n_markers = max(1, round(0.05 * n_genes))
    for t in range(n_types):
        markers = rng.choice(plain, size=n_markers, replace=False)
        programs[t, markers] = rng.uniform(1.5, 3.0, n_markers)

    depleted = rng.choice(plain, size=round(0.1 * len(plain)), replace=False)
    nucleus_effect = rng.normal(0.0, 0.3, n_genes)
    nucleus_effect[depleted] -= rng.uniform(1.0, 2.5, len(depleted))
    nucleus_effect[mt_mask] -= 3.0

    genes = {"var": var, "log_mean": log_mean, "theta": theta, "programs": programs}
    genes |= {"mt_mask": mt_mask, "nucleus_effect": s * nucleus_effect}
    dataset_ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_datasets)]
    tissues = rng.integers(len(TISSUES), size=n_datasets).tolist()
    if cfg.shape == "census":
        n_cells, protocols = census_design(cfg, rng)
        f, c = cfg.low_quality_fraction, LOW_QUALITY_CONCENTRATION
        return World(
            **genes,
            dataset_ids=dataset_ids,
            tissues=tissues,
            n_cells=n_cells,
            composition=_composition(rng, n_datasets, n_types),
            protocols=protocols,
            dataset_effect=None,
            donor_effect=None,
            assay_effect={a: rng.normal(0.0, 0.5 * s, n_genes) for a in ASSAYS},
            depth_shift=rng.normal(0.0, 0.2, n_datasets),
            low_quality=rng.beta(c * f, c * (1 - f), n_datasets) if f > 0 else np.zeros(n_datasets),
        )
    return World(  # the uniform shape: keep this order of draws (the demo's files depend on it)
        **genes,
        dataset_ids=dataset_ids,
        tissues=tissues,
        n_cells=np.maximum(
            50, np.round(cfg.cells_per_dataset * rng.uniform(0.5, 1.5, n_datasets))
        ).astype(int),
        composition=_composition(rng, n_datasets, n_types),
        protocols=_protocols(n_datasets, cfg.donors_per_dataset),
        dataset_effect=rng.normal(0.0, 0.5 * s, (n_datasets, n_genes)),
        donor_effect=rng.normal(0.0, 0.2 * s, (n_datasets, cfg.donors_per_dataset, n_genes)),
        assay_effect={a: rng.normal(0.0, 0.5 * s, n_genes) for a in ASSAYS},
        depth_shift=rng.normal(0.0, 0.2, n_datasets),
        low_quality=np.full(n_datasets, cfg.low_quality_fraction),
    )
