"""Multirun report: one sweep folder -> ``results.csv``, figures and ``report.md`` with verdicts.

``python -m sweep.report SWEEP_DIR [--out DIR]`` or ``build_report(sweep_dir, out_dir)``; an Optuna
study (``--study NAME --storage STORAGE``, or its sweep folder) goes to ``sweep.study.report``.
It reads only the sweep folder (``<job number>/`` folders with ``.hydra/``, ``metrics.json``,
``history.csv`` and ``train.log``), so it works after a sweep that raised and on a sweep still
running. A job is *complete* (metrics.json written), *failed* (its log holds a traceback) or
*running* (neither: still training, or killed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure

from sweep.paths import REPO_ROOT

log = logging.getLogger(__name__)

COMPLETE, FAILED, RUNNING = "complete", "failed", "running"
#: the override key whose levels are replicates, not a factor to judge
SEED = "seed"
#: training time (s) in metrics.json, for the time ratio of the verdicts
TRAIN_TIME = "train_time_s"
#: value of an override key in a job that does not set it
DEFAULT = "(default)"
#: integration scores (sweep.evaluate.AGGREGATES): in metrics.json, and per epoch in history.csv
BIO, BATCH, TOTAL = "bio_conservation", "batch_correction", "integration_total"
#: prefix of the unintegrated (PCA) baseline's scores in metrics.json (sweep.evaluate)
BASELINE = "pca_"
TRACEBACK = "Traceback (most recent call last):"
FIGSIZE = (6, 4)  # inches
DPI = 100
#: where reports go unless told otherwise (the one place outside run folders we write to)
REPORTS_DIR = REPO_ROOT / "multirun_reports"


@dataclass(frozen=True)
class Metric:
    """A headline metric of metrics.json and how to judge it."""

    key: str
    label: str
    higher_is_better: bool
    relative: bool  # state the change in % of the reference (losses, rates) or as a difference


HEADLINE = (
    Metric("elbo_validation", "validation ELBO", higher_is_better=False, relative=True),
    Metric(
        "reconstruction_loss_validation",
        "validation reconstruction loss",
        higher_is_better=False,
        relative=True,
    ),
    Metric("train_cells_per_s", "training cells/s", higher_is_better=True, relative=True),
    Metric(BIO, "bio conservation", higher_is_better=True, relative=False),
    Metric(BATCH, "batch correction", higher_is_better=True, relative=False),
    Metric(TOTAL, "integration total", higher_is_better=True, relative=False),
)


@dataclass
class Job:
    """What one job folder holds."""

    number: int
    status: str
    error: str  # the exception line of a failed job's traceback, else ""
    overrides: list[str]  # as on the command line, e.g. "model=hidden_512"
    choices: dict[str, str]  # config group -> option
    metrics: dict  # metrics.json ({} unless complete)
    history: pd.DataFrame | None  # history.csv, one row per epoch


@dataclass
class Sweep:
    """A sweep folder read into a results table (one row per job) and per-job histories."""

    folder: Path
    results: pd.DataFrame
    factors: list[str]  # override keys whose value differs between jobs, in override order
    histories: dict[int, pd.DataFrame]  # job number -> history.csv of the jobs that have one

    @property
    def complete(self) -> pd.DataFrame:
        """The rows of complete jobs."""
        return self.results[self.results["status"] == COMPLETE]


@dataclass(frozen=True)
class Change:
    """One metric of one level against the reference level, over matched job pairs."""

    metric: Metric
    difference: float  # mean of (level - reference)
    relative: float  # difference / |mean reference|
    spread: float | None  # sd across seeds of the per-seed change (in % if metric.relative)


# --- reading a sweep folder -------------------------------------------------------------------


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (named by job number, as ``hydra.sweep.subdir``), in order."""
    folders = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(folders, key=lambda p: int(p.name))


