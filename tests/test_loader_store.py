"""The loader on a real prepared store: what it delivers against anndata, pandas and randomness."""

import anndata
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scvi import REGISTRY_KEYS

from sweep.config.schema import BatchConfig, DataConfig, LoaderConfig
from sweep.data.datamodule import StoreDataModule
from sweep.data.store import CODED_COLUMNS, read_manifest


def datamodule(store, batch_size=128, **batch):
    data = OmegaConf.structured(DataConfig)
    batch_cfg = OmegaConf.merge(OmegaConf.structured(BatchConfig), batch)
    loader = OmegaConf.merge(
        OmegaConf.structured(LoaderConfig),
        {"num_workers": 0, "batch_size": batch_size, "block_size": 32, "fetch_size": 512},
    )
    return StoreDataModule(store, data, batch_cfg, loader, seed=0)


def store_as_anndata(store) -> anndata.AnnData:
    """The whole store read with anndata, shards in manifest order, obs decoded to strings."""
    manifest = read_manifest(store)
    adata = anndata.concat([anndata.read_h5ad(store / s["file"]) for s in manifest.shards])
    for column in CODED_COLUMNS:
        adata.obs[column] = np.asarray(manifest.vocab[column])[adata.obs[column].to_numpy()]
    return adata


def epoch_batches(dm, loader):
    from sweep.data.densify import densify

    return [densify(b, dm.n_vars) for b in loader]


def test_validation_batches_equal_the_rows_anndata_reads(store):
    dm = datamodule(store)
    adata = store_as_anndata(store)
    batches = epoch_batches(dm, dm.val_dataloader())
    X = np.concatenate([b[REGISTRY_KEYS.X_KEY].numpy() for b in batches])
    assert np.array_equal(X, adata.X[dm.split.validation].toarray())


def test_training_epoch_holds_exactly_the_training_rows(store):
    dm = datamodule(store)
    adata = store_as_anndata(store)
    X = np.concatenate(
        [b[REGISTRY_KEYS.X_KEY].numpy() for b in epoch_batches(dm, dm.train_dataloader())]
    )
    expected = adata.X[dm.split.train].toarray().astype(np.float32)  # stored as uint8/16/32
    as_rows = lambda M: sorted(map(bytes, np.ascontiguousarray(M)))  # noqa: E731
    assert X.shape == expected.shape
    assert as_rows(X) == as_rows(expected)
    assert not (dm.split.train & dm.split.validation).any()


@pytest.mark.parametrize(
    "batch_keys,covariates",
    [
        (["dataset_id", "assay", "suspension_type", "donor_id"], []),
        (["dataset_id", "donor_id"], ["assay", "suspension_type"]),
    ],
)
def test_filter_and_codes_agree_with_pandas_on_the_sources(store, sources, batch_keys, covariates):
    """Reference path: the source files' own strings and counts, filtered with pandas."""
    dm = datamodule(store, batch_keys=batch_keys, covariate_keys=covariates)
    parts = []
    for path in sorted(sources.glob("*.h5ad")):
        source = anndata.read_h5ad(path)
        obs = source.obs.copy()
        obs["n_genes_all"] = np.diff(source.X.indptr)
        parts.append(obs)
    reference = pd.concat(parts)
    reference["keep"] = reference["is_primary_data"] & (reference["n_genes_all"] >= 300)
    reference["batch"] = reference[batch_keys].astype(str).agg("|".join, axis=1)

    store_ids = store_as_anndata(store).obs_names
    ref = reference.loc[store_ids]
    selected = dm.split.train | dm.split.validation
    assert np.array_equal(selected, ref["keep"].to_numpy())
    labels = np.asarray(dm.encoding.batch_categories)[dm.encoding.batch_codes[selected]]
    assert np.array_equal(labels, ref.loc[ref["keep"], "batch"].to_numpy())
    assert dm.n_batch == ref.loc[ref["keep"], "batch"].nunique()
    for j, key in enumerate(covariates):
        cats = np.asarray(dm.encoding.covariate_categories[key])
        codes = dm.encoding.covariate_codes[selected, j]
        assert np.array_equal(cats[codes], ref.loc[ref["keep"], key].astype(str).to_numpy())


def max_dataset_share(datasets: np.ndarray, batch_size: int) -> float:
    """Mean over batches of the largest share one dataset has in a batch."""
    shares = []
    for first in range(0, len(datasets) - batch_size + 1, batch_size):
        _, counts = np.unique(datasets[first : first + batch_size], return_counts=True)
        shares.append(counts.max() / batch_size)
    return float(np.mean(shares))


def test_batches_mix_source_datasets_like_random_sampling(store):
    dm = datamodule(store, batch_keys=["dataset_id", "donor_id"])
    labels = np.asarray([c.split("|")[0] for c in dm.encoding.batch_categories])
    ours = np.concatenate(
        [
            labels[b[REGISTRY_KEYS.BATCH_KEY].numpy()[:, 0]]
            for b in epoch_batches(dm, dm.train_dataloader())
        ]
    )
    train = labels[dm.encoding.batch_codes[dm.split.train]]
    rng = np.random.default_rng(0)
    random = [max_dataset_share(rng.permutation(train), 128) for _ in range(200)]
    tolerance = np.mean(random) + 4 * np.std(random)
    assert max_dataset_share(ours, 128) < tolerance

    # what a within-shard shuffle of shards cut from the sources in order would give
    unshuffled = np.sort(train)
    within_shard = np.concatenate(
        [rng.permutation(unshuffled[i : i + 700]) for i in range(0, len(unshuffled), 700)]
    )
    assert max_dataset_share(within_shard, 128) > tolerance
