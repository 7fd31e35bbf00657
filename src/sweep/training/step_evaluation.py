"""Evaluation in the middle of epochs, for runs whose epochs are long (44M cells: 43,000 steps).

Every ``trainer.validate_every_n_steps`` optimizer steps the validation loss is measured on a
fixed, seeded subsample of the validation cells (``trainer.step_validation_cells``, all of them
when there are fewer): a row of ``steps.csv`` with where training is (global step, fractional
epoch, training cells seen), the loss terms, the KL weight and learning rate. Every
``evaluation.every_n_steps`` steps the latent space is scored as at evaluated epochs
(sweep.training.scoring.IntegrationScoring.evaluate: a row of integration.csv). Both go to W&B as
``steps/<name>`` charted against ``cells_seen`` (Lightning's per-epoch charts stay against
the global step). Neither moves the training's random streams.

Other callbacks read the step-level validation without importing this module: the latest row is
``records[-1]`` on rank 0, ``validated_step`` says at which global step it was taken (on every
rank), :meth:`StepEvaluation.position` says where training is (sweep.study.pruning reports the
rows to an Optuna trial this way).
"""

from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

from sweep.evaluation.cells import ModelCells
from sweep.evaluation.latent import validation_loss
from sweep.evaluation.scib import AGGREGATES
from sweep.metric_names import (
    CELLS_SEEN,
    ELBO_VALIDATION,
    EPOCH,
    GLOBAL_STEP,
    KL_LOCAL_VALIDATION,
    KL_WEIGHT,
    RECONSTRUCTION_VALIDATION,
)
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
    the steps.csv rows, kept in checkpoints; ``validated_step``: the global step of the latest
    validation (every rank knows it; the row is rank 0's).
    """

    #: the loss terms a row holds (per cell, nats: sweep.evaluation.latent.validation_loss)
    LOSSES = (ELBO_VALIDATION, RECONSTRUCTION_VALIDATION, KL_LOCAL_VALIDATION)

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
        self.validated_step: int | None = None
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
        at = self.position(trainer)  # every rank: a collective under DDP
        cells_seen = at[CELLS_SEEN]
        if validate:
            self.validated_step = step
        if not trainer.is_global_zero:  # rank 0 measures for all
            return
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

    def position(self, trainer) -> dict:
        """Where training is now, as a steps.csv row says it.

        Parameters
        ----------
        trainer
            The Lightning trainer; under DDP every rank must call this at the same step (it
            adds up the ranks' cells).

        Returns
        -------
        ``global_step`` (optimizer steps), ``epoch`` (epochs trained, fractional: training cells
        seen / training cells) and ``cells_seen`` (training cells so far, all ranks).
        """
        cells_seen = self.counter.cells_so_far(trainer)
        return {
            GLOBAL_STEP: trainer.global_step,
            EPOCH: cells_seen / self.n_train,
            CELLS_SEEN: cells_seen,
        }

    def takes_rows(self, trainer) -> bool:
        """Whether this fit takes any step-level validation.

        Parameters
        ----------
        trainer
            The Lightning trainer, fitting the store's datamodule for ``max_epochs`` epochs.

        Returns
        -------
        True when the validation is on and its first interval ends within the fit's optimizer
        steps (sweep.data.datamodule.StoreDataModule.train_steps: Lightning cannot count them).
        """
        if self.cells is None:
            return False
        return self.validate_every <= trainer.datamodule.train_steps(trainer.max_epochs)

    def interval_cells(self, trainer) -> float:
        """Training cells (all DDP ranks) between two step-level validations: about
        ``validate_every`` x the batch size.

        Parameters
        ----------
        trainer
            The Lightning trainer, fitting the store's datamodule.

        Returns
        -------
        The cells, from an epoch's training cells and optimizer steps.
        """
        return self.validate_every * self.n_train / max(trainer.datamodule.train_steps(1), 1)

    def state_dict(self) -> dict:
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.records = list(state["records"])
