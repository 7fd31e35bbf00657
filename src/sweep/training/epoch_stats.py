"""What a run measures of itself as it trains: training cells seen (all DDP ranks), cells/s and
time per epoch, the KL weight and learning rate each epoch trained at."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback
from scvi import REGISTRY_KEYS

from sweep.metric_names import CELLS_SEEN, GLOBAL_STEP, TRAIN_CELLS_PER_S

#: the KL weight as EpochStats logs it (history.csv names it ``kl_weight``: sweep.training.results)
KL_WEIGHT_LOGGED = "kl_weight_epoch"


class EpochStats(Callback):
    """Counts training cells (of all DDP ranks), times each training epoch (validation excluded),
    records KL weight.

    Logs per epoch ``train_cells_per_s`` (cells/s), ``epoch_time_s`` (s), ``lr`` and
    ``kl_weight_epoch``, both as the epoch starts (scvi-tools logs its own ``kl_weight`` per step,
    which leaves gaps in a per-epoch history), and where training is at the epoch's end:
    ``global_step`` and ``cells_seen``. ``cells_seen`` and ``train_time_s`` add up;
    :meth:`cells_so_far` counts in the middle of an epoch too.
    """

    def __init__(self):
        self.cells_seen = 0
        self.train_time_s = 0.0
        self.epoch_rates: list[float] = []  # training cells/s of each epoch
        self._epoch_cells = 0
        self._epoch_start = 0.0
        self._kl_weight = float("nan")
        self._lr = float("nan")
        self._resumed_elapsed: float | None = None  # s of an epoch resumed in its middle
        self._epoch_counted = False  # the current epoch's cells are in cells_seen

    def on_train_start(self, trainer, pl_module) -> None:
        """A run resumed in the middle of an epoch gets no ``on_train_epoch_start``: that
        epoch's clock goes on from the time it had trained."""
        if self._resumed_elapsed is not None:
            self._epoch_start = time.perf_counter() - self._resumed_elapsed
            self._resumed_elapsed = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_cells = 0
        self._epoch_counted = False
        self._epoch_start = time.perf_counter()
        self._kl_weight = float(pl_module.kl_weight)
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_cells += int(batch[REGISTRY_KEYS.X_KEY].shape[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        # with DDP every rank counts its own share: add them up (a no-op on one device)
        self._epoch_cells = int(
            trainer.strategy.reduce(torch.tensor(self._epoch_cells), reduce_op="sum")
        )
        self.cells_seen += self._epoch_cells
        self._epoch_counted = True
        self.train_time_s += elapsed
        self.epoch_rates.append(self._epoch_cells / max(elapsed, 1e-9))
        pl_module.log("epoch_time_s", elapsed, on_epoch=True)
        pl_module.log(TRAIN_CELLS_PER_S, self.epoch_rates[-1], on_epoch=True)
        pl_module.log("train_cells_epoch", float(self._epoch_cells), on_epoch=True)
        pl_module.log(KL_WEIGHT_LOGGED, self._kl_weight, on_epoch=True)
        pl_module.log("lr", self._lr, on_epoch=True)
        pl_module.log(GLOBAL_STEP, float(trainer.global_step), on_epoch=True)
        pl_module.log(CELLS_SEEN, float(self.cells_seen), on_epoch=True)

    def cells_so_far(self, trainer) -> int:
        """Training cells of all DDP ranks so far, those of the current epoch included: a
        collective under DDP (every rank calls it at the same step) until the epoch ends."""
        if self._epoch_counted:
            return self.cells_seen
        epoch = trainer.strategy.reduce(torch.tensor(self._epoch_cells), reduce_op="sum")
        return self.cells_seen + int(epoch)

    def state_dict(self) -> dict:
        """What a resumed run needs (see sweep.training.checkpoint): the totals so far, and the
        current epoch's so far (cells of this rank, s trained, KL weight and lr as it started) for
        a checkpoint written in its middle."""
        return {
            "cells_seen": self.cells_seen,
            "train_time_s": self.train_time_s,
            "epoch_rates": self.epoch_rates,
            "epoch_cells": self._epoch_cells,
            "epoch_elapsed_s": time.perf_counter() - self._epoch_start,
            "epoch_kl_weight": self._kl_weight,
            "epoch_lr": self._lr,
        }

    def load_state_dict(self, state: dict) -> None:
        self.cells_seen, self.train_time_s = state["cells_seen"], state["train_time_s"]
        self.epoch_rates = list(state["epoch_rates"])
        if "epoch_cells" in state:  # not in checkpoints written before mid-epoch ones
            self._epoch_cells = state["epoch_cells"]
            self._resumed_elapsed = state["epoch_elapsed_s"]
            self._kl_weight, self._lr = state["epoch_kl_weight"], state["epoch_lr"]

    @property
    def cells_per_s(self) -> float:
        return self.cells_seen / self.train_time_s if self.train_time_s else 0.0
