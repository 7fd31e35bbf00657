"""Seeded generator of CELLxGENE/Census-like source h5ad files with raw counts.

No real data can be downloaded in this project, so the demo data set and every test use files
written here. Each file looks like one CELLxGENE dataset download: raw integer counts in ``X``
(float32 CSR), Ensembl-like gene ids in ``var``, and the CELLxGENE ``obs`` columns that matter for
batch definitions (dataset, donor, assay, suspension type) and for biology (cell type, tissue).

Generative model (natural logs; ``N(m, s)`` is a normal with standard deviation ``s``):

* gene ``g`` has a base log-mean ``b_g ~ N(0, 1.7)`` (a long-tailed, log-normal spread) and an NB
  inverse dispersion ``theta_g`` log-uniform in [2, 10]; 13 mitochondrial genes ("MT-...") sit at
  the end of the gene list with a high base expression;
* cell type ``t`` has a program ``p_tg``: +U(1.5, 3) on ~5% of the (non-MT) genes, 0 elsewhere;
* batch effects are gene-specific log-shifts, scaled by ``s = batch_effect_strength``:
  dataset ``N(0, 0.5 s)``, donor ``N(0, 0.2 s)``, assay ``N(0, 0.5 s)``, and for nuclei
  ``N(0, 0.3 s)`` plus a depletion of 10% of the genes and of all MT genes;
* a cell's expression profile is the softmax over genes of the sum of those terms, its mean counts
  ``mu_cg = library_c * profile_cg``; counts are gamma-Poisson (negative binomial) draws;
* library sizes (total counts) are log-normal (sigma 0.5) around an assay median (10x:
  3500-6000, Smart-seq2 12000), x0.7 for nuclei, shifted per dataset by ``N(0, 0.2)``; these
  depth differences are kept at every ``s``, so ``s = 0`` removes the gene-specific effects only;
  with 3000 genes a normal cell expresses ~650-1500 genes (median by batch);
* low-quality cells get a library of 20-200 counts (hence < 300 expressed genes) and more MT
  counts; they and the non-primary cells are exact shares of each dataset, placed at random.

The random "world" (genes, programs, every batch effect, the dataset designs) is drawn once from
``seed``; each dataset is then simulated from ``(seed, dataset_index)`` alone, so the output is
deterministic and memory stays bounded by one dataset.

CLI: ``python -m sweep.data.synthetic output=DIR n_datasets=4 cells_per_dataset=500``.
"""

import logging
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from omegaconf import OmegaConf

from sweep.config.schema import SyntheticConfig

log = logging.getLogger(__name__)

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

REFERENCE_DEPTH = 4000.0  # counts; the median library the dataset/suspension factors multiply
NUCLEUS_DEPTH_FACTOR = 0.7
LIBRARY_SIGMA = 0.5  # log-scale spread of library sizes within a batch
LOW_QUALITY_DEPTH = (20.0, 200.0)  # counts; < 300 so that such cells express < 300 genes
LOW_QUALITY_MT_BOOST = 2.0  # log-shift of MT genes in low-quality (damaged) cells
CHUNK_CELLS = 512  # cells sampled per dense chunk (and per RNG stream)