def read_yaml(path: Path):
    """A YAML file's content, or None when it does not exist."""
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_choices(job_dir: Path, metrics: dict) -> dict[str, str]:
    """Config group -> option: from metrics.json, else from Hydra's ``.hydra/hydra.yaml``."""
    if "choices" in metrics:
        return dict(metrics["choices"])
    hydra = read_yaml(job_dir / ".hydra" / "hydra.yaml") or {}
    choices = hydra.get("hydra", {}).get("runtime", {}).get("choices", {})
    return {k: v for k, v in choices.items() if v is not None and not k.startswith("hydra/")}


def exception_line(log_text: str) -> str | None:
    """The exception line (``ValueError: ...``) of the last traceback in a log, or None."""
    _, found, tail = log_text.rpartition(TRACEBACK)
    if not found:
        return None
    lines = [line for line in tail.splitlines() if line.strip() and not line[0].isspace()]
    return lines[0] if lines else "unknown error (traceback cut off)"


def job_status(job_dir: Path) -> tuple[str, str]:
    """(status, error line) of a job folder."""
    if (job_dir / "metrics.json").is_file():
        return COMPLETE, ""
    log_file = job_dir / "train.log"
    error = exception_line(log_file.read_text(errors="replace")) if log_file.is_file() else None
    return (FAILED, error) if error else (RUNNING, "")


def read_job(job_dir: Path) -> Job:
    """Read one job folder."""
    status, error = job_status(job_dir)
    metrics = json.loads((job_dir / "metrics.json").read_text()) if status == COMPLETE else {}
    history_file = job_dir / "history.csv"
    return Job(
        number=int(job_dir.name),
        status=status,
        error=error,
        overrides=[str(o) for o in read_yaml(job_dir / ".hydra" / "overrides.yaml") or []],
        choices=read_choices(job_dir, metrics),
        metrics=metrics,
        history=pd.read_csv(history_file) if history_file.is_file() else None,
    )


def parse_override(override: str) -> tuple[str, str]:
    """``+key=value`` / ``key=value`` / ``~key`` -> (key, value)."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def override_values(job: Job) -> dict[str, str]:
    """The job's overrides as key -> value."""
    return dict(parse_override(o) for o in job.overrides)


def ordered_union(groups) -> list[str]:
    """The keys of all ``groups`` (iterables), each once, in order of first appearance."""
    return list(dict.fromkeys(key for group in groups for key in group))


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numeric entries of metrics.json (booleans, strings and lists left out)."""
    return {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def override_keys(jobs: list[Job]) -> list[str]:
    """Every key some job overrides, in order of first appearance."""
    return ordered_union(override_values(job) for job in jobs)


def job_row(job: Job, keys: list[str]) -> dict:
    """The job's row of results.csv; ``keys`` are the override keys of the whole sweep.

    A key the job does not override takes its group choice, or DEFAULT for a plain config key.
    """
    values = override_values(job)
    return {
        "job": job.number,
        "status": job.status,
        "overrides": " ".join(job.overrides),
        "error": job.error,
        **job.choices,
        **{k: values.get(k, job.choices.get(k, DEFAULT)) for k in keys},
        **numeric_metrics(job.metrics),
    }


def results_table(jobs: list[Job]) -> pd.DataFrame:
    """One row per job: job, status, overrides, error, group choices, override values, metrics."""
    keys = override_keys(jobs)
    settings = ordered_union([*(job.choices for job in jobs), keys])
    metrics = ordered_union(numeric_metrics(job.metrics) for job in jobs)
    columns = ["job", "status", "overrides", "error", *settings, *metrics]
    return pd.DataFrame([job_row(job, keys) for job in jobs], columns=columns)


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read every job folder of a sweep."""
    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"sweep folder {folder} does not exist: pass a Hydra sweep dir")
    jobs = [read_job(d) for d in job_dirs(folder)]
    results = results_table(jobs)
    return Sweep(
        folder=folder,
        results=results,
        factors=[k for k in override_keys(jobs) if results[k].nunique(dropna=False) > 1],
        histories={job.number: job.history for job in jobs if job.history is not None},
    )


# --- verdicts ----------------------------------------------------------------------------------


