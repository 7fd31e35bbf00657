"""Tests of the synthetic CELLxGENE-like data generator."""

import hashlib
import itertools
import re
import uuid
from dataclasses import asdict

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from omegaconf.errors import OmegaConfBaseException
from scipy import stats

from sweep.config.schema import SyntheticConfig
from sweep.data.synthetic import draw_world, generate, simulate_dataset
from sweep.data.synthetic.census import pareto_sizes, sample_counts_sparse
from sweep.data.synthetic.files import main
from sweep.data.synthetic.world import ASSAYS

OBS_COLUMNS = {
    "dataset_id",
    "donor_id",
    "assay",
    "assay_ontology_term_id",
    "suspension_type",
    "cell_type",
    "cell_type_ontology_term_id",
    "tissue",
    "tissue_ontology_term_id",
    "is_primary_data",
}


def _small(tmp_path, name="out", **overrides) -> SyntheticConfig:
    """A config that generates in well under a second."""
    params = {"n_datasets": 4, "cells_per_dataset": 300, "n_genes": 600} | overrides
    return SyntheticConfig(output=str(tmp_path / name), **params)


def _read_all(cfg: SyntheticConfig) -> list[ad.AnnData]:
    return [ad.read_h5ad(p) for p in generate(cfg)]


def _log_normalised(X: sp.csr_matrix) -> np.ndarray:
    """Dense log1p of counts scaled to 10,000 per cell, (cells, genes)."""
    totals = np.asarray(X.sum(axis=1)).ravel()
    return np.log1p(X.toarray() / totals[:, None] * 1e4)


def _normal_cells(adata: ad.AnnData) -> ad.AnnData:
    """Cells passing a 300-expressed-genes QC filter."""
    return adata[np.diff(adata.X.indptr) >= 300]


def test_output_is_deterministic_and_seed_dependent(tmp_path):
    first = _read_all(_small(tmp_path, "a", n_datasets=3))
    again = _read_all(_small(tmp_path, "b", n_datasets=3))
    other = _read_all(_small(tmp_path, "c", n_datasets=3, seed=1))

    for x, y in zip(first, again, strict=True):
        assert (x.X != y.X).nnz == 0
        pd.testing.assert_frame_equal(x.obs, y.obs)
        pd.testing.assert_frame_equal(x.var, y.var)
    for x, y in zip(first, other, strict=True):
        assert x.shape != y.shape or (x.X != y.X).nnz > 0
        assert set(x.obs_names).isdisjoint(y.obs_names)

    # A dataset simulated alone equals the same dataset written by generate().
    cfg = _small(tmp_path, "a", n_datasets=3)
    alone = simulate_dataset(cfg, 2, draw_world(cfg))
    assert (alone.X != first[2].X).nnz == 0
    pd.testing.assert_frame_equal(alone.obs, first[2].obs)


def test_files_follow_the_cellxgene_schema(tmp_path):
    cfg = _small(tmp_path)
    paths = generate(cfg)
    assert [p.name for p in paths] == [f"dataset_{i:03d}.h5ad" for i in range(4)]
    adatas = [ad.read_h5ad(p) for p in paths]

    for i, adata in enumerate(adatas):
        X = adata.X
        assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32
        assert adata.n_vars == 600 and adata.n_obs >= 50
        assert X.data.min() >= 0 and np.array_equal(X.data, np.round(X.data))

        assert set(adata.obs.columns) == OBS_COLUMNS
        for column in OBS_COLUMNS - {"is_primary_data"}:
            assert isinstance(adata.obs[column].dtype, pd.CategoricalDtype), column
        assert adata.obs["is_primary_data"].dtype == bool
        assert adata.obs["dataset_id"].nunique() == 1
        uuid.UUID(adata.obs["dataset_id"].iloc[0])
        terms = adata.obs[["assay", "assay_ontology_term_id"]].drop_duplicates()
        assert all(ASSAYS[a][0] == t for a, t in terms.itertuples(index=False))
        assert adata.obs["cell_type_ontology_term_id"].str.match(r"^CL:\d{7}$").all()
        assert adata.obs["tissue_ontology_term_id"].str.match(r"^UBERON:\d{7}$").all()

        assert adata.var.index.is_unique
        assert all(re.fullmatch(r"ENSG\d{11}", g) for g in adata.var_names)
        assert list(adata.var.columns) == ["feature_name"]
        assert adata.var["feature_name"].str.startswith("MT-").sum() == 13
        pd.testing.assert_frame_equal(adata.var, adatas[0].var)

        assert adata.uns["synthetic"]["dataset_index"] == i
        assert dict(adata.uns["synthetic"]["config"]) == asdict(cfg)

    all_ids = pd.Index(np.concatenate([a.obs_names for a in adatas]))
    assert all_ids.is_unique
    assert len({a.obs["dataset_id"].iloc[0] for a in adatas}) == 4
    obs = pd.concat([a.obs.astype(str) for a in adatas])
    assert obs["assay"].nunique() >= 3
    assert set(obs["suspension_type"]) == {"cell", "nucleus"}


