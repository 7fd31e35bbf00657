"""Evaluation in the middle of epochs, for runs whose epochs are long (44M cells: 43,000 steps).

Every ``trainer.validate_every_n_steps`` optimizer steps the validation loss is measured on a
fixed, seeded subsample of the validation cells (``trainer.step_validation_cells``, all of them
when there are fewer): a row of ``steps.csv`` with where training is (global step, fractional
epoch, training cells seen), the loss terms, the KL weight and learning rate. Every
``evaluation.every_n_steps`` steps the latent space is scored as at evaluated epochs
(sweep.training.scoring.IntegrationScoring.evaluate: a row of integration.csv). Both go to W&B as
``steps/<name>`` charted against ``cells_seen`` (Lightning's per-epoch charts stay against
the global step). Neither moves the training's random streams.
"""

from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

from sweep.evaluation.cells import ModelCells
from sweep.evaluation.latent import validation_loss
from sweep.evaluation.scib import AGGREGATES
from sweep.metric_names import CELLS_SEEN, EPOCH, GLOBAL_STEP, KL_WEIGHT
from sweep.training.epoch_stats import EpochStats
from sweep.training.rng import rng_untouched
from sweep.training.scoring import IntegrationScoring

#: W&B key prefix of the step-level values, charted against CELLS_SEEN
WANDB_PREFIX = "steps/"


class StepEvaluation(Callback):
    """Validation loss on ``cells`` every ``validate_every`` optimizer steps, and at the last
    step once a row was taken (so the curve reaches the end); scoring through ``scoring`` every
    ``score_every`` steps (not where the epoch-end scoring follows). 0 (or None): off.

    ``counter`` counts the training cells; ``n_train``: training cells an epoch. ``records``:
    the steps.csv rows, kept in checkpoints.
    """

    def __init__(
        self,
        cells: ModelCells | None,
        validate_every: int,
        scoring: IntegrationScoring | None,
        score_every: int,
        counter: EpochStats,
        n_train: int,
    ):
        self.cells = cells if validate_every else None
        self.validate_every = validate_every
        self.scoring = scoring if score_every else None
        self.score_every = score_every
        self.counter = counter
        self.n_train = n_train
        self.records: list[dict] = []
        self._charted: set[str] = set()  # W&B keys defined as charted against CELLS_SEEN

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        last_step = last_batch and trainer.current_epoch + 1 == trainer.max_epochs
        validate = self.cells is not None and (
            step % self.validate_every == 0 or (last_step and step > self.validate_every)
        )
        score = (
            self.scoring is not None
            and step % self.score_every == 0
            and not (last_batch and self.scoring.due(trainer))
        )
        if not (validate or score):
            return
        cells_seen = self.counter.cells_so_far(trainer)  # every rank: a collective under DDP
        if not trainer.is_global_zero:  # rank 0 measures for all
            return
        at = {GLOBAL_STEP: step, EPOCH: cells_seen / self.n_train, CELLS_SEEN: cells_seen}
        logged = {}
        if validate:
            with rng_untouched():  # z is sampled
                losses = validation_loss(pl_module.module, self.cells)
            row = {
                **at,
                **losses,
                KL_WEIGHT: float(pl_module.kl_weight),
                "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            }
            self.records.append(row)
            logged.update(row)
        if score:
            scores = self.scoring.evaluate(pl_module, at)
            logged.update({name: scores[name] for name in AGGREGATES.values()})
        logged = {WANDB_PREFIX + k: v for k, v in logged.items() if k != CELLS_SEEN}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                for key in logged.keys() - self._charted:  # by name: before Lightning's "*"
                    run.define_metric(key, step_metric=CELLS_SEEN)
                self._charted |= logged.keys()
                run.log({CELLS_SEEN: cells_seen, **logged})

    def state_dict(self) -> dict:
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.records = list(state["records"])
