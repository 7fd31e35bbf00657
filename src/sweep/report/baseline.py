"""Where each job (or trial) stands against the unintegrated PCA baseline on each integration
aggregate, in words: ``all 4 jobs score bio conservation 0.550-0.650, below the PCA baseline's
0.800``. Each is compared with the baseline of its own evaluation cells (``pca_<aggregate>`` of its
metrics.json: sweep.run_folder)."""

from __future__ import annotations

import pandas as pd

from sweep.metric_names import BASELINE_PREFIX
from sweep.report.headline import AGGREGATES, Metric

#: the label column of the table :func:`baseline_lines` reads
LABEL = "label"
#: name the odd ones out when at most this many are
MAX_NAMED = 5


def span(values: pd.Series) -> str:
    """``0.550-0.650``, or ``0.800`` when all values agree to 3 decimals."""
    low, high = f"{values.min():.3f}", f"{values.max():.3f}"
    return low if low == high else f"{low}-{high}"


def counted(n: int, noun: str) -> str:
    """``1 job``, ``4 jobs``."""
    return f"{n} {noun}" + ("s" if n != 1 else "")


def standing(frame: pd.DataFrame, metric: Metric, noun: str) -> str | None:
    """A markdown list item: where the rows of ``frame`` stand against their PCA baseline on
    ``metric``; None when no row has both scores."""
    key, base = metric.key, BASELINE_PREFIX + metric.key
    if not {key, base} <= set(frame):
        return None
    data = frame.dropna(subset=[key, base])
    if data.empty:
        return None
    above = data[data[key] > data[base]]
    below = data[data[key] < data[base]]
    level = data[data[key] == data[base]]
    own = f" (each {noun} against its own)" if data[base].nunique() > 1 else ""
    baseline = f"the PCA baseline's {span(data[base])}{own}"
    sides = [(part, side) for part, side in ((above, "above"), (below, "below")) if len(part)]
    if len(sides) == 1 and level.empty:
        part, side = sides[0]
        who = f"the {noun}" if len(part) == 1 else f"all {counted(len(part), noun)}"
        return f"- **{metric.label}**: {who} score {span(part[key])}, {side} {baseline}"
    groups = [(above, "above"), (below, "below"), (level, "level with")]
    parts = [
        f"{counted(len(part), noun)} {side} ({span(part[key])}{names(part)})"
        for part, side in groups
        if len(part)
    ]
    return f"- **{metric.label}**: of {counted(len(data), noun)}, {', '.join(parts)}; {baseline}"


def names(part: pd.DataFrame) -> str:
    """``: model=a seed=0, model=b seed=0`` for a few rows, else ""."""
    if len(part) > MAX_NAMED or LABEL not in part:
        return ""
    return ": " + ", ".join(map(str, part[LABEL]))


def baseline_lines(frame: pd.DataFrame, noun: str) -> list[str]:
    """An "Against the PCA baseline" section: a markdown list item per aggregate with a
    baseline, or a note that there is none; [] for an empty ``frame``. ``frame``: a row per
    complete job or trial (``noun``), with its scores, its ``pca_*`` scores and a :data:`LABEL`
    column."""
    if frame.empty:
        return []
    items = [line for m in AGGREGATES if (line := standing(frame, m, noun)) is not None]
    about = (
        "The unintegrated baseline: PCA (50 components) of the same evaluation cells, scored by "
        "the same metrics. An integration is worth its cost where it scores above it."
        if items
        else f"No {noun} has integration scores with a PCA baseline (run with `evaluation=scib`)."
    )
    return ["## Against the PCA baseline", "", about, "", *items, *([""] if items else [])]
