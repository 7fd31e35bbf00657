"""Tests of sweep.data.prepare and the `scvi-sweep-prepare` CLI on small synthetic data."""

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sweep.config.schema import PrepareConfig, SyntheticConfig
from sweep.data.prepare import PrepareError, pipeline, prepare_store, shards
from sweep.data.prepare.genes import HVG_MIN_BATCH_CELLS
from sweep.data.prepare.output import LOG_NAME, TMP_DIR
from sweep.data.store import CODED_COLUMNS, IS_PRIMARY, N_GENES_ALL, check_store, read_manifest
from sweep.data.synthetic import generate
from sweep.paths import CONF_DIR

SHARD_SIZE = 128
ABSENT = ["ENSG99999999901", "ENSG99999999902"]  # listed genes that no source has


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """Three census-like sources, 150-450 cells x 400 genes each."""
    folder = tmp_path_factory.mktemp("sources")
    return generate(
        SyntheticConfig(output=str(folder), n_datasets=3, cells_per_dataset=300, n_genes=400)
    )


@pytest.fixture(scope="module")
def source_data(sources) -> list[anndata.AnnData]:
    return [anndata.read_h5ad(p) for p in sources]


@pytest.fixture(scope="module")
def gene_list(sources, source_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """A TSV with a header: every 3rd source gene in reverse order, two absent ids in between."""
    ids = list(source_data[0].var_names[::3][::-1])
    listed = ids[:10] + ABSENT + ids[10:]
    path = tmp_path_factory.mktemp("genes") / "genes.tsv"
    path.write_text("feature_id\tnote\n" + "".join(f"{g}\tx\n" for g in listed))
    return path, listed


def config(sources: list[Path], output: Path, **keys) -> PrepareConfig:
    """Every h5ad in the folder of ``sources[0]``; small shards, one process unless ``keys`` say."""
    keys = {"shard_size": SHARD_SIZE, "hvg_min_genes": 100, "workers": 1} | keys
    return PrepareConfig(source=str(sources[0].parent / "*.h5ad"), output=str(output), **keys)


@pytest.fixture(scope="module")
def list_store(sources, gene_list, tmp_path_factory):
    """A store of the gene list, made with 2 worker processes."""
    out = tmp_path_factory.mktemp("list") / "store"
    manifest = prepare_store(config(sources, out, genes=str(gene_list[0]), workers=2))
    return out, manifest


def read_store(out: Path, manifest) -> anndata.AnnData:
    """All shards, concatenated in store order, read by anndata."""
    return anndata.concat([anndata.read_h5ad(out / s["file"]) for s in manifest.shards])


def test_round_trip_with_gene_list(list_store, source_data, gene_list):
    out, manifest = list_store
    listed = gene_list[1]
    assert check_store(out).n_cells == sum(a.n_obs for a in source_data)
    assert manifest.genes == listed
    assert manifest.gene_names[10:12] == ABSENT
    store = read_store(out, manifest)
    for entry in manifest.shards:  # format v2: raw counts as unsigned integers, uint16 genes
        with h5py.File(out / entry["file"]) as f:
            assert f["X/data"].dtype.kind == "u" and f["X/indices"].dtype == np.uint16
    assert store.obs_names.is_unique
    assert store.n_obs == sum(a.n_obs for a in source_data)
    assert store.obs[list(CODED_COLUMNS)].dtypes.eq(np.int32).all()
    assert store.obs[N_GENES_ALL].dtype == np.int32 and store.obs[IS_PRIMARY].dtype == bool
    for src, entry in zip(source_data, manifest.sources, strict=True):
        rows = store[src.obs_names]
        expected = np.zeros((src.n_obs, len(listed)), dtype=np.float32)
        for j, gene in enumerate(listed):
            if gene in src.var_names:
                expected[:, j] = src[:, gene].X.toarray().ravel()
        assert np.array_equal(rows.X.toarray(), expected)
        n_genes_all = np.asarray((src.X > 0).sum(axis=1)).ravel()
        assert np.array_equal(rows.obs[N_GENES_ALL], n_genes_all)
        assert (n_genes_all > np.asarray((rows.X > 0).sum(axis=1)).ravel()).all()  # ALL genes
        for column in CODED_COLUMNS:
            decoded = np.asarray(manifest.vocab[column])[rows.obs[column].to_numpy()]
            assert np.array_equal(decoded, src.obs[column].astype(str).to_numpy())
        assert np.array_equal(rows.obs[IS_PRIMARY], src.obs["is_primary_data"])
        assert entry["n_genes_source"] == 400 and entry["n_genes_missing"] == len(ABSENT)
        assert entry["n_cells"] == src.n_obs
        assert entry["n_non_primary"] == int((~src.obs["is_primary_data"]).sum())
    assert manifest.provenance["counts"]["n_cells"] == store.n_obs
    assert not (out / TMP_DIR).exists()
    # one summary line for the sources (a line each only at DEBUG: the Census has 4,440)
    log = (out / LOG_NAME).read_text()
    sizes = sorted(src.n_obs for src in source_data)
    assert (
        f"sources: 3 of {sizes[0]} to {sizes[-1]} cells (median {sizes[1]}); 3 lack some of the "
        f"{len(manifest.genes)} store genes (zero-filled; up to {len(ABSENT)})" in log
    )
    assert "store genes present" not in log


def test_shards_equal_size_and_shuffled_across_sources(list_store, source_data):
    out, manifest = list_store
    sizes = [s["n_cells"] for s in manifest.shards]
    assert sizes[:-1] == [SHARD_SIZE] * (len(sizes) - 1) and 0 < sizes[-1] <= SHARD_SIZE
    assert sizes[-1] == manifest.n_cells - SHARD_SIZE * (len(sizes) - 1)
    owner = {cell: i for i, a in enumerate(source_data) for cell in a.obs_names}
    for entry in manifest.shards:
        cells = anndata.read_h5ad(out / entry["file"], backed="r").obs_names
        assert len({owner[c] for c in cells}) == len(source_data)  # each shard mixes all sources
    store_order = [owner[c] for c in read_store(out, manifest).obs_names]
    assert store_order != sorted(store_order)


def test_deterministic_for_a_seed(list_store, sources, gene_list, tmp_path):
    out, manifest = list_store
    # one process and a small chunk size: same store as with 2 workers
    again = prepare_store(
        config(sources, tmp_path / "again", genes=str(gene_list[0]), chunk_rows=50)
    )
    first, second = read_store(out, manifest), read_store(tmp_path / "again", again)
    assert list(first.obs_names) == list(second.obs_names)
    assert (first.X != second.X).nnz == 0
    other = prepare_store(config(sources, tmp_path / "seed1", genes=str(gene_list[0]), seed=1))
    assert list(read_store(tmp_path / "seed1", other).obs_names) != list(first.obs_names)


def test_gene_list_sources_are_read_once_and_may_split_across_groups(
    list_store, sources, gene_list, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(shards, "GROUP_NNZ", 20_000)  # more groups than sources: some split
    caplog.set_level(logging.INFO, logger="sweep.data.prepare")
    manifest = prepare_store(config(sources, tmp_path / "split", genes=str(gene_list[0])))
    reused = re.search(r"reusing (\d+) of (\d+) groups written before", caplog.text)
    assert reused and reused[1] == reused[2] and int(reused[1]) > len(sources)
    assert "write groups: 0 tasks" in caplog.text  # pass 1 wrote them all
    out, reference = list_store
    assert manifest.sources == reference.sources and manifest.vocab == reference.vocab
    got, expected = read_store(tmp_path / "split", manifest), read_store(out, reference)
    assert list(got.obs_names) == list(expected.obs_names)
    assert (got.X != expected.X).nnz == 0 and got.obs.equals(expected.obs)


def test_hvg_matches_scanpy_in_source_order(sources, source_data, tmp_path):
    manifest = prepare_store(config(sources, tmp_path / "hvg", genes="hvg", n_top_genes=50))
    assert manifest.n_genes == 50
    order = list(source_data[0].var_names)
    positions = [order.index(g) for g in manifest.genes]
    assert positions == sorted(positions)
    # the sample holds every eligible cell here, so the choice must be scanpy's on those cells
    cells = anndata.concat(source_data)
    cells = cells[cells.obs["is_primary_data"] & (np.asarray((cells.X > 0).sum(1)).ravel() >= 100)]
    cells = cells.copy()
    cells.obs["batch"] = (
        cells.obs["suspension_type"].astype(str) + "_" + cells.obs["assay"].astype(str)
    )
    sizes = cells.obs["batch"].value_counts()
    small = list(sizes.index[sizes < HVG_MIN_BATCH_CELLS])  # left out, logged
    assert small and manifest.provenance["hvg"]["left_out_batches"] == sizes[small].to_dict()
    cells = cells[~cells.obs["batch"].isin(small)].copy()
    sc.pp.highly_variable_genes(cells, flavor="seurat_v3", n_top_genes=50, batch_key="batch")
    assert set(manifest.genes) == set(cells.var_names[cells.var["highly_variable"]])
    assert manifest.provenance["hvg"]["sample_cells"] == cells.n_obs
    check_store(tmp_path / "hvg")


def test_hvg_takes_all_genes_and_bounds_its_sample(sources, tmp_path):
    manifest = prepare_store(
        config(sources, tmp_path / "all", genes="hvg", n_top_genes=5000, hvg_sample_cells=300)
    )
    assert manifest.n_genes == 400
    assert 0 < manifest.provenance["hvg"]["sample_cells"] <= 300


def test_raw_counts_and_dense_sources(source_data, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    normalised = source_data[0][:80].copy()
    normalised.raw = normalised.copy()
    normalised.X = sp.csr_matrix(np.log1p(normalised.X.toarray() / 7.0))
    normalised.write_h5ad(folder / "a.h5ad")
    dense = source_data[1][:60].copy()
    dense.X = dense.X.toarray()
    dense.write_h5ad(folder / "b.h5ad")
    manifest = prepare_store(
        config([folder / "a.h5ad"], tmp_path / "store", genes="hvg", n_top_genes=1000)
    )
    assert [s["matrix"] for s in manifest.sources] == ["raw/X", "X"]
    store = read_store(tmp_path / "store", manifest)
    for src in (normalised.raw.to_adata(), dense):
        expected = sp.csr_matrix(src[:, manifest.genes].X).toarray()
        assert np.array_equal(store[src.obs_names].X.toarray(), expected)


def test_rerun_is_a_noop_and_other_config_needs_overwrite(sources, tmp_path, caplog):
    out = tmp_path / "store"
    cfg = config(sources, out, genes="hvg", n_top_genes=40)
    first = prepare_store(cfg)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.h5ad")}
    caplog.set_level(logging.INFO, logger="sweep.data.prepare")
    again = prepare_store(OmegaConf.structured(cfg))  # a DictConfig works too
    assert "store complete" in caplog.text
    assert again.to_json() == first.to_json()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.h5ad")} == mtimes
    with pytest.raises(
        PrepareError, match=r"different config \(n_top_genes: 40 -> 30\).*overwrite"
    ):
        prepare_store(config(sources, out, genes="hvg", n_top_genes=30))
    replaced = prepare_store(config(sources, out, genes="hvg", n_top_genes=30, overwrite=True))
    assert replaced.n_genes == 30 and check_store(out).n_genes == 30


def test_incomplete_store_is_rebuilt(sources, tmp_path, caplog):
    out = tmp_path / "store"
    cfg = config(sources, out, genes="hvg", n_top_genes=40)
    complete = prepare_store(cfg)
    (out / "manifest.json").unlink()
    (out / "shard_00001.h5ad").unlink()
    caplog.set_level(logging.INFO, logger="sweep.data.prepare")
    rebuilt = prepare_store(cfg)
    assert "incomplete store" in caplog.text
    assert rebuilt.shards == complete.shards and rebuilt.genes == complete.genes
    check_store(out)
    (out / "notes.txt").write_text("mine")
    (out / "manifest.json").unlink()
    with pytest.raises(PrepareError, match="notes.txt"):
        prepare_store(cfg)


def test_interrupted_run_reuses_groups(sources, tmp_path, caplog, monkeypatch):
    out = tmp_path / "store"
    cfg = config(sources, out, genes="hvg", n_top_genes=40)

    def crash(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "write_store_shard", crash)
        with pytest.raises(KeyboardInterrupt):
            prepare_store(cfg)
    assert len(list((out / TMP_DIR).glob("group_*.h5"))) == 1
    caplog.set_level(logging.INFO, logger="sweep.data.prepare")
    resumed = prepare_store(cfg)
    assert "resuming an interrupted run" in caplog.text
    assert "reusing 1 of 1 groups" in caplog.text
    fresh = prepare_store(config(sources, tmp_path / "fresh", genes="hvg", n_top_genes=40))
    assert resumed.shards == fresh.shards
    assert list(read_store(out, resumed).obs_names) == list(
        read_store(tmp_path / "fresh", fresh).obs_names
    )


# ---------------------------------------------------------------------------------------------
# Bad inputs: a PrepareError naming the file and the fix, before the scan and before any write


def _normalised(a):
    a.X = a.X / 3.3


def _negative(a):
    a.X.data[0] = -1.0


def _missing_column(a):
    del a.obs["assay"]


def _duplicated_genes(a):
    a.var_names = [a.var_names[0]] * 2 + list(a.var_names[2:])


def _empty_genes(a):
    a.var_names = [""] + list(a.var_names[1:])


def _versioned_genes(a):
    a.var_names = [f"{g}.5" for g in a.var_names]


def _repeated_cell(a):
    a.obs_names = [a.obs_names[0]] + list(a.obs_names[1:-1]) + [a.obs_names[0]]


BAD_SOURCES = {
    "normalised": (
        _normalised,
        "X has non-integer values .* X looks normalised; prepare needs raw",
    ),
    "negative": (_negative, "X has negative values"),
    "missing_column": (_missing_column, r"obs lacks the columns \['assay'\] \(it has \["),
    "duplicated_genes": (_duplicated_genes, "no usable gene ids .*duplicated"),
    "empty_genes": (_empty_genes, "no usable gene ids .*empty"),
    "versioned_genes": (_versioned_genes, "none of its gene ids .* occurs in another source"),
    "repeated_cell": (_repeated_cell, "the obs index holds 1 cell ids more than once"),
}


@pytest.mark.parametrize(
    "case", [*BAD_SOURCES, "duplicate_cells", "truncated", "not_hdf5", "gene_list_mismatch"]
)
def test_bad_source_is_named_with_the_fix(case, source_data, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    source_data[0][:40].copy().write_h5ad(folder / "good.h5ad")
    source_data[2][:40].copy().write_h5ad(folder / "good2.h5ad")
    bad = folder / "bad.h5ad"
    genes = "hvg"
    if case == "duplicate_cells":  # across sources: the later file (sorted by path) is named
        shutil.copy(folder / "good.h5ad", bad)
        bad = bad.rename(folder / "z_copy.h5ad")
        match = "z_copy.h5ad: 40 of its cell ids are in an earlier source too, .* also in .*good"
    elif case == "truncated":
        source_data[1][:40].copy().write_h5ad(bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        match = "bad.h5ad: cannot be read .*truncated.*download or write it again"
    elif case == "not_hdf5":
        bad.write_text("cell,gene,count\n")
        match = "bad.h5ad: cannot be read .*not an h5ad file"
    elif case == "gene_list_mismatch":  # genes=FILE: a source with none of the listed ids
        adata = source_data[1][:40].copy()
        _versioned_genes(adata)
        adata.write_h5ad(bad)
        genes = str(tmp_path / "genes.tsv")
        Path(genes).write_text("\n".join(source_data[0].var_names[:20]))
        match = "bad.h5ad: none of its gene ids .* is in the gene list .*genes.tsv"
    else:
        modify, match = BAD_SOURCES[case]
        adata = source_data[1][:40].copy()
        modify(adata)
        adata.write_h5ad(bad)
        match = "bad.h5ad: .*" + match
    with pytest.raises(PrepareError, match=match + r".*\(or pass skip_bad_sources=true"):
        prepare_store(config([bad], tmp_path / "store", genes=genes, workers=2))
    assert not (tmp_path / "store").exists()  # nothing written, not even the folder


def test_counts_bad_in_a_late_row_are_found(source_data, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    adata = source_data[0][:40].copy()
    adata.X[30, adata.X[30].indices[0]] = 2.5
    adata.write_h5ad(folder / "late.h5ad")
    with pytest.raises(
        PrepareError, match=r"late.h5ad: X has non-integer values \(e.g. 2.5 in row 30"
    ):
        prepare_store(config([folder / "late.h5ad"], tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_several_bad_sources_are_listed_together(source_data, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for name, modify in (("a.h5ad", _missing_column), ("b.h5ad", _negative)):
        adata = source_data[0][:40].copy()
        modify(adata)
        adata.write_h5ad(folder / name)
    with pytest.raises(
        PrepareError, match=r"(?s)2 sources are unusable .*skip_bad_sources=true.*a.h5ad.*b.h5ad"
    ):
        prepare_store(config([folder / "a.h5ad"], tmp_path / "store"))


def test_skip_bad_sources_goes_on_without_them_and_lists_them(source_data, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    good = [source_data[0][:60].copy(), source_data[2][:50].copy()]
    good[1] = good[1][:, ::-1].copy()  # another gene order: reconciled, not refused
    names = good[1].var["feature_name"].astype(str).to_numpy()
    good[1].var["feature_name"] = ["RENAMED", *names[1:]]  # a name differing across sources
    for i, adata in enumerate(good):
        adata.write_h5ad(folder / f"good{i}.h5ad")
    bad = {"missing_column.h5ad": _missing_column, "versioned.h5ad": _versioned_genes}
    for name, modify in bad.items():
        adata = source_data[1][:40].copy()
        modify(adata)
        adata.write_h5ad(folder / name)
    late = source_data[1][40:80].copy()
    late.X[30, late.X[30].indices[0]] = -3.0  # a late row
    late.write_h5ad(folder / "late_negative.h5ad")
    shutil.copy(folder / "good0.h5ad", folder / "z_copy.h5ad")
    truncated = folder / "truncated.h5ad"
    source_data[1][80:120].copy().write_h5ad(truncated)
    truncated.write_bytes(truncated.read_bytes()[:4000])

    out = tmp_path / "store"
    manifest = prepare_store(config([truncated], out, genes="hvg", skip_bad_sources=True))

    reasons = {Path(e["file"]).name: e["reason"] for e in manifest.skipped_sources}
    assert set(reasons) == {*bad, "late_negative.h5ad", "z_copy.h5ad", "truncated.h5ad"}
    assert "obs lacks the columns ['assay']" in reasons["missing_column.h5ad"]
    assert "occurs in another source" in reasons["versioned.h5ad"]
    assert "negative values (e.g. -3.0 in row 30)" in reasons["late_negative.h5ad"]
    assert "also in " + str(folder / "good0.h5ad") in reasons["z_copy.h5ad"]
    assert "cannot be read" in reasons["truncated.h5ad"]
    assert all(reason.startswith(str(folder / name)) for name, reason in reasons.items())
    assert read_manifest(out).skipped_sources == manifest.skipped_sources  # on disk too
    assert [Path(s["file"]).name for s in manifest.sources] == ["good0.h5ad", "good1.h5ad"]
    assert manifest.provenance["counts"]["n_skipped_sources"] == 5
    store = read_store(out, manifest)
    assert sorted(store.obs_names) == sorted([*good[0].obs_names, *good[1].obs_names])
    for adata in good:  # each source's counts, in the store's gene order
        expected = adata[:, manifest.genes].X.toarray()
        assert np.array_equal(store[adata.obs_names].X.toarray(), expected)
    log_text = (out / LOG_NAME).read_text()
    assert all(f"skipping {folder / name}" in log_text for name in reasons)
    assert "left out 5 bad sources" in log_text
    assert "1 gene ids have different feature_name values" in log_text

    with pytest.raises(PrepareError, match="different config .*skip_bad_sources"):
        prepare_store(config([truncated], out, genes="hvg"))  # a store without them needs overwrite
    with pytest.raises(
        PrepareError, match="no usable source: skip_bad_sources=true left out all 1"
    ):
        prepare_store(
            PrepareConfig(source=str(truncated), output=str(tmp_path / "s2"), skip_bad_sources=True)
        )


def test_skip_bad_sources_with_a_gene_list_writes_the_groups_again(
    source_data, gene_list, tmp_path, caplog
):
    folder = tmp_path / "src"
    folder.mkdir()
    source_data[0][:60].copy().write_h5ad(folder / "a_good.h5ad")
    late = source_data[1][40:80].copy()
    late.X[30, late.X[30].indices[0]] = -3.0
    late.write_h5ad(folder / "b_late_negative.h5ad")
    source_data[2][:50].copy().write_h5ad(folder / "c_good.h5ad")
    caplog.set_level(logging.INFO, logger="sweep.data.prepare")
    keys = {"genes": str(gene_list[0]), "shard_size": 16}
    out = tmp_path / "store"
    manifest = prepare_store(config([folder / "a_good.h5ad"], out, skip_bad_sources=True, **keys))
    assert [Path(e["file"]).name for e in manifest.skipped_sources] == ["b_late_negative.h5ad"]
    assert "write groups: 1 tasks" in caplog.text  # the group pass 1 wrote held the bad source
    alone = config([folder / "a_good.h5ad"], tmp_path / "good", **keys)
    alone.source = [str(folder / "a_good.h5ad"), str(folder / "c_good.h5ad")]
    alone = prepare_store(alone)
    got, expected = read_store(out, manifest), read_store(tmp_path / "good", alone)
    assert list(got.obs_names) == list(expected.obs_names)
    assert (got.X != expected.X).nnz == 0 and got.obs.equals(expected.obs)


def test_gene_list_matching_nothing(sources, tmp_path):
    genes = tmp_path / "other.csv"
    genes.write_text("ENSMUSG00000000001,a\nENSMUSG00000000002,b\n")
    with pytest.raises(PrepareError, match=r"other.csv matches no source gene.*ENSMUSG.*ENSG"):
        prepare_store(config(sources, tmp_path / "store", genes=str(genes)))


def test_bad_config_and_sources(sources, tmp_path):
    with pytest.raises(PrepareError, match="matches no file"):
        prepare_store(PrepareConfig(source=str(tmp_path / "*.h5ad"), output=str(tmp_path / "s")))
    with pytest.raises(PrepareError, match="shard_size"):
        prepare_store({"source": "/nowhere/*.h5ad", "output": "x", "shard_size": "abc"})
    with pytest.raises(PrepareError, match="bogus"):
        prepare_store({"source": "/nowhere/*.h5ad", "output": "x", "bogus": 1})
    with pytest.raises(PrepareError, match="source"):
        prepare_store({"output": "x"})
    with pytest.raises(PrepareError, match="neither 'hvg' nor an existing file"):
        prepare_store(config(sources, tmp_path / "s", genes=str(tmp_path / "none.tsv")))


# ---------------------------------------------------------------------------------------------
# Config file and CLI


def test_yaml_keys_match_the_schema():
    import sweep.cli.prepare_command  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="prepare")
    expected = OmegaConf.to_container(OmegaConf.structured(PrepareConfig))
    assert OmegaConf.to_container(cfg) == expected


def test_cli(sources, tmp_path):
    out = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "sweep.cli.prepare_command",
        f"source={sources[0].parent}/*.h5ad",
    ]
    command += [f"output={out}", "genes=hvg", "n_top_genes=200", "hvg_min_genes=100"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_genes"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no outputs/ or .hydra/
    assert "wrote" in (out / "prepare.log").read_text()
    with h5py.File(out / manifest["shards"][0]["file"]) as f:
        assert f["X/data"].chunks is None  # contiguous, as the store format wants
    bad = subprocess.run(command + ["shard_size=abc"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "shard_size" in bad.stderr
    pd.testing.assert_index_equal(
        pd.Index(manifest["genes"]["feature_id"]),
        anndata.read_h5ad(out / manifest["shards"][0]["file"], backed="r").var_names,
    )


@pytest.mark.parametrize("n_cells", [1, 2, 3, 1000, 4097])
def test_shuffle_is_a_seeded_permutation_computed_cell_by_cell(n_cells):
    rows = shards.shuffled_rows(np.arange(n_cells), n_cells, seed=0)
    assert np.array_equal(np.sort(rows), np.arange(n_cells))
    halves = [
        shards.shuffled_rows(part, n_cells, 0) for part in np.array_split(np.arange(n_cells), 2)
    ]
    assert np.array_equal(np.concatenate(halves), rows)  # any subset of cells, any process
    if n_cells > 3:
        assert not np.array_equal(shards.shuffled_rows(np.arange(n_cells), n_cells, 1), rows)


def test_hvg_without_batch_keys_fits_one_batch(sources, tmp_path):
    manifest = prepare_store(
        config(sources, tmp_path / "one", genes="hvg", n_top_genes=50, hvg_batch_keys=[])
    )
    assert manifest.n_genes == 50 and list(manifest.provenance["hvg"]["batches"]) == [""]
