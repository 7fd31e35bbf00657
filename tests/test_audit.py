"""Tests of sweep.audit and `scvi-sweep-audit`: the audit's counts on a small prepared store equal
those computed from the source files' obs with pandas; the command line; prepare's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sweep.audit import audit_store, names, store_summary, write_audit
from sweep.audit.categories import batch_options, default_batch_option
from sweep.audit.writing import default_output
from sweep.cli import audit_command
from sweep.config.schema import PrepareConfig, compose_train
from sweep.data.prepare import prepare_store
from sweep.data.prepare.output import LOG_NAME
from sweep.data.selection import validation_flags
from sweep.evaluation.health import SMALL_BATCH_CELLS

N_GENES = 700
PROTOCOL = ["dataset_id", "donor_id", "assay", "suspension_type"]
CZI = ["dataset_id", "assay", "suspension_type", "donor_id"]

# (dataset, donor, assay, suspension type, primary cells, non-primary cells): one protocol of
# one donor per row. A1 and B1 have two assays, A2 two suspension types, B1 both; donor "A1"
# also appears in dataset C with one protocol (a pair is (dataset, donor), not the donor
# alone); C2's second assay has non-primary cells only (not a second protocol as training sees
# it), and donor C3 has non-primary cells only (no pair)
DESIGN = [
    ("dsA", "A1", "10x 3' v3", "cell", 260, 10),
    ("dsA", "A1", "10x 5' v1", "cell", 140, 0),
    ("dsA", "A2", "10x 3' v3", "cell", 150, 5),
    ("dsA", "A2", "10x 3' v3", "nucleus", 90, 5),
    ("dsA", "A3", "10x 3' v3", "cell", 40, 0),
    ("dsB", "B1", "Smart-seq2", "cell", 120, 0),
    ("dsB", "B1", "10x 3' v2", "nucleus", 80, 10),
    ("dsB", "B2", "Smart-seq2", "cell", 300, 0),
    ("dsC", "A1", "10x 3' v2", "cell", 350, 20),
    ("dsC", "C2", "10x 3' v3", "nucleus", 200, 0),
    ("dsC", "C2", "10x 5' v1", "nucleus", 0, 30),
    ("dsC", "C3", "10x 3' v3", "cell", 0, 25),
]
CELL_TYPES = ["T cell", "B cell", "monocyte"]
TISSUES = {"dsA": "blood", "dsB": "lung", "dsC": "liver"}
#: expressed genes per cell drawn from these ranges by assay: Smart-seq2 rarely under 300
GENE_RANGES = {"Smart-seq2": (250, 700), "10x 3' v2": (60, 450)}
OTHER_GENES = (120, 650)


def write_sources(folder: Path, seed: int = 0) -> pd.DataFrame:
    """One h5ad per dataset of DESIGN, raw integer counts with a chosen number of expressed
    genes per cell; returns every cell's obs with its expressed genes (``n_genes``)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genes = [f"ENSG{i:011d}" for i in range(N_GENES)]
    var = pd.DataFrame({"feature_name": [f"G{i}" for i in range(N_GENES)]}, index=genes)
    every = []
    for dataset in dict.fromkeys(row[0] for row in DESIGN):
        rows = []
        for ds, donor, assay, suspension, primary, other in DESIGN:
            if ds != dataset:
                continue
            for is_primary, n in ((True, primary), (False, other)):
                low, high = GENE_RANGES.get(assay, OTHER_GENES)
                rows.append(
                    pd.DataFrame(
                        {
                            "dataset_id": dataset,
                            "donor_id": donor,
                            "assay": assay,
                            "suspension_type": suspension,
                            "cell_type": rng.choice(CELL_TYPES, n),
                            "tissue": TISSUES[dataset],
                            "is_primary_data": is_primary,
                            "n_genes": rng.integers(low, high, n),
                        }
                    )
                )
        obs = pd.concat(rows, ignore_index=True)
        obs.index = [f"{dataset}-{i}" for i in range(len(obs))]
        X = sp.lil_matrix((len(obs), N_GENES), dtype=np.float32)
        for i, n in enumerate(obs["n_genes"]):
            X[i, rng.choice(N_GENES, n, replace=False)] = rng.integers(1, 6, n)
        source = obs.drop(columns="n_genes").astype(
            {c: "category" for c in [*PROTOCOL, "cell_type", "tissue"]}
        )
        anndata.AnnData(X=sp.csr_matrix(X), obs=source, var=var).write_h5ad(
            folder / f"{dataset}.h5ad"
        )
        every.append(obs)
    return pd.concat(every)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The DESIGN sources prepared with a 300-gene list into a store of 4 shards."""
    folder = tmp_path_factory.mktemp("audit")
    cells = write_sources(folder / "sources")
    gene_list = folder / "genes.tsv"
    gene_list.write_text("".join(f"ENSG{i:011d}\n" for i in range(0, N_GENES, 2)))
    cfg = PrepareConfig(
        source=str(folder / "sources" / "*.h5ad"),
        output=str(folder / "store"),
        genes=str(gene_list),
        shard_size=600,
        workers=1,
        progress=False,
    )
    prepare_store(cfg)
    return folder / "store", cells


@pytest.fixture(scope="module")
def audit(prepared):
    return audit_store(prepared[0], [500])


def store_order(store: Path) -> list[str]:
    """The store's cell ids in store order (shard 0's rows, shard 1's, ...)."""
    ids = []
    for shard in sorted(store.glob("shard_*.h5ad")):
        with h5py.File(shard) as f:
            ids += [x.decode() for x in f["obs"]["_index"][:]]
    return ids


