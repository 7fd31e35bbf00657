"""The store writer: the one place a store's shards and manifest are written."""

import pickle

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sweep.data.store import (
    CODE_DTYPE,
    CODED_COLUMNS,
    IS_PRIMARY,
    N_GENES_ALL,
    Shard,
    StoreWriter,
    check_store,
    is_store_file,
)


def cells(n: int, n_genes: int, first: int) -> tuple[sp.coo_matrix, pd.DataFrame]:
    """Random counts (n, n_genes) as COO and obs in wider dtypes than the format's."""
    rng = np.random.default_rng(first)
    X = sp.random(n, n_genes, density=0.3, format="coo", random_state=rng, dtype=np.float64)
    X.data = np.ceil(X.data * 5)
    obs = pd.DataFrame(
        {c: rng.integers(0, 3, n) for c in CODED_COLUMNS},  # int64 codes
        index=[f"cell{g}" for g in range(first, first + n)],
    )
    obs[N_GENES_ALL] = rng.integers(0, 500, n)
    obs[IS_PRIMARY] = rng.integers(0, 2, n)  # 0/1 flags
    return X, obs


def test_shards_in_any_order_then_the_manifest_make_a_complete_store(tmp_path):
    genes = [f"ENSG{i:011d}" for i in range(20)]
    writer = pickle.loads(pickle.dumps(StoreWriter(tmp_path / "store", genes, genes)))
    parts = [cells(30, 20, 0), cells(12, 20, 30)]
    entries = [writer.write_shard(1, *parts[1]), writer.write_shard(0, *parts[0])][::-1]
    assert not (writer.folder / "manifest.json").exists()  # incomplete until finish
    vocab = {c: ["a", "b", "c"] for c in CODED_COLUMNS}
    manifest = writer.finish(entries, vocab, 30, provenance={"made_by": "test"})

    assert check_store(writer.folder).to_json() == manifest.to_json()
    assert [e["n_cells"] for e in manifest.shards] == [30, 12]
    assert all(is_store_file(p.name) for p in writer.folder.iterdir())
    assert not is_store_file("notes.txt")
    for entry, (X, obs) in zip(manifest.shards, parts, strict=True):
        shard = Shard(writer.folder / entry["file"])
        values, indices, indptr = shard.read_rows(0, len(obs))
        stored = sp.csr_matrix((values, indices, indptr), shape=X.shape)
        assert np.array_equal(stored.toarray(), X.toarray()) and entry["nnz"] == X.nnz
        assert shard.obs_column(CODED_COLUMNS[0]).dtype == CODE_DTYPE
        assert shard.obs_column(IS_PRIMARY).dtype == bool
        adata = anndata.read_h5ad(shard.path)  # a valid h5ad file
        assert list(adata.obs_names) == list(obs.index) and list(adata.var_names) == genes
        assert np.array_equal(adata.obs[N_GENES_ALL], obs[N_GENES_ALL])
