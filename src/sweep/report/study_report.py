"""Study report: an Optuna study -> ``multirun_reports/<study>/`` (report.md, trials.csv, PNGs).

``build_study_report``; ``scvi-sweep-report --study NAME --storage STORAGE`` or
``scvi-sweep-report SWEEP_DIR`` (a sweep folder of the Optuna sweeper) and the end-of-sweep
callback reach it through sweep.report.entry. It reads the storage, so it works while the
study runs, after a sweep that stopped, and across processes and machines; where the trials' run
folders can be read too, it adds their data set and their scores against the PCA baseline.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep import metric_names, run_folder
from sweep.report.baseline import LABEL, baseline_lines
from sweep.report.headline import axis_label, label
from sweep.report.render import (
    PlannedFigure,
    data_note,
    figure_lines,
    grid_figure,
    markdown_table,
    write_figures,
)
from sweep.report.sweep_folder import numeric_metrics
from sweep.run_folder import REPORT_FILE
from sweep.study.attrs import COMMAND, ERROR, PRUNED_AT, RETRY_OF, RUN_DIR, VOID
from sweep.study.storage import dashboard_command, open_storage, resolve

log = logging.getLogger(__name__)

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "VOID")
TRIALS_FILE = "trials.csv"
#: fANOVA importances from fewer complete trials than this are indicative only
FEW_TRIALS = 20
#: significant digits of the importances
IMPORTANCE_DIGITS = 2


def load(study_name: str, storage: str) -> optuna.Study:
    """The study, read from its storage (a journal path or a database URL)."""
    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


def objectives(study: optuna.Study) -> list[str]:
    """Objective names: the optimized_metric keys the sweeper recorded, else value_0, ..."""
    names = study.metric_names
    return list(names) if names else [f"value_{i}" for i in range(len(study.directions))]


def state(trial: FrozenTrial) -> str:
    """A trial's state; VOID for trials that do not count (stale, surplus)."""
    return "VOID" if VOID in trial.system_attrs else trial.state.name


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective values, params, pruning, run folder, error."""
    names = objectives(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values if t.values is not None else [None] * len(names)
        if t.state == TrialState.PRUNED and t.values is None and t.intermediate_values:
            values = [t.intermediate_values[max(t.intermediate_values)]]
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "trial": t.number,
                "state": state(t),
                **dict(zip(names, values, strict=False)),
                **{f"param:{k}": v for k, v in t.params.items()},
                "epochs_reported": len(t.intermediate_values),
                PRUNED_AT: t.user_attrs.get(PRUNED_AT),
                RETRY_OF: t.user_attrs.get(RETRY_OF),
                "duration_s": duration,
                "run_dir": t.user_attrs.get(RUN_DIR),
                "error": t.user_attrs.get(ERROR) or t.system_attrs.get(VOID),
            }
        )
    return pd.DataFrame(rows)


def run_folders(study: optuna.Study) -> pd.DataFrame:
    """One row per complete trial whose run folder's metrics.json can be read here: its numeric
    metrics, ``dataset`` (the group choice) and a :data:`LABEL` (``trial N``)."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        folder = t.user_attrs.get(RUN_DIR)
        metrics = run_folder.read_metrics(Path(folder)) if folder else None
        if metrics:
            dataset = metrics.get(metric_names.CHOICES, {}).get("dataset")
            rows.append(
                {LABEL: f"trial {t.number}", "dataset": dataset, **numeric_metrics(metrics)}
            )
    return pd.DataFrame(rows)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial, or the Pareto front (multi-objective); [] before any trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)