def test_pairs_match_the_sources(audit, prepared):
    cells = prepared[1]
    primary = cells[cells["is_primary_data"]]
    per_pair = primary.groupby(["dataset_id", "donor_id"]).agg(
        assays=("assay", "nunique"),
        suspensions=("suspension_type", "nunique"),
        cells=("assay", "size"),
    )
    multi = per_pair[(per_pair["assays"] > 1) | (per_pair["suspensions"] > 1)]
    counts = audit.to_json()
    assert counts[names.DATASET_DONOR_PAIRS] == len(per_pair) == 7
    assert counts[names.PAIRS_MULTI] == len(multi) == 3  # A1 and A2 of dsA, B1
    assert counts[names.PAIRS_MULTI_ASSAY] == int((per_pair["assays"] > 1).sum()) == 2
    assert counts[names.PAIRS_MULTI_SUSPENSION] == int((per_pair["suspensions"] > 1).sum()) == 2
    assert counts[names.CELLS_IN_MULTI_PAIRS] == multi["cells"].sum()
    assert counts[names.PRIMARY_CELLS] == len(primary)
    assert counts[names.N_CELLS] == len(cells)
    table = audit.pairs.table
    assert list(table[names.CELLS]) == sorted(multi["cells"], reverse=True)
    b1 = table[(table[names.DATASET_ID] == "dsB") & (table[names.DONOR_ID] == "B1")].iloc[0]
    assert b1[names.ASSAYS] == "Smart-seq2 (120); 10x 3' v2 (80)"
    assert b1[names.SUSPENSION_TYPES] == "cell (120); nucleus (80)"


def test_gene_filter_matches_the_sources(audit, prepared):
    cells = prepared[1]
    primary = cells[cells["is_primary_data"]]
    counts = audit.to_json()
    for t in (300, 500):
        below = primary["n_genes"] < t
        assert 0 < below.sum() < len(primary)
        assert counts[names.primary_below_genes(t)] == below.sum()
        removals = audit.filters[t]
        for column in names.FILTER_COLUMNS:
            expected = primary[below].groupby(column).size()
            got = removals.of(column).set_index(names.CATEGORY)[names.REMOVED]
            assert got.reindex(expected.index).tolist() == expected.tolist()
            assert got.sum() == below.sum()
    assert counts[names.PRIMARY_BELOW_300_GENES] == (primary["n_genes"] < 300).sum()
    # Smart-seq2 cells have the most genes: the least removed share among assays
    by_assay = audit.filters[300].of("assay").set_index(names.CATEGORY)[names.REMOVED_SHARE]
    assert by_assay.idxmin() == "Smart-seq2"


def test_batch_categories_are_what_training_builds(audit, prepared):
    store, cells = prepared
    assert (
        set(audit.options) == set(batch_options()) >= {"czi_concat", "dataset_donor", "covariates"}
    )
    data = compose_train(["dataset=prepared", f"dataset.path={store}"]).data
    # the training split, computed here from the store order and the split seed alone
    ids = store_order(store)
    validating = validation_flags(len(ids), data.validation_fraction, data.split_seed)
    cells = cells.assign(validation=pd.Series(validating, index=ids).reindex(cells.index))
    kept = cells[cells["is_primary_data"] & (cells["n_genes"] >= data.min_genes)]
    training = kept[~kept["validation"]]
    counts = audit.to_json()
    for option, keys, covariates in (
        ("czi_concat", CZI, []),
        ("dataset_donor", ["dataset_id", "donor_id"], []),
        ("covariates", ["dataset_id", "donor_id"], ["assay", "suspension_type"]),
    ):
        result = audit.options[option]
        assert (result.batch_keys, result.covariate_keys) == (keys, covariates)
        assert counts[names.BATCH_CATEGORIES][option] == kept.groupby(keys).ngroups
        sizes = training.groupby(keys).size()
        expected = kept.groupby(keys).size().mul(0).add(sizes, fill_value=0).astype(int)
        labels = ["|".join(k) for k in expected.index]
        got = dict(zip(result.categories, result.cells.tolist(), strict=True))
        assert got == dict(zip(labels, expected.tolist(), strict=True))
        assert result.n_small == int((expected < SMALL_BATCH_CELLS).sum()) > 0
        assert result.cells_kept == len(kept) and result.training_cells == len(training)
        for key in covariates:
            assert result.covariate_levels[key] == training.groupby(key).size().to_dict()
    assert counts[names.DEFAULT_BATCH_OPTION] == default_batch_option() == "czi_concat"


