"""Numbers as people read them: one fixed format per kind of metric, so that a column never mixes
``1.324e+04`` with ``2980``.

- losses (negative ELBO, reconstruction loss: nats per cell): one decimal, thousands separators
  (``1,671.3``);
- scores (0-1: integration scores, KL weight): three decimals (``0.853``);
- rates (training cells/s) and cell counts: whole numbers with separators (``13,240``);
- times: seconds, minutes or hours by size (``16.5 s``, ``12.3 min``, ``2.1 h``);
- anything else: 4 significant digits, a whole number with separators from 1,000 up (never an
  exponent).

:func:`formatter` picks the format of a metric key; :func:`column_formats` that of each column of
a table; sweep.report.render.markdown_table applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from sweep.metric_names import (
    BASELINE_PREFIX,
    BATCH,
    BIO,
    CELLS_CONVERGENCE_PREFIX,
    CELLS_SEEN,
    ELBO_VALIDATION,
    KL_WEIGHT,
    RECONSTRUCTION_VALIDATION,
    TOTAL,
    TRAIN_CELLS_PER_S,
    TRAIN_TIME,
    WALL_TIME,
)

Format = Callable[[float], str]

#: metric keys (and their PCA baseline's) by kind; keys ending in ``_train`` are losses too
LOSSES = {ELBO_VALIDATION, RECONSTRUCTION_VALIDATION, "elbo_train", "reconstruction_loss_train"}
SCORES = {BIO, BATCH, TOTAL, KL_WEIGHT}
RATES = {TRAIN_CELLS_PER_S}
TIMES = {TRAIN_TIME, WALL_TIME, "duration_s", "epoch_time_s"}
COUNTS = {CELLS_SEEN, "cells_train", "cells_validation", "evaluation_cells"}


def missing(value) -> bool:
    """Whether ``value`` is absent (None or NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def loss(value: float) -> str:
    """A loss to one decimal: ``1,671.3``."""
    return f"{value:,.1f}"


def score(value: float) -> str:
    """A 0-1 score to three decimals: ``0.853``."""
    return f"{value:.3f}"


def whole(value: float) -> str:
    """A rate or a count as a whole number: ``13,240``."""
    return f"{value:,.0f}"


#: a time's units: name, seconds in one, and the size from which a time is given in it
TIME_UNITS = (("h", 3600, 7200), ("min", 60, 120), ("s", 1, 0))


def counted(n: int, noun: str) -> str:
    """A count and its noun: ``1 epoch``, ``3 epochs``, ``1,000 cells``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float, unit: str | None = None) -> str:
    """A time by its size: ``16.5 s`` under two minutes, ``12.3 min`` under two hours, else
    ``2.1 h``; in ``unit`` (``s``, ``min``, ``h``) when given."""
    name, size = next(
        (n, size) for n, size, start in TIME_UNITS if (n == unit if unit else abs(seconds) >= start)
    )
    value = seconds / size
    return f"{value:.0f} {name}" if name == "s" and abs(value) >= 100 else f"{value:.1f} {name}"


def durations(values: Iterable[float]) -> Format:
    """One unit for a column of times, the one the median time takes, so that a column never mixes
    ``92.8 s`` with ``2.1 min``."""
    present = [v for v in values if not missing(v)]
    if not present:
        return duration
    median = sorted(abs(v) for v in present)[len(present) // 2]
    unit = next(n for n, _, start in TIME_UNITS if median >= start)
    return lambda seconds: duration(seconds, unit)


def general(value: float, digits: int = 4) -> str:
    """``digits`` significant digits, a whole number with separators from 1,000 up (never an
    exponent for a large number): ``0.1235``, ``2,980``, ``13,240``."""
    if abs(value) >= 10 ** min(digits, 3):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def formatter(key: str) -> Format | None:
    """The format of a metric key (a PCA baseline's like its metric's); None for a key of no
    known kind."""
    key = key.removeprefix(BASELINE_PREFIX)
    if key in LOSSES:
        return loss
    if key in SCORES:
        return score
    if key in RATES:
        return whole
    if key in TIMES:
        return duration
    if key in COUNTS or key.startswith(CELLS_CONVERGENCE_PREFIX):
        return whole
    return None


def column_formats(keys: Iterable[str], names: dict[str, str] | None = None) -> dict[str, Format]:
    """Column name -> format, for the columns of a table whose metric keys are ``keys``;
    ``names`` renames a key to the column title the table shows."""
    names = names or {}
    return {names.get(k, k): f for k in keys if (f := formatter(k)) is not None}


def signed_change(value: float, fmt: Format) -> str:
    """A difference with its sign, in ``fmt``: ``+0.056``, ``-153.3``."""
    text = fmt(abs(value))
    return ("-" if value < 0 else "+") + text
