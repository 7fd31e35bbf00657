"""Census-shaped end to end at thousands of batch categories (issue 21): synthetic sources with
``shape=census`` and 8,000 genes -> ``scvi-sweep-prepare`` (all 8,000 genes) -> a 2-job
``python train.py -m`` of 1 epoch with the default evaluation (each job a run folder with its
page) -> the end-of-sweep multirun report and ``scvi-sweep-report``.

The store is small (~27,000 cells: 330 datasets of 30-300 cells, half of the donors profiled
with a second protocol, and 2 large datasets of 2 donors each, the Census's few large ones) but
keeps what makes the Census hard: 8,000 genes and 2,000+ czi_concat batch categories, most with
a handful of cells, so the evaluation cells are drawn batch first from the few evaluation
batches that hold enough validation cells. The two jobs are the two ``trainer.batch_injection``
settings, which must give the same model. About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from sweep.config.schema import DataConfig, EvaluationConfig, SyntheticConfig
from sweep.data.selection import validation_flags
from sweep.data.store import Shard, read_manifest
from sweep.data.synthetic import generate

BIN = Path(sys.executable).parent
#: a small Census-shaped curriculum: 330 datasets of 30-300 cells (~23,000 cells), ~10 donors
#: a dataset (at most one per 10 cells), half of the donors with a second protocol, 8,000 genes
CENSUS_SMALL = dict(
    shape="census",
    n_datasets=330,
    cells_per_dataset=70,
    min_cells_per_dataset=30,
    max_cells_per_dataset=300,
    donors_per_dataset=10,
    multi_protocol_donor_fraction=0.5,
    n_genes=8000,
    seed=0,
)
#: 2 large datasets (1,000-3,000 cells, 2 donors each: 40+ validation cells a donor), another seed
LARGE = dict(n_datasets=2, cells_per_dataset=2000, donors_per_dataset=2, n_genes=8000, seed=1)
#: batch=czi_concat's columns, joined as sweep.data.batches joins them
CZI_CONCAT = ["dataset_id", "assay", "suspension_type", "donor_id"]
EVALUATION = EvaluationConfig()  # the default evaluation's keys (evaluation=scib)
DATA = DataConfig()  # data=min_genes_300's keys: primary cells with 300+ genes, 10% validate


def czi_concat_categories(sources: Path) -> int:
    """The batch categories czi_concat makes under data=min_genes_300, counted from the source
    files themselves: combinations of its columns among primary cells with 300+ genes."""
    import anndata

    labels = set()
    for path in sorted(sources.glob("*.h5ad")):
        obs = anndata.read_h5ad(path, backed="r").obs
        with h5py.File(path) as f:
            expressed = np.diff(f["X"]["indptr"][:])  # the generator stores no zeros
        kept = obs[obs["is_primary_data"].to_numpy() & (expressed >= DATA.min_genes)]
        labels |= set(kept[CZI_CONCAT].astype(str).agg("|".join, axis=1))
    return len(labels)


def eligible_evaluation_batches(store: Path) -> int:
    """Evaluation batches (``evaluation.batch_keys``) with ``evaluation.min_cells_per_batch``+
    validation cells: the store's rows flagged for validation (data.validation_fraction,
    data.split_seed) among primary cells with 300+ genes (evaluation.min_genes is 0)."""
    manifest = read_manifest(store)
    shards = [Shard(store / s["file"]) for s in manifest.shards]
    columns = {
        name: np.concatenate([s.obs_column(name) for s in shards])
        for name in ["n_genes_all", "is_primary_data", *EVALUATION.batch_keys]
    }
    validation = (
        validation_flags(manifest.n_cells, DATA.validation_fraction, DATA.split_seed)
        & columns["is_primary_data"].astype(bool)
        & (columns["n_genes_all"] >= DATA.min_genes)
    )
    pairs = pd.DataFrame({k: columns[k][validation] for k in EVALUATION.batch_keys})
    return int((pairs.value_counts() >= EVALUATION.min_cells_per_batch).sum())


def run(command: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_census_shape_prepare_train_pages_and_report_at_thousands_of_categories(tmp_path):
    sources, store = tmp_path / "sources", tmp_path / "store"
    generate(SyntheticConfig(output=str(sources), **CENSUS_SMALL))
    for i, path in enumerate(generate(SyntheticConfig(output=str(tmp_path / "large"), **LARGE))):
        path.rename(sources / f"large_{i}.h5ad")
    n_batch = czi_concat_categories(sources)
    assert n_batch >= 2000

    # prepare: all 8,000 genes in the sources' order (a gene list: no HVG selection)
    import anndata

    genes = anndata.read_h5ad(sources / "dataset_000.h5ad", backed="r").var_names
    (tmp_path / "genes.tsv").write_text("\n".join(genes) + "\n")
    prepare = [
        str(BIN / "scvi-sweep-prepare"),
        f"source={sources}/*.h5ad",
        f"output={store}",
        f"genes={tmp_path / 'genes.tsv'}",
        "shard_size=4096",
        "workers=2",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'prepare'}",
    ]
    run(prepare, tmp_path, timeout=600)
    manifest = read_manifest(store)
    assert manifest.n_genes == 8000 and manifest.genes == list(genes)
    assert manifest.n_cells == sum(s["n_cells"] for s in manifest.sources) > 20_000

    # train: 1 epoch of each batch injection, default evaluation, each job its run page
    sweep = tmp_path / "sweep"
    train = [
        sys.executable,
        str(Path(__file__).parents[1] / "train.py"),
        "-m",
        "dataset=prepared",
        f"dataset.path={store}",
        "trainer.max_epochs=1",
        "trainer.batch_injection=lookup,one_hot",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
        f"hydra.callbacks.report.out_root={tmp_path / 'reports'}",
    ]
    run(train, tmp_path, timeout=1200)
    jobs = [sweep / "0", sweep / "1"]
    metrics = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    for job, m in zip(jobs, metrics, strict=True):
        assert m["choices"]["evaluation"] == "scib" and m["epochs"] == 1
        assert (m["n_batch"], m["n_genes"], m["model_genes"]) == (n_batch, 8000, 8000)
        assert np.isfinite(m["elbo_validation"]) and m["cells_seen"] == m["cells_train"]
        logged = re.search(
            r"for 1 epochs? on (\d+) cells, (\d+) batch categories", (job / "train.log").read_text()
        )
        assert logged and logged.groups() == (str(m["cells_train"]), str(n_batch))
    # the two injections are one model: the same parameters, the same losses and scores
    assert metrics[1]["elbo_validation"] == pytest.approx(metrics[0]["elbo_validation"], rel=1e-4)
    assert metrics[1]["bio_conservation"] == pytest.approx(metrics[0]["bio_conservation"], abs=1e-3)

    # the saved model: every category in its registry and a decoder input column each
    from sweep.model.saved import inspect_model

    saved = inspect_model(jobs[0] / "model")
    assert (len(saved.batch_categories), len(saved.genes)) == (n_batch, 8000)
    assert saved.disagreements == []

    # evaluation cells: batches first (a plain draw of 1,000 of the ~2,200 validation cells
    # would hold 1-2 cells a batch), min_cells_per_batch cells in each scored batch; the
    # eligible batches are the large datasets' donors (and a few of the Census-shaped ones)
    m = metrics[0]
    eligible = eligible_evaluation_batches(store)
    scored = min(eligible, max(2, EVALUATION.n_cells // EVALUATION.min_cells_per_batch))
    assert eligible >= 4 and m["evaluation_batches"] == scored
    assert m["evaluation_batch_cells_min"] >= EVALUATION.min_cells_per_batch
    assert scored * EVALUATION.min_cells_per_batch <= m["evaluation_cells"] <= EVALUATION.n_cells
    assert m["evaluation_cells_chosen"].startswith(
        f"batches first: {scored} of the {eligible} evaluation batches with "
        f"{EVALUATION.min_cells_per_batch}+ validation cells"
    )
    page = (jobs[0] / "report.md").read_text()
    assert "Model as built: 8,000 genes, 128 hidden units, 2 layers, 50 latent" in page
    assert f"{n_batch:,} batch categories" in page
    assert (
        f"The {m['evaluation_cells']:,} evaluation cells come from {scored:,} evaluation "
        f"batches ({m['evaluation_batch_cells_min']:,} to "
        f"{m['evaluation_batch_cells_median']:g} cells a batch, smallest to median), "
        f"{m['evaluation_cells_chosen']}."
    ) in page
    assert (jobs[0] / "embedding.png").is_file()

    # the multirun report: from the end-of-sweep callback, and again from scvi-sweep-report
    report_dirs = [tmp_path / "reports" / "sweep", tmp_path / "again"]
    run([str(BIN / "scvi-sweep-report"), str(sweep), "--out", str(report_dirs[1])], tmp_path, 600)
    for folder in report_dirs:
        results = pd.read_csv(folder / "results.csv")
        assert sorted(results["trainer.batch_injection"]) == ["lookup", "one_hot"]
        assert list(results["status"].unique()) == ["complete"]
        assert list(results["n_batch"]) == [n_batch, n_batch]
        text = (folder / "report.md").read_text()
        assert "Jobs: 2 complete, 0 failed" in text
        assert "### `trainer.batch_injection`: `one_hot` vs `lookup`" in text
