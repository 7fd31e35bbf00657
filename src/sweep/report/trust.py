"""How far a sweep's comparisons can be trusted: which jobs make a verdict *provisional* (their
run health), and whether their speed can be compared at all (their own per-epoch rates).

- A verdict is **provisional** when a job it rests on failed one of :data:`PROVISIONAL_CHECKS`:
  its KL warm-up had not finished, or its validation loss was still falling by more than 1% an
  epoch at the end. Such a job was compared mid-training. Scores below the PCA baseline and small
  batch categories are results, not faults of training: they are reported, not held against a
  verdict.
- **Throughput** (training cells/s, and training time) is compared only when it is steady: every
  job's own rate varied by less than :data:`STEADY_CV` (coefficient of variation) between its
  epochs, the first left out when there are three or more (it includes start-up), and jobs that
  differ only in their seed ran within :data:`STEADY_CV` of each other. Otherwise the machine's
  load, not the settings, moved it (the demo examples had one setting at 1,279 and 19,500 cells/s).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweep.evaluation.health import FALLING_PER_EPOCH
from sweep.metric_names import (
    BELOW_BASELINE,
    KL_WEIGHT,
    LOSS_CHANGE,
    SMALL_BATCHES,
    STILL_FALLING,
    TRAIN_CELLS_PER_S,
    WARMUP,
)
from sweep.report.sweep_folder import Sweep

#: the health checks that make a verdict provisional (the run stopped mid-training)
PROVISIONAL_CHECKS = (WARMUP, STILL_FALLING)
#: each health check in words (metrics.json keys -> what a reader sees)
CHECK_WORDS = {
    WARMUP: "KL warm-up unfinished",
    STILL_FALLING: "not converged",
    BELOW_BASELINE: "below the PCA baseline",
    SMALL_BATCHES: "small batch categories",
}
#: a rate is steady when its coefficient of variation (sd / mean) is below this
STEADY_CV = 0.10
#: the rule, in words, for the reports
PROVISIONAL_RULE = (
    "A verdict is *provisional* when a job it rests on had not finished its KL warm-up or had not "
    f"converged (its validation loss still fell by more than {FALLING_PER_EPOCH:.0%} an epoch at "
    "the end): it compares models mid-training. A score below the PCA baseline and small batch "
    "categories are results, not faults: they are reported, not held against a verdict."
)
STEADY_RULE = (
    "Training cells/s and training time are compared only when every job's own rate varied by "
    f"less than {STEADY_CV:.0%} between its epochs (the first left out from three epochs on) and "
    f"jobs that differ only in their seed ran within {STEADY_CV:.0%} of each other; otherwise "
    "the machine's load, not the settings, may have moved them."
)


def check_words(check: str) -> str:
    """A health check in words with its key, and whether it makes a verdict provisional:
    ``KL warm-up unfinished (`kl_warmup_unfinished`; makes a verdict provisional)``."""
    weight = "makes a verdict provisional" if check in PROVISIONAL_CHECKS else "a result"
    return f"{CHECK_WORDS.get(check, check)} (`{check}`; {weight})"


def provisional_findings(findings: dict[str, str]) -> list[str]:
    """The checks of a job's health (metrics.json ``health``) that make a verdict provisional."""
    return [check for check in PROVISIONAL_CHECKS if check in findings]


def provisional_jobs(sweep: Sweep) -> dict[int, list[str]]:
    """Complete job -> its provisional checks, for the jobs that have any."""
    found = {job: provisional_findings(f) for job, f in sweep.health.items()}
    return {job: checks for job, checks in found.items() if checks}


