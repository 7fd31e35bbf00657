"""One run's page: ``report.md`` in its run folder, with the run's curves (``curves.png``) and its
embedding picture (sweep.report.embedding), built from the run folder alone, so that
``scvi-sweep-report RUN_DIR`` rebuilds it. The run's health (sweep.evaluation.health) is judged
as training ends and kept in metrics.json; the page says it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweep import metric_names, run_folder
from sweep.evaluation.health import AGGREGATE_WORDS, FALLING_PER_EPOCH, SMALL_BATCH_CELLS
from sweep.metric_names import (
    BASELINE_PREFIX,
    BATCH_NOT_APPLICABLE,
    CELLS_CONVERGENCE_PREFIX,
    CELLS_SEEN,
    CONVERGENCE_PREFIX,
    DATA_SUBSET,
    ELBO_VALIDATION,
    EPOCH,
    EVALUATION_BATCH_CELLS_MEDIAN,
    EVALUATION_BATCH_CELLS_MIN,
    EVALUATION_BATCHES,
    EVALUATION_CELLS,
    EVALUATION_CHOICE,
    HEALTH,
    JOB_NAME,
    KL_WEIGHT,
    LOSS_CHANGE,
    MODEL_GENES,
    MODEL_HIDDEN,
    MODEL_LATENT,
    MODEL_LAYERS,
    MODEL_PARAMETERS,
    N_BATCH,
    N_CATS_PER_COV,
    STEP_VALIDATION_CELLS,
)
from sweep.report.embedding import draw_embedding
from sweep.report.glossary import Glossary
from sweep.report.numbers import counted, duration, loss, score, signed_change
from sweep.report.render import (
    DPI,
    cells_seen_axis,
    figure_lines,
    markdown_table,
    shown_path,
    write_figures,
)
from sweep.report.run_answer import run_title, summary_paragraph
from sweep.report.settling import NEVER, UNKNOWN, record, state
from sweep.run_folder import CURVES_FIGURE, EMBEDDING_FIGURE, REPORT_FILE

#: model sizes as built (metrics.json key -> words)
MODEL_SIZES = {
    MODEL_GENES: "genes",
    MODEL_HIDDEN: "hidden units",
    MODEL_LAYERS: "layers",
    MODEL_LATENT: "latent dimensions",
    N_BATCH: "batch categories",
    MODEL_PARAMETERS: "trainable parameters",
}

#: the words of the page the glossary explains, linked once below its opening
TERMS_USED = [
    "validation negative ELBO",
    "KL warm-up",
    "settled",
    "cells seen",
    "bio conservation",
    "batch correction",
    "integration total",
    "PCA baseline",
    "evaluation cells",
    "run health",
    "batch category",
    "UMAP",
]


# --- the page ----------------------------------------------------------------------------------


def plot_curves(
    history: pd.DataFrame,
    metrics: dict,
    steps: pd.DataFrame | None = None,
    integration: pd.DataFrame | None = None,
) -> Figure:
    """The run's curves, titled by its job and settings (sweep.report.run_answer.run_title), a
    panel each: its loss (negative ELBO, validation and training), KL
    weight and, where scored, integration scores on a 0-1 axis with the PCA baseline's
    (``metrics``: metrics.json's) as dashed lines.

    Per epoch (whole-epoch ticks, one epoch as dots), or, when the run measured between epoch
    ends (``steps``: steps.csv), against training cells seen: the step-level validation loss
    and KL weight as lines, the epoch ends' values as dots, the scores from ``integration``
    (integration.csv, step-level rows included)."""
    by_cells = steps is not None and len(steps) > 0 and CELLS_SEEN in history
    x = CELLS_SEEN if by_cells else EPOCH
    scored = integration if by_cells and integration is not None else history
    cells = metrics.get(STEP_VALIDATION_CELLS)
    loss = [
        (history, ELBO_VALIDATION, "validation", "o-"),
        (history, "elbo_train", "training", "o-"),
    ]
    if by_cells:  # the step-level validation loss, the epoch ends' values as dots
        loss = [
            (
                steps,
                ELBO_VALIDATION,
                f"validation, {cells:,} cells" if cells else "validation",
                "-",
            ),
            (history, ELBO_VALIDATION, "validation, epoch end", "o"),
            (history, "elbo_train", "training, epoch mean", "o"),
        ]
    panels = [  # (title, y-axis unit, [(table, column, legend, line style)])
        ("loss = negative ELBO", "nats per cell (lower is better)", loss),
        (
            "KL weight of the loss's KL term",
            "weight (0-1)",
            [(steps if by_cells else history, KL_WEIGHT, "KL weight", "o-")],
        ),
        (
            "integration score",
            "score (0-1, higher is better)",
            [(scored, column, name, "o-") for column, name in AGGREGATE_WORDS.items()],
        ),
    ]
    panels = [
        (title, unit, [line for line in lines if line[0] is not None and line[1] in line[0]])
        for title, unit, lines in panels
    ]
    panels = [panel for panel in panels if panel[2]]
    fig = Figure(figsize=(4 * len(panels), 3.6), dpi=DPI, layout="constrained")
    for ax, (title, unit, lines) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        for table, column, name, style in lines:
            points = table[[x, column]].dropna()  # scores exist at scored points only
            line = ax.plot(points[x], points[column], style, markersize=3, label=name)
            if BASELINE_PREFIX + column in metrics:
                ax.axhline(
                    metrics[BASELINE_PREFIX + column],
                    color=line[0].get_color(),
                    linestyle="--",
                    label=f"PCA baseline: {name}",
                )
        if lines[0][1] in AGGREGATE_WORDS:
            ax.set_ylim(0, 1)
        if by_cells:
            cells_seen_axis(ax, history[CELLS_SEEN].max())
        else:
            ax.set_xlim(0.5, history[EPOCH].max() + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlabel("epoch")
        ax.set_ylabel(unit, fontsize="small")
        ax.set_title(title, fontsize="small")
        ax.legend(fontsize="x-small")
    # the run's job number and settings, wrapped to the figure's width (~12 characters an inch)
    fig.suptitle(run_title(metrics, width=12 * 4 * len(panels)), fontsize="small")
    return fig


def trained_lines(
    metrics: dict, history: pd.DataFrame | None = None, steps: pd.DataFrame | None = None
) -> list[str]:
    """The section of what was trained: group choices, overrides, the built model's sizes, the
    cells (and how ``data.keep`` / ``data.max_cells`` narrowed them), time and final loss
    (whether it settled: :func:`settled_lines`, from ``history`` and ``steps``)."""
    choices = pd.DataFrame(list(metrics[metric_names.CHOICES].items()), columns=["group", "option"])
    overrides = " ".join(f"`{o}`" for o in metrics[metric_names.OVERRIDES]) or "none"
    sizes = ", ".join(f"{metrics[k]:,} {w}" for k, w in MODEL_SIZES.items() if k in metrics)
    covariates = ", ".join(map(str, metrics.get(N_CATS_PER_COV) or []))
    if covariates:
        sizes += f"; categorical covariates of {covariates} categories"
    return [
        "## What was trained",
        "",
        markdown_table(choices),
        "",
        f"Overrides: {overrides}.",
        "",
        f"Model as built: {sizes}.",
        "",
        f"{counted(metrics[metric_names.EPOCHS], 'epoch')} on {metrics['cells_train']:,} "
        "training cells "
        f"({metrics[metric_names.CELLS_VALIDATION]:,} validation), "
        f"{duration(metrics[metric_names.TRAIN_TIME])} of "
        f"training ({metrics[metric_names.TRAIN_CELLS_PER_S]:,.0f} cells/s), "
        f"{duration(metrics['wall_time_s'])} wall. Final validation loss (negative ELBO, lower is "
        f"better): {loss(metrics[ELBO_VALIDATION])} at KL weight {metrics[KL_WEIGHT]:.2f}.",
        "",
        *([f"Cells narrowed: {metrics[DATA_SUBSET]}.", ""] if metrics.get(DATA_SUBSET) else []),
        *settled_lines(metrics, history, steps),
    ]


def settled_lines(
    metrics: dict, history: pd.DataFrame | None = None, steps: pd.DataFrame | None = None
) -> list[str]:
    """When the validation loss settled, in training cells seen and epochs (the
    ``cells_to_*``/``epochs_to_*`` metrics of the validation loss), and where it was measured;
    a loss within the tolerance only at its last measurement *had not settled by the end*
    (sweep.report.settling). ``history``, ``steps``: the run's tables (without them, the end is
    the run's cells seen)."""
    suffix = f"_{ELBO_VALIDATION}"
    cells = next(
        (k for k in metrics if k.startswith(CELLS_CONVERGENCE_PREFIX) and k.endswith(suffix)),
        None,
    )
    if cells is None or metrics[cells] is None:
        return []
    tolerance = cells.removeprefix(CELLS_CONVERGENCE_PREFIX).removesuffix(suffix)
    within = tolerance.replace("pct", "%")
    epochs = metrics[CONVERGENCE_PREFIX + cells.removeprefix(CELLS_CONVERGENCE_PREFIX)]
    where = (
        f"measured between epoch ends on {metrics[STEP_VALIDATION_CELLS]:,} validation cells "
        "(steps.csv)"
        if STEP_VALIDATION_CELLS in metrics
        else "measured at epoch ends"
    )
    found = state(
        metrics[cells], record(ELBO_VALIDATION, history, steps), CELLS_SEEN, metrics.get(CELLS_SEEN)
    )
    if found == NEVER:
        return [
            f"The validation loss, {where}, had not settled by the end: it was within {within} "
            f"of its final value only at its last measurement ({metrics[cells]:,} training cells "
            f"seen, epoch {epochs:.3g}).",
            "",
        ]
    if found == UNKNOWN and history is not None:
        return [
            f"The validation loss, {where}, was measured once: whether it settled is not known.",
            "",
        ]
    return [
        f"The validation loss, {where}, stayed within {within} of its "
        f"final value from {metrics[cells]:,} training cells seen (epoch {epochs:.3g}) on.",
        "",
    ]


def health_lines(metrics: dict) -> list[str]:
    """The health section: what was checked, each failed check as a warning, or none."""
    findings = metrics.get(HEALTH, {})
    checked = (
        "whether the KL warm-up had finished by the last epoch, whether the validation loss was "
        f"still falling by more than {FALLING_PER_EPOCH:.0%} an epoch at the end, whether scVI "
        "scored below the PCA baseline on an aggregate score, and whether a batch category has "
        f"fewer than {SMALL_BATCH_CELLS} training cells"
    )
    lines = [f"- **WARNING**: {message}" for message in findings.values()]
    if metrics.get(LOSS_CHANGE) is None:
        lines.append("- one epoch: whether the validation loss was still falling is not known")
    return ["## Health", "", f"Checked {checked}.", "", *(lines or ["- no warnings"]), ""]


def scores_lines(metrics: dict) -> list[str]:
    """The section of scores against the PCA baseline: a table and a sentence (or "Not
    scored")."""
    keys = [
        k
        for k in AGGREGATE_WORDS
        if metrics.get(k) is not None and metrics.get(BASELINE_PREFIX + k) is not None
    ]
    if not keys:
        return ["## Scores", "", "Not scored (evaluation=none).", ""]
    differences = {k: metrics[k] - metrics[BASELINE_PREFIX + k] for k in keys}
    table = pd.DataFrame(
        {
            "score (0-1, higher is better)": [AGGREGATE_WORDS[k] for k in keys],
            "scVI": [metrics[k] for k in keys],
            "PCA baseline": [metrics[BASELINE_PREFIX + k] for k in keys],
            "scVI - PCA": list(differences.values()),
        }
    )
    words = [
        f"{'above' if d >= 0 else 'below'} it on {AGGREGATE_WORDS[k]} ({d:+.3f})"
        for k, d in differences.items()
    ]
    return [
        "## Scores against the PCA baseline",
        "",
        f"scib-metrics on {metrics[EVALUATION_CELLS]:,} validation cells at the last epoch, "
        "beside the unintegrated PCA baseline of the same cells: scVI is "
        f"{', '.join(words)}. One run of one seed: the spread across seeds is not known, so "
        "a small difference may be noise.",
        "",
        *evaluation_cells_lines(metrics),
        markdown_table(
            table,
            formats={
                "scVI": score,
                "PCA baseline": score,
                "scVI - PCA": lambda d: signed_change(d, score),
            },
        ),
        "",
    ]


def evaluation_cells_lines(metrics: dict) -> list[str]:
    """What the scores rest on: the evaluation batches, their cells and how they were chosen,
    and why batch correction was not scored when it was not."""
    if EVALUATION_BATCHES not in metrics:  # runs made before these were recorded
        return []
    lines = [
        f"The {metrics[EVALUATION_CELLS]:,} evaluation cells come from "
        f"{metrics[EVALUATION_BATCHES]:,} evaluation batches "
        f"({metrics[EVALUATION_BATCH_CELLS_MIN]:,} to {metrics[EVALUATION_BATCH_CELLS_MEDIAN]:g} "
        "cells a batch, smallest to median), "
        f"{metrics[EVALUATION_CHOICE]}.",
        "",
    ]
    if metrics.get(BATCH_NOT_APPLICABLE):
        lines += [
            f"Batch correction and the total were not scored: {metrics[BATCH_NOT_APPLICABLE]}.",
            "",
        ]
    return lines


def report_text(
    run_dir: Path,
    metrics: dict,
    figures: list[tuple[str, str]],
    history: pd.DataFrame | None = None,
    steps: pd.DataFrame | None = None,
) -> str:
    """The text of a run's report.md: its opening paragraph (sweep.report.run_answer), what was
    trained, its health, its scores and figures. The run folder is named by its job number and
    overrides, and by its path only relative to the working folder (never the machine's)."""
    glossary = Glossary(run_dir)
    lines = [
        f"# Run report: {metrics[JOB_NAME]}",
        "",
        summary_paragraph(metrics, history, steps, glossary),
        "",
        *glossary.terms_line(TERMS_USED),
        f"Run folder: `{shown_path(run_dir)}`",
        "",
        *trained_lines(metrics, history, steps),
        *health_lines(metrics),
        *scores_lines(metrics),
        "## Figures",
        "",
        *figure_lines(figures),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_run_report(run_dir: str | Path) -> Path:
    """Draw a finished run's curves and embedding picture and write its report.md, from the run
    folder alone (metrics.json, history.csv, steps.csv, integration.csv, embedding.csv).

    Parameters
    ----------
    run_dir
        A finished run folder (it has metrics.json).

    Returns
    -------
    The path of report.md.
    """
    run_dir = Path(run_dir)
    metrics = run_folder.read_metrics(run_dir)
    if metrics is None:
        raise FileNotFoundError(f"{run_dir} has no {run_folder.METRICS_FILE}: not a finished run")
    history = run_folder.read_table(run_dir, run_folder.HISTORY_FILE)
    steps = run_folder.read_table(run_dir, run_folder.STEPS_FILE)
    integration = run_folder.read_table(run_dir, run_folder.INTEGRATION_FILE)
    what = "the run per epoch" if steps is None else "the run against training cells seen"
    figures = write_figures(
        [(CURVES_FIGURE, what, lambda: plot_curves(history, metrics, steps, integration))],
        run_dir,
    )
    if draw_embedding(run_dir) is not None:
        figures.append(
            (
                EMBEDDING_FIGURE,
                "evaluation cells in 2-D (UMAP): scVI's latent space beside the PCA baseline",
            )
        )
    report = run_dir / REPORT_FILE
    report.write_text(report_text(run_dir, metrics, figures, history, steps))
    return report
