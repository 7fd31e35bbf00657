"""The multirun report's opening paragraph: the answer in words.

What differed beyond the seed spread (which level of which factor was better or worse on which
metric, by how much, with the seed spread), what did not, what was not compared and why, and
whether the jobs were healthy enough to trust it (sweep.report.trust): e.g. "6 of 6 jobs had not
converged (the validation loss still fell 4.2% an epoch at the end): treat these verdicts as
provisional".
"""

from __future__ import annotations

from sweep.metric_names import BELOW_BASELINE, LOSS_CHANGE, SMALL_BATCHES
from sweep.report.glossary import Glossary
from sweep.report.render import listing
from sweep.report.settling import loss_settling
from sweep.report.sweep_folder import COMPLETE, FAILED, Sweep
from sweep.report.trust import Throughput, unhealthy_words
from sweep.report.verdict_tables import SPEED, change_parts, not_compared, spread_text
from sweep.report.verdicts import (
    BETTER,
    SEED,
    WITHIN,
    WORSE,
    Change,
    Comparison,
    seed_command,
)

#: health findings that are results rather than faults, in words (with "N of M jobs")
RESULT_WORDS = {
    BELOW_BASELINE: "score below the PCA baseline on an integration score",
    SMALL_BATCHES: "have batch categories under 100 training cells",
}


class Terms:
    """Glossary links, each term linked at its first mention only."""

    def __init__(self, glossary: Glossary) -> None:
        self.glossary = glossary
        self.linked: set[str] = set()

    def __call__(self, word: str, text: str | None = None) -> str:
        if word in self.linked:
            return text or word
        self.linked.add(word)
        return self.glossary.term(word, text)


def measured(c: Change, terms: Terms, spread: bool = True) -> str:
    """A metric and its change: ``validation negative ELBO (-153.3, -9.3%; seed sd ±0.55%)``."""
    sd = spread_text(c)
    sd = f"; seed sd {sd}" if spread and sd else ""
    return f"{terms(c.metric.label)} ({', '.join(change_parts(c))}{sd})"


def level_name(comparison: Comparison) -> tuple[str, str]:
    """``model=hidden_512`` and ``czi_128``: the level with its factor, the reference bare."""
    return f"`{comparison.factor}={comparison.level}`", f"`{comparison.reference}`"


def seeded_sentence(comparison: Comparison, throughput: Throughput, terms: Terms) -> str:
    """One comparison with seeds: what was better or worse beyond the seed spread, and what
    stayed within it."""
    level, reference = level_name(comparison)
    if comparison.seeds < 2:
        return f"{level} against {reference}: one seed among their job pairs, so no verdict."
    judged = [c for c in comparison.changes if not_compared(c, throughput) is None]
    better = [c for c in comparison.judged(BETTER) if c in judged]
    worse = [c for c in comparison.judged(WORSE) if c in judged]
    within = [c for c in comparison.judged(WITHIN) if c in judged]
    spread = terms("seed spread")
    parts = []
    if better:
        parts.append("better on " + listing([measured(c, terms) for c in better]))
    if worse:
        parts.append("worse on " + listing([measured(c, terms) for c in worse]))
    if parts:
        text = f"{level} differed from {reference} beyond the {spread}: {'; '.join(parts)}"
    elif within:
        text = f"{level} did not differ from {reference} beyond the {spread} on any metric"
    else:
        text = f"{level} against {reference}: nothing could be judged"
    if within and parts:
        text += f"; within the seed spread (no difference shown): {listing(labels(within, terms))}"
    elif within:
        text += f" ({listing(labels(within, terms))} within it)"
    return text + "."


def labels(changes: list[Change], terms: Terms) -> list[str]:
    """The metrics' names, linked at their first mention."""
    return [terms(c.metric.label) for c in changes]


def unseeded_sentence(comparisons: list[Comparison], sweep: Sweep, terms: Terms) -> str:
    """Without seeds: the single differences, and the command that adds seeds."""
    parts = []
    for comparison in comparisons:
        level, reference = level_name(comparison)
        shown = [
            measured(c, terms, spread=False)
            for c in comparison.changes
            if c.metric.key not in SPEED and c.cells is None
        ]
        if shown:
            parts.append(f"{level} against {reference} changed {listing(shown)}")
    spread = terms("seed spread")
    text = (
        f"One seed per job: no difference can be told from the {spread} (the noise between "
        "seeds), so nothing is called better or worse"
    )
    if parts:
        text += f". Single differences: {'; '.join(parts)}"
    return f"{text}. Add seeds with `{seed_command(sweep)}`."


