"""Multirun report: one Hydra sweep folder -> ``results.csv``, figures and ``report.md`` with
verdicts (``build_report``; ``scvi-sweep-report SWEEP_DIR`` through sweep.report.entry).

It works after a sweep that raised and on a sweep still running (sweep.report.sweep_folder).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweep.metric_names import DATA_SUBSET, TRAIN_TIME
from sweep.report.answer import answer_paragraph
from sweep.report.baseline import LABEL, baseline_lines
from sweep.report.embedding import embedding_lines
from sweep.report.glossary import Glossary
from sweep.report.multirun_figures import job_labels, planned_figures
from sweep.report.numbers import column_formats
from sweep.report.render import (
    data_note,
    figure_lines,
    markdown_table,
    shown_path,
    write_figures,
)
from sweep.report.settling import convergence_lines
from sweep.report.sweep_folder import COMPLETE, FAILED, RUNNING, Sweep, job_dirs, load_sweep
from sweep.report.trust import (
    PROVISIONAL_RULE,
    STEADY_RULE,
    check_words,
    provisional_jobs,
    throughput,
)
from sweep.report.verdict_tables import verdict_lines
from sweep.report.verdicts import (
    RULE,
    SEED,
    factor_comparisons,
    levels,
    present_metrics,
    seed_note,
)
from sweep.run_folder import REPORT_FILE

__all__ = ["RESULTS_FILE", "build_report", "planned_figures"]

RESULTS_FILE = "results.csv"
#: the words of the report the glossary explains, linked once below the answer
TERMS_USED = [
    "validation negative ELBO",
    "bio conservation",
    "batch correction",
    "integration total",
    "PCA baseline",
    "seed spread",
    "verdict",
    "provisional",
    "KL warm-up",
    "settled",
    "cells seen",
    "throughput",
    "UMAP",
]


def jobs_table(sweep: Sweep) -> str:
    """Every job with its swept values, headline metrics and training time, each column in its
    metric's format (sweep.report.numbers)."""
    metrics = {m.key: m.label for m in present_metrics(sweep.results)}
    times = {TRAIN_TIME: "training time"} if TRAIN_TIME in sweep.results else {}
    columns = ["job", "status", *sweep.factors, *metrics, *times]
    names = {**metrics, **times}
    return markdown_table(
        sweep.results[columns].rename(columns=names), formats=column_formats(names, names)
    )


def job_list(sweep: Sweep, status: str) -> list[str]:
    """A markdown list item per job of ``status``: its overrides and error."""
    rows = sweep.results[sweep.results["status"] == status]
    return [
        f"- job {row['job']} (`{row['overrides']}`)" + (f": {row['error']}" if row["error"] else "")
        for _, row in rows.iterrows()
    ]


def health_lines(sweep: Sweep) -> list[str]:
    """A "Run health" section: each health check (sweep.evaluation.health) that some complete
    job failed, in words with its key and whether it makes a verdict provisional, with the jobs
    that failed it and the first one's message; [] without complete jobs."""
    if not sweep.health:
        return []
    failed: dict[str, list[int]] = {}
    for job, findings in sweep.health.items():
        for check in findings:
            failed.setdefault(check, []).append(job)
    lines = [
        f"- **{check_words(check)}**: {len(jobs)} of {len(sweep.health)} complete jobs "
        f"({', '.join(map(str, jobs))}); job {jobs[0]}: {sweep.health[jobs[0]][check]}"
        for check, jobs in failed.items()
    ]
    return [
        "## Run health",
        "",
        "The checks of each job's `report.md` (its Health section), over complete jobs:",
        "",
        *(lines or ["- no job has a warning"]),
        "",
    ]


def report_text(
    sweep: Sweep, figures: list[tuple[str, str]], embeddings: list[str], out: Path
) -> str:
    """The text of report.md (``out``: its folder, for the glossary's links); ``embeddings``:
    the lines of embedding_lines."""
    counts = sweep.results["status"].value_counts()
    swept = "; ".join(
        f"`{f}` ({', '.join(map(str, levels(sweep.results, f)))})" for f in sweep.factors
    )
    datasets = sweep.results["dataset"].dropna() if "dataset" in sweep.results else []
    labelled = sweep.complete.assign(**{LABEL: sweep.complete["job"].map(job_labels(sweep))})
    provisional = provisional_jobs(sweep)
    speed = throughput(sweep, SEED)
    glossary = Glossary(out)
    comparisons = [
        c for f in sweep.factors if f != SEED for c in factor_comparisons(sweep, f, provisional)[0]
    ]
    demo = "demo" in set(map(str, datasets))
    lines = [
        f"# Multirun report: {sweep.folder.resolve().name}",
        "",
        answer_paragraph(sweep, comparisons, speed, glossary, demo),
        "",
        *glossary.terms_line(TERMS_USED),
        f"Sweep folder: `{shown_path(sweep.folder)}`",
        "",
        f"Jobs: {counts.get(COMPLETE, 0)} complete, {counts.get(FAILED, 0)} failed, "
        f"{counts.get(RUNNING, 0)} running / unfinished.",
        "",
        f"Swept: {swept or 'nothing (every job has the same overrides)'}.",
        "",
        *data_note(datasets, sweep.complete.get(DATA_SUBSET, pd.Series(dtype=object)).tolist()),
        "## Verdicts",
        "",
        "Each level against the reference level (the first in sweep order), averaged over the "
        "complete jobs that differ only in that factor (other factors and seeds matched): a "
        "table per level, a row per metric.",
        "",
        RULE,
        "",
        PROVISIONAL_RULE,
        "",
        STEADY_RULE
        + (" Here they are compared." if speed.steady else f" Not compared here: {speed.reason}."),
        "",
        *seed_note(sweep),
        *(
            verdict_lines(sweep, provisional, speed)
            or ["Nothing to compare: no factor but the seed was swept.", ""]
        ),
        *baseline_lines(labelled, "job"),
        *health_lines(sweep),
        *convergence_lines(sweep),
        "## Jobs",
        "",
        jobs_table(sweep),
        "",
        "## Figures",
        "",
        *figure_lines(figures),
        *embeddings,
    ]
    for status, title in ((FAILED, "Failed jobs"), (RUNNING, "Running / unfinished jobs")):
        if status in counts:
            lines += [f"## {title}", "", *job_list(sweep, status), ""]
    return "\n".join(lines).rstrip() + "\n"


def build_report(sweep_dir: str | Path, out_dir: str | Path) -> Path:
    """Write results.csv, figures and report.md of a sweep.

    Parameters
    ----------
    sweep_dir
        A Hydra multirun's sweep folder (its job folders ``0/``, ``1/``, ...).
    out_dir
        The report folder (created).

    Returns
    -------
    The path of report.md.
    """
    sweep = load_sweep(sweep_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep.results.to_csv(out / RESULTS_FILE, index=False)
    figures = write_figures(planned_figures(sweep), out)
    embeddings = embedding_lines(job_dirs(sweep.folder), out, job_labels(sweep))
    report = out / REPORT_FILE
    report.write_text(report_text(sweep, figures, embeddings, out))
    return report