def importances(study: optuna.Study) -> tuple[pd.DataFrame | None, str]:
    """Parameter importances (fANOVA), a column per objective; or None and why not."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, "needs at least two complete trials"
    columns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, name in enumerate(objectives(study)):
            try:
                columns[name] = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i: t.values[i]
                )
            except (RuntimeError, ValueError) as error:
                return None, str(error)
    frame = pd.DataFrame(columns).fillna(0.0)
    return frame.sort_values(frame.columns[0], ascending=False), ""


# --- figures -------------------------------------------------------------------------------------


def objective_label(name: str, direction) -> str:
    """An objective's axis label, with its unit where known: ``validation negative ELBO (per
    cell), minimize``."""
    return f"{axis_label(name)}, {direction.name.lower()}"


def plot_history(study: optuna.Study, table: pd.DataFrame) -> Figure | None:
    """Each objective per trial number (integer ticks), pruned trials at their last value, best
    so far."""
    names = objectives(study)
    done = table[table.state.isin(["COMPLETE", "PRUNED"])]
    if done.empty:
        return None
    fig, axes = grid_figure(len(names), 1)
    for ax, name, direction in zip(axes[:, 0], names, study.directions, strict=True):
        for status, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            part = done[done.state == status]
            ax.scatter(part.trial, part[name], marker=marker, label=status.lower())
        complete = done[done.state == "COMPLETE"].sort_values("trial")
        if len(names) == 1 and not complete.empty:
            best = complete[name]
            best = best.cummin() if direction.name == "MINIMIZE" else best.cummax()
            ax.step(complete.trial, best, where="post", color="k", label="best so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(done.trial.min() - 0.5, done.trial.max() + 0.5)
        ax.set_xlabel("trial number")
        ax.set_ylabel(objective_label(name, direction), fontsize="small")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{study.study_name}: optimisation history")
    return fig


def plot_slices(study: optuna.Study, table: pd.DataFrame) -> Figure | None:
    """Each objective against each parameter (complete trials), coloured by trial number with a
    colour bar."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = sorted({k for t in complete for k in t.params})
    if not params:
        return None
    names = objectives(study)
    fig, axes = grid_figure(len(names), len(params))
    numbers = [t.number for t in complete]
    colour = {"cmap": "viridis", "vmin": min(numbers), "vmax": max(numbers)}
    for col, param in enumerate(params):
        trials = [t for t in complete if param in t.params]
        dist = trials[0].distributions[param]
        xs = [t.params[param] for t in trials]
        if isinstance(dist, CategoricalDistribution):
            labels = [str(c) for c in dist.choices]
            xs = [labels.index(str(x)) for x in xs]
        for row, (name, direction) in enumerate(zip(names, study.directions, strict=True)):
            ax = axes[row, col]
            dots = ax.scatter(
                xs, [t.values[row] for t in trials], c=[t.number for t in trials], **colour
            )
            if isinstance(dist, CategoricalDistribution):
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
                ax.set_xlim(-0.5, len(labels) - 0.5)
            elif getattr(dist, "log", False):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(param, fontsize="small")
            if col == 0:
                ax.set_ylabel(objective_label(name, direction), fontsize="small")
    bar = fig.colorbar(dots, ax=axes.ravel().tolist(), label="trial number")
    bar.locator = MaxNLocator(integer=True, min_n_ticks=1)
    bar.update_ticks()
    fig.suptitle(f"{study.study_name}: objective by parameter")
    return fig


