"""Batches of cells from a prepared store: block-shuffled, memory-mapped, sparse until the device.

An epoch's order, from (seed, epoch): shards are permuted and taken in groups of ``max_cache_size``;
the blocks (``block_size`` contiguous rows holding selected cells) of a group are permuted and dealt
to the (rank, worker) readers in turn, so every selected cell is read by exactly one reader.
A reader locates about ``fetch_size`` cells of its blocks of one group in the memory-mapped shards
(never more than ``max_cache_size`` open), shuffles them and copies each batch once, from the page
cache into the batch's arrays; the remainder carries into the next fetch. Validation reads its
blocks in store order, split into contiguous runs over the readers.

Batches stay CSR until they reach the training device, where :func:`densify` turns them into what
scvi-tools' module expects.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import queue
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sweep.data.handoff import SlotRing, WorkerSlots
from sweep.data.store import INDEX_DTYPE, VALUE_DTYPE, Shard, StoreError, rebuild_hint

#: keys of the sparse X triple in a batch before :func:`densify`
X_DATA, X_INDICES, X_INDPTR = "X_data", "X_indices", "X_indptr"
#: the triple's place in a worker's shared-memory slot, and the call that frees the slot
X_SLOT, X_RELEASE = "X_slot", "X_release"
INT16_MAX = np.iinfo(np.int16).max
#: what SLURM sends every process of a job: the signal to checkpoint and requeue it (submitit:
#: SIGUSR2, Lightning's SLURM auto-requeue: SIGUSR1) and SIGTERM (the requeue itself, scancel, the
#: time limit). Loader workers ignore them: the training process acts and shuts them down.
JOB_SIGNALS = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM})


@dataclass(frozen=True)
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


def _reader_slot(rank: int, world_size: int) -> tuple[int, int]:
    """(this reader's index, number of readers) over all ranks x DataLoader workers."""
    info = get_worker_info()
    n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
    return rank * n_workers + worker, world_size * n_workers


class ShardBatches(IterableDataset):
    """Yields ready batches (dicts of numpy arrays, X as CSR parts) for one split of a store.

    ``selected`` (n_cells,) bool marks the split's cells; ``batch_codes`` (n_cells,) and
    ``covariate_codes`` (n_cells, k) are integer codes (any value where not selected).

    What a reader holds is bounded by the loader keys, not by the store: the locations of about
    ``fetch_size`` cells, the carry (< ``batch_size`` cells), at most ``max_cache_size`` open
    shards (row pointers, 8 bytes per cell, and the mapped pages it has read) and its ring slots.
    The per-cell arrays above (1 + 4 + 4k bytes per cell) are shared with the main process.
    """

    def __init__(
        self,
        store: str | Path,
        shard_files: list[str],
        offsets: np.ndarray,
        n_genes: int,
        selected: np.ndarray,
        batch_codes: np.ndarray,
        covariate_codes: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        block_size: int,
        fetch_size: int,
        run_size: int,
        max_cache_size: int,
        cache_size_strictly_enforced: bool,
        drop_last: bool,
    ):
        self.paths = [Path(store) / f for f in shard_files]
        self.offsets = offsets
        self.n_genes = n_genes
        self.selected = selected
        self.batch_codes = batch_codes
        self.covariate_codes = covariate_codes
        self.blocks = Blocks.cover(offsets, selected, block_size)
        # blocks come shard by shard: those of shard s are shard_blocks[s] .. shard_blocks[s + 1]
        self.shard_blocks = np.searchsorted(self.blocks.shard, np.arange(len(shard_files) + 1))
        selected_before = np.concatenate([[0], np.cumsum(selected)])  # (n_cells + 1,)
        first_rows = offsets[self.blocks.shard]
        self.block_cells = (  # selected cells per block, (n_blocks,)
            selected_before[first_rows + self.blocks.stop]
            - selected_before[first_rows + self.blocks.start]
        )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.fetch_size = fetch_size
        self.run_size = run_size
        self.max_cache_size = max_cache_size
        self.strict = cache_size_strictly_enforced
        self.drop_last = drop_last
        self.epoch = multiprocessing.Value("q", 0)  # shared with workers: set before each epoch
        self.checked = multiprocessing.RawArray("b", len(self.blocks))  # see _check_block
        self.rank, self.world_size = 0, 1
        self.ring: SlotRing | None = None  # set by EpochLoader when there are workers
        self.dense = False  # set by EpochLoader: read straight into dense batches (CPU, no workers)
        self.handoff = 1  # set by EpochLoader: batches a worker sends per message

    @property
    def n_cells(self) -> int:
        return int(self.selected.sum())

    def groups(self, epoch: int) -> list[np.ndarray]:
        """This epoch's shuffled block indices, in groups reading <= ``max_cache_size`` shards.

        Shards and the blocks of each group are permuted from (seed, epoch).
        """
        rng = np.random.default_rng([self.seed, epoch])
        shard_order = rng.permutation(len(self.paths))
        groups = []
        for members in np.array_split(
            shard_order, np.arange(self.max_cache_size, len(shard_order), self.max_cache_size)
        ):
            blocks = [np.arange(*self.shard_blocks[s : s + 2]) for s in np.sort(members)]
            groups.append(rng.permutation(np.concatenate(blocks)))
        return groups

    def my_groups(self, epoch: int) -> list[np.ndarray]:
        """The groups of blocks this reader reads.

        Shuffled: each group of :meth:`groups` dealt over the readers in turn. Ordered: one
        contiguous run of blocks per reader, cut where it moves past ``max_cache_size`` shards.
        """
        reader, n_readers = _reader_slot(self.rank, self.world_size)
        if self.shuffle:
            return [g[reader::n_readers] for g in self.groups(epoch)]
        mine = np.array_split(np.arange(len(self.blocks)), n_readers)[reader]
        shards = self.blocks.shard[mine]
        nth_shard = np.concatenate([[0], np.cumsum(shards[1:] != shards[:-1])])
        group = nth_shard // self.max_cache_size
        return np.split(mine, np.flatnonzero(np.diff(group)) + 1)

    def reader_cells(self, epoch: int) -> np.ndarray:
        """Training cells each reader reads this epoch, (ranks, workers per rank)."""
        _, n_readers = _reader_slot(self.rank, self.world_size)
        cells = np.zeros(n_readers, dtype=np.int64)
        for group in self.groups(epoch):  # the group's k-th block goes to reader k % n_readers
            dealt = np.arange(len(group)) % n_readers
            cells += np.bincount(dealt, self.block_cells[group], n_readers).astype(np.int64)
        return cells.reshape(self.world_size, -1)

    def splits(self, epoch: int) -> int:
        """How many of this reader's full batches go out as two halves this epoch, so that every
        rank yields the same number of batches (DDP steps in lockstep) with no cell repeated or
        dropped. A reader's batches are all full but its last (cells flow through its fetches
        with a carry); a rank short of batches splits full ones, its first reader first."""
        if self.world_size == 1 or not self.shuffle:
            return 0
        cells = self.reader_cells(epoch)
        full = cells // self.batch_size
        batches = full if self.drop_last else full + (cells % self.batch_size > 0)
        missing = int(batches.sum(axis=1).max() - batches[self.rank].sum())
        mine = full[self.rank]
        if missing > mine.sum():
            raise RuntimeError(
                f"rank {self.rank} has too few training cells to keep step with the other ranks "
                f"at loader.batch_size={self.batch_size}: lower loader.batch_size or "
                "trainer.devices"
            )
        reader, _ = _reader_slot(self.rank, self.world_size)
        worker = reader % len(mine)
        return int(np.clip(missing - mine[:worker].sum(), 0, mine[worker]))

    def __iter__(self) -> Iterator[dict[str, np.ndarray] | list[dict[str, np.ndarray]]]:
        """This reader's batches, in lists of ``handoff`` when that is more than 1 (workers)."""
        batches = self._batches()
        if self.handoff == 1:
            yield from batches
            return
        while handoff := list(itertools.islice(batches, self.handoff)):
            yield handoff

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        epoch = int(self.epoch.value)
        reader, _ = _reader_slot(self.rank, self.world_size)
        halve = self.splits(epoch)  # full batches still to send as two halves
        rng = np.random.default_rng([self.seed, epoch, reader, 1])
        info = get_worker_info()
        slots = self._slots(info.id if info else None)
        handles: OrderedDict[int, Shard] = OrderedDict()
        size = self.batch_size
        carry: Fetch | None = None  # the last short batch of a fetch, completed by the next
        try:
            for group in self.my_groups(epoch):
                for blocks in self._fetches(group):
                    fetch = None  # unmaps the last fetch's closed shards before this one maps
                    fetch = self._read(blocks, handles)
                    order = self._order(fetch.n, rng)
                    if carry is not None:
                        need = size - carry.n
                        carry = carry.concat(fetch.take(order[:need]))
                        order = order[need:]
                        if carry.n < size:
                            carry = carry.copied()
                            continue
                        yield from self._emit(carry, np.arange(size), slots, halve > 0)
                        halve -= halve > 0
                        carry = None
                    full = len(order) - len(order) % size
                    for first in range(0, full, size):
                        yield from self._emit(fetch, order[first : first + size], slots, halve > 0)
                        halve -= halve > 0
                    if full < len(order):
                        carry = fetch.take(order[full:]).copied()  # its shards may close
            if carry is not None and carry.n and not self.drop_last:
                yield from self._emit(carry, np.arange(carry.n), slots, halve=False)
        finally:
            for shard in handles.values():
                shard.close()

    def _order(self, n: int, rng: np.random.Generator) -> np.ndarray:
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

    def _emit(self, fetch: Fetch, rows: np.ndarray, slots, halve: bool) -> Iterator[dict]:
        """Cells ``rows`` of ``fetch`` as one batch, or as two halves: dense when this reader
        feeds a CPU trainer in its own process (``dense``), else sparse."""
        for part in np.array_split(rows, 2) if halve else [rows]:
            yield fetch.dense_batch(part) if self.dense else fetch.batch(part, slots)

    def _slots(self, worker: int | None) -> WorkerSlots | None:
        """Where this pass writes batches: worker ``worker``'s ring slots if it has any (freed
        first: batches of an abandoned pass are never read), else new arrays (None)."""
        if self.ring is None or worker is None:
            return None
        self.ring.reset(worker)
        return WorkerSlots(self.ring, worker)

    def _fetches(self, group: np.ndarray) -> Iterator[np.ndarray]:
        """Runs of ``group``'s blocks holding about ``fetch_size`` rows each."""
        rows = self.blocks.stop[group] - self.blocks.start[group]
        ends = np.cumsum(rows)
        cut_at = (
            np.searchsorted(
                ends,
                np.arange(self.fetch_size, ends[-1] if len(ends) else 0, self.fetch_size),
                side="left",
            )
            + 1
        )
        yield from (part for part in np.split(group, cut_at) if len(part))

    def _shard(self, s: int, handles: OrderedDict[int, Shard], fetch_shards: set[int]) -> Shard:
        """Open shard ``s`` through a per-reader cache of at most ``max_cache_size`` handles."""
        if s in handles:
            handles.move_to_end(s)
            return handles[s]
        if len(handles) >= self.max_cache_size:
            oldest = next(iter(handles))
            if self.strict and oldest in fetch_shards:
                raise RuntimeError(
                    f"a fetch needs more than loader.max_cache_size={self.max_cache_size} shards "
                    "open at once; raise loader.max_cache_size"
                )
            handles.pop(oldest).close()
        handles[s] = Shard(self.paths[s])
        return handles[s]

    def _check_block(self, shard: Shard, row_pointers: np.ndarray) -> None:
        """Refuse a block whose stored data is damaged: a count that is negative or NaN, or a
        gene index outside [0, n_genes) that densifying would write out of bounds.

        The store check at open reads only metadata; this reads each block's data once per
        reader process group (``checked`` is shared with the workers), in its first epoch.
        """
        lo, hi = int(row_pointers[0]), int(row_pointers[-1])
        if lo == hi:
            return
        values, genes = (array[lo:hi] for array in shard.arrays())
        if not values.min() >= 0 or genes.min() < 0 or genes.max() >= self.n_genes:
            raise StoreError(
                f"shard {shard.path}: the data of rows {np.searchsorted(shard.indptr, lo)}.."
                f"{np.searchsorted(shard.indptr, hi) - 1} holds a negative or NaN count or a "
                f"gene index outside [0, {self.n_genes}): it is damaged; "
                + rebuild_hint(shard.path.parent)
            )

    def _read(self, blocks: np.ndarray, handles: OrderedDict[int, Shard]) -> Fetch:
        """The selected cells of ``blocks``, as row locations in the mapped shards (no copy)."""
        fetch_shards = set(self.blocks.shard[blocks].tolist())
        sources, source_of, located = [], {}, []
        for b in blocks:
            s, start, stop = (
                int(self.blocks.shard[b]),
                int(self.blocks.start[b]),
                int(self.blocks.stop[b]),
            )
            shard = self._shard(s, handles, fetch_shards)
            if s not in source_of:
                source_of[s] = len(sources)
                sources.append(shard.arrays())
            first = int(self.offsets[s]) + start
            keep = np.flatnonzero(self.selected[first : first + stop - start])
            row_pointers = shard.indptr[start : stop + 1]
            if not self.checked[b]:
                self._check_block(shard, row_pointers)
                self.checked[b] = 1
            located.append(
                (
                    np.full(len(keep), source_of[s]),
                    row_pointers[keep],
                    np.diff(row_pointers)[keep],
                    first + keep,
                )
            )
        source, starts, lengths, rows = (
            np.concatenate(parts) for parts in zip(*located, strict=True)
        )
        return Fetch(
            sources,
            source,
            starts,
            lengths,
            self.batch_codes[rows],
            self.covariate_codes[rows],
            self.n_genes,
        )


@dataclass
class Fetch:
    """Cells located but not copied: cell ``i``'s non-zeros are ``values[start[i] :
    start[i] + length[i]]`` (and the same gene indices) of ``sources[source[i]]``, a mapped
    shard's arrays or a copy's. Codes: ``batch_codes`` (n,), ``covariate_codes`` (n, k).
    """

    sources: list[tuple[np.ndarray, np.ndarray]]
    source: np.ndarray
    start: np.ndarray
    length: np.ndarray
    batch_codes: np.ndarray
    covariate_codes: np.ndarray
    n_genes: int

    @property
    def n(self) -> int:
        return int(self.source.shape[0])

    def take(self, rows: np.ndarray) -> Fetch:
        """Cells ``rows`` (still not copied)."""
        return Fetch(
            self.sources,
            self.source[rows],
            self.start[rows],
            self.length[rows],
            self.batch_codes[rows],
            self.covariate_codes[rows],
            self.n_genes,
        )

    def concat(self, other: Fetch) -> Fetch:
        return Fetch(
            self.sources + other.sources,
            np.concatenate([self.source, other.source + len(self.sources)]),
            np.concatenate([self.start, other.start]),
            np.concatenate([self.length, other.length]),
            np.concatenate([self.batch_codes, other.batch_codes]),
            np.concatenate([self.covariate_codes, other.covariate_codes]),
            self.n_genes,
        )

    def csr(self) -> sp.csr_matrix:
        """All the cells copied out: counts (n, n_genes) float32 CSR."""
        values, indices, indptr = self._gather(np.arange(self.n), VALUE_DTYPE, INDEX_DTYPE)[:3]
        return sp.csr_matrix((values, indices, indptr), shape=(self.n, self.n_genes))

    def copied(self) -> Fetch:
        """The same cells copied into arrays of their own (independent of open shards)."""
        X = self.csr()
        return Fetch(
            [(X.data, X.indices)],
            np.zeros(self.n, dtype=np.int64),
            X.indptr[:-1],
            np.diff(X.indptr),
            self.batch_codes,
            self.covariate_codes,
            self.n_genes,
        )

    def batch(self, rows: np.ndarray, slots: WorkerSlots | None = None) -> dict[str, np.ndarray]:
        """Cells ``rows`` as one batch: compact CSR parts + codes shaped for scvi-tools.

        Counts travel as int16 when they fit (else float32), gene indices as int16 when there are
        at most 32768 genes: half the bytes of float32 + int32. The CSR parts are copied straight
        into a ring slot when ``slots`` has one free (see :class:`WorkerSlots`).
        """
        index_dtype = np.int16 if self.n_genes <= INT16_MAX + 1 else np.int32
        values, indices, indptr, largest, slot = self._gather(rows, np.int16, index_dtype, slots)
        if largest > INT16_MAX:  # a count too large for int16: copy again as float32
            if slot is not None:
                slots.release(slot)
            values, indices, indptr, _, slot = self._gather(rows, np.float32, index_dtype, slots)
        batch = (
            {X_SLOT: slot}
            if slot is not None
            else {X_DATA: values, X_INDICES: indices, X_INDPTR: indptr}
        )
        return batch | self._codes(rows)

    def dense_batch(self, rows: np.ndarray) -> dict:
        """Cells ``rows`` as one batch with ``X`` already dense: (n, n_genes) float32 counts,
        each row zeroed and filled in one pass straight from the mapped shards. For a trainer on
        the CPU in the reading process, this skips the compact copy and its second pass."""
        X = torch.empty((len(rows), self.n_genes), dtype=torch.float32)
        for source_values, source_indices, mine in self._by_source(rows):
            _fill_dense_rows(
                source_values,
                source_indices,
                self.start[rows[mine]],
                self.length[rows[mine]],
                mine,
                X.numpy(),
            )
        return {REGISTRY_KEYS.X_KEY: X} | self._codes(rows)

    def _by_source(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(values, gene indices, positions in ``rows`` of its cells) for each source that holds
        some of cells ``rows``."""
        which = self.source[rows]
        for s, (source_values, source_indices) in enumerate(self.sources):
            mine = np.flatnonzero(which == s)
            if len(mine):
                yield source_values, source_indices, mine

    def _codes(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Batch (n, 1), labels (n, 1) and covariate (n, k) codes of cells ``rows``, int64."""
        codes = {
            REGISTRY_KEYS.BATCH_KEY: self.batch_codes[rows].astype(np.int64).reshape(-1, 1),
            REGISTRY_KEYS.LABELS_KEY: np.zeros((len(rows), 1), dtype=np.int64),
        }
        if self.covariate_codes.shape[1]:
            codes[REGISTRY_KEYS.CAT_COVS_KEY] = self.covariate_codes[rows].astype(np.int64)
        return codes

    def _gather(
        self,
        rows: np.ndarray,
        value_dtype: type,
        index_dtype: type,
        slots: WorkerSlots | None = None,
    ) -> tuple:
        """Copy cells ``rows`` into CSR arrays (a ring slot's if one is free, else new ones).

        Returns (values, gene indices, indptr, largest value copied, slot descriptor or None).
        """
        lengths = self.length[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        layout = [
            (value_dtype, int(indptr[-1])),
            (index_dtype, int(indptr[-1])),
            (np.int64, len(rows) + 1),
        ]
        reserved = slots.reserve(layout) if slots is not None else None
        values, indices, out_indptr = (
            reserved[1] if reserved else [np.empty(length, dtype) for dtype, length in layout]
        )
        out_indptr[:] = indptr
        largest = 0.0
        for source_values, source_indices, mine in self._by_source(rows):
            copied = _copy_runs(
                source_values,
                source_indices,
                self.start[rows[mine]],
                lengths[mine],
                indptr[mine],
                values,
                indices,
            )
            largest = max(largest, copied)
        return values, indices, out_indptr, largest, reserved[0] if reserved else None


@numba.njit(nogil=True, cache=True)
def _copy_runs(values, indices, starts, lengths, out_starts, out_values, out_indices) -> float:
    """Copy runs ``[starts[j], starts[j] + lengths[j])`` of values and gene indices to
    ``out_starts[j]`` of the out arrays, casting to their dtypes; the largest value copied."""
    largest = 0.0
    for j in range(starts.shape[0]):
        source, target = starts[j], out_starts[j]
        for k in range(lengths[j]):
            value = values[source + k]
            largest = max(largest, value)
            out_values[target + k] = value
            out_indices[target + k] = indices[source + k]
    return largest


@numba.njit(nogil=True, cache=True)
def _fill_rows(out: np.ndarray, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray) -> None:
    """out[r, indices[k]] = data[k] for the CSR rows r; ``out`` (n, genes) float32, zeroed."""
    for row in range(indptr.shape[0] - 1):
        for k in range(indptr[row], indptr[row + 1]):
            out[row, indices[k]] = data[k]


@numba.njit(nogil=True, cache=True)
def _fill_dense_rows(values, indices, starts, lengths, out_rows, out) -> None:
    """Row ``out_rows[j]`` of ``out`` (n, genes) float32 := zeros, then the counts of the run
    ``[starts[j], starts[j] + lengths[j])`` of the mapped values and gene indices."""
    for j in range(starts.shape[0]):
        row, source = out_rows[j], starts[j]
        out[row, :] = 0.0
        for k in range(lengths[j]):
            out[row, indices[source + k]] = values[source + k]


def dense_counts(
    data: torch.Tensor, indices: torch.Tensor, indptr: torch.Tensor, n_genes: int
) -> torch.Tensor:
    """CSR parts -> (n, n_genes) float32 counts on their device.

    On the CPU one compiled pass over the non-zeros (2.5x torch's scatter); elsewhere torch ops.
    """
    n = indptr.shape[0] - 1
    if data.device.type != "cpu":
        return scatter_counts(data, indices, indptr, n_genes)
    X = torch.zeros((n, n_genes), dtype=torch.float32)
    _fill_rows(X.numpy(), data.numpy(), indices.numpy(), indptr.numpy())
    return X


def scatter_counts(
    data: torch.Tensor, indices: torch.Tensor, indptr: torch.Tensor, n_genes: int
) -> torch.Tensor:
    """:func:`dense_counts` in torch ops alone (any device): one scatter into a flat zeros."""
    n = indptr.shape[0] - 1
    X = torch.zeros(n * n_genes, dtype=torch.float32, device=data.device)
    row_starts = torch.arange(0, n * n_genes, n_genes, device=data.device)
    counts = torch.diff(indptr.to(torch.int64))
    flat = torch.repeat_interleave(row_starts, counts, output_size=data.shape[0])
    X[flat.add_(indices.to(torch.int64))] = data.to(torch.float32)
    return X.view(n, n_genes)


def densify(batch: dict[str, torch.Tensor], n_genes: int) -> dict[str, torch.Tensor]:
    """Replace the CSR parts of ``batch`` by ``X`` (n, n_genes) float32 dense counts, on the
    batch's device, and free the shared-memory slot they came in (if any). A batch read dense
    (``ShardBatches.dense``) passes as it is."""
    if X_DATA not in batch:
        return batch
    data, indices, indptr = batch.pop(X_DATA), batch.pop(X_INDICES), batch.pop(X_INDPTR)
    release = batch.pop(X_RELEASE, None)
    batch[REGISTRY_KEYS.X_KEY] = dense_counts(data, indices, indptr, n_genes)
    if release is not None:
        release()
    return batch


def _as_is(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Workers send numpy arrays as they are (no per-tensor shared-memory segments)."""
    return batch


def read_ahead(batches: Iterator, depth: int) -> Iterator:
    """``batches``, produced by a background thread up to ``depth`` ahead of the consumer.

    The copy into each batch runs compiled without the GIL, so with ``num_workers=0`` reading
    overlaps densifying and training in the main process, with no inter-process hand-off. An
    error in the thread is raised here; a consumer that stops early stops the thread.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        ready.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(done)
        except BaseException as error:  # handed to the consumer, raised there
            ready.put(error)

    thread = threading.Thread(target=produce, name="batch-reader", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a pending put, then wait for the thread to end
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.1)
        thread.join()


@contextlib.contextmanager
def job_signals_held() -> Iterator[None]:
    """Hold the job signals back in this thread while DataLoader forks its workers, so that none
    reaches a worker before :func:`ignore_job_signals`; one that arrives meanwhile is handled
    here once the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_job_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores the job signals, then lets them in.

    SLURM signals every process of a job step, forked workers included. A worker that ran the
    requeue handler it inherited (submitit's) would checkpoint and requeue the job a second
    time; one that died of the signal, or of the SIGTERM the requeue sends next (torch's worker
    handler dies of a SIGTERM not sent by its parent), makes the training process raise "DataLoader
    worker ... killed by signal" in place of its own exit: either way the job fails.
    """
    for signum in JOB_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, JOB_SIGNALS)


class EpochLoader(DataLoader):
    """A DataLoader over :class:`ShardBatches`: tells the dataset the epoch before each pass and
    hands batches from workers through a :class:`SlotRing`.

    ``epoch_of()`` returns the trainer's current epoch; with persistent workers the new value
    reaches them through shared memory before they restart their iterators. ``slot_bytes``
    sizes the ring's slots (a batch that does not fit is sent by value). Workers hand batches
    over ``batches_per_handoff`` at a time: one inter-process message, and its per-message cost
    (~1.5 ms of a worker's time here), per handoff instead of per batch. ``reader_thread``: with
    no workers, read batches in a background thread (:func:`read_ahead`). ``trains_on_cpu``:
    with no workers, batches are read dense (:meth:`Fetch.dense_batch`).
    """

    def __init__(
        self,
        dataset: ShardBatches,
        epoch_of: Callable[[], int],
        slot_bytes: int,
        reader_thread: bool = False,
        trains_on_cpu: bool = False,
        batches_per_handoff: int = 1,
        **kwargs,
    ):
        super().__init__(
            dataset,
            batch_size=None,
            collate_fn=_as_is,
            worker_init_fn=ignore_job_signals,
            **kwargs,
        )
        self.epoch_of = epoch_of
        self.reader_thread = reader_thread and not self.num_workers
        # no process boundary and no device copy to keep small: read straight into dense X
        dataset.dense = trains_on_cpu and not self.num_workers
        dataset.handoff = batches_per_handoff if self.num_workers else 1
        if self.num_workers:
            # queued handoffs + the one being received, a batch each; + the one being densified
            slots = ((self.prefetch_factor or 2) + 1) * dataset.handoff + 1
            dataset.ring = SlotRing(self.num_workers, slots, slot_bytes)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.epoch.value = self.epoch_of()
        if self.reader_thread:  # the dataset itself: DataLoader's per-batch machinery costs more
            batches = read_ahead(iter(self.dataset), depth=2)  # than the read (see read_ahead)
        else:
            with job_signals_held():  # workers start (are forked) here
                batches = super().__iter__()
        for item in batches:  # a batch, or a worker's handoff of several
            for batch in item if isinstance(item, list) else [item]:
                yield self._receive(batch)

    def _receive(self, batch: dict[str, np.ndarray]) -> dict:
        """numpy -> torch without copies; a slot descriptor -> views of the slot + its release."""
        received = {key: torch.as_tensor(value) for key, value in batch.items() if key != X_SLOT}
        if X_SLOT in batch:
            ring, descriptor = self.dataset.ring, batch[X_SLOT]
            received[X_DATA], received[X_INDICES], received[X_INDPTR] = ring.open(descriptor)
            received[X_RELEASE] = functools.partial(ring.release, descriptor)
        return received
