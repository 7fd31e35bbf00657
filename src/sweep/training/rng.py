"""The global random streams (torch CPU and CUDA, numpy, Python) of a run: taken into its
checkpoints so a resumed run draws what the uninterrupted one would, and put back after work
that must not move them (scoring)."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


def rng_state() -> dict:
    """torch's (CPU, and every CUDA device's once CUDA is in use), numpy's and Python's global
    RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }


def distributed_rank() -> tuple[int, int]:
    """(this process's rank, the number of ranks) of the DDP job; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rng_states_of_ranks() -> list[dict]:
    """:func:`rng_state` of every DDP rank, gathered (every rank must call it together): the
    ranks' random streams differ (a rank that halves batches draws other numbers of dropout
    values), so a resumed rank takes up its own; [this process's] without DDP."""
    state = rng_state()
    _, world_size = distributed_rank()
    if world_size == 1:
        return [state]
    states: list = [None] * world_size
    torch.distributed.all_gather_object(states, state)
    return states


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` took; CUDA states only where CUDA is in use (checkpoints
    written before they were kept have none)."""
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


@contextmanager
def rng_untouched():
    """Run a block (e.g. scoring) without moving the training's random streams: every global RNG
    state of :func:`rng_state` is restored after it, however it ends."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