def test_output_folder(audit, tmp_path):
    report = write_audit(audit, tmp_path / "out")
    written = json.loads((tmp_path / "out" / names.JSON_FILE).read_text())
    assert written[names.PAIRS_MULTI] == 3 and written[names.STORE] == str(audit.store)
    assert set(written[names.BATCH_CATEGORIES]) == set(audit.options)
    text = report.read_text()
    assert text.index("## Answers") < text.index("## (dataset, donor) pairs")
    assert "**Yes.** 3 of the 7 (dataset, donor) pairs" in text
    assert "`min_genes=300` removes" in text and "`min_genes=500` removes" in text
    for name in (names.SIZES_FIGURE, names.GENES_FIGURE, names.filter_figure(300)):
        assert (tmp_path / "out" / name).stat().st_size > 0 and f"]({name})" in text
    pairs = pd.read_csv(tmp_path / "out" / names.PAIRS_CSV)
    assert len(pairs) == 3


def test_command_writes_the_folder(prepared, tmp_path, capsys):
    out = tmp_path / "audit"
    audit_command.main([str(prepared[0]), "--output", str(out), "--min-genes", "500", "200"])
    for name in (names.REPORT_FILE, names.JSON_FILE, names.SIZES_FIGURE, names.filter_figure(200)):
        assert (out / name).is_file()
    assert json.loads((out / names.JSON_FILE).read_text())[names.primary_below_genes(200)] >= 0
    printed = capsys.readouterr().out
    assert "3 of 7 (dataset, donor) pairs" in printed and str(out / names.REPORT_FILE) in printed


def test_command_on_a_missing_store(tmp_path):
    missing, out = tmp_path / "no-store", tmp_path / "out"
    result = subprocess.run(
        ["scvi-sweep-audit", str(missing), "--output", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert str(missing) in result.stderr and not out.exists()
    assert not default_output(missing).exists()  # nor the default folder


def test_python_m_sweep_audit(prepared, tmp_path):
    out = tmp_path / "by-module"
    result = subprocess.run(
        [sys.executable, "-m", "sweep.audit", str(prepared[0]), "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (out / names.REPORT_FILE).is_file() and (out / names.JSON_FILE).is_file()


def test_prepare_logs_the_summary(prepared):
    log = (prepared[0] / LOG_NAME).read_text()
    assert "audit: 3 of 7 (dataset, donor) pairs were profiled with more than one" in log
    assert "audit: batch=czi_concat makes" in log
    assert f"scvi-sweep-audit {prepared[0].resolve()}" in log


def test_summary_inside_a_hydra_app(prepared):
    """Prepare runs inside a Hydra app (scvi-sweep-prepare): the summary composes the training
    config beside it and leaves the app's Hydra as it was."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sweep.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        outer = GlobalHydra.instance().hydra
        lines = store_summary(prepared[0])
        assert GlobalHydra.instance().hydra is outer
        assert (
            compose("train", overrides=["dataset=prepared", "dataset.path=y"]).dataset.path == "y"
        )
    assert any("batch=czi_concat makes" in line for line in lines)


def test_prepare_command_logs_the_summary(prepared, tmp_path):
    """The same from ``scvi-sweep-prepare``, a Hydra app of its own."""
    sources = prepared[0].parent / "sources"
    out = tmp_path / "store"
    command = [
        "scvi-sweep-prepare",
        f"source={sources}/*.h5ad",
        f"output={out}",
        "genes=hvg",
        "n_top_genes=100",
        "workers=1",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    log = (out / LOG_NAME).read_text()
    assert "audit: 3 of 7 (dataset, donor) pairs" in log and "audit summary skipped" not in log


def test_an_option_training_would_refuse(prepared, monkeypatch):
    """A data filter that keeps no cell: the option says why instead of counting."""
    from sweep.audit import categories

    def refusing(option, store):
        return compose_train([f"batch={option}", "dataset=prepared", "data.min_genes=100000"])

    monkeypatch.setattr(categories, "compose_option", refusing)
    result = audit_store(prepared[0], options=["czi_concat"]).options["czi_concat"]
    assert "leaves no cells" in result.error and result.n_categories == 0
    assert result.summary()[names.ERROR] == result.error
