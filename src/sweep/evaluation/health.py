"""A finished run's health: the checks it fails, judged as training ends, kept in metrics.json
(``health``) and said in the log, the run's page and the multirun report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweep.metric_names import (
    BASELINE_PREFIX,
    BATCH,
    BELOW_BASELINE,
    BIO,
    LOSS_CHANGE,
    MIN_BATCH_CELLS,
    N_BATCH,
    SMALL_BATCHES,
    SMALLEST_BATCHES,
    STILL_FALLING,
    TOTAL,
    WARMUP,
)

#: the aggregate integration scores -> their words
AGGREGATE_WORDS = {BIO: "bio conservation", BATCH: "batch correction", TOTAL: "total"}
#: the validation loss still falls by more than this fraction an epoch at the end: not converged
FALLING_PER_EPOCH = 0.01
#: a batch category with fewer training cells than this is too small to learn its batch effect
#: from: scVI learns each category's decoder weights from that category's cells only. A rule of
#: thumb (a tenth of a 1,024-cell minibatch), named so that the report can say it
SMALL_BATCH_CELLS = 100


def last_epoch_change(values: pd.Series) -> float | None:
    """The relative change of ``values`` (one per epoch) in the last epoch,
    (last - previous) / |previous| (negative: falling); None with fewer than two epochs."""
    if len(values) < 2:
        return None
    previous, last = float(values.iloc[-2]), float(values.iloc[-1])
    return (last - previous) / max(abs(previous), 1e-12)


def batch_category_sizes(cells: np.ndarray, names: list[str]) -> dict:
    """metrics.json's batch category sizes from ``cells`` (n_batch,), the training cells of each
    category named in ``names``: the smallest count, how many are below SMALL_BATCH_CELLS, and
    the three smallest of those (name -> cells)."""
    small = [i for i in np.argsort(cells, kind="stable") if cells[i] < SMALL_BATCH_CELLS]
    return {
        MIN_BATCH_CELLS: int(cells.min()),
        SMALL_BATCHES: len(small),
        SMALLEST_BATCHES: {names[i]: int(cells[i]) for i in small[:3]},
    }


def health(metrics: dict, warmup_unfinished: str | None) -> dict[str, str]:
    """The checks a finished run fails -> what to tell its reader: an unfinished KL warm-up
    (``warmup_unfinished``, sweep.training.kl_warmup.KlWarmupWatch's warning), a validation loss
    still falling by more than FALLING_PER_EPOCH, scVI below the PCA baseline on an aggregate score,
    batch categories below SMALL_BATCH_CELLS training cells. ``metrics``: metrics.json's."""
    findings = {WARMUP: warmup_unfinished} if warmup_unfinished else {}
    change = metrics.get(LOSS_CHANGE)
    if change is not None and -change > FALLING_PER_EPOCH:
        findings[STILL_FALLING] = (
            f"the validation loss (negative ELBO) was still falling by {-change:.1%} an epoch at "
            f"the end (more than {FALLING_PER_EPOCH:.0%}): the model has not converged, train "
            "longer (trainer.max_epochs)"
        )
    below = [
        f"{words} ({metrics[key]:.3f} vs {metrics[BASELINE_PREFIX + key]:.3f})"
        for key, words in AGGREGATE_WORDS.items()
        if metrics.get(key) is not None
        and metrics.get(BASELINE_PREFIX + key) is not None
        and metrics[key] < metrics[BASELINE_PREFIX + key]
    ]
    if below:
        findings[BELOW_BASELINE] = (
            f"scVI scored below the unintegrated PCA baseline on {', '.join(below)}"
        )
    if metrics.get(SMALL_BATCHES):
        smallest = "; ".join(f"{k}: {v} cells" for k, v in metrics[SMALLEST_BATCHES].items())
        findings[SMALL_BATCHES] = (
            f"{metrics[SMALL_BATCHES]} of {metrics[N_BATCH]} batch categories have fewer than "
            f"{SMALL_BATCH_CELLS} training cells, too few to learn their batch effect from "
            f"(smallest: {smallest}); choose a coarser batch group"
        )
    return findings
