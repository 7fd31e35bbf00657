"""Progress inside an epoch, for epochs of millions of cells (a Census epoch is ~43,000 steps).

On a terminal a bar over the epoch's steps shows cells/s, the training loss and the time left in
the epoch and in the run; where stderr is not a terminal (a SLURM job's log file) a log line says
the same every ``trainer.progress_log_every_s`` seconds and at each epoch's end. Both go with
``trainer.enable_progress_bar`` (false: quiet). Only the process that writes the run folder
(DDP's rank 0) shows them; cells are counted on it and scaled by the number of ranks.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from lightning.pytorch.callbacks import ProgressBar
from scvi import REGISTRY_KEYS
from tqdm import tqdm

log = logging.getLogger(__name__)

#: seconds between refreshes of the bar's figures (reading the loss waits for the device)
REFRESH_S = 0.5


def duration(seconds: float) -> str:
    """``seconds`` for people: ``45 s``, ``12 min 5 s``, ``3 h 20 min``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class StepProgress(ProgressBar):
    """Lightning's progress bar, replaced: progress over the steps of each epoch.

    Parameters
    ----------
    log_every_s
        Seconds between log lines where stderr is not a terminal (0: at epoch ends only).
    terminal
        Whether to draw a bar (default: whether stderr is a terminal).
    """

    def __init__(self, log_every_s: float, terminal: bool | None = None):
        super().__init__()
        self.log_every_s = log_every_s
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._enabled = True
        self._bar: tqdm | None = None
        self._steps = 0  # steps an epoch of this rank; 0: unknown
        self._started = 0.0  # perf_counter as this process began the current epoch
        self._done = 0  # steps this process trained in the current epoch
        self._cells = 0  # training cells of those steps, all ranks
        self._shown_at = 0.0  # when the figures were last shown

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _showing(self, trainer) -> bool:
        return self._enabled and trainer.is_global_zero

    def on_train_start(self, trainer, pl_module) -> None:
        count = getattr(trainer.datamodule, "train_steps", None)
        self._steps = count(1) if count else 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = self._shown_at = time.perf_counter()
        self._done = self._cells = 0
        if self._showing(trainer) and self.terminal:
            self._bar = tqdm(
                total=self._steps or None,
                desc=f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._done += 1
        self._cells += int(batch[REGISTRY_KEYS.X_KEY].shape[0]) * trainer.world_size
        if not self._showing(trainer):
            return
        if self._bar is not None:
            self._bar.update()
        now = time.perf_counter()
        every = REFRESH_S if self._bar is not None else self.log_every_s
        if every <= 0 or now - self._shown_at < every:
            return
        self._shown_at = now
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        position = batch_idx + 1  # steps of this epoch so far, before a resume too
        if self._bar is not None:
            self._bar.set_postfix_str(self.figures(trainer, position, loss), refresh=False)
        else:
            log.info(
                "epoch %d/%d: step %s, %s",
                trainer.current_epoch + 1,
                trainer.max_epochs,
                f"{position:,}/{self._steps:,}" if self._steps else f"{position:,}",
                self.figures(trainer, position, loss),
            )

    def figures(self, trainer, position: int, loss: float) -> str:
        """Cells/s, the training loss and the time left, in words: the rate is this process's
        in the current epoch; the time left counts training steps only (not validation)."""
        elapsed = time.perf_counter() - self._started
        step_s = elapsed / self._done if self._done else math.nan
        left_epoch = (self._steps - position) * step_s if self._steps else math.nan
        later_epochs = (trainer.max_epochs - trainer.current_epoch - 1) * self._steps * step_s
        return (
            f"{self._cells / max(elapsed, 1e-9):,.0f} cells/s, loss {loss:,.1f}, "
            f"{duration(left_epoch)} left in the epoch, {duration(left_epoch + later_epochs)} "
            "in the run"
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not self._showing(trainer) or self.terminal:
            return
        elapsed = time.perf_counter() - self._started
        step_s = elapsed / self._done if self._done else math.nan
        left = (trainer.max_epochs - trainer.current_epoch - 1) * self._steps * step_s
        log.info(
            "epoch %d/%d trained: %s cells in %s (%s cells/s); %s of training left",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            f"{self._cells:,}",
            duration(elapsed),
            f"{self._cells / max(elapsed, 1e-9):,.0f}",
            duration(left) if self._steps else "?",
        )
