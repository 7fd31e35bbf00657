"""Store format version 2: counts and gene indices in the narrowest dtypes that hold them
exactly, still read back exactly by anndata; version 1 stores read as before."""

import shutil

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from benchmarks import page_cache
from omegaconf import OmegaConf
from scvi import REGISTRY_KEYS

from conftest import encode_as_version_1, make_store
from sweep.config.schema import BatchConfig, DataConfig, LoaderConfig
from sweep.data.datamodule import StoreDataModule
from sweep.data.densify import X_DATA, densify
from sweep.data.fetch import Fetch, ReadAhead
from sweep.data.handoff import SlotRing, WorkerSlots
from sweep.data.store import (
    CODED_COLUMNS,
    FORMAT_VERSION,
    IS_PRIMARY,
    N_GENES_ALL,
    Shard,
    StoreWriter,
    check_store,
    count_dtype,
    gene_index_dtype,
    read_manifest,
)


@pytest.mark.parametrize(
    "values,dtype",
    [
        ([], np.uint8),
        ([0, 1, 255], np.uint8),
        ([3, 256], np.uint16),
        ([65_535], np.uint16),
        ([65_536], np.uint32),
        ([2**32 - 1], np.uint32),
        ([2**32], np.float32),  # exceeds uint32: stored as version 1 did
        ([1, 2.5], np.float32),  # not integers (normalised values)
        ([-1, 2], np.float32),
        ([np.nan, 1], np.float32),
        ([np.inf], np.float32),
    ],
)
def test_counts_take_the_narrowest_dtype_that_holds_them_exactly(values, dtype):
    assert count_dtype(np.asarray(values, dtype=np.float64)) == dtype
    if dtype != np.float32:
        assert count_dtype(np.asarray(values, dtype=np.int64)) == dtype


def test_gene_indices_are_uint16_up_to_65536_genes():
    assert gene_index_dtype(3241) == gene_index_dtype(65_536) == np.uint16
    assert gene_index_dtype(65_537) == gene_index_dtype(200_000) == np.uint32


def obs_for(n: int, first: int = 0) -> pd.DataFrame:
    obs = pd.DataFrame(
        {c: np.zeros(n, np.int32) for c in CODED_COLUMNS},
        index=[f"cell{g}" for g in range(first, first + n)],
    )
    obs[N_GENES_ALL] = np.full(n, 10, np.int32)
    obs[IS_PRIMARY] = True
    return obs


def write_store(folder, n_genes: int, shards: list[sp.csr_matrix]):
    genes = [f"ENSG{i:011d}" for i in range(n_genes)]
    writer = StoreWriter(folder, genes, genes)
    firsts = np.cumsum([0] + [X.shape[0] for X in shards])
    entries = [
        writer.write_shard(s, X, obs_for(X.shape[0], int(firsts[s]))) for s, X in enumerate(shards)
    ]
    sizes = [X.shape[0] for X in shards]
    return writer.finish(entries, {c: ["a"] for c in CODED_COLUMNS}, max(sizes))


def counts(n: int, n_genes: int, largest: float, seed: int) -> sp.csr_matrix:
    """Random integer counts (n, n_genes) float64 whose largest value is ``largest``."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, n_genes, density=0.3, format="csr", random_state=rng, dtype=np.float64)
    X.data = np.ceil(X.data * 20)
    X.data[-1] = largest
    return X


def test_v2_shards_read_back_exactly_in_anndata(tmp_path):
    """Per shard the narrowest count dtype; anndata reads the source's values, as integers."""
    sources = [
        counts(40, 30, 255, 0),
        counts(40, 30, 256, 1),
        counts(40, 30, 65_535, 2),
        counts(40, 30, 65_536, 3),
        counts(40, 30, 4_000_000_123, 4),
    ]
    noninteger = counts(40, 30, 7, 5)
    noninteger.data = noninteger.data / 4
    manifest = write_store(tmp_path / "store", 30, [*sources, noninteger])
    assert manifest.version == FORMAT_VERSION == 2
    check_store(tmp_path / "store")
    expected = [np.uint8, np.uint16, np.uint16, np.uint32, np.uint32, np.float32]
    for entry, X, dtype in zip(manifest.shards, [*sources, noninteger], expected, strict=True):
        path = tmp_path / "store" / entry["file"]
        adata = anndata.read_h5ad(path)
        assert adata.X.dtype == dtype and adata.X.indices.dtype == np.uint16
        if dtype != np.float32:
            assert np.array_equal(adata.X.toarray().astype(np.int64), X.toarray().astype(np.int64))
        assert np.array_equal(adata.X.toarray(), X.toarray())
        values, indices = Shard(path).arrays()
        assert isinstance(values, np.memmap) and values.dtype == dtype


def test_more_than_65536_genes_get_uint32_indices(tmp_path):
    n_genes = 70_000
    X = sp.csr_matrix(([5.0, 300.0, 1.0], ([0, 0, 1], [3, 69_999, 65_536])), shape=(2, n_genes))
    manifest = write_store(tmp_path / "store", n_genes, [X])
    adata = anndata.read_h5ad(tmp_path / "store" / manifest.shards[0]["file"])
    assert adata.X.indices.dtype == np.uint32 and adata.X.dtype == np.uint16
    assert np.array_equal(adata.X.toarray(), X.toarray())


