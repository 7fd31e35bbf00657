"""The headline metrics of metrics.json: their names in words, their units and direction.

``validation negative ELBO`` is scvi-tools' ``elbo_validation``: the loss, the negative ELBO per
cell (lower is better). The keys stay as metrics.json and history.csv write them; only what a
reader sees is named here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweep.metric_names import (
    BATCH,
    BIO,
    CELLS_SEEN,
    CELLS_VALIDATION,
    ELBO_VALIDATION,
    EPOCH,
    KL_WEIGHT,
    RECONSTRUCTION_VALIDATION,
    TOTAL,
    TRAIN_CELLS_PER_S,
    TRAIN_TIME,
)

SCORE_UNIT = "score 0-1"


@dataclass(frozen=True)
class Metric:
    """A headline metric of metrics.json and how to judge it."""

    key: str
    label: str
    unit: str  # what one unit of the value is: "per cell", "cells/s", "score 0-1"
    higher_is_better: bool
    relative: bool  # state the change in % of the reference (losses, rates) or as a difference
    #: metrics.json key of the number of cells the metric is measured on, where it depends on
    #: the job's settings: jobs measured on different numbers of cells are not compared
    cells: str | None = None


HEADLINE = (
    Metric(
        ELBO_VALIDATION,
        "validation negative ELBO",
        "per cell",
        higher_is_better=False,
        relative=True,
        cells=CELLS_VALIDATION,
    ),
    Metric(
        RECONSTRUCTION_VALIDATION,
        "validation reconstruction loss",
        "per cell",
        higher_is_better=False,
        relative=True,
        cells=CELLS_VALIDATION,
    ),
    Metric(TRAIN_CELLS_PER_S, "training cells/s", "cells/s", higher_is_better=True, relative=True),
    Metric(BIO, "bio conservation", SCORE_UNIT, higher_is_better=True, relative=False),
    Metric(BATCH, "batch correction", SCORE_UNIT, higher_is_better=True, relative=False),
    Metric(TOTAL, "integration total", SCORE_UNIT, higher_is_better=True, relative=False),
)
#: the integration aggregates, each with a PCA baseline (``pca_<key>``) in metrics.json
AGGREGATES = tuple(m for m in HEADLINE if m.key in (BIO, BATCH, TOTAL))

#: axis labels of the other per-epoch and per-job columns the figures show
AXIS_LABELS = {
    EPOCH: "epoch",
    CELLS_SEEN: "training cells seen",
    KL_WEIGHT: "KL weight (0-1)",
    TRAIN_TIME: "training time (s)",
}


def label(key: str) -> str:
    """A metric key in words (``elbo_validation`` -> ``validation negative ELBO``); unknown keys
    as they are."""
    return next((m.label for m in HEADLINE if m.key == key), key)


def axis_label(key: str) -> str:
    """An axis label with its unit: ``validation negative ELBO (per cell)``, ``training
    cells/s``, ``bio conservation (score 0-1)``; unknown keys as they are."""
    metric = next((m for m in HEADLINE if m.key == key), None)
    if metric is None:
        return AXIS_LABELS.get(key, key)
    return metric.label if metric.unit in metric.label else f"{metric.label} ({metric.unit})"
