"""The block loader: each selected cell once per epoch, shuffled, sparse until densified."""

import itertools
import shutil
import subprocess
import sys
import threading
from dataclasses import replace

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS

from conftest import encode_as_version_1
from sweep.data.densify import (
    X_DATA,
    X_INDICES,
    X_INDPTR,
    X_RELEASE,
    dense_counts,
    densify,
    scatter_counts,
)
from sweep.data.epoch_plan import Blocks, EpochPlan, Reader
from sweep.data.fetch import Fetch, StoreCells
from sweep.data.loader import EpochLoader, ShardBatches, read_ahead
from sweep.data.selection import CellTable
from sweep.data.store import CODED_COLUMNS, Shard, StoreError, read_manifest

#: loader keys of the tests' epoch plans (each test overrides what it is about)
PLAN_KEYS = dict(
    block_size=32,
    seed=3,
    shuffle=True,
    batch_size=64,
    fetch_size=200,
    run_size=4,
    max_cache_size=2,
    drop_last=False,
)


def make_batches(store, selected=None, shuffle=True, **overrides):
    manifest = read_manifest(store)
    table = CellTable.read(store, manifest, list(CODED_COLUMNS))
    n = table.n_cells
    if selected is None:
        selected = np.random.default_rng(1).random(n) < 0.8
    keys = PLAN_KEYS | {"shuffle": shuffle} | overrides
    strict = keys.pop("cache_size_strictly_enforced", True)
    batch_codes = np.arange(n) % 7  # code = global row % 7, checkable per cell
    covariates = np.stack([np.arange(n) % 2, np.arange(n) % 3], axis=1)
    cells = StoreCells(
        [store / s["file"] for s in manifest.shards],
        table.offsets,
        manifest.n_genes,
        selected,
        batch_codes,
        covariates,
    )
    plan = EpochPlan.cover(table.offsets, selected, **keys)
    return ShardBatches.over(plan, cells, strict), selected


def cell_ids(batch) -> np.ndarray:
    """Global row of every cell of a densified batch (gene 0 holds row + 1)."""
    return batch[REGISTRY_KEYS.X_KEY][:, 0].numpy().astype(np.int64) - 1


def dense(batch, n_genes):
    tensors = {k: torch.as_tensor(v) for k, v in batch.items()}
    return densify(tensors, n_genes)


def epoch_cells(dataset, n_genes, epoch, rank=0, world_size=1):
    dataset.epoch.value = epoch
    return [dense(b, n_genes) for b in replace(dataset, rank=rank, world_size=world_size)]


def test_blocks_cover_exactly_the_selected_cells():
    offsets = np.array([0, 10, 25])
    selected = np.zeros(25, bool)
    selected[[0, 3, 12, 24]] = True
    blocks = Blocks.cover(offsets, selected, block_size=4)
    ranges = list(zip(blocks.shard, blocks.start, blocks.stop, strict=True))
    assert ranges == [(0, 0, 4), (1, 0, 4), (1, 12, 15)]


def plan_of(offsets, selected, **overrides) -> EpochPlan:
    return EpochPlan.cover(offsets, selected, **(PLAN_KEYS | overrides))


#: the small store's shards (global first rows) and a training split of its cells
OFFSETS = np.array([0, 500, 1000, 1500, 2000, 2130])
SELECTED = np.random.default_rng(1).random(2130) < 0.8


def planned_cells(plan, epoch, reader) -> list[np.ndarray]:
    """The global rows of ``reader``'s batches (of OFFSETS' cells), from its requests alone."""
    blocks = plan.blocks
    rows = [
        np.arange(start, stop) + OFFSETS[shard]
        for shard, start, stop in zip(blocks.shard, blocks.start, blocks.stop, strict=True)
    ]
    batches, carried = [], np.zeros(0, dtype=np.int64)
    for request in plan.requests(epoch, reader):
        cells = np.concatenate([carried, *(rows[b][SELECTED[rows[b]]] for b in request.blocks)])
        batches += [cells[positions] for positions in request.batches]
        carried = cells[request.carry]
    assert not len(carried)
    return batches