def fetch_of(X: sp.csr_matrix, value_dtype, index_dtype) -> Fetch:
    n = X.shape[0]
    return Fetch(
        [(X.data.astype(value_dtype), X.indices.astype(index_dtype))],
        np.zeros(n, np.int64),
        X.indptr[:-1].astype(np.int64),
        np.diff(X.indptr),
        np.zeros(n, np.int32),
        np.zeros((n, 0), np.int32),
        X.shape[1],
    )


@pytest.mark.parametrize(
    "value_dtype,largest,handed",
    [
        (np.uint8, 255, np.int16),
        (np.uint16, 32_767, np.int16),
        (np.uint16, 40_000, np.float32),  # above int16: sent again as float32
        (np.uint32, 70_000, np.float32),
        (np.float32, 2.5, np.float32),  # non-integer counts never pass through int16
    ],
)
@pytest.mark.parametrize("slot_bytes", [1 << 16, 16])  # a ring slot, or by value
def test_narrow_stored_counts_hand_off_and_densify_exactly(
    value_dtype, largest, handed, slot_bytes
):
    X = sp.csr_matrix(np.array([[0, largest, 3], [7, 0, 1]], dtype=np.float64))
    fetch = fetch_of(X, value_dtype, np.uint16)
    rows = np.arange(2)
    assert np.array_equal(fetch.dense_batch(rows)[REGISTRY_KEYS.X_KEY].numpy(), X.toarray())
    ring = SlotRing(1, 2, slot_bytes)
    raw = fetch.batch(rows, WorkerSlots(ring, 0))
    if "X_slot" in raw:
        data, indices, indptr = ring.open(raw.pop("X_slot"))
        raw |= {X_DATA: data, "X_indices": indices, "X_indptr": indptr}
        assert sum(ring.busy) == 1  # the int16 attempt's slot was given back
    batch = {k: torch.as_tensor(v) for k, v in raw.items()}
    assert batch[X_DATA].numpy().dtype == handed
    batch = densify(batch, 3)
    assert batch[REGISTRY_KEYS.X_KEY].dtype == torch.float32
    assert np.array_equal(batch[REGISTRY_KEYS.X_KEY].numpy(), X.toarray())


def epoch_X(store, workers: int) -> list[np.ndarray]:
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"min_genes": 0})
    loader = OmegaConf.merge(
        OmegaConf.structured(LoaderConfig),
        {"num_workers": workers, "batch_size": 128, "block_size": 32, "fetch_size": 512},
    )
    dm = StoreDataModule(store, data, OmegaConf.structured(BatchConfig), loader, seed=0)
    return [
        densify(b, dm.n_vars)[REGISTRY_KEYS.X_KEY].numpy().copy() for b in dm.train_dataloader()
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_version_1_store_yields_the_same_batches(tmp_path, workers):
    v2 = make_store(tmp_path / "v2", [300, 300, 110])
    v1 = encode_as_version_1(shutil.copytree(v2, tmp_path / "v1"))
    assert read_manifest(v1).version == 1 and check_store(v1).n_cells == 710
    assert Shard(v1 / "shard_00000.h5ad").arrays()[0].dtype == np.float32
    assert Shard(v2 / "shard_00000.h5ad").arrays()[0].dtype == np.uint16  # gene 0 = row + 1
    batches_v2, batches_v1 = epoch_X(v2, workers), epoch_X(v1, workers)
    assert len(batches_v2) == len(batches_v1) > 1
    for X2, X1 in zip(batches_v2, batches_v1, strict=True):
        assert X2.dtype == X1.dtype == np.float32 and np.array_equal(X2, X1)


def test_byte_ranges_cover_exactly_the_rows_bytes_merged_in_file_order(tmp_path):
    manifest = write_store(tmp_path / "store", 30, [counts(100, 30, 300, 0)])
    shard = Shard(tmp_path / "store" / manifest.shards[0]["file"])
    values, indices = shard.arrays()
    raw = (tmp_path / "store" / manifest.shards[0]["file"]).read_bytes()
    ptr = shard.indptr
    # rows 40..60 then 0..20 then 20..30: the last two touch, so they merge (per array)
    ranges = shard.byte_ranges(np.array([40, 0, 20]), np.array([60, 20, 30]))
    assert [first for first, _ in ranges] == sorted(first for first, _ in ranges)
    assert len(ranges) == 4  # values 0..30 and 40..60, gene indices the same
    expected = [
        array[ptr[a] : ptr[b]].tobytes()
        for array in (values, indices)
        for a, b in ((0, 30), (40, 60))
    ]
    assert [raw[first : first + length] for first, length in ranges] == expected


def test_read_ahead_brings_the_asked_rows_into_the_page_cache(tmp_path):
    manifest = write_store(tmp_path / "store", 200, [counts(2000, 200, 300, 1)])
    store = tmp_path / "store"
    shard = Shard(store / manifest.shards[0]["file"])
    x_bytes = sum(length for _, length in shard.byte_ranges(np.array([0]), np.array([2000])))
    share_of_x = x_bytes / sum(path.stat().st_size for path in store.iterdir())
    reason = page_cache.evict(store)
    if reason:
        pytest.skip(f"the page cache cannot be evicted here: {reason}")
    assert page_cache.resident_fraction(store) < 0.05 < share_of_x
    ahead = ReadAhead()
    ahead.request(shard.path, np.array([0]), np.array([2000]))
    ahead.close()
    ahead.thread.join(timeout=60)
    assert not ahead.thread.is_alive()
    assert page_cache.resident_fraction(store) >= share_of_x
