"""The study report's figures: the optimisation history, the objective by parameter, each
trial's intermediate values (pruned ones in red), parameter importances and the Pareto front, each
titled with its study.
"""

from __future__ import annotations

import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator, NullFormatter
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep import metric_names
from sweep.report.headline import axis_label
from sweep.report.render import grid_figure
from sweep.report.study_trials import FEW_TRIALS, objectives, steps_unit
from sweep.study.attrs import STEPS_CELLS


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
    """The reported metric of each trial against its steps, epochs or training cells seen (the
    study's unit, :func:`steps_unit`); pruned trials in red."""
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
    unit = steps_unit(study)
    if unit == STEPS_CELLS:
        ax.set_xlim(0, last * 1.05)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 2M, 120M
        ax.set_xlabel(axis_label(metric_names.CELLS_SEEN))
    else:
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel(axis_label(metric_names.EPOCH))
    ax.set_ylabel(axis_label(objectives(study)[0]), fontsize="small")
    ax.set_title(
        f"{study.study_name}: {intermediate_caption(unit)} (red: pruned)", fontsize="small"
    )
    return fig


def intermediate_caption(unit: str) -> str:
    """The intermediate values' figure, named by what its steps are."""
    return "metric by training cells seen" if unit == STEPS_CELLS else "metric per epoch"


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