@dataclass(frozen=True)
class World:
    """Random parameters shared by all datasets of one config (G genes, T types, D datasets).

    Effects are natural-log shifts of the mean expression, already scaled by the strength.
    ``protocols[i][k]`` lists the (assay, suspension_type) pairs donor k of dataset i was
    profiled with; its cells are assigned to them uniformly at random.
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
    dataset_effect: np.ndarray  # (D, G)
    donor_effect: np.ndarray  # (D, K, G)
    assay_effect: dict[str, np.ndarray]  # assay -> (G,)
    nucleus_effect: np.ndarray  # (G,), added for suspension_type "nucleus"
    depth_shift: np.ndarray  # (D,) log-shift of the median library size


def _check(cfg: SyntheticConfig) -> None:
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
    _check(cfg)
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

    return World(
        var=var,
        log_mean=log_mean,
        theta=theta,
        programs=programs,
        mt_mask=mt_mask,
        dataset_ids=[str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_datasets)],
        tissues=rng.integers(len(TISSUES), size=n_datasets).tolist(),
        n_cells=np.maximum(
            50, np.round(cfg.cells_per_dataset * rng.uniform(0.5, 1.5, n_datasets))
        ).astype(int),
        composition=_composition(rng, n_datasets, n_types),
        protocols=_protocols(n_datasets, cfg.donors_per_dataset),
        dataset_effect=rng.normal(0.0, 0.5 * s, (n_datasets, n_genes)),
        donor_effect=rng.normal(0.0, 0.2 * s, (n_datasets, cfg.donors_per_dataset, n_genes)),
        assay_effect={a: rng.normal(0.0, 0.5 * s, n_genes) for a in ASSAYS},
        nucleus_effect=s * nucleus_effect,
        depth_shift=rng.normal(0.0, 0.2, n_datasets),
    )


def _sample_counts(
    library: np.ndarray, profiles: np.ndarray, theta: np.ndarray, rng: np.random.Generator
) -> sp.csr_matrix:
    """NB counts (cells, G) as float32 CSR.

    library: (cells,) total counts; profiles: (cells, G), rows sum to 1; theta: (G,).
    """
    mean = library[:, None] * profiles
    rate = rng.gamma(theta, mean / theta)
    return sp.csr_matrix(rng.poisson(rate).astype(np.float32))


def simulate_dataset(cfg: SyntheticConfig, dataset_index: int, world: World) -> ad.AnnData:
    """One dataset's AnnData (cells, G) from ``world`` and the stream ``(seed, dataset_index)``."""
    i = dataset_index
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, i, 0)))
    n = int(world.n_cells[i])
    dataset_id = world.dataset_ids[i]

    # Cell metadata: donor, protocol within donor, cell type, quality, primary flag.
    n_donors = cfg.donors_per_dataset
    donor = rng.choice(n_donors, size=n, p=rng.dirichlet(np.full(n_donors, 4.0)))
    n_protocols = np.array([len(p) for p in world.protocols[i]])
    protocol = rng.integers(n_protocols[donor])
    assay = np.array([world.protocols[i][d][k][0] for d, k in zip(donor, protocol, strict=True)])
    suspension = np.array(
        [world.protocols[i][d][k][1] for d, k in zip(donor, protocol, strict=True)]
    )
    cell_type = rng.choice(cfg.n_cell_types, size=n, p=world.composition[i])
    low_quality = np.zeros(n, dtype=bool)
    low_quality[rng.choice(n, size=round(cfg.low_quality_fraction * n), replace=False)] = True
    primary = np.ones(n, dtype=bool)
    primary[rng.choice(n, size=round(cfg.non_primary_fraction * n), replace=False)] = False

    # Library sizes (counts): log-normal around the assay/suspension/dataset median.
    median = np.array([ASSAYS[a][1] for a in assay]) * np.where(
        suspension == "nucleus", NUCLEUS_DEPTH_FACTOR, 1.0
    )
    library = np.exp(np.log(median) + world.depth_shift[i] + rng.normal(0, LIBRARY_SIGMA, n))
    library[low_quality] = np.exp(rng.uniform(*np.log(LOW_QUALITY_DEPTH), low_quality.sum()))

    # Expression profiles: one per distinct (type, donor, assay, suspension, quality) group.
    groups = pd.DataFrame(
        {"t": cell_type, "d": donor, "a": assay, "s": suspension, "q": low_quality}
    )
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

    # Counts, chunk by chunk, each chunk with its own stream (thread count does not matter).
    starts = range(0, n, CHUNK_CELLS)

    def chunk(c: int) -> sp.csr_matrix:
        sl = slice(starts[c], starts[c] + CHUNK_CELLS)
        chunk_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, i, 1, c)))
        return _sample_counts(library[sl], profiles[codes[sl]], world.theta, chunk_rng)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        X = sp.vstack(list(pool.map(chunk, range(len(starts)))), format="csr")

    tissue, tissue_term = TISSUES[world.tissues[i]]
    type_names = np.array([name for name, _ in CELL_TYPES])[cell_type]
    type_terms = np.array([term for _, term in CELL_TYPES])[cell_type]
    obs = pd.DataFrame(
        {
            "dataset_id": dataset_id,
            "donor_id": [f"D{i:03d}-donor{d + 1}" for d in donor],
            "assay": assay,
            "assay_ontology_term_id": [ASSAYS[a][0] for a in assay],
            "suspension_type": suspension,
            "cell_type": type_names,
            "cell_type_ontology_term_id": type_terms,
            "tissue": tissue,
            "tissue_ontology_term_id": tissue_term,
        },
        index=pd.Index([f"{dataset_id}-{j}" for j in range(n)]),
    ).astype("category")
    obs["is_primary_data"] = primary
    uns = {"synthetic": {"config": asdict(cfg), "dataset_index": i}}
    return ad.AnnData(X=X, obs=obs, var=world.var.copy(), uns=uns)


def generate(cfg: SyntheticConfig) -> list[Path]:
    """Write ``cfg.n_datasets`` files ``dataset_{i:03d}.h5ad`` into ``cfg.output``; sorted paths."""
    if not cfg.output:
        raise ValueError("output must be set to the folder to write into")
    world = draw_world(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cfg.n_datasets):
        adata = simulate_dataset(cfg, i, world)
        path = out / f"dataset_{i:03d}.h5ad"
        adata.write_h5ad(path)
        log.info(
            "wrote %s: %d cells x %d genes, %d nnz, assays %s, suspension %s",
            path,
            adata.n_obs,
            adata.n_vars,
            adata.X.nnz,
            sorted(adata.obs["assay"].unique()),
            sorted(adata.obs["suspension_type"].unique()),
        )
        paths.append(path)
    return sorted(paths)


def main(argv: list[str] | None = None) -> list[Path]:
    """CLI: ``key=value`` overrides of SyntheticConfig; unknown keys or bad types raise."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else list(argv))
    schema = OmegaConf.structured(SyntheticConfig)
    schema.output = "???"  # the command line must name it (the demo fills it in)
    merged = OmegaConf.merge(schema, overrides)
    OmegaConf.to_container(merged, throw_on_missing=True)  # names a missing output
    cfg: SyntheticConfig = OmegaConf.to_object(merged)
    paths = generate(cfg)
    log.info("wrote %d files to %s", len(paths), cfg.output)
    return paths


if __name__ == "__main__":
    main()
