"""The epoch plan: which cells every reader reads in an epoch, in which order, cut into which
batches. Pure: from the loader keys, the split's cells and (seed, epoch, reader) alone, no file.

A reader is one DataLoader worker of one DDP rank: reader ``rank * workers + worker`` of
``world_size * workers``. Training (shuffled): shards are permuted from (seed, epoch) and taken
in groups of ``max_cache_size``; the blocks (``block_size`` contiguous rows holding selected
cells) of a group are permuted and dealt to the readers in turn, so every selected cell is read
by exactly one reader. Validation (ordered): one contiguous run of blocks per reader, in store
order. A reader then reads its blocks of one group about ``fetch_size`` rows at a time (a
:class:`FetchRequest`), shuffles each fetch's cells in runs of ``run_size`` and cuts batches of
``batch_size`` from them; the remainder carries into the next fetch, so all of a reader's
batches are full but its last.

Worked example: 4 shards of 4 rows, ``block_size=2`` (block b: global rows 2b and 2b + 1),
every cell selected, ``max_cache_size=2``, seed 0, 2 ranks x 1 worker (readers 0 and 1),
``batch_size=3``, ``fetch_size=4``, ``run_size=1`` (pinned by tests/test_loader.py).

The deal: each group's blocks, permuted, go to the readers in turn::

    epoch  group (blocks, permuted)  reader 0  reader 1
    0      5 4 1 0                   5 1       4 0
    0      3 7 2 6                   3 2       7 6
    1      1 7 6 0                   1 6       7 0
    1      3 5 2 4                   3 2       5 4

Reader 0's fetch requests in epoch 0 (positions index the carried cells, then the read ones)::

    blocks  cells (carried | read)  batches: positions -> cells        carry
    5 1     10 11 2 3               [2 0 3] -> 2 10 3                  [1] -> 11
    3 2     11 | 6 7 4 5            [0 4 1] -> 11 5 6; [3 2] -> 4 7    none (its last batch)

Ranks that would yield different numbers of batches are levelled (DDP steps in lockstep): a
rank short of batches sends some full ones as two halves (:meth:`EpochPlan.halved_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Blocks:
    """Row ranges [start, stop) of shard ``shard`` holding selected cells; each (n_blocks,)."""

    shard: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    def __len__(self) -> int:
        return int(self.shard.shape[0])

    @classmethod
    def cover(cls, offsets: np.ndarray, selected: np.ndarray, block_size: int) -> Blocks:
        """Cut every shard into ``block_size`` rows and keep the blocks holding a selected cell.

        ``offsets`` (n_shards + 1,) global first rows; ``selected`` (n_cells,) bool.
        """
        shards, starts, stops = [], [], []
        for s in range(len(offsets) - 1):
            n_rows = int(offsets[s + 1] - offsets[s])
            start = np.arange(0, n_rows, block_size)
            stop = np.minimum(start + block_size, n_rows)
            hits = np.add.reduceat(selected[offsets[s] : offsets[s + 1]], start) if n_rows else []
            keep = np.asarray(hits) > 0
            shards.append(np.full(int(keep.sum()), s))
            starts.append(start[keep])
            stops.append(stop[keep])
        return cls(np.concatenate(shards), np.concatenate(starts), np.concatenate(stops))


@dataclass(frozen=True)
class Reader:
    """DataLoader worker ``worker`` of ``workers`` on DDP rank ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    workers: int = 1

    @property
    def index(self) -> int:
        """This reader's place among all readers (ranks x workers)."""
        return self.rank * self.workers + self.worker

    @property
    def count(self) -> int:
        """Readers over all ranks."""
        return self.world_size * self.workers


