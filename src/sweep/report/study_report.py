"""Study report: an Optuna study -> ``multirun_reports/<study>/`` (report.md, trials.csv, PNGs).

``build_study_report``; ``scvi-sweep-report --study NAME --storage STORAGE`` or
``scvi-sweep-report SWEEP_DIR`` (a sweep folder of the Optuna sweeper) and the end-of-sweep
callback reach it through sweep.report.entry. It reads the storage (sweep.report.study_trials),
so it works while the study runs, after a sweep that stopped, and across processes and machines;
where the trials' run folders can be read too, it adds their data set, their scores against the
PCA baseline and the best trial's health. It opens with the best trial and how firm it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sweep import metric_names, run_folder
from sweep.report.baseline import baseline_lines
from sweep.report.glossary import Glossary
from sweep.report.headline import label
from sweep.report.numbers import column_formats, formatter, general
from sweep.report.render import (
    PlannedFigure,
    data_note,
    figure_lines,
    markdown_table,
    shown_command,
    shown_path,
    shown_storage,
    write_figures,
)
from sweep.report.study_figures import (
    intermediate_caption,
    plot_history,
    plot_importances,
    plot_intermediate,
    plot_pareto,
    plot_slices,
)
from sweep.report.study_trials import (
    FEW_TRIALS,
    STATES,
    best_trials,
    importances,
    load,
    objectives,
    run_folders,
    steps_unit,
    steps_words,
    trials_table,
)
from sweep.report.trust import provisional_findings
from sweep.run_folder import REPORT_FILE
from sweep.study.attrs import COMMAND, RUN_DIR
from sweep.study.storage import dashboard_command, resolve

__all__ = [
    "build_study_report",
    "importances",
    "load",
    "plot_history",
    "plot_importances",
    "plot_intermediate",
    "plot_pareto",
    "plot_slices",
    "trials_table",
]

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.csv"
#: significant digits of the importances
IMPORTANCE_DIGITS = 2
#: the words of the report the glossary explains, linked once below the answer
TERMS_USED = ["seed spread", "provisional", "run health", "PCA baseline", "bio conservation"]


def objective_value(name: str, value: float) -> str:
    """An objective's value in its metric's format (sweep.report.numbers)."""
    return (formatter(name) or general)(value)


def params_words(trial: FrozenTrial) -> str:
    """``model.n_hidden=512, plan.lr=0.00031``."""
    return ", ".join(
        f"`{k}={general(v, 2) if isinstance(v, float) else v}`" for k, v in trial.params.items()
    )


def counts_words(counts: dict[str, int]) -> str:
    """``6 pruned, 2 failed``: the trials that did not complete, or ""."""
    words = {"pruned": "pruned", "fail": "failed", "running": "running", "void": "void"}
    return ", ".join(f"{counts[k]} {w}" for k, w in words.items() if counts.get(k))


def run_health(trial: FrozenTrial, glossary: Glossary) -> str:
    """The best trial's run health in a sentence, from its run folder (where readable here)."""
    folder = trial.user_attrs.get(RUN_DIR)
    metrics = run_folder.read_metrics(Path(folder)) if folder else None
    if not metrics:
        return "Its run folder is not readable here, so its health is not known."
    health = glossary.term("run health", "health")
    if metric_names.HEALTH not in metrics:
        return f"Its run recorded no {health} checks (made before they existed)."
    findings = metrics[metric_names.HEALTH] or {}
    if provisional_findings(findings):
        return (
            f"Its run's {health} has warnings ({'; '.join(findings.values())}): treat the best "
            f"trial as {glossary.term('provisional')}."
        )
    if findings:
        return f"Its run's {health} has warnings that do not hold it back ({'; '.join(findings)})."
    return f"Its run's {health} has no warnings."


