"""Verdicts of a multirun: each level of each swept factor against its reference level, on the
headline metrics and training time, over job pairs that differ only in that factor.

A level is called better or worse only beyond the spread across seeds (:data:`RULE`); with one
seed there is no spread yet, so no verdict, and :func:`seed_note` gives the command adding seeds.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

import pandas as pd

from sweep.metric_names import TRAIN_TIME
from sweep.report.headline import HEADLINE, Metric
from sweep.report.sweep_folder import Sweep

#: the override key whose levels are replicates, not a factor to judge
SEED = "seed"
#: a change is beyond the seed spread when |mean per-seed change| > SE_FACTOR x its standard error
SE_FACTOR = 2.0
#: the verdict rule, in words
RULE = (
    "A level is called better or worse only when the mean of its per-seed changes exceeds "
    f"{SE_FACTOR:g} standard errors of that mean (the sd of the per-seed changes over the square "
    "root of the number of seeds); otherwise the change is *within seed spread*: treat it as no "
    "difference. This is a screen, not a test: with 3 seeds a t-test at 95% would ask for about "
    "4.3 standard errors. With one seed there is no spread to judge by, and no verdict."
)
#: the seeds the command of :func:`seed_note` sweeps
SEEDS = "0,1,2"


@dataclass(frozen=True)
class Change:
    """One metric of one level against the reference level, over matched job pairs."""

    metric: Metric
    difference: float  # mean of (level - reference)
    relative: float  # difference / |mean reference|
    seeds: int  # seeds among the pairs
    spread: float | None  # sd across seeds of the per-seed change (in % if metric.relative)
    beyond_spread: bool  # |mean per-seed change| > SE_FACTOR x its standard error
    #: (reference, level) mean cell counts of metric.cells where they differ: not compared
    cells: tuple[float, float] | None = None


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
    if metric.cells and f"{metric.cells}_ref" in pairs:
        cells = pairs[f"{metric.cells}_ref"], pairs[f"{metric.cells}_level"]
        if (cells[0] != cells[1]).any():  # e.g. a cell filter: other validation cells
            means = (float(cells[0].mean()), float(cells[1].mean()))
            return Change(metric, difference, difference / abs(ref.mean()), 1, None, False, means)
    seeds = pairs[SEED].nunique() if seeded else 1
    spread, beyond = None, False
    if seeds > 1:
        grouped = pd.DataFrame({"d": new - ref, "ref": ref, SEED: pairs[SEED]}).groupby(SEED)
        per_seed = grouped["d"].mean()
        if metric.relative:
            per_seed = 100 * per_seed / grouped["ref"].mean().abs()
        spread = float(per_seed.std())
        beyond = abs(per_seed.mean()) > SE_FACTOR * spread / math.sqrt(seeds)
    return Change(metric, difference, difference / abs(ref.mean()), seeds, spread, beyond)


def time_ratio(pairs: pd.DataFrame) -> float | None:
    """Mean training time at the level over that at the reference (None without times)."""
    pairs = pairs.dropna(subset=[f"{TRAIN_TIME}_ref", f"{TRAIN_TIME}_level"])
    if pairs.empty:
        return None
    return float(pairs[f"{TRAIN_TIME}_level"].mean() / pairs[f"{TRAIN_TIME}_ref"].mean())


def judgement(c: Change) -> str | None:
    """better or worse by the metric's direction, when beyond the seed spread; ``within seed
    spread`` when not; None with one seed (no spread to judge by)."""
    if c.spread is None:
        return None
    if not c.beyond_spread:
        return "within seed spread"
    improved = (c.difference > 0) == c.metric.higher_is_better
    return "better" if improved else "worse"


def describe(c: Change) -> str:
    """One metric's change in words: ``validation negative ELBO -17.5 (-1.74%, better; 2 seeds
    sd ±0.36%)``; with one seed only the numbers: ``bio conservation +0.020``; measured on
    different cells, no numbers: ``validation negative ELBO not compared (measured on
    different cells: 2,525 vs 2,727)`` (mean counts of the reference's and the level's jobs)."""
    if c.cells is not None:
        return (
            f"{c.metric.label} not compared (measured on different cells: {c.cells[0]:,.0f} vs "
            f"{c.cells[1]:,.0f})"
        )
    if c.metric.relative:
        width = "{:.2f}%"
        head, notes = f"{c.metric.label} {c.difference:+.4g}", [f"{100 * c.relative:+.2f}%"]
    else:
        width = "{:.3f}"
        head, notes = f"{c.metric.label} {c.difference:+.3f}", []
    if c.spread is not None:
        notes.append(f"{judgement(c)}; {c.seeds} seeds sd ±{width.format(c.spread)}")
    return f"{head} ({', '.join(notes)})" if notes else head


def verdict(sweep: Sweep, factor: str, reference: str, level: str) -> str | None:
    """``level`` against ``reference`` on every headline metric and training time, in words;
    None when no two complete jobs differ only in ``factor`` between these levels."""
    metrics = present_metrics(sweep.complete)
    times = [TRAIN_TIME] if TRAIN_TIME in sweep.results else []
    counts = list(dict.fromkeys(m.cells for m in metrics if m.cells in sweep.results))
    columns = [m.key for m in metrics] + counts + times
    pairs = matched_pairs(sweep, factor, reference, level, columns)
    if pairs.empty:
        return None
    seeded = SEED in sweep.factors
    parts = [describe(c) for m in metrics if (c := change(pairs, m, seeded)) is not None]
    ratio = time_ratio(pairs) if times else None
    if ratio is not None:
        parts.append(f"{ratio:.2f}x training time")
    plural = "s" if len(pairs) > 1 else ""
    text = f"`{level}` vs `{reference}` ({len(pairs)} job pair{plural}): " + ", ".join(parts)
    if seeded and pairs[SEED].nunique() < 2:
        text += " (one seed among these pairs: no spread, so no verdict)"
    return text


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


def seed_command(sweep: Sweep) -> str:
    """The sweep's own command with ``seed=0,1,2``: each override key with the values its jobs
    took, in job order (``python train.py -m model=czi_128,hidden_512 seed=0,1,2``)."""
    values: dict[str, dict[str, None]] = {}  # "key=" (or "~key") -> its values, an ordered set
    for overrides in sweep.overrides.values():
        for override in overrides:
            key, equals, value = override.partition("=")
            values.setdefault(key + equals, {})[value] = None
    values.pop(f"{SEED}=", None)
    parts = [shlex.quote(key + ",".join(v)) for key, v in values.items()]
    return " ".join(["python train.py -m", *parts, f"{SEED}={SEEDS}"])


def seed_note(sweep: Sweep) -> list[str]:
    """With one seed per job, why no level is called better or worse and the command that adds
    seeds; [] when seeds were swept."""
    if SEED in sweep.factors:
        return []
    return [
        "**One seed per job**: there is no spread across seeds yet, so no level is called better "
        "or worse; the changes below are single differences, as large as seed noise may be. "
        f"Add seeds with `{seed_command(sweep)}`.",
        "",
    ]