def plot_intermediate(study: optuna.Study) -> Figure | None:
    """The reported metric per epoch of each trial; pruned trials in red."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    fig, axes = grid_figure(1, 1)
    ax = axes[0, 0]
    for t in trials:
        steps = sorted(t.intermediate_values)
        pruned = t.state == TrialState.PRUNED
        ax.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            marker="o",
            ms=4,
            color="tab:red" if pruned else "tab:blue",
            alpha=0.8 if pruned else 0.5,
        )
    last = max(max(t.intermediate_values) for t in trials)
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(axis_label(objectives(study)[0]), fontsize="small")
    ax.set_title(f"{study.study_name}: per epoch (red: pruned)", fontsize="small")
    return fig


def plot_importances(frame: pd.DataFrame, n_trials: int) -> Figure:
    """Parameter importances (:func:`importances`) from ``n_trials`` complete trials, a panel per
    objective, bars from zero."""
    fig, axes = grid_figure(1, len(frame.columns))
    for ax, name in zip(axes[0], frame.columns, strict=True):
        ax.barh(frame.index[::-1], frame[name][::-1])
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (share of variance, 0-1)", fontsize="small")
        ax.set_title(axis_label(name), fontsize="small")
    few = f"\n(fewer than {FEW_TRIALS}: indicative only)" if n_trials < FEW_TRIALS else ""
    fig.suptitle(f"fANOVA importances, {n_trials} complete trials{few}", fontsize="small")
    return fig


def plot_pareto(study: optuna.Study, front: list[FrozenTrial]) -> Figure | None:
    """Two objectives of all complete trials, the Pareto front highlighted."""
    names = objectives(study)
    if len(names) != 2:
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, axes = grid_figure(1, 1)
    ax = axes[0, 0]
    ax.scatter(
        [t.values[0] for t in complete], [t.values[1] for t in complete], c="0.6", label="trials"
    )
    front = sorted(front, key=lambda t: t.values[0])
    ax.plot(
        [t.values[0] for t in front],
        [t.values[1] for t in front],
        "o-",
        color="tab:red",
        label="Pareto front",
    )
    for t in front:
        ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize="small")
    ax.set_xlabel(objective_label(names[0], study.directions[0]), fontsize="small")
    ax.set_ylabel(objective_label(names[1], study.directions[1]), fontsize="small")
    ax.legend(fontsize="x-small")
    return fig


# --- the report ----------------------------------------------------------------------------------


def best_section(study: optuna.Study, front: list[FrozenTrial]) -> list[str]:
    """Markdown: the best trial or the Pareto front, and the command re-running each."""
    names = objectives(study)
    if not front:
        return ["No trial has completed yet.", ""]
    title = "Best trial" if len(names) == 1 else f"Pareto front ({len(front)} trials)"
    rows = [
        {
            "trial": t.number,
            **{label(n): v for n, v in zip(names, t.values, strict=True)},
            **t.params,
            "run folder": t.user_attrs.get(RUN_DIR, ""),
        }
        for t in front
    ]
    lines = [f"## {title}", "", markdown_table(pd.DataFrame(rows)), ""]
    lines += ["Re-run as a single job:", ""]
    for t in front:
        lines += [f"- trial {t.number}: `{t.user_attrs.get(COMMAND, '(not recorded)')}`"]
    return [*lines, ""]


def importance_lines(imp: pd.DataFrame | None, imp_note: str, n_trials: int) -> list[str]:
    """The "Parameter importances" section: the table to 2 significant digits with how many
    trials it rests on, or why it was not computed."""
    lines = ["## Parameter importances", ""]
    if imp is None:
        return [*lines, f"Not computed: {imp_note}.", ""]
    few = " (as here)" if n_trials < FEW_TRIALS else ""
    return [
        *lines,
        f"fANOVA, from {n_trials} complete trials: the share of each objective's variance across "
        f"the trials that each parameter explains. Importances from fewer than ~{FEW_TRIALS} "
        f"trials are indicative only{few}.",
        "",
        markdown_table(
            imp.rename(columns=label).reset_index(names="parameter"), digits=IMPORTANCE_DIGITS
        ),
        "",
    ]


def run_folder_lines(runs: pd.DataFrame, n_trials: int) -> list[str]:
    """The data set and the scores against the PCA baseline, from the complete trials' run
    folders; a note when none could be read here."""
    if runs.empty:
        return (
            ["Run folders not readable here: no data set or PCA baseline.", ""] if n_trials else []
        )
    datasets = runs["dataset"].dropna() if "dataset" in runs else []
    return [*data_note(datasets), *baseline_lines(runs, "trial")]


def report_text(study, storage: str, table, front, imp, imp_note, runs, figures) -> str:
    """The text of report.md: trial counts, data set, best trials, the PCA baseline,
    importances, figures, failures."""
    names = objectives(study)
    counts = table.state.value_counts() if not table.empty else pd.Series(dtype=int)
    count_row = {s.lower(): int(counts.get(s, 0)) for s in STATES}
    directions = ", ".join(
        f"{label(n)} (`{n}`, {d.name.lower()})"
        for n, d in zip(names, study.directions, strict=True)
    )
    n_complete = count_row["complete"]
    lines = [
        f"# Study {study.study_name}",
        "",
        f"Objectives: {directions}. Storage: `{storage}`.",
        f"Browse it live: `{dashboard_command(storage)}`; rerun the sweep's command to resume it.",
        "",
        *run_folder_lines(runs, n_complete),
        "## Trials",
        "",
        markdown_table(pd.DataFrame([count_row])),
        "",
        "void: left running by a process that died (retried) or asked beyond n_trials; they do "
        "not count toward n_trials. All trials: `trials.csv`.",
        "",
        *best_section(study, front),
        *importance_lines(imp, imp_note, n_complete),
        "## Figures",
        "",
        *figure_lines(figures),
    ]
    failed = table[table.state == "FAIL"] if not table.empty else table
    if not failed.empty:
        lines += ["## Failed trials", ""]
        lines += [f"- trial {r.trial}: {r.error}" for r in failed.itertuples()]
    return "\n".join(lines).rstrip() + "\n"


def build_study_report(study_name: str, storage: str, out_dir: str | Path) -> Path:
    """Write trials.csv, figures and report.md of an Optuna study.

    Parameters
    ----------
    study_name
        The study's name.
    storage
        Its journal file or database URL.
    out_dir
        The report folder (created).

    Returns
    -------
    The path of report.md.
    """
    storage = resolve(storage, study_name, Path.cwd())
    study = load(study_name, storage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    table.to_csv(out / TRIALS_FILE, index=False)
    front = best_trials(study)
    imp, imp_note = importances(study)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    planned: list[PlannedFigure] = [
        ("history.png", "optimisation history", lambda: plot_history(study, table)),
        ("slices.png", "objective by parameter", lambda: plot_slices(study, table)),
        ("intermediate.png", "metric per epoch", lambda: plot_intermediate(study)),
        (
            "importances.png",
            f"parameter importances (fANOVA, {n_complete} complete trials)",
            lambda: plot_importances(imp, n_complete) if imp is not None else None,
        ),
        ("pareto.png", "Pareto front", lambda: plot_pareto(study, front) if front else None),
    ]
    figures = write_figures(planned, out)
    text = report_text(study, storage, table, front, imp, imp_note, run_folders(study), figures)
    report = out / REPORT_FILE
    report.write_text(text)
    return report
