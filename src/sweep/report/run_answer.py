"""A run page's opening: what was trained and how it ended, in a few sentences (the loss and
whether it settled, the scores against the PCA baseline, the run's health), and the run's title
for its pictures (its job number and settings).
"""

from __future__ import annotations

import textwrap

import pandas as pd

from sweep import metric_names
from sweep.evaluation.health import AGGREGATE_WORDS, SMALL_BATCH_CELLS
from sweep.metric_names import (
    BASELINE_PREFIX,
    BATCH_NOT_APPLICABLE,
    CELLS_CONVERGENCE_PREFIX,
    CELLS_SEEN,
    ELBO_VALIDATION,
    HEALTH,
    JOB_NAME,
    KL_WEIGHT,
    LOSS_CHANGE,
    SMALL_BATCHES,
)
from sweep.report.glossary import Glossary
from sweep.report.numbers import counted, duration, loss, score
from sweep.report.render import listing
from sweep.report.settling import NEVER, SETTLED, record, state
from sweep.report.trust import provisional_findings

#: the aggregate scores in the glossary's words
SCORE_TERMS = {
    metric_names.BIO: "bio conservation",
    metric_names.BATCH: "batch correction",
    metric_names.TOTAL: "integration total",
}
#: characters of a picture's title line before it wraps
TITLE_WIDTH = 70


def job_number(metrics: dict) -> str | None:
    """The job's number in its sweep (``3`` of the job name ``3:model=...``), or None for a
    single run."""
    number, colon, _ = str(metrics.get(JOB_NAME, "")).partition(":")
    return number if colon and number.isdigit() else None


def settings(metrics: dict) -> str:
    """The run's overrides, space-separated, or ``default settings``."""
    return " ".join(metrics.get(metric_names.OVERRIDES) or []) or "default settings"


def run_title(metrics: dict, width: int = TITLE_WIDTH) -> str:
    """The run as a picture's title: ``job 3: model=hidden_512 seed=0``, or ``run:
    model=hidden_512``, wrapped at ``width`` characters."""
    number = job_number(metrics)
    head = f"job {number}" if number else "run"
    return textwrap.fill(f"{head}: {settings(metrics)}", width)


def loss_sentence(metrics: dict, history, steps, terms: Glossary) -> str:
    """The validation loss at the end and whether it settled."""
    elbo = terms.term("validation negative ELBO")
    text = f"Its {elbo} ended at {loss(metrics[ELBO_VALIDATION])}"
    key = next(
        (
            k
            for k in metrics
            if k.startswith(CELLS_CONVERGENCE_PREFIX) and k.endswith(f"_{ELBO_VALIDATION}")
        ),
        None,
    )
    rows = record(ELBO_VALIDATION, history, steps)
    found = state(metrics.get(key), rows, CELLS_SEEN, metrics.get(CELLS_SEEN)) if key else None
    change = metrics.get(LOSS_CHANGE)
    falling = f", still falling {-change:.1%} an epoch" if change is not None and change < 0 else ""
    settled = terms.term("settled")
    if found == NEVER:
        text += f" and had not {settled} by the end{falling}"
    elif found == SETTLED:
        text += f" and had {settled} (within the tolerance of its end value) before the end"
    if KL_WEIGHT in metrics:
        text += f", at {terms.term('KL weight')} {metrics[KL_WEIGHT]:.2f}"
    return text + "."


def scores_sentence(metrics: dict, terms: Glossary) -> str:
    """Where the scores stand against the PCA baseline, or that the run was not scored."""
    keys = [
        k
        for k in AGGREGATE_WORDS
        if metrics.get(k) is not None and metrics.get(BASELINE_PREFIX + k) is not None
    ]
    if not keys:
        return "It was not scored (evaluation=none)."
    sides: dict[str, list[str]] = {"higher": [], "lower": []}
    for k in keys:
        side = "higher" if metrics[k] >= metrics[BASELINE_PREFIX + k] else "lower"
        sides[side].append(
            f"{terms.term(SCORE_TERMS[k])} ({score(metrics[k])} vs "
            f"{score(metrics[BASELINE_PREFIX + k])})"
        )
    parts = [f"{side} on {listing(items)}" for side, items in sides.items() if items]
    text = f"Against the {terms.term('PCA baseline')}, it scores {'; '.join(parts)}"
    if metrics.get(BATCH_NOT_APPLICABLE):
        text += "; batch correction could not be scored"
    return text + " (one seed: a small difference may be noise)."


def health_sentence(metrics: dict, terms: Glossary) -> str:
    """The run's health: no warnings, or its warnings and whether they make it provisional."""
    findings = metrics.get(HEALTH) or {}
    health = terms.term("run health", "Health")
    if not findings:
        return f"{health}: no warnings."
    provisional = provisional_findings(findings)
    words = []
    if metric_names.WARMUP in findings:
        words.append(f"the {terms.term('KL warm-up')} had not finished")
    if metric_names.STILL_FALLING in findings:
        words.append("the loss had not converged")
    if metric_names.BELOW_BASELINE in findings:
        words.append("scVI scored below the PCA baseline")
    if SMALL_BATCHES in findings:
        small = metrics.get(SMALL_BATCHES)
        words.append(f"{small} batch categories have under {SMALL_BATCH_CELLS} training cells")
    text = (
        f"{health}: {len(findings)} warning{'s' if len(findings) > 1 else ''} ({'; '.join(words)})"
    )
    if provisional:
        return text + f": treat these numbers as {terms.term('provisional')} and train longer."
    return text + "."


def summary_paragraph(
    metrics: dict,
    history: pd.DataFrame | None,
    steps: pd.DataFrame | None,
    glossary: Glossary,
) -> str:
    """The run page's opening paragraph.

    Parameters
    ----------
    metrics
        The run's metrics.json.
    history, steps
        Its history.csv and steps.csv (None where absent).
    glossary
        Links to the glossary from the run folder.
    """
    number = job_number(metrics)
    who = f"Job {number}" if number else "This run"
    dataset = metrics.get(metric_names.CHOICES, {}).get("dataset")
    data = f" of the `{dataset}` data" if dataset else ""
    epochs = counted(metrics[metric_names.EPOCHS], "epoch")
    trained = (
        f"{who} (`{settings(metrics)}`) trained scVI for {epochs} "
        f"on {metrics[metric_names.CELLS_TRAIN]:,} training cells{data} "
        f"({duration(metrics[metric_names.TRAIN_TIME])} of training)."
    )
    sentences = [
        trained,
        loss_sentence(metrics, history, steps, glossary),
        scores_sentence(metrics, glossary),
        health_sentence(metrics, glossary),
    ]
    return "**In short:** " + " ".join(sentences)