def unhealthy_words(sweep: Sweep) -> list[str]:
    """What made jobs provisional, in words with their numbers: ``6 of 6 jobs had not
    converged (the validation loss still fell 3.9-4.2% an epoch at the end)``."""
    jobs = provisional_jobs(sweep)
    n = len(sweep.health)
    results = sweep.results.set_index("job")
    words = []
    for check in PROVISIONAL_CHECKS:
        flagged = [job for job, checks in jobs.items() if check in checks]
        if not flagged:
            continue
        if check == STILL_FALLING:
            detail = spread_words(-100 * results.loc[flagged].get(LOSS_CHANGE), "%")
            words.append(
                f"{len(flagged)} of {n} jobs had not converged (the validation loss still fell "
                f"{detail} an epoch at the end)"
                if detail
                else f"{len(flagged)} of {n} jobs had not converged"
            )
        else:
            detail = spread_words(results.loc[flagged].get(KL_WEIGHT), "", digits=2)
            words.append(
                f"{len(flagged)} of {n} jobs had not finished the KL warm-up"
                + (f" (KL weight {detail} of 1 at the end)" if detail else "")
            )
    return words


def spread_words(values: pd.Series | None, unit: str, digits: int = 1) -> str:
    """``3.9-4.2%``, or ``4.2%`` when they agree to ``digits`` decimals; "" without values."""
    if values is None or values.dropna().empty:
        return ""
    low, high = (f"{v:.{digits}f}" for v in (values.min(), values.max()))
    return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"


def rate_variation(history: pd.DataFrame | None) -> float | None:
    """The coefficient of variation (sd / mean) of a job's per-epoch training cells/s
    (history.csv), its first epoch left out when it has three or more; None with fewer than two
    epochs of rates (steadiness unknown)."""
    if history is None or TRAIN_CELLS_PER_S not in history:
        return None
    rates = history[TRAIN_CELLS_PER_S].dropna()
    if len(rates) >= 3:
        rates = rates.iloc[1:]
    if len(rates) < 2 or rates.mean() <= 0:
        return None
    return float(rates.std() / rates.mean())


@dataclass(frozen=True)
class Throughput:
    """Whether a sweep's speed can be compared, and why not when it cannot."""

    steady: bool
    reason: str  # why not, in words ("" when steady)


def throughput(sweep: Sweep, seed: str = "seed") -> Throughput:
    """Whether the complete jobs' training cells/s (and training time) can be compared (see the
    module's rule); ``seed``: the override key of the replicates."""
    complete = sweep.complete
    if TRAIN_CELLS_PER_S not in complete or complete[TRAIN_CELLS_PER_S].dropna().empty:
        return Throughput(False, "no job recorded its training cells/s")
    variations = {job: rate_variation(sweep.histories.get(job)) for job in complete["job"]}
    unknown = [job for job, v in variations.items() if v is None]
    if unknown:
        return Throughput(
            False,
            f"{jobs_words(unknown)} recorded fewer than two epochs of training cells/s, so "
            "whether the machine's load moved it is not known",
        )
    worst = max(variations, key=variations.get)
    if variations[worst] >= STEADY_CV:
        rates = sweep.histories[worst][TRAIN_CELLS_PER_S].dropna()
        return Throughput(
            False,
            f"job {worst}'s own rate varied by {variations[worst]:.0%} between its epochs "
            f"({rates.min():,.0f} to {rates.max():,.0f} cells/s): the machine's load, not the "
            "settings, moved it",
        )
    others = [f for f in sweep.factors if f != seed]
    if seed in sweep.factors:
        groups = complete.groupby(others, dropna=False) if others else [((), complete)]
        for _, group in groups:
            rates = group[TRAIN_CELLS_PER_S].dropna()
            if len(rates) > 1 and rates.std() / rates.mean() >= STEADY_CV:
                return Throughput(
                    False,
                    f"jobs of the same settings (only their seeds differ: jobs "
                    f"{', '.join(map(str, group['job']))}) ran at {rates.min():,.0f} to "
                    f"{rates.max():,.0f} cells/s: the machine's load, not the settings, moved it",
                )
    return Throughput(True, "")


def jobs_words(jobs: list[int]) -> str:
    """``job 3``, ``jobs 0, 1, 2``."""
    return f"job {jobs[0]}" if len(jobs) == 1 else f"jobs {', '.join(map(str, jobs))}"
