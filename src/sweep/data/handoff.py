"""Hand batches from DataLoader workers to the main process through shared memory, unpickled.

A DataLoader worker normally pickles each batch through a pipe, or copies each tensor into a new
shared-memory segment: both cost more than reading the batch. :class:`SlotRing` is one shared
buffer allocated before the workers start, cut into ``slots_per_worker`` slots per worker. A
worker writes a batch's CSR arrays straight into a free slot of its own and sends only a
descriptor; the main process views the arrays in place and releases the slot once the batch is
densified. When no slot is free, or a batch does not fit, the batch travels the ordinary way:
the ring only ever speeds up.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch

#: dtypes a slot can carry, by code (numpy, and the same in torch)
DTYPES = (np.int16, np.int32, np.int64, np.float32)
TORCH_DTYPES = (torch.int16, torch.int32, torch.int64, torch.float32)
ALIGN = 64  # bytes; each array in a slot starts on this boundary


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class SlotRing:
    """``n_workers x slots_per_worker`` slots of ``slot_bytes`` in one shared uint8 tensor.

    ``busy[s]`` (shared, one byte per slot) is set by the worker that fills slot ``s`` and cleared
    by the main process when it is done with it. Worker ``w`` owns slots
    ``w * slots_per_worker ... (w + 1) * slots_per_worker - 1``.
    """

    def __init__(self, n_workers: int, slots_per_worker: int, slot_bytes: int):
        self.slots_per_worker = slots_per_worker
        self.slot_bytes = _aligned(slot_bytes)
        n_slots = n_workers * slots_per_worker
        self.buffer = torch.empty(n_slots * self.slot_bytes, dtype=torch.uint8).share_memory_()
        self.busy = multiprocessing.RawArray("b", n_slots)

    def _own(self, worker: int) -> range:
        return range(worker * self.slots_per_worker, (worker + 1) * self.slots_per_worker)

    def reset(self, worker: int) -> None:
        """Free all of ``worker``'s slots (a new pass: batches of the last one are abandoned)."""
        for slot in self._own(worker):
            self.busy[slot] = 0

    def reserve(
        self, worker: int, layout: list[tuple[type, int]]
    ) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """Claim a free slot of ``worker`` for 1-d arrays of ``layout`` [(dtype, length), ...].

        Returns the slot's descriptor (int64 [slot, (dtype code, length) per array]) and numpy
        views to fill, or None when no slot is free or the arrays do not fit (the caller then
        sends them by value).
        """
        sizes = [_aligned(length * np.dtype(dtype).itemsize) for dtype, length in layout]
        if sum(sizes) > self.slot_bytes:
            return None
        slot = next((s for s in self._own(worker) if not self.busy[s]), None)
        if slot is None:
            return None
        self.busy[slot] = 1
        memory = self.buffer.numpy()
        offset = slot * self.slot_bytes
        descriptor, views = [slot], []
        for (dtype, length), size in zip(layout, sizes, strict=True):
            views.append(memory[offset : offset + size].view(dtype)[:length])
            descriptor += [DTYPES.index(np.dtype(dtype).type), length]
            offset += size
        return np.array(descriptor, dtype=np.int64), views

    def open(self, descriptor: np.ndarray) -> list[torch.Tensor]:
        """Tensors viewing the arrays of a filled slot (valid until :meth:`release`)."""
        slot = int(descriptor[0])
        offset = slot * self.slot_bytes
        views = []
        for code, length in descriptor[1:].reshape(-1, 2).tolist():
            nbytes = length * np.dtype(DTYPES[code]).itemsize
            views.append(self.buffer[offset : offset + nbytes].view(TORCH_DTYPES[code]))
            offset += _aligned(nbytes)
        return views

    def release(self, descriptor: np.ndarray) -> None:
        self.busy[int(descriptor[0])] = 0


class WorkerSlots:
    """One worker's view of a :class:`SlotRing`: reserve a slot for a batch, or give it back."""

    def __init__(self, ring: SlotRing, worker: int):
        self.ring, self.worker = ring, worker

    def reserve(self, layout: list[tuple[type, int]]) -> tuple[np.ndarray, list[np.ndarray]] | None:
        return self.ring.reserve(self.worker, layout)

    def release(self, descriptor: np.ndarray) -> None:
        self.ring.release(descriptor)
