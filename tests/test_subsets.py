"""Subsets that keep the answer honest: ``data.max_cells`` (a seeded subsample stratified by
dataset, the same cells for every job of a sweep) and ``data.keep`` (a value filter on coded obs
columns), both from obs at load time, counted, and named on the run page and in reports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from sweep.config.overrides import check_overrides_against_schema
from sweep.config.schema import DataConfig, compose_train
from sweep.data.datamodule import StoreDataModule
from sweep.data.selection import (
    STRATUM,
    CellTable,
    columns_for,
    split_cells,
    split_for,
    stratified_subset,
    stratum_quotas,
    subset_keys,
)
from sweep.data.store import CODED_COLUMNS, IS_PRIMARY, N_GENES_ALL, read_manifest
from sweep.metric_names import (
    CELLS_AFTER_FILTER,
    CELLS_NOT_SUBSAMPLED,
    CELLS_OUTSIDE_KEEP,
    CELLS_TRAIN,
    CELLS_VALIDATION,
    DATA_SUBSET,
    MAX_CELLS,
)
from sweep.paths import REPO_ROOT
from sweep.planning.job_list import expand
from sweep.report.render import data_note


def data_cfg(**keys):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), keys)


def store_split(store, **keys):
    """The split of ``store`` for the ``data`` keys ``keys``, and the table it was made from."""
    manifest = read_manifest(store)
    cfg = data_cfg(**keys)
    table = CellTable.read(store, manifest, [*columns_for(cfg), STRATUM])
    return split_for(table, manifest.vocab, cfg), table


def shares(mask, strata) -> np.ndarray:
    """Each dataset's share of the cells of ``mask``."""
    counts = np.bincount(strata[mask], minlength=int(strata.max()) + 1)
    return counts / counts.sum()


def skewed_table(n=60_000, seed=0) -> CellTable:
    """Cells of 7 datasets of very different sizes (1% to 40%), 10% not primary, genes
    uniform in [0, 1000)."""
    rng = np.random.default_rng(seed)
    sizes = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.03, 0.01])
    return CellTable(
        {
            STRATUM: rng.choice(len(sizes), n, p=sizes).astype(np.uint8),
            N_GENES_ALL: rng.integers(0, 1000, n),
            IS_PRIMARY: rng.random(n) > 0.1,
        },
        np.array([0, n]),
    )


@pytest.mark.parametrize("max_cells", [50, 999, 5_000, 20_000])
def test_a_subset_has_max_cells_with_every_datasets_share(max_cells):
    table = skewed_table()
    full = split_cells(table, 300, True, 0.1, 0)
    subset = split_cells(table, 300, True, 0.1, 0, max_cells=max_cells)
    strata = table.columns[STRATUM]
    assert subset.counts[CELLS_TRAIN] == max_cells
    # each dataset's share within rounding: one cell of the subset
    gap = np.abs(shares(subset.train, strata) - shares(full.train, strata))
    assert gap.max() <= 1 / max_cells + 1e-12
    # subsets of the full split: the validation flags stay position-based
    assert not (subset.train & ~full.train).any()
    assert not (subset.validation & ~full.validation).any()
    ratio = full.counts[CELLS_VALIDATION] / full.counts[CELLS_TRAIN]
    assert abs(subset.counts[CELLS_VALIDATION] - max(1, round(max_cells * ratio))) == 0
    left_out = full.counts[CELLS_AFTER_FILTER] - max_cells - subset.counts[CELLS_VALIDATION]
    assert subset.counts[CELLS_NOT_SUBSAMPLED] == left_out
    assert subset.counts[MAX_CELLS] == max_cells


def test_a_subset_is_the_same_for_a_seed_nested_in_larger_ones_and_new_for_a_new_seed():
    table = skewed_table()
    small = split_cells(table, 300, True, 0.1, 4, max_cells=1_000)
    again = split_cells(table, 300, True, 0.1, 4, max_cells=1_000)
    large = split_cells(table, 300, True, 0.1, 4, max_cells=3_000)
    other = split_cells(table, 300, True, 0.1, 5, max_cells=1_000)
    assert np.array_equal(small.train, again.train)
    assert np.array_equal(small.validation, again.validation)
    assert not (small.train & ~large.train).any()
    assert (small.train & other.train).sum() < 0.5 * 1_000


def test_max_cells_above_the_training_cells_keeps_every_cell_and_says_so():
    table = skewed_table(n=2_000)
    full = split_cells(table, 300, True, 0.1, 0)
    split = split_cells(table, 300, True, 0.1, 0, max_cells=10**6)
    assert np.array_equal(split.train, full.train)
    assert split.counts[CELLS_NOT_SUBSAMPLED] == 0
    assert "all kept" in split.summary()[DATA_SUBSET]


def test_quotas_share_by_largest_remainders():
    sizes = np.array([5, 3, 2, 0])
    quotas = stratum_quotas(sizes, 4)
    assert quotas.sum() == 4 and (quotas <= sizes).all()
    assert np.abs(quotas - sizes * 4 / sizes.sum()).max() < 1
    mask = np.ones(10, bool)
    chosen = stratified_subset(mask, np.repeat([0, 1, 2], [5, 3, 2]), subset_keys(10, 0), 10)
    assert chosen.all()


