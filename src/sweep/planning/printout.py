"""The plan in words and a table, as ``dry_run=true`` prints it."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sweep.planning.cost import JobCost, Plan

NOTHING_STARTED = "nothing was started (no run or sweep folder, no W&B run, no Optuna study)"


def count(value: float) -> str:
    """A count with thousands separators."""
    return f"{round(value):,}"


def span(low: float, high: float) -> str:
    """``low`` or ``low-high`` as counts."""
    return count(low) if round(low) == round(high) else f"{count(low)}-{count(high)}"


def duration(seconds: float) -> str:
    """Seconds in the unit that reads best: ``38 s``, ``12.5 min``, ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def labels(costs: list[JobCost]) -> str:
    """The jobs' numbers as runs: ``0-2, 5``."""
    numbers = [int(c.label.split()[-1]) for c in costs]
    runs, start = [], numbers[0]
    for prev, here in zip(numbers, [*numbers[1:], None], strict=True):
        if here != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = here
    return ", ".join(runs)


def throughput_lines(costs: list[JobCost]) -> list[str]:
    """One line per throughput the jobs use: cells/s and where it comes from, and which jobs."""
    groups: dict[tuple, list] = defaultdict(list)
    for cost in costs:
        groups[(cost.rate.train, cost.rate.validation, cost.rate.source)].append(cost)
    lines = ["Throughput (cells/s on one device):"]
    for (train, validation, source), members in groups.items():
        val = (
            f"validation {count(validation)}"
            if validation
            else "validation counted at the training rate (an upper bound: no backward pass)"
        )
        noun = members[0].label.split()[0] + ("s" if len(members) > 1 else "")
        now = ", measured by this plan" if any(c.rate.fresh for c in members) else ""
        lines.append(f"- training {count(train)}, {val}: {source}{now}; {noun} {labels(members)}")
    return lines


def time_line(costs: list[JobCost]) -> str:
    """What the estimated wall time includes and leaves out."""
    first = max(costs, key=lambda c: c.scorings)
    steps = max(c.step_validations for c in costs)
    stepwise = (
        f", and {count(first.step_validation_cells)} validation cells every "
        f"trainer.validate_every_n_steps steps ({count(steps)} times a job at most)"
        if steps
        else ""
    )
    scoring = (
        f", and {first.scorings} scorings of {count(first.scoring_cells)} cells a job at most "
        "(scib-metrics, evaluation=scib)"
        if first.scorings
        else " (no scoring: evaluation=none)"
    )
    return (
        "Wall time = training + validation (the validation set at every epoch end"
        f"{stepwise}); not included: each job's start-up{scoring}."
    )


def table(costs: list[JobCost], at_most: bool) -> list[str]:
    """A markdown table, a row per job: overrides, cells per epoch, epochs, cells seen, wall."""
    bound = "<= " if at_most else ""
    noun = "trial" if at_most else "job"
    lines = [
        f"| {noun} | overrides | cells/epoch | epochs | cells seen | est. wall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for cost in costs:
        overrides = " ".join(cost.overrides) or "(none)"
        if at_most:
            overrides = (overrides + " + sampled").removeprefix("(none) + ")
        lines.append(
            f"| {cost.label.split()[-1]} | {overrides} | {span(*cost.cells_per_epoch)} | "
            f"{span(*cost.epochs)} | {span(*cost.cells_seen)} | {bound}{duration(cost.wall_s)}"
            + (f" x {cost.devices} devices" if cost.devices > 1 else "")
            + " |"
        )
    return lines


def search_lines(plan: Plan) -> list[str]:
    """An Optuna search: what it searches, what is fixed, the epochs and the trial timed."""
    search = plan.jobs.search
    params = "; ".join(f"{k}={v}" for k, v in search.params.items())
    lines = [
        f"Searched: {params}.",
        f"Fixed: {' '.join(search.fixed) or 'nothing'}. n_trials={search.n_trials} is the "
        "study's total: trials its storage already holds are not subtracted here.",
        f"Epochs: {span(*search.epochs)}"
        + (" (trainer.max_epochs is searched)." if search.epochs[0] != search.epochs[1] else "."),
        "Each trial is timed as the largest value of every numeric parameter and the first "
        f"choice of the others: {' '.join(search.largest_overrides) or 'no parameter'}.",
    ]
    if search.custom_search_space:
        lines.append(
            f"Parameters drawn by hydra.sweeper.custom_search_space={search.custom_search_space} "
            "are not in the plan."
        )
    return lines


def plan_text(plan: Plan) -> str:
    """The text ``dry_run=true`` prints.

    Parameters
    ----------
    plan
        The command line's plan (sweep.planning.cost.make_plan).

    Returns
    -------
    What would run, the throughput and what the time covers, a markdown row per job, and the
    total (training cells seen, wall time, device-hours).
    """
    jobs, costs = plan.jobs, plan.costs
    search = jobs.search
    command = " ".join(plan.command)
    if search is not None:
        study = search.study_name or "named at launch"
        what = (
            f"an Optuna search of {search.n_trials} trials (study {study}, {search.sampler}, "
            f"pruner {search.pruner})"
        )
    elif jobs.kind == "grid":
        what = f"a grid of {len(costs)} jobs (Hydra's basic sweeper)"
    else:
        what = "a single run"
    stores = sorted({str(c.store) for c in costs})
    lines = [
        f"Dry run of `{command}`: {what}; {NOTHING_STARTED}.",
        "",
        f"Store: {', '.join(stores)}. Cells per epoch: the training cells after the data filter "
        "(data.keep, data.max_cells), from the store's metadata.",
        "",
        *throughput_lines(costs),
        "",
        time_line(costs),
        "",
    ]
    if search is not None:
        lines += [*search_lines(plan), ""]
    lines += [*table(costs, at_most=search is not None), ""]
    seen = sum(c.cells_seen[1] for c in costs)
    wall = sum(c.wall_s for c in costs)
    bound = "at most " if search is not None else ""
    lines.append(
        f"Total: {len(costs)} {'trials' if search is not None else 'jobs'}, {bound}"
        f"{count(seen)} training cells seen, {bound}{duration(wall)} of wall time one job after "
        f"another, {bound}{plan.device_hours:.3g} device-hours."
        + (
            " Every trial is counted to its last epoch; pruned trials stop earlier."
            if search is not None
            else ""
        )
    )
    return "\n".join(lines)