def test_low_quality_and_non_primary_shares(tmp_path):
    # Default gene space (3000 genes) and fractions, fewer cells.
    adatas = _read_all(SyntheticConfig(output=str(tmp_path), n_datasets=4, cells_per_dataset=600))
    X = sp.vstack([a.X for a in adatas], format="csr")
    obs = pd.concat([a.obs for a in adatas])
    n_expressed = np.diff(X.indptr)
    totals = np.asarray(X.sum(axis=1)).ravel()

    low_quality = totals < 300  # the low-quality libraries hold 20-200 counts
    assert low_quality.mean() == pytest.approx(0.08, abs=0.005)
    assert (n_expressed[low_quality] < 300).all()
    normal = n_expressed[~low_quality]
    assert (normal < 300).mean() < 0.03
    assert 600 < np.median(normal) < 1600
    assert (n_expressed < 300).mean() == pytest.approx(0.08, abs=0.02)

    assert (~obs["is_primary_data"]).mean() == pytest.approx(0.05, abs=0.005)


def test_donors_nest_in_datasets_and_batch_definitions_differ(tmp_path):
    for n_datasets in (3, 4):
        adatas = _read_all(_small(tmp_path, f"d{n_datasets}", n_datasets=n_datasets))
        obs = pd.concat([a.obs.astype(str) for a in adatas])
        assert obs.groupby("donor_id")["dataset_id"].nunique().max() == 1
        assert obs.groupby("dataset_id")["donor_id"].nunique().eq(3).all()

        by_donor = obs[["dataset_id", "donor_id"]].drop_duplicates()
        by_protocol = obs[["dataset_id", "assay", "suspension_type", "donor_id"]].drop_duplicates()
        assert len(by_donor) == 3 * n_datasets
        assert len(by_donor) < len(by_protocol)


def test_cell_types_are_shared_and_separable(tmp_path):
    cfg = _small(tmp_path, n_cell_types=8, cells_per_dataset=400, n_genes=1000)
    adata = ad.concat([_normal_cells(a) for a in _read_all(cfg)])
    obs = adata.obs.astype(str)
    assert obs["cell_type"].nunique() == 8
    assert obs.groupby("cell_type")["dataset_id"].nunique().min() >= 2

    # Nearest centroid (centroids from even cells, tested on odd cells), log-normalised data.
    data = _log_normalised(adata.X)
    labels = obs["cell_type"].to_numpy()
    train = np.arange(len(labels)) % 2 == 0
    types = np.unique(labels)
    centroids = np.stack([data[train & (labels == t)].mean(axis=0) for t in types])
    distances = ((data[~train, None, :] - centroids[None]) ** 2).sum(axis=2)
    accuracy = (types[distances.argmin(axis=1)] == labels[~train]).mean()
    assert accuracy > 0.9


def _between_dataset_distance(adata: ad.AnnData) -> float:
    """Mean distance between dataset centroids of the same cell type, log-normalised data."""
    data = _log_normalised(adata.X)
    obs = adata.obs.astype(str)
    distances = []
    for _, cells in obs.groupby("cell_type"):
        centroids = [
            data[obs.index.get_indexer(group.index)].mean(axis=0)
            for _, group in cells.groupby("dataset_id")
            if len(group) >= 20
        ]
        distances += [np.linalg.norm(a - b) for a, b in itertools.combinations(centroids, 2)]
    return float(np.mean(distances))


def test_batch_effect_strength_controls_dataset_separation(tmp_path):
    def distance(strength: float) -> float:
        cfg = _small(tmp_path, f"s{strength}", n_genes=1000, batch_effect_strength=strength)
        return _between_dataset_distance(ad.concat([_normal_cells(a) for a in _read_all(cfg)]))

    none, default, strong = distance(0.0), distance(1.0), distance(2.0)
    assert none < default < strong
    assert strong > 3 * none


def test_cli_writes_files_and_rejects_bad_arguments(tmp_path):
    out = tmp_path / "cli"
    paths = main([f"output={out}", "n_datasets=2", "cells_per_dataset=60", "n_genes=200"])
    assert [p.name for p in paths] == ["dataset_000.h5ad", "dataset_001.h5ad"]
    assert all(p.parent == out and p.exists() for p in paths)
    assert ad.read_h5ad(paths[1]).n_vars == 200

    with pytest.raises(OmegaConfBaseException, match="n_dataset"):
        main([f"output={out}", "n_dataset=2"])
    with pytest.raises(OmegaConfBaseException, match="cells_per_dataset"):
        main([f"output={out}", "cells_per_dataset=many"])
    with pytest.raises(OmegaConfBaseException, match="output"):
        main(["n_datasets=2"])
    with pytest.raises(ValueError, match="n_cell_types"):
        main([f"output={out}", "n_cell_types=99"])


