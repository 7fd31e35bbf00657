"""The gather: locate a fetch's cells in the memory-mapped shards, then copy batches out of them.

:class:`OpenShards` carries out a :class:`~sweep.data.epoch_plan.FetchRequest`'s read: it maps
at most ``max_cache_size`` shards at once and returns a :class:`Fetch`, the cells' row locations
(no copy). :meth:`Fetch.batch` copies a batch once, from the page cache into compact CSR arrays
(or a worker's shared-memory slot); :meth:`Fetch.dense_batch` straight into dense rows.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS

from sweep.data.densify import X_DATA, X_INDICES, X_INDPTR
from sweep.data.epoch_plan import Blocks
from sweep.data.handoff import WorkerSlots
from sweep.data.page_cache import PageCacheReader
from sweep.data.store import Shard, StoreError, rebuild_hint

#: key of a batch's ring slot descriptor (in place of the CSR triple), as a worker sends it
X_SLOT = "X_slot"
INT16_MAX = np.iinfo(np.int16).max
#: bytes of X a reader reads ahead beyond the shard it is on (``loader.read_ahead_mib``'s default)
READ_AHEAD_BYTES = 256 << 20


@dataclass(frozen=True, eq=False)
class StoreCells:
    """Where a split's cells are and what they carry: shard files ``paths`` starting at global
    rows ``offsets`` (n_shards + 1,), ``n_genes`` genes; ``selected`` (n_cells,) bool marks the
    split's cells, ``batch_codes`` (n_cells,) and ``covariate_codes`` (n_cells, k) are integer
    codes (any value where not selected)."""

    paths: list[Path]
    offsets: np.ndarray
    n_genes: int
    selected: np.ndarray
    batch_codes: np.ndarray
    covariate_codes: np.ndarray


class OpenShards:
    """A reader's open shards (at most ``max_cache_size``) and its reads of ``blocks`` in them.

    ``reads_ahead``: a :class:`ReadAhead` thread reads what :meth:`read_ahead` is given, at most
    ``read_ahead_bytes`` beyond the shard this reader is on, copying what it reads (``pread``)
    or not (``sendfile``): ``read_ahead_copies``. ``checked`` (shared, one byte per block) marks
    the blocks whose data has been checked.
    """

    def __init__(
        self,
        cells: StoreCells,
        blocks: Blocks,
        checked,
        max_cache_size: int,
        strict: bool,
        reads_ahead: bool,
        read_ahead_bytes: int = READ_AHEAD_BYTES,
        read_ahead_copies: bool = True,
    ):
        self.cells, self.blocks, self.checked = cells, blocks, checked
        self.max_cache_size, self.strict = max_cache_size, strict
        self.handles: OrderedDict[int, Shard] = OrderedDict()
        self.disk = (
            ReadAhead(read_ahead_bytes, 2 * max_cache_size, read_ahead_copies)
            if reads_ahead
            else None
        )
        self.step_of: dict[int, int] = {}  # block asked ahead, not read yet -> its step
        self.steps = 0  # steps asked for so far

    def __enter__(self) -> OpenShards:
        return self

    def __exit__(self, *exc) -> None:
        if self.disk is not None:
            self.disk.close()
        for shard in self.handles.values():
            shard.close()

    def read(self, blocks: np.ndarray) -> Fetch:
        """The selected cells of ``blocks``, block by block, as row locations in the mapped
        shards (no copy). The read-ahead learns that this reader is on their step."""
        fetch_shards = set(self.blocks.shard[blocks].tolist())
        steps = [self.step_of.pop(b) for b in blocks.tolist() if b in self.step_of]
        if steps:
            self.disk.reach(max(steps))
        cells = self.cells
        sources, source_of, located = [], {}, []
        for b in blocks:
            s, start, stop = (
                int(self.blocks.shard[b]),
                int(self.blocks.start[b]),
                int(self.blocks.stop[b]),
            )
            shard = self._shard(s, fetch_shards)
            if s not in source_of:
                source_of[s] = len(sources)
                sources.append(shard.arrays())
            first = int(cells.offsets[s]) + start
            keep = np.flatnonzero(cells.selected[first : first + stop - start])
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
            cells.batch_codes[rows],
            cells.covariate_codes[rows],
            cells.n_genes,
        )

    def _shard(self, s: int, fetch_shards: set[int]) -> Shard:
        """Shard ``s``, opened if needed; at ``max_cache_size`` open, the least recently used
        closes first (``strict``: unless this fetch reads it, then the fetch is refused)."""
        handles = self.handles
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
        handles[s] = Shard(self.cells.paths[s])
        return handles[s]

    def read_ahead(self, blocks: np.ndarray) -> None:
        """Have ``blocks`` (the blocks this reader will read next, in its order) read from disk
        into the page cache in the background while this thread goes on (see
        :class:`ReadAhead`): shard by shard in the order it first reads them, each shard's
        blocks in file order (its touching ranges one read). Nothing when not reading ahead."""
        if self.disk is None:
            return
        shard_of = self.blocks.shard[blocks]
        shards, first = np.unique(shard_of, return_index=True)
        for s in shards[np.argsort(first)].tolist():
            mine = blocks[shard_of == s]
            self.disk.request(
                self.cells.paths[s], self.blocks.start[mine], self.blocks.stop[mine], self.steps
            )
            self.step_of.update(dict.fromkeys(mine.tolist(), self.steps))
            self.steps += 1

    def _check_block(self, shard: Shard, row_pointers: np.ndarray) -> None:
        """Refuse a block whose stored data is damaged: a count that is negative or NaN, or a
        gene index outside [0, n_genes) that densifying would write out of bounds.

        The store check at open reads only metadata; this reads each block's data once per
        reader process group (``checked`` is shared with the workers), in its first epoch.
        """
        lo, hi = int(row_pointers[0]), int(row_pointers[-1])
        if lo == hi:
            return
        n_genes = self.cells.n_genes
        values, genes = (array[lo:hi] for array in shard.arrays())
        if not values.min() >= 0 or genes.min() < 0 or genes.max() >= n_genes:
            raise StoreError(
                f"shard {shard.path}: the data of rows {np.searchsorted(shard.indptr, lo)}.."
                f"{np.searchsorted(shard.indptr, hi) - 1} holds a negative or NaN count or a "
                f"gene index outside [0, {n_genes}): it is damaged; "
                + rebuild_hint(shard.path.parent)
            )


class ReadAhead:
    """A thread that reads a reader's next blocks from disk into the page cache while the gather
    works on the ones before them, so that the disk's time hides behind the gather's.

    Requests come in the order the gather will read them, each a step (one shard's blocks of
    what the plan announced; see :meth:`OpenShards.read_ahead`); the thread stays at most
    ``bytes_ahead`` bytes of X beyond the step the gather is on (:meth:`reach`), so the page
    cache it fills ahead is bounded by that, not by the store (it always reads the step after
    the gather's). It opens shards for itself (their row pointers, 8 bytes a cell; the
    ``shards`` most recent stay open) and reads through a
    :class:`~sweep.data.page_cache.PageCacheReader` (what is cached already is left alone;
    ``copy``: through ``pread``, else ``sendfile``, see there).
    Advisory: a shard it cannot read is left to the fetch, which raises the error that names it.
    """

    def __init__(self, bytes_ahead: int = READ_AHEAD_BYTES, shards: int = 6, copy: bool = True):
        self.bytes_ahead, self.max_shards = bytes_ahead, shards
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.progress = threading.Condition()
        self.reached = -1  # the step the gather is on
        self.ahead: dict[int, int] = {}  # bytes asked for each step beyond it
        self.closed = False
        self.shards: OrderedDict[Path, Shard] = OrderedDict()
        self.reader = PageCacheReader(copy)
        self.thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self.thread.start()

    def request(
        self, path: Path, starts: np.ndarray, stops: np.ndarray, step: int | None = None
    ) -> None:
        """Read rows ``[starts[i], stops[i])`` (each (n,)) of shard ``path``, in the background:
        as part of ``step`` (counted against ``bytes_ahead``), or at once (None)."""
        self.requests.put((path, starts, stops, step))

    def reach(self, step: int) -> None:
        """The gather is on ``step`` now: the steps up to it no longer count as ahead."""
        with self.progress:
            if step > self.reached:
                self.reached = step
                self.ahead = {k: n for k, n in self.ahead.items() if k > step}
                self.progress.notify()

    def close(self) -> None:
        """Stop after the reads already asked for at once; steps not begun are left out (the
        gather that asked for them has stopped). Returns when the thread has ended (after the
        read it is in, if any), so that no read of this epoch overlaps the next epoch's."""
        with self.progress:
            self.closed = True
            self.progress.notify()
        self.requests.put(None)
        if self.thread is not threading.current_thread():
            self.thread.join()

    def _run(self) -> None:
        while (request := self.requests.get()) is not None:
            path, starts, stops, step = request
            try:
                ranges = self._shard(path).byte_ranges(starts, stops)
                if step is None or self._room_for(step, sum(n for _, n in ranges)):
                    self.reader.read(path, ranges)
            except Exception:  # advisory: the fetch that reads the shard raises the real error
                pass
        for shard in self.shards.values():
            shard.close()
        self.reader.close()

    def _room_for(self, step: int, size: int) -> bool:
        """Wait until ``size`` more bytes of ``step`` fit within ``bytes_ahead`` (or the gather
        is at the step before it, or past it); False when closed meanwhile."""
        with self.progress:
            while not self.closed and step > self.reached + 1:
                if sum(self.ahead.values()) + size <= self.bytes_ahead:
                    break
                self.progress.wait()
            if step > self.reached:
                self.ahead[step] = self.ahead.get(step, 0) + size
            return not self.closed

    def _shard(self, path: Path) -> Shard:
        """Shard ``path``, opened if needed (the least recently used closes past ``shards``)."""
        shard = self.shards.pop(path, None) or Shard(path)
        self.shards[path] = shard
        if len(self.shards) > self.max_shards:
            self.shards.popitem(last=False)[1].close()
        return shard


