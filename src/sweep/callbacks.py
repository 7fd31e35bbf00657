"""Lightning callbacks that measure a run: training throughput and time per epoch."""

from __future__ import annotations

import time

from lightning.pytorch import Callback
from scvi import REGISTRY_KEYS


class Throughput(Callback):
    """Counts training cells and times each training epoch (validation excluded).

    Logs ``train_cells_per_s`` (cells/s) and ``epoch_time_s`` (s) per epoch; ``cells_seen`` and
    ``train_time_s`` add up over the run.
    """

    def __init__(self):
        self.cells_seen = 0
        self.train_time_s = 0.0
        self._epoch_cells = 0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_cells = 0
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_cells += int(batch[REGISTRY_KEYS.X_KEY].shape[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        self.cells_seen += self._epoch_cells
        self.train_time_s += elapsed
        pl_module.log("epoch_time_s", elapsed, on_epoch=True)
        pl_module.log("train_cells_per_s", self._epoch_cells / max(elapsed, 1e-9), on_epoch=True)
        pl_module.log("train_cells_epoch", float(self._epoch_cells), on_epoch=True)

    @property
    def cells_per_s(self) -> float:
        return self.cells_seen / self.train_time_s if self.train_time_s else 0.0