# --------------------------------------------------------------------------------------------
# The uniform shape's output is pinned; the census shape


def _digest(adata: ad.AnnData) -> str:
    """sha256 of X's CSR arrays, obs and var (as CSV)."""
    digest = hashlib.sha256()
    for array in (adata.X.data, adata.X.indices, adata.X.indptr):
        digest.update(array.tobytes())
    digest.update(adata.obs.to_csv().encode())
    digest.update(adata.var.to_csv().encode())
    return digest.hexdigest()


def test_the_uniform_shape_writes_what_it_wrote_before_the_census_shape(tmp_path):
    # Captured from the generator before shape=census existed (the demo's files, which the
    # README's numbers come from, are made by the same code with the default keys). A numpy
    # release that changes a Generator stream would change these too.
    adatas = _read_all(_small(tmp_path, n_datasets=3))
    assert [(a.shape, a.X.nnz, float(a.X.sum())) for a in adatas] == [
        ((337, 600), 116493, 1983641.0),
        ((444, 600), 128744, 1265989.0),
        ((192, 600), 56391, 749250.0),
    ]
    assert [_digest(a) for a in adatas] == [
        "0195ae18c2816e53fbb3ffdb3724c44939c651be0d5a861dc9e047fc2f4e369a",
        "5d223f5938ef49b9b2572abd9544504c4e3bce1852d630f1cf053e2f9a54a569",
        "1e36c036dcf03ee6c9b8bbec6978bcf2832e2788a2d15ec972b3e307aeadcf3d",
    ]


def test_pareto_sizes_have_the_mean_bounds_and_a_heavy_tail():
    rng = np.random.default_rng(0)
    sizes = pareto_sizes(rng, 200_000, mean=500, low=200, high=30_000)
    assert sizes.min() >= 200 and sizes.max() <= 30_000
    assert sizes.mean() == pytest.approx(500, rel=0.02)
    assert 250 < np.median(sizes) < 350  # half the datasets are small
    assert (sizes > 10_000).sum() > 10  # ... and some are huge
    narrow = pareto_sizes(rng, 200_000, mean=700, low=200, high=2000)
    assert narrow.mean() == pytest.approx(700, rel=0.02) and narrow.max() <= 2000
    with pytest.raises(ValueError, match="mean"):  # above the flattest law's (1800 / ln 10)
        pareto_sizes(rng, 10, mean=800, low=200, high=2000)


def test_the_sparse_sampler_draws_the_negative_binomial():
    # Means on both sides of SPARSE_SPLIT; each column holds 40,000 draws of one (mean, theta).
    means = np.array([0.02, 0.3, 0.95, 1.0, 4.0, 40.0])
    theta = np.array([2.0, 10.0, 3.0, 2.0, 5.0, 8.0])
    n = 40_000
    counts = sample_counts_sparse(np.tile(means, (n, 1)), theta, np.random.default_rng(0)).toarray()
    assert counts.dtype == np.float32
    for g, (m, th) in enumerate(zip(means, theta, strict=True)):
        law = stats.nbinom(th, th / (th + m))
        assert counts[:, g].mean() == pytest.approx(m, rel=0.05, abs=0.003)
        assert counts[:, g].var() == pytest.approx(law.var(), rel=0.1, abs=0.003)
        for k in range(4):
            expected = law.pmf(k)
            tolerance = 4 * np.sqrt(expected * (1 - expected) / n) + 1e-4
            assert (counts[:, g] == k).mean() == pytest.approx(expected, abs=tolerance), (g, k)

    csr = sample_counts_sparse(np.tile(means, (7, 1)), theta, np.random.default_rng(1))
    assert csr.has_canonical_format and csr.indices.dtype == np.int32
    assert (csr.data > 0).all()


def _census(tmp_path, name="census", **overrides) -> SyntheticConfig:
    """A small Census-shaped config: 60 datasets of 50..5,000 cells (mean 150)."""
    params = {
        "shape": "census",
        "n_datasets": 60,
        "cells_per_dataset": 150,
        "min_cells_per_dataset": 50,
        "max_cells_per_dataset": 5000,
        "donors_per_dataset": 6,
        "n_genes": 800,
        "multi_protocol_donor_fraction": 0.2,
        "low_quality_fraction": 0.1,
    } | overrides
    return SyntheticConfig(output=str(tmp_path / name), **params)


