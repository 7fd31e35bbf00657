"""Integration scoring as training goes: a Lightning callback that scores the latent space at
listed epochs (sweep.evaluation.scib), lays the cells out at the last one
(sweep.evaluation.embedding), and keeps every scoring for integration.csv.
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
from lightning.pytorch import Callback

from sweep.evaluation.cells import EvaluationCells
from sweep.evaluation.compile_cache import compiles_now
from sweep.evaluation.embedding import umap_layout
from sweep.evaluation.latent import latent
from sweep.evaluation.scib import (
    AGGREGATES,
    NEIGHBORS,
    batch_not_applicable,
    score,
    skipped_metrics,
)
from sweep.metric_names import BASELINE_PREFIX, BATCH, BIO, CELLS_SEEN, EPOCH, GLOBAL_STEP
from sweep.training.epoch_stats import EpochStats
from sweep.training.rng import rng_untouched

log = logging.getLogger(__name__)


def position(at: dict) -> str:
    """Where training was (``at``: GLOBAL_STEP, EPOCH, CELLS_SEEN) in words, for the log."""
    if float(at[EPOCH]).is_integer():
        return f"epoch {int(at[EPOCH])}"
    return f"step {at[GLOBAL_STEP]} ({at[CELLS_SEEN]:,} cells seen, epoch {at[EPOCH]:.2f})"


class IntegrationScoring(Callback):
    """Scores the latent space at the end of the listed epochs (1-based) and of the last one,
    and lays the cells out in 2-D at the last one (``layout``, :func:`umap_layout`); scores at
    other moments through :meth:`evaluate` (every N steps: sweep.training.step_evaluation).

    Each scoring is kept in ``records``, with where training was (GLOBAL_STEP, EPOCH, fractional
    between epoch ends, CELLS_SEEN from ``counter``), the largest neighbourhood used (cells) and
    the metrics skipped ("name: why; ..."); epoch-end scores are also logged per epoch
    (history.csv, W&B). ``seed``: the UMAP layout's.
    """

    def __init__(
        self, cells: EvaluationCells, epochs: list[int], counter: EpochStats, seed: int = 0
    ):
        self.cells = cells
        self.epochs = set(epochs)
        self.counter = counter
        self.seed = seed
        self.layout: pd.DataFrame | None = None
        self.records: list[dict] = []
        self.baseline_scores: dict[str, float] = {}
        self.neighbors = min(NEIGHBORS, len(cells.rows))
        self.not_applicable = batch_not_applicable(cells.obs)
        skipped = (
            {"batch correction": self.not_applicable}
            if self.not_applicable
            else skipped_metrics(cells.obs)
        )
        self.skipped = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        sizes = cells.batch_sizes()
        log.info(
            "evaluation cells: %d of %d evaluation batches (%d to %d cells a batch, median %g); %s",
            len(cells.rows),
            len(sizes),
            sizes.min(),
            sizes.max(),
            sizes.median(),
            cells.choice,
        )
        if self.neighbors < NEIGHBORS or self.skipped:
            log.warning(
                "evaluation on %d cells: neighbourhoods of at most %d cells (scib-metrics: %d)%s",
                len(cells.rows),
                self.neighbors,
                NEIGHBORS,
                f"; skipped {self.skipped}" if self.skipped else "",
            )

    @property
    def state_key(self) -> str:
        """Its key in a checkpoint: its name before it was renamed, so a checkpoint written then
        still restores its scores."""
        return "IntegrationCheckpoints"

    def due(self, trainer) -> bool:
        """Whether the current epoch's end is scored: a listed epoch, or the last."""
        epoch = trainer.current_epoch + 1
        return epoch in self.epochs or epoch == trainer.max_epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.due(trainer) or not trainer.is_global_zero:  # with DDP, rank 0 scores
            return
        epoch = trainer.current_epoch + 1
        at = {GLOBAL_STEP: trainer.global_step, EPOCH: epoch, CELLS_SEEN: self.counter.cells_seen}
        scores = self.evaluate(pl_module, at, layout=epoch == trainer.max_epochs)
        for name in AGGREGATES.values():
            if not math.isnan(scores[name]):  # NaN: not applicable (one evaluation batch)
                pl_module.log(name, scores[name], on_epoch=True)

    def evaluate(self, pl_module, at: dict, layout: bool = False) -> dict[str, float]:
        """Score the latent space now (one process: DDP's rank 0), and with ``layout`` lay the
        cells out in 2-D; ``at``: where training is (GLOBAL_STEP, EPOCH, CELLS_SEEN), kept with
        the scores in ``records``. The scores: :func:`score`'s."""
        started = time.perf_counter()
        # scvi-tools samples z even in eval mode (torch); scib-metrics, sklearn and umap may draw
        # from numpy's global RNG: none of it may shift the training's random streams
        with rng_untouched():
            embedding = latent(pl_module.module, self.cells)
            if self.baseline_scores:  # the baseline does not change during training: scored once
                scores = {**score(self.cells, embedding, baseline=False), **self.baseline_scores}
            else:
                log.info(
                    "scoring %s with the PCA baseline%s",
                    position(at),
                    ": scib-metrics compiles its kernels (JAX, numba) first, 45 s to 5 minutes "
                    "on a CPU, while the progress bar stands still (later processes load them)"
                    if compiles_now()  # this process's first scoring, no kept kernels found
                    else "",
                )
                scores = score(self.cells, embedding)
                self.baseline_scores = {
                    k: v for k, v in scores.items() if k.startswith(BASELINE_PREFIX)
                }
            if layout:
                laid_out = time.perf_counter()
                self.layout = umap_layout(self.cells, embedding, self.seed)
                log.info(
                    "%s: UMAP of the %d evaluation cells (scVI, PCA baseline), %.1f s",
                    position(at),
                    len(self.layout),
                    time.perf_counter() - laid_out,
                )
        self.records.append(
            {
                **at,
                **scores,
                "evaluation_neighbors": self.neighbors,
                "evaluation_skipped": self.skipped,
            }
        )
        batch = (
            "batch correction not applicable"
            if self.not_applicable
            else f"batch correction {scores[BATCH]:.3f}"
        )
        log.info(
            "%s: bio conservation %.3f, %s (baseline %s), %.1f s",
            position(at),
            scores[BIO],
            batch,
            ", ".join(
                f"{scores[BASELINE_PREFIX + k]:.3f}"
                for k in ((BIO,) if self.not_applicable else (BIO, BATCH))
            ),
            time.perf_counter() - started,
        )
        return scores

    @property
    def final(self) -> dict:
        """The last evaluation's record, without where it was taken (for metrics.json)."""
        if not self.records:
            return {}
        where = (EPOCH, GLOBAL_STEP, CELLS_SEEN)
        return {k: v for k, v in self.records[-1].items() if k not in where}

    def state_dict(self) -> dict:
        """What a resumed run needs (see sweep.training.checkpoint): the scores so far."""
        return {"records": self.records, "baseline_scores": self.baseline_scores}

    def load_state_dict(self, state: dict) -> None:
        self.records, self.baseline_scores = state["records"], state["baseline_scores"]
