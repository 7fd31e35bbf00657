"""Tests of the synthetic CELLxGENE-like data generator."""

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

from sweep.data.synthetic import (
    ASSAYS,
    SyntheticConfig,
    draw_world,
    generate,
    main,
    simulate_dataset,
)

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