def test_the_census_shape(tmp_path):
    cfg = _census(tmp_path)
    world = draw_world(cfg)
    adatas = _read_all(cfg)
    assert len(adatas) == 60
    for adata in adatas:
        pd.testing.assert_frame_equal(adata.var, adatas[0].var)
        assert adata.n_vars == 800 and adata.X.dtype == np.float32
        assert np.array_equal(adata.X.data, np.round(adata.X.data))
    obs = pd.concat([a.obs.astype(str) for a in adatas])
    obs["n_genes"] = np.concatenate([np.diff(a.X.indptr) for a in adatas])
    obs["total"] = np.concatenate([np.asarray(a.X.sum(axis=1)).ravel() for a in adatas])

    sizes = np.array([a.n_obs for a in adatas])
    assert np.array_equal(sizes, world.n_cells)
    assert sizes.min() >= 50 and sizes.max() <= 5000
    assert sizes.max() / np.median(sizes) > 5  # heavy tail

    donors = obs.groupby("dataset_id")["donor_id"].nunique()
    assert obs.groupby("donor_id")["dataset_id"].nunique().max() == 1
    assert donors.min() == 1 and donors.max() >= 3 * donors.median()
    assert (donors <= np.maximum(1, sizes // 10).max()).all()
    cells_per_donor = obs.groupby("donor_id").size()
    assert cells_per_donor.max() > 10 * cells_per_donor.median()

    # The set share of donors has two protocols, each with cells: exactly, in the files.
    protocols = obs.groupby(["dataset_id", "donor_id"])[["assay", "suspension_type"]].nunique()
    multi = (protocols > 1).any(axis=1)
    assert multi.sum() == round(0.2 * len(protocols))
    assert (protocols.sum(axis=1) <= 3).all()  # one change: another assay or suspension
    assert protocols["assay"].gt(1).any() and protocols["suspension_type"].gt(1).any()

    # Low-quality cells (libraries of 20-200 counts, < 300 genes): each dataset's share drawn
    # around the set share, so the share varies by dataset (most few, some many).
    low_quality = obs["total"] < 300
    assert (obs["n_genes"][low_quality] < 300).all()
    by_dataset = low_quality.groupby(obs["dataset_id"], sort=False).sum()
    expected = np.round(world.low_quality * sizes)
    observed = by_dataset[[a.obs["dataset_id"].iloc[0] for a in adatas]].to_numpy()
    assert np.abs(observed - expected).max() <= 2  # a library of 200 may draw over 300 counts
    assert world.low_quality.mean() == pytest.approx(0.1, abs=0.03)
    assert low_quality.mean() == pytest.approx(0.1, abs=0.05)
    shares = by_dataset / obs.groupby("dataset_id", sort=False).size()
    assert shares.std() > 0.03 and (shares < 0.02).sum() >= 5
    assert (~obs["is_primary_data"].eq("True")).mean() == pytest.approx(0.05, abs=0.005)
    assert obs["assay"].nunique() == 4 and set(obs["suspension_type"]) == {"cell", "nucleus"}


def test_the_census_shape_is_seeded_and_written_as_simulated(tmp_path):
    small = {"n_datasets": 8, "cells_per_dataset": 300, "min_cells_per_dataset": 100}
    small |= {"max_cells_per_dataset": 3000, "n_genes": 300}
    cfg = _census(tmp_path, "a", **small)
    first = _read_all(cfg)
    again = _read_all(_census(tmp_path, "b", **small))
    other = _read_all(_census(tmp_path, "c", **small, seed=1))
    for x, y in zip(first, again, strict=True):
        assert (x.X != y.X).nnz == 0
        pd.testing.assert_frame_equal(x.obs, y.obs)
    assert [a.n_obs for a in first] != [a.n_obs for a in other]

    # A file (written chunk by chunk, by a pool process) equals its dataset simulated alone.
    big = int(np.argmax([a.n_obs for a in first]))
    alone = simulate_dataset(cfg, big, draw_world(cfg))
    assert alone.n_obs > 512  # more than one chunk
    assert (alone.X != first[big].X).nnz == 0
    pd.testing.assert_frame_equal(alone.obs, first[big].obs)

    # The gene-level world is the uniform shape's for the same seed and genes.
    uniform = draw_world(SyntheticConfig(n_datasets=8, n_genes=300))
    assert np.array_equal(draw_world(cfg).log_mean, uniform.log_mean)


def test_census_arguments_are_checked(tmp_path):
    out = tmp_path / "cli"
    with pytest.raises(ValueError, match="shape"):
        main([f"output={out}", "shape=atlas"])
    with pytest.raises(ValueError, match="min_cells_per_dataset"):
        main([f"output={out}", "shape=census", "cells_per_dataset=100"])
    with pytest.raises(ValueError, match="multi_protocol_donor_fraction"):
        main([f"output={out}", "shape=census", "multi_protocol_donor_fraction=1.5"])
