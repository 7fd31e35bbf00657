"""Resuming in the middle of an epoch: the loader restarts at the batch training stopped at, in
the same epoch order, so every training cell is still seen once per epoch."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from sweep.data.densify import densify
from sweep.data.epoch_plan import Reader
from sweep.data.loader import EpochLoader, resume_point
from test_loader import OFFSETS, SELECTED, cell_ids, make_batches, plan_of


def reader_batches(plan, epoch, reader, start=0) -> list[np.ndarray]:
    """The global rows of ``reader``'s batches from its batch ``start`` on, from its requests
    alone (as test_loader.planned_cells, with a start)."""
    blocks = plan.blocks
    rows = [
        np.arange(start_, stop) + OFFSETS[shard]
        for shard, start_, stop in zip(blocks.shard, blocks.start, blocks.stop, strict=True)
    ]
    batches, carried = [], np.zeros(0, dtype=np.int64)
    for request in plan.requests(epoch, reader, start):
        cells = np.concatenate([carried, *(rows[b][SELECTED[rows[b]]] for b in request.blocks)])
        batches += [cells[positions] for positions in request.batches]
        carried = cells[request.carry]
    assert not len(carried)
    return batches


@pytest.mark.parametrize("world_size, workers", [(1, 1), (1, 3), (2, 2), (3, 1)])
@pytest.mark.parametrize("fetch_size, drop_last", [(200, False), (40, False), (40, True)])
def test_a_reader_started_at_batch_k_yields_exactly_the_rest_of_its_epoch(
    world_size, workers, fetch_size, drop_last
):
    """For every k: the same batches as the uninterrupted reader's from k on, in order (fetches
    smaller than a batch carry cells over several fetches; ranks of 2 and 3 halve batches)."""
    plan = plan_of(OFFSETS, SELECTED, fetch_size=fetch_size, drop_last=drop_last)
    epoch = 1
    counts = plan.batch_counts(epoch, world_size, workers)
    for rank, worker in itertools.product(range(world_size), range(workers)):
        reader = Reader(rank, world_size, worker, workers)
        whole = reader_batches(plan, epoch, reader)
        assert len(whole) == counts[rank, worker]
        for k in range(len(whole) + 1):
            rest = reader_batches(plan, epoch, reader, start=k)
            assert len(rest) == len(whole) - k
            for got, expected in zip(rest, whole[k:], strict=True):
                assert np.array_equal(got, expected)


def interleave(lists_of: list[list]) -> list:
    """What a DataLoader hands on from workers yielding ``lists_of[w]`` (lists of batches): one
    list of each worker in turn, passing over workers that have none left; flattened."""
    iterators = [iter(lists) for lists in lists_of]
    out, active = [], list(range(len(iterators)))
    while active:
        for w in list(active):
            item = next(iterators[w], None)
            if item is None:
                active.remove(w)
            else:
                out += item
    return out


def chunked(batches: list, handoff: int, start: int, lead: bool) -> list[list]:
    """A resumed worker's lists (as ShardBatches.__iter__ cuts them)."""
    lists = [[]] if lead else []
    rest, size = batches[start:], handoff - start % handoff
    while rest:
        lists.append(rest[:size])
        rest, size = rest[size:], handoff
    return lists


@pytest.mark.parametrize("counts", [[7, 7], [9, 4], [3, 10, 6], [5]])
@pytest.mark.parametrize("handoff", [1, 3, 4])
def test_resumed_workers_hand_on_the_rest_of_the_epoch_in_the_same_order(counts, handoff):
    names = [[(w, b) for b in range(n)] for w, n in enumerate(counts)]
    whole = interleave([chunked(batches, handoff, 0, False) for batches in names])
    assert len(whole) == sum(counts)
    for k in range(len(whole) + 1):
        skip, lead = resume_point(np.array(counts), handoff, k)
        resumed = zip(names, skip, lead, strict=True)
        lists = [chunked(b, handoff, int(s), bool(ld)) for b, s, ld in resumed]
        assert interleave(lists) == whole[k:]
    with pytest.raises(ValueError, match="batches trained"):
        resume_point(np.array(counts), handoff, sum(counts) + 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_cut_at_k_and_resumed_reads_every_training_cell_once(small_store, workers):
    """The cells of the batches before k plus those of a new loader resumed at k: exactly the
    training set, no repeats, in the uninterrupted order (0 and 2 loader workers)."""
    dataset, selected = make_batches(small_store)
    epoch = 2

    def loader_of(state=None) -> EpochLoader:
        loader = EpochLoader(
            replace(dataset),
            epoch_of=lambda: epoch,
            slot_bytes=1 << 20,
            num_workers=workers,
            batches_per_handoff=3,
            reader_thread=True,
        )
        if state is not None:
            loader.load_state_dict(state)
        return loader

    whole = [cell_ids(densify(b, 60)) for b in loader_of()]
    n = len(whole)
    for k in (1, 4, n // 2 + 1, n - 1):
        resumed = loader_of({"epoch": epoch, "batches": k})
        rest = [cell_ids(densify(b, 60)) for b in resumed]
        cells = np.concatenate(whole[:k] + rest)
        assert len(cells) == selected.sum()  # no repeats ...
        assert np.array_equal(np.sort(cells), np.flatnonzero(selected))  # ... none missed
        assert np.array_equal(cells, np.concatenate(whole))  # the same order
        # the next epoch is read whole again
        epoch += 1
        assert np.array_equal(
            np.sort(np.concatenate([cell_ids(densify(b, 60)) for b in resumed])),
            np.flatnonzero(selected),
        )
        epoch -= 1


def test_a_loader_state_says_where_training_is(small_store):
    dataset, _ = make_batches(small_store)
    loader = EpochLoader(dataset, epoch_of=lambda: 4, slot_bytes=0, trained_of=lambda: 17)
    state = loader.state_dict()
    assert state == {"epoch": 4, "batches": 17, "world_size": 1, "workers": 0, "handoff": 1}


def test_resuming_with_other_readers_is_said(small_store, caplog):
    dataset, _ = make_batches(small_store)
    loader = EpochLoader(dataset, epoch_of=lambda: 4, slot_bytes=1 << 20, num_workers=2)
    loader.load_state_dict({"epoch": 4, "batches": 6, "world_size": 1, "workers": 2, "handoff": 1})
    assert "other loader readers" not in caplog.text
    loader.load_state_dict({"epoch": 4, "batches": 6, "world_size": 1, "workers": 3, "handoff": 1})
    assert "the middle of epoch 5 with other loader readers" in caplog.text
