"""Cell filter, validation split and batch definitions, on obs codes alone."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from sweep.config.schema import BatchConfig, DataConfig, LoaderConfig
from sweep.data.batches import _encode_combinations, code_dtype, encode_batches
from sweep.data.datamodule import StoreDataModule
from sweep.data.selection import CellTable, narrowed, split_cells, validation_flags
from sweep.data.store import IS_PRIMARY, N_GENES_ALL, StoreError, read_manifest


def table_of(**columns):
    n = len(next(iter(columns.values())))
    return CellTable({k: np.asarray(v) for k, v in columns.items()}, np.array([0, n]))


def test_filter_counts_and_split():
    rng = np.random.default_rng(0)
    n = 10_000
    genes = rng.integers(0, 1000, n)
    primary = rng.random(n) > 0.1
    split = split_cells(table_of(**{N_GENES_ALL: genes, IS_PRIMARY: primary}), 300, True, 0.1, 0)
    keep = (genes >= 300) & primary
    assert not (split.train & split.validation).any()
    assert np.array_equal(split.train | split.validation, keep)
    assert split.counts["cells_after_filter"] == keep.sum()
    assert split.counts["cells_below_300_genes"] == (genes < 300).sum()
    assert split.counts["cells_not_primary"] == (~primary).sum()
    assert abs(split.counts["cells_validation"] / keep.sum() - 0.1) < 0.02


def test_validation_cells_do_not_depend_on_the_filter():
    rng = np.random.default_rng(1)
    table = table_of(**{N_GENES_ALL: rng.integers(0, 1000, 5000), IS_PRIMARY: np.ones(5000, bool)})
    strict = split_cells(table, 300, True, 0.1, seed=7)
    loose = split_cells(table, 0, True, 0.1, seed=7)
    assert np.array_equal(strict.validation, loose.validation & (table.columns[N_GENES_ALL] >= 300))
    assert np.array_equal(validation_flags(5000, 0.1, 7), loose.validation)


def test_filter_or_split_that_leaves_nothing_says_so():
    table = table_of(**{N_GENES_ALL: np.full(50, 100), IS_PRIMARY: np.ones(50, bool)})
    with pytest.raises(ValueError, match="leaves no cells.*data.min_genes"):
        split_cells(table, 300, True, 0.1, 0)
    with pytest.raises(ValueError, match="no validation cells"):
        split_cells(table, 0, True, 0.0, 0)


def test_batches_are_the_combinations_that_occur_joined_with_separator():
    vocab = {"dataset_id": ["d0", "d1"], "donor_id": ["a", "b", "c"], "assay": ["x", "y"]}
    columns = {
        "dataset_id": np.array([0, 0, 1, 1, 1, 0]),
        "donor_id": np.array([0, 0, 2, 2, 1, 1]),
        "assay": np.array([0, 1, 1, 1, 0, 0]),
    }
    selected = np.array([True, True, True, True, True, False])
    enc = encode_batches(columns, vocab, selected, ["dataset_id", "donor_id"], ["assay"], "|")
    assert enc.batch_categories == ["d0|a", "d1|b", "d1|c"]  # d0|b only in an unselected cell
    assert enc.batch_codes.tolist() == [0, 0, 2, 2, 1, -1]
    assert enc.covariate_categories == {"assay": ["x", "y"]}
    assert enc.covariate_codes[:, 0].tolist() == [0, 1, 1, 1, 0, -1]
    czi = encode_batches(columns, vocab, selected, ["dataset_id", "donor_id", "assay"], [], "|")
    assert czi.n_batch == 4 and "d0|a|y" in czi.batch_categories


def test_separator_avoids_czi_collisions():
    """CZI joins with no separator: "ab"+"c" and "a"+"bc" become one batch."""
    vocab = {"dataset_id": ["a", "ab"], "donor_id": ["bc", "c"]}
    columns = {"dataset_id": np.array([0, 1]), "donor_id": np.array([0, 1])}
    ours = encode_batches(columns, vocab, np.ones(2, bool), ["dataset_id", "donor_id"], [], "|")
    theirs = encode_batches(columns, vocab, np.ones(2, bool), ["dataset_id", "donor_id"], [], "")
    assert ours.n_batch == 2 and len(set(ours.batch_categories)) == 2
    assert len(set(theirs.batch_categories)) == 1


def configs(**batch):
    data = OmegaConf.structured(DataConfig)
    batch_cfg = OmegaConf.merge(OmegaConf.structured(BatchConfig), batch)
    loader = OmegaConf.merge(OmegaConf.structured(LoaderConfig), {"num_workers": 0})
    return data, batch_cfg, loader


def test_datamodule_describes_the_data_to_scvi(small_store):
    dm = StoreDataModule(small_store, *configs(covariate_keys=["assay", "suspension_type"]), seed=0)
    assert dm.n_vars == 60
    assert dm.n_obs == dm.n_train + dm.n_val == dm.split.counts["cells_after_filter"]
    assert dm.n_cats_per_cov == [3, 3]
    assert dm.n_batch == len(dm.encoding.batch_categories) <= 9
    # what the main process keeps per cell through training: 2 masks, batch + 2 covariate codes
    # in int8, n_genes_all in uint16 (int32 everywhere made it 22 bytes)
    assert dm.encoding.batch_codes.dtype == dm.encoding.covariate_codes.dtype == np.int8
    assert dm.n_genes_all.dtype == np.uint16
    assert dm.per_cell_bytes == 7 * dm.manifest.n_cells


def test_codes_take_the_narrowest_dtype_that_holds_them():
    assert [code_dtype(n) for n in (0, 128, 129, 32_768, 32_769)] == [
        np.int8,
        np.int8,
        np.int16,
        np.int16,
        np.int32,
    ]
    assert narrowed(np.array([0, 70_000], dtype=np.int32)).dtype == np.uint32
    assert narrowed(np.array([0, 300], dtype=np.int32)).dtype == np.uint16
    assert narrowed(np.array([0, 3], dtype=np.int32), largest=255).dtype == np.uint8
    assert narrowed(np.array([-1, 3], dtype=np.int32)).dtype == np.int32  # not a count or code
    assert narrowed(np.array([True, False])).dtype == bool


def test_batch_column_the_store_lacks_fails_listing_what_it_has(small_store):
    with pytest.raises(ValueError, match=r"\['sample_id'\].*it has \['dataset_id'"):
        StoreDataModule(small_store, *configs(batch_keys=["dataset_id", "sample_id"]), seed=0)


def test_store_whose_shard_disagrees_with_manifest_is_refused(small_store):
    manifest_path = small_store / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][2]["n_cells"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="shard_00002.h5ad has shape .*scvi-sweep-prepare"):
        StoreDataModule(small_store, *configs(), seed=0)


def test_incomplete_store_is_refused(small_store):
    (small_store / "manifest.json").unlink()
    with pytest.raises(StoreError, match="incomplete"):
        read_manifest(small_store)


def test_loader_keys_reach_the_dataloaders(small_store):
    data, batch_cfg, _ = configs()
    loader_cfg = OmegaConf.merge(
        OmegaConf.structured(LoaderConfig),
        {
            "num_workers": 2,
            "prefetch_factor": 3,
            "persistent_workers": True,
            "pin_memory": True,
            "batch_size": 100,
            "block_size": 40,
            "fetch_size": 300,
            "run_size": 8,
            "batches_per_handoff": 2,
            "max_cache_size": 2,
            "cache_size_strictly_enforced": False,
            "drop_last": True,
        },
    )
    dm = StoreDataModule(small_store, data, batch_cfg, loader_cfg, seed=5)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    for loader in (train, val):
        assert (loader.num_workers, loader.prefetch_factor) == (2, 3)
        assert loader.persistent_workers and loader.pin_memory
        # (prefetch 3 handoffs + 1 being received) x 2 batches each + 1 being densified
        assert loader.dataset.ring is not None and loader.dataset.ring.slots_per_worker == 9
        dataset = loader.dataset
        assert (dataset.batch_size, dataset.fetch_size, dataset.max_cache_size) == (100, 300, 2)
        assert (dataset.run_size, dataset.handoff) == (8, 2)
        assert dataset.strict is False and dataset.seed == 5
        assert (dataset.blocks.stop - dataset.blocks.start).max() == 40
    assert train.dataset.drop_last and not val.dataset.drop_last  # never drop validation cells
    assert train.dataset.shuffle and not val.dataset.shuffle


def test_read_ahead_that_would_outgrow_memory_is_warned_about(small_store, monkeypatch, caplog):
    import sweep.data.datamodule as datamodule

    shard_bytes = max(path.stat().st_size for path in small_store.glob("shard_*.h5ad"))
    data, batch_cfg, loader = configs()
    roomy = 4 * 2 * loader.max_cache_size * shard_bytes + 1
    for available, warned in ((roomy, False), (roomy - 2, True)):
        monkeypatch.setattr(datamodule, "available_memory_bytes", lambda a=available: a)
        caplog.clear()
        StoreDataModule(small_store, data, batch_cfg, loader, seed=0)
        messages = [r.getMessage() for r in caplog.records if r.name == datamodule.__name__]
        assert any("loader.read_ahead=false" in m for m in messages) == warned
    loader.read_ahead = False  # not reading ahead: nothing to warn about
    caplog.clear()
    StoreDataModule(small_store, data, batch_cfg, loader, seed=0)
    assert not [
        r
        for r in caplog.records
        if r.name == datamodule.__name__ and "read_ahead" in r.getMessage()
    ]


@pytest.mark.parametrize("highs", [[3, 5, 2, 7], [4400, 20, 3, 60_000], [10], [2**31 - 1] * 3])
def test_packed_combinations_equal_numpys_unique_rows(highs):
    """The packed keys give np.unique(axis=0)'s categories and codes, in its order; radices
    too large to pack (the last case) fall back to it."""
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, h, 5_000) for h in highs], axis=1).astype(np.int32)
    combos, inverse = _encode_combinations(codes)
    expected, expected_inverse = np.unique(codes, axis=0, return_inverse=True)
    assert np.array_equal(combos, expected) and combos.dtype == codes.dtype
    assert np.array_equal(inverse, expected_inverse.reshape(-1))