@dataclass(frozen=True, eq=False)
class FetchRequest:
    """One fetch for a reader to carry out: read the selected cells of ``blocks`` (block by block,
    in row order) after the cells carried from the previous fetch, then send ``batches`` and keep
    ``carry`` for the next fetch. Both index that sequence, carried cells first: each batch (n,)
    int, ``carry`` (< batch_size,) int. ``read_ahead`` (blocks): what the reader should start
    reading from disk now, in the background: on the first fetch of each group, the blocks of
    its next group (and on its very first fetch, those of its first group too), so that a
    group's reads overlap the previous group's work; empty on the other fetches."""

    blocks: np.ndarray
    batches: tuple[np.ndarray, ...]
    carry: np.ndarray
    read_ahead: np.ndarray


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """Every reader's fetches, in order, for any epoch: the blocks of a split's selected cells and
    the loader keys that order and cut them (see the module docstring).

    ``shard_blocks`` (n_shards + 1,): the blocks of shard s are ``shard_blocks[s]`` up to
    ``shard_blocks[s + 1]`` (blocks come shard by shard); ``block_cells`` (n_blocks,) selected
    cells per block.
    """

    blocks: Blocks
    shard_blocks: np.ndarray
    block_cells: np.ndarray
    seed: int
    shuffle: bool
    batch_size: int
    fetch_size: int
    run_size: int
    max_cache_size: int
    drop_last: bool

    @classmethod
    def cover(
        cls, offsets: np.ndarray, selected: np.ndarray, *, block_size: int, **keys
    ) -> EpochPlan:
        """The plan over the cells ``selected`` (n_cells,) bool of a store whose shards start at
        global rows ``offsets`` (n_shards + 1,); ``keys``: the other fields."""
        blocks = Blocks.cover(offsets, selected, block_size)
        selected_before = np.concatenate([[0], np.cumsum(selected)])  # (n_cells + 1,)
        first_rows = offsets[blocks.shard]
        return cls(
            blocks,
            np.searchsorted(blocks.shard, np.arange(len(offsets))),
            selected_before[first_rows + blocks.stop] - selected_before[first_rows + blocks.start],
            **keys,
        )

    @property
    def n_shards(self) -> int:
        return len(self.shard_blocks) - 1

    def groups(self, epoch: int) -> list[np.ndarray]:
        """This epoch's shuffled block indices, in groups reading <= ``max_cache_size`` shards.

        Shards and the blocks of each group are permuted from (seed, epoch).
        """
        rng = np.random.default_rng([self.seed, epoch])
        shard_order = rng.permutation(self.n_shards)
        groups = []
        for members in np.array_split(
            shard_order, np.arange(self.max_cache_size, len(shard_order), self.max_cache_size)
        ):
            blocks = [np.arange(*self.shard_blocks[s : s + 2]) for s in np.sort(members)]
            groups.append(rng.permutation(np.concatenate(blocks)))
        return groups

    def reader_groups(self, epoch: int, reader: Reader) -> list[np.ndarray]:
        """The groups of blocks ``reader`` reads.

        Shuffled: each group of :meth:`groups` dealt over the readers in turn. Ordered: one
        contiguous run of blocks per reader, cut where it moves past ``max_cache_size`` shards.
        """
        if self.shuffle:
            return [g[reader.index :: reader.count] for g in self.groups(epoch)]
        mine = np.array_split(np.arange(len(self.blocks)), reader.count)[reader.index]
        shards = self.blocks.shard[mine]
        nth_shard = np.concatenate([[0], np.cumsum(shards[1:] != shards[:-1])])
        group = nth_shard // self.max_cache_size
        return np.split(mine, np.flatnonzero(np.diff(group)) + 1)

    def reader_cells(self, epoch: int, world_size: int, workers: int) -> np.ndarray:
        """Training cells each reader reads this epoch, (world_size, workers)."""
        n_readers = world_size * workers
        cells = np.zeros(n_readers, dtype=np.int64)
        for group in self.groups(epoch):  # the group's k-th block goes to reader k % n_readers
            dealt = np.arange(len(group)) % n_readers
            cells += np.bincount(dealt, self.block_cells[group], n_readers).astype(np.int64)
        return cells.reshape(world_size, workers)

    def halved_batches(self, epoch: int, reader: Reader) -> int:
        """How many of ``reader``'s full batches go out as two halves this epoch, so that every
        rank yields the same number of batches (DDP steps in lockstep) with no cell repeated or
        dropped. A reader's batches are all full but its last (cells flow through its fetches
        with a carry); a rank short of batches splits full ones, its first reader first."""
        if reader.world_size == 1 or not self.shuffle:
            return 0
        cells = self.reader_cells(epoch, reader.world_size, reader.workers)
        full = cells // self.batch_size
        batches = full if self.drop_last else full + (cells % self.batch_size > 0)
        missing = int(batches.sum(axis=1).max() - batches[reader.rank].sum())
        mine = full[reader.rank]
        if missing > mine.sum():
            raise RuntimeError(
                f"rank {reader.rank} has too few training cells to keep step with the other "
                f"ranks at loader.batch_size={self.batch_size}: lower loader.batch_size or "
                "trainer.devices"
            )
        return int(np.clip(missing - mine[: reader.worker].sum(), 0, mine[reader.worker]))

    def fetch_order(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The order of a fetch's ``n`` cells: shuffled in runs of ``run_size`` consecutive ones.

        Runs are cut at a random phase each fetch, so which neighbours share a run changes from
        epoch to epoch; copying a run is one sequential read (the store is shuffled across
        sources at prepare time, so neighbours are unrelated cells). Ordered: ``arange(n)``.
        """
        if not self.shuffle:
            return np.arange(n)
        if self.run_size == 1:
            return rng.permutation(n)
        phase = int(rng.integers(self.run_size))
        run_of = (np.arange(n) + phase) // self.run_size  # (n,) run number of each position
        return np.argsort(rng.permutation(int(run_of[-1]) + 1)[run_of], kind="stable")

    def fetches(self, group: np.ndarray) -> list[np.ndarray]:
        """``group``'s blocks in runs holding about ``fetch_size`` rows each."""
        ends = np.cumsum(self.blocks.stop[group] - self.blocks.start[group])
        cuts = np.arange(self.fetch_size, ends[-1] if len(ends) else 0, self.fetch_size)
        parts = np.split(group, np.searchsorted(ends, cuts, side="left") + 1)
        return [part for part in parts if len(part)]

    def batch_counts(self, epoch: int, world_size: int, workers: int) -> np.ndarray:
        """Batches each reader yields this epoch, (world_size, workers): its full batches, those
        of them sent as two halves once more, and its short last one unless ``drop_last``."""
        readers = [
            Reader(r, world_size, w, workers) for r in range(world_size) for w in range(workers)
        ]
        if self.shuffle:
            cells = self.reader_cells(epoch, world_size, workers).ravel()
        else:
            cells = np.array(
                [
                    sum(int(self.block_cells[g].sum()) for g in self.reader_groups(epoch, reader))
                    for reader in readers
                ],
                dtype=np.int64,
            )
        full = cells // self.batch_size
        short = np.zeros_like(full) if self.drop_last else (cells % self.batch_size > 0)
        halved = np.array([self.halved_batches(epoch, reader) for reader in readers])
        return (full + short + halved).reshape(world_size, workers)

    def requests(self, epoch: int, reader: Reader, start: int = 0) -> Iterator[FetchRequest]:
        """``reader``'s fetches this epoch, in order; their batches, in order, are its batches.

        The cells of all the fetches, each fetch in :meth:`fetch_order`, form one sequence cut
        into batches of ``batch_size``; the first :meth:`halved_batches` full ones go as two
        halves each, the last short one is dropped with ``drop_last``.

        ``start``: the reader's first ``start`` batches were trained already (a run resumed in
        the middle of the epoch): the same sequence, without them. Fetches holding none of the
        rest are left out, but those whose carry reaches the first batch kept, which come with
        no batches (their cells are read, only to be carried). The first request yielded reads
        its group and the next one ahead; the first of each later group, the group after it.
        """
        rng = np.random.default_rng([self.seed, epoch, reader.index, 1])
        to_halve = self.halved_batches(epoch, reader)
        groups = [group for group in self.reader_groups(epoch, reader) if len(group)]
        fetches = [(g, f) for g, group in enumerate(groups) for f in self.fetches(group)]
        first = True  # no request yielded yet
        carried = 0  # cells carried into this fetch
        done = 0  # the reader's batches before this fetch
        pending: list[tuple] = []  # left out so far, carrying cells on: (i, blocks, carry, carried)

        def request(i: int, blocks, batches, carry) -> FetchRequest:
            nonlocal first
            g = fetches[i][0]
            if first:
                ahead = groups[g : g + 2]
            else:
                ahead = groups[g + 1 : g + 2] if fetches[i - 1][0] != g else []
            first = False
            return FetchRequest(
                blocks, tuple(batches), carry, np.concatenate(ahead) if ahead else blocks[:0]
            )

        for i, (_, blocks) in enumerate(fetches):
            fetched = self.fetch_order(int(self.block_cells[blocks].sum()), rng)
            order = np.concatenate([np.arange(carried), carried + fetched])
            size, batches = self.batch_size, []
            n_full = len(order) // size
            for rows in (order[k * size : (k + 1) * size] for k in range(n_full)):
                batches += np.array_split(rows, 2) if to_halve else [rows]
                to_halve -= to_halve > 0
            carry = order[n_full * size :]
            if i == len(fetches) - 1:  # the last short batch: sent or dropped
                batches += [carry] if len(carry) and not self.drop_last else []
                carry = carry[:0]
            kept = batches[max(0, start - done) :]
            done += len(batches)
            if first and start and not kept:  # before the restart point: left out
                # a fetch with a full batch took in all the cells carried into it (fewer than a
                # batch, and first in its order): the chain of carries restarts with it
                pending = ([] if batches else pending) + (
                    [(i, blocks, carry, carried)] if len(carry) else []
                )
                carried = len(carry)
                continue
            for k, (p, p_blocks, p_carry, p_carried) in enumerate(pending):
                # the chain's first fetch is read with nothing carried into it: its carry (all
                # of its own cells, past the p_carried carried ones) moves down by p_carried
                yield request(p, p_blocks, (), p_carry - (p_carried if k == 0 else 0))
            pending = []
            yield request(i, blocks, kept, carry)
            carried = len(carry)