def answer_paragraph(
    study: optuna.Study, front: list[FrozenTrial], counts: dict[str, int], glossary: Glossary
) -> str:
    """The study report's opening: the best trial (or the Pareto front), how far ahead of the
    next it is, what that rests on, and the best run's health."""
    names = objectives(study)
    n_complete = counts.get("complete", 0)
    others = counts_words(counts)
    trials = f"{n_complete} complete trials" + (f" ({others})" if others else "")
    if not front:
        return (
            f"**Answer:** none yet: no trial has completed{f' ({others})' if others else ''}. "
            "Rerun the sweep's command to resume the study."
        )
    seeds = (
        "Each trial ran one seed, so a lead smaller than the "
        f"{glossary.term('seed spread')} may be noise: rerun the leaders with `seed=0,1,2` "
        "as a multirun to measure it."
    )
    if len(names) > 1:
        bests = []
        for i, name in enumerate(names):
            pick = max if study.directions[i].name == "MAXIMIZE" else min
            best = pick(front, key=lambda t, i=i: t.values[i])
            bests.append(
                f"trial {best.number} on {label(name)} ({objective_value(name, best.values[i])})"
            )
        return (
            f"**Answer:** {len(front)} of {trials} are on the Pareto front: no single best. "
            f"Best on each objective: {'; '.join(bests)}. {seeds}"
        )
    best, name = front[0], names[0]
    value = objective_value(name, best.value)
    text = (
        f"**Answer:** the best of {trials} is trial {best.number}, {label(name)} {value} "
        f"({study.directions[0].name.lower()}), with {params_words(best) or 'no parameters'}."
    )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranked = sorted(
        (t for t in complete if t.number != best.number),
        key=lambda t: t.value,
        reverse=study.directions[0].name == "MAXIMIZE",
    )
    if ranked:
        runner = ranked[0]
        gap = abs(runner.value - best.value)
        relative = f" ({100 * gap / abs(best.value):.2g}%)" if best.value else ""
        text += (
            f" How firm: the next best, trial {runner.number} ({params_words(runner)}), is "
            f"{objective_value(name, gap)} behind{relative}. {seeds}"
        )
    else:
        text += " It is the only complete trial: nothing to compare it with yet."
    few = " (fewer than ~20: indicative only)" if n_complete < FEW_TRIALS else ""
    text += f" The parameter importances rest on {n_complete} complete trials{few}."
    return f"{text} {run_health(best, glossary)}"


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
            "run folder": shown_path(t.user_attrs[RUN_DIR]) if RUN_DIR in t.user_attrs else "",
        }
        for t in front
    ]
    formats = column_formats(names, {n: label(n) for n in names})
    lines = [f"## {title}", "", markdown_table(pd.DataFrame(rows), formats=formats), ""]
    lines += ["Re-run as a single job:", ""]
    for t in front:
        command = t.user_attrs.get(COMMAND)
        lines += [
            f"- trial {t.number}: `{shown_command(command) if command else '(not recorded)'}`"
        ]
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
    subsets = runs[metric_names.DATA_SUBSET].tolist() if metric_names.DATA_SUBSET in runs else []
    return [*data_note(datasets, subsets), *baseline_lines(runs, "trial")]


def report_text(study, storage: str, table, front, imp, imp_note, runs, figures, out: Path) -> str:
    """The text of report.md (``out``: its folder, for the glossary's links): the answer, trial
    counts, data set, best trials, the PCA baseline, importances, figures, failures. The storage
    and run folders are named without the machine's paths (sweep.report.render.shown_path)."""
    names = objectives(study)
    counts = table.state.value_counts() if not table.empty else pd.Series(dtype=int)
    count_row = {s.lower(): int(counts.get(s, 0)) for s in STATES}
    directions = ", ".join(
        f"{label(n)} (`{n}`, {d.name.lower()})"
        for n, d in zip(names, study.directions, strict=True)
    )
    n_complete = count_row["complete"]
    glossary = Glossary(out)
    shown = shown_storage(storage)
    lines = [
        f"# Study {study.study_name}",
        "",
        answer_paragraph(study, front, count_row, glossary),
        "",
        *glossary.terms_line(TERMS_USED),
        f"Objectives: {directions}. Storage: `{shown}`.",
        f"Browse it live: `{dashboard_command(shown)}`; rerun the sweep's command to resume it.",
        "",
        *run_folder_lines(runs, n_complete),
        "## Trials",
        "",
        markdown_table(pd.DataFrame([count_row])),
        "",
        "void: left running by a process that died (retried) or asked beyond n_trials; they do "
        "not count toward n_trials. All trials: `trials.csv`.",
        "",
        steps_words(study),
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
        (
            "intermediate.png",
            intermediate_caption(steps_unit(study)),
            lambda: plot_intermediate(study),
        ),
        (
            "importances.png",
            f"parameter importances (fANOVA, {n_complete} complete trials)",
            lambda: plot_importances(imp, n_complete) if imp is not None else None,
        ),
        ("pareto.png", "Pareto front", lambda: plot_pareto(study, front) if front else None),
    ]
    figures = write_figures(planned, out)
    runs = run_folders(study)
    text = report_text(study, storage, table, front, imp, imp_note, runs, figures, out)
    report = out / REPORT_FILE
    report.write_text(text)
    return report
