"""When a value settled, in words that do not mistake "never" for "at the end".

A run's ``epochs_to_<tol>_<metric>`` and ``cells_to_<tol>_<metric>`` (sweep.evaluation.convergence)
give the first point from which the value stays within the tolerance of its last value. The last
value is always within the tolerance of itself, so a value still moving at the end "settles" at
the last recorded point: that reads as "converged at 10" when it means "had not settled by the end
(epoch 10)". Here each is compared with the last point the run recorded the value at (steps.csv
for the validation loss where the run measured it between epoch ends, integration.csv for the
scores, else history.csv), and a value measured once is "not known".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweep.metric_names import (
    CELLS_CONVERGENCE_PREFIX,
    CELLS_SEEN,
    CONVERGENCE_PREFIX,
    ELBO_VALIDATION,
    EPOCH,
    EPOCHS,
)
from sweep.report.headline import label
from sweep.report.numbers import general
from sweep.report.sweep_folder import Sweep

SETTLED, NEVER, UNKNOWN = "settled", "never", "unknown"


def record(
    metric: str,
    history: pd.DataFrame | None,
    steps: pd.DataFrame | None = None,
    scorings: pd.DataFrame | None = None,
) -> pd.DataFrame | None:
    """The rows a run recorded ``metric`` at, in training order: the table its convergence was
    measured on (steps.csv for the validation loss, integration.csv for scores, else
    history.csv); None when no table has it."""
    finer = steps if metric == ELBO_VALIDATION else scorings
    for table in (finer, history):
        if table is not None and len(table) and metric in table:
            rows = table.dropna(subset=[metric])
            if len(rows):
                return rows
    return None


def state(value, rows: pd.DataFrame | None, position: str, end: float | None = None) -> str:
    """Whether a convergence value (at ``position``: EPOCH or CELLS_SEEN) means the value
    settled before the last point (SETTLED), only at it (NEVER), or cannot tell (UNKNOWN: one
    point, or no value). ``end``: the last point when ``rows`` are not known (the run's epochs
    or cells seen)."""
    if value is None or pd.isna(value):
        return UNKNOWN
    if rows is not None and position in rows:
        if len(rows) < 2:
            return UNKNOWN
        end = float(rows[position].iloc[-1])
    if end is None:
        return UNKNOWN
    return NEVER if float(value) >= end else SETTLED


def tolerance_words(tolerance: str) -> str:
    """``1pct`` -> ``1%``."""
    return tolerance.replace("pct", "%")


@dataclass(frozen=True)
class Settling:
    """One metric's convergence columns at one tolerance."""

    metric: str
    tolerance: str  # as in the key: "1pct"
    epochs: str | None  # the epochs_to_ column
    cells: str | None  # the cells_to_ column


def settlings(columns) -> list[Settling]:
    """The convergence columns among ``columns``, one Settling per (tolerance, metric), in
    order."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for column in columns:
        for prefix, kind in ((CONVERGENCE_PREFIX, "epochs"), (CELLS_CONVERGENCE_PREFIX, "cells")):
            if column.startswith(prefix):
                tolerance, _, metric = column.removeprefix(prefix).partition("_")
                found.setdefault((tolerance, metric), {})[kind] = column
    return [
        Settling(metric, tolerance, kinds.get("epochs"), kinds.get("cells"))
        for (tolerance, metric), kinds in found.items()
    ]


def span(values: pd.Series, fmt=lambda v: general(v, 3)) -> str:
    """``5`` or ``median 6 (range 5-9)``."""
    low, high = fmt(values.min()), fmt(values.max())
    return low if low == high else f"{fmt(values.median())} (median; range {low}-{high})"


def settled_words(sweep: Sweep, item: Settling) -> str | None:
    """Over the complete jobs, in words: how many settled and from when, and which had not
    settled by the end (or cannot tell); None without the metric."""
    complete = sweep.complete.set_index("job")
    column = item.epochs or item.cells
    if column is None or complete.empty or complete[column].dropna().empty:
        return None
    states, ends = {}, {}
    for job, row in complete.iterrows():
        rows = record(
            item.metric, sweep.histories.get(job), sweep.steps.get(job), sweep.scorings.get(job)
        )
        position = EPOCH if item.epochs else CELLS_SEEN
        fallback = row.get(EPOCHS) if item.epochs else row.get(CELLS_SEEN)
        states[job] = state(row.get(column), rows, position, fallback)
        if rows is not None and EPOCH in rows:
            ends[job] = float(rows[EPOCH].iloc[-1])
        elif pd.notna(row.get(EPOCHS)):
            ends[job] = float(row[EPOCHS])
    settled = [job for job, s in states.items() if s == SETTLED]
    never = [job for job, s in states.items() if s == NEVER]
    unknown = [job for job, s in states.items() if s == UNKNOWN]
    n = len(states)
    parts = []
    if settled:
        when = []
        if item.epochs:
            when.append(f"epoch {span(complete.loc[settled, item.epochs])}")
        if item.cells:
            of = complete[CELLS_SEEN].max() if CELLS_SEEN in complete else None
            cells = span(complete.loc[settled, item.cells], lambda v: f"{v:,.0f}")
            when.append(f"{cells} training cells seen" + (f" of {of:,.0f}" if of else ""))
        who = f"all {n} jobs" if len(settled) == n else f"{len(settled)} of {n} jobs"
        parts.append(f"settled in {who}, from {', or '.join(when)}")
    if never:
        end = pd.Series([ends[j] for j in never if j in ends], dtype=float)
        by = f" (epoch {span(end)})" if len(end) else ""
        who = (
            f"in any of the {n} jobs"
            if len(never) == n
            else f"in {len(never)} of {n} (jobs {', '.join(map(str, never))})"
        )
        parts.append(f"had not settled by the end{by} {who}")
    if unknown:
        parts.append(f"not known for {len(unknown)} of {n} jobs (measured once)")
    return "; ".join(parts)


def sweep_line(sweep: Sweep, item: Settling) -> str | None:
    """A Convergence list item: the metric, its tolerance and keys, and :func:`settled_words`."""
    words = settled_words(sweep, item)
    if words is None:
        return None
    keys = ", ".join(f"`{c}`" for c in (item.epochs, item.cells) if c)
    within = tolerance_words(item.tolerance)
    return f"- **{label(item.metric)}**, within {within} of its end value ({keys}): {words}."


def loss_settling(sweep: Sweep) -> str | None:
    """The validation loss's settling in a sentence (for an answer), or None."""
    item = next((s for s in settlings(sweep.results.columns) if s.metric == ELBO_VALIDATION), None)
    words = settled_words(sweep, item) if item else None
    if not words:
        return None
    within = tolerance_words(item.tolerance)
    return f"The {label(ELBO_VALIDATION)}, within {within} of its end value: {words}."


def convergence_lines(sweep: Sweep) -> list[str]:
    """The multirun report's Convergence section; [] without convergence metrics or complete
    jobs."""
    items = [line for s in settlings(sweep.results.columns) if (line := sweep_line(sweep, s))]
    if not items:
        return []
    return [
        "## Convergence",
        "",
        "When each value came to stay within the tolerance of its value at the end of training, "
        "in epochs and in training cells seen, checked where it was measured (the validation "
        "loss between epoch ends where the jobs measured it there, steps.csv; integration scores "
        "at their scorings), over complete jobs. A value within the tolerance only at its last "
        "measurement *had not settled by the end*: it was still moving.",
        "",
        *items,
        "",
    ]
