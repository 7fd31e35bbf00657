"""The loader: each reader carries out its :class:`~sweep.data.epoch_plan.EpochPlan` requests
(:class:`ShardBatches`), and a DataLoader hands their batches to training (:class:`EpochLoader`).

The plan says what a reader reads and how it cuts batches (``epoch_plan``), the gather copies
them out of the memory-mapped shards (``fetch``), and batches stay CSR until they reach the
training device, where :func:`~sweep.data.densify.densify` turns them into what scvi-tools'
module expects. Readers are DataLoader workers handing batches over through shared memory
(``handoff``), or, with no workers, a background thread (:func:`read_ahead`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sweep.data.densify import X_DATA, X_INDICES, X_INDPTR, X_RELEASE
from sweep.data.epoch_plan import EpochPlan, Reader
from sweep.data.fetch import READ_AHEAD_BYTES, X_SLOT, Fetch, OpenShards, StoreCells
from sweep.data.handoff import SlotRing, WorkerSlots

log = logging.getLogger(__name__)

#: what SLURM sends every process of a job: the signal to checkpoint and requeue it (submitit:
#: SIGUSR2, Lightning's SLURM auto-requeue: SIGUSR1) and SIGTERM (the requeue itself, scancel, the
#: time limit). Loader workers ignore them: the training process acts and shuts them down.
JOB_SIGNALS = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM})


@dataclass(frozen=True, eq=False)
class ShardBatches(EpochPlan, IterableDataset):
    """An epoch plan carried out over a store: yields ready batches (dicts of numpy arrays, X as
    CSR parts) for one split, as reader (``rank``, this DataLoader worker) of ``world_size``.

    Frozen, and whole from its construction: a variant (another rank, a loader's delivery) is a
    :func:`~dataclasses.replace`. It is the plan itself, extended, so the loader keys read as
    its own (``batch_size``, ``shuffle``, ...). ``strict``: refuse a fetch needing more than
    ``max_cache_size`` open shards (else close one it reads). ``reads_ahead``: have the
    requests' ``read_ahead`` blocks read into the page cache by a thread
    (:class:`~sweep.data.fetch.ReadAhead`), shard by shard, at most ``read_ahead_bytes``
    beyond the shard the reader is on. Delivery: ``dense``: read straight into dense batches
    (a CPU trainer, no workers); ``handoff``: batches a worker sends per message; ``ring``:
    the workers' shared-memory slots (None without workers). Shared with the
    workers: ``epoch`` (set before each pass) and ``checked`` (one byte per block, see
    :class:`~sweep.data.fetch.OpenShards`), and ``resume_at``: (epoch, batches) of a run
    resumed in the middle of that epoch after this rank trained that many of its batches
    ((-1, 0): none); in that epoch each reader leaves out its share of them (:func:`resume_point`).

    What a reader holds is bounded by the loader keys, not by the store: the locations of about
    ``fetch_size`` cells, the carry (< ``batch_size`` cells), at most ``max_cache_size`` open
    shards (row pointers, 8 bytes per cell, and the mapped pages it has read) and its ring slots;
    reading ahead, ``2 x max_cache_size`` more row pointers, and in the page cache (not its own
    memory) at most ``read_ahead_bytes`` of X beyond the shard it is on.
    The per-cell arrays of ``cells`` (1 + 4 + 4k bytes per cell) are shared with the main process.
    """

    cells: StoreCells
    strict: bool
    reads_ahead: bool
    checked: ctypes.Array
    epoch: Synchronized = field(default_factory=lambda: multiprocessing.Value("q", 0))
    resume_at: SynchronizedArray = field(
        default_factory=lambda: multiprocessing.Array("q", [-1, 0])
    )
    read_ahead_bytes: int = READ_AHEAD_BYTES
    rank: int = 0
    world_size: int = 1
    dense: bool = False
    handoff: int = 1
    ring: SlotRing | None = None

    @classmethod
    def over(
        cls, plan: EpochPlan, cells: StoreCells, strict: bool, reads_ahead: bool = True, **keys
    ) -> ShardBatches:
        """``plan`` carried out over ``cells``, as the only reader (rank 0 of 1, no workers);
        ``keys``: other fields (``read_ahead_bytes``)."""
        planned = {f.name: getattr(plan, f.name) for f in fields(EpochPlan)}
        checked = multiprocessing.RawArray("b", len(plan.blocks))
        return cls(
            **planned, cells=cells, strict=strict, reads_ahead=reads_ahead, checked=checked, **keys
        )

    def __iter__(self) -> Iterator[dict[str, np.ndarray] | list[dict[str, np.ndarray]]]:
        """This reader's batches, in lists of ``handoff`` when that is more than 1 (workers).

        Resumed (``resume_at``): from its first batch not yet trained, in lists cut where the
        uninterrupted pass cut them, after an empty list when its list of the round the run
        stopped in was trained already (so the DataLoader hands batches on in the same order)."""
        info = get_worker_info()
        reader = Reader(self.rank, self.world_size, *((info.id, info.num_workers) if info else ()))
        epoch = int(self.epoch.value)
        start, lead = 0, False
        resumed_epoch, trained = self.resume_at[:]
        if resumed_epoch == epoch and trained:
            counts = self.batch_counts(epoch, reader.world_size, reader.workers)[reader.rank]
            skip, leads = resume_point(counts, self.handoff, trained)
            start, lead = int(skip[reader.worker]), bool(leads[reader.worker])
        batches = self._batches(reader, epoch, start, info.id if info else None)
        if lead:
            yield []
        if self.handoff == 1:
            yield from batches
            return
        size = self.handoff - start % self.handoff
        while handoff := list(itertools.islice(batches, size)):
            yield handoff
            size = self.handoff

    def _batches(
        self, reader: Reader, epoch: int, start: int, worker: int | None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Carry out ``reader``'s requests of ``epoch`` from its batch ``start`` on."""
        slots = self._slots(worker)
        carry: Fetch | None = None  # cells kept from the last fetch, copied out of its shards
        keys = (self.max_cache_size, self.strict, self.reads_ahead, self.read_ahead_bytes)
        # a worker's read-ahead copies nothing (every core gathers); the training process's
        # copies, on the core the reader thread leaves it (docs/benchmarks.md, issue 24)
        copies = worker is None
        with OpenShards(self.cells, self.blocks, self.checked, *keys, copies) as shards:
            for request in self.requests(epoch, reader, start):
                fetch = None  # unmaps the last fetch's closed shards before this one maps
                shards.read_ahead(request.read_ahead)
                fetch = shards.read(request.blocks)
                if carry is not None:
                    fetch = carry.concat(fetch)
                for rows in request.batches:
                    yield fetch.dense_batch(rows) if self.dense else fetch.batch(rows, slots)
                carry = fetch.take(request.carry).copied() if len(request.carry) else None

    def _slots(self, worker: int | None) -> WorkerSlots | None:
        """Where this pass writes batches: worker ``worker``'s ring slots if it has any (freed
        first: batches of an abandoned pass are never read), else new arrays (None)."""
        if self.ring is None or worker is None:
            return None
        self.ring.reset(worker)
        return WorkerSlots(self.ring, worker)


def resume_point(counts: np.ndarray, handoff: int, trained: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each worker of a rank restarts after the rank trained its first ``trained`` batches
    of an epoch: (batches each worker leaves out, (workers,) int; whether it first sends an empty
    list, (workers,) bool). ``counts`` (workers,): batches each worker yields in the epoch.

    A DataLoader hands on its workers' lists (of ``handoff`` batches, a worker's last one
    shorter) in turn, worker 0 first, passing over a worker that has none left. In the round the
    run stopped in, the workers before the one it stopped at had their lists trained: they send
    an empty list first, so the resumed pass starts with the rest of that one's list.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if not 0 <= trained <= counts.sum():
        raise ValueError(f"{trained} batches trained, but the epoch has {counts.sum()}")
    skip = np.zeros_like(counts)
    lead = np.zeros(len(counts), dtype=bool)
    left = trained
    for round_ in itertools.count():
        if not left:
            break
        lead[:] = False  # the lists of the rounds before were all trained
        for worker in range(len(counts)):
            size = int(np.clip(counts[worker] - round_ * handoff, 0, handoff))  # its list's
            taken = min(size, left)
            skip[worker] += taken
            left -= taken
            lead[worker] = 0 < size == taken
            if not left:
                break
    lead &= (skip < counts) & (len(counts) > 1)  # one with nothing left (or alone) sends none
    return skip, lead


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
    """A DataLoader over ``dataset`` as it delivers here (its :class:`ShardBatches` variant with
    this loader's ``dense``, ``handoff`` and ``ring``): tells it the epoch before each pass and
    hands batches from workers through the :class:`SlotRing`.

    ``epoch_of()`` returns the trainer's current epoch; with persistent workers the new value
    reaches them through shared memory before they restart their iterators. ``slot_bytes``
    sizes the ring's slots (a batch that does not fit is sent by value). Workers hand batches
    over ``batches_per_handoff`` at a time: one inter-process message, and its per-message cost
    (~1.5 ms of a worker's time here), per handoff instead of per batch. ``reader_thread``: with
    no workers, read batches in a background thread (:func:`read_ahead`). ``trains_on_cpu``:
    with no workers, batches are read dense (:meth:`Fetch.dense_batch`).

    Resumable in the middle of an epoch (Lightning's ``state_dict``/``load_state_dict`` of a
    loader, kept in its checkpoints): ``trained_of()`` returns the batches of the current epoch
    trained so far on this rank; a loader given that state leaves them out when it next reads
    that epoch (``ShardBatches.resume_at``). ``drawn_before_of()``: whether the run this process
    resumes had made this loader's first pass before its checkpoint (see
    :meth:`_seed_drawn_apart`).
    """

    def __init__(
        self,
        dataset: ShardBatches,
        epoch_of: Callable[[], int],
        slot_bytes: int,
        trained_of: Callable[[], int] = lambda: 0,
        drawn_before_of: Callable[[], bool] = lambda: False,
        reader_thread: bool = False,
        trains_on_cpu: bool = False,
        batches_per_handoff: int = 1,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        **kwargs,
    ):
        handoff = batches_per_handoff if num_workers else 1
        # queued handoffs + the one being received, a batch each; + the one being densified
        slots = ((prefetch_factor or 2) + 1) * handoff + 1
        delivered = replace(
            dataset,
            # no process boundary and no device copy to keep small: read straight into dense X
            dense=trains_on_cpu and not num_workers,
            handoff=handoff,
            ring=SlotRing(num_workers, slots, slot_bytes) if num_workers else None,
        )
        super().__init__(
            delivered,
            batch_size=None,
            collate_fn=_as_is,
            worker_init_fn=ignore_job_signals,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            **kwargs,
        )
        self.epoch_of = epoch_of
        self.trained_of = trained_of
        self.drawn_before_of = drawn_before_of
        self._iterated = False
        self.reader_thread = reader_thread and not num_workers

    def state_dict(self) -> dict[str, int]:
        """Where training is: ``{"epoch": e, "batches": n, ...}``, n batches of epoch e (from 0)
        trained on this rank (DDP ranks step in lockstep: the same n on every rank), and the
        readers that split them (ranks, workers, batches per handoff)."""
        return {
            "epoch": int(self.epoch_of()),
            "batches": int(self.trained_of()),
            **self._layout(),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Leave out the first ``state["batches"]`` batches when epoch ``state["epoch"]`` is
        read next (a checkpoint written in the middle of it). They are this loader's readers'
        shares of them only with the same ranks, workers and handoff: else a warning says that
        this epoch may repeat or miss some cells."""
        saved = {key: state[key] for key in self._layout() if key in state}
        if state["batches"] and saved != self._layout():
            log.warning(
                "resumed in the middle of epoch %d with other loader readers (%s, then %s): the "
                "rest of the epoch is left out as these readers split it, so some of its cells "
                "may be read twice or not at all; resume with the same trainer.devices and "
                "loader.num_workers (set it: null follows the CPUs and, on 2 cores or fewer, "
                "the page cache) to read each cell once",
                int(state["epoch"]) + 1,
                saved,
                self._layout(),
            )
        self.dataset.resume_at[:] = [int(state["epoch"]), int(state["batches"])]

    def _layout(self) -> dict[str, int]:
        """How this loader's rank splits its batches: its ranks, workers, batches per handoff."""
        return {
            "world_size": self.dataset.world_size,
            "workers": self.num_workers,
            "handoff": self.dataset.handoff,
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch_of()
        self.dataset.epoch.value = epoch
        if self.dataset.resume_at[0] != epoch:  # a resumed epoch is left out of once only
            self.dataset.resume_at[:] = [-1, 0]
        resumed_pass = self.dataset.resume_at[0] == epoch
        if self.reader_thread:  # the dataset itself: DataLoader's per-batch machinery costs more
            batches = read_ahead(iter(self.dataset), depth=2)  # than the read (see read_ahead)
        else:
            drawn = resumed_pass or (
                self.persistent_workers and not self._iterated and self.drawn_before_of()
            )
            with job_signals_held(), self._seed_drawn_apart(drawn):  # workers start here
                batches = super().__iter__()
            self._iterated = True
        for item in batches:  # a batch, or a worker's handoff of several
            for batch in item if isinstance(item, list) else [item]:
                yield self._receive(batch)

    @contextlib.contextmanager
    def _seed_drawn_apart(self, apart: bool) -> Iterator[None]:
        """A new DataLoader iterator draws its workers' base seed from torch's global RNG (one
        number), once per pass, or once per run with persistent workers. Where the run this
        process resumes had drawn it before its checkpoint (whose RNG states are restored),
        ``apart``: draw it from a generator of its own, so the training's random streams go on
        as in the uninterrupted run. (Our batches do not depend on that seed.)"""
        if not apart:
            yield
            return
        self.generator = torch.Generator().manual_seed(0)
        try:
            yield
        finally:
            self.generator = None

    def _receive(self, batch: dict[str, np.ndarray]) -> dict:
        """numpy -> torch without copies; a slot descriptor -> views of the slot + its release."""
        received = {key: torch.as_tensor(value) for key, value in batch.items() if key != X_SLOT}
        if X_SLOT in batch:
            ring, descriptor = self.dataset.ring, batch[X_SLOT]
            received[X_DATA], received[X_INDICES], received[X_INDPTR] = ring.open(descriptor)
            received[X_RELEASE] = functools.partial(ring.release, descriptor)
        return received