def not_compared_sentence(comparisons: list[Comparison], throughput: Throughput) -> str:
    """Why some metrics were not compared (different cells; unsteady speed), or ""."""
    cells = {
        c.metric.label
        for comparison in comparisons
        for c in comparison.changes
        if c.cells is not None
    }
    sentences = []
    if cells:
        sentences.append(
            f"{listing(sorted(cells))} {'is' if len(cells) == 1 else 'are'} not compared: the "
            "levels measure them on different cells."
        )
    speed = any(c.metric.key in SPEED for comparison in comparisons for c in comparison.changes)
    if speed and not throughput.steady:
        sentences.append(
            f"Speed (training cells/s, training time) is not compared: {throughput.reason}."
        )
    return " ".join(sentences)


def health_sentence(sweep: Sweep, comparisons: list[Comparison], terms: Terms) -> str:
    """Whether the jobs were healthy enough to trust the answer."""
    n = len(sweep.health)
    problems = unhealthy_words(sweep)
    what = "these verdicts" if comparisons else "these numbers"
    if problems:
        text = (
            f"{terms('run health', 'Run health')}: {listing(problems)}; treat {what} as "
            f"{terms('provisional')} and train longer before relying on them."
        )
    elif sweep.unchecked:
        text = (
            f"{len(sweep.unchecked)} of {n} jobs recorded no {terms('run health')} (made before "
            f"the checks existed): whether they had converged is not known."
        )
    elif one_epoch := one_epoch_jobs(sweep):
        text = (
            f"All {n} complete jobs finished their {terms('KL warm-up')}, but whether "
            f"{len(one_epoch)} of them had converged is not known (one epoch: no change to "
            f"measure; {terms('run health')})."
        )
    else:
        text = (
            f"All {n} complete jobs finished their {terms('KL warm-up')} and had converged, so "
            f"nothing in their {terms('run health')} holds {what} back."
        )
    results = []
    for check, words in RESULT_WORDS.items():
        flagged = [job for job, findings in sweep.health.items() if check in findings]
        if flagged:
            results.append(f"{len(flagged)} of {n} jobs {words}")
    if results:
        text += f" Also, {listing(results)} (results, not faults: see Run health)."
    return text


def one_epoch_jobs(sweep: Sweep) -> list[int]:
    """Complete jobs with no last-epoch change of the validation loss (one epoch): the health
    check of convergence could not judge them."""
    complete = sweep.complete
    if LOSS_CHANGE not in complete:
        return list(complete["job"])
    return list(complete.loc[complete[LOSS_CHANGE].isna(), "job"])


def status_sentence(sweep: Sweep) -> str:
    """Failed and unfinished jobs, when there are any: the answer rests on the rest."""
    counts = sweep.results["status"].value_counts()
    complete = int(counts.get(COMPLETE, 0))
    failed = int(counts.get(FAILED, 0))
    unfinished = len(sweep.results) - complete - failed
    if not failed and not unfinished:
        return ""
    parts = [f"{failed} failed"] if failed else []
    parts += [f"{unfinished} had not finished"] if unfinished else []
    total = len(sweep.results)
    return f"Of the {total} jobs, {listing(parts)}: this rests on the {complete} complete ones."


def answer_paragraph(
    sweep: Sweep,
    comparisons: list[Comparison],
    throughput: Throughput,
    glossary: Glossary,
    demo: bool = False,
) -> str:
    """The report's opening paragraph.

    Parameters
    ----------
    sweep
        The sweep.
    comparisons
        Every level against its reference (sweep.report.verdicts.factor_comparisons), in order.
    throughput
        Whether speed may be compared (sweep.report.trust.throughput).
    glossary
        Links to the glossary from the report's folder.
    demo
        The jobs trained on the synthetic demo data.
    """
    terms = Terms(glossary)
    if sweep.complete.empty:
        return (
            f"**Answer:** none yet: no job of {len(sweep.results)} has finished. Rebuild this "
            "report when they have (`scvi-sweep-report SWEEP_FOLDER`)."
        )
    judged = [f for f in sweep.factors if f != SEED]
    if not judged:
        what = (
            f"Only the seed was swept ({len(sweep.complete)} complete jobs): there is no setting "
            "to compare; the report shows how much the jobs vary and how they converged."
            if sweep.factors
            else "Nothing was swept (every job has the same settings): there is nothing to compare."
        )
        sentences = [what, loss_settling(sweep) or ""]
    elif not comparisons:
        sentences = ["No two complete jobs differ in one setting only: nothing could be compared."]
    elif SEED in sweep.factors:
        sentences = [seeded_sentence(c, throughput, terms) for c in comparisons]
    else:
        sentences = [unseeded_sentence(comparisons, sweep, terms)]
    sentences += [
        not_compared_sentence(comparisons, throughput),
        health_sentence(sweep, comparisons, terms),
        status_sentence(sweep),
    ]
    if demo:
        sentences.append(
            "These jobs trained on the synthetic demo data: this shows what an answer looks "
            "like, not one for real data."
        )
    return "**Answer:** " + " ".join(s for s in sentences if s)
