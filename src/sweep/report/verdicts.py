"""Verdicts of a multirun: each level of each swept factor against its reference level, on the
headline metrics and training time, over job pairs that differ only in that factor
(:func:`factor_comparisons`; sweep.report.verdict_tables writes them as tables, sweep.report.answer
in words).

A level is called better or worse only beyond the spread across seeds (:data:`RULE`); with one
seed there is no spread yet, so no verdict, and :func:`seed_note` gives the command adding seeds.
Each comparison also names the jobs whose health makes it provisional (sweep.report.trust).
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
#: the judgements of a change beyond (or within) the seed spread
BETTER, WORSE, WITHIN = "better", "worse", "within seed spread"
#: training time, judged beside the headline metrics (lower is better)
TIME = Metric(TRAIN_TIME, "training time", "s", higher_is_better=False, relative=True)


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
    #: the metric's mean over the pairs at the reference and at the level
    means: tuple[float, float] = (math.nan, math.nan)


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
    means = (float(ref.mean()), float(new.mean()))
    if metric.cells and f"{metric.cells}_ref" in pairs:
        cells = pairs[f"{metric.cells}_ref"], pairs[f"{metric.cells}_level"]
        if (cells[0] != cells[1]).any():  # e.g. a cell filter: other validation cells
            counts = (float(cells[0].mean()), float(cells[1].mean()))
            return Change(
                metric, difference, difference / abs(ref.mean()), 1, None, False, counts, means
            )
    seeds = pairs[SEED].nunique() if seeded else 1
    spread, beyond = None, False
    if seeds > 1:
        grouped = pd.DataFrame({"d": new - ref, "ref": ref, SEED: pairs[SEED]}).groupby(SEED)
        per_seed = grouped["d"].mean()
        if metric.relative:
            per_seed = 100 * per_seed / grouped["ref"].mean().abs()
        spread = float(per_seed.std())
        beyond = abs(per_seed.mean()) > SE_FACTOR * spread / math.sqrt(seeds)
    return Change(
        metric, difference, difference / abs(ref.mean()), seeds, spread, beyond, means=means
    )


def judgement(c: Change) -> str | None:
    """better or worse by the metric's direction, when beyond the seed spread; ``within seed
    spread`` when not; None with one seed (no spread to judge by) or cells that differ."""
    if c.spread is None or c.cells is not None:
        return None
    if not c.beyond_spread:
        return WITHIN
    improved = (c.difference > 0) == c.metric.higher_is_better
    return BETTER if improved else WORSE


@dataclass(frozen=True)
class Comparison:
    """One level of a factor against the reference level, over the job pairs that differ only in
    that factor."""

    factor: str
    reference: str
    level: str
    pairs: int  # job pairs
    seeds: int  # seeds among the pairs (1 when seeds were not swept)
    changes: list[Change]  # one per metric the pairs have, TIME last
    jobs: tuple[int, ...]  # the jobs of the pairs, both sides
    provisional: tuple[int, ...]  # those whose health makes a verdict provisional

    def judged(self, *words: str) -> list[Change]:
        """The changes judged one of ``words`` (BETTER, WORSE, WITHIN)."""
        return [c for c in self.changes if judgement(c) in words]


def compare(
    sweep: Sweep, factor: str, reference: str, level: str, provisional: dict[int, list[str]]
) -> Comparison | None:
    """``level`` against ``reference`` on every headline metric and training time; None when no
    two complete jobs differ only in ``factor`` between these levels. ``provisional``: job ->
    its checks that make a verdict provisional (sweep.report.trust.provisional_jobs)."""
    metrics = present_metrics(sweep.complete)
    if TRAIN_TIME in sweep.results and sweep.results[TRAIN_TIME].notna().any():
        metrics.append(TIME)
    counts = list(dict.fromkeys(m.cells for m in metrics if m.cells in sweep.results))
    columns = ["job", *(m.key for m in metrics), *counts]
    pairs = matched_pairs(sweep, factor, reference, level, columns)
    if pairs.empty:
        return None
    seeded = SEED in sweep.factors
    jobs = tuple(sorted({*pairs["job_ref"], *pairs["job_level"]}))
    return Comparison(
        factor=factor,
        reference=reference,
        level=level,
        pairs=len(pairs),
        seeds=pairs[SEED].nunique() if seeded else 1,
        changes=[c for m in metrics if (c := change(pairs, m, seeded)) is not None],
        jobs=jobs,
        provisional=tuple(job for job in jobs if job in provisional),
    )


def factor_comparisons(
    sweep: Sweep, factor: str, provisional: dict[int, list[str]]
) -> tuple[list[Comparison], list[str]]:
    """Each level of ``factor`` but the reference against the reference, and the levels that no
    complete job matches (no comparison)."""
    order = levels(sweep.complete, factor)
    found = {level: compare(sweep, factor, order[0], level, provisional) for level in order[1:]}
    return (
        [c for c in found.values() if c is not None],
        [level for level, c in found.items() if c is None],
    )


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