@dataclass
class Fetch:
    """Cells located but not copied: cell ``i``'s non-zeros are ``values[start[i] :
    start[i] + length[i]]`` (and the same gene indices) of ``sources[source[i]]``, a mapped
    shard's arrays or a copy's, in any of the store's dtypes (the kernels compile per dtype).
    Codes: ``batch_codes`` (n,), ``covariate_codes`` (n, k).
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
        values, indices, indptr = self._gather(np.arange(self.n), np.float32, np.int32)[:3]
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

        Integer counts travel as int16 when they fit (the copy casts; a count above 32767,
        stored uint16 or uint32, sends the batch again as float32), float counts (version 1
        stores, non-integer data) as float32; gene indices as int16 when there are at most
        32768 genes, else int32. The CSR parts are copied straight
        into a ring slot when ``slots`` has one free (see :class:`WorkerSlots`).
        """
        index_dtype = np.int16 if self.n_genes <= INT16_MAX + 1 else np.int32
        integral = all(np.issubdtype(values.dtype, np.integer) for values, _ in self.sources)
        value_dtype = np.int16 if integral else np.float32
        values, indices, indptr, largest, slot = self._gather(rows, value_dtype, index_dtype, slots)
        if integral and largest > INT16_MAX:  # a count too large for int16: copy again as float32
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
def _fill_dense_rows(values, indices, starts, lengths, out_rows, out) -> None:
    """Row ``out_rows[j]`` of ``out`` (n, genes) float32 := zeros, then the counts of the run
    ``[starts[j], starts[j] + lengths[j])`` of the mapped values and gene indices."""
    for j in range(starts.shape[0]):
        row, source = out_rows[j], starts[j]
        out[row, :] = 0.0
        for k in range(lengths[j]):
            out[row, indices[source + k]] = values[source + k]