def levels(results: pd.DataFrame, factor: str) -> list[str]:
    """The values of ``factor`` in job order; the first is the reference level."""
    return list(dict.fromkeys(results[factor]))


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


def present_metrics(results: pd.DataFrame) -> list[Metric]:
    """The headline metrics that some job of ``results`` has."""
    return [m for m in HEADLINE if m.key in results and results[m.key].notna().any()]


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


# --- figures -----------------------------------------------------------------------------------


def job_labels(sweep: Sweep) -> dict[int, str]:
    """Job number -> its swept values (``model=hidden_512 seed=1``), or ``job N`` without any."""
    return {
        row["job"]: " ".join(f"{f}={row[f]}" for f in sweep.factors) or f"job {row['job']}"
        for _, row in sweep.results.iterrows()
    }


def new_figure(n_panels: int = 1) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes, three to a row, each row ``FIGSIZE`` high."""
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] * nrows), dpi=DPI, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def plot_histories(sweep: Sweep, columns: list[str], title: str) -> Figure | None:
    """``columns`` of history.csv per epoch, a panel each, one line per job (None without data)."""
    columns = [c for c in columns if any(c in h for h in sweep.histories.values())]
    if not columns:
        return None
    labels = job_labels(sweep)
    fig, axes = new_figure(len(columns))
    for ax, column in zip(axes, columns, strict=True):
        for number, history in sweep.histories.items():
            if column in history:
                points = history[["epoch", column]].dropna()  # scores exist at some epochs only
                ax.plot(points["epoch"], points[column], marker=".", label=labels[number])
        ax.set_xlabel("epoch")
        ax.set_ylabel(column, fontsize="small")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=3, fontsize="x-small")
    fig.suptitle(title)
    return fig


def padded_range(values: pd.Series) -> tuple[float, float]:
    """Axis limits around ``values`` with a 20% margin (so that small differences show)."""
    low, high = float(values.min()), float(values.max())
    margin = 0.2 * (high - low) or 0.05 * abs(high) or 1.0
    return low - margin, high + margin


def seed_spread(data: pd.DataFrame, factor: str, column: str) -> pd.Series:
    """Per level of ``factor``: the sd across seeds of the seed means of ``column``."""
    return data.groupby([factor, SEED])[column].mean().groupby(level=0).std()


def plot_factor(sweep: Sweep, factor: str) -> Figure | None:
    """Headline metrics by level of ``factor``: mean bars, seed sd as error bars, jobs as dots."""
    complete = sweep.complete
    metrics = present_metrics(complete)
    if not metrics:
        return None
    order = levels(complete, factor)
    position = {level: i for i, level in enumerate(order)}
    fig, axes = new_figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        data = complete.dropna(subset=[metric.key])
        means = data.groupby(factor)[metric.key].mean().reindex(order)
        seeded = SEED in sweep.factors and factor != SEED
        errors = seed_spread(data, factor, metric.key).reindex(order) if seeded else None
        ax.bar(range(len(order)), means, yerr=errors, capsize=3, color="lightsteelblue")
        ax.scatter(data[factor].map(position), data[metric.key], s=10, color="black", zorder=3)
        ax.set_xticks(range(len(order)), order, rotation=30, fontsize="small")
        ax.set_ylim(*padded_range(data[metric.key]))
        ax.set_title(metric.label, fontsize="small")
    fig.suptitle(f"headline metrics by {factor}")
    return fig


def plot_bio_vs_batch(sweep: Sweep) -> Figure | None:
    """Bio conservation against batch correction, a dot per job and a cross per job's PCA
    baseline where metrics.json has one (None without the scores)."""
    if not {BATCH, BIO} <= set(sweep.complete):
        return None
    data = sweep.complete.dropna(subset=[BATCH, BIO])
    if data.empty:
        return None
    labels = job_labels(sweep)
    fig, (ax,) = new_figure()
    ax.scatter(data[BATCH], data[BIO], label="scVI")
    for _, row in data.iterrows():
        ax.annotate(labels[row["job"]], (row[BATCH], row[BIO]), fontsize="x-small")
    if {BASELINE + BATCH, BASELINE + BIO} <= set(data):
        baseline = data[[BASELINE + BATCH, BASELINE + BIO]].dropna()
        ax.scatter(*baseline.T.values, marker="x", color="grey", label="PCA baseline")
    ax.legend(fontsize="x-small")
    ax.set_xlabel("batch correction (higher is better)")
    ax.set_ylabel("bio conservation (higher is better)")
    return fig


def write_figures(sweep: Sweep, out_dir: Path) -> list[tuple[str, str]]:
    """Write every figure the sweep has data for; (file name, caption) of each written."""
    planned = [
        (
            "elbo_validation.png",
            "validation ELBO per epoch (lower is better)",
            lambda: plot_histories(sweep, ["elbo_validation"], "validation ELBO"),
        ),
        (
            "kl_weight.png",
            "KL weight per epoch",
            lambda: plot_histories(sweep, ["kl_weight"], "KL weight"),
        ),
        (
            "convergence.png",
            "integration scores per evaluated epoch (higher is better)",
            lambda: plot_histories(sweep, [BIO, BATCH, TOTAL], "integration scores per epoch"),
        ),
        *[
            (
                f"by_{factor.replace('/', '_')}.png",
                f"headline metrics by `{factor}`",
                lambda factor=factor: plot_factor(sweep, factor),
            )
            for factor in sweep.factors
        ],
        (
            "bio_vs_batch.png",
            "bio conservation vs batch correction",
            lambda: plot_bio_vs_batch(sweep),
        ),
    ]
    written = []
    for name, caption, plot in planned:
        fig = plot()
        if fig is None:
            log.info("figure %s skipped: no complete job has data for it", name)
            continue
        fig.savefig(out_dir / name)
        written.append((name, caption))
    return written


# --- report.md ---------------------------------------------------------------------------------


def cell(value) -> str:
    """A markdown table cell: floats to 4 significant digits, missing values empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table."""
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + " --- |" * len(frame.columns),
        *("| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)),
    ]
    return "\n".join(lines)


def jobs_table(sweep: Sweep) -> str:
    """Every job with its swept values, headline metrics and training time."""
    metrics = {m.key: m.label for m in present_metrics(sweep.results)}
    times = {TRAIN_TIME: "training time (s)"} if TRAIN_TIME in sweep.results else {}
    columns = ["job", "status", *sweep.factors, *metrics, *times]
    return markdown_table(sweep.results[columns].rename(columns={**metrics, **times}))


def job_list(sweep: Sweep, status: str) -> list[str]:
    """A markdown list item per job of ``status``: its overrides and error."""
    rows = sweep.results[sweep.results["status"] == status]
    return [
        f"- job {row['job']} (`{row['overrides']}`)" + (f": {row['error']}" if row["error"] else "")
        for _, row in rows.iterrows()
    ]


def convergence_lines(sweep: Sweep) -> list[str]:
    """A "Convergence" section from the ``epochs_to_*`` metrics: their range over complete jobs."""
    columns = [c for c in sweep.results.columns if c.startswith("epochs_to_")]
    complete = sweep.results[sweep.results["status"] == COMPLETE]
    if not columns or complete.empty:
        return []
    lines = [
        "## Convergence",
        "",
        "Epochs until a value stays within the tolerance of its value at the last epoch "
        "(checked at the evaluated epochs for integration scores), over complete jobs:",
        "",
    ]
    for column in columns:
        values = complete[column].dropna()
        if len(values):
            lines.append(
                f"- `{column}`: median {values.median():g} "
                f"(range {values.min():g}-{values.max():g}, of {complete['epochs'].max():g})"
            )
    return [*lines, ""]


def data_note(sweep: Sweep) -> list[str]:
    """Which data set the jobs trained on; a warning when it is the synthetic demo."""
    if "dataset" not in sweep.results:
        return []
    datasets = sorted(map(str, sweep.results["dataset"].dropna().unique()))
    lines = [f"Data set: {', '.join(f'`{d}`' for d in datasets)}.", ""]
    if "demo" in datasets:
        lines += [
            "**Demo data**: a small synthetic data set trained for a few epochs on a CPU. "
            "These numbers show what a report looks like; they do not answer the question "
            "for real (Census-scale) data.",
            "",
        ]
    return lines


def report_text(sweep: Sweep, figures: list[tuple[str, str]]) -> str:
    """The text of report.md."""
    folder = sweep.folder.resolve()
    counts = sweep.results["status"].value_counts()
    swept = "; ".join(
        f"`{f}` ({', '.join(map(str, levels(sweep.results, f)))})" for f in sweep.factors
    )
    lines = [
        f"# Multirun report: {folder.name}",
        "",
        f"Sweep folder: `{folder}`",
        "",
        f"Jobs: {counts.get(COMPLETE, 0)} complete, {counts.get(FAILED, 0)} failed, "
        f"{counts.get(RUNNING, 0)} running / unfinished.",
        "",
        f"Swept: {swept or 'nothing (every job has the same overrides)'}.",
        "",
        *data_note(sweep),
        "## Verdicts",
        "",
        "Each level against the reference level (the first in sweep order), averaged over the "
        "complete jobs that differ only in that factor (other factors and seeds matched). "
        "`±` is the standard deviation across seeds of the per-seed change. Lower is better for "
        "ELBO and reconstruction loss, higher for cells/s and integration scores.",
        "",
        *(verdicts(sweep) or ["Nothing to compare: no factor but the seed was swept."]),
        "",
        *convergence_lines(sweep),
        "## Jobs",
        "",
        jobs_table(sweep),
        "",
        "## Figures",
        "",
        *(f"![{caption}]({name})\n" for name, caption in figures),
    ]
    for status, title in ((FAILED, "Failed jobs"), (RUNNING, "Running / unfinished jobs")):
        if status in counts:
            lines += [f"## {title}", "", *job_list(sweep, status), ""]
    return "\n".join(lines).rstrip() + "\n"


# --- entry points ------------------------------------------------------------------------------


def default_out(sweep_dir: str | Path) -> Path:
    """``multirun_reports/<sweep folder name>`` under the repository root."""
    return REPORTS_DIR / Path(sweep_dir).resolve().name


def build_report(sweep_dir: str | Path, out_dir: str | Path) -> Path:
    """Write results.csv, figures and report.md of a sweep into ``out_dir``; return report.md."""
    sweep = load_sweep(sweep_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep.results.to_csv(out / "results.csv", index=False)
    figures = write_figures(sweep, out)
    report = out / "report.md"
    report.write_text(report_text(sweep, figures))
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m sweep.report SWEEP_DIR [--out DIR]`` or ``--study NAME --storage STORAGE``."""
    parser = argparse.ArgumentParser(
        prog="python -m sweep.report",
        description="Build the report of a Hydra multirun or of an Optuna study.",
    )
    parser.add_argument("sweep_dir", type=Path, nargs="?", help="a sweep folder (hydra.sweep.dir)")
    parser.add_argument("--study", help="an Optuna study's name (with --storage)")
    parser.add_argument("--storage", help="its journal file or database URL")
    parser.add_argument(
        "--out", type=Path, help="report folder (default: multirun_reports/<sweep or study name>)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    from sweep.study.storage import read_record

    study = read_record(args.sweep_dir) if args.sweep_dir else None  # an Optuna sweep folder
    if study:
        args.study, args.storage = study["study_name"], study["storage"]
    if args.study:
        if not args.storage:
            parser.error("--study needs --storage (the study's journal file or database URL)")
        from sweep.study.report import build_study_report

        report = build_study_report(args.study, args.storage, args.out or REPORTS_DIR / args.study)
    elif args.sweep_dir:
        report = build_report(args.sweep_dir, args.out or default_out(args.sweep_dir))
    else:
        parser.error("give a sweep folder, or --study NAME --storage STORAGE")
    log.info("report: %s", report)


if __name__ == "__main__":
    main()
