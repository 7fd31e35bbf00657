"""The multirun report's Verdicts section: a small table per level of each swept factor, one row
per metric (the reference's and the level's means, the change, the seed spread and the verdict),
so that each metric reads at a glance.

Verdicts on jobs whose health makes them provisional say so (sweep.report.trust); speed rows
say "not compared" when the jobs' speed was not steady.
"""

from __future__ import annotations

import pandas as pd

from sweep.report.numbers import Format, duration, durations, formatter, general, signed_change
from sweep.report.render import markdown_table
from sweep.report.sweep_folder import Sweep
from sweep.report.trust import Throughput, jobs_words
from sweep.report.verdicts import (
    SEED,
    TIME,
    Change,
    Comparison,
    factor_comparisons,
    judgement,
    levels,
)

#: the metrics whose values measure the machine as much as the settings
SPEED = ("train_cells_per_s", TIME.key)


def metric_format(c: Change) -> Format:
    """How the metric's values are written (sweep.report.numbers); times in the unit of the
    reference's."""
    fmt = formatter(c.metric.key) or general
    return durations([c.means[0]]) if fmt is duration else fmt


def percent(value: float) -> str:
    """A signed percentage, two decimals under 1%, else one: ``+0.07%``, ``-9.3%``."""
    return f"{value:+.2f}%" if abs(value) < 1 else f"{value:+.1f}%"


def change_parts(c: Change) -> list[str]:
    """The change in the metric's unit, and its relative size for losses, rates and times:
    ``["-153.3", "-9.3%"]``, ``["+0.056"]``."""
    text = signed_change(c.difference, metric_format(c))
    return [text, percent(100 * c.relative)] if c.metric.relative else [text]


def change_text(c: Change) -> str:
    """:func:`change_parts` as a table cell: ``-153.3 (-9.3%)``, ``+0.056``."""
    parts = change_parts(c)
    return parts[0] if len(parts) == 1 else f"{parts[0]} ({parts[1]})"


def spread_text(c: Change) -> str:
    """The seed spread of the per-seed change: ``±0.55%``, ``±0.020``; "" without one."""
    if c.spread is None:
        return ""
    return f"±{c.spread:.2f}%" if c.metric.relative else f"±{c.spread:.3f}"


def not_compared(c: Change, throughput: Throughput) -> str | None:
    """Why a change is not compared at all, or None."""
    if c.cells is not None:
        return f"not compared: measured on different cells ({c.cells[0]:,.0f} vs {c.cells[1]:,.0f})"
    if c.metric.key in SPEED and not throughput.steady:
        return "not compared (speed: see above)"
    return None


def verdict_text(c: Change, comparison: Comparison, throughput: Throughput) -> str:
    """A row's verdict: ``better``, ``worse``, ``within seed spread`` (each marked provisional
    when a job of the comparison is), ``no verdict: one seed``, or why it was not compared."""
    reason = not_compared(c, throughput)
    if reason:
        return reason
    word = judgement(c)
    if word is None:
        return "no verdict: one seed"
    shown = f"**{word}**" if word != "within seed spread" else word
    return f"{shown}, provisional" if comparison.provisional else shown


def direction(c: Change) -> str:
    """``lower is better`` or ``higher is better``."""
    return "higher is better" if c.metric.higher_is_better else "lower is better"


def comparison_table(comparison: Comparison, throughput: Throughput) -> str:
    """The comparison as a markdown table, a row per metric."""
    rows = []
    for c in comparison.changes:
        fmt = metric_format(c)
        rows.append(
            {
                "metric": f"{c.metric.label} ({direction(c)})",
                f"`{comparison.reference}`": fmt(c.means[0]),
                f"`{comparison.level}`": fmt(c.means[1]),
                "change": "" if c.cells is not None else change_text(c),
                "seed sd": spread_text(c),
                "verdict": verdict_text(c, comparison, throughput),
            }
        )
    return markdown_table(pd.DataFrame(rows))


def comparison_lines(comparison: Comparison, throughput: Throughput, seeded: bool) -> list[str]:
    """A level's heading, what it rests on, and its table."""
    plural = "s" if comparison.pairs > 1 else ""
    matched = "the same seed and other settings" if seeded else "the same other settings"
    about = (
        f"{comparison.pairs} job pair{plural} ({matched}), {comparison.seeds} "
        f"seed{'s' if comparison.seeds > 1 else ''}; means over the pairs."
    )
    if seeded and comparison.seeds < 2:
        about += " One seed among these pairs: no spread, so no verdict."
    if comparison.provisional:
        about += (
            f" Provisional: {jobs_words(list(comparison.provisional))} had not finished "
            "training (see Run health)."
        )
    return [
        f"### `{comparison.factor}`: `{comparison.level}` vs `{comparison.reference}`",
        "",
        about,
        "",
        comparison_table(comparison, throughput),
        "",
    ]


def verdict_lines(
    sweep: Sweep, provisional: dict[int, list[str]], throughput: Throughput
) -> list[str]:
    """Every swept factor but the seed: a table per level, and a list item for a factor with
    fewer than two levels of complete jobs or with levels that no job matches."""
    seeded = SEED in sweep.factors
    lines: list[str] = []
    for factor in (f for f in sweep.factors if f != SEED):
        order = levels(sweep.complete, factor)
        if len(order) < 2:
            lines += [f"- **{factor}**: fewer than two of its levels have complete jobs", ""]
            continue
        found, unmatched = factor_comparisons(sweep, factor, provisional)
        for comparison in found:
            lines += comparison_lines(comparison, throughput, seeded)
        if unmatched:
            names = ", ".join(f"`{level}`" for level in unmatched)
            lines += [
                f"- **{factor}**: no complete job at {names} matches a `{order[0]}` job in "
                "every other factor",
                "",
            ]
    return lines
