"""Study report: an Optuna study -> ``multirun_reports/<study>/`` (report.md, trials.csv, PNGs).

``build_study_report``; ``python -m sweep.report --study NAME --storage STORAGE`` or
``python -m sweep.report SWEEP_DIR`` (a sweep folder of the Optuna sweeper) and the end-of-sweep
callback reach it through sweep.report.entry. It reads only the storage, so it works while the
study runs, after a sweep that stopped, and across processes and machines.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep.report.render import (
    REPORT_FILE,
    PlannedFigure,
    figure_lines,
    grid_figure,
    markdown_table,
    write_figures,
)
from sweep.study.attrs import COMMAND, ERROR, PRUNED_AT, RETRY_OF, RUN_DIR, VOID
from sweep.study.storage import dashboard_command, open_storage, resolve

log = logging.getLogger(__name__)

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "VOID")
TRIALS_FILE = "trials.csv"


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


def plot_history(study: optuna.Study, table: pd.DataFrame) -> Figure | None:
    """Each objective per trial number, pruned trials at their last value, best so far."""
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
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{name} ({direction.name.lower()})")
        ax.legend(fontsize="small")
    fig.suptitle(f"{study.study_name}: optimisation history")
    fig.tight_layout()
    return fig


def plot_slices(study: optuna.Study, table: pd.DataFrame) -> Figure | None:
    """Each objective against each parameter (complete trials)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = sorted({k for t in complete for k in t.params})
    if not params:
        return None
    names = objectives(study)
    fig, axes = grid_figure(len(names), len(params))
    for col, param in enumerate(params):
        trials = [t for t in complete if param in t.params]
        dist = trials[0].distributions[param]
        xs = [t.params[param] for t in trials]
        if isinstance(dist, CategoricalDistribution):
            labels = [str(c) for c in dist.choices]
            xs = [labels.index(str(x)) for x in xs]
        for row, name in enumerate(names):
            ax = axes[row, col]
            ax.scatter(xs, [t.values[row] for t in trials], c=[t.number for t in trials])
            if isinstance(dist, CategoricalDistribution):
                ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize="small")
            elif getattr(dist, "log", False):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(param)
            if col == 0:
                ax.set_ylabel(name)
    fig.suptitle(f"{study.study_name}: objective by parameter (colour: trial number)")
    fig.tight_layout()
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
            marker=".",
            color="tab:red" if pruned else "tab:blue",
            alpha=0.8 if pruned else 0.5,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(objectives(study)[0])
    ax.set_title(f"{study.study_name}: per epoch (red: pruned)")
    fig.tight_layout()
    return fig


def plot_importances(frame: pd.DataFrame) -> Figure:
    """Parameter importances (:func:`importances`), a panel per objective."""
    fig, axes = grid_figure(1, len(frame.columns))
    for ax, name in zip(axes[0], frame.columns, strict=True):
        ax.barh(frame.index[::-1], frame[name][::-1])
        ax.set_xlabel(f"importance for {name}")
    fig.tight_layout()
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
    directions = [d.name.lower() for d in study.directions]
    ax.set_xlabel(f"{names[0]} ({directions[0]})")
    ax.set_ylabel(f"{names[1]} ({directions[1]})")
    ax.legend(fontsize="small")
    fig.tight_layout()
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
            **{n: v for n, v in zip(names, t.values, strict=True)},
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


def report_text(study, storage: str, table, front, imp, imp_note, figures) -> str:
    """The text of report.md: trial counts, best trials, importances, figures, failures."""
    names = objectives(study)
    counts = table.state.value_counts() if not table.empty else pd.Series(dtype=int)
    count_row = {s.lower(): int(counts.get(s, 0)) for s in STATES}
    directions = ", ".join(
        f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions, strict=True)
    )
    lines = [
        f"# Study {study.study_name}",
        "",
        f"Objectives: {directions}. Storage: `{storage}`.",
        f"Browse it live: `{dashboard_command(storage)}`; rerun the sweep's command to resume it.",
        "",
        "## Trials",
        "",
        markdown_table(pd.DataFrame([count_row])),
        "",
        "void: left running by a process that died (retried) or asked beyond n_trials; they do "
        "not count toward n_trials. All trials: `trials.csv`.",
        "",
        *best_section(study, front),
        "## Parameter importances",
        "",
    ]
    if imp is None:
        lines += [f"Not computed: {imp_note}.", ""]
    else:
        lines += [markdown_table(imp.reset_index(names="parameter")), ""]
    lines += ["## Figures", "", *figure_lines(figures)]
    failed = table[table.state == "FAIL"] if not table.empty else table
    if not failed.empty:
        lines += ["## Failed trials", ""]
        lines += [f"- trial {r.trial}: {r.error}" for r in failed.itertuples()]
    return "\n".join(lines).rstrip() + "\n"


def build_study_report(study_name: str, storage: str, out_dir: str | Path) -> Path:
    """Write trials.csv, figures and report.md of a study into ``out_dir``; return report.md."""
    storage = resolve(storage, study_name, Path.cwd())
    study = load(study_name, storage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    table.to_csv(out / TRIALS_FILE, index=False)
    front = best_trials(study)
    imp, imp_note = importances(study)
    planned: list[PlannedFigure] = [
        ("history.png", "optimisation history", lambda: plot_history(study, table)),
        ("slices.png", "objective by parameter", lambda: plot_slices(study, table)),
        ("intermediate.png", "metric per epoch", lambda: plot_intermediate(study)),
        (
            "importances.png",
            "parameter importances",
            lambda: plot_importances(imp) if imp is not None else None,
        ),
        ("pareto.png", "Pareto front", lambda: plot_pareto(study, front) if front else None),
    ]
    figures = write_figures(planned, out)
    report = out / REPORT_FILE
    report.write_text(report_text(study, storage, table, front, imp, imp_note, figures))
    return report