@pytest.mark.parametrize("world_size, workers", [(1, 1), (1, 3), (2, 2), (3, 1), (3, 2)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_plan_reads_every_training_cell_once_per_epoch_in_step_without_files(
    world_size, workers, drop_last
):
    plan = plan_of(OFFSETS, SELECTED, drop_last=drop_last)
    for epoch in (0, 1):
        per_rank, seen = [], []
        for rank in range(world_size):
            readers = [Reader(rank, world_size, w, workers) for w in range(workers)]
            batches = [b for r in readers for b in planned_cells(plan, epoch, r)]
            per_rank.append(len(batches))
            assert {len(b) for b in batches} <= {64, 32} or not drop_last
            seen += batches
        assert len(set(per_rank)) == 1  # DDP steps in lockstep
        everything = np.concatenate(seen)
        assert len(everything) == len(np.unique(everything))  # none repeated
        if not drop_last:
            assert np.array_equal(np.sort(everything), np.flatnonzero(SELECTED))


def test_the_plan_pins_the_worked_example_of_its_docstring():
    plan = plan_of(
        np.array([0, 4, 8, 12, 16]),
        np.ones(16, bool),
        block_size=2,
        seed=0,
        batch_size=3,
        fetch_size=4,
        run_size=1,
    )
    deal = {
        (epoch, rank): [g.tolist() for g in plan.reader_groups(epoch, Reader(rank, 2))]
        for epoch in (0, 1)
        for rank in (0, 1)
    }
    assert [g.tolist() for g in plan.groups(0)] == [[5, 4, 1, 0], [3, 7, 2, 6]]
    assert [g.tolist() for g in plan.groups(1)] == [[1, 7, 6, 0], [3, 5, 2, 4]]
    assert deal == {
        (0, 0): [[5, 1], [3, 2]],
        (0, 1): [[4, 0], [7, 6]],
        (1, 0): [[1, 6], [3, 2]],
        (1, 1): [[7, 0], [5, 4]],
    }
    assert deal[0, 1] == [g.tolist() for g in plan.reader_groups(0, Reader(0, 1, 1, 2))]
    requests = list(plan.requests(0, Reader(0, 2)))
    assert [
        (r.blocks.tolist(), [b.tolist() for b in r.batches], r.carry.tolist()) for r in requests
    ] == [
        ([5, 1], [[2, 0, 3]], [1]),
        ([3, 2], [[0, 4, 1], [3, 2]], []),
    ]


def test_the_plan_module_needs_no_file_reader_or_torch():
    code = (
        "import sys, sweep.data.epoch_plan; "
        "print(sorted(m for m in ('h5py', 'torch', 'numba', 'scipy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("epoch", [0, 1])
def test_every_selected_cell_once_per_epoch_across_ranks_in_step(small_store, world_size, epoch):
    """Ranks are disjoint, cover every cell, and yield the same number of batches (DDP steps in
    lockstep): a rank short of batches sends some full ones as two halves."""
    dataset, selected = make_batches(small_store)
    n_genes = dataset.cells.n_genes
    seen, counts = [], []
    for rank in range(world_size):
        batches = epoch_cells(dataset, n_genes, epoch, rank=rank, world_size=world_size)
        sizes = [b[REGISTRY_KEYS.X_KEY].shape[0] for b in batches]
        assert set(sizes[:-1]) <= {64, 32}  # full batches and halves; the last may be short
        counts.append(len(batches))
        seen.append(np.concatenate([cell_ids(b) for b in batches]))
    assert len(set(counts)) == 1
    natural = dataset.reader_cells(epoch, world_size, workers=1).sum(
        axis=1
    )  # cells per rank, before levelling
    assert len(set(-(-natural // 64))) > 1  # the ranks needed levelling
    everything = np.concatenate(seen)
    assert len(everything) == selected.sum()  # none repeated
    assert np.array_equal(np.sort(everything), np.flatnonzero(selected))


def test_order_is_shuffled_new_each_epoch_and_reproducible(small_store):
    dataset, selected = make_batches(small_store)
    order = {e: np.concatenate([cell_ids(b) for b in epoch_cells(dataset, 60, e)]) for e in (0, 1)}
    again = np.concatenate([cell_ids(b) for b in epoch_cells(dataset, 60, 0)])
    assert np.array_equal(order[0], again)
    assert not np.array_equal(order[0], order[1])
    assert np.array_equal(np.sort(order[0]), np.sort(order[1]))
    first = order[0][:64]
    # a shuffled batch mixes blocks: its cells are not one contiguous run of rows
    assert np.ptp(first) > 3 * 64 and not np.all(np.diff(first) > 0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_reading_ahead_or_not_yields_the_same_batches(small_store, shuffle):
    dataset, _ = make_batches(small_store, shuffle=shuffle)
    assert dataset.reads_ahead  # the default
    without = replace(dataset, reads_ahead=False)
    for epoch in (0, 1):
        ahead, not_ahead = (epoch_cells(d, 60, epoch) for d in (dataset, without))
        assert len(ahead) == len(not_ahead)
        for a, b in zip(ahead, not_ahead, strict=True):
            assert all(torch.equal(a[key], b[key]) for key in a)


def test_validation_is_ordered_and_split_into_contiguous_runs(small_store):
    dataset, selected = make_batches(small_store, shuffle=False)
    runs = [
        np.concatenate([cell_ids(b) for b in epoch_cells(dataset, 60, e, rank=r, world_size=2)])
        for e in (0, 5)
        for r in range(2)
    ]
    assert np.array_equal(runs[0], runs[2])  # epoch does not change validation
    ordered = np.concatenate(runs[:2])
    assert np.array_equal(ordered, np.flatnonzero(selected))


def test_counts_codes_and_covariates_match_the_store(small_store):
    dataset, _ = make_batches(small_store)
    manifest = read_manifest(small_store)
    shards = [Shard(small_store / s["file"]) for s in manifest.shards]
    full = sp.vstack(
        [sp.csr_matrix(s.read_rows(0, s.n_cells), shape=(s.n_cells, 60)) for s in shards]
    ).toarray()
    batch = epoch_cells(dataset, 60, epoch=2)[0]
    rows = cell_ids(batch)
    assert batch[REGISTRY_KEYS.X_KEY].dtype == torch.float32
    assert np.array_equal(batch[REGISTRY_KEYS.X_KEY].numpy(), full[rows])
    assert np.array_equal(batch[REGISTRY_KEYS.BATCH_KEY].numpy()[:, 0], rows % 7)
    assert batch[REGISTRY_KEYS.BATCH_KEY].dtype == torch.int64
    assert np.array_equal(
        batch[REGISTRY_KEYS.CAT_COVS_KEY].numpy(), np.stack([rows % 2, rows % 3], axis=1)
    )
    assert not batch[REGISTRY_KEYS.LABELS_KEY].any()


def test_batches_cross_workers_sparse_and_compact(small_store):
    dataset, selected = make_batches(small_store)
    raw = next(iter(dataset))
    assert set(raw) >= {X_DATA, X_INDICES, X_INDPTR} and REGISTRY_KEYS.X_KEY not in raw
    assert raw[X_INDICES].dtype == np.int16 and raw[X_DATA].dtype == np.int16


@pytest.mark.parametrize("values", [np.int16, np.float32])
def test_cpu_and_device_densify_agree_with_scipy(values):
    X = sp.random(300, 500, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data = np.ceil(X.data * 50)
    parts = (
        torch.from_numpy(X.data.astype(values)),
        torch.from_numpy(X.indices.astype(np.int16)),
        torch.from_numpy(X.indptr.astype(np.int32)),
    )
    assert np.array_equal(dense_counts(*parts, 500).numpy(), X.toarray())
    assert np.array_equal(scatter_counts(*parts, 500).numpy(), X.toarray())


def test_counts_too_large_for_int16_travel_as_float32():
    X = sp.csr_matrix(np.array([[0, 40_000, 3], [7, 0, 0]], dtype=np.float32))
    fetch = Fetch(
        [(X.data, X.indices)],
        np.zeros(2, np.int64),
        X.indptr[:-1].astype(np.int64),
        np.diff(X.indptr),
        np.zeros(2, np.int32),
        np.zeros((2, 0), np.int32),
        3,
    )
    raw = fetch.batch(np.arange(2))
    assert raw[X_DATA].dtype == np.float32
    assert np.array_equal(dense(raw, 3)[REGISTRY_KEYS.X_KEY].numpy(), X.toarray())


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("slot_bytes", [1 << 20, 16])  # room for a batch; none: sent by value
@pytest.mark.parametrize("handoff", [1, 3])  # batches per message from a worker
def test_two_workers_deliver_every_cell_once_each_epoch(
    small_store, persistent, slot_bytes, handoff
):
    dataset, selected = make_batches(small_store)
    epoch = {"now": 0}
    loader = EpochLoader(
        dataset,
        epoch_of=lambda: epoch["now"],
        slot_bytes=slot_bytes,
        num_workers=2,
        persistent_workers=persistent,
        batches_per_handoff=handoff,
    )
    dataset = loader.dataset  # as this loader delivers: with its ring
    orders = []
    for e in range(2):
        epoch["now"] = e
        cells, via_ring = [], 0
        for batch in loader:
            via_ring += X_RELEASE in batch
            cells.append(cell_ids(densify(batch, 60)))
        assert via_ring == (len(cells) if slot_bytes > 16 else 0)
        assert not any(dataset.ring.busy)  # every slot released after densify
        cells = np.concatenate(cells)
        assert np.array_equal(np.sort(cells), np.flatnonzero(selected))
        orders.append(cells)
    assert not np.array_equal(orders[0], orders[1])


def test_ranks_times_workers_cover_each_cell_once(small_store):
    dataset, selected = make_batches(small_store)
    seen, counts = [], []
    for rank in range(2):
        reader = replace(dataset, rank=rank, world_size=2)
        loader = EpochLoader(reader, epoch_of=lambda: 3, slot_bytes=1 << 20, num_workers=2)
        batches = [cell_ids(densify(b, 60)) for b in loader]
        counts.append(len(batches))
        seen.append(np.concatenate(batches))
    assert counts[0] == counts[1]  # in step across ranks, whatever each rank's workers hold
    assert not set(seen[0]) & set(seen[1])
    assert np.array_equal(np.sort(np.concatenate(seen)), np.flatnonzero(selected))


def test_drop_last_drops_only_each_readers_short_batch(small_store):
    dataset, selected = make_batches(small_store, drop_last=True)
    batches = epoch_cells(dataset, 60, epoch=0)
    assert all(b[REGISTRY_KEYS.X_KEY].shape[0] == 64 for b in batches)
    assert len(batches) == selected.sum() // 64


@pytest.mark.parametrize("strict", [True, False])
def test_cache_bound_guard(small_store, monkeypatch, strict):
    """A fetch spanning more shards than max_cache_size is refused when strict, else evicted."""
    dataset, selected = make_batches(
        small_store, max_cache_size=2, cache_size_strictly_enforced=strict, fetch_size=10_000
    )
    everything = np.arange(len(dataset.blocks))
    monkeypatch.setattr(
        ShardBatches, "groups", lambda self, epoch: [everything]
    )  # one group, 5 shards
    if strict:
        with pytest.raises(RuntimeError, match="max_cache_size=2"):
            epoch_cells(dataset, 60, epoch=0)
    else:
        cells = np.concatenate([cell_ids(b) for b in epoch_cells(dataset, 60, epoch=0)])
        assert np.array_equal(np.sort(cells), np.flatnonzero(selected))


def test_reader_thread_yields_the_same_batches_as_inline_reading(small_store):
    dataset, selected = make_batches(small_store)
    by_mode = {}
    for reader_thread in (False, True):
        loader = EpochLoader(dataset, epoch_of=lambda: 2, slot_bytes=0, reader_thread=reader_thread)
        by_mode[reader_thread] = [cell_ids(densify(b, 60)) for b in loader]
    assert len(by_mode[True]) == len(by_mode[False])
    for threaded, inline in zip(by_mode[True], by_mode[False], strict=True):
        assert np.array_equal(threaded, inline)
    assert np.array_equal(np.sort(np.concatenate(by_mode[True])), np.flatnonzero(selected))


def test_read_ahead_raises_the_readers_error_and_stops_when_abandoned():
    def failing():
        yield 1
        raise OSError("shard_00003.h5ad unreadable")

    with pytest.raises(OSError, match="shard_00003"):
        list(read_ahead(failing(), depth=2))

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    ahead = read_ahead(endless(), depth=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()  # the consumer stops early: the thread must end, not read on
    settled = len(produced)
    assert settled <= 3 + 2 + 2  # consumed + queued + one in hand
    assert not any(t.name == "batch-reader" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("damage", ["gene index past the last gene", "negative count", "NaN"])
def test_damaged_shard_data_is_refused_naming_the_shard_before_densifying(
    small_store, tmp_path, damage
):
    """Bytes overwritten in a shard's counts or gene indices (the open-time store check reads
    only metadata) stop the epoch with the shard named, instead of densifying out of bounds."""
    store = tmp_path / "damaged"
    shutil.copytree(small_store, store)
    if damage != "gene index past the last gene":  # only float32 counts (format v1) hold these
        encode_as_version_1(store)
    shard = store / read_manifest(store).shards[1]["file"]
    with h5py.File(shard, "r+") as f:
        if damage == "gene index past the last gene":
            f["X/indices"][5] = 30_000
        else:
            f["X/data"][5] = -2 if damage == "negative count" else np.nan
    dataset, _ = make_batches(store)
    with pytest.raises(StoreError, match=rf"shard {shard}: the data of rows 0\.\.\d+ .*damaged"):
        epoch_cells(dataset, dataset.cells.n_genes, epoch=0)
    assert sum(dataset.checked) < len(dataset.blocks)  # it stopped at the damaged block
    clean, _ = make_batches(small_store)
    epoch_cells(clean, clean.cells.n_genes, epoch=0)
    assert all(clean.checked)  # every block checked in the first epoch


def test_a_fetch_is_shuffled_in_runs_cut_at_a_new_phase_each_time(small_store):
    dataset, _ = make_batches(small_store, run_size=8)
    rng = np.random.default_rng(0)
    orders = [dataset.fetch_order(100, rng) for _ in range(6)]
    for order in orders:
        assert np.array_equal(np.sort(order), np.arange(100))  # every cell once
        steps = np.diff(order)
        assert (steps == 1).mean() > 0.8  # mostly runs of consecutive cells
        assert (steps != 1).sum() >= 100 // 8 // 2  # ... in a shuffled order of runs
    first_runs = {int(np.flatnonzero(np.diff(order) != 1)[0]) + 1 for order in orders}
    assert len(first_runs) > 1  # the run boundaries move, so neighbours pair up differently
    cell_by_cell, _ = make_batches(small_store, run_size=1)
    assert (np.diff(cell_by_cell.fetch_order(100, rng)) == 1).mean() < 0.2


@pytest.mark.parametrize("reader_thread", [False, True])
def test_read_dense_for_a_cpu_trainer_equals_sparse_then_densified(small_store, reader_thread):
    """With no workers and a CPU trainer, batches are read straight into dense X: the same
    cells, counts and codes, batch for batch, as the sparse path densified."""
    dataset, _ = make_batches(small_store)
    by_path = {}
    for dense in (False, True):
        loader = EpochLoader(
            dataset,
            epoch_of=lambda: 1,
            slot_bytes=0,
            reader_thread=reader_thread,
            trains_on_cpu=dense,
        )
        batches = list(loader)
        assert all((X_DATA not in b) == dense for b in batches)
        by_path[dense] = [densify(b, 60) for b in batches]
    assert len(by_path[True]) == len(by_path[False])
    for read_dense, sparse in zip(by_path[True], by_path[False], strict=True):
        assert read_dense.keys() == sparse.keys()
        for key in sparse:
            assert torch.equal(read_dense[key], sparse[key]), key
    workers = EpochLoader(
        dataset, epoch_of=lambda: 1, slot_bytes=0, num_workers=1, trains_on_cpu=True
    )
    dataset = workers.dataset  # as this loader delivers
    assert not dataset.dense and X_DATA in next(iter(workers))  # workers always send sparse


@pytest.mark.parametrize("world_size, workers", [(1, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_the_plan_reads_each_block_ahead_once_and_at_most_a_group_early(
    world_size, workers, shuffle
):
    """Every block a reader reads was announced for reading ahead once, at or before the fetch
    that reads it, and blocks waiting to be read never span more than the current and the next
    group (the page cache a reader fills ahead is bounded by the loader keys, not the store)."""
    plan = plan_of(OFFSETS, SELECTED, shuffle=shuffle)
    for epoch, rank, worker in itertools.product((0, 1), range(world_size), range(workers)):
        reader = Reader(rank, world_size, worker, workers)
        groups = [set(g.tolist()) for g in plan.reader_groups(epoch, reader) if len(g)]
        announced, read = [], set()
        for request in plan.requests(epoch, reader):
            announced += request.read_ahead.tolist()
            read |= set(request.blocks.tolist())
            assert read <= set(announced)
            waiting = set(announced) - read
            assert sum(1 for g in groups if g & waiting) <= 2
        assert sorted(announced) == sorted(read) == sorted(set().union(*groups))
