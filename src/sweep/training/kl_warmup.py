"""Whether the KL warm-up reaches its full weight within the run: said before training and after
it, and kept for metrics.json (``kl_warmup_complete``) and the run's health."""

from __future__ import annotations

import logging

from lightning.pytorch import Callback

log = logging.getLogger(__name__)


def planned_steps(trainer) -> float:
    """The training steps a run will take: Lightning's estimate, or, where it has none (it
    returns ``max_steps``, -1, for a loader without a length, as ours), the datamodule's
    count (sweep.data.datamodule.StoreDataModule.train_steps); inf when neither knows."""
    estimate = trainer.estimated_stepping_batches
    if 0 <= estimate < float("inf"):
        return estimate
    count = getattr(trainer.datamodule, "train_steps", None)
    return count(trainer.max_epochs) if count else float("inf")


class KlWarmupWatch(Callback):
    """Says in the log, before training and after it, when the KL warm-up does not reach
    ``max_kl_weight`` by the last training step: the loss is then from an unfinished schedule.

    ``complete`` (None before training ends): whether the last step trained at the full weight;
    ``unfinished``: the end-of-training warning, None when the warm-up finished (run health,
    sweep.evaluation.health, reports it too).
    """

    def __init__(self):
        self.complete: bool | None = None
        self.unfinished: str | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        epochs, steps = pl_module.n_epochs_kl_warmup, pl_module.n_steps_kl_warmup
        if epochs is not None and trainer.max_epochs <= epochs:
            last = pl_module.max_kl_weight * (trainer.max_epochs - 1) / epochs
            self._warn(f"plan.n_epochs_kl_warmup={epochs}", trainer.max_epochs, last, pl_module)
        elif epochs is None and steps is not None:
            planned = planned_steps(trainer)
            if planned < steps:
                last = pl_module.max_kl_weight * planned / steps
                self._warn(f"plan.n_steps_kl_warmup={steps}", trainer.max_epochs, last, pl_module)

    @staticmethod
    def _warn(warmup: str, max_epochs: int, last: float, pl_module) -> None:
        log.warning(
            "the KL warm-up (%s) outlasts trainer.max_epochs=%d: the KL weight will end at %.2f "
            "of %g, and the validation loss (negative ELBO) will be from an unfinished schedule; "
            "train longer or shorten the warm-up (e.g. plan.n_epochs_kl_warmup=%d)",
            warmup,
            max_epochs,
            last,
            pl_module.max_kl_weight,
            max(1, max_epochs // 2),
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        weight = float(pl_module.kl_weight)  # after the epoch's last step
        self.complete = weight >= pl_module.max_kl_weight - 1e-9
        self.unfinished = (
            None
            if self.complete
            else f"the KL warm-up had not finished: the last epoch trained at KL weight "
            f"{weight:.2f} of {pl_module.max_kl_weight:g}"
        )

    def on_train_end(self, trainer, pl_module) -> None:
        if self.unfinished is not None:
            log.warning(self.unfinished)