def test_max_cells_trains_on_n_cells_with_each_datasets_share_in_every_job_of_a_sweep(store):
    """The issue's done-when: N training cells, every dataset's share within 1 percentage point
    of the full store's, the same cells in two jobs of a sweep (their datamodules)."""
    n = 1_000
    jobs = expand(
        [
            "dataset=prepared",
            f"dataset.path={store}",
            f"data.max_cells={n}",
            "seed=0,1",
            "model=czi_128,hidden_512",
            "loader.num_workers=0",
        ],
        multirun=True,
    ).jobs
    assert len(jobs) == 4
    modules = [
        StoreDataModule(store, job.cfg.data, job.cfg.batch, job.cfg.loader, seed=job.cfg.seed)
        for job in (jobs[0], jobs[3])
    ]
    assert (jobs[0].cfg.seed, jobs[3].cfg.seed) == (0, 1)
    assert (jobs[0].cfg.model.n_hidden, jobs[3].cfg.model.n_hidden) == (128, 512)
    first, second = (m.split for m in modules)
    assert modules[0].n_train == n
    assert np.array_equal(first.train, second.train)
    assert np.array_equal(first.validation, second.validation)
    full, table = store_split(store)
    strata = table.columns[STRATUM]
    store_shares = shares(full.train | full.validation, strata)
    assert np.abs(shares(first.train, strata) - store_shares).max() < 0.01
    assert first.summary()[CELLS_TRAIN] == n
    assert "stratified by dataset_id" in first.summary()[DATA_SUBSET]


def test_keep_filters_on_listed_values_and_counts_the_rest(store):
    manifest = read_manifest(store)
    tissues = manifest.vocab["tissue"]
    kept = list(tissues[:2])
    full, table = store_split(store)
    split, _ = store_split(store, keep={"tissue": kept})
    codes = CellTable.read(store, manifest, ["tissue"]).columns["tissue"]
    listed = np.isin(codes, [tissues.index(v) for v in kept])
    assert split.counts[CELLS_OUTSIDE_KEEP] == (~listed).sum()
    assert np.array_equal(split.train, full.train & listed)
    assert np.array_equal(split.validation, full.validation & listed)
    assert split.counts[CELLS_AFTER_FILTER] == ((full.train | full.validation) & listed).sum()
    assert split.summary()[DATA_SUBSET] == f"tissue in {{{', '.join(kept)}}}"


def test_keep_and_max_cells_together_subsample_the_kept_cells(store):
    tissue = read_manifest(store).vocab["tissue"][0]
    split, _ = store_split(store, keep={"tissue": [tissue]}, max_cells=200)
    kept, _ = store_split(store, keep={"tissue": [tissue]})
    assert split.counts[CELLS_TRAIN] == 200
    assert not (split.train & ~kept.train).any()
    assert split.summary()[DATA_SUBSET].startswith(f"tissue in {{{tissue}}}; a subsample of 200")


@pytest.mark.parametrize(
    ("keep", "words"),
    [
        ({"tisue": ["blood"]}, ["data.keep.tisue:", "tissue"]),
        ({"tissue": ["no-such-tissue"]}, ["data.keep.tissue:", "'no-such-tissue'", "values:"]),
    ],
)
def test_an_unknown_keep_column_or_value_is_refused_in_one_line_naming_the_key(store, keep, words):
    with pytest.raises(ValueError) as refused:
        store_split(store, keep=keep)
    message = str(refused.value)
    assert "\n" not in message
    assert all(word in message for word in words)
    if "tissue" in keep:  # the values that exist are listed
        assert read_manifest(store).vocab["tissue"][0] in message


def test_the_refusal_is_one_line_on_the_command_line(tiny_store, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "dataset=prepared",
            f"dataset.path={tiny_store}",
            "+data.keep.assay=[no-such-assay]",
            "dry_run=true",
            "dry_run_cells_per_s=1000",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: data.keep.assay: 'no-such-assay' is not a value of assay")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.keep={tissue:[blood,lung]}"],
        ["+data.keep.assay=[a,b]"],
        ["data.keep={tissue:[blood]}", "+data.keep.assay=[a]"],
        ["data.max_cells=1000"],
    ],
)
def test_the_override_forms_pass_the_command_line_check_and_compose(overrides):
    check_overrides_against_schema(overrides, {"data", "model"})
    cfg = compose_train(overrides)
    assert set(cfg.data.keep) <= {"tissue", "assay"}
    assert set(cfg.data.keep) <= set(CODED_COLUMNS)


def test_the_run_page_and_the_reports_name_the_subset():
    from sweep.report.run_report import trained_lines

    metrics = {
        "choices": {"data": "min_genes_300"},
        "overrides": ["data.max_cells=1000"],
        "epochs": 2,
        CELLS_TRAIN: 1000,
        CELLS_VALIDATION: 111,
        "train_time_s": 3.0,
        "train_cells_per_s": 700.0,
        "wall_time_s": 9.0,
        "elbo_validation": 400.0,
        "kl_weight": 0.05,
        DATA_SUBSET: "a subsample of 1,000 of the 9,000 training cells",
    }
    lines = trained_lines(metrics)
    assert sum("a subsample of 1,000" in line for line in lines) == 1
    note = data_note(["demo"], [metrics[DATA_SUBSET], None])
    assert sum(line.startswith("Cells narrowed (1 of 2 runs):") for line in note) == 1
    assert not any(line.startswith("Cells narrowed") for line in data_note(["demo"], [None]))


def test_plain_configs_are_unchanged():
    """No keep, no max_cells: the split is what it was (the datamodule's default path)."""
    table = skewed_table(n=3_000)
    before = split_cells(table, 300, True, 0.1, 0)
    after = split_for(table, {}, data_cfg())
    assert np.array_equal(before.train, after.train)
    assert after.subset == "" and DATA_SUBSET not in after.summary()
    assert columns_for(data_cfg()) == [N_GENES_ALL, IS_PRIMARY]
