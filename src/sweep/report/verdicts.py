"""Verdicts of a multirun: each level of each swept factor against its reference level, on the
headline metrics and training time, over job pairs that differ only in that factor."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweep.report.sweep_folder import Sweep
from sweep.run_folder import (
    BATCH,
    BIO,
    ELBO_VALIDATION,
    RECONSTRUCTION_VALIDATION,
    TOTAL,
    TRAIN_CELLS_PER_S,
    TRAIN_TIME,
)

#: the override key whose levels are replicates, not a factor to judge
SEED = "seed"


@dataclass(frozen=True)
class Metric:
    """A headline metric of metrics.json and how to judge it."""

    key: str
    label: str
    higher_is_better: bool
    relative: bool  # state the change in % of the reference (losses, rates) or as a difference


HEADLINE = (
    Metric(ELBO_VALIDATION, "validation ELBO", higher_is_better=False, relative=True),
    Metric(
        RECONSTRUCTION_VALIDATION,
        "validation reconstruction loss",
        higher_is_better=False,
        relative=True,
    ),
    Metric(TRAIN_CELLS_PER_S, "training cells/s", higher_is_better=True, relative=True),
    Metric(BIO, "bio conservation", higher_is_better=True, relative=False),
    Metric(BATCH, "batch correction", higher_is_better=True, relative=False),
    Metric(TOTAL, "integration total", higher_is_better=True, relative=False),
)


@dataclass(frozen=True)
class Change:
    """One metric of one level against the reference level, over matched job pairs."""

    metric: Metric
    difference: float  # mean of (level - reference)
    relative: float  # difference / |mean reference|
    spread: float | None  # sd across seeds of the per-seed change (in % if metric.relative)


def levels(results: pd.DataFrame, factor: str) -> list[str]:
    """The values of ``factor`` in job order; the first is the reference level."""
    return list(dict.fromkeys(results[factor]))


def present_metrics(results: pd.DataFrame) -> list[Metric]:
    """The headline metrics that some job of ``results`` has."""
    return [m for m in HEADLINE if m.key in results and results[m.key].notna().any()]


def matched_pairs(
    sweep: Sweep, factor: str, reference: str, level: str, columns: list[str]
) -> pd.DataFrame:
    """Complete jobs at ``level`` matched with the reference job of the same other factors.

    Columns: the other factors, then ``<column>_ref`` and ``<column>_level`` for each column.
    """
    others = [f for f in sweep.factors if f != factor]
    complete = sweep.complete
    ref = complete.loc[complete[factor] == reference, others + columns]
    new = complete.loc[complete[factor] == level, others + columns]
    how = "inner" if others else "cross"
    return ref.merge(new, how=how, on=others or None, suffixes=("_ref", "_level"))


def change(pairs: pd.DataFrame, metric: Metric, seeded: bool) -> Change | None:
    """The metric's change over the pairs (None without pairs that have it)."""
    pairs = pairs.dropna(subset=[f"{metric.key}_ref", f"{metric.key}_level"])
    if pairs.empty:
        return None
    ref, new = pairs[f"{metric.key}_ref"], pairs[f"{metric.key}_level"]
    difference = float((new - ref).mean())
    spread = None
    if seeded and pairs[SEED].nunique() > 1:
        grouped = pd.DataFrame({"d": new - ref, "ref": ref, SEED: pairs[SEED]}).groupby(SEED)
        per_seed = grouped["d"].mean()
        if metric.relative:
            per_seed = 100 * per_seed / grouped["ref"].mean().abs()
        spread = float(per_seed.std())
    return Change(metric, difference, difference / abs(ref.mean()), spread)


def time_ratio(pairs: pd.DataFrame) -> float | None:
    """Mean training time at the level over that at the reference (None without times)."""
    pairs = pairs.dropna(subset=[f"{TRAIN_TIME}_ref", f"{TRAIN_TIME}_level"])
    if pairs.empty:
        return None
    return float(pairs[f"{TRAIN_TIME}_level"].mean() / pairs[f"{TRAIN_TIME}_ref"].mean())


def judgement(c: Change) -> str:
    """Whether the change is better, worse or none, by the metric's direction."""
    if c.difference == 0:
        return "no change"
    improved = (c.difference > 0) == c.metric.higher_is_better
    return "better" if improved else "worse"


def describe(c: Change) -> str:
    """One metric's change in words: ``validation ELBO -17.5 (-1.74%, better; seeds ±0.36%)``."""
    if c.metric.relative:
        size, width = 100 * c.relative, "{:.2f}%"
        head = f"{c.metric.label} {c.difference:+.4g} ({size:+.2f}%, {judgement(c)}"
    else:
        size, width = c.difference, "{:.3f}"
        head = f"{c.metric.label} {c.difference:+.3f} ({judgement(c)}"
    if c.spread is None:
        return head + ")"
    noise = "within seed spread" if abs(size) <= c.spread else "seeds"
    return f"{head}; {noise} ±{width.format(c.spread)})"


def verdict(sweep: Sweep, factor: str, reference: str, level: str) -> str | None:
    """``level`` against ``reference`` on every headline metric and training time, in words;
    None when no two complete jobs differ only in ``factor`` between these levels."""
    metrics = present_metrics(sweep.complete)
    times = [TRAIN_TIME] if TRAIN_TIME in sweep.results else []
    pairs = matched_pairs(sweep, factor, reference, level, [m.key for m in metrics] + times)
    if pairs.empty:
        return None
    seeded = SEED in sweep.factors
    parts = [describe(c) for m in metrics if (c := change(pairs, m, seeded)) is not None]
    ratio = time_ratio(pairs) if times else None
    if ratio is not None:
        parts.append(f"{ratio:.2f}x training time")
    plural = "s" if len(pairs) > 1 else ""
    return f"`{level}` vs `{reference}` ({len(pairs)} job pair{plural}): " + ", ".join(parts)


def factor_verdicts(sweep: Sweep, factor: str) -> list[str]:
    """Markdown list items: each level of ``factor`` but the reference, and levels left out."""
    order = levels(sweep.complete, factor)
    if len(order) < 2:
        return [f"- **{factor}**: fewer than two of its levels have complete jobs"]
    found = {level: verdict(sweep, factor, order[0], level) for level in order[1:]}
    lines = [f"- **{factor}**: {text}" for text in found.values() if text]
    unmatched = ", ".join(f"`{level}`" for level, text in found.items() if text is None)
    if unmatched:
        lines.append(
            f"- **{factor}**: no complete job at {unmatched} matches a `{order[0]}` job "
            "in every other factor"
        )
    return lines


def verdicts(sweep: Sweep) -> list[str]:
    """The verdicts of every swept factor but the seed, as markdown list items."""
    return [line for f in sweep.factors if f != SEED for line in factor_verdicts(sweep, f)]
